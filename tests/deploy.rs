//! The Kubernetes manifests under deploy/: they parse and hold what the
//! runbook relies on (scripts/check-deploy.py), the checker refuses broken
//! ones, and the base Job's pods, given indexes 0..N-1 in
//! JOB_COMPLETION_INDEX, run shards 0/N..N-1/N with the Job's own arguments.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Job, Outcome};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn check(dir: &Path, extra: &[&str]) -> Outcome {
    Outcome::from(
        Command::new("python3")
            .arg(Path::new(ROOT).join("scripts/check-deploy.py"))
            .args(extra)
            .arg(dir)
            .output()
            .expect("python3"),
    )
}

/// A copy of deploy/ with `from` replaced by `to` in `file`.
fn broken(name: &str, file: &str, from: &str, to: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("falcon-deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The manifests (files); folders such as grafana/ are not the checker's.
    for e in std::fs::read_dir(Path::new(ROOT).join("deploy")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} has {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    dir
}

#[test]
fn manifests_parse_and_hold_the_runbooks_rules() {
    let o = check(&Path::new(ROOT).join("deploy"), &[]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    for kind in [
        "Job/falcon-migrate-base",
        "Deployment/falcon-migrate-diff",
        "Job/falcon-migrate-verify",
        "ConfigMap/falcon-migrate-config",
        "Secret/falcon-migrate-mysql",
    ] {
        assert!(o.stdout.contains(kind), "{kind}: {}", o.stdout);
    }
}

#[test]
fn the_checker_refuses_what_would_break_the_night() {
    let cases = [
        ("replicas", "diff-deployment.yaml", "replicas: 1", "replicas: 2", "replicas must be 1"),
        ("rolling", "diff-deployment.yaml", "type: Recreate", "type: RollingUpdate", "Recreate"),
        ("shards", "base-job.yaml", "- --shards\n            - \"16\"", "- --shards\n            - \"8\"", "--shards 8 != completions 16"),
        ("nonindexed", "base-job.yaml", "completionMode: Indexed", "completionMode: NonIndexed", "Indexed"),
        ("pwflag", "verify-job.yaml", "- --json", "- --password=hunter2", "looks like a secret"),
        ("literal", "diff-deployment.yaml", "valueFrom:\n                secretKeyRef:\n                  name: falcon-migrate-mysql\n                  key: password", "value: hunter2", "not from a Secret"),
        ("norequests", "base-job.yaml", "cpu: 500m\n", "", "resources.requests.cpu"),
        ("yaml", "secret.yaml", "stringData:", "stringData: [", "not YAML"),
    ];
    for (name, file, from, to, says) in cases {
        let dir = broken(name, file, from, to);
        let o = check(&dir, &[]);
        assert_eq!(o.code, 1, "{name}: refused\n{}{}", o.stdout, o.stderr);
        assert!(o.stderr.contains(says), "{name}: {says:?} in {}", o.stderr);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_of_the_base_job_takes_its_shard_from_its_completion_index() {
    let o = check(&Path::new(ROOT).join("deploy"), &["--base-args"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut args: Vec<String> = serde_json::from_str(o.stdout.trim()).unwrap();
    let n: u32 = args[args.iter().position(|a| a == "--shards").unwrap() + 1]
        .parse()
        .unwrap();
    let job = Job::new("k8sidx", 2_000, false).await;
    // The Job's own arguments, with this job's config instead of the ConfigMap's.
    let c = args.iter().position(|a| a == "--config").unwrap();
    args[c + 1] = job.config_path.display().to_string();
    for i in 0..n {
        let out = Outcome::from(
            Command::new(env!("CARGO_BIN_EXE_falcon-migrate"))
                .args(&args)
                .args(["--dry-run", "--state-dir"])
                .arg(&job.state_dir)
                .env("JOB_COMPLETION_INDEX", i.to_string())
                .env("FALCON_MYSQL_PASSWORD", "falcon")
                .env_remove("FALCON_MYSQL_URL")
                .env_remove("FALCON_KAFKA_BROKERS")
                .env_remove("FALCON_HBASE_THRIFT")
                .output()
                .unwrap(),
        );
        assert_eq!(o.code, 0, "pod {i}: {}", out.stderr);
        assert_eq!(out.code, 0, "pod {i}: {}", out.stderr);
        assert_eq!(out.json()["shard"], format!("{i}/{n}"), "pod {i}");
    }
    // An index outside the Job (a hand-edited completions) is refused: exit 2.
    let out = Outcome::from(
        Command::new(env!("CARGO_BIN_EXE_falcon-migrate"))
            .args(&args)
            .args(["--dry-run", "--state-dir"])
            .arg(&job.state_dir)
            .env("JOB_COMPLETION_INDEX", n.to_string())
            .env("FALCON_MYSQL_PASSWORD", "falcon")
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "JOB_COMPLETION_INDEX) {n} is not below --shards {n}"
        )),
        "{}",
        out.stderr
    );
}
