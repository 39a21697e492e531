//! Puts and deletes, built once here so the rest of the crate (and the
//! integration tests) never touch the generated Thrift structs' many optional
//! fields.
//!
//! Canonical rows → puts: every cell carries the row's source version as its
//! timestamp, so replaying a write is a no-op and an older write can never
//! hide a newer one. Deletes carry a timestamp too, so a delete replayed after
//! a newer write leaves the newer cells alone.

use super::thrift2::{TColumn, TColumnValue, TDelete, TDeleteType, TPut};
use crate::mapping::{keys, Canonical};

/// HBase's `LATEST_TIMESTAMP`: a delete stamped with it removes every version
/// written so far.
pub const LATEST: u64 = i64::MAX as u64;

fn cell(family: &[u8], qualifier: &[u8], value: Vec<u8>, ts: Option<i64>) -> TColumnValue {
    TColumnValue::new(family.to_vec(), qualifier.to_vec(), value, ts, None, None)
}

/// A put of `(qualifier, value)` cells into one row, every cell stamped `ts`
/// (`None`: the gateway's clock).
pub fn put_cells(row_key: &[u8], family: &[u8], cells: &[(&str, &[u8])], ts: Option<i64>) -> TPut {
    let cols = cells
        .iter()
        .map(|(q, v)| cell(family, q.as_bytes(), v.to_vec(), ts))
        .collect();
    TPut::new(row_key.to_vec(), cols, ts, None, None, None)
}

/// The put of a canonical row's non-null cells, stamped with its version.
pub fn put(c: &Canonical, family: &[u8]) -> TPut {
    let ts = Some(c.version_ms as i64);
    let cols = canonical_cells(c)
        .map(|(q, v)| cell(family, q, v.to_vec(), ts))
        .collect();
    TPut::new(c.row_key.clone(), cols, ts, None, None, None)
}

/// A row to write: its key and its `(qualifier, value)` cells.
pub type RowCells = (Vec<u8>, Vec<(&'static str, String)>);

/// The two id-map rows of a message, each `(row key, [(qualifier, value)])`:
/// legacy → new id and room; new → legacy. Every writer of the id map
/// (puts, the encoded put path, the bulk load) builds on this.
pub fn id_map_rows(legacy: u64, new_id: u64, room_id: u64, buckets: u16) -> [RowCells; 2] {
    [
        (
            keys::id_map_legacy(buckets, legacy),
            vec![
                ("new_id", new_id.to_string()),
                ("room_id", room_id.to_string()),
            ],
        ),
        (
            keys::id_map_new(buckets, new_id),
            vec![("legacy_id", legacy.to_string())],
        ),
    ]
}

/// The two id-map rows of a message as puts ([`id_map_rows`]), stamped like
/// the message row (`version_ms`): a message moved to another room or
/// re-timed gets a new id-map state that wins over the old one.
pub fn id_map_puts(
    legacy: u64,
    new_id: u64,
    room_id: u64,
    buckets: u16,
    version_ms: u64,
    family: &[u8],
) -> [TPut; 2] {
    let ts = Some(version_ms as i64);
    id_map_rows(legacy, new_id, room_id, buckets).map(|(row, cells)| {
        let cells: Vec<(&str, &[u8])> = cells.iter().map(|(q, v)| (*q, v.as_bytes())).collect();
        put_cells(&row, family, &cells, ts)
    })
}

/// The cells of a canonical row: `(qualifier, value)` of each non-NULL value,
/// all stamped with the row's source version.
pub fn canonical_cells(c: &Canonical) -> impl Iterator<Item = (&[u8], &[u8])> {
    c.cells
        .iter()
        .filter_map(|cv| Some((cv.name.as_bytes(), cv.value.as_ref()?.as_bytes())))
}

/// Deletes every version of every cell of the row up to `ts` ([`LATEST`]: all).
pub fn row_delete(row_key: &[u8], ts: u64) -> TDelete {
    TDelete::new(row_key.to_vec(), None, Some(ts as i64), None, None, None)
}

/// Deletes every version of the named columns up to `ts`.
pub fn columns_delete(row_key: &[u8], family: &[u8], cols: &[&str], ts: u64) -> TDelete {
    let columns = cols
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
        Some(columns),
        Some(ts as i64),
        Some(TDeleteType::DELETE_COLUMNS),
        None,
        None,
    )
}

/// Deletes exactly these versions `(qualifier, timestamp)` of the row's cells;
/// `None` when there are none (an empty column list would delete the row).
pub fn delete_versions(row_key: &[u8], family: &[u8], cells: &[(Vec<u8>, i64)]) -> Option<TDelete> {
    if cells.is_empty() {
        return None;
    }
    let columns = cells
        .iter()
        .map(|(q, ts)| TColumn::new(family.to_vec(), Some(q.clone()), Some(*ts)))
        .collect();
    Some(TDelete::new(
        row_key.to_vec(),
        Some(columns),
        None,
        Some(TDeleteType::DELETE_COLUMN),
        None,
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(family: &[u8], q: &[u8], ts: i64) -> TColumn {
        TColumn {
            family: family.to_vec(),
            qualifier: Some(q.to_vec()),
            timestamp: Some(ts),
        }
    }

    #[test]
    fn put_cells_stamps_every_cell_and_the_put() {
        let p = put_cells(b"r1", b"d", &[("a", b"1"), ("b", b"\xff")], Some(7));
        assert_eq!(p.row, b"r1");
        assert_eq!(p.timestamp, Some(7));
        let got: Vec<_> = p
            .column_values
            .iter()
            .map(|c| {
                (
                    c.family.clone(),
                    c.qualifier.clone(),
                    c.value.clone(),
                    c.timestamp,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (b"d".to_vec(), b"a".to_vec(), b"1".to_vec(), Some(7)),
                (b"d".to_vec(), b"b".to_vec(), b"\xff".to_vec(), Some(7)),
            ]
        );
        let unstamped = put_cells(b"r1", b"d", &[("a", b"1")], None);
        assert_eq!(unstamped.timestamp, None);
        assert_eq!(unstamped.column_values[0].timestamp, None);
    }

    #[test]
    fn row_delete_removes_the_whole_row_up_to_ts() {
        let d = row_delete(b"r1", 1_700_000_000_123);
        assert_eq!(d.row, b"r1");
        assert_eq!(d.columns, None);
        assert_eq!(d.timestamp, Some(1_700_000_000_123));
        assert_eq!(d.delete_type, None);
        assert_eq!(row_delete(b"r1", LATEST).timestamp, Some(i64::MAX));
    }

    #[test]
    fn columns_delete_removes_all_versions_of_each_column_up_to_ts() {
        let d = columns_delete(b"r1", b"d", &["body", "edited_at"], 5000);
        assert_eq!(d.row, b"r1");
        assert_eq!(d.timestamp, Some(5000));
        assert_eq!(d.delete_type, Some(TDeleteType::DELETE_COLUMNS));
        assert_eq!(
            d.columns,
            Some(vec![
                col(b"d", b"body", 5000),
                col(b"d", b"edited_at", 5000)
            ])
        );
    }

    #[test]
    fn delete_versions_removes_exactly_the_named_versions() {
        assert_eq!(delete_versions(b"r1", b"d", &[]), None);
        let d = delete_versions(b"r1", b"d", &[(b"a".to_vec(), 10), (b"b".to_vec(), 20)])
            .expect("cells given");
        assert_eq!(d.row, b"r1");
        assert_eq!(d.timestamp, None, "each column carries its own version");
        assert_eq!(d.delete_type, Some(TDeleteType::DELETE_COLUMN));
        assert_eq!(
            d.columns,
            Some(vec![col(b"d", b"a", 10), col(b"d", b"b", 20)])
        );
    }
}
