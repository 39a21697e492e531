//! `base`: the parallel bulk copy.
//!
//! The start position is recorded before anything is read; tables are cut into
//! ranges of their leading primary-key column (`chunk_rows` key values wide),
//! which depend only on the key values, so every shard computes the same plan
//! without talking to the others. Workers copy chunks: rows stream from MySQL,
//! HBase batches go out while the next batch is read, events go to Kafka in one
//! transaction per chunk. The chunk's completion marker is committed in that
//! same transaction, after HBase acknowledged every batch; only then is it
//! appended to the local checkpoint. A crash at any instant therefore leaves
//! each chunk either committed everywhere or invisible to `read_committed`
//! consumers (and rewritten idempotently in HBase on resume).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use serde::Serialize;
use sqlx::mysql::MySqlPool;
use tokio::task::JoinHandle;

use crate::checkpoint::{ChunkDone, JsonlAppender, RunDir, RunRecord, Shard};
use crate::config::{Config, TableMapping};
use crate::error::{Error, Result};
use crate::mapping::{self, MapContext, Reject, SrcVal, TableSpec};
use crate::position::Position;
use crate::sink::hbase::wire::PutBuf;
use crate::sink::hbase::HbaseClient;
use crate::sink::kafka::event;
use crate::sink::kafka::tx::{make_tx_producer, read_markers, send, TxProducer};
use crate::telemetry::{Progress, TableCounters};

/// Rows per HBase batch (and per rate-limit grant).
const BATCH_ROWS: usize = 1000;
/// Or fewer rows when their cells add up to this many bytes.
const BATCH_BYTES: usize = 4 << 20;
const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub kafka: bool,
    pub hbase: bool,
}

#[derive(Debug, Clone)]
pub struct BaseOptions {
    pub state_dir: PathBuf,
    pub run_id: String,
    pub workers: usize,
    pub chunk_rows: u64,
    pub targets: Targets,
    pub resume: bool,
    pub shard: Shard,
    pub max_rows_per_sec: Option<u64>,
    pub max_threads_running: Option<u64>,
    pub dry_run: bool,
    pub tables: Option<Vec<String>>,
    pub progress_every: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub kafka: u64,
    pub hbase: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableSummary {
    pub table: String,
    pub rows_read: u64,
    pub written: Written,
    pub dead_lettered: u64,
    pub dead_letter_reasons: BTreeMap<String, u64>,
    pub chunks: u64,
    pub chunks_done: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaseSummary {
    pub command: &'static str,
    pub run_id: String,
    pub shard: String,
    pub resumed: bool,
    pub start_position: Position,
    pub elapsed_s: f64,
    pub rows_per_s: f64,
    pub rows_read: u64,
    pub dead_lettered: u64,
    pub tables: Vec<TableSummary>,
    pub kafka_topics: Vec<String>,
    pub hbase_tables: Vec<String>,
    pub dead_letter_file: String,
    pub checkpoint_file: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanTable {
    pub table: String,
    pub key: String,
    pub min_key: Option<u64>,
    pub max_key: Option<u64>,
    pub estimated_rows: u64,
    pub chunks: u64,
    pub chunks_this_shard: u64,
    pub chunks_done: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub command: &'static str,
    pub dry_run: bool,
    pub run_id: String,
    pub shard: String,
    pub chunk_rows: u64,
    pub workers: usize,
    pub tables: Vec<PlanTable>,
    pub estimated_rows: u64,
    pub estimated_s: Option<f64>,
}

pub enum BaseOutcome {
    Done(BaseSummary),
    Planned(DryRun),
}

#[derive(Debug, Clone)]
struct Chunk {
    table: usize,
    k: u64,
    lo: u64,
    hi: u64,
}

#[derive(Serialize, serde::Deserialize)]
struct Marker {
    #[serde(flatten)]
    done: ChunkDone,
    run: String,
    shard: String,
}

struct TableRun {
    mapping: TableMapping,
    spec: &'static TableSpec,
    select_sql: String,
    counters: Arc<TableCounters>,
    min_key: Option<u64>,
    max_key: Option<u64>,
    estimated_rows: u64,
}

struct Shared {
    cfg: Config,
    opts: BaseOptions,
    record: RunRecord,
    pool: MySqlPool,
    tables: Vec<TableRun>,
    queue: Mutex<VecDeque<Chunk>>,
    ctx: MapContext,
    position: String,
    scope: String,
    rooms: Option<Vec<u64>>,
    dead: Mutex<JsonlAppender>,
    done: Mutex<JsonlAppender>,
    limiter: Option<RateLimiter>,
    paused: AtomicBool,
    stop: AtomicBool,
}

pub async fn run(cfg: Config, opts: BaseOptions) -> Result<BaseOutcome> {
    let started = Instant::now();
    if opts.workers == 0 || opts.workers > 256 {
        return Err(Error::Usage(format!(
            "--workers must be 1..=256, got {}",
            opts.workers
        )));
    }
    if opts.chunk_rows == 0 {
        return Err(Error::Usage("--chunk-rows must be at least 1".into()));
    }
    if !opts.targets.kafka && !opts.targets.hbase {
        return Err(Error::Usage("no target selected".into()));
    }
    let mappings = cfg.select_tables(opts.tables.as_deref())?;
    let pool = crate::source::mysql::connect(&cfg, opts.workers as u32 + 2).await?;
    let database = cfg.database().unwrap_or_default();
    crate::source::preflight::require(&pool, &cfg, true).await?;
    let mut tables = Vec::new();
    for m in mappings {
        tables.push(inspect_table(&pool, &database, m).await?);
    }

    let run_dir = RunDir::new(&opts.state_dir, "base", &opts.run_id, opts.shard);
    let existing = run_dir.exists();
    if opts.dry_run {
        let done = if existing {
            done_map(run_dir.load_done()?)
        } else {
            BTreeMap::new()
        };
        return Ok(BaseOutcome::Planned(plan_report(&opts, &tables, &done)));
    }
    if existing && !opts.resume {
        return Err(Error::Usage(format!(
            "a base run {:?} (shard {}) already exists in {}: pass --resume to continue it, or --run-id to start another",
            opts.run_id,
            opts.shard,
            opts.state_dir.display()
        )));
    }
    if !existing && opts.resume {
        return Err(Error::Usage(format!(
            "--resume: no base run {:?} (shard {}) in {}",
            opts.run_id,
            opts.shard,
            opts.state_dir.display()
        )));
    }

    // Health checks before any work: both targets must answer.
    let mappings: Vec<TableMapping> = tables.iter().map(|t| t.mapping.clone()).collect();
    let prepared =
        crate::sink::prepare(&cfg, &mappings, opts.targets.kafka, opts.targets.hbase).await?;
    let (hbase_tables, kafka_topics) = (prepared.hbase_tables, prepared.kafka_topics);

    let record = if existing {
        let mut r = run_dir.load_record()?;
        if r.kafka != opts.targets.kafka || r.hbase != opts.targets.hbase {
            return Err(Error::Usage(format!(
                "--resume: the run was started with targets kafka={} hbase={}; pass the same --target",
                r.kafka, r.hbase
            )));
        }
        let names: Vec<String> = tables.iter().map(|t| t.mapping.source.clone()).collect();
        if r.tables != names {
            return Err(Error::Usage(format!(
                "--resume: the run copies tables {:?}; pass the same --tables",
                r.tables
            )));
        }
        r.max_workers = r.max_workers.max(opts.workers);
        run_dir.save_record(&r)?;
        r
    } else {
        let position = crate::source::mysql::binlog_position(&pool).await?;
        let r = RunRecord {
            run_id: opts.run_id.clone(),
            shard: opts.shard,
            start_position: position,
            start_ts_ms: now_ms(),
            chunk_rows: opts.chunk_rows,
            tables: tables.iter().map(|t| t.mapping.source.clone()).collect(),
            kafka: opts.targets.kafka,
            hbase: opts.targets.hbase,
            max_workers: opts.workers,
        };
        run_dir.save_record(&r)?;
        r
    };
    if record.chunk_rows != opts.chunk_rows && existing {
        tracing::warn!(
            recorded = record.chunk_rows,
            "--resume keeps the run's chunk size"
        );
    }
    tracing::info!(run = %record.run_id, shard = %record.shard, start = %record.start_position, "base run {}", if existing { "resumed" } else { "started" });

    // Markers and transactional ids are scoped by source database, run and
    // shard: other jobs sharing the cluster and progress topic never collide.
    let scope = format!("{database}/{}/{}", record.run_id, record.shard.file_stem());
    // Fence every producer an earlier attempt may have left mid-transaction,
    // then learn which chunks Kafka committed.
    let producers = if opts.targets.kafka {
        let k = cfg.kafka.clone();
        let (scope, n, w) = (scope.clone(), record.max_workers, opts.workers);
        blocking(move || {
            let mut ps = Vec::new();
            for i in 0..n {
                let p = make_tx_producer(&k, &txn_id(&scope, i))?;
                if i < w {
                    ps.push(Arc::new(p));
                }
            }
            Ok(ps)
        })
        .await?
    } else {
        Vec::new()
    };
    let mut done = done_map(run_dir.load_done()?);
    let mut done_log = run_dir.done_log()?;
    if opts.targets.kafka && existing {
        let k = cfg.kafka.clone();
        let prefix = format!("{scope}/");
        let committed: Vec<ChunkDone> = blocking(move || read_markers(&k, &prefix))
            .await?
            .into_iter()
            .filter_map(|p| serde_json::from_slice::<Marker>(&p).ok().map(|m| m.done))
            .collect();
        for c in committed {
            let key = (c.table.clone(), c.chunk);
            if let std::collections::btree_map::Entry::Vacant(slot) = done.entry(key) {
                done_log.append(&c)?;
                slot.insert(c);
            }
        }
        done_log.sync()?;
    }
    run_dir.prune_dead(&done)?;

    let chunk_rows = record.chunk_rows;
    let mut queue = VecDeque::new();
    let mut expected = vec![0u64; tables.len()];
    for (ti, t) in tables.iter().enumerate() {
        let (Some(min), Some(max)) = (t.min_key, t.max_key) else {
            continue;
        };
        let total = max / chunk_rows - min / chunk_rows + 1;
        let per_chunk = t.estimated_rows / total.max(1);
        for k in min / chunk_rows..=max / chunk_rows {
            if record.shard.owns(ti, k) && !done.contains_key(&(t.mapping.source.clone(), k)) {
                queue.push_back(Chunk {
                    table: ti,
                    k,
                    lo: k * chunk_rows,
                    hi: (k + 1).saturating_mul(chunk_rows),
                });
                expected[ti] += per_chunk.max(1);
                t.counters.chunks_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // Interleave tables so small ones finish early and big ones keep every worker busy.
    let queue = interleave(queue, tables.len());

    let rooms = if tables.iter().any(|t| {
        matches!(
            t.spec.kind,
            crate::config::EntityKind::Message | crate::config::EntityKind::RoomMember
        )
    }) {
        load_rooms(&pool).await?
    } else {
        None
    };
    let progress = Progress::new(
        tables
            .iter()
            .zip(&expected)
            .map(|(t, e)| (t.mapping.source.clone(), *e, t.counters.clone()))
            .collect(),
    );
    let shared = Arc::new(Shared {
        ctx: MapContext {
            salt_buckets: cfg.hbase.salt_buckets,
            epoch_ms: cfg.ids.epoch_ms,
            default_version_ms: record.start_ts_ms,
        },
        position: record.start_position.to_string(),
        scope,
        dead: Mutex::new(JsonlAppender::open(&run_dir.dead_path())?),
        done: Mutex::new(done_log),
        limiter: opts.max_rows_per_sec.map(RateLimiter::new),
        paused: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        queue: Mutex::new(queue),
        rooms,
        tables,
        cfg,
        opts: opts.clone(),
        record: record.clone(),
        pool,
    });

    let monitor = opts
        .max_threads_running
        .map(|limit| tokio::spawn(watch_threads_running(shared.clone(), limit)));
    let mut handles: Vec<JoinHandle<Result<()>>> = Vec::new();
    for w in 0..opts.workers {
        let producer = producers.get(w).cloned();
        handles.push(tokio::spawn(worker(shared.clone(), w, producer)));
    }
    let sh = shared.clone();
    let (_, interrupt) =
        super::on_interrupt("finishing no new chunks; acknowledged chunks stay checkpointed");
    let work = async move {
        let mut first_err: Option<Error> = None;
        let mut pending = handles;
        tokio::select! {
            _ = interrupt.notified() => {
                sh.stop.store(true, Ordering::SeqCst);
                first_err = Some(Error::Interrupted);
            }
            _ = async {
                for h in pending.iter_mut() {
                    let r = h.await.map_err(|e| Error::Other(format!("worker: {e}"))).and_then(|r| r);
                    if let Err(e) = r {
                        sh.stop.store(true, Ordering::SeqCst);
                        if first_err.is_none() { first_err = Some(e); }
                    }
                }
            } => {}
        }
        for h in pending {
            if !h.is_finished() {
                let _ = h.await;
            }
        }
        first_err
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let work_task = tokio::spawn(async move {
        let r = work.await;
        let _ = tx.send(());
        r
    });
    progress
        .run_until(opts.progress_every, async {
            let _ = rx.await;
        })
        .await;
    let err = work_task.await.map_err(|e| Error::Other(e.to_string()))?;
    if let Some(m) = monitor {
        m.abort();
    }
    if let Some(e) = err {
        return Err(e);
    }

    let done = done_map(run_dir.load_done()?);
    let mut summaries = Vec::new();
    let reasons = dead_reasons(&run_dir.dead_path())?;
    for (ti, t) in shared.tables.iter().enumerate() {
        let name = &t.mapping.source;
        let chunks = match (t.min_key, t.max_key) {
            (Some(min), Some(max)) => (min / chunk_rows..=max / chunk_rows)
                .filter(|k| record.shard.owns(ti, *k))
                .count() as u64,
            _ => 0,
        };
        let mine: Vec<&ChunkDone> = done.values().filter(|d| &d.table == name).collect();
        let s = TableSummary {
            table: name.clone(),
            rows_read: mine.iter().map(|d| d.read).sum(),
            written: Written {
                kafka: mine.iter().map(|d| d.kafka).sum(),
                hbase: mine.iter().map(|d| d.hbase).sum(),
            },
            dead_lettered: mine.iter().map(|d| d.dead).sum(),
            dead_letter_reasons: reasons.get(name).cloned().unwrap_or_default(),
            chunks,
            chunks_done: mine.len() as u64,
        };
        for (on, written) in [
            (record.kafka, s.written.kafka),
            (record.hbase, s.written.hbase),
        ] {
            if on && s.rows_read != written + s.dead_lettered {
                return Err(Error::Other(format!(
                    "table {name}: read {} != written {written} + dead-lettered {}",
                    s.rows_read, s.dead_lettered
                )));
            }
        }
        summaries.push(s);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rows_read: u64 = summaries.iter().map(|s| s.rows_read).sum();
    Ok(BaseOutcome::Done(BaseSummary {
        command: "base",
        run_id: record.run_id.clone(),
        shard: record.shard.to_string(),
        resumed: existing,
        start_position: record.start_position.clone(),
        elapsed_s: elapsed,
        rows_per_s: shared
            .tables
            .iter()
            .map(|t| t.counters.read.load(Ordering::Relaxed))
            .sum::<u64>() as f64
            / elapsed.max(1e-9),
        rows_read,
        dead_lettered: summaries.iter().map(|s| s.dead_lettered).sum(),
        tables: summaries,
        kafka_topics,
        hbase_tables,
        dead_letter_file: run_dir.dead_path().display().to_string(),
        checkpoint_file: run_dir.done_path().display().to_string(),
    }))
}

fn done_map(list: Vec<ChunkDone>) -> BTreeMap<(String, u64), ChunkDone> {
    list.into_iter()
        .map(|d| ((d.table.clone(), d.chunk), d))
        .collect()
}

fn dead_reasons(p: &std::path::Path) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for v in crate::checkpoint::read_jsonl::<serde_json::Value>(p)? {
        let t = v["table"].as_str().unwrap_or("").to_string();
        let r = v["reason"].as_str().unwrap_or("").to_string();
        *out.entry(t).or_default().entry(r).or_default() += 1;
    }
    Ok(out)
}

/// Round-robin over tables, keeping each table's chunk order.
fn interleave(q: VecDeque<Chunk>, tables: usize) -> VecDeque<Chunk> {
    let mut per: Vec<VecDeque<Chunk>> = vec![VecDeque::new(); tables];
    for c in q {
        per[c.table].push_back(c);
    }
    let mut out = VecDeque::new();
    loop {
        let mut any = false;
        for p in per.iter_mut() {
            if let Some(c) = p.pop_front() {
                out.push_back(c);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}

fn plan_report(
    opts: &BaseOptions,
    tables: &[TableRun],
    done: &BTreeMap<(String, u64), ChunkDone>,
) -> DryRun {
    let w = opts.chunk_rows;
    let list: Vec<PlanTable> = tables
        .iter()
        .enumerate()
        .map(|(ti, t)| {
            let ks: Vec<u64> = match (t.min_key, t.max_key) {
                (Some(min), Some(max)) => (min / w..=max / w).collect(),
                _ => Vec::new(),
            };
            let mine: Vec<u64> = ks
                .iter()
                .copied()
                .filter(|k| opts.shard.owns(ti, *k))
                .collect();
            PlanTable {
                table: t.mapping.source.clone(),
                key: t.spec.primary_key.join(","),
                min_key: t.min_key,
                max_key: t.max_key,
                estimated_rows: t.estimated_rows,
                chunks: ks.len() as u64,
                chunks_this_shard: mine.len() as u64,
                chunks_done: mine
                    .iter()
                    .filter(|k| done.contains_key(&(t.mapping.source.clone(), **k)))
                    .count() as u64,
            }
        })
        .collect();
    let est: u64 = list
        .iter()
        .map(|p| {
            (p.estimated_rows * p.chunks_this_shard)
                .checked_div(p.chunks)
                .unwrap_or(0)
        })
        .sum();
    DryRun {
        command: "base",
        dry_run: true,
        run_id: opts.run_id.clone(),
        shard: opts.shard.to_string(),
        chunk_rows: w,
        workers: opts.workers,
        estimated_rows: est,
        estimated_s: opts.max_rows_per_sec.map(|r| est as f64 / r as f64),
        tables: list,
    }
}

/// Checks the table and its columns exist, finds its key range, and prepares
/// the chunk query.
async fn inspect_table(pool: &MySqlPool, database: &str, m: TableMapping) -> Result<TableRun> {
    let st = crate::source::mysql::inspect(pool, database, m).await?;
    let (spec, t) = (st.spec, &st.mapping.source);
    let (list, k) = (spec.select_list(), spec.leading_key());
    let pk = spec
        .primary_key
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(TableRun {
        select_sql: format!(
            "SELECT {list} FROM `{t}` WHERE `{k}` >= ? AND `{k}` < ? ORDER BY {pk}"
        ),
        spec,
        counters: Arc::new(TableCounters::default()),
        min_key: st.min,
        max_key: st.max,
        estimated_rows: st.estimated_rows,
        mapping: st.mapping.clone(),
    })
}

/// Room ids, sorted: the fast path of the orphan check (a miss is re-checked
/// against the database, so a room created during the copy is no orphan).
pub(crate) async fn load_rooms(pool: &MySqlPool) -> Result<Option<Vec<u64>>> {
    let mut ids: Vec<u64> = match sqlx::query_scalar("SELECT room_id FROM room")
        .fetch_all(pool)
        .await
    {
        Ok(v) => v,
        Err(sqlx::Error::Database(e)) if e.message().contains("doesn't exist") => {
            tracing::warn!("the source has no room table: orphan checks are off");
            return Ok(None);
        }
        Err(e) => return Err(Error::mysql("list rooms", e)),
    };
    ids.sort_unstable();
    Ok(Some(ids))
}

pub(crate) async fn room_exists(
    rooms: Option<&[u64]>,
    pool: &MySqlPool,
    cache: &mut HashSet<u64>,
    room: u64,
) -> Result<bool> {
    let Some(rooms) = rooms else {
        return Ok(true);
    };
    if rooms.binary_search(&room).is_ok() || cache.contains(&room) {
        return Ok(true);
    }
    let found: Option<u64> = sqlx::query_scalar("SELECT room_id FROM room WHERE room_id = ?")
        .bind(room)
        .fetch_optional(pool)
        .await
        .map_err(|e| Error::mysql("orphan check", e))?;
    if found.is_some() {
        cache.insert(room);
    }
    Ok(found.is_some())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Other(format!("blocking task: {e}")))?
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A global rows-per-second budget shared by all workers.
struct RateLimiter {
    per_row: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimiter {
    fn new(rate: u64) -> Self {
        RateLimiter {
            per_row: Duration::from_secs_f64(1.0 / rate.max(1) as f64),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn acquire(&self, rows: usize) {
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.per_row * rows as u32;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Pauses the copy while the source is busier than `limit` running threads.
async fn watch_threads_running(sh: Arc<Shared>, limit: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let v: Result<(String, String), _> =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Threads_running'")
                .fetch_one(&sh.pool)
                .await;
        let Ok((_, v)) = v else { continue };
        let running: u64 = v.parse().unwrap_or(0);
        let was = sh.paused.swap(running > limit, Ordering::SeqCst);
        if was != (running > limit) {
            if running > limit {
                tracing::warn!(
                    threads_running = running,
                    limit,
                    "source busy: pausing the copy"
                );
            } else {
                tracing::info!(
                    threads_running = running,
                    limit,
                    "source calm: resuming the copy"
                );
            }
        }
    }
}

/// One worker's HBase connection, with one batch in flight while the next is read.
struct HbaseLane {
    addr: String,
    framed: bool,
    client: Option<HbaseClient>,
    pending: Option<JoinHandle<(HbaseClient, Result<()>)>>,
}

impl HbaseLane {
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

    async fn submit(&mut self, batch: Vec<(String, PutBuf)>) -> Result<()> {
        self.wait().await?;
        let mut client = match self.client.take() {
            Some(c) => c,
            None => {
                let (a, f) = (self.addr.clone(), self.framed);
                blocking(move || HbaseClient::connect(&a, f)).await?
            }
        };
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut r = Ok(());
            for (table, puts) in batch {
                r = client.put_encoded(&table, &puts);
                if r.is_err() {
                    break;
                }
            }
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

struct Batch {
    main: PutBuf,
    id_map: PutBuf,
    rows: usize,
}

impl Batch {
    fn new() -> Self {
        Batch {
            main: PutBuf::default(),
            id_map: PutBuf::default(),
            rows: 0,
        }
    }
    fn full(&self) -> bool {
        self.rows >= BATCH_ROWS || self.main.bytes() + self.id_map.bytes() >= BATCH_BYTES
    }
}

#[derive(Serialize)]
struct DeadLetter<'a> {
    table: &'a str,
    chunk: u64,
    key: String,
    reason: &'static str,
    detail: String,
    values: BTreeMap<&'static str, SrcVal>,
}

/// The transactional id of worker `w`: the same on every attempt of the run,
/// so a restarted worker fences its predecessor.
fn txn_id(scope: &str, w: usize) -> String {
    format!("falcon-base-{}-w{w}", scope.replace('/', "-"))
}

async fn worker(sh: Arc<Shared>, w: usize, mut producer: Option<Arc<TxProducer>>) -> Result<()> {
    let mut lane = sh.opts.targets.hbase.then(|| HbaseLane {
        addr: sh.cfg.hbase.thrift.clone(),
        framed: sh.cfg.hbase.framed,
        client: None,
        pending: None,
    });
    let mut room_cache = HashSet::new();
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(chunk) = sh
            .queue
            .lock()
            .map_err(|_| Error::Other("queue poisoned".into()))?
            .pop_front()
        else {
            return Ok(());
        };
        let table = &sh.tables[chunk.table];
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = copy_chunk(
                &sh,
                &chunk,
                producer.as_deref(),
                lane.as_mut(),
                &mut room_cache,
            )
            .await;
            match r {
                Ok(()) => break,
                Err(e) => {
                    if let Some(p) = producer.take() {
                        // Abort, then start over with a fresh producer: after a
                        // fatal error (a transaction timed out and was fenced)
                        // the old one cannot be used again.
                        let _ = blocking(move || {
                            p.abort_transaction(Timeout::After(Duration::from_secs(30)))
                                .map_err(|e| Error::kafka("abort", e))
                        })
                        .await;
                        let (k, id) = (sh.cfg.kafka.clone(), txn_id(&sh.scope, w));
                        producer =
                            Some(Arc::new(blocking(move || make_tx_producer(&k, &id)).await?));
                    }
                    if let Some(l) = lane.as_mut() {
                        l.reset().await;
                    }
                    if matches!(e, Error::Interrupted) {
                        return Ok(());
                    }
                    if e.is_transient() && attempt < MAX_ATTEMPTS {
                        let wait = Duration::from_millis(500 * (1 << attempt));
                        tracing::warn!(table = %table.mapping.source, chunk = chunk.k, attempt, "retrying chunk in {wait:?}: {e}");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(Error::Other(format!(
                        "table {} chunk {} [{}, {}): {e}",
                        table.mapping.source, chunk.k, chunk.lo, chunk.hi
                    )));
                }
            }
        }
    }
}

async fn copy_chunk(
    sh: &Shared,
    chunk: &Chunk,
    producer: Option<&TxProducer>,
    mut lane: Option<&mut HbaseLane>,
    room_cache: &mut HashSet<u64>,
) -> Result<()> {
    let t = &sh.tables[chunk.table];
    let name = t.mapping.source.as_str();
    let kind = t.spec.kind;
    let family = sh.cfg.hbase.column_family.as_bytes().to_vec();
    let origin = event::Origin {
        phase: "base",
        run: &sh.record.run_id,
        position: &sh.position,
    };
    if let Some(p) = producer {
        p.begin_transaction()
            .map_err(|e| Error::kafka("begin transaction", e))?;
    }
    let mut done = ChunkDone {
        table: name.to_string(),
        chunk: chunk.k,
        read: 0,
        kafka: 0,
        hbase: 0,
        dead: 0,
    };
    let mut dead: Vec<Vec<u8>> = Vec::new();
    let mut reported = 0u64;
    let mut batch = Batch::new();
    let mut ev = Vec::with_capacity(1024);
    let mut rows = sqlx::query(&t.select_sql)
        .bind(chunk.lo)
        .bind(chunk.hi)
        .fetch(&sh.pool);
    let max_event = sh.cfg.kafka.message_max_bytes;
    let hbase_table = t.mapping.hbase_table.clone();
    let id_map_table = sh.cfg.hbase.id_map_table.clone();
    loop {
        let row = rows
            .try_next()
            .await
            .map_err(|e| Error::mysql(format!("read {name} chunk {}", chunk.k), e))?;
        let Some(row) = row else { break };
        let vals = t
            .spec
            .decode(&row)
            .map_err(|e| Error::mysql(format!("decode a row of {name}"), e))?;
        done.read += 1;
        let mut outcome = mapping::canonical(kind, &vals, &sh.ctx);
        if let (Ok(_), Some(room)) = (&outcome, mapping::required_room(kind, &vals)) {
            if !room_exists(sh.rooms.as_deref(), &sh.pool, room_cache, room).await? {
                outcome = Err(mapping::Rejection {
                    reason: Reject::OrphanRoom,
                    detail: format!("room {room} does not exist"),
                });
            }
        }
        let c = match outcome {
            Ok(c) => {
                if sh.opts.targets.kafka {
                    event::encode(&c, &origin, &mut ev);
                    if ev.len() > max_event {
                        Err(mapping::Rejection {
                            reason: Reject::OversizedEvent,
                            detail: format!(
                                "event of {} bytes exceeds kafka.message_max_bytes {max_event}",
                                ev.len()
                            ),
                        })
                    } else {
                        Ok(c)
                    }
                } else {
                    Ok(c)
                }
            }
            Err(r) => Err(r),
        };
        match c {
            Err(rej) => {
                done.dead += 1;
                t.counters.dead.fetch_add(1, Ordering::Relaxed);
                let values = t
                    .spec
                    .columns
                    .iter()
                    .map(|c| c.name)
                    .zip(vals.iter().cloned())
                    .collect();
                let line = DeadLetter {
                    table: name,
                    chunk: chunk.k,
                    key: t.spec.key_of(&vals),
                    reason: rej.reason.as_str(),
                    detail: rej.detail,
                    values,
                };
                dead.push(serde_json::to_vec(&line).map_err(|e| Error::Other(e.to_string()))?);
            }
            Ok(c) => {
                if let Some(p) = producer {
                    let key = c.partition_key.to_string();
                    send(p, &t.mapping.topic, key.as_bytes(), &ev).await?;
                    done.kafka += 1;
                }
                if sh.opts.targets.hbase {
                    batch.main.push_canonical(&c, &family);
                    if let Some((legacy, new_id, room)) = c.id_pair {
                        batch.id_map.push_id_map(
                            legacy,
                            new_id,
                            room,
                            sh.ctx.salt_buckets,
                            sh.ctx.epoch_ms,
                            &family,
                        );
                    }
                    done.hbase += 1;
                }
                batch.rows += 1;
            }
        }
        if batch.full() {
            flush(
                sh,
                &mut batch,
                lane.as_deref_mut(),
                &hbase_table,
                &id_map_table,
            )
            .await?;
            t.counters
                .read
                .fetch_add(done.read - reported, Ordering::Relaxed);
            reported = done.read;
        }
    }
    drop(rows);
    flush(
        sh,
        &mut batch,
        lane.as_deref_mut(),
        &hbase_table,
        &id_map_table,
    )
    .await?;
    if let Some(l) = lane {
        l.wait().await?;
    }
    // Dead letters are durable before the chunk can count as done.
    if !dead.is_empty() {
        let mut f = sh
            .dead
            .lock()
            .map_err(|_| Error::Other("dead-letter lock poisoned".into()))?;
        for d in &dead {
            f.append_raw(d)?;
        }
        f.sync()?;
    }
    if let Some(p) = producer {
        let marker = Marker {
            done: done.clone(),
            run: sh.record.run_id.clone(),
            shard: sh.record.shard.to_string(),
        };
        let key = format!("{}/{name}/{}", sh.scope, chunk.k);
        let payload = serde_json::to_vec(&marker).map_err(|e| Error::Other(e.to_string()))?;
        send(p, &sh.cfg.kafka.progress_topic, key.as_bytes(), &payload).await?;
        // HBase acknowledged every batch above: the marker may now commit.
        tokio::task::block_in_place(|| {
            p.commit_transaction(Timeout::After(Duration::from_secs(120)))
        })
        .map_err(|e| Error::kafka(format!("commit chunk {} of {name}", chunk.k), e))?;
    }
    {
        let mut log = sh
            .done
            .lock()
            .map_err(|_| Error::Other("checkpoint lock poisoned".into()))?;
        log.append(&done)?;
        log.sync()?;
    }
    t.counters
        .read
        .fetch_add(done.read - reported, Ordering::Relaxed);
    t.counters.kafka.fetch_add(done.kafka, Ordering::Relaxed);
    t.counters.hbase.fetch_add(done.hbase, Ordering::Relaxed);
    t.counters.chunks_done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Ships a batch: waits for the rate budget and for a calm source, hands the
/// HBase puts to the lane (which writes them while the next batch is read).
async fn flush(
    sh: &Shared,
    batch: &mut Batch,
    lane: Option<&mut HbaseLane>,
    table: &str,
    id_map: &str,
) -> Result<()> {
    if batch.rows == 0 {
        return Ok(());
    }
    if let Some(l) = &sh.limiter {
        l.acquire(batch.rows).await;
    }
    while sh.paused.load(Ordering::Relaxed) {
        if sh.stop.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if sh.stop.load(Ordering::SeqCst) {
        return Err(Error::Interrupted);
    }
    let main = std::mem::take(&mut batch.main);
    let ids = std::mem::take(&mut batch.id_map);
    batch.rows = 0;
    if let Some(l) = lane {
        let mut work = vec![(table.to_string(), main)];
        if !ids.is_empty() {
            work.push((id_map.to_string(), ids));
        }
        l.submit(work).await?;
    }
    Ok(())
}
