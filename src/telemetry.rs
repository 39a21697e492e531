//! Progress for the operator: one indicatif bar per table (rows, rows/s, ETA)
//! on a terminal, and a plain log line per table every few seconds when stderr
//! is not one (a CI log, `kubectl logs`).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counters of one table, shared by the workers.
#[derive(Debug, Default)]
pub struct TableCounters {
    pub read: AtomicU64,
    pub kafka: AtomicU64,
    pub hbase: AtomicU64,
    pub dead: AtomicU64,
    /// Chunks this process copies, and how many are finished: the row
    /// estimate is corrected from them as the copy goes.
    pub chunks_total: AtomicU64,
    pub chunks_done: AtomicU64,
}

impl TableCounters {
    /// Rows this process will read: the planner's estimate until chunks
    /// finish, then extrapolated from the finished chunks.
    pub fn expected(&self, estimate: u64) -> u64 {
        let read = self.read.load(Ordering::Relaxed);
        let (total, done) = (
            self.chunks_total.load(Ordering::Relaxed),
            self.chunks_done.load(Ordering::Relaxed),
        );
        let from_chunks = (read as u128 * total as u128)
            .checked_div(done as u128)
            .unwrap_or(0) as u64;
        if done == 0 {
            estimate.max(read)
        } else {
            from_chunks.max(read)
        }
    }
}

pub struct TableProgress {
    pub name: String,
    pub counters: Arc<TableCounters>,
    /// Rows expected for this process (an estimate).
    pub expected: u64,
    bar: ProgressBar,
}

pub struct Progress {
    pub tables: Vec<TableProgress>,
    started: Instant,
    multi: MultiProgress,
    tty: bool,
}

impl Progress {
    pub fn new(tables: Vec<(String, u64, Arc<TableCounters>)>) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {human_pos:>11}/{human_len:11} {per_sec:>12} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let tables = tables
            .into_iter()
            .map(|(name, expected, counters)| {
                let bar = multi.add(ProgressBar::new(expected.max(1)));
                bar.set_style(style.clone());
                bar.set_prefix(name.clone());
                TableProgress {
                    name,
                    counters,
                    expected,
                    bar,
                }
            })
            .collect();
        Progress {
            tables,
            started: Instant::now(),
            multi,
            tty,
        }
    }

    /// Updates the bars; on a non-terminal, logs a line per table when `log` is set.
    pub fn tick(&self, log: bool) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        for t in &self.tables {
            let read = t.counters.read.load(Ordering::Relaxed);
            let expected = t.counters.expected(t.expected);
            t.bar.set_length(expected.max(1));
            t.bar.set_position(read);
            if log && !self.tty {
                let rate = read as f64 / secs;
                let left = expected.saturating_sub(read);
                let eta = if rate > 0.0 {
                    format!("{:.0}s", left as f64 / rate)
                } else {
                    "?".into()
                };
                tracing::info!(
                    table = %t.name,
                    rows = read,
                    expected,
                    rows_per_s = rate as u64,
                    dead_lettered = t.counters.dead.load(Ordering::Relaxed),
                    eta = %eta,
                    "progress"
                );
            }
        }
    }

    /// Ticks until `done` resolves: bars 4×/s, log lines every `every`.
    pub async fn run_until(&self, every: Duration, done: impl std::future::Future<Output = ()>) {
        tokio::pin!(done);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_log = Instant::now();
        loop {
            tokio::select! {
                _ = &mut done => break,
                _ = tick.tick() => {
                    let log = last_log.elapsed() >= every;
                    if log {
                        last_log = Instant::now();
                    }
                    self.tick(log);
                }
            }
        }
        self.tick(false);
        for t in &self.tables {
            t.bar.finish();
        }
        let _ = self.multi.clear();
    }
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`; None elsewhere).
pub fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
