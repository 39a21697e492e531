//! `falcon-migrate`: base, diff, verify, check.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, ENV_CONFIG};
use crate::error::{exit, Error, Result};

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
    Diff(CommonArgs),
    /// Compares checksums of the source against Kafka and HBase, down to the row.
    Verify(CommonArgs),
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

#[derive(Debug, Clone, Args)]
pub struct BaseArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    super::init_logging(&cli.log_level);
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => super::report_error(&e),
    }
}

async fn dispatch(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Check(args) => check(&args).await,
        Command::Base(_) => Err(Error::Usage("base: not implemented yet".into())),
        Command::Diff(_) => Err(Error::Usage("diff: not implemented yet".into())),
        Command::Verify(_) => Err(Error::Usage("verify: not implemented yet".into())),
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
