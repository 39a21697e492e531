//! The `information_schema` snapshot of the mapped tables taken at start, and
//! the check of each table-map event against it: row images are mapped by
//! column ordinal, so a table whose columns changed since must stop the reader.

use mysql_async::binlog::events::TableMapEvent;
use mysql_async::consts::ColumnType;
use sqlx::mysql::MySqlPool;

use crate::config::{EntityKind, TableMapping};
use crate::error::{Error, Result};
use crate::mapping;

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

    /// Checks a table-map event of this table against the snapshot: same
    /// column count, and each column logged with a type its `DATA_TYPE` allows.
    pub(super) fn check_table_map(
        &self,
        database: &str,
        t: &TableMapEvent<'_>,
        here: &str,
    ) -> Result<()> {
        let s = self;
        let stop = |what: String| {
            Error::Binlog {
            context: format!("at {here}"),
            message: format!(
                "schema change on mapped table {}.{}: {what}. Diff stopped before it; rerun base for this table (or diff from a position after the change)",
                database, s.mapping.source
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
