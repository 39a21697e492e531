//! `base --hbase-load bulk` against the real servers: HFiles written by the
//! migrator, checked by HBase's own HFile tool, loaded by HBase's bulk-load
//! tool; the targets then hold exactly what the put path would have written,
//! through a kill -9 in each step and `--resume`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use falcon_migrate::mapping::keys;
use falcon_migrate::pipeline::stage::region_of;
use support::{assert_converged, Job};

/// A load command that runs HBase's HFile tool over the HFiles of every
/// table it is given (its report in a file of its own under the returned
/// folder), then hands the table on to the shipped loader (all tables in
/// one JVM) on the stack; a failing check fails the load.
fn checking_loader(job: &Job) -> (String, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stack = root.join("scripts/stack.sh");
    let loader = root.join("scripts/hbase/BulkLoadTables.java");
    let log = job.dir.join("hfile-tool");
    let script = job.dir.join("check-and-load.sh");
    std::fs::write(
        &script,
        format!(
            // The loader is exec'ed, so it dies with the migrator as the
            // shipped one does; the checks run in the loop that feeds it,
            // and a failed check kills it (a failed load).
            "#!/bin/bash\nmkdir -p {log}\n\
             exec {stack} hbase-class {loader} < <(\n\
             while read -r dir table; do\n  \
             files=\"\"\n  \
             for f in \"${{dir#file://}}\"/*/*; do [ -f \"$f\" ] && files=\"$files file://$f\"; done\n  \
             if [ -n \"$files\" ]; then\n    \
             {stack} hbase-class org.apache.hadoop.hbase.io.hfile.HFile -v -m -k -f $files \
             >{log}/$table.$(date +%s%N).log 2>&1 || {{ echo \"HFile tool failed on $table\" >&2; kill $$; exit 1; }}\n  \
             fi\n  \
             echo \"$dir $table\"\n\
             done)\n",
            stack = stack.display(),
            loader = loader.display(),
            log = log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script.display().to_string(), log)
}

fn bulk_base(job: &Job, loader: &str, args: &[&str], failpoint: Option<&str>) -> support::Outcome {
    let mut c = job.bulk_base_command(loader, args);
    if let Some(f) = failpoint {
        c.env("FALCON_FAILPOINT", f);
    }
    support::Outcome::from(c.output().unwrap())
}

/// HBase's `Bytes.toStringBinary`, as the HFile tool prints keys.
fn string_binary(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if (b' '..=b'~').contains(&c) && c != b'\\' {
                (c as char).to_string()
            } else {
                format!("\\x{c:02X}")
            }
        })
        .collect()
}

/// One file's report from the HFile tool.
#[derive(Debug, Default)]
struct Report {
    first: String,
    last: String,
    entries: u64,
}

/// The HFile tool's reports (file name → report); fails on any error or
/// order warning it printed.
fn tool_reports(logs: &Path) -> BTreeMap<String, Vec<Report>> {
    let mut text = String::new();
    for f in std::fs::read_dir(logs).unwrap() {
        text.push_str(&std::fs::read_to_string(f.unwrap().path()).unwrap());
    }
    for bad in ["ERROR", "Exception", "WARNING, previous row"] {
        assert!(
            !text.contains(bad),
            "the HFile tool reported {bad}:\n{text}"
        );
    }
    let mut out: BTreeMap<String, Vec<Report>> = BTreeMap::new();
    let mut cur: Option<(String, Report)> = None;
    let strip = |l: &str, p: &str| {
        l.trim()
            .strip_prefix(p)
            .map(|v| v.trim_end_matches(',').to_string())
    };
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("Scanning -> ") {
            if let Some((n, r)) = cur.take() {
                out.entry(n).or_default().push(r);
            }
            let name = f.rsplit('/').next().unwrap().to_string();
            cur = Some((name, Report::default()));
        } else if let Some((_, r)) = cur.as_mut() {
            if let Some(v) = strip(line, "firstKey=Optional[") {
                r.first = v.trim_end_matches(']').to_string();
            } else if let Some(v) = strip(line, "lastKey=Optional[") {
                r.last = v.trim_end_matches(']').to_string();
            } else if let Some(v) = strip(line, "entries=") {
                r.entries = v.parse().unwrap();
            }
        }
    }
    if let Some((n, r)) = cur.take() {
        out.entry(n).or_default().push(r);
    }
    out
}

type Cells = BTreeMap<String, BTreeMap<String, (Vec<u8>, i64)>>;

/// Every HFile the tool read holds exactly one region's cells of `expected`
/// (`table/rowkey-hex` → qualifier → (value, ts)): its count, its first and
/// its last key. Returns the number of reports checked.
fn assert_files_hold(job: &Job, expected: &Cells, log: &Path) -> usize {
    // Expected cells per (table, region), in HBase's order.
    let splits = keys::splits(job.config.hbase.salt_buckets);
    let family = &job.config.hbase.column_family;
    // (table, region) → (row, qualifier, timestamp) of each cell.
    type Region = (String, usize);
    let mut want: BTreeMap<Region, Vec<(Vec<u8>, String, i64)>> = BTreeMap::new();
    for (k, cells) in expected {
        let (table, hex) = k.split_once('/').unwrap();
        let row: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let r = region_of(&splits, &row);
        for (q, (_, ts)) in cells {
            want.entry((table.to_string(), r))
                .or_default()
                .push((row.clone(), q.clone(), *ts));
        }
    }
    for v in want.values_mut() {
        v.sort();
    }
    let reports = tool_reports(log);
    assert!(!reports.is_empty(), "the HFile tool read no file");
    let mut checked = 0;
    for (name, rs) in &reports {
        // Files are named <region:06><n:04>; with few cells, one per region.
        let region: usize = name[..6].parse().unwrap();
        assert_eq!(&name[6..], "0000", "one file per region here: {name}");
        for r in rs {
            // Which table: the one whose region's first key this file begins with.
            let hit = want.iter().find(|((_, reg), cells)| {
                *reg == region && {
                    let (row, q, ts) = &cells[0];
                    r.first == format!("{}/{family}:{q}/{ts}/Put/seqid=0", string_binary(row))
                }
            });
            let ((table, _), cells) =
                hit.unwrap_or_else(|| panic!("{name}: no region begins with {}", r.first));
            let (row, q, ts) = cells.last().unwrap();
            assert_eq!(
                r.last,
                format!("{}/{family}:{q}/{ts}/Put/seqid=0", string_binary(row)),
                "{table} region {region}: last key"
            );
            assert_eq!(
                r.entries,
                cells.len() as u64,
                "{table} region {region}: cells"
            );
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_load_of_a_dirty_dataset_matches_the_source_and_verifies_clean_after_diff() {
    let job = Job::new("bulk", 4_000, true).await;
    let (loader, log) = checking_loader(&job);
    let out = bulk_base(&job, &loader, &[], None);
    assert_eq!(
        out.code, 3,
        "exit 3: dirty rows dead-lettered\n{}",
        out.stderr
    );
    let s = out.json();
    let bulk = &s["bulk"];
    // Oversized rows are dead-lettered too, so HBase is checked against the
    // source by verify below; here, HBase holds what the files held.
    let loaded = job.hbase_snapshot().await;
    let cells: u64 = loaded.values().map(|c| c.len() as u64).sum();
    assert_eq!(bulk["cells"].as_u64().unwrap(), cells, "{bulk}");
    for t in s["tables"].as_array().unwrap() {
        assert_eq!(
            t["written"]["hbase"].as_u64().unwrap() + t["dead_lettered"].as_u64().unwrap(),
            t["rows_read"].as_u64().unwrap(),
            "{t}"
        );
    }
    // Each file read by HBase's HFile tool, every one the migrator wrote.
    let checked = assert_files_hold(&job, &loaded, &log);
    assert_eq!(checked as u64, bulk["hfiles"].as_u64().unwrap());
    let v = job.verify(&["--target", "all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    // The staged runs are gone once loaded.
    let staging = PathBuf::from(bulk["staging_dir"].as_str().unwrap());
    assert!(!staging.join("runs").exists());

    // Diff on top of the bulk-loaded base, then the sign-off.
    job.churn(800.0, 3.0, 5).await;
    let d = job.diff(&["--until-now"]);
    // Exit 3: changes to dirty rows are dead-lettered, as in base.
    assert!(d.code == 0 || d.code == 3, "{}", d.stderr);
    let v = job.verify(&["--target", "all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(v.json()["identical"], true, "{}", v.stdout);
}

/// The tables whose HFiles a bulk-loading run under `dir` recorded, and
/// the tables that still have staged runs.
fn staged_tables(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut hfiles = Vec::new();
    let mut runs = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        // The staging dir: <state dir>/…/shard-I-of-N.bulk/{state,runs}.
        let in_bulk = |n: &str| {
            d.file_name().is_some_and(|f| f == n)
                && d.parent()
                    .and_then(|b| b.file_name())
                    .is_some_and(|b| b.to_string_lossy().ends_with(".bulk"))
        };
        let (state, staged) = (in_bulk("state"), in_bulk("runs"));
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if state {
                if let Some(t) = name.strip_suffix(".hfiles.json") {
                    hfiles.push(t.to_string());
                }
            } else if staged {
                // runs/<source>.<chunk>/<hbase table>/
                for t in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    if t.path().is_dir() {
                        runs.push(t.file_name().to_string_lossy().to_string());
                    }
                }
            } else if p.is_dir() {
                todo.push(p);
            }
        }
    }
    runs.sort();
    runs.dedup();
    (hfiles, runs)
}

/// How many tables a bulk-loading run under `dir` recorded as loaded.
fn loaded_records(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += loaded_records(&p);
        } else if p.to_string_lossy().ends_with(".loaded.json") {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_writing_hfiles_and_while_loading_then_resume_converges() {
    let job = Job::new("bulkkill", 3_000, false).await;
    let (loader, log) = checking_loader(&job);
    // Killed after the third HFile: some tables written, one half-way.
    let first = bulk_base(&job, &loader, &[], Some("kill-after:hfile:3"));
    assert_eq!(first.code, -1, "killed by SIGKILL\n{}", first.stderr);
    // Tables are handed to the loader as their HFiles are done, so one may
    // be loaded already; not all of them.
    let loaded = loaded_records(&job.state_dir);
    assert!(
        loaded < 5,
        "{loaded} of the 5 tables recorded loaded before the kill"
    );
    // Resumed, killed again once the first table is loaded but not recorded.
    let second = bulk_base(&job, &loader, &["--resume"], Some("kill-after:load:1"));
    assert_eq!(second.code, -1, "killed by SIGKILL\n{}", second.stderr);
    // A table whose HFiles are recorded has no runs left; the others keep theirs.
    let (with_hfiles, with_runs) = staged_tables(&job.state_dir);
    assert!(
        !with_hfiles.is_empty(),
        "a table's HFiles were recorded before the load"
    );
    for t in &with_hfiles {
        assert!(
            !with_runs.contains(t),
            "{t}: runs kept after its HFiles ({with_runs:?})"
        );
    }
    assert!(
        !with_runs.is_empty() || with_hfiles.len() == 5,
        "{with_hfiles:?} {with_runs:?}"
    );
    let third = bulk_base(&job, &loader, &["--resume"], None);
    assert_eq!(third.code, 0, "{}", third.stderr);
    let s = third.json();
    assert_eq!(s["resumed"], true);
    let expected = job.expected_hbase().await;
    let cells: u64 = expected.values().map(|c| c.len() as u64).sum();
    assert_eq!(s["bulk"]["cells"].as_u64().unwrap(), cells, "{}", s["bulk"]);
    // Every file HBase was handed passed its HFile tool.
    assert!(assert_files_hold(&job, &expected, &log) > 0);
    assert_converged(&job).await;
    // Kafka: each chunk's events committed once (the chunks were done before the kills).
    for t in ["account", "room", "room_member", "message"] {
        assert_eq!(
            job.kafka_event_count(t),
            job.source_counts().await[t],
            "{t}: one event per row"
        );
    }
    let v = job.verify(&["--target", "all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_lost_after_the_copy_stops_the_load_naming_the_lost_chunks() {
    let job = Job::new("bulklost", 2_000, false).await;
    let (loader, _log) = checking_loader(&job);
    // Every chunk committed (Kafka has their events), killed at the first HFile.
    let first = bulk_base(&job, &loader, &[], Some("kill-after:hfile:1"));
    assert_eq!(first.code, -1, "killed by SIGKILL\n{}", first.stderr);
    // The pod's disk is lost, and the staged runs with it: their HBase cells
    // exist nowhere else, so the resumed run must stop, not load what is left.
    std::fs::remove_dir_all(&job.state_dir).unwrap();
    let second = bulk_base(&job, &loader, &["--resume"], None);
    assert_eq!(second.code, 4, "{}", second.stderr);
    assert!(
        second.stderr.contains("committed chunks are missing")
            && second.stderr.contains("--run-id"),
        "{}",
        second.stderr
    );
    let cells: usize = job.hbase_snapshot().await.values().map(|c| c.len()).sum();
    assert_eq!(cells, 0, "nothing loaded from a staging dir that lost runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_load_without_hbase_as_a_target_is_a_usage_error() {
    let job = Job::new("bulkusage", 10, false).await;
    let out = job.base(&["--hbase-load", "bulk", "--target", "kafka"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--hbase-load bulk needs HBase"),
        "{}",
        out.stderr
    );
    let empty = job.base(&["--hbase-load", "bulk", "--bulk-load-command", " "]);
    assert_eq!(empty.code, 2, "{}", empty.stderr);
    // A loader that is not there is found out before any copying.
    let missing = job.base(&[
        "--hbase-load",
        "bulk",
        "--bulk-load-command",
        "/nonexistent/bulk-load-tables",
    ]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing
            .stderr
            .contains("/nonexistent/bulk-load-tables is not an executable"),
        "{}",
        missing.stderr
    );
    assert!(!job.state_dir.exists(), "nothing was started");
}
