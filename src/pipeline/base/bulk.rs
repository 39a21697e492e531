//! `--hbase-load bulk`: the end of a base run that staged its HBase cells
//! (`pipeline::stage`) instead of putting them.
//!
//! When every chunk of the shard is committed, the HBase tables go through
//! two steps (all tables' HFiles, then all tables' loads), each recorded per
//! table in the staging dir's `state/` once done, so a resumed run skips
//! what is done and redoes what is not:
//!
//! 1. **HFiles**: the runs of each region, from every committed chunk, are
//!    merged (at most [`FAN_IN`] runs open at once; more are merged in
//!    passes) into HFiles (`sink::hbase::hfile`) under
//!    `hfiles/<table>/<family>/`. Files are written beside, synced, then
//!    renamed in; a table interrupted half-way is written again from its runs.
//!    Once a table's HFiles are recorded its runs are deleted.
//! 2. **Load**: the command given by `--bulk-load-command` is run once, on
//!    the `hfiles/<table> <table>` pairs of every table not loaded yet
//!    (`scripts/hbase/BulkLoadTables.java` calls HBase's bulk-load tool,
//!    `BulkLoadHFilesTool`, for each in one JVM). It moves the files into
//!    the regions; a table it reports loaded is recorded at once, and a load
//!    interrupted half-way is run again on the files still there. Cells keep
//!    their source versions as timestamps, so loading a cell twice, or after
//!    a newer write, changes nothing a reader sees.
//!
//! Only the runs of chunks in the done list are read; a committed chunk
//! whose runs are missing (a state dir lost with its pod) stops the run:
//! its HBase cells exist nowhere else.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::loader::Loader;
use crate::checkpoint::files::{cp_err, create_private_dir, sync_dir};
use crate::checkpoint::{read_json, write_json_atomic, ChunkDone};
use crate::error::{Error, Result};
use crate::pipeline::stage::{Stager, SEALED};
use crate::sink::hbase::hfile::{FileMeta, HFileWriter};
use crate::sink::hbase::runs::{merge_into, read_index, Merge, RunSlice};

/// Run files a merge holds open at once.
pub const FAN_IN: usize = 64;
/// A worker's staged cells in memory before they are spilled as a run.
pub const SPILL_BYTES: usize = 16 << 20;

/// The folder of a chunk's runs.
pub fn unit_name(table: &str, k: u64) -> String {
    format!("{table}.{k}")
}

/// A worker's stager under the staging dir `root`.
pub fn stager(root: &Path, splits: Vec<Vec<u8>>) -> Stager {
    Stager::new(&root.join("runs"), splits, SPILL_BYTES)
}

/// One HBase table's bulk load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableLoad {
    pub table: String,
    pub hfiles: u64,
    pub cells: u64,
    pub hfile_bytes: u64,
    pub hfile_s: f64,
    pub load_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkSummary {
    pub staging_dir: String,
    pub hfiles: u64,
    pub cells: u64,
    pub hfile_bytes: u64,
    /// Seconds spent writing HFiles (merging the runs included).
    pub hfile_s: f64,
    /// Seconds of the load step (the tables are loaded side by side).
    pub load_s: f64,
    /// This process's own CPU seconds and peak RSS for the whole run (the
    /// bulk-load tool, a child process, excluded).
    pub process_cpu_s: f64,
    pub process_peak_rss_kib: u64,
    pub tables: Vec<TableLoad>,
}

/// What the end of a bulk-loading run needs.
pub(super) struct Finish<'a> {
    pub root: &'a Path,
    pub family: &'a str,
    pub tables: &'a [String],
    pub done: &'a BTreeMap<(String, u64), ChunkDone>,
    pub command: &'a [String],
}

impl Finish<'_> {
    fn state(&self, table: &str, step: &str) -> PathBuf {
        self.root.join("state").join(format!("{table}.{step}.json"))
    }

    fn table_dir(&self, table: &str) -> PathBuf {
        self.root.join("hfiles").join(table)
    }

    /// Writes the HFiles of every table and loads them (see the module
    /// comment): each table is handed to the loader as soon as its HFiles
    /// are written, so its load overlaps the next table's HFiles.
    pub(super) fn run(&self, mut loader: Option<Loader>) -> Result<BulkSummary> {
        let mut loads: Vec<TableLoad> = Vec::new();
        // Tables handed to the loader and not reported loaded yet.
        let mut given: Vec<(usize, Instant)> = Vec::new();
        for table in self.tables {
            if let Some(l) = read_json::<TableLoad>(&self.state(table, "loaded"))? {
                loads.push(l);
                continue;
            }
            let load = match read_json::<TableLoad>(&self.state(table, "hfiles"))? {
                Some(l) => l,
                None => {
                    // One table's run files at a time: the list grows with
                    // the chunks, so it is never held for every table.
                    let l = self.write_hfiles(table, &self.committed_runs(table)?)?;
                    write_json_atomic(&self.state(table, "hfiles"), &l)?;
                    self.drop_runs(table)?;
                    l
                }
            };
            let i = loads.len();
            loads.push(load);
            let fam = self.table_dir(table).join(self.family);
            if fam.exists() && !list(&fam)?.is_empty() {
                // A loader that ended before it was given anything (it was
                // started with the copy, which may have taken hours) is
                // replaced; one that ended later has tables to answer for.
                if given.is_empty() {
                    if let Some(gone) = loader.as_mut().and_then(Loader::ended) {
                        tracing::warn!("the bulk-load command ended before it was given a table ({gone}); starting it again");
                        loader = None;
                    }
                }
                let l = match loader.as_mut() {
                    Some(l) => l,
                    None => loader.insert(Loader::start(self.command)?),
                };
                l.give(&self.table_dir(table), table)?;
                given.push((i, Instant::now()));
            } else {
                // Nothing (left) to load: an empty table, or loaded by a killed run.
                loads[i].load_s = 0.0;
                write_json_atomic(&self.state(table, "loaded"), &loads[i])?;
            }
            if let Some(l) = &loader {
                self.record_reported(l.reported(Duration::ZERO), &mut loads, &mut given)?;
            }
        }
        let hfiles_done = Instant::now();
        if let Some(l) = loader {
            let (rest, status, tail) = l.finish()?;
            self.record_reported(rest, &mut loads, &mut given)?;
            // Given and not reported loaded: not loaded, whatever the exit.
            let pending: Vec<&str> = given
                .iter()
                .map(|&(i, _)| loads[i].table.as_str())
                .collect();
            if !status.success() {
                return Err(Error::Other(format!(
                    "bulk load of {} failed ({status}): {tail}",
                    if pending.is_empty() {
                        "the tables".to_string()
                    } else {
                        pending.join(", ")
                    }
                )));
            }
            // Exit 0 is not enough: a table counts as loaded only when the
            // loader said so (one that exits without reading its input
            // loaded nothing).
            if !pending.is_empty() {
                return Err(Error::Other(format!(
                    "bulk load: the load command ({}) exited 0 without reporting {} loaded \
                     (it must print `loaded TABLE` for each table it loads); \
                     `--resume` loads them again: {tail}",
                    self.command.join(" "),
                    pending.join(", ")
                )));
            }
        }
        let load_s = hfiles_done.elapsed().as_secs_f64();
        // Everything is in HBase: the runs are no longer needed.
        for d in ["runs", "tmp"] {
            let p = self.root.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| cp_err(&p, e))?;
            }
        }
        Ok(BulkSummary {
            staging_dir: self.root.display().to_string(),
            hfiles: loads.iter().map(|l| l.hfiles).sum(),
            cells: loads.iter().map(|l| l.cells).sum(),
            hfile_bytes: loads.iter().map(|l| l.hfile_bytes).sum(),
            hfile_s: loads.iter().map(|l| l.hfile_s).sum(),
            load_s,
            process_cpu_s: own_usage().0,
            process_peak_rss_kib: own_usage().1,
            tables: loads,
        })
    }

    /// Records the tables the loader reported loaded.
    fn record_reported(
        &self,
        names: Vec<String>,
        loads: &mut [TableLoad],
        given: &mut Vec<(usize, Instant)>,
    ) -> Result<()> {
        for name in names {
            if let Some(pos) = given.iter().position(|&(i, _)| loads[i].table == name) {
                let (i, at) = given.remove(pos);
                self.record_loaded(&mut loads[i], at)?;
            }
        }
        Ok(())
    }

    /// Deletes the runs of `table` once its HFiles are recorded (nothing
    /// reads them again), so the staging dir never holds every table's runs
    /// and HFiles at once.
    fn drop_runs(&self, table: &str) -> Result<()> {
        let runs = self.root.join("runs");
        if !runs.exists() {
            return Ok(());
        }
        for unit in list(&runs)? {
            let t = unit.join(table);
            if t.is_dir() {
                std::fs::remove_dir_all(&t).map_err(|e| cp_err(&t, e))?;
            }
        }
        Ok(())
    }

    /// The runs of `table` in every committed chunk: region → its slices.
    fn committed_runs(&self, table: &str) -> Result<BTreeMap<usize, Vec<RunSlice>>> {
        let mut out: BTreeMap<usize, Vec<RunSlice>> = BTreeMap::new();
        let mut missing = Vec::new();
        let runs = self.root.join("runs");
        for ((source, k), d) in self.done {
            if d.hbase == 0 {
                continue;
            }
            let unit = runs.join(unit_name(source, *k));
            if !unit.join(SEALED).exists() {
                missing.push(format!("{source} chunk {k}"));
                continue;
            }
            let t = unit.join(table);
            if !t.is_dir() {
                continue;
            }
            for f in list(&t)? {
                for (region, slice) in read_index(&f).map_err(|e| cp_err(&f, e))? {
                    out.entry(region).or_default().push(slice);
                }
            }
        }
        if !missing.is_empty() {
            return Err(Error::Other(format!(
                "bulk load: the staged runs of {} committed chunks are missing from {} (first: {}); \
                 the state dir was lost or wiped, so their HBase cells exist nowhere else. \
                 Copy them again into HBase with a new --run-id (or --hbase-load put)",
                missing.len(),
                runs.display(),
                missing[0]
            )));
        }
        Ok(out)
    }

    fn write_hfiles(
        &self,
        table: &str,
        regions: &BTreeMap<usize, Vec<RunSlice>>,
    ) -> Result<TableLoad> {
        let started = Instant::now();
        let dir = self.table_dir(table);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| cp_err(&dir, e))?;
        }
        let fam = dir.join(self.family);
        let tmp = self.root.join("tmp");
        create_private_dir(&fam)?;
        create_private_dir(&tmp)?;
        let mut load = TableLoad {
            table: table.to_string(),
            ..TableLoad::default()
        };
        // Regions are independent (their own runs, files and names): they
        // are merged side by side, one per core.
        let regions: Vec<(&usize, &Vec<RunSlice>)> = regions.iter().collect();
        let parts: Vec<Result<TableLoad>> = regions
            .par_iter()
            .map(|&(&region, paths)| {
                let mut part = TableLoad::default();
                let paths = reduce_fan_in(paths.clone(), &tmp, &format!("{table}.{region}"))?;
                let mut out = RegionFiles {
                    fam: &fam,
                    tmp: &tmp,
                    family: self.family.as_bytes(),
                    region,
                    n: 0,
                    cur: None,
                    load: &mut part,
                };
                Merge::open(&paths)
                    .and_then(|m| m.for_each(|k, v| out.append(k, v)))
                    .map_err(|e| cp_err(&fam, e))?;
                out.close()?;
                Ok(part)
            })
            .collect();
        for part in parts {
            let part = part?;
            load.hfiles += part.hfiles;
            load.cells += part.cells;
            load.hfile_bytes += part.hfile_bytes;
        }
        sync_dir(&fam)?;
        sync_dir(&dir)?;
        load.hfile_s = started.elapsed().as_secs_f64();
        tracing::info!(
            table,
            hfiles = load.hfiles,
            cells = load.cells,
            bytes = load.hfile_bytes,
            seconds = load.hfile_s,
            "HFiles written"
        );
        Ok(load)
    }

    fn record_loaded(&self, load: &mut TableLoad, started: Instant) -> Result<()> {
        crate::pipeline::failpoint::kill_after("load");
        load.load_s = started.elapsed().as_secs_f64();
        write_json_atomic(&self.state(&load.table, "loaded"), &*load)?;
        tracing::info!(table = load.table, seconds = load.load_s, "bulk load done");
        Ok(())
    }
}

/// The HFiles of one region, a new one begun when a file is full.
struct RegionFiles<'a> {
    fam: &'a Path,
    tmp: &'a Path,
    family: &'a [u8],
    region: usize,
    n: u32,
    cur: Option<(PathBuf, HFileWriter<BufWriter<File>>)>,
    load: &'a mut TableLoad,
}

impl RegionFiles<'_> {
    fn append(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        if self.cur.is_none() {
            let p = self.tmp.join(format!("{:06}{:04}", self.region, self.n));
            let w = HFileWriter::new(
                BufWriter::with_capacity(1 << 20, File::create(&p)?),
                self.family,
            );
            self.cur = Some((p, w));
        }
        let (_, w) = self.cur.as_mut().expect("opened above");
        w.append_key(key, value)?;
        if w.should_roll() {
            self.close().map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// Finishes the file in hand: synced, then renamed into the family dir.
    fn close(&mut self) -> Result<()> {
        let Some((p, w)) = self.cur.take() else {
            return Ok(());
        };
        let meta = FileMeta {
            created_ms: super::now_ms() as i64,
            task: "falcon-migrate base".into(),
        };
        let (out, stats) = w.finish(&meta).map_err(|e| cp_err(&p, e))?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(|e| cp_err(&p, e))?;
        let name = p.file_name().expect("a file name").to_owned();
        let dest = self.fam.join(name);
        std::fs::rename(&p, &dest).map_err(|e| cp_err(&dest, e))?;
        self.n += 1;
        self.load.hfiles += 1;
        self.load.cells += stats.entries;
        self.load.hfile_bytes += stats.bytes;
        crate::pipeline::failpoint::kill_after("hfile");
        Ok(())
    }
}

/// Merges runs in passes until at most [`FAN_IN`] remain.
fn reduce_fan_in(mut paths: Vec<RunSlice>, tmp: &Path, tag: &str) -> Result<Vec<RunSlice>> {
    let mut pass = 0;
    while paths.len() > FAN_IN {
        let mut next = Vec::new();
        for (i, group) in paths.chunks(FAN_IN).enumerate() {
            let out = tmp.join(format!("{tag}.p{pass}.{i}.run"));
            next.push(merge_into(group, &out).map_err(|e| cp_err(&out, e))?);
        }
        paths = next;
        pass += 1;
    }
    Ok(paths)
}

/// This process's CPU seconds (user + system, from `/proc/self/stat`, in
/// Linux's fixed 100 ticks a second) and peak RSS in KiB (`VmHWM`).
fn own_usage() -> (f64, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which ends with the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            l.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0);
    (cpu, rss)
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| cp_err(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| cp_err(dir, e))?;
    v.sort();
    Ok(v)
}
