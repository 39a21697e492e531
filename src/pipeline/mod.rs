//! The phases that write: `base` (bulk copy), `diff` (binlog) and
//! `watermark` (keyset diff), all through one write path: [`commit`] (the
//! exactly-once sequence and its retry policy), with their run state in
//! Kafka ([`runlog`]) and a local cache of it (`crate::checkpoint`).

pub mod base;
pub mod commit;
pub mod diff;
pub mod lane;
pub mod retry;
pub mod runlog;
pub mod stage;
pub mod watermark;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Watches for Ctrl-C and SIGTERM (a pod being stopped). On the first one it
/// logs `what` ("finishing the batch in hand"), raises the returned flag and
/// wakes the returned notifier; the phase then stops at its next safe point.
pub(crate) fn on_interrupt(what: &'static str) -> (Arc<AtomicBool>, Arc<Notify>) {
    let flag = Arc::new(AtomicBool::new(false));
    let notify = Arc::new(Notify::new());
    let (f, n) = (flag.clone(), notify.clone());
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => if r.is_err() { return },
            _ = terminated => {}
        }
        tracing::warn!("interrupted: {what}");
        f.store(true, Ordering::SeqCst);
        n.notify_one();
    });
    (flag, notify)
}
