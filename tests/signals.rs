//! Signals on the real servers: SIGTERM stops a phase within the grace
//! period (exit 130) keeping what was acknowledged, a second Ctrl-C exits at
//! once, `--resume` converges; verify removes its spill files when stopped
//! and those a killed run left behind.

mod support;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::{assert_converged, assert_no_duplicate_events, Job, Outcome};

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Waits for `child`, at most `limit`; returns its outcome and how long it took.
fn wait(child: Child, limit: Duration) -> (Outcome, Duration) {
    let t0 = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if t0.elapsed() > limit {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (Outcome::from(waiter.join().unwrap()), t0.elapsed())
}

/// Chunks in the done list of this job's base run.
fn chunks_done(job: &Job) -> usize {
    std::fs::read_to_string(job.state_dir.join("base/base/shard-0-of-1.done.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Waits until `n` chunks are done: the copy is under way.
fn wait_for_chunks(job: &Job, n: usize) {
    let t0 = Instant::now();
    while chunks_done(job) < n {
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_base_within_the_grace_period_and_a_second_ctrl_c_at_once() {
    let job = Job::new("sig", 4_000, false).await;
    let slow = [
        "--workers",
        "2",
        "--chunk-rows",
        "3000",
        "--max-rows-per-sec",
        "150",
    ];

    // Under way, then SIGTERM: the chunks in hand finish (or the grace
    // period ends them), exit 130.
    let child = job.base_command(&slow).spawn().unwrap();
    wait_for_chunks(&job, 1);
    signal(&child, "-TERM");
    let (out, took) = wait(child, Duration::from_secs(60));
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert!(
        took <= Duration::from_secs(27),
        "stopped {took:?} after SIGTERM (grace period 25 s)"
    );

    // Another job under way, then two Ctrl-C: out at once.
    let other = Job::new("sig2", 4_000, false).await;
    let child = other.base_command(&slow).spawn().unwrap();
    wait_for_chunks(&other, 1);
    signal(&child, "-INT");
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-INT");
    let (out, took) = wait(child, Duration::from_secs(60));
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert!(
        took <= Duration::from_secs(3),
        "a second Ctrl-C exits at once, took {took:?}"
    );
    assert!(out.stderr.contains("a second interrupt"), "{}", out.stderr);

    let done = job.base(&["--workers", "2", "--resume"]);
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_converged(&job).await;
    for t in ["message", "room", "account", "room_member"] {
        assert_no_duplicate_events(&job, t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_removes_its_spill_files_when_stopped_and_those_of_a_killed_run() {
    let job = Job::new("sigv", 3_000, false).await;
    let base = job.base(&["--workers", "2"]);
    assert_eq!(base.code, 0, "{}", base.stderr);
    let spill = job.state_dir.join("verify-spill");
    std::fs::create_dir_all(&spill).unwrap();
    // A run killed with -9 left this (its process is gone).
    let stale = spill.join("falcon-verify-4000000-topic-0-0.spill");
    std::fs::write(&stale, b"left behind").unwrap();

    let mut cmd = job.migrate_command("verify", &["--kafka-memory-rows", "100"]);
    cmd.env("FALCON_FAILPOINT", "verify-read-delay-us:3000");
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    signal(&child, "-TERM");
    let (out, _) = wait(child, Duration::from_secs(60));
    assert_eq!(out.code, 130, "{}", out.stderr);
    let left: Vec<_> = std::fs::read_dir(&spill)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "spill files left: {left:?}");

    // Stopped or not, a whole run afterwards is clean and identical.
    let v = job.verify(&["--kafka-memory-rows", "100"]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&spill).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the spill dir is private");
}
