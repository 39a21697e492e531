//! Binlog values → the `SrcVal`s the mapping reads, agreeing with what a
//! `SELECT` of the same row returns to base.

use mysql_async::binlog::value::BinlogValue;
use mysql_async::Value;

use super::SourceColumn;
use crate::mapping::{ColType, SrcVal};

fn width_bits(data_type: &str) -> u32 {
    match data_type {
        "tinyint" | "bool" | "boolean" => 8,
        "smallint" => 16,
        "mediumint" => 24,
        "int" | "integer" => 32,
        _ => 64,
    }
}

/// A binlog value as the mapping reads it. Unsigned integers arrive signed
/// when the server logs no signedness metadata: reinterpreted by width.
/// DATETIME is formatted as `CAST(… AS CHAR)` would (zero dates included).
pub fn src_val(v: Option<&BinlogValue<'_>>, col: &SourceColumn, want: ColType) -> SrcVal {
    let v = match v {
        None | Some(BinlogValue::Value(Value::NULL)) => return SrcVal::Null,
        Some(BinlogValue::Value(v)) => v,
        Some(BinlogValue::Jsonb(j)) => {
            return SrcVal::Bytes(
                serde_json::Value::try_from(j.clone())
                    .map(|x| x.to_string())
                    .unwrap_or_default()
                    .into_bytes(),
            )
        }
        Some(BinlogValue::JsonDiff(_)) => return SrcVal::Null,
    };
    let int = match v {
        Value::Int(i) if col.unsigned && *i < 0 => {
            let bits = width_bits(&col.data_type);
            Some(if bits == 64 {
                SrcVal::UInt(*i as u64)
            } else {
                SrcVal::UInt((*i as u64) & ((1u64 << bits) - 1))
            })
        }
        Value::Int(i) => Some(SrcVal::Int(*i)),
        Value::UInt(u) => Some(SrcVal::UInt(*u)),
        _ => None,
    };
    if let Some(n) = int {
        return match (want, n) {
            (ColType::Unsigned, SrcVal::Int(i)) if i >= 0 => SrcVal::UInt(i as u64),
            (ColType::Signed, SrcVal::UInt(u)) if i64::try_from(u).is_ok() => SrcVal::Int(u as i64),
            (ColType::Bytes, SrcVal::Int(i)) => SrcVal::Bytes(i.to_string().into_bytes()),
            (ColType::Bytes, SrcVal::UInt(u)) => SrcVal::Bytes(u.to_string().into_bytes()),
            (_, n) => n,
        };
    }
    let text = match v {
        Value::Bytes(b) => {
            return match want {
                ColType::Bytes => SrcVal::Bytes(b.clone()),
                _ => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| {
                        let s = s.trim();
                        match want {
                            ColType::Unsigned => s.parse().ok().map(SrcVal::UInt),
                            _ => s.parse().ok().map(SrcVal::Int),
                        }
                    })
                    .unwrap_or_else(|| SrcVal::Bytes(b.clone())),
            }
        }
        Value::Date(y, mo, d, h, mi, s, us) => {
            if col.data_type == "date" {
                format!("{y:04}-{mo:02}-{d:02}")
            } else if *us > 0 {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
            } else {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
            }
        }
        Value::Time(neg, days, h, mi, s, _) => {
            let hours = u32::from(*h) + days * 24;
            format!("{}{hours:02}:{mi:02}:{s:02}", if *neg { "-" } else { "" })
        }
        Value::Float(f) => f.to_string(),
        Value::Double(f) => f.to_string(),
        _ => String::new(),
    };
    SrcVal::Bytes(text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_values_logged_signed_are_reinterpreted_by_width() {
        let col = |dt: &str, unsigned| SourceColumn {
            name: "c".into(),
            data_type: dt.into(),
            unsigned,
        };
        let v = |x: Value| BinlogValue::Value(x);
        assert_eq!(
            src_val(
                Some(&v(Value::Int(-1))),
                &col("int", true),
                ColType::Unsigned
            ),
            SrcVal::UInt(4_294_967_295)
        );
        assert_eq!(
            src_val(
                Some(&v(Value::Int(-56))),
                &col("tinyint", true),
                ColType::Unsigned
            ),
            SrcVal::UInt(200)
        );
        assert_eq!(
            src_val(
                Some(&v(Value::Int(-1))),
                &col("tinyint", false),
                ColType::Signed
            ),
            SrcVal::Int(-1)
        );
        assert_eq!(
            src_val(
                Some(&v(Value::Date(0, 0, 0, 0, 0, 0, 0))),
                &col("datetime", false),
                ColType::Bytes
            ),
            SrcVal::Bytes(b"0000-00-00 00:00:00".to_vec())
        );
        assert_eq!(
            src_val(
                Some(&v(Value::Date(2012, 1, 2, 3, 4, 5, 0))),
                &col("datetime", false),
                ColType::Bytes
            ),
            SrcVal::Bytes(b"2012-01-02 03:04:05".to_vec())
        );
        assert_eq!(
            src_val(Some(&v(Value::NULL)), &col("int", true), ColType::Unsigned),
            SrcVal::Null
        );
    }
}
