//! The HBase read store, reached through its Thrift2 gateway.
//!
//! `thrift2` is generated (see its header and `scripts/thrift-gen.sh`) and
//! crate-private: callers outside the crate build puts and deletes with
//! [`cells`] and read results through the fields of what [`HbaseClient`]
//! returns.

pub mod cells;
pub mod client;
pub mod hfile;
pub mod runs;
#[allow(clippy::all, clippy::pedantic, dead_code, unused_imports, unused_variables, unused_mut)]
#[rustfmt::skip]
pub(crate) mod thrift2;
pub mod stream;
pub mod wire;

pub use client::HbaseClient;
