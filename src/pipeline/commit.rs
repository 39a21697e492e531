//! The one exactly-once write path. Every phase (base chunks, diff batches,
//! watermark pages, verify's repairs) says *what* to write by implementing
//! [`Work`]; the [`Committer`] says how it becomes durable, in this order:
//!
//! 1. a Kafka transaction is begun (when Kafka is a target);
//! 2. the work sends its events into it and hands its HBase writes to the
//!    [`HbaseLane`] (one batch in flight while the next is prepared), or,
//!    for a bulk load, its cells to the [`Stager`] (sorted runs on disk);
//! 3. every HBase write is acknowledged (the staged runs are durable);
//! 4. the unit's dead letters are appended and fsynced;
//! 5. the progress marker is sent inside the same transaction, which commits.
//!
//! A failure anywhere aborts the transaction and redoes the whole unit after a
//! backoff (exponential, with jitter, within a time budget), as long as the
//! error's [`Retry`] kind says another attempt can help. A fatal producer error
//! makes a new producer (whose `init_transactions` fences the old one). A commit
//! whose outcome is unknown (it timed out, or failed after being sent) is
//! resolved by reading the unit's marker back before anything is sent again.
//! A producer fenced by another process stops the phase. The caller's local
//! checkpoint is written only after [`Committer::commit`] returns.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::util::Timeout;

pub use super::lane::{HbaseJob, HbaseLane};
pub use super::retry::RetryPolicy;
pub(crate) use super::retry::{blocking, count_retry, next_step, retry_blocking, Next};
pub use super::stage::Stager;
use crate::checkpoint::JsonlAppender;
use crate::config::KafkaConfig;
use crate::error::{Error, Result, Retry};
use crate::metrics;
use crate::sink::kafka::tx::{make_tx_producer, read_markers, send, TxProducer};

/// A unit's progress record, committed in its Kafka transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub key: String,
    pub payload: Vec<u8>,
}

/// The unit of work being written: its events, HBase jobs and dead letters.
pub struct Unit<'a> {
    producer: Option<&'a TxProducer>,
    lane: Option<&'a mut HbaseLane>,
    stage: Option<&'a mut Stager>,
    dead: Vec<Vec<u8>>,
}

impl Unit<'_> {
    pub fn to_kafka(&self) -> bool {
        self.producer.is_some()
    }

    pub fn to_hbase(&self) -> bool {
        self.lane.is_some() || self.stage.is_some()
    }

    /// The stager, when HBase's cells are staged for a bulk load.
    pub fn stager(&mut self) -> Option<&mut Stager> {
        self.stage.as_deref_mut()
    }

    /// Sends an event into the unit's transaction (no-op without Kafka).
    pub async fn send(&mut self, topic: &str, key: &[u8], payload: &[u8]) -> Result<()> {
        match self.producer {
            Some(p) => send(p, topic, key, payload).await,
            None => Ok(()),
        }
    }

    /// Sends an event to a given partition (a repair goes where the key is).
    pub fn send_to(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        payload: &[u8],
    ) -> Result<()> {
        let Some(p) = self.producer else {
            return Ok(());
        };
        let rec = BaseRecord::to(topic)
            .key(key)
            .payload(payload)
            .partition(partition);
        p.send(rec)
            .map_err(|(e, _)| Error::kafka(format!("produce to {topic}"), e))
    }

    /// Hands an HBase job to the lane; it runs while the caller goes on
    /// (no-op without HBase).
    pub async fn hbase(&mut self, job: HbaseJob) -> Result<()> {
        match self.lane.as_deref_mut() {
            Some(l) => l.submit(job).await,
            None => Ok(()),
        }
    }

    /// A dead letter (an encoded JSON line), made durable before the commit.
    pub fn dead_letter(&mut self, line: Vec<u8>) {
        self.dead.push(line);
    }
}

/// A unit of work: writes itself through a [`Unit`] and names its marker.
/// It may be called several times (each attempt starts from scratch).
pub trait Work {
    fn write(&mut self, unit: &mut Unit<'_>)
        -> impl Future<Output = Result<Option<Marker>>> + Send;
}

/// A producer's transactional identity.
struct KafkaSide {
    cfg: KafkaConfig,
    tx_id: String,
    producer: Option<Arc<TxProducer>>,
}

/// Writes units of work exactly once (see the module comment).
pub struct Committer {
    kafka: Option<KafkaSide>,
    lane: Option<HbaseLane>,
    stage: Option<Stager>,
    dead: Arc<Mutex<JsonlAppender>>,
    policy: RetryPolicy,
    /// The marker of a commit whose outcome is unknown.
    unresolved: Option<Marker>,
    /// Kafka transactions committed by this committer.
    pub commits: u64,
    /// What a unit is, for the metrics (`base_chunk`, `diff_batch`, ...).
    unit: &'static str,
}

impl Committer {
    /// `producer`: an initialised producer of `tx_id`, or None to make one
    /// when first needed. `kafka` None: HBase only (no transaction, no marker).
    pub fn new(
        kafka: Option<(KafkaConfig, String, Option<TxProducer>)>,
        lane: Option<HbaseLane>,
        dead: Arc<Mutex<JsonlAppender>>,
        policy: RetryPolicy,
    ) -> Committer {
        Committer {
            kafka: kafka.map(|(cfg, tx_id, p)| KafkaSide {
                cfg,
                tx_id,
                producer: p.map(Arc::new),
            }),
            lane,
            stage: None,
            dead,
            policy,
            unresolved: None,
            commits: 0,
            unit: "unit",
        }
    }

    /// Names the units in the metrics (`falcon_unit_duration_seconds{unit}`).
    pub fn named(mut self, unit: &'static str) -> Committer {
        self.unit = unit;
        self
    }

    /// HBase's cells go to `stage` (a bulk load) rather than to a lane.
    pub fn with_stage(mut self, stage: Stager) -> Committer {
        self.stage = Some(stage);
        self
    }

    /// Writes `work` as one unit, retrying it within the budget; `what` names
    /// it in messages ("chunk 12 of message").
    pub async fn commit(&mut self, what: &str, work: &mut impl Work) -> Result<()> {
        let mut attempt = 0u32;
        let mut first_failure: Option<Instant> = None;
        let started = Instant::now();
        loop {
            attempt += 1;
            let e = match self.attempt(work).await {
                Ok(()) => {
                    metrics::observe(&metrics::UNIT_SECONDS, &[self.unit], started.elapsed());
                    return Ok(());
                }
                Err(e) => self.fenced_or(e),
            };
            let step = next_step(&e);
            self.recover(&e, step).await;
            let since = *first_failure.get_or_insert_with(Instant::now);
            let wait = self.policy.delay(attempt);
            match step {
                Next::Redo { .. } if since.elapsed() + wait <= self.policy.budget => {
                    count_retry(&e);
                    tracing::warn!(attempt, "retrying {what} in {wait:?}: {e}");
                    tokio::time::sleep(wait).await;
                }
                Next::Redo { .. } => {
                    return Err(Error::Other(format!(
                        "{what}: gave up after {attempt} attempts in {:.0?} (retry budget {:?}): {e}",
                        since.elapsed(),
                        self.policy.budget
                    )))
                }
                Next::Stop if e.retry() == Retry::Fenced => {
                    return Err(Error::Other(format!(
                        "{what}: another process took over this run's Kafka transactional id ({}); \
                         two processes of the same run and shard must not run at once — this one stops: {e}",
                        self.kafka.as_ref().map_or("", |k| k.tx_id.as_str())
                    )))
                }
                Next::Stop => return Err(e),
            }
        }
    }

    /// A producer in a fatal state reports later calls as `_FATAL`; its first
    /// fatal error says whether another process fenced it.
    fn fenced_or(&self, e: Error) -> Error {
        use rdkafka::types::RDKafkaErrorCode as C;
        let fatal = self
            .kafka
            .as_ref()
            .and_then(|k| k.producer.as_ref())
            .and_then(|p| p.client().fatal_error());
        match fatal {
            Some((C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch, reason)) => {
                Error::kafka(
                    "transaction",
                    crate::error::KafkaCause::new(format!("fenced: {reason}"), Retry::Fenced),
                )
            }
            _ => e,
        }
    }

    /// After a failed attempt: the transaction is aborted (or the producer
    /// dropped, to be made anew) and the HBase connection reset.
    async fn recover(&mut self, e: &Error, step: Next) {
        if let Some(l) = self.lane.as_mut() {
            l.reset().await;
        }
        if let Some(s) = self.stage.as_mut() {
            s.reset();
        }
        let Some(k) = self.kafka.as_mut() else {
            return;
        };
        if e.retry() == Retry::Fenced {
            // Never fence back: the producer is dropped as it is.
            k.producer = None;
            return;
        }
        let rebuild = matches!(step, Next::Redo { rebuild: true });
        if let Some(p) = k.producer.clone() {
            let aborted = !rebuild
                && blocking(move || {
                    p.abort_transaction(Timeout::After(Duration::from_secs(30)))
                        .map_err(|e| Error::kafka("abort", e))
                })
                .await
                .is_ok();
            if !aborted {
                k.producer = None;
            }
        }
    }

    fn count_commit(&mut self) {
        self.commits += 1;
        metrics::inc(&metrics::KAFKA_TXNS, &[self.unit], 1);
    }

    async fn attempt(&mut self, work: &mut impl Work) -> Result<()> {
        let producer = match self.kafka.as_mut() {
            None => None,
            Some(k) => {
                if k.producer.is_none() {
                    let (cfg, id) = (k.cfg.clone(), k.tx_id.clone());
                    k.producer = Some(Arc::new(
                        blocking(move || make_tx_producer(&cfg, &id)).await?,
                    ));
                }
                k.producer.clone()
            }
        };
        // A commit of unknown outcome: its marker tells whether it went through.
        if let (Some(m), Some(k)) = (self.unresolved.clone(), self.kafka.as_ref()) {
            let cfg = k.cfg.clone();
            if marker_committed(&cfg, &m).await? {
                tracing::info!(marker = %m.key, "the unit's commit had gone through");
                self.unresolved = None;
                self.count_commit();
                return Ok(());
            }
            self.unresolved = None;
        }
        if let Some(p) = &producer {
            p.begin_transaction()
                .map_err(|e| Error::kafka("begin transaction", e))?;
        }
        let mut unit = Unit {
            producer: producer.as_deref(),
            lane: self.lane.as_mut(),
            stage: self.stage.as_mut(),
            dead: Vec::new(),
        };
        let marker = work.write(&mut unit).await?;
        let dead = std::mem::take(&mut unit.dead);
        drop(unit);
        if let Some(l) = self.lane.as_mut() {
            l.wait().await?;
        }
        if let Some(s) = self.stage.as_mut() {
            tokio::task::block_in_place(|| s.seal())?;
        }
        if !dead.is_empty() {
            let mut f = self
                .dead
                .lock()
                .map_err(|_| Error::Other("dead-letter file lock poisoned".into()))?;
            for d in &dead {
                f.append_raw(d)?;
            }
            f.sync()?;
        }
        let (Some(p), Some(k)) = (producer, self.kafka.as_ref()) else {
            return Ok(());
        };
        if let Some(m) = &marker {
            send(&p, &k.cfg.progress_topic, m.key.as_bytes(), &m.payload).await?;
        }
        let budget = self.policy.budget;
        let committing = Instant::now();
        match commit_transaction(&p, budget).await {
            Ok(()) => {
                metrics::observe(
                    &metrics::KAFKA_COMMIT_SECONDS,
                    &[self.unit],
                    committing.elapsed(),
                );
                self.count_commit();
                Ok(())
            }
            Err(e) => {
                if e.retry() != Retry::Fenced && e.retry() != Retry::Abort {
                    // Sent, then failed or timed out: it may have gone through.
                    self.unresolved = marker;
                    if self.unresolved.is_some() {
                        return Err(Error::kafka(
                            "commit",
                            crate::error::KafkaCause::new(
                                format!("outcome unknown ({e}); resolving from the marker"),
                                Retry::Rebuild,
                            ),
                        ));
                    }
                }
                Err(e)
            }
        }
    }
}

/// Commits, calling again while librdkafka says the call may be retried
/// (a timeout: the commit may still complete).
async fn commit_transaction(p: &Arc<TxProducer>, budget: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let r = tokio::task::block_in_place(|| {
            p.commit_transaction(Timeout::After(Duration::from_secs(60)))
        })
        .map_err(|e| Error::kafka("commit", e));
        #[cfg(feature = "failpoints")]
        let r = r.and_then(|()| failpoint_commit());
        match r {
            Err(e) if e.retry() == Retry::Transient && start.elapsed() < budget => {
                tracing::warn!("commit not confirmed yet, asking again: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// `FALCON_FAILPOINT=commit-lost:N`: the Nth commit (counted per process)
/// succeeds on the broker, then reports a fatal error, as a commit whose
/// reply was lost would.
#[cfg(feature = "failpoints")]
fn failpoint_commit() -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    let n = COMMITS.fetch_add(1, Ordering::SeqCst) + 1;
    let at = std::env::var("FALCON_FAILPOINT").ok().and_then(|v| {
        v.strip_prefix("commit-lost:")
            .and_then(|n| n.parse::<u64>().ok())
    });
    if at == Some(n) {
        tracing::warn!("failpoint: commit {n} reported as lost");
        return Err(Error::kafka(
            "commit",
            crate::error::KafkaCause::new("failpoint: commit reply lost", Retry::Rebuild),
        ));
    }
    Ok(())
}

/// Whether the latest committed record under the marker's key is this marker.
async fn marker_committed(cfg: &KafkaConfig, m: &Marker) -> Result<bool> {
    let (cfg, key) = (cfg.clone(), m.key.clone());
    let found = blocking(move || read_markers(&cfg, &key)).await?;
    Ok(found
        .iter()
        .rev()
        .find(|r| r.key == m.key)
        .is_some_and(|r| r.payload == m.payload))
}
