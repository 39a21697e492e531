//! A batch of changes as target writes: the events in source order, the
//! HBase puts and deletes (stamped with source versions, so their order does
//! not matter and a replay changes nothing), the dead letters and the marker
//! of the position after the batch. Binlog diff and watermark diff fill it
//! with the same row rules; the committer writes it.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::mapping::{keys, Canonical, MapContext};
use crate::pipeline::commit::{HbaseJob, Marker, Unit, Work};
use crate::sink::hbase::cells;
use crate::sink::hbase::thrift2::{TDelete, TPut};
use crate::sink::kafka::event::{self, Origin};

/// Where a table's rows go.
pub(crate) struct Dest<'a> {
    pub(crate) topic: &'a str,
    pub(crate) hbase_table: &'a str,
    pub(crate) id_map_table: &'a str,
    pub(crate) family: &'a [u8],
}

#[derive(Default)]
pub(crate) struct Batch {
    /// (topic, key, payload) in source order.
    records: Vec<(String, String, Vec<u8>)>,
    puts: BTreeMap<String, Vec<TPut>>,
    deletes: BTreeMap<String, Vec<TDelete>>,
    /// Encoded dead-letter lines, made durable before the commit.
    pub(crate) dead: Vec<Vec<u8>>,
    pub(crate) marker: Option<Marker>,
}

impl Batch {
    pub(crate) fn event(&mut self, topic: &str, partition_key: u64, payload: Vec<u8>) {
        self.records
            .push((topic.to_string(), partition_key.to_string(), payload));
    }

    /// The row's state: its cells (and id-map rows), with every column that
    /// is NULL now but `had_value` removed up to the row's version.
    pub(crate) fn put_row(
        &mut self,
        c: &Canonical,
        d: &Dest<'_>,
        ctx: &MapContext,
        nulled: &[&'static str],
    ) {
        if !nulled.is_empty() {
            self.deletes
                .entry(d.hbase_table.to_string())
                .or_default()
                .push(cells::columns_delete(
                    &c.row_key,
                    d.family,
                    nulled,
                    c.version_ms,
                ));
        }
        self.puts
            .entry(d.hbase_table.to_string())
            .or_default()
            .push(cells::put(c, d.family));
        if let Some((legacy, new_id, room)) = c.id_pair {
            self.puts
                .entry(d.id_map_table.to_string())
                .or_default()
                .extend(cells::id_map_puts(
                    legacy,
                    new_id,
                    room,
                    ctx.salt_buckets,
                    c.version_ms,
                    d.family,
                ));
        }
    }

    /// Removes a row's state as of `at` from HBase, with its id-map rows (the
    /// legacy → new row only when `legacy_too`: otherwise a put rewrites it),
    /// and, when `event`, appends the removal event.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn remove_row(
        &mut self,
        b: &Canonical,
        at: u64,
        d: &Dest<'_>,
        ctx: &MapContext,
        legacy_too: bool,
        event: Option<&Origin<'_>>,
    ) {
        self.deletes
            .entry(d.hbase_table.to_string())
            .or_default()
            .push(cells::row_delete(&b.row_key, at));
        if let Some((legacy, new_id, _)) = b.id_pair {
            let del = self.deletes.entry(d.id_map_table.to_string()).or_default();
            del.push(cells::row_delete(
                &keys::id_map_new(ctx.salt_buckets, new_id),
                at,
            ));
            if legacy_too {
                del.push(cells::row_delete(
                    &keys::id_map_legacy(ctx.salt_buckets, legacy),
                    at,
                ));
            }
        }
        if let Some(origin) = event {
            let ev = event::encode_removal(b.kind, &b.key, b.id_pair.map(|x| x.1), at, origin);
            self.event(d.topic, b.partition_key, ev);
        }
    }
}

/// Columns that held a value in `before` and are NULL in `after`.
pub(crate) fn nulled(before: &Canonical, after: &Canonical) -> Vec<&'static str> {
    before
        .cells
        .iter()
        .filter(|x| x.value.is_some())
        .filter(|x| {
            after
                .cells
                .iter()
                .any(|y| y.name == x.name && y.value.is_none())
        })
        .map(|x| x.name)
        .collect()
}

/// Every NULL column of a row (no before image: any of them may have held a value).
pub(crate) fn all_null(c: &Canonical) -> Vec<&'static str> {
    c.cells
        .iter()
        .filter(|x| x.value.is_none())
        .map(|x| x.name)
        .collect()
}

impl Work for Batch {
    async fn write(&mut self, unit: &mut Unit<'_>) -> Result<Option<Marker>> {
        for d in &self.dead {
            unit.dead_letter(d.clone());
        }
        if !self.puts.is_empty() || !self.deletes.is_empty() {
            unit.hbase(HbaseJob::Mutations {
                puts: self
                    .puts
                    .iter()
                    .map(|(t, v)| (t.clone(), v.clone()))
                    .collect(),
                deletes: self
                    .deletes
                    .iter()
                    .map(|(t, v)| (t.clone(), v.clone()))
                    .collect(),
            })
            .await?;
        }
        for (topic, key, payload) in &self.records {
            unit.send(topic, key.as_bytes(), payload).await?;
        }
        Ok(self.marker.clone())
    }
}
