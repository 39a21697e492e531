//! Server restarts in the middle of a phase, on the real servers: a server is
//! killed (SIGKILL) through `scripts/stack.sh kill` while base or verify runs,
//! and started again with `scripts/stack.sh start`. The same process must
//! finish as an undisturbed run would; with a short retry budget it exits 4,
//! and `--resume` then finishes at once. Every server stopped here is started
//! again by a guard, even when the test fails, so the stack is left up.
//!
//! Each of MariaDB, Kafka, the Thrift gateway and HBase itself is restarted
//! during base, during verify and during `diff --follow` (the binlog stream
//! is reopened from the last transaction boundary); after a MariaDB crash
//! with no write since, `diff --until-now` finishes. A diff killed between a
//! batch's HBase writes and its Kafka commit, while the previous batch's
//! commit was under way, resumes exactly.
//!
//! These tests stop servers that every other test uses: run them alone, one
//! at a time (`--test-threads=1`), holding the stack's lock.

mod support;

use std::collections::HashSet;
use std::io::Read;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::{assert_converged, Job, Outcome};

const TABLES: [&str; 4] = ["account", "room", "room_member", "message"];

/// `scripts/stack.sh VERB SERVER`, panicking when it fails.
fn stack(verb: &str, server: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack.sh");
    let t0 = Instant::now();
    let out = Command::new(script)
        .args([verb, server])
        .output()
        .expect("run scripts/stack.sh");
    assert!(
        out.status.success(),
        "stack.sh {verb} {server}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("stack.sh {verb} {server}: {:.1?}", t0.elapsed());
}

/// A server killed by this test; dropping the guard starts it again (also
/// when the test panics), so the stack is always left up.
struct Down {
    server: &'static str,
    up: bool,
}

impl Down {
    fn kill(server: &'static str) -> Down {
        stack("kill", server);
        Down { server, up: false }
    }

    fn start(&mut self) {
        if !self.up {
            stack("start", self.server);
            self.up = true;
        }
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        if !self.up {
            self.up = true;
            stack("start", self.server);
        }
    }
}

/// A running migrate process, its output drained from the start (a process
/// logging a server's outage must not block on a full pipe); killed if the
/// test fails before it ends.
struct Running {
    child: Option<Child>,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        r.read_to_string(&mut s).ok();
        s
    })
}

impl Running {
    fn spawn(mut c: Command) -> Running {
        let mut child = c.spawn().expect("spawn falcon-migrate");
        Running {
            stdout: Some(drain(child.stdout.take().unwrap())),
            stderr: Some(drain(child.stderr.take().unwrap())),
            child: Some(child),
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_some())
    }

    /// Waits for the end (at most `limit`), with its output.
    fn finish(&mut self, limit: Duration) -> Outcome {
        let mut child = self.child.take().expect("a running process");
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > limit {
                child.kill().ok();
                let _ = child.wait();
                panic!(
                    "still running after {limit:?}; stderr:\n{}",
                    self.stderr.take().unwrap().join().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            c.kill().ok();
            let _ = c.wait();
        }
    }
}

/// Chunks in the done list of this job's base run.
fn chunks_done(job: &Job) -> usize {
    std::fs::read_to_string(job.state_dir.join("base/base/shard-0-of-1.done.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Waits until `n` chunks are done (the copy is under way), asserting the
/// process is still running then.
fn wait_for_chunks(job: &Job, run: &mut Running, n: usize) {
    let t0 = Instant::now();
    while chunks_done(job) < n {
        assert!(!run.exited(), "base ended before {n} chunks were done");
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!run.exited(), "base ended before the fault");
}

/// What an undisturbed run leaves: the summary's counts equal the source,
/// every table's committed events are exactly one per source row and key,
/// HBase holds every row; then diff (nothing changed) and full convergence.
async fn assert_exact(job: &Job, summary: &serde_json::Value, diff: bool) {
    let source = job.source_counts().await;
    let mut total = 0;
    for t in summary["tables"].as_array().unwrap() {
        let name = t["table"].as_str().unwrap();
        assert_eq!(t["rows_read"].as_u64(), Some(source[name]), "{name} read");
        assert_eq!(
            t["written"]["kafka"].as_u64(),
            Some(source[name]),
            "{name} kafka"
        );
        assert_eq!(
            t["written"]["hbase"].as_u64(),
            Some(source[name]),
            "{name} hbase"
        );
        total += 1;
    }
    assert_eq!(total, TABLES.len());
    for name in TABLES {
        let events = job.kafka_all(name);
        let keys: HashSet<String> = events
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            events.len() as u64,
            source[name],
            "committed events of {name}"
        );
        assert_eq!(keys.len() as u64, source[name], "distinct keys of {name}");
        assert!(events.iter().all(|e| e["source"]["phase"] == "base"));
        assert_eq!(
            job.hbase_rows(name).len() as u64,
            source[name],
            "HBase rows of {name}"
        );
    }
    if diff {
        let d = job.diff(&["--until-now"]);
        assert_eq!(d.code, 0, "diff after base: {}", d.stderr);
    }
    assert_converged(job).await;
}

const BASE_ARGS: [&str; 6] = [
    "--workers",
    "2",
    "--chunk-rows",
    "1000",
    "--max-rows-per-sec",
    "2500",
];

/// Base with `server` killed after a few chunks, started again `down` later:
/// the same process finishes with exit 0 and the exact targets.
///
/// `seen` is what the run's log says of the outage. `diff`: a `diff
/// --until-now` (nothing changed) runs before the final comparison.
async fn base_rides_out(
    name: &str,
    server: &'static str,
    down: Duration,
    seen: Option<&str>,
    diff: bool,
) {
    let job = Job::new(name, 15_000, false).await;
    let t0 = Instant::now();
    let mut run = Running::spawn(job.base_command(&BASE_ARGS));
    wait_for_chunks(&job, &mut run, 4);
    let mut guard = Down::kill(server);
    std::thread::sleep(down);
    assert!(!run.exited(), "base ended while {server} was down");
    guard.start();
    let out = run.finish(Duration::from_secs(240));
    assert_eq!(out.code, 0, "base after a {server} restart: {}", out.stderr);
    if let Some(seen) = seen {
        assert!(
            out.stderr.contains(seen),
            "the fault was not seen ({seen}): {}",
            out.stderr
        );
    }
    eprintln!("base with {server} restarted: {:.1?}", t0.elapsed());
    assert_exact(&job, &out.json(), diff).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_survives_a_thrift_gateway_restart() {
    base_rides_out(
        "f_thrift",
        "thrift",
        Duration::from_secs(10),
        Some("retrying"),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_survives_a_kafka_restart() {
    // librdkafka rides out the outage inside the transaction: no retry needed.
    base_rides_out(
        "f_kafka",
        "kafka",
        Duration::from_secs(5),
        Some("brokers are down"),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_survives_a_mariadb_restart() {
    // Down longer than the pool's acquire timeout (10 s), so that the
    // chunk's read fails and is retried (a shorter outage is waited out by
    // the pool itself).
    base_rides_out(
        "f_mariadb",
        "mariadb",
        Duration::from_secs(15),
        Some("retrying"),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_survives_an_hbase_restart() {
    // HBase itself (master, region server and ZooKeeper of the standalone
    // server) killed and started again: the gateway's own client holds the
    // calls until the regions are open again (seen here: the copy stalls for
    // the ~30 s of the restart and no call fails), so nothing is retried.
    base_rides_out("f_hbase", "hbase", Duration::from_secs(3), None, true).await;
}

/// The gateway stays down past a short retry budget: exit 4 naming it, the
/// acknowledged chunks kept; once it is back, `--resume` finishes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_out_of_retry_budget_exits_4_then_resume_converges() {
    let job = Job::new("f_budget", 15_000, false).await;
    let mut args = BASE_ARGS.to_vec();
    args.extend(["--retry-budget", "5"]);
    let mut run = Running::spawn(job.base_command(&args));
    wait_for_chunks(&job, &mut run, 4);
    let mut guard = Down::kill("thrift");
    let out = run.finish(Duration::from_secs(60));
    let kept = chunks_done(&job);
    guard.start();
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("retry budget") && out.stderr.contains("127.0.0.1:9090"),
        "the cause is named: {}",
        out.stderr
    );
    assert!(kept >= 4, "acknowledged chunks kept: {kept}");
    let t0 = Instant::now();
    let resumed = job.base(&["--resume", "--workers", "2", "--chunk-rows", "1000"]);
    let took = t0.elapsed();
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(took < Duration::from_secs(60), "resume took {took:?}");
    eprintln!("resume after exit 4: {took:.1?}");
    // The resumed run's summary counts only what it copied; the totals are
    // checked against the targets themselves.
    let source = job.source_counts().await;
    for name in TABLES {
        let events = job.kafka_all(name);
        let keys: HashSet<String> = events
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(events.len() as u64, source[name], "events of {name}");
        assert_eq!(keys.len() as u64, source[name], "keys of {name}");
        assert_eq!(job.hbase_rows(name).len() as u64, source[name]);
    }
    let d = job.diff(&["--until-now"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_converged(&job).await;
}

/// Verify with `server` killed during its passes (slowed by a failpoint so
/// that the fault lands inside them) and started again: exit 0, identical.
async fn verify_rides_out(name: &str, server: &'static str, down: Duration) {
    let job = Job::new(name, 8_000, false).await;
    let b = job.base(&["--workers", "2"]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    let t0 = Instant::now();
    let mut c = job.migrate_command("verify", &["--target", "all", "--workers", "2"]);
    c.env("FALCON_FAILPOINT", "verify-read-delay-us:1000");
    let mut run = Running::spawn(c);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!run.exited(), "verify ended before the fault");
    let mut guard = Down::kill(server);
    std::thread::sleep(down);
    assert!(!run.exited(), "verify ended while {server} was down");
    guard.start();
    let out = run.finish(Duration::from_secs(240));
    eprintln!("verify with {server} restarted: {:.1?}", t0.elapsed());
    assert_eq!(
        out.code, 0,
        "verify after a {server} restart: {}",
        out.stderr
    );
    let v = out.json();
    assert_eq!(v["identical"], true, "{v}");
    let source: u64 = job.source_counts().await.values().sum();
    assert_eq!(v["targets"]["hbase"]["target_rows"].as_u64(), Some(source));
    assert_eq!(v["targets"]["kafka"]["target_rows"].as_u64(), Some(source));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_survives_a_thrift_gateway_restart() {
    verify_rides_out("f_vthrift", "thrift", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_survives_a_kafka_restart() {
    verify_rides_out("f_vkafka", "kafka", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_survives_an_hbase_restart() {
    verify_rides_out("f_vhbase", "hbase", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_survives_a_mariadb_restart() {
    verify_rides_out("f_vmariadb", "mariadb", Duration::from_secs(3)).await;
}

/// Waits until the running diff has committed a checkpoint at or past the
/// source's binlog position now.
async fn wait_caught_up(job: &Job) {
    let pool = job.pool().await;
    let row: (String, u64, String, String) = sqlx::query_as("SHOW MASTER STATUS")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (file, pos) = (row.0, row.1);
    pool.close().await;
    let cp = job.state_dir.join("diff/diff/checkpoint.json");
    let t0 = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(&cp) {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            let f = v["position"]["file"].as_str().unwrap_or("").to_string();
            let o = v["position"]["offset"].as_u64().unwrap_or(0);
            if (f.as_str(), o) >= (file.as_str(), pos) {
                return;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "diff --follow did not catch up to {file}:{pos}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_follow_rides_out_mariadb_kafka_thrift_and_hbase_restarts() {
    let job = Job::new("f_follow", 5_000, false).await;
    let out = job.base(&["--workers", "2", "--chunk-rows", "1000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut follow =
        Running::spawn(job.migrate_command("diff", &["--follow", "--max-batch", "200"]));
    job.churn(300.0, 2.0, 61).await;
    wait_caught_up(&job).await;

    // MariaDB killed under the open binlog stream, then started again.
    {
        let mut down = Down::kill("mariadb");
        tokio::time::sleep(Duration::from_secs(3)).await;
        down.start();
    }
    job.churn(300.0, 2.0, 62).await;
    wait_caught_up(&job).await;

    // Kafka killed, then changes made: their batches wait and are retried
    // until Kafka is started again.
    {
        let mut down = Down::kill("kafka");
        job.churn(300.0, 1.0, 63).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        down.start();
    }
    wait_caught_up(&job).await;

    // The Thrift gateway, then HBase itself, killed while changes arrive:
    // the batches are retried until they are back.
    for server in ["thrift", "hbase"] {
        let mut down = Down::kill(server);
        job.churn(300.0, 1.0, 64).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        down.start();
        drop(down);
        wait_caught_up(&job).await;
    }
    assert!(!follow.exited(), "diff --follow stopped");

    if let Some(c) = follow.child.as_ref() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    let f = follow.finish(Duration::from_secs(60));
    assert_eq!(
        f.code, 0,
        "diff --follow survived the four restarts: {}",
        f.stderr
    );
    assert!(f.stderr.contains("binlog stream reopened"), "{}", f.stderr);
    // Nothing is left for another run: the follow applied every change.
    let d = job.diff(&["--until-now"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_eq!(d.json()["applied_total"], 0, "{}", d.stdout);
    support::assert_no_duplicate_events(&job, "message");
    assert_converged(&job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_with_no_writes_since_diff_until_now_finishes() {
    let job = Job::new("f_crash", 2_000, false).await;
    let out = job.base(&["--workers", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    job.churn(200.0, 1.0, 71).await;
    let d = job.diff(&["--until-now"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    // The crash closes the binlog file the checkpoint points into without a
    // rotate event; the server starts a new file and nobody writes to it.
    {
        let mut down = Down::kill("mariadb");
        tokio::time::sleep(Duration::from_secs(2)).await;
        down.start();
    }
    let mut d = Running::spawn(job.migrate_command("diff", &["--until-now"]));
    let d = d.finish(Duration::from_secs(90));
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_converged(&job).await;
}

/// `diff` writes a batch's HBase rows while the previous batch's Kafka
/// transaction commits. Killed (SIGKILL) at that point — the batch's HBase
/// writes acknowledged, the previous commit under way or just done, the
/// batch's own events not yet sent — twice, the rerun converges exactly: the
/// targets equal the source, and each churn change is one committed event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_killed_between_overlapped_hbase_writes_and_kafka_commit_resumes_exactly() {
    let job = Job::new("f_overlap", 3_000, false).await;
    let out = job.base(&["--workers", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = job.churn(1000.0, 4.0, 81).await;
    assert!(report.changes > 2000, "{report:?}");
    let cp = job.state_dir.join("diff/diff/checkpoint.json");
    let mut positions = Vec::new();
    for at in ["kill-after:overlap:3", "kill-after:overlap:6"] {
        let killed = Outcome::from(
            job.migrate_command("diff", &["--until-now", "--max-batch", "50"])
                .env("FALCON_FAILPOINT", at)
                .output()
                .unwrap(),
        );
        assert_ne!(killed.code, 0, "{at}: not killed: {}", killed.stderr);
        assert!(
            killed.stderr.contains("failpoint: killed at overlap"),
            "{at}: {}",
            killed.stderr
        );
        positions.push(std::fs::read_to_string(&cp).unwrap_or_default());
    }
    // The second run resumed past the first one's checkpoint.
    assert_ne!(positions[0], positions[1], "no progress between the kills");
    let d = job.diff(&["--until-now", "--max-batch", "50"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(
        d.json()["applied_total"].as_u64().unwrap() > 0,
        "the rerun resumed mid-way: {}",
        d.stdout
    );
    assert_converged(&job).await;
    let n = support::assert_no_duplicate_events(&job, "message");
    assert_eq!(n as u64, report.changes, "message events of the churn");
    assert_eq!(
        support::diff_events(&job, "room").len() as u64,
        report.inserts,
        "room events (one per insert transaction)"
    );
}
