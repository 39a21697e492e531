//! Planning a base run, as pure functions. A table's chunks are the ranges
//! `[k·W, (k+1)·W)` of its leading primary-key column, for a width `W` chosen
//! once per run from the table's density (so that a chunk holds about
//! `--chunk-rows` rows) and published with the run's plan: every shard uses
//! the same widths, so chunk `k` means the same rows everywhere, and chunk `k`
//! of table `t` belongs to shard `(k + t) mod N`. Only chunks that hold rows
//! are copied: the planner seeks from one non-empty chunk to the next, so a
//! lone outlier key (4,294,967,295 in a table of small ids) costs one seek,
//! not millions of empty chunks.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::checkpoint::Shard;

/// A chunk of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Index of the table in the run's table order.
    pub table: usize,
    pub k: u64,
    pub lo: u64,
    /// Exclusive; saturates at `u64::MAX` for the last possible chunk.
    pub hi: u64,
}

/// The chunk width of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableWidth {
    pub table: String,
    pub width: u64,
}

/// The parameters every shard of a run must share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub chunk_rows: u64,
    pub shards: u32,
    /// In the run's table order.
    pub tables: Vec<TableWidth>,
}

impl Plan {
    /// Names the first parameter in which `other` differs from this plan.
    pub fn mismatch(&self, other: &Plan) -> Option<String> {
        if self.shards != other.shards {
            return Some(format!(
                "shard count {} (this process: {})",
                self.shards, other.shards
            ));
        }
        if self.chunk_rows != other.chunk_rows {
            return Some(format!(
                "--chunk-rows {} (this process: {})",
                self.chunk_rows, other.chunk_rows
            ));
        }
        let names = |p: &Plan| p.tables.iter().map(|t| t.table.clone()).collect::<Vec<_>>();
        if names(self) != names(other) {
            return Some(format!(
                "tables {:?} (this process: {:?})",
                names(self),
                names(other)
            ));
        }
        None
    }

    /// A short, stable digest of the plan (names its records in Kafka).
    pub fn digest(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        format!("{:016x}", twox_hash::XxHash3_64::oneshot(text.as_bytes()))
    }
}

/// The width that gives about `chunk_rows` rows a chunk, from `first_span`:
/// how many key values the table's first `chunk_rows` rows span (None for a
/// table with fewer rows). A dense table keeps `W = chunk_rows`; a sparse one
/// gets the smallest power-of-two multiple of `chunk_rows` covering the span.
/// Sampled at the start of the key range, so a few outliers far away (which
/// the planner's seek skips) do not widen every chunk.
pub fn width(chunk_rows: u64, first_span: Option<u64>) -> u64 {
    let mut w = chunk_rows.max(1);
    if let Some(span) = first_span {
        while w < span && w < u64::MAX / 2 {
            w *= 2;
        }
    }
    w
}

/// Chunk `k` of width `w` of table `table`.
pub fn chunk(table: usize, k: u64, w: u64) -> Chunk {
    Chunk {
        table,
        k,
        lo: k.saturating_mul(w),
        hi: (k + 1).saturating_mul(w),
    }
}

/// The chunk index holding key `key`.
pub fn chunk_of(key: u64, w: u64) -> u64 {
    key / w
}

/// Round-robin over tables, keeping each table's chunk order, so small tables
/// finish early and big ones keep every worker busy.
pub fn interleave(q: Vec<Chunk>, tables: usize) -> VecDeque<Chunk> {
    let mut per: Vec<VecDeque<Chunk>> = vec![VecDeque::new(); tables];
    for c in q {
        per[c.table].push_back(c);
    }
    let mut out = VecDeque::new();
    loop {
        let mut any = false;
        for p in per.iter_mut() {
            if let Some(c) = p.pop_front() {
                out.push_back(c);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}

/// Each table's chunks spread evenly over the queue (a chunk at its
/// table's fraction `(i + ½) / n`): any first part of the queue holds the
/// tables in their proportions, as a copy that stops early (`plan
/// --calibrate`) must to measure the whole's speed.
pub fn proportional(q: Vec<Chunk>, tables: usize) -> VecDeque<Chunk> {
    let mut n = vec![0usize; tables];
    for c in &q {
        n[c.table] += 1;
    }
    let mut seen = vec![0usize; tables];
    let mut keyed: Vec<(f64, Chunk)> = q
        .into_iter()
        .map(|c| {
            let i = seen[c.table];
            seen[c.table] += 1;
            ((i as f64 + 0.5) / n[c.table] as f64, c)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.table.cmp(&b.1.table)));
    keyed.into_iter().map(|(_, c)| c).collect()
}

/// The chunks a shard copies: the non-empty ones it owns that are not done,
/// round-robin over the tables ([`interleave`]), or in proportion
/// ([`proportional`]) for a copy that stops early.
pub fn todo(
    nonempty: &[Chunk],
    shard: Shard,
    done: &dyn Fn(usize, u64) -> bool,
    tables: usize,
    sample: bool,
) -> VecDeque<Chunk> {
    let mine = nonempty
        .iter()
        .filter(|c| shard.owns(c.table, c.k) && !done(c.table, c.k))
        .cloned()
        .collect();
    if sample {
        proportional(mine, tables)
    } else {
        interleave(mine, tables)
    }
}

/// A table in the dry-run report.
#[derive(Debug, Clone, Serialize)]
pub struct PlanTable {
    pub table: String,
    pub key: String,
    pub min_key: Option<u64>,
    pub max_key: Option<u64>,
    pub estimated_rows: u64,
    /// Key values per chunk.
    pub width: u64,
    /// Non-empty chunks.
    pub chunks: u64,
    pub chunks_this_shard: u64,
    pub chunks_done: u64,
}

/// `base --dry-run`'s output.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub command: &'static str,
    pub dry_run: bool,
    pub run_id: String,
    pub shard: String,
    pub chunk_rows: u64,
    pub workers: usize,
    pub tables: Vec<PlanTable>,
    pub estimated_rows: u64,
    pub estimated_s: Option<f64>,
}

/// Per table: (non-empty chunks, this shard's, this shard's done).
pub fn counts(
    nonempty: &[Chunk],
    shard: Shard,
    done: &BTreeMap<(usize, u64), ()>,
    tables: usize,
) -> Vec<(u64, u64, u64)> {
    let mut out = vec![(0, 0, 0); tables];
    for c in nonempty {
        out[c.table].0 += 1;
        if shard.owns(c.table, c.k) {
            out[c.table].1 += 1;
            if done.contains_key(&(c.table, c.k)) {
                out[c.table].2 += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_tables_keep_the_chunk_rows_width() {
        assert_eq!(width(20_000, Some(20_000)), 20_000);
        assert_eq!(width(1000, Some(1040)), 2000);
        assert_eq!(width(1000, Some(700)), 1000);
        assert_eq!(width(1000, None), 1000);
    }

    #[test]
    fn sparse_tables_get_wider_chunks_of_about_chunk_rows_rows() {
        // The first 1,000 rows span a million key values.
        let w = width(1000, Some(1_000_000));
        assert!((1_000_000..2_000_000).contains(&w), "w {w}");
        assert_eq!(w % 1000, 0);
        // A span near the top of the key space does not overflow.
        assert!(width(1000, Some(u64::MAX)) >= u64::MAX / 2);
    }

    #[test]
    fn chunks_tile_the_key_space_without_gaps_or_overlap() {
        let w = 1000;
        for k in 0..10 {
            let c = chunk(0, k, w);
            assert_eq!(c.hi, chunk(0, k + 1, w).lo);
            assert_eq!(chunk_of(c.lo, w), k);
            assert_eq!(chunk_of(c.hi - 1, w), k);
        }
        let last = chunk(0, u64::MAX / w, w);
        assert_eq!(last.hi, u64::MAX);
        assert_eq!(chunk_of(u64::MAX - 1, w), u64::MAX / w);
    }

    #[test]
    fn every_chunk_belongs_to_exactly_one_shard_and_done_ones_are_skipped() {
        let nonempty: Vec<Chunk> = (0..3)
            .flat_map(|t| (0..50).map(move |k| chunk(t, k * 7, 100)))
            .collect();
        let n = 4;
        let mut seen = std::collections::HashSet::new();
        for i in 0..n {
            let shard = Shard { index: i, count: n };
            for c in todo(&nonempty, shard, &|_, _| false, 3, false) {
                assert!(seen.insert((c.table, c.k)), "{c:?} twice");
            }
        }
        assert_eq!(seen.len(), nonempty.len());
        let left = todo(&nonempty, Shard::ALL, &|t, k| t == 1 || k < 70, 3, false);
        assert!(left.iter().all(|c| c.table != 1 && c.k >= 70));
        assert_eq!(left.len(), 2 * 40);
        // Interleaved: consecutive chunks come from different tables.
        assert_ne!(left[0].table, left[1].table);
    }

    #[test]
    fn a_copy_that_stops_early_samples_every_table_in_proportion() {
        // Tables of 1, 2, 4 and 34 chunks, as the calibration's dataset.
        let sizes = [1u64, 2, 4, 34];
        let nonempty: Vec<Chunk> = sizes
            .iter()
            .enumerate()
            .flat_map(|(t, &n)| (0..n).map(move |k| chunk(t, k, 100)))
            .collect();
        let q = todo(&nonempty, Shard::ALL, &|_, _| false, 4, true);
        assert_eq!(q.len(), 41);
        // Any first part holds each table's share of that part, within a chunk.
        for part in [4usize, 10, 20, 30] {
            for (t, &n) in sizes.iter().enumerate() {
                let got = q.iter().take(part).filter(|c| c.table == t).count() as f64;
                let want = part as f64 * n as f64 / 41.0;
                assert!(
                    (got - want).abs() <= 1.0,
                    "first {part}: table {t} {got} vs {want:.1}"
                );
            }
        }
        // Each table's chunks keep their order.
        let message: Vec<u64> = q.iter().filter(|c| c.table == 3).map(|c| c.k).collect();
        assert_eq!(message, (0..34).collect::<Vec<_>>());
    }

    #[test]
    fn a_shard_with_other_parameters_is_named() {
        let p = Plan {
            chunk_rows: 1000,
            shards: 3,
            tables: vec![TableWidth {
                table: "message".into(),
                width: 1000,
            }],
        };
        let mut q = p.clone();
        assert_eq!(p.mismatch(&q), None);
        q.chunk_rows = 2000;
        assert!(p.mismatch(&q).unwrap().contains("--chunk-rows 1000"));
        q = p.clone();
        q.shards = 2;
        assert!(p.mismatch(&q).unwrap().contains("shard count 3"));
        assert_ne!(p.digest(), q.digest());
    }
}
