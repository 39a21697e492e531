//! A writer of HBase's HFile format, version 3 (as HBase 2.x writes it in
//! `HFileWriterImpl`, `HFileBlock`, `HFileBlockIndex`, `HFileInfo` and
//! `FixedFileTrailer`), for bulk loads: uncompressed, unencoded, no bloom
//! filter, one column family per file, cells appended in HBase's order.
//!
//! Layout:
//! - data blocks (`DATABLK*`) of about [`BLOCK_SIZE`] bytes of cells;
//! - the load-on-open section: the root data index (`IDXROOT2`, one level:
//!   each block's offset, on-disk size and first key), the meta index (an
//!   empty `IDXROOT2`), FileInfo (`FILEINF2`);
//! - the fixed 4 KiB trailer (`TRABLK"$`, a delimited protobuf, zero padding,
//!   then the version `3 | 3 << 24`).
//!
//! Every block has the 33-byte header of HFile v2/v3 — magic, on-disk size
//! without header, uncompressed size without header, the offset of the
//! previous block of its type, checksum type (CRC32C), bytes per checksum,
//! on-disk size of header and data — and is followed by one CRC32C per
//! [`BYTES_PER_CHECKSUM`] bytes of header and data.
//!
//! A cell is a `KeyValue`: key length, value length (both i32), the key
//! (row length i16, row, family length u8, family, qualifier, timestamp i64,
//! type u8), the value, and v3's tags length (u16, always 0 here). The index
//! stays one level: [`HFileWriter::should_roll`] says when a file has enough
//! blocks that its caller should begin the next one.

mod pb;

use std::cmp::Ordering;
use std::io::{self, Write};

/// Bytes of cells per data block (HBase's default column family block size).
pub const BLOCK_SIZE: usize = 64 * 1024;
/// HBase's default `hbase.hstore.bytes.per.checksum`.
pub const BYTES_PER_CHECKSUM: usize = 16 * 1024;
/// Header of a block with HBase checksums.
pub const HEADER_SIZE: usize = 33;
const CHECKSUM_CRC32C: u8 = 2;
const TRAILER_SIZE: usize = 4096;
const MAJOR_VERSION: u32 = 3;
const MINOR_VERSION: u32 = 3;
/// `Compression.Algorithm.NONE.ordinal()`.
const COMPRESSION_NONE: u64 = 2;
/// The name HBase 1 and 2 both read as the default cell comparator.
const COMPARATOR: &str = "org.apache.hadoop.hbase.KeyValue$KVComparator";
/// Data blocks per file before the root index should not grow further
/// (HBase moves to a two-level index past 128 KiB of root entries).
const MAX_BLOCKS: usize = 1500;

const DATA: &[u8; 8] = b"DATABLK*";
const ROOT_INDEX: &[u8; 8] = b"IDXROOT2";
const FILE_INFO: &[u8; 8] = b"FILEINF2";
const TRAILER: &[u8; 8] = b"TRABLK\"$";

/// `KeyValue.Type.Put`.
pub const TYPE_PUT: u8 = 4;

static CRC32C: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// CRC32C of `data`: with SSE 4.2's `crc32` instruction where the CPU has
/// it (every x86-64 server of the last decade; about ten times the table's
/// speed, which was an eighth of the HFile step's CPU), else by table.
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE 4.2, checked just above.
            return unsafe { crc32c_sse42(data) };
        }
    }
    CRC32C.checksum(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc32c_sse42(data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut crc = u64::from(u32::MAX);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let mut crc = crc as u32;
    for &b in words.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}

/// The length of an encoded key ([`encode_key`]).
pub fn key_len(row: &[u8], family: &[u8], qualifier: &[u8]) -> usize {
    2 + row.len() + 1 + family.len() + qualifier.len() + 9
}

/// Appends a `KeyValue` key: row, family, qualifier, timestamp, type.
pub fn encode_key(out: &mut Vec<u8>, row: &[u8], family: &[u8], qualifier: &[u8], ts: i64) {
    out.extend_from_slice(&(row.len() as u16).to_be_bytes());
    out.extend_from_slice(row);
    out.push(family.len() as u8);
    out.extend_from_slice(family);
    out.extend_from_slice(qualifier);
    out.extend_from_slice(&ts.to_be_bytes());
    out.push(TYPE_PUT);
}

/// The parts of an encoded key: (row, family, qualifier, timestamp, type).
pub fn split_key(k: &[u8]) -> (&[u8], &[u8], &[u8], i64, u8) {
    let rl = u16::from_be_bytes([k[0], k[1]]) as usize;
    let row = &k[2..2 + rl];
    let fl = k[2 + rl] as usize;
    let fam_at = 3 + rl;
    let family = &k[fam_at..fam_at + fl];
    let ts_at = k.len() - 9;
    let qualifier = &k[fam_at + fl..ts_at];
    let ts = i64::from_be_bytes(k[ts_at..ts_at + 8].try_into().expect("8 bytes"));
    (row, family, qualifier, ts, k[k.len() - 1])
}

/// The row of an encoded key.
pub fn key_row(k: &[u8]) -> &[u8] {
    let rl = u16::from_be_bytes([k[0], k[1]]) as usize;
    &k[2..2 + rl]
}

/// The first 16 bytes of a row, zero-padded, as a number: rows whose
/// prefixes differ are ordered as their prefixes are (a row shorter than
/// 16 bytes sorts before every longer row it begins), so a sort compares
/// these first and whole keys only on a tie.
pub fn row_prefix(row: &[u8]) -> u128 {
    let mut p = [0u8; 16];
    let n = row.len().min(16);
    p[..n].copy_from_slice(&row[..n]);
    u128::from_be_bytes(p)
}

/// HBase's cell order on encoded keys (`CellComparatorImpl`): row, family,
/// qualifier ascending as unsigned bytes, then timestamp and type descending.
pub fn compare_keys(a: &[u8], b: &[u8]) -> Ordering {
    // Rows decide most comparisons: the rest is parsed only for equal rows.
    match key_row(a).cmp(key_row(b)) {
        Ordering::Equal => {}
        o => return o,
    }
    let (_, af, aq, at, ay) = split_key(a);
    let (_, bf, bq, bt, by) = split_key(b);
    af.cmp(bf)
        .then_with(|| aq.cmp(bq))
        .then_with(|| bt.cmp(&at))
        .then_with(|| by.cmp(&ay))
}

/// What a bulk-loaded file says of itself in FileInfo.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// Milliseconds since the epoch: `hfile.CREATE_TIME_TS`, `BULKLOAD_TIMESTAMP`.
    pub created_ms: i64,
    /// `BULKLOAD_SOURCE_TASK`: who wrote the file.
    pub task: String,
}

/// What a finished file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStats {
    pub entries: u64,
    pub bytes: u64,
    pub data_blocks: usize,
    pub first_key: Vec<u8>,
    pub last_key: Vec<u8>,
}

struct IndexEntry {
    offset: u64,
    on_disk_size: u32,
    first_key: Vec<u8>,
}

/// Writes one HFile of one column family (see the module comment).
pub struct HFileWriter<W: Write> {
    out: W,
    pos: u64,
    family: Vec<u8>,
    /// The data block being filled, behind room for its header.
    block: Vec<u8>,
    block_first_key: Option<Vec<u8>>,
    index: Vec<IndexEntry>,
    prev_data_offset: Option<u64>,
    first_key: Vec<u8>,
    last_key: Vec<u8>,
    key: Vec<u8>,
    entries: u64,
    key_bytes: u64,
    value_bytes: u64,
    uncompressed: u64,
    min_ts: i64,
    max_ts: i64,
    biggest: (u64, Vec<u8>),
}

impl<W: Write> HFileWriter<W> {
    pub fn new(out: W, family: &[u8]) -> HFileWriter<W> {
        HFileWriter {
            out,
            pos: 0,
            family: family.to_vec(),
            block: new_block(),
            block_first_key: None,
            index: Vec::new(),
            prev_data_offset: None,
            first_key: Vec::new(),
            last_key: Vec::new(),
            key: Vec::new(),
            entries: 0,
            key_bytes: 0,
            value_bytes: 0,
            uncompressed: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            biggest: (0, Vec::new()),
        }
    }

    /// Appends a put cell; cells must come in HBase's order
    /// ([`compare_keys`]), a key equal to the previous one is refused too.
    pub fn append(
        &mut self,
        row: &[u8],
        qualifier: &[u8],
        ts: i64,
        value: &[u8],
    ) -> io::Result<()> {
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        encode_key(&mut key, row, &self.family, qualifier, ts);
        let r = self.append_key(&key, value);
        self.key = key;
        r
    }

    /// Appends a cell given its encoded key (its family must be this file's).
    pub fn append_key(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let (row, family, _, ts, _) = split_key(key);
        if row.is_empty() || row.len() > i16::MAX as usize {
            return Err(invalid(format!("row key of {} bytes", row.len())));
        }
        if family != self.family.as_slice() {
            return Err(invalid("a cell of another column family".into()));
        }
        if self.entries > 0 && compare_keys(&self.last_key, key) != Ordering::Less {
            return Err(invalid("cells out of order (or repeated)".into()));
        }
        let b = &mut self.block;
        b.extend_from_slice(&(key.len() as u32).to_be_bytes());
        b.extend_from_slice(&(value.len() as u32).to_be_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(value);
        b.extend_from_slice(&0u16.to_be_bytes());
        if self.block_first_key.is_none() {
            self.block_first_key = Some(key.to_vec());
        }
        if self.entries == 0 {
            self.first_key = key.to_vec();
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.entries += 1;
        self.key_bytes += key.len() as u64;
        self.value_bytes += value.len() as u64;
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
        let size = (key.len() + value.len() + 10) as u64;
        if size > self.biggest.0 {
            self.biggest = (size, key.to_vec());
        }
        if self.block.len() - HEADER_SIZE >= BLOCK_SIZE {
            self.finish_data_block()?;
        }
        Ok(())
    }

    /// Cells appended so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.pos
    }

    /// Whether the file is as large as one index level allows: the caller
    /// should finish it and go on in a new file.
    pub fn should_roll(&self) -> bool {
        self.index.len() >= MAX_BLOCKS
    }

    fn finish_data_block(&mut self) -> io::Result<()> {
        let Some(first_key) = self.block_first_key.take() else {
            return Ok(());
        };
        let mut block = std::mem::replace(&mut self.block, new_block());
        let prev = self.prev_data_offset;
        let (offset, on_disk_size) = self.write_block(DATA, &mut block, prev)?;
        self.prev_data_offset = Some(offset);
        self.index.push(IndexEntry {
            offset,
            on_disk_size,
            first_key,
        });
        block.clear();
        block.resize(HEADER_SIZE, 0);
        self.block = block;
        Ok(())
    }

    /// Writes `buf` (room for the header, then the block's data) as one
    /// block: header, data, checksums. Returns its offset and on-disk size
    /// with header.
    fn write_block(
        &mut self,
        magic: &[u8; 8],
        buf: &mut [u8],
        prev: Option<u64>,
    ) -> io::Result<(u64, u32)> {
        let data_len = buf.len() - HEADER_SIZE;
        let with_header = buf.len();
        let chunks = with_header.div_ceil(BYTES_PER_CHECKSUM);
        let on_disk = with_header + 4 * chunks;
        let h = &mut buf[..HEADER_SIZE];
        h[0..8].copy_from_slice(magic);
        h[8..12].copy_from_slice(&((on_disk - HEADER_SIZE) as u32).to_be_bytes());
        h[12..16].copy_from_slice(&(data_len as u32).to_be_bytes());
        h[16..24].copy_from_slice(&prev.map_or(-1i64, |p| p as i64).to_be_bytes());
        h[24] = CHECKSUM_CRC32C;
        h[25..29].copy_from_slice(&(BYTES_PER_CHECKSUM as u32).to_be_bytes());
        h[29..33].copy_from_slice(&(with_header as u32).to_be_bytes());
        let mut sums = Vec::with_capacity(4 * chunks);
        for c in buf.chunks(BYTES_PER_CHECKSUM) {
            sums.extend_from_slice(&crc32c(c).to_be_bytes());
        }
        self.out.write_all(buf)?;
        self.out.write_all(&sums)?;
        let offset = self.pos;
        self.pos += on_disk as u64;
        self.uncompressed += with_header as u64;
        Ok((offset, on_disk as u32))
    }

    /// Writes the load-on-open section and the trailer; returns the output
    /// (flushed, not synced) and what the file holds.
    pub fn finish(mut self, meta: &FileMeta) -> io::Result<(W, FileStats)> {
        self.finish_data_block()?;
        if self.entries == 0 {
            return Err(invalid("an HFile without cells".into()));
        }
        let first_data = self.index[0].offset;
        let last_data = self.prev_data_offset.unwrap_or(0);

        // Root data index: offset, on-disk size, first key of each block.
        let mut root = new_block();
        for e in &self.index {
            root.extend_from_slice(&e.offset.to_be_bytes());
            root.extend_from_slice(&e.on_disk_size.to_be_bytes());
            pb::hadoop_vlong(&mut root, e.first_key.len() as i64);
            root.extend_from_slice(&e.first_key);
        }
        let index_size = (root.len() - HEADER_SIZE) as u64;
        let (root_offset, _) = self.write_block(ROOT_INDEX, &mut root, None)?;
        // The meta index: no meta blocks.
        let mut meta_index = new_block();
        self.write_block(ROOT_INDEX, &mut meta_index, Some(root_offset))?;
        let mut info = new_block();
        info.extend_from_slice(&self.file_info(meta));
        let (info_offset, _) = self.write_block(FILE_INFO, &mut info, None)?;

        let mut t = Vec::new();
        pb::field_u64(&mut t, 1, info_offset);
        pb::field_u64(&mut t, 2, root_offset);
        pb::field_u64(&mut t, 3, index_size);
        pb::field_u64(&mut t, 4, self.uncompressed);
        pb::field_u64(&mut t, 5, self.index.len() as u64);
        pb::field_u64(&mut t, 6, 0);
        pb::field_u64(&mut t, 7, self.entries);
        pb::field_u64(&mut t, 8, 1);
        pb::field_u64(&mut t, 9, first_data);
        pb::field_u64(&mut t, 10, last_data);
        pb::field_bytes(&mut t, 11, COMPARATOR.as_bytes());
        pb::field_u64(&mut t, 12, COMPRESSION_NONE);
        let mut trailer = Vec::with_capacity(TRAILER_SIZE);
        trailer.extend_from_slice(TRAILER);
        pb::delimited(&mut trailer, &t);
        trailer.resize(TRAILER_SIZE - 4, 0);
        trailer.extend_from_slice(&(MAJOR_VERSION | (MINOR_VERSION << 24)).to_be_bytes());
        self.out.write_all(&trailer)?;
        self.pos += TRAILER_SIZE as u64;
        self.out.flush()?;
        let stats = FileStats {
            entries: self.entries,
            bytes: self.pos,
            data_blocks: self.index.len(),
            first_key: self.first_key,
            last_key: self.last_key,
        };
        Ok((self.out, stats))
    }

    /// FileInfo: `PBUF`, then a delimited `FileInfoProto` of
    /// `BytesBytesPair`s (what `HFileInfo`, `HStoreFile` and the bulk load
    /// read back).
    fn file_info(&self, meta: &FileMeta) -> Vec<u8> {
        let n = self.entries.max(1);
        let long = |v: i64| v.to_be_bytes().to_vec();
        let int = |v: i32| v.to_be_bytes().to_vec();
        let mut time_range = PB_MAGIC.to_vec();
        let mut tr = Vec::new();
        pb::field_u64(&mut tr, 1, self.min_ts as u64);
        pb::field_u64(&mut tr, 2, self.max_ts as u64);
        time_range.extend_from_slice(&tr);
        let entries: Vec<(&[u8], Vec<u8>)> = vec![
            (b"hfile.LASTKEY", self.last_key.clone()),
            (b"hfile.AVG_KEY_LEN", int((self.key_bytes / n) as i32)),
            (b"hfile.AVG_VALUE_LEN", int((self.value_bytes / n) as i32)),
            (b"hfile.CREATE_TIME_TS", long(meta.created_ms)),
            (b"hfile.KEY_OF_BIGGEST_CELL", self.biggest.1.clone()),
            (b"hfile.LEN_OF_BIGGEST_CELL", long(self.biggest.0 as i64)),
            (b"hfile.MAX_TAGS_LEN", int(0)),
            (b"hfile.TAGS_COMPRESSED", vec![0]),
            (b"MAX_SEQ_ID_KEY", long(0)),
            (b"MAJOR_COMPACTION_KEY", vec![0]),
            (b"EXCLUDE_FROM_MINOR_COMPACTION", vec![0]),
            (b"TIMERANGE", time_range),
            (b"EARLIEST_PUT_TS", long(self.min_ts)),
            (b"BULKLOAD_TIMESTAMP", long(meta.created_ms)),
            (b"BULKLOAD_SOURCE_TASK", meta.task.as_bytes().to_vec()),
        ];
        let mut msg = Vec::new();
        let mut pair = Vec::new();
        for (k, v) in &entries {
            pair.clear();
            pb::field_bytes(&mut pair, 1, k);
            pb::field_bytes(&mut pair, 2, v);
            pb::field_bytes(&mut msg, 1, &pair);
        }
        let mut out = PB_MAGIC.to_vec();
        pb::delimited(&mut out, &msg);
        out
    }
}

/// The magic HBase puts before a protobuf-encoded value.
const PB_MAGIC: &[u8; 4] = pb::PB_MAGIC;

fn new_block() -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOCK_SIZE + 4096);
    b.resize(HEADER_SIZE, 0);
    b
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, m)
}

#[cfg(test)]
mod tests;
