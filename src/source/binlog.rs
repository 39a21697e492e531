//! The binlog reader of `diff`: streams row events from a `file:offset`
//! position (mysql_async's binlog client), keeps those of the mapped tables of
//! the config's database, and hands them on as whole source transactions, each
//! with the position just after it (where a restart may resume).
//!
//! Row images are mapped by column ordinal against a snapshot of
//! `information_schema.COLUMNS` taken at start. A table-map event whose columns
//! no longer match that snapshot, or a DDL statement (ALTER, DROP, RENAME,
//! TRUNCATE, CREATE OR REPLACE) naming a mapped table, stops the reader with an
//! error naming the table and the position: mapped data is never skipped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData, TableMapEvent};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::{BinlogStreamRequest, Value};
use sqlx::mysql::MySqlPool;
use tokio::sync::mpsc;

use crate::config::{Config, EntityKind, TableMapping};
use crate::error::{Error, Result};
use crate::mapping::{self, ColType, SrcVal};
use crate::position::Position;

/// A column of a mapped source table, as `information_schema` describes it.
#[derive(Debug, Clone)]
pub struct SourceColumn {
    pub name: String,
    /// `DATA_TYPE`, lower case: `int`, `varchar`, `datetime`, …
    pub data_type: String,
    pub unsigned: bool,
}

/// A mapped table's layout at start.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub mapping: TableMapping,
    pub columns: Vec<SourceColumn>,
    /// For each column of `mapping::spec(kind).columns`, its ordinal index.
    pub spec_index: Vec<usize>,
}

impl TableSchema {
    pub fn kind(&self) -> EntityKind {
        self.mapping.kind
    }
}

/// Reads the columns of every mapped table; a missing table or column is a usage error.
pub async fn snapshot_schema(
    pool: &MySqlPool,
    database: &str,
    tables: &[TableMapping],
) -> Result<Vec<TableSchema>> {
    let mut out = Vec::new();
    for m in tables {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        )
        .bind(database)
        .bind(&m.source)
        .fetch_all(pool)
        .await
        .map_err(|e| Error::mysql(format!("columns of {}", m.source), e))?;
        if rows.is_empty() {
            return Err(Error::Usage(format!(
                "source table {database}.{} does not exist (mapped in the config as kind {})",
                m.source,
                m.kind.as_str()
            )));
        }
        let columns: Vec<SourceColumn> = rows
            .into_iter()
            .map(|(name, dt, ct)| SourceColumn {
                name,
                data_type: dt.to_ascii_lowercase(),
                unsigned: ct.to_ascii_lowercase().contains("unsigned"),
            })
            .collect();
        let spec = mapping::spec(m.kind);
        let spec_index = spec
            .columns
            .iter()
            .map(|c| {
                columns
                    .iter()
                    .position(|s| s.name.eq_ignore_ascii_case(c.name))
                    .ok_or_else(|| {
                        Error::Usage(format!(
                            "source table {} has no column {} (the {} mapping reads it)",
                            m.source,
                            c.name,
                            m.kind.as_str()
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        out.push(TableSchema {
            mapping: m.clone(),
            columns,
            spec_index,
        });
    }
    Ok(out)
}

/// Checks that `start` still exists on the server (its file was not purged).
pub async fn check_available(pool: &MySqlPool, start: &Position) -> Result<()> {
    let Position::Binlog { file, offset, .. } = start else {
        return Err(not_binlog(start));
    };
    let logs: Vec<(String, u64)> = sqlx::query("SHOW BINARY LOGS")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::mysql("SHOW BINARY LOGS", e))?
        .iter()
        .map(|r| {
            use sqlx::Row;
            (
                r.try_get::<String, _>(0).unwrap_or_default(),
                r.try_get::<u64, _>(1).unwrap_or(0),
            )
        })
        .collect();
    match logs.iter().find(|(f, _)| f == file) {
        Some((_, size)) if offset <= size => Ok(()),
        Some((_, size)) => Err(Error::Binlog {
            context: format!("start position {start}"),
            message: format!("{file} is only {size} bytes long: not a position of this server"),
        }),
        None => Err(Error::Binlog {
            context: format!("start position {start}"),
            message: format!(
                "binlog file {file} no longer exists on the server (it has {}): the changes since that position cannot be replayed; run base again",
                match (logs.first(), logs.last()) {
                    (Some(a), Some(b)) => format!("{} .. {}", a.0, b.0),
                    _ => "no binlog files".into(),
                }
            ),
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// One row change of a mapped table, values in `mapping::spec` column order.
#[derive(Debug, Clone)]
pub struct RowChange {
    /// Index into the schema list.
    pub table: usize,
    pub op: Op,
    pub before: Option<Vec<SrcVal>>,
    pub after: Option<Vec<SrcVal>>,
    /// `file:offset` of the rows event.
    pub position: String,
    /// Source time of the event, in seconds.
    pub ts_s: u32,
}

/// A whole source transaction with at least one mapped change.
#[derive(Debug)]
pub struct SourceTx {
    pub changes: Vec<RowChange>,
    /// Position just after the transaction.
    pub end: Position,
    pub ts_s: u32,
    /// When its last event arrived from the server.
    pub received: Instant,
}

/// What the reader hands on, in binlog order.
#[derive(Debug)]
pub enum Item {
    Tx(SourceTx),
    /// The binlog moved past transactions that touch no mapped table.
    Advanced(Position),
}

/// Opens a binlog dump connection at `start`.
pub async fn open_stream(
    cfg: &Config,
    server_id: u32,
    start: &Position,
) -> Result<mysql_async::BinlogStream> {
    let Position::Binlog { file, offset, .. } = start else {
        return Err(not_binlog(start));
    };
    let opts = mysql_async::Opts::from_url(&cfg.source.url)
        .map_err(|e| Error::config(cfg.path.display().to_string(), format!("source.url: {e}")))?;
    let mut b = mysql_async::OptsBuilder::from_opts(opts);
    if let Some(p) = cfg.source_password() {
        b = b.pass(Some(p));
    }
    let conn = mysql_async::Conn::new(b)
        .await
        .map_err(|e| Error::Unreachable {
            what: "MySQL (binlog)",
            target: cfg.source_endpoint(),
            message: e.to_string(),
        })?;
    conn.get_binlog_stream(
        BinlogStreamRequest::new(server_id)
            .with_filename(file.as_bytes())
            .with_pos(*offset),
    )
    .await
    .map_err(|e| Error::Binlog {
        context: format!("open the binlog at {start}"),
        message: e.to_string(),
    })
}

/// Streams from `start` until `stop_at` (if any) is reached, sending items to `out`.
pub struct Reader {
    pub schema: std::sync::Arc<Vec<TableSchema>>,
    pub database: String,
    pub start: Position,
    pub stop_at: Option<Position>,
}

struct Pending {
    changes: Vec<RowChange>,
}

fn binlog_err(pos: &str, e: impl std::fmt::Display) -> Error {
    Error::Binlog {
        context: format!("at {pos}"),
        message: e.to_string(),
    }
}

impl Reader {
    pub async fn run(
        self,
        mut stream: mysql_async::BinlogStream,
        out: mpsc::Sender<Item>,
    ) -> Result<()> {
        let Position::Binlog { mut file, .. } = self.start.clone() else {
            return Err(not_binlog(&self.start));
        };
        let mut safe = self.start.clone();
        if self.reached(&safe) {
            let _ = out.send(Item::Advanced(safe)).await;
            return Ok(());
        }
        let mut pending: Option<Pending> = None;
        // table id → index of the mapped table (None: not mapped).
        let mut table_ids: HashMap<u64, Option<usize>> = HashMap::new();
        let mut last_advance = Instant::now();
        let mut advanced_unsent = false;
        loop {
            // When idle with an unsent advance, report it rather than wait.
            let next = if advanced_unsent {
                match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        out.send(Item::Advanced(safe.clone()))
                            .await
                            .map_err(|_| closed())?;
                        advanced_unsent = false;
                        last_advance = Instant::now();
                        continue;
                    }
                }
            } else {
                stream.next().await
            };
            let Some(ev) = next else {
                return Err(binlog_err(&safe.to_string(), "the server ended the stream"));
            };
            let ev = ev.map_err(|e| binlog_err(&safe.to_string(), e))?;
            let h = ev.header();
            let end = u64::from(h.log_pos());
            let here = format!("{file}:{}", end.saturating_sub(u64::from(h.event_size())));
            let ts = h.timestamp();
            let data = ev.read_data().map_err(|e| binlog_err(&here, e))?;
            let mut boundary = false;
            match data {
                // The fake rotate sent at connect names the file we asked for
                // (and arrives before the checksum setting is known).
                Some(EventData::RotateEvent(r)) if end > 0 => {
                    file = r
                        .name()
                        .chars()
                        .take_while(|c| c.is_ascii_graphic())
                        .collect();
                    if pending.is_none() {
                        safe = Position::Binlog {
                            file: file.clone(),
                            offset: r.position(),
                            gtid: String::new(),
                        };
                        advanced_unsent = true;
                    }
                }
                Some(EventData::QueryEvent(q)) => {
                    let sql = q.query();
                    let head = first_word(&sql);
                    if head.eq_ignore_ascii_case("BEGIN") {
                        pending = Some(Pending {
                            changes: Vec::new(),
                        });
                    } else if head.eq_ignore_ascii_case("COMMIT") {
                        boundary = true;
                    } else {
                        let default_db = q.schema();
                        if let Some(t) =
                            ddl_on_mapped(&sql, &default_db, &self.database, &self.schema)
                        {
                            return Err(Error::Binlog {
                                context: format!("at {here}"),
                                message: format!(
                                    "schema change on mapped table {}.{t}: {:?}. Diff stopped before it; \
                                     the checkpoint is at the last applied transaction. Update the mapping / rerun base for this table, then diff from a position after the change",
                                    self.database,
                                    truncate(&sql, 200)
                                ),
                            });
                        }
                        // A statement of its own (DDL): it ends its unit.
                        if pending.as_ref().is_none_or(|p| p.changes.is_empty()) {
                            boundary = true;
                        }
                    }
                }
                Some(EventData::TableMapEvent(t)) => {
                    let id = t.table_id();
                    let idx = self.mapped(&t);
                    if let Some(i) = idx {
                        self.check_table_map(i, &t, &here)?;
                    }
                    table_ids.insert(id, idx);
                }
                Some(EventData::RowsEvent(r)) => {
                    if let Some(Some(ti)) = table_ids.get(&r.table_id()).copied() {
                        let tme = stream.get_tme(r.table_id()).ok_or_else(|| {
                            binlog_err(&here, "rows event without its table map event")
                        })?;
                        let p = pending.get_or_insert_with(|| Pending {
                            changes: Vec::new(),
                        });
                        self.decode_rows(ti, &r, tme, &here, ts, &mut p.changes)?;
                    }
                }
                Some(EventData::XidEvent(_)) => boundary = true,
                _ => {
                    if pending.is_none() && end > 0 {
                        safe = pos(&file, end);
                        advanced_unsent = true;
                    }
                }
            }
            if boundary && end > 0 {
                safe = pos(&file, end);
                match pending.take() {
                    Some(p) if !p.changes.is_empty() => {
                        out.send(Item::Tx(SourceTx {
                            changes: p.changes,
                            end: safe.clone(),
                            ts_s: ts,
                            received: Instant::now(),
                        }))
                        .await
                        .map_err(|_| closed())?;
                        advanced_unsent = false;
                        last_advance = Instant::now();
                    }
                    _ => advanced_unsent = true,
                }
            }
            if pending.is_none() && self.reached(&safe) {
                out.send(Item::Advanced(safe)).await.map_err(|_| closed())?;
                return Ok(());
            }
            if advanced_unsent && last_advance.elapsed() > Duration::from_millis(500) {
                out.send(Item::Advanced(safe.clone()))
                    .await
                    .map_err(|_| closed())?;
                advanced_unsent = false;
                last_advance = Instant::now();
            }
        }
    }

    fn reached(&self, p: &Position) -> bool {
        self.stop_at.as_ref().is_some_and(|t| p >= t)
    }

    fn mapped(&self, t: &TableMapEvent<'_>) -> Option<usize> {
        if t.database_name() != self.database.as_str() {
            return None;
        }
        let name = t.table_name();
        self.schema
            .iter()
            .position(|s| s.mapping.source == name.as_ref())
    }

    fn check_table_map(&self, i: usize, t: &TableMapEvent<'_>, here: &str) -> Result<()> {
        let s = &self.schema[i];
        let stop = |what: String| {
            Error::Binlog {
            context: format!("at {here}"),
            message: format!(
                "schema change on mapped table {}.{}: {what}. Diff stopped before it; rerun base for this table (or diff from a position after the change)",
                self.database, s.mapping.source
            ),
        }
        };
        let n = t.columns_count() as usize;
        if n != s.columns.len() {
            return Err(stop(format!(
                "the binlog has {n} columns, information_schema had {} at start",
                s.columns.len()
            )));
        }
        for (ci, c) in s.columns.iter().enumerate() {
            let ty = t.get_column_type(ci).ok().flatten();
            if let Some(ty) = ty {
                if !type_matches(&c.data_type, ty) {
                    return Err(stop(format!(
                        "column {} ({}) is logged as {ty:?}",
                        c.name, c.data_type
                    )));
                }
            }
        }
        Ok(())
    }

    fn decode_rows(
        &self,
        ti: usize,
        r: &RowsEventData<'_>,
        tme: &TableMapEvent<'_>,
        here: &str,
        ts: u32,
        out: &mut Vec<RowChange>,
    ) -> Result<()> {
        let op = match r {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => Op::Insert,
            RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => Op::Update,
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => Op::Delete,
            RowsEventData::PartialUpdateRowsEvent(_) => return Err(binlog_err(
                here,
                "partial JSON update events are not supported (set binlog_row_value_options='')",
            )),
        };
        let s = &self.schema[ti];
        for row in r.rows(tme) {
            let (before, after) = row.map_err(|e| binlog_err(here, e))?;
            let conv =
                |row: Option<mysql_async::binlog::row::BinlogRow>| -> Result<Option<Vec<SrcVal>>> {
                    let Some(row) = row else { return Ok(None) };
                    if row.len() != s.columns.len() {
                        return Err(binlog_err(
                        here,
                        format!(
                            "row image of {} has {} of {} columns: diff needs binlog_row_image=FULL",
                            s.mapping.source,
                            row.len(),
                            s.columns.len()
                        ),
                    ));
                    }
                    let spec = mapping::spec(s.kind());
                    Ok(Some(
                        spec.columns
                            .iter()
                            .zip(&s.spec_index)
                            .map(|(c, &i)| src_val(row.as_ref(i), &s.columns[i], c.ty))
                            .collect(),
                    ))
                };
            out.push(RowChange {
                table: ti,
                op,
                before: conv(before)?,
                after: conv(after)?,
                position: here.to_string(),
                ts_s: ts,
            });
        }
        Ok(())
    }
}

fn not_binlog(p: &Position) -> Error {
    Error::Usage(format!("{p} is not a binlog position (FILE:OFFSET)"))
}

fn closed() -> Error {
    Error::Other("diff: the applier stopped".into())
}

fn pos(file: &str, offset: u64) -> Position {
    Position::Binlog {
        file: file.to_string(),
        offset,
        gtid: String::new(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The first keyword of a statement, after leading comments and blanks.
fn first_word(sql: &str) -> &str {
    let mut s = sql.trim_start();
    while let Some(rest) = s.strip_prefix("/*") {
        s = rest.split_once("*/").map_or("", |x| x.1).trim_start();
    }
    s.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .next()
        .unwrap_or("")
}

/// The mapped table a DDL statement changes, if any: `ALTER TABLE t`, `DROP
/// TABLE … t …`, `RENAME TABLE … t …`, `TRUNCATE [TABLE] t`, `CREATE OR
/// REPLACE TABLE t`, or `DROP DATABASE` of the source database itself.
pub fn ddl_on_mapped(
    sql: &str,
    default_db: &str,
    database: &str,
    schema: &[TableSchema],
) -> Option<String> {
    let head = first_word(sql).to_ascii_uppercase();
    if !matches!(
        head.as_str(),
        "ALTER" | "DROP" | "RENAME" | "TRUNCATE" | "CREATE"
    ) {
        return None;
    }
    let mut s = sql.trim_start();
    while let Some(rest) = s.strip_prefix("/*") {
        s = rest.split_once("*/").map_or("", |x| x.1).trim_start();
    }
    let tokens: Vec<String> = s
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '(' | ')' | ';'))
        .filter(|t| !t.is_empty())
        .map(|t| t.replace('`', ""))
        .collect();
    let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    if matches!(head.as_str(), "DROP")
        && matches!(
            upper.get(1).map(String::as_str),
            Some("DATABASE" | "SCHEMA")
        )
    {
        let db = tokens
            .iter()
            .skip(2)
            .find(|t| !matches!(t.to_ascii_uppercase().as_str(), "IF" | "EXISTS"));
        return db
            .filter(|d| d.as_str() == database)
            .map(|_| "(the whole database)".to_string());
    }
    if head == "CREATE"
        && !(upper.get(1).map(String::as_str) == Some("OR")
            && upper.get(2).map(String::as_str) == Some("REPLACE"))
    {
        return None;
    }
    let Some(table_kw) = upper.iter().position(|t| t == "TABLE" || t == "TABLES") else {
        // TRUNCATE t (without TABLE).
        if head == "TRUNCATE" {
            return tokens
                .get(1)
                .and_then(|t| resolve(t, default_db, database, schema));
        }
        return None;
    };
    const SKIP: &[&str] = &[
        "IF",
        "EXISTS",
        "NOT",
        "ONLINE",
        "IGNORE",
        "TO",
        "NOWAIT",
        "WAIT",
        "TEMPORARY",
    ];
    let names = tokens
        .iter()
        .zip(&upper)
        .skip(table_kw + 1)
        .filter(|(_, u)| !SKIP.contains(&u.as_str()) && !u.chars().all(|c| c.is_ascii_digit()));
    // ALTER names one table; its other words are column definitions.
    let take = if head == "ALTER" || head == "CREATE" {
        1
    } else {
        usize::MAX
    };
    names
        .take(take)
        .find_map(|(t, _)| resolve(t, default_db, database, schema))
}

fn resolve(
    token: &str,
    default_db: &str,
    database: &str,
    schema: &[TableSchema],
) -> Option<String> {
    let (db, table) = match token.split_once('.') {
        Some((d, t)) => (d, t),
        None => (default_db, token),
    };
    (db == database)
        .then(|| schema.iter().find(|s| s.mapping.source == table))
        .flatten()
        .map(|s| s.mapping.source.clone())
}

/// Whether the binlog type of a column agrees with its `DATA_TYPE`. Types the
/// tool does not know are accepted (their values are read as bytes).
fn type_matches(data_type: &str, ty: ColumnType) -> bool {
    use ColumnType::*;
    let ok: &[ColumnType] = match data_type {
        "tinyint" | "bool" | "boolean" => &[MYSQL_TYPE_TINY],
        "smallint" => &[MYSQL_TYPE_SHORT],
        "mediumint" => &[MYSQL_TYPE_INT24],
        "int" | "integer" => &[MYSQL_TYPE_LONG],
        "bigint" => &[MYSQL_TYPE_LONGLONG],
        "float" => &[MYSQL_TYPE_FLOAT],
        "double" => &[MYSQL_TYPE_DOUBLE],
        "decimal" => &[MYSQL_TYPE_NEWDECIMAL, MYSQL_TYPE_DECIMAL],
        "datetime" => &[MYSQL_TYPE_DATETIME, MYSQL_TYPE_DATETIME2],
        "timestamp" => &[MYSQL_TYPE_TIMESTAMP, MYSQL_TYPE_TIMESTAMP2],
        "date" => &[MYSQL_TYPE_DATE, MYSQL_TYPE_NEWDATE],
        "varchar" | "varbinary" => &[MYSQL_TYPE_VARCHAR, MYSQL_TYPE_VAR_STRING],
        "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob" | "mediumblob"
        | "longblob" => &[MYSQL_TYPE_BLOB],
        _ => return true,
    };
    ok.contains(&ty)
}

fn width_bits(data_type: &str) -> u32 {
    match data_type {
        "tinyint" | "bool" | "boolean" => 8,
        "smallint" => 16,
        "mediumint" => 24,
        "int" | "integer" => 32,
        _ => 64,
    }
}

/// A binlog value as the mapping reads it. Unsigned integers arrive signed
/// when the server logs no signedness metadata: reinterpreted by width.
/// DATETIME is formatted as `CAST(… AS CHAR)` would (zero dates included).
pub fn src_val(v: Option<&BinlogValue<'_>>, col: &SourceColumn, want: ColType) -> SrcVal {
    let v = match v {
        None | Some(BinlogValue::Value(Value::NULL)) => return SrcVal::Null,
        Some(BinlogValue::Value(v)) => v,
        Some(BinlogValue::Jsonb(j)) => {
            return SrcVal::Bytes(
                serde_json::Value::try_from(j.clone())
                    .map(|x| x.to_string())
                    .unwrap_or_default()
                    .into_bytes(),
            )
        }
        Some(BinlogValue::JsonDiff(_)) => return SrcVal::Null,
    };
    let int = match v {
        Value::Int(i) if col.unsigned && *i < 0 => {
            let bits = width_bits(&col.data_type);
            Some(if bits == 64 {
                SrcVal::UInt(*i as u64)
            } else {
                SrcVal::UInt((*i as u64) & ((1u64 << bits) - 1))
            })
        }
        Value::Int(i) => Some(SrcVal::Int(*i)),
        Value::UInt(u) => Some(SrcVal::UInt(*u)),
        _ => None,
    };
    if let Some(n) = int {
        return match (want, n) {
            (ColType::Unsigned, SrcVal::Int(i)) if i >= 0 => SrcVal::UInt(i as u64),
            (ColType::Signed, SrcVal::UInt(u)) if i64::try_from(u).is_ok() => SrcVal::Int(u as i64),
            (ColType::Bytes, SrcVal::Int(i)) => SrcVal::Bytes(i.to_string().into_bytes()),
            (ColType::Bytes, SrcVal::UInt(u)) => SrcVal::Bytes(u.to_string().into_bytes()),
            (_, n) => n,
        };
    }
    let text = match v {
        Value::Bytes(b) => {
            return match want {
                ColType::Bytes => SrcVal::Bytes(b.clone()),
                _ => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| {
                        let s = s.trim();
                        match want {
                            ColType::Unsigned => s.parse().ok().map(SrcVal::UInt),
                            _ => s.parse().ok().map(SrcVal::Int),
                        }
                    })
                    .unwrap_or_else(|| SrcVal::Bytes(b.clone())),
            }
        }
        Value::Date(y, mo, d, h, mi, s, us) => {
            if col.data_type == "date" {
                format!("{y:04}-{mo:02}-{d:02}")
            } else if *us > 0 {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
            } else {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
            }
        }
        Value::Time(neg, days, h, mi, s, _) => {
            let hours = u32::from(*h) + days * 24;
            format!("{}{hours:02}:{mi:02}:{s:02}", if *neg { "-" } else { "" })
        }
        Value::Float(f) => f.to_string(),
        Value::Double(f) => f.to_string(),
        _ => String::new(),
    };
    SrcVal::Bytes(text.into_bytes())
}

/// A server id for the dump connection derived from the run id: stable across
/// restarts of one run (the server drops the older connection with the same
/// id), distinct between runs, clear of real replicas' small ids.
pub fn server_id(run_id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in run_id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    1000 + h % 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Vec<TableSchema> {
        ["message", "room"]
            .iter()
            .map(|t| TableSchema {
                mapping: TableMapping {
                    source: t.to_string(),
                    kind: EntityKind::Message,
                    topic: "x".into(),
                    hbase_table: "x".into(),
                },
                columns: Vec::new(),
                spec_index: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn ddl_on_a_mapped_table_of_the_source_database_is_found() {
        let s = schema();
        let hit = |sql: &str, db: &str| ddl_on_mapped(sql, db, "chat", &s);
        assert_eq!(
            hit("ALTER TABLE message ADD COLUMN x INT", "chat").as_deref(),
            Some("message")
        );
        assert_eq!(
            hit("alter table `chat`.`room` drop column name", "other").as_deref(),
            Some("room")
        );
        assert_eq!(
            hit("ALTER TABLE account ADD COLUMN message INT", "chat"),
            None
        );
        assert_eq!(hit("ALTER TABLE message ADD COLUMN x INT", "other"), None);
        assert_eq!(
            hit(
                "DROP TABLE IF EXISTS `a`, `message` /* generated by server */",
                "chat"
            )
            .as_deref(),
            Some("message")
        );
        assert_eq!(
            hit("RENAME TABLE message TO message_old", "chat").as_deref(),
            Some("message")
        );
        assert_eq!(hit("TRUNCATE message", "chat").as_deref(), Some("message"));
        assert_eq!(hit("TRUNCATE TABLE room", "chat").as_deref(), Some("room"));
        assert!(hit("DROP DATABASE chat", "x").is_some());
        assert_eq!(hit("DROP DATABASE chat2", "x"), None);
        assert_eq!(hit("CREATE TABLE message (id INT)", "chat"), None);
        assert_eq!(
            hit("CREATE OR REPLACE TABLE message (id INT)", "chat").as_deref(),
            Some("message")
        );
        assert_eq!(hit("INSERT INTO message VALUES (1)", "chat"), None);
        assert_eq!(first_word("/* x */ BEGIN"), "BEGIN");
    }

    #[test]
    fn unsigned_values_logged_signed_are_reinterpreted_by_width() {
        let col = |dt: &str, unsigned| SourceColumn {
            name: "c".into(),
            data_type: dt.into(),
            unsigned,
        };
        let v = |x: Value| BinlogValue::Value(x);
        assert_eq!(
            src_val(
                Some(&v(Value::Int(-1))),
                &col("int", true),
                ColType::Unsigned
            ),
            SrcVal::UInt(4_294_967_295)
        );
        assert_eq!(
            src_val(
                Some(&v(Value::Int(-56))),
                &col("tinyint", true),
                ColType::Unsigned
            ),
            SrcVal::UInt(200)
        );
        assert_eq!(
            src_val(
                Some(&v(Value::Int(-1))),
                &col("tinyint", false),
                ColType::Signed
            ),
            SrcVal::Int(-1)
        );
        assert_eq!(
            src_val(
                Some(&v(Value::Date(0, 0, 0, 0, 0, 0, 0))),
                &col("datetime", false),
                ColType::Bytes
            ),
            SrcVal::Bytes(b"0000-00-00 00:00:00".to_vec())
        );
        assert_eq!(
            src_val(
                Some(&v(Value::Date(2012, 1, 2, 3, 4, 5, 0))),
                &col("datetime", false),
                ColType::Bytes
            ),
            SrcVal::Bytes(b"2012-01-02 03:04:05".to_vec())
        );
        assert_eq!(
            src_val(Some(&v(Value::NULL)), &col("int", true), ColType::Unsigned),
            SrcVal::Null
        );
    }
}
