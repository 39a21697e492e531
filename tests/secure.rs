//! The tool over encrypted, authenticated connections: the local stack's
//! secure endpoints (`scripts/stack.sh up --secure`): MariaDB over TLS with
//! `require_secure_transport=ON`, Kafka's SASL_SSL listener with SCRAM-SHA-512,
//! the Thrift2 gateway over HTTPS. Both targets are read back through their
//! plain endpoints (the same cluster), independently of the tool.
//!
//! `require_secure_transport` is switched on for the length of a test and off
//! again by a guard (the root session over the unix socket is unaffected):
//! run this file alone (`--test secure -- --test-threads=1`).

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{assert_converged, assert_no_duplicate_events, Job, Outcome};

const SASL_PASSWORD: &str = "falcon-kafka";
const SASL_ENV: &str = "FALCON_TEST_KAFKA_PASSWORD";

fn stack_dir() -> PathBuf {
    std::env::var_os("FALCON_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".stack"))
}

fn tls(file: &str) -> String {
    let p = stack_dir().join("tls").join(file);
    assert!(
        p.exists(),
        "{} missing: start the stack with scripts/stack.sh up --secure",
        p.display()
    );
    p.display().to_string()
}

/// A statement as MariaDB's root, over the unix socket.
fn root_sql(sql: &str) -> String {
    let sock = stack_dir().join("run/mariadb.sock");
    let out = Command::new("mariadb")
        .arg(format!("--socket={}", sock.display()))
        .args(["-u", "root", "-N", "-B", "-e", sql])
        .output()
        .expect("mariadb client");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `require_secure_transport=ON` until dropped: every TCP session must be TLS.
struct SecureTransport;

impl SecureTransport {
    fn on() -> SecureTransport {
        root_sql("SET GLOBAL require_secure_transport = ON");
        SecureTransport
    }
}

impl Drop for SecureTransport {
    fn drop(&mut self) {
        root_sql("SET GLOBAL require_secure_transport = OFF");
    }
}

/// The server's count of TLS handshakes it accepted.
fn ssl_accepts() -> u64 {
    root_sql("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'SSL_ACCEPTS'")
        .parse()
        .unwrap()
}

/// Points the job's config (its plain text: `plain`) at the secure
/// endpoints; `edit` may change the text further.
fn secure_config(job: &Job, plain: &str, edit: impl Fn(String) -> String) {
    let ca = tls("ca.pem");
    let text = plain
        .replace(
            "password_env = \"FALCON_MYSQL_PASSWORD\"\n",
            &format!(
                "password_env = \"FALCON_MYSQL_PASSWORD\"\nssl_mode = \"verify_identity\"\nssl_ca = \"{ca}\"\n"
            ),
        )
        .replace(
            &format!("brokers = \"{}\"", support::BROKERS),
            "brokers = \"127.0.0.1:9094\"",
        )
        .replace(
            &format!("[hbase]\nthrift = \"{}\"", support::THRIFT),
            &format!(
                "[kafka.client]\nsecurity.protocol = \"SASL_SSL\"\nsasl.mechanism = \"SCRAM-SHA-512\"\n\
                 sasl.username = \"falcon\"\nsasl.password.env = \"{SASL_ENV}\"\nssl.ca.location = \"{ca}\"\n\
                 [hbase]\nthrift = \"127.0.0.1:9095\"\nhttp = true\ntls = true\ntls_ca = \"{ca}\""
            ),
        );
    assert!(text.contains("9094") && text.contains("9095") && text.contains("verify_identity"));
    std::fs::write(&job.config_path, edit(text)).unwrap();
}

fn run(job: &Job, sub: &str, args: &[&str], password: &str) -> Outcome {
    let out = Outcome::from(
        job.migrate_command(sub, args)
            .env(SASL_ENV, password)
            .output()
            .unwrap(),
    );
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !stream.contains(password),
            "{sub}: the SASL password is in the output: {stream}"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_diff_verify_over_tls_sasl_and_https_converge_exactly() {
    let job = Job::new("secure", 5_000, false).await;
    let plain = std::fs::read_to_string(&job.config_path).unwrap();
    secure_config(&job, &plain, |t| t);
    let _secure = SecureTransport::on();
    let accepts_before = ssl_accepts();

    // check reports each server encrypted, how the tool logs in, and the certificate.
    let check = run(&job, "check", &[], SASL_PASSWORD);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let s = &check.json()["security"];
    for server in ["mysql", "kafka", "hbase"] {
        assert_eq!(s[server]["encrypted"], true, "{server}: {s}");
        assert_eq!(s[server]["verified"], "chain and name", "{server}: {s}");
        let cert = &s[server]["certificate"];
        assert!(
            cert["subject"].as_str().unwrap().contains("CN=localhost"),
            "{server}: {cert}"
        );
        assert!(cert["days_left"].as_i64().unwrap() > 0, "{server}: {cert}");
    }
    // The server's own word for the tool's session.
    assert!(
        s["mysql"]["cipher"].as_str().unwrap().contains("TLS"),
        "{s}"
    );
    assert_eq!(
        s["kafka"]["authenticated"],
        "SASL SCRAM-SHA-512 (user falcon)"
    );

    let base = run(
        &job,
        "base",
        &["--workers", "2", "--chunk-rows", "2000"],
        SASL_PASSWORD,
    );
    assert_eq!(base.code, 0, "{}", base.stderr);

    // Live changes, through a TLS session (the server refuses plain ones now).
    let tls_admin = format!(
        "{}/{}?require_ssl=true&verify_ca=false&verify_identity=false",
        support::ADMIN,
        job.database
    );
    let report = falcon_migrate::fixtures::churn::churn(
        &tls_admin,
        &falcon_migrate::fixtures::churn::ChurnOptions {
            rate: 200.0,
            duration: std::time::Duration::from_secs(3),
            seed: 5,
            log: None,
        },
    )
    .await
    .expect("churn over TLS");
    assert!(report.changes > 100, "{report:?}");

    let diff = run(&job, "diff", &["--until-now"], SASL_PASSWORD);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    let d = diff.json();
    assert!(d["applied_total"].as_u64().unwrap() > 0, "{d}");
    assert_converged(&job).await;
    assert!(assert_no_duplicate_events(&job, "message") > 0);

    let verify = run(&job, "verify", &["--target", "all"], SASL_PASSWORD);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    assert_eq!(verify.json()["identical"], true, "{}", verify.stdout);

    // Server side: every TCP session was refused unless encrypted
    // (require_secure_transport), and the server did the handshakes.
    assert_eq!(root_sql("SELECT @@GLOBAL.require_secure_transport"), "1");
    let handshakes = ssl_accepts() - accepts_before;
    assert!(handshakes >= 4, "only {handshakes} TLS handshakes");
}

/// What `base` says when it cannot start; it must exit 2 and write nothing.
fn refused(job: &Job, password: &str) -> String {
    let out = run(job, "base", &["--workers", "1"], password);
    assert_eq!(
        out.code, 2,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert!(
        !job.state_dir
            .join("base/base/shard-0-of-1.done.jsonl")
            .exists()
            || std::fs::read_to_string(job.state_dir.join("base/base/shard-0-of-1.done.jsonl"))
                .unwrap()
                .is_empty(),
        "a chunk was committed"
    );
    out.stderr
}

fn assert_names(stderr: &str, server: &str, cause: &[&str]) {
    assert!(stderr.contains(server), "does not name {server}: {stderr}");
    assert!(
        cause.iter().any(|c| stderr.contains(c)),
        "no cause ({cause:?}) in: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_wrong_password_and_plain_clients_stop_at_start_with_exit_2() {
    let job = Job::new("secbad", 300, false).await;
    let other_ca = tls("other-ca.pem");
    let ca = tls("ca.pem");
    let plain = std::fs::read_to_string(&job.config_path).unwrap();
    let _secure = SecureTransport::on();

    // A CA that did not sign the server's certificate, for each server.
    secure_config(&job, &plain, |t| {
        t.replacen(
            &format!("ssl_ca = \"{ca}\""),
            &format!("ssl_ca = \"{other_ca}\""),
            1,
        )
    });
    let e = refused(&job, SASL_PASSWORD);
    assert_names(
        &e,
        "MySQL at 127.0.0.1:3306",
        &["certificate verify failed"],
    );

    secure_config(&job, &plain, |t| {
        t.replace(
            &format!("ssl.ca.location = \"{ca}\""),
            &format!("ssl.ca.location = \"{other_ca}\""),
        )
    });
    let e = refused(&job, SASL_PASSWORD);
    assert_names(
        &e,
        "Kafka at 127.0.0.1:9094",
        &["certificate verify failed"],
    );

    secure_config(&job, &plain, |t| {
        t.replace(
            &format!("tls_ca = \"{ca}\""),
            &format!("tls_ca = \"{other_ca}\""),
        )
    });
    let e = refused(&job, SASL_PASSWORD);
    assert_names(&e, "127.0.0.1:9095", &["certificate verify failed"]);

    // A wrong SASL password: named as such, and never echoed.
    secure_config(&job, &plain, |t| t);
    let e = refused(&job, "not-the-password");
    assert_names(
        &e,
        "Kafka at 127.0.0.1:9094",
        &["Authentication failed", "invalid credentials"],
    );

    // Plain clients against TLS-only servers.
    secure_config(&job, &plain, |t| {
        t.replace("ssl_mode = \"verify_identity\"", "ssl_mode = \"disabled\"")
            .replace(&format!("ssl_ca = \"{ca}\"\n"), "")
    });
    let e = refused(&job, SASL_PASSWORD);
    assert_names(
        &e,
        "MySQL at 127.0.0.1:3306",
        &["insecure transport", "requires secure transport"],
    );

    secure_config(&job, &plain, |t| {
        t.replace(
            "security.protocol = \"SASL_SSL\"",
            "security.protocol = \"SASL_PLAINTEXT\"",
        )
        .replace(&format!("ssl.ca.location = \"{ca}\"\n"), "")
    });
    let e = refused(&job, SASL_PASSWORD);
    assert_names(
        &e,
        "Kafka at 127.0.0.1:9094",
        &["security.protocol", "SSL listener"],
    );

    secure_config(&job, &plain, |t| {
        t.replace("tls = true\n", "")
            .replace(&format!("tls_ca = \"{ca}\""), "")
    });
    let e = refused(&job, SASL_PASSWORD);
    assert_names(&e, "127.0.0.1:9095", &["TLS gateway drops a plain client"]);
}

#[test]
fn a_secret_written_in_the_config_is_refused_without_echoing_it() {
    let dir = std::env::temp_dir().join(format!("falcon-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("falcon.toml");
    std::fs::write(
        &path,
        "[source]\nurl = \"mysql://falcon@127.0.0.1:3306/legacy_chat\"\n\
         [kafka]\nbrokers = \"127.0.0.1:9094\"\n[kafka.client]\nsasl.password = \"hunter2-literal\"\n\
         [hbase]\nthrift = \"127.0.0.1:9090\"\n\
         [[table]]\nsource = \"message\"\nkind = \"message\"\ntopic = \"t\"\nhbase_table = \"h\"\n",
    )
    .unwrap();
    let out = Outcome::from(
        Command::new(env!("CARGO_BIN_EXE_falcon-migrate"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("sasl.password.env"), "{}", out.stderr);
    assert!(out.stderr.contains("line "), "{}", out.stderr);
    assert!(
        !out.stderr.contains("hunter2") && !out.stdout.contains("hunter2"),
        "{}",
        out.stderr
    );
    std::fs::remove_dir_all(&dir).ok();
}
