//! Connecting to the source and reading its binlog coordinates.

use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::Row;

use crate::config::{Config, SslMode, TableMapping};
use crate::error::{Error, Result};
use crate::mapping::{self, TableSpec};
use crate::position::Position;
use crate::source::binlog::gtid::GtidState;
use crate::tls::Security;

/// A pool of `size` connections; fails with a clear "cannot connect" naming the
/// host (never the password) when the server does not answer.
pub async fn connect(cfg: &Config, size: u32) -> Result<MySqlPool> {
    use sqlx::ConnectOptions;
    // Chunk reads are long by design: no "slow statement" noise.
    let opts = cfg
        .source_connect_options()?
        .log_statements(tracing::log::LevelFilter::Off)
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600));
    let timeout = Duration::from_secs(cfg.source.connect_timeout_s.unwrap_or(10));
    MySqlPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(timeout)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // Read what is stored, byte for byte, in UTC.
                sqlx::query("SET SESSION time_zone = '+00:00', SESSION sql_mode = ''")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .map_err(|e| Error::Unreachable {
            what: "MySQL",
            target: cfg.source_endpoint(),
            message: match e {
                sqlx::Error::PoolTimedOut => format!("no answer within {}s", timeout.as_secs()),
                // MariaDB refuses a plain session under require_secure_transport
                // as an access denial (1045).
                other
                    if cfg.source.tls.mode == SslMode::Disabled
                        && other.to_string().contains("1045") =>
                {
                    format!(
                        "{other} (ssl_mode is disabled: a server that requires secure transport \
                         refuses plain sessions this way)"
                    )
                }
                other => other.to_string(),
            },
        })
}

/// A single mysql_async connection to the source (the binlog stream: sqlx
/// cannot speak the replication protocol), with the same URL, password and
/// TLS settings as [`connect`]. `preferred` tries TLS and falls back to a
/// plain session only when the server offers no TLS at all.
pub async fn binlog_conn(cfg: &Config) -> Result<mysql_async::Conn> {
    let shown = cfg.path.display().to_string();
    let opts = mysql_async::Opts::from_url(&cfg.source.url)
        .map_err(|e| Error::config(&shown, format!("source.url: {e}")))?;
    let mut b = mysql_async::OptsBuilder::from_opts(opts);
    if let Some(p) = cfg.source_password() {
        b = b.pass(Some(p));
    }
    let unreachable = |e: mysql_async::Error| Error::Unreachable {
        what: "MySQL (binlog)",
        target: cfg.source_endpoint(),
        message: e.to_string(),
    };
    let Some(ssl) = binlog_ssl(cfg)? else {
        return mysql_async::Conn::new(b).await.map_err(unreachable);
    };
    match mysql_async::Conn::new(b.clone().ssl_opts(ssl)).await {
        Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))
            if cfg.source.tls.mode == SslMode::Preferred =>
        {
            mysql_async::Conn::new(b).await.map_err(unreachable)
        }
        other => other.map_err(unreachable),
    }
}

/// mysql_async's TLS options for the configured mode (`None`: plain).
fn binlog_ssl(cfg: &Config) -> Result<Option<mysql_async::SslOpts>> {
    let t = &cfg.source.tls;
    if t.mode == SslMode::Disabled {
        return Ok(None);
    }
    let mut ssl = mysql_async::SslOpts::default()
        .with_danger_accept_invalid_certs(!t.mode.verifies_ca())
        .with_danger_skip_domain_validation(t.mode != SslMode::VerifyIdentity);
    if let Some(ca) = &t.ca {
        ssl = ssl.with_root_certs(vec![ca.clone().into()]);
    }
    if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
        // native-tls takes a client identity as PKCS#12 only: made in memory
        // from the PEM files sqlx reads as they are.
        let der = crate::tls::pkcs12_identity(cert, key)
            .map_err(|m| Error::config(cfg.path.display().to_string(), m))?;
        ssl = ssl.with_client_identity(Some(mysql_async::ClientIdentity::new(der.into())));
    }
    Ok(Some(ssl))
}

/// The source's current binlog coordinates and GTID set.
/// The server's binlog position now, with its GTID state there (MariaDB).
/// The state is read before and after the position: equal, no group was
/// written in between and it is the state at the position; a busy server
/// gets a few tries, then the state is asked for at the position itself.
pub async fn binlog_position(pool: &MySqlPool) -> Result<Position> {
    let gtid_now = || async {
        sqlx::query_scalar::<_, String>("SELECT CAST(@@GLOBAL.gtid_binlog_pos AS CHAR)")
            .fetch_one(pool)
            .await
            .ok()
    };
    for _ in 0..5 {
        let before = gtid_now().await;
        let (file, offset) = master_status(pool).await?;
        if before.is_some() && gtid_now().await == before {
            let gtid = before.unwrap_or_default();
            return Ok(Position::Binlog { file, offset, gtid });
        }
        if before.is_none() {
            // Not MariaDB: no GTID state to record.
            return Ok(Position::Binlog {
                file,
                offset,
                gtid: String::new(),
            });
        }
    }
    let (file, offset) = master_status(pool).await?;
    let mut p = Position::Binlog {
        file,
        offset,
        gtid: String::new(),
    };
    let gtid = gtid_at(pool, &p).await;
    if let Position::Binlog { gtid: g, .. } = &mut p {
        *g = gtid;
    }
    Ok(p)
}

/// `SHOW MASTER STATUS`: the current binlog file and offset.
async fn master_status(pool: &MySqlPool) -> Result<(String, u64)> {
    let row = sqlx::query("SHOW MASTER STATUS")
        .fetch_optional(pool)
        .await
        .map_err(|e| Error::mysql("SHOW MASTER STATUS", e))?
        .ok_or_else(|| Error::Binlog {
            context: "SHOW MASTER STATUS".into(),
            message: "the binlog is off (log_bin is not set): diff cannot replay changes".into(),
        })?;
    let file: String = row
        .try_get(0)
        .map_err(|e| Error::mysql("SHOW MASTER STATUS file", e))?;
    let offset: u64 = row
        .try_get(1)
        .map_err(|e| Error::mysql("SHOW MASTER STATUS position", e))?;
    Ok((file, offset))
}

/// Checks the source is reachable and the binlog is usable.
pub async fn check(cfg: &Config) -> Result<(Position, Security)> {
    let pool = connect(cfg, 1).await?;
    let pos = binlog_position(&pool).await?;
    let security = security(cfg, &pool).await?;
    pool.close().await;
    Ok((pos, security))
}

/// How the tool's sessions with the source are protected: the server's own
/// word (`Ssl_version`, `Ssl_cipher` of this session) and the certificate
/// it presents.
pub async fn security(cfg: &Config, pool: &MySqlPool) -> Result<Security> {
    let rows =
        sqlx::query("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
            .fetch_all(pool)
            .await
            .map_err(|e| Error::mysql("read the session's TLS status", e))?;
    let status = |name: &str| {
        rows.iter()
            .find(|r| r.try_get::<String, _>(0).is_ok_and(|n| n == name))
            .and_then(|r| r.try_get::<String, _>(1).ok())
            .filter(|v| !v.is_empty())
    };
    let user = cfg.source_connect_options()?.get_username().to_string();
    let t = &cfg.source.tls;
    let Some(cipher) = status("Ssl_cipher") else {
        return Ok(Security::plain(format!("password (user {user})")));
    };
    let endpoint = cfg.source_endpoint();
    let certificate = tokio::task::spawn_blocking(move || {
        crate::tls::peer_certificate(&endpoint, crate::tls::StartTls::Mysql)
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?
    .map_err(|m| Error::Unreachable {
        what: "MySQL",
        target: cfg.source_endpoint(),
        message: m,
    })?;
    Ok(Security {
        encrypted: true,
        cipher: Some(format!(
            "{} {cipher}",
            status("Ssl_version").unwrap_or_default()
        )),
        verified: match t.mode {
            SslMode::VerifyIdentity => "chain and name",
            SslMode::VerifyCa => "chain",
            _ => "nothing",
        },
        authenticated: if t.cert.is_some() {
            format!("password (user {user}) and client certificate")
        } else {
            format!("password (user {user})")
        },
        certificate,
    })
}

/// A mapped source table as found on the server.
#[derive(Clone)]
pub struct SourceTable {
    pub mapping: TableMapping,
    pub spec: &'static TableSpec,
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub estimated_rows: u64,
}

impl SourceTable {
    pub fn name(&self) -> &str {
        &self.mapping.source
    }
}

/// Checks the table and its columns exist and finds its key range.
pub async fn inspect(pool: &MySqlPool, database: &str, m: TableMapping) -> Result<SourceTable> {
    let spec = mapping::spec(m.kind);
    let t = &m.source;
    let est: Option<u64> = sqlx::query_scalar(
        "SELECT CAST(COALESCE(TABLE_ROWS, 0) AS UNSIGNED) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
    )
    .bind(database)
    .bind(t)
    .fetch_optional(pool)
    .await
    .map_err(|e| Error::mysql(format!("look up table {t}"), e))?;
    let Some(est) = est else {
        return Err(Error::Usage(format!(
            "source table {database}.{t} does not exist (mapped in the config as kind {})",
            m.kind.as_str()
        )));
    };
    let list = spec.select_list();
    sqlx::query(&format!("SELECT {list} FROM `{t}` LIMIT 0"))
        .execute(pool)
        .await
        .map_err(|e| {
            Error::Usage(format!(
                "source table {t} does not have the columns the {} mapping reads ({list}): {e}",
                m.kind.as_str()
            ))
        })?;
    let k = spec.leading_key();
    let (min, max): (Option<u64>, Option<u64>) =
        sqlx::query_as(&format!("SELECT MIN(`{k}`), MAX(`{k}`) FROM `{t}`"))
            .fetch_one(pool)
            .await
            .map_err(|e| Error::mysql(format!("key range of {t}"), e))?;
    Ok(SourceTable {
        spec,
        min,
        max,
        estimated_rows: est,
        mapping: m,
    })
}

/// The binlog position of a consistent snapshot: every transaction before it
/// is visible to any read that starts afterwards, and every one after it is
/// in the binlog after it. MariaDB reports it for `START TRANSACTION WITH
/// CONSISTENT SNAPSHOT` (`binlog_snapshot_file` / `_position`); elsewhere
/// `SHOW MASTER STATUS` is read inside such a transaction.
pub async fn snapshot_position(pool: &MySqlPool) -> Result<Position> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| Error::mysql("snapshot connection", e))?;
    sqlx::query("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::mysql("START TRANSACTION WITH CONSISTENT SNAPSHOT", e))?;
    let rows: Vec<(String, String)> = sqlx::query_as("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_default();
    let get = |n: &str| {
        rows.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let snap = match (get("binlog_snapshot_file"), get("binlog_snapshot_position")) {
        (Some(file), Some(pos)) if !file.is_empty() => {
            pos.parse::<u64>().ok().map(|offset| (file, offset))
        }
        _ => None,
    };
    let result = match snap {
        Some((file, offset)) => {
            let gtid: String = sqlx::query_scalar("SELECT CAST(@@GLOBAL.gtid_binlog_pos AS CHAR)")
                .fetch_one(&mut *conn)
                .await
                .unwrap_or_default();
            Ok(Position::Binlog { file, offset, gtid })
        }
        None => binlog_position(pool).await,
    };
    let _ = sqlx::query("COMMIT").execute(&mut *conn).await;
    result
}

/// MariaDB: the GTID state at a binlog position (`BINLOG_GTID_POS`); empty
/// where the server has no such function or cannot tell.
pub async fn gtid_at(pool: &MySqlPool, p: &Position) -> String {
    gtid_state_at(pool, p)
        .await
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// MariaDB: the GTID state at a position (`BINLOG_GTID_POS`, which reads the
/// binlog file from its start up to the offset: once per run, not per batch);
/// None when the server cannot say (not MariaDB, a position it does not have).
pub async fn gtid_state_at(pool: &MySqlPool, p: &Position) -> Option<GtidState> {
    let Position::Binlog { file, offset, .. } = p else {
        return None;
    };
    let s = sqlx::query_scalar::<_, Option<String>>("SELECT CAST(BINLOG_GTID_POS(?, ?) AS CHAR)")
        .bind(file)
        .bind(*offset)
        .fetch_one(pool)
        .await
        .ok()
        .flatten()?;
    GtidState::parse(&s)
}

/// `d-s-n[,d-s-n…]` → domain → sequence number.
fn parse_gtid_state(s: &str) -> std::collections::BTreeMap<u64, u64> {
    GtidState::parse(s).unwrap_or_default().seq_by_domain()
}

/// MariaDB: the position on this server right after every transaction of the
/// GTID state `gtid` — how a checkpoint of another server (before a
/// failover) is found on this one. None when this server's binlogs do not
/// reach back to it. Reads `SHOW BINLOG EVENTS` of one file.
pub async fn position_of_gtid(pool: &MySqlPool, gtid: &str) -> Result<Option<Position>> {
    let target = parse_gtid_state(gtid);
    if target.is_empty() {
        return Ok(None);
    }
    let files: Vec<String> = sqlx::query("SHOW BINARY LOGS")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::mysql("SHOW BINARY LOGS", e))?
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
    // The newest file that starts at or before the target in every domain.
    let mut found = None;
    for f in files.iter().rev() {
        let at_start = parse_gtid_state(
            &gtid_at(
                pool,
                &Position::Binlog {
                    file: f.clone(),
                    offset: 4,
                    gtid: String::new(),
                },
            )
            .await,
        );
        if at_start
            .iter()
            .all(|(d, n)| target.get(d).is_some_and(|t| n <= t))
        {
            found = Some(f.clone());
            break;
        }
    }
    let Some(file) = found else { return Ok(None) };
    let rows = sqlx::query(&format!(
        "SHOW BINLOG EVENTS IN '{}'",
        file.replace('\'', "")
    ))
    .fetch_all(pool)
    .await
    .map_err(|e| Error::mysql(format!("SHOW BINLOG EVENTS IN {file}"), e))?;
    let mut end = 4u64;
    for r in &rows {
        let pos: u64 = r.try_get("Pos").unwrap_or(0);
        let kind: String = r.try_get("Event_type").unwrap_or_default();
        let info: String = r.try_get("Info").unwrap_or_default();
        end = r.try_get("End_log_pos").unwrap_or(end);
        if kind.eq_ignore_ascii_case("Gtid") {
            // "BEGIN GTID 0-1-135" or "GTID 0-1-136": the first transaction
            // the state does not include starts here.
            let g = info
                .split_whitespace()
                .find(|w| w.matches('-').count() == 2);
            let state = g.map(parse_gtid_state).unwrap_or_default();
            if let Some((d, n)) = state.into_iter().next() {
                if target.get(&d).is_none_or(|t| n > *t) {
                    return Ok(Some(Position::Binlog {
                        file,
                        offset: pos,
                        gtid: gtid.to_string(),
                    }));
                }
            }
        }
    }
    Ok(Some(Position::Binlog {
        file,
        offset: end,
        gtid: gtid.to_string(),
    }))
}
