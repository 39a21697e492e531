//! `diff`: replays the binlog since the base (or the last diff) into both targets.
//!
//! - [`start`]: where to start — `--from`, the run's committed position, or
//!   the smallest start of every base shard, read from Kafka;
//! - the reader (`source::binlog`) streams whole source transactions of the
//!   mapped tables;
//! - [`apply`]: changes → a [`batch::Batch`] of target writes, admitted by
//!   the one admission rule, written by the shared committer's pipeline with
//!   the marker of the position after the batch (a batch's HBase writes
//!   overlap the previous batch's Kafka commit); then the local checkpoint.
//!
//! A restart fences the old producer, reads the last committed marker, and
//! resumes from the furthest of it and the local checkpoint: committed
//! events are never sent twice, and HBase writes are idempotent.

mod apply;
pub(crate) mod batch;
pub mod start;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::clock::WriteClock;
use super::commit::{Committer, HbaseLane, Pipeline, RetryPolicy};
use crate::checkpoint::{dead, read_json, JsonlAppender, StateDir};
use crate::config::{Config, EntityKind};
use crate::error::{Error, Result};
use crate::mapping::{Admission, Rooms};
use crate::position::Position;
use crate::source::binlog::{self, Item, Reader};

#[derive(Debug, Clone)]
pub struct DiffOptions {
    pub state_dir: PathBuf,
    pub run_id: String,
    pub base_run_id: String,
    pub from: Option<Position>,
    pub follow: bool,
    pub max_batch: usize,
    pub progress_every: Duration,
    pub retry: RetryPolicy,
}

/// What a diff run has committed: the local checkpoint and the Kafka marker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub run: String,
    pub position: Position,
    /// Changes of the transaction starting at `position` already applied
    /// (a transaction too large for one batch is applied in parts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip: u64,
    /// Lowest version given to rows of tables without a version column.
    pub version_floor_ms: u64,
    /// The last HBase timestamp written (`pipeline::clock`): a resumed run
    /// stamps above it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clock_ms: u64,
    /// When the batch was written (Unix ms), and its lag then (source commit
    /// of its last transaction → written): what `status` shows of the diff.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub committed_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lag_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffSummary {
    pub command: &'static str,
    pub mode: &'static str,
    pub run_id: String,
    pub follow: bool,
    pub from: Position,
    pub to: Position,
    /// The source position `--until-now` caught up to.
    pub target: Option<Position>,
    /// `caught_up` or `interrupted`.
    pub stopped: &'static str,
    /// Row changes of mapped tables read from the binlog.
    pub events_read: u64,
    pub transactions: u64,
    pub kafka_transactions: u64,
    /// Per table, per kind (`insert`, `update`, `soft_delete`, `hard_delete`).
    pub applied: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub applied_total: u64,
    pub dead_lettered: u64,
    pub dead_letter_reasons: BTreeMap<String, BTreeMap<String, u64>>,
    /// Source commit → both targets, at the last batch (second resolution: binlog time is in seconds).
    pub lag_s: f64,
    pub lag_p50_s: f64,
    pub lag_p99_s: f64,
    /// Arrival from the binlog → both targets acknowledged (millisecond resolution).
    pub apply_latency_p50_ms: f64,
    pub apply_latency_p99_ms: f64,
    pub elapsed_s: f64,
    pub changes_per_s: f64,
    pub dead_letter_file: String,
    pub checkpoint_file: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A transaction is applied in parts of at most `--max-batch` changes or this
/// many KiB of row images (so a Thrift call or a Kafka transaction stays small).
const PART_KIB: u64 = 16 * 1024;
/// KiB of row images the binlog reader may hold ahead of the applier.
const READ_AHEAD_KIB: u64 = 64 * 1024;

/// Milliseconds, in 10 ms buckets up to 10 minutes.
pub(crate) struct Histogram {
    buckets: Vec<u64>,
    n: u64,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            buckets: vec![0; 60_001],
            n: 0,
        }
    }
    pub(crate) fn add(&mut self, ms: u64, count: u64) {
        let i = ((ms / 10) as usize).min(self.buckets.len() - 1);
        self.buckets[i] += count;
        self.n += count;
    }
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let want = ((self.n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= want {
                return (i as f64) * 10.0 + 5.0;
            }
        }
        (self.buckets.len() as f64) * 10.0
    }
}

pub async fn run(cfg: Config, opts: DiffOptions) -> Result<DiffSummary> {
    let started = Instant::now();
    let database = cfg.database().ok_or_else(|| {
        Error::config(
            cfg.path.display().to_string(),
            "source.url names no database",
        )
    })?;
    let pool = crate::source::mysql::connect(&cfg, 4).await?;
    crate::source::preflight::require(&pool, &cfg, true).await?;
    let schema = Arc::new(binlog::snapshot_schema(&pool, &database, &cfg.tables).await?);
    let prepared = crate::sink::prepare(&cfg, &cfg.tables, true, true).await?;
    let state = StateDir::new(&opts.state_dir);

    // Fence an earlier attempt, then learn where to start.
    let begun = start::begin(&cfg, &opts, &pool, &database, &state).await?;
    let mut start = begun.start.clone();
    if let Err(e) = binlog::check_available(&pool, &start).await {
        // A checkpoint of another server (a failover): found again by its GTID.
        let gtid = match &start {
            Position::Binlog { gtid, .. } if begun.from_checkpoint => gtid.clone(),
            _ => String::new(),
        };
        match crate::source::mysql::position_of_gtid(&pool, &gtid).await? {
            Some(p) if !gtid.is_empty() => {
                tracing::warn!(recorded = %start, gtid = %gtid, found = %p, "the checkpoint's position is not this server's: resuming from its GTID");
                start = p;
            }
            _ => return Err(e),
        }
    }
    let target = if opts.follow {
        None
    } else {
        Some(crate::source::mysql::binlog_position(&pool).await?)
    };
    tracing::info!(run = %opts.run_id, from = %start, to = %target.as_ref().map_or("(follow)".to_string(), |t| t.to_string()), "diff started");

    let dead_path = state.diff_dead(&opts.run_id);
    // Dead letters at or after the start are for changes about to be read again.
    dead::prune(&dead_path, |v| {
        v["position"]
            .as_str()
            .and_then(Position::parse)
            .is_some_and(|pos| pos < start)
    })?;
    let kinds: Vec<EntityKind> = cfg.tables.iter().map(|t| t.kind).collect();
    let rooms = Arc::new(Rooms::for_kinds(&pool, &kinds).await?);

    // The GTID state at the start, asked once: the reader follows it from
    // there (asking per batch costs a read of the binlog file up to the
    // position, seconds late in a large file).
    let track_gtid = match &start {
        Position::Binlog { gtid, .. } if !gtid.is_empty() => true,
        Position::Binlog { file, offset, .. } => {
            match crate::source::mysql::gtid_state_at(&pool, &start).await {
                Some(state) => {
                    start = Position::Binlog {
                        file: file.clone(),
                        offset: *offset,
                        gtid: state.to_string(),
                    };
                    true
                }
                None => false,
            }
        }
        Position::Watermark { .. } => false,
    };

    let server_id = binlog::server_id(&begun.marker_key);
    let stream = binlog::open_stream(&cfg, server_id, &start).await?;
    // Room for a few batches of source transactions: the reader keeps reading
    // while a batch is written (bounded in bytes by the reader's budget too).
    let (tx, mut rx) = mpsc::channel::<Item>((4 * opts.max_batch).clamp(1024, 65_536));
    let reader = Reader {
        schema: schema.clone(),
        database: database.clone(),
        start: start.clone(),
        skip: begun.skip,
        stop_at: target.clone(),
        part_changes: opts.max_batch,
        part_kib: PART_KIB,
        budget: Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_KIB as usize)),
        track_gtid,
    };
    let reader_task = tokio::spawn(follow_binlog(
        cfg.clone(),
        server_id,
        reader,
        stream,
        tx,
        opts.retry,
    ));

    let (interrupted, stop) = super::on_interrupt("finishing the batch in hand");
    let dead_file = Arc::new(std::sync::Mutex::new(JsonlAppender::open(&dead_path)?));
    let pipeline = Pipeline::new(
        Committer::new(
            Some((
                cfg.kafka.clone(),
                begun.txn_id.clone(),
                Some(begun.producer),
            )),
            Some(HbaseLane::new(&cfg.hbase, prepared.hbase)),
            dead_file,
            opts.retry,
        )
        .named("diff_batch"),
    );
    let checkpoint_path = state.diff_checkpoint(&opts.run_id);
    let mut a = apply::Applier {
        admission: Admission::new(rooms, cfg.kafka.message_max_bytes),
        cfg,
        run_id: opts.run_id.clone(),
        marker_key: begun.marker_key.clone(),
        schema,
        pipeline,
        floor_ms: begun.floor_ms,
        clock: WriteClock::restart(
            begun.clock_ms,
            begun.floor_ms,
            crate::pipeline::base::now_ms(),
        ),
        checkpoint_path: checkpoint_path.clone(),
        committed: (start.clone(), begun.skip),
        pushed: (start.clone(), begun.skip),
        seen: (start.clone(), begun.skip),
        last_commit: Instant::now(),
        read: 0,
        txs: 0,
        applied: BTreeMap::new(),
        dead_count: 0,
        lag: Histogram::new(),
        latency: Histogram::new(),
        last_lag_ms: 0,
    };
    let mut last_log = Instant::now();
    let result: Result<()> = async {
        loop {
            let first = tokio::select! {
                it = rx.recv() => it,
                _ = stop.notified() => None,
                // Nothing new: the batch whose commit is under way is recorded.
                _ = a.pipeline.commit_done(), if a.pipeline.committing() => {
                    a.settle().await?;
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut items = vec![first];
            let mut changes = item_changes(&items[0]);
            while changes < opts.max_batch && !is_part(items.last()) {
                match rx.try_recv() {
                    Ok(it) => {
                        changes += item_changes(&it);
                        items.push(it);
                    }
                    Err(_) => break,
                }
            }
            a.apply(items).await?;
            if last_log.elapsed() >= opts.progress_every {
                last_log = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let total: u64 = a.applied.values().sum();
                tracing::info!(
                    position = %apply::show(&a.committed),
                    applied = total,
                    changes_per_s = (total as f64 / secs) as u64,
                    dead_lettered = a.dead_count,
                    lag_s = a.last_lag_ms as f64 / 1000.0,
                    "diff progress"
                );
            }
        }
        if a.seen > a.pushed {
            a.commit_position_only().await?;
        }
        a.settle().await
    }
    .await;
    let was_interrupted = interrupted.load(Ordering::SeqCst);
    result?;
    if !was_interrupted {
        // The reader ended (caught up, or failed): its verdict stands.
        reader_task
            .await
            .map_err(|e| Error::Other(format!("binlog reader: {e}")))??;
    } else {
        reader_task.abort();
    }

    let elapsed = started.elapsed().as_secs_f64();
    let mut applied: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for s in a.schema.iter() {
        applied.insert(s.mapping.source.clone(), BTreeMap::new());
    }
    for ((t, kind), n) in &a.applied {
        *applied
            .entry(a.schema[*t].mapping.source.clone())
            .or_default()
            .entry(kind)
            .or_default() += n;
    }
    let applied_total: u64 = a.applied.values().sum();
    if a.read != applied_total + a.dead_count {
        return Err(Error::Other(format!(
            "diff: read {} changes != applied {applied_total} + dead-lettered {}",
            a.read, a.dead_count
        )));
    }
    Ok(DiffSummary {
        command: "diff",
        mode: "binlog",
        run_id: opts.run_id,
        follow: opts.follow,
        from: start,
        to: a.committed.0.clone(),
        target,
        stopped: if was_interrupted {
            "interrupted"
        } else {
            "caught_up"
        },
        events_read: a.read,
        transactions: a.txs,
        kafka_transactions: a.pipeline.committer().commits,
        applied,
        applied_total,
        dead_lettered: a.dead_count,
        dead_letter_reasons: dead::reasons(&dead_path)?,
        lag_s: a.last_lag_ms as f64 / 1000.0,
        lag_p50_s: a.lag.quantile_ms(0.5) / 1000.0,
        lag_p99_s: a.lag.quantile_ms(0.99) / 1000.0,
        apply_latency_p50_ms: a.latency.quantile_ms(0.5),
        apply_latency_p99_ms: a.latency.quantile_ms(0.99),
        elapsed_s: elapsed,
        changes_per_s: applied_total as f64 / elapsed.max(1e-9),
        dead_letter_file: dead_path.display().to_string(),
        checkpoint_file: checkpoint_path.display().to_string(),
    })
}

/// Runs the reader; when the stream breaks (a server restart, a half-open
/// connection), reopens it from the last transaction boundary it read, for as
/// long as the retry budget allows per outage. Items already sent are whole
/// transactions before that boundary: none is lost or sent twice.
async fn follow_binlog(
    cfg: Config,
    server_id: u32,
    mut reader: Reader,
    mut stream: mysql_async::BinlogStream,
    tx: mpsc::Sender<Item>,
    policy: RetryPolicy,
) -> Result<()> {
    loop {
        let e = match reader.clone().run(stream, tx.clone()).await {
            Ok(()) => return Ok(()),
            Err(e @ Error::BinlogLost { .. }) => e,
            Err(e) => return Err(e),
        };
        let Error::BinlogLost { at, skip, .. } = &e else {
            unreachable!()
        };
        reader.start = at.clone();
        reader.skip = *skip;
        let outage = Instant::now();
        let mut attempt = 0;
        stream = loop {
            attempt += 1;
            let wait = policy.delay(attempt);
            if outage.elapsed() + wait > policy.budget {
                return Err(Error::Other(format!(
                    "{e}; no new binlog connection within the retry budget ({:?}): rerun diff, it resumes from its checkpoint",
                    policy.budget
                )));
            }
            super::commit::count_retry(&e);
            tracing::warn!(attempt, "{e}; reconnecting in {wait:?}");
            tokio::time::sleep(wait).await;
            match binlog::open_stream(&cfg, server_id, at).await {
                Ok(s) => break s,
                Err(err) => tracing::warn!("binlog reconnect failed: {err}"),
            }
        };
        tracing::info!(from = %at, "binlog stream reopened");
    }
}

/// A part of a large transaction ends its batch: one part, one Kafka transaction.
fn is_part(it: Option<&Item>) -> bool {
    matches!(it, Some(Item::Tx(t)) if t.part.is_some())
}

fn item_changes(it: &Item) -> usize {
    match it {
        Item::Tx(t) => t.changes.len(),
        Item::Advanced(_) => 0,
    }
}

/// The local checkpoint of a diff run, if any.
pub(crate) fn local_checkpoint(state: &StateDir, run: &str) -> Result<Option<Checkpoint>> {
    read_json(&state.diff_checkpoint(run))
}
