//! The legacy-chat fixture generator and the churn driver, run as a user runs
//! them (the `falcon-fixtures` binary) against a database of their own, and
//! checked with SQL: the JSON reports tell the truth, the data is shaped like a
//! real old chat database, and the same seed gives the same bytes.
//! Needs `scripts/stack.sh up` (MariaDB).

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;
use sqlx::{Connection, MySqlConnection, Row};

const STACK_DOWN: &str = "stack not up: run scripts/stack.sh up";
const DB: &str = "legacy_chat_fixtures_test";
/// One MD5 over every message row in id order (bodies by their own MD5).
const DIGEST_SQL: &str =
    "SELECT MD5(GROUP_CONCAT(message_id, ':', room_id, ':', COALESCE(account_id, 'N'), ':', \
     MD5(COALESCE(body, 'N')), ':', send_time, ':', update_time, ':', deleted \
     ORDER BY message_id SEPARATOR '|')) FROM message";
const SERVER_URL: &str = "mysql://falcon_admin:falcon_admin@127.0.0.1:3306/";

/// Every test here regenerates the same database: one at a time.
static DB_LOCK: Mutex<()> = Mutex::new(());

fn admin_url() -> String {
    format!("{SERVER_URL}{DB}")
}

/// Runs `body` on a fresh runtime while holding the database lock.
fn with_db<F: std::future::Future<Output = ()>>(body: impl FnOnce() -> F) {
    let _guard = DB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut c = MySqlConnection::connect(SERVER_URL)
                .await
                .unwrap_or_else(|e| panic!("{STACK_DOWN}: {e}"));
            sqlx::query(&format!(
                "CREATE DATABASE IF NOT EXISTS {DB} CHARACTER SET utf8mb4"
            ))
            .execute(&mut c)
            .await
            .expect("create test database");
            c.close().await.ok();
            body().await
        });
}

async fn conn() -> MySqlConnection {
    let mut c = MySqlConnection::connect(&admin_url())
        .await
        .unwrap_or_else(|e| panic!("{STACK_DOWN}: {e}"));
    sqlx::query(
        "SET SESSION sql_mode = '', SESSION time_zone = '+00:00', SESSION group_concat_max_len = 1073741824",
    )
        .execute(&mut c)
        .await
        .unwrap();
    c
}

/// `falcon-fixtures ARGS` against the test database; its JSON report.
fn fixtures(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_falcon-fixtures"))
        .args(args)
        .env("FALCON_MYSQL_ADMIN_URL", admin_url())
        .env_remove("RUST_LOG")
        .output()
        .expect("run falcon-fixtures");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "falcon-fixtures {args:?} failed ({:?}): {stderr}",
        out.status
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"))
}

fn generate(messages: u64, seed: u64, dirty: bool) -> Value {
    let (m, s) = (messages.to_string(), seed.to_string());
    let mut args = vec!["generate", "--messages", &m, "--seed", &s];
    if dirty {
        args.push("--dirty");
    }
    fixtures(&args)
}

fn num(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("report has no number {path}: {v}"))
}

async fn count(c: &mut MySqlConnection, sql: &str) -> u64 {
    let n: i64 = sqlx::query_scalar(sql)
        .fetch_one(c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    n as u64
}

/// `CHECKSUM TABLE` of the four tables.
async fn checksums(c: &mut MySqlConnection) -> BTreeMap<String, i64> {
    let rows = sqlx::query("CHECKSUM TABLE account, room, room_member, message")
        .fetch_all(c)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            let sum: Option<i64> = r.get(1);
            (name, sum.expect("table exists"))
        })
        .collect()
}

/// The report without its timing fields.
fn facts(report: &Value) -> Value {
    let mut r = report.clone();
    let o = r.as_object_mut().unwrap();
    o.remove("elapsed_s");
    o.remove("messages_per_s");
    r
}

#[test]
fn generated_dataset_matches_its_report_and_looks_legacy() {
    with_db(|| async {
        let report = generate(20_000, 7, false);
        let mut c = conn().await;

        // Counts in each table equal the report.
        assert_eq!(num(&report, "messages"), 20_000);
        for (table, key) in [
            ("account", "accounts"),
            ("room", "rooms"),
            ("room_member", "room_members"),
            ("message", "messages"),
        ] {
            let n = count(&mut c, &format!("SELECT COUNT(*) FROM {table}")).await;
            assert_eq!(n, num(&report, key), "{table} rows vs report.{key}");
        }
        assert!(report["dirty"].is_null(), "clean run reports no dirt");

        // room.message_num is each room's real message count; no orphans.
        let inconsistent = count(
            &mut c,
            "SELECT COUNT(*) FROM room r LEFT JOIN (SELECT room_id, COUNT(*) n FROM message GROUP BY room_id) m \
             ON m.room_id = r.room_id WHERE r.message_num <> COALESCE(m.n, 0)",
        )
        .await;
        assert_eq!(inconsistent, 0, "rooms whose message_num is wrong");
        let orphans = count(
            &mut c,
            "SELECT COUNT(*) FROM message m LEFT JOIN room r ON r.room_id = m.room_id WHERE r.room_id IS NULL",
        )
        .await;
        assert_eq!(orphans, 0, "clean data has no orphan messages");

        // Zipf-like skew: the largest room dwarfs the median one.
        let mut sizes: Vec<i64> =
            sqlx::query_scalar("SELECT CAST(message_num AS SIGNED) FROM room")
                .fetch_all(&mut c)
                .await
                .unwrap();
        sizes.sort_unstable();
        let largest = *sizes.last().unwrap() as u64;
        let median = sizes[sizes.len() / 2] as u64;
        assert_eq!(largest, num(&report, "largest_room_messages"));
        assert_eq!(median, num(&report, "median_room_messages"));
        assert!(
            largest >= 20 * median.max(1),
            "largest room {largest} vs median {median}"
        );
        let under_50 = sizes.iter().filter(|&&n| n < 50).count();
        assert!(under_50 * 2 > sizes.len(), "most rooms have < 50 messages");

        // Multibyte text: 3-byte Japanese and 4-byte emoji, stored intact.
        let prayers = count(
            &mut c,
            "SELECT COUNT(*) FROM message WHERE body LIKE '%🙏%'",
        )
        .await;
        assert!(prayers > 0, "no body with 🙏");
        let emoji_hex = count(
            &mut c,
            "SELECT COUNT(*) FROM message WHERE HEX(body) LIKE '%F09F%'",
        )
        .await;
        assert!(
            emoji_hex >= prayers,
            "4-byte UTF-8 (F0 9F ..) in {emoji_hex} bodies"
        );
        let japanese = count(
            &mut c,
            "SELECT COUNT(*) FROM message WHERE HEX(body) REGEXP '^(..)*E3(8|9)'",
        )
        .await;
        assert!(
            japanese * 2 > 20_000,
            "most bodies are Japanese (3-byte E3 8x/9x sequences): {japanese}"
        );
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT CAST(body AS BINARY) FROM message")
            .fetch_all(&mut c)
            .await
            .unwrap();
        let bodies: Vec<String> = bodies
            .into_iter()
            .map(|b| String::from_utf8(b).expect("clean bodies are UTF-8"))
            .collect();
        assert!(bodies.iter().any(|b| b.contains('🙏')));
        assert!(bodies
            .iter()
            .any(|b| b.chars().any(|ch| ch.len_utf8() == 3)));

        // Chat markup.
        for marker in [
            "[To:",
            "[rp aid=",
            "[qt]",
            "[/qt]",
            "[info][title]",
            "[/info]",
        ] {
            let n = bodies.iter().filter(|b| b.contains(marker)).count();
            assert!(n > 0, "no body carries {marker}");
        }

        // A few percent edited, a few percent soft-deleted.
        let edited = count(
            &mut c,
            "SELECT COUNT(*) FROM message WHERE update_time > 0 AND deleted = 0",
        )
        .await;
        let deleted = count(&mut c, "SELECT COUNT(*) FROM message WHERE deleted = 1").await;
        assert_eq!(edited, num(&report, "edited_messages"));
        assert_eq!(deleted, num(&report, "soft_deleted_messages"));
        for (what, n) in [("edited", edited), ("soft-deleted", deleted)] {
            let pct = n as f64 * 100.0 / 20_000.0;
            assert!((0.5..=10.0).contains(&pct), "{what}: {pct:.2}%");
        }
        let bytes = count(
            &mut c,
            "SELECT CAST(SUM(LENGTH(body)) AS SIGNED) FROM message",
        )
        .await;
        assert_eq!(bytes, num(&report, "message_bytes"));
        c.close().await.ok();
    });
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    with_db(|| async {
        let first = generate(20_000, 11, false);
        let mut c = conn().await;
        let sums_a = checksums(&mut c).await;
        // One specific body with a 4-byte emoji, byte for byte.
        let (id, body_a): (u32, Vec<u8>) = sqlx::query_as(
            "SELECT message_id, CAST(body AS BINARY) FROM message WHERE HEX(body) LIKE '%F09F%' \
             ORDER BY message_id LIMIT 1 OFFSET 17",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        let digest_a: String = sqlx::query_scalar(DIGEST_SQL)
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.ok();

        let second = generate(20_000, 11, false);
        assert_eq!(facts(&first), facts(&second), "same seed, same report");
        let mut c = conn().await;
        assert_eq!(checksums(&mut c).await, sums_a, "same seed, same tables");
        let body_b: Vec<u8> =
            sqlx::query_scalar("SELECT CAST(body AS BINARY) FROM message WHERE message_id = ?")
                .bind(id)
                .fetch_one(&mut c)
                .await
                .unwrap();
        assert_eq!(body_a, body_b, "message {id} differs between runs");
        let digest_b: String = sqlx::query_scalar(DIGEST_SQL)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(digest_a, digest_b, "same seed, same message rows");
        c.close().await.ok();

        let other = generate(20_000, 12, false);
        assert_ne!(facts(&first), facts(&other));
        let mut c = conn().await;
        let sums_c = checksums(&mut c).await;
        assert_ne!(
            sums_c.get(&format!("{DB}.message")),
            sums_a.get(&format!("{DB}.message")),
            "another seed, another message table"
        );
        let digest_c: String = sqlx::query_scalar(DIGEST_SQL)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_ne!(digest_a, digest_c);
        c.close().await.ok();
    });
}

/// Latin1-decoded UTF-8: every char is U+0000..U+00FF and the bytes they stand
/// for are valid, non-ASCII UTF-8.
fn is_mojibake(body: &str) -> bool {
    if !body.chars().all(|ch| (ch as u32) <= 0xff) || body.is_ascii() {
        return false;
    }
    let bytes: Vec<u8> = body.chars().map(|ch| ch as u32 as u8).collect();
    std::str::from_utf8(&bytes).is_ok()
}

#[test]
fn dirty_counts_in_the_report_are_what_sql_finds() {
    with_db(|| async {
        let report = generate(30_000, 5, true);
        let mut c = conn().await;
        let d = |k: &str| num(&report, &format!("dirty.{k}"));

        for (table, key) in [
            ("account", "accounts"),
            ("room", "rooms"),
            ("room_member", "room_members"),
            ("message", "messages"),
        ] {
            let n = count(&mut c, &format!("SELECT COUNT(*) FROM {table}")).await;
            assert_eq!(n, num(&report, key), "{table} rows vs report.{key}");
        }
        let checks = [
            ("null_bodies", "SELECT COUNT(*) FROM message WHERE body IS NULL"),
            ("null_accounts", "SELECT COUNT(*) FROM message WHERE account_id IS NULL"),
            (
                "orphan_messages",
                "SELECT COUNT(*) FROM message m LEFT JOIN room r ON r.room_id = m.room_id WHERE r.room_id IS NULL",
            ),
            (
                "orphan_members",
                "SELECT COUNT(*) FROM room_member m LEFT JOIN room r ON r.room_id = m.room_id WHERE r.room_id IS NULL",
            ),
            (
                "zero_dates",
                "SELECT COUNT(*) FROM account WHERE CAST(created_at AS CHAR) = '0000-00-00 00:00:00'",
            ),
            (
                "oversized_bodies",
                "SELECT COUNT(*) FROM message WHERE LENGTH(body) > 1000000",
            ),
        ];
        for (key, sql) in checks {
            let n = count(&mut c, sql).await;
            assert!(d(key) > 0, "dirty.{key} is zero");
            assert_eq!(n, d(key), "dirty.{key} vs SQL ({sql})");
        }

        // Room descriptions written through latin1: bytes that are not UTF-8.
        let descriptions: Vec<Option<Vec<u8>>> = sqlx::query_scalar("SELECT description FROM room")
            .fetch_all(&mut c)
            .await
            .unwrap();
        let invalid = descriptions
            .iter()
            .flatten()
            .filter(|b| std::str::from_utf8(b).is_err())
            .count() as u64;
        assert!(d("invalid_utf8") > 0);
        assert_eq!(invalid, d("invalid_utf8"), "invalid UTF-8 descriptions");
        let sql_invalid = count(
            &mut c,
            "SELECT COUNT(*) FROM room WHERE description IS NOT NULL \
             AND CAST(CONVERT(description USING utf8mb4) AS BINARY) <> description",
        )
        .await;
        assert_eq!(sql_invalid, invalid, "MySQL agrees the bytes are not UTF-8");

        // Double-encoded bodies (UTF-8 read back through latin1).
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT CAST(body AS BINARY) FROM message WHERE body IS NOT NULL AND LENGTH(body) <= 1000000",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let mojibake = bodies
            .iter()
            .filter(|b| is_mojibake(std::str::from_utf8(b).expect("bodies are stored as UTF-8")))
            .count() as u64;
        assert!(d("mojibake") > 0);
        assert_eq!(mojibake, d("mojibake"), "mojibake bodies");
        c.close().await.ok();
    });
}

#[test]
fn churn_report_matches_the_rows_it_changed() {
    with_db(|| async {
        generate(5_000, 3, false);
        let mut c = conn().await;
        let rows_before = count(&mut c, "SELECT COUNT(*) FROM message").await;
        let max_before = count(
            &mut c,
            "SELECT CAST(MAX(message_id) AS SIGNED) FROM message",
        )
        .await;
        let num_before = count(&mut c, "SELECT CAST(SUM(message_num) AS SIGNED) FROM room").await;

        let log = std::env::temp_dir().join(format!("falcon-churn-{}.jsonl", std::process::id()));
        let log_s = log.to_str().unwrap().to_string();
        let report = fixtures(&[
            "churn",
            "--rate",
            "200",
            "--duration",
            "3s",
            "--seed",
            "9",
            "--log",
            &log_s,
        ]);
        let lines = std::fs::read_to_string(&log).expect("churn log");
        std::fs::remove_file(&log).ok();

        let (inserts, edits, soft, hard) = (
            num(&report, "inserts"),
            num(&report, "edits"),
            num(&report, "soft_deletes"),
            num(&report, "hard_deletes"),
        );
        let changes = num(&report, "changes");
        assert_eq!(
            inserts + edits + soft + hard,
            changes,
            "counts sum to changes"
        );
        let attempts = changes + num(&report, "misses");
        assert!(
            (300..=650).contains(&attempts),
            "200/s for 3s should be about 600 attempts, got {attempts}"
        );
        assert!(inserts > 0 && edits > 0 && soft > 0 && hard > 0, "{report}");

        // Row counts: inserts add rows, hard deletes remove them.
        let rows_after = count(&mut c, "SELECT COUNT(*) FROM message").await;
        assert_eq!(
            rows_after as i64 - rows_before as i64,
            inserts as i64 - hard as i64,
            "row count difference vs inserts - hard_deletes"
        );
        // Every insert also bumped its room's message_num.
        let num_after = count(&mut c, "SELECT CAST(SUM(message_num) AS SIGNED) FROM room").await;
        assert_eq!(
            num_after - num_before,
            inserts,
            "room.message_num increments"
        );

        // The change log lists each applied change; replaying it predicts the table.
        let mut per_op: HashMap<String, u64> = HashMap::new();
        let mut last_op: HashMap<u64, String> = HashMap::new();
        let mut inserted = Vec::new();
        for line in lines.lines() {
            let v: Value = serde_json::from_str(line).expect("log line is JSON");
            let op = v["op"].as_str().unwrap().to_string();
            let id = v["message_id"].as_u64().unwrap();
            *per_op.entry(op.clone()).or_default() += 1;
            if op == "insert" {
                assert!(id > max_before, "new id {id} <= old max {max_before}");
                inserted.push(id);
            }
            last_op.insert(id, op);
        }
        let got = |op: &str| per_op.get(op).copied().unwrap_or(0);
        assert_eq!(
            (
                got("insert"),
                got("edit"),
                got("soft_delete"),
                got("hard_delete")
            ),
            (inserts, edits, soft, hard),
            "log lines per op vs report"
        );
        let new_rows = count(
            &mut c,
            &format!("SELECT COUNT(*) FROM message WHERE message_id > {max_before}"),
        )
        .await;
        let new_deleted = inserted
            .iter()
            .filter(|id| last_op.get(id).map(String::as_str) == Some("hard_delete"))
            .count() as u64;
        assert_eq!(new_rows, inserts - new_deleted, "inserted rows present");
        for (id, op) in &last_op {
            let row: Option<(i8, Vec<u8>)> = sqlx::query_as(
                "SELECT deleted, CAST(COALESCE(body, '') AS BINARY) FROM message WHERE message_id = ?",
            )
            .bind(*id as u32)
            .fetch_optional(&mut c)
            .await
            .unwrap();
            match (op.as_str(), row) {
                ("hard_delete", None) => {}
                ("soft_delete", Some((1, _))) => {}
                ("edit", Some((0, body))) => assert!(
                    String::from_utf8_lossy(&body).starts_with("修正しました✏️"),
                    "edited message {id} does not carry the edit"
                ),
                ("insert", Some((0, body))) => assert!(!body.is_empty(), "message {id}"),
                (op, row) => panic!("message {id}: last op {op}, row now {row:?}"),
            }
        }
        c.close().await.ok();
    });
}
