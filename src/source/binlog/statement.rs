//! Which mapped table a statement logged in the binlog (a `Query` event)
//! touches. The reader stops on DDL that changes a mapped table, and on a data
//! change of a mapped table logged as a statement (its rows are not in the
//! binlog, so diff cannot apply it).
//!
//! Names are compared without regard to letter case: a server with
//! `lower_case_table_names` 1 or 2 runs `UPDATE MESSAGE` against `message`,
//! and stopping once too often is cheaper than skipping a change.

use super::lexer::{Lexer, Tok};
use super::TableSchema;

/// The first keyword of a statement, after leading comments and blanks.
pub(super) fn first_word(sql: &str) -> &str {
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
    resolve_name(db, table, database, schema)
}

/// The config's name of `db.table` when it is a mapped table of `database`.
fn resolve_name(db: &str, table: &str, database: &str, schema: &[TableSchema]) -> Option<String> {
    if !db.eq_ignore_ascii_case(database) {
        return None;
    }
    schema
        .iter()
        .find(|s| s.mapping.source.eq_ignore_ascii_case(table))
        .map(|s| s.mapping.source.clone())
}

/// At most this many tokens of a statement are read: the tables a data
/// change writes are named near its start, and a multi-row INSERT can be
/// megabytes long.
const MAX_TOKENS: usize = 20_000;

/// The mapped table a data-changing statement writes, if any: `INSERT` and
/// `REPLACE` (also `… SELECT` and `… ON DUPLICATE KEY UPDATE`: the target
/// only), `UPDATE` and `DELETE` (single- and multi-table: every table of the
/// table list counts, as the tables actually written depend on the SET list or
/// on aliases), `LOAD DATA` / `LOAD XML`, each possibly after a `WITH` clause,
/// leading comments, backticked or database-qualified names. An unqualified
/// name is looked up in `default_db`, the session's database when the
/// statement ran (the Query event carries it).
pub fn dml_on_mapped(
    sql: &str,
    default_db: &str,
    database: &str,
    schema: &[TableSchema],
) -> Option<String> {
    let toks: Vec<Tok> = Lexer::new(sql).take(MAX_TOKENS).collect();
    let mut i = 0;
    if is_kw(&toks, 0, "WITH") {
        // WITH [RECURSIVE] cte [(cols)] AS (…) [, …] <statement>
        i = 1;
        while i < toks.len() {
            match &toks[i] {
                Tok::Punct('(') => i = skip_parens(&toks, i),
                Tok::Word(w) if DML_HEADS.iter().any(|h| w.eq_ignore_ascii_case(h)) => break,
                _ => i += 1,
            }
        }
    }
    let head = match toks.get(i) {
        Some(Tok::Word(w)) => w.to_ascii_uppercase(),
        _ => return None,
    };
    i += 1;
    let hit = |name: Option<(Option<String>, String)>| {
        name.and_then(|(db, t)| {
            resolve_name(db.as_deref().unwrap_or(default_db), &t, database, schema)
        })
    };
    match head.as_str() {
        "INSERT" | "REPLACE" => {
            i = skip_kws(
                &toks,
                i,
                &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
            );
            hit(name_at(&toks, i).map(|(n, _)| n))
        }
        "LOAD" => {
            if !(is_kw(&toks, i, "DATA") || is_kw(&toks, i, "XML")) {
                return None;
            }
            let into = (i..toks.len()).find(|&j| is_kw(&toks, j, "INTO"))?;
            let at = skip_kws(&toks, into + 1, &["TABLE"]);
            hit(name_at(&toks, at).map(|(n, _)| n))
        }
        "UPDATE" => {
            let i = skip_kws(&toks, i, &["LOW_PRIORITY", "IGNORE"]);
            table_list(&toks, i, &["SET"], false)
                .into_iter()
                .find_map(|n| hit(Some(n)))
        }
        "DELETE" => {
            let i = skip_kws(&toks, i, &["LOW_PRIORITY", "QUICK", "IGNORE"]);
            table_list(&toks, i, &["WHERE", "ORDER", "LIMIT", "RETURNING"], true)
                .into_iter()
                .find_map(|n| hit(Some(n)))
        }
        _ => None,
    }
}

const DML_HEADS: &[&str] = &["INSERT", "REPLACE", "UPDATE", "DELETE", "SELECT"];

/// The tables named in a table list (`a, b`, `a JOIN b ON …`, `(a JOIN b)`),
/// from `i` to the first `stop` keyword outside parentheses. Derived tables
/// (`(SELECT …)`), ON conditions, index hints and partition lists are
/// skipped. For DELETE, FROM and USING also separate lists (`DELETE t1, t2
/// FROM …`, `DELETE FROM t1 USING …`).
fn table_list(
    toks: &[Tok],
    mut i: usize,
    stop: &[&str],
    delete: bool,
) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut expect_table = true;
    let mut depth = 0usize;
    while i < toks.len() {
        match &toks[i] {
            Tok::Word(w) if depth == 0 && stop.iter().any(|s| w.eq_ignore_ascii_case(s)) => break,
            Tok::Punct(';') => break,
            Tok::Punct('(') if expect_table => {
                if is_kw(toks, i + 1, "SELECT") || is_kw(toks, i + 1, "WITH") {
                    i = skip_parens(toks, i);
                    expect_table = false;
                } else {
                    depth += 1;
                    i += 1;
                }
                continue;
            }
            Tok::Punct('(') => {
                i = skip_parens(toks, i);
                continue;
            }
            Tok::Punct(')') => {
                depth = depth.saturating_sub(1);
                expect_table = false;
            }
            Tok::Punct(',') => expect_table = true,
            Tok::Word(w)
                if w.eq_ignore_ascii_case("JOIN")
                    || w.eq_ignore_ascii_case("STRAIGHT_JOIN")
                    || (delete && w.eq_ignore_ascii_case("FROM")) =>
            {
                expect_table = true
            }
            // DELETE … USING t: a list; JOIN … USING (col, …): columns.
            Tok::Word(w) if w.eq_ignore_ascii_case("USING") => {
                if matches!(toks.get(i + 1), Some(Tok::Punct('('))) {
                    i = skip_parens(toks, i + 1);
                    continue;
                }
                expect_table = delete;
            }
            Tok::Word(_) | Tok::Quoted(_) if expect_table => {
                if let Some((name, next)) = name_at(toks, i) {
                    out.push(name);
                    i = next;
                    expect_table = false;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// `name`, `db.name` or `name.*` at `i` (quoted or not): the name and the
/// index after it.
fn name_at(toks: &[Tok], i: usize) -> Option<((Option<String>, String), usize)> {
    let ident = |j: usize| match toks.get(j) {
        Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => Some(w.clone()),
        _ => None,
    };
    let first = ident(i)?;
    if matches!(toks.get(i + 1), Some(Tok::Punct('.'))) {
        if let Some(second) = ident(i + 2) {
            return Some(((Some(first), second), i + 3));
        }
        if matches!(toks.get(i + 2), Some(Tok::Punct('*'))) {
            return Some(((None, first), i + 3));
        }
    }
    Some(((None, first), i + 1))
}

fn is_kw(toks: &[Tok], i: usize, kw: &str) -> bool {
    matches!(toks.get(i), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
}

fn skip_kws(toks: &[Tok], mut i: usize, kws: &[&str]) -> usize {
    while kws.iter().any(|k| is_kw(toks, i, k)) {
        i += 1;
    }
    i
}

/// The index after the parenthesis that closes the one at `i`.
fn skip_parens(toks: &[Tok], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < toks.len() {
        match toks[i] {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EntityKind, TableMapping};

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

    /// `dml_on_mapped` with the source database `chat` and mapped tables
    /// `message` and `room`.
    fn dml(sql: &str, default_db: &str) -> Option<String> {
        dml_on_mapped(sql, default_db, "chat", &schema())
    }

    #[test]
    fn single_table_data_changes_of_mapped_tables_are_found() {
        for (sql, want) in [
            ("INSERT INTO message VALUES (1, 2)", "message"),
            ("insert into message (a, b) values (1, 2)", "message"),
            ("INSERT message SET body = 'x'", "message"),
            (
                "INSERT LOW_PRIORITY IGNORE INTO `message` VALUES (1)",
                "message",
            ),
            ("INSERT DELAYED INTO room VALUES (1)", "room"),
            ("INSERT INTO message PARTITION (p0) VALUES (1)", "message"),
            (
                "INSERT INTO room VALUES (1) ON DUPLICATE KEY UPDATE name = 'x'",
                "room",
            ),
            ("REPLACE INTO message VALUES (1)", "message"),
            ("REPLACE LOW_PRIORITY message SET body = ''", "message"),
            (
                "UPDATE message SET body = 'x' WHERE message_id = 1",
                "message",
            ),
            ("update LOW_PRIORITY IGNORE `room` set name = 'x'", "room"),
            ("UPDATE message AS m SET m.body = 'x'", "message"),
            ("DELETE FROM message WHERE message_id = 1", "message"),
            (
                "DELETE LOW_PRIORITY QUICK IGNORE FROM room WHERE room_id = 1",
                "room",
            ),
            (
                "DELETE FROM message ORDER BY message_id LIMIT 10",
                "message",
            ),
            ("delete from message", "message"),
        ] {
            assert_eq!(dml(sql, "chat").as_deref(), Some(want), "{sql}");
        }
    }

    #[test]
    fn names_are_found_through_quotes_qualifiers_case_and_comments() {
        for (sql, db) in [
            ("UPDATE `chat`.`message` SET body = 'x'", "other"),
            ("UPDATE chat.message SET body = 'x'", ""),
            ("UPDATE `chat` . `message` SET body = 'x'", "other"),
            ("UPDATE \"message\" SET body = 'x'", "chat"),
            ("UPDATE MESSAGE SET body = 'x'", "chat"),
            ("UPDATE Chat.Message SET body = 'x'", "other"),
            ("/* app=chat */ UPDATE message SET body = 'x'", "chat"),
            ("/* a */ /* b */\n  DELETE FROM message", "chat"),
            ("-- note\nINSERT INTO message VALUES (1)", "chat"),
            ("# note\nINSERT INTO message VALUES (1)", "chat"),
            ("/*!40000 INSERT INTO message VALUES (1) */", "chat"),
            ("/*M!100100 DELETE FROM message */", "chat"),
            ("INSERT /*! IGNORE */ INTO message VALUES (1)", "chat"),
            ("INSERT INTO /* target */ message VALUES (1)", "chat"),
            ("\n\t UPDATE\tmessage\nSET body = ''", "chat"),
        ] {
            assert_eq!(dml(sql, db).as_deref(), Some("message"), "{sql} (db {db})");
        }
    }

    #[test]
    fn multi_table_and_select_forms_name_every_written_table() {
        for (sql, want) in [
            // The target of INSERT … SELECT is written; the source is only read.
            ("INSERT INTO message SELECT * FROM staging", Some("message")),
            ("INSERT INTO staging SELECT * FROM message", None),
            ("INSERT INTO staging (a) SELECT body FROM chat.message m JOIN room r ON r.room_id = m.room_id", None),
            ("REPLACE INTO room SELECT * FROM staging", Some("room")),
            // Multi-table UPDATE: any table of the list may be written.
            ("UPDATE staging s JOIN message m ON m.message_id = s.id SET m.body = s.body", Some("message")),
            ("UPDATE staging s, message m SET m.body = s.body WHERE m.message_id = s.id", Some("message")),
            ("UPDATE staging AS s INNER JOIN `chat`.`room` AS r USING (room_id) SET r.name = s.name", Some("room")),
            ("UPDATE (staging s JOIN message m ON m.message_id = s.id) SET m.body = ''", Some("message")),
            ("UPDATE staging s LEFT OUTER JOIN message m ON m.message_id = s.id SET s.x = 1", Some("message")),
            ("UPDATE staging SET x = (SELECT COUNT(*) FROM message)", None),
            ("UPDATE staging s JOIN (SELECT room_id, message FROM message) d ON d.room_id = s.id SET s.x = 1", None),
            ("UPDATE staging SET message = 1 WHERE room IN (SELECT room_id FROM room)", None),
            // Multi-table DELETE, both syntaxes.
            ("DELETE m FROM message m JOIN staging s ON s.id = m.message_id", Some("message")),
            ("DELETE m, r FROM staging s JOIN message m JOIN room r", Some("message")),
            ("DELETE `m`.* FROM `chat`.`message` AS `m` WHERE m.deleted = 1", Some("message")),
            ("DELETE FROM room USING room JOIN staging USING (room_id)", Some("room")),
            ("DELETE FROM staging USING staging JOIN message ON message.message_id = staging.id", Some("message")),
            ("DELETE FROM staging WHERE id IN (SELECT message_id FROM message)", None),
            ("DELETE FROM staging WHERE body = 'DELETE FROM message'", None),
            // WITH … (MySQL 8).
            ("WITH x AS (SELECT * FROM message) UPDATE room JOIN x USING (room_id) SET room.name = 'y'", Some("room")),
            ("WITH RECURSIVE x (n) AS (SELECT 1 UNION SELECT n + 1 FROM x) DELETE FROM message WHERE message_id IN (SELECT n FROM x)", Some("message")),
            ("WITH x AS (SELECT * FROM message) SELECT * FROM x", None),
            // LOAD DATA / LOAD XML (as logged, with a server-side file name).
            ("LOAD DATA INFILE '/tmp/SQL_LOAD-1-2-3.data' INTO TABLE `message` FIELDS TERMINATED BY ','", Some("message")),
            ("LOAD DATA LOW_PRIORITY LOCAL INFILE 'x' REPLACE INTO TABLE chat.room", Some("room")),
            ("load xml infile 'x' into table message", Some("message")),
            ("LOAD DATA INFILE 'x' INTO TABLE staging", None),
            ("LOAD INDEX INTO CACHE message", None),
        ] {
            assert_eq!(dml(sql, "chat").as_deref(), want, "{sql}");
        }
    }

    #[test]
    fn statements_on_other_tables_or_databases_and_non_data_statements_pass() {
        for (sql, db) in [
            ("UPDATE message SET body = 'x'", "other"),
            ("UPDATE other.message SET body = 'x'", "chat"),
            ("UPDATE `chat2`.`message` SET body = 'x'", "chat"),
            ("INSERT INTO messages VALUES (1)", "chat"),
            ("INSERT INTO `message_old` VALUES (1)", "chat"),
            ("DELETE FROM account WHERE name = 'message'", "chat"),
            ("UPDATE account SET message = 1, room = 2", "chat"),
            ("BEGIN", "chat"),
            ("COMMIT", "chat"),
            ("SELECT * FROM message", "chat"),
            ("SAVEPOINT message", "chat"),
            ("ALTER TABLE message ADD COLUMN x INT", "chat"),
            ("CREATE TABLE staging SELECT * FROM message", "chat"),
            (
                "# Dummy event replacing event type 160 that slave cannot handle.",
                "chat",
            ),
            ("/* UPDATE message SET body = 'x' */ SELECT 1", "chat"),
            ("-- UPDATE message\nSELECT 1", "chat"),
            ("", "chat"),
            ("UPDATE", "chat"),
            ("INSERT INTO", "chat"),
            ("'unterminated", "chat"),
            ("/* unterminated", "chat"),
        ] {
            assert_eq!(dml(sql, db), None, "{sql:?} (db {db})");
        }
    }

    #[test]
    fn the_lexer_keeps_quoted_text_whole() {
        let toks: Vec<Tok> =
            Lexer::new("UPDATE `we``ird` SET a='it''s \\' -- x', b=\"q\"").collect();
        assert_eq!(
            toks,
            vec![
                Tok::Word("UPDATE".into()),
                Tok::Quoted("we`ird".into()),
                Tok::Word("SET".into()),
                Tok::Word("a".into()),
                Tok::Punct('='),
                Tok::Str,
                Tok::Punct(','),
                Tok::Word("b".into()),
                Tok::Punct('='),
                Tok::Quoted("q".into()),
            ]
        );
        // Japanese identifiers are words.
        assert_eq!(dml("UPDATE メッセージ SET a = 1", "chat"), None);
    }
}
