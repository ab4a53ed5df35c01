//! `migrate --from-sqlite`: copies a SQLite deployment's tables into this (migrated, empty)
//! database in one transaction. Columns are copied by name, each value converted to the
//! PostgreSQL column's type; sealed values go byte for byte, so they open with the same key.

use std::path::Path;

use anyhow::{bail, Context};
use postgres::types::ToSql;
use rusqlite::types::ValueRef;

use super::PostgresStore;
use crate::store::sqlite::SqliteStore;

/// Every table the service keeps, parents before the rows referring to them.
pub const TABLES: &[&str] = &[
    "clients",
    "consents",
    "pending_flows",
    "sessions",
    "auth_codes",
    "grants",
    "refresh_tokens",
    "login_attempts",
    "devices",
    "upstream_tokens",
    "upstream_flows",
    "idp_logins",
    "idp_users",
    "app_codes",
    "app_sessions",
    // The feed with its sequence numbers, so the filters' cursors stay valid across the move.
    "revocations",
    "signing_keys",
    // Ids of assertions still valid: a replay stays refused across the move.
    "assertion_ids",
    // Sealed byte for byte: the registrations open with the same key, so no AS sees a second one.
    "upstream_registrations",
];

impl PostgresStore {
    /// Copies every table of the SQLite database at `from` (migrated to the current schema
    /// first) into this database; refuses when this one already holds data. Returns the
    /// rows copied per table, in `TABLES` order.
    pub fn import_sqlite(&self, from: &Path) -> anyhow::Result<Vec<(&'static str, u64)>> {
        if !from.is_file() {
            bail!("{}: no such SQLite database", from.display());
        }
        // Brings an older deployment's file to the schema the copy expects.
        drop(SqliteStore::open(from)?);
        let sqlite =
            rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .with_context(|| format!("cannot open {}", from.display()))?;
        let mut conn = self.pool.get()?;
        let client = conn.client()?;
        let copied = (|| -> anyhow::Result<Vec<(&'static str, u64)>> {
            let mut tx = client.transaction()?;
            for table in TABLES {
                let n: i64 = tx
                    .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                    .get(0);
                if n > 0 {
                    bail!(
                        "the PostgreSQL database already holds data ({n} rows in {table}): \
                         migrate into an empty database"
                    );
                }
            }
            let mut counts = Vec::with_capacity(TABLES.len());
            for table in TABLES {
                counts.push((*table, copy_table(&sqlite, &mut tx, table)?));
            }
            // Later attempts get ids after the copied ones.
            tx.execute(
                "SELECT setval(pg_get_serial_sequence('login_attempts', 'id'),
                               COALESCE((SELECT MAX(id) FROM login_attempts), 0) + 1, false)",
                &[],
            )?;
            // The feed goes on after every `seq` SQLite ever handed out (swept ones too): a
            // filter that read up to one on SQLite misses nothing on PostgreSQL.
            let handed_out: i64 = sqlite
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'revocations'",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0);
            tx.execute(
                "SELECT setval(pg_get_serial_sequence('revocations', 'seq'),
                               GREATEST($1, COALESCE((SELECT MAX(seq) FROM revocations), 0)) + 1,
                               false)",
                &[&handed_out],
            )?;
            tx.commit()?;
            Ok(counts)
        })();
        copied.map_err(|e| match e.downcast::<postgres::Error>() {
            Ok(db) => anyhow::Error::new(conn.fail(db)).context("copy into PostgreSQL"),
            Err(e) => e,
        })
    }
}

/// A value read from SQLite, typed for its PostgreSQL column.
enum Value {
    Int(Option<i64>),
    Int4(Option<i32>),
    Bool(Option<bool>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

impl Value {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::Int(v) => v,
            Value::Int4(v) => v,
            Value::Bool(v) => v,
            Value::Text(v) => v,
            Value::Bytes(v) => v,
        }
    }
}

fn convert(v: ValueRef<'_>, pg_type: &str, at: &str) -> anyhow::Result<Value> {
    let int = |v: ValueRef<'_>| -> anyhow::Result<Option<i64>> {
        match v {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(i) => Ok(Some(i)),
            _ => bail!("{at}: expected an integer"),
        }
    };
    Ok(match pg_type {
        "bigint" => Value::Int(int(v)?),
        "integer" => Value::Int4(
            int(v)?
                .map(i32::try_from)
                .transpose()
                .with_context(|| format!("{at}: out of range"))?,
        ),
        "boolean" => Value::Bool(int(v)?.map(|i| i != 0)),
        "text" => Value::Text(match v {
            ValueRef::Null => None,
            ValueRef::Text(t) => {
                Some(String::from_utf8(t.to_vec()).with_context(|| format!("{at}: not UTF-8"))?)
            }
            _ => bail!("{at}: expected text"),
        }),
        "bytea" => Value::Bytes(match v {
            ValueRef::Null => None,
            ValueRef::Blob(b) => Some(b.to_vec()),
            _ => bail!("{at}: expected a blob"),
        }),
        other => bail!("{at}: no conversion to {other}"),
    })
}

fn copy_table(
    sqlite: &rusqlite::Connection,
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> anyhow::Result<u64> {
    let columns: Vec<(String, String)> = tx
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1
             ORDER BY ordinal_position",
            &[&table],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names = columns
        .iter()
        .map(|(c, _)| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let placeholders = (1..=columns.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let insert = tx.prepare(&format!(
        "INSERT INTO {table} ({names}) VALUES ({placeholders})"
    ))?;
    let mut select = sqlite
        .prepare(&format!("SELECT {names} FROM {table}"))
        .with_context(|| format!("SQLite table {table}"))?;
    let mut rows = select.query([])?;
    let mut n = 0;
    while let Some(row) = rows.next()? {
        let values = columns
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| convert(row.get_ref(i)?, ty, &format!("{table}.{name}")))
            .collect::<anyhow::Result<Vec<Value>>>()?;
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(Value::sql).collect();
        tx.execute(&insert, &params)?;
        n += 1;
    }
    Ok(n)
}
