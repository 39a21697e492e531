//! `falcon-migrate verify` against the real servers: a clean base verifies
//! identical; rows tampered with in HBase, in Kafka and in the source behind
//! the tool's back are named exactly, row by row; `--repair` fixes them.

mod support;

use std::collections::BTreeSet;

use falcon_migrate::mapping::{ids, keys};
use support::Job;

/// Arguments, environment, and a text the error must name.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_base_verifies_identical_skipping_dead_letters() {
    let job = Job::new("vclean", 8_000, true).await;
    let base = job.base(&["--workers", "2"]);
    assert_eq!(
        base.code, 3,
        "dirty rows are dead-lettered: {}",
        base.stderr
    );
    let dead = n(&base.json()["dead_lettered"]);
    assert!(dead > 0);

    let out = job.verify(&["--target", "all", "--workers", "2"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let s = out.json();
    assert_eq!(s["command"], "verify");
    assert_eq!(s["identical"], true);
    let source: u64 = job.source_counts().await.values().sum();
    assert_eq!(
        n(&s["compared"]) + n(&s["skipped"]),
        source,
        "every source row is compared or skipped"
    );
    assert_eq!(
        n(&s["skipped"]),
        dead,
        "exactly the rows base dead-lettered are skipped"
    );
    for t in ["hbase", "kafka"] {
        let x = &s["targets"][t];
        assert_eq!(n(&x["target_rows"]), n(&s["compared"]), "{t} rows");
        for k in ["missing", "extra", "different", "mismatched_buckets"] {
            assert_eq!(n(&x[k]), 0, "{t} {k}");
        }
        assert!(n(&x["buckets"]) >= 4 * 64);
        assert!(x["rows_per_s"].as_f64().unwrap() > 0.0);
    }
    assert!(s["source_rows_per_s"].as_f64().unwrap() > 0.0);

    // A sample is chosen by key hash: the same rows every time.
    let a = job.verify(&["--sample", "25", "--target", "hbase"]);
    let b = job.verify(&["--sample", "25", "--target", "hbase"]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    let (ca, cb) = (n(&a.json()["compared"]), n(&b.json()["compared"]));
    assert_eq!(ca, cb);
    let all = n(&s["compared"]);
    assert!(ca > all / 6 && ca < all / 3, "{ca} of {all}");
    assert!(a.json()["targets"].get("kafka").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_rows_are_named_exactly_and_repair_fixes_them() {
    let job = Job::new("vtamper", 6_000, false).await;
    let base = job.base(&["--workers", "2"]);
    assert_eq!(base.code, 0, "{}", base.stderr);
    let clean = job.verify(&[]);
    assert_eq!(clean.code, 0, "{}\n{}", clean.stdout, clean.stderr);

    let hb = job.hbase_messages();
    let ids_: Vec<u64> = hb.keys().copied().collect();
    let (a, b, d, e, f, g) = (
        ids_[10], ids_[200], ids_[300], ids_[400], ids_[500], ids_[600],
    );
    let cell = |id: u64, q: &str| hb[&id].1[q].clone();
    let num =
        |id: u64, q: &str| -> u64 { String::from_utf8(cell(id, q).0).unwrap().parse().unwrap() };

    // HBase: a row deleted, a cell changed (stamped later), a row the source lacks.
    job.hbase_delete_row("message", &hb[&a].0);
    let (_, ts) = cell(b, "body");
    job.hbase_put(
        "message",
        &hb[&b].0,
        &[("body", "改ざんされた本文".as_bytes())],
        ts + 1000,
    );
    let fake = ids_.last().unwrap() + 1000;
    let (room, send) = (num(g, "room_id"), num(g, "send_time"));
    let epoch = job.config.ids.epoch_ms;
    let new_id = ids::new_message_id(fake, send, epoch);
    let extra_key = keys::message(job.config.hbase.salt_buckets, room, new_id);
    let fake_s = fake.to_string();
    let new_s = new_id.to_string();
    let mut extra: Vec<(&str, Vec<u8>)> = hb[&g]
        .1
        .iter()
        .map(|(q, (v, _))| (q.as_str(), v.clone()))
        .collect();
    for (q, v) in extra.iter_mut() {
        match *q {
            "message_id" => *v = fake_s.clone().into_bytes(),
            "id" => *v = new_s.clone().into_bytes(),
            _ => {}
        }
    }
    let extra_ref: Vec<(&str, &[u8])> = extra.iter().map(|(q, v)| (*q, v.as_slice())).collect();
    job.hbase_put("message", &extra_key, &extra_ref, (send * 1000) as i64);

    // Kafka: a later event changes a body; a hard delete removes a row.
    let events = job.kafka_events("message");
    let mut ev = events[&d.to_string()].clone();
    ev["data"]["body"] = "書き換えられたイベント".into();
    ev["source"]["phase"] = "tamper".into();
    let room_d = ev["data"]["room_id"].as_u64().unwrap().to_string();
    job.kafka_produce("message", &room_d, &serde_json::to_vec(&ev).unwrap());
    let ev_e = &events[&e.to_string()];
    let gone = serde_json::json!({
        "v": 1, "type": "message.deleted", "entity": "message", "key": e.to_string(),
        "version_ms": ev_e["version_ms"], "deleted": true, "hard": true, "data": null,
        "source": {"phase": "tamper", "run": "t", "position": ""}
    });
    let room_e = ev_e["data"]["room_id"].as_u64().unwrap().to_string();
    job.kafka_produce("message", &room_e, &serde_json::to_vec(&gone).unwrap());

    // The source: a row updated behind the tool's back (no diff replays it).
    job.admin_exec(&format!(
        "UPDATE message SET body = CONCAT(body, ' (後から編集)') WHERE message_id = {f}"
    ))
    .await;

    let report = job.dir.join("report.csv");
    let out = job.verify(&[
        "--report",
        report.to_str().unwrap(),
        "--recheck-delay",
        "0.5",
    ]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let s = out.json();
    let mut rdr = csv::Reader::from_path(&report).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    let got: BTreeSet<(String, String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r[0].to_string(),
                r[1].to_string(),
                r[2].to_string(),
                r[3].to_string(),
                r[4].to_string(),
            )
        })
        .collect();
    let row = |t: &str, key: u64, kind: &str, cols: &str| {
        (
            "message".to_string(),
            t.to_string(),
            key.to_string(),
            kind.to_string(),
            cols.to_string(),
        )
    };
    let want: BTreeSet<_> = [
        row("hbase", a, "missing", ""),
        row("hbase", b, "different", "body"),
        row("hbase", fake, "extra", ""),
        row("hbase", f, "different", "body"),
        row("kafka", d, "different", "body"),
        row("kafka", e, "missing", ""),
        row("kafka", f, "different", "body"),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "report:\n{rows:?}");
    assert_eq!(rows.len(), want.len(), "one line per row");
    // Abbreviated values on both sides of a difference.
    let b_line = rows
        .iter()
        .find(|r| &r[2] == b.to_string().as_str())
        .unwrap();
    assert!(b_line[6].contains("改ざんされた本文"), "{b_line:?}");
    assert!(b_line[5].starts_with("body="), "{b_line:?}");
    let (h, k) = (&s["targets"]["hbase"], &s["targets"]["kafka"]);
    assert_eq!(
        (n(&h["missing"]), n(&h["extra"]), n(&h["different"])),
        (1, 1, 2)
    );
    assert_eq!(
        (n(&k["missing"]), n(&k["extra"]), n(&k["different"])),
        (1, 0, 2)
    );
    assert!(n(&h["mismatched_buckets"]) >= 1 && n(&h["mismatched_buckets"]) <= 4);
    assert_eq!(n(&s["report_rows"]), 7);

    // --max-report-rows caps the report.
    let capped = job.dir.join("capped.csv");
    let out = job.verify(&[
        "--report",
        capped.to_str().unwrap(),
        "--max-report-rows",
        "2",
        "--recheck-delay",
        "0",
    ]);
    assert_eq!(out.code, 1);
    assert_eq!(
        csv::Reader::from_path(&capped).unwrap().records().count(),
        2
    );

    let fixed = job.verify(&["--repair", "--recheck-delay", "0"]);
    assert_eq!(fixed.code, 0, "{}\n{}", fixed.stdout, fixed.stderr);
    let r = &fixed.json()["repair"];
    assert_eq!(n(&r["remaining"]), 0);
    assert!(n(&r["hbase_rows"]) >= 4, "{r}");
    assert_eq!(n(&r["kafka_events"]), 3);

    let after = job.verify(&[]);
    assert_eq!(after.code, 0, "{}\n{}", after.stdout, after.stderr);
    assert_eq!(after.json()["identical"], true);
    // The repaired body is the source's, byte for byte, in both targets.
    let bodies = job.source_bodies().await;
    let hb_bodies = job.hbase_message_bodies();
    for id in [a, b, f] {
        assert_eq!(hb_bodies.get(&id), bodies.get(&id), "HBase body of {id}");
    }
    assert!(!hb_bodies.contains_key(&fake));
    let events = job.kafka_events("message");
    for id in [d, e, f] {
        assert_eq!(
            events[&id.to_string()]["data"]["body"]
                .as_str()
                .map(str::as_bytes),
            bodies.get(&id).map(Vec::as_slice),
            "event body of {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_or_unreachable_servers_exit_2() {
    let job = Job::new("vbad", 200, false).await;
    // No base has run: the HBase tables do not exist.
    let out = job.verify(&["--target", "hbase"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    let cfg = job.config_path.to_str().unwrap();
    let state = job.state_dir.to_str().unwrap();
    let cases: Vec<Case> = vec![
        (
            vec!["-c", "/nonexistent/falcon.toml"],
            vec![],
            "/nonexistent/falcon.toml",
        ),
        (vec!["-c", cfg, "--tables", "nosuch"], vec![], "nosuch"),
        (vec!["-c", cfg, "--sample", "0"], vec![], "--sample"),
        (vec!["-c", cfg, "--target", "both"], vec![], "both"),
        (
            vec!["-c", cfg],
            vec![("FALCON_HBASE_THRIFT", "127.0.0.1:1")],
            "127.0.0.1:1",
        ),
        (
            vec!["-c", cfg],
            vec![("FALCON_MYSQL_URL", "mysql://falcon@127.0.0.1:1/x")],
            "127.0.0.1:1",
        ),
        (
            vec!["-c", cfg, "--target", "kafka"],
            vec![("FALCON_KAFKA_BROKERS", "127.0.0.1:1")],
            "127.0.0.1:1",
        ),
    ];
    for (args, env, needle) in cases {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_falcon-migrate"));
        c.arg("verify")
            .args(&args)
            .args(["--state-dir", state])
            .env("FALCON_MYSQL_PASSWORD", "falcon")
            .env_remove("FALCON_MYSQL_URL")
            .env_remove("FALCON_KAFKA_BROKERS")
            .env_remove("FALCON_HBASE_THRIFT");
        for (k, v) in &env {
            c.env(k, v);
        }
        let out = support::Outcome::from(c.output().unwrap());
        assert_eq!(out.code, 2, "{args:?} {env:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

/// A target with 10% of its message rows changed: the drill-down holds at
/// most `--drill-rows` source rows at a time, reports exactly the changed
/// rows, and its peak memory is printed beside a one-round run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_tampered_is_counted_exactly_within_the_drill_budget() {
    let job = Job::new("vtenpct", 20_000, false).await;
    let base = job.base(&["--workers", "2"]);
    assert_eq!(base.code, 0, "{}", base.stderr);
    let hb = job.hbase_messages();
    let family = job.config.hbase.column_family.as_bytes().to_vec();
    let tampered: Vec<u64> = hb.keys().copied().step_by(10).collect();
    let puts: Vec<_> = tampered
        .iter()
        .map(|id| {
            let (row, cells) = &hb[id];
            let ts = cells["body"].1 + 1;
            falcon_migrate::sink::hbase::cells::put_cells(
                row,
                &family,
                &[("body", "改ざん".as_bytes())],
                Some(ts),
            )
        })
        .collect();
    for chunk in puts.chunks(500) {
        job.hbase()
            .put_multiple(&job.hbase_table("message"), chunk.to_vec())
            .unwrap();
    }

    let report = job.dir.join("tenpct.csv");
    let small = job.verify(&[
        "--target",
        "hbase",
        "--drill-rows",
        "2000",
        "--recheck-delay",
        "0",
        "--report",
        report.to_str().unwrap(),
        "--max-report-rows",
        "100",
    ]);
    assert_eq!(small.code, 1, "{}", small.stderr);
    let s = small.json();
    assert_eq!(n(&s["different"]), tampered.len() as u64, "{s}");
    assert_eq!(n(&s["missing"]) + n(&s["extra"]), 0, "{s}");
    assert!(n(&s["drill_rounds"]) >= 10, "{s}");
    assert_eq!(s["report_rows"], 100, "{s}");
    let msg = s["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "message")
        .unwrap();
    assert_eq!(
        n(&msg["targets"]["hbase"]["different"]),
        tampered.len() as u64
    );

    let one = job.verify(&["--target", "hbase", "--recheck-delay", "0"]);
    assert_eq!(one.code, 1, "{}", one.stderr);
    let o = one.json();
    assert_eq!(n(&o["different"]), tampered.len() as u64, "{o}");
    assert_eq!(n(&o["drill_rounds"]), 1, "{o}");
    let (rss_small, rss_one) = (n(&s["peak_rss_mib"]), n(&o["peak_rss_mib"]));
    eprintln!(
        "verify, {} of {} message rows tampered: peak RSS {rss_small} MiB with --drill-rows 2000 ({} rounds), {rss_one} MiB in one round",
        tampered.len(),
        hb.len(),
        n(&s["drill_rounds"])
    );
    // The stated budget of this dataset (README): 256 MiB.
    assert!(rss_small <= 256, "peak RSS {rss_small} MiB");
}
