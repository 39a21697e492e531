//! Prometheus metrics: one process-wide registry of counters, gauges and
//! histograms, updated where the work happens (the committer, the retry
//! policy, the copy and apply loops, verify's bucket comparison), rendered in
//! the text exposition format 0.0.4 and served at `/metrics` by a minimal
//! HTTP responder (`--metrics-addr`).
//!
//! Every metric is declared once below ([`ALL`]); the README's list is this
//! one. Names follow Prometheus conventions: `falcon_` prefix, `_total` for
//! counters, base units (`_seconds`, `_bytes`). Label values are bounded
//! (tables, targets, phases, error kinds), never row data.
//!
//! Updates take one short mutex: they happen per chunk, per batch or per
//! retry, not per row.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Upper bounds of the buckets (`+Inf` is implied).
    Histogram(&'static [f64]),
}

/// A metric's declaration: its name, help text, kind and label names.
#[derive(Debug)]
pub struct Def {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// Seconds, from a few milliseconds (a small diff batch) to minutes (a chunk
/// through a slow HBase, a commit riding out a broker restart).
const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

macro_rules! def {
    ($id:ident, $name:literal, $kind:expr, [$($l:literal),*], $help:literal) => {
        pub static $id: Def = Def { name: $name, help: $help, kind: $kind, labels: &[$($l),*] };
    };
}

def!(
    RUN_INFO,
    "falcon_run_info",
    Kind::Gauge,
    ["phase", "run_id", "shard"],
    "Always 1: the phase, run and shard this process runs."
);
def!(
    RUN_START,
    "falcon_run_start_time_seconds",
    Kind::Gauge,
    [],
    "Unix time the phase started."
);
def!(
    RUN_END,
    "falcon_run_end_time_seconds",
    Kind::Gauge,
    [],
    "Unix time the phase ended (absent while it runs)."
);
def!(
    ROWS_READ,
    "falcon_rows_read_total",
    Kind::Counter,
    ["phase", "table"],
    "Source rows (base) or row changes (diff) read and committed, per table."
);
def!(
    ROWS_WRITTEN,
    "falcon_rows_written_total",
    Kind::Counter,
    ["phase", "table", "target"],
    "Rows written and acknowledged, per table and target (kafka, hbase)."
);
def!(
    ROWS_DEAD,
    "falcon_rows_dead_lettered_total",
    Kind::Counter,
    ["phase", "table"],
    "Rows written to the dead-letter file instead of the targets, per table."
);
def!(
    CHUNKS_PLANNED,
    "falcon_base_chunks",
    Kind::Gauge,
    ["table"],
    "Chunks this base process has to copy (not counting chunks already committed)."
);
def!(
    CHUNKS_DONE,
    "falcon_base_chunks_done_total",
    Kind::Counter,
    ["table"],
    "Chunks this base process committed."
);
def!(UNIT_SECONDS, "falcon_unit_duration_seconds", Kind::Histogram(SECONDS), ["unit"],
    "Time to make a unit of work durable, retries included: unit=base_chunk (a chunk), diff_batch (a diff batch), watermark_page, verify_repair.");
def!(
    KAFKA_COMMIT_SECONDS,
    "falcon_kafka_commit_duration_seconds",
    Kind::Histogram(SECONDS),
    ["unit"],
    "Time of a Kafka transaction commit (the call, until the broker confirmed)."
);
def!(
    KAFKA_TXNS,
    "falcon_kafka_transactions_total",
    Kind::Counter,
    ["unit"],
    "Kafka transactions committed."
);
def!(RETRIES, "falcon_retries_total", Kind::Counter, ["server", "cause"],
    "Units of work and reads tried again, by the server whose error caused it and the error's kind (transient, abort, rebuild).");
def!(
    DIFF_LAG,
    "falcon_diff_lag_seconds",
    Kind::Gauge,
    [],
    "Diff: source commit time to both targets acknowledged, at the last batch (second resolution)."
);
def!(
    DIFF_FILE,
    "falcon_diff_binlog_file_index",
    Kind::Gauge,
    [],
    "Diff: number of the binlog file of the committed position (mariadb-bin.000042 is 42)."
);
def!(
    DIFF_OFFSET,
    "falcon_diff_binlog_offset_bytes",
    Kind::Gauge,
    [],
    "Diff: offset in that binlog file of the committed position."
);
def!(
    DIFF_LAST_BATCH,
    "falcon_diff_last_batch_time_seconds",
    Kind::Gauge,
    [],
    "Diff: Unix time the last batch (or position-only marker) was committed."
);
def!(
    VERIFY_BUCKETS,
    "falcon_verify_buckets_compared_total",
    Kind::Counter,
    ["table", "target"],
    "Verify: checksum buckets compared with the source, per table and target."
);
def!(
    VERIFY_MISMATCHED,
    "falcon_verify_buckets_mismatched_total",
    Kind::Counter,
    ["table", "target"],
    "Verify: buckets whose digests differed from the source's on the first pass."
);
def!(
    VERIFY_ROWS,
    "falcon_verify_rows_compared_total",
    Kind::Counter,
    ["table"],
    "Verify: source rows compared (rows base dead-letters are not compared)."
);
def!(
    VERIFY_DIFFERING,
    "falcon_verify_rows_differing_total",
    Kind::Counter,
    ["table", "target", "kind"],
    "Verify: rows still differing after the re-check, by kind (missing, extra, different)."
);

/// Every metric, in the order they are rendered.
pub static ALL: &[&Def] = &[
    &RUN_INFO,
    &RUN_START,
    &RUN_END,
    &ROWS_READ,
    &ROWS_WRITTEN,
    &ROWS_DEAD,
    &CHUNKS_PLANNED,
    &CHUNKS_DONE,
    &UNIT_SECONDS,
    &KAFKA_COMMIT_SECONDS,
    &KAFKA_TXNS,
    &RETRIES,
    &DIFF_LAG,
    &DIFF_FILE,
    &DIFF_OFFSET,
    &DIFF_LAST_BATCH,
    &VERIFY_BUCKETS,
    &VERIFY_MISMATCHED,
    &VERIFY_ROWS,
    &VERIFY_DIFFERING,
];

#[derive(Debug, Clone)]
enum Value {
    Scalar(f64),
    Histogram {
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

/// Series by (metric name, label values).
type Series = BTreeMap<(&'static str, Vec<String>), Value>;

static SERIES: LazyLock<Mutex<Series>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn update(def: &'static Def, labels: &[&str], f: impl FnOnce(&mut Value)) {
    debug_assert_eq!(labels.len(), def.labels.len(), "{}", def.name);
    let key = (def.name, labels.iter().map(|s| s.to_string()).collect());
    let Ok(mut m) = SERIES.lock() else { return };
    let v = m.entry(key).or_insert_with(|| match def.kind {
        Kind::Histogram(b) => Value::Histogram {
            counts: vec![0; b.len()],
            sum: 0.0,
            count: 0,
        },
        _ => Value::Scalar(0.0),
    });
    f(v);
}

/// Adds `n` to a counter.
pub fn inc(def: &'static Def, labels: &[&str], n: u64) {
    debug_assert_eq!(def.kind, Kind::Counter, "{}", def.name);
    update(def, labels, |v| {
        if let Value::Scalar(x) = v {
            *x += n as f64;
        }
    });
}

/// A committed unit's rows of one table (a base chunk, a diff batch, a
/// watermark page): read, written to each target that was on, dead-lettered.
pub fn committed_rows(phase: &str, table: &str, read: u64, written: &[(&str, u64)], dead: u64) {
    inc(&ROWS_READ, &[phase, table], read);
    for (target, n) in written {
        inc(&ROWS_WRITTEN, &[phase, table, target], *n);
    }
    inc(&ROWS_DEAD, &[phase, table], dead);
}

/// Sets a gauge.
pub fn set(def: &'static Def, labels: &[&str], value: f64) {
    debug_assert_eq!(def.kind, Kind::Gauge, "{}", def.name);
    update(def, labels, |v| *v = Value::Scalar(value));
}

/// Records one observation in a histogram.
pub fn observe(def: &'static Def, labels: &[&str], d: Duration) {
    let Kind::Histogram(bounds) = def.kind else {
        debug_assert!(false, "{} is not a histogram", def.name);
        return;
    };
    let secs = d.as_secs_f64();
    update(def, labels, |v| {
        if let Value::Histogram { counts, sum, count } = v {
            if let Some(i) = bounds.iter().position(|b| secs <= *b) {
                counts[i] += 1;
            }
            *sum += secs;
            *count += 1;
        }
    });
}

/// The current value of each series of a counter or gauge, by label values.
pub fn values(def: &'static Def) -> Vec<(Vec<String>, f64)> {
    let Ok(m) = SERIES.lock() else {
        return Vec::new();
    };
    m.iter()
        .filter(|((n, _), _)| *n == def.name)
        .filter_map(|((_, l), v)| match v {
            Value::Scalar(x) => Some((l.clone(), *x)),
            Value::Histogram { .. } => None,
        })
        .collect()
}

/// Marks the phase this process runs (`falcon_run_info`, start time).
pub fn start_run(phase: &str, run_id: &str, shard: &str) {
    set(&RUN_INFO, &[phase, run_id, shard], 1.0);
    set(&RUN_START, &[], unix_now());
}

pub fn end_run() {
    set(&RUN_END, &[], unix_now());
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn label_set(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The registry in the text exposition format 0.0.4.
pub fn render() -> String {
    let series = SERIES.lock().map(|m| m.clone()).unwrap_or_default();
    render_series(&series)
}

fn render_series(series: &Series) -> String {
    let mut out = String::new();
    for def in ALL {
        let mine: Vec<_> = series.iter().filter(|((n, _), _)| *n == def.name).collect();
        if mine.is_empty() {
            continue;
        }
        let kind = match def.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", def.name, def.help.replace('\n', " "));
        let _ = writeln!(out, "# TYPE {} {kind}", def.name);
        for ((_, values), v) in mine {
            match (v, def.kind) {
                (Value::Scalar(x), _) => {
                    let _ = writeln!(
                        out,
                        "{}{} {}",
                        def.name,
                        label_set(def.labels, values, None),
                        number(*x)
                    );
                }
                (Value::Histogram { counts, sum, count }, Kind::Histogram(bounds)) => {
                    let mut cumulative = 0;
                    for (b, c) in bounds.iter().zip(counts) {
                        cumulative += c;
                        let le = number(*b);
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {cumulative}",
                            def.name,
                            label_set(def.labels, values, Some(("le", &le)))
                        );
                    }
                    let labels = label_set(def.labels, values, None);
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {count}",
                        def.name,
                        label_set(def.labels, values, Some(("le", "+Inf")))
                    );
                    let _ = writeln!(out, "{}_sum{labels} {}", def.name, number(*sum));
                    let _ = writeln!(out, "{}_count{labels} {count}", def.name);
                }
                _ => {}
            }
        }
    }
    out
}

/// Serves `/metrics` on `addr` until the returned task is aborted. Binding
/// happens before this returns, so a port in use is a usage error (exit 2)
/// before any work starts.
pub async fn serve(addr: SocketAddr) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::Usage(format!(
            "--metrics-addr {addr}: cannot listen there ({e}); choose another HOST:PORT"
        ))
    })?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), respond(stream)).await;
            });
        }
    }))
}

/// One request, one response, then the connection is closed.
async fn respond(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The request head only; a body (there is none for GET) is not read.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_string(),
        ),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        resp.extend_from_slice(body.as_bytes());
    }
    s.write_all(&resp).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_help_type_escaped_labels_and_cumulative_buckets() {
        let mut s = Series::new();
        s.insert(
            (
                "falcon_rows_read_total",
                vec!["base".into(), "a\"b\\c".into()],
            ),
            Value::Scalar(12.0),
        );
        s.insert(
            ("falcon_unit_duration_seconds", vec!["base_chunk".into()]),
            Value::Histogram {
                counts: {
                    let mut c = vec![0; SECONDS.len()];
                    c[0] = 1;
                    c[7] = 2;
                    c
                },
                sum: 1.5,
                count: 4,
            },
        );
        let text = render_series(&s);
        assert!(text.contains("# TYPE falcon_rows_read_total counter\n"));
        assert!(text.contains("falcon_rows_read_total{phase=\"base\",table=\"a\\\"b\\\\c\"} 12\n"));
        assert!(text
            .contains("falcon_unit_duration_seconds_bucket{unit=\"base_chunk\",le=\"0.005\"} 1\n"));
        assert!(
            text.contains("falcon_unit_duration_seconds_bucket{unit=\"base_chunk\",le=\"1\"} 3\n")
        );
        // One observation fell above every bound: only +Inf counts it.
        assert!(text
            .contains("falcon_unit_duration_seconds_bucket{unit=\"base_chunk\",le=\"300\"} 3\n"));
        assert!(text
            .contains("falcon_unit_duration_seconds_bucket{unit=\"base_chunk\",le=\"+Inf\"} 4\n"));
        assert!(text.contains("falcon_unit_duration_seconds_sum{unit=\"base_chunk\"} 1.5\n"));
        // Metrics without series are left out.
        assert!(!text.contains("falcon_diff_lag_seconds"));
    }

    #[test]
    fn the_example_dashboard_queries_only_declared_metrics() {
        let dash = include_str!("../deploy/grafana/falcon-migrate-dashboard.json");
        let v: serde_json::Value = serde_json::from_str(dash).expect("dashboard JSON");
        let mut queried = 0;
        for p in v["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("falcon_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let base = name.strip_suffix("_bucket").unwrap_or(&name);
                    assert!(ALL.iter().any(|d| d.name == base), "{name} in {expr}");
                    queried += 1;
                }
            }
        }
        assert!(queried >= 20, "{queried}");
    }

    #[test]
    fn names_follow_the_conventions() {
        for d in ALL {
            assert!(d.name.starts_with("falcon_"), "{}", d.name);
            match d.kind {
                Kind::Counter => assert!(d.name.ends_with("_total"), "{}", d.name),
                Kind::Histogram(_) => assert!(d.name.ends_with("_seconds"), "{}", d.name),
                Kind::Gauge => assert!(!d.name.ends_with("_total"), "{}", d.name),
            }
        }
    }
}
