//! `plan`: how long the night takes, before it starts.
//!
//! - [`measure`]: table sizes and widths (`information_schema`), the
//!   source's write rate (read from its binlog with diff's own reader), and
//!   the throughputs earlier runs recorded (JSON summaries under the state
//!   dir or given with `--summary`, base runs recorded in Kafka);
//! - [`calibrate`]: a short measured copy into scratch topics and tables;
//! - [`model`]: the formulas, pure.
//!
//! A figure that was not measured is said to be missing (with how to
//! measure it), never guessed.

pub mod calibrate;
pub mod measure;
pub mod model;

use std::path::PathBuf;

use serde::Serialize;

use self::model::{Forecast, Inputs, Measured, Scaling, TableSize, WriteRate};
use crate::config::Config;
use crate::error::Result;
use crate::pipeline::base::{BaseSummary, Targets};

#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub state_dir: PathBuf,
    pub summaries: Vec<PathBuf>,
    /// Base runs whose record in Kafka gives a throughput.
    pub run_ids: Vec<String>,
    pub calibrate_rows: Option<u64>,
    pub workers: usize,
    pub targets: Targets,
    pub exact_counts: bool,
    pub binlog_window_bytes: u64,
    pub ceiling: Option<f64>,
    pub byte_share: f64,
    /// Seconds a shard spends before copying; default: the calibration's.
    pub startup_s: Option<f64>,
    pub days: f64,
    pub window_s: f64,
    pub max_shards: u32,
}

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub command: &'static str,
    pub database: String,
    pub window_s: f64,
    pub days: f64,
    pub tables: Vec<TableSize>,
    pub writes: Option<WriteRate>,
    pub base_rate: Option<Measured>,
    pub diff_rate: Option<Measured>,
    pub verify_rate: Option<Measured>,
    pub ceiling: Option<f64>,
    /// Shards measured side by side (the calibration's second copy).
    pub scaling: Option<Scaling>,
    pub startup_s: f64,
    #[serde(flatten)]
    pub forecast: Forecast,
    /// The calibration copy's summary, when `--calibrate` ran one.
    pub calibration: Option<BaseSummary>,
}

pub async fn run(cfg: Config, opts: PlanOptions) -> Result<PlanReport> {
    let tables = cfg.select_tables(None)?;
    let database = cfg.database().unwrap_or_default();
    let pool = crate::source::mysql::connect(&cfg, 2).await?;
    let sizes = measure::table_sizes(&pool, &database, &tables, opts.exact_counts).await?;

    let writes = match measure::write_rate(&cfg, &pool, &tables, opts.binlog_window_bytes).await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("cannot measure the binlog write rate: {e:#}");
            None
        }
    };

    let mut recorded = measure::Recorded::default();
    recorded.scan(&opts.state_dir, &opts.summaries, &sizes)?;
    if opts.targets.kafka && !opts.run_ids.is_empty() {
        let source_id = crate::pipeline::runlog::source_identity(&pool).await?;
        if let Err(e) = recorded
            .read_run_records(&cfg, &source_id, &database, &opts.run_ids)
            .await
        {
            tracing::warn!("cannot read the base runs recorded in Kafka: {e:#}");
        }
    }
    pool.close().await;

    let mut calibration: Option<BaseSummary> = None;
    let mut scaling = None;
    let base_rate = match opts.calibrate_rows {
        Some(n) => {
            let c = calibrate::calibrate(
                &cfg,
                n,
                opts.workers,
                opts.targets,
                &sizes,
                &opts.state_dir,
                opts.max_shards > 1,
            )
            .await?;
            calibration = Some(c.summary);
            scaling = c.scaling;
            Some(c.measured)
        }
        None => recorded.base.map(|(_, m)| m),
    };
    let startup_s = opts.startup_s.unwrap_or_else(|| {
        calibration
            .as_ref()
            .map_or(0.0, |c| (c.elapsed_s - c.copy_s).max(0.0))
    });
    let diff_rate = recorded.diff.map(|(_, m)| m);
    let verify_rate = recorded.verify.map(|(_, m)| m);
    let forecast = model::forecast(&Inputs {
        tables: sizes.clone(),
        base: base_rate.clone(),
        ceiling: opts.ceiling,
        scaling: scaling.clone(),
        startup_s,
        byte_share: opts.byte_share,
        diff: diff_rate.clone(),
        verify: verify_rate.clone(),
        writes: writes.clone(),
        days: opts.days,
        window_s: opts.window_s,
        max_shards: opts.max_shards,
    });
    Ok(PlanReport {
        command: "plan",
        database,
        window_s: opts.window_s,
        days: opts.days,
        tables: sizes,
        writes,
        base_rate,
        diff_rate,
        verify_rate,
        ceiling: opts.ceiling,
        scaling,
        startup_s,
        forecast,
        calibration,
    })
}
