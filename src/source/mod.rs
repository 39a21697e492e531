//! The MySQL source: connections, the binlog position, table readers.

pub mod mysql;
