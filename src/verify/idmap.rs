//! The id map compared with the source: every mapped message has exactly two
//! id-map rows — `L·legacy` → `new_id`, `room_id` and `N·new id` →
//! `legacy_id` — and the table holds nothing else. Each row is hashed like a
//! table row (table `id_map`, key `L:<legacy>` or `N:<new id>`, its cells,
//! its row key) into the bucket of its legacy id: the message table's bucket,
//! so the source side is counted in the same pass as the messages.

use super::digest::RowHasher;
use crate::mapping::{keys, Canonical};
use crate::sink::hbase::wire::ScanRow;

/// One id-map row, as the source says it should be or as HBase holds it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `L:<legacy>` or `N:<new id>`.
    pub key: String,
    /// The legacy id (its bucket); `?` when a stored `N` row lacks it.
    pub legacy: String,
    pub hash: u128,
    pub row_key: Vec<u8>,
    /// Stored cells: (qualifier, timestamp); empty for expected rows.
    pub cells: Vec<(Vec<u8>, i64)>,
}

/// The two rows a mapped message should have.
pub fn expected(c: &Canonical, salt_buckets: u16, hasher: &mut RowHasher) -> Vec<Entry> {
    let Some((legacy, new_id, room)) = c.id_pair else {
        return Vec::new();
    };
    let (l, n, r) = (legacy.to_string(), new_id.to_string(), room.to_string());
    let lk = keys::id_map_legacy(salt_buckets, legacy);
    let nk = keys::id_map_new(salt_buckets, new_id);
    let (kl, kn) = (format!("L:{l}"), format!("N:{n}"));
    let hl = hasher.hash_cells(
        "id_map",
        &kl,
        [
            (&b"new_id"[..], n.as_bytes()),
            (&b"room_id"[..], r.as_bytes()),
        ],
        Some(&lk),
    );
    let hn = hasher.hash_cells(
        "id_map",
        &kn,
        [(&b"legacy_id"[..], l.as_bytes())],
        Some(&nk),
    );
    vec![
        Entry {
            key: kl,
            legacy: l.clone(),
            hash: hl,
            row_key: lk,
            cells: Vec::new(),
        },
        Entry {
            key: kn,
            legacy: l,
            hash: hn,
            row_key: nk,
            cells: Vec::new(),
        },
    ]
}

/// Decodes stored id-map rows without allocating per row: the buffers are
/// reused from row to row, and an [`Entry`] is made only when it is kept.
#[derive(Default)]
pub struct ScanDecoder {
    hasher: RowHasher,
    key: String,
    legacy: String,
}

impl ScanDecoder {
    /// The legacy id (its bucket) and hash of a stored row: `L·legacy` has
    /// key `L:<legacy>`, `N·new id` key `N:<new id>` and the legacy id of
    /// its `legacy_id` cell (`?` without one); any other row key is `?` +
    /// the row key in hex, both as key and as legacy id. The strings stay
    /// valid until the next call.
    pub fn digest(&mut self, r: &ScanRow<'_>) -> (&str, u128) {
        use std::fmt::Write;
        let row_key = r.row().unwrap_or_default();
        let id = (row_key.len() == 10)
            .then(|| u64::from_be_bytes(row_key[2..10].try_into().expect("8 bytes")));
        let (key, legacy) = (&mut self.key, &mut self.legacy);
        key.clear();
        legacy.clear();
        match (row_key.get(1).copied(), id) {
            (Some(b'L'), Some(id)) => {
                let _ = write!(key, "L:{id}");
                let _ = write!(legacy, "{id}");
            }
            (Some(b'N'), Some(id)) => {
                let _ = write!(key, "N:{id}");
                let cell = r
                    .cells()
                    .find(|c| c.qualifier == b"legacy_id")
                    .and_then(|c| std::str::from_utf8(c.value).ok());
                legacy.push_str(cell.unwrap_or("?"));
            }
            _ => {
                key.push('?');
                key.push_str(&crate::mapping::hex(row_key));
                legacy.push_str(key);
            }
        }
        let hash = self.hasher.hash_cells(
            "id_map",
            key,
            r.cells().map(|c| (c.qualifier, c.value)),
            Some(row_key),
        );
        (&self.legacy, hash)
    }

    /// The row last digested, as an owned [`Entry`].
    pub fn entry(&self, r: &ScanRow<'_>, hash: u128) -> Entry {
        Entry {
            key: self.key.clone(),
            legacy: self.legacy.clone(),
            hash,
            row_key: r.row().unwrap_or_default().to_vec(),
            cells: r
                .cells()
                .map(|c| (c.qualifier.to_vec(), c.timestamp.unwrap_or(0)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{canonical, MapContext, SrcVal};
    use crate::sink::hbase::cells;
    use crate::sink::hbase::thrift2::{TColumnValue, TResult};
    use crate::sink::hbase::wire::tests::scan_rows_of;

    fn stored(row: Vec<u8>, cells: Vec<(&str, &str)>) -> TResult {
        let cells = cells
            .into_iter()
            .map(|(q, v)| {
                let (q, v) = (q.as_bytes().to_vec(), v.as_bytes().to_vec());
                TColumnValue::new(b"d".to_vec(), q, v, Some(5), None, None)
            })
            .collect();
        TResult::new(Some(row), cells, None, None)
    }

    /// The rows base writes for a message decode to the entries the source
    /// side expects (same keys, legacy ids and hashes); an `N` row without
    /// its `legacy_id` and a foreign row key get keys no message has.
    #[test]
    fn stored_rows_hash_as_the_source_expects() {
        let ctx = MapContext {
            salt_buckets: 16,
            epoch_ms: 1_262_304_000_000,
            default_version_ms: 0,
            min_version_ms: 0,
        };
        let row = vec![
            SrcVal::UInt(42),
            SrcVal::UInt(1001),
            SrcVal::UInt(7),
            SrcVal::Bytes(b"hi".to_vec()),
            SrcVal::UInt(1_500_000_000),
            SrcVal::UInt(0),
            SrcVal::Int(0),
        ];
        let c = canonical(crate::config::EntityKind::Message, &row, &ctx).unwrap();
        let (legacy, new_id, room) = c.id_pair.unwrap();
        let want = expected(&c, 16, &mut RowHasher::default());
        let mut results: Vec<TResult> = cells::id_map_puts(legacy, new_id, room, 16, 9, b"d")
            .into_iter()
            .map(|p| TResult::new(Some(p.row), p.column_values, None, None))
            .collect();
        let n_key = keys::id_map_new(16, 77);
        results.push(stored(n_key.clone(), vec![("x", "1")]));
        results.push(stored(vec![1, 2, 3], vec![("legacy_id", "42")]));
        let rows = scan_rows_of(&results);
        let mut dec = ScanDecoder::default();
        let got: Vec<Entry> = rows
            .iter()
            .map(|r| {
                let (legacy, hash) = dec.digest(&r);
                let legacy = legacy.to_string();
                let e = dec.entry(&r, hash);
                assert_eq!(e.legacy, legacy);
                e
            })
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (&g.key, &g.legacy, g.hash, &g.row_key),
                (&w.key, &w.legacy, w.hash, &w.row_key)
            );
            assert!(g.cells.iter().all(|(_, ts)| *ts == 9));
        }
        assert_eq!(want[0].key, format!("L:{legacy}"));
        assert_eq!((got[2].key.as_str(), got[2].legacy.as_str()), ("N:77", "?"));
        assert_eq!(got[2].row_key, n_key);
        assert_eq!(got[2].cells, vec![(b"x".to_vec(), 5)]);
        assert_eq!(
            (got[3].key.as_str(), got[3].legacy.as_str()),
            ("?010203", "?010203")
        );
        assert_eq!(got.len(), 4);
    }
}
