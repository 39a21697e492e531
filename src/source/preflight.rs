//! Preflight: the source settings the phases rely on, checked before any work,
//! on MySQL and MariaDB alike. A setting that would make diff skip changes
//! silently (statement-logged data, partial row images, compressed events a
//! replica's binlog never receiving replicated changes, table names the binlog
//! spells differently from the config) stops the run with exit status 2
//! instead, each finding naming the variable, its value, the value needed and
//! the fix.
//!
//! Global values are what new sessions start with; a session can still
//! override its own `binlog_format`, which is why the binlog reader also stops
//! on a data change logged as a statement.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::mysql::MySqlPool;
use sqlx::Row;

use crate::config::Config;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// The run must not start.
    Fail,
    /// Could not be checked (e.g. a missing privilege); reported, not fatal.
    Warn,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The server variable checked (`binlog_format`, `lower_case_table_names`, …).
    pub variable: String,
    pub value: String,
    pub required: String,
    pub status: Status,
    /// For a failure or warning: why it matters and the exact fix.
    pub message: String,
}

impl Finding {
    fn new(variable: &str, value: &str, required: &str, ok: bool, message: String) -> Self {
        Finding {
            variable: variable.into(),
            value: value.into(),
            required: required.into(),
            status: if ok { Status::Pass } else { Status::Fail },
            message: if ok { String::new() } else { message },
        }
    }

    /// One line for a report: `pass  binlog_format = ROW` or the failure and its fix.
    pub fn line(&self) -> String {
        match self.status {
            Status::Pass => format!("pass  {} = {}", self.variable, self.value),
            Status::Fail => format!(
                "FAIL  {} = {} (required: {}): {}",
                self.variable, self.value, self.required, self.message
            ),
            Status::Warn => format!("warn  {} = {}: {}", self.variable, self.value, self.message),
        }
    }
}

/// What the checks read from the server.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub mariadb: bool,
    pub version: String,
    /// Global variables by lower-case name; absent when the server has no such variable.
    pub vars: HashMap<String, String>,
    /// Whether replication status shows a configured source; Err: why it could not be read.
    pub replica: std::result::Result<bool, String>,
    /// `(schema, table)` of the tables whose schema equals the config's database
    /// regardless of letter case.
    pub tables: Vec<(String, String)>,
}

/// Runs every check and returns all findings, passed ones included.
/// `needs_binlog`: the run replays (or records a position for) the binlog.
pub async fn preflight(pool: &MySqlPool, cfg: &Config, needs_binlog: bool) -> Result<Vec<Finding>> {
    let facts = read_facts(pool, cfg).await?;
    let database = cfg.database().unwrap_or_default();
    let tables: Vec<&str> = cfg.tables.iter().map(|t| t.source.as_str()).collect();
    Ok(evaluate(&facts, &database, &tables, needs_binlog))
}

/// `preflight`, logging warnings; any failure is `Error::Preflight` (exit 2).
pub async fn require(pool: &MySqlPool, cfg: &Config, needs_binlog: bool) -> Result<()> {
    let findings = preflight(pool, cfg, needs_binlog).await?;
    for f in findings.iter().filter(|f| f.status == Status::Warn) {
        tracing::warn!("source preflight: {}", f.line());
    }
    into_result(&findings)
}

/// For `falcon-migrate check`: connects, logs what did not pass, and fails
/// like `require`; returns every finding for the report.
pub async fn check(cfg: &Config) -> Result<Vec<Finding>> {
    let pool = super::mysql::connect(cfg, 1).await?;
    let findings = preflight(&pool, cfg, true).await;
    pool.close().await;
    let findings = findings?;
    for f in findings.iter().filter(|f| f.status == Status::Warn) {
        tracing::warn!("source preflight: {}", f.line());
    }
    into_result(&findings)?;
    Ok(findings)
}

/// `Error::Preflight` listing the failures, if any.
pub fn into_result(findings: &[Finding]) -> Result<()> {
    let failed: Vec<String> = findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .map(|f| format!("\n  - {}", f.line()))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Preflight {
            findings: failed.concat(),
        })
    }
}

const VARIABLES: &[&str] = &[
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "log_bin_compress",
    "binlog_transaction_compression",
    "log_slave_updates",
    "log_replica_updates",
    "lower_case_table_names",
];

async fn read_facts(pool: &MySqlPool, cfg: &Config) -> Result<ServerFacts> {
    let (version, comment): (String, String) =
        sqlx::query_as("SELECT CAST(@@version AS CHAR), CAST(@@version_comment AS CHAR)")
            .fetch_one(pool)
            .await
            .map_err(|e| Error::mysql("read @@version", e))?;
    let mariadb = format!("{version} {comment}")
        .to_ascii_lowercase()
        .contains("mariadb");
    let list = VARIABLES
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(",");
    let vars = sqlx::query(&format!(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})"
    ))
    .fetch_all(pool)
    .await
    .map_err(|e| Error::mysql("SHOW GLOBAL VARIABLES", e))?
    .iter()
    .filter_map(|r| {
        let name: String = r.try_get(0).ok()?;
        let value: String = r.try_get(1).ok()?;
        Some((name.to_ascii_lowercase(), value))
    })
    .collect();
    // MariaDB's SHOW SLAVE STATUS shows only the default connection of a
    // multi-source replica; MySQL 8.0.22+ prefers SHOW REPLICA STATUS.
    let statements: &[&str] = if mariadb {
        &["SHOW ALL SLAVES STATUS"]
    } else {
        &["SHOW REPLICA STATUS", "SHOW SLAVE STATUS"]
    };
    let mut replica = Err(String::new());
    for s in statements {
        match sqlx::query(s).fetch_all(pool).await {
            Ok(rows) => {
                replica = Ok(!rows.is_empty());
                break;
            }
            Err(e) => replica = Err(format!("{s}: {e}")),
        }
    }
    let database = cfg.database().unwrap_or_default();
    let tables = sqlx::query_as(
        "SELECT CAST(TABLE_SCHEMA AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
         WHERE LOWER(TABLE_SCHEMA) = LOWER(?)",
    )
    .bind(&database)
    .fetch_all(pool)
    .await
    .map_err(|e| Error::mysql("list the source tables", e))?;
    Ok(ServerFacts {
        mariadb,
        version,
        vars,
        replica,
        tables,
    })
}

fn is_on(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("ON") || v == "1")
}

fn shown(v: Option<&String>) -> &str {
    v.map_or("(not set)", String::as_str)
}

/// The checks, from what was read: pure, so each rule is unit-tested.
pub fn evaluate(
    facts: &ServerFacts,
    database: &str,
    tables: &[&str],
    needs_binlog: bool,
) -> Vec<Finding> {
    let var = |n: &str| facts.vars.get(n);
    let server = if facts.mariadb { "MariaDB" } else { "MySQL" };
    let mut out = Vec::new();
    if needs_binlog {
        let log_bin = var("log_bin");
        out.push(Finding::new(
            "log_bin",
            shown(log_bin),
            "ON",
            is_on(log_bin),
            format!(
                "the binary log is off, so diff has nothing to replay. Fix: log_bin is not dynamic: add \
                 log_bin = {} and a unique server_id to my.cnf and restart the server",
                if facts.mariadb { "mariadb-bin" } else { "binlog" }
            ),
        ));
        let fmt = var("binlog_format");
        out.push(Finding::new(
            "binlog_format",
            shown(fmt),
            "ROW",
            fmt.is_some_and(|v| v.eq_ignore_ascii_case("ROW")),
            "with STATEMENT or MIXED some data changes are logged as statements, whose rows diff cannot \
             see. Fix: SET GLOBAL binlog_format = 'ROW'; add binlog_format = ROW to my.cnf; reconnect \
             the application (open sessions keep their format)"
                .into(),
        ));
        let image = var("binlog_row_image");
        out.push(Finding::new(
            "binlog_row_image",
            shown(image),
            "FULL",
            // Servers before the variable existed log full images.
            image.is_none_or(|v| v.eq_ignore_ascii_case("FULL")),
            "a MINIMAL or NOBLOB image leaves columns out of the row events diff maps. Fix: \
             SET GLOBAL binlog_row_image = 'FULL'; add binlog_row_image = FULL to my.cnf"
                .into(),
        ));
        for (name, fix) in [
            (
                "log_bin_compress",
                "SET GLOBAL log_bin_compress = OFF; add log_bin_compress = OFF to my.cnf",
            ),
            (
                "binlog_transaction_compression",
                "SET GLOBAL binlog_transaction_compression = OFF; add binlog_transaction_compression = OFF to my.cnf",
            ),
        ] {
            if let Some(v) = var(name) {
                out.push(Finding::new(
                    name,
                    v,
                    "OFF",
                    !is_on(Some(v)),
                    format!(
                        "the binlog reader cannot decode compressed events (diff would stop at the first one). Fix: {fix}"
                    ),
                ));
            }
        }
        out.push(replica_finding(facts, server));
    }
    out.extend(table_name_findings(facts, database, tables));
    out
}

/// On a replica, changes applied by replication reach its binlog only with
/// log_slave_updates (log_replica_updates).
fn replica_finding(facts: &ServerFacts, server: &str) -> Finding {
    let name = if facts.vars.contains_key("log_replica_updates") {
        "log_replica_updates"
    } else {
        "log_slave_updates"
    };
    let value = facts.vars.get(name);
    if is_on(value) {
        return Finding::new(name, shown(value), "ON", true, String::new());
    }
    let fix = format!(
        "{name} is not dynamic: add {name} = ON to my.cnf and restart the {server} server, or point \
         source.url at the primary"
    );
    match &facts.replica {
        Ok(false) => Finding::new(
            name,
            &format!("{} (not a replica)", shown(value)),
            "ON on a replica",
            true,
            String::new(),
        ),
        Ok(true) => Finding::new(
            name,
            shown(value),
            "ON on a replica",
            false,
            format!(
                "this server is a replica, and changes it receives by replication never reach its binlog. Fix: {fix}"
            ),
        ),
        Err(e) => Finding {
            variable: name.into(),
            value: shown(value).into(),
            required: "ON on a replica".into(),
            status: Status::Warn,
            message: format!(
                "could not tell whether the server is a replica ({e}); grant {} to check, and if it is one: {fix}",
                if facts.mariadb {
                    "SLAVE MONITOR"
                } else {
                    "REPLICATION CLIENT"
                }
            ),
        },
    }
}

/// lower_case_table_names against the config's database and table names. The
/// binlog reader matches table-map events by exact name.
fn table_name_findings(facts: &ServerFacts, database: &str, tables: &[&str]) -> Vec<Finding> {
    const V: &str = "lower_case_table_names";
    let lctn = facts.vars.get(V).map_or("0", String::as_str);
    let mut out = Vec::new();
    let names = std::iter::once(("database", database)).chain(tables.iter().map(|t| ("table", *t)));
    for (what, name) in names {
        let shown_name = if what == "database" {
            format!("database {name}")
        } else {
            format!("table {database}.{name}")
        };
        let exists_exactly = if what == "database" {
            facts.tables.iter().any(|(s, _)| s == name)
        } else {
            facts.tables.iter().any(|(s, t)| s == database && t == name)
        };
        let other_case = if what == "database" {
            facts
                .tables
                .iter()
                .map(|(s, _)| s)
                .find(|s| s.eq_ignore_ascii_case(name) && *s != name)
        } else {
            facts
                .tables
                .iter()
                .map(|(_, t)| t)
                .find(|t| t.eq_ignore_ascii_case(name) && *t != name)
        };
        let key = if what == "database" {
            "the database in source.url".to_string()
        } else {
            format!("source = \"{}\"", name.to_lowercase())
        };
        let finding = match lctn {
            "1" | "2" if name.chars().any(|c| c.is_uppercase()) => Some(format!(
                "{shown_name} has upper-case letters, but with {V} = {lctn} the server {} and the binlog \
                 may name it `{}`; diff matches names exactly and would skip its changes. Fix: {}",
                if lctn == "1" {
                    "stores and logs names in lower case"
                } else {
                    "compares names in lower case"
                },
                name.to_lowercase(),
                if lctn == "1" {
                    format!("write it in lower case in the config ({key})")
                } else {
                    format!(
                        "rename it to lower case on the server (RENAME TABLE / a new database) and write {key} in the config"
                    )
                },
            )),
            "0" if !exists_exactly && other_case.is_some() => Some(format!(
                "{shown_name} does not exist, but `{}` does: with {V} = 0 names are case-sensitive. Fix: \
                 write `{}` in the config",
                other_case.unwrap_or(&String::new()),
                other_case.unwrap_or(&String::new()),
            )),
            _ => None,
        };
        let value = format!("{lctn} ({shown_name})");
        out.push(match finding {
            Some(message) => {
                Finding::new(V, &value, "names as the server logs them", false, message)
            }
            None => Finding::new(
                V,
                &value,
                "names as the server logs them",
                true,
                String::new(),
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(mariadb: bool) -> ServerFacts {
        let mut vars: HashMap<String, String> = [
            ("log_bin", "ON"),
            ("binlog_format", "ROW"),
            ("binlog_row_image", "FULL"),
            ("log_slave_updates", "OFF"),
            ("lower_case_table_names", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if mariadb {
            vars.insert("log_bin_compress".into(), "OFF".into());
        } else {
            vars.insert("binlog_transaction_compression".into(), "OFF".into());
            vars.insert("log_replica_updates".into(), "OFF".into());
        }
        ServerFacts {
            mariadb,
            version: "x".into(),
            vars,
            replica: Ok(false),
            tables: vec![
                ("chat".into(), "message".into()),
                ("chat".into(), "room".into()),
            ],
        }
    }

    fn failed(f: &[Finding]) -> Vec<&Finding> {
        f.iter().filter(|f| f.status == Status::Fail).collect()
    }

    fn run(facts: &ServerFacts, tables: &[&str]) -> Vec<Finding> {
        evaluate(facts, "chat", tables, true)
    }

    #[test]
    fn a_well_configured_server_passes_every_check() {
        for mariadb in [true, false] {
            let f = run(&good(mariadb), &["message", "room"]);
            assert!(failed(&f).is_empty(), "{f:?}");
            assert!(into_result(&f).is_ok());
            // One finding per check is reported, passed ones included.
            assert!(f
                .iter()
                .any(|x| x.variable == "binlog_format" && x.value == "ROW"));
        }
    }

    #[test]
    fn each_binlog_setting_names_variable_value_requirement_and_fix() {
        for (mariadb, var, bad, fix) in [
            (
                true,
                "binlog_format",
                "MIXED",
                "SET GLOBAL binlog_format = 'ROW'",
            ),
            (
                false,
                "binlog_format",
                "STATEMENT",
                "binlog_format = ROW to my.cnf",
            ),
            (
                true,
                "binlog_row_image",
                "MINIMAL",
                "SET GLOBAL binlog_row_image = 'FULL'",
            ),
            (true, "log_bin", "OFF", "log_bin = mariadb-bin"),
            (false, "log_bin", "OFF", "log_bin = binlog"),
            (
                true,
                "log_bin_compress",
                "ON",
                "SET GLOBAL log_bin_compress = OFF",
            ),
            (
                false,
                "binlog_transaction_compression",
                "ON",
                "SET GLOBAL binlog_transaction_compression = OFF",
            ),
        ] {
            let mut facts = good(mariadb);
            facts.vars.insert(var.into(), bad.into());
            let f = run(&facts, &["message"]);
            let fails = failed(&f);
            assert_eq!(fails.len(), 1, "{var}={bad}: {f:?}");
            assert_eq!(fails[0].variable, var);
            assert_eq!(fails[0].value, bad);
            assert!(fails[0].message.contains(fix), "{}", fails[0].message);
            let e = into_result(&f).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(
                e.to_string().contains(var) && e.to_string().contains(fix),
                "{e}"
            );
        }
    }

    #[test]
    fn binlog_checks_are_skipped_when_the_run_reads_no_binlog() {
        let mut facts = good(true);
        facts
            .vars
            .insert("binlog_format".into(), "STATEMENT".into());
        let f = evaluate(&facts, "chat", &["message"], false);
        assert!(failed(&f).is_empty(), "{f:?}");
    }

    #[test]
    fn a_replica_needs_log_slave_updates() {
        let mut facts = good(true);
        facts.replica = Ok(true);
        let f = run(&facts, &["message"]);
        let fails = failed(&f);
        assert_eq!(fails.len(), 1, "{f:?}");
        assert_eq!(fails[0].variable, "log_slave_updates");
        assert!(fails[0].message.contains("log_slave_updates = ON"));
        // MySQL 8.0.26+ names it log_replica_updates.
        let mut facts = good(false);
        facts.replica = Ok(true);
        assert_eq!(
            failed(&run(&facts, &["message"]))[0].variable,
            "log_replica_updates"
        );
        // ON: passes without knowing whether it is a replica.
        let mut facts = good(true);
        facts.vars.insert("log_slave_updates".into(), "ON".into());
        facts.replica = Err("denied".into());
        assert!(run(&facts, &["message"])
            .iter()
            .all(|f| f.status == Status::Pass));
        // Unknown (no privilege) and OFF: a warning, not a failure.
        facts.vars.insert("log_slave_updates".into(), "OFF".into());
        let f = run(&facts, &["message"]);
        assert!(failed(&f).is_empty());
        let w: Vec<_> = f.iter().filter(|f| f.status == Status::Warn).collect();
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("SLAVE MONITOR"), "{}", w[0].message);
    }

    #[test]
    fn lower_case_table_names_is_checked_against_the_mapped_names() {
        // 1 or 2: a mapped name with upper-case letters never matches the binlog.
        for lctn in ["1", "2"] {
            let mut facts = good(true);
            facts
                .vars
                .insert("lower_case_table_names".into(), lctn.into());
            let f = run(&facts, &["Message", "room"]);
            let fails = failed(&f);
            assert_eq!(fails.len(), 1, "{f:?}");
            assert_eq!(fails[0].variable, "lower_case_table_names");
            assert!(fails[0].value.starts_with(lctn));
            assert!(
                fails[0].message.contains("chat.Message"),
                "{}",
                fails[0].message
            );
            assert!(
                fails[0].message.contains("source = \"message\""),
                "{}",
                fails[0].message
            );
            // The database name too.
            let f = evaluate(&facts, "Chat", &["message"], true);
            assert!(
                failed(&f)
                    .iter()
                    .any(|x| x.message.contains("database Chat")),
                "{f:?}"
            );
        }
        // 0: names are case-sensitive; a name that exists only in another case is wrong.
        let facts = good(true);
        let f = run(&facts, &["Message"]);
        let fails = failed(&f);
        assert_eq!(fails.len(), 1, "{f:?}");
        assert!(
            fails[0].message.contains("`message` does"),
            "{}",
            fails[0].message
        );
        // 0 with both spellings present: the exact one is used.
        let mut facts = good(true);
        facts.tables.push(("chat".into(), "Message".into()));
        assert!(failed(&run(&facts, &["Message"])).is_empty());
        // 0 and upper-case names that exist as written: fine.
        let mut facts = good(true);
        facts.tables = vec![("chat".into(), "Message".into())];
        assert!(failed(&run(&facts, &["Message"])).is_empty());
    }
}
