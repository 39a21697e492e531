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

/// Creates the compacted one-partition topic that holds chunk markers, and
/// waits until the brokers' metadata shows it: shards started together race
/// to create it, and the loser would otherwise read it before it exists for
/// its client ("Unknown partition").
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
    let k = cfg.clone();
    tokio::task::spawn_blocking(move || {
        wait_for_topic(&k, &k.progress_topic, Duration::from_secs(30))
    })
    .await
    .map_err(|e| Error::Other(format!("progress topic check: {e}")))?
}

/// Deletes `topics` (those that exist): scratch topics of a calibration copy.
pub async fn delete_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(cfg)
        .create()
        .map_err(|e| Error::kafka("admin client", e))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .delete_topics(topics, &opts)
        .await
        .map_err(|e| Error::kafka("delete topics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((t, code)) => return Err(Error::kafka(format!("delete topic {t}"), code)),
        }
    }
    Ok(())
}

/// Waits until the brokers' metadata shows `topic` with its partitions (a
/// topic just created is unknown to a client for a moment), at most `limit`.
pub fn wait_for_topic(cfg: &KafkaConfig, topic: &str, limit: Duration) -> Result<()> {
    let consumer: BaseConsumer = base_config(cfg)
        .create()
        .map_err(|e| Error::config("kafka.brokers", e))?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        let ready = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .is_some_and(|md| {
                md.topics()
                    .iter()
                    .any(|t| t.error().is_none() && !t.partitions().is_empty())
            });
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::kafka(
                format!("topic {topic} not ready after {limit:?}"),
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
