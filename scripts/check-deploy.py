#!/usr/bin/env python3
"""Checks the Kubernetes manifests under deploy/ without a cluster.

Every document parses as YAML and has the fields the API requires for its
kind; base is an Indexed Job whose `--shards` equals its completions and
parallelism, so that each pod takes shard JOB_COMPLETION_INDEX/N; diff is a
single-replica Deployment with the Recreate strategy; verify is a Job that is
not retried on differences (exit 1); every container has resource requests
and limits, reads the config from the ConfigMap and the password from the
Secret through the environment, and no flag carries a secret.

  scripts/check-deploy.py [DIR]             exit 0 when all hold, 1 naming each failure
  (tests/deploy.rs also loads them into the Kubernetes API types.)
"""
import sys
from pathlib import Path

import yaml

args = sys.argv[1:]
root = Path(args[0] if args else Path(__file__).resolve().parent.parent / "deploy")

problems = []
docs = {}


def need(cond, what):
    if not cond:
        problems.append(what)
    return cond


for path in sorted(root.glob("*.yaml")):
    try:
        loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problems.append(f"{path.name}: not YAML: {e}")
        continue
    for d in loaded:
        where = f"{path.name}"
        if not need(isinstance(d, dict), f"{where}: a document is not a mapping"):
            continue
        for k in ("apiVersion", "kind"):
            need(isinstance(d.get(k), str), f"{where}: no {k}")
        if d.get("kind") != "Kustomization":
            need(isinstance(d.get("metadata", {}).get("name"), str), f"{where}: no metadata.name")
        docs[(d.get("kind"), d.get("metadata", {}).get("name"))] = (path.name, d)

by_kind = {}
for (kind, _), (name, d) in docs.items():
    by_kind.setdefault(kind, []).append((name, d))

config_maps = {d["metadata"]["name"]: d for _, d in by_kind.get("ConfigMap", [])}
secrets = {d["metadata"]["name"]: d for _, d in by_kind.get("Secret", [])}
SECRET_WORDS = ("password", "passwd", "secret", "token")


def check_pod(where, spec, restart):
    need(spec.get("restartPolicy", "Always") in restart, f"{where}: restartPolicy {spec.get('restartPolicy')} not in {restart}")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    containers = spec.get("containers") or []
    need(len(containers) == 1, f"{where}: expected one container")
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        need(isinstance(c.get("image"), str), f"{cw}: no image")
        a = [str(x) for x in c.get("args", [])]
        for flag in a:
            need(not any(w in flag.lower() for w in SECRET_WORDS), f"{cw}: a flag looks like a secret: {flag}")
        need("--config" in a or "-c" in a, f"{cw}: no --config")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                need(r in res.get(part, {}), f"{cw}: no resources.{part}.{r}")
        env = {e["name"]: e for e in c.get("env", [])}
        pw = env.get("FALCON_MYSQL_PASSWORD", {})
        ref = pw.get("valueFrom", {}).get("secretKeyRef", {})
        need(ref.get("name") in secrets, f"{cw}: FALCON_MYSQL_PASSWORD not from a Secret in deploy/")
        need("value" not in pw, f"{cw}: FALCON_MYSQL_PASSWORD given as a literal value")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        cfg_path = a[a.index("--config") + 1] if "--config" in a else ""
        cfg_dir = str(Path(cfg_path).parent)
        m = mounts.get(cfg_dir)
        if need(m is not None, f"{cw}: {cfg_path} is not on a mounted volume"):
            cm = volumes.get(m["name"], {}).get("configMap", {}).get("name")
            if need(cm in config_maps, f"{cw}: {cfg_dir} is not the ConfigMap"):
                need(Path(cfg_path).name in config_maps[cm].get("data", {}), f"{cw}: ConfigMap {cm} has no {Path(cfg_path).name}")
        yield a


def the(kind, component):
    found = [(n, d) for n, d in by_kind.get(kind, [])
             if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    need(len(found) == 1, f"expected one {kind} for {component}, found {len(found)}")
    return found[0] if found else (None, None)


name, job = the("Job", "base")
if job:
    s = job["spec"]
    need(s.get("completionMode") == "Indexed", f"{name}: completionMode is not Indexed")
    n = s.get("completions")
    need(isinstance(n, int) and n >= 1, f"{name}: completions missing")
    need(s.get("parallelism") == n, f"{name}: parallelism {s.get('parallelism')} != completions {n}")
    for a in check_pod(name, s["template"]["spec"], ("Never", "OnFailure")):
        need(a[:1] == ["base"], f"{name}: not running base")
        need("--shard" not in a, f"{name}: a fixed --shard would give every pod the same shard")
        if need("--shards" in a, f"{name}: no --shards (the index comes from JOB_COMPLETION_INDEX)"):
            need(a[a.index("--shards") + 1] == str(n), f"{name}: --shards {a[a.index('--shards') + 1]} != completions {n}")

name, dep = the("Deployment", "diff")
if dep:
    s = dep["spec"]
    need(s.get("replicas") == 1, f"{name}: replicas must be 1")
    need(s.get("strategy", {}).get("type") == "Recreate", f"{name}: strategy must be Recreate")
    sel = s.get("selector", {}).get("matchLabels", {})
    labels = s["template"]["metadata"].get("labels", {})
    need(sel and all(labels.get(k) == v for k, v in sel.items()), f"{name}: selector does not match the pod labels")
    for a in check_pod(name, s["template"]["spec"], ("Always",)):
        need(a[:1] == ["diff"] and "--follow" in a, f"{name}: not running diff --follow")

name, job = the("Job", "verify")
if job:
    s = job["spec"]
    rules = s.get("podFailurePolicy", {}).get("rules", [])
    need(any(r.get("action") == "FailJob" and 1 in r.get("onExitCodes", {}).get("values", []) for r in rules),
         f"{name}: differences (exit 1) must fail the Job, not retry it")
    for a in check_pod(name, s["template"]["spec"], ("Never",)):
        need(a[:1] == ["verify"], f"{name}: not running verify")

for _, (fname, d) in docs.items():
    if d.get("kind") == "Kustomization":
        for r in d.get("resources", []):
            need((root / r).exists(), f"{fname}: resource {r} does not exist")

if problems:
    for p in problems:
        print(f"deploy: {p}", file=sys.stderr)
    sys.exit(1)
print(f"deploy: {len(docs)} manifests ok ({', '.join(sorted(f'{k}/{n}' for k, n in docs))})")
