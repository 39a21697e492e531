//! The layout checked by reading it back the way HBase's reader walks it:
//! trailer → load-on-open blocks → data blocks, every checksum verified.
//! (HBase's own tool reads the files in tests/bulk.rs.)

use super::*;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

fn read_varint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let x = b[*at];
        *at += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// Protobuf fields of a message: (field, varint or bytes).
fn fields(b: &[u8]) -> Vec<(u64, Result<u64, Vec<u8>>)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let tag = read_varint(b, &mut at);
        if tag & 7 == 0 {
            out.push((tag >> 3, Ok(read_varint(b, &mut at))));
        } else {
            let n = read_varint(b, &mut at) as usize;
            out.push((tag >> 3, Err(b[at..at + n].to_vec())));
            at += n;
        }
    }
    out
}

struct Block<'a> {
    magic: &'a [u8],
    data: &'a [u8],
    prev: i64,
    on_disk: usize,
}

/// One block at `off`, its header and checksums checked.
fn block(file: &[u8], off: usize) -> Block<'_> {
    let h = &file[off..off + HEADER_SIZE];
    let on_disk_wo = be32(&h[8..]) as usize;
    let data_len = be32(&h[12..]) as usize;
    let prev = be64(&h[16..]) as i64;
    assert_eq!(h[24], CHECKSUM_CRC32C);
    let bpc = be32(&h[25..]) as usize;
    let with_header = be32(&h[29..]) as usize;
    assert_eq!(with_header, HEADER_SIZE + data_len);
    let chunks = with_header.div_ceil(bpc);
    assert_eq!(on_disk_wo, data_len + 4 * chunks);
    let body = &file[off..off + with_header];
    let sums = &file[off + with_header..off + with_header + 4 * chunks];
    for (i, c) in body.chunks(bpc).enumerate() {
        assert_eq!(
            CRC32C.checksum(c),
            be32(&sums[4 * i..]),
            "checksum of chunk {i}"
        );
    }
    Block {
        magic: &h[..8],
        data: &file[off + HEADER_SIZE..off + with_header],
        prev,
        on_disk: HEADER_SIZE + on_disk_wo,
    }
}

/// (row, qualifier, timestamp, value)
type TestCell = (Vec<u8>, Vec<u8>, i64, Vec<u8>);

fn write(cells: &[TestCell]) -> (Vec<u8>, FileStats) {
    let mut w = HFileWriter::new(Vec::new(), b"d");
    for (r, q, ts, v) in cells {
        w.append(r, q, *ts, v).unwrap();
    }
    w.finish(&FileMeta {
        created_ms: 1_700_000_000_000,
        task: "test".into(),
    })
    .unwrap()
}

fn cells(n: u32) -> Vec<TestCell> {
    let mut v = Vec::new();
    for i in 0..n {
        let row = format!("row{i:08}").into_bytes();
        for q in ["a", "body"] {
            v.push((
                row.clone(),
                q.as_bytes().to_vec(),
                1000 + i64::from(i),
                vec![b'x'; (i % 300) as usize],
            ));
        }
    }
    v
}

#[test]
fn a_file_reads_back_through_trailer_index_and_blocks() {
    let input = cells(5000);
    let (file, stats) = write(&input);
    assert_eq!(stats.entries, 10_000);
    assert_eq!(stats.bytes as usize, file.len());
    assert!(stats.data_blocks > 10, "{} blocks", stats.data_blocks);

    // Trailer: magic, delimited protobuf, version.
    let t = &file[file.len() - TRAILER_SIZE..];
    assert_eq!(&t[..8], TRAILER);
    assert_eq!(be32(&t[TRAILER_SIZE - 4..]), 0x0300_0003);
    let mut at = 8;
    let len = read_varint(t, &mut at) as usize;
    let tf: std::collections::BTreeMap<u64, Result<u64, Vec<u8>>> =
        fields(&t[at..at + len]).into_iter().collect();
    let num = |f: u64| tf[&f].clone().unwrap();
    assert_eq!(num(7), 10_000, "entry count");
    assert_eq!(num(5), stats.data_blocks as u64, "root index entries");
    assert_eq!(num(8), 1, "index levels");
    assert_eq!(num(12), 2, "compression NONE");
    assert_eq!(tf[&11].clone().unwrap_err(), COMPARATOR.as_bytes());

    // Load-on-open: root index, meta index, file info, back to back.
    let root_off = num(2) as usize;
    let root = block(&file, root_off);
    assert_eq!(root.magic, ROOT_INDEX);
    let meta = block(&file, root_off + root.on_disk);
    assert_eq!(meta.magic, ROOT_INDEX);
    assert!(meta.data.is_empty());
    assert_eq!(meta.prev, root_off as i64);
    let info_off = root_off + root.on_disk + meta.on_disk;
    assert_eq!(num(1) as usize, info_off);
    let info = block(&file, info_off);
    assert_eq!(info.magic, FILE_INFO);
    assert_eq!(info_off + info.on_disk, file.len() - TRAILER_SIZE);
    assert_eq!(&info.data[..4], b"PBUF");
    let mut at = 4;
    let len = read_varint(info.data, &mut at) as usize;
    let map: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = fields(&info.data[at..at + len])
        .into_iter()
        .map(|(f, v)| {
            assert_eq!(f, 1);
            let p = fields(&v.unwrap_err());
            (p[0].1.clone().unwrap_err(), p[1].1.clone().unwrap_err())
        })
        .collect();
    assert_eq!(map[&b"hfile.LASTKEY"[..]], stats.last_key);
    assert_eq!(be32(&map[&b"hfile.MAX_TAGS_LEN"[..]]), 0);
    assert!(map.contains_key(&b"BULKLOAD_TIMESTAMP"[..]));
    let (_, _, q, ts, ty) = split_key(&stats.last_key);
    assert_eq!((q, ts, ty), (&b"body"[..], 1000 + 4999, TYPE_PUT));

    // The root index names every data block; the blocks hold every cell in order.
    let mut at = 0;
    let mut seen = Vec::new();
    let mut prev: i64 = -1;
    while at < root.data.len() {
        let off = be64(&root.data[at..]) as usize;
        let size = be32(&root.data[at + 8..]) as usize;
        let klen = root.data[at + 12] as usize;
        let first_key = &root.data[at + 13..at + 13 + klen];
        at += 13 + klen;
        let b = block(&file, off);
        assert_eq!(b.magic, DATA);
        assert_eq!(b.on_disk, size);
        assert_eq!(b.prev, prev);
        prev = off as i64;
        let mut p = 0;
        let mut first = true;
        while p < b.data.len() {
            let kl = be32(&b.data[p..]) as usize;
            let vl = be32(&b.data[p + 4..]) as usize;
            let key = &b.data[p + 8..p + 8 + kl];
            if first {
                assert_eq!(key, first_key);
                first = false;
            }
            let value = &b.data[p + 8 + kl..p + 8 + kl + vl];
            let tags = u16::from_be_bytes([b.data[p + 8 + kl + vl], b.data[p + 9 + kl + vl]]);
            assert_eq!(tags, 0);
            let (r, f, q, ts, _) = split_key(key);
            seen.push((r.to_vec(), q.to_vec(), ts, value.to_vec()));
            assert_eq!(f, b"d");
            p += 8 + kl + vl + 2;
        }
    }
    assert_eq!(seen, input);
    assert_eq!(num(9), 0);
    assert_eq!(num(10) as i64, prev);
}

#[test]
fn cells_out_of_order_or_repeated_are_refused() {
    let mut w = HFileWriter::new(Vec::new(), b"d");
    w.append(b"r2", b"a", 5, b"v").unwrap();
    assert!(w.append(b"r1", b"a", 5, b"v").is_err());
    assert!(w.append(b"r2", b"a", 5, b"v").is_err(), "same key twice");
    // Same column, older version: after.
    w.append(b"r2", b"a", 4, b"v").unwrap();
    w.append(b"r2", b"b", 9, b"v").unwrap();
    assert!(w.append(b"", b"b", 9, b"v").is_err(), "empty row");
    let mut empty = HFileWriter::new(Vec::new(), b"d");
    assert!(
        empty.append_key(&key(b"r", b"x", b"q", 1), b"").is_err(),
        "another family"
    );
    assert!(empty
        .finish(&FileMeta {
            created_ms: 0,
            task: String::new()
        })
        .is_err());
}

fn key(row: &[u8], fam: &[u8], q: &[u8], ts: i64) -> Vec<u8> {
    let mut k = Vec::new();
    encode_key(&mut k, row, fam, q, ts);
    k
}

#[test]
fn keys_order_as_hbase_compares_cells() {
    use std::cmp::Ordering::*;
    // Row first, as unsigned bytes, whatever the lengths.
    assert_eq!(
        compare_keys(&key(b"a", b"d", b"z", 1), &key(b"ab", b"d", b"a", 1)),
        Less
    );
    assert_eq!(
        compare_keys(
            &key(&[0x80], b"d", b"a", 1),
            &key(&[0x7f, 0xff], b"d", b"a", 1)
        ),
        Greater
    );
    // Then qualifier, then newer timestamps first.
    assert_eq!(
        compare_keys(&key(b"r", b"d", b"a", 1), &key(b"r", b"d", b"b", 9)),
        Less
    );
    assert_eq!(
        compare_keys(&key(b"r", b"d", b"a", 9), &key(b"r", b"d", b"a", 1)),
        Less
    );
    assert_eq!(
        compare_keys(&key(b"r", b"d", b"a", 1), &key(b"r", b"d", b"a", 1)),
        Equal
    );
}

#[test]
fn a_checksum_covers_header_and_data_in_16k_chunks() {
    // CRC32C's check value.
    assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    // The instruction's and the table's sums agree at every length and
    // alignment (words, then the bytes left).
    let data: Vec<u8> = (0..4099u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for start in 0..9 {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 100, 4090] {
            let d = &data[start..start + len];
            assert_eq!(crc32c(d), CRC32C.checksum(d), "start {start} len {len}");
        }
    }
    // A cell larger than a checksum chunk: the block has several checksums.
    let (file, stats) = write(&[(b"r".to_vec(), b"q".to_vec(), 1, vec![7u8; 40_000])]);
    assert_eq!(stats.data_blocks, 1);
    let b = block(&file, 0);
    assert_eq!(b.on_disk, HEADER_SIZE + b.data.len() + 4 * 3);
}

#[test]
fn row_prefixes_that_differ_order_rows_as_the_rows_do() {
    let rows: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![1],
        vec![1, 0xff],
        vec![1; 16],
        [vec![1; 16], vec![0]].concat(),
        [vec![1; 16], vec![2]].concat(),
        vec![0xff; 3],
        vec![0xff; 20],
    ];
    for a in &rows {
        for b in &rows {
            let (pa, pb) = (row_prefix(a), row_prefix(b));
            if pa != pb {
                assert_eq!(pa.cmp(&pb), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }
}
