//! The event format (v1), documented in `fixtures/schema/event-v1.schema.json`.
//! One JSON object per event; `data` is the row as the read model holds it
//! (numbers as JSON numbers, text as strings, NULL as null), so folding a
//! topic to each key's latest event reproduces the source table.

use serde::Serialize;

use crate::config::EntityKind;
use crate::mapping::Canonical;

pub const SCHEMA_VERSION: u32 = 1;

/// Where an event came from.
#[derive(Debug, Clone, Serialize)]
pub struct Origin<'a> {
    /// `base` or `diff` (or `repair`).
    pub phase: &'a str,
    pub run: &'a str,
    /// Source position: the base's start position, or the binlog event's.
    pub position: &'a str,
}

/// The event type of a row's current state.
pub fn event_type(c: &Canonical) -> &'static str {
    match (c.kind, c.deleted) {
        (EntityKind::Message, true) => "message.deleted",
        (EntityKind::Message, false) if c.get("update_time").is_some_and(|u| u != "0") => {
            "message.edited"
        }
        (EntityKind::Message, false) => "message.posted",
        (EntityKind::Room, true) => "room.deleted",
        (EntityKind::Room, false) => "room.upserted",
        (EntityKind::Account, true) => "account.deleted",
        (EntityKind::Account, false) => "account.upserted",
        (EntityKind::RoomMember, true) => "room_member.removed",
        (EntityKind::RoomMember, false) => "room_member.upserted",
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly as JSON requires; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Encodes the event for a row's state into `out`; returns its length without
/// the origin object, which is what the event size rule judges (see
/// `mapping::admit`), so that a row is admitted or not whatever phase, run
/// and position write it.
pub fn encode(c: &Canonical, origin: &Origin<'_>, out: &mut Vec<u8>) -> usize {
    out.clear();
    out.extend_from_slice(b"{\"v\":");
    out.extend_from_slice(SCHEMA_VERSION.to_string().as_bytes());
    out.extend_from_slice(b",\"type\":");
    push_str(out, event_type(c));
    out.extend_from_slice(b",\"entity\":");
    push_str(out, c.kind.as_str());
    out.extend_from_slice(b",\"key\":");
    push_str(out, &c.key);
    if let Some((_, new_id, _)) = c.id_pair {
        out.extend_from_slice(format!(",\"id\":{new_id}").as_bytes());
    }
    out.extend_from_slice(
        format!(",\"version_ms\":{},\"deleted\":{}", c.version_ms, c.deleted).as_bytes(),
    );
    out.extend_from_slice(b",\"data\":{");
    for (i, cell) in c.cells.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, cell.name);
        out.push(b':');
        match &cell.value {
            None => out.extend_from_slice(b"null"),
            Some(v) if cell.numeric => out.extend_from_slice(v.as_bytes()),
            Some(v) => push_str(out, v),
        }
    }
    out.extend_from_slice(b"},\"source\":");
    let before = out.len();
    let _ = serde_json::to_writer(&mut *out, origin);
    let origin_len = out.len() - before;
    out.push(b'}');
    out.len() - origin_len
}

/// The event for a row removed from the source (a hard delete): only its key.
pub fn encode_removal(
    kind: EntityKind,
    key: &str,
    new_id: Option<u64>,
    version_ms: u64,
    origin: &Origin<'_>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("{{\"v\":{SCHEMA_VERSION},\"type\":").as_bytes());
    let t = match kind {
        EntityKind::Message => "message.deleted",
        EntityKind::Room => "room.deleted",
        EntityKind::Account => "account.deleted",
        EntityKind::RoomMember => "room_member.removed",
    };
    push_str(&mut out, t);
    out.extend_from_slice(b",\"entity\":");
    push_str(&mut out, kind.as_str());
    out.extend_from_slice(b",\"key\":");
    push_str(&mut out, key);
    if let Some(id) = new_id {
        out.extend_from_slice(format!(",\"id\":{id}").as_bytes());
    }
    out.extend_from_slice(
        format!(
            ",\"version_ms\":{version_ms},\"deleted\":true,\"hard\":true,\"data\":null,\"source\":"
        )
        .as_bytes(),
    );
    let _ = serde_json::to_writer(&mut out, origin);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{canonical, MapContext, SrcVal};

    #[test]
    fn event_is_valid_json_with_typed_data() {
        let row = vec![
            SrcVal::UInt(42),
            SrcVal::UInt(1001),
            SrcVal::UInt(7),
            SrcVal::Bytes("\"引用\"\n🙏".as_bytes().to_vec()),
            SrcVal::UInt(1_500_000_000),
            SrcVal::UInt(0),
            SrcVal::Int(0),
        ];
        let ctx = MapContext {
            salt_buckets: 16,
            epoch_ms: 1_262_304_000_000,
            default_version_ms: 0,
            min_version_ms: 0,
        };
        let c = canonical(EntityKind::Message, &row, &ctx).unwrap();
        let mut out = Vec::new();
        encode(
            &c,
            &Origin {
                phase: "base",
                run: "r1",
                position: "mariadb-bin.000001:4",
            },
            &mut out,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "message.posted");
        assert_eq!(v["key"], "42");
        assert_eq!(v["data"]["body"], "\"引用\"\n🙏");
        assert_eq!(v["data"]["room_id"], 1001);
        assert_eq!(v["source"]["position"], "mariadb-bin.000001:4");
        let r = encode_removal(
            EntityKind::Message,
            "42",
            Some(5),
            9,
            &Origin {
                phase: "diff",
                run: "d",
                position: "f:1",
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(v["hard"], true);
        assert!(v["data"].is_null());
    }
}
