//! The run's record outside the lab, on the real servers: shards on separate
//! machines (each its own state dir), a state dir lost with its pod, two
//! databases through one progress topic, shards started with other
//! parameters, an outlier key, and a commit whose reply is lost.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use support::{assert_converged, assert_no_duplicate_events, Job, Outcome};

fn run_in(job: &Job, sub: &str, state: &Path, args: &[&str]) -> Outcome {
    Outcome::from(job.migrate_command_in(sub, state, args).output().unwrap())
}

/// Committed base events per (table, key): each must be there exactly once.
fn base_event_counts(job: &Job, table: &str) -> HashMap<String, u32> {
    let mut n = HashMap::new();
    for e in job.kafka_all(table) {
        if e["source"]["phase"] == "base" {
            *n.entry(e["key"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    n
}

fn assert_base_events_once(job: &Job, counts: &HashMap<String, u64>) {
    for t in ["account", "room", "room_member", "message"] {
        let n = base_event_counts(job, t);
        let dup: Vec<_> = n.iter().filter(|(_, c)| **c > 1).take(5).collect();
        assert!(
            dup.is_empty(),
            "{t}: duplicate committed base events {dup:?}"
        );
        assert_eq!(n.len() as u64, counts[t], "{t}: base events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_on_three_machines_then_diff_from_one_converges() {
    let job = Job::new("shards3", 6_000, false).await;
    let m: Vec<_> = (0..3)
        .map(|i| job.dir.join(format!("machine-{i}")))
        .collect();
    let base = |i: usize, extra: &[&str]| {
        let shard = format!("{i}/3");
        let mut args = vec!["--shard", shard.as_str(), "--workers", "2"];
        args.extend_from_slice(extra);
        run_in(&job, "base", &m[i], &args)
    };
    let out = base(0, &["--chunk-rows", "500"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    job.churn(400.0, 1.5, 31).await;

    // Diff from machine 0 while shards 1 and 2 never ran: refused, named.
    let d = run_in(&job, "diff", &m[0], &["--until-now"]);
    assert_eq!(d.code, 2, "{}", d.stderr);
    assert!(
        d.stderr.contains("1/3") && d.stderr.contains("2/3"),
        "{}",
        d.stderr
    );

    // A shard started with another chunk size is refused before it writes.
    let other = base(1, &["--chunk-rows", "800"]);
    assert_eq!(other.code, 2, "{}", other.stderr);
    assert!(
        other.stderr.contains("--chunk-rows 500"),
        "{}",
        other.stderr
    );

    let out = base(1, &["--chunk-rows", "500"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    job.churn(400.0, 1.5, 32).await;
    let out = base(2, &["--chunk-rows", "500"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    job.churn(400.0, 1.5, 33).await;

    // The three shards' summaries add up to the source as their starts saw it:
    // every chunk was copied by exactly one of them.
    let d = run_in(&job, "diff", &m[0], &["--until-now"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_converged(&job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_lost_after_base_copies_nothing_twice() {
    let job = Job::new("lostdir", 8_000, false).await;
    let counts = job.source_counts().await;
    let out = job.base(&["--workers", "2", "--chunk-rows", "1000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_base_events_once(&job, &counts);

    std::fs::remove_dir_all(&job.state_dir).unwrap();
    let again = job.base(&["--workers", "3", "--chunk-rows", "1000"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("continuing from its record in Kafka"),
        "{}",
        again.stderr
    );
    let s = again.json();
    assert_eq!(s["resumed"], true);
    // Everything was already committed: the summary counts it, nothing is sent again.
    let read: u64 = s["rows_read"].as_u64().unwrap();
    assert_eq!(read, counts.values().sum::<u64>());
    assert_base_events_once(&job, &counts);

    // The diff after it finds the start in Kafka, without the lost state.
    let d = job.diff(&["--until-now"]);
    assert_eq!(d.code, 0, "{}", d.stderr);

    // A position where no event starts is refused, not read from.
    let to = &d.json()["to"];
    let bad = format!(
        "{}:{}",
        to["file"].as_str().unwrap(),
        to["offset"].as_u64().unwrap() - 3
    );
    let d = job.diff(&["--until-now", "--from", &bad]);
    assert_eq!(d.code, 4, "{}", d.stderr);
    assert!(d.stderr.contains("no binlog event starts"), "{}", d.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_of_the_same_shard_fences_the_first_which_stops() {
    let job = Job::new("fence", 20_000, false).await;
    let counts = job.source_counts().await;
    let first = job
        .base_command(&[
            "--workers",
            "2",
            "--chunk-rows",
            "1000",
            "--max-rows-per-sec",
            "3000",
        ])
        .spawn()
        .unwrap();
    let done = job.state_dir.join("base/base/shard-0-of-1.done.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&done).map_or(0, |s| s.lines().count()) < 3 {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the first process made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The same run and shard on another machine (its own state dir).
    let other = job.dir.join("machine-2");
    let second = run_in(
        &job,
        "base",
        &other,
        &["--workers", "2", "--chunk-rows", "1000"],
    );
    let first = Outcome::from(first.wait_with_output().unwrap());
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        first.code, 4,
        "the fenced process must stop: {}",
        first.stderr
    );
    assert!(
        first.stderr.contains("another process took over"),
        "{}",
        first.stderr
    );
    assert_base_events_once(&job, &counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_through_one_progress_topic_with_default_run_ids() {
    let a = Job::new("twodb_a", 4_000, false).await;
    let b = Job::new("twodb_b", 4_000, false).await;
    // Both jobs use the first job's progress topic (the default run ids too).
    b.share_progress_topic_of(&a);
    let (ca, cb) = (a.source_counts().await, b.source_counts().await);
    let pa = a
        .base_command(&["--workers", "2", "--chunk-rows", "500"])
        .spawn()
        .unwrap();
    let ob = b.base(&["--workers", "2", "--chunk-rows", "500"]);
    let oa = Outcome::from(pa.wait_with_output().unwrap());
    assert_eq!(oa.code, 0, "{}", oa.stderr);
    assert_eq!(ob.code, 0, "{}", ob.stderr);
    assert_base_events_once(&a, &ca);
    assert_base_events_once(&b, &cb);
    a.churn(300.0, 1.0, 41).await;
    b.churn(300.0, 1.0, 42).await;
    for j in [&a, &b] {
        let d = j.diff(&["--until-now"]);
        assert_eq!(d.code, 0, "{}", d.stderr);
        assert_converged(j).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outlier_key_costs_one_chunk_not_millions() {
    let job = Job::new("outlier", 50_000, false).await;
    let t0 = Instant::now();
    let plain = job.base(&["--dry-run", "--chunk-rows", "20000"]);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let before = plain.json()["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "message")
        .unwrap()["chunks"]
        .as_u64()
        .unwrap();
    job.sql(&[
        "INSERT INTO message (message_id, room_id, account_id, body, send_time, update_time, deleted) \
         SELECT 4294967295, room_id, account_id, 'hand-fixed legacy row', send_time, 0, 0 FROM message LIMIT 1",
    ])
    .await;
    let counts = job.source_counts().await;
    let out = job.base(&["--workers", "2", "--chunk-rows", "20000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = out.json();
    let m = s["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "message")
        .unwrap()
        .clone();
    assert_eq!(m["rows_read"].as_u64().unwrap(), counts["message"]);
    assert!(
        m["chunks"].as_u64().unwrap() <= before + 1,
        "{} chunks for {} before the outlier",
        m["chunks"],
        before
    );
    let bodies = job.hbase_message_bodies();
    assert_eq!(
        bodies.get(&4_294_967_295).map(Vec::as_slice),
        Some(&b"hand-fixed legacy row"[..])
    );
    eprintln!("outlier base: {:.1}s", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_reply_is_lost_is_resolved_without_duplicates() {
    let job = Job::new("commitlost", 5_000, false).await;
    let counts = job.source_counts().await;
    // The third commit succeeds on the broker and is then reported as lost:
    // the committer must find its marker instead of copying the chunk again.
    let out = Outcome::from(
        job.base_command(&["--workers", "1", "--chunk-rows", "1000"])
            .env("FALCON_FAILPOINT", "commit-lost:3")
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("commit had gone through"),
        "{}",
        out.stderr
    );
    assert_base_events_once(&job, &counts);

    // The same in diff: a batch whose commit reply is lost is not sent twice.
    job.churn(300.0, 1.0, 51).await;
    let d = Outcome::from(
        job.migrate_command("diff", &["--until-now", "--max-batch", "50"])
            .env("FALCON_FAILPOINT", "commit-lost:2")
            .output()
            .unwrap(),
    );
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_no_duplicate_events(&job, "message");
    assert_converged(&job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_another_server_is_found_again_by_its_gtid() {
    let job = Job::new("gtid", 2_000, false).await;
    let out = job.base(&["--workers", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    job.churn(200.0, 1.0, 81).await;
    let d = job.diff(&["--until-now"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    let cp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(job.state_dir.join("diff/diff/checkpoint.json")).unwrap(),
    )
    .unwrap();
    let gtid = cp["position"]["gtid"].as_str().unwrap().to_string();
    assert!(gtid.contains('-'), "a GTID with the checkpoint: {cp}");
    // The state the reader followed through the stream is the server's own
    // at that position.
    assert_eq!(gtid, server_gtid_at(&job, &cp["position"]).await, "{cp}");
    job.churn(200.0, 1.0, 82).await;

    // Another diff run whose checkpoint names a position of another server
    // (a binlog file this one never had) with the GTID state it had reached.
    let other = job.state_dir.join("diff/other/checkpoint.json");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    let mut moved = cp.clone();
    moved["run"] = "other".into();
    moved["position"]["file"] = "mariadb-bin.999999".into();
    moved["position"]["offset"] = 12345.into();
    std::fs::write(&other, serde_json::to_vec(&moved).unwrap()).unwrap();
    let b = job.diff(&["--until-now", "--run-id", "other"]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert!(b.stderr.contains("resuming from its GTID"), "{}", b.stderr);
    // It applies exactly what the original run applies from its checkpoint.
    let a = job.diff(&["--until-now"]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    let (a, b) = (a.json(), b.json());
    assert!(a["applied_total"].as_u64().unwrap() > 0, "{a}");
    assert_eq!(b["applied_total"], a["applied_total"], "{b}\n{a}");
    assert_eq!(b["events_read"], a["events_read"]);
    assert_eq!(b["to"]["offset"], a["to"]["offset"]);
    assert_eq!(a["to"]["gtid"], b["to"]["gtid"]);
    let to_gtid = a["to"]["gtid"].as_str().unwrap();
    assert_ne!(to_gtid, gtid, "the churn's transactions moved the state");
    assert_eq!(to_gtid, server_gtid_at(&job, &a["to"]).await, "{a}");
}

/// `BINLOG_GTID_POS` of a position (`{"file", "offset"}`).
async fn server_gtid_at(job: &Job, p: &serde_json::Value) -> String {
    sqlx::query_scalar::<_, String>("SELECT CAST(BINLOG_GTID_POS(?, ?) AS CHAR)")
        .bind(p["file"].as_str().unwrap())
        .bind(p["offset"].as_u64().unwrap())
        .fetch_one(&job.pool().await)
        .await
        .unwrap()
}
