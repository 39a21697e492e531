//! Checked arguments → each phase's options; the phase's summary → words or
//! JSON ([`render`]) and the exit status.

use std::time::Duration;

use super::args::{
    BaseArgs, Command, CommonArgs, DiffArgs, DiffMode, HbaseLoadArg, PlanArgs, StatusArgs,
    TargetArg, VerifyArgs, DEFAULT_OVERLAP_S,
};
use super::observe::{report_line, Observer};
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
        Command::Plan(args) => plan(args).await,
        Command::Status(args) => status(args).await,
    }
}

/// One look at the run's record, or (`--watch`) one every few seconds until
/// Ctrl-C; a Kafka that cannot be read is said, and watched for again.
async fn status(args: StatusArgs) -> Result<i32> {
    let cfg = Config::load(&args.common.config)?;
    let opts = crate::status::StatusOptions {
        base_run_id: args.run_id.clone(),
        diff_run_id: args.diff_run_id.clone(),
        source_id: args.source_id.clone(),
    };
    let json = args.common.json;
    let Some(every) = args.watch else {
        let s = crate::status::read(&cfg, &opts).await?;
        render::print(json, || render::status(&s), &s);
        return Ok(exit::OK);
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Listened to once for the whole watch: a Ctrl-C during a read (which
    // may wait on an unreachable Kafka) ends the watch as surely as one
    // during the pause.
    let mut signals = crate::pipeline::Signals::listen();
    loop {
        let read = tokio::select! {
            r = crate::status::read(&cfg, &opts) => r,
            _ = signals.next() => return Ok(exit::OK),
        };
        match read {
            Ok(s) if json => println!("{}", serde_json::to_string(&s).unwrap_or_default()),
            Ok(s) => {
                if tty {
                    // Clear the screen and go home: one screen, refreshed.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render::status(&s));
                if !tty {
                    println!();
                }
            }
            Err(e @ (Error::Usage(_) | Error::Config { .. })) => return Err(e),
            Err(e) => eprintln!(
                "{}: status unknown: cannot read the progress topic {}: {e}",
                crate::report::utc_text(crate::pipeline::base::now_ms() / 1000),
                cfg.kafka.progress_topic
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = signals.next() => return Ok(exit::OK),
        }
    }
}

async fn check(args: &CommonArgs) -> Result<i32> {
    let cfg = Config::load(&args.config)?;
    let preflight = crate::source::preflight::check(&cfg).await?;
    let (pos, mysql_security) = crate::source::mysql::check(&cfg).await?;
    let kafka = cfg.kafka.clone();
    let (brokers, kafka_security) = tokio::task::spawn_blocking(move || {
        crate::sink::kafka::check(&kafka).map(|n| (n, crate::sink::kafka::security(&kafka)))
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))??;
    let hb = cfg.hbase.clone();
    let hbase_security = tokio::task::spawn_blocking(move || {
        crate::sink::hbase::HbaseClient::connect(&hb).map(|c| c.security())
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
        security: render::SecurityReport {
            mysql: mysql_security,
            kafka: kafka_security,
            hbase: hbase_security,
        },
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
    crate::pipeline::install_interrupts();
    let cfg = Config::load(&args.common.config)?;
    let opts = BaseOptions {
        state_dir: args.common.state_dir.clone(),
        run_id: args.run_id.clone(),
        workers: args.workers,
        chunk_rows: args.chunk_rows,
        targets: targets(args.target),
        resume: args.resume,
        shard: args.shard().map_err(Error::Usage)?,
        max_rows_per_sec: args.max_rows_per_sec,
        max_threads_running: args.max_threads_running,
        dry_run: args.dry_run,
        tables: args.tables.clone(),
        progress_every: Duration::from_secs(args.progress_interval),
        retry: retry(args.retry_budget),
        stop_after_rows: None,
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
                // Found now, not after hours of copying.
                if !runnable(&command[0]) {
                    return Err(Error::Usage(format!(
                        "--bulk-load-command: {} is not an executable file (nor one on PATH); \
                         see README \"Bulk load into HBase\" (scripts/hbase/bulk-load-tables)",
                        command[0]
                    )));
                }
                HbaseLoad::Bulk { command }
            }
        },
    };
    if args.dry_run {
        let BaseOutcome::Planned(plan) = base::run(cfg, opts).await? else {
            return Err(Error::Other("a dry run wrote something".into()));
        };
        render::print(args.common.json, || render::dry_run(&plan), &plan);
        return Ok(exit::OK);
    }
    let shard = opts.shard.to_string();
    let obs = Observer::start(
        &args.metrics,
        &args.common.state_dir,
        "base",
        &args.run_id,
        &shard,
    )
    .await?;
    let work = async {
        match base::run(cfg, opts).await? {
            BaseOutcome::Done(s) => Ok(*s),
            BaseOutcome::Planned(_) => Err(Error::Other("a copy only planned".into())),
        }
    };
    let code = |s: &base::BaseSummary| {
        if s.dead_lettered > 0 {
            exit::DEAD_LETTERED
        } else {
            exit::OK
        }
    };
    observed(obs, args.common.json, work, code, render::base).await
}

/// A phase run under its observer: metrics served while it runs, its report
/// written when it ends (on failure too), its summary printed in words or
/// JSON; the exit status `code` gives for the summary.
async fn observed<S: serde::Serialize>(
    obs: Observer,
    json: bool,
    work: impl std::future::Future<Output = Result<S>>,
    code: impl FnOnce(&S) -> i32,
    words: impl FnOnce(&S) -> String,
) -> Result<i32> {
    let s = match work.await {
        Ok(s) => s,
        Err(e) => {
            obs.finish::<()>(Err(&e)).1.wait().await;
            return Err(e);
        }
    };
    let code = code(&s);
    let (report, linger) = obs.finish(Ok((&s, outcome(code))));
    let words = words(&s) + &report_line(report.as_ref());
    render::emit(json, &words, &s);
    linger.wait().await;
    Ok(code)
}

/// A finished phase's outcome in its report, from its exit status.
fn outcome(code: i32) -> &'static str {
    match code {
        exit::OK => "ok",
        exit::DEAD_LETTERED => "dead-lettered",
        exit::DIFFERENCES => "differences",
        exit::INTERRUPTED => "interrupted",
        _ => "failed",
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
        drill_rows: args.drill_rows,
    };
    crate::pipeline::retry::set_default_budget(Duration::from_secs(args.retry_budget));
    crate::checkpoint::create_private_dir(&opts.spill_dir)?;
    {
        // Ours alone, whoever created it: spill files hold row hashes and keys.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opts.spill_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod {}", opts.spill_dir.display()), e))?;
    }
    crate::verify::kafka::remove_stale_spills(&opts.spill_dir);
    crate::verify::kafka::clean_spills_on_interrupt(opts.spill_dir.clone());
    let obs = Observer::start(
        &args.metrics,
        &args.common.state_dir,
        "verify",
        "verify",
        "0/1",
    )
    .await?;
    let repair = args.repair;
    let code = move |s: &crate::verify::VerifySummary| {
        let id_map_fixed = s
            .id_map
            .as_ref()
            .is_none_or(|m| m.missing + m.extra + m.different == 0 || m.remaining == Some(0));
        let fixed = repair && s.repair.as_ref().is_none_or(|r| r.remaining == 0) && id_map_fixed;
        if s.identical || fixed {
            exit::OK
        } else {
            exit::DIFFERENCES
        }
    };
    let work = crate::verify::run(cfg, opts);
    observed(obs, args.common.json, work, code, render::verify).await
}

async fn diff(args: DiffArgs) -> Result<i32> {
    crate::pipeline::install_interrupts();
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
    let obs = Observer::start(
        &args.metrics,
        &args.common.state_dir,
        "diff",
        &args.run_id,
        "0/1",
    )
    .await?;
    let code =
        |s: &diff::DiffSummary| diff_exit(s.stopped == "interrupted" && !s.follow, s.dead_lettered);
    observed(
        obs,
        args.common.json,
        diff::run(cfg, opts),
        code,
        render::diff,
    )
    .await
}

/// A diff's exit status, either mode: interrupted before its end (130),
/// rows dead-lettered (3), or done.
fn diff_exit(interrupted: bool, dead_lettered: u64) -> i32 {
    if interrupted {
        exit::INTERRUPTED
    } else if dead_lettered > 0 {
        exit::DEAD_LETTERED
    } else {
        exit::OK
    }
}

async fn diff_watermark(args: DiffArgs) -> Result<i32> {
    crate::pipeline::install_interrupts();
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
    let obs = Observer::start(
        &args.metrics,
        &args.common.state_dir,
        "diff",
        &args.run_id,
        "0/1",
    )
    .await?;
    let code =
        |s: &watermark::WatermarkSummary| diff_exit(s.stopped == "interrupted", s.dead_lettered);
    let work = watermark::run(cfg, opts);
    observed(obs, args.common.json, work, code, render::watermark).await
}

async fn plan(args: PlanArgs) -> Result<i32> {
    let cfg = Config::load(&args.common.config)?;
    let opts = crate::forecast::PlanOptions {
        state_dir: args.common.state_dir.clone(),
        summaries: args.summary.clone(),
        run_ids: args.run_id.clone(),
        calibrate_rows: args.calibrate,
        workers: args.workers,
        targets: targets(args.target),
        exact_counts: args.exact_counts,
        binlog_window_bytes: args.binlog_window_mb << 20,
        ceiling: args.ceiling,
        byte_share: args.byte_share,
        startup_s: args.startup,
        days: args.days,
        window_s: args.window,
        max_shards: args.max_shards,
    };
    let report = crate::forecast::run(cfg, opts).await?;
    render::print(args.common.json, || render::plan(&report), &report);
    Ok(exit::OK)
}

/// Whether `prog` names an executable file, as a path or on `PATH`.
fn runnable(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.contains('/') {
        return exec(std::path::Path::new(prog));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| exec(&d.join(prog))))
}
