//! The state dir: every file a phase keeps on local disk is read and written
//! here, and nowhere else. It is a cache of what the targets hold (the Kafka
//! markers committed with the data are the record); a unit of work is
//! recorded here only after the targets acknowledged it. Layout:
//! - `base/<run>/shard-I-of-N.json`: the shard's run record (start position, plan settings);
//! - `base/<run>/shard-I-of-N.done.jsonl`: one line per finished chunk, with its counts;
//! - `base/<run>/shard-I-of-N.dead.jsonl`: base's dead letters;
//! - `diff/<run>/checkpoint.json`, `diff/<run>/dead.jsonl`: binlog diff;
//! - `diff/<run>/watermark.json`, `diff/<run>/watermark-dead.jsonl`: watermark diff.
//!
//! Folders are 0700 and files 0600; rewrites are atomic and durable; appends
//! are fsynced, and a torn last line (a crash mid-append) is ignored, then cut.

pub mod dead;
pub mod files;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use dead::DeadLetter;
pub use files::{
    create_private_dir, private_file, read_json, read_jsonl, write_json_atomic, JsonlAppender,
};

use crate::error::Result;
use crate::position::Position;

/// Which part of the chunk space a process owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/N` with 0 ≤ i < N.
    pub fn parse(s: &str) -> std::result::Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("expected i/N, got {s:?}"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("bad shard index in {s:?}"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("bad shard count in {s:?}"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {s:?}: need 0 <= i < N"));
        }
        Ok(Shard { index, count })
    }

    /// Whether chunk `k` of the table at `table_index` belongs to this shard.
    /// The table offset spreads small one-chunk tables over the shards.
    pub fn owns(&self, table_index: usize, k: u64) -> bool {
        (k + table_index as u64) % u64::from(self.count) == u64::from(self.index)
    }

    pub fn file_stem(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The identity of a run, written once when it starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub shard: Shard,
    pub start_position: Position,
    pub start_ts_ms: u64,
    pub chunk_rows: u64,
    pub tables: Vec<String>,
    pub kafka: bool,
    pub hbase: bool,
    /// Highest worker count any attempt used: their Kafka transactional ids
    /// are fenced on resume.
    pub max_workers: usize,
    /// The source server's identity (see `pipeline::runlog::source_identity`).
    #[serde(default)]
    pub source_id: String,
    /// Key values per chunk, per table (the run's plan).
    #[serde(default)]
    pub widths: Vec<crate::pipeline::base::plan::TableWidth>,
}

/// A finished chunk with its counts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkDone {
    pub table: String,
    pub chunk: u64,
    pub read: u64,
    pub kafka: u64,
    pub hbase: u64,
    pub dead: u64,
}

/// The root of a job's local state.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// One shard's files of a base run.
    pub fn base_run(&self, run_id: &str, shard: Shard) -> RunDir {
        RunDir {
            dir: self.root.join("base").join(run_id),
            stem: shard.file_stem(),
        }
    }

    /// The run records of every shard of a base run found here.
    pub fn base_records(&self, run_id: &str) -> Result<Vec<RunRecord>> {
        let dir = self.root.join("base").join(run_id);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("shard-") && name.ends_with(".json") {
                out.extend(read_json::<RunRecord>(&e.path())?);
            }
        }
        out.sort_by_key(|r| r.shard.index);
        Ok(out)
    }

    fn diff_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("diff").join(run_id)
    }

    /// The binlog diff's checkpoint.
    pub fn diff_checkpoint(&self, run_id: &str) -> PathBuf {
        self.diff_dir(run_id).join("checkpoint.json")
    }

    pub fn diff_dead(&self, run_id: &str) -> PathBuf {
        self.diff_dir(run_id).join("dead.jsonl")
    }

    /// The watermark diff's checkpoint.
    pub fn watermark_checkpoint(&self, run_id: &str) -> PathBuf {
        self.diff_dir(run_id).join("watermark.json")
    }

    pub fn watermark_dead(&self, run_id: &str) -> PathBuf {
        self.diff_dir(run_id).join("watermark-dead.jsonl")
    }
}

/// One shard's files of a base run.
pub struct RunDir {
    dir: PathBuf,
    stem: String,
}

impl RunDir {
    pub fn record_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem))
    }
    pub fn done_path(&self) -> PathBuf {
        self.dir.join(format!("{}.done.jsonl", self.stem))
    }
    pub fn dead_path(&self) -> PathBuf {
        self.dir.join(format!("{}.dead.jsonl", self.stem))
    }
    /// The staging dir of a bulk load (`--hbase-load bulk`).
    pub fn bulk_dir(&self) -> PathBuf {
        self.dir.join(format!("{}.bulk", self.stem))
    }

    pub fn exists(&self) -> bool {
        self.record_path().exists()
    }

    pub fn load_record(&self) -> Result<Option<RunRecord>> {
        read_json(&self.record_path())
    }

    /// Writes the record atomically.
    pub fn save_record(&self, r: &RunRecord) -> Result<()> {
        write_json_atomic(&self.record_path(), r)
    }

    /// Finished chunks by (table, chunk).
    pub fn load_done(&self) -> Result<BTreeMap<(String, u64), ChunkDone>> {
        let mut out = BTreeMap::new();
        files::for_each_jsonl(&self.done_path(), |d: ChunkDone| {
            out.insert((d.table.clone(), d.chunk), d);
            Ok(())
        })?;
        Ok(out)
    }

    pub fn done_log(&self) -> Result<JsonlAppender> {
        JsonlAppender::open(&self.done_path())
    }

    /// Keeps only the dead letters of chunks that are done: the others will be
    /// copied again and dead-letter their rows again.
    pub fn prune_dead(&self, done: &BTreeMap<(String, u64), ChunkDone>) -> Result<()> {
        dead::prune(&self.dead_path(), |v| {
            let t = v["table"].as_str().unwrap_or("");
            let c = v["chunk"].as_u64().unwrap_or(u64::MAX);
            done.contains_key(&(t.to_string(), c))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_chunks() {
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        for t in 0..4 {
            for k in 0..100 {
                assert_eq!(shards.iter().filter(|s| s.owns(t, k)).count(), 1);
            }
        }
        assert!(Shard::parse("3/3").is_err());
        assert_eq!(Shard::parse("1/3").unwrap(), Shard { index: 1, count: 3 });
    }

    use std::io::Write;

    #[test]
    fn torn_last_line_is_ignored_then_cut_before_the_next_append() {
        let dir = std::env::temp_dir().join(format!("falcon-cp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("x.done.jsonl");
        let mut a = JsonlAppender::open(&p).unwrap();
        let d = ChunkDone {
            table: "message".into(),
            chunk: 1,
            read: 5,
            kafka: 5,
            hbase: 5,
            dead: 0,
        };
        a.append(&d).unwrap();
        a.sync().unwrap();
        drop(a);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"table\":\"mes")
            .unwrap();
        assert_eq!(read_jsonl::<ChunkDone>(&p).unwrap(), vec![d.clone()]);
        let mut a = JsonlAppender::open(&p).unwrap();
        let d2 = ChunkDone {
            chunk: 2,
            ..d.clone()
        };
        a.append(&d2).unwrap();
        drop(a);
        assert_eq!(read_jsonl::<ChunkDone>(&p).unwrap(), vec![d, d2]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
