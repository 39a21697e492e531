//! Targets: the Kafka write store and the HBase read store.

pub mod hbase;
pub mod kafka;
