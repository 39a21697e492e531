//! Row changes → a [`Batch`]: each binlog change is admitted by the one
//! admission rule and turned into the writes that bring both targets to the
//! row's new state; then the committer's pipeline writes the batch with the
//! marker of the position after it (its HBase writes overlapping the previous
//! batch's Kafka commit), and only once its commit is known to have gone
//! through is the local checkpoint rewritten.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::batch::{all_null, nulled, Batch, Dest};
use super::{Checkpoint, Histogram};
use crate::checkpoint::{write_json_atomic, DeadLetter};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mapping::{self, Admission, MapContext};
use crate::pipeline::base::now_ms;
use crate::pipeline::clock::WriteClock;
use crate::pipeline::commit::{Marker, Pipeline, Unit, Work};
use crate::position::Position;
use crate::sink::kafka::event;
use crate::source::binlog::{Item, Op, RowChange, SourceTx, TableSchema};

/// With nothing mapped to apply, the position is still committed this often,
/// so a restart does not rescan a long stretch of other tables' changes.
const IDLE_COMMIT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) struct Applier {
    pub(super) cfg: Config,
    pub(super) run_id: String,
    pub(super) marker_key: String,
    pub(super) schema: std::sync::Arc<Vec<TableSchema>>,
    pub(super) admission: Admission,
    pub(super) pipeline: Pipeline<Pending>,
    pub(super) floor_ms: u64,
    /// The HBase timestamp of every change (see `pipeline::clock`).
    pub(super) clock: WriteClock,
    pub(super) checkpoint_path: PathBuf,
    /// The checkpoint: a position, and changes of the transaction there
    /// already applied (non-zero only inside a transaction applied in parts).
    pub(super) committed: (Position, u64),
    /// The end of the last batch handed to the pipeline (its commit may
    /// still be under way).
    pub(super) pushed: (Position, u64),
    pub(super) seen: (Position, u64),
    pub(super) last_commit: Instant,
    // Counters of this invocation.
    pub(super) read: u64,
    pub(super) txs: u64,
    pub(super) applied: BTreeMap<(usize, &'static str), u64>,
    pub(super) dead_count: u64,
    pub(super) lag: Histogram,
    pub(super) latency: Histogram,
    pub(super) last_lag_ms: u64,
}

impl Applier {
    /// The mapping context of a change at `ts_s` whose writes are stamped at
    /// or above `min_version_ms`.
    fn ctx(&self, ts_s: u32, min_version_ms: u64) -> MapContext {
        MapContext {
            salt_buckets: self.cfg.hbase.salt_buckets,
            epoch_ms: self.cfg.ids.epoch_ms,
            default_version_ms: (u64::from(ts_s) * 1000).max(self.floor_ms),
            min_version_ms,
        }
    }

    fn checkpoint_at(&self, at: &(Position, u64)) -> Checkpoint {
        Checkpoint {
            run: self.run_id.clone(),
            position: at.0.clone(),
            skip: at.1,
            version_floor_ms: self.floor_ms,
            clock_ms: self.clock.last(),
            committed_ms: now_ms(),
            lag_ms: self.last_lag_ms,
        }
    }

    fn marker(&self, checkpoint: &Checkpoint) -> Result<Marker> {
        Ok(Marker {
            key: self.marker_key.clone(),
            payload: serde_json::to_vec(checkpoint).map_err(|e| Error::Other(e.to_string()))?,
        })
    }

    pub(super) async fn apply(&mut self, items: Vec<Item>) -> Result<()> {
        let mut txs: Vec<SourceTx> = Vec::new();
        for it in items {
            match it {
                Item::Tx(t) => {
                    self.seen = self.seen.clone().max(t.resume_at());
                    txs.push(t);
                }
                Item::Advanced(p) => self.seen = self.seen.clone().max((p, 0)),
            }
        }
        if txs.is_empty() {
            if self.seen > self.pushed && self.last_commit.elapsed() >= IDLE_COMMIT {
                self.commit_position_only().await?;
            }
            return Ok(());
        }
        let mut batch = Batch::default();
        let mut applied = Vec::new();
        let mut dead = 0u64;
        // Per table: (changes read, dead-lettered), for the metrics.
        let mut per_table: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        for t in &txs {
            for ch in &t.changes {
                let counts = per_table.entry(ch.table).or_default();
                counts.0 += 1;
                match self.plan(ch, &mut batch).await? {
                    Ok(label) => applied.push((ch.table, label)),
                    Err(line) => {
                        dead += 1;
                        counts.1 += 1;
                        batch.dead.push(line);
                    }
                }
            }
        }
        let end = self.seen.clone();
        if let Some(last) = txs.last() {
            // The marker records the batch's lag as of its sending.
            self.last_lag_ms = now_ms().saturating_sub(u64::from(last.ts_s) * 1000);
        }
        let pending = Pending {
            checkpoint: self.checkpoint_at(&end),
            end,
            batch,
            txs: txs
                .iter()
                .map(|t| (t.changes.len() as u64, t.ts_s, t.received))
                .collect(),
            applied,
            dead,
            per_table,
        };
        drop(txs);
        self.push(pending).await
    }

    /// Hands a batch to the pipeline, then records the batches now committed.
    async fn push(&mut self, mut pending: Pending) -> Result<()> {
        pending.batch.marker = Some(self.marker(&pending.checkpoint)?);
        let what = match pending.txs.is_empty() {
            true => format!("the diff position {}", show(&pending.end)),
            false => format!("the diff batch ending at {}", show(&pending.end)),
        };
        self.pushed = pending.end.clone();
        let done = self.pipeline.push(what, pending).await;
        self.committed_all(done)
    }

    /// Waits for the batch whose commit is under way, and records it.
    pub(super) async fn settle(&mut self) -> Result<()> {
        let done = self.pipeline.finish().await;
        self.committed_all(done)
    }

    fn committed_all(&mut self, done: Result<Vec<(Pending, u64)>>) -> Result<()> {
        let done = done.map_err(|e| match e {
            Error::Interrupted => e,
            e => Error::Other(format!(
                "{e} (checkpoint stays at {})",
                show(&self.committed)
            )),
        })?;
        for (p, at_ms) in done {
            self.committed(p, at_ms)?;
        }
        Ok(())
    }

    /// A batch whose Kafka transaction committed at `at_ms`: the local
    /// checkpoint, the counters, the lag.
    fn committed(&mut self, p: Pending, at_ms: u64) -> Result<()> {
        let mut cp = p.checkpoint;
        cp.committed_ms = at_ms;
        self.checkpoint(p.end, &cp)?;
        // How long ago, on the monotonic clock, the commit was seen.
        let since = now_ms().saturating_sub(at_ms);
        for (n, ts_s, received) in &p.txs {
            let lag = at_ms.saturating_sub(u64::from(*ts_s) * 1000);
            self.lag.add(lag, *n);
            let waited = (received.elapsed().as_millis() as u64).saturating_sub(since);
            self.latency.add(waited, *n);
            self.last_lag_ms = lag;
        }
        self.txs += p.txs.len() as u64;
        self.read += p.txs.iter().map(|t| t.0).sum::<u64>();
        for k in p.applied {
            *self.applied.entry(k).or_default() += 1;
        }
        self.dead_count += p.dead;
        self.record_metrics(&p.per_table);
        Ok(())
    }

    /// A committed batch in the Prometheus metrics: per table, changes read,
    /// written (to both targets) and dead-lettered; the position and lag.
    fn record_metrics(&self, per_table: &BTreeMap<usize, (u64, u64)>) {
        use crate::metrics::{committed_rows, set, DIFF_LAG};
        for (&t, &(read, dead)) in per_table {
            let table = self.schema[t].mapping.source.as_str();
            let written = read - dead;
            committed_rows(
                "diff",
                table,
                read,
                &[("kafka", written), ("hbase", written)],
                dead,
            );
        }
        set(&DIFF_LAG, &[], self.last_lag_ms as f64 / 1000.0);
    }

    /// Maps one change into the batch's writes: its label, or its dead letter.
    async fn plan(
        &mut self,
        ch: &RowChange,
        batch: &mut Batch,
    ) -> Result<std::result::Result<&'static str, Vec<u8>>> {
        let schema = self.schema.clone();
        let s = &schema[ch.table];
        let kind = s.kind();
        let spec = mapping::spec(kind);
        let table = s.mapping.source.as_str();
        let id_map = self.cfg.hbase.id_map_table.clone();
        let family = self.cfg.hbase.column_family.clone();
        let d = Dest {
            topic: &s.mapping.topic,
            hbase_table: &s.mapping.hbase_table,
            id_map_table: &id_map,
            family: family.as_bytes(),
        };
        let event_ms = u64::from(ch.ts_s) * 1000;
        // The old state goes at one stamp, the new one at a higher stamp:
        // both above every earlier change (see `pipeline::clock`).
        let old_ctx = self.ctx(ch.ts_s, event_ms.max(self.clock.floor()));
        let origin = event::Origin {
            phase: "diff",
            run: &self.run_id,
            position: &ch.position,
        };
        let image = match ch.op {
            Op::Delete => ch.before.as_ref(),
            _ => ch.after.as_ref(),
        }
        .ok_or_else(|| Error::Binlog {
            context: format!("at {}", ch.position),
            message: format!("a row event of {table} without its row image"),
        })?;
        let label = match ch.op {
            Op::Insert => "insert",
            Op::Delete => "hard_delete",
            Op::Update => {
                let del = spec.index_of("deleted");
                let was = del.and_then(|i| ch.before.as_ref().and_then(|b| b[i].as_i64()));
                let is = del.and_then(|i| image[i].as_i64());
                if is.is_some_and(|v| v != 0) && was == Some(0) {
                    "soft_delete"
                } else {
                    "update"
                }
            }
        };
        let before = ch
            .before
            .as_ref()
            .and_then(|b| mapping::canonical(kind, b, &old_ctx).ok());
        if let Some(b) = &before {
            self.clock.observe(b.version_ms);
        }
        let ctx = self.ctx(ch.ts_s, event_ms.max(self.clock.floor()));
        let dead_line = |why: mapping::Rejection| -> Result<Vec<u8>> {
            let mut line = DeadLetter::new(table, spec, image, why);
            line.position = Some(ch.position.clone());
            line.op = Some(label);
            line.encode()
        };
        if ch.op == Op::Delete {
            let b = match mapping::canonical(kind, image, &old_ctx) {
                Ok(b) => b,
                // The same mapping kept the row out of the targets: nothing to remove.
                Err(why) => return Ok(Err(dead_line(why)?)),
            };
            batch.remove_row(&b, b.version_ms, &d, &ctx, true, Some(&origin));
            return Ok(Ok(label));
        }
        let mut ev = Vec::with_capacity(512);
        let c = match self
            .admission
            .admit(kind, image, &ctx, Some((&origin, &mut ev)))
            .await?
        {
            Ok(c) => c,
            Err(mut why) => {
                // The new state cannot be written: the old one must not stay
                // live in the targets as if nothing had changed.
                if let Some(b) = &before {
                    batch.remove_row(b, b.version_ms, &d, &ctx, true, Some(&origin));
                    why.detail
                        .push_str("; the row's previous state was removed from the targets");
                }
                return Ok(Err(dead_line(why)?));
            }
        };
        let mut gone = Vec::new();
        if let Some(b) = &before {
            if b.row_key != c.row_key {
                // A key column changed (a message moved to another room, or
                // its send time was edited): the old row goes away.
                // A removal event too when the key or the partition changes:
                // a moved message leaves its old room's stream.
                let event =
                    (b.key != c.key || b.partition_key != c.partition_key).then_some(&origin);
                batch.remove_row(b, b.version_ms, &d, &ctx, b.key != c.key, event);
            } else {
                gone = nulled(b, &c);
            }
        } else if ch.op == Op::Update {
            gone = all_null(&c);
        }
        self.clock.observe(c.version_ms);
        batch.event(d.topic, c.partition_key, ev);
        batch.put_row(&c, &d, &ctx, &gone);
        Ok(Ok(label))
    }

    fn checkpoint(&mut self, end: (Position, u64), cp: &Checkpoint) -> Result<()> {
        write_json_atomic(&self.checkpoint_path, cp)?;
        if let Position::Binlog { file, offset, .. } = &end.0 {
            use crate::metrics::{set, DIFF_FILE, DIFF_LAST_BATCH, DIFF_OFFSET};
            let index = file.rsplit('.').next().and_then(|n| n.parse::<f64>().ok());
            set(&DIFF_FILE, &[], index.unwrap_or(0.0));
            set(&DIFF_OFFSET, &[], *offset as f64);
            set(&DIFF_LAST_BATCH, &[], now_ms() as f64 / 1000.0);
        }
        self.committed = end;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Records a position reached with nothing mapped to apply.
    pub(super) async fn commit_position_only(&mut self) -> Result<()> {
        let end = self.seen.clone();
        let pending = Pending {
            checkpoint: self.checkpoint_at(&end),
            end,
            batch: Batch::default(),
            txs: Vec::new(),
            applied: Vec::new(),
            dead: 0,
            per_table: BTreeMap::new(),
        };
        self.last_commit = Instant::now();
        self.push(pending).await
    }
}

/// A batch handed to the pipeline, with what is recorded once it committed.
pub(super) struct Pending {
    batch: Batch,
    /// The position after the batch, and its checkpoint (the marker's payload).
    end: (Position, u64),
    checkpoint: Checkpoint,
    /// Per source transaction: changes, commit time (s), arrival.
    txs: Vec<(u64, u32, Instant)>,
    applied: Vec<(usize, &'static str)>,
    dead: u64,
    per_table: BTreeMap<usize, (u64, u64)>,
}

impl Work for Pending {
    async fn write(&mut self, unit: &mut Unit<'_>) -> Result<Option<Marker>> {
        self.batch.write(unit).await
    }
}

/// `file:offset`, with the changes skipped inside a transaction applied in parts.
pub(super) fn show(at: &(Position, u64)) -> String {
    match at.1 {
        0 => at.0.to_string(),
        n => format!("{} (+{n} changes of its transaction)", at.0),
    }
}
