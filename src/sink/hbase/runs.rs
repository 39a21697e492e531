//! Sorted runs of HBase cells for the bulk load: a bounded buffer of cells
//! is sorted in HBase's order ([`hfile::compare_keys`]) and written out as
//! one run file per region, and the runs of a region are merged back into
//! one sorted stream for the HFile writer.
//!
//! A run file is a sequence of records `key length u32 BE, value length u32
//! BE, key (a KeyValue key, family included), value`, in order. A cell whose
//! key repeats (the same row, column and version twice) is kept once.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::hfile::{self, compare_keys};

/// Cells of one table in arrival order, sorted when written out.
#[derive(Default)]
pub struct RunBuf {
    data: Vec<u8>,
    /// Each record's row prefix (`hfile::row_prefix`) and start in `data`.
    at: Vec<(u128, usize)>,
}

fn record_key(data: &[u8], at: usize) -> &[u8] {
    let kl = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
    &data[at + 8..at + 8 + kl]
}

fn record(data: &[u8], at: usize) -> &[u8] {
    let kl = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
    let vl = u32::from_be_bytes(data[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
    &data[at..at + 8 + kl + vl]
}

impl RunBuf {
    pub fn push(&mut self, row: &[u8], family: &[u8], qualifier: &[u8], ts: i64, value: &[u8]) {
        let at = self.data.len();
        self.data.extend_from_slice(&[0; 8]);
        hfile::encode_key(&mut self.data, row, family, qualifier, ts);
        let kl = (self.data.len() - at - 8) as u32;
        self.data[at..at + 4].copy_from_slice(&kl.to_be_bytes());
        self.data[at + 4..at + 8].copy_from_slice(&(value.len() as u32).to_be_bytes());
        self.data.extend_from_slice(value);
        self.at.push((hfile::row_prefix(row), at));
    }

    pub fn bytes(&self) -> usize {
        self.data.len() + self.at.len() * std::mem::size_of::<(u128, usize)>()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.at.clear();
    }

    /// Sorts the cells and writes them, one file per region: `region(row)`
    /// names a region (regions are key ranges, so sorted cells come region
    /// by region) and `path(region)` its file. Files are synced; returns
    /// them. The buffer is left empty.
    pub fn write_sorted(
        &mut self,
        region: impl Fn(&[u8]) -> usize,
        path: impl Fn(usize) -> PathBuf,
    ) -> io::Result<Vec<PathBuf>> {
        let data = &self.data;
        self.at.sort_unstable_by(|&(pa, a), &(pb, b)| {
            pa.cmp(&pb)
                .then_with(|| compare_keys(record_key(data, a), record_key(data, b)))
        });
        let mut out = Vec::new();
        let mut cur: Option<(usize, BufWriter<File>)> = None;
        let mut last: Option<&[u8]> = None;
        // The region of the last row: a row's cells are side by side.
        let mut last_row: Option<(&[u8], usize)> = None;
        for &(_, at) in &self.at {
            let key = record_key(data, at);
            // Equal keys are equal bytes (one encoding per key).
            if last == Some(key) {
                continue;
            }
            last = Some(key);
            let row = hfile::key_row(key);
            let r = match last_row {
                Some((lr, r)) if lr == row => r,
                _ => {
                    let r = region(row);
                    last_row = Some((row, r));
                    r
                }
            };
            if cur.as_ref().is_none_or(|(cr, _)| *cr != r) {
                if let Some((_, w)) = cur.take() {
                    finish(w)?;
                }
                let p = path(r);
                cur = Some((r, BufWriter::with_capacity(1 << 16, File::create(&p)?)));
                out.push(p);
            }
            let (_, w) = cur.as_mut().expect("opened above");
            w.write_all(record(data, at))?;
        }
        if let Some((_, w)) = cur.take() {
            finish(w)?;
        }
        self.clear();
        Ok(out)
    }
}

fn finish(w: BufWriter<File>) -> io::Result<()> {
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
}

/// Reads a run file record by record.
pub struct RunReader {
    r: BufReader<File>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl RunReader {
    pub fn open(p: &Path) -> io::Result<RunReader> {
        Ok(RunReader {
            r: BufReader::with_capacity(1 << 16, File::open(p)?),
            key: Vec::new(),
            value: Vec::new(),
        })
    }

    /// The next record, or false at the end.
    fn advance(&mut self) -> io::Result<bool> {
        let mut h = [0u8; 8];
        match self.r.read_exact(&mut h[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        self.r.read_exact(&mut h[1..])?;
        let kl = u32::from_be_bytes(h[..4].try_into().expect("4 bytes")) as usize;
        let vl = u32::from_be_bytes(h[4..].try_into().expect("4 bytes")) as usize;
        self.key.resize(kl, 0);
        self.r.read_exact(&mut self.key)?;
        self.value.resize(vl, 0);
        self.r.read_exact(&mut self.value)?;
        Ok(true)
    }
}

struct Head {
    reader: RunReader,
}

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    // BinaryHeap is a max-heap: the smallest key must compare greatest.
    fn cmp(&self, o: &Self) -> Ordering {
        compare_keys(&o.reader.key, &self.reader.key)
    }
}

/// Merges sorted runs into one sorted stream, a repeated key once.
pub struct Merge {
    heap: BinaryHeap<Head>,
    last: Vec<u8>,
    started: bool,
}

impl Merge {
    pub fn open(paths: &[PathBuf]) -> io::Result<Merge> {
        let mut heap = BinaryHeap::with_capacity(paths.len());
        for p in paths {
            let mut reader = RunReader::open(p)?;
            if reader.advance()? {
                heap.push(Head { reader });
            }
        }
        Ok(Merge {
            heap,
            last: Vec::new(),
            started: false,
        })
    }

    /// Calls `f(key, value)` for each cell in order.
    pub fn for_each(mut self, mut f: impl FnMut(&[u8], &[u8]) -> io::Result<()>) -> io::Result<()> {
        while let Some(mut top) = self.heap.peek_mut() {
            let r = &mut top.reader;
            // Equal keys are equal bytes (one encoding per key).
            if !self.started || self.last != r.key {
                f(&r.key, &r.value)?;
                self.last.clear();
                self.last.extend_from_slice(&r.key);
                self.started = true;
            }
            if !r.advance()? {
                std::collections::binary_heap::PeekMut::pop(top);
            }
        }
        Ok(())
    }
}

/// Writes a merged stream of runs back as one run (a merge pass when there
/// are more runs than files one merge may hold open).
pub fn merge_into(paths: &[PathBuf], out: &Path) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 16, File::create(out)?);
    Merge::open(paths)?.for_each(|k, v| {
        w.write_all(&(k.len() as u32).to_be_bytes())?;
        w.write_all(&(v.len() as u32).to_be_bytes())?;
        w.write_all(k)?;
        w.write_all(v)
    })?;
    finish(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(paths: &[PathBuf]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        Merge::open(paths)
            .unwrap()
            .for_each(|k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn runs_split_by_region_and_merge_back_in_order_without_repeats() {
        let dir = std::env::temp_dir().join(format!("falcon-runs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let region = |row: &[u8]| usize::from(row[0] >= 2);
        let mut all = Vec::new();
        let mut files = Vec::new();
        for run in 0..3u8 {
            let mut b = RunBuf::default();
            for i in (0..100u8).rev() {
                let row = [i % 4, i];
                b.push(&row, b"d", b"q", i64::from(run % 2), &[run, i]);
            }
            assert!(!b.is_empty());
            let written = b
                .write_sorted(region, |r| dir.join(format!("run{run}-r{r}")))
                .unwrap();
            assert!(b.is_empty());
            assert_eq!(written.len(), 2);
            files.push(written);
        }
        for r in 0..2 {
            let paths: Vec<PathBuf> = files.iter().map(|f| f[r].clone()).collect();
            let got = collect(&paths);
            // Runs 0 and 2 wrote the same keys (version 0): each key once.
            assert_eq!(got.len(), 100, "region {r}");
            for w in got.windows(2) {
                assert_eq!(compare_keys(&w[0].0, &w[1].0), Ordering::Less);
            }
            for (k, _) in &got {
                assert_eq!(region(hfile::split_key(k).0), r);
            }
            // A merge pass keeps the same stream.
            let merged = dir.join(format!("merged{r}"));
            merge_into(&paths, &merged).unwrap();
            assert_eq!(collect(&[merged]), got);
            all.extend(got);
        }
        assert_eq!(all.len(), 200);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
