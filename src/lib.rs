//! falcon-migrate: moves a legacy MySQL chat database into Kafka (the event
//! write store) and HBase (the read store) in three phases — `base` (bulk
//! copy), `diff` (binlog changes since the base) and `verify` (checksums).
//!
//! Layout follows the pipeline: `source` reads MySQL, `mapping` turns rows into
//! events and cells, `sink` writes Kafka and HBase, `pipeline` runs the phases,
//! `checkpoint` persists progress, `verify` compares. `fixtures` generates the
//! legacy test dataset.

pub mod cli;
pub mod config;
pub mod error;
pub mod fixtures;
pub mod forecast;
pub mod position;
pub mod sink;
pub mod source;
pub mod tls;

pub use error::{Error, Result};
pub mod checkpoint;
pub mod mapping;
pub mod metrics;
pub mod pipeline;
pub mod report;
pub mod status;
pub mod telemetry;
pub mod verify;
