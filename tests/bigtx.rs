//! Source transactions far larger than a batch, on the real servers: a
//! 200,000-row UPDATE (killed in the middle, then resumed) and a 200,000-row
//! DELETE go through diff in parts, each part its own Kafka transaction whose
//! marker holds the transaction's start and the offset inside it; memory
//! stays bounded and the targets end equal to the source.

mod support;

use std::time::{Duration, Instant};

use support::{assert_converged, assert_no_duplicate_events, Job, Outcome};

/// Peak resident memory of a process so far (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Runs `diff --until-now` to the end, sampling its peak RSS.
fn diff_measured(job: &Job, args: &[&str]) -> (Outcome, u64) {
    let child = job.migrate_command("diff", args).spawn().unwrap();
    let pid = child.id();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(m) = peak_rss_mib(pid) {
            peak = peak.max(m);
            std::thread::sleep(Duration::from_millis(100));
        }
        peak
    });
    let out = Outcome::from(child.wait_with_output().unwrap());
    (out, sampler.join().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_update_and_delete_transactions_are_applied_in_parts() {
    let job = Job::new("bigtx", 200_000, false).await;
    let out = job.base(&["--workers", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let n: u64 = job.source_counts().await["message"];

    // One UPDATE of every message, one transaction.
    job.sql(&[
        "UPDATE message SET body = CONCAT(body, ' (edited)'), update_time = update_time + 1",
    ])
    .await;
    let mut child = job
        .migrate_command("diff", &["--until-now", "--max-batch", "5000"])
        .spawn()
        .unwrap();
    // Kill once a checkpoint lies inside the transaction.
    let cp = job.state_dir.join("diff/diff/checkpoint.json");
    let t0 = Instant::now();
    loop {
        let skip = std::fs::read_to_string(&cp)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["skip"].as_u64())
            .unwrap_or(0);
        if skip >= 20_000 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "no checkpoint inside the transaction"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let (out, peak) = diff_measured(&job, &["--until-now", "--max-batch", "5000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    eprintln!("200k-row UPDATE resumed: peak RSS {peak} MiB");
    assert!(peak < 768, "peak RSS {peak} MiB");
    assert_no_duplicate_events(&job, "message");
    assert_converged(&job).await;

    // One DELETE of every message, one transaction.
    job.sql(&["DELETE FROM message"]).await;
    let (out, peak) = diff_measured(&job, &["--until-now", "--max-batch", "5000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = out.json();
    assert_eq!(s["applied"]["message"]["hard_delete"].as_u64().unwrap(), n);
    assert!(s["kafka_transactions"].as_u64().unwrap() >= n / 5000);
    eprintln!("200k-row DELETE: peak RSS {peak} MiB");
    assert!(peak < 768, "peak RSS {peak} MiB");
    assert_converged(&job).await;
}
