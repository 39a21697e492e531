//! The phases that write: `base` (bulk copy), `diff` (binlog) and
//! `watermark` (keyset diff), all through one write path: [`commit`] (the
//! exactly-once sequence and its retry policy), with their run state in
//! Kafka ([`runlog`]) and a local cache of it (`crate::checkpoint`).

pub mod base;
pub mod clock;
pub mod commit;
pub mod diff;
pub(crate) mod failpoint;
pub mod lane;
pub mod retry;
pub mod runlog;
pub mod stage;
pub mod watermark;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// How long a phase may take to stop after the first Ctrl-C or SIGTERM
/// before it exits anyway: inside Kubernetes' default
/// `terminationGracePeriodSeconds` (30 s), after which the pod is killed.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(25);

/// Ctrl-C and SIGTERM, listened to for the whole process: a signal that
/// arrives while nothing awaits it is kept for the next [`Signals::next`]
/// (a fresh `ctrl_c()` per wait would drop it, and the process would go on).
pub(crate) struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub(crate) fn listen() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    /// The next Ctrl-C or SIGTERM; false when neither can be listened to.
    pub(crate) async fn next(&mut self) -> bool {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) -> bool {
            match s.as_mut() {
                Some(s) => s.recv().await.is_some(),
                None => std::future::pending().await,
            }
        }
        if self.int.is_none() && self.term.is_none() {
            return false;
        }
        tokio::select! {
            r = one(&mut self.int) => r,
            r = one(&mut self.term) => r,
        }
    }
}

/// The process's interrupt state: raised by the first Ctrl-C or SIGTERM.
struct Interrupts {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
    /// What the phase does on the first signal; None while it has not yet
    /// reached work it can finish (set-up): a signal then exits at once.
    what: std::sync::Mutex<Option<&'static str>>,
}

static INTERRUPTS: std::sync::OnceLock<Interrupts> = std::sync::OnceLock::new();

/// Takes over Ctrl-C and SIGTERM for the whole run: call it first thing in a
/// phase that writes. Before the phase reaches [`on_interrupt`] (set-up,
/// nothing written yet) a signal exits 130 at once. After it, the first
/// signal lets the phase finish the work in hand; a second one, or [`GRACE`]
/// without the phase having stopped, exits 130 at once: the work in hand is
/// not checkpointed (its Kafka transaction is aborted when the next run
/// fences it) and the next run redoes it.
pub(crate) fn install_interrupts() {
    let mut first = false;
    let st = INTERRUPTS.get_or_init(|| {
        first = true;
        Interrupts {
            flag: Arc::new(AtomicBool::new(false)),
            notify: Arc::new(Notify::new()),
            what: std::sync::Mutex::new(None),
        }
    });
    if !first {
        return;
    }
    let (f, n) = (st.flag.clone(), st.notify.clone());
    // Listening starts here, before the task runs: a signal from now on is
    // never lost to the gap before the task's first wait.
    let mut signals = Signals::listen();
    tokio::spawn(async move {
        if !signals.next().await {
            return;
        }
        let what = INTERRUPTS
            .get()
            .and_then(|s| s.what.lock().ok().and_then(|w| *w));
        let Some(what) = what else {
            tracing::warn!("interrupted during set-up: nothing was written; exiting");
            std::process::exit(crate::error::exit::INTERRUPTED);
        };
        tracing::warn!(
            grace_s = GRACE.as_secs(),
            "interrupted: {what} (a second Ctrl-C exits at once)"
        );
        f.store(true, Ordering::SeqCst);
        n.notify_one();
        let second = tokio::select! {
            _ = signals.next() => "a second interrupt",
            _ = tokio::time::sleep(GRACE) => "the grace period ran out",
        };
        tracing::error!(
            "{second}: exiting now; the work in hand is not checkpointed and the next run redoes it"
        );
        std::process::exit(crate::error::exit::INTERRUPTED);
    });
}

/// The phase has reached work it can finish on a signal: from now on the
/// first Ctrl-C or SIGTERM logs `what` ("finishing the batch in hand"),
/// raises the returned flag and wakes the returned notifier, and the phase
/// stops at its next safe point (see [`install_interrupts`]).
pub(crate) fn on_interrupt(what: &'static str) -> (Arc<AtomicBool>, Arc<Notify>) {
    install_interrupts();
    let st = INTERRUPTS.get().expect("installed");
    if let Ok(mut w) = st.what.lock() {
        *w = Some(what);
    }
    (st.flag.clone(), st.notify.clone())
}
