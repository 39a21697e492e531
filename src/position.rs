//! Source positions: where a phase started and how far it got. One ordered
//! serde enum, persisted as JSON in checkpoints and summaries.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    /// A binlog coordinate, with the GTID set at that point for information.
    Binlog {
        file: String,
        offset: u64,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        gtid: String,
    },
    /// A point of the watermark keyset `(GREATEST(send_time, update_time), id)`:
    /// rows after it are next.
    Watermark { version_s: u64, id: u64 },
}

impl Position {
    /// Parses `file:offset` or `watermark:VERSION:ID`.
    pub fn parse(s: &str) -> Option<Position> {
        if let Some(w) = s.strip_prefix("watermark:") {
            let (v, id) = w.split_once(':')?;
            return Some(Position::Watermark {
                version_s: v.parse().ok()?,
                id: id.parse().ok()?,
            });
        }
        let (file, offset) = s.rsplit_once(':')?;
        Some(Position::Binlog {
            file: file.to_string(),
            offset: offset.parse().ok()?,
            gtid: String::new(),
        })
    }

    fn key(&self) -> (u8, u64, &str, u64) {
        match self {
            Position::Binlog { file, offset, .. } => {
                // mysql-bin.000012 → 12: files roll over in numeric order.
                let seq = file
                    .rsplit('.')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                (0, seq, file.as_str(), *offset)
            }
            Position::Watermark { version_s, id } => (1, *version_s, "", *id),
        }
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Binlog { file, offset, .. } => write!(f, "{file}:{offset}"),
            Position::Watermark { version_s, id } => write!(f, "watermark:{version_s}:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_file_number_then_offset() {
        let a = Position::parse("mysql-bin.000009:900").unwrap();
        let b = Position::parse("mysql-bin.000010:4").unwrap();
        let c = Position::parse("mysql-bin.000010:500").unwrap();
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "mysql-bin.000010:500");
    }

    #[test]
    fn positions_round_trip_as_json() {
        let p = Position::Binlog {
            file: "mysql-bin.000001".into(),
            offset: 328,
            gtid: "0-1-42".into(),
        };
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(
            j,
            r#"{"kind":"binlog","file":"mysql-bin.000001","offset":328,"gtid":"0-1-42"}"#
        );
        assert_eq!(serde_json::from_str::<Position>(&j).unwrap(), p);
    }

    #[test]
    fn watermark_positions_are_typed_and_round_trip_as_text() {
        let w = Position::parse("watermark:1700000000:42").unwrap();
        assert_eq!(
            w,
            Position::Watermark {
                version_s: 1_700_000_000,
                id: 42
            }
        );
        assert_eq!(w.to_string(), "watermark:1700000000:42");
        assert!(w < Position::parse("watermark:1700000000:43").unwrap());
        assert!(Position::parse("watermark:x:1").is_none());
    }
}
