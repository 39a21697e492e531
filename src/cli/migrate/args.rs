//! The command line of `falcon-migrate`, parsed and checked once: every value
//! that reaches `dispatch` is in range, and no flag of one diff mode rides
//! along with the other. A refused value is a usage error (exit 2) naming its
//! flag.

use std::fmt::Display;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::checkpoint::Shard;
use crate::config::ENV_CONFIG;
use crate::position::Position;

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
    #[command(after_help = "\
Examples:
  falcon-migrate base -c falcon.toml --workers 4
  falcon-migrate base -c falcon.toml --shard 2/8                      # the third of 8 machines
  falcon-migrate base -c falcon.toml --shards 8   # a pod of an 8-pod Indexed Job (index: JOB_COMPLETION_INDEX)
  falcon-migrate base -c falcon.toml --resume                         # after a crash or Ctrl-C
  falcon-migrate base -c falcon.toml --metrics-addr 0.0.0.0:9464      # Prometheus scrapes /metrics")]
    Base(BaseArgs),
    /// Applies the inserts, updates and deletes made since the base (from the binlog).
    #[command(after_help = "\
Examples:
  falcon-migrate diff -c falcon.toml --until-now
  falcon-migrate diff -c falcon.toml --follow --json --metrics-addr 0.0.0.0:9464
  falcon-migrate diff -c falcon.toml --mode watermark --since 1767225600 --overlap 600")]
    Diff(DiffArgs),
    /// Compares checksums of the source against Kafka and HBase, down to the row.
    #[command(after_help = "\
Examples:
  falcon-migrate verify -c falcon.toml --sample 1
  falcon-migrate verify -c falcon.toml --report diffs.csv --repair
  falcon-migrate verify -c falcon.toml --target hbase --tables message --json
  falcon-migrate verify -c falcon.toml --metrics-addr 127.0.0.1:9464 --metrics-linger 30")]
    Verify(VerifyArgs),
    /// Predicts the night: base time per shard count, diff catch-up, verify, the shards that fit the window.
    #[command(after_help = "\
Examples:
  falcon-migrate plan -c falcon.toml --window 7h
  falcon-migrate plan -c falcon.toml --calibrate 200000 --workers 4 --json
  falcon-migrate plan -c falcon.toml --summary base.json --summary diff.json --ceiling 120000 --days 3")]
    Plan(PlanArgs),
    /// Shows a migration's state from its record in Kafka alone (any machine, no state dir needed).
    #[command(after_help = "\
Examples:
  falcon-migrate status -c falcon.toml
  falcon-migrate status -c falcon.toml --watch          # refresh every 5 s until Ctrl-C
  falcon-migrate status -c falcon.toml --json --run-id base-2026-11 --diff-run-id diff")]
    Status(StatusArgs),
    /// Validates the config and checks that MySQL, Kafka and HBase answer.
    #[command(after_help = "\
Examples:
  falcon-migrate check -c falcon.toml
  FALCON_CONFIG=falcon.toml falcon-migrate check --json")]
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

/// Prometheus metrics of a running phase.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (text format 0.0.4) at http://HOST:PORT/metrics while the phase runs, e.g. 0.0.0.0:9464.
    #[arg(long, value_name = "HOST:PORT", env = "FALCON_METRICS_ADDR", value_parser = socket_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds (0 to 3600) /metrics stays up after the phase ends, so that the last scrape sees the final counts.
    #[arg(long, default_value_t = 0, value_parser = whole_number(0u64, Some(3600)), requires = "metrics_addr")]
    pub metrics_linger: u64,
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
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Parallel copy workers (each with its own MySQL, Kafka and HBase connection), 1 to 256.
    #[arg(long, default_value_t = 4, value_parser = whole_number(1usize, Some(256)))]
    pub workers: usize,
    /// Width of a chunk in values of the leading primary-key column (equals rows for dense keys).
    #[arg(long, default_value_t = 20_000, value_parser = whole_number(1u64, None))]
    pub chunk_rows: u64,
    /// Which targets to write.
    #[arg(long, value_enum, default_value = "all")]
    pub target: TargetArg,
    /// Continue the run recorded in --state-dir, copying only unfinished chunks.
    #[arg(long)]
    pub resume: bool,
    /// This process's share of the chunks, i/N (one per machine or pod) [default: 0/1].
    #[arg(long, value_parser = Shard::parse, conflicts_with = "shards")]
    pub shard: Option<Shard>,
    /// The shard count N, this process's index coming from --shard-index or JOB_COMPLETION_INDEX (a pod of a Kubernetes Indexed Job).
    #[arg(long, value_name = "N", value_parser = whole_number(1u32, None))]
    pub shards: Option<u32>,
    /// This process's shard index, 0 to N-1, with --shards (Kubernetes sets JOB_COMPLETION_INDEX in each pod of an Indexed Job).
    #[arg(long, value_name = "I", env = "JOB_COMPLETION_INDEX", value_parser = whole_number(0u32, None))]
    pub shard_index: Option<u32>,
    /// Name of the run: shards of one copy share it; checkpoints and Kafka transactions are keyed by it.
    #[arg(long, default_value = "base", value_parser = run_id)]
    pub run_id: String,
    /// Copy only these mapped tables (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// Global row budget per second (protects a production source).
    #[arg(long, value_parser = whole_number(1u64, None))]
    pub max_rows_per_sec: Option<u64>,
    /// Pause while the source's Threads_running is above this.
    #[arg(long)]
    pub max_threads_running: Option<u64>,
    /// Print the chunk plan and an estimate; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds between progress log lines when stderr is not a terminal.
    #[arg(long, default_value_t = 10, value_parser = whole_number(1u64, None))]
    pub progress_interval: u64,
    /// Seconds a unit of work (a chunk, a batch) is retried, with backoff, while a server is down or restarting; then the phase stops (exit 4) keeping everything acknowledged.
    #[arg(long, default_value_t = 300, value_parser = whole_number(1u64, None))]
    pub retry_budget: u64,
    /// How HBase's cells get there: `put` (through the Thrift gateway, with each chunk) or `bulk` (sorted runs in the state dir with each chunk, then HFiles loaded by HBase's bulk-load tool at the end). A run keeps the mode it began with.
    #[arg(long, value_enum, default_value = "put")]
    pub hbase_load: HbaseLoadArg,
    /// With `--hbase-load bulk`: the command that loads the HFiles, started with the copy and given a `DIR TABLE` line on its stdin (a file:// URL and a table) as each table's HFiles are written, stdin closed after the last; a `loaded TABLE` line on its stdout records that table (a table it does not report is not loaded). `scripts/hbase/bulk-load-tables` loads them in one JVM with HBase's bulk-load tool.
    #[arg(
        long,
        env = "FALCON_BULK_LOAD_COMMAND",
        default_value = "bulk-load-tables"
    )]
    pub bulk_load_command: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HbaseLoadArg {
    Put,
    Bulk,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Which targets to compare with the source.
    #[arg(long, value_enum, default_value = "all")]
    pub target: TargetArg,
    /// Compare only these mapped tables (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// Compare this percentage of the rows (more than 0, at most 100), chosen by key hash (the same rows every run).
    #[arg(long, default_value_t = 100.0, value_parser = sample_pct)]
    pub sample: f64,
    /// Parallel readers per side (MySQL ranges, HBase scans, Kafka partitions), 1 to 256.
    #[arg(long, default_value_t = 4, value_parser = whole_number(1usize, Some(256)))]
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
    /// Seconds (0 to 3600) to wait before re-reading rows found different (a change in flight is no difference).
    #[arg(long, default_value_t = 2.0, value_parser = recheck_delay)]
    pub recheck_delay: f64,
    /// Buckets per table (default: one per ~256 estimated rows, at least 64).
    #[arg(long)]
    pub buckets: Option<u32>,
    /// Kafka events per partition folded in memory; larger partitions are folded through spill files.
    #[arg(long, default_value_t = 2_000_000)]
    pub kafka_memory_rows: u64,
    /// Seconds each read (and the repair's commit) is retried, with backoff, while a server is down or restarting; then verify stops (exit 4).
    #[arg(long, default_value_t = 300, value_parser = whole_number(1u64, None))]
    pub retry_budget: u64,
    /// Source rows one round of the drill-down holds with their target rows (about 1 KiB each): more differing rows take more rounds, not more memory.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub drill_rows: u64,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The maintenance window the night must fit, e.g. 7h, 90m, 5400s.
    #[arg(long, default_value = "7h", value_parser = duration_s)]
    pub window: f64,
    /// Days of source changes the diff catch-up is predicted for (more than 0).
    #[arg(long, default_value_t = 1.0, value_parser = positive("days"))]
    pub days: f64,
    /// Measure base by copying about this many rows into scratch topics and tables (deleted afterwards), at least 1000.
    #[arg(long, value_name = "ROWS", value_parser = whole_number(1000u64, None))]
    pub calibrate: Option<u64>,
    /// Workers of the calibration copy (the base runs it predicts use the same), 1 to 256.
    #[arg(long, default_value_t = 4, value_parser = whole_number(1usize, Some(256)))]
    pub workers: usize,
    /// Targets of the base runs predicted (and of the calibration copy).
    #[arg(long, value_enum, default_value = "all")]
    pub target: TargetArg,
    /// A JSON summary of an earlier base, diff --until-now or verify run (repeatable); *.json files under --state-dir are read too.
    #[arg(long, value_name = "FILE")]
    pub summary: Vec<PathBuf>,
    /// Base runs whose record in Kafka gives a throughput (comma-separated).
    #[arg(long, default_value = "base", value_delimiter = ',', value_parser = run_id)]
    pub run_id: Vec<String>,
    /// Most rows/s the shared Kafka and HBase absorb, whatever the shard count (the slowest link; without it shards scale linearly).
    #[arg(long, value_name = "ROWS_PER_S", value_parser = positive("rows per second"))]
    pub ceiling: Option<f64>,
    /// Share of a row's copy cost that grows with its width, 0 to 1: wider tables than the measured rows then cost more.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub byte_share: f64,
    /// Seconds a shard spends before it copies (snapshot, plan, topics, tables) [default: the calibration's, else 0].
    #[arg(long, value_parser = non_negative)]
    pub startup: Option<f64>,
    /// Largest shard count shown (1, 2, 4, … up to it), 1 to 4096.
    #[arg(long, default_value_t = 64, value_parser = whole_number(1u32, Some(4096)))]
    pub max_shards: u32,
    /// Count the rows (a full scan of each table) instead of taking the server's estimate.
    #[arg(long)]
    pub exact_counts: bool,
    /// MiB of the newest binlog read to measure the write rate (at least 1).
    #[arg(long, default_value_t = 256, value_parser = whole_number(1u64, None))]
    pub binlog_window_mb: u64,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The base run to show.
    #[arg(long, default_value = "base", value_parser = run_id)]
    pub run_id: String,
    /// The diff run to show.
    #[arg(long, default_value = "diff", value_parser = run_id)]
    pub diff_run_id: String,
    /// The source server's identity as recorded (MySQL's server UUID; MariaDB's host-port-server_id), when runs of the same database on several servers share the progress topic.
    #[arg(long)]
    pub source_id: Option<String>,
    /// Show it again every SECS seconds (1 to 3600; 5 when no value is given) until Ctrl-C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "5", value_parser = whole_number(1u64, Some(3600)))]
    pub watch: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffMode {
    /// Replay the binlog (row events) from a position.
    Binlog,
    /// Keyset on (update time, primary key) with an overlap window, for sources without a reachable binlog (message tables only; see the README for its blind spots).
    Watermark,
}

/// `--overlap` when `--mode watermark` is given without it.
pub const DEFAULT_OVERLAP_S: u64 = 300;

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Where changes come from.
    #[arg(long, value_enum, default_value = "binlog")]
    pub mode: DiffMode,
    /// Catch up to the source's position at start, then stop (the default).
    #[arg(long, conflicts_with = "follow")]
    pub until_now: bool,
    /// Binlog mode: keep streaming until Ctrl-C, reporting lag.
    #[arg(long)]
    pub follow: bool,
    /// Binlog mode: start at this binlog position (FILE:POS) instead of the run's checkpoint or the base's start.
    #[arg(long, value_parser = parse_position)]
    pub from: Option<Position>,
    /// Name of the diff run: its checkpoint and Kafka transactional id are keyed by it.
    #[arg(long, default_value = "diff", value_parser = run_id)]
    pub run_id: String,
    /// The base run whose recorded start position a first diff starts from.
    #[arg(long, default_value = "base", value_parser = run_id)]
    pub base_run_id: String,
    /// Most row changes per Kafka transaction (whole source transactions; a larger one goes alone).
    #[arg(long, default_value_t = 5000, value_parser = whole_number(1usize, None))]
    pub max_batch: usize,
    /// Seconds between progress log lines.
    #[arg(long, default_value_t = 10, value_parser = whole_number(1u64, None))]
    pub progress_interval: u64,
    /// Seconds a unit of work (a chunk, a batch) is retried, with backoff, while a server is down or restarting; then the phase stops (exit 4) keeping everything acknowledged.
    #[arg(long, default_value_t = 300, value_parser = whole_number(1u64, None))]
    pub retry_budget: u64,
    /// Watermark mode: start at this Unix time (seconds) instead of the run's checkpoint or the base's start.
    #[arg(long)]
    pub since: Option<u64>,
    /// Watermark mode: re-read this many seconds before the watermark (rows committed late, clock skew) [default: 300].
    #[arg(long)]
    pub overlap: Option<u64>,
}

impl BaseArgs {
    /// This process's shard: `--shard i/N`, or `--shards N` with the index
    /// from `--shard-index`/`JOB_COMPLETION_INDEX` (ignored without `--shards`).
    pub fn shard(&self) -> Result<Shard, String> {
        match (self.shard, self.shards, self.shard_index) {
            (Some(s), _, _) => Ok(s),
            (None, None, _) => Ok(Shard::ALL),
            (None, Some(n), None) => Err(format!(
                "--shards {n} needs this process's index: --shard-index I or JOB_COMPLETION_INDEX (set in each pod of an Indexed Job)"
            )),
            (None, Some(n), Some(i)) => Shard::parse(&format!("{i}/{n}")).map_err(|_| {
                format!("--shard-index (or JOB_COMPLETION_INDEX) {i} is not below --shards {n}")
            }),
        }
    }
}

impl DiffArgs {
    /// The first flag given that the chosen mode has no use for, with what to do instead.
    fn mode_conflict(&self) -> Option<&'static str> {
        match self.mode {
            DiffMode::Binlog if self.since.is_some() => Some(
                "--since is for --mode watermark; the binlog mode starts at --from FILE:POS",
            ),
            DiffMode::Binlog if self.overlap.is_some() => {
                Some("--overlap is for --mode watermark; the binlog mode has no overlap window")
            }
            DiffMode::Watermark if self.from.is_some() => Some(
                "--from FILE:POS is a binlog position: with --mode watermark use --since UNIX_SECONDS",
            ),
            DiffMode::Watermark if self.follow => Some(
                "--mode watermark has no --follow: run it repeatedly (each run re-reads --overlap seconds before its watermark)",
            ),
            _ => None,
        }
    }
}

impl crate::cli::Checked for Cli {
    fn check(&self) -> Result<(), clap::Error> {
        let (sub, msg) = match &self.command {
            Command::Diff(args) => match args.mode_conflict() {
                Some(msg) => ("diff", msg.to_string()),
                None => return Ok(()),
            },
            Command::Base(args) => match args.shard() {
                Err(msg) => ("base", msg),
                Ok(_) => return Ok(()),
            },
            _ => return Ok(()),
        };
        // Built so the usage line in the error reads `falcon-migrate <sub> ...`.
        let mut cmd = Cli::command();
        cmd.build();
        let found = cmd
            .find_subcommand_mut(sub)
            .expect("a subcommand of the CLI");
        Err(found.error(ErrorKind::ArgumentConflict, msg))
    }
}

/// `HOST:PORT`, resolved once (a host name to its first address).
fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    let bad = || format!("expected HOST:PORT (e.g. 0.0.0.0:9464), got {s:?}");
    s.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

fn parse_position(s: &str) -> Result<Position, String> {
    Position::parse(s)
        .ok_or_else(|| format!("expected FILE:POS (e.g. mariadb-bin.000012:4), got {s:?}"))
}

/// Run ids name folders under `--state-dir` and Kafka transactional ids:
/// a leading '.' would make a hidden folder, or `.`/`..` another run's.
fn run_id(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err("use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'".into())
    }
}

/// A whole number at least `min` and, if given, at most `max`.
fn whole_number<T>(
    min: T,
    max: Option<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    move |s| {
        let v: T = s
            .parse()
            .map_err(|_| format!("expected a whole number, got {s:?}"))?;
        match max {
            Some(max) if v < min || v > max => Err(format!("must be {min} to {max}")),
            None if v < min => Err(format!("must be at least {min}")),
            _ => Ok(v),
        }
    }
}

/// A duration as `falcon-fixtures churn --duration` takes it (`7h`, `90m`,
/// `45s`, plain seconds), in seconds; more than 0.
fn duration_s(s: &str) -> Result<f64, String> {
    match crate::cli::fixtures::parse_duration(s).map(|d| d.as_secs_f64()) {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err("must be more than 0".into()),
        Err(e) => Err(format!("{e}: expected e.g. 7h, 90m or 5400s")),
    }
}

/// A number more than 0 (NaN and infinity refused).
fn positive(what: &'static str) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync {
    move |s| match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected {what}, more than 0, got {s:?}")),
    }
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a share from 0 to 1, got {s:?}")),
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected seconds, at least 0, got {s:?}")),
    }
}

fn sample_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("expected a percentage, got {s:?}"))?;
    // Written so NaN fails too.
    if v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err("must be more than 0 and at most 100".into())
    }
}

/// At most an hour: longer is a typo, and a delay must fit a `Duration`.
fn recheck_delay(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("expected seconds, got {s:?}"))?;
    if (0.0..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be 0 to 3600 seconds".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Checked;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let cli =
            Cli::try_parse_from(std::iter::once("falcon-migrate").chain(args.iter().copied()))?;
        cli.check()?;
        Ok(cli)
    }

    /// The error text of a refused command line, which must be a usage error.
    fn refused(args: &[&str]) -> String {
        let e = parse(args).expect_err(&format!("{args:?} should be refused"));
        assert!(e.use_stderr(), "{args:?}: a usage error, exit 2");
        e.to_string()
    }

    #[test]
    fn documented_invocations_parse_with_their_defaults() {
        let Command::Base(b) = parse(&["base", "-c", "f.toml"]).unwrap().command else {
            panic!("base")
        };
        assert_eq!(
            (b.workers, b.chunk_rows, b.progress_interval),
            (4, 20_000, 10)
        );
        assert_eq!(
            (b.run_id.as_str(), b.shard().unwrap().to_string()),
            ("base", "0/1".into())
        );
        assert_eq!(b.max_rows_per_sec, None);

        let Command::Base(b) = parse(&[
            "base",
            "-c",
            "f.toml",
            "--workers",
            "256",
            "--chunk-rows",
            "1",
            "--shard",
            "2/8",
            "--run-id",
            "base-2026.11_a",
            "--resume",
            "--max-rows-per-sec",
            "1",
            "--progress-interval",
            "1",
            "--target",
            "hbase",
            "--tables",
            "message,room",
        ])
        .unwrap()
        .command
        else {
            panic!("base")
        };
        assert_eq!(
            (b.workers, b.chunk_rows, b.max_rows_per_sec),
            (256, 1, Some(1))
        );
        assert_eq!(b.run_id, "base-2026.11_a");
        assert_eq!(b.tables, Some(vec!["message".into(), "room".into()]));

        let Command::Diff(d) = parse(&["diff", "-c", "f.toml", "--until-now"])
            .unwrap()
            .command
        else {
            panic!("diff")
        };
        assert_eq!(d.mode, DiffMode::Binlog);
        assert_eq!(
            (d.run_id.as_str(), d.base_run_id.as_str()),
            ("diff", "base")
        );
        assert_eq!((d.max_batch, d.overlap), (5000, None));

        let Command::Diff(d) = parse(&[
            "diff",
            "-c",
            "f.toml",
            "--follow",
            "--from",
            "mariadb-bin.000012:4",
            "--max-batch",
            "1",
        ])
        .unwrap()
        .command
        else {
            panic!("diff")
        };
        assert!(d.follow);
        assert_eq!(d.from.unwrap().to_string(), "mariadb-bin.000012:4");

        let Command::Diff(d) = parse(&[
            "diff",
            "-c",
            "f.toml",
            "--mode",
            "watermark",
            "--until-now",
            "--since",
            "1767225600",
            "--overlap",
            "0",
        ])
        .unwrap()
        .command
        else {
            panic!("diff")
        };
        assert_eq!(
            (d.mode, d.since, d.overlap),
            (DiffMode::Watermark, Some(1_767_225_600), Some(0))
        );

        let Command::Verify(v) = parse(&[
            "verify",
            "-c",
            "f.toml",
            "--sample",
            "0.5",
            "--recheck-delay",
            "0",
            "--report",
            "diffs.csv",
            "--repair",
        ])
        .unwrap()
        .command
        else {
            panic!("verify")
        };
        assert_eq!((v.sample, v.recheck_delay, v.workers), (0.5, 0.0, 4));
        let Command::Verify(v) = parse(&["verify", "-c", "f.toml", "--sample", "100"])
            .unwrap()
            .command
        else {
            panic!("verify")
        };
        assert_eq!((v.sample, v.recheck_delay), (100.0, 2.0));

        assert!(matches!(
            parse(&["check", "-c", "f.toml"]).unwrap().command,
            Command::Check(_)
        ));
    }

    #[test]
    fn out_of_range_values_are_refused_naming_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["base", "--workers", "0"], "--workers"),
            (&["base", "--workers", "257"], "--workers"),
            (&["base", "--workers=-1"], "--workers"),
            (&["verify", "--workers", "0"], "--workers"),
            (&["base", "--chunk-rows", "0"], "--chunk-rows"),
            (&["base", "--max-rows-per-sec", "0"], "--max-rows-per-sec"),
            (&["base", "--progress-interval", "0"], "--progress-interval"),
            (&["diff", "--progress-interval", "0"], "--progress-interval"),
            (&["diff", "--max-batch", "0"], "--max-batch"),
            (&["base", "--shard", "3/3"], "--shard"),
            (&["verify", "--sample", "0"], "--sample"),
            (&["verify", "--sample", "100.5"], "--sample"),
            (&["verify", "--sample", "NaN"], "--sample"),
            (&["verify", "--sample", "half"], "--sample"),
            (&["verify", "--recheck-delay=-1"], "--recheck-delay"),
            (&["verify", "--recheck-delay", "inf"], "--recheck-delay"),
            (&["base", "--metrics-addr", "9464"], "--metrics-addr"),
            (&["diff", "--metrics-addr", "localhost"], "--metrics-addr"),
            (
                &["verify", "--metrics-addr", "0.0.0.0:99999"],
                "--metrics-addr",
            ),
            (
                &[
                    "base",
                    "--metrics-addr",
                    "127.0.0.1:9464",
                    "--metrics-linger",
                    "3601",
                ],
                "--metrics-linger",
            ),
            (&["base", "--metrics-linger", "5"], "--metrics-addr"),
            (&["status", "--watch", "0"], "--watch"),
            (&["status", "--run-id", "a/b"], "--run-id"),
        ];
        for (args, flag) in cases {
            let mut full = vec![args[0], "-c", "f.toml"];
            full.extend_from_slice(&args[1..]);
            let msg = refused(&full);
            assert!(msg.contains(flag), "{full:?}: {msg}");
        }
    }

    #[test]
    fn a_pods_shard_comes_from_its_completion_index() {
        let shard = |args: &[&str]| {
            let mut full = vec!["base", "-c", "f.toml"];
            full.extend_from_slice(args);
            let Command::Base(b) = parse(&full).unwrap().command else {
                panic!("base")
            };
            b.shard().unwrap().to_string()
        };
        for i in 0..4 {
            let idx = i.to_string();
            assert_eq!(
                shard(&["--shards", "4", "--shard-index", &idx]),
                format!("{i}/4")
            );
        }
        assert_eq!(shard(&["--shard", "1/3"]), "1/3");
        // An index without --shards is ignored (a pod running a one-shard copy).
        assert_eq!(shard(&["--shard-index", "5"]), "0/1");
        let msg = refused(&[
            "base",
            "-c",
            "f.toml",
            "--shards",
            "4",
            "--shard-index",
            "4",
        ]);
        assert!(msg.contains("not below --shards 4"), "{msg}");
        assert!(msg.contains("falcon-migrate base"), "{msg}");
        assert!(refused(&[
            "base",
            "-c",
            "f.toml",
            "--shards",
            "0",
            "--shard-index",
            "0"
        ])
        .contains("--shards"));
        assert!(
            refused(&["base", "-c", "f.toml", "--shard", "0/2", "--shards", "2"])
                .contains("--shard")
        );
    }

    #[test]
    fn plan_takes_durations_and_refuses_nonsense() {
        let Command::Plan(p) = parse(&["plan", "-c", "f.toml"]).unwrap().command else {
            panic!("plan")
        };
        assert_eq!(
            (p.window, p.days, p.workers, p.max_shards),
            (25_200.0, 1.0, 4, 64)
        );
        assert_eq!(p.run_id, vec!["base".to_string()]);
        for (text, secs) in [
            ("7h", 25_200.0),
            ("90m", 5_400.0),
            ("45s", 45.0),
            ("600", 600.0),
            ("0.5h", 1_800.0),
        ] {
            assert_eq!(duration_s(text), Ok(secs), "{text}");
        }
        let cases: &[(&[&str], &str)] = &[
            (&["--window", "0h"], "--window"),
            (&["--window", "7d"], "--window"),
            (&["--window", "h"], "--window"),
            (&["--window", "1h30m"], "--window"),
            (&["--days", "0"], "--days"),
            (&["--days", "NaN"], "--days"),
            (&["--calibrate", "10"], "--calibrate"),
            (&["--ceiling=-5"], "--ceiling"),
            (&["--ceiling", "0"], "--ceiling"),
            (&["--startup=-1"], "--startup"),
            (&["--byte-share", "1.5"], "--byte-share"),
            (&["--max-shards", "0"], "--max-shards"),
            (&["--workers", "0"], "--workers"),
        ];
        for (rest, flag) in cases {
            let mut full = vec!["plan", "-c", "f.toml"];
            full.extend_from_slice(rest);
            let msg = refused(&full);
            assert!(msg.contains(flag), "{full:?}: {msg}");
        }
    }

    #[test]
    fn status_watches_every_five_seconds_unless_told() {
        let watch = |args: &[&str]| {
            let mut full = vec!["status", "-c", "f.toml"];
            full.extend_from_slice(args);
            match parse(&full).unwrap().command {
                Command::Status(s) => s.watch,
                _ => panic!("status"),
            }
        };
        assert_eq!(watch(&[]), None);
        assert_eq!(watch(&["--watch"]), Some(5));
        assert_eq!(watch(&["--watch", "30"]), Some(30));
        assert_eq!(watch(&["--watch", "--json"]), Some(5));
    }

    #[test]
    fn metrics_flags_parse_on_every_phase() {
        let Command::Base(b) = parse(&["base", "-c", "f.toml"]).unwrap().command else {
            panic!("base")
        };
        assert_eq!(
            (b.metrics.metrics_addr, b.metrics.metrics_linger),
            (None, 0)
        );
        for sub in ["base", "diff", "verify"] {
            let cli = parse(&[
                sub,
                "-c",
                "f.toml",
                "--metrics-addr",
                "127.0.0.1:19464",
                "--metrics-linger",
                "30",
            ])
            .unwrap();
            let m = match cli.command {
                Command::Base(a) => a.metrics,
                Command::Diff(a) => a.metrics,
                Command::Verify(a) => a.metrics,
                _ => panic!("{sub}"),
            };
            assert_eq!(m.metrics_addr, Some("127.0.0.1:19464".parse().unwrap()));
            assert_eq!(m.metrics_linger, 30);
        }
    }

    #[test]
    fn run_ids_are_short_plain_names() {
        for id in ["base", "b-1", "run_2026.11.28", "B", &"x".repeat(64)] {
            assert!(
                parse(&["base", "-c", "f.toml", "--run-id", id]).is_ok(),
                "{id}"
            );
        }
        let long = "x".repeat(65);
        for id in ["", ".", "..", ".hidden", "a/b", "a b", "ü", long.as_str()] {
            let msg = refused(&["base", "-c", "f.toml", "--run-id", id]);
            assert!(msg.contains("--run-id"), "{id:?}: {msg}");
            let msg = refused(&["diff", "-c", "f.toml", "--base-run-id", id]);
            assert!(msg.contains("--base-run-id"), "{id:?}: {msg}");
            let msg = refused(&["diff", "-c", "f.toml", "--run-id", id]);
            assert!(msg.contains("--run-id"), "{id:?}: {msg}");
        }
    }

    #[test]
    fn flags_of_the_other_diff_mode_are_refused() {
        let diff = ["diff", "-c", "f.toml"];
        let cases: &[(&[&str], &str)] = &[
            (&["--since", "1767225600"], "--since"),
            (&["--mode", "binlog", "--since", "1767225600"], "--since"),
            (&["--overlap", "60"], "--overlap"),
            (
                &["--mode", "watermark", "--from", "mariadb-bin.000012:4"],
                "--from",
            ),
            (&["--mode", "watermark", "--follow"], "--follow"),
        ];
        for (rest, flag) in cases {
            let args: Vec<&str> = diff.iter().chain(rest.iter()).copied().collect();
            let msg = refused(&args);
            assert!(msg.contains(flag), "{args:?}: {msg}");
            assert!(msg.contains("falcon-migrate diff"), "usage of diff: {msg}");
        }
        // The binlog mode's own flags are fine in it, and the watermark's in it.
        assert!(parse(&[
            "diff",
            "-c",
            "f.toml",
            "--mode",
            "binlog",
            "--from",
            "f.000001:4"
        ])
        .is_ok());
        assert!(parse(&[
            "diff",
            "-c",
            "f.toml",
            "--mode",
            "watermark",
            "--overlap",
            "60"
        ])
        .is_ok());
        assert!(refused(&["diff", "-c", "f.toml", "--until-now", "--follow"]).contains("--follow"));
    }

    #[test]
    fn each_subcommand_help_shows_examples() {
        for sub in ["base", "diff", "verify", "plan", "status", "check"] {
            let e = parse(&[sub, "--help"]).expect_err("help is an early exit");
            assert!(!e.use_stderr(), "--help goes to stdout and exits 0");
            let text = e.to_string();
            assert!(text.contains("Examples:"), "{sub}: {text}");
            let example = format!("falcon-migrate {sub} -c falcon.toml");
            assert!(text.contains(&example), "{sub}: {text}");
        }
    }
}
