//! What the plan measures: table sizes (`information_schema`), the source's
//! write rate (its binlog), and the throughputs earlier runs recorded (their
//! JSON summaries, the base run's record in Kafka).

use std::path::{Path, PathBuf};

use sqlx::mysql::MySqlPool;
use sqlx::Row;

use super::model::{Measured, TableSize, WriteRate};
use crate::config::{Config, TableMapping};
use crate::error::{Error, Result};
use crate::pipeline::runlog::{RunLog, Scope};
use crate::position::Position;
use crate::source::binlog;

/// Rows, mean row width and data size of each mapped table. `exact` counts
/// the rows (a full scan) instead of taking InnoDB's estimate.
pub async fn table_sizes(
    pool: &MySqlPool,
    database: &str,
    tables: &[TableMapping],
    exact: bool,
) -> Result<Vec<TableSize>> {
    let mut out = Vec::new();
    for m in tables {
        let t = &m.source;
        let row = sqlx::query(
            "SELECT CAST(COALESCE(TABLE_ROWS, 0) AS UNSIGNED), CAST(COALESCE(AVG_ROW_LENGTH, 0) AS UNSIGNED), \
             CAST(COALESCE(DATA_LENGTH, 0) AS UNSIGNED) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
        )
        .bind(database)
        .bind(t)
        .fetch_optional(pool)
        .await
        .map_err(|e| Error::mysql(format!("size of table {t}"), e))?
        .ok_or_else(|| Error::Usage(format!("source table {database}.{t} does not exist")))?;
        let (mut rows, width, bytes): (u64, u64, u64) = (
            row.try_get(0).unwrap_or(0),
            row.try_get(1).unwrap_or(0),
            row.try_get(2).unwrap_or(0),
        );
        if exact {
            rows = sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM `{t}`"))
                .fetch_one(pool)
                .await
                .map_err(|e| Error::mysql(format!("count the rows of {t}"), e))?
                .max(0) as u64;
        }
        out.push(TableSize {
            table: t.clone(),
            rows,
            avg_row_bytes: width,
            data_bytes: bytes,
        });
    }
    Ok(out)
}

/// Bytes of binlog between two positions, from the files' sizes.
fn binlog_bytes(logs: &[(String, u64)], from: &Position, to: &Position) -> u64 {
    let (
        Position::Binlog {
            file: f0,
            offset: o0,
            ..
        },
        Position::Binlog {
            file: f1,
            offset: o1,
            ..
        },
    ) = (from, to)
    else {
        return 0;
    };
    let mut total = 0u64;
    let mut inside = false;
    for (f, size) in logs {
        let start = if f == f0 {
            inside = true;
            *o0
        } else {
            0
        };
        if !inside {
            continue;
        }
        let end = if f == f1 { *o1 } else { *size };
        total += end.saturating_sub(start);
        if f == f1 {
            break;
        }
    }
    total
}

/// Row changes of the mapped tables and binlog bytes per hour, from the
/// newest binlog files holding at least `window_bytes`, read up to the
/// current position. The window runs from its first mapped change to now.
/// Only rows are counted, nothing decoded: a schema change inside the window
/// (which would stop diff) does not stop the count.
pub async fn write_rate(
    cfg: &Config,
    pool: &MySqlPool,
    tables: &[TableMapping],
    window_bytes: u64,
) -> Result<WriteRate> {
    use futures_util::StreamExt;
    use mysql_async::binlog::events::EventData;

    let database = cfg.database().unwrap_or_default();
    let logs = crate::source::binlog::binary_logs(pool).await?;
    let now_pos = crate::source::mysql::binlog_position(pool).await?;
    let mut first = logs.len().saturating_sub(1);
    let mut held = logs.last().map_or(0, |l| l.1);
    while first > 0 && held < window_bytes {
        first -= 1;
        held += logs[first].1;
    }
    let Some((file0, _)) = logs.get(first) else {
        return Err(Error::Usage(
            "the source has no binlog files (log_bin is off)".into(),
        ));
    };
    let start = Position::Binlog {
        file: file0.clone(),
        offset: 4,
        gtid: String::new(),
    };
    let server_id = binlog::server_id(&format!("plan-{}", std::process::id()));
    let mut stream = binlog::open_stream(cfg, server_id, &start).await?;
    let mut file = file0.clone();
    let mut seen_fde = false;
    let mut mapped_ids = std::collections::HashSet::new();
    let (mut changes, mut first_seen) = (0u64, None::<(u32, Position)>);
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next()).await;
        let Ok(Some(ev)) = next else {
            return Err(Error::Binlog {
                context: format!("reading {start} .. {now_pos}"),
                message: "the stream stopped or went silent before the current position".into(),
            });
        };
        let ev = ev.map_err(|e| Error::Binlog {
            context: format!("reading {start} .. {now_pos}"),
            message: e.to_string(),
        })?;
        let h = ev.header();
        let end = u64::from(h.log_pos());
        let here = Position::Binlog {
            file: file.clone(),
            offset: end.saturating_sub(u64::from(h.event_size())),
            gtid: String::new(),
        };
        match ev.read_data().ok().flatten() {
            Some(EventData::FormatDescriptionEvent(_)) => seen_fde = true,
            // The fake rotate sent at connect names the file asked for (see
            // the diff reader): only later rotates move on.
            Some(EventData::RotateEvent(r)) if end > 0 || seen_fde => {
                file = crate::source::binlog::rotate_file_name(&r);
            }
            Some(EventData::TableMapEvent(t)) => {
                let ours = t.database_name() == database.as_str()
                    && tables.iter().any(|m| m.source == t.table_name().as_ref());
                if ours {
                    mapped_ids.insert(t.table_id());
                } else {
                    mapped_ids.remove(&t.table_id());
                }
            }
            Some(EventData::RowsEvent(r)) if mapped_ids.contains(&r.table_id()) => {
                if let Some(tme) = stream.get_tme(r.table_id()) {
                    changes += r.rows(tme).count() as u64;
                    if first_seen.is_none() {
                        first_seen = Some((h.timestamp(), here));
                    }
                }
            }
            _ => {}
        }
        let at = Position::Binlog {
            file: file.clone(),
            offset: end,
            gtid: String::new(),
        };
        if end > 0 && at >= now_pos {
            break;
        }
    }
    let now_s = crate::pipeline::base::now_ms() as f64 / 1000.0;
    let window_s = first_seen
        .as_ref()
        .map_or(0.0, |(t, _)| (now_s - f64::from(*t)).max(1.0));
    let bytes = first_seen
        .as_ref()
        .map_or(0, |(_, p)| binlog_bytes(&logs, p, &now_pos));
    let per_h = |n: u64| {
        if window_s > 0.0 {
            n as f64 * 3600.0 / window_s
        } else {
            0.0
        }
    };
    Ok(WriteRate {
        changes_per_h: per_h(changes),
        bytes_per_h: per_h(bytes),
        changes,
        bytes,
        window_s,
        source: format!("binlog {start} .. {now_pos}"),
    })
}

/// Throughputs found in JSON summaries (`base|diff|verify --json` output),
/// the largest run of each phase.
#[derive(Debug, Default)]
pub struct Recorded {
    pub base: Option<(u64, Measured)>,
    pub diff: Option<(u64, Measured)>,
    pub verify: Option<(u64, Measured)>,
}

impl Recorded {
    fn offer(slot: &mut Option<(u64, Measured)>, size: u64, m: Measured) {
        if size > 0 && m.per_s > 0.0 && slot.as_ref().is_none_or(|(s, _)| size > *s) {
            *slot = Some((size, m));
        }
    }

    /// Takes what a summary says, if it is one.
    pub fn read_summary(&mut self, v: &serde_json::Value, from: &str, widths: &[TableSize]) {
        let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let source = format!("summary {from}");
        match v.get("command").and_then(|c| c.as_str()) {
            Some("base") => {
                let rows = f("rows_read").unwrap_or(0.0);
                let secs = f("copy_s").or_else(|| f("elapsed_s")).unwrap_or(0.0);
                if secs <= 0.0 {
                    return;
                }
                Self::offer(
                    &mut self.base,
                    rows as u64,
                    Measured {
                        per_s: rows / secs,
                        row_bytes: summary_width(v, widths),
                        source,
                    },
                );
            }
            // A --follow run applies what arrives, not what it could: only
            // catch-up runs measure the diff's capacity.
            Some("diff") if v.get("follow").and_then(|b| b.as_bool()) != Some(true) => {
                let n = f("applied_total").unwrap_or(0.0);
                Self::offer(
                    &mut self.diff,
                    n as u64,
                    Measured {
                        per_s: f("changes_per_s").unwrap_or(0.0),
                        row_bytes: None,
                        source,
                    },
                );
            }
            Some("verify") => {
                let n = f("compared").unwrap_or(0.0);
                Self::offer(
                    &mut self.verify,
                    n as u64,
                    Measured {
                        per_s: f("rows_per_s").unwrap_or(0.0),
                        row_bytes: None,
                        source,
                    },
                );
            }
            _ => {}
        }
    }

    /// Every `*.json` file under `dir` (recursively) and each of `files`.
    pub fn scan(&mut self, dir: &Path, files: &[PathBuf], widths: &[TableSize]) -> Result<()> {
        let mut found = Vec::new();
        collect_json(dir, &mut found);
        for p in files {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::io(format!("read summary {}", p.display()), e))?;
            let v: serde_json::Value = serde_json::from_str(text.trim())
                .map_err(|e| Error::Usage(format!("{} is not a JSON summary: {e}", p.display())))?;
            self.read_summary(&v, &p.display().to_string(), widths);
        }
        for p in found {
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim()) {
                self.read_summary(&v, &p.display().to_string(), widths);
            }
        }
        Ok(())
    }

    /// The base runs recorded in Kafka under `runs`: rows over time per shard,
    /// averaged over the shards of a run.
    pub async fn read_run_records(
        &mut self,
        cfg: &Config,
        source_id: &str,
        database: &str,
        runs: &[String],
    ) -> Result<()> {
        for run in runs {
            let scope = Scope {
                source: source_id.to_string(),
                database: crate::pipeline::runlog::sanitize(database),
                run: run.clone(),
            };
            let log = RunLog::read(&cfg.kafka, &scope).await?;
            let mut rates = Vec::new();
            let mut rows = 0u64;
            let mut workers = 0usize;
            for d in &log.dones {
                let Some(s) = log.start_of(d.shard) else {
                    continue;
                };
                let secs = d.finished_ms.saturating_sub(s.start_ts_ms) as f64 / 1000.0;
                if secs > 0.0 && d.rows_read > 0 {
                    rates.push(d.rows_read as f64 / secs);
                    rows += d.rows_read;
                    workers = workers.max(s.max_workers);
                }
            }
            if rates.is_empty() {
                continue;
            }
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            Self::offer(
                &mut self.base,
                rows,
                Measured {
                    per_s: mean,
                    row_bytes: None,
                    source: format!(
                        "kafka run record {run} ({} shard(s) finished, {workers} workers)",
                        rates.len()
                    ),
                },
            );
        }
        Ok(())
    }
}

/// The mean width of the rows a base summary copied, from its per-table
/// counts and the tables' widths.
pub fn summary_width(v: &serde_json::Value, widths: &[TableSize]) -> Option<f64> {
    let per_table: Vec<TableSize> = v
        .get("tables")?
        .as_array()?
        .iter()
        .filter_map(|t| {
            let name = t.get("table")?.as_str()?;
            let rows = t.get("rows_read")?.as_u64()?;
            let w = widths.iter().find(|w| w.table == name)?;
            Some(TableSize { rows, ..w.clone() })
        })
        .collect();
    super::model::mean_width(&per_table)
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_json(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(f: &str, o: u64) -> Position {
        Position::Binlog {
            file: f.into(),
            offset: o,
            gtid: String::new(),
        }
    }

    #[test]
    fn binlog_bytes_span_files() {
        let logs = vec![
            ("b.1".to_string(), 1000),
            ("b.2".to_string(), 500),
            ("b.3".to_string(), 300),
        ];
        assert_eq!(binlog_bytes(&logs, &pos("b.2", 100), &pos("b.2", 400)), 300);
        assert_eq!(
            binlog_bytes(&logs, &pos("b.1", 900), &pos("b.3", 50)),
            100 + 500 + 50
        );
    }

    #[test]
    fn summaries_give_the_largest_run_of_each_phase() {
        let widths = vec![
            TableSize {
                table: "message".into(),
                rows: 0,
                avg_row_bytes: 300,
                data_bytes: 0,
            },
            TableSize {
                table: "room".into(),
                rows: 0,
                avg_row_bytes: 100,
                data_bytes: 0,
            },
        ];
        let mut r = Recorded::default();
        let base = serde_json::json!({"command":"base","rows_read":4000,"elapsed_s":5.0,"copy_s":4.0,
            "tables":[{"table":"message","rows_read":3000},{"table":"room","rows_read":1000}]});
        r.read_summary(&base, "a.json", &widths);
        let small = serde_json::json!({"command":"base","rows_read":10,"elapsed_s":1.0});
        r.read_summary(&small, "b.json", &widths);
        let (rows, m) = r.base.clone().unwrap();
        assert_eq!((rows, m.per_s, m.row_bytes), (4000, 1000.0, Some(250.0)));
        assert_eq!(m.source, "summary a.json");

        let follow = serde_json::json!({"command":"diff","follow":true,"applied_total":100,"changes_per_s":5.0});
        r.read_summary(&follow, "f.json", &widths);
        assert!(r.diff.is_none(), "a --follow run does not measure capacity");
        let until = serde_json::json!({"command":"diff","follow":false,"applied_total":100,"changes_per_s":900.0});
        r.read_summary(&until, "u.json", &widths);
        assert_eq!(r.diff.as_ref().unwrap().1.per_s, 900.0);
        let verify = serde_json::json!({"command":"verify","compared":100,"rows_per_s":7.0});
        r.read_summary(&verify, "v.json", &widths);
        assert_eq!(r.verify.unwrap().1.per_s, 7.0);
    }
}
