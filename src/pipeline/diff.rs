//! `diff`: replays the binlog since the base (or the last diff) into both targets.
//!
//! A reader task streams whole source transactions of the mapped tables; the
//! applier takes what has arrived (up to `max_batch` changes, never splitting a
//! source transaction), maps every row image, and writes the batch: HBase puts
//! and deletes stamped with source versions, and the events in one Kafka
//! transaction. After HBase acknowledged, a progress marker holding the
//! position after the batch is sent inside that same transaction, which then
//! commits; only then is the local checkpoint rewritten. A restart fences the
//! old producer, reads the last committed marker, and resumes from the
//! furthest of it and the local checkpoint: committed events are never sent
//! twice, and HBase writes are idempotent.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlPool;
use tokio::sync::mpsc;

use super::base::{blocking, load_rooms, now_ms, room_exists};
use crate::checkpoint::{read_jsonl, write_json_atomic, JsonlAppender, RunRecord};
use crate::config::{Config, EntityKind};
use crate::error::{Error, Result};
use crate::mapping::{self, ids, keys, Canonical, MapContext, Reject, Rejection, SrcVal};
use crate::position::Position;
use crate::sink::hbase::thrift2::{TColumn, TDelete, TDeleteType, TPut};
use crate::sink::hbase::{cells, HbaseClient};
use crate::sink::kafka::event;
use crate::sink::kafka::tx::{make_tx_producer, read_markers, send, TxProducer};
use crate::source::binlog::{self, Item, Op, Reader, RowChange, SourceTx, TableSchema};

const MAX_ATTEMPTS: u32 = 5;
/// With nothing mapped to apply, the position is still committed this often,
/// so a restart does not rescan a long stretch of other tables' changes.
const IDLE_COMMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DiffOptions {
    pub state_dir: PathBuf,
    pub run_id: String,
    pub base_run_id: String,
    pub from: Option<Position>,
    pub follow: bool,
    pub max_batch: usize,
    pub progress_every: Duration,
}

/// What a diff run has committed: the local checkpoint and the Kafka marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    run: String,
    position: Position,
    /// Lowest version given to rows of tables without a version column (see `run`).
    version_floor_ms: u64,
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

/// Milliseconds, in 10 ms buckets up to 10 minutes.
struct Histogram {
    buckets: Vec<u64>,
    n: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: vec![0; 60_001],
            n: 0,
        }
    }
    fn add(&mut self, ms: u64, count: u64) {
        let i = ((ms / 10) as usize).min(self.buckets.len() - 1);
        self.buckets[i] += count;
        self.n += count;
    }
    fn quantile_ms(&self, q: f64) -> f64 {
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

#[derive(Default)]
pub(crate) struct Planned {
    /// (topic, key, payload) in source order.
    pub(crate) records: Vec<(String, String, Vec<u8>)>,
    pub(crate) puts: BTreeMap<String, Vec<TPut>>,
    pub(crate) deletes: BTreeMap<String, Vec<TDelete>>,
    pub(crate) dead: Vec<Vec<u8>>,
    applied: Vec<(usize, &'static str)>,
    dead_count: Vec<(usize, &'static str)>,
}

#[derive(Serialize)]
pub(crate) struct DeadLetter<'a> {
    pub(crate) table: &'a str,
    pub(crate) position: &'a str,
    pub(crate) op: &'static str,
    pub(crate) key: String,
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
    pub(crate) values: BTreeMap<&'static str, SrcVal>,
}

struct Applier {
    cfg: Config,
    run_id: String,
    schema: Arc<Vec<TableSchema>>,
    pool: MySqlPool,
    rooms: Option<Vec<u64>>,
    room_cache: HashSet<u64>,
    producer: Arc<TxProducer>,
    hbase: Option<HbaseClient>,
    family: Vec<u8>,
    floor_ms: u64,
    dead: JsonlAppender,
    checkpoint_path: PathBuf,
    committed: Position,
    seen: Position,
    last_commit: Instant,
    // Counters of this invocation.
    read: u64,
    txs: u64,
    kafka_txs: u64,
    applied: BTreeMap<(usize, &'static str), u64>,
    dead_count: u64,
    lag: Histogram,
    latency: Histogram,
    last_lag_ms: u64,
}

pub async fn run(cfg: Config, opts: DiffOptions) -> Result<DiffSummary> {
    let started = Instant::now();
    if opts.max_batch == 0 {
        return Err(Error::Usage("--max-batch must be at least 1".into()));
    }
    let database = cfg.database().ok_or_else(|| {
        Error::config(
            cfg.path.display().to_string(),
            "source.url names no database",
        )
    })?;
    let pool = crate::source::mysql::connect(&cfg, 4).await?;
    crate::source::preflight::require(&pool, &cfg, true).await?;
    let schema = Arc::new(binlog::snapshot_schema(&pool, &database, &cfg.tables).await?);

    // Health checks and target set-up, as base does.
    let prepared = crate::sink::prepare(&cfg, &cfg.tables, true, true).await?;
    let hbase = prepared
        .hbase
        .ok_or_else(|| Error::Other("HBase not prepared".into()))?;

    // Fence an earlier attempt, then learn what it committed.
    let mut k = cfg.kafka.clone();
    // librdkafka waits retry.backoff.ms (100) whenever the coordinator is still
    // finishing the previous commit: with one transaction per batch that wait
    // would dominate the lag.
    k.producer
        .entry("retry.backoff.ms".into())
        .or_insert_with(|| "5".into());
    // Transactional ids are global to the cluster: jobs on other databases (or
    // with other progress topics) must not fence this one.
    let tx_id = format!(
        "falcon-diff-{}-{database}-{}",
        cfg.kafka.progress_topic, opts.run_id
    );
    let producer = Arc::new(blocking(move || make_tx_producer(&k, &tx_id)).await?);
    let k = cfg.kafka.clone();
    let marker_key = marker_key(&opts.run_id);
    let mk = marker_key.clone();
    let marker: Option<Checkpoint> = blocking(move || read_markers(&k, &mk))
        .await?
        .into_iter()
        .filter_map(|p| serde_json::from_slice::<Checkpoint>(&p).ok())
        .filter(|c| c.run == opts.run_id)
        .max_by(|a, b| a.position.cmp(&b.position));
    let run_dir = opts.state_dir.join("diff").join(&opts.run_id);
    let checkpoint_path = run_dir.join("checkpoint.json");
    let local: Option<Checkpoint> = match std::fs::read_to_string(&checkpoint_path) {
        Ok(t) => Some(serde_json::from_str(&t).map_err(|e| Error::Checkpoint {
            path: checkpoint_path.display().to_string(),
            message: e.to_string(),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Error::Checkpoint {
                path: checkpoint_path.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    let resume = match (local, marker) {
        (Some(a), Some(b)) => Some(if b.position > a.position { b } else { a }),
        (a, b) => a.or(b),
    };
    let base = base_start(&opts.state_dir, &opts.base_run_id)?;
    // Tables without a version column (account, room_member) are stamped with
    // the event time; never below the base's own stamp, or a change made in
    // the base's first second would lose to the older state base copied.
    let floor_ms = resume
        .as_ref()
        .map(|c| c.version_floor_ms)
        .or(base.as_ref().map(|b| b.1 + 1))
        .unwrap_or(0);
    let start = match (&opts.from, &resume, &base) {
        (Some(f), r, _) => {
            if let Some(r) = r {
                if *f < r.position {
                    tracing::warn!(from = %f, checkpoint = %r.position, "--from is before the run's checkpoint: changes are replayed again (harmless for HBase; Kafka gets their events again)");
                }
            }
            f.clone()
        }
        (None, Some(r), _) => r.position.clone(),
        (None, None, Some((p, _))) => p.clone(),
        (None, None, None) => {
            return Err(Error::Usage(format!(
                "diff: no start position: no checkpoint of diff run {:?} and no base run {:?} in {}; pass --from FILE:POS (or --base-run-id)",
                opts.run_id,
                opts.base_run_id,
                opts.state_dir.display()
            )))
        }
    };
    binlog::check_available(&pool, &start).await?;
    let target = if opts.follow {
        None
    } else {
        Some(crate::source::mysql::binlog_position(&pool).await?)
    };
    tracing::info!(run = %opts.run_id, from = %start, to = %target.as_ref().map_or("(follow)".to_string(), |t| t.to_string()), "diff started");

    let dead_path = run_dir.join("dead.jsonl");
    prune_dead(&dead_path, &start)?;
    let rooms = if cfg
        .tables
        .iter()
        .any(|t| matches!(t.kind, EntityKind::Message | EntityKind::RoomMember))
    {
        load_rooms(&pool).await?
    } else {
        None
    };

    let stream = binlog::open_stream(&cfg, binlog::server_id(&opts.run_id), &start).await?;
    // Room for a few batches of source transactions: the reader keeps reading
    // while a batch is written.
    let (tx, mut rx) = mpsc::channel::<Item>((4 * opts.max_batch).clamp(1024, 65_536));
    let reader = Reader {
        schema: schema.clone(),
        database: database.clone(),
        start: start.clone(),
        stop_at: target.clone(),
    };
    let reader_task = tokio::spawn(reader.run(stream, tx));

    let (interrupted, stop) = super::on_interrupt("finishing the batch in hand");

    let mut a = Applier {
        family: cfg.hbase.column_family.as_bytes().to_vec(),
        cfg,
        run_id: opts.run_id.clone(),
        schema,
        pool,
        rooms,
        room_cache: HashSet::new(),
        producer,
        hbase: Some(hbase),
        floor_ms,
        dead: JsonlAppender::open(&dead_path)?,
        checkpoint_path: checkpoint_path.clone(),
        committed: start.clone(),
        seen: start.clone(),
        last_commit: Instant::now(),
        read: 0,
        txs: 0,
        kafka_txs: 0,
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
            };
            let Some(first) = first else { break };
            let mut items = vec![first];
            let mut changes = item_changes(&items[0]);
            while changes < opts.max_batch {
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
                    position = %a.committed,
                    applied = total,
                    changes_per_s = (total as f64 / secs) as u64,
                    dead_lettered = a.dead_count,
                    lag_s = a.last_lag_ms as f64 / 1000.0,
                    "diff progress"
                );
            }
        }
        if a.seen > a.committed {
            a.commit_position_only().await?;
        }
        Ok(())
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
        to: a.committed.clone(),
        target,
        stopped: if was_interrupted {
            "interrupted"
        } else {
            "caught_up"
        },
        events_read: a.read,
        transactions: a.txs,
        kafka_transactions: a.kafka_txs,
        applied,
        applied_total,
        dead_lettered: a.dead_count,
        dead_letter_reasons: dead_reasons(&dead_path)?,
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

fn item_changes(it: &Item) -> usize {
    match it {
        Item::Tx(t) => t.changes.len(),
        Item::Advanced(_) => 0,
    }
}

fn marker_key(run: &str) -> String {
    format!("diff/{run}")
}

/// The smallest start position over the base run's shard records, and the
/// latest start time (the stamp base gave version-less rows).
fn base_start(state_dir: &Path, run: &str) -> Result<Option<(Position, u64)>> {
    let dir = state_dir.join("base").join(run);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(_) => return Ok(None),
    };
    let mut best: Option<(Position, u64)> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("shard-") && name.ends_with(".json")) {
            continue;
        }
        let p = e.path();
        let text = std::fs::read_to_string(&p).map_err(|e| Error::Checkpoint {
            path: p.display().to_string(),
            message: e.to_string(),
        })?;
        let r: RunRecord = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: p.display().to_string(),
            message: e.to_string(),
        })?;
        best = Some(match best {
            None => (r.start_position, r.start_ts_ms),
            Some((pos, ts)) => (pos.min(r.start_position), ts.max(r.start_ts_ms)),
        });
    }
    Ok(best)
}

/// Dead letters at or after `start` are for changes about to be read again.
fn prune_dead(p: &Path, start: &Position) -> Result<()> {
    if !p.exists() {
        return Ok(());
    }
    let keep: Vec<serde_json::Value> = read_jsonl::<serde_json::Value>(p)?
        .into_iter()
        .filter(|v| {
            v["position"]
                .as_str()
                .and_then(Position::parse)
                .is_some_and(|pos| pos < *start)
        })
        .collect();
    let tmp = p.with_extension("jsonl.tmp");
    {
        let mut f = JsonlAppender::open(&tmp)?;
        for v in &keep {
            f.append(v)?;
        }
        f.sync()?;
    }
    std::fs::rename(&tmp, p).map_err(|e| Error::Checkpoint {
        path: p.display().to_string(),
        message: e.to_string(),
    })
}

pub(crate) fn dead_reasons(p: &Path) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for v in read_jsonl::<serde_json::Value>(p)? {
        let t = v["table"].as_str().unwrap_or("").to_string();
        let r = v["reason"].as_str().unwrap_or("").to_string();
        *out.entry(t).or_default().entry(r).or_default() += 1;
    }
    Ok(out)
}

pub(crate) fn row_delete(row: &[u8], ts: u64) -> TDelete {
    TDelete::new(row.to_vec(), None, Some(ts as i64), None, None, None)
}

/// Deletes every version of the named columns up to `ts`.
pub(crate) fn columns_delete(row: &[u8], family: &[u8], names: &[&str], ts: u64) -> TDelete {
    let cols = names
        .iter()
        .map(|n| {
            TColumn::new(
                family.to_vec(),
                Some(n.as_bytes().to_vec()),
                Some(ts as i64),
            )
        })
        .collect();
    TDelete::new(
        row.to_vec(),
        Some(cols),
        Some(ts as i64),
        Some(TDeleteType::DELETE_COLUMNS),
        None,
        None,
    )
}

impl Applier {
    fn ctx(&self, ts_s: u32) -> MapContext {
        MapContext {
            salt_buckets: self.cfg.hbase.salt_buckets,
            epoch_ms: self.cfg.ids.epoch_ms,
            default_version_ms: (u64::from(ts_s) * 1000).max(self.floor_ms),
        }
    }

    async fn apply(&mut self, items: Vec<Item>) -> Result<()> {
        let mut txs: Vec<SourceTx> = Vec::new();
        for it in items {
            match it {
                Item::Tx(t) => {
                    self.seen = self.seen.clone().max(t.end.clone());
                    txs.push(t);
                }
                Item::Advanced(p) => self.seen = self.seen.clone().max(p),
            }
        }
        if txs.is_empty() {
            if self.seen > self.committed && self.last_commit.elapsed() >= IDLE_COMMIT {
                self.commit_position_only().await?;
            }
            return Ok(());
        }
        let t0 = Instant::now();
        let mut plan = Planned::default();
        for t in &txs {
            for ch in &t.changes {
                self.plan(ch, &mut plan).await?;
            }
        }
        let planned = t0.elapsed();
        // Dead letters are durable before the batch can count as done; a crash
        // before the commit prunes them on restart (they are redone).
        if !plan.dead.is_empty() {
            for d in &plan.dead {
                self.dead.append_raw(d)?;
            }
            self.dead.sync()?;
        }
        let end = self.seen.clone();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.write(&plan, &end).await {
                Ok(()) => break,
                Err(e) => {
                    let p = self.producer.clone();
                    let _ = blocking(move || {
                        p.abort_transaction(Timeout::After(Duration::from_secs(30)))
                            .map_err(|e| Error::kafka("abort", e))
                    })
                    .await;
                    self.hbase = None;
                    if e.is_transient() && attempt < MAX_ATTEMPTS {
                        let wait = Duration::from_millis(500 * (1 << attempt));
                        tracing::warn!(
                            attempt,
                            "retrying the batch ending at {end} in {wait:?}: {e}"
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(Error::Other(format!(
                        "diff batch ending at {end} (checkpoint stays at {}): {e}",
                        self.committed
                    )));
                }
            }
        }
        self.checkpoint(end)?;
        tracing::debug!(
            changes = plan.applied.len(),
            plan_ms = planned.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "batch"
        );
        let now = now_ms();
        for t in &txs {
            let n = t.changes.len() as u64;
            let lag = now.saturating_sub(u64::from(t.ts_s) * 1000);
            self.lag.add(lag, n);
            self.latency.add(t.received.elapsed().as_millis() as u64, n);
            self.last_lag_ms = lag;
        }
        self.txs += txs.len() as u64;
        self.read += txs.iter().map(|t| t.changes.len() as u64).sum::<u64>();
        for k in plan.applied {
            *self.applied.entry(k).or_default() += 1;
        }
        self.dead_count += plan.dead_count.len() as u64;
        Ok(())
    }

    /// Maps one change into the batch's writes.
    async fn plan(&mut self, ch: &RowChange, plan: &mut Planned) -> Result<()> {
        let s = &self.schema[ch.table];
        let kind = s.kind();
        let spec = mapping::spec(kind);
        let table = s.mapping.source.clone();
        let topic = s.mapping.topic.clone();
        let htable = s.mapping.hbase_table.clone();
        let id_map = self.cfg.hbase.id_map_table.clone();
        let ctx = self.ctx(ch.ts_s);
        let origin = event::Origin {
            phase: "diff",
            run: &self.run_id,
            position: &ch.position,
        };
        let event_ms = u64::from(ch.ts_s) * 1000;
        let image = match ch.op {
            Op::Delete => ch.before.as_ref(),
            _ => ch.after.as_ref(),
        }
        .ok_or_else(|| Error::Binlog {
            context: format!("at {}", ch.position),
            message: format!("a row event of {table} without its row image"),
        })?;
        let label = match ch.op {
            Op::Insert => "insert",
            Op::Delete => "hard_delete",
            Op::Update => {
                let del = spec.index_of("deleted");
                let was = del.and_then(|i| ch.before.as_ref().and_then(|b| b[i].as_i64()));
                let is = del.and_then(|i| image[i].as_i64());
                if is.is_some_and(|v| v != 0) && was == Some(0) {
                    "soft_delete"
                } else {
                    "update"
                }
            }
        };
        let max_event = self.cfg.kafka.message_max_bytes;
        let dead = |plan: &mut Planned, rej: Rejection| -> Result<()> {
            let line = DeadLetter {
                table: &table,
                position: &ch.position,
                op: label,
                key: spec.key_of(image),
                reason: rej.reason.as_str(),
                detail: rej.detail,
                values: spec
                    .columns
                    .iter()
                    .map(|c| c.name)
                    .zip(image.iter().cloned())
                    .collect(),
            };
            plan.dead
                .push(serde_json::to_vec(&line).map_err(|e| Error::Other(e.to_string()))?);
            plan.dead_count.push((ch.table, label));
            Ok(())
        };
        if ch.op == Op::Delete {
            let b = match mapping::canonical(kind, image, &ctx) {
                Ok(b) => b,
                // The same mapping kept the row out of the targets: nothing to remove.
                Err(rej) => return dead(plan, rej),
            };
            let at = event_ms.max(b.version_ms);
            let ev = event::encode_removal(kind, &b.key, b.id_pair.map(|x| x.1), at, &origin);
            plan.records.push((topic, b.partition_key.to_string(), ev));
            plan.deletes
                .entry(htable)
                .or_default()
                .push(row_delete(&b.row_key, at));
            self.id_map_deletes(&b, at, &id_map, true, plan);
            plan.applied.push((ch.table, label));
            return Ok(());
        }
        let mut outcome = mapping::canonical(kind, image, &ctx);
        if let (Ok(_), Some(room)) = (&outcome, mapping::required_room(kind, image)) {
            if !room_exists(
                self.rooms.as_deref(),
                &self.pool,
                &mut self.room_cache,
                room,
            )
            .await?
            {
                outcome = Err(Rejection {
                    reason: Reject::OrphanRoom,
                    detail: format!("room {room} does not exist"),
                });
            }
        }
        let mut ev = Vec::with_capacity(512);
        let c = match outcome {
            Ok(c) => {
                event::encode(&c, &origin, &mut ev);
                if ev.len() > max_event {
                    return dead(
                        plan,
                        Rejection {
                            reason: Reject::OversizedEvent,
                            detail: format!(
                                "event of {} bytes exceeds kafka.message_max_bytes {max_event}",
                                ev.len()
                            ),
                        },
                    );
                }
                c
            }
            Err(rej) => return dead(plan, rej),
        };
        if let Some(b) = ch
            .before
            .as_ref()
            .and_then(|b| mapping::canonical(kind, b, &ctx).ok())
        {
            if b.row_key != c.row_key {
                // A key column changed: the old row goes away.
                let at = event_ms.max(b.version_ms);
                plan.deletes
                    .entry(htable.clone())
                    .or_default()
                    .push(row_delete(&b.row_key, at));
                self.id_map_deletes(&b, at, &id_map, b.key != c.key, plan);
                if b.key != c.key {
                    let ev =
                        event::encode_removal(kind, &b.key, b.id_pair.map(|x| x.1), at, &origin);
                    plan.records
                        .push((topic.clone(), b.partition_key.to_string(), ev));
                }
            } else {
                let nulled: Vec<&str> = b
                    .cells
                    .iter()
                    .filter(|x| x.value.is_some())
                    .filter(|x| {
                        c.cells
                            .iter()
                            .any(|y| y.name == x.name && y.value.is_none())
                    })
                    .map(|x| x.name)
                    .collect();
                if !nulled.is_empty() {
                    plan.deletes
                        .entry(htable.clone())
                        .or_default()
                        .push(columns_delete(
                            &c.row_key,
                            &self.family,
                            &nulled,
                            c.version_ms,
                        ));
                }
            }
        }
        plan.records.push((topic, c.partition_key.to_string(), ev));
        plan.puts
            .entry(htable)
            .or_default()
            .push(cells::put(&c, &self.family));
        if let Some((legacy, new_id, room)) = c.id_pair {
            plan.puts
                .entry(id_map)
                .or_default()
                .extend(cells::id_map_puts(
                    legacy,
                    new_id,
                    room,
                    ctx.salt_buckets,
                    ctx.epoch_ms,
                    &self.family,
                ));
        }
        plan.applied.push((ch.table, label));
        Ok(())
    }

    /// Removes a message's id-map rows (the legacy → new row only when the
    /// legacy id itself is gone: otherwise the new put overwrites it).
    fn id_map_deletes(
        &self,
        b: &Canonical,
        at: u64,
        id_map: &str,
        legacy_too: bool,
        plan: &mut Planned,
    ) {
        let Some((legacy, new_id, _)) = b.id_pair else {
            return;
        };
        let salt = self.cfg.hbase.salt_buckets;
        let at = at.max(ids::id_millis(new_id, self.cfg.ids.epoch_ms));
        let d = plan.deletes.entry(id_map.to_string()).or_default();
        d.push(row_delete(&keys::id_map_new(salt, new_id), at));
        if legacy_too {
            d.push(row_delete(&keys::id_map_legacy(salt, legacy), at));
        }
    }

    /// One Kafka transaction: the events, then (after HBase acknowledged) the
    /// marker of the position after the batch.
    async fn write(&mut self, plan: &Planned, end: &Position) -> Result<()> {
        let marker = Checkpoint {
            run: self.run_id.clone(),
            position: end.clone(),
            version_floor_ms: self.floor_ms,
        };
        let payload = serde_json::to_vec(&marker).map_err(|e| Error::Other(e.to_string()))?;
        let what = format!("the batch ending at {end}");
        write_batch(
            &self.producer,
            &mut self.hbase,
            &self.cfg,
            plan,
            &marker_key(&self.run_id),
            &payload,
            &what,
        )
        .await?;
        self.kafka_txs += 1;
        Ok(())
    }

    async fn send_marker_and_commit(&mut self, end: &Position) -> Result<()> {
        let marker = Checkpoint {
            run: self.run_id.clone(),
            position: end.clone(),
            version_floor_ms: self.floor_ms,
        };
        let payload = serde_json::to_vec(&marker).map_err(|e| Error::Other(e.to_string()))?;
        let p = self.producer.clone();
        send(
            &p,
            &self.cfg.kafka.progress_topic,
            marker_key(&self.run_id).as_bytes(),
            &payload,
        )
        .await?;
        tokio::task::block_in_place(|| {
            p.commit_transaction(Timeout::After(Duration::from_secs(120)))
        })
        .map_err(|e| Error::kafka(format!("commit the batch ending at {end}"), e))?;
        self.kafka_txs += 1;
        Ok(())
    }

    fn checkpoint(&mut self, end: Position) -> Result<()> {
        write_json_atomic(
            &self.checkpoint_path,
            &Checkpoint {
                run: self.run_id.clone(),
                position: end.clone(),
                version_floor_ms: self.floor_ms,
            },
        )?;
        self.committed = end;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Records a position reached with nothing mapped to apply.
    async fn commit_position_only(&mut self) -> Result<()> {
        let end = self.seen.clone();
        self.producer
            .begin_transaction()
            .map_err(|e| Error::kafka("begin transaction", e))?;
        if let Err(e) = self.send_marker_and_commit(&end).await {
            let p = self.producer.clone();
            let _ = blocking(move || {
                p.abort_transaction(Timeout::After(Duration::from_secs(30)))
                    .map_err(|e| Error::kafka("abort", e))
            })
            .await;
            return Err(e);
        }
        self.checkpoint(end)
    }
}

/// One Kafka transaction holding a batch's events, with its HBase writes made
/// meanwhile; after HBase acknowledged, the progress marker (`marker_key`,
/// `marker`) is sent in the same transaction, which then commits. On error
/// the caller aborts the transaction (see `abort`); `hbase` is left empty when
/// the HBase writer failed.
pub(crate) async fn write_batch(
    producer: &Arc<TxProducer>,
    hbase: &mut Option<HbaseClient>,
    cfg: &Config,
    plan: &Planned,
    marker_key: &str,
    marker: &[u8],
    what: &str,
) -> Result<()> {
    let p = producer.clone();
    p.begin_transaction()
        .map_err(|e| Error::kafka("begin transaction", e))?;
    let puts = plan.puts.clone();
    let deletes = plan.deletes.clone();
    let client = hbase.take();
    let (addr, framed) = (cfg.hbase.thrift.clone(), cfg.hbase.framed);
    let task = tokio::task::spawn_blocking(move || {
        let mut c = match client {
            Some(c) => c,
            None => HbaseClient::connect(&addr, framed)?,
        };
        for (t, v) in puts {
            c.put_multiple(&t, v)?;
        }
        for (t, v) in deletes {
            c.delete_multiple(&t, v)?;
        }
        Ok::<_, Error>(c)
    });
    let sent: Result<()> = async {
        for (topic, key, payload) in &plan.records {
            send(&p, topic, key.as_bytes(), payload).await?;
        }
        Ok(())
    }
    .await;
    let sent_at = Instant::now();
    let client = task
        .await
        .map_err(|e| Error::Other(format!("HBase writer: {e}")))??;
    *hbase = Some(client);
    sent?;
    let acked = Instant::now();
    send(&p, &cfg.kafka.progress_topic, marker_key.as_bytes(), marker).await?;
    let r = tokio::task::block_in_place(|| {
        p.commit_transaction(Timeout::After(Duration::from_secs(120)))
    })
    .map_err(|e| Error::kafka(format!("commit {what}"), e));
    tracing::debug!(
        hbase_wait_ms = acked.duration_since(sent_at).as_millis() as u64,
        commit_ms = acked.elapsed().as_millis() as u64,
        "batch written"
    );
    r
}

/// Aborts the producer's open transaction (best effort).
pub(crate) async fn abort(producer: &Arc<TxProducer>) {
    let p = producer.clone();
    let _ = blocking(move || {
        p.abort_transaction(Timeout::After(Duration::from_secs(30)))
            .map_err(|e| Error::kafka("abort", e))
    })
    .await;
}
