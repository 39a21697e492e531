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
