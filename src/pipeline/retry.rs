//! The one retry policy of every phase: what an error's [`Retry`] kind means
//! for the unit of work or the read that failed ([`next_step`]), and how long
//! and how often it is tried again ([`RetryPolicy`]: exponential backoff with
//! jitter within a time budget, `--retry-budget`). Units of work go through
//! `commit::Committer`; reads (scans, watermarks, marker reads) through
//! [`retry_blocking`].

use std::time::{Duration, Instant};

use crate::error::{Error, Result, Retry};

/// How long and how often a unit of work is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// No new attempt starts after this much time since the first failure.
    pub budget: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

/// The budget of [`RetryPolicy::default`] in this process, when a command
/// sets it (verify's `--retry-budget`: every read and the repair's commit).
static DEFAULT_BUDGET: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets the budget of every default policy of this process (once).
pub fn set_default_budget(budget: Duration) {
    let _ = DEFAULT_BUDGET.set(budget);
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: DEFAULT_BUDGET
                .get()
                .copied()
                .unwrap_or(Duration::from_secs(300)),
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: doubling from `first_delay`,
    /// capped, with up to 25% jitter so that workers do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .first_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = base.mul_f64(f64::from(nanos % 1000) / 4000.0);
        base + jitter
    }
}

/// What a retry loop does with an error, given its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Redo the unit after a backoff (abort first; rebuild when `rebuild`).
    Redo { rebuild: bool },
    /// Stop: the error is the phase's outcome.
    Stop,
}

/// The one retry classification of the write path.
pub(crate) fn next_step(e: &Error) -> Next {
    if matches!(e, Error::Interrupted) {
        return Next::Stop;
    }
    match e.retry() {
        Retry::Transient | Retry::Abort => Next::Redo { rebuild: false },
        Retry::Rebuild => Next::Redo { rebuild: true },
        Retry::Fenced | Retry::Never => Next::Stop,
    }
}

/// A read (no transaction: a scan, a watermark, a marker read) redone after
/// a backoff while [`next_step`] says another attempt can help, within the
/// policy's budget; on a blocking thread. `f` starts from scratch each time.
pub(crate) fn retry_blocking<T>(
    policy: &RetryPolicy,
    what: &str,
    mut f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut attempt = 0u32;
    let mut first_failure: Option<Instant> = None;
    loop {
        attempt += 1;
        let e = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let since = *first_failure.get_or_insert_with(Instant::now);
        let wait = policy.delay(attempt);
        match next_step(&e) {
            Next::Redo { .. } if since.elapsed() + wait <= policy.budget => {
                count_retry(&e);
                tracing::warn!(attempt, "retrying {what} in {wait:?}: {e}");
                std::thread::sleep(wait);
            }
            Next::Redo { .. } => {
                return Err(Error::Other(format!(
                    "{what}: gave up after {attempt} attempts in {:.0?} (retry budget {:?}): {e}",
                    since.elapsed(),
                    policy.budget
                )))
            }
            Next::Stop => return Err(e),
        }
    }
}

/// Counts a retry in `falcon_retries_total{server, cause}`: the server whose
/// error caused it, and the error's retry kind.
pub(crate) fn count_retry(e: &Error) {
    let server = match e {
        Error::Mysql { .. } | Error::Unreachable { .. } => "mysql",
        Error::Binlog { .. } | Error::BinlogLost { .. } => "binlog",
        Error::Kafka { .. } => "kafka",
        Error::Hbase { .. } => "hbase",
        Error::Io { .. } | Error::Checkpoint { .. } => "local",
        _ => "other",
    };
    let cause = match e.retry() {
        Retry::Transient => "transient",
        Retry::Abort => "abort",
        Retry::Rebuild => "rebuild",
        Retry::Fenced => "fenced",
        Retry::Never => "never",
    };
    crate::metrics::inc(&crate::metrics::RETRIES, &[server, cause], 1);
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Other(format!("blocking task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn errors_map_to_one_retry_decision() {
        let k = |c| Error::kafka("x", KafkaError::MessageProduction(c));
        assert_eq!(
            next_step(&k(C::AllBrokersDown)),
            Next::Redo { rebuild: false }
        );
        assert_eq!(next_step(&k(C::MessageSizeTooLarge)), Next::Stop);
        assert_eq!(
            next_step(&Error::kafka("x", KafkaError::Global(C::ProducerFenced))),
            Next::Stop
        );
        assert_eq!(
            next_step(&Error::kafka(
                "x",
                crate::error::KafkaCause::new("lost", Retry::Rebuild)
            )),
            Next::Redo { rebuild: true }
        );
        let io = Error::hbase("putMultiple t", "connection reset", Retry::Transient);
        assert_eq!(next_step(&io), Next::Redo { rebuild: false });
        let bad = Error::hbase("putMultiple t", "TableNotFoundException", Retry::Never);
        assert_eq!(next_step(&bad), Next::Stop);
        assert_eq!(next_step(&Error::Interrupted), Next::Stop);
        assert_eq!(next_step(&Error::Usage("x".into())), Next::Stop);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter() {
        let p = RetryPolicy {
            budget: Duration::from_secs(60),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for (attempt, base) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            let d = p.delay(attempt).as_millis() as u64;
            assert!(d >= base && d <= base + base / 4, "attempt {attempt}: {d}");
        }
    }
}
