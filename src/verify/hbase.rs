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
use crate::sink::hbase::wire::ScanRow;
use crate::sink::hbase::HbaseClient;

/// Rows per scanner round trip (and the scanner's caching). 2000 and 10000
/// read no faster than 5000 on the development machine; the reused reply
/// buffers of a scan hold one round trip.
const SCAN_BATCH: i32 = 5000;

/// Scans per worker: while one waits for the gateway's reply, the other's
/// rows are hashed (two read 10–20% faster than one on the development
/// machine; more did not help).
const SCANS_PER_WORKER: usize = 2;

/// What the HBase side needs to know of a mapped table.
#[derive(Clone)]
pub struct HbaseTable {
    pub source: String,
    pub hbase_table: String,
    pub spec: &'static TableSpec,
}

/// The legacy key (into `key`) and the hash of a stored row whose `n`
/// cells, `cell(i)` = (name, value), are sorted by name. A row without its
/// key cells gets a key no source row can have (`?` + row key in hex), so
/// it shows as extra.
fn key_and_hash<'c>(
    hasher: &mut RowHasher,
    t: &HbaseTable,
    row_key: &[u8],
    n: usize,
    cell: impl Fn(usize) -> (&'c [u8], &'c [u8]),
    key: &mut String,
) -> u128 {
    key.clear();
    for (i, k) in t.spec.primary_key.iter().enumerate() {
        let part = (0..n)
            .map(&cell)
            .find(|(name, _)| *name == k.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok());
        let Some(part) = part else {
            key.clear();
            key.push('?');
            key.push_str(&mapping::hex(row_key));
            break;
        };
        if i > 0 {
            key.push(':');
        }
        key.push_str(part);
    }
    hasher.begin(&t.source, key);
    for i in 0..n {
        let (name, value) = cell(i);
        hasher.cell(name, value);
    }
    hasher.finish(Some(row_key))
}

/// A stored row (from a get) in the canonical encoding.
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
    cells.sort_by(|a, b| a.name.cmp(&b.name));
    let mut key = String::new();
    let hash = key_and_hash(
        hasher,
        t,
        &row_key,
        cells.len(),
        |i| (&cells[i].name, &cells[i].value),
        &mut key,
    );
    TargetRow {
        key,
        cells,
        hash,
        at: Locator::Hbase { row_key },
    }
}

/// Decodes scanned rows without allocating per row: the buffers are reused
/// from row to row, and a row is copied out only when it is kept.
#[derive(Default)]
pub struct ScanDecoder {
    hasher: RowHasher,
    key: String,
    /// The row's cell indices, sorted by name.
    order: Vec<usize>,
}

impl ScanDecoder {
    /// The legacy key and hash of `r` (the key stays valid until the next call).
    pub fn digest(&mut self, t: &HbaseTable, r: &ScanRow<'_>) -> (&str, u128) {
        let order = &mut self.order;
        order.clear();
        order.extend(0..r.len());
        // HBase returns a row's cells sorted (one family): sort only if not.
        if !order
            .windows(2)
            .all(|w| r.cell(w[0]).qualifier <= r.cell(w[1]).qualifier)
        {
            order.sort_by(|&a, &b| r.cell(a).qualifier.cmp(r.cell(b).qualifier));
        }
        let order = &self.order;
        let hash = key_and_hash(
            &mut self.hasher,
            t,
            r.row().unwrap_or_default(),
            order.len(),
            |i| {
                let c = r.cell(order[i]);
                (c.qualifier, c.value)
            },
            &mut self.key,
        );
        (&self.key, hash)
    }

    /// The row last digested, as an owned [`TargetRow`].
    pub fn target_row(&self, r: &ScanRow<'_>, hash: u128) -> TargetRow {
        TargetRow {
            key: self.key.clone(),
            cells: self
                .order
                .iter()
                .map(|&i| {
                    let c = r.cell(i);
                    TargetCell {
                        name: c.qualifier.to_vec(),
                        value: c.value.to_vec(),
                        ts: c.timestamp.unwrap_or(0),
                    }
                })
                .collect(),
            hash,
            at: Locator::Hbase {
                row_key: r.row().unwrap_or_default().to_vec(),
            },
        }
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
        let threads =
            (workers * SCANS_PER_WORKER).clamp(1, usize::from(salts) * tables.len().max(1));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Pass<TargetRow>>> {
                    let mut out: Vec<Pass<TargetRow>> =
                        filters.iter().map(|f| Pass::new(f.buckets)).collect();
                    let connect =
                        || HbaseClient::connect(cfg).map_err(crate::pipeline::lane::as_transient);
                    let mut client = Some(connect()?);
                    let mut dec = ScanDecoder::default();
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
                            let r = c.scan_rows(
                                &t.hbase_table,
                                start.clone(),
                                stop.clone(),
                                SCAN_BATCH,
                                |r| {
                                    super::failpoint_read_delay();
                                    let (key, hash) = dec.digest(t, &r);
                                    if let Some(b) = f.admits(key) {
                                        o.rows += 1;
                                        o.digests[b as usize].add(hash);
                                        if f.keeps_rows() {
                                            let row = dec.target_row(&r, hash);
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
