//! The summaries in words, one function per summary, and [`emit`], which
//! puts the words and (with `--json`) the JSON object where scripts expect them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

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
}

pub(super) fn check(r: &CheckReport) -> String {
    format!(
        "ok: MySQL {} (binlog at {}), Kafka {} ({} broker(s)), HBase Thrift2 {}; {} table(s) mapped\n",
        r.mysql,
        r.binlog_position,
        r.kafka_bootstrap,
        r.kafka_brokers,
        r.hbase_thrift,
        r.tables.len()
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
