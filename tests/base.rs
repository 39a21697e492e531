//! `falcon-migrate base` against the real servers: counts, bytes, dead
//! letters, kill -9 and resume, shards. Each test works in its own database,
//! topics and HBase tables, so they cannot see each other's rows.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Job, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_copy_matches_the_source_in_counts_and_bytes() {
    let job = Job::new("clean", 20_000, false).await;
    let out = job.base(&["--workers", "3", "--chunk-rows", "3000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    let source = job.source_counts().await;
    for t in summary["tables"].as_array().unwrap() {
        let name = t["table"].as_str().unwrap();
        assert_eq!(
            t["rows_read"].as_u64().unwrap(),
            source[name],
            "{name} read"
        );
        assert_eq!(
            t["written"]["kafka"].as_u64().unwrap(),
            source[name],
            "{name} kafka"
        );
        assert_eq!(
            t["written"]["hbase"].as_u64().unwrap(),
            source[name],
            "{name} hbase"
        );
        assert_eq!(t["dead_lettered"].as_u64().unwrap(), 0);
    }
    // Independent counts from the targets themselves.
    for (name, n) in &source {
        assert_eq!(
            job.hbase_rows(name).len() as u64,
            *n,
            "HBase rows of {name}"
        );
        let events = job.kafka_events(name);
        assert_eq!(events.len() as u64, *n, "committed events of {name}");
        let distinct: std::collections::HashSet<&String> = events.keys().collect();
        assert_eq!(distinct.len() as u64, *n, "distinct event keys of {name}");
    }
    // Byte-for-byte: every message body in HBase and Kafka equals the source.
    let bodies = job.source_bodies().await;
    let hbase = job.hbase_message_bodies();
    let events = job.kafka_events("message");
    assert_eq!(hbase.len(), bodies.len());
    let mut multibyte = 0;
    for (id, body) in &bodies {
        assert_eq!(hbase.get(id), Some(body), "HBase body of message {id}");
        let ev = &events[&id.to_string()];
        assert_eq!(
            ev["data"]["body"]
                .as_str()
                .map(|s| s.as_bytes().to_vec())
                .as_ref(),
            Some(body),
            "event body of {id}"
        );
        if std::str::from_utf8(body)
            .unwrap()
            .chars()
            .any(|c| c.len_utf8() == 4)
        {
            multibyte += 1;
        }
    }
    assert!(multibyte > 100, "only {multibyte} bodies with emoji");
    // The summary names where the run started.
    assert_eq!(summary["start_position"]["kind"], "binlog");
    // A rerun of a finished run without --resume is refused, with --resume it copies nothing.
    let again = job.base(&[]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("--resume"), "{}", again.stderr);
    let resumed = job.base(&["--resume"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(
        job.kafka_events("message").len() as u64,
        source["message"],
        "no duplicates after a no-op resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_rows_are_dead_lettered_with_their_reason_and_reconcile() {
    let job = Job::new("dirty", 30_000, true).await;
    let dirty = job.generated["dirty"].clone();
    let out = job.base(&["--workers", "2"]);
    assert_eq!(
        out.code, 3,
        "exit 3 when rows were dead-lettered: {}",
        out.stderr
    );
    let s = out.json();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let dead_file = s["dead_letter_file"].as_str().unwrap().to_string();
    let lines = std::fs::read_to_string(&dead_file).unwrap();
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["key"].as_str().is_some_and(|k| !k.is_empty()));
        *reasons
            .entry(format!(
                "{}/{}",
                v["table"].as_str().unwrap(),
                v["reason"].as_str().unwrap()
            ))
            .or_default() += 1;
    }
    let n = |k: &str| dirty[k].as_u64().unwrap();
    let expected: BTreeMap<String, u64> = [
        ("account/zero_date", n("zero_dates")),
        ("room/invalid_utf8", n("invalid_utf8")),
        ("message/mojibake", n("mojibake")),
        ("message/orphan_room", n("orphan_messages")),
        ("room_member/orphan_room", n("orphan_members")),
        ("message/null_value", n("null_bodies") + n("null_accounts")),
        ("message/oversized_event", n("oversized_bodies")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(reasons, expected);
    let source = job.source_counts().await;
    for t in s["tables"].as_array().unwrap() {
        let name = t["table"].as_str().unwrap();
        let (read, dead) = (
            t["rows_read"].as_u64().unwrap(),
            t["dead_lettered"].as_u64().unwrap(),
        );
        assert_eq!(read, source[name]);
        assert_eq!(
            t["written"]["kafka"].as_u64().unwrap() + dead,
            read,
            "{name}: read = written + dead-lettered"
        );
        assert_eq!(t["written"]["hbase"].as_u64().unwrap() + dead, read);
        assert_eq!(
            job.hbase_rows(name).len() as u64 + dead,
            read,
            "{name} rows in HBase"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_resume_converges_without_duplicates() {
    let job = Job::new("resume", 40_000, false).await;
    let plan = job.base(&["--dry-run", "--chunk-rows", "1000"]).json();
    let total_chunks: u64 = plan["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["chunks"].as_u64().unwrap())
        .sum();
    let mut child = job
        .base_command(&[
            "--workers",
            "2",
            "--chunk-rows",
            "1000",
            "--max-rows-per-sec",
            "8000",
        ])
        .spawn()
        .unwrap();
    // Kill once some chunks are checkpointed and others are in flight.
    let done = job.state_dir.join("base/base/shard-0-of-1.done.jsonl");
    let t0 = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&done)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 8 || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the copy finished before it could be killed"
    );
    let partial = std::fs::read_to_string(&done).unwrap().lines().count();
    assert!(
        (partial as u64) < total_chunks,
        "killed too late: {partial} of {total_chunks} chunks done"
    );

    let out = job.base(&["--resume", "--workers", "3", "--chunk-rows", "1000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = out.json();
    assert_eq!(s["resumed"], true);
    let source = job.source_counts().await;
    for (name, n) in &source {
        let events = job.kafka_events(name);
        assert_eq!(
            events.len() as u64,
            *n,
            "committed events of {name} after resume"
        );
        assert_eq!(
            job.kafka_event_count(name),
            *n,
            "no duplicate committed events of {name}"
        );
    }
    // HBase holds exactly what an uninterrupted run writes: every row, cell and timestamp.
    let expected = job.expected_hbase().await;
    let actual = job.hbase_snapshot().await;
    assert_eq!(actual.len(), expected.len());
    for (k, v) in &expected {
        assert_eq!(actual.get(k), Some(v), "HBase row {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_copy_each_row_exactly_once() {
    let job = Job::new("shards", 30_000, false).await;
    let children: Vec<_> = (0..3)
        .map(|i| {
            job.base_command(&[
                "--shard",
                &format!("{i}/3"),
                "--workers",
                "1",
                "--chunk-rows",
                "2000",
            ])
            .spawn()
            .unwrap()
        })
        .collect();
    let mut read: HashMap<String, u64> = HashMap::new();
    for c in children {
        let out = Outcome::from(c.wait_with_output().unwrap());
        assert_eq!(out.code, 0, "{}", out.stderr);
        for t in out.json()["tables"].as_array().unwrap() {
            *read
                .entry(t["table"].as_str().unwrap().to_string())
                .or_default() += t["rows_read"].as_u64().unwrap();
        }
    }
    let source = job.source_counts().await;
    for (name, n) in &source {
        assert_eq!(read[name], *n, "rows read by the three shards of {name}");
        assert_eq!(
            job.kafka_event_count(name),
            *n,
            "committed events of {name}"
        );
        assert_eq!(
            job.kafka_events(name).len() as u64,
            *n,
            "distinct keys of {name}"
        );
        assert_eq!(
            job.hbase_rows(name).len() as u64,
            *n,
            "HBase rows of {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_a_clear_error_and_exit_2() {
    let job = Job::new("badinput", 100, false).await;
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_falcon-migrate"));
        c.args(args)
            .env("FALCON_MYSQL_PASSWORD", "falcon")
            .env_remove("FALCON_MYSQL_URL")
            .env_remove("FALCON_KAFKA_BROKERS")
            .env_remove("FALCON_HBASE_THRIFT");
        for (k, v) in env {
            c.env(k, v);
        }
        Outcome::from(c.output().unwrap())
    };
    let cfg = job.config_path.to_str().unwrap();
    let state = job.state_dir.to_str().unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["base", "-c", "/nonexistent/falcon.toml"],
            vec![],
            "/nonexistent/falcon.toml",
        ),
        (
            vec!["base", "-c", cfg, "--state-dir", state, "--shard", "3/3"],
            vec![],
            "shard",
        ),
        (
            vec![
                "base",
                "-c",
                cfg,
                "--state-dir",
                state,
                "--tables",
                "nosuch",
            ],
            vec![],
            "nosuch",
        ),
        (
            vec!["base", "-c", cfg, "--state-dir", state],
            vec![("FALCON_HBASE_THRIFT", "127.0.0.1:1")],
            "127.0.0.1:1",
        ),
        (
            vec!["base", "-c", cfg, "--state-dir", state],
            vec![("FALCON_MYSQL_URL", "mysql://falcon@127.0.0.1:1/x")],
            "127.0.0.1:1",
        ),
        (
            vec![
                "base",
                "-c",
                cfg,
                "--state-dir",
                state,
                "--resume",
                "--run-id",
                "never",
            ],
            vec![],
            "--resume",
        ),
    ];
    for (args, env, needle) in cases {
        let out = run(&args, &env);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(
            !out.stderr.contains("falcon:falcon"),
            "password leaked: {}",
            out.stderr
        );
    }
    // A missing source table is named.
    let text = std::fs::read_to_string(&job.config_path)
        .unwrap()
        .replace("source = \"room\"", "source = \"rooms_gone\"");
    let bad = job.dir.join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = run(
        &["base", "-c", bad.to_str().unwrap(), "--state-dir", state],
        &[],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("rooms_gone"), "{}", out.stderr);
}
