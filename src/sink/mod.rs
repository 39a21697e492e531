//! Targets: the Kafka write store and the HBase read store.

pub mod hbase;
pub mod kafka;

use crate::config::{Config, EntityKind, TableMapping};
use crate::error::{Error, Result};

/// The targets of a phase, checked and ready.
pub struct Prepared {
    /// A connected client when HBase is a target.
    pub hbase: Option<hbase::HbaseClient>,
    pub hbase_tables: Vec<String>,
    pub kafka_topics: Vec<String>,
}

/// Health checks and set-up before any work: each selected target answers;
/// missing HBase tables (and the id map, when messages are mapped) are
/// created pre-split; missing topics and the progress topic are created.
pub async fn prepare(
    cfg: &Config,
    tables: &[TableMapping],
    to_kafka: bool,
    to_hbase: bool,
) -> Result<Prepared> {
    let mut out = Prepared {
        hbase: None,
        hbase_tables: Vec::new(),
        kafka_topics: Vec::new(),
    };
    if to_hbase {
        let hb = cfg.hbase.clone();
        let mut names: Vec<String> = tables.iter().map(|t| t.hbase_table.clone()).collect();
        if tables.iter().any(|t| t.kind == EntityKind::Message) {
            names.push(hb.id_map_table.clone());
        }
        out.hbase_tables = names.clone();
        let client = tokio::task::spawn_blocking(move || {
            let c = hbase::HbaseClient::connect(&hb)?;
            // Creating a pre-split table waits for its regions to open (about
            // a second each here): the tables are made side by side, each on a
            // connection of its own (`ensure_table` leaves an existing one be
            // and takes another shard's creation, or its namespace's, as done).
            std::thread::scope(|scope| {
                let hb = &hb;
                let made: Vec<_> = names
                    .iter()
                    .map(|n| {
                        scope.spawn(move || {
                            let created = hbase::HbaseClient::connect(hb)?.ensure_table(
                                n,
                                &hb.column_family,
                                crate::mapping::keys::splits(hb.salt_buckets),
                            )?;
                            if created {
                                tracing::info!(table = %n, regions = hb.salt_buckets, "created HBase table");
                            }
                            Ok::<_, Error>(())
                        })
                    })
                    .collect();
                made.into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(Error::Other("HBase set-up: a table creation panicked".into()))))
                    .collect::<Result<Vec<()>>>()
            })?;
            Ok::<_, Error>(c)
        })
        .await
        .map_err(|e| Error::Other(format!("HBase set-up: {e}")))??;
        out.hbase = Some(client);
    }
    if to_kafka {
        let k = cfg.kafka.clone();
        tokio::task::spawn_blocking(move || kafka::check(&k))
            .await
            .map_err(|e| Error::Other(format!("Kafka check: {e}")))??;
        out.kafka_topics = tables.iter().map(|t| t.topic.clone()).collect();
        let topics: Vec<&str> = out.kafka_topics.iter().map(String::as_str).collect();
        kafka::ensure_topics(&cfg.kafka, &topics).await?;
        kafka::ensure_progress_topic(&cfg.kafka).await?;
    }
    Ok(out)
}
