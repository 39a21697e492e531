//! The command line of `falcon-migrate`, parsed and checked once: every value
//! that reaches `dispatch` is in range, and no flag of one diff mode rides
//! along with the other. A refused value is a usage error (exit 2) naming its
//! flag.

use std::fmt::Display;
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
  falcon-migrate base -c falcon.toml --shard \"$JOB_COMPLETION_INDEX/8\"  # one pod of an 8-pod Indexed Job
  falcon-migrate base -c falcon.toml --resume                         # after a crash or Ctrl-C")]
    Base(BaseArgs),
    /// Applies the inserts, updates and deletes made since the base (from the binlog).
    #[command(after_help = "\
Examples:
  falcon-migrate diff -c falcon.toml --until-now
  falcon-migrate diff -c falcon.toml --follow --json
  falcon-migrate diff -c falcon.toml --mode watermark --since 1767225600 --overlap 600")]
    Diff(DiffArgs),
    /// Compares checksums of the source against Kafka and HBase, down to the row.
    #[command(after_help = "\
Examples:
  falcon-migrate verify -c falcon.toml --sample 1
  falcon-migrate verify -c falcon.toml --report diffs.csv --repair
  falcon-migrate verify -c falcon.toml --target hbase --tables message --json")]
    Verify(VerifyArgs),
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
    /// This process's share of the chunks, i/N (e.g. one per pod of an Indexed Job).
    #[arg(long, default_value = "0/1", value_parser = Shard::parse)]
    pub shard: Shard,
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
    /// With `--hbase-load bulk`: the command that loads a table's HFiles, run with two more arguments, the HFiles' folder (a file:// URL) and the table.
    #[arg(
        long,
        env = "FALCON_BULK_LOAD_COMMAND",
        default_value = "hbase completebulkload"
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
        let Command::Diff(args) = &self.command else {
            return Ok(());
        };
        let Some(msg) = args.mode_conflict() else {
            return Ok(());
        };
        // Built so the usage line in the error reads `falcon-migrate diff ...`.
        let mut cmd = Cli::command();
        cmd.build();
        let diff = cmd
            .find_subcommand_mut("diff")
            .expect("diff is a subcommand");
        Err(diff.error(ErrorKind::ArgumentConflict, msg))
    }
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
            (b.run_id.as_str(), b.shard.to_string()),
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
        ];
        for (args, flag) in cases {
            let mut full = vec![args[0], "-c", "f.toml"];
            full.extend_from_slice(&args[1..]);
            let msg = refused(&full);
            assert!(msg.contains(flag), "{full:?}: {msg}");
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
        for sub in ["base", "diff", "verify", "check"] {
            let e = parse(&[sub, "--help"]).expect_err("help is an early exit");
            assert!(!e.use_stderr(), "--help goes to stdout and exits 0");
            let text = e.to_string();
            assert!(text.contains("Examples:"), "{sub}: {text}");
            let example = format!("falcon-migrate {sub} -c falcon.toml");
            assert!(text.contains(&example), "{sub}: {text}");
        }
    }
}
