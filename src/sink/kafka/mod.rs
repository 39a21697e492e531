//! The Kafka write store: client settings, health check, topic creation.

pub mod event;
pub mod tx;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// Settings shared by every client the tool makes.
pub fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    c
}

/// Producer settings: idempotent (no duplicates from retries), whole-batch
/// acknowledgement, and the configured message limit.
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set(
            "message.max.bytes",
            (cfg.message_max_bytes + 4096).to_string(),
        )
        .set("queue.buffering.max.kbytes", "262144")
        .set("partitioner", "murmur2_random");
    for (k, v) in &cfg.producer {
        c.set(k, v);
    }
    c
}

/// Asks the cluster for its metadata: proves the brokers answer.
pub fn check(cfg: &KafkaConfig) -> Result<usize> {
    let consumer: BaseConsumer = base_config(cfg)
        .create()
        .map_err(|e| Error::config("kafka.brokers", e))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| Error::Unreachable {
            what: "Kafka",
            target: cfg.brokers.clone(),
            message: e.to_string(),
        })?;
    Ok(md.brokers().len())
}

/// Whether `topic` exists (a metadata request never creates it: consumers
/// do not auto-create topics).
pub fn topic_exists(cfg: &KafkaConfig, topic: &str) -> Result<bool> {
    let consumer: BaseConsumer = base_config(cfg)
        .create()
        .map_err(|e| Error::config("kafka.brokers", e))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| Error::Unreachable {
            what: "Kafka",
            target: cfg.brokers.clone(),
            message: e.to_string(),
        })?;
    Ok(md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

/// Creates the topics that do not exist yet.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(cfg)
        .create()
        .map_err(|e| Error::kafka("admin client", e))?;
    let max = (cfg.message_max_bytes + 4096).to_string();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                cfg.partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            )
            .set("max.message.bytes", &max)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| Error::kafka("create topics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(Error::kafka(format!("create topic {t}"), code)),
        }
    }
    Ok(())
}

/// Creates the compacted one-partition topic that holds chunk markers.
pub async fn ensure_progress_topic(cfg: &KafkaConfig) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(cfg)
        .create()
        .map_err(|e| Error::kafka("admin client", e))?;
    let t = NewTopic::new(
        &cfg.progress_topic,
        1,
        TopicReplication::Fixed(cfg.replication_factor),
    )
    .set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&t], &opts)
        .await
        .map_err(|e| Error::kafka("create progress topic", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(Error::kafka(format!("create topic {t}"), code)),
        }
    }
    Ok(())
}
