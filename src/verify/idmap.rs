//! The id map compared with the source: every mapped message has exactly two
//! id-map rows — `L·legacy` → `new_id`, `room_id` and `N·new id` →
//! `legacy_id` — and the table holds nothing else. Each row is hashed like a
//! table row (table `id_map`, key `L:<legacy>` or `N:<new id>`, its cells,
//! its row key) into the bucket of its legacy id: the message table's bucket,
//! so the source side is counted in the same pass as the messages.

use super::digest::RowHasher;
use super::rows::{Filter, Pass};
use crate::config::HbaseConfig;
use crate::error::Result;
use crate::mapping::{keys, Canonical};
use crate::pipeline::commit::{retry_blocking, RetryPolicy};
use crate::sink::hbase::thrift2::TResult;
use crate::sink::hbase::HbaseClient;

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

/// A stored row read back.
fn decode(r: TResult, hasher: &mut RowHasher) -> Entry {
    let row_key = r.row.unwrap_or_default();
    let id = (row_key.len() == 10)
        .then(|| u64::from_be_bytes(row_key[2..10].try_into().expect("8 bytes")));
    let tag = row_key.get(1).copied();
    let cell = |name: &[u8]| {
        r.column_values
            .iter()
            .find(|c| c.qualifier == name)
            .and_then(|c| String::from_utf8(c.value.clone()).ok())
    };
    let (key, legacy) = match (tag, id) {
        (Some(b'L'), Some(id)) => (format!("L:{id}"), id.to_string()),
        (Some(b'N'), Some(id)) => (
            format!("N:{id}"),
            cell(b"legacy_id").unwrap_or_else(|| "?".into()),
        ),
        _ => {
            let k = format!("?{}", crate::mapping::hex(&row_key));
            (k.clone(), k)
        }
    };
    let hash = hasher.hash_cells(
        "id_map",
        &key,
        r.column_values
            .iter()
            .map(|c| (c.qualifier.as_slice(), c.value.as_slice())),
        Some(&row_key),
    );
    Entry {
        key,
        legacy,
        hash,
        row_key,
        cells: r
            .column_values
            .iter()
            .map(|c| (c.qualifier.clone(), c.timestamp.unwrap_or(0)))
            .collect(),
    }
}

/// Digests (and, for a drill-down, the entries) of the id-map table, bucketed
/// by `filter` on the legacy id.
pub fn pass(cfg: &HbaseConfig, filter: &Filter, policy: &RetryPolicy) -> Result<Pass<Entry>> {
    let what = format!("scan of {}", cfg.id_map_table);
    retry_blocking(policy, &what, || {
        let mut c = HbaseClient::connect(cfg).map_err(crate::pipeline::lane::as_transient)?;
        let mut hasher = RowHasher::default();
        let mut out: Pass<Entry> = Pass::new(filter.buckets);
        c.scan(&cfg.id_map_table, None, None, 2000, |r| {
            let e = decode(r, &mut hasher);
            if let Some(b) = filter.admits(&e.legacy) {
                out.rows += 1;
                out.digests[b as usize].add(e.hash);
                if filter.keeps_rows() {
                    out.kept.entry(e.key.clone()).or_default().push(e);
                }
            }
            Ok(())
        })?;
        Ok(out)
    })
}
