//! `--repair`: rewrites exactly the differing rows from the source.
//!
//! HBase: a wrong cell is removed by deleting exactly its version (a delete
//! marker at time T hides every later put stamped T, so nothing is deleted
//! "as of now", and no version the canonical row writes is ever deleted);
//! then the canonical row is put with its source version. A cell stamped
//! with the canonical version is simply overwritten by the put. Extra rows
//! lose exactly their stored versions. Puts carry the row's source version
//! (tables without one: the millisecond before the second verify started).
//! A row still missing after that is hidden by a delete marker above its
//! version (deleted by hand "as of now"); it is written once more at that
//! same millisecond before verify's start, never later: every change made
//! after verify read the row has a binlog time at or above that second, and
//! diff stamps its writes at or above their binlog time
//! (`pipeline::clock`), so a later diff write always wins over a repair. A
//! row hidden by a marker newer than that stays reported.
//!
//! Kafka: a full-state event (phase `repair`) for each missing or different
//! row, a hard-delete event for each extra key (sent to the partition that
//! holds it), all in one transaction, written by the shared committer with a
//! marker of the repair.

use std::sync::{Arc, Mutex};

use super::compare::{Kind, Problem};
use super::rows::{Locator, Target, TargetRow};
use crate::config::{Config, EntityKind};
use crate::error::Result;
use crate::mapping::Canonical;
use crate::pipeline::commit::{Committer, Marker, RetryPolicy, Unit, Work};
use crate::sink::hbase::cells::delete_versions;
use crate::sink::hbase::{cells, HbaseClient};
use crate::sink::kafka::event;

/// The stored versions a put of `c` would not replace: cells the canonical
/// row does not have, or stamped later than its version.
fn stale_cells(c: &Canonical, found: &TargetRow) -> Vec<(Vec<u8>, i64)> {
    let version = c.version_ms as i64;
    found
        .cells
        .iter()
        .filter(|cell| {
            let wanted = std::str::from_utf8(&cell.name).ok().and_then(|n| c.get(n));
            match wanted {
                None => true,
                Some(v) => v.as_bytes() != cell.value && cell.ts > version,
            }
        })
        .map(|cell| (cell.name.clone(), cell.ts))
        .collect()
}

pub struct HbaseRepair<'a> {
    pub hbase_table: &'a str,
    pub kind: EntityKind,
}

/// Repairs one table's HBase problems; returns the rows touched. The puts
/// are stamped at least `at_least` (see the module comment).
pub fn hbase(
    client: &mut HbaseClient,
    cfg: &Config,
    t: &HbaseRepair<'_>,
    problems: &[&Problem],
    at_least: Option<u64>,
) -> Result<u64> {
    let family = cfg.hbase.column_family.as_bytes();
    let mut deletes = Vec::new();
    let mut puts = Vec::new();
    let mut id_puts = Vec::new();
    for p in problems {
        let found_at = p.found.as_ref().and_then(|r| match &r.at {
            Locator::Hbase { row_key } => Some((r, row_key)),
            Locator::Kafka { .. } => None,
        });
        match (p.kind, &p.source) {
            (Kind::Missing | Kind::Different, Some(s)) => {
                let mut c = s.c.clone();
                c.version_ms = c.version_ms.max(at_least.unwrap_or(0));
                let c = &c;
                if let Some((r, row_key)) = found_at {
                    let stale = if *row_key == c.row_key {
                        stale_cells(c, r)
                    } else {
                        r.cells.iter().map(|c| (c.name.clone(), c.ts)).collect()
                    };
                    deletes.extend(delete_versions(row_key, family, &stale));
                }
                puts.push(cells::put(c, family));
                if let (EntityKind::Message, Some((legacy, new_id, room))) = (t.kind, c.id_pair) {
                    id_puts.extend(cells::id_map_puts(
                        legacy,
                        new_id,
                        room,
                        cfg.hbase.salt_buckets,
                        c.version_ms,
                        family,
                    ));
                }
            }
            _ => {
                if let Some((r, row_key)) = found_at {
                    let all: Vec<(Vec<u8>, i64)> =
                        r.cells.iter().map(|c| (c.name.clone(), c.ts)).collect();
                    deletes.extend(delete_versions(row_key, family, &all));
                }
            }
        }
    }
    client.delete_multiple(t.hbase_table, deletes)?;
    client.put_multiple(t.hbase_table, puts)?;
    client.put_multiple(&cfg.hbase.id_map_table, id_puts)?;
    Ok(problems.len() as u64)
}

/// The correcting events of every table, as one unit of work.
struct RepairEvents<'a> {
    topics: &'a [String],
    kinds: &'a [EntityKind],
    problems: &'a [&'a Problem],
    position: &'a str,
    now_ms: u64,
    marker: Marker,
    sent: u64,
}

impl Work for RepairEvents<'_> {
    async fn write(&mut self, unit: &mut Unit<'_>) -> Result<Option<Marker>> {
        let origin = event::Origin {
            phase: "repair",
            run: "verify",
            position: self.position,
        };
        let mut ev = Vec::with_capacity(1024);
        self.sent = 0;
        for p in self.problems {
            debug_assert_eq!(p.target, Target::Kafka);
            let topic = &self.topics[p.table];
            match (p.kind, &p.source) {
                (Kind::Missing | Kind::Different, Some(s)) => {
                    event::encode(&s.c, &origin, &mut ev);
                    let key = s.c.partition_key.to_string();
                    unit.send(topic, key.as_bytes(), &ev).await?;
                }
                _ => {
                    let Some(Locator::Kafka {
                        partition,
                        record_key,
                    }) = p.found.as_ref().map(|r| &r.at)
                    else {
                        continue;
                    };
                    let new_id = match self.kinds[p.table] {
                        EntityKind::Message => p
                            .found
                            .as_ref()
                            .and_then(|r| r.get("id"))
                            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok()),
                        _ => None,
                    };
                    let removal = event::encode_removal(
                        self.kinds[p.table],
                        &p.key,
                        new_id,
                        self.now_ms,
                        &origin,
                    );
                    // To the partition that holds the key, whatever its record key hashes to.
                    unit.send_to(topic, *partition, record_key, &removal)?;
                }
            }
            self.sent += 1;
        }
        Ok(Some(self.marker.clone()))
    }
}

/// Appends the correcting events of every table in one transaction; returns
/// how many events were appended.
pub async fn kafka(
    cfg: &Config,
    topics: &[String],
    kinds: &[EntityKind],
    problems: &[&Problem],
    position: &str,
    now_ms: u64,
) -> Result<u64> {
    if problems.is_empty() {
        return Ok(0);
    }
    // One id per job (its progress topic): a concurrent repair of the same
    // job is fenced, other jobs are not.
    let id = format!("falcon-verify-repair-{}", cfg.kafka.progress_topic);
    let dead = std::env::temp_dir().join(format!("falcon-repair-{}.jsonl", std::process::id()));
    let dead = Arc::new(Mutex::new(crate::checkpoint::JsonlAppender::open(&dead)?));
    let mut committer = Committer::new(
        Some((cfg.kafka.clone(), id.clone(), None)),
        None,
        dead,
        RetryPolicy::default(),
    )
    .named("verify_repair");
    let mut work = RepairEvents {
        topics,
        kinds,
        problems,
        position,
        now_ms,
        marker: Marker {
            key: format!("repair/{id}"),
            payload: format!("{{\"repair_ms\":{now_ms},\"events\":{}}}", problems.len())
                .into_bytes(),
        },
        sent: 0,
    };
    committer.commit("the repair events", &mut work).await?;
    Ok(work.sent)
}
