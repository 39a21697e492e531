//! The HBase side: each table scanned in parallel, one salt range per scan
//! and one Thrift connection per thread; rows are read back into the
//! canonical encoding (the legacy key comes from the primary-key cells).

use std::collections::VecDeque;
use std::sync::Mutex;

use super::digest::RowHasher;
use super::idmap;
use super::rows::{Filter, Locator, Pass, TargetCell, TargetRow};
use crate::config::{EntityKind, HbaseConfig};
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

/// What one thread of [`pass`] gathers: its decoders, and each table's and
/// the id map's digests over the ranges it read.
struct Gathered {
    dec: ScanDecoder,
    id_dec: idmap::ScanDecoder,
    tables: Vec<Pass<TargetRow>>,
    id_map: Pass<idmap::Entry>,
}

/// One range's rows, kept apart until the range is complete.
enum Range {
    /// Of `tables[i]`.
    Table(usize, Pass<TargetRow>),
    IdMap(Pass<idmap::Entry>),
}

/// The first pass of the HBase side.
pub struct HbasePass {
    /// Digests (and, for a drill-down, rows) of each table.
    pub tables: Vec<Pass<TargetRow>>,
    /// The id map's, bucketed like the message table (when asked for).
    pub id_map: Option<Pass<idmap::Entry>>,
    /// What was read from HBase, the id map included (sampled out or not).
    pub scanned: Scanned,
}

/// How much a pass read from HBase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Scanned {
    pub rows: u64,
    pub cells: u64,
    /// The cells' values, in bytes.
    pub value_bytes: u64,
}

impl Scanned {
    fn add(&mut self, o: Scanned) {
        self.rows += o.rows;
        self.cells += o.cells;
        self.value_bytes += o.value_bytes;
    }
}

/// Digests (and, for a drill-down, rows) of every table and, with
/// `id_map` (the message table's filter), of the id map, all in one set of
/// parallel scans. A table whose filter wants no bucket is not read.
pub fn pass(
    cfg: &HbaseConfig,
    tables: &[HbaseTable],
    filters: &[Filter],
    id_map: Option<&Filter>,
    workers: usize,
) -> Result<HbasePass> {
    // The longest ranges first, so that they are not the last ones left
    // running: the message table's (a message's salt is its room's, and
    // rooms differ in size: 5k to 42k rows a range in a 200k-message
    // dataset), then the id map's (two rows per message), then the rest.
    let mut names: Vec<(&str, Option<usize>)> = Vec::new();
    if id_map.is_some_and(wants_some) {
        names.push((cfg.id_map_table.as_str(), None));
    }
    for (i, t) in tables.iter().enumerate() {
        if wants_some(&filters[i]) {
            names.push((t.hbase_table.as_str(), Some(i)));
        }
    }
    names.sort_by_key(|&(_, ti)| match ti {
        Some(ti) if tables[ti].spec.kind == EntityKind::Message => 0,
        None => 1,
        Some(_) => 2,
    });
    // (Without the id map, none of its ranges is read: any filter does.)
    let id_filter = id_map.cloned().unwrap_or(Filter {
        buckets: 1,
        sample: super::digest::Sample::percent(100.0),
        wanted: None,
    });
    let threads = workers * SCANS_PER_WORKER;
    let tables_of =
        || -> Vec<Pass<TargetRow>> { filters.iter().map(|f| Pass::new(f.buckets)).collect() };
    let tnames: Vec<&str> = names.iter().map(|n| n.0).collect();
    let gathered = scan_ranges(
        cfg,
        &tnames,
        threads,
        || Gathered {
            dec: ScanDecoder::default(),
            id_dec: idmap::ScanDecoder::default(),
            tables: tables_of(),
            id_map: Pass::new(id_filter.buckets),
        },
        |j| match names[j].1 {
            Some(ti) => Range::Table(ti, Pass::new(filters[ti].buckets)),
            None => Range::IdMap(Pass::new(id_filter.buckets)),
        },
        |g, range, _, r| {
            super::failpoint_read_delay();
            match range {
                Range::Table(ti, o) => {
                    let (t, f) = (&tables[*ti], &filters[*ti]);
                    let (key, hash) = g.dec.digest(t, &r);
                    if let Some(b) = f.admits(key) {
                        o.rows += 1;
                        o.digests[b as usize].add(hash);
                        if f.keeps_rows() {
                            let row = g.dec.target_row(&r, hash);
                            o.kept.entry(row.key.clone()).or_default().push(row);
                        }
                    }
                }
                Range::IdMap(o) => {
                    let (legacy, hash) = g.id_dec.digest(&r);
                    if let Some(b) = id_filter.admits(legacy) {
                        o.rows += 1;
                        o.digests[b as usize].add(hash);
                        if id_filter.keeps_rows() {
                            let e = g.id_dec.entry(&r, hash);
                            o.kept.entry(e.key.clone()).or_default().push(e);
                        }
                    }
                }
            }
            Ok(())
        },
        |g, _, range| match range {
            Range::Table(ti, p) => g.tables[ti].merge(p),
            Range::IdMap(p) => g.id_map.merge(p),
        },
    )?;
    // Digests add up in any order (count, XOR, wrapping sum), so the
    // threads' shares merge into the same result whatever ranges each read.
    let mut out = HbasePass {
        tables: tables_of(),
        id_map: id_map.map(|f| Pass::new(f.buckets)),
        scanned: Scanned::default(),
    };
    for (g, scanned) in gathered {
        for (o, p) in out.tables.iter_mut().zip(g.tables) {
            o.merge(p);
        }
        if let Some(o) = out.id_map.as_mut() {
            o.merge(g.id_map);
        }
        out.scanned.add(scanned);
    }
    Ok(out)
}

/// Whether a filter admits any bucket (a drill-down may want none of a table).
fn wants_some(f: &Filter) -> bool {
    f.wanted.as_ref().is_none_or(|w| !w.is_empty())
}

/// The row-key range of salt `s` in a table pre-split at every salt value
/// ([`crate::mapping::keys::splits`]): one region.
fn salt_range(salts: u16, s: u16) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let start = (s > 0).then(|| vec![s as u8]);
    let stop = (s + 1 < salts).then(|| vec![(s + 1) as u8]);
    (start, stop)
}

/// Scans every salt range of every table of `tables`, at most `threads` at
/// a time, each thread with its own Thrift connection and its own `A` (made
/// by `acc`), taking ranges from one queue in order (table by table). A
/// range is read whole or again from its start (a gateway restarting
/// mid-scan): its rows go into a fresh `R` (made by `range(table index)`)
/// through `row`, and only a complete range is handed to `done`. Returns
/// each thread's `A` with what it read in complete ranges.
fn scan_ranges<A: Send, R>(
    cfg: &HbaseConfig,
    tables: &[&str],
    threads: usize,
    acc: impl Fn() -> A + Sync,
    range: impl Fn(usize) -> R + Sync,
    row: impl Fn(&mut A, &mut R, usize, ScanRow<'_>) -> Result<()> + Sync,
    done: impl Fn(&mut A, usize, R) + Sync,
) -> Result<Vec<(A, Scanned)>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let salts = cfg.salt_buckets.max(1);
    let queue: Mutex<VecDeque<(usize, u16)>> = Mutex::new(
        (0..tables.len())
            .flat_map(|ti| (0..salts).map(move |s| (ti, s)))
            .collect(),
    );
    let threads = threads.clamp(1, (usize::from(salts) * tables.len()).max(1));
    let results: Vec<Result<(A, Scanned)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<(A, Scanned)> {
                    let mut a = acc();
                    let mut scanned = Scanned::default();
                    let connect =
                        || HbaseClient::connect(cfg).map_err(crate::pipeline::lane::as_transient);
                    let mut client = Some(connect()?);
                    let policy = RetryPolicy::default();
                    loop {
                        let next = queue
                            .lock()
                            .map_err(|_| Error::Other("queue poisoned".into()))?
                            .pop_front();
                        let Some((ti, s)) = next else {
                            return Ok((a, scanned));
                        };
                        let (start, stop) = salt_range(salts, s);
                        let what = format!("scan of {} salt {s}", tables[ti]);
                        let t0 = std::time::Instant::now();
                        let (r, n) = retry_blocking(&policy, &what, || {
                            let c = match client.as_mut() {
                                Some(c) => c,
                                None => client.insert(connect()?),
                            };
                            let mut r = range(ti);
                            let mut n = Scanned::default();
                            let res = c.scan_rows(
                                tables[ti],
                                start.clone(),
                                stop.clone(),
                                SCAN_BATCH,
                                |x| {
                                    n.rows += 1;
                                    n.cells += x.len() as u64;
                                    n.value_bytes +=
                                        x.cells().map(|c| c.value.len() as u64).sum::<u64>();
                                    row(&mut a, &mut r, ti, x)
                                },
                            );
                            if res.is_err() {
                                // Its state is unknown: a new connection next time.
                                client = None;
                            }
                            res.map(|_| (r, n))
                        })?;
                        done(&mut a, ti, r);
                        tracing::debug!(
                            table = tables[ti],
                            salt = s,
                            rows = n.rows,
                            cells = n.cells,
                            secs = t0.elapsed().as_secs_f64(),
                            "scanned a salt range"
                        );
                        scanned.add(n);
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
    results.into_iter().collect()
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
