//! `verify`: checksums of the source against HBase and against the Kafka
//! event log, down to the row.
//!
//! 1. One pass per side, all three at once: the source streamed in parallel
//!    key ranges and mapped exactly as base maps it (rows base dead-letters
//!    are skipped), HBase scanned in parallel salt ranges, each Kafka topic
//!    folded to every key's latest committed state. Every row is hashed over
//!    one canonical encoding ([`digest`]) into bucket `hash(key) % B`; a
//!    bucket's digest is count + XOR + SUM of its row hashes.
//! 2. Buckets whose digests differ are drilled down: a second pass per side
//!    keeps only their rows, which are classified as missing, extra or
//!    different (naming the columns).
//! 3. After `--recheck-delay`, the rows found are read again (source by key,
//!    HBase by row key, Kafka from where the pass stopped) and only those
//!    still differing are reported: a change in flight is no false alarm.
//! 4. `--repair` rewrites exactly those rows ([`repair`]) and re-checks them.

pub mod compare;
pub mod digest;
pub mod hbase;
pub mod idmap;
pub mod kafka;
pub mod recheck;
pub mod repair;
pub mod rows;
pub mod source;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, EntityKind};
use crate::error::{Error, Result};
use crate::mapping::MapContext;
use crate::sink::hbase::HbaseClient;
use compare::{Kind, Problem};
use digest::{bucket, Digest, Sample};
use hbase::HbaseTable;
use kafka::KafkaTable;
use rows::{Filter, SourceRow, Target, TargetRow};
use source::{Source, SourceTable};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub hbase: bool,
    pub kafka: bool,
    pub tables: Option<Vec<String>>,
    pub sample_pct: f64,
    pub workers: usize,
    pub report: Option<PathBuf>,
    pub max_report_rows: usize,
    pub repair: bool,
    pub recheck_delay: Duration,
    /// Buckets per table; derived from the row estimate when None.
    pub buckets: Option<u32>,
    /// Kafka events per partition folded in memory before spilling to disk.
    pub kafka_memory_rows: u64,
    pub spill_dir: PathBuf,
    /// Source rows (with their target rows) one round of the drill-down holds.
    pub drill_rows: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.missing + self.extra + self.different
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSummary {
    /// Source rows compared with this target.
    pub compared: u64,
    /// Rows (HBase) or keys' latest states (Kafka) the target holds in the sample.
    pub target_rows: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub buckets: u64,
    pub mismatched_buckets: u64,
    pub report: Option<String>,
    /// Rows this target's first pass read: HBase, every row scanned (the
    /// tables' and the id map's, sampled out or not); Kafka, the keys'
    /// latest states (`target_rows`).
    pub read_rows: u64,
    /// HBase: what the first pass scanned (rows, cells, value bytes).
    pub scanned: Option<hbase::Scanned>,
    /// Seconds this target's first pass took (it runs beside the others;
    /// HBase's includes the id map's scans).
    pub elapsed_s: f64,
    /// `read_rows` per second of `elapsed_s`.
    pub rows_per_s: f64,
    /// After `--repair`: rows still differing.
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableSummary {
    pub table: String,
    pub compared: u64,
    /// Rows base dead-letters (rejected by the mapping or orphans): absent from the targets by design.
    pub skipped: u64,
    pub buckets: u32,
    pub targets: BTreeMap<&'static str, TableTarget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableTarget {
    pub target_rows: u64,
    pub mismatched_buckets: u64,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepairSummary {
    pub hbase_rows: u64,
    pub kafka_events: u64,
    /// Rows still differing after the repair and its re-check.
    pub remaining: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifySummary {
    pub command: &'static str,
    pub identical: bool,
    pub compared: u64,
    pub skipped: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub buckets: u64,
    pub mismatched_buckets: u64,
    pub report: Option<String>,
    pub report_rows: usize,
    pub sample_pct: f64,
    pub elapsed_s: f64,
    pub rows_per_s: f64,
    pub source_elapsed_s: f64,
    /// Source rows read, mapped and hashed per second (the source pass alone).
    pub source_rows_per_s: f64,
    /// Rows found differing at first, cleared by the re-check (changes in flight).
    pub cleared_by_recheck: u64,
    /// Rounds of the drill-down (each holds at most `--drill-rows` source rows).
    pub drill_rounds: u64,
    /// Peak resident memory of the process (Linux `VmHWM`), MiB.
    pub peak_rss_mib: Option<u64>,
    pub repair: Option<RepairSummary>,
    pub targets: BTreeMap<&'static str, TargetSummary>,
    pub tables: Vec<TableSummary>,
    /// The HBase id map against the source's messages (HBase verified and a
    /// message table mapped).
    pub id_map: Option<IdMapSummary>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IdMapSummary {
    /// Id-map rows the source's messages should have.
    pub compared: u64,
    pub target_rows: u64,
    pub mismatched_buckets: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// The first differing rows (`L:<legacy>` / `N:<new id>`, and how).
    pub sample: Vec<String>,
    /// After `--repair`: rows still differing.
    pub remaining: Option<u64>,
}

/// The drill-down's rows of one table, kept for the re-checks and the repair.
#[derive(Default)]
struct Drill {
    src: HashMap<String, SourceRow>,
    hbase: HashMap<String, Vec<TargetRow>>,
    kafka: HashMap<String, Vec<TargetRow>>,
    kafka_ends: Vec<(i32, i64)>,
}

struct Ctx {
    cfg: Config,
    opts: VerifyOptions,
    src: Arc<Source>,
    tables: Arc<Vec<SourceTable>>,
    htables: Vec<HbaseTable>,
    ktables: Vec<KafkaTable>,
}

use crate::mapping::Canonical;
use crate::pipeline::base::now_ms;
use crate::pipeline::commit::blocking;

fn mismatched(a: &[Digest], b: &[Digest]) -> HashSet<u32> {
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i as u32)
        .collect()
}

pub async fn run(cfg: Config, opts: VerifyOptions) -> Result<VerifySummary> {
    let started = Instant::now();
    if !opts.hbase && !opts.kafka {
        return Err(Error::Usage("no target selected".into()));
    }
    if opts.buckets == Some(0) || opts.kafka_memory_rows == 0 {
        return Err(Error::Usage(
            "--buckets and --kafka-memory-rows must be at least 1".into(),
        ));
    }
    let mappings = cfg.select_tables(opts.tables.as_deref())?;
    let pool = crate::source::mysql::connect(&cfg, opts.workers as u32 + 2).await?;
    let database = cfg.database().unwrap_or_default();
    let mut tables = Vec::new();
    for m in mappings {
        tables.push(crate::source::mysql::inspect(&pool, &database, m).await?);
    }
    let htables: Vec<HbaseTable> = tables
        .iter()
        .map(|t| HbaseTable {
            source: t.mapping.source.clone(),
            hbase_table: t.mapping.hbase_table.clone(),
            spec: t.spec,
        })
        .collect();
    let ktables: Vec<KafkaTable> = tables
        .iter()
        .map(|t| KafkaTable {
            source: t.mapping.source.clone(),
            topic: t.mapping.topic.clone(),
        })
        .collect();
    // Every target answers and holds the tables, before any work.
    if opts.hbase {
        let (hb, names) = (
            cfg.hbase.clone(),
            htables
                .iter()
                .map(|t| t.hbase_table.clone())
                .collect::<Vec<_>>(),
        );
        blocking(move || {
            let mut c = HbaseClient::connect(&hb)?;
            for n in names {
                if !c.table_exists(&n)? {
                    return Err(Error::Usage(format!(
                        "HBase table {n} does not exist (has base run?)"
                    )));
                }
            }
            Ok(())
        })
        .await?;
    }
    if opts.kafka {
        let (k, topics) = (
            cfg.kafka.clone(),
            ktables.iter().map(|t| t.topic.clone()).collect::<Vec<_>>(),
        );
        blocking(move || {
            crate::sink::kafka::check(&k)?;
            topics
                .iter()
                .try_for_each(|t| kafka::partitions(&k, t).map(|_| ()))
        })
        .await?;
    }
    let kinds: Vec<EntityKind> = tables.iter().map(|t| t.spec.kind).collect();
    let rooms = Arc::new(crate::mapping::Rooms::for_kinds(&pool, &kinds).await?);
    let source_id = crate::pipeline::runlog::source_identity(&pool).await?;
    let kafka = cfg.kafka.clone();
    let src = Arc::new(Source {
        pool,
        // Tables without a version column: the millisecond before the second
        // verify started in (only a repair writes it). Every source change made
        // after verify read the row has a binlog time at or above that second,
        // so a diff write of it is stamped above the repair's.
        ctx: MapContext {
            salt_buckets: cfg.hbase.salt_buckets,
            epoch_ms: cfg.ids.epoch_ms,
            default_version_ms: (now_ms() / 1000 * 1000).saturating_sub(1),
            min_version_ms: 0,
        },
        rooms,
        message_max_bytes: cfg.kafka.message_max_bytes,
    });
    let ctx = Ctx {
        cfg,
        opts,
        src,
        tables: Arc::new(tables),
        htables,
        ktables,
    };
    let summary = ctx.verify(started).await?;
    record_verdict(&kafka, &source_id, &database, &summary).await;
    Ok(summary)
}

/// Keeps the verdict in the run's record in Kafka (what `status` shows from
/// any machine). A verdict that cannot be recorded is a warning: the
/// comparison itself stands, and its summary says the same.
async fn record_verdict(
    kafka: &crate::config::KafkaConfig,
    source: &str,
    database: &str,
    s: &VerifySummary,
) {
    use crate::pipeline::runlog::{publish, sanitize, verify_key, VerifyRecord};
    let tables = s
        .tables
        .iter()
        .flat_map(|t| {
            t.targets.iter().map(|(target, v)| crate::report::Verdict {
                table: t.table.clone(),
                target: target.to_string(),
                identical: v.counts.total() == 0,
                target_rows: v.target_rows,
                mismatched_buckets: v.mismatched_buckets,
                missing: v.counts.missing,
                extra: v.counts.extra,
                different: v.counts.different,
            })
        })
        .collect();
    let rec = VerifyRecord {
        finished_ms: now_ms(),
        identical: s.identical,
        sample_pct: s.sample_pct,
        compared: s.compared,
        missing: s.missing,
        extra: s.extra,
        different: s.different,
        mismatched_buckets: s.mismatched_buckets,
        remaining_after_repair: s.repair.as_ref().map(|r| r.remaining),
        tables,
    };
    let db = sanitize(database);
    let txn = format!("falcon-verify-{source}-{db}");
    if let Err(e) = publish(kafka, &txn, &verify_key(source, &db), &rec).await {
        tracing::warn!(
            "verify's verdict could not be recorded in Kafka (status will not show it): {e}"
        );
    }
}

type Timed<T> = (T, f64);

impl Ctx {
    fn filters(&self, wanted: Option<&[HashSet<u32>]>) -> Vec<Filter> {
        let sample = Sample::percent(self.opts.sample_pct);
        self.tables
            .iter()
            .enumerate()
            .map(|(i, t)| Filter {
                buckets: self
                    .opts
                    .buckets
                    .unwrap_or_else(|| (t.estimated_rows / 256).clamp(64, 1 << 20) as u32),
                sample,
                wanted: wanted.map(|w| Arc::new(w[i].clone())),
            })
            .collect()
    }

    async fn source_pass(&self, filters: &[Filter]) -> Result<Timed<Vec<source::SourcePass>>> {
        let t0 = Instant::now();
        let r = self
            .src
            .pass(&self.tables, &Arc::new(filters.to_vec()), self.opts.workers)
            .await?;
        Ok((r, t0.elapsed().as_secs_f64()))
    }

    /// The HBase side's pass over the tables and, with `id_map` (the
    /// message table's filter), the id map, in one set of parallel scans.
    async fn hbase_pass(
        &self,
        filters: &[Filter],
        id_map: Option<Filter>,
    ) -> Result<Option<Timed<hbase::HbasePass>>> {
        if !self.opts.hbase {
            return Ok(None);
        }
        let (cfg, tables, filters, w) = (
            self.cfg.hbase.clone(),
            self.htables.clone(),
            filters.to_vec(),
            self.opts.workers,
        );
        let t0 = Instant::now();
        let r = blocking(move || hbase::pass(&cfg, &tables, &filters, id_map.as_ref(), w)).await?;
        Ok(Some((r, t0.elapsed().as_secs_f64())))
    }

    async fn kafka_pass(&self, filters: &[Filter]) -> Result<Option<Timed<Vec<kafka::KafkaPass>>>> {
        if !self.opts.kafka {
            return Ok(None);
        }
        let (cfg, tables, filters, w, mem, dir) = (
            self.cfg.kafka.clone(),
            self.ktables.clone(),
            filters.to_vec(),
            self.opts.workers,
            self.opts.kafka_memory_rows,
            self.opts.spill_dir.clone(),
        );
        let t0 = Instant::now();
        let r = blocking(move || kafka::pass(&cfg, &tables, &filters, w, mem, &dir)).await?;
        Ok(Some((r, t0.elapsed().as_secs_f64())))
    }

    async fn verify(self, started: Instant) -> Result<VerifySummary> {
        let n = self.tables.len();
        let filters = self.filters(None);
        let (s, h, k) = tokio::join!(
            self.source_pass(&filters),
            self.hbase_pass(&filters, self.id_map_filter(&filters, None)),
            self.kafka_pass(&filters),
        );
        let ((src, src_s), mut h, k) = (s?, h?, k?);
        let im = h.as_mut().and_then(|(p, _)| p.id_map.take());
        let none = vec![HashSet::new(); n];
        let mm_h: Vec<HashSet<u32>> = match &h {
            Some((p, _)) => (0..n)
                .map(|i| mismatched(&src[i].hbase, &p.tables[i].digests))
                .collect(),
            None => none.clone(),
        };
        let mm_k: Vec<HashSet<u32>> = match &k {
            Some((p, _)) => (0..n)
                .map(|i| mismatched(&src[i].kafka, &p[i].pass.digests))
                .collect(),
            None => none.clone(),
        };
        for (i, t) in self.tables.iter().enumerate() {
            use crate::metrics::{inc, VERIFY_BUCKETS, VERIFY_MISMATCHED, VERIFY_ROWS};
            let table = t.mapping.source.as_str();
            inc(&VERIFY_ROWS, &[table], src[i].rows);
            for (on, target, mm) in [
                (h.is_some(), Target::Hbase, &mm_h[i]),
                (k.is_some(), Target::Kafka, &mm_k[i]),
            ] {
                if on {
                    let labels = [table, target.as_str()];
                    inc(&VERIFY_BUCKETS, &labels, u64::from(filters[i].buckets));
                    inc(&VERIFY_MISMATCHED, &labels, mm.len() as u64);
                }
            }
        }
        tracing::info!(
            hbase = mm_h.iter().map(HashSet::len).sum::<usize>(),
            kafka = mm_k.iter().map(HashSet::len).sum::<usize>(),
            "first pass done in {:.1}s; mismatched buckets",
            started.elapsed().as_secs_f64()
        );

        // The drill-down, in rounds of buckets holding at most
        // `--drill-rows` source rows each (with their target rows): memory
        // stays bounded whatever the fraction of differing rows. Each round
        // is drilled, re-checked and repaired on its own; the counts add up,
        // and the first `--max-report-rows` problems are kept for the report.
        let mut acc = Found::default();
        let groups = drill_groups(
            &(0..n).map(|i| &mm_h[i] | &mm_k[i]).collect::<Vec<_>>(),
            &src.iter().map(|p| p.rows + p.skipped).collect::<Vec<_>>(),
            &filters.iter().map(|f| f.buckets).collect::<Vec<_>>(),
            self.opts.drill_rows,
        );
        if groups.len() > 1 {
            tracing::info!(
                rounds = groups.len(),
                drill_rows = self.opts.drill_rows,
                "drilling down in rounds to stay within --drill-rows"
            );
        }
        for group in &groups {
            let gh: Vec<HashSet<u32>> = (0..n).map(|i| &group[i] & &mm_h[i]).collect();
            let gk: Vec<HashSet<u32>> = (0..n).map(|i| &group[i] & &mm_k[i]).collect();
            let mut drills: Vec<Drill> = (0..n).map(|_| Drill::default()).collect();
            let mut found = self.drill(&gh, &gk, &mut drills).await?;
            acc.first_found += found.len() as u64;
            if !found.is_empty() {
                tracing::info!(
                    rows = found.len(),
                    "re-checking differing rows in {:?}",
                    self.opts.recheck_delay
                );
                tokio::time::sleep(self.opts.recheck_delay).await;
                found = self.recheck(&mut drills, &found).await?;
            }
            let repaired = if self.opts.repair && !found.is_empty() {
                Some(self.repair(&mut drills, &found).await?)
            } else {
                None
            };
            acc.add(found, repaired, self.opts.max_report_rows);
        }
        acc.rounds = groups.len() as u64;
        let id_map = match (im, self.message_table()) {
            (Some(first), Some(mi)) => Some(self.check_id_map(&filters, &src[mi], first).await?),
            _ => None,
        };
        let found = std::mem::take(&mut acc.kept);
        let cleared = acc.first_found - acc.total();
        let repair = acc.repair.clone().map(|r| (r, ()));

        let report_rows = match &self.opts.report {
            Some(path) => {
                let names: Vec<String> = self
                    .tables
                    .iter()
                    .map(|t| t.mapping.source.clone())
                    .collect();
                compare::write_report(path, &found, &names, self.opts.max_report_rows)?
            }
            None => 0,
        };
        let report = self.opts.report.as_ref().map(|p| p.display().to_string());

        // The summary.
        let elapsed = started.elapsed().as_secs_f64();
        let compared: u64 = src.iter().map(|p| p.rows).sum();
        let skipped: u64 = src.iter().map(|p| p.skipped).sum();
        let mut targets = BTreeMap::new();
        let mut per_table: Vec<BTreeMap<&'static str, TableTarget>> = vec![BTreeMap::new(); n];
        let target_rows = |t: Target, i: usize| -> u64 {
            match t {
                Target::Hbase => h.as_ref().map_or(0, |(p, _)| p.tables[i].rows),
                Target::Kafka => k.as_ref().map_or(0, |(p, _)| p[i].pass.rows),
            }
        };
        for (t, on, mm, secs) in [
            (
                Target::Hbase,
                self.opts.hbase,
                &mm_h,
                h.as_ref().map(|x| x.1),
            ),
            (
                Target::Kafka,
                self.opts.kafka,
                &mm_k,
                k.as_ref().map(|x| x.1),
            ),
        ] {
            if !on {
                continue;
            }
            let c = acc.counts_of(t, None);
            let rows: u64 = (0..n).map(|i| target_rows(t, i)).sum();
            let scanned = match t {
                Target::Hbase => h.as_ref().map(|(p, _)| p.scanned),
                Target::Kafka => None,
            };
            let read_rows = scanned.map_or(rows, |s| s.rows);
            let secs = secs.unwrap_or(0.0);
            for (i, pt) in per_table.iter_mut().enumerate() {
                let counts = acc.counts_of(t, Some(i));
                let table = self.tables[i].mapping.source.as_str();
                for (kind, n) in [
                    ("missing", counts.missing),
                    ("extra", counts.extra),
                    ("different", counts.different),
                ] {
                    let labels = [table, t.as_str(), kind];
                    crate::metrics::inc(&crate::metrics::VERIFY_DIFFERING, &labels, n);
                }
                pt.insert(
                    t.as_str(),
                    TableTarget {
                        target_rows: target_rows(t, i),
                        mismatched_buckets: mm[i].len() as u64,
                        counts,
                    },
                );
            }
            targets.insert(
                t.as_str(),
                TargetSummary {
                    compared,
                    target_rows: rows,
                    missing: c.missing,
                    extra: c.extra,
                    different: c.different,
                    buckets: filters.iter().map(|f| u64::from(f.buckets)).sum(),
                    mismatched_buckets: mm.iter().map(|m| m.len() as u64).sum(),
                    report: report.clone(),
                    read_rows,
                    scanned,
                    elapsed_s: secs,
                    rows_per_s: read_rows as f64 / secs.max(1e-9),
                    remaining: repair
                        .as_ref()
                        .map(|_| acc.remaining.get(&t.as_str()).copied().unwrap_or(0)),
                },
            );
        }
        let all = acc.all();
        let tables: Vec<TableSummary> = self
            .tables
            .iter()
            .zip(per_table)
            .enumerate()
            .map(|(i, (t, targets))| TableSummary {
                table: t.mapping.source.clone(),
                compared: src[i].rows,
                skipped: src[i].skipped,
                buckets: filters[i].buckets,
                targets,
            })
            .collect();
        let source_read = compared + skipped;
        Ok(VerifySummary {
            command: "verify",
            identical: all.total() == 0
                && id_map
                    .as_ref()
                    .is_none_or(|m| m.missing + m.extra + m.different == 0),
            compared,
            skipped,
            missing: all.missing,
            extra: all.extra,
            different: all.different,
            buckets: filters.iter().map(|f| u64::from(f.buckets)).sum(),
            mismatched_buckets: (0..n).map(|i| (mm_h[i].len() + mm_k[i].len()) as u64).sum(),
            report,
            report_rows,
            sample_pct: self.opts.sample_pct,
            elapsed_s: elapsed,
            rows_per_s: source_read as f64 / elapsed.max(1e-9),
            source_elapsed_s: src_s,
            source_rows_per_s: source_read as f64 / src_s.max(1e-9),
            cleared_by_recheck: cleared,
            drill_rounds: acc.rounds,
            peak_rss_mib: crate::telemetry::peak_rss_mib(),
            repair: repair.map(|(r, _)| r),
            targets,
            tables,
            id_map,
        })
    }
}

/// An id-map row that differs: its key, how, the row the source's message
/// says it should be (with the message), and the rows stored under the key.
type IdMapProblem = (
    String,
    Kind,
    Option<(idmap::Entry, Canonical)>,
    Vec<idmap::Entry>,
);

/// What the rounds of the drill-down found, added up.
#[derive(Default)]
struct Found {
    /// (table, target, kind) → rows still differing after the re-check.
    counts: HashMap<(usize, Target, Kind), u64>,
    /// The first problems, for the report.
    kept: Vec<Problem>,
    first_found: u64,
    repair: Option<RepairSummary>,
    /// Per target: rows still differing after the repair.
    remaining: BTreeMap<&'static str, u64>,
    rounds: u64,
}

impl Found {
    fn add(
        &mut self,
        found: Vec<Problem>,
        repaired: Option<(RepairSummary, Vec<Problem>)>,
        keep: usize,
    ) {
        for p in &found {
            *self.counts.entry((p.table, p.target, p.kind)).or_default() += 1;
        }
        if let Some((r, rem)) = repaired {
            let a = self.repair.get_or_insert(RepairSummary {
                hbase_rows: 0,
                kafka_events: 0,
                remaining: 0,
            });
            a.hbase_rows += r.hbase_rows;
            a.kafka_events += r.kafka_events;
            a.remaining += r.remaining;
            for p in &rem {
                *self.remaining.entry(p.target.as_str()).or_default() += 1;
            }
        }
        let room = keep.saturating_sub(self.kept.len());
        self.kept.extend(found.into_iter().take(room));
    }

    fn counts_of(&self, t: Target, table: Option<usize>) -> Counts {
        let mut c = Counts::default();
        for ((i, target, kind), n) in &self.counts {
            if *target != t || table.is_some_and(|x| x != *i) {
                continue;
            }
            match kind {
                Kind::Missing => c.missing += n,
                Kind::Extra => c.extra += n,
                Kind::Different => c.different += n,
            }
        }
        c
    }

    fn all(&self) -> Counts {
        let (h, k) = (
            self.counts_of(Target::Hbase, None),
            self.counts_of(Target::Kafka, None),
        );
        Counts {
            missing: h.missing + k.missing,
            extra: h.extra + k.extra,
            different: h.different + k.different,
        }
    }

    fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// The mismatched buckets of every table, grouped into rounds of at most
/// `budget` estimated source rows (a bucket holds `rows / buckets` of its
/// table on average; a round has at least one bucket).
fn drill_groups(
    mm: &[HashSet<u32>],
    rows: &[u64],
    buckets: &[u32],
    budget: u64,
) -> Vec<Vec<HashSet<u32>>> {
    let n = mm.len();
    let mut groups: Vec<Vec<HashSet<u32>>> = Vec::new();
    let mut cur: Vec<HashSet<u32>> = vec![HashSet::new(); n];
    let mut held = 0u64;
    for i in 0..n {
        let per = rows[i].div_ceil(u64::from(buckets[i].max(1))).max(1);
        let mut mine: Vec<u32> = mm[i].iter().copied().collect();
        mine.sort_unstable();
        for b in mine {
            if held > 0 && held + per > budget {
                groups.push(std::mem::replace(&mut cur, vec![HashSet::new(); n]));
                held = 0;
            }
            cur[i].insert(b);
            held += per;
        }
    }
    if held > 0 {
        groups.push(cur);
    }
    groups
}

impl Ctx {
    /// The mapped message table (the one the id map belongs to).
    fn message_table(&self) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.spec.kind == crate::config::EntityKind::Message)
    }

    /// The id map's filter: the message table's (None when HBase is not
    /// verified or no message table is mapped), with these buckets only.
    fn id_map_filter(&self, filters: &[Filter], wanted: Option<&HashSet<u32>>) -> Option<Filter> {
        let mi = self.message_table().filter(|_| self.opts.hbase)?;
        let mut f = filters[mi].clone();
        f.wanted = wanted.map(|w| Arc::new(w.clone()));
        Some(f)
    }

    /// The id map's pass alone, over these buckets (None when there is no
    /// id map to verify).
    async fn id_map_pass(
        &self,
        filters: &[Filter],
        wanted: &HashSet<u32>,
    ) -> Result<Option<rows::Pass<idmap::Entry>>> {
        let Some(f) = self.id_map_filter(filters, Some(wanted)) else {
            return Ok(None);
        };
        let none: Vec<Filter> = Vec::new();
        let (cfg, w) = (self.cfg.hbase.clone(), self.opts.workers);
        let r = blocking(move || hbase::pass(&cfg, &[], &none, Some(&f), w)).await?;
        Ok(r.id_map)
    }

    /// The id-map rows of these buckets that differ from what the source's
    /// messages say: (key, kind, expected entry, stored entries).
    async fn id_map_problems(
        &self,
        filters: &[Filter],
        group: &HashSet<u32>,
    ) -> Result<Vec<IdMapProblem>> {
        let mi = self.message_table().expect("a message table");
        let tables = Arc::new(vec![self.tables[mi].clone()]);
        let mut f = filters[mi].clone();
        f.wanted = Some(Arc::new(group.clone()));
        let src = self
            .src
            .pass(&tables, &Arc::new(vec![f]), self.opts.workers)
            .await?;
        let stored = self
            .id_map_pass(filters, group)
            .await?
            .unwrap_or_else(|| rows::Pass::new(1));
        let mut hasher = digest::RowHasher::default();
        let mut want: HashMap<String, (idmap::Entry, Canonical)> = HashMap::new();
        for row in src.into_iter().flat_map(|p| p.kept.into_values()) {
            for e in idmap::expected(&row.c, self.cfg.hbase.salt_buckets, &mut hasher) {
                want.insert(e.key.clone(), (e, row.c.clone()));
            }
        }
        let mut out = Vec::new();
        let mut keys: Vec<&String> = want.keys().chain(stored.kept.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let got = stored.kept.get(k).cloned().unwrap_or_default();
            let kind = match want.get(k) {
                None => Kind::Extra,
                Some(_) if got.is_empty() => Kind::Missing,
                Some((e, _)) if got.len() == 1 && got[0].hash == e.hash => continue,
                Some(_) => Kind::Different,
            };
            out.push((k.clone(), kind, want.get(k).cloned(), got));
        }
        Ok(out)
    }

    /// Compares the id map with the source's messages, drills down into the
    /// buckets that differ (re-read after `--recheck-delay`) and, with
    /// `--repair`, rewrites them.
    async fn check_id_map(
        &self,
        filters: &[Filter],
        src: &source::SourcePass,
        first: rows::Pass<idmap::Entry>,
    ) -> Result<IdMapSummary> {
        let mi = self.message_table().expect("a message table");
        let mm = mismatched(&src.id_map, &first.digests);
        let mut s = IdMapSummary {
            compared: src.id_map.iter().map(|d| d.count).sum(),
            target_rows: first.rows,
            mismatched_buckets: mm.len() as u64,
            ..IdMapSummary::default()
        };
        if mm.is_empty() {
            return Ok(s);
        }
        let groups = drill_groups(
            std::slice::from_ref(&mm),
            &[src.rows + src.skipped],
            &[filters[mi].buckets],
            self.opts.drill_rows,
        );
        let mut remaining = 0u64;
        for g in groups {
            let mut problems = self.id_map_problems(filters, &g[0]).await?;
            if !problems.is_empty() {
                tokio::time::sleep(self.opts.recheck_delay).await;
                problems = self.id_map_problems(filters, &g[0]).await?;
            }
            for (key, kind, _, _) in &problems {
                match kind {
                    Kind::Missing => s.missing += 1,
                    Kind::Extra => s.extra += 1,
                    Kind::Different => s.different += 1,
                }
                if s.sample.len() < 20 {
                    s.sample.push(format!("{key} {}", kind.as_str()));
                }
            }
            if self.opts.repair && !problems.is_empty() {
                self.repair_id_map(&problems).await?;
                remaining += self.id_map_problems(filters, &g[0]).await?.len() as u64;
            }
        }
        if self.opts.repair {
            s.remaining = Some(remaining);
        }
        tracing::info!(
            missing = s.missing,
            extra = s.extra,
            different = s.different,
            "id map compared"
        );
        Ok(s)
    }

    /// Stored versions of wrong or extra id-map rows are deleted exactly;
    /// the rows the messages should have are put again.
    async fn repair_id_map(&self, problems: &[IdMapProblem]) -> Result<()> {
        let family = self.cfg.hbase.column_family.as_bytes().to_vec();
        let mut deletes = Vec::new();
        let mut puts = Vec::new();
        // Stamped at the millisecond before the second verify started (or
        // the message's version when later): above a delete marker of a row
        // removed by hand, below every later diff write (see `repair`).
        let floor = self.src.ctx.default_version_ms;
        for (_, _, want, got) in problems {
            let stamp = want.as_ref().map(|(_, c)| c.version_ms.max(floor));
            for e in got {
                // A version the put rewrites is not deleted (the delete would hide the put).
                let stale: Vec<(Vec<u8>, i64)> = e
                    .cells
                    .iter()
                    .filter(|(_, ts)| Some(*ts as u64) != stamp)
                    .cloned()
                    .collect();
                deletes.extend(crate::sink::hbase::cells::delete_versions(
                    &e.row_key, &family, &stale,
                ));
            }
            if let (Some((_, c)), Some(stamp)) = (want, stamp) {
                if let Some((legacy, new_id, room)) = c.id_pair {
                    puts.extend(crate::sink::hbase::cells::id_map_puts(
                        legacy,
                        new_id,
                        room,
                        self.cfg.hbase.salt_buckets,
                        stamp,
                        &family,
                    ));
                }
            }
        }
        let cfg = self.cfg.hbase.clone();
        blocking(move || {
            let mut c = crate::sink::hbase::HbaseClient::connect(&cfg)?;
            c.delete_multiple(&cfg.id_map_table, deletes)?;
            c.put_multiple(&cfg.id_map_table, puts)
        })
        .await?;
        Ok(())
    }

    /// One round of the drill-down: the rows of these buckets on every side,
    /// classified.
    async fn drill(
        &self,
        mm_h: &[HashSet<u32>],
        mm_k: &[HashSet<u32>],
        drills: &mut [Drill],
    ) -> Result<Vec<Problem>> {
        let n = self.tables.len();
        let mut found = Vec::new();
        let both: Vec<HashSet<u32>> = (0..n).map(|i| &mm_h[i] | &mm_k[i]).collect();
        let (fs, fh, fk) = (
            self.filters(Some(&both)),
            self.filters(Some(mm_h)),
            self.filters(Some(mm_k)),
        );
        let (ds, dh, dk) = tokio::join!(
            self.source_pass(&fs),
            self.hbase_pass(&fh, None),
            self.kafka_pass(&fk)
        );
        let (ds, dh, dk) = (ds?.0, dh?, dk?);
        for (i, p) in ds.into_iter().enumerate() {
            drills[i].src = p.kept;
        }
        if let Some((dh, _)) = dh {
            for (i, p) in dh.tables.into_iter().enumerate() {
                drills[i].hbase = p.kept;
            }
        }
        if let Some((dk, _)) = dk {
            for (i, p) in dk.into_iter().enumerate() {
                drills[i].kafka = p.pass.kept;
                drills[i].kafka_ends = p.ends;
            }
        }
        for (i, d) in drills.iter().enumerate() {
            let b = fs[i].buckets;
            for (target, mm, kept) in [
                (Target::Hbase, &mm_h[i], &d.hbase),
                (Target::Kafka, &mm_k[i], &d.kafka),
            ] {
                if mm.is_empty() {
                    continue;
                }
                let keys: HashSet<&String> = d
                    .src
                    .keys()
                    .filter(|k| mm.contains(&bucket(k, b)))
                    .chain(kept.keys())
                    .collect();
                found.extend(compare::classify(i, target, keys, &d.src, kept));
            }
        }
        Ok(found)
    }
}

/// `FALCON_FAILPOINT=verify-read-delay-us:N`: every row read from a target
/// waits N µs, so that a test can restart a server while the passes run.
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint_read_delay() {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let d = DELAY.get_or_init(|| {
        std::env::var("FALCON_FAILPOINT").ok().and_then(|v| {
            v.strip_prefix("verify-read-delay-us:")
                .and_then(|n| n.parse().ok())
                .map(std::time::Duration::from_micros)
        })
    });
    if let Some(d) = d {
        std::thread::sleep(*d);
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn failpoint_read_delay() {}

#[cfg(test)]
mod drill_tests {
    use super::*;

    #[test]
    fn rounds_hold_at_most_the_budget_and_every_bucket_once() {
        let mm = vec![(0..100u32).collect::<HashSet<u32>>(), (0..10u32).collect()];
        // 256 rows per bucket in table 0, 1,000 in table 1.
        let groups = drill_groups(&mm, &[25_600, 10_000], &[100, 10], 2_000);
        let mut seen = vec![HashSet::new(), HashSet::new()];
        for g in &groups {
            let held: u64 = g[0].len() as u64 * 256 + g[1].len() as u64 * 1_000;
            assert!(held <= 2_000, "{held}");
            for i in 0..2 {
                for b in &g[i] {
                    assert!(seen[i].insert(*b), "bucket {b} twice");
                }
            }
        }
        assert_eq!(seen, mm);
        // A bucket above the budget is a round of its own.
        assert_eq!(drill_groups(&mm[1..], &[10_000], &[10], 10).len(), 10);
        assert!(drill_groups(&[HashSet::new()], &[5], &[1], 10).is_empty());
    }
}
