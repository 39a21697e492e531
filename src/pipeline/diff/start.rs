//! Where a diff starts, and its identity in Kafka. The diff run's marker
//! and transactional id are scoped by source identity and database, so jobs
//! on other databases or servers sharing the cluster never read or fence it.
//! The start, in order of precedence:
//! 1. `--from FILE:POS`;
//! 2. the furthest of the run's committed marker and its local checkpoint;
//! 3. the smallest start position over every shard of the base run, as
//!    recorded in Kafka — refused while a shard is missing or unfinished;
//! 4. a base run recorded only locally (`--target hbase`): its local shards.

use sqlx::mysql::MySqlPool;

use super::{local_checkpoint, Checkpoint, DiffOptions};
use crate::checkpoint::StateDir;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::commit::blocking;
use crate::pipeline::runlog::{sanitize, source_identity, RunLog, Scope};
use crate::position::Position;
use crate::sink::kafka::tx::{make_tx_producer, read_markers, TxProducer};

pub(super) struct Begun {
    pub(super) start: Position,
    /// Changes of the transaction at `start` already applied.
    pub(super) skip: u64,
    /// The start is the run's own checkpoint (not `--from` nor the base's).
    pub(super) from_checkpoint: bool,
    pub(super) floor_ms: u64,
    /// The write clock saved by the checkpoint resumed from (0: none).
    pub(super) clock_ms: u64,
    pub(super) producer: TxProducer,
    pub(super) txn_id: String,
    pub(super) marker_key: String,
}

/// What is known of the base run.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseStart {
    /// From Kafka: None when no base run is recorded there; else the start,
    /// or why it cannot be used yet.
    pub kafka: Option<std::result::Result<(Position, u64), String>>,
    /// From this machine's state dir.
    pub local: Option<(Position, u64)>,
}

/// Chooses the start position and the version floor (see the module comment).
pub fn choose(
    from: Option<&Position>,
    resume: Option<&Checkpoint>,
    base: &BaseStart,
    base_run: &str,
) -> Result<(Position, u64)> {
    choose_with_skip(from, resume, base, base_run).map(|(p, _, floor)| (p, floor))
}

/// [`choose`], with the changes to skip of the transaction at the start (a
/// checkpoint inside a transaction applied in parts).
pub fn choose_with_skip(
    from: Option<&Position>,
    resume: Option<&Checkpoint>,
    base: &BaseStart,
    base_run: &str,
) -> Result<(Position, u64, u64)> {
    let (p, floor) = choose_position(from, resume, base, base_run)?;
    let skip = match (from, resume) {
        (None, Some(r)) => r.skip,
        _ => 0,
    };
    Ok((p, skip, floor))
}

fn choose_position(
    from: Option<&Position>,
    resume: Option<&Checkpoint>,
    base: &BaseStart,
    base_run: &str,
) -> Result<(Position, u64)> {
    let base_known = match &base.kafka {
        Some(Ok(b)) => Some(b.clone()),
        Some(Err(_)) => None,
        None => base.local.clone(),
    };
    // Tables without a version column are stamped with the event time; never
    // below the base's own stamp, or a change made in the base's first second
    // would lose to the older state base copied.
    let floor = resume
        .map(|c| c.version_floor_ms)
        .or(base_known.as_ref().map(|b| b.1 + 1))
        .unwrap_or(0);
    if let Some(f) = from {
        if let Some(r) = resume {
            if *f < r.position {
                tracing::warn!(from = %f, checkpoint = %r.position, "--from is before the run's checkpoint: changes are replayed again (harmless for HBase; Kafka gets their events again)");
            }
        }
        return Ok((f.clone(), floor));
    }
    if let Some(r) = resume {
        return Ok((r.position.clone(), floor));
    }
    match (&base.kafka, base_known) {
        (Some(Err(why)), _) => Err(Error::Usage(format!(
            "diff: base run {base_run:?} is not complete: {why}. Finish every shard first (or pass --from FILE:POS to start anyway)"
        ))),
        (_, Some((p, _))) => Ok((p, floor)),
        (_, None) => Err(Error::Usage(format!(
            "diff: no start position: no diff checkpoint and no base run {base_run:?} recorded in Kafka or in the state dir; pass --from FILE:POS (or --base-run-id)"
        ))),
    }
}

pub(super) async fn begin(
    cfg: &Config,
    opts: &DiffOptions,
    pool: &MySqlPool,
    database: &str,
    state: &StateDir,
) -> Result<Begun> {
    let source = source_identity(pool).await?;
    let db = sanitize(database);
    let marker_key = format!("{source}/{db}/diff/{}", opts.run_id);
    let txn_id = format!("falcon-diff-{source}-{db}-{}", opts.run_id);
    let mut k = cfg.kafka.clone();
    // librdkafka waits retry.backoff.ms (100) whenever the coordinator is still
    // finishing the previous commit: with one transaction per batch that wait
    // would dominate the lag.
    k.producer.set_default("retry.backoff.ms", "5");
    let id = txn_id.clone();
    let producer = blocking(move || make_tx_producer(&k, &id)).await?;

    let (k, mk, run) = (cfg.kafka.clone(), marker_key.clone(), opts.run_id.clone());
    let marker: Option<Checkpoint> = blocking(move || read_markers(&k, &mk))
        .await?
        .into_iter()
        .filter(|r| r.key == marker_key)
        .filter_map(|r| serde_json::from_slice::<Checkpoint>(&r.payload).ok())
        .filter(|c| c.run == run)
        .max_by(|a, b| (&a.position, a.skip).cmp(&(&b.position, b.skip)));
    let local = local_checkpoint(state, &opts.run_id)?;
    let resume = match (local, marker) {
        (Some(a), Some(b)) => Some(if (&b.position, b.skip) > (&a.position, a.skip) {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    };

    let base_scope = Scope {
        source,
        database: db,
        run: opts.base_run_id.clone(),
    };
    let log = RunLog::read(&cfg.kafka, &base_scope).await?;
    let kafka = log.plan.as_ref().map(|_| log.diff_start());
    let local = state.base_records(&opts.base_run_id)?.into_iter().fold(
        None,
        |acc: Option<(Position, u64)>, r| {
            Some(match acc {
                None => (r.start_position, r.start_ts_ms),
                Some((p, t)) => (p.min(r.start_position), t.max(r.start_ts_ms)),
            })
        },
    );
    let base = BaseStart { kafka, local };
    let (start, skip, floor_ms) = choose_with_skip(
        opts.from.as_ref(),
        resume.as_ref(),
        &base,
        &opts.base_run_id,
    )?;
    let from_checkpoint = opts.from.is_none() && resume.is_some();
    Ok(Begun {
        start,
        skip,
        from_checkpoint,
        floor_ms,
        // Even with --from: never stamp below what this run wrote before.
        clock_ms: resume.as_ref().map_or(0, |c| c.clock_ms),
        producer,
        txn_id,
        marker_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(off: u64) -> Position {
        Position::Binlog {
            file: "mariadb-bin.000002".into(),
            offset: off,
            gtid: String::new(),
        }
    }

    fn cp(off: u64) -> Checkpoint {
        Checkpoint {
            run: "diff".into(),
            position: pos(off),
            skip: 0,
            version_floor_ms: 77,
            clock_ms: 0,
            committed_ms: 0,
            lag_ms: 0,
        }
    }

    #[test]
    fn from_wins_then_the_checkpoint_then_the_base() {
        let base = BaseStart {
            kafka: Some(Ok((pos(100), 5000))),
            local: Some((pos(300), 9000)),
        };
        assert_eq!(
            choose(Some(&pos(50)), Some(&cp(200)), &base, "base").unwrap(),
            (pos(50), 77)
        );
        assert_eq!(
            choose(None, Some(&cp(200)), &base, "base").unwrap(),
            (pos(200), 77)
        );
        // Kafka's record of all shards beats this machine's local shards.
        assert_eq!(choose(None, None, &base, "base").unwrap(), (pos(100), 5001));
    }

    #[test]
    fn a_checkpoint_inside_a_large_transaction_resumes_with_its_skip() {
        let base = BaseStart {
            kafka: Some(Ok((pos(100), 5000))),
            local: None,
        };
        let inside = Checkpoint {
            skip: 4000,
            ..cp(200)
        };
        assert_eq!(
            choose_with_skip(None, Some(&inside), &base, "base").unwrap(),
            (pos(200), 4000, 77)
        );
        // --from starts at a transaction boundary: nothing skipped.
        assert_eq!(
            choose_with_skip(Some(&pos(200)), Some(&inside), &base, "base").unwrap(),
            (pos(200), 0, 77)
        );
    }

    #[test]
    fn an_unfinished_base_is_refused_unless_from_is_given() {
        let base = BaseStart {
            kafka: Some(Err("shard(s) 2/3 never started".into())),
            local: Some((pos(300), 9000)),
        };
        let e = choose(None, None, &base, "base").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("2/3 never started"), "{e}");
        assert_eq!(
            choose(Some(&pos(10)), None, &base, "base").unwrap().0,
            pos(10)
        );
    }

    #[test]
    fn a_base_recorded_only_locally_is_used_and_nothing_at_all_is_an_error() {
        let base = BaseStart {
            kafka: None,
            local: Some((pos(300), 9000)),
        };
        assert_eq!(choose(None, None, &base, "b").unwrap(), (pos(300), 9001));
        let none = BaseStart {
            kafka: None,
            local: None,
        };
        assert_eq!(choose(None, None, &none, "b").unwrap_err().exit_code(), 2);
    }
}
