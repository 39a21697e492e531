//! `plan --calibrate N`: copies about N rows of the real source with `base`
//! itself into scratch topics and tables (every name suffixed with a
//! calibration tag, a scratch progress topic and run id, a scratch state
//! dir), measures the rows per second of the copy; then, unless the plan
//! asks about one shard only, copies about N rows per shard again with two
//! shards side by side (as two pods would: one run id, shards 0/2 and 1/2) to
//! measure how shards scale on these servers; and deletes the scratch
//! topics and tables again.

use std::path::Path;
use std::time::Duration;

use super::model::{Measured, Scaling, TableSize};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::base::{self, BaseOptions, BaseOutcome, BaseSummary, Targets};
use crate::pipeline::commit::RetryPolicy;

/// The config with every Kafka topic and HBase table renamed for `tag`.
pub fn scratch_config(cfg: &Config, tag: &str) -> Config {
    let mut c = cfg.clone();
    c.kafka.progress_topic = format!("{}.{tag}", cfg.kafka.progress_topic);
    c.hbase.id_map_table = format!("{}_{tag}", cfg.hbase.id_map_table);
    for t in &mut c.tables {
        t.topic = format!("{}.{tag}", t.topic);
        t.hbase_table = format!("{}_{tag}", t.hbase_table);
    }
    c
}

pub struct Calibration {
    pub measured: Measured,
    pub summary: BaseSummary,
    /// Two shards side by side, when asked for.
    pub scaling: Option<Scaling>,
}

pub async fn calibrate(
    cfg: &Config,
    rows: u64,
    workers: usize,
    targets: Targets,
    widths: &[TableSize],
    state_root: &Path,
    measure_scaling: bool,
) -> Result<Calibration> {
    let one = copy(cfg, rows, workers, targets, state_root, 1).await?;
    let summary = one.into_iter().next().expect("one shard");
    let v = serde_json::to_value(&summary).unwrap_or_default();
    let per_s = summary.rows_read as f64 / summary.copy_s.max(1e-3);
    let scaling = if measure_scaling {
        let two = copy(cfg, rows, workers, targets, state_root, 2).await?;
        let read: u64 = two.iter().map(|s| s.rows_read).sum();
        // The shards start together; the slower one ends the copy.
        let wall = two.iter().map(|s| s.copy_s).fold(1e-3, f64::max);
        let speedup = read as f64 / wall / per_s;
        Scaling::measured(
            2,
            speedup,
            format!(
                "calibration: 2 shards side by side copied {read} rows in {wall:.1}s, {speedup:.2}× one"
            ),
        )
    } else {
        None
    };
    Ok(Calibration {
        measured: Measured {
            per_s,
            row_bytes: super::measure::summary_width(&v, widths),
            source: format!(
                "calibration: {} rows in {:.1}s with {workers} workers",
                summary.rows_read, summary.copy_s
            ),
        },
        summary,
        scaling,
    })
}

/// About `rows` rows copied by `shards` shards side by side into scratch
/// topics and tables, which are dropped again; each shard's summary.
async fn copy(
    cfg: &Config,
    rows: u64,
    workers: usize,
    targets: Targets,
    state_root: &Path,
    shards: u32,
) -> Result<Vec<BaseSummary>> {
    let tag = format!("calib{}", base::now_ms());
    let scratch = scratch_config(cfg, &tag);
    let state_dir = state_root.join("calibrate").join(&tag);
    // Each shard copies about `rows`: the side-by-side copy lasts about as
    // long as the single one did, long enough to measure.
    let per_shard = rows;
    // One task per shard, as separate pods would run them.
    let runs: Vec<_> = (0..shards)
        .map(|index| {
            let opts = shard_options(
                &state_dir.join(format!("shard-{index}")),
                &tag,
                per_shard,
                workers,
                targets,
                crate::checkpoint::Shard {
                    index,
                    count: shards,
                },
            );
            tokio::spawn(base::run(scratch.clone(), opts))
        })
        .collect();
    tracing::info!(
        rows,
        workers,
        shards,
        tag,
        "calibration copy into scratch topics and tables"
    );
    let mut outcomes = Vec::new();
    for run in runs {
        outcomes.push(
            run.await
                .map_err(|e| Error::Other(format!("calibration shard failed: {e}")))?,
        );
    }
    let cleanup = drop_scratch(&scratch, targets).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut out = Vec::new();
    for outcome in outcomes {
        let BaseOutcome::Done(summary) = outcome? else {
            return Err(Error::Other("calibration copy planned nothing".into()));
        };
        out.push(*summary);
    }
    cleanup?;
    Ok(out)
}

fn shard_options(
    state_dir: &Path,
    tag: &str,
    rows: u64,
    workers: usize,
    targets: Targets,
    shard: crate::checkpoint::Shard,
) -> BaseOptions {
    BaseOptions {
        state_dir: state_dir.to_path_buf(),
        run_id: tag.to_string(),
        workers,
        // Small enough that the workers stop near `rows`, not a chunk each past it.
        chunk_rows: (rows / (4 * workers as u64)).clamp(1_000, 20_000),
        targets,
        resume: false,
        shard,
        max_rows_per_sec: None,
        max_threads_running: None,
        dry_run: false,
        tables: None,
        progress_every: Duration::from_secs(10),
        retry: RetryPolicy::default(),
        stop_after_rows: Some(rows),
        hbase_load: base::HbaseLoad::Put,
    }
}

async fn drop_scratch(scratch: &Config, targets: Targets) -> Result<()> {
    if targets.kafka {
        let mut topics: Vec<&str> = scratch.tables.iter().map(|t| t.topic.as_str()).collect();
        topics.push(&scratch.kafka.progress_topic);
        crate::sink::kafka::delete_topics(&scratch.kafka, &topics).await?;
    }
    if targets.hbase {
        let hb = scratch.hbase.clone();
        let mut names: Vec<String> = scratch
            .tables
            .iter()
            .map(|t| t.hbase_table.clone())
            .collect();
        names.push(hb.id_map_table.clone());
        crate::pipeline::commit::blocking(move || {
            let mut c = crate::sink::hbase::HbaseClient::connect(&hb)?;
            for n in &names {
                c.drop_table(n)?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_touch_no_real_topic_or_table() {
        let text = "[source]\nurl = \"mysql://u@h:3306/db\"\n[kafka]\nbrokers = \"k:9092\"\n\
                    [hbase]\nthrift = \"h:9090\"\n[[table]]\nsource = \"message\"\nkind = \"message\"\n\
                    topic = \"chat.message\"\nhbase_table = \"ns:chat_message\"\n";
        let cfg = Config::parse(text, Path::new("f.toml"), |_| None).unwrap();
        let s = scratch_config(&cfg, "calib1");
        assert_eq!(s.tables[0].topic, "chat.message.calib1");
        assert_eq!(s.tables[0].hbase_table, "ns:chat_message_calib1");
        assert_eq!(
            s.kafka.progress_topic,
            format!("{}.calib1", cfg.kafka.progress_topic)
        );
        assert_eq!(
            s.hbase.id_map_table,
            format!("{}_calib1", cfg.hbase.id_map_table)
        );
        assert_eq!(s.source.url, cfg.source.url);
    }
}
