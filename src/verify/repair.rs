//! `--repair`: rewrites exactly the differing rows from the source.
//!
//! HBase: a wrong cell is removed by deleting exactly its version (a delete
//! marker at time T hides every later put stamped T, so nothing is deleted
//! "as of now", and no version the canonical row writes is ever deleted);
//! then the canonical row is put with its source version. A cell stamped
//! with the canonical version is simply overwritten by the put. Extra rows
//! lose exactly their stored versions. A row still missing after that was
//! hidden by a delete marker newer than its version (someone deleted it "as
//! of now"): it is written once more, stamped with the current time.
//!
//! Kafka: a full-state event (phase `repair`) for each missing or different
//! row, a hard-delete event for each extra key (sent to the partition that
//! holds it), all in one transaction.

use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::util::Timeout;
use std::time::Duration;

use super::compare::{Kind, Problem};
use super::rows::{Locator, Target, TargetRow};
use crate::config::{Config, EntityKind};
use crate::error::{Error, Result};
use crate::mapping::Canonical;
use crate::sink::hbase::thrift2::{TColumn, TDelete, TDeleteType};
use crate::sink::hbase::{cells, HbaseClient};
use crate::sink::kafka::event;
use crate::sink::kafka::tx::{make_tx_producer, send};

/// Deletes exactly these versions of the row's cells.
fn delete_versions(row_key: &[u8], family: &[u8], cells: &[(Vec<u8>, i64)]) -> Option<TDelete> {
    if cells.is_empty() {
        return None;
    }
    let cols = cells
        .iter()
        .map(|(q, ts)| TColumn {
            family: family.to_vec(),
            qualifier: Some(q.clone()),
            timestamp: Some(*ts),
        })
        .collect();
    Some(TDelete::new(
        row_key.to_vec(),
        Some(cols),
        None,
        Some(TDeleteType::DELETE_COLUMN),
        None,
        None,
    ))
}

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

/// Repairs one table's HBase problems; returns the rows touched. `stamp`
/// overrides the source version of the puts: a row that a delete marker
/// "as of now" hides can only be rewritten above that marker.
pub fn hbase(
    client: &mut HbaseClient,
    cfg: &Config,
    t: &HbaseRepair<'_>,
    problems: &[&Problem],
    stamp: Option<u64>,
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
                if let Some(ts) = stamp {
                    c.version_ms = ts;
                }
                if let Some((r, row_key)) = found_at {
                    let stale = if *row_key == c.row_key {
                        stale_cells(&c, r)
                    } else {
                        r.cells.iter().map(|c| (c.name.clone(), c.ts)).collect()
                    };
                    deletes.extend(delete_versions(row_key, family, &stale));
                }
                puts.push(cells::put(&c, family));
                if let (EntityKind::Message, Some((legacy, new_id, room))) = (t.kind, c.id_pair) {
                    id_puts.extend(cells::id_map_puts(
                        legacy,
                        new_id,
                        room,
                        cfg.hbase.salt_buckets,
                        cfg.ids.epoch_ms,
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
    let k = cfg.kafka.clone();
    // One id per job (its progress topic): a concurrent repair of the same
    // job is fenced, other jobs are not.
    let id = format!("falcon-verify-repair-{}", cfg.kafka.progress_topic);
    let producer = tokio::task::spawn_blocking(move || make_tx_producer(&k, &id))
        .await
        .map_err(|e| Error::Other(format!("producer: {e}")))??;
    producer
        .begin_transaction()
        .map_err(|e| Error::kafka("begin repair transaction", e))?;
    let origin = event::Origin {
        phase: "repair",
        run: "verify",
        position,
    };
    let mut ev = Vec::with_capacity(1024);
    let mut n = 0;
    for p in problems {
        debug_assert_eq!(p.target, Target::Kafka);
        let topic = &topics[p.table];
        match (p.kind, &p.source) {
            (Kind::Missing | Kind::Different, Some(s)) => {
                event::encode(&s.c, &origin, &mut ev);
                let key = s.c.partition_key.to_string();
                send(&producer, topic, key.as_bytes(), &ev).await?;
            }
            _ => {
                let Some(Locator::Kafka {
                    partition,
                    record_key,
                }) = p.found.as_ref().map(|r| &r.at)
                else {
                    continue;
                };
                let new_id = match kinds[p.table] {
                    EntityKind::Message => p
                        .found
                        .as_ref()
                        .and_then(|r| r.get("id"))
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok()),
                    _ => None,
                };
                let removal =
                    event::encode_removal(kinds[p.table], &p.key, new_id, now_ms, &origin);
                // To the partition that holds the key, whatever its record key hashes to.
                let rec = BaseRecord::to(topic)
                    .key(record_key.as_slice())
                    .payload(&removal)
                    .partition(*partition);
                producer
                    .send(rec)
                    .map_err(|(e, _)| Error::kafka(format!("produce to {topic}"), e))?;
            }
        }
        n += 1;
    }
    tokio::task::block_in_place(|| {
        producer.commit_transaction(Timeout::After(Duration::from_secs(120)))
    })
    .map_err(|e| Error::kafka("commit repair transaction", e))?;
    Ok(n)
}
