//! The legacy tables as the tool reads them: each mapped kind's columns (with
//! the SELECT expression that reads them losslessly), its primary key, and
//! how a result row decodes into source values.

use serde::Serialize;
use sqlx::mysql::MySqlRow;
use sqlx::Row;

use crate::config::EntityKind;

/// How a source column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Unsigned,
    Signed,
    /// Text or blob, read as raw bytes: UTF-8 is checked by the mapping.
    Bytes,
}

/// A source column of a mapped table.
#[derive(Debug, Clone, Copy)]
pub struct SourceCol {
    pub name: &'static str,
    /// The SELECT expression (a CAST where the driver cannot read the raw type).
    pub expr: &'static str,
    pub ty: ColType,
}

const fn col(name: &'static str, ty: ColType) -> SourceCol {
    SourceCol {
        name,
        expr: name,
        ty,
    }
}

/// A value as read from the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SrcVal {
    Null,
    UInt(u64),
    Int(i64),
    Bytes(#[serde(serialize_with = "bytes_as_text")] Vec<u8>),
}

/// Dead-letter files show bytes as text when they are UTF-8, else as hex.
fn bytes_as_text<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(b) {
        Ok(t) => s.serialize_str(t),
        Err(_) => s.serialize_str(&format!("0x{}", hex(b))),
    }
}

pub fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(b.len() * 2);
    for &x in b {
        out.push(H[(x >> 4) as usize] as char);
        out.push(H[(x & 15) as usize] as char);
    }
    out
}

impl SrcVal {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            SrcVal::UInt(v) => Some(*v),
            SrcVal::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SrcVal::UInt(v) => i64::try_from(*v).ok(),
            SrcVal::Int(v) => Some(*v),
            _ => None,
        }
    }
}

/// Layout of each mapped table in the legacy schema.
pub struct TableSpec {
    pub kind: EntityKind,
    pub columns: &'static [SourceCol],
    /// Primary-key columns, leading column first (chunks are ranges of it).
    pub primary_key: &'static [&'static str],
}

use ColType::{Bytes, Signed, Unsigned};

static ACCOUNT: TableSpec = TableSpec {
    kind: EntityKind::Account,
    columns: &[
        col("account_id", Unsigned),
        col("name", Bytes),
        col("organization_id", Unsigned),
        // DATETIME as text: zero dates survive the read and are judged here.
        SourceCol {
            name: "created_at",
            expr: "CAST(created_at AS CHAR)",
            ty: Bytes,
        },
        col("deleted", Signed),
    ],
    primary_key: &["account_id"],
};

static ROOM: TableSpec = TableSpec {
    kind: EntityKind::Room,
    columns: &[
        col("room_id", Unsigned),
        col("type", Signed),
        col("name", Bytes),
        col("description", Bytes),
        col("message_num", Unsigned),
        col("last_update_time", Unsigned),
        col("deleted", Signed),
    ],
    primary_key: &["room_id"],
};

static ROOM_MEMBER: TableSpec = TableSpec {
    kind: EntityKind::RoomMember,
    columns: &[
        col("room_id", Unsigned),
        col("account_id", Unsigned),
        col("role", Signed),
        col("last_read_message_id", Unsigned),
    ],
    primary_key: &["room_id", "account_id"],
};

static MESSAGE: TableSpec = TableSpec {
    kind: EntityKind::Message,
    columns: &[
        col("message_id", Unsigned),
        col("room_id", Unsigned),
        col("account_id", Unsigned),
        col("body", Bytes),
        col("send_time", Unsigned),
        col("update_time", Unsigned),
        col("deleted", Signed),
    ],
    primary_key: &["message_id"],
};

pub fn spec(kind: EntityKind) -> &'static TableSpec {
    match kind {
        EntityKind::Account => &ACCOUNT,
        EntityKind::Room => &ROOM,
        EntityKind::RoomMember => &ROOM_MEMBER,
        EntityKind::Message => &MESSAGE,
    }
}

impl TableSpec {
    pub fn select_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| {
                if c.expr == c.name {
                    format!("`{}`", c.name)
                } else {
                    format!("{} AS `{}`", c.expr, c.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn leading_key(&self) -> &'static str {
        self.primary_key[0]
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Reads one row of a `SELECT select_list()` result.
    pub fn decode(&self, row: &MySqlRow) -> Result<Vec<SrcVal>, sqlx::Error> {
        let mut out = Vec::with_capacity(self.columns.len());
        for (i, c) in self.columns.iter().enumerate() {
            let v = match c.ty {
                Unsigned => row.try_get::<Option<u64>, _>(i)?.map(SrcVal::UInt),
                Signed => row.try_get::<Option<i64>, _>(i)?.map(SrcVal::Int),
                Bytes => row.try_get::<Option<Vec<u8>>, _>(i)?.map(SrcVal::Bytes),
            };
            out.push(v.unwrap_or(SrcVal::Null));
        }
        Ok(out)
    }

    /// A printable key of a row: `12` or `12:34` for composite keys.
    pub fn key_of(&self, row: &[SrcVal]) -> String {
        self.primary_key
            .iter()
            .filter_map(|k| self.index_of(k))
            .map(|i| match &row[i] {
                SrcVal::UInt(v) => v.to_string(),
                SrcVal::Int(v) => v.to_string(),
                SrcVal::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                SrcVal::Null => "NULL".into(),
            })
            .collect::<Vec<_>>()
            .join(":")
    }
}
