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
//! A [`Pipeline`] overlaps units: a unit's step 2 starts while the previous
//! unit's commit (step 5) is still under way. Its HBase writes go out at once;
//! its events are held until that commit has succeeded, and only then is its
//! own transaction begun. So a unit's marker is sent only after every earlier
//! unit committed and its own HBase writes were acknowledged: a marker never
//! claims a position whose writes are not durable. A crash between the two
//! leaves HBase ahead of the last marker, which is what a crash between steps
//! 3 and 5 always left: the rerun replays from the marker (HBase writes are
//! idempotent, and a replay stamps at or above the first attempt, see
//! `pipeline::clock`). When the previous commit fails, the overlapped unit's
//! writes are dropped, the previous unit is redone alone, then this one.
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
use tokio::task::JoinHandle;

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

/// An event held until the previous unit's transaction has committed.
struct Held {
    topic: String,
    partition: Option<i32>,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// The unit of work being written: its events, HBase jobs and dead letters.
pub struct Unit<'a> {
    producer: Option<&'a TxProducer>,
    /// Overlapped with the previous unit's commit: the events, held.
    held: Option<Vec<Held>>,
    lane: Option<&'a mut HbaseLane>,
    stage: Option<&'a mut Stager>,
    dead: Vec<Vec<u8>>,
}

impl Unit<'_> {
    pub fn to_kafka(&self) -> bool {
        self.producer.is_some() || self.held.is_some()
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
        if let Some(h) = self.held.as_mut() {
            h.push(Held {
                topic: topic.to_string(),
                partition: None,
                key: key.to_vec(),
                payload: payload.to_vec(),
            });
            return Ok(());
        }
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
        if let Some(h) = self.held.as_mut() {
            h.push(Held {
                topic: topic.to_string(),
                partition: Some(partition),
                key: key.to_vec(),
                payload: payload.to_vec(),
            });
            return Ok(());
        }
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

/// A unit's Kafka commit under way while the next unit is written.
struct Committing {
    marker: Option<Marker>,
    /// The commit: when it went through (Unix ms) and how long it took.
    task: JoinHandle<Result<(u64, Duration)>>,
    /// Its outcome, once observed by [`Committer::commit_done`].
    outcome: Option<Result<(u64, Duration)>>,
}

/// Why an attempt failed: its own unit, or the previous unit's commit it
/// overlapped (that unit must then be redone first).
enum Failure {
    Own(Error),
    Previous(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Own(e)
    }
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
    /// The previous unit's commit, under way ([`Pipeline`] only).
    flight: Option<Committing>,
    /// When the unit of `flight` was seen committed (Unix ms), not yet
    /// reported to the pipeline.
    settled: Option<u64>,
    /// A transaction was begun and has not committed (nor been aborted).
    open: bool,
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
            flight: None,
            settled: None,
            open: false,
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
        match self.run(what, work, false).await {
            Ok(()) => Ok(()),
            Err(Failure::Own(e) | Failure::Previous(e)) => Err(e),
        }
    }

    /// The retry loop around [`Committer::attempt`]. `overlap`: the unit's
    /// commit is left under way (in `flight`) when it returns.
    async fn run(
        &mut self,
        what: &str,
        work: &mut impl Work,
        overlap: bool,
    ) -> Result<(), Failure> {
        let mut attempt = 0u32;
        let mut first_failure: Option<Instant> = None;
        let started = Instant::now();
        loop {
            attempt += 1;
            let (e, previous) = match self.attempt(work, overlap).await {
                Ok(()) => {
                    metrics::observe(&metrics::UNIT_SECONDS, &[self.unit], started.elapsed());
                    return Ok(());
                }
                Err(Failure::Own(e)) => (e, false),
                Err(Failure::Previous(e)) => (e, true),
            };
            // A commit still under way ends before anything is aborted.
            let (e, previous) = match self.settle().await {
                Err(pe) => (pe, true),
                Ok(()) => (e, previous),
            };
            let e = self.fenced_or(e);
            let step = next_step(&e);
            self.recover(&e, step).await;
            if previous && !matches!(step, Next::Stop) {
                return Err(Failure::Previous(e));
            }
            let since = *first_failure.get_or_insert_with(Instant::now);
            let wait = self.policy.delay(attempt);
            match step {
                Next::Redo { .. } if since.elapsed() + wait <= self.policy.budget => {
                    count_retry(&e);
                    tracing::warn!(attempt, "retrying {what} in {wait:?}: {e}");
                    tokio::time::sleep(wait).await;
                }
                Next::Redo { .. } => {
                    return Err(Failure::Own(Error::Other(format!(
                        "{what}: gave up after {attempt} attempts in {:.0?} (retry budget {:?}): {e}",
                        since.elapsed(),
                        self.policy.budget
                    ))))
                }
                Next::Stop if e.retry() == Retry::Fenced => {
                    return Err(Failure::Own(Error::Other(format!(
                        "{what}: another process took over this run's Kafka transactional id ({}); \
                         two processes of the same run and shard must not run at once — this one stops: {e}",
                        self.kafka.as_ref().map_or("", |k| k.tx_id.as_str())
                    ))))
                }
                Next::Stop => return Err(Failure::Own(e)),
            }
        }
    }

    /// Waits for the commit under way, if any. It went through: `settled`
    /// says when. It failed: the error (the outcome unknown: its marker is
    /// read back before anything is sent again).
    async fn settle(&mut self) -> Result<()> {
        self.commit_done().await;
        let Some(f) = self.flight.take() else {
            return Ok(());
        };
        match f.outcome.expect("commit_done observed the outcome") {
            Ok((at_ms, took)) => {
                metrics::observe(&metrics::KAFKA_COMMIT_SECONDS, &[self.unit], took);
                self.open = false;
                self.count_commit();
                self.settled = Some(at_ms);
                Ok(())
            }
            Err(e) => Err(self.commit_failed(e, f.marker)),
        }
    }

    /// Returns once the commit under way (if any) has ended; cancel-safe.
    async fn commit_done(&mut self) {
        if let Some(f) = self.flight.as_mut() {
            if f.outcome.is_none() {
                let r = (&mut f.task)
                    .await
                    .unwrap_or_else(|e| Err(Error::Other(format!("Kafka commit task: {e}"))));
                f.outcome = Some(r);
            }
        }
    }

    /// A commit that failed after its marker was sent may have gone through.
    fn commit_failed(&mut self, e: Error, marker: Option<Marker>) -> Error {
        if e.retry() == Retry::Fenced || e.retry() == Retry::Abort || marker.is_none() {
            return e;
        }
        self.unresolved = marker;
        Error::kafka(
            "commit",
            crate::error::KafkaCause::new(
                format!("outcome unknown ({e}); resolving from the marker"),
                Retry::Rebuild,
            ),
        )
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

    /// After a failed attempt (no commit under way any more): the
    /// transaction is aborted (or the producer dropped, to be made anew) and
    /// the HBase connection reset.
    async fn recover(&mut self, e: &Error, step: Next) {
        debug_assert!(self.flight.is_none(), "recover with a commit under way");
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
        let open = std::mem::take(&mut self.open);
        if let Some(p) = k.producer.clone() {
            let aborted = !rebuild
                && (!open
                    || blocking(move || {
                        p.abort_transaction(Timeout::After(Duration::from_secs(30)))
                            .map_err(|e| Error::kafka("abort", e))
                    })
                    .await
                    .is_ok());
            if !aborted {
                k.producer = None;
            }
        }
    }

    fn count_commit(&mut self) {
        self.commits += 1;
        metrics::inc(&metrics::KAFKA_TXNS, &[self.unit], 1);
    }

    async fn attempt(&mut self, work: &mut impl Work, overlap: bool) -> Result<(), Failure> {
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
        // The previous unit still committing: this unit's HBase writes go out
        // now, its events wait for that commit.
        let overlapped = self.flight.is_some();
        if let (Some(p), false) = (&producer, overlapped) {
            p.begin_transaction()
                .map_err(|e| Error::kafka("begin transaction", e))?;
            self.open = true;
        }
        let mut unit = Unit {
            producer: if overlapped {
                None
            } else {
                producer.as_deref()
            },
            held: overlapped.then(Vec::new),
            lane: self.lane.as_mut(),
            stage: self.stage.as_mut(),
            dead: Vec::new(),
        };
        let marker = work.write(&mut unit).await?;
        let dead = std::mem::take(&mut unit.dead);
        let held = unit.held.take();
        drop(unit);
        if let Some(held) = held {
            #[cfg(feature = "failpoints")]
            if super::failpoint::reached("overlap") {
                if let Some(l) = self.lane.as_mut() {
                    l.wait().await?;
                }
                super::failpoint::kill("overlap");
            }
            self.settle().await.map_err(Failure::Previous)?;
            if let Some(p) = &producer {
                p.begin_transaction()
                    .map_err(|e| Error::kafka("begin transaction", e))?;
                self.open = true;
                let mut unit = Unit {
                    producer: Some(p),
                    held: None,
                    lane: None,
                    stage: None,
                    dead: Vec::new(),
                };
                for h in held {
                    match h.partition {
                        Some(part) => unit.send_to(&h.topic, part, &h.key, &h.payload)?,
                        None => unit.send(&h.topic, &h.key, &h.payload).await?,
                    }
                }
            }
        }
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
        if overlap {
            let task = tokio::spawn(async move {
                let t0 = Instant::now();
                commit_transaction(&p, budget).await?;
                Ok((crate::pipeline::base::now_ms(), t0.elapsed()))
            });
            self.flight = Some(Committing {
                marker,
                task,
                outcome: None,
            });
            return Ok(());
        }
        let committing = Instant::now();
        match commit_transaction(&p, budget).await {
            Ok(()) => {
                self.open = false;
                metrics::observe(
                    &metrics::KAFKA_COMMIT_SECONDS,
                    &[self.unit],
                    committing.elapsed(),
                );
                self.count_commit();
                Ok(())
            }
            Err(e) => Err(Failure::Own(self.commit_failed(e, marker))),
        }
    }
}

/// Units written in order through one [`Committer`], each one's HBase writes
/// overlapping the previous one's Kafka commit (see the module comment).
/// A unit is reported committed — and only then may its caller record it
/// locally — once its transaction is known to have committed.
pub struct Pipeline<W> {
    committer: Committer,
    /// The unit whose commit is (or was last) under way, and its name.
    previous: Option<(String, W)>,
}

impl<W: Work> Pipeline<W> {
    pub fn new(committer: Committer) -> Pipeline<W> {
        Pipeline {
            committer,
            previous: None,
        }
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Whether a unit's commit is under way.
    pub fn committing(&self) -> bool {
        self.previous.is_some()
    }

    /// Writes `work`, leaving its commit under way. Returns the units now
    /// known committed (the previous one, normally), oldest first, each with
    /// when it was seen committed (Unix ms).
    pub async fn push(&mut self, what: String, mut work: W) -> Result<Vec<(W, u64)>> {
        let mut done = Vec::new();
        loop {
            match self.committer.run(&what, &mut work, true).await {
                Ok(()) => break,
                Err(Failure::Own(e)) => return Err(e),
                Err(Failure::Previous(e)) => {
                    let (prev_what, mut prev) = self.previous.take().expect("a previous unit");
                    tracing::warn!("redoing {prev_what}, then {what}: {e}");
                    self.committer.commit(&prev_what, &mut prev).await?;
                    done.push((prev, crate::pipeline::base::now_ms()));
                }
            }
        }
        // A successful unit saw every earlier commit through.
        self.collect(&mut done);
        if self.committer.flight.is_some() {
            self.previous = Some((what, work));
        } else {
            done.push((work, crate::pipeline::base::now_ms()));
        }
        Ok(done)
    }

    /// Waits for the commit under way (redoing its unit if it failed): the
    /// units now known committed.
    pub async fn finish(&mut self) -> Result<Vec<(W, u64)>> {
        let mut done = Vec::new();
        if let Err(e) = self.committer.settle().await {
            let e = self.committer.fenced_or(e);
            let step = next_step(&e);
            self.committer.recover(&e, step).await;
            let (what, mut prev) = self.previous.take().expect("a previous unit");
            if matches!(step, Next::Stop) {
                return Err(Error::Other(format!("{what}: {e}")));
            }
            tracing::warn!("redoing {what}: {e}");
            self.committer.commit(&what, &mut prev).await?;
            done.push((prev, crate::pipeline::base::now_ms()));
        }
        self.collect(&mut done);
        Ok(done)
    }

    /// Returns once the commit under way has ended (cancel-safe: for a
    /// `select!` with the next unit's arrival).
    pub async fn commit_done(&mut self) {
        self.committer.commit_done().await;
    }

    fn collect(&mut self, done: &mut Vec<(W, u64)>) {
        let at = self.committer.settled.take();
        if let Some((_, w)) = self.previous.take() {
            done.push((w, at.unwrap_or_else(crate::pipeline::base::now_ms)));
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
