//! Drill-down: the rows of mismatched buckets, side by side, classified as
//! missing in the target, extra in the target, or different (naming the
//! columns), and the CSV report of them.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;

use super::rows::{Locator, SourceRow, Target, TargetRow};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Missing,
    Extra,
    Different,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Extra => "extra",
            Kind::Different => "different",
        }
    }
}

/// One row that differs between the source and a target.
#[derive(Debug, Clone)]
pub struct Problem {
    pub table: usize,
    pub target: Target,
    pub key: String,
    pub kind: Kind,
    pub columns: Vec<String>,
    /// The row as the target should hold it (missing, different).
    pub source: Option<SourceRow>,
    /// The row as the target holds it (extra, different).
    pub found: Option<TargetRow>,
}

/// Compares the rows of `keys` on both sides.
pub fn classify<'a>(
    table: usize,
    target: Target,
    keys: impl IntoIterator<Item = &'a String>,
    src: &HashMap<String, SourceRow>,
    tgt: &HashMap<String, Vec<TargetRow>>,
) -> Vec<Problem> {
    let none = Vec::new();
    let mut out = Vec::new();
    for key in keys {
        let s = src.get(key);
        let rows = tgt.get(key).unwrap_or(&none);
        let problem = |kind, columns, found: Option<&TargetRow>| Problem {
            table,
            target,
            key: key.clone(),
            kind,
            columns,
            source: s.cloned(),
            found: found.cloned(),
        };
        let Some(s) = s else {
            out.extend(
                rows.iter()
                    .map(|r| problem(Kind::Extra, Vec::new(), Some(r))),
            );
            continue;
        };
        if rows.is_empty() {
            out.push(problem(Kind::Missing, Vec::new(), None));
            continue;
        }
        let want = s.hash(target);
        // The row that stands for the key: the identical one, else the one at
        // the right place; every other row under the key is extra.
        let main = rows
            .iter()
            .position(|r| r.hash == want)
            .or_else(|| {
                rows.iter().position(
                    |r| matches!(&r.at, Locator::Hbase { row_key } if *row_key == s.c.row_key),
                )
            })
            .unwrap_or(0);
        for (i, r) in rows.iter().enumerate() {
            if i != main {
                out.push(problem(Kind::Extra, Vec::new(), Some(r)));
            } else if r.hash != want {
                out.push(problem(Kind::Different, differing(s, r), Some(r)));
            }
        }
    }
    out.sort_by(|a, b| (a.table, a.target, &a.key).cmp(&(b.table, b.target, &b.key)));
    out
}

/// The columns whose values differ (a NULL on one side counts); `row_key`
/// when the cells agree but the row is stored under another HBase key.
fn differing(s: &SourceRow, r: &TargetRow) -> Vec<String> {
    let mut names: BTreeSet<&str> =
        s.c.cells
            .iter()
            .filter(|c| c.value.is_some())
            .map(|c| c.name)
            .collect();
    names.extend(
        r.cells
            .iter()
            .filter_map(|c| std::str::from_utf8(&c.name).ok()),
    );
    let cols: Vec<String> = names
        .into_iter()
        .filter(|n| s.c.get(n).map(str::as_bytes) != r.get(n))
        .map(str::to_string)
        .collect();
    if cols.is_empty() {
        vec!["row_key".into()]
    } else {
        cols
    }
}

const ABBREV_CHARS: usize = 40;

fn abbrev(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    let mut out: String = s.chars().take(ABBREV_CHARS).collect();
    if s.chars().count() > ABBREV_CHARS {
        out.push('…');
    }
    out
}

/// `name=value` pairs of the named columns (all non-NULL ones when empty).
fn show_source(s: &SourceRow, cols: &[String]) -> String {
    s.c.cells
        .iter()
        .filter(|c| cols.is_empty() || cols.iter().any(|n| n == c.name))
        .map(|c| match &c.value {
            Some(v) => format!("{}={}", c.name, abbrev(v.as_bytes())),
            None => format!("{}=NULL", c.name),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn show_target(r: &TargetRow, cols: &[String]) -> String {
    let mut parts: Vec<String> = r
        .cells
        .iter()
        .filter(|c| cols.is_empty() || cols.iter().any(|n| n.as_bytes() == c.name))
        .map(|c| format!("{}={}", String::from_utf8_lossy(&c.name), abbrev(&c.value)))
        .collect();
    for n in cols {
        if n != "row_key" && r.get(n).is_none() {
            parts.push(format!("{n}=NULL"));
        }
    }
    if let Locator::Hbase { row_key } = &r.at {
        if cols.is_empty() || cols.iter().any(|c| c == "row_key") {
            parts.push(format!("row_key=0x{}", crate::mapping::hex(row_key)));
        }
    }
    parts.join("; ")
}

#[derive(Serialize)]
struct Line<'a> {
    table: &'a str,
    target: &'static str,
    key: &'a str,
    kind: &'static str,
    columns: String,
    source: String,
    target_value: String,
}

/// Writes one line per problem (at most `max` lines); returns how many.
pub fn write_report(
    path: &Path,
    problems: &[Problem],
    table_names: &[String],
    max: usize,
) -> Result<usize> {
    let io = |e: csv::Error| Error::Other(format!("report {}: {e}", path.display()));
    let mut w = csv::Writer::from_path(path).map_err(io)?;
    let mut n = 0;
    for p in problems.iter().take(max) {
        let cols = if p.kind == Kind::Different {
            p.columns.as_slice()
        } else {
            &[]
        };
        w.serialize(Line {
            table: &table_names[p.table],
            target: p.target.as_str(),
            key: &p.key,
            kind: p.kind.as_str(),
            columns: p.columns.join(";"),
            source: p
                .source
                .as_ref()
                .filter(|_| p.kind != Kind::Extra)
                .map(|s| show_source(s, cols))
                .unwrap_or_default(),
            target_value: p
                .found
                .as_ref()
                .map(|r| show_target(r, cols))
                .unwrap_or_default(),
        })
        .map_err(io)?;
        n += 1;
    }
    w.flush()
        .map_err(|e| Error::io(format!("report {}", path.display()), e))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EntityKind;
    use crate::mapping::{canonical, MapContext, SrcVal};
    use crate::verify::digest::RowHasher;
    use crate::verify::rows::TargetCell;

    fn src(body: &str) -> SourceRow {
        let row = vec![
            SrcVal::UInt(42),
            SrcVal::UInt(1001),
            SrcVal::UInt(7),
            SrcVal::Bytes(body.as_bytes().to_vec()),
            SrcVal::UInt(1_500_000_000),
            SrcVal::UInt(0),
            SrcVal::Int(0),
        ];
        let ctx = MapContext {
            salt_buckets: 4,
            epoch_ms: 1_262_304_000_000,
            default_version_ms: 0,
            min_version_ms: 0,
        };
        let c = canonical(EntityKind::Message, &row, &ctx).unwrap();
        crate::verify::source::hash_row(&mut RowHasher::default(), "message", c)
    }

    fn kafka_row(s: &SourceRow, body: &str) -> TargetRow {
        let mut cells: Vec<TargetCell> =
            s.c.cells
                .iter()
                .filter_map(|c| {
                    c.value.as_ref().map(|v| TargetCell {
                        name: c.name.as_bytes().to_vec(),
                        value: if c.name == "body" {
                            body.into()
                        } else {
                            v.clone().into_bytes()
                        },
                        ts: 0,
                    })
                })
                .collect();
        cells.sort_by(|a, b| a.name.cmp(&b.name));
        let hash = RowHasher::default().hash_cells(
            "message",
            &s.c.key,
            cells
                .iter()
                .map(|c| (c.name.as_slice(), c.value.as_slice())),
            None,
        );
        TargetRow {
            key: s.c.key.clone(),
            cells,
            hash,
            at: Locator::Kafka {
                partition: 0,
                record_key: b"1001".to_vec(),
            },
        }
    }

    #[test]
    fn target_rows_decoded_from_events_hash_like_the_source() {
        let s = src("了解🙏");
        assert_eq!(kafka_row(&s, "了解🙏").hash, s.h_kafka);
        assert_ne!(kafka_row(&s, "了解").hash, s.h_kafka);
    }

    #[test]
    fn rows_are_classified_missing_extra_or_different_by_column() {
        let s = src("hello");
        let key = s.c.key.clone();
        let srcs = HashMap::from([(key.clone(), s.clone())]);
        let none: HashMap<String, Vec<TargetRow>> = HashMap::new();
        let p = classify(0, Target::Kafka, [&key], &srcs, &none);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].kind, Kind::Missing);
        let changed = HashMap::from([(key.clone(), vec![kafka_row(&s, "bye")])]);
        let p = classify(0, Target::Kafka, [&key], &srcs, &changed);
        assert_eq!(
            (p[0].kind, p[0].columns.clone()),
            (Kind::Different, vec!["body".to_string()])
        );
        let same = HashMap::from([(key.clone(), vec![kafka_row(&s, "hello")])]);
        assert!(classify(0, Target::Kafka, [&key], &srcs, &same).is_empty());
        let p = classify(0, Target::Kafka, [&key], &HashMap::new(), &same);
        assert_eq!(p[0].kind, Kind::Extra);
    }
}
