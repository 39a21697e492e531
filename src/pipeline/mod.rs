//! The phases that write: `base` (bulk copy), `diff` (binlog) and
//! `watermark` (keyset diff), all through one write path: [`commit`] (the
//! exactly-once sequence and its retry policy), with their run state in
//! Kafka ([`runlog`]) and a local cache of it (`crate::checkpoint`).

pub mod base;
pub mod clock;
pub mod commit;
pub mod diff;
pub mod lane;
pub mod retry;
pub mod runlog;
pub mod watermark;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// How long a phase may take to stop after the first Ctrl-C or SIGTERM
/// before it exits anyway: inside Kubernetes' default
/// `terminationGracePeriodSeconds` (30 s), after which the pod is killed.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(25);

/// The next Ctrl-C or SIGTERM.
pub(crate) async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) -> bool {
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.is_ok(),
        _ = terminated => true,
    }
}

/// Watches for Ctrl-C and SIGTERM (a pod being stopped). On the first one it
/// logs `what` ("finishing the batch in hand"), raises the returned flag and
/// wakes the returned notifier; the phase then stops at its next safe point.
/// A second signal, or [`GRACE`] without the phase having stopped, exits at
/// once with status 130: the work in hand is not checkpointed (its Kafka
/// transaction is aborted when the next run fences it) and the next run
/// redoes it.
pub(crate) fn on_interrupt(what: &'static str) -> (Arc<AtomicBool>, Arc<Notify>) {
    let flag = Arc::new(AtomicBool::new(false));
    let notify = Arc::new(Notify::new());
    let (f, n) = (flag.clone(), notify.clone());
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        if !next_signal(&mut term).await {
            return;
        }
        tracing::warn!(
            grace_s = GRACE.as_secs(),
            "interrupted: {what} (a second Ctrl-C exits at once)"
        );
        f.store(true, Ordering::SeqCst);
        n.notify_one();
        let second = tokio::select! {
            _ = next_signal(&mut term) => "a second interrupt",
            _ = tokio::time::sleep(GRACE) => "the grace period ran out",
        };
        tracing::error!(
            "{second}: exiting now; the work in hand is not checkpointed and the next run redoes it"
        );
        std::process::exit(crate::error::exit::INTERRUPTED);
    });
    (flag, notify)
}
