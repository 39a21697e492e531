//! Copying chunks: each worker takes chunks from the shared queue, streams
//! their rows from MySQL in keyset batches, admits each row (the one
//! admission rule), and hands the events and HBase puts to its [`Committer`];
//! the chunk's marker commits with its events. Only then is the chunk
//! appended to the local done list.
//!
//! Throttling (`--max-rows-per-sec`, `--max-threads-running`) waits between
//! chunks, outside any transaction, and each batch of a chunk is its own short
//! keyset `SELECT`: no query and no Kafka transaction stays open through a
//! pause, however slow the budget.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;

use super::plan::Chunk;
use super::{bulk, Shared};
use crate::checkpoint::{ChunkDone, DeadLetter};
use crate::error::{Error, Result};
use crate::mapping::{Admission, SrcVal};
use crate::pipeline::commit::{Committer, HbaseJob, Marker, Unit, Work};
use crate::pipeline::runlog::ChunkMarker;
use crate::sink::hbase::wire::PutBuf;
use crate::sink::kafka::event;

/// Rows per batch (one `SELECT`, one HBase call, one rate-limit grant).
const BATCH_ROWS: u64 = 1000;
/// Or fewer rows when their cells add up to this many bytes.
const BATCH_BYTES: usize = 4 << 20;

/// One worker: chunks from the queue until it is empty or the run stops.
pub(super) async fn worker(sh: Arc<Shared>, mut committer: Committer) -> Result<()> {
    let mut admission = Admission::new(sh.rooms.clone(), sh.cfg.kafka.message_max_bytes);
    loop {
        if sh.stop.load(Ordering::SeqCst) || sh.sample_taken() {
            return Ok(());
        }
        let Some(chunk) = sh
            .queue
            .lock()
            .map_err(|_| Error::Other("queue poisoned".into()))?
            .pop_front()
        else {
            return Ok(());
        };
        let t = &sh.tables[chunk.table];
        wait_while_paused(&sh).await?;
        let what = format!(
            "table {} chunk {} [{}, {})",
            t.mapping.source, chunk.k, chunk.lo, chunk.hi
        );
        let mut work = ChunkWork {
            sh: &sh,
            chunk: &chunk,
            admission: &mut admission,
            done: None,
        };
        match committer.commit(&what, &mut work).await {
            Ok(()) => {}
            Err(Error::Interrupted) => return Ok(()),
            Err(e) => return Err(e),
        }
        let done = work.done.take().expect("a committed chunk has its counts");
        {
            let mut log = sh
                .done
                .lock()
                .map_err(|_| Error::Other("checkpoint lock poisoned".into()))?;
            log.append(&done)?;
            log.sync()?;
        }
        t.counters.read.fetch_add(done.read, Ordering::Relaxed);
        t.counters.kafka.fetch_add(done.kafka, Ordering::Relaxed);
        t.counters.hbase.fetch_add(done.hbase, Ordering::Relaxed);
        t.counters.dead.fetch_add(done.dead, Ordering::Relaxed);
        t.counters.chunks_done.fetch_add(1, Ordering::Relaxed);
        record_metrics(&sh, &done);
        // The rate budget is paid after the chunk, before the next one begins.
        if let Some(l) = &sh.limiter {
            l.acquire(done.read).await;
        }
    }
}

/// A committed chunk's counts in the Prometheus metrics.
fn record_metrics(sh: &Shared, done: &ChunkDone) {
    let written: Vec<(&str, u64)> = [
        (sh.opts.targets.kafka, "kafka", done.kafka),
        (sh.opts.targets.hbase, "hbase", done.hbase),
    ]
    .into_iter()
    .filter(|(on, ..)| *on)
    .map(|(_, target, n)| (target, n))
    .collect();
    let table = done.table.as_str();
    crate::metrics::committed_rows("base", table, done.read, &written, done.dead);
    crate::metrics::inc(&crate::metrics::CHUNKS_DONE, &[table], 1);
}

/// One chunk as a unit of work.
struct ChunkWork<'a> {
    sh: &'a Shared,
    chunk: &'a Chunk,
    admission: &'a mut Admission,
    /// The counts of the last attempt.
    done: Option<ChunkDone>,
}

impl Work for ChunkWork<'_> {
    async fn write(&mut self, unit: &mut Unit<'_>) -> Result<Option<Marker>> {
        let (sh, chunk) = (self.sh, self.chunk);
        let t = &sh.tables[chunk.table];
        let name = t.mapping.source.as_str();
        let family = sh.cfg.hbase.column_family.as_bytes();
        let position = sh.record.start_position.to_string();
        let origin = event::Origin {
            phase: "base",
            run: &sh.opts.run_id,
            position: &position,
        };
        let mut done = ChunkDone {
            table: name.to_string(),
            chunk: chunk.k,
            read: 0,
            kafka: 0,
            hbase: 0,
            dead: 0,
        };
        let mut ev = Vec::with_capacity(1024);
        if let Some(s) = unit.stager() {
            s.begin(&bulk::unit_name(name, chunk.k))?;
        }
        // Keyset batches: `after` is the last key read (the full primary key).
        let mut after: Option<Vec<SrcVal>> = None;
        loop {
            if sh.stop.load(Ordering::SeqCst) {
                return Err(Error::Interrupted);
            }
            let rows = t.read_batch(&sh.pool, chunk, after.as_deref(), BATCH_ROWS);
            let rows: Vec<_> = rows
                .try_collect()
                .await
                .map_err(|e| Error::mysql(format!("read {name} chunk {}", chunk.k), e))?;
            let n = rows.len() as u64;
            let mut main = PutBuf::default();
            let mut ids = PutBuf::default();
            for row in &rows {
                let vals = t
                    .spec
                    .decode(row)
                    .map_err(|e| Error::mysql(format!("decode a row of {name}"), e))?;
                done.read += 1;
                let evt = unit.to_kafka().then_some((&origin, &mut ev));
                match self
                    .admission
                    .admit(t.spec.kind, &vals, &sh.ctx, evt)
                    .await?
                {
                    Err(why) => {
                        done.dead += 1;
                        let mut d = DeadLetter::new(name, t.spec, &vals, why);
                        d.chunk = Some(chunk.k);
                        unit.dead_letter(d.encode()?);
                    }
                    Ok(c) => {
                        if unit.to_kafka() {
                            let key = c.partition_key.to_string();
                            unit.send(&t.mapping.topic, key.as_bytes(), &ev).await?;
                            done.kafka += 1;
                        }
                        if let Some(s) = unit.stager() {
                            s.push_canonical(&t.mapping.hbase_table, &c, family)?;
                            if let Some(pair) = c.id_pair {
                                s.push_id_map(
                                    &sh.cfg.hbase.id_map_table,
                                    pair,
                                    sh.ctx.salt_buckets,
                                    c.version_ms,
                                    family,
                                )?;
                            }
                            done.hbase += 1;
                        } else if unit.to_hbase() {
                            main.push_canonical(&c, family);
                            if let Some((legacy, new_id, room)) = c.id_pair {
                                ids.push_id_map(
                                    legacy,
                                    new_id,
                                    room,
                                    sh.ctx.salt_buckets,
                                    c.version_ms,
                                    family,
                                );
                            }
                            done.hbase += 1;
                        }
                    }
                }
                if main.bytes() + ids.bytes() >= BATCH_BYTES {
                    flush(
                        unit,
                        sh,
                        t.mapping.hbase_table.as_str(),
                        &mut main,
                        &mut ids,
                    )
                    .await?;
                }
            }
            flush(
                unit,
                sh,
                t.mapping.hbase_table.as_str(),
                &mut main,
                &mut ids,
            )
            .await?;
            if n < BATCH_ROWS {
                break;
            }
            let last = rows.last().expect("a full batch");
            after = Some(t.key_of_row(last)?);
        }
        let marker = ChunkMarker {
            done: done.clone(),
            run: sh.opts.run_id.clone(),
            shard: sh.opts.shard.to_string(),
            committed_ms: super::now_ms(),
        };
        let payload = serde_json::to_vec(&marker).map_err(|e| Error::Other(e.to_string()))?;
        self.done = Some(done);
        Ok(Some(Marker {
            key: sh.scope.chunk_key(name, chunk.k),
            payload,
        }))
    }
}

async fn flush(
    unit: &mut Unit<'_>,
    sh: &Shared,
    table: &str,
    main: &mut PutBuf,
    ids: &mut PutBuf,
) -> Result<()> {
    if main.is_empty() && ids.is_empty() {
        return Ok(());
    }
    let mut work = vec![(table.to_string(), std::mem::take(main))];
    if !ids.is_empty() {
        work.push((sh.cfg.hbase.id_map_table.clone(), std::mem::take(ids)));
    }
    unit.hbase(HbaseJob::Encoded(work)).await
}

/// Waits while the source is busy (`--max-threads-running`); stops on interrupt.
async fn wait_while_paused(sh: &Shared) -> Result<()> {
    while sh.paused.load(Ordering::Relaxed) && !sh.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// A global rows-per-second budget shared by all workers.
pub(super) struct RateLimiter {
    per_row: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimiter {
    pub(super) fn new(rate: u64) -> Self {
        RateLimiter {
            per_row: Duration::from_secs_f64(1.0 / rate.max(1) as f64),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn acquire(&self, rows: u64) {
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.per_row.mul_f64(rows as f64);
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Pauses the copy while the source is busier than `limit` running threads.
pub(super) async fn watch_threads_running(sh: Arc<Shared>, limit: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let v: std::result::Result<(String, String), _> =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Threads_running'")
                .fetch_one(&sh.pool)
                .await;
        let Ok((_, v)) = v else { continue };
        let running: u64 = v.parse().unwrap_or(0);
        let busy = running > limit;
        if sh.paused.swap(busy, Ordering::SeqCst) != busy {
            if busy {
                tracing::warn!(
                    threads_running = running,
                    limit,
                    "source busy: pausing the copy"
                );
            } else {
                tracing::info!(
                    threads_running = running,
                    limit,
                    "source calm: resuming the copy"
                );
            }
        }
    }
}
