//! The binlog reader of `diff`.
//!
//! The flow: [`snapshot_schema`] reads the columns of every mapped table from
//! `information_schema` at start; [`check_available`] makes sure the start
//! position was not purged; [`open_stream`] opens a dump connection there
//! (mysql_async's binlog client); a [`Reader`] then streams the events, keeps
//! the row events of the mapped tables of the config's database, decodes their
//! images into [`SrcVal`](crate::mapping::SrcVal)s ([`src_val`]) and hands
//! them on as whole source transactions ([`Item::Tx`]), each with the position
//! just after it (where a restart may resume). Stretches without mapped changes
//! are reported as [`Item::Advanced`].
//!
//! Mapped data is never skipped: a table-map event whose columns no longer
//! match the snapshot, a DDL statement naming a mapped table, a data change of
//! a mapped table logged as a statement (a session with binlog_format
//! STATEMENT, a MIXED server), or an event the reader cannot decode that may
//! carry changes (compressed events, MySQL transaction payloads, incidents)
//! stops the reader with an error (exit status 4) naming the position and the
//! fix. The reader returns at once, sending nothing after it: the applier
//! applies only the transactions before it, and the checkpoint stays there.
//!
//! - `schema`: the `information_schema` snapshot, table-map checks, type matching;
//! - `statement` (with `lexer`): which mapped table a logged statement (DDL
//!   or data change) writes;
//! - `reader`: the stream → whole source transactions;
//! - `values`: binlog value → `SrcVal`;
//! - [`gtid`]: the GTID state followed through the stream (MariaDB).

use std::time::Instant;

use mysql_async::BinlogStreamRequest;
use sqlx::mysql::MySqlPool;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::mapping::SrcVal;
use crate::position::Position;

pub mod gtid;
mod lexer;
mod reader;
mod schema;
mod statement;
mod values;

pub use reader::Reader;
pub use schema::{snapshot_schema, SourceColumn, TableSchema};
pub use statement::ddl_on_mapped;
pub use values::src_val;

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

/// A source transaction with at least one mapped change, or a part of one
/// too large for one batch.
#[derive(Debug)]
pub struct SourceTx {
    pub changes: Vec<RowChange>,
    /// Position just after the transaction; for a part, the position of the
    /// transaction's start.
    pub end: Position,
    /// For a part: how many of the transaction's changes have been handed on
    /// with this one (a resume from `end` skips that many). None: the whole
    /// transaction (or its last part) — `end` is after its commit.
    pub part: Option<u64>,
    pub ts_s: u32,
    /// When its last event arrived from the server.
    pub received: Instant,
    /// The reader's memory budget this item holds until it is applied.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl SourceTx {
    /// Where a checkpoint after this item resumes: a position, and how many
    /// changes of the transaction starting there to skip.
    pub fn resume_at(&self) -> (Position, u64) {
        (self.end.clone(), self.part.unwrap_or(0))
    }
}

/// A change's weight in the reader's memory budget (KiB, at least 1).
pub fn change_cost(c: &RowChange) -> u32 {
    let bytes: usize = [&c.before, &c.after]
        .iter()
        .filter_map(|i| i.as_ref())
        .flat_map(|row| row.iter())
        .map(|v| match v {
            SrcVal::Bytes(b) => b.len() + 8,
            _ => 8,
        })
        .sum();
    u32::try_from(bytes / 1024 + 1).unwrap_or(u32::MAX)
}

/// What the reader hands on, in binlog order.
#[derive(Debug)]
pub enum Item {
    Tx(SourceTx),
    /// The binlog moved past transactions that touch no mapped table.
    Advanced(Position),
}

/// Checks that `start` still exists on the server (its file was not purged).
/// The file a rotate event names (cut at the first non-printable byte: a
/// rotate read before the checksum setting is known carries its checksum).
pub fn rotate_file_name(r: &mysql_async::binlog::events::RotateEvent<'_>) -> String {
    r.name()
        .chars()
        .take_while(|c| c.is_ascii_graphic())
        .collect()
}

/// The server's binlog files and their sizes, oldest first.
pub async fn binary_logs(pool: &MySqlPool) -> Result<Vec<(String, u64)>> {
    use sqlx::Row;
    Ok(sqlx::query("SHOW BINARY LOGS")
        .fetch_all(pool)
        .await
        .map_err(|e| Error::mysql("SHOW BINARY LOGS", e))?
        .iter()
        .map(|r| {
            (
                r.try_get::<String, _>(0).unwrap_or_default(),
                r.try_get::<u64, _>(1).unwrap_or(0),
            )
        })
        .collect())
}

pub async fn check_available(pool: &MySqlPool, start: &Position) -> Result<()> {
    let Position::Binlog { file, offset, .. } = start else {
        return Err(not_binlog(start));
    };
    let logs = binary_logs(pool).await?;
    match logs.iter().find(|(f, _)| f == file) {
        Some((_, size)) if offset == size => Ok(()),
        Some((_, size)) if offset <= size => {
            // The server reads events from there only if an event starts
            // there: a position of another server (after a failover) or a
            // mistyped --from is refused, not read from.
            let q = format!(
                "SHOW BINLOG EVENTS IN '{}' FROM {offset} LIMIT 1",
                file.replace('\'', "")
            );
            match sqlx::query(&q).fetch_all(pool).await {
                Ok(_) => Ok(()),
                Err(e) => Err(Error::Binlog {
                    context: format!("start position {start}"),
                    message: format!(
                        "no binlog event starts at offset {offset} of {file} on this server ({e}): the position is not one of this server's (a failover, another server, or a mistyped --from); give a position this server logged, or run base again"
                    ),
                }),
            }
        }
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

/// How often the server sends a heartbeat on an idle binlog stream.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a binlog dump connection at `start`.
pub async fn open_stream(
    cfg: &Config,
    server_id: u32,
    start: &Position,
) -> Result<mysql_async::BinlogStream> {
    let Position::Binlog { file, offset, .. } = start else {
        return Err(not_binlog(start));
    };
    let mut conn = crate::source::mysql::binlog_conn(cfg).await?;
    // Heartbeats keep an idle stream talking, so a half-open connection is
    // noticed (`reader::STALL`) instead of waited on for ever.
    use mysql_async::prelude::Queryable;
    conn.query_drop(format!(
        "SET @master_heartbeat_period = {}",
        HEARTBEAT.as_nanos()
    ))
    .await
    .map_err(|e| Error::Binlog {
        context: "set the heartbeat period".into(),
        message: e.to_string(),
    })?;
    // A GTID-aware replica (MariaDB's MARIA_SLAVE_CAPABILITY_GTID): the
    // server sends its GTID events as they are, which the reader follows
    // (otherwise it rewrites them as BEGIN queries and the state is lost).
    // Elsewhere (MySQL) a user variable without effect.
    conn.query_drop("SET @mariadb_slave_capability = 4")
        .await
        .map_err(|e| Error::Binlog {
            context: "announce a GTID-aware reader".into(),
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

pub(crate) fn not_binlog(p: &Position) -> Error {
    Error::Usage(format!("{p} is not a binlog position (FILE:OFFSET)"))
}
