//! `scripts/cutover.sh --rehearse`, the night's runbook on the local stack
//! with live churn: it ends in GO with verify clean, and in NO-GO naming the
//! row when a row is tampered in HBase right before verify.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use falcon_migrate::config::Config;
use support::{Job, Outcome};

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("falcon-cutover-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn rehearse(out: &Path, extra: &[&str]) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_falcon-migrate"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut c = Command::new("bash");
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cutover.sh"))
        .args(["--rehearse", "--messages", "4000", "--churn-rate", "40"])
        .args(["--shards", "2", "--workers", "2", "--lag", "3"])
        .args(["--catch-up-timeout", "90", "--out"])
        .arg(out)
        .args(extra)
        .env("FALCON_BIN", bin)
        .env_remove("FALCON_MYSQL_URL")
        .env_remove("FALCON_KAFKA_BROKERS")
        .env_remove("FALCON_HBASE_THRIFT")
        .env_remove("FALCON_CONFIG")
        .env_remove("FALCON_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn verdict(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("verdict.json")).expect("verdict.json");
    serde_json::from_str(&text).unwrap()
}

fn step<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {v}"))
}

#[test]
fn rehearsal_with_live_churn_ends_in_go_with_verify_clean() {
    let out = out_dir("go");
    let o = Outcome::from(rehearse(&out, &[]).output().unwrap());
    assert_eq!(o.code, 0, "GO expected\n{}\n{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("verdict: GO"), "{}", o.stdout);
    let v = verdict(&out);
    assert_eq!(v["verdict"], "GO");
    for s in [
        "base",
        "diff-follow",
        "stop-writers",
        "diff-until-now",
        "verify-sample",
        "verify",
    ] {
        assert_eq!(step(&v, s)["result"], "ok", "{s}: {v}");
        assert!(step(&v, s)["actual_s"].as_f64().is_some(), "{s}: {v}");
    }
    // The plan's expectation stands beside base's actual time.
    assert!(step(&v, "base")["planned_s"].as_f64().unwrap() > 0.0, "{v}");
    let verify: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("state/summaries/verify.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(verify["identical"], true, "{verify}");
    let generated: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("generate.json")).unwrap()).unwrap();
    // Every generated message was compared (churn adds some; hard deletes remove a few).
    let messages = generated["messages"].as_u64().unwrap_or(4000);
    assert!(
        verify["compared"].as_u64().unwrap() > messages,
        "{verify} vs {generated}"
    );
    // The churn changed rows during base and diff: diff applied them.
    let follow: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("state/summaries/diff-follow.json")).unwrap(),
    )
    .unwrap();
    assert!(follow["applied_total"].as_u64().unwrap() > 0, "{follow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_tampered_in_hbase_before_verify_ends_in_no_go_naming_it() {
    let out = out_dir("nogo");
    let (ready, done) = (out.join("tamper.ready"), out.join("tamper.done"));
    let hook = format!(
        "touch '{}'; for i in $(seq 600); do [ -e '{}' ] && exit 0; sleep 0.2; done; exit 1",
        ready.display(),
        done.display()
    );
    let mut child = rehearse(&out, &["--before-verify", &hook]).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut a, mut b) = (String::new(), String::new());
        let _ = stdout.read_to_string(&mut a);
        let _ = stderr.read_to_string(&mut b);
        (a, b)
    });
    let deadline = Instant::now() + Duration::from_secs(150);
    while !ready.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            let (a, b) = reader.join().unwrap();
            panic!("cutover ended ({st}) before verify\n{a}\n{b}");
        }
        assert!(Instant::now() < deadline, "verify step not reached");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Behind the tool's back: one message's body changed in HBase, stamped
    // newer than its source version so that readers see it.
    let config_path = out.join("falcon.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let config = Config::parse(&text, &config_path, |k| {
        (k == "FALCON_MYSQL_PASSWORD").then(|| "falcon".to_string())
    })
    .unwrap();
    let job = Job {
        name: "cutover".into(),
        database: config.database().unwrap(),
        dir: out.clone(),
        state_dir: out.join("state"),
        config_path,
        config,
        generated: serde_json::Value::Null,
    };
    let messages = job.hbase_messages();
    let (&id, (row_key, cells)) = messages
        .iter()
        .find(|(_, (_, c))| c.contains_key("body"))
        .expect("a message with a body in HBase");
    let ts = cells["body"].1 + 1;
    job.hbase_put("message", row_key, &[("body", b"tampered at 2 a.m.")], ts);
    std::fs::write(&done, b"").unwrap();

    let status = child.wait().unwrap();
    let (stdout, stderr) = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "NO-GO expected\n{stdout}\n{stderr}");
    assert!(stdout.contains("verdict: NO-GO"), "{stdout}");
    let named = format!("table=message target=hbase key={id} kind=different columns=body");
    assert!(
        stdout.contains(&named),
        "the row is named ({named}):\n{stdout}"
    );
    let v = verdict(&out);
    assert_eq!(v["verdict"], "NO-GO");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("1 different"),
        "{v}"
    );
    // Everything before verify went well: the verdict is about the row alone.
    for s in ["base", "diff-follow", "stop-writers", "diff-until-now"] {
        assert_eq!(step(&v, s)["result"], "ok", "{s}: {v}");
    }
}
