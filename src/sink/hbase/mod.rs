//! The HBase read store, reached through its Thrift2 gateway.

pub mod cells;
pub mod client;
#[allow(clippy::all, clippy::pedantic, dead_code, unused_imports, unused_variables, unused_mut)]
#[rustfmt::skip]
pub mod thrift2;
pub mod wire;

pub use client::HbaseClient;
