//! The HBase side: each table scanned in parallel, one salt range per scan
//! and one Thrift connection per thread; rows are read back into the
//! canonical encoding (the legacy key comes from the primary-key cells).

use std::collections::VecDeque;
use std::sync::Mutex;

use super::digest::RowHasher;
use super::rows::{Filter, Locator, Pass, TargetCell, TargetRow};
use crate::config::HbaseConfig;
use crate::error::{Error, Result};
use crate::mapping::{self, TableSpec};
use crate::pipeline::commit::{retry_blocking, RetryPolicy};
use crate::sink::hbase::thrift2::TResult;
use crate::sink::hbase::HbaseClient;

/// Rows per scanner round trip.
const SCAN_BATCH: i32 = 2000;

/// What the HBase side needs to know of a mapped table.
#[derive(Clone)]
pub struct HbaseTable {
    pub source: String,
    pub hbase_table: String,
    pub spec: &'static TableSpec,
}

/// A stored row in the canonical encoding. A row without its key cells gets
/// a key no source row can have (`?` + row key in hex), so it shows as extra.
pub fn decode(hasher: &mut RowHasher, t: &HbaseTable, r: TResult) -> TargetRow {
    let row_key = r.row.unwrap_or_default();
    let mut cells: Vec<TargetCell> = r
        .column_values
        .into_iter()
        .map(|cv| TargetCell {
            name: cv.qualifier,
            value: cv.value,
            ts: cv.timestamp.unwrap_or(0),
        })
        .collect();
    cells.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let parts: Option<Vec<&str>> = t
        .spec
        .primary_key
        .iter()
        .map(|k| {
            cells
                .iter()
                .find(|c| c.name == k.as_bytes())
                .and_then(|c| std::str::from_utf8(&c.value).ok())
        })
        .collect();
    let key = match parts {
        Some(p) => p.join(":"),
        None => format!("?{}", mapping::hex(&row_key)),
    };
    hasher.begin(&t.source, &key);
    for c in &cells {
        hasher.cell(&c.name, &c.value);
    }
    let hash = hasher.finish(Some(&row_key));
    TargetRow {
        key,
        cells,
        hash,
        at: Locator::Hbase { row_key },
    }
}

/// Digests (and, for a drill-down, rows) of every table.
pub fn pass(
    cfg: &HbaseConfig,
    tables: &[HbaseTable],
    filters: &[Filter],
    workers: usize,
) -> Result<Vec<Pass<TargetRow>>> {
    let salts = cfg.salt_buckets.max(1);
    let mut q = VecDeque::new();
    for ti in 0..tables.len() {
        for s in 0..salts {
            q.push_back((ti, s));
        }
    }
    let queue = Mutex::new(q);
    let results: Vec<Result<Vec<Pass<TargetRow>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.clamp(1, usize::from(salts) * tables.len().max(1)))
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Pass<TargetRow>>> {
                    let mut out: Vec<Pass<TargetRow>> =
                        filters.iter().map(|f| Pass::new(f.buckets)).collect();
                    let connect =
                        || HbaseClient::connect(cfg).map_err(crate::pipeline::lane::as_transient);
                    let mut client = Some(connect()?);
                    let mut hasher = RowHasher::default();
                    let policy = RetryPolicy::default();
                    loop {
                        let next = queue
                            .lock()
                            .map_err(|_| Error::Other("queue poisoned".into()))?
                            .pop_front();
                        let Some((ti, s)) = next else {
                            return Ok(out);
                        };
                        let (t, f) = (&tables[ti], &filters[ti]);
                        let start = (s > 0).then(|| vec![s as u8]);
                        let stop = (s + 1 < salts).then(|| vec![(s + 1) as u8]);
                        // A range is read whole or again from its start (a
                        // gateway restarting mid-scan): its rows are counted
                        // only once it is complete.
                        let what = format!("scan of {} salt {s}", t.hbase_table);
                        let range = retry_blocking(&policy, &what, || {
                            let c = match client.as_mut() {
                                Some(c) => c,
                                None => client.insert(connect()?),
                            };
                            let mut o: Pass<TargetRow> = Pass::new(f.buckets);
                            let r = c.scan(
                                &t.hbase_table,
                                start.clone(),
                                stop.clone(),
                                SCAN_BATCH,
                                |r| {
                                    super::failpoint_read_delay();
                                    let row = decode(&mut hasher, t, r);
                                    if let Some(b) = f.admits(&row.key) {
                                        o.rows += 1;
                                        o.digests[b as usize].add(row.hash);
                                        if f.keeps_rows() {
                                            o.kept.entry(row.key.clone()).or_default().push(row);
                                        }
                                    }
                                    Ok(())
                                },
                            );
                            if r.is_err() {
                                // Its state is unknown: a new connection next time.
                                client = None;
                            }
                            r.map(|_| o)
                        })?;
                        out[ti].merge(range);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Other("HBase scan thread panicked".into())))
            })
            .collect()
    });
    let mut out: Vec<Pass<TargetRow>> = filters.iter().map(|f| Pass::new(f.buckets)).collect();
    for r in results {
        for (o, p) in out.iter_mut().zip(r?) {
            o.merge(p);
        }
    }
    Ok(out)
}

/// The rows stored at these row keys (absent rows are left out).
pub fn get(
    client: &mut HbaseClient,
    t: &HbaseTable,
    row_keys: Vec<Vec<u8>>,
) -> Result<Vec<TargetRow>> {
    let mut hasher = RowHasher::default();
    let mut out = Vec::new();
    for batch in row_keys.chunks(500) {
        for r in client.get_multiple(&t.hbase_table, batch.to_vec())? {
            if !r.column_values.is_empty() {
                out.push(decode(&mut hasher, t, r));
            }
        }
    }
    Ok(out)
}
