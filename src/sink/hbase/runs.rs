//! Sorted runs of HBase cells for the bulk load: a fixed-size buffer of
//! cells is sorted in HBase's order ([`hfile::compare_keys`]) and written
//! out as one run file per table, its cells region by region, and the runs
//! of a region are merged back into one sorted stream for the HFile writer.
//!
//! A run file is a sequence of records `key length u32 BE, value length u32
//! BE, key (a KeyValue key, family included), value`, in order, then its
//! region index: per region present, `region u32 BE, offset u64 BE, length
//! u64 BE` (its records' bytes), then the count of regions (u32 BE) and
//! [`INDEX_MAGIC`]. One file per table, not per table and region: a spill
//! creates and syncs a file or two instead of dozens. A cell whose key
//! repeats (the same row, column and version twice) is kept once.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::hfile::{self, compare_keys};

/// Cells of several tables in arrival order, sorted when written out, in a
/// buffer of fixed size: [`RunBuf::fits`] says when it is full, and its
/// memory is reserved once and reused by every run (a buffer that grew by
/// doubling, one per table, kept up to twice the budget per table alive).
pub struct RunBuf {
    data: Vec<u8>,
    at: Vec<Entry>,
    /// Cells buffered per table index.
    counts: Vec<usize>,
    data_cap: usize,
    entries_cap: usize,
}

/// A buffered row: its table, its row prefix (`hfile::row_prefix`, as two
/// halves so the entry is 24 bytes, not 32), the start of its first cell in
/// `data` and how many cells follow there, already in HBase's order. One
/// entry per row, not per cell: the sort moves a third as many entries, and
/// a row's cells are written out as one slice.
#[derive(Clone, Copy)]
struct Entry {
    hi: u64,
    lo: u64,
    at: u32,
    table: u16,
    cells: u16,
}

/// The share of a buffer's budget for the cells' bytes; the rest indexes
/// them (24 bytes a row). The rows of the mapped tables average about 250
/// bytes (four cells of about 70), so the bytes fill up first.
const DATA_SHARE: f64 = 0.9;

fn record_key(data: &[u8], at: u32) -> &[u8] {
    let at = at as usize;
    let kl = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
    &data[at + 8..at + 8 + kl]
}

/// The length of the record at `at` (header, key and value).
fn record_len_at(data: &[u8], at: usize) -> usize {
    let kl = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
    let vl = u32::from_be_bytes(data[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
    8 + kl + vl
}

/// The bytes of a row's cells: its `cells` records from `at`.
fn group(data: &[u8], at: u32, cells: u16) -> &[u8] {
    let start = at as usize;
    let mut end = start;
    for _ in 0..cells {
        end += record_len_at(data, end);
    }
    &data[start..end]
}

/// The records of a row's bytes ([`group`]), in order.
fn records(mut g: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if g.is_empty() {
            return None;
        }
        let (r, rest) = g.split_at(record_len_at(g, 0));
        g = rest;
        Some(r)
    })
}

/// The key of a record ([`records`]).
fn key_of(record: &[u8]) -> &[u8] {
    record_key(record, 0)
}

impl RunBuf {
    /// A buffer of about `budget` bytes (cells and their index), at most
    /// 4 GiB of cells. The memory is taken as it is first written.
    pub fn new(budget: usize) -> RunBuf {
        let data_cap = ((budget as f64 * DATA_SHARE) as usize).clamp(1024, u32::MAX as usize);
        let entries_cap = ((budget - budget.min(data_cap)) / std::mem::size_of::<Entry>()).max(16);
        RunBuf {
            data: Vec::with_capacity(data_cap),
            at: Vec::with_capacity(entries_cap),
            counts: Vec::new(),
            data_cap,
            entries_cap,
        }
    }

    /// The bytes a cell takes in the buffer.
    pub fn record_len(row: &[u8], family: &[u8], qualifier: &[u8], value: &[u8]) -> usize {
        8 + hfile::key_len(row, family, qualifier) + value.len()
    }

    /// The bytes a row of `(qualifier, value)` cells takes in the buffer.
    pub fn row_len(row: &[u8], family: &[u8], cells: &[(&[u8], &[u8])]) -> usize {
        cells
            .iter()
            .map(|(q, v)| Self::record_len(row, family, q, v))
            .sum()
    }

    /// Whether a row of `len` bytes ([`RunBuf::row_len`]) fits without
    /// growing the buffer. A row larger than the whole buffer never fits:
    /// it is pushed into an empty buffer, which grows for it and shrinks
    /// back when written out.
    pub fn fits(&self, len: usize) -> bool {
        self.data.len() + len <= self.data_cap && self.at.len() < self.entries_cap
    }

    /// Buffers the cells of one row of table number `table`, all in
    /// `family` and stamped `ts`. They are put in HBase's order here (by
    /// qualifier), a qualifier given twice kept once (its first value).
    pub fn push_row(
        &mut self,
        table: u16,
        row: &[u8],
        family: &[u8],
        ts: i64,
        cells: &mut [(&[u8], &[u8])],
    ) {
        if cells.is_empty() {
            return;
        }
        assert!(
            self.data.len() + Self::row_len(row, family, cells) <= u32::MAX as usize,
            "a run buffer holds at most 4 GiB"
        );
        // Same row, family and version: the qualifier orders the cells.
        cells.sort_by(|a, b| a.0.cmp(b.0));
        let p = hfile::row_prefix(row);
        let mut start = self.data.len();
        let mut n: u16 = 0;
        let mut last: Option<&[u8]> = None;
        for &(q, v) in cells.iter() {
            if last == Some(q) {
                continue;
            }
            last = Some(q);
            if n == u16::MAX {
                // A row of more cells than an entry counts: it goes on in
                // another entry, and the sort's equal rows are merged.
                self.entry(table, p, start, n);
                start = self.data.len();
                n = 0;
            }
            let at = self.data.len();
            self.data.extend_from_slice(&[0; 8]);
            hfile::encode_key(&mut self.data, row, family, q, ts);
            let kl = (self.data.len() - at - 8) as u32;
            self.data[at..at + 4].copy_from_slice(&kl.to_be_bytes());
            self.data[at + 4..at + 8].copy_from_slice(&(v.len() as u32).to_be_bytes());
            self.data.extend_from_slice(v);
            n += 1;
        }
        self.entry(table, p, start, n);
    }

    fn entry(&mut self, table: u16, prefix: u128, at: usize, cells: u16) {
        self.at.push(Entry {
            hi: (prefix >> 64) as u64,
            lo: prefix as u64,
            at: at as u32,
            table,
            cells,
        });
        let t = usize::from(table);
        if self.counts.len() <= t {
            self.counts.resize(t + 1, 0);
        }
        self.counts[t] += 1;
    }

    /// Bytes buffered (cells and index).
    pub fn bytes(&self) -> usize {
        self.data.len() + self.at.len() * std::mem::size_of::<Entry>()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// The table numbers with cells buffered.
    pub fn tables(&self) -> impl Iterator<Item = u16> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(t, _)| t as u16)
    }

    /// Empties the buffer, keeping its memory (shrunk back to the budget if
    /// an oversized row grew it).
    pub fn clear(&mut self) {
        self.data.clear();
        self.at.clear();
        self.counts.clear();
        if self.data.capacity() > self.data_cap {
            self.data.shrink_to(self.data_cap);
        }
        if self.at.capacity() > self.entries_cap {
            self.at.shrink_to(self.entries_cap);
        }
    }

    /// Sorts the rows and writes their cells, one file per table (`path(table)`)
    /// with its region index: `region(row)` names a region (regions are key
    /// ranges, so sorted rows come region by region). Files are synced;
    /// returns them. The buffer is left empty.
    pub fn write_sorted(
        &mut self,
        region: impl Fn(&[u8]) -> usize,
        path: impl Fn(u16) -> PathBuf,
    ) -> io::Result<Vec<PathBuf>> {
        let data = &self.data;
        let row = |e: &Entry| hfile::key_row(record_key(data, e.at));
        self.at.sort_unstable_by(|a, b| {
            (a.table, a.hi, a.lo)
                .cmp(&(b.table, b.hi, b.lo))
                .then_with(|| row(a).cmp(row(b)))
        });
        let mut out = Vec::new();
        let mut cur: Option<(u16, RunWriter)> = None;
        // The cells of a row met more than once (pushed twice), merged.
        let mut same: Vec<&[u8]> = Vec::new();
        let mut i = 0;
        while i < self.at.len() {
            let e = self.at[i];
            let r = row(&e);
            let mut j = i + 1;
            while j < self.at.len() && self.at[j].table == e.table && row(&self.at[j]) == r {
                j += 1;
            }
            if cur.as_ref().is_none_or(|(t, _)| *t != e.table) {
                if let Some((_, w)) = cur.take() {
                    w.finish()?;
                }
                let p = path(e.table);
                cur = Some((e.table, RunWriter::create(&p)?));
                out.push(p);
            }
            let (_, w) = cur.as_mut().expect("opened above");
            w.region(region(r));
            if j == i + 1 {
                // A row's cells are in order and side by side: one write.
                w.write(group(data, e.at, e.cells))?;
            } else {
                same.clear();
                for g in &self.at[i..j] {
                    same.extend(records(group(data, g.at, g.cells)));
                }
                same.sort_by(|a, b| compare_keys(key_of(a), key_of(b)));
                // Equal keys are equal bytes (one encoding per key).
                same.dedup_by(|a, b| key_of(a) == key_of(b));
                for rec in &same {
                    w.write(rec)?;
                }
            }
            i = j;
        }
        if let Some((_, w)) = cur.take() {
            w.finish()?;
        }
        self.clear();
        Ok(out)
    }
}

/// The end of a run file's region index.
pub const INDEX_MAGIC: &[u8; 8] = b"FRUNIDX1";

/// Writes one run file: records region by region, then the region index.
struct RunWriter {
    w: BufWriter<File>,
    at: u64,
    /// (region, offset, length) of each region written.
    index: Vec<(u32, u64, u64)>,
}

impl RunWriter {
    fn create(p: &Path) -> io::Result<RunWriter> {
        Ok(RunWriter {
            w: BufWriter::with_capacity(1 << 16, File::create(p)?),
            at: 0,
            index: Vec::new(),
        })
    }

    /// The region of the records that follow (regions come in order).
    fn region(&mut self, region: usize) {
        let region = u32::try_from(region).expect("fewer than 4 billion regions");
        if self.index.last().is_none_or(|&(r, _, _)| r != region) {
            self.index.push((region, self.at, 0));
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.at += bytes.len() as u64;
        self.index.last_mut().expect("a region first").2 += bytes.len() as u64;
        Ok(())
    }

    /// Writes the index and syncs the file.
    fn finish(mut self) -> io::Result<()> {
        for &(r, off, len) in &self.index {
            self.w.write_all(&r.to_be_bytes())?;
            self.w.write_all(&off.to_be_bytes())?;
            self.w.write_all(&len.to_be_bytes())?;
        }
        self.w.write_all(&(self.index.len() as u32).to_be_bytes())?;
        self.w.write_all(INDEX_MAGIC)?;
        finish(self.w)
    }
}

/// The records of one region in a run file (or a whole merged run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSlice {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// A run file's region index: each region present and its slice.
pub fn read_index(p: &Path) -> io::Result<Vec<(usize, RunSlice)>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a run file: {m}"));
    let mut f = File::open(p)?;
    let size = f.metadata()?.len();
    if size < 12 {
        return Err(bad("too short"));
    }
    let mut tail = [0u8; 12];
    f.seek(SeekFrom::Start(size - 12))?;
    f.read_exact(&mut tail)?;
    if &tail[4..] != INDEX_MAGIC {
        return Err(bad("no region index"));
    }
    let n = u64::from(u32::from_be_bytes(tail[..4].try_into().expect("4 bytes")));
    let index_len = n * 20;
    if index_len + 12 > size {
        return Err(bad("index longer than the file"));
    }
    let data_len = size - 12 - index_len;
    let mut raw = vec![0u8; index_len as usize];
    f.seek(SeekFrom::Start(data_len))?;
    f.read_exact(&mut raw)?;
    raw.chunks_exact(20)
        .map(|e| {
            let region = u32::from_be_bytes(e[..4].try_into().expect("4 bytes")) as usize;
            let offset = u64::from_be_bytes(e[4..12].try_into().expect("8 bytes"));
            let len = u64::from_be_bytes(e[12..].try_into().expect("8 bytes"));
            if offset + len > data_len {
                return Err(bad("a region past the records"));
            }
            Ok((
                region,
                RunSlice {
                    path: p.to_path_buf(),
                    offset,
                    len,
                },
            ))
        })
        .collect()
}

fn finish(w: BufWriter<File>) -> io::Result<()> {
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
}

/// Reads a run's slice record by record.
pub struct RunReader {
    r: BufReader<io::Take<File>>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl RunReader {
    pub fn open(s: &RunSlice) -> io::Result<RunReader> {
        let mut f = File::open(&s.path)?;
        f.seek(SeekFrom::Start(s.offset))?;
        Ok(RunReader {
            r: BufReader::with_capacity(1 << 16, f.take(s.len)),
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
    /// The row prefix of the reader's key (`hfile::row_prefix`): most
    /// comparisons end on it, without parsing or comparing whole keys.
    prefix: u128,
    reader: RunReader,
}

impl Head {
    fn new(reader: RunReader) -> Head {
        Head {
            prefix: hfile::row_prefix(hfile::key_row(&reader.key)),
            reader,
        }
    }

    /// The next record, or false at the end.
    fn advance(&mut self) -> io::Result<bool> {
        let more = self.reader.advance()?;
        if more {
            self.prefix = hfile::row_prefix(hfile::key_row(&self.reader.key));
        }
        Ok(more)
    }
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
        o.prefix
            .cmp(&self.prefix)
            .then_with(|| compare_keys(&o.reader.key, &self.reader.key))
    }
}

/// Merges sorted runs into one sorted stream, a repeated key once.
pub struct Merge {
    heap: BinaryHeap<Head>,
    last: Vec<u8>,
    started: bool,
}

impl Merge {
    pub fn open(runs: &[RunSlice]) -> io::Result<Merge> {
        let mut heap = BinaryHeap::with_capacity(runs.len());
        for p in runs {
            let mut reader = RunReader::open(p)?;
            if reader.advance()? {
                heap.push(Head::new(reader));
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
            let r = &top.reader;
            // Equal keys are equal bytes (one encoding per key).
            if !self.started || self.last != r.key {
                f(&r.key, &r.value)?;
                self.last.clear();
                self.last.extend_from_slice(&r.key);
                self.started = true;
            }
            if !top.advance()? {
                std::collections::binary_heap::PeekMut::pop(top);
            }
        }
        Ok(())
    }
}

/// Writes a merged stream of runs back as one run of one region (a merge
/// pass when there are more runs than files one merge may hold open);
/// returns it as a slice.
pub fn merge_into(runs: &[RunSlice], out: &Path) -> io::Result<RunSlice> {
    let mut w = BufWriter::with_capacity(1 << 16, File::create(out)?);
    let mut len = 0u64;
    Merge::open(runs)?.for_each(|k, v| {
        w.write_all(&(k.len() as u32).to_be_bytes())?;
        w.write_all(&(v.len() as u32).to_be_bytes())?;
        w.write_all(k)?;
        w.write_all(v)?;
        len += 8 + (k.len() + v.len()) as u64;
        Ok(())
    })?;
    finish(w)?;
    Ok(RunSlice {
        path: out.to_path_buf(),
        offset: 0,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(runs: &[RunSlice]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        Merge::open(runs)
            .unwrap()
            .for_each(|k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        out
    }

    /// Every region's slice of a run file.
    fn slices(p: &Path) -> Vec<RunSlice> {
        read_index(p).unwrap().into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn a_file_without_its_region_index_is_refused() {
        let dir = std::env::temp_dir().join(format!("falcon-runs-torn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = RunBuf::new(1 << 20);
        b.push_row(0, b"row", b"d", 1, &mut [(b"q", b"v")]);
        let p = &b.write_sorted(|_| 3, |_| dir.join("run")).unwrap()[0];
        let index = read_index(p).unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index[0].0, 3);
        // Cut short (a write torn by a crash): refused, not read as empty.
        let bytes = std::fs::read(p).unwrap();
        for keep in [bytes.len() - 1, bytes.len() - 20, 5] {
            std::fs::write(p, &bytes[..keep]).unwrap();
            let e = read_index(p).unwrap_err();
            assert!(e.to_string().contains("not a run file"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runs_whose_rows_share_a_long_prefix_merge_in_hbase_order() {
        let dir = std::env::temp_dir().join(format!("falcon-runs-prefix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = RunBuf::new(1 << 20);
        let mut runs = Vec::new();
        let mut want = Vec::new();
        for run in 0..4u8 {
            for i in 0..50u8 {
                // 20-byte rows equal in their first 17 bytes, some shorter
                // than the prefix, spread over the runs.
                let mut row = vec![7u8; 17];
                row.extend([i % 5, run, i]);
                if i % 7 == 0 {
                    row.truncate(usize::from(i % 16) + 1);
                }
                let v = [run, i];
                b.push_row(
                    0,
                    &row,
                    b"d",
                    i64::from(i % 3),
                    &mut [(b"q", &v), (b"p", &v)],
                );
                for q in [b"p", b"q"] {
                    want.push((row.clone(), q.to_vec(), i64::from(i % 3)));
                }
            }
            let p = b
                .write_sorted(|_| 0, |_| dir.join(format!("r{run}")))
                .unwrap();
            runs.extend(slices(&p[0]));
        }
        let got = collect(&runs);
        for w in got.windows(2) {
            assert_eq!(compare_keys(&w[0].0, &w[1].0), Ordering::Less);
        }
        want.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
        want.dedup();
        let got: Vec<_> = got
            .iter()
            .map(|(k, _)| {
                let (row, _, q, ts, _) = hfile::split_key(k);
                (row.to_vec(), q.to_vec(), ts)
            })
            .collect();
        assert_eq!(got, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runs_split_by_region_and_merge_back_in_order_without_repeats() {
        let dir = std::env::temp_dir().join(format!("falcon-runs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let region = |row: &[u8]| usize::from(row[0] >= 2);
        let mut all = Vec::new();
        let mut files = Vec::new();
        let mut b = RunBuf::new(1 << 20);
        for run in 0..3u8 {
            for i in (0..100u8).rev() {
                let row = [i % 4, i];
                // Table 1 gets the same keys as table 0: kept apart.
                for t in [1, 0] {
                    let v = [run, i, t as u8];
                    b.push_row(t, &row, b"d", i64::from(run % 2), &mut [(b"q", &v)]);
                }
            }
            assert!(!b.is_empty());
            assert_eq!(b.tables().collect::<Vec<_>>(), [0, 1]);
            let written = b
                .write_sorted(region, |t| dir.join(format!("run{run}-t{t}")))
                .unwrap();
            assert!(b.is_empty());
            assert_eq!(b.bytes(), 0);
            // One file per table, each indexing its two regions.
            assert_eq!(written, [0, 1].map(|t| dir.join(format!("run{run}-t{t}"))));
            let mut slices = Vec::new();
            for p in &written {
                let index = read_index(p).unwrap();
                assert_eq!(index.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [0, 1]);
                slices.extend(index.into_iter().map(|(_, s)| s));
            }
            files.push(slices);
        }
        for (f, t, r) in [(0, 0u8, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)] {
            let paths: Vec<RunSlice> = files.iter().map(|w| w[f].clone()).collect();
            let got = collect(&paths);
            // Runs 0 and 2 wrote the same keys (version 0): each key once.
            assert_eq!(got.len(), 100, "file {f}");
            for w in got.windows(2) {
                assert_eq!(compare_keys(&w[0].0, &w[1].0), Ordering::Less);
            }
            for (k, v) in &got {
                assert_eq!(region(hfile::split_key(k).0), r);
                assert_eq!(v[2], t, "a cell of its own table");
            }
            // A merge pass keeps the same stream.
            let merged = merge_into(&paths, &dir.join(format!("merged{f}"))).unwrap();
            assert_eq!(collect(&[merged]), got);
            all.extend(got);
        }
        assert_eq!(all.len(), 400);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_buffer_fills_to_its_budget_and_an_oversized_row_still_goes_in() {
        let dir = std::env::temp_dir().join(format!("falcon-runs-fit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = RunBuf::new(64 << 10);
        // Rows of four 72-byte cells, about the mapped tables' average row.
        let value = [7u8; 46];
        let mut cells: [(&[u8], &[u8]); 4] = [
            (b"a", &value),
            (b"b", &value),
            (b"c", &value),
            (b"d", &value),
        ];
        let len = RunBuf::row_len(b"row0", b"d", &cells);
        assert_eq!(len, 4 * 72);
        let mut n = 0u32;
        while b.fits(len) {
            b.push_row(0, &n.to_be_bytes(), b"d", 1, &mut cells);
            n += 1;
        }
        // About the budget, never more.
        assert!(b.bytes() <= 64 << 10, "{} bytes", b.bytes());
        assert!(b.bytes() > 60 << 10, "{} bytes", b.bytes());
        b.write_sorted(|_| 0, |_| dir.join("full")).unwrap();
        assert_eq!(collect(&slices(&dir.join("full"))).len(), 4 * n as usize);
        // A row larger than the whole buffer: it never fits, goes into the
        // empty buffer anyway, and is written whole.
        let big = vec![1u8; 100 << 10];
        assert!(!b.fits(RunBuf::row_len(b"row", b"d", &[(b"q", &big)])));
        b.push_row(0, b"row", b"d", 1, &mut [(b"q", &big)]);
        b.write_sorted(|_| 0, |_| dir.join("big")).unwrap();
        let got = collect(&slices(&dir.join("big")));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, big);
        assert!(b.fits(len));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rows_cells_come_out_in_hbase_order_and_a_row_pushed_twice_is_merged() {
        let dir = std::env::temp_dir().join(format!("falcon-runs-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = RunBuf::new(1 << 20);
        // Qualifiers out of order, one given twice (its first value kept).
        b.push_row(
            0,
            b"r2",
            b"d",
            5,
            &mut [(b"z", b"1"), (b"a", b"2"), (b"m", b"3"), (b"a", b"x")],
        );
        // Rows that share a long prefix, one shorter than the prefix.
        let long1 = [9u8; 20];
        let mut long2 = [9u8; 20];
        long2[19] = 8;
        b.push_row(0, &long1, b"d", 5, &mut [(b"q", b"l1")]);
        b.push_row(0, &long2, b"d", 5, &mut [(b"q", b"l2")]);
        b.push_row(0, &long1[..3], b"d", 5, &mut [(b"q", b"s")]);
        // The same row again: a newer version of one cell, a repeat of
        // another (kept once), a new cell.
        b.push_row(0, b"r2", b"d", 7, &mut [(b"m", b"4")]);
        b.push_row(0, b"r2", b"d", 5, &mut [(b"z", b"1"), (b"b", b"5")]);
        // More cells than one entry counts.
        let qs: Vec<[u8; 3]> = (0..70_000u32)
            .rev()
            .map(|i| [(i >> 16) as u8, (i >> 8) as u8, i as u8])
            .collect();
        let mut wide: Vec<(&[u8], &[u8])> = qs.iter().map(|q| (&q[..], &b"w"[..])).collect();
        b.push_row(1, b"wide", b"d", 1, &mut wide);
        let files = b
            .write_sorted(|_| 0, |t| dir.join(format!("t{t}")))
            .unwrap();
        let got = collect(&slices(&files[0]));
        type Cell = (Vec<u8>, Vec<u8>, i64, Vec<u8>);
        let cells: Vec<Cell> = got
            .iter()
            .map(|(k, v)| {
                let (row, _, q, ts, _) = hfile::split_key(k);
                (row.to_vec(), q.to_vec(), ts, v.clone())
            })
            .collect();
        let c = |r: &[u8], q: &[u8], ts: i64, v: &[u8]| (r.to_vec(), q.to_vec(), ts, v.to_vec());
        assert_eq!(
            cells,
            [
                c(&long1[..3], b"q", 5, b"s"),
                c(&long2, b"q", 5, b"l2"),
                c(&long1, b"q", 5, b"l1"),
                c(b"r2", b"a", 5, b"2"),
                c(b"r2", b"b", 5, b"5"),
                c(b"r2", b"m", 7, b"4"),
                c(b"r2", b"m", 5, b"3"),
                c(b"r2", b"z", 5, b"1"),
            ]
        );
        let wide = collect(&slices(&files[1]));
        assert_eq!(wide.len(), 70_000);
        for w in wide.windows(2) {
            assert_eq!(compare_keys(&w[0].0, &w[1].0), Ordering::Less);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
