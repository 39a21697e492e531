//! `base`: the parallel bulk copy.
//!
//! - [`plan`]: pure planning (chunk widths, ownership by shard, ordering);
//! - [`start`]: the run's record — a new run publishes its plan and start
//!   position to Kafka; a resumed one (or one whose state dir was lost) reads
//!   them back, with the chunks already committed;
//! - [`copy`]: workers copy chunks through the shared committer;
//! - [`bulk`]: with `--hbase-load bulk`, HBase's cells are staged as sorted
//!   runs with each chunk and loaded as HFiles once every chunk is committed.
//!
//! The start position is a consistent snapshot's binlog position, taken
//! before anything is read. A chunk is committed everywhere (its marker in
//! the same Kafka transaction as its events, after HBase acknowledged) or
//! invisible to `read_committed` consumers; the local done list is appended
//! only after that.

pub mod bulk;
pub mod copy;
pub mod loader;
pub mod plan;
pub mod start;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use serde::Serialize;
use sqlx::mysql::{MySqlPool, MySqlRow};

use self::plan::Chunk;
pub use self::plan::{DryRun, PlanTable};
use super::commit::{Committer, HbaseLane, RetryPolicy};
use super::runlog::{Scope, ShardChunks, ShardDone, TableChunks};
use crate::checkpoint::{JsonlAppender, RunRecord, Shard, StateDir};
use crate::config::{Config, TableMapping};
use crate::error::{Error, Result};
use crate::mapping::{MapContext, Rooms, SrcVal, TableSpec};
use crate::position::Position;
use crate::telemetry::{Progress, TableCounters};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub kafka: bool,
    pub hbase: bool,
}

/// How HBase's cells get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HbaseLoad {
    /// Puts through the Thrift gateway, with each chunk.
    Put,
    /// Sorted runs with each chunk, HFiles and HBase's bulk-load tool
    /// (`command`, given the HFiles' folder URL and the table) at the end.
    Bulk { command: Vec<String> },
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
    pub retry: RetryPolicy,
    /// Take no new chunk once this many rows were read (`plan --calibrate`:
    /// a measured sample of the copy, not the whole of it).
    pub stop_after_rows: Option<u64>,
    pub hbase_load: HbaseLoad,
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
    /// Seconds the workers copied (elapsed less the start: snapshot, plan,
    /// topics and tables).
    pub copy_s: f64,
    pub rows_per_s: f64,
    pub rows_read: u64,
    pub dead_lettered: u64,
    pub tables: Vec<TableSummary>,
    pub kafka_topics: Vec<String>,
    pub hbase_tables: Vec<String>,
    pub dead_letter_file: String,
    pub checkpoint_file: String,
    /// With `--hbase-load bulk`: the HFiles written and loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk: Option<bulk::BulkSummary>,
}

pub enum BaseOutcome {
    Done(Box<BaseSummary>),
    Planned(DryRun),
}

/// A mapped table of the run, as found on the source.
pub(crate) struct TableRun {
    pub(crate) mapping: TableMapping,
    pub(crate) spec: &'static TableSpec,
    counters: Arc<TableCounters>,
    min_key: Option<u64>,
    max_key: Option<u64>,
    estimated_rows: u64,
    /// Key values per chunk (from the run's plan).
    width: u64,
    first_sql: String,
    next_sql: String,
    pk_index: Vec<usize>,
}

impl TableRun {
    fn new(st: crate::source::mysql::SourceTable) -> TableRun {
        let (spec, t) = (st.spec, &st.mapping.source);
        let (list, k) = (spec.select_list(), spec.leading_key());
        let pk: Vec<String> = spec.primary_key.iter().map(|c| format!("`{c}`")).collect();
        // Keyset on the whole primary key: `(a, b) > (?, ?)` spelled out so
        // that the index range is used.
        let mut after = Vec::new();
        for i in 0..pk.len() {
            let mut terms: Vec<String> = pk[..i].iter().map(|c| format!("{c} = ?")).collect();
            terms.push(format!("{} > ?", pk[i]));
            after.push(format!("({})", terms.join(" AND ")));
        }
        let base = format!("SELECT {list} FROM `{t}` WHERE `{k}` >= ? AND `{k}` < ?");
        let order = format!("ORDER BY {} LIMIT ?", pk.join(", "));
        TableRun {
            first_sql: format!("{base} {order}"),
            next_sql: format!("{base} AND ({}) {order}", after.join(" OR ")),
            pk_index: spec
                .primary_key
                .iter()
                .map(|c| spec.index_of(c).expect("primary key columns are read"))
                .collect(),
            spec,
            counters: Arc::new(TableCounters::default()),
            min_key: st.min,
            max_key: st.max,
            estimated_rows: st.estimated_rows,
            width: 0,
            mapping: st.mapping.clone(),
        }
    }

    /// Up to `limit` rows of `chunk` after the key `after` (in key order).
    fn read_batch<'a>(
        &'a self,
        pool: &'a MySqlPool,
        chunk: &Chunk,
        after: Option<&'a [SrcVal]>,
        limit: u64,
    ) -> BoxStream<'a, std::result::Result<MySqlRow, sqlx::Error>> {
        let bind = |q: sqlx::query::Query<'a, sqlx::MySql, sqlx::mysql::MySqlArguments>,
                    v: &'a SrcVal| match v {
            SrcVal::UInt(x) => q.bind(*x),
            SrcVal::Int(x) => q.bind(*x),
            SrcVal::Bytes(b) => q.bind(b.as_slice()),
            SrcVal::Null => q.bind(None::<u64>),
        };
        match after {
            None => sqlx::query(&self.first_sql)
                .bind(chunk.lo)
                .bind(chunk.hi)
                .bind(limit)
                .fetch(pool),
            Some(key) => {
                let mut q = sqlx::query(&self.next_sql).bind(chunk.lo).bind(chunk.hi);
                for i in 0..key.len() {
                    for v in &key[..i] {
                        q = bind(q, v);
                    }
                    q = bind(q, &key[i]);
                }
                q.bind(limit).fetch(pool)
            }
        }
    }

    /// How many key values the first `n` rows span (None: fewer rows).
    async fn first_span(&self, pool: &MySqlPool, n: u64) -> Result<Option<u64>> {
        let (t, k) = (&self.mapping.source, self.spec.leading_key());
        let (Some(min), Some(_)) = (self.min_key, self.max_key) else {
            return Ok(None);
        };
        let nth: Option<u64> = sqlx::query_scalar(&format!(
            "SELECT `{k}` FROM `{t}` ORDER BY `{k}` LIMIT 1 OFFSET ?"
        ))
        .bind(n.saturating_sub(1))
        .fetch_optional(pool)
        .await
        .map_err(|e| Error::mysql(format!("sample the keys of {t}"), e))?;
        Ok(nth.map(|x| x.saturating_sub(min) + 1))
    }

    /// This table's chunk width for a new plan.
    async fn planned_width(&self, pool: &MySqlPool, chunk_rows: u64) -> Result<u64> {
        Ok(plan::width(
            chunk_rows,
            self.first_span(pool, chunk_rows).await?,
        ))
    }

    /// The primary-key values of a row read by `read_batch`.
    fn key_of_row(&self, row: &MySqlRow) -> Result<Vec<SrcVal>> {
        let vals = self
            .spec
            .decode(row)
            .map_err(|e| Error::mysql(format!("decode a row of {}", self.mapping.source), e))?;
        Ok(self.pk_index.iter().map(|&i| vals[i].clone()).collect())
    }

    /// The chunks of this table that hold rows: a seek from each to the next.
    /// Called after the start position is recorded, from key 0 to the last
    /// row: a row written before the start is in a chunk, whatever the key
    /// range looked like when the table was inspected.
    async fn nonempty_chunks(&self, pool: &MySqlPool, ti: usize) -> Result<Vec<Chunk>> {
        let (t, k) = (&self.mapping.source, self.spec.leading_key());
        let sql = format!("SELECT MIN(`{k}`) FROM `{t}` WHERE `{k}` >= ?");
        let mut out = Vec::new();
        let mut from = 0u64;
        loop {
            let next: Option<u64> = sqlx::query_scalar(&sql)
                .bind(from)
                .fetch_one(pool)
                .await
                .map_err(|e| Error::mysql(format!("plan chunks of {t}"), e))?;
            // A server may clamp an out-of-range bound to the column's
            // maximum and hand the last key back: never go backwards.
            let Some(key) = next.filter(|k| *k >= from) else {
                break;
            };
            let c = plan::chunk(ti, plan::chunk_of(key, self.width), self.width);
            from = c.hi;
            out.push(c);
            if from == u64::MAX {
                break;
            }
        }
        Ok(out)
    }
}

/// What the workers share.
pub(crate) struct Shared {
    cfg: Config,
    opts: BaseOptions,
    record: RunRecord,
    scope: Scope,
    pool: MySqlPool,
    tables: Vec<TableRun>,
    queue: Mutex<VecDeque<Chunk>>,
    ctx: MapContext,
    rooms: Arc<Rooms>,
    done: Mutex<JsonlAppender>,
    limiter: Option<copy::RateLimiter>,
    paused: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    /// Whether `stop_after_rows` rows were read: the workers take no new chunk.
    fn sample_taken(&self) -> bool {
        self.opts.stop_after_rows.is_some_and(|limit| {
            let read: u64 = self
                .tables
                .iter()
                .map(|t| t.counters.read.load(Ordering::Relaxed))
                .sum();
            read >= limit
        })
    }
}

pub async fn run(cfg: Config, opts: BaseOptions) -> Result<BaseOutcome> {
    let started = Instant::now();
    if !opts.targets.kafka && !opts.targets.hbase {
        return Err(Error::Usage("no target selected".into()));
    }
    let mappings = cfg.select_tables(opts.tables.as_deref())?;
    let pool = crate::source::mysql::connect(&cfg, opts.workers as u32 + 2).await?;
    let database = cfg.database().unwrap_or_default();
    // Stop rather than skip: diff will replay this server's binlog from the start.
    crate::source::preflight::require(&pool, &cfg, true).await?;
    let mut tables = Vec::new();
    for m in mappings {
        tables.push(TableRun::new(
            crate::source::mysql::inspect(&pool, &database, m).await?,
        ));
    }
    let scope = Scope {
        source: super::runlog::source_identity(&pool).await?,
        database: crate::pipeline::runlog::sanitize(&database),
        run: opts.run_id.clone(),
    };
    let state = StateDir::new(&opts.state_dir);
    let run_dir = state.base_run(&opts.run_id, opts.shard);

    if opts.dry_run {
        return dry_run(&opts, &pool, &mut tables, &run_dir).await;
    }
    let begun = start::begin(&cfg, &opts, &pool, &scope, &run_dir, &mut tables).await?;
    let record = begun.record.clone();
    let done = begun.done;

    let mut nonempty = Vec::new();
    for (ti, t) in tables.iter().enumerate() {
        nonempty.extend(t.nonempty_chunks(&pool, ti).await?);
    }
    let queue = plan::todo(
        &nonempty,
        record.shard,
        &|ti, k| done.contains_key(&(tables[ti].mapping.source.clone(), k)),
        tables.len(),
        opts.stop_after_rows.is_some(),
    );
    let mut expected = vec![0u64; tables.len()];
    let mine = plan::counts(&nonempty, record.shard, &BTreeMap::new(), tables.len());
    for (ti, t) in tables.iter().enumerate() {
        let per_chunk = t.estimated_rows / mine[ti].0.max(1);
        let todo_here = queue.iter().filter(|c| c.table == ti).count() as u64;
        expected[ti] = per_chunk.max(1) * todo_here;
        t.counters.chunks_total.store(todo_here, Ordering::Relaxed);
        crate::metrics::set(
            &crate::metrics::CHUNKS_PLANNED,
            &[&t.mapping.source],
            todo_here as f64,
        );
    }

    if opts.targets.kafka {
        // What `status` shows as this shard's chunks to copy, from any machine.
        let rec = ShardChunks {
            shard: record.shard,
            tables: tables
                .iter()
                .zip(&mine)
                .map(|(t, &(all, this_shard, _))| TableChunks {
                    table: t.mapping.source.clone(),
                    chunks: this_shard,
                    estimated_rows: (t.estimated_rows * this_shard)
                        .checked_div(all)
                        .unwrap_or(0),
                })
                .collect(),
            planned_ms: now_ms(),
        };
        start::publish(
            &cfg,
            &start::ctl_txn_id(&scope, record.shard),
            &scope.shard_key(record.shard, "chunks"),
            &rec,
        )
        .await?;
    }

    let kinds: Vec<_> = tables.iter().map(|t| t.spec.kind).collect();
    let rooms = Arc::new(Rooms::for_kinds(&pool, &kinds).await?);
    let progress = Progress::new(
        tables
            .iter()
            .zip(&expected)
            .map(|(t, e)| (t.mapping.source.clone(), *e, t.counters.clone()))
            .collect(),
    );
    let dead = Arc::new(Mutex::new(JsonlAppender::open(&run_dir.dead_path())?));
    let shared = Arc::new(Shared {
        ctx: MapContext {
            salt_buckets: cfg.hbase.salt_buckets,
            epoch_ms: cfg.ids.epoch_ms,
            default_version_ms: record.start_ts_ms,
            min_version_ms: 0,
        },
        scope: scope.clone(),
        done: Mutex::new(run_dir.done_log()?),
        limiter: opts.max_rows_per_sec.map(copy::RateLimiter::new),
        paused: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        queue: Mutex::new(queue),
        rooms,
        tables,
        cfg: cfg.clone(),
        opts: opts.clone(),
        record: record.clone(),
        pool: pool.clone(),
    });

    let monitor = opts
        .max_threads_running
        .map(|limit| tokio::spawn(copy::watch_threads_running(shared.clone(), limit)));
    let copy_started = Instant::now();
    let bulk_load = matches!(opts.hbase_load, HbaseLoad::Bulk { .. });
    // The load command starts with the copy, so that its own start (a JVM,
    // a connection to HBase) is behind it when the first HFiles are ready.
    let loader = match (&opts.hbase_load, opts.targets.hbase) {
        (HbaseLoad::Bulk { command }, true) => Some(loader::Loader::start(command)?),
        _ => None,
    };
    let splits = crate::mapping::keys::splits(cfg.hbase.salt_buckets);
    let mut handles = Vec::new();
    let mut producers = begun.producers.into_iter();
    for w in 0..opts.workers {
        let kafka = opts.targets.kafka.then(|| {
            (
                cfg.kafka.clone(),
                start::worker_txn_id(&scope, record.shard, w),
                producers.next(),
            )
        });
        let lane = (opts.targets.hbase && !bulk_load).then(|| HbaseLane::new(&cfg.hbase, None));
        let mut committer =
            Committer::new(kafka, lane, dead.clone(), opts.retry).named("base_chunk");
        if opts.targets.hbase && bulk_load {
            committer = committer.with_stage(bulk::stager(&run_dir.bulk_dir(), splits.clone()));
        }
        handles.push(tokio::spawn(copy::worker(shared.clone(), committer)));
    }
    let err = supervise(&shared, handles, &progress, opts.progress_every).await;
    if let Some(m) = monitor {
        m.abort();
    }
    if let Some(e) = err {
        return Err(e);
    }

    let mut summary = summarize(
        &shared,
        &run_dir,
        &nonempty,
        &begun.prepared,
        (started, copy_started),
        begun.resumed,
    )?;
    let all_done = summary.tables.iter().all(|t| t.chunks_done >= t.chunks);
    if let (HbaseLoad::Bulk { command }, true, true) =
        (&opts.hbase_load, all_done, opts.targets.hbase)
    {
        let root = run_dir.bulk_dir();
        let done = run_dir.load_done()?;
        let (family, tables, command) = (
            cfg.hbase.column_family.clone(),
            begun.prepared.0.clone(),
            command.clone(),
        );
        let b = tokio::task::spawn_blocking(move || {
            bulk::Finish {
                root: &root,
                family: &family,
                tables: &tables,
                done: &done,
                command: &command,
            }
            .run(loader)
        })
        .await
        .map_err(|e| Error::Other(format!("bulk load: {e}")))??;
        // The rate counts the whole run, the load included.
        let copied = summary.rows_per_s * summary.elapsed_s;
        summary.elapsed_s = started.elapsed().as_secs_f64();
        summary.rows_per_s = copied / summary.elapsed_s.max(1e-9);
        summary.bulk = Some(b);
    }
    if opts.targets.kafka && all_done {
        let rec = ShardDone {
            shard: record.shard,
            rows_read: summary.rows_read,
            chunks: summary.tables.iter().map(|t| t.chunks_done).sum(),
            finished_ms: now_ms(),
        };
        start::publish(
            &cfg,
            &start::ctl_txn_id(&scope, record.shard),
            &scope.shard_key(record.shard, "done"),
            &rec,
        )
        .await?;
    }
    Ok(BaseOutcome::Done(Box::new(summary)))
}

/// Runs the workers to the end, or until the first error or an interrupt
/// (the work in hand is abandoned: its transaction is never committed).
async fn supervise(
    sh: &Arc<Shared>,
    handles: Vec<tokio::task::JoinHandle<Result<()>>>,
    progress: &Progress,
    every: Duration,
) -> Option<Error> {
    let sh2 = sh.clone();
    let (_, interrupt) =
        super::on_interrupt("finishing no new chunks; acknowledged chunks stay checkpointed");
    let work = async move {
        let mut first_err: Option<Error> = None;
        let mut pending = handles;
        tokio::select! {
            _ = interrupt.notified() => {
                sh2.stop.store(true, Ordering::SeqCst);
                first_err = Some(Error::Interrupted);
            }
            _ = async {
                for h in pending.iter_mut() {
                    let r = h.await.map_err(|e| Error::Other(format!("worker: {e}"))).and_then(|r| r);
                    if let Err(e) = r {
                        sh2.stop.store(true, Ordering::SeqCst);
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
    let task = tokio::spawn(async move {
        let r = work.await;
        let _ = tx.send(());
        r
    });
    progress
        .run_until(every, async {
            let _ = rx.await;
        })
        .await;
    match task.await {
        Ok(e) => e,
        Err(e) => Some(Error::Other(e.to_string())),
    }
}

/// The summary, checking `read = written + dead-lettered` per table and target.
fn summarize(
    sh: &Shared,
    run_dir: &crate::checkpoint::RunDir,
    nonempty: &[Chunk],
    prepared: &(Vec<String>, Vec<String>),
    (started, copy_started): (Instant, Instant),
    resumed: bool,
) -> Result<BaseSummary> {
    let record = &sh.record;
    let done = run_dir.load_done()?;
    let reasons = crate::checkpoint::dead::reasons(&run_dir.dead_path())?;
    let counts = plan::counts(nonempty, record.shard, &BTreeMap::new(), sh.tables.len());
    let mut tables = Vec::new();
    for (ti, t) in sh.tables.iter().enumerate() {
        let name = &t.mapping.source;
        let mine: Vec<_> = done.values().filter(|d| &d.table == name).collect();
        let s = TableSummary {
            table: name.clone(),
            rows_read: mine.iter().map(|d| d.read).sum(),
            written: Written {
                kafka: mine.iter().map(|d| d.kafka).sum(),
                hbase: mine.iter().map(|d| d.hbase).sum(),
            },
            dead_lettered: mine.iter().map(|d| d.dead).sum(),
            dead_letter_reasons: reasons.get(name).cloned().unwrap_or_default(),
            chunks: counts[ti].1,
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
        tables.push(s);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let copied: u64 = sh
        .tables
        .iter()
        .map(|t| t.counters.read.load(Ordering::Relaxed))
        .sum();
    Ok(BaseSummary {
        command: "base",
        run_id: record.run_id.clone(),
        shard: record.shard.to_string(),
        resumed,
        start_position: record.start_position.clone(),
        elapsed_s: elapsed,
        copy_s: copy_started.elapsed().as_secs_f64(),
        rows_per_s: copied as f64 / elapsed.max(1e-9),
        rows_read: tables.iter().map(|s| s.rows_read).sum(),
        dead_lettered: tables.iter().map(|s| s.dead_lettered).sum(),
        tables,
        kafka_topics: prepared.1.clone(),
        hbase_tables: prepared.0.clone(),
        dead_letter_file: run_dir.dead_path().display().to_string(),
        checkpoint_file: run_dir.done_path().display().to_string(),
        bulk: None,
    })
}

/// `--dry-run`: the plan this process would copy, from the local record when
/// there is one; writes nothing.
async fn dry_run(
    opts: &BaseOptions,
    pool: &MySqlPool,
    tables: &mut [TableRun],
    run_dir: &crate::checkpoint::RunDir,
) -> Result<BaseOutcome> {
    let record = run_dir.load_record()?;
    for t in tables.iter_mut() {
        let recorded = record
            .as_ref()
            .and_then(|r| r.widths.iter().find(|w| w.table == t.mapping.source))
            .map(|w| w.width);
        t.width = match recorded {
            Some(w) => w,
            None if opts.targets.kafka => t.planned_width(pool, opts.chunk_rows).await?,
            None => opts.chunk_rows,
        };
    }
    let done = run_dir.load_done()?;
    let mut nonempty = Vec::new();
    for (ti, t) in tables.iter().enumerate() {
        nonempty.extend(t.nonempty_chunks(pool, ti).await?);
    }
    let done_idx: BTreeMap<(usize, u64), ()> = nonempty
        .iter()
        .filter(|c| done.contains_key(&(tables[c.table].mapping.source.clone(), c.k)))
        .map(|c| ((c.table, c.k), ()))
        .collect();
    let counts = plan::counts(&nonempty, opts.shard, &done_idx, tables.len());
    let list: Vec<PlanTable> = tables
        .iter()
        .zip(&counts)
        .map(|(t, &(all, mine, done))| PlanTable {
            table: t.mapping.source.clone(),
            key: t.spec.primary_key.join(","),
            min_key: t.min_key,
            max_key: t.max_key,
            estimated_rows: t.estimated_rows,
            width: t.width,
            chunks: all,
            chunks_this_shard: mine,
            chunks_done: done,
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
    Ok(BaseOutcome::Planned(DryRun {
        command: "base",
        dry_run: true,
        run_id: opts.run_id.clone(),
        shard: opts.shard.to_string(),
        chunk_rows: opts.chunk_rows,
        workers: opts.workers,
        estimated_rows: est,
        estimated_s: opts.max_rows_per_sec.map(|r| est as f64 / r as f64),
        tables: list,
    }))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
