//! The MySQL source: connections, the binlog position, table readers.

pub mod binlog;
pub mod mysql;
pub mod preflight;
