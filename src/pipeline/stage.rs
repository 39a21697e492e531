//! The HBase side of the write path for a bulk load (`--hbase-load bulk`):
//! instead of puts, a unit's cells go into sorted run files, one per table
//! and spill (indexed by region), in the unit's own folder under the staging dir.
//!
//! Memory is bounded: a worker's cells, whatever their table, go into one
//! buffer of the spill size, reserved once; when a cell does not fit, the
//! buffer is sorted and written out as runs, and buffering starts again. A unit's
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
    /// The HBase tables met so far; a cell names its table by position.
    tables: Vec<String>,
    /// Every table's cells, in one buffer of the spill size.
    buf: RunBuf,
    unit: Option<PathBuf>,
    seq: u32,
}

impl Stager {
    /// `root`: the folder of the units' folders; `splits`: the tables'
    /// region boundaries; `spill_bytes`: the buffer's size (cells and their
    /// index): when a cell does not fit, the buffer is spilled.
    pub fn new(root: &Path, splits: Vec<Vec<u8>>, spill_bytes: usize) -> Stager {
        Stager {
            root: root.to_path_buf(),
            splits,
            tables: Vec::new(),
            buf: RunBuf::new(spill_bytes),
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
        let t = self.table(table);
        let mut cs: Vec<(&[u8], &[u8])> = cells::canonical_cells(c).collect();
        self.push_row(t, &c.row_key, family, c.version_ms as i64, &mut cs)
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
        let t = self.table(table);
        for (row, cs) in cells::id_map_rows(legacy, new_id, room_id, buckets) {
            let mut cs: Vec<(&[u8], &[u8])> = cs
                .iter()
                .map(|(q, v)| (q.as_bytes(), v.as_bytes()))
                .collect();
            self.push_row(t, &row, family, version_ms as i64, &mut cs)?;
        }
        Ok(())
    }

    fn table(&mut self, table: &str) -> u16 {
        let i = match self.tables.iter().position(|t| t == table) {
            Some(i) => i,
            None => {
                self.tables.push(table.to_string());
                self.tables.len() - 1
            }
        };
        u16::try_from(i).expect("fewer than 65,536 HBase tables")
    }

    /// Buffers one row's cells, spilling the buffer first when they do not fit.
    fn push_row(
        &mut self,
        table: u16,
        row: &[u8],
        family: &[u8],
        ts: i64,
        cells: &mut [(&[u8], &[u8])],
    ) -> Result<()> {
        if !self.buf.is_empty() && !self.buf.fits(RunBuf::row_len(row, family, cells)) {
            tokio::task::block_in_place(|| self.spill())?;
        }
        self.buf.push_row(table, row, family, ts, cells);
        Ok(())
    }

    /// Writes the buffer out as sorted runs, one file per table, its cells
    /// region by region (`runs::read_index`): `<unit>/<table>/s<spill>.run`.
    fn spill(&mut self) -> Result<()> {
        let Some(unit) = &self.unit else {
            return Err(crate::error::Error::Other(
                "staged cells outside a unit of work".into(),
            ));
        };
        if self.buf.is_empty() {
            return Ok(());
        }
        let seq = self.seq;
        self.seq += 1;
        let dirs: Vec<PathBuf> = self.tables.iter().map(|t| unit.join(t.as_str())).collect();
        for t in self.buf.tables() {
            create_private_dir(&dirs[usize::from(t)])?;
        }
        let splits = &self.splits;
        self.buf
            .write_sorted(
                |row| region_of(splits, row),
                |t| dirs[usize::from(t)].join(format!("s{seq:05}.run")),
            )
            .map_err(|e| cp_err(unit, e))?;
        Ok(())
    }

    /// The commit point: the rest is written, and the unit's runs (files,
    /// folders, then the `SEALED` mark) are durable.
    pub fn seal(&mut self) -> Result<()> {
        self.spill()?;
        let unit = self.unit.take().expect("spill checked it");
        for table in &self.tables {
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
        self.buf.clear();
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
