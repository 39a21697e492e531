//! The dead-letter files: one JSON line per source row (or row change) that
//! could not be written, with its key, the reason and its raw values. A line
//! becomes durable before the unit of work that rejected it commits; a unit
//! that is redone (a retry, a resume) writes its lines again, so readers count
//! each (table, unit, key) once.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Serialize;

use super::files::{for_each_jsonl, prune_jsonl};
use crate::error::{Error, Result};
use crate::mapping::{Rejection, SrcVal, TableSpec};

/// One dead-lettered row.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub table: &'a str,
    /// Base: the chunk that read the row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u64>,
    /// Diff: the source position of the change (`file:offset`, `watermark:V:ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// Diff: `insert`, `update`, `soft_delete`, `hard_delete`, `upsert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'static str>,
    pub key: String,
    pub reason: &'static str,
    pub detail: String,
    pub values: BTreeMap<&'static str, SrcVal>,
}

impl<'a> DeadLetter<'a> {
    /// The line for a row of `spec` rejected for `why`.
    pub fn new(table: &'a str, spec: &TableSpec, row: &[SrcVal], why: Rejection) -> Self {
        DeadLetter {
            table,
            chunk: None,
            position: None,
            op: None,
            key: spec.key_of(row),
            reason: why.reason.as_str(),
            detail: why.detail,
            values: spec
                .columns
                .iter()
                .map(|c| c.name)
                .zip(row.iter().cloned())
                .collect(),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Other(format!("dead letter: {e}")))
    }
}

fn identity(v: &serde_json::Value) -> (String, String, String, String) {
    let s = |k: &str| match &v[k] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (s("table"), s("chunk"), s("position"), s("key"))
}

/// Dead letters per table and reason, each (table, unit, key) counted once.
pub fn reasons(p: &Path) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for_each_jsonl::<serde_json::Value>(p, |v| {
        if seen.insert(identity(&v)) {
            let t = v["table"].as_str().unwrap_or("").to_string();
            let r = v["reason"].as_str().unwrap_or("").to_string();
            *out.entry(t).or_default().entry(r).or_default() += 1;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Keeps the lines `keep` accepts (those of committed units), once each.
pub fn prune(p: &Path, mut keep: impl FnMut(&serde_json::Value) -> bool) -> Result<()> {
    let mut seen = HashSet::new();
    prune_jsonl(p, |v| keep(v) && seen.insert(identity(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::files::JsonlAppender;
    use crate::config::EntityKind;
    use crate::mapping::{spec, Reject};

    #[test]
    fn a_redone_unit_counts_its_dead_letters_once() {
        let dir = std::env::temp_dir().join(format!("falcon-dead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("d.jsonl");
        let mut f = JsonlAppender::open(&p).unwrap();
        let s = spec(EntityKind::RoomMember);
        let row4 = vec![
            SrcVal::UInt(1),
            SrcVal::UInt(2),
            SrcVal::Int(1),
            SrcVal::UInt(0),
        ];
        for chunk in [3, 3, 4] {
            let mut d = DeadLetter::new(
                "room_member",
                s,
                &row4,
                Rejection {
                    reason: Reject::OrphanRoom,
                    detail: "room 1 does not exist".into(),
                },
            );
            d.chunk = Some(chunk);
            f.append_raw(&d.encode().unwrap()).unwrap();
        }
        drop(f);
        let r = reasons(&p).unwrap();
        assert_eq!(r["room_member"]["orphan_room"], 2);
        prune(&p, |v| v["chunk"] == 3).unwrap();
        let r = reasons(&p).unwrap();
        assert_eq!(r["room_member"]["orphan_room"], 1);
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
