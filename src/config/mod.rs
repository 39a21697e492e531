//! The one TOML file that describes the job: connections and the table mapping.
//! How a run behaves (workers, rate, resume) is given by flags instead.

pub mod props;
pub mod tls;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{redact_url, Error, Result};
pub use props::{Properties, Secret};
pub use tls::{SourceTls, SslMode};

pub const ENV_CONFIG: &str = "FALCON_CONFIG";
pub const ENV_MYSQL_URL: &str = "FALCON_MYSQL_URL";
pub const ENV_MYSQL_PASSWORD: &str = "FALCON_MYSQL_PASSWORD";
pub const ENV_KAFKA_BROKERS: &str = "FALCON_KAFKA_BROKERS";
pub const ENV_HBASE_THRIFT: &str = "FALCON_HBASE_THRIFT";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub kafka: KafkaConfig,
    pub hbase: HbaseConfig,
    #[serde(default)]
    pub ids: IdConfig,
    #[serde(rename = "table")]
    pub tables: Vec<TableMapping>,
    /// Where the file was read from; relative paths in it resolve against its folder.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `mysql://user@host:port/database`. A password here works but is better
    /// kept in `password_env` or `password_file`.
    pub url: String,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// A file whose first line is the password (relative to the config file).
    pub password_file: Option<PathBuf>,
    /// Seconds to wait for a connection before calling the server unreachable.
    #[serde(default)]
    pub connect_timeout_s: Option<u64>,
    /// TLS: `disabled`, `preferred` (the default), `required`, `verify_ca`,
    /// `verify_identity` (MySQL's `--ssl-mode`). The URL's `ssl-mode` wins.
    pub ssl_mode: Option<SslMode>,
    /// CA certificate (PEM) the server's certificate must chain to.
    pub ssl_ca: Option<PathBuf>,
    /// Client certificate (PEM) and its key (PEM, PKCS#8), for servers that
    /// ask for one (`REQUIRE X509`).
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
    /// The TLS settings resolved from the keys above and the URL.
    #[serde(skip)]
    pub tls: SourceTls,
    /// Resolved password; never printed.
    #[serde(skip)]
    password: Option<String>,
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("url", &redact_url(&self.url))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// Largest event the brokers accept; larger rows are dead-lettered.
    #[serde(default = "default_message_max_bytes")]
    pub message_max_bytes: usize,
    /// Partitions for topics the tool creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Compacted topic where each chunk's completion is committed in the same
    /// transaction as the chunk's events: the exactly-once checkpoint.
    #[serde(default = "default_progress_topic")]
    pub progress_topic: String,
    /// librdkafka properties for every client the tool makes (producers, the
    /// admin client, the progress reader, verify's consumers): TLS, SASL, ….
    #[serde(default)]
    pub client: Properties,
    /// Producer-only librdkafka properties, on top of `client`.
    #[serde(default)]
    pub producer: Properties,
    /// Consumer-only librdkafka properties, on top of `client`.
    #[serde(default)]
    pub consumer: Properties,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HbaseConfig {
    /// `host:port` of the Thrift2 gateway.
    pub thrift: String,
    /// Thrift framed transport (the gateway's `-f`); the default is buffered.
    #[serde(default)]
    pub framed: bool,
    /// Thrift over HTTP (the gateway's `hbase.regionserver.thrift.http`): the
    /// only transport HBase's gateway serves over TLS.
    #[serde(default)]
    pub http: bool,
    /// TLS to the gateway (its `hbase.thrift.ssl.enabled`).
    #[serde(default)]
    pub tls: bool,
    /// CA certificate (PEM) the gateway's certificate must chain to; without
    /// it, the system's CAs.
    pub tls_ca: Option<PathBuf>,
    /// Check the gateway's certificate chain and name (default on).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Number of salt buckets (and pre-split regions) of each table.
    #[serde(default = "default_salt_buckets")]
    pub salt_buckets: u16,
    /// The one short column family every table uses.
    #[serde(default = "default_family")]
    pub column_family: String,
    /// Table holding legacy→new and new→legacy id pairs.
    #[serde(default = "default_id_map_table")]
    pub id_map_table: String,
}

impl HbaseConfig {
    /// A plain (no TLS, buffered, not HTTP) gateway at `addr`, with the
    /// defaults of every other setting.
    pub fn plain(addr: &str) -> HbaseConfig {
        HbaseConfig {
            thrift: addr.to_string(),
            framed: false,
            http: false,
            tls: false,
            tls_ca: None,
            tls_verify: true,
            salt_buckets: default_salt_buckets(),
            column_family: default_family(),
            id_map_table: default_id_map_table(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdConfig {
    /// Epoch of the 41-bit millisecond part of new ids.
    #[serde(default = "default_epoch_ms")]
    pub epoch_ms: u64,
}

impl Default for IdConfig {
    fn default() -> Self {
        IdConfig {
            epoch_ms: default_epoch_ms(),
        }
    }
}

/// Which built-in mapping turns a source row into events and cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Account,
    Room,
    RoomMember,
    Message,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Account => "account",
            EntityKind::Room => "room",
            EntityKind::RoomMember => "room_member",
            EntityKind::Message => "message",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// Source table name (in the URL's database).
    pub source: String,
    /// Which mapping applies.
    pub kind: EntityKind,
    /// Kafka topic receiving this table's events.
    pub topic: String,
    /// HBase table (`namespace:name` or `name`) holding this table's read model.
    pub hbase_table: String,
}

fn default_true() -> bool {
    true
}
fn default_message_max_bytes() -> usize {
    1_000_000
}
fn default_progress_topic() -> String {
    "falcon.progress".into()
}
fn default_partitions() -> i32 {
    8
}
fn default_replication() -> i32 {
    1
}
fn default_salt_buckets() -> u16 {
    16
}
fn default_family() -> String {
    "d".into()
}
fn default_id_map_table() -> String {
    "chat_id_map".into()
}
fn default_epoch_ms() -> u64 {
    // 2010-01-01T00:00:00Z: before the oldest legacy message.
    1_262_304_000_000
}

impl Config {
    /// Reads, overrides from the environment, and validates the config.
    pub fn load(path: &Path) -> Result<Config> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(&shown, format!("cannot read: {e}")))?;
        Self::parse(&text, path, |k| std::env::var(k).ok())
    }

    /// Parses `text` as if read from `path`, with `env` standing in for the
    /// process environment (so tests need not mutate it).
    pub fn parse(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let shown = path.display().to_string();
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Error::config(&shown, format!("{msg}{at}"))
        })?;
        cfg.path = path.to_path_buf();
        if let Some(url) = env(ENV_MYSQL_URL).filter(|v| !v.is_empty()) {
            cfg.source.url = url;
        }
        if let Some(b) = env(ENV_KAFKA_BROKERS).filter(|v| !v.is_empty()) {
            cfg.kafka.brokers = b;
        }
        if let Some(t) = env(ENV_HBASE_THRIFT).filter(|v| !v.is_empty()) {
            cfg.hbase.thrift = t;
        }
        cfg.resolve_password(&env)?;
        cfg.resolve_tls()?;
        let dir = cfg.path.parent().map(Path::to_path_buf);
        let k = &mut cfg.kafka;
        for (name, table) in [
            ("kafka.client", &mut k.client),
            ("kafka.producer", &mut k.producer),
            ("kafka.consumer", &mut k.consumer),
        ] {
            table
                .resolve(name, dir.as_deref(), &env)
                .map_err(|m| Error::config(&shown, m))?;
        }
        if let Some(ca) = cfg.hbase.tls_ca.take() {
            cfg.hbase.tls_ca = Some(cfg.relative(&ca));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_password(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<()> {
        let shown = self.path.display().to_string();
        let src = &mut self.source;
        if let Some(var) = &src.password_env {
            if let Some(p) = env(var) {
                src.password = Some(p);
                return Ok(());
            }
        }
        if let Some(p) = env(ENV_MYSQL_PASSWORD) {
            src.password = Some(p);
            return Ok(());
        }
        if let Some(file) = &src.password_file {
            let full = match self.path.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file.clone(),
            };
            let text = std::fs::read_to_string(&full).map_err(|e| {
                Error::config(
                    &shown,
                    format!("source.password_file {}: {e}", full.display()),
                )
            })?;
            src.password = Some(text.lines().next().unwrap_or("").to_string());
        }
        Ok(())
    }

    /// A path from the config file, taken from the file's folder when relative.
    fn relative(&self, p: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// The source's TLS settings: the URL's parameters win over the keys;
    /// they are taken out of the URL, which both drivers then accept.
    fn resolve_tls(&mut self) -> Result<()> {
        let shown = self.path.display().to_string();
        let (url, from_url) = tls::split_url_params(&self.source.url)
            .map_err(|m| Error::config(&shown, format!("source.url: {m}")))?;
        let key = |p: &Option<PathBuf>| p.as_deref().map(|p| self.relative(p));
        let t = SourceTls {
            mode: from_url.mode.or(self.source.ssl_mode).unwrap_or_default(),
            ca: from_url.ca.or_else(|| key(&self.source.ssl_ca)),
            cert: from_url.cert.or_else(|| key(&self.source.ssl_cert)),
            key: from_url.key.or_else(|| key(&self.source.ssl_key)),
        };
        if t.cert.is_some() != t.key.is_some() {
            return Err(Error::config(
                &shown,
                "source.ssl_cert and source.ssl_key: give both or neither",
            ));
        }
        if t.mode == SslMode::Disabled && (t.ca.is_some() || t.cert.is_some()) {
            return Err(Error::config(
                &shown,
                "source.ssl_mode is disabled but a CA or client certificate is given",
            ));
        }
        for (k, p) in [
            ("ssl_ca", &t.ca),
            ("ssl_cert", &t.cert),
            ("ssl_key", &t.key),
        ] {
            if let Some(p) = p {
                if let Err(e) = std::fs::metadata(p) {
                    return Err(Error::config(
                        &shown,
                        format!("source.{k} {}: {e}", p.display()),
                    ));
                }
            }
        }
        self.source.url = url;
        self.source.tls = t;
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        let shown = self.path.display().to_string();
        let bad = |key: &str, why: String| Err(Error::config(&shown, format!("{key}: {why}")));
        if !self.source.url.starts_with("mysql://") && !self.source.url.starts_with("mariadb://") {
            return bad(
                "source.url",
                format!(
                    "expected mysql://user@host:port/database, got {}",
                    redact_url(&self.source.url)
                ),
            );
        }
        if self.database().is_none() {
            return bad(
                "source.url",
                format!("names no database: {}", redact_url(&self.source.url)),
            );
        }
        for b in self.kafka.brokers.split(',') {
            if parse_host_port(b.trim()).is_none() {
                return bad("kafka.brokers", format!("expected host:port, got {b:?}"));
            }
        }
        if parse_host_port(&self.hbase.thrift).is_none() {
            return bad(
                "hbase.thrift",
                format!("expected host:port, got {:?}", self.hbase.thrift),
            );
        }
        if self.hbase.http && self.hbase.framed {
            return bad(
                "hbase.framed",
                "Thrift over HTTP has no framed transport: set http or framed, not both".into(),
            );
        }
        if let Some(ca) = &self.hbase.tls_ca {
            if !self.hbase.tls {
                return bad("hbase.tls_ca", "given but hbase.tls is off".into());
            }
            if let Err(e) = std::fs::metadata(ca) {
                return bad("hbase.tls_ca", format!("{}: {e}", ca.display()));
            }
        }
        crate::sink::kafka::validate(&self.kafka).map_err(|m| Error::config(&shown, m))?;
        if !(1..=256).contains(&self.hbase.salt_buckets) {
            return bad(
                "hbase.salt_buckets",
                format!("must be 1..=256, got {}", self.hbase.salt_buckets),
            );
        }
        if self.hbase.column_family.is_empty() {
            return bad("hbase.column_family", "must not be empty".into());
        }
        if self.kafka.message_max_bytes < 1024 {
            return bad(
                "kafka.message_max_bytes",
                format!("too small: {}", self.kafka.message_max_bytes),
            );
        }
        if self.tables.is_empty() {
            return bad("table", "no [[table]] mapping given".into());
        }
        let mut seen = BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            if !is_identifier(&t.source) {
                return bad(
                    &format!("table[{i}].source"),
                    format!("not a plain table name: {:?}", t.source),
                );
            }
            if !seen.insert(t.source.as_str()) {
                return bad(
                    &format!("table[{i}].source"),
                    format!("{} is mapped twice", t.source),
                );
            }
            if t.topic.is_empty() || t.topic.len() > 249 || !t.topic.chars().all(is_topic_char) {
                return bad(
                    &format!("table[{i}].topic"),
                    format!("not a valid Kafka topic name: {:?}", t.topic),
                );
            }
            if t.hbase_table.is_empty() || !t.hbase_table.chars().all(is_hbase_table_char) {
                return bad(
                    &format!("table[{i}].hbase_table"),
                    format!("not a valid HBase table name: {:?}", t.hbase_table),
                );
            }
        }
        Ok(())
    }

    /// The database named in the source URL.
    pub fn database(&self) -> Option<String> {
        let rest = self.source.url.split_once("://")?.1;
        let path = rest.split_once('/')?.1;
        let db = path.split('?').next()?;
        (!db.is_empty()).then(|| db.to_string())
    }

    /// The source URL with the password (if resolved separately) applied.
    pub fn source_connect_options(&self) -> Result<sqlx::mysql::MySqlConnectOptions> {
        use std::str::FromStr;
        let shown = self.path.display().to_string();
        let mut opts = sqlx::mysql::MySqlConnectOptions::from_str(&self.source.url)
            .map_err(|e| Error::config(&shown, format!("source.url: {e}")))?;
        if let Some(p) = &self.source.password {
            opts = opts.password(p);
        }
        use sqlx::mysql::MySqlSslMode as M;
        let t = &self.source.tls;
        opts = opts.ssl_mode(match t.mode {
            SslMode::Disabled => M::Disabled,
            SslMode::Preferred => M::Preferred,
            SslMode::Required => M::Required,
            SslMode::VerifyCa => M::VerifyCa,
            SslMode::VerifyIdentity => M::VerifyIdentity,
        });
        if let Some(ca) = &t.ca {
            opts = opts.ssl_ca(ca);
        }
        if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
            opts = opts.ssl_client_cert(cert).ssl_client_key(key);
        }
        Ok(opts.charset("utf8mb4"))
    }

    /// The resolved source password (for the binlog client, which does not use sqlx).
    pub fn source_password(&self) -> Option<&str> {
        self.source.password.as_deref()
    }

    /// `host:port` of the source, for messages.
    pub fn source_endpoint(&self) -> String {
        let rest = self.source.url.split_once("://").map(|x| x.1).unwrap_or("");
        let authority = rest.split('/').next().unwrap_or("");
        authority
            .rsplit_once('@')
            .map(|x| x.1)
            .unwrap_or(authority)
            .to_string()
    }

    /// The mappings named by `--tables`, or all of them.
    pub fn select_tables(&self, names: Option<&[String]>) -> Result<Vec<TableMapping>> {
        let Some(names) = names else {
            return Ok(self.tables.clone());
        };
        names
            .iter()
            .map(|n| {
                self.table(n).cloned().ok_or_else(|| {
                    Error::Usage(format!(
                        "--tables: {n} is not mapped in {} (mapped: {})",
                        self.path.display(),
                        self.tables
                            .iter()
                            .map(|t| t.source.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect()
    }

    pub fn table(&self, name: &str) -> Option<&TableMapping> {
        self.tables.iter().find(|t| t.source == name)
    }
}

pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    if h.is_empty() {
        return None;
    }
    Some((h.to_string(), p.parse().ok()?))
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_hbase_table_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[source]
url = "mysql://falcon@127.0.0.1:3306/legacy_chat"
password_env = "CHAT_PW"
[kafka]
brokers = "127.0.0.1:9092"
[hbase]
thrift = "127.0.0.1:9090"
[[table]]
source = "message"
kind = "message"
topic = "chat.message.events"
hbase_table = "chat_message"
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(text, Path::new("falcon.toml"), move |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD, &[]).unwrap();
        assert_eq!(c.database().as_deref(), Some("legacy_chat"));
        assert_eq!(c.hbase.salt_buckets, 16);
        assert_eq!(c.tables[0].kind, EntityKind::Message);
        assert_eq!(c.source_endpoint(), "127.0.0.1:3306");
    }

    #[test]
    fn env_overrides_connections() {
        let c = parse(
            GOOD,
            &[
                (ENV_KAFKA_BROKERS, "k1:19092"),
                (ENV_HBASE_THRIFT, "h1:19090"),
                (ENV_MYSQL_URL, "mysql://u:pw@db:3307/other"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "k1:19092");
        assert_eq!(c.hbase.thrift, "h1:19090");
        assert_eq!(c.database().as_deref(), Some("other"));
    }

    #[test]
    fn password_comes_from_named_env_and_never_shows_in_debug() {
        let c = parse(GOOD, &[("CHAT_PW", "hunter2")]).unwrap();
        assert_eq!(c.source.password.as_deref(), Some("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = GOOD.replace("[kafka]", "[kafka]\nbrokerz = \"x\"");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("brokerz"), "{e}");
        assert!(e.contains("line 6"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("127.0.0.1:9090", "localhost", "hbase.thrift"),
            ("chat.message.events", "bad topic!", "table[0].topic"),
            ("legacy_chat\"", "\"", "source.url"),
        ];
        for (from, to, key) in cases {
            let e = parse(&GOOD.replace(from, to), &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{from}->{to}: {e}");
        }
    }

    #[test]
    fn password_in_url_is_not_echoed_in_errors() {
        let text = GOOD.replace(
            "mysql://falcon@127.0.0.1:3306/legacy_chat",
            "mysql://u:topsecret@db:3306/",
        );
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(!e.contains("topsecret"), "{e}");
        assert!(e.contains("source.url"), "{e}");
    }

    #[test]
    fn url_tls_parameters_win_and_leave_a_url_both_drivers_accept() {
        let text = GOOD
            .replace(
                "password_env = \"CHAT_PW\"",
                "password_env = \"CHAT_PW\"\nssl_mode = \"required\"",
            )
            .replace("legacy_chat\"", "legacy_chat?ssl-mode=verify_ca\"");
        let c = parse(&text, &[]).unwrap();
        assert_eq!(c.source.tls.mode, SslMode::VerifyCa);
        assert_eq!(c.source.url, "mysql://falcon@127.0.0.1:3306/legacy_chat");
        assert_eq!(c.database().as_deref(), Some("legacy_chat"));
        let c = parse(&text.replace("?ssl-mode=verify_ca", ""), &[]).unwrap();
        assert_eq!(c.source.tls.mode, SslMode::Required);
        assert_eq!(
            parse(GOOD, &[]).unwrap().source.tls.mode,
            SslMode::Preferred
        );
    }

    #[test]
    fn bad_tls_settings_name_their_key() {
        let cases = [
            ("ssl_cert = \"c.pem\"", "ssl_key"),
            ("ssl_ca = \"/nonexistent/ca.pem\"", "source.ssl_ca"),
            ("ssl_mode = \"sometimes\"", "verify_identity` (line 5)"),
        ];
        for (line, key) in cases {
            let text = GOOD.replace(
                "password_env = \"CHAT_PW\"",
                &format!("password_env = \"CHAT_PW\"\n{line}"),
            );
            let e = parse(&text, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{line}: {e}");
        }
        let text = GOOD.replace("[hbase]", "[hbase]\nhttp = true\nframed = true");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("hbase.framed"), "{e}");
    }

    #[test]
    fn kafka_properties_are_checked_at_load_without_echoing_values() {
        let text = GOOD.replace(
            "[hbase]",
            "[kafka.client]\nsecurity.protocl = \"SSL\"\n[hbase]",
        );
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("kafka.client.security.protocl"), "{e}");
        let text = GOOD.replace(
            "[hbase]",
            "[kafka.client]\nsasl.password = \"hunter2\"\n[hbase]",
        );
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            e.contains("sasl.password.env") && e.contains("line 7"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let text = GOOD.replace(
            "[hbase]",
            "[kafka.client]\nsasl.password.env = \"KPW\"\n[kafka.consumer]\nfetch.min.bytes = 1\n[hbase]",
        );
        let c = parse(&text, &[("KPW", "s3cret")]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let props: Vec<_> = c.kafka.client.iter().collect();
        assert_eq!(props, [("sasl.password", "s3cret")]);
    }
}
