//! What each side yields: rows as the targets should hold them (source) or do
//! hold them (targets), and the filter that picks rows by bucket and sample.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::digest::{bucket, Digest, Sample};
use crate::mapping::Canonical;

/// Which rows a pass looks at.
#[derive(Debug, Clone)]
pub struct Filter {
    pub buckets: u32,
    pub sample: Sample,
    /// Only these buckets (a drill-down); all when None.
    pub wanted: Option<Arc<HashSet<u32>>>,
}

impl Filter {
    /// The key's bucket, when the row is in the sample and a wanted bucket.
    pub fn admits(&self, key: &str) -> Option<u32> {
        if !self.sample.keeps(key) {
            return None;
        }
        let b = bucket(key, self.buckets);
        match &self.wanted {
            Some(w) if !w.contains(&b) => None,
            _ => Some(b),
        }
    }

    pub fn keeps_rows(&self) -> bool {
        self.wanted.is_some()
    }
}

/// A source row mapped as base maps it, with its hash for each target.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub c: Canonical,
    pub h_kafka: u128,
    pub h_hbase: u128,
}

impl SourceRow {
    pub fn hash(&self, t: Target) -> u128 {
        match t {
            Target::Kafka => self.h_kafka,
            Target::Hbase => self.h_hbase,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Hbase,
    Kafka,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Hbase => "hbase",
            Target::Kafka => "kafka",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TargetCell {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    /// HBase cell timestamp (0 for Kafka).
    pub ts: i64,
}

/// Where a target row lives, so that repair can rewrite or remove exactly it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    Hbase { row_key: Vec<u8> },
    Kafka { partition: i32, record_key: Vec<u8> },
}

/// A row as a target holds it.
#[derive(Debug, Clone)]
pub struct TargetRow {
    pub key: String,
    /// Sorted by name.
    pub cells: Vec<TargetCell>,
    pub hash: u128,
    pub at: Locator,
}

impl TargetRow {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.cells
            .iter()
            .find(|c| c.name == name.as_bytes())
            .map(|c| c.value.as_slice())
    }
}

/// One side's pass over one table.
#[derive(Debug, Default)]
pub struct Pass<R> {
    pub digests: Vec<Digest>,
    /// Rows in the sample (for the source: mapped and not dead-lettered).
    pub rows: u64,
    /// Kept rows of the wanted buckets, by key.
    pub kept: HashMap<String, Vec<R>>,
}

impl<R> Pass<R> {
    pub fn new(buckets: u32) -> Self {
        Pass {
            digests: vec![Digest::default(); buckets as usize],
            rows: 0,
            kept: HashMap::new(),
        }
    }

    pub fn merge(&mut self, o: Pass<R>) {
        super::digest::merge_all(&mut self.digests, &o.digests);
        self.rows += o.rows;
        for (k, mut v) in o.kept {
            self.kept.entry(k).or_default().append(&mut v);
        }
    }
}
