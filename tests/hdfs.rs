//! The production step of `base --hbase-load bulk` through a real HDFS: a
//! NameNode and a DataNode (`scripts/stack.sh hdfs-up`, Hadoop's own
//! servers), the shipped loader uploading each table's HFiles into HDFS
//! (`-Dfalcon.bulkload.upload`) and loading them from there. HDFS down at
//! first: the run fails naming the cause, and `--resume` converges once it
//! is up. HDFS is stopped at the end, whatever the outcome.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{assert_converged, Job, Outcome};

const NAMENODE: &str = "hdfs://127.0.0.1:9820";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn stack(args: &[&str]) -> Outcome {
    Outcome::from(
        Command::new(repo().join("scripts/stack.sh"))
            .args(args)
            .output()
            .unwrap(),
    )
}

/// Stops HDFS when dropped, so a failed assertion leaves the stack as it was.
struct Hdfs;

impl Hdfs {
    fn up() -> Hdfs {
        // The guard first: a start that fails half-way is stopped too.
        let guard = Hdfs;
        let up = stack(&["hdfs-up"]);
        assert_eq!(up.code, 0, "hdfs-up\n{}", up.stderr);
        guard
    }
}

impl Drop for Hdfs {
    fn drop(&mut self) {
        let down = stack(&["hdfs-down"]);
        assert!(
            down.code == 0 || std::thread::panicking(),
            "hdfs-down\n{}",
            down.stderr
        );
    }
}

fn bulk_base_via(job: &Job, upload: &str, args: &[&str]) -> Outcome {
    let loader = format!(
        "{} hbase-class {}",
        repo().join("scripts/stack.sh").display(),
        repo().join("scripts/hbase/BulkLoadTables.java").display()
    );
    let mut c = job.bulk_base_command(&loader, args);
    c.env(
        "HBASE_TOOL_OPTS",
        format!("-Dfalcon.bulkload.upload={upload}"),
    );
    Outcome::from(c.output().unwrap())
}

/// Files under `dir` (`<table>/<family>/<file>` → bytes).
fn local_files(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for table in std::fs::read_dir(dir).unwrap() {
        let table = table.unwrap().path();
        for family in std::fs::read_dir(&table).unwrap() {
            let family = family.unwrap().path();
            for f in std::fs::read_dir(&family).unwrap() {
                let f = f.unwrap();
                let name = [&table, &family, &f.path()]
                    .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                    .join("/");
                out.insert(name, f.metadata().unwrap().len());
            }
        }
    }
    out
}

/// Files HDFS holds under `base` (`<table>/<family>/<file>` → bytes), as
/// Hadoop's own shell lists them, and every path it listed.
fn hdfs_files(base: &str) -> (BTreeMap<String, u64>, Vec<String>) {
    let ls = stack(&["hdfs-dfs", "-ls", "-R", base]);
    assert_eq!(ls.code, 0, "hdfs dfs -ls -R {base}\n{}", ls.stderr);
    let mut files = BTreeMap::new();
    let mut paths = Vec::new();
    for line in ls.stdout.lines() {
        // perms replication owner group size date time path
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let path = f[7].to_string();
        if !f[0].starts_with('d') {
            let parts: Vec<&str> = path.rsplitn(4, '/').collect();
            files.insert(
                format!("{}/{}/{}", parts[2], parts[1], parts[0]),
                f[4].parse().unwrap(),
            );
        }
        paths.push(path);
    }
    (files, paths)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_load_uploads_the_hfiles_into_hdfs_and_loads_them_from_there() {
    let job = Job::new("hdfs", 2_000, false).await;
    let upload = format!("{NAMENODE}/falcon-staging/{}", job.name);

    // HDFS down: the upload fails, the run fails and says why.
    let down = stack(&["hdfs-down"]);
    assert_eq!(down.code, 0, "{}", down.stderr);
    let failed = bulk_base_via(&job, &upload, &[]);
    // Exit 4: a failure during the run, its progress kept for `--resume`.
    assert_eq!(
        failed.code, 4,
        "upload to a stopped HDFS\n{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("upload of file:/")
            && failed.stderr.contains(&format!("to {upload}/"))
            && failed.stderr.contains("Connection refused"),
        "{}",
        failed.stderr
    );

    // Up, with what an upload killed half-way leaves of one table: a
    // partial folder beside and a stale one in place, each holding a file
    // that is no HFile. Both are replaced, not merged (the load would fail
    // on the stray file, and the listing below would show it).
    let hdfs = Hdfs::up();
    let prefix = format!("to {upload}/");
    let at = failed.stderr.find(&prefix).unwrap() + 3;
    let dst = failed.stderr[at..].split(" failed").next().unwrap();
    let family = &job.config.hbase.column_family;
    let stale = [
        format!("{dst}/{family}"),
        format!("{dst}.uploading/{family}"),
    ];
    let mkdir = stack(&["hdfs-dfs", "-mkdir", "-p", &stale[0], &stale[1]]);
    assert_eq!(mkdir.code, 0, "{}", mkdir.stderr);
    let stray = stale.map(|d| format!("{d}/stray"));
    let touch = stack(&["hdfs-dfs", "-touchz", &stray[0], &stray[1]]);
    assert_eq!(touch.code, 0, "{}", touch.stderr);

    // The resumed run uploads and loads every table.
    let out = bulk_base_via(&job, &upload, &["--resume"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let s = out.json();
    assert_eq!(s["resumed"], true);
    let bulk = &s["bulk"];
    let tables = bulk["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 5, "four tables and the id map: {bulk}");
    assert_converged(&job).await;
    let v = job.verify(&["--target", "all"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);

    // Every HFile went through HDFS: each table's folder there holds the
    // same files, of the same sizes, as the migrator wrote; no half upload
    // is left behind.
    let local_dir = PathBuf::from(bulk["staging_dir"].as_str().unwrap()).join("hfiles");
    let local = local_files(&local_dir);
    assert_eq!(local.len() as u64, bulk["hfiles"].as_u64().unwrap());
    let (uploaded, paths) = hdfs_files(&upload);
    assert_eq!(uploaded, local, "HDFS holds the HFiles the migrator wrote");
    assert!(
        paths.iter().all(|p| !p.contains(".uploading")),
        "{paths:#?}"
    );
    for t in tables {
        let table = t["table"].as_str().unwrap();
        assert!(
            paths
                .iter()
                .any(|p| p.ends_with(&format!("/hfiles/{table}"))),
            "{table} has its folder under {upload}: {paths:#?}"
        );
    }
    // The operator's clean-up once the run is done (README).
    let rm = stack(&["hdfs-dfs", "-rm", "-r", "-skipTrash", &upload]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    drop(hdfs);
}
