//! The one exactly-once write path. Every phase (base chunks, diff batches,
//! watermark pages, verify's repairs) says *what* to write by implementing
//! [`Work`]; the [`Committer`] says how it becomes durable, in this order:
//!
//! 1. a Kafka transaction is begun (when Kafka is a target);
//! 2. the work sends its events into it and hands its HBase writes to the
//!    [`HbaseLane`] (one batch in flight while the next is prepared);
//! 3. every HBase write is acknowledged;
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
use tokio::task::JoinHandle;

use crate::checkpoint::JsonlAppender;
use crate::config::KafkaConfig;
use crate::error::{Error, Result, Retry};
use crate::sink::hbase::thrift2::{TDelete, TPut};
use crate::sink::hbase::wire::PutBuf;
use crate::sink::hbase::HbaseClient;
use crate::sink::kafka::tx::{make_tx_producer, read_markers, send, TxProducer};

/// A unit's progress record, committed in its Kafka transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub key: String,
    pub payload: Vec<u8>,
}

/// How long and how often a unit of work is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// No new attempt starts after this much time since the first failure.
    pub budget: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(300),
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: doubling from `first_delay`,
    /// capped, with up to 25% jitter so that workers do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .first_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = base.mul_f64(f64::from(nanos % 1000) / 4000.0);
        base + jitter
    }
}

/// What a retry loop does with an error, given its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Redo the unit after a backoff (abort first; rebuild when `rebuild`).
    Redo { rebuild: bool },
    /// Stop: the error is the phase's outcome.
    Stop,
}

/// The one retry classification of the write path.
pub(crate) fn next_step(e: &Error) -> Next {
    if matches!(e, Error::Interrupted) {
        return Next::Stop;
    }
    match e.retry() {
        Retry::Transient | Retry::Abort => Next::Redo { rebuild: false },
        Retry::Rebuild => Next::Redo { rebuild: true },
        Retry::Fenced | Retry::Never => Next::Stop,
    }
}

/// A read (no transaction: a scan, a watermark, a marker read) redone after
/// a backoff while [`next_step`] says another attempt can help, within the
/// policy's budget; on a blocking thread. `f` starts from scratch each time.
pub(crate) fn retry_blocking<T>(
    policy: &RetryPolicy,
    what: &str,
    mut f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut attempt = 0u32;
    let mut first_failure: Option<Instant> = None;
    loop {
        attempt += 1;
        let e = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let since = *first_failure.get_or_insert_with(Instant::now);
        let wait = policy.delay(attempt);
        match next_step(&e) {
            Next::Redo { .. } if since.elapsed() + wait <= policy.budget => {
                tracing::warn!(attempt, "retrying {what} in {wait:?}: {e}");
                std::thread::sleep(wait);
            }
            Next::Redo { .. } => {
                return Err(Error::Other(format!(
                    "{what}: gave up after {attempt} attempts in {:.0?} (retry budget {:?}): {e}",
                    since.elapsed(),
                    policy.budget
                )))
            }
            Next::Stop => return Err(e),
        }
    }
}

/// One phase's HBase writes: puts hand-encoded on the hot path, or generated
/// puts and deletes.
pub enum HbaseJob {
    Encoded(Vec<(String, PutBuf)>),
    Mutations {
        puts: Vec<(String, Vec<TPut>)>,
        deletes: Vec<(String, Vec<TDelete>)>,
    },
}

impl HbaseJob {
    fn run(self, c: &mut HbaseClient) -> Result<()> {
        match self {
            HbaseJob::Encoded(work) => {
                for (table, puts) in work {
                    c.put_encoded(&table, &puts)?;
                }
            }
            HbaseJob::Mutations { puts, deletes } => {
                // Calls of bounded size: a large batch never makes one
                // oversized Thrift message.
                for (table, v) in puts {
                    for part in split_by_size(v, |p| {
                        p.column_values
                            .iter()
                            .map(|c| c.qualifier.len() + c.value.len() + 32)
                            .sum::<usize>()
                    }) {
                        c.put_multiple(&table, part)?;
                    }
                }
                for (table, v) in deletes {
                    for part in split_by_size(v, |d| d.row.len() + 64) {
                        c.delete_multiple(&table, part)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Mutations per Thrift call, at most.
const CALL_ROWS: usize = 1000;
const CALL_BYTES: usize = 4 << 20;

/// Splits `v` into runs of at most `CALL_ROWS` items and about `CALL_BYTES`.
fn split_by_size<T>(v: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for x in v {
        let n = size(&x);
        if !cur.is_empty() && (cur.len() >= CALL_ROWS || bytes + n > CALL_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += n;
        cur.push(x);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One HBase connection with one job in flight while the next is prepared.
pub struct HbaseLane {
    addr: String,
    framed: bool,
    client: Option<HbaseClient>,
    pending: Option<JoinHandle<(HbaseClient, Result<()>)>>,
}

impl HbaseLane {
    pub fn new(addr: &str, framed: bool, client: Option<HbaseClient>) -> HbaseLane {
        HbaseLane {
            addr: addr.to_string(),
            framed,
            client,
            pending: None,
        }
    }

    /// Waits for the job in flight; its error, if any.
    async fn wait(&mut self) -> Result<()> {
        if let Some(h) = self.pending.take() {
            let (c, r) = h
                .await
                .map_err(|e| Error::Other(format!("HBase writer: {e}")))?;
            if r.is_ok() {
                self.client = Some(c);
            }
            r?;
        }
        Ok(())
    }

    async fn submit(&mut self, job: HbaseJob) -> Result<()> {
        self.wait().await?;
        let mut client = match self.client.take() {
            Some(c) => c,
            None => {
                let (a, f) = (self.addr.clone(), self.framed);
                blocking(move || HbaseClient::connect(&a, f))
                    .await
                    .map_err(as_transient)?
            }
        };
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let r = job.run(&mut client);
            (client, r)
        }));
        Ok(())
    }

    /// Drops a connection whose state is unknown after an error.
    async fn reset(&mut self) {
        if let Some(h) = self.pending.take() {
            let _ = h.await;
        }
        self.client = None;
    }
}

/// A server that refuses connections in the middle of a run is restarting:
/// worth another attempt (at start, the same error is a usage error).
pub(crate) fn as_transient(e: Error) -> Error {
    match e {
        Error::Unreachable {
            what,
            target,
            message,
        } => Error::hbase(
            format!("reconnect to {what} at {target}"),
            message,
            Retry::Transient,
        ),
        other => other,
    }
}

/// The unit of work being written: its events, HBase jobs and dead letters.
pub struct Unit<'a> {
    producer: Option<&'a TxProducer>,
    lane: Option<&'a mut HbaseLane>,
    dead: Vec<Vec<u8>>,
}

impl Unit<'_> {
    pub fn to_kafka(&self) -> bool {
        self.producer.is_some()
    }

    pub fn to_hbase(&self) -> bool {
        self.lane.is_some()
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
    dead: Arc<Mutex<JsonlAppender>>,
    policy: RetryPolicy,
    /// The marker of a commit whose outcome is unknown.
    unresolved: Option<Marker>,
    /// Kafka transactions committed by this committer.
    pub commits: u64,
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
            dead,
            policy,
            unresolved: None,
            commits: 0,
        }
    }

    /// Writes `work` as one unit, retrying it within the budget; `what` names
    /// it in messages ("chunk 12 of message").
    pub async fn commit(&mut self, what: &str, work: &mut impl Work) -> Result<()> {
        let mut attempt = 0u32;
        let mut first_failure: Option<Instant> = None;
        loop {
            attempt += 1;
            let e = match self.attempt(work).await {
                Ok(()) => return Ok(()),
                Err(e) => self.fenced_or(e),
            };
            let step = next_step(&e);
            self.recover(&e, step).await;
            let since = *first_failure.get_or_insert_with(Instant::now);
            let wait = self.policy.delay(attempt);
            match step {
                Next::Redo { .. } if since.elapsed() + wait <= self.policy.budget => {
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
                self.commits += 1;
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
            dead: Vec::new(),
        };
        let marker = work.write(&mut unit).await?;
        let dead = std::mem::take(&mut unit.dead);
        drop(unit);
        if let Some(l) = self.lane.as_mut() {
            l.wait().await?;
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
        match commit_transaction(&p, budget).await {
            Ok(()) => {
                self.commits += 1;
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

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Other(format!("blocking task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn errors_map_to_one_retry_decision() {
        let k = |c| Error::kafka("x", KafkaError::MessageProduction(c));
        assert_eq!(
            next_step(&k(C::AllBrokersDown)),
            Next::Redo { rebuild: false }
        );
        assert_eq!(next_step(&k(C::MessageSizeTooLarge)), Next::Stop);
        assert_eq!(
            next_step(&Error::kafka("x", KafkaError::Global(C::ProducerFenced))),
            Next::Stop
        );
        assert_eq!(
            next_step(&Error::kafka(
                "x",
                crate::error::KafkaCause::new("lost", Retry::Rebuild)
            )),
            Next::Redo { rebuild: true }
        );
        let io = Error::hbase("putMultiple t", "connection reset", Retry::Transient);
        assert_eq!(next_step(&io), Next::Redo { rebuild: false });
        let bad = Error::hbase("putMultiple t", "TableNotFoundException", Retry::Never);
        assert_eq!(next_step(&bad), Next::Stop);
        assert_eq!(next_step(&Error::Interrupted), Next::Stop);
        assert_eq!(next_step(&Error::Usage("x".into())), Next::Stop);
    }

    #[test]
    fn thrift_calls_are_split_by_rows_and_bytes() {
        let parts = split_by_size((0..2500).collect::<Vec<u32>>(), |_| 10);
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        let parts = split_by_size(vec![3usize << 20; 3], |x| *x);
        assert_eq!(parts.len(), 3);
        // One item larger than the cap still goes, alone.
        assert_eq!(split_by_size(vec![9usize << 20], |x| *x).len(), 1);
        assert!(split_by_size(Vec::<u8>::new(), |_| 1).is_empty());
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter() {
        let p = RetryPolicy {
            budget: Duration::from_secs(60),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for (attempt, base) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            let d = p.delay(attempt).as_millis() as u64;
            assert!(d >= base && d <= base + base / 4, "attempt {attempt}: {d}");
        }
    }
}
