//! The Kubernetes manifests under deploy/: they parse and hold what the
//! runbook relies on (scripts/check-deploy.py), the checker refuses broken
//! ones, and the base Job's pods, given indexes 0..N-1 in
//! JOB_COMPLETION_INDEX, run shards 0/N..N-1/N with the Job's own arguments.
//! Every manifest is also loaded into the Kubernetes API types (k8s-openapi),
//! and must come back out of them unchanged: a misspelt or misplaced field,
//! which the API server would drop or refuse, fails the test.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job as K8sJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
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

/// The Kubernetes objects of deploy/, each loaded into its API type.
#[derive(Default)]
struct Manifests {
    jobs: Vec<K8sJob>,
    deployments: Vec<Deployment>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
}

/// `doc` as the API type `T`, which must give back exactly `doc`.
fn typed<T: DeserializeOwned + Serialize>(file: &str, doc: &serde_json::Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back, doc,
        "{file}: fields the Kubernetes API does not know were dropped"
    );
    t
}

fn load_manifests(dir: &Path) -> Manifests {
    let mut m = Manifests::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_json::Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            match doc["kind"].as_str() {
                Some("Job") => m.jobs.push(typed(&file, &doc)),
                Some("Deployment") => m.deployments.push(typed(&file, &doc)),
                Some("ConfigMap") => m.config_maps.push(typed(&file, &doc)),
                Some("Secret") => m.secrets.push(typed(&file, &doc)),
                // kustomize's own file: its resources must be files here.
                Some("Kustomization") => {
                    for r in doc["resources"].as_array().unwrap() {
                        let r = r.as_str().unwrap();
                        assert!(dir.join(r).is_file(), "{file} lists {r}, which is missing");
                    }
                }
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    m
}

fn named<
    'a,
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    items: &'a [T],
    name: &str,
) -> &'a T {
    items
        .iter()
        .find(|i| i.metadata().name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn manifests_load_into_the_kubernetes_api_types() {
    let m = load_manifests(&Path::new(ROOT).join("deploy"));
    assert_eq!(
        (
            m.jobs.len(),
            m.deployments.len(),
            m.config_maps.len(),
            m.secrets.len()
        ),
        (2, 1, 1, 1)
    );
    let base = named(&m.jobs, "falcon-migrate-base").spec.as_ref().unwrap();
    assert_eq!(base.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!(base.completions, base.parallelism);
    let diff = named(&m.deployments, "falcon-migrate-diff")
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(diff.replicas, Some(1));
    assert_eq!(
        diff.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let config = named(&m.config_maps, "falcon-migrate-config");
    assert!(config.data.as_ref().unwrap().contains_key("falcon.toml"));
    named(&m.secrets, "falcon-migrate-mysql");

    // A misspelt field (completionMode → completionMod) is dropped by the
    // types, so the round trip catches it.
    let dir = broken("typo", "base-job.yaml", "completionMode:", "completionMod:");
    let caught = std::panic::catch_unwind(|| load_manifests(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    let why = caught.err().expect("a misspelt field was accepted");
    let why = why.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        why.contains("base-job.yaml: fields the Kubernetes API does not know"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_of_the_base_job_takes_its_shard_from_its_completion_index() {
    // The base Job's own arguments, read through the API types.
    let m = load_manifests(&Path::new(ROOT).join("deploy"));
    let spec = named(&m.jobs, "falcon-migrate-base").spec.clone().unwrap();
    let pod = spec.template.spec.unwrap();
    let mut args = pod.containers[0].args.clone().unwrap();
    let n: u32 = args[args.iter().position(|a| a == "--shards").unwrap() + 1]
        .parse()
        .unwrap();
    assert_eq!(spec.completions, Some(n as i32), "--shards = completions");
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
