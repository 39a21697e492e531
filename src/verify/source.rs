//! The source side: every mapped table streamed in parallel key ranges, each
//! row mapped exactly as `base` maps it (rows base dead-letters are skipped
//! and counted), hashed for both targets.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use sqlx::mysql::MySqlPool;

use super::digest::{Digest, RowHasher};
use super::rows::{Filter, SourceRow};
use crate::error::{Error, Result};
use crate::mapping::{self, Admission, MapContext, Rooms, SrcVal};
pub use crate::source::mysql::SourceTable;

/// Key values per range a worker streams.
const RANGE_WIDTH: u64 = 50_000;
/// Keys per `IN (…)` when rows are fetched by key.
const KEYS_PER_QUERY: usize = 500;

pub struct Source {
    pub pool: MySqlPool,
    pub ctx: MapContext,
    /// The source's rooms, for the admission rule's orphan check.
    pub rooms: Arc<Rooms>,
    pub message_max_bytes: usize,
}

/// The source's pass over one table: a digest per bucket for each target.
#[derive(Debug)]
pub struct SourcePass {
    pub kafka: Vec<Digest>,
    pub hbase: Vec<Digest>,
    /// The id-map rows its messages should have (see `idmap`).
    pub id_map: Vec<Digest>,
    pub rows: u64,
    /// Rows base dead-letters (rejected by the mapping, or orphans).
    pub skipped: u64,
    pub kept: HashMap<String, SourceRow>,
}

impl SourcePass {
    fn new(buckets: u32) -> Self {
        SourcePass {
            kafka: vec![Digest::default(); buckets as usize],
            hbase: vec![Digest::default(); buckets as usize],
            id_map: vec![Digest::default(); buckets as usize],
            rows: 0,
            skipped: 0,
            kept: HashMap::new(),
        }
    }

    fn merge(&mut self, o: SourcePass) {
        super::digest::merge_all(&mut self.kafka, &o.kafka);
        super::digest::merge_all(&mut self.hbase, &o.hbase);
        super::digest::merge_all(&mut self.id_map, &o.id_map);
        self.rows += o.rows;
        self.skipped += o.skipped;
        self.kept.extend(o.kept);
    }
}

impl Source {
    /// The row as base writes it, or None when base dead-letters it: the
    /// same admission rule base, diff and watermark apply.
    async fn map(
        &self,
        t: &SourceTable,
        vals: &[SrcVal],
        admission: &mut Admission,
    ) -> Result<Option<mapping::Canonical>> {
        Ok(admission
            .admit(t.spec.kind, vals, &self.ctx, None)
            .await?
            .ok())
    }

    fn admission(&self) -> Admission {
        Admission::new(self.rooms.clone(), self.message_max_bytes)
    }

    /// One pass over every table (ranges of all tables share one queue).
    pub async fn pass(
        self: &Arc<Self>,
        tables: &Arc<Vec<SourceTable>>,
        filters: &Arc<Vec<Filter>>,
        workers: usize,
    ) -> Result<Vec<SourcePass>> {
        let mut queue = VecDeque::new();
        for (ti, t) in tables.iter().enumerate() {
            let (Some(min), Some(max)) = (t.min, t.max) else {
                continue;
            };
            let mut lo = min;
            while lo <= max {
                let hi = lo.saturating_add(RANGE_WIDTH);
                queue.push_back((ti, lo, hi));
                if hi == u64::MAX {
                    break;
                }
                lo = hi;
            }
        }
        let queue = Arc::new(Mutex::new(queue));
        let mut handles = Vec::new();
        for _ in 0..workers.max(1) {
            let (src, tables, filters, queue) =
                (self.clone(), tables.clone(), filters.clone(), queue.clone());
            handles.push(tokio::spawn(async move {
                src.worker(&tables, &filters, &queue).await
            }));
        }
        let mut out: Vec<SourcePass> = filters.iter().map(|f| SourcePass::new(f.buckets)).collect();
        for h in handles {
            let part = h
                .await
                .map_err(|e| Error::Other(format!("source worker: {e}")))??;
            for (o, p) in out.iter_mut().zip(part) {
                o.merge(p);
            }
        }
        Ok(out)
    }

    async fn worker(
        &self,
        tables: &[SourceTable],
        filters: &[Filter],
        queue: &Mutex<VecDeque<(usize, u64, u64)>>,
    ) -> Result<Vec<SourcePass>> {
        let mut out: Vec<SourcePass> = filters.iter().map(|f| SourcePass::new(f.buckets)).collect();
        let sqls: Vec<String> = tables
            .iter()
            .map(|t| {
                let k = t.spec.leading_key();
                format!(
                    "SELECT {} FROM `{}` WHERE `{k}` >= ? AND `{k}` < ?",
                    t.spec.select_list(),
                    t.name()
                )
            })
            .collect();
        let mut hasher = RowHasher::default();
        let mut rooms = self.admission();
        loop {
            let next = queue
                .lock()
                .map_err(|_| Error::Other("queue poisoned".into()))?
                .pop_front();
            let Some((ti, lo, hi)) = next else {
                return Ok(out);
            };
            let t = &tables[ti];
            let mut stream = sqlx::query(&sqls[ti]).bind(lo).bind(hi).fetch(&self.pool);
            while let Some(row) = stream
                .try_next()
                .await
                .map_err(|e| Error::mysql(format!("read {} [{lo}, {hi})", t.name()), e))?
            {
                let vals = t
                    .spec
                    .decode(&row)
                    .map_err(|e| Error::mysql(format!("decode a row of {}", t.name()), e))?;
                self.account(
                    t,
                    &filters[ti],
                    &vals,
                    &mut out[ti],
                    &mut hasher,
                    &mut rooms,
                )
                .await?;
            }
        }
    }

    async fn account(
        &self,
        t: &SourceTable,
        f: &Filter,
        vals: &[SrcVal],
        out: &mut SourcePass,
        hasher: &mut RowHasher,
        rooms: &mut Admission,
    ) -> Result<()> {
        let Some(c) = self.map(t, vals, rooms).await? else {
            out.skipped += 1;
            return Ok(());
        };
        let Some(b) = f.admits(&c.key) else {
            return Ok(());
        };
        for e in super::idmap::expected(&c, self.ctx.salt_buckets, hasher) {
            out.id_map[b as usize].add(e.hash);
        }
        let row = hash_row(hasher, t.name(), c);
        out.rows += 1;
        out.kafka[b as usize].add(row.h_kafka);
        out.hbase[b as usize].add(row.h_hbase);
        if f.keeps_rows() {
            out.kept.insert(row.c.key.clone(), row);
        }
        Ok(())
    }

    /// The current source rows with these keys (re-reads for the re-check).
    pub async fn fetch(
        &self,
        t: &SourceTable,
        keys: &[String],
    ) -> Result<HashMap<String, SourceRow>> {
        let pk = t.spec.primary_key;
        let cols = pk
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let parsed: Vec<Vec<u64>> = keys
            .iter()
            .filter_map(|k| {
                let parts: Option<Vec<u64>> = k.split(':').map(|p| p.parse().ok()).collect();
                parts.filter(|p| p.len() == pk.len())
            })
            .collect();
        let mut out = HashMap::new();
        let mut hasher = RowHasher::default();
        let mut rooms = self.admission();
        for batch in parsed.chunks(KEYS_PER_QUERY) {
            let tuple = format!("({})", vec!["?"; pk.len()].join(", "));
            let sql = format!(
                "SELECT {} FROM `{}` WHERE ({cols}) IN ({})",
                t.spec.select_list(),
                t.name(),
                vec![tuple; batch.len()].join(", ")
            );
            let mut q = sqlx::query(&sql);
            for k in batch {
                for v in k {
                    q = q.bind(*v);
                }
            }
            let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(|e| Error::mysql(format!("re-read rows of {}", t.name()), e))?;
            for row in rows {
                let vals = t
                    .spec
                    .decode(&row)
                    .map_err(|e| Error::mysql(format!("decode a row of {}", t.name()), e))?;
                if let Some(c) = self.map(t, &vals, &mut rooms).await? {
                    let r = hash_row(&mut hasher, t.name(), c);
                    out.insert(r.c.key.clone(), r);
                }
            }
        }
        Ok(out)
    }
}

/// Hashes a canonical row for both targets from one encoding.
pub fn hash_row(hasher: &mut RowHasher, table: &str, c: mapping::Canonical) -> SourceRow {
    let mut cells: Vec<(&str, &str)> = c
        .cells
        .iter()
        .filter_map(|x| x.value.as_deref().map(|v| (x.name, v)))
        .collect();
    cells.sort_unstable_by(|a, b| a.0.cmp(b.0));
    hasher.begin(table, &c.key);
    for (n, v) in cells {
        hasher.cell(n.as_bytes(), v.as_bytes());
    }
    let h_kafka = hasher.finish(None);
    let h_hbase = hasher.finish(Some(&c.row_key));
    SourceRow {
        c,
        h_kafka,
        h_hbase,
    }
}
