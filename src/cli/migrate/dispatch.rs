//! Checked arguments → each phase's options; the phase's summary → words or
//! JSON ([`render`]) and the exit status.

use std::time::Duration;

use super::args::{
    BaseArgs, Command, CommonArgs, DiffArgs, DiffMode, HbaseLoadArg, TargetArg, VerifyArgs,
    DEFAULT_OVERLAP_S,
};
use super::render::{self, CheckReport};
use crate::config::Config;
use crate::error::{exit, Error, Result};
use crate::pipeline::base::{self, BaseOptions, BaseOutcome, HbaseLoad, Targets};
use crate::pipeline::commit::RetryPolicy;
use crate::pipeline::diff::{self, DiffOptions};
use crate::pipeline::watermark::{self, WatermarkOptions};
use crate::verify::VerifyOptions;

pub(super) async fn dispatch(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Check(args) => check(&args).await,
        Command::Base(args) => base(args).await,
        Command::Diff(args) if args.mode == DiffMode::Watermark => diff_watermark(args).await,
        Command::Diff(args) => diff(args).await,
        Command::Verify(args) => verify(args).await,
    }
}

async fn check(args: &CommonArgs) -> Result<i32> {
    let cfg = Config::load(&args.config)?;
    let preflight = crate::source::preflight::check(&cfg).await?;
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
        kafka_bootstrap: cfg.kafka.brokers.clone(),
        hbase_thrift: cfg.hbase.thrift.clone(),
        tables: cfg.tables.iter().map(|t| t.source.clone()).collect(),
        preflight,
    };
    render::print(args.json, || render::check(&report), &report);
    Ok(exit::OK)
}

fn targets(t: TargetArg) -> Targets {
    Targets {
        kafka: t != TargetArg::Hbase,
        hbase: t != TargetArg::Kafka,
    }
}

fn retry(budget_s: u64) -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(budget_s),
        ..RetryPolicy::default()
    }
}

async fn base(args: BaseArgs) -> Result<i32> {
    let cfg = Config::load(&args.common.config)?;
    let opts = BaseOptions {
        state_dir: args.common.state_dir.clone(),
        run_id: args.run_id.clone(),
        workers: args.workers,
        chunk_rows: args.chunk_rows,
        targets: targets(args.target),
        resume: args.resume,
        shard: args.shard,
        max_rows_per_sec: args.max_rows_per_sec,
        max_threads_running: args.max_threads_running,
        dry_run: args.dry_run,
        tables: args.tables.clone(),
        progress_every: Duration::from_secs(args.progress_interval),
        retry: retry(args.retry_budget),
        hbase_load: match args.hbase_load {
            HbaseLoadArg::Put => HbaseLoad::Put,
            HbaseLoadArg::Bulk => {
                if args.target == TargetArg::Kafka {
                    return Err(Error::Usage(
                        "--hbase-load bulk needs HBase as a target (--target hbase or all)".into(),
                    ));
                }
                let command: Vec<String> = args
                    .bulk_load_command
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if command.is_empty() {
                    return Err(Error::Usage("--bulk-load-command is empty".into()));
                }
                HbaseLoad::Bulk { command }
            }
        },
    };
    match base::run(cfg, opts).await? {
        BaseOutcome::Planned(plan) => {
            render::print(args.common.json, || render::dry_run(&plan), &plan);
            Ok(exit::OK)
        }
        BaseOutcome::Done(s) => {
            render::emit(args.common.json, &render::base(&s), &s);
            Ok(if s.dead_lettered > 0 {
                exit::DEAD_LETTERED
            } else {
                exit::OK
            })
        }
    }
}

async fn verify(args: VerifyArgs) -> Result<i32> {
    let cfg = Config::load(&args.common.config)?;
    let Targets { kafka, hbase } = targets(args.target);
    let opts = VerifyOptions {
        hbase,
        kafka,
        tables: args.tables.clone(),
        sample_pct: args.sample,
        workers: args.workers,
        report: args.report.clone(),
        max_report_rows: args.max_report_rows,
        repair: args.repair,
        recheck_delay: Duration::from_secs_f64(args.recheck_delay),
        buckets: args.buckets,
        kafka_memory_rows: args.kafka_memory_rows,
        spill_dir: args.common.state_dir.join("verify-spill"),
    };
    std::fs::create_dir_all(&opts.spill_dir)
        .map_err(|e| Error::io(format!("create {}", opts.spill_dir.display()), e))?;
    let s = crate::verify::run(cfg, opts).await?;
    render::emit(args.common.json, &render::verify(&s), &s);
    let fixed = s.repair.as_ref().is_some_and(|r| r.remaining == 0);
    Ok(if s.identical || fixed {
        exit::OK
    } else {
        exit::DIFFERENCES
    })
}

async fn diff(args: DiffArgs) -> Result<i32> {
    let cfg = Config::load(&args.common.config)?;
    let opts = DiffOptions {
        state_dir: args.common.state_dir.clone(),
        run_id: args.run_id.clone(),
        base_run_id: args.base_run_id.clone(),
        from: args.from.clone(),
        follow: args.follow,
        max_batch: args.max_batch,
        progress_every: Duration::from_secs(args.progress_interval),
        retry: retry(args.retry_budget),
    };
    let s = diff::run(cfg, opts).await?;
    render::emit(args.common.json, &render::diff(&s), &s);
    Ok(if s.stopped == "interrupted" && !s.follow {
        exit::INTERRUPTED
    } else if s.dead_lettered > 0 {
        exit::DEAD_LETTERED
    } else {
        exit::OK
    })
}

async fn diff_watermark(args: DiffArgs) -> Result<i32> {
    let cfg = Config::load(&args.common.config)?;
    let opts = WatermarkOptions {
        state_dir: args.common.state_dir.clone(),
        run_id: args.run_id.clone(),
        base_run_id: args.base_run_id.clone(),
        since: args.since,
        overlap_s: args.overlap.unwrap_or(DEFAULT_OVERLAP_S),
        page: args.max_batch,
        progress_every: Duration::from_secs(args.progress_interval),
        retry: retry(args.retry_budget),
    };
    let s = watermark::run(cfg, opts).await?;
    render::emit(args.common.json, &render::watermark(&s), &s);
    Ok(if s.stopped == "interrupted" {
        exit::INTERRUPTED
    } else if s.dead_lettered > 0 {
        exit::DEAD_LETTERED
    } else {
        exit::OK
    })
}
