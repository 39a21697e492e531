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

/// Settings shared by every client the tool makes (the admin client uses
/// them as they are): the brokers, then `[kafka.client]` (TLS, SASL, …).
/// Every Kafka client of the tool is built from this, [`producer_config`] or
/// [`consumer_config`].
pub fn base_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    // Warnings reach the client context too: a failed connection's cause
    // (facility FAIL) is logged at that level; the context only keeps it.
    c.set("bootstrap.servers", &cfg.brokers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "4")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    for (k, v) in cfg.client.iter() {
        c.set(k, v);
    }
    c
}

/// Consumer settings: [`base_config`], the group, manual offsets, then
/// `[kafka.consumer]`.
pub fn consumer_config(cfg: &KafkaConfig, group: &str, isolation: &str) -> ClientConfig {
    let mut c = base_config(cfg);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", isolation);
    for (k, v) in cfg.consumer.iter() {
        c.set(k, v);
    }
    c
}

/// Checks every property of the three tables against librdkafka, without
/// connecting: a misspelt key or a bad value is a config error at load, and
/// the message names the table and the key (never a value: it may be secret).
pub fn validate(cfg: &KafkaConfig) -> std::result::Result<(), String> {
    use rdkafka::error::KafkaError;
    let named = |table: &str, e: KafkaError| match e {
        KafkaError::ClientConfig(_, desc, key, _) => format!("kafka.{table}.{key}: {desc}"),
        other => format!(
            "kafka.{table}: {}",
            other
                .rdkafka_error_code()
                .map(|c| c.to_string())
                .unwrap_or_default()
        ),
    };
    base_config(cfg)
        .create_native_config()
        .map_err(|e| named("client", e))?;
    producer_config(cfg)
        .create_native_config()
        .map_err(|e| named("producer", e))?;
    consumer_config(cfg, "falcon-validate", "read_committed")
        .create_native_config()
        .map_err(|e| named("consumer", e))?;
    Ok(())
}

/// A client context that keeps the last error librdkafka reported on its
/// own (a failed TLS handshake, a refused SASL login), so that a request
/// that then times out can say why.
#[derive(Default)]
pub struct Recorder {
    /// The last connection failure logged (the specific cause).
    logged: std::sync::Mutex<Option<String>>,
    /// The last error event (often only "1/1 brokers are down").
    error: std::sync::Mutex<Option<String>>,
}

impl Recorder {
    /// The most specific error reported, if any.
    pub fn cause(&self) -> Option<String> {
        let get = |m: &std::sync::Mutex<Option<String>>| m.lock().ok().and_then(|g| g.clone());
        get(&self.logged).or_else(|| get(&self.error))
    }
}

fn keep(slot: &std::sync::Mutex<Option<String>>, reason: &str) {
    if let Ok(mut g) = slot.lock() {
        *g = Some(reason.to_string());
    }
}

impl rdkafka::ClientContext for Recorder {
    // A failed connection attempt is logged (facility FAIL) from librdkafka's
    // broker thread as it happens; errors reach `error` only when polled.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        tracing::debug!(fac, message, "librdkafka");
        // FAIL: a connection attempt failed, with its cause (at warning level
        // for a plain client meeting a TLS listener: "might be caused by
        // incorrect security.protocol configuration").
        if fac == "FAIL" || matches!(level, L::Emerg | L::Alert | L::Critical | L::Error) {
            keep(&self.logged, message);
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka");
        // "N/N brokers are down" follows the specific cause: keep the cause.
        let generic = reason.contains("brokers are down");
        if !generic || self.error.lock().map(|g| g.is_none()).unwrap_or(true) {
            keep(&self.error, reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Recorder {}

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
    for (k, v) in cfg.producer.iter() {
        c.set(k, v);
    }
    c
}

/// Asks the cluster for its metadata: proves the brokers answer, and that
/// the TLS handshake and the SASL login (if configured) succeed. A failure
/// names the brokers and the cause librdkafka reported (wrong CA, refused
/// credentials, a TLS client against a plain listener, …).
pub fn check(cfg: &KafkaConfig) -> Result<usize> {
    let consumer: BaseConsumer<Recorder> = base_config(cfg)
        .create_with_context(Recorder::default())
        .map_err(|e| Error::config("kafka.brokers", e))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| {
            // librdkafka's logs and errors wait on the client's queue: served
            // by polling it, they reach the context.
            for _ in 0..5 {
                if consumer.poll(Duration::from_millis(50)).is_none()
                    && consumer.context().cause().is_some()
                {
                    break;
                }
            }
            let cause = consumer
                .context()
                .cause()
                .filter(|c| !c.contains("brokers are down"));
            Error::Unreachable {
                what: "Kafka",
                target: cfg.brokers.clone(),
                message: match cause.or_else(|| tls_listener_hint(cfg)) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                },
            }
        })?;
    Ok(md.brokers().len())
}

/// Why a plain client gets no answer from a broker that speaks TLS (which
/// librdkafka reports only as "brokers are down"): the first broker is
/// probed with a TLS handshake of our own.
fn tls_listener_hint(cfg: &KafkaConfig) -> Option<String> {
    let protocol = cfg
        .client
        .get("security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_lowercase();
    if protocol.ends_with("ssl") {
        return None;
    }
    let first = cfg.brokers.split(',').next()?.trim().to_string();
    match crate::tls::peer_certificate(&first, crate::tls::StartTls::Immediate) {
        Ok(Some(_)) => Some(format!(
            "{first} is an SSL listener (it completed a TLS handshake) but security.protocol is {protocol}: set security.protocol = \"{}\" in [kafka.client]",
            if protocol.starts_with("sasl") { "SASL_SSL" } else { "SSL" }
        )),
        _ => None,
    }
}

/// How the Kafka clients' connections are protected, from the settings
/// librdkafka used for the [`check`] that just passed, and the certificate
/// the first broker presents.
pub fn security(cfg: &KafkaConfig) -> crate::tls::Security {
    let get = |k: &str| cfg.client.get(k).map(str::to_ascii_lowercase);
    let protocol = get("security.protocol").unwrap_or_else(|| "plaintext".into());
    let authenticated = if protocol.starts_with("sasl") {
        format!(
            "SASL {} (user {})",
            cfg.client
                .get("sasl.mechanism")
                .or(cfg.client.get("sasl.mechanisms"))
                .unwrap_or("GSSAPI"),
            cfg.client.get("sasl.username").unwrap_or("-")
        )
    } else if protocol == "ssl" && cfg.client.get("ssl.certificate.location").is_some() {
        "client certificate".into()
    } else {
        "none".into()
    };
    if !protocol.ends_with("ssl") {
        return crate::tls::Security::plain(authenticated);
    }
    let chain = get("enable.ssl.certificate.verification").as_deref() != Some("false");
    let name = get("ssl.endpoint.identification.algorithm").as_deref() != Some("none");
    let first = cfg
        .brokers
        .split(',')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    crate::tls::Security {
        encrypted: true,
        cipher: None,
        verified: match (chain, name) {
            (true, true) => "chain and name",
            (true, false) => "chain",
            _ => "nothing",
        },
        authenticated,
        certificate: crate::tls::peer_certificate(&first, crate::tls::StartTls::Immediate)
            .ok()
            .flatten(),
    }
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
