//! `status`: the state of a database's migration, read from the run's record
//! in Kafka alone (the progress topic: see `pipeline::runlog`), so it answers
//! the same on any machine, with or without the state dir of the processes
//! that did the work:
//! - base: the plan, each shard (not started / copying / finished), chunks
//!   done of chunks to copy per table, rows, the rate over the last minute
//!   and the time left at that rate;
//! - diff: the committed position, the lag when its last batch was written
//!   and how long ago that was;
//! - verify: the last verdict.
//!
//! What the record does not say is said plainly (`unknown`, `not started`,
//! `never run`), never guessed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::checkpoint::Shard;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::base::now_ms;
use crate::pipeline::commit::{blocking, RetryPolicy};
use crate::pipeline::diff::Checkpoint;
use crate::pipeline::runlog::{sanitize, verify_key, RunLog, Scope, VerifyRecord};
use crate::position::Position;
use crate::sink::kafka::tx::{read_progress_with, MarkerRecord};

/// The window of the base rate: rows of chunks committed in the last minute.
const RATE_WINDOW_MS: u64 = 60_000;

#[derive(Debug, Clone)]
pub struct StatusOptions {
    pub base_run_id: String,
    pub diff_run_id: String,
    /// The source server's identity, when several share the database name.
    pub source_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub command: &'static str,
    pub progress_topic: String,
    /// False before any phase has run against this Kafka cluster.
    pub progress_topic_exists: bool,
    pub database: String,
    /// The source server the records are of (None: nothing recorded).
    pub source: Option<String>,
    pub read_at_ms: u64,
    pub base: BaseStatus,
    pub diff: DiffStatus,
    pub verify: VerifyStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaseStatus {
    pub run_id: String,
    /// `not started`, `copying`, `finished`.
    pub state: &'static str,
    pub chunk_rows: Option<u64>,
    pub shards: Vec<ShardStatus>,
    pub tables: Vec<TableStatus>,
    pub chunks_done: u64,
    /// None while a shard has not planned its chunks.
    pub chunks_total: Option<u64>,
    pub rows: u64,
    pub rows_per_s: f64,
    /// Seconds left at the current rate; None when unknown (no rate, or
    /// chunks of a shard not planned yet).
    pub eta_s: Option<f64>,
    pub start_position: Option<Position>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    pub shard: String,
    /// `not started`, `copying` (or stopped: the record cannot tell), `finished`.
    pub state: &'static str,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub start_position: Option<Position>,
    pub chunks_done: u64,
    pub chunks_total: Option<u64>,
    pub rows: u64,
    /// Milliseconds since this shard last committed a chunk.
    pub last_chunk_age_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub chunks_done: u64,
    pub chunks_total: Option<u64>,
    pub rows: u64,
    pub rows_per_s: f64,
    pub eta_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffStatus {
    pub run_id: String,
    /// `not started` or `running or stopped` (the record cannot tell which).
    pub state: &'static str,
    pub position: Option<Position>,
    /// Source commit → written, when its last batch was written.
    pub lag_s: Option<f64>,
    pub last_batch_ms: Option<u64>,
    pub last_batch_age_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyStatus {
    /// `never run`, `identical`, `differences`, `repaired`.
    pub state: &'static str,
    pub last: Option<VerifyRecord>,
}

/// Reads the progress topic (committed records only) and sums it up.
pub async fn read(cfg: &Config, opts: &StatusOptions) -> Result<Status> {
    let database = sanitize(&cfg.database().ok_or_else(|| {
        Error::config(
            cfg.path.display().to_string(),
            "source.url names no database",
        )
    })?);
    let k = cfg.kafka.clone();
    // A status answers in seconds: a broker that is down is reported, not waited for.
    let policy = RetryPolicy {
        budget: std::time::Duration::from_secs(10),
        ..RetryPolicy::default()
    };
    let recs = blocking(move || {
        if !crate::sink::kafka::topic_exists(&k, &k.progress_topic)? {
            return Ok(None);
        }
        read_progress_with(&k, "", true, &policy).map(Some)
    })
    .await?;
    let exists = recs.is_some();
    let mut s = summarize(
        cfg.kafka.progress_topic.clone(),
        &database,
        opts,
        &recs.unwrap_or_default(),
        now_ms(),
    )?;
    s.progress_topic_exists = exists;
    Ok(s)
}

/// The sources with records of `database` in the topic.
fn sources(database: &str, recs: &[MarkerRecord]) -> BTreeSet<String> {
    recs.iter()
        .filter_map(|r| {
            let mut parts = r.key.splitn(3, '/');
            let (source, db) = (parts.next()?, parts.next()?);
            (db == database && parts.next().is_some()).then(|| source.to_string())
        })
        .collect()
}

pub fn summarize(
    progress_topic: String,
    database: &str,
    opts: &StatusOptions,
    recs: &[MarkerRecord],
    now: u64,
) -> Result<Status> {
    let found = sources(database, recs);
    let source = match &opts.source_id {
        Some(s) => Some(s.clone()),
        None if found.len() > 1 => {
            return Err(Error::Usage(format!(
                "the progress topic {progress_topic} holds runs of database {database} on several source servers ({}): pass --source-id",
                found.into_iter().collect::<Vec<_>>().join(", ")
            )))
        }
        None => found.into_iter().next(),
    };
    let src = source.clone().unwrap_or_default();
    let scope = Scope {
        source: src.clone(),
        database: database.to_string(),
        run: opts.base_run_id.clone(),
    };
    let log = RunLog::parse(&scope, recs);
    let latest = |key: &str| recs.iter().rev().find(|r| r.key == key);
    let diff_key = format!("{src}/{database}/diff/{}", opts.diff_run_id);
    let diff = latest(&diff_key)
        .and_then(|r| serde_json::from_slice::<Checkpoint>(&r.payload).ok())
        .filter(|c| c.run == opts.diff_run_id);
    let verify = latest(&verify_key(&src, database))
        .and_then(|r| serde_json::from_slice::<VerifyRecord>(&r.payload).ok());
    Ok(Status {
        command: "status",
        progress_topic,
        progress_topic_exists: true,
        database: database.to_string(),
        source,
        read_at_ms: now,
        base: base_status(&opts.base_run_id, &log, now),
        diff: DiffStatus {
            run_id: opts.diff_run_id.clone(),
            state: if diff.is_some() {
                "running or stopped"
            } else {
                "not started"
            },
            lag_s: diff
                .as_ref()
                .filter(|c| c.committed_ms > 0)
                .map(|c| c.lag_ms as f64 / 1000.0),
            last_batch_ms: diff.as_ref().map(|c| c.committed_ms).filter(|ms| *ms > 0),
            last_batch_age_s: diff
                .as_ref()
                .filter(|c| c.committed_ms > 0)
                .map(|c| now.saturating_sub(c.committed_ms) as f64 / 1000.0),
            position: diff.map(|c| c.position),
        },
        verify: VerifyStatus {
            state: match &verify {
                None => "never run",
                Some(v) if v.identical => "identical",
                Some(v) if v.remaining_after_repair == Some(0) => "repaired",
                Some(_) => "differences",
            },
            last: verify,
        },
    })
}

fn base_status(run_id: &str, log: &RunLog, now: u64) -> BaseStatus {
    let plan = log.plan.as_ref().map(|(_, p)| &p.plan);
    let n = plan.map_or(0, |p| p.shards);
    let mut shards = Vec::new();
    let mut tables: BTreeMap<String, TableStatus> = BTreeMap::new();
    if let Some(p) = plan {
        for t in &p.tables {
            tables.insert(
                t.table.clone(),
                TableStatus {
                    table: t.table.clone(),
                    chunks_done: 0,
                    chunks_total: Some(0),
                    rows: 0,
                    rows_per_s: 0.0,
                    eta_s: None,
                },
            );
        }
    }
    let first_start = log.starts.iter().map(|s| s.start_ts_ms).min();
    // Rows per table committed inside the rate window.
    let since = now.saturating_sub(RATE_WINDOW_MS);
    let mut recent: BTreeMap<&str, u64> = BTreeMap::new();
    for i in 0..n {
        let sh = Shard { index: i, count: n };
        let start = log.start_of(sh);
        let done = log.dones.iter().find(|d| d.shard == sh);
        let planned = log.chunk_plans.iter().find(|c| c.shard == sh);
        let mine: Vec<_> = log
            .chunks
            .iter()
            .filter(|c| c.shard == sh.to_string())
            .collect();
        for c in &mine {
            let t = tables
                .entry(c.done.table.clone())
                .or_insert_with(|| TableStatus {
                    table: c.done.table.clone(),
                    chunks_done: 0,
                    chunks_total: Some(0),
                    rows: 0,
                    rows_per_s: 0.0,
                    eta_s: None,
                });
            t.chunks_done += 1;
            t.rows += c.done.read;
            if c.committed_ms >= since {
                *recent.entry(c.done.table.as_str()).or_default() += c.done.read;
            }
        }
        for t in tables.values_mut() {
            let total = planned.and_then(|p| p.tables.iter().find(|x| x.table == t.table));
            t.chunks_total = match (t.chunks_total, total) {
                (Some(a), Some(b)) => Some(a + b.chunks),
                _ => None,
            };
        }
        shards.push(ShardStatus {
            shard: sh.to_string(),
            state: match (start, done) {
                (None, _) => "not started",
                (Some(_), None) => "copying",
                (Some(_), Some(_)) => "finished",
            },
            started_ms: start.map(|s| s.start_ts_ms),
            finished_ms: done.map(|d| d.finished_ms),
            start_position: start.map(|s| s.start_position.clone()),
            chunks_done: mine.len() as u64,
            chunks_total: planned.map(|p| p.tables.iter().map(|t| t.chunks).sum()),
            rows: mine.iter().map(|c| c.done.read).sum(),
            last_chunk_age_ms: mine
                .iter()
                .map(|c| c.committed_ms)
                .filter(|ms| *ms > 0)
                .max()
                .map(|ms| now.saturating_sub(ms)),
        });
    }
    let finished = n > 0 && shards.iter().all(|s| s.state == "finished");
    // The window is shorter at the start of the run.
    let window_s = first_start.map_or(RATE_WINDOW_MS, |s| {
        now.saturating_sub(s).clamp(1000, RATE_WINDOW_MS)
    }) as f64
        / 1000.0;
    for t in tables.values_mut() {
        t.rows_per_s = if finished {
            0.0
        } else {
            recent.get(t.table.as_str()).copied().unwrap_or(0) as f64 / window_s
        };
        t.eta_s = eta(t.chunks_done, t.chunks_total, t.rows, t.rows_per_s);
    }
    let tables: Vec<TableStatus> = tables.into_values().collect();
    let chunks_done = tables.iter().map(|t| t.chunks_done).sum();
    let chunks_total = tables.iter().map(|t| t.chunks_total).sum::<Option<u64>>();
    let rows = tables.iter().map(|t| t.rows).sum();
    let rows_per_s = tables.iter().map(|t| t.rows_per_s).sum();
    BaseStatus {
        run_id: run_id.to_string(),
        state: if log.starts.is_empty() {
            "not started"
        } else if finished {
            "finished"
        } else {
            "copying"
        },
        chunk_rows: plan.map(|p| p.chunk_rows),
        chunks_done,
        chunks_total: chunks_total.filter(|_| n > 0),
        rows,
        rows_per_s,
        eta_s: if finished {
            Some(0.0)
        } else {
            eta(chunks_done, chunks_total, rows, rows_per_s)
        },
        start_position: log.starts.iter().map(|s| s.start_position.clone()).min(),
        shards,
        tables,
    }
}

/// Seconds left: the chunks left, at the rows per chunk seen so far, at `rate`.
fn eta(done: u64, total: Option<u64>, rows: u64, rate: f64) -> Option<f64> {
    let total = total?;
    if done >= total {
        return Some(0.0);
    }
    if done == 0 || rate <= 0.0 {
        return None;
    }
    let per_chunk = rows as f64 / done as f64;
    Some((total - done) as f64 * per_chunk / rate)
}

/// `1h02m`, `3m05s`, `12s`.
pub fn duration_text(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ChunkDone;
    use crate::pipeline::base::plan::{Plan, TableWidth};
    use crate::pipeline::runlog::{ChunkMarker, PlanRecord, ShardChunks, ShardStart, TableChunks};

    fn rec(key: String, v: &impl Serialize) -> MarkerRecord {
        MarkerRecord {
            key,
            payload: serde_json::to_vec(v).unwrap(),
        }
    }

    fn opts() -> StatusOptions {
        StatusOptions {
            base_run_id: "base".into(),
            diff_run_id: "diff".into(),
            source_id: None,
        }
    }

    #[test]
    fn chunks_rows_rate_and_eta_come_from_the_records_of_every_shard() {
        let scope = Scope {
            source: "db1-3306-1".into(),
            database: "chat".into(),
            run: "base".into(),
        };
        let sh = |i| Shard { index: i, count: 2 };
        let now = 1_000_000;
        let mut recs = vec![rec(
            scope.plan_key("p"),
            &PlanRecord {
                run: "base".into(),
                plan: Plan {
                    chunk_rows: 100,
                    shards: 2,
                    tables: vec![TableWidth {
                        table: "message".into(),
                        width: 100,
                    }],
                },
                created_ms: 1,
            },
        )];
        recs.push(rec(
            scope.shard_key(sh(0), "start"),
            &ShardStart {
                shard: sh(0),
                start_position: Position::parse("mariadb-bin.000001:400").unwrap(),
                start_ts_ms: now - 120_000,
                plan: "p".into(),
                kafka: true,
                hbase: true,
                max_workers: 4,
            },
        ));
        recs.push(rec(
            scope.shard_key(sh(0), "chunks"),
            &ShardChunks {
                shard: sh(0),
                tables: vec![TableChunks {
                    table: "message".into(),
                    chunks: 10,
                    estimated_rows: 1000,
                }],
                planned_ms: now - 119_000,
            },
        ));
        // Four chunks of 100 rows: one long ago, three in the last minute.
        for (k, at) in [
            (0, now - 100_000),
            (2, now - 50_000),
            (4, now - 20_000),
            (6, now - 1),
        ] {
            recs.push(rec(
                scope.chunk_key("message", k),
                &ChunkMarker {
                    done: ChunkDone {
                        table: "message".into(),
                        chunk: k,
                        read: 100,
                        kafka: 100,
                        hbase: 100,
                        dead: 0,
                    },
                    run: "base".into(),
                    shard: "0/2".into(),
                    committed_ms: at,
                },
            ));
        }
        let s = summarize("p".into(), "chat", &opts(), &recs, now).unwrap();
        assert_eq!(s.source.as_deref(), Some("db1-3306-1"));
        let b = &s.base;
        assert_eq!(b.state, "copying");
        assert_eq!(b.shards[0].state, "copying");
        assert_eq!(b.shards[1].state, "not started");
        assert_eq!(
            (b.shards[0].chunks_done, b.shards[0].chunks_total),
            (4, Some(10))
        );
        // Shard 1 has not planned: the run's total is unknown, and so is its ETA.
        assert_eq!((b.chunks_done, b.chunks_total, b.eta_s), (4, None, None));
        assert_eq!(b.rows, 400);
        assert!((b.rows_per_s - 5.0).abs() < 1e-9, "{}", b.rows_per_s);
        assert_eq!(s.diff.state, "not started");
        assert_eq!(s.verify.state, "never run");

        // Shard 1 planned 2 chunks: 8 left at 100 rows each, at 5 rows/s.
        recs.push(rec(
            scope.shard_key(sh(1), "chunks"),
            &ShardChunks {
                shard: sh(1),
                tables: vec![TableChunks {
                    table: "message".into(),
                    chunks: 2,
                    estimated_rows: 200,
                }],
                planned_ms: now,
            },
        ));
        let s = summarize("p".into(), "chat", &opts(), &recs, now).unwrap();
        assert_eq!(s.base.chunks_total, Some(12));
        assert_eq!(s.base.tables[0].eta_s, Some(160.0));

        // Another server's runs of the same database: the choice is the operator's.
        let mut other = recs.clone();
        other.push(rec(verify_key("db2-3306-2", "chat"), &1));
        let e = summarize("p".into(), "chat", &opts(), &other, now).unwrap_err();
        assert!(e.to_string().contains("--source-id"), "{e}");
    }

    #[test]
    fn durations_read_as_an_operator_would_say_them() {
        assert_eq!(duration_text(12.4), "12s");
        assert_eq!(duration_text(185.0), "3m05s");
        assert_eq!(duration_text(3720.0), "1h02m");
    }
}
