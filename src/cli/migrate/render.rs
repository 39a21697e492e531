//! The summaries in words, one function per summary, and [`emit`], which
//! puts the words and (with `--json`) the JSON object where scripts expect them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::forecast::PlanReport;
use crate::pipeline::base::{BaseSummary, DryRun};
use crate::pipeline::diff::DiffSummary;
use crate::pipeline::watermark::{Watermark, WatermarkSummary};
use crate::verify::VerifySummary;

/// What `check` found, printed in words or as JSON.
#[derive(Serialize)]
pub(super) struct CheckReport {
    pub command: &'static str,
    pub config: String,
    pub mysql: String,
    pub binlog_position: String,
    pub kafka_brokers: usize,
    /// The configured broker list, for the words only.
    #[serde(skip)]
    pub kafka_bootstrap: String,
    pub hbase_thrift: String,
    pub tables: Vec<String>,
    /// Every source setting checked (see `source::preflight`).
    pub preflight: Vec<crate::source::preflight::Finding>,
    /// Per server: encrypted or not, how the tool authenticates, the certificate.
    pub security: SecurityReport,
}

#[derive(Serialize)]
pub(super) struct SecurityReport {
    pub mysql: crate::tls::Security,
    pub kafka: crate::tls::Security,
    pub hbase: crate::tls::Security,
}

pub(super) fn check(r: &CheckReport) -> String {
    let s = &r.security;
    format!(
        "ok: MySQL {} (binlog at {}), Kafka {} ({} broker(s)), HBase Thrift2 {}; {} table(s) mapped\n  \
         MySQL: {}\n  Kafka: {}\n  HBase: {}\n",
        r.mysql,
        r.binlog_position,
        r.kafka_bootstrap,
        r.kafka_brokers,
        r.hbase_thrift,
        r.tables.len(),
        s.mysql.describe(),
        s.kafka.describe(),
        s.hbase.describe(),
    )
}

pub(super) fn dry_run(plan: &DryRun) -> String {
    let mut w = format!(
        "dry run: run {} shard {}, {} workers, chunks of {} key values\n",
        plan.run_id, plan.shard, plan.workers, plan.chunk_rows
    );
    for t in &plan.tables {
        let _ = writeln!(
            w,
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
    let _ = match plan.estimated_s {
        Some(s) => writeln!(
            w,
            "  ~{} rows for this shard, ~{:.0}s at --max-rows-per-sec",
            plan.estimated_rows, s
        ),
        None => writeln!(w, "  ~{} rows for this shard", plan.estimated_rows),
    };
    w.push_str("nothing was written\n");
    w
}

pub(super) fn base(s: &BaseSummary) -> String {
    let mut w = format!(
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
        let _ = writeln!(
            w,
            "  {:<14} read {:>10}  kafka {:>10}  hbase {:>10}  dead-lettered {:>6}  chunks {}/{}",
            t.table,
            t.rows_read,
            t.written.kafka,
            t.written.hbase,
            t.dead_lettered,
            t.chunks_done,
            t.chunks
        );
    }
    if let Some(b) = &s.bulk {
        let _ = writeln!(
            w,
            "  bulk load: {} cells in {} HFiles ({:.1} MiB) written in {:.1}s, loaded in {:.1}s; staging {}",
            b.cells,
            b.hfiles,
            b.hfile_bytes as f64 / (1 << 20) as f64,
            b.hfile_s,
            b.load_s,
            b.staging_dir
        );
    }
    if s.dead_lettered > 0 {
        let _ = writeln!(
            w,
            "{} rows dead-lettered: {}",
            s.dead_lettered, s.dead_letter_file
        );
    }
    w
}

pub(super) fn verify(s: &VerifySummary) -> String {
    let mut w = format!(
        "verify: {} rows compared in {:.1}s ({:.0} rows/s; source side {:.0} rows/s), {} skipped as base dead-letters them\n",
        s.compared, s.elapsed_s, s.rows_per_s, s.source_rows_per_s, s.skipped
    );
    for (name, t) in &s.targets {
        let _ = writeln!(
            w,
            "  {name:<6} {:>10} rows  buckets {}/{} mismatched  missing {}  extra {}  different {}",
            t.target_rows, t.mismatched_buckets, t.buckets, t.missing, t.extra, t.different
        );
    }
    if s.cleared_by_recheck > 0 {
        let _ = writeln!(
            w,
            "  {} row(s) changed in flight and matched on re-check",
            s.cleared_by_recheck
        );
    }
    if let Some(r) = &s.repair {
        let _ = writeln!(
            w,
            "  repaired: {} HBase row(s), {} Kafka event(s) appended; {} still differing",
            r.hbase_rows, r.kafka_events, r.remaining
        );
    }
    if let Some(p) = &s.report {
        let _ = writeln!(w, "  report: {p} ({} line(s))", s.report_rows);
    }
    w.push_str(if s.identical {
        "identical\n"
    } else {
        "differences found\n"
    });
    w
}

pub(super) fn diff(s: &DiffSummary) -> String {
    let mut w = format!(
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
        let list = if list.is_empty() {
            "-".to_string()
        } else {
            list.join(", ")
        };
        let _ = writeln!(w, "  {t:<14} {list}");
    }
    if s.dead_lettered > 0 {
        let _ = writeln!(
            w,
            "{} changes dead-lettered: {}",
            s.dead_lettered, s.dead_letter_file
        );
    }
    w
}

pub(super) fn watermark(s: &WatermarkSummary) -> String {
    let marks = |m: &BTreeMap<String, Watermark>| {
        m.iter()
            .map(|(t, w)| format!("{t}@({}, {})", w.version_s, w.id))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut w = format!(
        "diff (watermark, overlap {}s) run {} from {} to {}{}: {} rows read, {} applied in {} transactions ({:.1}s, {:.0} rows/s), lag {:.1}s\n",
        s.overlap_s,
        s.run_id,
        marks(&s.from),
        marks(&s.to),
        if s.stopped == "interrupted" { " (interrupted)" } else { "" },
        s.events_read,
        s.applied_total,
        s.kafka_transactions,
        s.elapsed_s,
        s.changes_per_s,
        s.lag_s,
    );
    if !s.skipped_tables.is_empty() {
        let _ = writeln!(
            w,
            "  skipped (no version column): {}",
            s.skipped_tables.join(", ")
        );
    }
    if s.dead_lettered > 0 {
        let _ = writeln!(
            w,
            "{} rows dead-lettered: {}",
            s.dead_lettered, s.dead_letter_file
        );
    }
    w
}

/// Seconds as `2h 05m 09s` (`-` when unknown or never).
pub(super) fn hms(s: Option<f64>) -> String {
    let Some(s) = s.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".into();
    };
    let t = s.round() as u64;
    format!("{}h {:02}m {:02}s", t / 3600, t % 3600 / 60, t % 60)
}

pub(super) fn plan(r: &PlanReport) -> String {
    let f = &r.forecast;
    let mut w = format!(
        "plan for {}: {} rows, {:.0} MiB in {} table(s); window {}, diff catch-up of {} day(s)\n",
        r.database,
        f.rows,
        f.data_bytes as f64 / 1048576.0,
        r.tables.len(),
        hms(Some(r.window_s)),
        r.days
    );
    for t in &r.tables {
        let _ = writeln!(
            w,
            "  {:<14} {:>13} rows  {:>6} B/row  {:>9.1} MiB",
            t.table,
            t.rows,
            t.avg_row_bytes,
            t.data_bytes as f64 / 1048576.0
        );
    }
    let _ = match &r.writes {
        Some(x) => writeln!(
            w,
            "source writes {:.0} row changes/h, {:.1} MiB/h of binlog ({} changes over {}, {})",
            x.changes_per_h,
            x.bytes_per_h / 1048576.0,
            x.changes,
            hms(Some(x.window_s)),
            x.source
        ),
        None => writeln!(
            w,
            "source write rate: unknown (the binlog could not be read)"
        ),
    };
    for (what, m, unit) in [
        ("base  ", &r.base_rate, "rows/s per shard"),
        ("diff  ", &r.diff_rate, "changes/s"),
        ("verify", &r.verify_rate, "rows/s"),
    ] {
        let _ = match m {
            Some(m) => writeln!(w, "{what} {:>10.0} {unit} ({})", m.per_s, m.source),
            None => writeln!(w, "{what} {:>10} {unit} (not measured)", "-"),
        };
    }
    if let Some(s) = &r.scaling {
        let _ = writeln!(
            w,
            "scaling {:>9.2}× with {} shards (contention {:.2}; {})",
            s.speedup, s.shards, s.contention, s.source
        );
    }
    if !f.base.is_empty() {
        let _ = writeln!(
            w,
            "  shards      rows/s          base   (start {:.0}s each{})",
            r.startup_s,
            r.ceiling
                .map_or(String::new(), |c| format!(", ceiling {c:.0} rows/s"))
        );
        for b in &f.base {
            let _ = writeln!(
                w,
                "  {:>6} {:>11.0} {:>13}{}",
                b.shards,
                b.rows_per_s,
                hms(Some(b.seconds)),
                if b.capped { "  (at the ceiling)" } else { "" }
            );
        }
    }
    if let Some(d) = &f.diff {
        let _ = writeln!(
            w,
            "diff catch-up of {} day(s): {:.0} changes at {:.0}/s while {:.2}/s arrive: {}",
            r.days,
            d.backlog_changes,
            d.apply_per_s,
            d.incoming_per_s,
            d.seconds
                .map_or("never catches up".into(), |s| hms(Some(s)))
        );
    }
    let _ = writeln!(w, "verify: {}", hms(f.verify_s));
    let _ = match &f.fit {
        Some(n) => writeln!(
            w,
            "fits the window: {} shard(s): base {} + catch-up {} + verify {} = {}",
            n.shards,
            hms(Some(n.base_s)),
            hms(n.catch_up_s),
            hms(n.verify_s),
            hms(n.total_s)
        ),
        None => writeln!(w, "fits the window: no shard count shown"),
    };
    for n in &f.notes {
        let _ = writeln!(w, "note: {n}");
    }
    w
}

pub(super) fn status(s: &crate::status::Status) -> String {
    use crate::status::duration_text as dur;
    let when = |ms: u64| crate::report::utc_text(ms / 1000);
    let mut w = format!(
        "status of database {} (source {}), progress topic {}, read {}\n",
        s.database,
        s.source.as_deref().unwrap_or("unknown: nothing recorded"),
        s.progress_topic,
        when(s.read_at_ms)
    );
    if !s.progress_topic_exists {
        let _ = writeln!(
            w,
            "the progress topic {} does not exist: no phase has recorded anything in this Kafka cluster yet",
            s.progress_topic
        );
    }
    let b = &s.base;
    let total = |t: Option<u64>| t.map_or("unknown".to_string(), |t| t.to_string());
    let eta = |e: Option<f64>| e.map_or("unknown".to_string(), dur);
    if b.state == "not started" {
        let _ = writeln!(
            w,
            "base run {}: not started (no shard recorded in Kafka)",
            b.run_id
        );
    } else {
        let _ = writeln!(
            w,
            "base run {}: {}, chunks {}/{}, {} rows, {:.0} rows/s over the last minute, ETA {}{}",
            b.run_id,
            b.state,
            b.chunks_done,
            total(b.chunks_total),
            b.rows,
            b.rows_per_s,
            eta(b.eta_s),
            b.start_position
                .as_ref()
                .map_or(String::new(), |p| format!(", from {p}"))
        );
        for sh in &b.shards {
            let _ = match sh.state {
                "not started" => writeln!(w, "  shard {:<6} not started", sh.shard),
                _ => writeln!(
                    w,
                    "  shard {:<6} {:<12} chunks {}/{}  rows {}{}",
                    sh.shard,
                    sh.state,
                    sh.chunks_done,
                    total(sh.chunks_total),
                    sh.rows,
                    sh.last_chunk_age_ms.map_or(String::new(), |a| format!(
                        "  last chunk {} ago",
                        dur(a as f64 / 1000.0)
                    ))
                ),
            };
        }
        for t in &b.tables {
            let _ = writeln!(
                w,
                "  table {:<14} chunks {}/{}  rows {}  {:.0} rows/s  ETA {}",
                t.table,
                t.chunks_done,
                total(t.chunks_total),
                t.rows,
                t.rows_per_s,
                eta(t.eta_s)
            );
        }
    }
    let d = &s.diff;
    let _ = match &d.position {
        None => writeln!(
            w,
            "diff run {}: not started (no position recorded in Kafka)",
            d.run_id
        ),
        Some(p) => writeln!(
            w,
            "diff run {}: at {p}; {}",
            d.run_id,
            match (d.lag_s, d.last_batch_age_s) {
                (Some(l), Some(a)) => format!("lag {l:.1}s at its last batch, {} ago", dur(a)),
                _ => "lag unknown (recorded by an older version)".to_string(),
            }
        ),
    };
    let _ = match &s.verify.last {
        None => writeln!(w, "verify: never run (no verdict recorded in Kafka)"),
        Some(v) => writeln!(
            w,
            "verify: {} ({} rows compared{}, missing {}, extra {}, different {}), {}",
            s.verify.state,
            v.compared,
            if v.sample_pct < 100.0 {
                format!(" in a {}% sample", v.sample_pct)
            } else {
                String::new()
            },
            v.missing,
            v.extra,
            v.different,
            when(v.finished_ms)
        ),
    };
    w
}

/// A report with nothing running behind it (check, dry run): the words, or with
/// `--json` the JSON object alone.
pub(super) fn print(json: bool, words: impl FnOnce() -> String, report: &impl Serialize) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
    } else {
        print!("{}", words());
    }
}

/// A run's summary in words on stdout, or with `--json` the words on stderr
/// and one JSON object on stdout.
pub(super) fn emit(json: bool, words: &str, summary: &impl Serialize) {
    if json {
        eprint!("{words}");
        println!("{}", serde_json::to_string(summary).unwrap_or_default());
    } else {
        print!("{words}");
    }
}
