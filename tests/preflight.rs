//! The source preflight and statement-logged changes, against the real
//! servers: a MIXED server fails `check` (exit 2) until ROW is back, and an
//! UPDATE a session logged as a statement stops `diff` (exit 4) without
//! reaching either target, while the row-logged change before it is applied.
//!
//! Changing `binlog_format` needs SUPER / BINLOG ADMIN, which the stack's
//! accounts lack: these tests use the server's OS-user account over its unix
//! socket (`mariadb` client, unix_socket authentication), as scripts/stack.sh
//! does. The global change is undone by a guard, even when the test fails.

mod support;

use std::process::Command;

use support::Job;

/// The server's socket, asked of the server itself.
async fn socket() -> String {
    let pool = sqlx::MySqlPool::connect(&format!("{}/legacy_chat", support::ADMIN))
        .await
        .expect("stack not up (run scripts/stack.sh up)");
    let s: String = sqlx::query_scalar("SELECT CAST(@@socket AS CHAR)")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    s
}

/// Runs `sql` (one client session) as the OS user over the unix socket.
fn as_server_admin(socket: &str, database: Option<&str>, sql: &str) -> String {
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let mut c = Command::new("mariadb");
    c.args([
        "--no-defaults",
        "-N",
        "-B",
        "--socket",
        socket,
        "-u",
        user.trim(),
    ]);
    if let Some(db) = database {
        c.args(["-D", db]);
    }
    let out = c.args(["-e", sql]).output().expect("mariadb client");
    assert!(
        out.status.success(),
        "as the server's OS user over {socket}: {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Sets the global binlog_format and puts the old value back when dropped.
struct GlobalBinlogFormat {
    socket: String,
    original: String,
}

impl GlobalBinlogFormat {
    fn set(socket: &str, value: &str) -> Self {
        let original = as_server_admin(socket, None, "SELECT @@GLOBAL.binlog_format");
        assert!(!original.is_empty());
        as_server_admin(
            socket,
            None,
            &format!("SET GLOBAL binlog_format = '{value}'"),
        );
        GlobalBinlogFormat {
            socket: socket.to_string(),
            original,
        }
    }
}

impl Drop for GlobalBinlogFormat {
    fn drop(&mut self) {
        as_server_admin(
            &self.socket,
            None,
            &format!("SET GLOBAL binlog_format = '{}'", self.original),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_with_exit_2_naming_binlog_format_while_the_server_logs_mixed() {
    let job = Job::new("pfcheck", 50, false).await;
    let socket = socket().await;
    let mixed = {
        let _guard = GlobalBinlogFormat::set(&socket, "MIXED");
        job.migrate_command("check", &[]).output().unwrap()
    };
    assert_eq!(
        as_server_admin(&socket, None, "SELECT @@GLOBAL.binlog_format"),
        "ROW",
        "the guard restored ROW"
    );
    let mixed = support::Outcome::from(mixed);
    assert_eq!(mixed.code, 2, "{}\n{}", mixed.stdout, mixed.stderr);
    assert!(
        mixed
            .stderr
            .contains("FAIL  binlog_format = MIXED (required: ROW)")
            && mixed.stderr.contains("SET GLOBAL binlog_format = 'ROW'"),
        "{}",
        mixed.stderr
    );
    // ROW again: every check passes and check goes on to the targets.
    let ok = support::Outcome::from(job.migrate_command("check", &[]).output().unwrap());
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(!ok.stderr.contains("FAIL"), "{}", ok.stderr);
    let report = ok.json();
    assert_eq!(report["command"], "check");
    // The report lists every setting checked, each with its verdict.
    let checks = report["preflight"].as_array().unwrap();
    let format = checks
        .iter()
        .find(|f| f["variable"] == "binlog_format")
        .unwrap();
    assert_eq!(format["status"], "pass", "{format}");
    assert_eq!(format["value"], "ROW", "{format}");
    assert!(checks.iter().all(|f| f["status"] != "fail"), "{checks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_logged_as_a_statement_stops_diff_and_reaches_neither_target() {
    let job = Job::new("pfstmt", 300, false).await;
    let base = job.base(&["--workers", "1"]);
    assert_eq!(base.code, 0, "{}", base.stderr);
    let before = job.hbase_message_bodies();
    let mut ids: Vec<u64> = before.keys().copied().collect();
    ids.sort_unstable();
    let (row_id, stmt_id) = (ids[0], ids[1]);

    // A change logged as rows, then one a session logs as a statement.
    job.sql(&[&format!(
        "UPDATE message SET body = 'row-logged edit', update_time = UNIX_TIMESTAMP() + 10 WHERE message_id = {row_id}"
    )])
    .await;
    let socket = socket().await;
    as_server_admin(
        &socket,
        Some(&job.database),
        &format!(
            "SET SESSION binlog_format = 'STATEMENT'; \
             UPDATE message SET body = 'statement-logged edit', update_time = UNIX_TIMESTAMP() + 10 WHERE message_id = {stmt_id}"
        ),
    );

    let out = job.diff(&["--until-now"]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "data change on mapped table {}.message logged as a statement",
            job.database
        )) && out.stderr.contains("statement-logged edit")
            && out.stderr.contains("binlog_format = 'ROW'")
            && out.stderr.contains("rerun base for table message"),
        "{}",
        out.stderr
    );

    // The change before it was applied; the statement's change is in neither target.
    let after = job.hbase_message_bodies();
    assert_eq!(after[&row_id], b"row-logged edit".to_vec());
    assert_eq!(after[&stmt_id], before[&stmt_id], "HBase body of {stmt_id}");
    let events = job.kafka_events("message");
    assert_eq!(
        events[&row_id.to_string()]["data"]["body"],
        "row-logged edit"
    );
    assert_ne!(
        events[&stmt_id.to_string()]["data"]["body"],
        "statement-logged edit"
    );

    // The checkpoint did not move past it: a rerun stops at the same place.
    let again = job.diff(&["--until-now"]);
    assert_eq!(again.code, 4, "{}", again.stderr);
    assert!(
        again.stderr.contains("logged as a statement"),
        "{}",
        again.stderr
    );
    assert_eq!(job.hbase_message_bodies()[&stmt_id], before[&stmt_id]);
}
