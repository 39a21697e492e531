//! `diff --mode watermark`: for sources whose binlog is out of reach.
//!
//! Each mapped table of kind `message` is read by keyset on
//! `(GREATEST(send_time, update_time), message_id)`, starting `overlap`
//! seconds before the run's watermark, in pages of `page` rows. Every row read
//! is written as diff writes an update (HBase put stamped with the row's
//! version, id-map rows, the full-state event), one Kafka transaction per page
//! with a progress marker (key `watermark/<db>/<run>`) committed in it after
//! HBase acknowledged; then the local checkpoint is rewritten. Rows inside the
//! overlap are written again: harmless for HBase (versioned puts), a repeated
//! full-state event for Kafka (at-least-once there). Hard deletes, equal
//! timestamps, clock skew and long transactions are blind spots (README);
//! `verify` finds what this misses.
//!
//! The checkpointed watermark never passes the source's clock at the start
//! of the run: a row whose version lies in the future (a broken client
//! clock) is written, but would otherwise lift the watermark past every row
//! changed until that date and freeze the mode. Rows above it are read again
//! by every run. HBase writes are stamped by the write clock
//! (`pipeline::clock`), saved in the checkpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::base::now_ms;
use super::clock::WriteClock;
use super::commit::{blocking, Committer, HbaseLane, Marker, RetryPolicy};
use super::diff::batch::{all_null, Batch, Dest};
use super::runlog::{sanitize, source_identity};
use crate::checkpoint::{dead, read_json, write_json_atomic, DeadLetter, JsonlAppender, StateDir};
use crate::config::{Config, EntityKind};
use crate::error::{Error, Result};
use crate::mapping::{self, Admission, MapContext, Rooms, SrcVal};
use crate::position::Position;
use crate::sink::kafka::event;
use crate::sink::kafka::tx::{make_tx_producer, read_markers};

#[derive(Debug, Clone)]
pub struct WatermarkOptions {
    pub state_dir: PathBuf,
    pub run_id: String,
    pub base_run_id: String,
    /// `--since UNIX_SECONDS`: overrides the checkpoint and the base's start.
    pub since: Option<u64>,
    pub overlap_s: u64,
    /// Rows per page (one Kafka transaction each).
    pub page: usize,
    pub progress_every: Duration,
    pub retry: RetryPolicy,
}

/// A point of the keyset: rows after it (in `(version_s, id)` order) are next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Watermark {
    /// `GREATEST(send_time, update_time)`, Unix seconds.
    pub version_s: u64,
    pub id: u64,
}

/// The local checkpoint and the Kafka marker: one watermark per table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    run: String,
    database: String,
    tables: BTreeMap<String, Watermark>,
    /// The last HBase timestamp written (`pipeline::clock`).
    #[serde(default)]
    clock_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatermarkSummary {
    pub command: &'static str,
    pub mode: &'static str,
    pub run_id: String,
    /// Per table: the watermark the run started from (before the overlap).
    pub from: BTreeMap<String, Watermark>,
    /// Per table: the watermark reached (checkpointed).
    pub to: BTreeMap<String, Watermark>,
    pub overlap_s: u64,
    /// Mapped tables without a version column: not read in this mode.
    pub skipped_tables: Vec<String>,
    /// `caught_up` (a page came back empty) or `interrupted`.
    pub stopped: &'static str,
    /// Rows read (each row in the window, including the overlap).
    pub events_read: u64,
    pub kafka_transactions: u64,
    /// Per table: `upsert` (the mode cannot tell inserts from updates).
    pub applied: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub applied_total: u64,
    pub dead_lettered: u64,
    /// Rows read with a version after the source's clock (written; the
    /// watermark stays at the clock, so they are read again next run).
    pub future_rows: u64,
    pub dead_letter_reasons: BTreeMap<String, BTreeMap<String, u64>>,
    /// Now minus the version of the last row written (seconds).
    pub lag_s: f64,
    pub elapsed_s: f64,
    pub changes_per_s: f64,
    pub dead_letter_file: String,
    pub checkpoint_file: String,
}

const VERSION: &str = "GREATEST(COALESCE(send_time, 0), COALESCE(update_time, 0))";

pub async fn run(cfg: Config, opts: WatermarkOptions) -> Result<WatermarkSummary> {
    let started = Instant::now();
    let database = cfg.database().ok_or_else(|| {
        Error::config(
            cfg.path.display().to_string(),
            "source.url names no database",
        )
    })?;
    let tables: Vec<_> = cfg
        .tables
        .iter()
        .filter(|t| t.kind == EntityKind::Message)
        .cloned()
        .collect();
    let skipped: Vec<String> = cfg
        .tables
        .iter()
        .filter(|t| t.kind != EntityKind::Message)
        .map(|t| t.source.clone())
        .collect();
    if tables.is_empty() {
        return Err(Error::Usage(format!(
            "diff --mode watermark: no mapped table of kind message (the only one with a version column); mapped: {}",
            skipped.join(", ")
        )));
    }
    if !skipped.is_empty() {
        tracing::warn!(
            skipped = %skipped.join(","),
            "watermark mode reads only tables with a version column (kind message): the others are skipped; verify finds their changes"
        );
    }
    let pool = crate::source::mysql::connect(&cfg, 2).await?;
    let prepared = crate::sink::prepare(&cfg, &tables, true, true).await?;
    let state = StateDir::new(&opts.state_dir);

    // Fence an earlier attempt, then learn what it committed.
    let source = source_identity(&pool).await?;
    let db = sanitize(&database);
    let mkey = format!("{source}/{db}/watermark/{}", opts.run_id);
    let tx_id = format!("falcon-watermark-{source}-{db}-{}", opts.run_id);
    let (k, id) = (cfg.kafka.clone(), tx_id.clone());
    let producer = blocking(move || make_tx_producer(&k, &id)).await?;
    let (k, prefix) = (cfg.kafka.clone(), mkey.clone());
    let markers: Vec<Checkpoint> = blocking(move || read_markers(&k, &prefix))
        .await?
        .into_iter()
        .filter(|r| r.key == mkey)
        .filter_map(|r| serde_json::from_slice::<Checkpoint>(&r.payload).ok())
        .filter(|c| c.run == opts.run_id && c.database == database)
        .collect();
    let checkpoint_path = state.watermark_checkpoint(&opts.run_id);
    let local: Option<Checkpoint> = read_json(&checkpoint_path)?;
    // Per table, the furthest of the local checkpoint and the committed markers.
    let mut resume: BTreeMap<String, Watermark> = BTreeMap::new();
    let saved_clock = markers
        .iter()
        .chain(local.iter())
        .map(|c| c.clock_ms)
        .max()
        .unwrap_or(0);
    for c in markers.iter().chain(local.iter()) {
        for (t, w) in &c.tables {
            let e = resume.entry(t.clone()).or_insert(*w);
            *e = (*e).max(*w);
        }
    }
    let base = state
        .base_records(&opts.base_run_id)?
        .iter()
        .map(|r| r.start_ts_ms / 1000)
        .min();
    let mut from: BTreeMap<String, Watermark> = BTreeMap::new();
    for t in &tables {
        let w = match (opts.since, resume.get(&t.source), base) {
            (Some(s), r, _) => {
                if let Some(r) = r {
                    if s < r.version_s {
                        tracing::warn!(since = s, checkpoint = r.version_s, table = %t.source, "--since is before the run's checkpoint: rows are written again (harmless for HBase; Kafka gets their events again)");
                    }
                }
                Watermark { version_s: s, id: 0 }
            }
            (None, Some(r), _) => *r,
            (None, None, Some(b)) => Watermark {
                version_s: b,
                id: 0,
            },
            (None, None, None) => {
                return Err(Error::Usage(format!(
                    "diff --mode watermark: no start: no checkpoint of diff run {:?} and no base run {:?} in {}; pass --since UNIX_SECONDS (or --base-run-id)",
                    opts.run_id,
                    opts.base_run_id,
                    opts.state_dir.display()
                )))
            }
        };
        from.insert(t.source.clone(), w);
    }
    let lower: BTreeMap<String, u64> = from
        .iter()
        .map(|(t, w)| (t.clone(), w.version_s.saturating_sub(opts.overlap_s)))
        .collect();
    tracing::info!(run = %opts.run_id, from = ?from, overlap_s = opts.overlap_s, "diff (watermark) started");
    let dead_path = state.watermark_dead(&opts.run_id);
    // Dead letters of rows at or after the window's start are about to be read again.
    dead::prune(&dead_path, |v| {
        let table = v["table"].as_str().unwrap_or("");
        let version = match v["position"].as_str().and_then(Position::parse) {
            Some(Position::Watermark { version_s, .. }) => Some(version_s),
            _ => None,
        };
        match (lower.get(table), version) {
            (Some(f), Some(v)) => v < *f,
            _ => true,
        }
    })?;
    let dead_file = Arc::new(Mutex::new(JsonlAppender::open(&dead_path)?));
    let rooms = Arc::new(Rooms::load(&pool).await?);
    let mut admission = Admission::new(rooms, cfg.kafka.message_max_bytes);
    let mut committer = Committer::new(
        Some((cfg.kafka.clone(), tx_id, Some(producer))),
        Some(HbaseLane::new(&cfg.hbase, prepared.hbase)),
        dead_file,
        opts.retry,
    )
    .named("watermark_page");

    let (interrupted, _) = super::on_interrupt("finishing the page in hand");

    let mut clock = WriteClock::restart(saved_clock, 0, now_ms());
    // The watermark never passes the source's clock at the start (module comment).
    let source_now_s: u64 = sqlx::query_scalar("SELECT CAST(UNIX_TIMESTAMP() AS UNSIGNED)")
        .fetch_one(&pool)
        .await
        .map_err(|e| Error::mysql("read the source's clock", e))?;
    let cap = Watermark {
        version_s: source_now_s,
        id: 0,
    };
    let mut future_rows = 0u64;
    let mut ctx = MapContext {
        salt_buckets: cfg.hbase.salt_buckets,
        epoch_ms: cfg.ids.epoch_ms,
        default_version_ms: 0,
        min_version_ms: 0,
    };
    let spec = mapping::spec(EntityKind::Message);
    let mut committed: BTreeMap<String, Watermark> = from.clone();
    let mut read = 0u64;
    let mut dead_count = 0u64;
    let mut applied: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut last_version_s: Option<u64> = None;
    let mut last_log = Instant::now();
    let origin_run = opts.run_id.clone();
    let family = cfg.hbase.column_family.clone();
    for t in &tables {
        applied.entry(t.source.clone()).or_default();
        let d = Dest {
            topic: &t.topic,
            hbase_table: &t.hbase_table,
            id_map_table: &cfg.hbase.id_map_table,
            family: family.as_bytes(),
        };
        let low = lower[&t.source];
        // Rows at `low` and after; then strictly after the last row of each page.
        let mut cursor: Option<Watermark> = None;
        let sql_first = format!(
            "SELECT {}, {VERSION} AS `_v` FROM `{}` WHERE (update_time >= ? OR send_time >= ?) \
             ORDER BY `_v`, message_id LIMIT ?",
            spec.select_list(),
            t.source
        );
        let sql_next = format!(
            "SELECT {}, {VERSION} AS `_v` FROM `{}` WHERE (update_time >= ? OR send_time >= ?) \
             AND ({VERSION} > ? OR ({VERSION} = ? AND message_id > ?)) \
             ORDER BY `_v`, message_id LIMIT ?",
            spec.select_list(),
            t.source
        );
        loop {
            if interrupted.load(Ordering::SeqCst) {
                break;
            }
            let rows = match cursor {
                None => {
                    sqlx::query(&sql_first)
                        .bind(low)
                        .bind(low)
                        .bind(opts.page as u64)
                        .fetch_all(&pool)
                        .await
                }
                Some(c) => {
                    sqlx::query(&sql_next)
                        .bind(low)
                        .bind(low)
                        .bind(c.version_s)
                        .bind(c.version_s)
                        .bind(c.id)
                        .bind(opts.page as u64)
                        .fetch_all(&pool)
                        .await
                }
            }
            .map_err(|e| Error::mysql(format!("read a page of {}", t.source), e))?;
            if rows.is_empty() {
                break;
            }
            let mut batch = Batch::default();
            let mut page_applied = 0u64;
            let mut page_dead = 0u64;
            let mut end = cursor.unwrap_or(Watermark {
                version_s: 0,
                id: 0,
            });
            for r in &rows {
                let vals = spec
                    .decode(r)
                    .map_err(|e| Error::mysql(format!("decode a row of {}", t.source), e))?;
                let version_s = vals[4]
                    .as_i64()
                    .unwrap_or(0)
                    .max(vals[5].as_i64().unwrap_or(0))
                    .max(0) as u64;
                let id = match &vals[0] {
                    SrcVal::UInt(v) => *v,
                    other => other.as_i64().unwrap_or(0).max(0) as u64,
                };
                end = Watermark { version_s, id };
                // The second in progress is read again next run (the cap),
                // but only a version after it is in the future.
                if version_s > cap.version_s {
                    future_rows += 1;
                }
                ctx.min_version_ms = clock.floor();
                let position = Position::Watermark { version_s, id }.to_string();
                let origin = event::Origin {
                    phase: "diff",
                    run: &origin_run,
                    position: &position,
                };
                let mut ev = Vec::with_capacity(512);
                match admission
                    .admit(EntityKind::Message, &vals, &ctx, Some((&origin, &mut ev)))
                    .await?
                {
                    Err(why) => {
                        let mut line = DeadLetter::new(&t.source, spec, &vals, why);
                        line.position = Some(position.clone());
                        line.op = Some("upsert");
                        batch.dead.push(line.encode()?);
                        page_dead += 1;
                    }
                    Ok(c) => {
                        clock.observe(c.version_ms);
                        // No before image: a NULL column may have held a
                        // value, so every version of it up to the row's goes.
                        batch.event(d.topic, c.partition_key, ev);
                        batch.put_row(&c, &d, &ctx, &all_null(&c));
                        page_applied += 1;
                    }
                }
            }
            let mut next = committed.clone();
            next.insert(t.source.clone(), end.min(cap));
            let marker = Checkpoint {
                run: opts.run_id.clone(),
                database: database.clone(),
                tables: next.clone(),
                clock_ms: clock.last(),
            };
            batch.marker = Some(Marker {
                key: mkey.clone(),
                payload: serde_json::to_vec(&marker).map_err(|e| Error::Other(e.to_string()))?,
            });
            let what = format!(
                "the {} page ending at ({}, {})",
                t.source, end.version_s, end.id
            );
            committer.commit(&what, &mut batch).await.map_err(|e| {
                Error::Other(format!(
                    "diff (watermark): {e} (checkpoint stays at {committed:?})"
                ))
            })?;
            write_json_atomic(&checkpoint_path, &marker)?;
            committed = next;
            cursor = Some(end);
            read += rows.len() as u64;
            dead_count += page_dead;
            crate::metrics::committed_rows(
                "diff",
                &t.source,
                rows.len() as u64,
                &[("kafka", page_applied), ("hbase", page_applied)],
                page_dead,
            );
            *applied
                .entry(t.source.clone())
                .or_default()
                .entry("upsert")
                .or_default() += page_applied;
            last_version_s = Some(end.version_s);
            if last_log.elapsed() >= opts.progress_every {
                last_log = Instant::now();
                let total: u64 = applied.values().flat_map(|m| m.values()).sum();
                tracing::info!(
                    table = %t.source,
                    version_s = end.version_s,
                    id = end.id,
                    applied = total,
                    dead_lettered = dead_count,
                    "diff (watermark) progress"
                );
            }
        }
    }
    if future_rows > 0 {
        tracing::warn!(
            rows = future_rows,
            source_now_s,
            "rows with a version in the future (after the source's clock): written, but the watermark stays at the source's clock, so every run reads them again; fix their send_time/update_time"
        );
    }
    let was_interrupted = interrupted.load(Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    let applied_total: u64 = applied.values().flat_map(|m| m.values()).sum();
    if read != applied_total + dead_count {
        return Err(Error::Other(format!(
            "diff (watermark): read {read} rows != applied {applied_total} + dead-lettered {dead_count}"
        )));
    }
    Ok(WatermarkSummary {
        command: "diff",
        mode: "watermark",
        run_id: opts.run_id,
        from,
        to: committed,
        overlap_s: opts.overlap_s,
        skipped_tables: skipped,
        stopped: if was_interrupted {
            "interrupted"
        } else {
            "caught_up"
        },
        events_read: read,
        kafka_transactions: committer.commits,
        applied,
        applied_total,
        dead_lettered: dead_count,
        future_rows,
        dead_letter_reasons: dead::reasons(&dead_path)?,
        lag_s: last_version_s.map_or(0.0, |v| (now_ms() as f64 / 1000.0 - v as f64).max(0.0)),
        elapsed_s: elapsed,
        changes_per_s: applied_total as f64 / elapsed.max(1e-9),
        dead_letter_file: dead_path.display().to_string(),
        checkpoint_file: checkpoint_path.display().to_string(),
    })
}
