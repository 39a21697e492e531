//! Transactional producing: one transaction per unit of work (a base chunk,
//! a batch of binlog transactions), with a progress marker committed inside
//! the same transaction so that the checkpoint and the events are atomic.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::pipeline::commit::{retry_blocking, RetryPolicy};

pub type TxProducer = ThreadedProducer<DefaultProducerContext>;

/// A transactional producer, initialised: a previous producer with the same
/// id is fenced and whatever transaction it left open is aborted.
pub fn make_tx_producer(
    cfg: &crate::config::KafkaConfig,
    transactional_id: &str,
) -> Result<TxProducer> {
    let mut c = super::producer_config(cfg);
    c.set("transactional.id", transactional_id)
        // A chunk may take minutes when HBase is slow; the broker's default
        // transaction.max.timeout.ms is 15 minutes. An attempt killed mid-chunk
        // holds read_committed consumers back until resumed or this expires.
        .set("transaction.timeout.ms", "300000")
        .set("queue.buffering.max.kbytes", "32768");
    let p: TxProducer = c.create().map_err(|e| Error::kafka("create producer", e))?;
    p.init_transactions(Timeout::After(Duration::from_secs(60)))
        .map_err(|e| Error::kafka(format!("init transactions ({transactional_id})"), e))?;
    Ok(p)
}

/// A committed record of the progress topic.
#[derive(Debug, Clone)]
pub struct MarkerRecord {
    pub key: String,
    pub payload: Vec<u8>,
}

/// Reads the committed records of the progress topic whose key starts with
/// `prefix`, in order. Call it after fencing the producers that may hold a
/// transaction open on the topic: `read_committed` reads stop at the first
/// open transaction until it ends.
pub fn read_markers(cfg: &KafkaConfig, prefix: &str) -> Result<Vec<MarkerRecord>> {
    read_progress(cfg, prefix, true)
}

/// Reads the progress topic, committed records only or (`committed` false)
/// everything, open and aborted transactions included: only for hints that
/// must be read before the producers holding transactions open are fenced.
pub fn read_progress(
    cfg: &KafkaConfig,
    prefix: &str,
    committed: bool,
) -> Result<Vec<MarkerRecord>> {
    read_progress_with(cfg, prefix, committed, &RetryPolicy::default())
}

/// [`read_progress`], with the retry policy of the broker's first answer.
pub fn read_progress_with(
    cfg: &KafkaConfig,
    prefix: &str,
    committed: bool,
    policy: &RetryPolicy,
) -> Result<Vec<MarkerRecord>> {
    let isolation = if committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    let consumer: BaseConsumer = super::consumer_config(cfg, "falcon-progress-reader", isolation)
        .create()
        .map_err(|e| Error::kafka("progress reader", e))?;
    let topic = &cfg.progress_topic;
    // A broker restarting answers nothing for a while: retried like any
    // other read (see `pipeline::commit::retry_blocking`).
    let what = format!("watermarks of {topic}");
    let (low, high) = retry_blocking(policy, &what, || {
        consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .map_err(|e| Error::kafka(what.clone(), e))
    })?;
    if high <= low {
        // Empty (or compacted/deleted to nothing): the position would stay
        // invalid until a record arrives.
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(|e| Error::kafka("assign", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka("assign", e))?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pos = consumer
            .position()
            .ok()
            .and_then(|p| p.find_partition(topic, 0).and_then(|e| e.offset().to_raw()))
            .unwrap_or(0);
        if pos >= high {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::kafka(
                format!("read {topic}"),
                crate::error::KafkaCause::new(
                    "timed out reading progress markers (a transaction of another process may still be open on the topic)",
                    crate::error::Retry::Transient,
                ),
            ));
        }
        // Short polls: the end is reached when the position passes the
        // high watermark, which the last commit marker (a control record,
        // never returned by poll) only shows on a later poll; a long poll
        // would wait out its whole timeout there at every read.
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) if m.key().is_some_and(|k| k.starts_with(prefix.as_bytes())) => {
                if let (Some(k), Some(p)) = (m.key(), m.payload()) {
                    out.push(MarkerRecord {
                        key: String::from_utf8_lossy(k).into_owned(),
                        payload: p.to_vec(),
                    });
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                // The consumer reconnects by itself and goes on from its
                // position; the deadline above bounds the wait.
                let e = Error::kafka(format!("read {topic}"), e);
                if !e.is_transient() {
                    return Err(e);
                }
                tracing::warn!("{e}: waiting for the broker");
            }
            None => {}
        }
    }
    Ok(out)
}

/// Enqueues one record, waiting while the producer's local queue is full.
pub async fn send(p: &TxProducer, topic: &str, key: &[u8], payload: &[u8]) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(Error::kafka(format!("produce to {topic}"), e)),
        }
    }
}
