//! The Kafka side: each topic's committed events (`read_committed`) folded to
//! every key's latest state, partition by partition (records are keyed by
//! room or account, so a key's events are in one partition, in order). A hard
//! delete as the latest event means the row is absent. A partition with more
//! events than `memory_rows` is folded through spill files on disk, one
//! bucket range at a time, so memory stays bounded whatever the topic's size.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::digest::{bucket, RowHasher};
use super::rows::{Filter, Locator, Pass, TargetCell, TargetRow};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::pipeline::commit::{retry_blocking, RetryPolicy};

/// Removes the spill files of verify runs no longer alive (a run killed
/// with -9 leaves its files; their names carry the process id).
pub fn remove_stale_spills(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("falcon-verify-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if name.ends_with(".spill")
                && (pid == std::process::id()
                    || !std::path::Path::new(&format!("/proc/{pid}")).exists())
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Removes this run's spill files and exits 130 on Ctrl-C or SIGTERM:
/// verify writes nothing that a stop in the middle leaves half done (a
/// repair's Kafka transaction is aborted; its HBase puts are idempotent).
pub fn clean_spills_on_interrupt(dir: std::path::PathBuf) {
    let mut signals = crate::pipeline::Signals::listen();
    tokio::spawn(async move {
        if signals.next().await {
            remove_stale_spills(&dir);
            tracing::warn!("verify interrupted: spill files removed, nothing reported");
            std::process::exit(crate::error::exit::INTERRUPTED);
        }
    });
}

/// How long an open transaction may hold back the end of a partition.
const OPEN_TX_WAIT: Duration = Duration::from_secs(70);

#[derive(Debug, Clone)]
pub struct KafkaTable {
    pub source: String,
    pub topic: String,
}

/// The fields of an event that carry the row.
#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(borrow)]
    key: Text<'a>,
    #[serde(default)]
    hard: bool,
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
}

struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_str(ValueText)
            .and_then(|v| v.map(Text).ok_or_else(|| de::Error::custom("key is null")))
    }
}

/// `data` as (column, text) pairs: numbers as decimal text, NULL as None.
struct Data<'a>(Vec<(Cow<'a, str>, Option<Cow<'a, str>>)>);

struct ValueText;

impl<'de> Visitor<'de> for ValueText {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number, boolean or null")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(if v { "true" } else { "false" })))
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
}

struct Value<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Value<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(ValueText).map(Value)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Data<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Data<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of columns")
            }
            fn visit_map<M: MapAccess<'de>>(
                self,
                mut m: M,
            ) -> std::result::Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(8);
                while let Some(k) = m.next_key::<Text<'de>>()? {
                    let v: Value<'de> = m.next_value()?;
                    out.push((k.0, v.0));
                }
                Ok(Data(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The row an event leaves behind: None after a hard delete.
fn fold_event(
    hasher: &mut RowHasher,
    table: &str,
    m: &BorrowedMessage<'_>,
) -> Result<(String, Option<TargetRow>)> {
    let payload = m.payload().unwrap_or_default();
    let ev: EventView<'_> = serde_json::from_slice(payload).map_err(|e| {
        Error::kafka(
            format!("event at {}/{}@{}", m.topic(), m.partition(), m.offset()),
            format!("not a v1 event: {e}"),
        )
    })?;
    let key = ev.key.0.into_owned();
    let data = match (ev.hard, ev.data) {
        (false, Some(d)) => d,
        _ => return Ok((key, None)),
    };
    let mut cells: Vec<TargetCell> = data
        .0
        .into_iter()
        .filter_map(|(n, v)| {
            v.map(|v| TargetCell {
                name: n.into_owned().into_bytes(),
                value: v.into_owned().into_bytes(),
                ts: 0,
            })
        })
        .collect();
    cells.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    hasher.begin(table, &key);
    for c in &cells {
        hasher.cell(&c.name, &c.value);
    }
    let hash = hasher.finish(None);
    let row = TargetRow {
        key: key.clone(),
        cells,
        hash,
        at: Locator::Kafka {
            partition: m.partition(),
            record_key: m.key().unwrap_or_default().to_vec(),
        },
    };
    Ok((key, Some(row)))
}

fn consumer(cfg: &KafkaConfig) -> Result<BaseConsumer> {
    crate::sink::kafka::consumer_config(cfg, "falcon-verify", "read_committed")
        .create()
        .map_err(|e| Error::kafka("verify consumer", e))
}

/// The topic's partitions; a missing topic is a usage error (nothing to compare with).
pub fn partitions(cfg: &KafkaConfig, topic: &str) -> Result<Vec<i32>> {
    let c = consumer(cfg)?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| Error::Unreachable {
            what: "Kafka",
            target: cfg.brokers.clone(),
            message: e.to_string(),
        })?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        return Err(Error::Usage(format!(
            "Kafka topic {topic} does not exist (has base run?)"
        )));
    }
    Ok(parts)
}

/// Reads one partition's committed records from `from` to its end, calling
/// `f` for each; returns the offset it stopped at.
pub fn consume(
    cfg: &KafkaConfig,
    topic: &str,
    partition: i32,
    from: Option<i64>,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> Result<()>,
) -> Result<i64> {
    let c = consumer(cfg)?;
    let ctx = || format!("read {topic}/{partition}");
    let policy = RetryPolicy::default();
    let (low, high) = retry_blocking(&policy, &ctx(), || {
        c.fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(|e| Error::kafka(ctx(), e))
    })?;
    let start = from.unwrap_or(low).max(low);
    if start >= high {
        return Ok(start);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(|e| Error::kafka(ctx(), e))?;
    c.assign(&tpl).map_err(|e| Error::kafka(ctx(), e))?;
    let position = |c: &BaseConsumer| {
        c.position()
            .ok()
            .and_then(|p| {
                p.find_partition(topic, partition)
                    .and_then(|e| e.offset().to_raw())
            })
            .unwrap_or(start)
    };
    let mut progress = Instant::now();
    // Since the first of the consumer's transient errors not followed by a record.
    let mut failing: Option<Instant> = None;
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                super::failpoint_read_delay();
                f(&m)?;
                progress = Instant::now();
                failing = None;
                if m.offset() + 1 >= high {
                    return Ok(m.offset() + 1);
                }
            }
            Some(Err(e)) => {
                // A broker restarting: the consumer reconnects by itself and
                // goes on from its position; the same retry decision and
                // budget as every other read.
                let e = Error::kafka(ctx(), e);
                let since = *failing.get_or_insert_with(Instant::now);
                if !e.is_transient() || since.elapsed() > policy.budget {
                    return Err(e);
                }
                tracing::warn!("{e}: waiting for the broker");
                // An outage is no open transaction.
                progress = Instant::now();
            }
            None => {
                // The position moves past transaction markers too.
                let pos = position(&c);
                if pos >= high {
                    return Ok(pos);
                }
                // Short of the high watermark with nothing to read: a
                // transaction is still open, its records are not committed
                // (or the broker is away: its watermarks do not answer).
                if progress.elapsed() > OPEN_TX_WAIT {
                    if c.fetch_watermarks(topic, partition, Duration::from_secs(10))
                        .is_err()
                    {
                        progress = Instant::now();
                        continue;
                    }
                    tracing::warn!(
                        topic,
                        partition,
                        pos,
                        high,
                        "stopping before an open transaction"
                    );
                    return Ok(pos);
                }
            }
        }
    }
}

/// One table's pass: the pass and where each partition was read up to.
pub struct KafkaPass {
    pub pass: Pass<TargetRow>,
    pub ends: Vec<(i32, i64)>,
}

/// Digests (and, for a drill-down, rows) of every topic.
pub fn pass(
    cfg: &KafkaConfig,
    tables: &[KafkaTable],
    filters: &[Filter],
    workers: usize,
    memory_rows: u64,
    spill_dir: &std::path::Path,
) -> Result<Vec<KafkaPass>> {
    let mut q = VecDeque::new();
    for (ti, t) in tables.iter().enumerate() {
        for p in partitions(cfg, &t.topic)? {
            q.push_back((ti, p));
        }
    }
    let n = q.len();
    let queue = Mutex::new(q);
    type Part = (usize, i32, i64, Pass<TargetRow>);
    let results: Vec<Result<Vec<Part>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.clamp(1, n.max(1)))
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Part>> {
                    let mut out = Vec::new();
                    loop {
                        let next = queue
                            .lock()
                            .map_err(|_| Error::Other("queue poisoned".into()))?
                            .pop_front();
                        let Some((ti, p)) = next else {
                            return Ok(out);
                        };
                        let (end, pass) = fold_partition(
                            cfg,
                            &tables[ti],
                            p,
                            &filters[ti],
                            memory_rows,
                            spill_dir,
                        )?;
                        out.push((ti, p, end, pass));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Other("Kafka reader thread panicked".into())))
            })
            .collect()
    });
    let mut out: Vec<KafkaPass> = filters
        .iter()
        .map(|f| KafkaPass {
            pass: Pass::new(f.buckets),
            ends: Vec::new(),
        })
        .collect();
    for r in results {
        for (ti, p, end, pass) in r? {
            out[ti].pass.merge(pass);
            out[ti].ends.push((p, end));
        }
    }
    for o in &mut out {
        o.ends.sort_unstable();
    }
    Ok(out)
}

fn fold_partition(
    cfg: &KafkaConfig,
    t: &KafkaTable,
    p: i32,
    f: &Filter,
    memory_rows: u64,
    spill_dir: &std::path::Path,
) -> Result<(i64, Pass<TargetRow>)> {
    let mut hasher = RowHasher::default();
    let mut out = Pass::new(f.buckets);
    if f.keeps_rows() {
        // A drill-down keeps only the wanted buckets' keys: bounded by them.
        let mut latest: HashMap<String, Option<TargetRow>> = HashMap::new();
        let end = consume(cfg, &t.topic, p, None, |m| {
            let (key, row) = fold_event(&mut hasher, &t.source, m)?;
            if f.admits(&key).is_some() {
                latest.insert(key, row);
            }
            Ok(())
        })?;
        for (key, row) in latest {
            if let Some(row) = row {
                let b = bucket(&key, f.buckets);
                out.rows += 1;
                out.digests[b as usize].add(row.hash);
                out.kept.entry(key).or_default().push(row);
            }
        }
        return Ok((end, out));
    }
    let c = consumer(cfg)?;
    let what = format!("watermarks of {}/{p}", t.topic);
    let (low, high) = retry_blocking(&RetryPolicy::default(), &what, || {
        c.fetch_watermarks(&t.topic, p, Duration::from_secs(10))
            .map_err(|e| Error::kafka(what.clone(), e))
    })?;
    drop(c);
    let events = (high - low).max(0) as u64;
    if events <= memory_rows {
        let mut latest: HashMap<String, Option<u128>> = HashMap::new();
        let end = consume(cfg, &t.topic, p, None, |m| {
            let (key, row) = fold_event(&mut hasher, &t.source, m)?;
            if f.admits(&key).is_some() {
                latest.insert(key, row.map(|r| r.hash));
            }
            Ok(())
        })?;
        for (key, h) in latest {
            if let Some(h) = h {
                out.rows += 1;
                out.digests[bucket(&key, f.buckets) as usize].add(h);
            }
        }
        return Ok((end, out));
    }
    // Spill: each file holds the events of a share of the buckets, in log
    // order, and is folded on its own.
    let files = events.div_ceil(memory_rows.max(1)).max(2) as u32;
    let paths: Vec<PathBuf> = (0..files)
        .map(|i| {
            spill_dir.join(format!(
                "falcon-verify-{}-{}-{p}-{i}.spill",
                std::process::id(),
                t.topic
            ))
        })
        .collect();
    let io = |e: std::io::Error| Error::io(format!("spill file in {}", spill_dir.display()), e);
    let mut writers: Vec<BufWriter<std::fs::File>> = paths
        .iter()
        .map(|p| {
            crate::checkpoint::private_file(p, false).map(|f| BufWriter::with_capacity(1 << 16, f))
        })
        .collect::<Result<_>>()?;
    tracing::info!(topic = %t.topic, partition = p, events, files, "folding through spill files");
    let result = (|| -> Result<i64> {
        let end = consume(cfg, &t.topic, p, None, |m| {
            let (key, row) = fold_event(&mut hasher, &t.source, m)?;
            let Some(b) = f.admits(&key) else {
                return Ok(());
            };
            let w = &mut writers[(b % files) as usize];
            let rec = spill_record(&key, row.map(|r| r.hash));
            w.write_all(&rec).map_err(io)
        })?;
        for w in &mut writers {
            w.flush().map_err(io)?;
        }
        for path in &paths {
            let mut latest: HashMap<String, Option<u128>> = HashMap::new();
            let mut r = BufReader::with_capacity(1 << 16, std::fs::File::open(path).map_err(io)?);
            while let Some((key, h)) = read_spill(&mut r).map_err(io)? {
                latest.insert(key, h);
            }
            for (key, h) in latest {
                if let Some(h) = h {
                    out.rows += 1;
                    out.digests[bucket(&key, f.buckets) as usize].add(h);
                }
            }
        }
        Ok(end)
    })();
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    Ok((result?, out))
}

fn spill_record(key: &str, h: Option<u128>) -> Vec<u8> {
    let mut rec = Vec::with_capacity(key.len() + 21);
    rec.extend_from_slice(&(key.len() as u32).to_le_bytes());
    rec.extend_from_slice(key.as_bytes());
    match h {
        Some(h) => {
            rec.push(1);
            rec.extend_from_slice(&h.to_le_bytes());
        }
        None => rec.push(0),
    }
    rec
}

fn read_spill(r: &mut impl Read) -> std::io::Result<Option<(String, Option<u128>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut key = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut key)?;
    let mut flag = [0u8; 1];
    r.read_exact(&mut flag)?;
    let h = if flag[0] == 1 {
        let mut b = [0u8; 16];
        r.read_exact(&mut b)?;
        Some(u128::from_le_bytes(b))
    } else {
        None
    };
    let key = String::from_utf8(key)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some((key, h)))
}

/// Reads the events appended after `ends` for these keys only, and applies
/// them to `kept` (the re-check of a drill-down's rows). Returns the new ends.
pub fn catch_up(
    cfg: &KafkaConfig,
    t: &KafkaTable,
    ends: &[(i32, i64)],
    keys: &HashSet<String>,
    kept: &mut HashMap<String, Vec<TargetRow>>,
) -> Result<Vec<(i32, i64)>> {
    let mut hasher = RowHasher::default();
    let mut out = Vec::new();
    for &(p, from) in ends {
        let end = consume(cfg, &t.topic, p, Some(from), |m| {
            let (key, row) = fold_event(&mut hasher, &t.source, m)?;
            if keys.contains(&key) {
                let rows = kept.entry(key).or_default();
                rows.retain(
                    |r| !matches!(&r.at, Locator::Kafka { partition, .. } if *partition == p),
                );
                rows.extend(row);
            }
            Ok(())
        })?;
        out.push((p, end));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_reads_as_text_with_nulls_absent() {
        let ev: EventView<'_> = serde_json::from_slice(
            br#"{"v":1,"key":"42","deleted":false,"data":{"room_id":7,"body":"a\"b","name":null,"deleted":-1},"source":{"phase":"base"}}"#,
        )
        .unwrap();
        assert_eq!(ev.key.0, "42");
        assert!(!ev.hard);
        let d = ev.data.unwrap().0;
        let get = |n: &str| d.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("room_id").as_deref(), Some("7"));
        assert_eq!(get("body").as_deref(), Some("a\"b"));
        assert_eq!(get("name"), None);
        assert_eq!(get("deleted").as_deref(), Some("-1"));
        let hard: EventView<'_> =
            serde_json::from_slice(br#"{"key":"42","hard":true,"data":null}"#).unwrap();
        assert!(hard.hard && hard.data.is_none());
    }

    #[test]
    fn spill_records_round_trip() {
        let mut buf = spill_record("12:34", Some(u128::MAX - 5));
        buf.extend(spill_record("9", None));
        let mut r = &buf[..];
        assert_eq!(
            read_spill(&mut r).unwrap(),
            Some(("12:34".to_string(), Some(u128::MAX - 5)))
        );
        assert_eq!(read_spill(&mut r).unwrap(), Some(("9".to_string(), None)));
        assert_eq!(read_spill(&mut r).unwrap(), None);
    }
}
