//! Starting or resuming a shard of a base run. The record in Kafka is the
//! truth; the local state dir is a cache of it:
//! - a local record without `--resume` is refused (the operator may not know
//!   a run exists); with `--resume` it continues;
//! - no local record but a start record in Kafka (the pod lost its disk):
//!   the run continues from Kafka's record, copying only what is missing;
//! - neither: a new shard. The run's plan is the first one committed to
//!   Kafka (this shard publishes one if there is none); a shard whose
//!   parameters differ from it is refused. The start position is recorded
//!   and published before anything is read.
//!
//! Every transactional id an earlier attempt of this shard may have used is
//! fenced first (which aborts its open transactions), then the committed
//! records are read.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::mysql::MySqlPool;

use super::plan::{Plan, TableWidth};
use super::{now_ms, BaseOptions, TableRun};
use crate::checkpoint::{ChunkDone, RunDir, RunRecord, Shard};
use crate::config::{Config, TableMapping};
use crate::error::{Error, Result};
use crate::pipeline::commit::blocking;
use crate::pipeline::runlog::{PlanRecord, RunLog, Scope, ShardStart};
use crate::sink::kafka::tx::{make_tx_producer, read_progress, TxProducer};

/// A shard ready to copy.
pub(super) struct Begun {
    pub(super) record: RunRecord,
    /// Chunks committed, by (table, chunk).
    pub(super) done: BTreeMap<(String, u64), ChunkDone>,
    /// One fenced, initialised producer per worker (Kafka target).
    pub(super) producers: Vec<TxProducer>,
    /// (HBase tables, Kafka topics).
    pub(super) prepared: (Vec<String>, Vec<String>),
    pub(super) resumed: bool,
}

pub(super) fn worker_txn_id(scope: &Scope, shard: Shard, w: usize) -> String {
    scope.txn_id(&format!("base-s{}of{}-w{w}", shard.index, shard.count))
}

pub(super) fn ctl_txn_id(scope: &Scope, shard: Shard) -> String {
    scope.txn_id(&format!("base-s{}of{}-ctl", shard.index, shard.count))
}

pub(super) async fn begin(
    cfg: &Config,
    opts: &BaseOptions,
    pool: &MySqlPool,
    scope: &Scope,
    run_dir: &RunDir,
    tables: &mut [TableRun],
) -> Result<Begun> {
    let shard = opts.shard;
    let local = run_dir.load_record()?;
    if local.is_some() && !opts.resume {
        return Err(Error::Usage(format!(
            "a base run {:?} (shard {shard}) already exists in {}: pass --resume to continue it, or --run-id to start another",
            opts.run_id,
            opts.state_dir.display()
        )));
    }
    if let Some(r) = &local {
        if !r.source_id.is_empty() && r.source_id != scope.source {
            return Err(Error::Usage(format!(
                "--resume: run {:?} was started against source server {}, but this is {}: point source.url at the same server (or start another --run-id)",
                opts.run_id, r.source_id, scope.source
            )));
        }
    }
    let names: Vec<String> = tables.iter().map(|t| t.mapping.source.clone()).collect();
    let mappings: Vec<TableMapping> = tables.iter().map(|t| t.mapping.clone()).collect();
    let prepared =
        crate::sink::prepare(cfg, &mappings, opts.targets.kafka, opts.targets.hbase).await?;
    let prepared_names = (prepared.hbase_tables, prepared.kafka_topics);

    // Kafka: fence every id an earlier attempt may hold, then read the record.
    let mut producers = Vec::new();
    let mut log = RunLog::default();
    let mut max_workers = opts
        .workers
        .max(local.as_ref().map_or(0, |r| r.max_workers));
    if opts.targets.kafka {
        max_workers = max_workers.max(hinted_workers(cfg, scope, shard).await?);
        let (k, ids) = (
            cfg.kafka.clone(),
            (0..max_workers)
                .map(|w| worker_txn_id(scope, shard, w))
                .chain([ctl_txn_id(scope, shard)])
                .collect::<Vec<_>>(),
        );
        let workers = opts.workers;
        producers = blocking(move || {
            // Each id's init_transactions is a round trip to its coordinator
            // (fencing what an earlier process left): side by side.
            let made: Vec<Result<TxProducer>> = std::thread::scope(|scope| {
                let k = &k;
                let hs: Vec<_> = ids
                    .iter()
                    .map(|id| scope.spawn(move || make_tx_producer(k, id)))
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Other("a Kafka producer's set-up panicked".into()))
                        })
                    })
                    .collect()
            });
            let mut ps = Vec::new();
            for (i, p) in made.into_iter().enumerate() {
                let p = p?;
                if i < workers {
                    ps.push(p);
                }
            }
            Ok(ps)
        })
        .await?;
        log = RunLog::read(&cfg.kafka, scope).await?;
    }

    let kafka_start = log.start_of(shard).cloned();
    let (mut record, resumed) = match (local, kafka_start) {
        (Some(r), _) => {
            if r.kafka != opts.targets.kafka || r.hbase != opts.targets.hbase {
                return Err(Error::Usage(format!(
                    "--resume: the run was started with targets kafka={} hbase={}; pass the same --target",
                    r.kafka, r.hbase
                )));
            }
            if r.tables != names {
                return Err(Error::Usage(format!(
                    "--resume: the run copies tables {:?}; pass the same --tables",
                    r.tables
                )));
            }
            if r.chunk_rows != opts.chunk_rows {
                tracing::warn!(
                    recorded = r.chunk_rows,
                    "--resume keeps the run's chunk size"
                );
            }
            (r, true)
        }
        (None, Some(s)) => {
            let Some((_, p)) = &log.plan else {
                return Err(Error::Other(format!(
                    "shard {shard} has a start record in Kafka but its run has no plan there"
                )));
            };
            check_plan(&p.plan, opts, &names)?;
            tracing::warn!(
                run = %opts.run_id,
                shard = %shard,
                "no local state for this run: continuing from its record in Kafka (committed chunks are not copied again)"
            );
            (record_from(opts, scope, &s, &p.plan, &names), true)
        }
        (None, None) => {
            if opts.resume {
                return Err(Error::Usage(format!(
                    "--resume: no base run {:?} (shard {shard}) in {} nor in Kafka",
                    opts.run_id,
                    opts.state_dir.display()
                )));
            }
            let plan = if opts.targets.kafka {
                agree_on_plan(cfg, opts, pool, scope, tables, &mut log).await?
            } else {
                // No shared record: every shard derives the same plan.
                Plan {
                    chunk_rows: opts.chunk_rows,
                    shards: shard.count,
                    tables: names
                        .iter()
                        .map(|t| TableWidth {
                            table: t.clone(),
                            width: opts.chunk_rows,
                        })
                        .collect(),
                }
            };
            let position = crate::source::mysql::snapshot_position(pool).await?;
            let start = ShardStart {
                shard,
                start_position: position,
                start_ts_ms: now_ms(),
                plan: plan.digest(),
                kafka: opts.targets.kafka,
                hbase: opts.targets.hbase,
                max_workers,
            };
            (record_from(opts, scope, &start, &plan, &names), false)
        }
    };
    record.max_workers = record.max_workers.max(max_workers);
    if opts.targets.kafka {
        let start = ShardStart {
            shard,
            start_position: record.start_position.clone(),
            start_ts_ms: record.start_ts_ms,
            plan: Plan {
                chunk_rows: record.chunk_rows,
                shards: shard.count,
                tables: record.widths.clone(),
            }
            .digest(),
            kafka: record.kafka,
            hbase: record.hbase,
            max_workers: record.max_workers,
        };
        if log.start_of(shard) != Some(&start) {
            publish(
                cfg,
                &ctl_txn_id(scope, shard),
                &scope.shard_key(shard, "start"),
                &start,
            )
            .await?;
        }
    }
    run_dir.save_record(&record)?;
    for t in tables.iter_mut() {
        t.width = record
            .widths
            .iter()
            .find(|w| w.table == t.mapping.source)
            .map_or(record.chunk_rows, |w| w.width);
    }
    tracing::info!(run = %record.run_id, shard = %record.shard, start = %record.start_position, "base run {}", if resumed { "resumed" } else { "started" });

    // Chunks committed in Kafka that the local list lacks (a lost disk, or a
    // crash between the commit and the local append).
    let mut done = run_dir.load_done()?;
    let mut done_log = run_dir.done_log()?;
    for c in &log.chunks {
        let Some(ti) = names.iter().position(|n| *n == c.done.table) else {
            continue;
        };
        if !shard.owns(ti, c.done.chunk) {
            continue;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) =
            done.entry((c.done.table.clone(), c.done.chunk))
        {
            done_log.append(&c.done)?;
            slot.insert(c.done.clone());
        }
    }
    done_log.sync()?;
    run_dir.prune_dead(&done)?;
    Ok(Begun {
        record,
        done,
        producers,
        prepared: prepared_names,
        resumed,
    })
}

fn record_from(
    opts: &BaseOptions,
    scope: &Scope,
    s: &ShardStart,
    plan: &Plan,
    names: &[String],
) -> RunRecord {
    RunRecord {
        run_id: opts.run_id.clone(),
        shard: s.shard,
        start_position: s.start_position.clone(),
        start_ts_ms: s.start_ts_ms,
        chunk_rows: plan.chunk_rows,
        tables: names.to_vec(),
        kafka: s.kafka,
        hbase: s.hbase,
        max_workers: s.max_workers,
        source_id: scope.source.clone(),
        widths: plan.tables.clone(),
    }
}

/// Refuses a shard whose parameters differ from the run's plan.
fn check_plan(plan: &Plan, opts: &BaseOptions, names: &[String]) -> Result<()> {
    let mine = Plan {
        chunk_rows: opts.chunk_rows,
        shards: opts.shard.count,
        tables: names
            .iter()
            .map(|t| TableWidth {
                table: t.clone(),
                width: 0,
            })
            .collect(),
    };
    match plan.mismatch(&mine) {
        None => Ok(()),
        Some(what) => Err(Error::Usage(format!(
            "base run {:?}: its plan (recorded in Kafka by the first shard) has {what}; every shard of a run must be started with the same --chunk-rows, shard count and --tables",
            opts.run_id
        ))),
    }
}

/// The run's plan: the first committed in Kafka, or this shard's, published.
async fn agree_on_plan(
    cfg: &Config,
    opts: &BaseOptions,
    pool: &MySqlPool,
    scope: &Scope,
    tables: &[TableRun],
    log: &mut RunLog,
) -> Result<Plan> {
    let names: Vec<String> = tables.iter().map(|t| t.mapping.source.clone()).collect();
    if log.plan.is_none() {
        let mut widths = Vec::new();
        for t in tables {
            widths.push(TableWidth {
                table: t.mapping.source.clone(),
                width: t.planned_width(pool, opts.chunk_rows).await?,
            });
        }
        let mine = Plan {
            chunk_rows: opts.chunk_rows,
            shards: opts.shard.count,
            tables: widths,
        };
        let rec = PlanRecord {
            run: opts.run_id.clone(),
            plan: mine.clone(),
            created_ms: now_ms(),
        };
        publish(
            cfg,
            &ctl_txn_id(scope, opts.shard),
            &scope.plan_key(&mine.digest()),
            &rec,
        )
        .await?;
        // Another shard may have published first: the first one wins.
        *log = RunLog::read(&cfg.kafka, scope).await?;
    }
    let Some((_, p)) = &log.plan else {
        return Err(Error::Other(
            "the run's plan was published but cannot be read back".into(),
        ));
    };
    check_plan(&p.plan, opts, &names)?;
    Ok(p.plan.clone())
}

/// The highest worker count an earlier attempt of this shard recorded,
/// read before fencing (so uncommitted records are read too: a hint only).
async fn hinted_workers(cfg: &Config, scope: &Scope, shard: Shard) -> Result<usize> {
    let (k, key) = (cfg.kafka.clone(), scope.shard_key(shard, "start"));
    let recs = blocking(move || read_progress(&k, &key, false)).await?;
    Ok(recs
        .iter()
        .filter_map(|r| serde_json::from_slice::<ShardStart>(&r.payload).ok())
        .map(|s| s.max_workers.min(256))
        .max()
        .unwrap_or(0))
}

/// Commits one record to the progress topic with the shard's control producer.
pub(super) async fn publish(
    cfg: &Config,
    txn_id: &str,
    key: &str,
    value: &impl Serialize,
) -> Result<()> {
    crate::pipeline::runlog::publish(&cfg.kafka, txn_id, key, value).await
}
