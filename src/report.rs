//! Run reports: what an operator reads the morning after. While a phase
//! runs, a [`Recorder`] samples the metrics registry (rows written per table
//! and target, diff lag) once a second; at the end the samples, the dead
//! letters and verify's verdicts, with the phase's summary, are written as
//! one JSON file and one self-contained HTML page (inline CSS and SVG, no
//! script, nothing fetched), both private to the owner (0600).
//!
//! The samples are cumulative counts, so a rate is the difference of two
//! samples over their interval; when a series grows past [`MAX_POINTS`] every
//! other sample is dropped and the interval doubles: memory stays bounded
//! however long the phase runs, and no rows are lost from the rates.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::files::{write_bytes_atomic, write_json_atomic};
use crate::error::Result;
use crate::metrics;

/// Most samples kept per series.
pub const MAX_POINTS: usize = 720;

/// One series: `(seconds since the start, value)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Default)]
struct Samples {
    interval: Duration,
    /// When the last sample was taken.
    last: Option<f64>,
    /// Cumulative rows written, by "table → target".
    written: BTreeMap<String, Vec<(f64, f64)>>,
    lag: Vec<(f64, f64)>,
}

impl Samples {
    fn take(&mut self, t: f64) {
        let before = self.last;
        for (labels, v) in metrics::values(&metrics::ROWS_WRITTEN) {
            if let [_, table, target] = labels.as_slice() {
                let series = self
                    .written
                    .entry(format!("{table} → {target}"))
                    .or_default();
                if series.is_empty() {
                    // Counted since the previous sample: it was 0 then.
                    series.push((before.unwrap_or(0.0), 0.0));
                }
                series.push((t, v));
            }
        }
        self.last = Some(t);
        if let Some((_, lag)) = metrics::values(&metrics::DIFF_LAG).first() {
            self.lag.push((t, *lag));
        }
        let longest = self
            .written
            .values()
            .map(Vec::len)
            .chain([self.lag.len()])
            .max()
            .unwrap_or(0);
        if longest > MAX_POINTS {
            for s in self.written.values_mut().chain([&mut self.lag]) {
                thin(s);
            }
            self.interval *= 2;
        }
    }
}

/// Keeps every other point, and the last one.
fn thin(points: &mut Vec<(f64, f64)>) {
    let last = points.last().copied();
    let mut i = 0;
    points.retain(|_| {
        i += 1;
        i % 2 == 1
    });
    if let (Some(l), Some(end)) = (last, points.last()) {
        if *end != l {
            points.push(l);
        }
    }
}

/// Samples the metrics while a phase runs.
pub struct Recorder {
    started: Instant,
    started_ms: u64,
    samples: Arc<Mutex<Samples>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let samples = Arc::new(Mutex::new(Samples {
            interval: Duration::from_secs(1),
            ..Samples::default()
        }));
        let started = Instant::now();
        let s = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let every = match s.lock() {
                    Ok(mut s) => {
                        s.take(started.elapsed().as_secs_f64());
                        s.interval
                    }
                    Err(_) => return,
                };
                tokio::time::sleep(every).await;
            }
        });
        Recorder {
            started,
            started_ms: crate::pipeline::base::now_ms(),
            samples,
            task,
        }
    }

    /// Stops sampling (after a last sample) and returns the series.
    pub fn finish(self) -> Recorded {
        self.task.abort();
        let t = self.started.elapsed().as_secs_f64();
        let mut s = self
            .samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        s.take(t);
        Recorded {
            started_ms: self.started_ms,
            finished_ms: crate::pipeline::base::now_ms(),
            rows_per_s: s
                .written
                .into_iter()
                .map(|(label, points)| Series {
                    label,
                    points: rates(&points),
                })
                .collect(),
            lag_s: Series {
                label: "lag (s)".into(),
                points: s.lag,
            },
        }
    }
}

/// Rates between successive cumulative samples, placed at each interval's end.
fn rates(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    if let Some(first) = points.first() {
        out.push((first.0, 0.0));
    }
    for w in points.windows(2) {
        let dt = w[1].0 - w[0].0;
        if dt > 0.0 {
            out.push((w[1].0, (w[1].1 - w[0].1).max(0.0) / dt));
        }
    }
    out
}

/// The time series of a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Rows per second written, per table and target.
    pub rows_per_s: Vec<Series>,
    /// Diff lag over time (empty for other phases).
    pub lag_s: Series,
}

/// Verify's verdict for one table and target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub table: String,
    pub target: String,
    pub identical: bool,
    pub target_rows: u64,
    pub mismatched_buckets: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
}

/// A run report, as written to `<stem>.json` (and shown by `<stem>.html`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub phase: String,
    pub run_id: String,
    pub shard: String,
    /// `ok`, `dead-lettered`, `differences`, or `failed: <the error>`.
    pub outcome: String,
    #[serde(flatten)]
    pub recorded: Recorded,
    /// Per table, per reason.
    pub dead_letters: BTreeMap<String, BTreeMap<String, u64>>,
    pub verdicts: Vec<Verdict>,
    /// The phase's JSON summary (null when it failed).
    pub summary: Value,
}

impl Report {
    /// Fills dead letters and verdicts from a phase's JSON summary: base
    /// has `tables[].dead_letter_reasons`, diff a `dead_letter_reasons` map
    /// by table, verify `tables[].targets`.
    pub fn new(
        phase: &str,
        run_id: &str,
        shard: &str,
        outcome: String,
        recorded: Recorded,
        summary: Value,
    ) -> Report {
        let mut dead_letters: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let counts = |v: &Value| -> BTreeMap<String, u64> {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, n)| n.as_u64().map(|n| (k.clone(), n)))
                        .filter(|(_, n)| *n > 0)
                        .collect()
                })
                .unwrap_or_default()
        };
        if let Some(by_table) = summary["dead_letter_reasons"].as_object() {
            for (t, reasons) in by_table {
                dead_letters.insert(t.clone(), counts(reasons));
            }
        }
        let mut verdicts = Vec::new();
        for t in summary["tables"].as_array().into_iter().flatten() {
            let table = t["table"].as_str().unwrap_or("").to_string();
            let reasons = counts(&t["dead_letter_reasons"]);
            if !reasons.is_empty() {
                dead_letters.insert(table.clone(), reasons);
            }
            for (target, v) in t["targets"].as_object().into_iter().flatten() {
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                verdicts.push(Verdict {
                    table: table.clone(),
                    target: target.clone(),
                    identical: n("missing") + n("extra") + n("different") == 0,
                    target_rows: n("target_rows"),
                    mismatched_buckets: n("mismatched_buckets"),
                    missing: n("missing"),
                    extra: n("extra"),
                    different: n("different"),
                });
            }
        }
        dead_letters.retain(|_, r| !r.is_empty());
        Report {
            phase: phase.to_string(),
            run_id: run_id.to_string(),
            shard: shard.to_string(),
            outcome,
            recorded,
            dead_letters,
            verdicts,
            summary,
        }
    }

    /// The file name without extension: `<phase>-<run>[-shard-I-of-N]-<UTC time>`.
    pub fn stem(&self) -> String {
        let shard = match self.shard.split_once('/') {
            Some((i, n)) if self.shard != "0/1" => format!("-shard-{i}-of-{n}"),
            _ => String::new(),
        };
        format!(
            "{}-{}{shard}-{}",
            self.phase,
            self.run_id,
            utc_stamp(self.recorded.started_ms / 1000)
        )
    }

    /// Writes `<dir>/<stem>.json` and `<dir>/<stem>.html` (0600, atomically);
    /// returns the HTML file's path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let stem = self.stem();
        write_json_atomic(&dir.join(format!("{stem}.json")), self)?;
        let html = dir.join(format!("{stem}.html"));
        write_bytes_atomic(&html, self.html().as_bytes())?;
        Ok(html)
    }

    /// The self-contained HTML page.
    pub fn html(&self) -> String {
        let title = format!(
            "falcon-migrate {} — run {} shard {}",
            self.phase, self.run_id, self.shard
        );
        let mut h = String::new();
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
             <title>{}</title><style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
            esc(&title),
            esc(&title)
        );
        let ok = self.outcome == "ok";
        let _ = writeln!(
            h,
            "<p class=\"meta\">outcome <b class=\"{}\" id=\"outcome\">{}</b> · started {} · ended {} · {:.1} s</p>",
            if ok { "good" } else { "bad" },
            esc(&self.outcome),
            utc_text(self.recorded.started_ms / 1000),
            utc_text(self.recorded.finished_ms / 1000),
            self.recorded.finished_ms.saturating_sub(self.recorded.started_ms) as f64 / 1000.0
        );

        h.push_str("<h2>Rows per second, per table and target</h2>\n");
        if self.recorded.rows_per_s.iter().all(|s| s.points.len() < 2) {
            h.push_str("<p class=\"none\">no rows written by this phase</p>\n");
        } else {
            h.push_str(&line_chart(
                "rows-per-s",
                "rows/s",
                &self.recorded.rows_per_s,
            ));
        }

        if self.phase == "diff" {
            h.push_str("<h2>Diff lag (source commit → both targets)</h2>\n");
            if self.recorded.lag_s.points.is_empty() {
                h.push_str("<p class=\"none\">no batch applied: no lag measured</p>\n");
            } else {
                h.push_str(&line_chart(
                    "lag",
                    "seconds",
                    std::slice::from_ref(&self.recorded.lag_s),
                ));
            }
        }

        h.push_str("<h2>Dead letters by reason</h2>\n");
        let bars: Vec<(String, u64)> = self
            .dead_letters
            .iter()
            .flat_map(|(t, r)| r.iter().map(move |(why, n)| (format!("{t}: {why}"), *n)))
            .collect();
        if bars.is_empty() {
            h.push_str("<p class=\"none\">no row dead-lettered</p>\n");
        } else {
            h.push_str(&bar_chart("dead-letters", &bars));
        }

        if self.phase == "verify" {
            h.push_str("<h2>Verdict per table and target</h2>\n");
            h.push_str(&verdict_table(&self.verdicts));
        }

        let summary = serde_json::to_string_pretty(&self.summary).unwrap_or_default();
        let _ = write!(
            h,
            "<h2>Summary</h2>\n<pre id=\"summary\">{}</pre>\n</body></html>\n",
            esc(&summary)
        );
        h
    }
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}.meta{color:#555}\
.good{color:#17803d}.bad{color:#b42318}.none{color:#777;font-style:italic}\
svg{display:block;margin:8px 0}svg text{font:11px sans-serif;fill:#444}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}\
th{background:#f4f4f4}td.l{text-align:left}tr.bad td{background:#fde8e8}tr.good td{background:#e9f7ef}\
pre{background:#f7f7f7;padding:10px;overflow:auto;max-height:400px}";

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round upper bound for an axis (1, 2 or 5 times a power of ten).
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|x| *x >= v)
        .unwrap_or(10.0 * p)
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A line chart of several series over a shared time axis, as inline SVG.
fn line_chart(id: &str, unit: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (820.0, 280.0, 64.0, 220.0, 12.0, 34.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let all = series.iter().flat_map(|s| s.points.iter());
    let max_t = all.clone().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let max_y = nice_max(all.map(|p| p.1).fold(0.0, f64::max));
    let x = |t: f64| left + t / max_t * pw;
    let y = |v: f64| top + ph - v / max_y * ph;
    let mut s = format!(
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">\n"
    );
    for i in 0..=4 {
        let v = max_y * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#e3e3e3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + pw,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0,
            short(v)
        );
        let t = max_t * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}s</text>",
            x(t),
            h - 14.0,
            short(t)
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#888\"/>\
         <line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\
         <text x=\"12\" y=\"{:.1}\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{}</text>",
        top + ph,
        left + pw,
        top + ph,
        top + ph,
        top + ph / 2.0,
        top + ph / 2.0,
        esc(unit)
    );
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut d = String::new();
        for (j, (t, v)) in se.points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1} {:.1} ",
                if j == 0 { "M" } else { "L" },
                x(*t),
                y(*v)
            );
        }
        let _ = writeln!(
            s,
            "<path class=\"series\" data-series=\"{}\" d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            esc(&se.label),
            d.trim_end()
        );
        let ly = top + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"14\" height=\"4\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left + pw + 16.0,
            ly - 4.0,
            left + pw + 36.0,
            ly,
            esc(&se.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A horizontal bar chart, as inline SVG.
fn bar_chart(id: &str, bars: &[(String, u64)]) -> String {
    let (left, bar_w, row) = (300.0, 440.0, 24.0);
    let h = 12.0 + row * bars.len() as f64;
    let max = nice_max(bars.iter().map(|b| b.1).max().unwrap_or(1) as f64);
    let mut s = format!(
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"820\" height=\"{h}\" viewBox=\"0 0 820 {h}\" role=\"img\">\n"
    );
    for (i, (label, n)) in bars.iter().enumerate() {
        let y = 6.0 + row * i as f64;
        let len = (*n as f64 / max * bar_w).max(1.0);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar\" x=\"{left}\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"16\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{n}</text>",
            left - 8.0,
            y + 12.0,
            esc(label),
            COLORS[1],
            left + len + 6.0,
            y + 12.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn verdict_table(vs: &[Verdict]) -> String {
    if vs.is_empty() {
        return "<p class=\"none\">no verdict (the phase did not finish)</p>\n".into();
    }
    let mut s = String::from(
        "<table id=\"verdicts\"><tr><th>table</th><th>target</th><th>verdict</th><th>rows</th>\
         <th>mismatched buckets</th><th>missing</th><th>extra</th><th>different</th></tr>\n",
    );
    for v in vs {
        let _ = writeln!(
            s,
            "<tr class=\"{}\"><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if v.identical { "good" } else { "bad" },
            esc(&v.table),
            esc(&v.target),
            if v.identical { "identical" } else { "differs" },
            v.target_rows,
            v.mismatched_buckets,
            v.missing,
            v.extra,
            v.different
        );
    }
    s.push_str("</table>\n");
    s
}

/// Civil date of a Unix day count (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn utc_parts(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (y, m, d) = civil((secs / 86_400) as i64);
    let s = secs % 86_400;
    (y, m, d, s / 3600, s / 60 % 60, s % 60)
}

/// `20261128T103000Z`.
pub fn utc_stamp(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc_parts(secs);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

/// `2026-11-28 10:30:00 UTC`.
pub fn utc_text(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = utc_parts(secs);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_cumulative_samples_and_thinning_keeps_them() {
        let cum: Vec<(f64, f64)> = (0..=10)
            .map(|i| (f64::from(i), 100.0 * f64::from(i)))
            .collect();
        let r = rates(&cum);
        assert_eq!(r.len(), 11);
        assert!(r[1..].iter().all(|p| (p.1 - 100.0).abs() < 1e-9), "{r:?}");
        let mut thinned = cum.clone();
        thin(&mut thinned);
        assert_eq!(thinned.first(), cum.first());
        assert_eq!(thinned.last(), cum.last());
        assert!(rates(&thinned)[1..]
            .iter()
            .all(|p| (p.1 - 100.0).abs() < 1e-9));
    }

    #[test]
    fn utc_times_are_civil_dates() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_text(1_795_861_800), "2026-11-28 10:30:00 UTC");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn report_reads_dead_letters_and_verdicts_and_escapes_html() {
        let base = serde_json::json!({"tables": [
            {"table": "message", "dead_letter_reasons": {"orphan_room": 3, "invalid_utf8": 0}},
            {"table": "<room>", "dead_letter_reasons": {}}]});
        let rec = Recorded {
            started_ms: 1_000,
            finished_ms: 5_000,
            rows_per_s: vec![Series {
                label: "message → kafka".into(),
                points: vec![(0.0, 0.0), (1.0, 50.0), (2.0, 80.0)],
            }],
            lag_s: Series::default(),
        };
        let r = Report::new(
            "base",
            "base",
            "0/1",
            "dead-lettered".into(),
            rec.clone(),
            base,
        );
        assert_eq!(r.dead_letters["message"]["orphan_room"], 3);
        assert_eq!(r.dead_letters.len(), 1);
        let html = r.html();
        assert!(html.contains("<svg id=\"rows-per-s\""));
        assert!(
            html.contains("d=\"M64.0 246.0 L332.0 129.0 L600.0"),
            "{html}"
        );
        assert!(html.contains("message: orphan_room"));
        assert!(!html.contains("<room>"));
        // Nothing to fetch: no script, no link, no image source.
        assert!(!html.contains("src=") && !html.contains("href=") && !html.contains("<script"));

        let verify = serde_json::json!({"tables": [{"table": "message", "targets": {
            "hbase": {"target_rows": 10, "mismatched_buckets": 1, "missing": 1, "extra": 0, "different": 0},
            "kafka": {"target_rows": 11, "mismatched_buckets": 0, "missing": 0, "extra": 0, "different": 0}}}]});
        let r = Report::new("verify", "verify", "0/1", "differences".into(), rec, verify);
        assert_eq!(r.verdicts.len(), 2);
        assert!(!r.verdicts[0].identical && r.verdicts[1].identical);
        assert!(r.html().contains("<table id=\"verdicts\">"));
        assert_eq!(r.stem(), "verify-verify-19700101T000001Z");
    }
}
