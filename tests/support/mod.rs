//! Shared by the integration tests: a job with its own source database,
//! topics and HBase tables, the real binary, and independent readers of both
//! targets.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use falcon_migrate::config::{Config, HbaseConfig};
use falcon_migrate::fixtures::generate::{generate, GenerateOptions};
use falcon_migrate::mapping::{self, keys, MapContext};
use falcon_migrate::sink::hbase::HbaseClient;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub const ADMIN: &str = "mysql://falcon_admin:falcon_admin@127.0.0.1:3306";
pub const THRIFT: &str = "127.0.0.1:9090";
pub const BROKERS: &str = "127.0.0.1:9092";

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Outcome {
    fn from(o: Output) -> Self {
        Outcome {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Outcome {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

pub struct Job {
    pub name: String,
    pub database: String,
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
    pub generated: serde_json::Value,
}

/// Creates `database` (dropping an older one) with the admin account.
pub async fn fresh_database(database: &str) {
    let pool = mysql_async::Pool::new(format!("{ADMIN}/legacy_chat").as_str());
    let mut c = pool
        .get_conn()
        .await
        .unwrap_or_else(|e| panic!("stack not up (run scripts/stack.sh up): {e}"));
    use mysql_async::prelude::Queryable;
    c.query_drop(format!("DROP DATABASE IF EXISTS `{database}`"))
        .await
        .unwrap();
    c.query_drop(format!(
        "CREATE DATABASE `{database}` CHARACTER SET utf8mb4"
    ))
    .await
    .unwrap();
    drop(c);
    pool.disconnect().await.unwrap();
}

impl Job {
    pub async fn new(name: &str, messages: u64, dirty: bool) -> Job {
        let tag = format!("{name}_{}", std::process::id());
        let database = format!("legacy_chat_t_{tag}");
        fresh_database(&database).await;
        let report = generate(
            &format!("{ADMIN}/{database}"),
            &GenerateOptions {
                messages,
                rooms: None,
                accounts: None,
                seed: 7,
                dirty,
            },
        )
        .await
        .expect("generate");
        let dir = std::env::temp_dir().join(format!("falcon-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut toml = format!(
            "[source]\nurl = \"mysql://falcon@127.0.0.1:3306/{database}\"\npassword_env = \"FALCON_MYSQL_PASSWORD\"\n\
             [kafka]\nbrokers = \"{BROKERS}\"\npartitions = 3\nprogress_topic = \"test.{tag}.progress\"\n\
             [hbase]\nthrift = \"{THRIFT}\"\nsalt_buckets = 2\nid_map_table = \"test_{tag}_id_map\"\n"
        );
        for t in ["account", "room", "room_member", "message"] {
            toml.push_str(&format!(
                "[[table]]\nsource = \"{t}\"\nkind = \"{t}\"\ntopic = \"test.{tag}.{t}\"\nhbase_table = \"test_{tag}_{t}\"\n"
            ));
        }
        let config_path = dir.join("falcon.toml");
        std::fs::write(&config_path, &toml).unwrap();
        let config = Config::parse(&toml, &config_path, |k| {
            (k == "FALCON_MYSQL_PASSWORD").then(|| "falcon".to_string())
        })
        .unwrap();
        Job {
            name: tag,
            database,
            state_dir: dir.join("state"),
            dir,
            config_path,
            config,
            generated: serde_json::to_value(report).unwrap(),
        }
    }

    pub fn base_command(&self, args: &[&str]) -> Command {
        self.migrate_command("base", args)
    }

    /// `base --hbase-load bulk` with small chunks and two workers (many
    /// chunks, so runs and HFiles come from several), `loader` as the
    /// bulk-load command and no failpoint.
    pub fn bulk_base_command(&self, loader: &str, args: &[&str]) -> Command {
        let mut all = vec![
            "--hbase-load",
            "bulk",
            "--workers",
            "2",
            "--chunk-rows",
            "700",
        ];
        all.extend_from_slice(args);
        let mut c = self.base_command(&all);
        c.env("FALCON_BULK_LOAD_COMMAND", loader)
            .env_remove("FALCON_FAILPOINT");
        c
    }

    pub fn base(&self, args: &[&str]) -> Outcome {
        Outcome::from(self.base_command(args).output().unwrap())
    }

    pub async fn pool(&self) -> sqlx::MySqlPool {
        sqlx::MySqlPool::connect(&format!("{ADMIN}/{}", self.database))
            .await
            .unwrap()
    }

    pub async fn source_counts(&self) -> HashMap<String, u64> {
        let pool = self.pool().await;
        let mut out = HashMap::new();
        for t in &self.config.tables {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM `{}`", t.source))
                .fetch_one(&pool)
                .await
                .unwrap();
            out.insert(t.source.clone(), n as u64);
        }
        out
    }

    pub async fn source_bodies(&self) -> HashMap<u64, Vec<u8>> {
        let pool = self.pool().await;
        let rows: Vec<(u64, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT message_id, body FROM message")
                .fetch_all(&pool)
                .await
                .unwrap();
        rows.into_iter()
            .filter_map(|(id, b)| b.map(|b| (id, b)))
            .collect()
    }

    pub fn hbase_table(&self, source: &str) -> String {
        self.config.table(source).unwrap().hbase_table.clone()
    }

    pub fn hbase(&self) -> HbaseClient {
        HbaseClient::connect(&HbaseConfig::plain(THRIFT)).expect("HBase Thrift2 gateway")
    }

    /// Row keys in the HBase table of `source`.
    pub fn hbase_rows(&self, source: &str) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        self.hbase()
            .scan(&self.hbase_table(source), None, None, 1000, |r| {
                keys.push(r.row.unwrap_or_default());
                Ok(())
            })
            .unwrap();
        keys
    }

    pub fn hbase_message_bodies(&self) -> HashMap<u64, Vec<u8>> {
        let mut out = HashMap::new();
        self.hbase()
            .scan(&self.hbase_table("message"), None, None, 1000, |r| {
                let cell = |q: &str| {
                    r.column_values
                        .iter()
                        .find(|c| c.qualifier == q.as_bytes())
                        .map(|c| c.value.clone())
                };
                let id: u64 = String::from_utf8(cell("message_id").unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                if let Some(b) = cell("body") {
                    out.insert(id, b);
                }
                Ok(())
            })
            .unwrap();
        out
    }

    /// Every committed event of `source`'s topic, in order.
    pub fn kafka_all(&self, source: &str) -> Vec<serde_json::Value> {
        self.kafka_all_in_partitions(source)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Every committed event of `source`'s topic with its partition, in order
    /// within each partition.
    pub fn kafka_all_in_partitions(&self, source: &str) -> Vec<(i32, serde_json::Value)> {
        let topic = self.config.table(source).unwrap().topic.clone();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("group.id", format!("test-{}", self.name))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let mut tpl = TopicPartitionList::new();
        let mut high = HashMap::new();
        for p in &parts {
            tpl.add_partition_offset(&topic, *p, Offset::Beginning)
                .unwrap();
            high.insert(
                *p,
                consumer
                    .fetch_watermarks(&topic, *p, Duration::from_secs(10))
                    .unwrap()
                    .1,
            );
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pos = consumer.position().unwrap();
            let caught_up = parts.iter().all(|p| {
                let o = pos
                    .find_partition(&topic, *p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(0);
                o >= high[p] || high[p] == 0
            });
            if caught_up {
                break;
            }
            assert!(Instant::now() < deadline, "timed out reading {topic}");
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                out.push((
                    m.partition(),
                    serde_json::from_slice(m.payload().unwrap()).unwrap(),
                ));
            }
        }
        out
    }

    /// Latest committed event per key: per partition (a key's events of one
    /// room are in one partition, in order), the live one where a partition
    /// holds the key live (a message moved to another room is removed from
    /// its old room's partition). A key live in two partitions is a duplicate.
    pub fn kafka_events(&self, source: &str) -> HashMap<String, serde_json::Value> {
        let mut latest: HashMap<(String, i32), serde_json::Value> = HashMap::new();
        for (p, v) in self.kafka_all_in_partitions(source) {
            latest.insert((v["key"].as_str().unwrap().to_string(), p), v);
        }
        let mut out: HashMap<String, serde_json::Value> = HashMap::new();
        for ((k, p), v) in latest {
            let live = !v["data"].is_null();
            match out.get(&k) {
                Some(prev) if !prev["data"].is_null() => {
                    assert!(
                        !live,
                        "{source} key {k} live in two partitions (one is {p})"
                    );
                }
                Some(_) if !live => {}
                _ => {
                    out.insert(k, v);
                }
            }
        }
        out
    }

    pub fn kafka_event_count(&self, source: &str) -> u64 {
        self.kafka_all(source).len() as u64
    }

    /// The base's start time (the stamp of rows without a version column):
    /// from this job's state dir, or, for shards run as other machines (their
    /// own state dirs under the job's folder), the latest of theirs.
    fn start_ts_ms(&self) -> u64 {
        let p = self.state_dir.join("base/base/shard-0-of-1.json");
        let read = |p: &std::path::Path| -> Option<u64> {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
            v["start_ts_ms"].as_u64()
        };
        if let Some(t) = read(&p) {
            return t;
        }
        let mut latest = None;
        for machine in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let dir = machine.path().join("base/base");
            for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with("shard-") && name.ends_with(".json") {
                    latest = latest.max(read(&f.path()));
                }
            }
        }
        latest.expect("a base run record in the job's folder")
    }

    /// What HBase must hold after a complete base run, computed from the
    /// source with the mapping: `table/rowkey-hex` → qualifier → (value, ts).
    pub async fn expected_hbase(&self) -> BTreeMap<String, BTreeMap<String, (Vec<u8>, i64)>> {
        let ctx = MapContext {
            salt_buckets: self.config.hbase.salt_buckets,
            epoch_ms: self.config.ids.epoch_ms,
            default_version_ms: self.start_ts_ms(),
            min_version_ms: 0,
        };
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .after_connect(|c, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION sql_mode=''")
                        .execute(c)
                        .await
                        .map(|_| ())
                })
            })
            .connect(&format!("{ADMIN}/{}", self.database))
            .await
            .unwrap();
        let rooms: std::collections::HashSet<u64> = sqlx::query_scalar("SELECT room_id FROM room")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let mut out = BTreeMap::new();
        for t in &self.config.tables {
            let spec = mapping::spec(t.kind);
            let rows = sqlx::query(&format!(
                "SELECT {} FROM `{}`",
                spec.select_list(),
                t.source
            ))
            .fetch_all(&pool)
            .await
            .unwrap();
            for r in rows {
                let vals = spec.decode(&r).unwrap();
                let Ok(c) = mapping::canonical(t.kind, &vals, &ctx) else {
                    continue;
                };
                if mapping::required_room(t.kind, &vals).is_some_and(|room| !rooms.contains(&room))
                {
                    continue;
                }
                let cells: BTreeMap<String, (Vec<u8>, i64)> = c
                    .cells
                    .iter()
                    .filter_map(|x| {
                        x.value.as_ref().map(|v| {
                            (
                                x.name.to_string(),
                                (v.as_bytes().to_vec(), c.version_ms as i64),
                            )
                        })
                    })
                    .collect();
                out.insert(
                    format!("{}/{}", t.hbase_table, mapping::hex(&c.row_key)),
                    cells,
                );
                if let Some((legacy, new_id, room)) = c.id_pair {
                    let ts = c.version_ms as i64;
                    let m = &self.config.hbase.id_map_table;
                    out.insert(
                        format!(
                            "{m}/{}",
                            mapping::hex(&keys::id_map_legacy(ctx.salt_buckets, legacy))
                        ),
                        BTreeMap::from([
                            ("new_id".to_string(), (new_id.to_string().into_bytes(), ts)),
                            ("room_id".to_string(), (room.to_string().into_bytes(), ts)),
                        ]),
                    );
                    out.insert(
                        format!(
                            "{m}/{}",
                            mapping::hex(&keys::id_map_new(ctx.salt_buckets, new_id))
                        ),
                        BTreeMap::from([(
                            "legacy_id".to_string(),
                            (legacy.to_string().into_bytes(), ts),
                        )]),
                    );
                }
            }
        }
        out
    }

    /// Everything the job's HBase tables hold, in the shape of `expected_hbase`.
    pub async fn hbase_snapshot(&self) -> BTreeMap<String, BTreeMap<String, (Vec<u8>, i64)>> {
        let mut out = BTreeMap::new();
        let mut c = self.hbase();
        let mut tables: Vec<String> = self
            .config
            .tables
            .iter()
            .map(|t| t.hbase_table.clone())
            .collect();
        tables.push(self.config.hbase.id_map_table.clone());
        for t in tables {
            c.scan(&t, None, None, 1000, |r| {
                let cells = r
                    .column_values
                    .iter()
                    .map(|cv| {
                        (
                            String::from_utf8_lossy(&cv.qualifier).into_owned(),
                            (cv.value.clone(), cv.timestamp.unwrap_or(-1)),
                        )
                    })
                    .collect();
                out.insert(
                    format!("{t}/{}", mapping::hex(&r.row.unwrap_or_default())),
                    cells,
                );
                Ok(())
            })
            .unwrap();
        }
        out
    }
}

/// Qualifier → (value, timestamp) of one stored HBase row.
/// A passing test drops its HBase tables: a standalone HBase on two cores
/// slows down with every idle table it keeps. A failing one keeps them for
/// inspection.
impl Drop for Job {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let Ok(mut c) = HbaseClient::connect(&HbaseConfig::plain(THRIFT)) else {
            return;
        };
        let mut tables: Vec<&str> = self
            .config
            .tables
            .iter()
            .map(|t| t.hbase_table.as_str())
            .collect();
        tables.push(&self.config.hbase.id_map_table);
        for t in tables {
            let _ = c.drop_table(t);
        }
    }
}

pub type StoredCells = BTreeMap<String, (Vec<u8>, i64)>;

/// Helpers of the verify tests: run `verify`, and tamper with the targets
/// behind the tool's back.
impl Job {
    pub fn verify(&self, args: &[&str]) -> Outcome {
        Outcome::from(self.migrate_command("verify", args).output().unwrap())
    }

    /// Runs one statement on the source with the admin account.
    pub async fn admin_exec(&self, sql: &str) {
        let pool = self.pool().await;
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }

    /// Message id → (row key, qualifier → (value, timestamp)) of the HBase message table.
    pub fn hbase_messages(&self) -> BTreeMap<u64, (Vec<u8>, StoredCells)> {
        let mut out = BTreeMap::new();
        self.hbase()
            .scan(&self.hbase_table("message"), None, None, 1000, |r| {
                let cells: StoredCells = r
                    .column_values
                    .iter()
                    .map(|cv| {
                        (
                            String::from_utf8_lossy(&cv.qualifier).into_owned(),
                            (cv.value.clone(), cv.timestamp.unwrap_or(-1)),
                        )
                    })
                    .collect();
                let id: u64 = String::from_utf8(cells["message_id"].0.clone())
                    .unwrap()
                    .parse()
                    .unwrap();
                out.insert(id, (r.row.unwrap_or_default(), cells));
                Ok(())
            })
            .unwrap();
        out
    }

    /// Puts cells (qualifier, value) into a row of `source`'s HBase table at `ts`.
    pub fn hbase_put(&self, source: &str, row_key: &[u8], cells: &[(&str, &[u8])], ts: i64) {
        use falcon_migrate::sink::hbase::cells::put_cells;
        let family = self.config.hbase.column_family.as_bytes();
        let put = put_cells(row_key, family, cells, Some(ts));
        self.hbase()
            .put_multiple(&self.hbase_table(source), vec![put])
            .unwrap();
    }

    /// Deletes a whole row of `source`'s HBase table.
    pub fn hbase_delete_row(&self, source: &str, row_key: &[u8]) {
        use falcon_migrate::sink::hbase::cells::{row_delete, LATEST};
        let d = row_delete(row_key, LATEST);
        self.hbase()
            .delete_multiple(&self.hbase_table(source), vec![d])
            .unwrap();
    }

    /// Produces one record to `source`'s topic, keyed like base keys it (same partitioner).
    pub fn kafka_produce(&self, source: &str, record_key: &str, payload: &[u8]) {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let topic = self.config.table(source).unwrap().topic.clone();
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("partitioner", "murmur2_random")
            .create()
            .unwrap();
        p.send(BaseRecord::to(&topic).key(record_key).payload(payload))
            .map_err(|(e, _)| e)
            .unwrap();
        p.flush(Duration::from_secs(30)).unwrap();
    }
}

/// Cell values only: what a reader sees, whatever the timestamps.
pub type Values = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

pub fn values_of(m: &BTreeMap<String, BTreeMap<String, (Vec<u8>, i64)>>) -> Values {
    m.iter()
        .map(|(k, cells)| {
            (
                k.clone(),
                cells
                    .iter()
                    .map(|(q, (v, _))| (q.clone(), v.clone()))
                    .collect(),
            )
        })
        .collect()
}

impl Job {
    /// The real binary running subcommand `sub` on this job, with `--json`.
    pub fn migrate_command(&self, sub: &str, args: &[&str]) -> Command {
        self.migrate_command_in(sub, &self.state_dir, args)
    }

    /// The same with another state dir: another machine of the same job.
    pub fn migrate_command_in(
        &self,
        sub: &str,
        state_dir: &std::path::Path,
        args: &[&str],
    ) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_falcon-migrate"));
        c.arg(sub)
            .arg("-c")
            .arg(&self.config_path)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--json")
            .args(args)
            .env("FALCON_MYSQL_PASSWORD", "falcon")
            .env_remove("FALCON_MYSQL_URL")
            .env_remove("FALCON_KAFKA_BROKERS")
            .env_remove("FALCON_HBASE_THRIFT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Points this job's config at `other`'s progress topic (two jobs, one topic).
    pub fn share_progress_topic_of(&self, other: &Job) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let text = text.replace(
            &format!("progress_topic = \"{}\"", self.config.kafka.progress_topic),
            &format!("progress_topic = \"{}\"", other.config.kafka.progress_topic),
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn diff(&self, args: &[&str]) -> Outcome {
        Outcome::from(self.migrate_command("diff", args).output().unwrap())
    }

    /// Live writes against the job's database (`falcon-fixtures churn`, in process).
    pub async fn churn(
        &self,
        rate: f64,
        secs: f64,
        seed: u64,
    ) -> falcon_migrate::fixtures::churn::ChurnReport {
        let log = self.dir.join(format!("churn-{seed}.jsonl"));
        falcon_migrate::fixtures::churn::churn(
            &format!("{ADMIN}/{}", self.database),
            &falcon_migrate::fixtures::churn::ChurnOptions {
                rate,
                duration: Duration::from_secs_f64(secs),
                seed,
                log: Some(log),
            },
        )
        .await
        .expect("churn")
    }

    /// The churn log of `seed`: (op, message id) per applied change.
    pub fn churn_log(&self, seed: u64) -> Vec<(String, u64)> {
        std::fs::read_to_string(self.dir.join(format!("churn-{seed}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["op"].as_str().unwrap().to_string(),
                    v["message_id"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Runs SQL statements on the job's database as the admin.
    pub async fn sql(&self, statements: &[&str]) {
        let pool = self.pool().await;
        for s in statements {
            sqlx::query(s)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    /// What each table's rows map to (key → column → value), from the source now.
    pub async fn expected_rows(
        &self,
        source: &str,
    ) -> HashMap<String, BTreeMap<String, Option<String>>> {
        let ctx = MapContext {
            salt_buckets: self.config.hbase.salt_buckets,
            epoch_ms: self.config.ids.epoch_ms,
            default_version_ms: 0,
            min_version_ms: 0,
        };
        let pool = self.pool().await;
        let t = self.config.table(source).unwrap();
        let spec = mapping::spec(t.kind);
        let rooms: std::collections::HashSet<u64> = sqlx::query_scalar("SELECT room_id FROM room")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let rows = sqlx::query(&format!("SELECT {} FROM `{}`", spec.select_list(), source))
            .fetch_all(&pool)
            .await
            .unwrap();
        rows.iter()
            .filter_map(|r| {
                let vals = spec.decode(r).unwrap();
                if mapping::required_room(t.kind, &vals).is_some_and(|room| !rooms.contains(&room))
                {
                    return None;
                }
                let c = mapping::canonical(t.kind, &vals, &ctx).ok()?;
                Some((
                    c.key.clone(),
                    c.cells
                        .iter()
                        .map(|x| (x.name.to_string(), x.value.clone()))
                        .collect(),
                ))
            })
            .collect()
    }

    /// Kafka folded to each key's latest committed event: its data as text
    /// (None for a hard delete's removal event).
    pub fn kafka_rows(
        &self,
        source: &str,
    ) -> HashMap<String, Option<BTreeMap<String, Option<String>>>> {
        self.kafka_events(source)
            .into_iter()
            .map(|(k, v)| {
                let data = v["data"].as_object().map(|o| {
                    o.iter()
                        .map(|(n, x)| {
                            (
                                n.clone(),
                                match x {
                                    serde_json::Value::Null => None,
                                    serde_json::Value::String(s) => Some(s.clone()),
                                    other => Some(other.to_string()),
                                },
                            )
                        })
                        .collect()
                });
                (k, data)
            })
            .collect()
    }
}

/// HBase (values) and Kafka (each key's latest committed event) hold exactly
/// what the mapping makes of the source as it is now.
pub async fn assert_converged(job: &Job) {
    let expected = values_of(&job.expected_hbase().await);
    let actual = values_of(&job.hbase_snapshot().await);
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<&String> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    let differ: Vec<&String> = expected
        .iter()
        .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "HBase differs from the source: {} missing {:?}, {} extra {:?}, {} differ {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>(),
        differ.len(),
        differ.iter().take(5).collect::<Vec<_>>()
    );
    for t in ["account", "room", "room_member", "message"] {
        let want = job.expected_rows(t).await;
        let got = job.kafka_rows(t);
        for (k, row) in &want {
            assert_eq!(got.get(k), Some(&Some(row.clone())), "Kafka {t} key {k}");
        }
        // Every other key's latest event is a removal.
        for (k, v) in &got {
            if !want.contains_key(k) {
                assert!(v.is_none(), "Kafka {t} key {k} still live: {v:?}");
            }
        }
    }
}

/// The committed events `diff` wrote for `table`.
pub fn diff_events(job: &Job, table: &str) -> Vec<serde_json::Value> {
    job.kafka_all(table)
        .into_iter()
        .filter(|e| e["source"]["phase"] == "diff")
        .collect()
}

/// No change is delivered twice to a `read_committed` consumer; returns how
/// many diff events `table` has.
pub fn assert_no_duplicate_events(job: &Job, table: &str) -> usize {
    let events = diff_events(job, table);
    let mut seen: HashMap<(String, String, String), u32> = HashMap::new();
    for e in &events {
        *seen
            .entry((
                e["source"]["position"].as_str().unwrap().to_string(),
                e["key"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
            ))
            .or_default() += 1;
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dup.is_empty(), "duplicate {table} events: {dup:?}");
    events.len()
}
