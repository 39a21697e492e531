//! The local server stack, exercised through the library's own clients and the
//! `falcon-migrate check` command: what a user relies on before any migration
//! runs. Needs `scripts/stack.sh up` (MariaDB, Kafka, HBase Thrift2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use falcon_migrate::config::{Config, HbaseConfig, KafkaConfig};
use falcon_migrate::position::Position;
use falcon_migrate::sink::hbase::cells::put_cells;
use falcon_migrate::sink::hbase::HbaseClient;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::Connection;

const STACK_DOWN: &str = "stack not up: run scripts/stack.sh up";
const ADMIN_URL: &str = "mysql://falcon_admin:falcon_admin@127.0.0.1:3306/legacy_chat_stack_test";
const ADMIN_SERVER_URL: &str = "mysql://falcon_admin:falcon_admin@127.0.0.1:3306/";
/// The tool user's password on the local stack.
const TOOL_PASSWORD: &str = "falcon";

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn kafka_brokers() -> String {
    env_or("FALCON_KAFKA_BROKERS", "127.0.0.1:9092")
}

fn hbase_thrift() -> String {
    env_or("FALCON_HBASE_THRIFT", "127.0.0.1:9090")
}

/// A name no other run (or test) uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chat/falcon.toml")
}

// ----------------------------------------------------------------------------- Kafka

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_record_round_trips_byte_for_byte() {
    // Through the config parser, so fields with defaults keep their defaults.
    let cfg: KafkaConfig = toml::from_str(&format!(
        "brokers = \"{}\"\npartitions = 1\nreplication_factor = 1\n",
        kafka_brokers()
    ))
    .expect("kafka config");
    falcon_migrate::sink::kafka::check(&cfg).unwrap_or_else(|e| panic!("{STACK_DOWN}: {e}"));
    let topic = unique("falcon.test.stack");
    falcon_migrate::sink::kafka::ensure_topics(&cfg, &[topic.as_str()])
        .await
        .expect("create topic");

    let pc = falcon_migrate::sink::kafka::producer_config(&cfg);
    assert_eq!(pc.get("enable.idempotence"), Some("true"));
    assert_eq!(pc.get("acks"), Some("all"));
    let producer: FutureProducer = pc.create().expect("producer");

    let key = "room:4242".as_bytes();
    let payload = "{\"body\":\"[To:123]田中さん\\nお疲れさまです🙏 明日の会議は10時からです😀\"}";
    assert!(
        payload.len() > payload.chars().count(),
        "payload is multibyte"
    );
    assert!(
        payload.chars().any(|c| c.len_utf8() == 4),
        "payload has a 4-byte emoji"
    );
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key(key)
                .payload(payload.as_bytes()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivery");
    assert_eq!(delivery.partition, 0);

    let consumer: BaseConsumer = falcon_migrate::sink::kafka::base_config(&cfg)
        .set("group.id", unique("falcon-test"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, delivery.partition, Offset::Offset(delivery.offset))
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (got_key, got_payload) = loop {
        assert!(Instant::now() < deadline, "no record consumed within 30s");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => break (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)),
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    };
    drop(consumer);
    let admin: AdminClient<DefaultClientContext> = falcon_migrate::sink::kafka::base_config(&cfg)
        .create()
        .expect("admin");
    let deleted = admin
        .delete_topics(&[topic.as_str()], &AdminOptions::new())
        .await;
    assert_eq!(got_key.as_deref(), Some(key));
    assert_eq!(got_payload.as_deref(), Some(payload.as_bytes()));
    deleted.expect("delete topic");
}

// ----------------------------------------------------------------------------- HBase

#[test]
fn hbase_cell_round_trips_with_its_timestamp() {
    let mut hb = HbaseClient::connect(&HbaseConfig::plain(&hbase_thrift()))
        .unwrap_or_else(|e| panic!("{STACK_DOWN}: {e}"));
    let table = unique("falcon_test_stack");
    assert!(hb.ensure_table(&table, "d", vec![]).expect("create table"));
    // Creating it again is a no-op, not an error.
    assert!(!hb.ensure_table(&table, "d", vec![]).expect("create again"));

    let mut row = vec![0x07u8];
    row.extend_from_slice(&42u64.to_be_bytes());
    row.extend_from_slice(&(!1234u64).to_be_bytes());
    let mut value = "お疲れさまです🙏 [qt]引用[/qt]".as_bytes().to_vec();
    value.extend_from_slice(&[0x00, 0xff, 0xfe]); // not UTF-8: bytes are bytes
    let ts: i64 = 1_700_000_000_123;
    let put = put_cells(&row, b"d", &[("body", &value)], Some(ts));
    let outcome = hb
        .put_multiple(&table, vec![put])
        .and_then(|()| hb.get(&table, &row))
        .and_then(|got| {
            // A scan of the whole table finds the same one row.
            let mut rows = Vec::new();
            hb.scan(&table, None, None, 100, |r| {
                rows.push(r.row.unwrap_or_default());
                Ok(())
            })?;
            Ok((got, rows))
        });
    let dropped = hb.drop_table(&table);
    let (got, scanned) = outcome.expect("put + get + scan");
    let got = got.expect("row exists");
    assert_eq!(scanned, vec![row.clone()], "scan returns the row");
    dropped.expect("drop table");
    assert!(!hb.table_exists(&table).unwrap(), "table dropped");

    assert_eq!(got.row.as_deref(), Some(row.as_slice()));
    assert_eq!(got.column_values.len(), 1);
    let cell = &got.column_values[0];
    assert_eq!(cell.family, b"d");
    assert_eq!(cell.qualifier, b"body");
    assert_eq!(cell.value, value);
    assert_eq!(cell.timestamp, Some(ts));
}

/// The operator's HBase shell (`scripts/stack.sh hbase-shell`) reads commands
/// from stdin and sees what the Thrift2 gateway wrote.
#[test]
fn hbase_shell_counts_and_gets_rows_written_through_thrift() {
    let mut hb = HbaseClient::connect(&HbaseConfig::plain(&hbase_thrift()))
        .unwrap_or_else(|e| panic!("{STACK_DOWN}: {e}"));
    let table = unique("falcon_test_shell");
    hb.ensure_table(&table, "d", vec![]).expect("create table");
    let puts = (0..3u8)
        .map(|i| {
            put_cells(
                format!("row{i}").as_bytes(),
                b"d",
                &[("n", &[b'a' + i])],
                None,
            )
        })
        .collect();
    hb.put_multiple(&table, puts).expect("put");
    let script = format!("count '{table}'\nget '{table}', 'row1'\n");
    let repo = env!("CARGO_MANIFEST_DIR");
    let mut child = std::process::Command::new("bash")
        .arg(format!("{repo}/scripts/stack.sh"))
        .arg("hbase-shell")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the HBase shell");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let dropped = hb.drop_table(&table);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 row(s)"), "{stdout}");
    assert!(
        stdout.contains("d:n") && stdout.contains("value=b"),
        "{stdout}"
    );
    dropped.expect("drop table");
}

// ----------------------------------------------------------------------------- MySQL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_position_is_readable_by_the_tool_user_and_advances() {
    let text = std::fs::read_to_string(shipped_config()).unwrap();
    let cfg = Config::parse(&text, &shipped_config(), |k| match k {
        "FALCON_MYSQL_PASSWORD" => Some(TOOL_PASSWORD.to_string()),
        "FALCON_MYSQL_URL" => None,
        other => std::env::var(other).ok(),
    })
    .expect("shipped config parses");
    let pool = falcon_migrate::source::mysql::connect(&cfg, 1)
        .await
        .unwrap_or_else(|e| panic!("{STACK_DOWN}: {e}"));
    let before = falcon_migrate::source::mysql::binlog_position(&pool)
        .await
        .expect("binlog position");
    let Position::Binlog { file, offset, .. } = &before else {
        panic!("not a binlog position: {before}");
    };
    assert!(!file.is_empty(), "binlog file name");
    assert!(*offset > 0, "binlog offset");

    // An admin write in a scratch database moves the binlog on.
    let mut admin = sqlx::MySqlConnection::connect(ADMIN_SERVER_URL)
        .await
        .unwrap_or_else(|e| panic!("{STACK_DOWN}: {e}"));
    sqlx::query("CREATE DATABASE IF NOT EXISTS legacy_chat_stack_test CHARACTER SET utf8mb4")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let mut admin = sqlx::MySqlConnection::connect(ADMIN_URL).await.unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS probe (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, note VARCHAR(64) NOT NULL)",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("INSERT INTO probe (note) VALUES (?)")
        .bind("binlog を進める 🙏")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();

    let after = falcon_migrate::source::mysql::binlog_position(&pool)
        .await
        .expect("binlog position after write");
    assert!(
        after > before,
        "binlog did not advance: {before} -> {after}"
    );

    // `check` reports the same kind of position.
    let (checked, _) = falcon_migrate::source::mysql::check(&cfg).await.unwrap();
    assert!(checked >= after, "{checked} < {after}");
    pool.close().await;
}

// ----------------------------------------------------------------------------- check

/// `falcon-migrate check -c CONFIG` with a clean environment plus `env`.
fn run_check(config: &Path, env: &[(&str, &str)]) -> (Output, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_falcon-migrate"));
    cmd.arg("check").arg("-c").arg(config);
    for k in [
        "FALCON_CONFIG",
        "FALCON_MYSQL_URL",
        "FALCON_MYSQL_PASSWORD",
        "FALCON_KAFKA_BROKERS",
        "FALCON_HBASE_THRIFT",
        "FALCON_STATE_DIR",
        "FALCON_LOG",
        "RUST_LOG",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let out = cmd.output().expect("run falcon-migrate");
    (out, t0.elapsed())
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Exit 2 and exactly one `error: ...` line on stderr that names every `expect`
/// and never shows `secret`.
fn assert_clean_failure(out: &Output, expect: &[&str], secret: &str) {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status; stdout: {stdout} stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line expected, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for e in expect {
        assert!(lines[0].contains(e), "error should name {e:?}: {stderr}");
    }
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "password leaked: {stdout} {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_passes_with_the_shipped_config() {
    let (out, _) = run_check(
        &shipped_config(),
        &[("FALCON_MYSQL_PASSWORD", TOOL_PASSWORD)],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{STACK_DOWN}? stdout: {stdout} stderr: {stderr}"
    );
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(stdout.contains("127.0.0.1:3306"), "{stdout}");
    assert!(stdout.contains("binlog at "), "{stdout}");
    assert!(!stdout.contains(":falcon@"), "{stdout}");
}

#[test]
fn check_fails_cleanly_on_unreachable_hbase() {
    let (out, _) = run_check(
        &shipped_config(),
        &[
            ("FALCON_MYSQL_PASSWORD", TOOL_PASSWORD),
            ("FALCON_HBASE_THRIFT", "127.0.0.1:1"),
        ],
    );
    assert_clean_failure(&out, &["HBase", "127.0.0.1:1"], ":falcon@");
}

#[test]
fn check_fails_cleanly_and_promptly_on_unreachable_kafka() {
    let (out, took) = run_check(
        &shipped_config(),
        &[
            ("FALCON_MYSQL_PASSWORD", TOOL_PASSWORD),
            ("FALCON_KAFKA_BROKERS", "127.0.0.1:1"),
        ],
    );
    assert_clean_failure(&out, &["Kafka", "127.0.0.1:1"], ":falcon@");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn check_fails_cleanly_on_a_wrong_mysql_password() {
    let secret = "Wr0ng-Pa55word-xyzzy";
    let (out, _) = run_check(&shipped_config(), &[("FALCON_MYSQL_PASSWORD", secret)]);
    assert_clean_failure(&out, &["MySQL", "127.0.0.1:3306"], secret);
}

#[test]
fn check_fails_cleanly_on_a_wrong_password_in_the_url() {
    let secret = "Wr0ng-Url-Pa55-xyzzy";
    let url = format!("mysql://falcon:{secret}@127.0.0.1:3306/legacy_chat");
    let (out, _) = run_check(&shipped_config(), &[("FALCON_MYSQL_URL", url.as_str())]);
    assert_clean_failure(&out, &["MySQL", "127.0.0.1:3306"], secret);
}

#[test]
fn check_names_an_unknown_config_key() {
    let dir = std::env::temp_dir().join(unique("falcon-test-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("falcon.toml");
    let shipped = std::fs::read_to_string(shipped_config()).unwrap();
    let bad = shipped.replacen(
        "[kafka]\n",
        "[kafka]\nbroker_list = \"127.0.0.1:9092\"\n",
        1,
    );
    assert_ne!(bad, shipped);
    std::fs::write(&path, bad).unwrap();
    let secret = "S3cret-For-Unknown-Key";
    let (out, _) = run_check(&path, &[("FALCON_MYSQL_PASSWORD", secret)]);
    std::fs::remove_dir_all(&dir).ok();
    assert_clean_failure(&out, &["broker_list", "falcon.toml"], secret);
}

#[test]
fn check_names_a_missing_config_file() {
    let path = std::env::temp_dir()
        .join(unique("falcon-missing"))
        .join("falcon.toml");
    let secret = "S3cret-For-Missing-File";
    let (out, _) = run_check(&path, &[("FALCON_MYSQL_PASSWORD", secret)]);
    assert_clean_failure(&out, &[path.to_str().unwrap()], secret);
}
