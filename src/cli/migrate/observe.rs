//! What every phase does around its work for the people watching it: serves
//! `/metrics` (`--metrics-addr`) from before the work starts until
//! `--metrics-linger` seconds after it ends, and writes the run report (HTML
//! and JSON, under `<state dir>/reports/`) when it ends, finished or failed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::args::MetricsArgs;
use crate::error::{Error, Result};
use crate::metrics;
use crate::report::{Recorder, Report};

pub(super) struct Observer {
    phase: &'static str,
    run_id: String,
    shard: String,
    reports: PathBuf,
    server: Option<tokio::task::JoinHandle<()>>,
    linger: Duration,
    recorder: Recorder,
}

impl Observer {
    /// Starts serving metrics (a port that cannot be bound is a usage error)
    /// and sampling them for the report.
    pub(super) async fn start(
        m: &MetricsArgs,
        state_dir: &std::path::Path,
        phase: &'static str,
        run_id: &str,
        shard: &str,
    ) -> Result<Observer> {
        let server = match m.metrics_addr {
            Some(addr) => Some(metrics::serve(addr).await?),
            None => None,
        };
        metrics::start_run(phase, run_id, shard);
        Ok(Observer {
            phase,
            run_id: run_id.to_string(),
            shard: shard.to_string(),
            reports: state_dir.join("reports"),
            server,
            linger: Duration::from_secs(m.metrics_linger),
            recorder: Recorder::start(),
        })
    }

    /// Writes the report of a phase that ended with `summary` (with its
    /// outcome: `ok`, `dead-lettered`, `differences`) or with an error.
    /// Returns the report's path (a report that cannot be written is logged,
    /// never the phase's failure) and the metrics server, to [`Linger::wait`]
    /// on once the summary is out.
    pub(super) fn finish<S: Serialize>(
        self,
        outcome: std::result::Result<(&S, &str), &Error>,
    ) -> (Option<PathBuf>, Linger) {
        metrics::end_run();
        let (outcome, summary) = match outcome {
            Ok((s, label)) => (
                label.to_string(),
                serde_json::to_value(s).unwrap_or_default(),
            ),
            Err(e) => (format!("failed: {e}"), serde_json::Value::Null),
        };
        let report = Report::new(
            self.phase,
            &self.run_id,
            &self.shard,
            outcome,
            self.recorder.finish(),
            summary,
        );
        let path = match report.write(&self.reports) {
            Ok(p) => {
                tracing::info!(report = %p.display(), "run report written");
                Some(p)
            }
            Err(e) => {
                tracing::warn!("the run report could not be written: {e}");
                None
            }
        };
        let linger = Linger {
            server: self.server,
            linger: self.linger,
        };
        (path, linger)
    }
}

/// The metrics server of a phase that ended.
pub(super) struct Linger {
    server: Option<tokio::task::JoinHandle<()>>,
    linger: Duration,
}

impl Linger {
    /// Keeps `/metrics` up for `--metrics-linger` (Ctrl-C or SIGTERM cuts it
    /// short).
    pub(super) async fn wait(self) {
        let Some(server) = self.server else {
            return;
        };
        if !self.linger.is_zero() {
            tracing::info!("metrics stay up for {:?} (--metrics-linger)", self.linger);
            let mut signals = crate::pipeline::Signals::listen();
            tokio::select! {
                _ = tokio::time::sleep(self.linger) => {}
                _ = signals.next() => {}
            }
        }
        server.abort();
    }
}

/// The words' last line naming the report.
pub(super) fn report_line(path: Option<&PathBuf>) -> String {
    match path {
        Some(p) => format!(
            "report: {} (data: {})\n",
            p.display(),
            p.with_extension("json").display()
        ),
        None => String::new(),
    }
}
