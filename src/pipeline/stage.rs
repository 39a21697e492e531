//! The HBase side of the write path for a bulk load (`--hbase-load bulk`):
//! instead of puts, a unit's cells go into sorted run files, one per table
//! and region, in the unit's own folder under the staging dir.
//!
//! Memory is bounded: when the buffered cells pass the spill size they are
//! sorted and written out as a run, and buffering starts again. A unit's
//! folder is emptied when an attempt begins, so a retried or resumed unit
//! never leaves cells of an earlier attempt behind. At the commit point
//! ([`Stager::seal`]) the rest is written, every file and folder is fsynced
//! and a `SEALED` file is written last: only then may the unit's Kafka
//! transaction commit. The runs of committed units are merged into HFiles
//! and loaded at the end of the phase (`pipeline::base::bulk`).

use std::path::{Path, PathBuf};

use crate::checkpoint::files::{cp_err, create_private_dir, sync_dir};
use crate::error::Result;
use crate::mapping::Canonical;
use crate::sink::hbase::cells;
use crate::sink::hbase::runs::RunBuf;

/// Written last into a unit's folder, once its runs are durable.
pub const SEALED: &str = "SEALED";

/// Buffers, sorts and spills one worker's cells (see the module comment).
pub struct Stager {
    root: PathBuf,
    splits: Vec<Vec<u8>>,
    spill_bytes: usize,
    /// One buffer per HBase table.
    tables: Vec<(String, RunBuf)>,
    unit: Option<PathBuf>,
    seq: u32,
}

impl Stager {
    /// `root`: the folder of the units' folders; `splits`: the tables'
    /// region boundaries; `spill_bytes`: the buffer that triggers a spill.
    pub fn new(root: &Path, splits: Vec<Vec<u8>>, spill_bytes: usize) -> Stager {
        Stager {
            root: root.to_path_buf(),
            splits,
            spill_bytes,
            tables: Vec::new(),
            unit: None,
            seq: 0,
        }
    }

    /// Starts an attempt of unit `name`: its folder is emptied.
    pub fn begin(&mut self, name: &str) -> Result<()> {
        self.reset();
        let dir = self.root.join(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(cp_err(&dir, e)),
        }
        create_private_dir(&dir)?;
        self.unit = Some(dir);
        Ok(())
    }

    /// The cells of a canonical row, stamped with its source version.
    pub fn push_canonical(&mut self, table: &str, c: &Canonical, family: &[u8]) -> Result<()> {
        let ts = c.version_ms as i64;
        let buf = self.buf(table);
        for (q, v) in cells::canonical_cells(c) {
            buf.push(&c.row_key, family, q, ts, v);
        }
        self.spill_if_full()
    }

    /// The two id-map rows of a message (`cells::id_map_rows`), stamped like
    /// the message row.
    pub fn push_id_map(
        &mut self,
        table: &str,
        (legacy, new_id, room_id): (u64, u64, u64),
        buckets: u16,
        version_ms: u64,
        family: &[u8],
    ) -> Result<()> {
        let ts = version_ms as i64;
        let buf = self.buf(table);
        for (row, cs) in cells::id_map_rows(legacy, new_id, room_id, buckets) {
            for (q, v) in &cs {
                buf.push(&row, family, q.as_bytes(), ts, v.as_bytes());
            }
        }
        self.spill_if_full()
    }

    fn buf(&mut self, table: &str) -> &mut RunBuf {
        let i = match self.tables.iter().position(|(t, _)| t == table) {
            Some(i) => i,
            None => {
                self.tables.push((table.to_string(), RunBuf::default()));
                self.tables.len() - 1
            }
        };
        &mut self.tables[i].1
    }

    fn spill_if_full(&mut self) -> Result<()> {
        if self.tables.iter().map(|(_, b)| b.bytes()).sum::<usize>() >= self.spill_bytes {
            tokio::task::block_in_place(|| self.spill())?;
        }
        Ok(())
    }

    /// Writes every buffer out as sorted runs, one file per region:
    /// `<unit>/<table>/r<region>.s<spill>.run`.
    fn spill(&mut self) -> Result<()> {
        let Some(unit) = &self.unit else {
            return Err(crate::error::Error::Other(
                "staged cells outside a unit of work".into(),
            ));
        };
        let seq = self.seq;
        self.seq += 1;
        let splits = &self.splits;
        for (table, buf) in &mut self.tables {
            if buf.is_empty() {
                continue;
            }
            let dir = unit.join(table.as_str());
            create_private_dir(&dir)?;
            buf.write_sorted(
                |row| region_of(splits, row),
                |r| dir.join(format!("r{r:05}.s{seq:05}.run")),
            )
            .map_err(|e| cp_err(&dir, e))?;
        }
        Ok(())
    }

    /// The commit point: the rest is written, and the unit's runs (files,
    /// folders, then the `SEALED` mark) are durable.
    pub fn seal(&mut self) -> Result<()> {
        self.spill()?;
        let unit = self.unit.take().expect("spill checked it");
        for (table, _) in &self.tables {
            let dir = unit.join(table.as_str());
            if dir.exists() {
                sync_dir(&dir)?;
            }
        }
        let mark = unit.join(SEALED);
        std::fs::File::create(&mark)
            .and_then(|f| f.sync_all())
            .map_err(|e| cp_err(&mark, e))?;
        sync_dir(&unit)?;
        sync_dir(&self.root)?;
        self.reset();
        Ok(())
    }

    /// Forgets the attempt in hand (its folder is emptied by the next `begin`).
    pub fn reset(&mut self) {
        for (_, b) in &mut self.tables {
            b.clear();
        }
        self.unit = None;
        self.seq = 0;
    }
}

/// The region of a row: how many split points are at or below it.
pub fn region_of(splits: &[Vec<u8>], row: &[u8]) -> usize {
    splits.partition_point(|s| s.as_slice() <= row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_fall_in_the_region_their_split_points_bound() {
        let splits = crate::mapping::keys::splits(4);
        assert_eq!(region_of(&splits, &[0, 9, 9]), 0);
        assert_eq!(region_of(&splits, &[1]), 1);
        assert_eq!(region_of(&splits, &[1, 0xff]), 1);
        assert_eq!(region_of(&splits, &[3, 0]), 3);
        assert_eq!(region_of(&splits, &[0xff]), 3);
        assert_eq!(region_of(&[], b"x"), 0);
    }
}
