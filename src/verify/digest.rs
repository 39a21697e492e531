//! Pure CPU: the canonical encoding of a row, its 128-bit hash, and the
//! order-independent digest of a bucket of rows.
//!
//! Encoding of one row (every side builds exactly these bytes):
//!
//! ```text
//! table 0x1F key 0x1F { name 0x1E len(value) as u32 LE, value 0x1D }*  [0x1C row_key]
//! ```
//!
//! Cells are sorted by name. A NULL value is an absent cell: its name is not
//! in the input, so NULL, the empty string and a missing column all hash
//! differently. Values are length-prefixed, so no choice of bytes inside a
//! value can make two different rows encode alike (the concatenation
//! collision of separator-only schemes). The HBase hash appends the row key,
//! so a row stored under the wrong key is a difference too; Kafka has no row
//! key, so its hash stops before it.
//!
//! A bucket's digest is `count`, the XOR of the row hashes and the wrapping
//! sum of their high 64 bits: a duplicated row cancels in the XOR but not in
//! the count or the sum, and the order rows arrive in cannot matter.

use twox_hash::{XxHash3_128, XxHash3_64};

const SEED_BUCKET: u64 = 0x6661_6c63_6f6e_0001;
const SEED_SAMPLE: u64 = 0x6661_6c63_6f6e_0002;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub xor: u128,
    pub sum: u64,
}

impl Digest {
    pub fn add(&mut self, h: u128) {
        self.count += 1;
        self.xor ^= h;
        self.sum = self.sum.wrapping_add((h >> 64) as u64);
    }

    pub fn merge(&mut self, o: &Digest) {
        self.count += o.count;
        self.xor ^= o.xor;
        self.sum = self.sum.wrapping_add(o.sum);
    }
}

/// Adds `from` into `into`, bucket by bucket.
pub fn merge_all(into: &mut [Digest], from: &[Digest]) {
    for (a, b) in into.iter_mut().zip(from) {
        a.merge(b);
    }
}

/// The bucket of a legacy key: the same on every side, whatever order rows come in.
pub fn bucket(key: &str, buckets: u32) -> u32 {
    (XxHash3_64::oneshot_with_seed(SEED_BUCKET, key.as_bytes()) % u64::from(buckets)) as u32
}

/// Which rows `--sample PCT` keeps: by key hash, so every run samples the same rows.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Kept when `hash % 1_000_000 < threshold`.
    threshold: u64,
}

impl Sample {
    pub fn percent(pct: f64) -> Sample {
        Sample {
            threshold: (pct * 10_000.0).round() as u64,
        }
    }

    pub fn keeps(&self, key: &str) -> bool {
        self.threshold >= 1_000_000
            || XxHash3_64::oneshot_with_seed(SEED_SAMPLE, key.as_bytes()) % 1_000_000
                < self.threshold
    }
}

/// Builds the encoding of one row at a time in a reused buffer.
#[derive(Default)]
pub struct RowHasher {
    buf: Vec<u8>,
}

impl RowHasher {
    pub fn begin(&mut self, table: &str, key: &str) {
        self.buf.clear();
        self.buf.extend_from_slice(table.as_bytes());
        self.buf.push(0x1F);
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(0x1F);
    }

    /// One non-NULL cell; cells must come sorted by name.
    pub fn cell(&mut self, name: &[u8], value: &[u8]) {
        self.buf.extend_from_slice(name);
        self.buf.push(0x1E);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
        self.buf.push(0x1D);
    }

    /// The hash of the row so far, followed by `row_key` when given; the
    /// buffer is left as it was, so both targets' hashes come from one encoding.
    pub fn finish(&mut self, row_key: Option<&[u8]>) -> u128 {
        match row_key {
            None => XxHash3_128::oneshot(&self.buf),
            Some(rk) => {
                let len = self.buf.len();
                self.buf.push(0x1C);
                self.buf.extend_from_slice(rk);
                let h = XxHash3_128::oneshot(&self.buf);
                self.buf.truncate(len);
                h
            }
        }
    }

    /// Hashes cells given in any order (they are sorted here).
    pub fn hash_cells<'a>(
        &mut self,
        table: &str,
        key: &str,
        cells: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        row_key: Option<&[u8]>,
    ) -> u128 {
        let mut v: Vec<(&[u8], &[u8])> = cells.into_iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        self.begin(table, key);
        for (n, val) in v {
            self.cell(n, val);
        }
        self.finish(row_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(cells: &[(&str, &str)]) -> u128 {
        RowHasher::default().hash_cells(
            "t",
            "1",
            cells.iter().map(|(a, b)| (a.as_bytes(), b.as_bytes())),
            None,
        )
    }

    #[test]
    fn order_of_cells_does_not_matter_but_values_and_nulls_do() {
        assert_eq!(h(&[("a", "1"), ("b", "2")]), h(&[("b", "2"), ("a", "1")]));
        assert_ne!(h(&[("a", "1"), ("b", "2")]), h(&[("a", "1"), ("b", "3")]));
        // NULL (absent) differs from the empty string.
        assert_ne!(h(&[("a", "1")]), h(&[("a", "1"), ("b", "")]));
    }

    #[test]
    fn separators_inside_values_cannot_forge_another_row() {
        // Without lengths, "x\x1Db\x1E" + "y" could read as two cells.
        let forged = h(&[("a", "x\u{1d}b\u{1e}y")]);
        assert_ne!(forged, h(&[("a", "x"), ("b", "y")]));
        assert_ne!(h(&[("ab", "c")]), h(&[("a", "bc")]));
    }

    #[test]
    fn duplicates_do_not_cancel_and_order_is_irrelevant() {
        let (x, y) = (h(&[("a", "1")]), h(&[("a", "2")]));
        let mut one = Digest::default();
        one.add(x);
        let mut three = Digest::default();
        for v in [x, y, y] {
            three.add(v);
        }
        assert_eq!(one.xor, three.xor, "XOR alone would cancel the pair");
        assert_ne!(one, three);
        let mut rev = Digest::default();
        for v in [y, x, y] {
            rev.add(v);
        }
        assert_eq!(three, rev);
    }

    #[test]
    fn buckets_and_samples_depend_on_the_key_only() {
        assert_eq!(bucket("42", 64), bucket("42", 64));
        assert!(bucket("42", 64) < 64);
        let s = Sample::percent(10.0);
        let kept = (0..100_000).filter(|i| s.keeps(&i.to_string())).count();
        assert!((9_000..11_000).contains(&kept), "{kept}");
        assert!(Sample::percent(100.0).keeps("x"));
    }

    #[test]
    fn row_key_changes_the_hbase_hash_only() {
        let mut r = RowHasher::default();
        r.begin("t", "1");
        r.cell(b"a", b"1");
        let plain = r.finish(None);
        let k1 = r.finish(Some(b"\x01k"));
        let k2 = r.finish(Some(b"\x02k"));
        assert_eq!(plain, r.finish(None));
        assert_ne!(k1, k2);
        assert_ne!(plain, k1);
    }
}
