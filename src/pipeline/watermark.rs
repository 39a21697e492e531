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

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::base::{blocking, load_rooms, now_ms, room_exists};
use super::diff::{abort, columns_delete, dead_reasons, write_batch, DeadLetter, Planned};
use crate::checkpoint::{read_jsonl, write_json_atomic, JsonlAppender, RunRecord};
use crate::config::{Config, EntityKind};
use crate::error::{Error, Result};
use crate::mapping::{self, MapContext, Reject, Rejection, SrcVal};
use crate::sink::hbase::cells;
use crate::sink::kafka::event;
use crate::sink::kafka::tx::{make_tx_producer, read_markers};

const MAX_ATTEMPTS: u32 = 5;

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
    pub dead_letter_reasons: BTreeMap<String, BTreeMap<String, u64>>,
    /// Now minus the version of the last row written (seconds).
    pub lag_s: f64,
    pub elapsed_s: f64,
    pub changes_per_s: f64,
    pub dead_letter_file: String,
    pub checkpoint_file: String,
}

fn marker_key(database: &str, run: &str) -> String {
    format!("watermark/{database}/{run}")
}

fn checkpoint_err(p: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: p.display().to_string(),
        message: e.to_string(),
    }
}

/// The smallest `start_ts_ms` over the base run's shard records, in seconds.
fn base_start_s(state_dir: &Path, run: &str) -> Result<Option<u64>> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("base").join(run)) else {
        return Ok(None);
    };
    let mut best: Option<u64> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("shard-") && name.ends_with(".json")) {
            continue;
        }
        let p = e.path();
        let text = std::fs::read_to_string(&p).map_err(|e| checkpoint_err(&p, e))?;
        let r: RunRecord = serde_json::from_str(&text).map_err(|e| checkpoint_err(&p, e))?;
        let s = r.start_ts_ms / 1000;
        best = Some(best.map_or(s, |b| b.min(s)));
    }
    Ok(best)
}

/// Dead letters of rows at or after `from` are about to be read again.
fn prune_dead(p: &Path, from: &BTreeMap<String, u64>) -> Result<()> {
    if !p.exists() {
        return Ok(());
    }
    let keep: Vec<serde_json::Value> = read_jsonl::<serde_json::Value>(p)?
        .into_iter()
        .filter(|v| {
            let table = v["table"].as_str().unwrap_or("");
            let version = v["position"]
                .as_str()
                .and_then(|s| s.strip_prefix("watermark:"))
                .and_then(|s| s.split(':').next())
                .and_then(|s| s.parse::<u64>().ok());
            match (from.get(table), version) {
                (Some(f), Some(v)) => v < *f,
                _ => true,
            }
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
    std::fs::rename(&tmp, p).map_err(|e| checkpoint_err(p, e))
}

const VERSION: &str = "GREATEST(COALESCE(send_time, 0), COALESCE(update_time, 0))";

pub async fn run(cfg: Config, opts: WatermarkOptions) -> Result<WatermarkSummary> {
    let started = Instant::now();
    if opts.page == 0 {
        return Err(Error::Usage("--max-batch must be at least 1".into()));
    }
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

    // Target set-up, as diff does.
    let prepared = crate::sink::prepare(&cfg, &tables, true, true).await?;
    let hbase = prepared
        .hbase
        .ok_or_else(|| Error::Other("HBase not prepared".into()))?;

    // Fence an earlier attempt, then learn what it committed.
    let tx_id = format!(
        "falcon-diff-watermark-{}-{database}-{}",
        cfg.kafka.progress_topic, opts.run_id
    );
    let k = cfg.kafka.clone();
    let producer = Arc::new(blocking(move || make_tx_producer(&k, &tx_id)).await?);
    let mkey = marker_key(&database, &opts.run_id);
    let (k, mk) = (cfg.kafka.clone(), mkey.clone());
    let markers: Vec<Checkpoint> = blocking(move || read_markers(&k, &mk))
        .await?
        .into_iter()
        .filter_map(|p| serde_json::from_slice::<Checkpoint>(&p).ok())
        .filter(|c| c.run == opts.run_id && c.database == database)
        .collect();
    let run_dir = opts.state_dir.join("diff").join(&opts.run_id);
    let checkpoint_path = run_dir.join("watermark.json");
    let local: Option<Checkpoint> = match std::fs::read_to_string(&checkpoint_path) {
        Ok(t) => Some(serde_json::from_str(&t).map_err(|e| checkpoint_err(&checkpoint_path, e))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(checkpoint_err(&checkpoint_path, e)),
    };
    // Per table, the furthest of the local checkpoint and the committed markers.
    let mut resume: BTreeMap<String, Watermark> = BTreeMap::new();
    for c in markers.iter().chain(local.iter()) {
        for (t, w) in &c.tables {
            let e = resume.entry(t.clone()).or_insert(*w);
            *e = (*e).max(*w);
        }
    }
    let base = base_start_s(&opts.state_dir, &opts.base_run_id)?;
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
    let dead_path = run_dir.join("watermark-dead.jsonl");
    prune_dead(&dead_path, &lower)?;
    let mut dead_file = JsonlAppender::open(&dead_path)?;
    let rooms = load_rooms(&pool).await?;
    let mut room_cache: HashSet<u64> = HashSet::new();

    let (interrupted, _) = super::on_interrupt("finishing the page in hand");

    let family = cfg.hbase.column_family.as_bytes().to_vec();
    let ctx = MapContext {
        salt_buckets: cfg.hbase.salt_buckets,
        epoch_ms: cfg.ids.epoch_ms,
        default_version_ms: 0,
    };
    let spec = mapping::spec(EntityKind::Message);
    let mut hbase = Some(hbase);
    let mut committed: BTreeMap<String, Watermark> = from.clone();
    let mut read = 0u64;
    let mut kafka_txs = 0u64;
    let mut dead_count = 0u64;
    let mut applied: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut last_version_s: Option<u64> = None;
    let mut last_log = Instant::now();
    let origin_run = opts.run_id.clone();
    let max_event = cfg.kafka.message_max_bytes;
    for t in &tables {
        applied.entry(t.source.clone()).or_default();
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
            let mut plan = Planned::default();
            let mut page_applied = 0u64;
            let mut page_dead: Vec<&'static str> = Vec::new();
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
                let position = format!("watermark:{version_s}:{id}");
                let origin = event::Origin {
                    phase: "diff",
                    run: &origin_run,
                    position: &position,
                };
                let mut outcome = mapping::canonical(EntityKind::Message, &vals, &ctx);
                if let (Ok(_), Some(room)) =
                    (&outcome, mapping::required_room(EntityKind::Message, &vals))
                {
                    if !room_exists(rooms.as_deref(), &pool, &mut room_cache, room).await? {
                        outcome = Err(Rejection {
                            reason: Reject::OrphanRoom,
                            detail: format!("room {room} does not exist"),
                        });
                    }
                }
                let mut ev = Vec::with_capacity(512);
                if let Ok(c) = &outcome {
                    event::encode(c, &origin, &mut ev);
                    if ev.len() > max_event {
                        outcome = Err(Rejection {
                            reason: Reject::OversizedEvent,
                            detail: format!(
                                "event of {} bytes exceeds kafka.message_max_bytes {max_event}",
                                ev.len()
                            ),
                        });
                    }
                }
                let c = match outcome {
                    Ok(c) => c,
                    Err(rej) => {
                        let line = DeadLetter {
                            table: &t.source,
                            position: &position,
                            op: "upsert",
                            key: spec.key_of(&vals),
                            reason: rej.reason.as_str(),
                            detail: rej.detail,
                            values: spec
                                .columns
                                .iter()
                                .map(|c| c.name)
                                .zip(vals.iter().cloned())
                                .collect(),
                        };
                        plan.dead.push(
                            serde_json::to_vec(&line).map_err(|e| Error::Other(e.to_string()))?,
                        );
                        page_dead.push("upsert");
                        continue;
                    }
                };
                // No before image: a NULL column may have held a value, so
                // every version of it up to the row's version goes.
                let nulled: Vec<&str> = c
                    .cells
                    .iter()
                    .filter(|x| x.value.is_none())
                    .map(|x| x.name)
                    .collect();
                if !nulled.is_empty() {
                    plan.deletes
                        .entry(t.hbase_table.clone())
                        .or_default()
                        .push(columns_delete(&c.row_key, &family, &nulled, c.version_ms));
                }
                plan.records
                    .push((t.topic.clone(), c.partition_key.to_string(), ev));
                plan.puts
                    .entry(t.hbase_table.clone())
                    .or_default()
                    .push(cells::put(&c, &family));
                if let Some((legacy, new_id, room)) = c.id_pair {
                    plan.puts
                        .entry(cfg.hbase.id_map_table.clone())
                        .or_default()
                        .extend(cells::id_map_puts(
                            legacy,
                            new_id,
                            room,
                            ctx.salt_buckets,
                            ctx.epoch_ms,
                            &family,
                        ));
                }
                page_applied += 1;
            }
            if !plan.dead.is_empty() {
                for d in &plan.dead {
                    dead_file.append_raw(d)?;
                }
                dead_file.sync()?;
            }
            let mut next = committed.clone();
            next.insert(t.source.clone(), end);
            let marker = Checkpoint {
                run: opts.run_id.clone(),
                database: database.clone(),
                tables: next.clone(),
            };
            let payload = serde_json::to_vec(&marker).map_err(|e| Error::Other(e.to_string()))?;
            let what = format!(
                "the {} page ending at ({}, {})",
                t.source, end.version_s, end.id
            );
            let mut attempt = 0;
            loop {
                attempt += 1;
                match write_batch(&producer, &mut hbase, &cfg, &plan, &mkey, &payload, &what).await
                {
                    Ok(()) => break,
                    Err(e) => {
                        abort(&producer).await;
                        hbase = None;
                        if e.is_transient() && attempt < MAX_ATTEMPTS {
                            let wait = Duration::from_millis(500 * (1 << attempt));
                            tracing::warn!(attempt, "retrying {what} in {wait:?}: {e}");
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        return Err(Error::Other(format!(
                            "diff (watermark): {what}: {e} (checkpoint stays at {:?})",
                            committed
                        )));
                    }
                }
            }
            kafka_txs += 1;
            write_json_atomic(&checkpoint_path, &marker)?;
            committed = next;
            cursor = Some(end);
            read += rows.len() as u64;
            dead_count += page_dead.len() as u64;
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
        kafka_transactions: kafka_txs,
        applied,
        applied_total,
        dead_lettered: dead_count,
        dead_letter_reasons: dead_reasons(&dead_path)?,
        lag_s: last_version_s.map_or(0.0, |v| (now_ms() as f64 / 1000.0 - v as f64).max(0.0)),
        elapsed_s: elapsed,
        changes_per_s: applied_total as f64 / elapsed.max(1e-9),
        dead_letter_file: dead_path.display().to_string(),
        checkpoint_file: checkpoint_path.display().to_string(),
    })
}
