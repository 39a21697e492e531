//! The run's record, kept in Kafka with its data (the progress topic, one
//! compacted partition), so that no local disk is the source of truth: a
//! shard on another machine, a pod whose disk was lost, and `diff` started
//! anywhere all read the same record.
//!
//! Every key starts with the run's scope — source identity, database, run id —
//! so several databases or servers can share one cluster and one progress
//! topic without reading or fencing each other's progress:
//! - `<scope>/plan/<digest>`: the plan every shard uses ([`Plan`]); the first
//!   one committed wins, a shard with other parameters is refused;
//! - `<scope>/shard/<i>-of-<N>/start`: a shard's start position and time;
//! - `<scope>/shard/<i>-of-<N>/done`: a shard finished (its totals);
//! - `<scope>/chunk/<table>/<k>`: a chunk committed, in the chunk's own transaction;
//! - `<db scope>/diff/<run>`, `<db scope>/watermark/<run>`: diff positions.

use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlPool;

use super::base::plan::Plan;
use super::commit::blocking;
use crate::checkpoint::{ChunkDone, Shard};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::position::Position;
use crate::sink::kafka::tx::{read_markers, MarkerRecord};

/// Who the source server is: MySQL's `@@server_uuid`, or MariaDB's
/// `@@server_id` with its host name and port (MariaDB has no server UUID).
pub async fn source_identity(pool: &MySqlPool) -> Result<String> {
    let uuid: Option<String> = sqlx::query_scalar("SELECT CAST(@@server_uuid AS CHAR)")
        .fetch_optional(pool)
        .await
        .ok()
        .flatten();
    if let Some(u) = uuid.filter(|u| !u.is_empty()) {
        return Ok(sanitize(&u));
    }
    let (id, host, port): (u64, String, u64) = sqlx::query_as(
        "SELECT CAST(@@server_id AS UNSIGNED), CAST(@@hostname AS CHAR), CAST(@@port AS UNSIGNED)",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| Error::mysql("read the server's identity", e))?;
    Ok(sanitize(&format!("{host}-{port}-{id}")))
}

/// Keys and transactional ids allow `[A-Za-z0-9._-]`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A run's scope: `<source>/<database>/<run>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub source: String,
    pub database: String,
    pub run: String,
}

impl Scope {
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.source, self.database, self.run)
    }

    /// A transactional id: global to the cluster, so it names the scope too.
    pub fn txn_id(&self, role: &str) -> String {
        format!(
            "falcon-{role}-{}-{}-{}",
            self.source, self.database, self.run
        )
    }

    pub fn plan_key(&self, digest: &str) -> String {
        format!("{}/plan/{digest}", self.key())
    }

    pub fn shard_key(&self, shard: Shard, what: &str) -> String {
        format!(
            "{}/shard/{}-of-{}/{what}",
            self.key(),
            shard.index,
            shard.count
        )
    }

    pub fn chunk_key(&self, table: &str, k: u64) -> String {
        format!("{}/chunk/{table}/{k}", self.key())
    }
}

/// A published plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRecord {
    pub run: String,
    pub plan: Plan,
    pub created_ms: u64,
}

/// A shard's start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardStart {
    pub shard: Shard,
    pub start_position: Position,
    pub start_ts_ms: u64,
    pub plan: String,
    pub kafka: bool,
    pub hbase: bool,
    /// Highest worker count of any attempt: their transactional ids are fenced.
    pub max_workers: usize,
}

/// A shard's end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardDone {
    pub shard: Shard,
    pub rows_read: u64,
    pub chunks: u64,
    pub finished_ms: u64,
}

/// A committed chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkMarker {
    #[serde(flatten)]
    pub done: ChunkDone,
    pub run: String,
    pub shard: String,
    /// When the chunk's transaction was sent to commit (Unix ms; 0 in
    /// records of older versions): `status` derives rates from it.
    #[serde(default)]
    pub committed_ms: u64,
}

/// How many chunks a shard has to copy, per table: published each time the
/// shard starts or resumes, once its chunks are planned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardChunks {
    pub shard: Shard,
    pub tables: Vec<TableChunks>,
    pub planned_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableChunks {
    pub table: String,
    /// Chunks of this shard that hold rows (done or not).
    pub chunks: u64,
    /// The source's row estimate for this shard's share of the table.
    pub estimated_rows: u64,
}

/// A verify run's verdict, kept under `<source>/<db>/verify/last`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyRecord {
    pub finished_ms: u64,
    pub identical: bool,
    pub sample_pct: f64,
    pub compared: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub mismatched_buckets: u64,
    /// After `--repair`: rows still differing.
    pub remaining_after_repair: Option<u64>,
    pub tables: Vec<crate::report::Verdict>,
}

/// The key of a database's last verify verdict.
pub fn verify_key(source: &str, database: &str) -> String {
    format!("{source}/{database}/verify/last")
}

/// Commits one record to the progress topic in a transaction of its own,
/// with the transactional id `txn_id` (which fences an older producer of it).
pub async fn publish(
    kafka: &KafkaConfig,
    txn_id: &str,
    key: &str,
    value: &impl Serialize,
) -> Result<()> {
    use rdkafka::producer::Producer;
    let payload = serde_json::to_vec(value).map_err(|e| Error::Other(e.to_string()))?;
    let (k, id, key, topic) = (
        kafka.clone(),
        txn_id.to_string(),
        key.to_string(),
        kafka.progress_topic.clone(),
    );
    let p = blocking(move || crate::sink::kafka::tx::make_tx_producer(&k, &id)).await?;
    p.begin_transaction()
        .map_err(|e| Error::kafka("begin transaction", e))?;
    crate::sink::kafka::tx::send(&p, &topic, key.as_bytes(), &payload).await?;
    blocking(move || {
        p.commit_transaction(rdkafka::util::Timeout::After(
            std::time::Duration::from_secs(60),
        ))
        .map_err(|e| Error::kafka(format!("commit {key}"), e))
    })
    .await
}

/// Everything committed under a run's scope, read once.
#[derive(Debug, Default)]
pub struct RunLog {
    /// The first plan committed.
    pub plan: Option<(String, PlanRecord)>,
    pub starts: Vec<ShardStart>,
    pub dones: Vec<ShardDone>,
    pub chunks: Vec<ChunkMarker>,
    /// The latest chunk plan of each shard.
    pub chunk_plans: Vec<ShardChunks>,
}

impl RunLog {
    /// Reads the scope's records (call after fencing the run's producers).
    pub async fn read(kafka: &KafkaConfig, scope: &Scope) -> Result<RunLog> {
        let (k, prefix) = (kafka.clone(), format!("{}/", scope.key()));
        let recs = blocking(move || read_markers(&k, &prefix)).await?;
        Ok(RunLog::parse(scope, &recs))
    }

    /// Sorts records into the log; the latest record of a key wins, except
    /// for plans, where the first committed wins.
    pub fn parse(scope: &Scope, recs: &[MarkerRecord]) -> RunLog {
        let base = scope.key();
        let mut log = RunLog::default();
        let mut starts = std::collections::BTreeMap::new();
        let mut dones = std::collections::BTreeMap::new();
        let mut chunks = std::collections::BTreeMap::new();
        let mut chunk_plans = std::collections::BTreeMap::new();
        for r in recs {
            let Some(rest) = r.key.strip_prefix(&base).and_then(|k| k.strip_prefix('/')) else {
                continue;
            };
            if let Some(digest) = rest.strip_prefix("plan/") {
                if log.plan.is_none() {
                    if let Ok(p) = serde_json::from_slice::<PlanRecord>(&r.payload) {
                        log.plan = Some((digest.to_string(), p));
                    }
                }
            } else if rest.starts_with("shard/") && rest.ends_with("/start") {
                if let Ok(s) = serde_json::from_slice::<ShardStart>(&r.payload) {
                    starts.insert(r.key.clone(), s);
                }
            } else if rest.starts_with("shard/") && rest.ends_with("/done") {
                if let Ok(s) = serde_json::from_slice::<ShardDone>(&r.payload) {
                    dones.insert(r.key.clone(), s);
                }
            } else if rest.starts_with("shard/") && rest.ends_with("/chunks") {
                if let Ok(s) = serde_json::from_slice::<ShardChunks>(&r.payload) {
                    chunk_plans.insert(r.key.clone(), s);
                }
            } else if rest.starts_with("chunk/") {
                if let Ok(c) = serde_json::from_slice::<ChunkMarker>(&r.payload) {
                    chunks.insert(r.key.clone(), c);
                }
            }
        }
        log.starts = starts.into_values().collect();
        log.dones = dones.into_values().collect();
        log.chunks = chunks.into_values().collect();
        log.chunk_plans = chunk_plans.into_values().collect();
        log
    }

    pub fn start_of(&self, shard: Shard) -> Option<&ShardStart> {
        self.starts.iter().find(|s| s.shard == shard)
    }

    /// Where a first diff starts: the smallest start over all shards of the
    /// plan (and the latest start time), once every shard has finished.
    /// Otherwise the shards that are missing or still running.
    pub fn diff_start(&self) -> std::result::Result<(Position, u64), String> {
        let Some((_, plan)) = &self.plan else {
            return Err("no base run recorded in Kafka".into());
        };
        let n = plan.plan.shards;
        let mut missing = Vec::new();
        let mut running = Vec::new();
        let mut best: Option<(Position, u64)> = None;
        for i in 0..n {
            let sh = Shard { index: i, count: n };
            match self.start_of(sh) {
                None => missing.push(sh.to_string()),
                Some(s) => {
                    if !self.dones.iter().any(|d| d.shard == sh) {
                        running.push(sh.to_string());
                    }
                    best = Some(match best {
                        None => (s.start_position.clone(), s.start_ts_ms),
                        Some((p, t)) => (p.min(s.start_position.clone()), t.max(s.start_ts_ms)),
                    });
                }
            }
        }
        match best {
            Some(b) if missing.is_empty() && running.is_empty() => Ok(b),
            _ => {
                let mut why = Vec::new();
                if !missing.is_empty() {
                    why.push(format!("shard(s) {} never started", missing.join(", ")));
                }
                if !running.is_empty() {
                    why.push(format!(
                        "shard(s) {} have not finished (still copying, or stopped: resume them)",
                        running.join(", ")
                    ));
                }
                Err(why.join("; "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::base::plan::TableWidth;

    fn scope() -> Scope {
        Scope {
            source: "db1-3306-1".into(),
            database: "chat".into(),
            run: "base".into(),
        }
    }

    fn rec(key: String, v: &impl Serialize) -> MarkerRecord {
        MarkerRecord {
            key,
            payload: serde_json::to_vec(v).unwrap(),
        }
    }

    fn plan(shards: u32) -> PlanRecord {
        PlanRecord {
            run: "base".into(),
            plan: Plan {
                chunk_rows: 1000,
                shards,
                tables: vec![TableWidth {
                    table: "message".into(),
                    width: 1000,
                }],
            },
            created_ms: 1,
        }
    }

    fn start(i: u32, n: u32, offset: u64) -> ShardStart {
        ShardStart {
            shard: Shard { index: i, count: n },
            start_position: Position::Binlog {
                file: "mariadb-bin.000001".into(),
                offset,
                gtid: String::new(),
            },
            start_ts_ms: offset,
            plan: "p".into(),
            kafka: true,
            hbase: true,
            max_workers: 4,
        }
    }

    fn done(i: u32, n: u32) -> ShardDone {
        ShardDone {
            shard: Shard { index: i, count: n },
            rows_read: 1,
            chunks: 1,
            finished_ms: 2,
        }
    }

    #[test]
    fn diff_starts_at_the_smallest_shard_start_once_all_finished() {
        let s = scope();
        let mut recs = vec![
            rec(s.plan_key("a"), &plan(3)),
            // A later, different plan (a race) does not replace the first.
            rec(s.plan_key("b"), &plan(2)),
        ];
        for (i, off) in [(0, 900), (1, 400), (2, 700)] {
            let sh = Shard { index: i, count: 3 };
            recs.push(rec(s.shard_key(sh, "start"), &start(i, 3, off)));
        }
        let log = RunLog::parse(&s, &recs);
        assert_eq!(log.plan.as_ref().unwrap().0, "a");
        let e = log.diff_start().unwrap_err();
        assert!(e.contains("0/3, 1/3, 2/3 have not finished"), "{e}");
        for i in 0..3 {
            let sh = Shard { index: i, count: 3 };
            recs.push(rec(s.shard_key(sh, "done"), &done(i, 3)));
        }
        let log = RunLog::parse(&s, &recs);
        let (p, ts) = log.diff_start().unwrap();
        assert_eq!(p.to_string(), "mariadb-bin.000001:400");
        assert_eq!(ts, 900);
    }

    #[test]
    fn a_missing_shard_is_named_and_other_scopes_are_ignored() {
        let s = scope();
        let other = Scope {
            database: "chat2".into(),
            ..scope()
        };
        let sh0 = Shard { index: 0, count: 2 };
        let sh1 = Shard { index: 1, count: 2 };
        let recs = vec![
            rec(s.plan_key("a"), &plan(2)),
            rec(s.shard_key(sh0, "start"), &start(0, 2, 5)),
            rec(s.shard_key(sh0, "done"), &done(0, 2)),
            rec(other.shard_key(sh1, "start"), &start(1, 2, 5)),
            rec(other.shard_key(sh1, "done"), &done(1, 2)),
        ];
        let log = RunLog::parse(&s, &recs);
        assert_eq!(log.starts.len(), 1);
        assert!(log.diff_start().unwrap_err().contains("1/2 never started"));
        assert!(RunLog::parse(&scope(), &[]).diff_start().is_err());
    }
}
