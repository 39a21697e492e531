//! Durable progress of a run. A chunk is recorded only after every target
//! acknowledged it. Files live under `<state_dir>/<phase>/<run_id>/`, one set
//! per shard so that several shards may share a folder:
//! - `shard-I-of-N.json`: the run's identity (start position, plan settings);
//! - `shard-I-of-N.done.jsonl`: one line per finished chunk, with its counts;
//! - `shard-I-of-N.dead.jsonl`: the dead-letter file.
//!
//! Appends are fsynced; a torn last line (crash mid-write) is ignored.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
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

pub struct RunDir {
    dir: PathBuf,
    stem: String,
}

impl RunDir {
    pub fn new(state_dir: &Path, phase: &str, run_id: &str, shard: Shard) -> RunDir {
        RunDir {
            dir: state_dir.join(phase).join(run_id),
            stem: shard.file_stem(),
        }
    }

    pub fn record_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem))
    }
    pub fn done_path(&self) -> PathBuf {
        self.dir.join(format!("{}.done.jsonl", self.stem))
    }
    pub fn dead_path(&self) -> PathBuf {
        self.dir.join(format!("{}.dead.jsonl", self.stem))
    }

    pub fn exists(&self) -> bool {
        self.record_path().exists()
    }

    pub fn load_record(&self) -> Result<RunRecord> {
        let p = self.record_path();
        let text = std::fs::read_to_string(&p).map_err(|e| cp_err(&p, e))?;
        serde_json::from_str(&text).map_err(|e| cp_err(&p, e))
    }

    /// Writes the record atomically (temp file, fsync, rename).
    pub fn save_record(&self, r: &RunRecord) -> Result<()> {
        write_json_atomic(&self.record_path(), r)
    }

    pub fn load_done(&self) -> Result<Vec<ChunkDone>> {
        read_jsonl(&self.done_path())
    }

    pub fn done_log(&self) -> Result<JsonlAppender> {
        JsonlAppender::open(&self.done_path())
    }

    /// Keeps only the dead letters of chunks that are done: the others will be
    /// copied again and dead-letter their rows again.
    pub fn prune_dead(&self, done: &BTreeMap<(String, u64), ChunkDone>) -> Result<()> {
        let p = self.dead_path();
        if !p.exists() {
            return Ok(());
        }
        let lines: Vec<serde_json::Value> = read_jsonl(&p)?;
        let keep: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|v| {
                let t = v.get("table").and_then(|t| t.as_str()).unwrap_or("");
                let c = v.get("chunk").and_then(|c| c.as_u64()).unwrap_or(u64::MAX);
                done.contains_key(&(t.to_string(), c))
            })
            .collect();
        let tmp = p.with_extension("jsonl.tmp");
        let mut f = File::create(&tmp).map_err(|e| cp_err(&tmp, e))?;
        for v in keep {
            serde_json::to_writer(&mut f, v).map_err(|e| cp_err(&tmp, e))?;
            f.write_all(b"\n").map_err(|e| cp_err(&tmp, e))?;
        }
        f.sync_all().map_err(|e| cp_err(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| cp_err(&p, e))
    }
}

/// Writes `v` as JSON to `p` atomically: temp file, fsync, rename. A crash
/// leaves either the old file or the new one.
pub fn write_json_atomic<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|e| cp_err(dir, e))?;
    }
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(v).map_err(|e| cp_err(p, e))?;
    let mut f = File::create(&tmp).map_err(|e| cp_err(&tmp, e))?;
    f.write_all(&body)
        .and_then(|_| f.sync_all())
        .map_err(|e| cp_err(&tmp, e))?;
    std::fs::rename(&tmp, p).map_err(|e| cp_err(p, e))
}

fn cp_err(p: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: p.display().to_string(),
        message: e.to_string(),
    }
}

/// Reads a JSON-lines file; a missing file is empty; an unparsable LAST line
/// is a torn write and is dropped, any other bad line is an error.
pub fn read_jsonl<T: DeserializeOwned>(p: &Path) -> Result<Vec<T>> {
    let f = match File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(cp_err(p, e)),
    };
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|e| cp_err(p, e))?;
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => return Err(cp_err(p, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

/// An append-only JSON-lines file whose appends are durable when `sync` returns.
pub struct JsonlAppender {
    file: File,
    path: PathBuf,
}

impl JsonlAppender {
    pub fn open(p: &Path) -> Result<JsonlAppender> {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| cp_err(dir, e))?;
        }
        // A torn last line from a crash is cut off before appending after it.
        if let Ok(b) = std::fs::read(p) {
            if !b.is_empty() && !b.ends_with(b"\n") {
                let keep = b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
                let f = OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| cp_err(p, e))?;
                f.set_len(keep as u64).map_err(|e| cp_err(p, e))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| cp_err(p, e))?;
        Ok(JsonlAppender {
            file,
            path: p.to_path_buf(),
        })
    }

    pub fn append<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let mut line = serde_json::to_vec(v).map_err(|e| cp_err(&self.path, e))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| cp_err(&self.path, e))
    }

    /// Appends an already-encoded JSON line (without its newline).
    pub fn append_raw(&mut self, json: &[u8]) -> Result<()> {
        self.file
            .write_all(json)
            .and_then(|_| self.file.write_all(b"\n"))
            .map_err(|e| cp_err(&self.path, e))
    }

    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| cp_err(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
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
