//! `falcon-migrate`: base, diff, verify, check.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::checkpoint::Shard;
use crate::config::{Config, ENV_CONFIG};
use crate::error::{exit, Error, Result};
use crate::pipeline::base::{self, BaseOptions, BaseOutcome, Targets};
use crate::pipeline::diff::{self, DiffOptions};
use crate::pipeline::watermark::{self, WatermarkOptions};
use crate::position::Position;
use crate::verify::VerifyOptions;

#[derive(Debug, Parser)]
#[command(
    name = "falcon-migrate",
    version,
    about = "Moves the legacy chat database (MySQL) into Kafka and HBase",
    long_about = "Moves the legacy chat database (MySQL) into Kafka (events) and HBase (read model).\n\n\
        Phases: `base` copies everything up to a recorded binlog position, `diff` applies the changes \
        made since, `verify` compares checksums of the source and both targets.\n\n\
        Exit status: 0 ok, 1 differences found (verify), 2 usage/config error or unreachable server, \
        3 rows dead-lettered, 4 failure during the run, 130 interrupted."
)]
pub struct Cli {
    /// Log level for stderr (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, global = true, default_value = "info", env = "FALCON_LOG")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parallel bulk copy of the mapped tables into Kafka and HBase (resumable, shardable).
    Base(BaseArgs),
    /// Applies the inserts, updates and deletes made since the base (from the binlog).
    Diff(DiffArgs),
    /// Compares checksums of the source against Kafka and HBase, down to the row.
    Verify(VerifyArgs),
    /// Validates the config and checks that MySQL, Kafka and HBase answer.
    Check(CommonArgs),
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// The job's TOML config (connections and table mapping).
    #[arg(long, short = 'c', env = ENV_CONFIG)]
    pub config: PathBuf,
    /// Folder for checkpoints, dead-letter files and run records.
    #[arg(long, env = "FALCON_STATE_DIR", default_value = "falcon-state")]
    pub state_dir: PathBuf,
    /// Print the final summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    Kafka,
    Hbase,
    All,
}

#[derive(Debug, Clone, Args)]
pub struct BaseArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Parallel copy workers (each with its own MySQL, Kafka and HBase connection).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Width of a chunk in values of the leading primary-key column (equals rows for dense keys).
    #[arg(long, default_value_t = 20_000)]
    pub chunk_rows: u64,
    /// Which targets to write.
    #[arg(long, value_enum, default_value = "all")]
    pub target: TargetArg,
    /// Continue the run recorded in --state-dir, copying only unfinished chunks.
    #[arg(long)]
    pub resume: bool,
    /// This process's share of the chunks, i/N (e.g. one per pod of an Indexed Job).
    #[arg(long, default_value = "0/1", value_parser = Shard::parse)]
    pub shard: Shard,
    /// Name of the run: shards of one copy share it; checkpoints and Kafka transactions are keyed by it.
    #[arg(long, default_value = "base")]
    pub run_id: String,
    /// Copy only these mapped tables (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// Global row budget per second (protects a production source).
    #[arg(long)]
    pub max_rows_per_sec: Option<u64>,
    /// Pause while the source's Threads_running is above this.
    #[arg(long)]
    pub max_threads_running: Option<u64>,
    /// Print the chunk plan and an estimate; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds between progress log lines when stderr is not a terminal.
    #[arg(long, default_value_t = 10)]
    pub progress_interval: u64,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Which targets to compare with the source.
    #[arg(long, value_enum, default_value = "all")]
    pub target: TargetArg,
    /// Compare only these mapped tables (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// Compare this percentage of the rows, chosen by key hash (the same rows every run).
    #[arg(long, default_value_t = 100.0)]
    pub sample: f64,
    /// Parallel readers per side (MySQL ranges, HBase scans, Kafka partitions).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Write one CSV line per differing row to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// At most this many lines in --report.
    #[arg(long, default_value_t = 10_000)]
    pub max_report_rows: usize,
    /// Rewrite the differing rows from the source (delete extras), then re-check them.
    #[arg(long)]
    pub repair: bool,
    /// Seconds to wait before re-reading rows found different (a change in flight is no difference).
    #[arg(long, default_value_t = 2.0)]
    pub recheck_delay: f64,
    /// Buckets per table (default: one per ~256 estimated rows, at least 64).
    #[arg(long)]
    pub buckets: Option<u32>,
    /// Kafka events per partition folded in memory; larger partitions are folded through spill files.
    #[arg(long, default_value_t = 2_000_000)]
    pub kafka_memory_rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffMode {
    /// Replay the binlog (row events) from a position.
    Binlog,
    /// Keyset on (update time, primary key) with an overlap window, for sources without a reachable binlog (message tables only; see the README for its blind spots).
    Watermark,
}

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Where changes come from.
    #[arg(long, value_enum, default_value = "binlog")]
    pub mode: DiffMode,
    /// Catch up to the source's position at start, then stop (the default).
    #[arg(long, conflicts_with = "follow")]
    pub until_now: bool,
    /// Keep streaming until Ctrl-C, reporting lag.
    #[arg(long)]
    pub follow: bool,
    /// Start at this binlog position (FILE:POS) instead of the run's checkpoint or the base's start.
    #[arg(long, value_parser = parse_position)]
    pub from: Option<Position>,
    /// Name of the diff run: its checkpoint and Kafka transactional id are keyed by it.
    #[arg(long, default_value = "diff")]
    pub run_id: String,
    /// The base run whose recorded start position a first diff starts from.
    #[arg(long, default_value = "base")]
    pub base_run_id: String,
    /// Most row changes per Kafka transaction (whole source transactions; a larger one goes alone).
    #[arg(long, default_value_t = 5000)]
    pub max_batch: usize,
    /// Seconds between progress log lines.
    #[arg(long, default_value_t = 10)]
    pub progress_interval: u64,
    /// Watermark mode: start at this Unix time (seconds) instead of the run's checkpoint or the base's start.
    #[arg(long)]
    pub since: Option<u64>,
    /// Watermark mode: re-read this many seconds before the watermark (rows committed late, clock skew).
    #[arg(long, default_value_t = 300)]
    pub overlap: u64,
}

fn parse_position(s: &str) -> std::result::Result<Position, String> {
    Position::parse(s)
        .ok_or_else(|| format!("expected FILE:POS (e.g. mariadb-bin.000012:4), got {s:?}"))
}

pub fn main() -> i32 {
    super::execute(
        |cli: &Cli| cli.log_level.clone(),
        |cli| dispatch(cli.command),
    )
}

async fn dispatch(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Check(args) => check(&args).await,
        Command::Base(args) => base(args).await,
        Command::Diff(args) => diff(args).await,
        Command::Verify(args) => verify(args).await,
    }
}

#[derive(Serialize)]
struct CheckReport {
    command: &'static str,
    config: String,
    mysql: String,
    binlog_position: String,
    kafka_brokers: usize,
    hbase_thrift: String,
    tables: Vec<String>,
}

async fn check(args: &CommonArgs) -> Result<i32> {
    let cfg = Config::load(&args.config)?;
    crate::source::preflight::check(&cfg).await?;
    let pos = crate::source::mysql::check(&cfg).await?;
    let kafka = cfg.kafka.clone();
    let brokers = tokio::task::spawn_blocking(move || crate::sink::kafka::check(&kafka))
        .await
        .map_err(|e| Error::Other(e.to_string()))??;
    let hb = cfg.hbase.clone();
    tokio::task::spawn_blocking(move || {
        crate::sink::hbase::HbaseClient::connect(&hb.thrift, hb.framed).map(|_| ())
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))??;
    let report = CheckReport {
        command: "check",
        config: args.config.display().to_string(),
        mysql: cfg.source_endpoint(),
        binlog_position: pos.to_string(),
        kafka_brokers: brokers,
        hbase_thrift: cfg.hbase.thrift.clone(),
        tables: cfg.tables.iter().map(|t| t.source.clone()).collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!(
            "ok: MySQL {} (binlog at {}), Kafka {} ({} broker(s)), HBase Thrift2 {}; {} table(s) mapped",
            report.mysql, report.binlog_position, cfg.kafka.brokers, brokers, report.hbase_thrift, report.tables.len()
        );
    }
    Ok(exit::OK)
}

fn valid_run_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

async fn base(args: BaseArgs) -> Result<i32> {
    if !valid_run_id(&args.run_id) {
        return Err(Error::Usage(format!(
            "--run-id {:?}: use letters, digits, '-', '_' or '.' (at most 64)",
            args.run_id
        )));
    }
    let cfg = Config::load(&args.common.config)?;
    let opts = BaseOptions {
        state_dir: args.common.state_dir.clone(),
        run_id: args.run_id.clone(),
        workers: args.workers,
        chunk_rows: args.chunk_rows,
        targets: Targets {
            kafka: args.target != TargetArg::Hbase,
            hbase: args.target != TargetArg::Kafka,
        },
        resume: args.resume,
        shard: args.shard,
        max_rows_per_sec: args.max_rows_per_sec,
        max_threads_running: args.max_threads_running,
        dry_run: args.dry_run,
        tables: args.tables.clone(),
        progress_every: std::time::Duration::from_secs(args.progress_interval.max(1)),
    };
    match base::run(cfg, opts).await? {
        BaseOutcome::Planned(plan) => {
            if args.common.json {
                println!("{}", serde_json::to_string(&plan).unwrap_or_default());
            } else {
                println!(
                    "dry run: run {} shard {}, {} workers, chunks of {} key values",
                    plan.run_id, plan.shard, plan.workers, plan.chunk_rows
                );
                for t in &plan.tables {
                    println!(
                        "  {:<14} key {:<20} range {}..{}  ~{} rows  {} chunks ({} for this shard, {} done)",
                        t.table,
                        t.key,
                        t.min_key.map_or("-".into(), |v| v.to_string()),
                        t.max_key.map_or("-".into(), |v| v.to_string()),
                        t.estimated_rows,
                        t.chunks,
                        t.chunks_this_shard,
                        t.chunks_done
                    );
                }
                match plan.estimated_s {
                    Some(s) => println!(
                        "  ~{} rows for this shard, ~{:.0}s at --max-rows-per-sec",
                        plan.estimated_rows, s
                    ),
                    None => println!("  ~{} rows for this shard", plan.estimated_rows),
                }
                println!("nothing was written");
            }
            Ok(exit::OK)
        }
        BaseOutcome::Done(s) => {
            let mut words = format!(
                "base run {} shard {}{}: {} rows in {:.1}s ({:.0} rows/s) from {}\n",
                s.run_id,
                s.shard,
                if s.resumed { " (resumed)" } else { "" },
                s.rows_read,
                s.elapsed_s,
                s.rows_per_s,
                s.start_position
            );
            for t in &s.tables {
                words.push_str(&format!(
                    "  {:<14} read {:>10}  kafka {:>10}  hbase {:>10}  dead-lettered {:>6}  chunks {}/{}\n",
                    t.table, t.rows_read, t.written.kafka, t.written.hbase, t.dead_lettered, t.chunks_done, t.chunks
                ));
            }
            if s.dead_lettered > 0 {
                words.push_str(&format!(
                    "{} rows dead-lettered: {}\n",
                    s.dead_lettered, s.dead_letter_file
                ));
            }
            emit(args.common.json, &words, &s);
            Ok(if s.dead_lettered > 0 {
                exit::DEAD_LETTERED
            } else {
                exit::OK
            })
        }
    }
}

async fn verify(args: VerifyArgs) -> Result<i32> {
    if !(args.recheck_delay >= 0.0 && args.recheck_delay <= 3600.0) {
        return Err(Error::Usage(format!(
            "--recheck-delay must be 0..=3600 seconds, got {}",
            args.recheck_delay
        )));
    }
    let cfg = Config::load(&args.common.config)?;
    let opts = VerifyOptions {
        hbase: args.target != TargetArg::Kafka,
        kafka: args.target != TargetArg::Hbase,
        tables: args.tables.clone(),
        sample_pct: args.sample,
        workers: args.workers,
        report: args.report.clone(),
        max_report_rows: args.max_report_rows,
        repair: args.repair,
        recheck_delay: std::time::Duration::from_secs_f64(args.recheck_delay),
        buckets: args.buckets,
        kafka_memory_rows: args.kafka_memory_rows,
        spill_dir: args.common.state_dir.join("verify-spill"),
    };
    std::fs::create_dir_all(&opts.spill_dir)
        .map_err(|e| Error::io(format!("create {}", opts.spill_dir.display()), e))?;
    let s = crate::verify::run(cfg, opts).await?;
    let mut words = format!(
        "verify: {} rows compared in {:.1}s ({:.0} rows/s; source side {:.0} rows/s), {} skipped as base dead-letters them\n",
        s.compared, s.elapsed_s, s.rows_per_s, s.source_rows_per_s, s.skipped
    );
    for (name, t) in &s.targets {
        words.push_str(&format!(
            "  {name:<6} {:>10} rows  buckets {}/{} mismatched  missing {}  extra {}  different {}\n",
            t.target_rows, t.mismatched_buckets, t.buckets, t.missing, t.extra, t.different
        ));
    }
    if s.cleared_by_recheck > 0 {
        words.push_str(&format!(
            "  {} row(s) changed in flight and matched on re-check\n",
            s.cleared_by_recheck
        ));
    }
    if let Some(r) = &s.repair {
        words.push_str(&format!(
            "  repaired: {} HBase row(s), {} Kafka event(s) appended; {} still differing\n",
            r.hbase_rows, r.kafka_events, r.remaining
        ));
    }
    if let Some(p) = &s.report {
        words.push_str(&format!("  report: {p} ({} line(s))\n", s.report_rows));
    }
    words.push_str(if s.identical {
        "identical\n"
    } else {
        "differences found\n"
    });
    emit(args.common.json, &words, &s);
    let fixed = s.repair.as_ref().is_some_and(|r| r.remaining == 0);
    Ok(if s.identical || fixed {
        exit::OK
    } else {
        exit::DIFFERENCES
    })
}

async fn diff(args: DiffArgs) -> Result<i32> {
    for (flag, id) in [
        ("--run-id", &args.run_id),
        ("--base-run-id", &args.base_run_id),
    ] {
        if !valid_run_id(id) {
            return Err(Error::Usage(format!(
                "{flag} {id:?}: use letters, digits, '-', '_' or '.' (at most 64)"
            )));
        }
    }
    if args.mode == DiffMode::Watermark {
        return diff_watermark(args).await;
    }
    if args.since.is_some() {
        return Err(Error::Usage(
            "--since is for --mode watermark; the binlog mode starts --from FILE:POS".into(),
        ));
    }
    let cfg = Config::load(&args.common.config)?;
    let opts = DiffOptions {
        state_dir: args.common.state_dir.clone(),
        run_id: args.run_id.clone(),
        base_run_id: args.base_run_id.clone(),
        from: args.from.clone(),
        follow: args.follow,
        max_batch: args.max_batch,
        progress_every: std::time::Duration::from_secs(args.progress_interval.max(1)),
    };
    let s = diff::run(cfg, opts).await?;
    let mut words = format!(
        "diff run {} from {} to {}{}: {} changes read, {} applied in {} transactions ({:.1}s, {:.0} changes/s), lag {:.1}s (p50 {:.1}s, p99 {:.1}s; apply latency p50 {:.0} ms, p99 {:.0} ms)\n",
        s.run_id,
        s.from,
        s.to,
        if s.stopped == "interrupted" { " (interrupted)" } else { "" },
        s.events_read,
        s.applied_total,
        s.transactions,
        s.elapsed_s,
        s.changes_per_s,
        s.lag_s,
        s.lag_p50_s,
        s.lag_p99_s,
        s.apply_latency_p50_ms,
        s.apply_latency_p99_ms,
    );
    for (t, kinds) in &s.applied {
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        words.push_str(&format!(
            "  {:<14} {}\n",
            t,
            if list.is_empty() {
                "-".to_string()
            } else {
                list.join(", ")
            }
        ));
    }
    if s.dead_lettered > 0 {
        words.push_str(&format!(
            "{} changes dead-lettered: {}\n",
            s.dead_lettered, s.dead_letter_file
        ));
    }
    emit(args.common.json, &words, &s);
    Ok(if s.stopped == "interrupted" && !s.follow {
        exit::INTERRUPTED
    } else if s.dead_lettered > 0 {
        exit::DEAD_LETTERED
    } else {
        exit::OK
    })
}

async fn diff_watermark(args: DiffArgs) -> Result<i32> {
    if args.follow {
        return Err(Error::Usage(
            "diff --mode watermark has no --follow: run it repeatedly (each run re-reads --overlap seconds before its watermark)".into(),
        ));
    }
    if args.from.is_some() {
        return Err(Error::Usage(
            "--from FILE:POS is a binlog position: with --mode watermark use --since UNIX_SECONDS"
                .into(),
        ));
    }
    let cfg = Config::load(&args.common.config)?;
    let opts = WatermarkOptions {
        state_dir: args.common.state_dir.clone(),
        run_id: args.run_id.clone(),
        base_run_id: args.base_run_id.clone(),
        since: args.since,
        overlap_s: args.overlap,
        page: args.max_batch,
        progress_every: std::time::Duration::from_secs(args.progress_interval.max(1)),
    };
    let s = watermark::run(cfg, opts).await?;
    let fmt = |m: &std::collections::BTreeMap<String, watermark::Watermark>| {
        m.iter()
            .map(|(t, w)| format!("{t}@({}, {})", w.version_s, w.id))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut words = format!(
        "diff (watermark, overlap {}s) run {} from {} to {}{}: {} rows read, {} applied in {} transactions ({:.1}s, {:.0} rows/s), lag {:.1}s\n",
        s.overlap_s,
        s.run_id,
        fmt(&s.from),
        fmt(&s.to),
        if s.stopped == "interrupted" { " (interrupted)" } else { "" },
        s.events_read,
        s.applied_total,
        s.kafka_transactions,
        s.elapsed_s,
        s.changes_per_s,
        s.lag_s,
    );
    if !s.skipped_tables.is_empty() {
        words.push_str(&format!(
            "  skipped (no version column): {}\n",
            s.skipped_tables.join(", ")
        ));
    }
    if s.dead_lettered > 0 {
        words.push_str(&format!(
            "{} rows dead-lettered: {}\n",
            s.dead_lettered, s.dead_letter_file
        ));
    }
    emit(args.common.json, &words, &s);
    Ok(if s.stopped == "interrupted" {
        exit::INTERRUPTED
    } else if s.dead_lettered > 0 {
        exit::DEAD_LETTERED
    } else {
        exit::OK
    })
}

/// The summary in words on stdout, or with `--json` the words on stderr and one
/// JSON object on stdout.
fn emit(json: bool, words: &str, summary: &impl Serialize) {
    if json {
        eprint!("{words}");
        println!("{}", serde_json::to_string(summary).unwrap_or_default());
    } else {
        print!("{words}");
    }
}
