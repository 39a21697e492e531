//! Source values → the canonical row the targets hold, or the reason why
//! not. Pure: the checks that need the database (orphans) and the event size
//! rule live in [`super::admit`].

use serde::Serialize;

use super::spec::SrcVal;
use super::{ids, keys};
use crate::config::EntityKind;

/// Why a row cannot be written as it is. Each goes to the dead-letter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    ZeroDate,
    InvalidUtf8,
    Mojibake,
    OrphanRoom,
    NullValue,
    OversizedEvent,
    BadValue,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::ZeroDate => "zero_date",
            Reject::InvalidUtf8 => "invalid_utf8",
            Reject::Mojibake => "mojibake",
            Reject::OrphanRoom => "orphan_room",
            Reject::NullValue => "null_value",
            Reject::OversizedEvent => "oversized_event",
            Reject::BadValue => "bad_value",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: Reject,
    pub detail: String,
}

fn reject(reason: Reject, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// One value of a canonical row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub name: &'static str,
    pub value: Option<String>,
    /// Emitted as a JSON number in events.
    pub numeric: bool,
}

/// A row as the targets hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub kind: EntityKind,
    /// `12` or `12:34`: the legacy primary key.
    pub key: String,
    /// Partition key of the Kafka event (room id, or account id).
    pub partition_key: u64,
    /// Source version in ms: the HBase cell timestamp.
    pub version_ms: u64,
    pub deleted: bool,
    pub cells: Vec<Cell>,
    /// Row key in the entity's HBase table.
    pub row_key: Vec<u8>,
    /// For messages: (legacy id, new id, room id) for the id map.
    pub id_pair: Option<(u64, u64, u64)>,
}

impl Canonical {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.cells
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.value.as_deref())
    }
}

/// What the mapping needs besides the row.
#[derive(Debug, Clone)]
pub struct MapContext {
    pub salt_buckets: u16,
    pub epoch_ms: u64,
    /// Version for tables without a version column (the phase's source time).
    pub default_version_ms: u64,
    /// The lowest version the row may carry: diff stamps each change above
    /// the previous one (see `pipeline::diff::clock`), so that a delete or a
    /// NULL written in the same second as a later state cannot hide it.
    pub min_version_ms: u64,
}

fn num(name: &'static str, v: u64) -> Cell {
    Cell {
        name,
        value: Some(v.to_string()),
        numeric: true,
    }
}

fn signed(name: &'static str, v: i64) -> Cell {
    Cell {
        name,
        value: Some(v.to_string()),
        numeric: true,
    }
}

fn text(name: &'static str, v: Option<String>) -> Cell {
    Cell {
        name,
        value: v,
        numeric: false,
    }
}

fn req_u64(row: &[SrcVal], i: usize, name: &str) -> Result<u64, Rejection> {
    match &row[i] {
        SrcVal::Null => Err(reject(Reject::NullValue, format!("{name} is NULL"))),
        v => v.as_u64().ok_or_else(|| {
            reject(
                Reject::BadValue,
                format!("{name} is not an unsigned number"),
            )
        }),
    }
}

fn req_i64(row: &[SrcVal], i: usize, name: &str) -> Result<i64, Rejection> {
    match &row[i] {
        SrcVal::Null => Err(reject(Reject::NullValue, format!("{name} is NULL"))),
        v => v
            .as_i64()
            .ok_or_else(|| reject(Reject::BadValue, format!("{name} is not a number"))),
    }
}

/// UTF-8 text; `required` turns NULL into a rejection.
fn utf8(row: &[SrcVal], i: usize, name: &str, required: bool) -> Result<Option<String>, Rejection> {
    match &row[i] {
        SrcVal::Null if required => Err(reject(Reject::NullValue, format!("{name} is NULL"))),
        SrcVal::Null => Ok(None),
        SrcVal::Bytes(b) => {
            let s = std::str::from_utf8(b).map_err(|e| {
                reject(
                    Reject::InvalidUtf8,
                    format!("{name}: invalid UTF-8 at byte {}", e.valid_up_to()),
                )
            })?;
            if is_mojibake(s) {
                return Err(reject(
                    Reject::Mojibake,
                    format!("{name}: UTF-8 text double-encoded through latin1"),
                ));
            }
            Ok(Some(s.to_string()))
        }
        other => Ok(Some(match other {
            SrcVal::UInt(v) => v.to_string(),
            SrcVal::Int(v) => v.to_string(),
            _ => unreachable!(),
        })),
    }
}

/// Text written as UTF-8 bytes through a latin1 connection reads back as one
/// character per byte: every character is below U+0100, and taking them as
/// bytes gives valid UTF-8 with multibyte sequences. Plain Western text
/// ("Café") fails the second test, so it is kept.
pub fn is_mojibake(s: &str) -> bool {
    if s.is_ascii() {
        return false;
    }
    let mut bytes = Vec::with_capacity(s.len());
    for c in s.chars() {
        let c = c as u32;
        if c > 0xFF {
            return false;
        }
        bytes.push(c as u8);
    }
    match std::str::from_utf8(&bytes) {
        Ok(t) => !t.is_ascii(),
        Err(_) => false,
    }
}

/// Unix seconds from `YYYY-MM-DD HH:MM:SS`; None for zero or invalid dates.
pub fn parse_datetime(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, se) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if y == 0 || !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    // days_from_civil (Howard Hinnant).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

/// Maps one source row of `kind` to its canonical form, or says why not.
/// Orphan checks need the database and are done by the caller.
pub fn canonical(
    kind: EntityKind,
    row: &[SrcVal],
    ctx: &MapContext,
) -> Result<Canonical, Rejection> {
    let mut c = source_form(kind, row, ctx)?;
    c.version_ms = c.version_ms.max(ctx.min_version_ms);
    Ok(c)
}

/// The row with its source version.
fn source_form(kind: EntityKind, row: &[SrcVal], ctx: &MapContext) -> Result<Canonical, Rejection> {
    match kind {
        EntityKind::Message => {
            let message_id = req_u64(row, 0, "message_id")?;
            let room_id = req_u64(row, 1, "room_id")?;
            let account_id = req_u64(row, 2, "account_id")?;
            let body = utf8(row, 3, "body", true)?;
            let send_time = req_u64(row, 4, "send_time")?;
            let update_time = req_u64(row, 5, "update_time")?;
            let deleted = req_i64(row, 6, "deleted")?;
            let new_id = ids::new_message_id(message_id, send_time, ctx.epoch_ms);
            Ok(Canonical {
                kind,
                key: message_id.to_string(),
                partition_key: room_id,
                version_ms: send_time.max(update_time) * 1000,
                deleted: deleted != 0,
                cells: vec![
                    num("message_id", message_id),
                    num("id", new_id),
                    num("room_id", room_id),
                    num("account_id", account_id),
                    text("body", body),
                    num("send_time", send_time),
                    num("update_time", update_time),
                    signed("deleted", deleted),
                ],
                row_key: keys::message(ctx.salt_buckets, room_id, new_id),
                id_pair: Some((message_id, new_id, room_id)),
            })
        }
        EntityKind::Room => {
            let room_id = req_u64(row, 0, "room_id")?;
            let t = req_i64(row, 1, "type")?;
            let name = utf8(row, 2, "name", false)?;
            let description = utf8(row, 3, "description", false)?;
            let message_num = req_u64(row, 4, "message_num")?;
            let lut = req_u64(row, 5, "last_update_time")?;
            let deleted = req_i64(row, 6, "deleted")?;
            Ok(Canonical {
                kind,
                key: room_id.to_string(),
                partition_key: room_id,
                version_ms: if lut > 0 {
                    lut * 1000
                } else {
                    ctx.default_version_ms
                },
                deleted: deleted != 0,
                cells: vec![
                    num("room_id", room_id),
                    signed("type", t),
                    text("name", name),
                    text("description", description),
                    num("message_num", message_num),
                    num("last_update_time", lut),
                    signed("deleted", deleted),
                ],
                row_key: keys::entity(ctx.salt_buckets, room_id),
                id_pair: None,
            })
        }
        EntityKind::Account => {
            let account_id = req_u64(row, 0, "account_id")?;
            let name = utf8(row, 1, "name", false)?;
            let org = match &row[2] {
                SrcVal::Null => None,
                v => v.as_u64(),
            };
            let created = utf8(row, 3, "created_at", true)?.unwrap_or_default();
            if parse_datetime(&created).is_none() {
                return Err(reject(
                    Reject::ZeroDate,
                    format!("created_at is {created:?}"),
                ));
            }
            let deleted = req_i64(row, 4, "deleted")?;
            Ok(Canonical {
                kind,
                key: account_id.to_string(),
                partition_key: account_id,
                version_ms: ctx.default_version_ms,
                deleted: deleted != 0,
                cells: vec![
                    num("account_id", account_id),
                    text("name", name),
                    Cell {
                        name: "organization_id",
                        value: org.map(|v| v.to_string()),
                        numeric: true,
                    },
                    text("created_at", Some(created)),
                    signed("deleted", deleted),
                ],
                row_key: keys::entity(ctx.salt_buckets, account_id),
                id_pair: None,
            })
        }
        EntityKind::RoomMember => {
            let room_id = req_u64(row, 0, "room_id")?;
            let account_id = req_u64(row, 1, "account_id")?;
            let role = req_i64(row, 2, "role")?;
            let last_read = req_u64(row, 3, "last_read_message_id")?;
            Ok(Canonical {
                kind,
                key: format!("{room_id}:{account_id}"),
                partition_key: room_id,
                version_ms: ctx.default_version_ms,
                deleted: false,
                cells: vec![
                    num("room_id", room_id),
                    num("account_id", account_id),
                    signed("role", role),
                    num("last_read_message_id", last_read),
                ],
                row_key: keys::member(ctx.salt_buckets, room_id, account_id),
                id_pair: None,
            })
        }
    }
}

/// The room a row belongs to, when the mapping requires that room to exist.
pub fn required_room(kind: EntityKind, row: &[SrcVal]) -> Option<u64> {
    match kind {
        EntityKind::Message | EntityKind::RoomMember => row[match kind {
            EntityKind::Message => 1,
            _ => 0,
        }]
        .as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::SrcVal;

    fn ctx() -> MapContext {
        MapContext {
            salt_buckets: 16,
            epoch_ms: 1_262_304_000_000,
            default_version_ms: 1_700_000_000_000,
            min_version_ms: 0,
        }
    }

    fn message(body: SrcVal) -> Vec<SrcVal> {
        vec![
            SrcVal::UInt(42),
            SrcVal::UInt(1001),
            SrcVal::UInt(7),
            body,
            SrcVal::UInt(1_500_000_000),
            SrcVal::UInt(1_500_000_100),
            SrcVal::Int(0),
        ]
    }

    #[test]
    fn message_maps_to_versioned_canonical_row() {
        let c = canonical(
            EntityKind::Message,
            &message(SrcVal::Bytes("了解🙏".as_bytes().to_vec())),
            &ctx(),
        )
        .unwrap();
        assert_eq!(c.key, "42");
        assert_eq!(c.get("body"), Some("了解🙏"));
        assert_eq!(c.version_ms, 1_500_000_100_000);
        assert_eq!(c.partition_key, 1001);
        assert_eq!(c.row_key.len(), 17);
        assert_eq!(c.id_pair.unwrap().0, 42);
    }

    #[test]
    fn dirty_rows_are_rejected_with_their_reason() {
        let cases = [
            (SrcVal::Null, Reject::NullValue),
            (SrcVal::Bytes(b"Caf\xe9".to_vec()), Reject::InvalidUtf8),
            (
                SrcVal::Bytes(
                    "了解"
                        .bytes()
                        .map(char::from)
                        .collect::<String>()
                        .into_bytes(),
                ),
                Reject::Mojibake,
            ),
        ];
        for (body, reason) in cases {
            let e = canonical(EntityKind::Message, &message(body), &ctx()).unwrap_err();
            assert_eq!(e.reason, reason, "{}", e.detail);
        }
        let acct = vec![
            SrcVal::UInt(1),
            SrcVal::Bytes(b"x".to_vec()),
            SrcVal::Null,
            SrcVal::Bytes(b"0000-00-00 00:00:00".to_vec()),
            SrcVal::Int(0),
        ];
        assert_eq!(
            canonical(EntityKind::Account, &acct, &ctx())
                .unwrap_err()
                .reason,
            Reject::ZeroDate
        );
    }

    #[test]
    fn western_latin1_text_is_not_mojibake() {
        assert!(!is_mojibake("Café crème"));
        assert!(!is_mojibake("了解しました"));
        assert!(is_mojibake(
            &"了解しました".bytes().map(char::from).collect::<String>()
        ));
    }

    #[test]
    fn datetimes_parse_and_zero_dates_do_not() {
        assert_eq!(parse_datetime("2012-01-01 00:00:00"), Some(1_325_376_000));
        assert_eq!(parse_datetime("0000-00-00 00:00:00"), None);
        assert_eq!(parse_datetime("2019-00-10 00:00:00"), None);
    }
}
