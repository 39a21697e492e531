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
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
}

impl Counts {
    fn of<'a>(ps: impl IntoIterator<Item = &'a Problem>) -> Counts {
        let mut c = Counts::default();
        for p in ps {
            match p.kind {
                Kind::Missing => c.missing += 1,
                Kind::Extra => c.extra += 1,
                Kind::Different => c.different += 1,
            }
        }
        c
    }
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
    /// Seconds this target's first pass took (it runs beside the others).
    pub elapsed_s: f64,
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
    pub repair: Option<RepairSummary>,
    pub targets: BTreeMap<&'static str, TargetSummary>,
    pub tables: Vec<TableSummary>,
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
            let mut c = HbaseClient::connect(&hb.thrift, hb.framed)?;
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
        // Tables without a version column get "now": only a repair writes it.
        ctx: MapContext {
            salt_buckets: cfg.hbase.salt_buckets,
            epoch_ms: cfg.ids.epoch_ms,
            default_version_ms: now_ms(),
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

    async fn hbase_pass(
        &self,
        filters: &[Filter],
    ) -> Result<Option<Timed<Vec<rows::Pass<TargetRow>>>>> {
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
        let r = blocking(move || hbase::pass(&cfg, &tables, &filters, w)).await?;
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
            self.hbase_pass(&filters),
            self.kafka_pass(&filters)
        );
        let ((src, src_s), h, k) = (s?, h?, k?);
        let none = vec![HashSet::new(); n];
        let mm_h: Vec<HashSet<u32>> = match &h {
            Some((p, _)) => (0..n)
                .map(|i| mismatched(&src[i].hbase, &p[i].digests))
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

        let mut drills: Vec<Drill> = (0..n).map(|_| Drill::default()).collect();
        let mut found: Vec<Problem> = Vec::new();
        if mm_h.iter().chain(&mm_k).any(|m| !m.is_empty()) {
            let both: Vec<HashSet<u32>> = (0..n).map(|i| &mm_h[i] | &mm_k[i]).collect();
            let (fs, fh, fk) = (
                self.filters(Some(&both)),
                self.filters(Some(&mm_h)),
                self.filters(Some(&mm_k)),
            );
            let (ds, dh, dk) = tokio::join!(
                self.source_pass(&fs),
                self.hbase_pass(&fh),
                self.kafka_pass(&fk)
            );
            let (ds, dh, dk) = (ds?.0, dh?, dk?);
            for (i, p) in ds.into_iter().enumerate() {
                drills[i].src = p.kept;
            }
            if let Some((dh, _)) = dh {
                for (i, p) in dh.into_iter().enumerate() {
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
        }
        let first_found = found.len() as u64;
        if !found.is_empty() {
            tracing::info!(
                rows = found.len(),
                "re-checking differing rows in {:?}",
                self.opts.recheck_delay
            );
            tokio::time::sleep(self.opts.recheck_delay).await;
            found = self.recheck(&mut drills, &found).await?;
        }
        let cleared = first_found - found.len() as u64;

        let repair = if self.opts.repair && !found.is_empty() {
            Some(self.repair(&mut drills, &found).await?)
        } else {
            None
        };

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
                Target::Hbase => h.as_ref().map_or(0, |(p, _)| p[i].rows),
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
            let mine: Vec<&Problem> = found.iter().filter(|p| p.target == t).collect();
            let c = Counts::of(mine.iter().copied());
            let rows: u64 = (0..n).map(|i| target_rows(t, i)).sum();
            let secs = secs.unwrap_or(0.0);
            for (i, pt) in per_table.iter_mut().enumerate() {
                let counts = Counts::of(mine.iter().copied().filter(|p| p.table == i));
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
                    elapsed_s: secs,
                    rows_per_s: rows as f64 / secs.max(1e-9),
                    remaining: repair
                        .as_ref()
                        .map(|(_, rem)| rem.iter().filter(|p| p.target == t).count() as u64),
                },
            );
        }
        let all = Counts::of(&found);
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
            identical: all.total() == 0,
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
            repair: repair.map(|(r, _)| r),
            targets,
            tables,
        })
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
