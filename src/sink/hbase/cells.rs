//! Canonical rows → Thrift puts. Every cell carries the row's source version
//! as its timestamp, so replaying a write is a no-op and an older write can
//! never hide a newer one.

use super::thrift2::{TColumn, TColumnValue, TDelete, TDeleteType, TPut};
use crate::mapping::{ids, keys, Canonical};

pub fn put(c: &Canonical, family: &[u8]) -> TPut {
    let ts = c.version_ms as i64;
    let cols = c
        .cells
        .iter()
        .filter_map(|cell| {
            cell.value.as_ref().map(|v| TColumnValue {
                family: family.to_vec(),
                qualifier: cell.name.as_bytes().to_vec(),
                value: v.as_bytes().to_vec(),
                timestamp: Some(ts),
                tags: None,
                type_: None,
            })
        })
        .collect();
    TPut::new(c.row_key.clone(), cols, Some(ts), None, None, None)
}

/// The two id-map rows of a message (legacy → new and room; new → legacy),
/// stamped with the id's own time: they never change.
pub fn id_map_puts(
    legacy: u64,
    new_id: u64,
    room_id: u64,
    buckets: u16,
    epoch_ms: u64,
    family: &[u8],
) -> [TPut; 2] {
    let ts = ids::id_millis(new_id, epoch_ms) as i64;
    let cv = |q: &str, v: u64| TColumnValue {
        family: family.to_vec(),
        qualifier: q.as_bytes().to_vec(),
        value: v.to_string().into_bytes(),
        timestamp: Some(ts),
        tags: None,
        type_: None,
    };
    [
        TPut::new(
            keys::id_map_legacy(buckets, legacy),
            vec![cv("new_id", new_id), cv("room_id", room_id)],
            Some(ts),
            None,
            None,
            None,
        ),
        TPut::new(
            keys::id_map_new(buckets, new_id),
            vec![cv("legacy_id", legacy)],
            Some(ts),
            None,
            None,
            None,
        ),
    ]
}

/// Deletes every version of a row up to `ts`.
pub fn row_delete(row_key: &[u8], ts: u64) -> TDelete {
    TDelete::new(row_key.to_vec(), None, Some(ts as i64), None, None, None)
}

/// Deletes every version of the named columns up to `ts`.
pub fn columns_delete(row_key: &[u8], family: &[u8], names: &[&str], ts: u64) -> TDelete {
    let cols = names
        .iter()
        .map(|n| {
            TColumn::new(
                family.to_vec(),
                Some(n.as_bytes().to_vec()),
                Some(ts as i64),
            )
        })
        .collect();
    TDelete::new(
        row_key.to_vec(),
        Some(cols),
        Some(ts as i64),
        Some(TDeleteType::DELETE_COLUMNS),
        None,
        None,
    )
}

/// Deletes exactly these versions of the row's cells.
pub fn delete_versions(row_key: &[u8], family: &[u8], cells: &[(Vec<u8>, i64)]) -> Option<TDelete> {
    if cells.is_empty() {
        return None;
    }
    let cols = cells
        .iter()
        .map(|(q, ts)| TColumn::new(family.to_vec(), Some(q.clone()), Some(*ts)))
        .collect();
    Some(TDelete::new(
        row_key.to_vec(),
        Some(cols),
        None,
        Some(TDeleteType::DELETE_COLUMN),
        None,
        None,
    ))
}
