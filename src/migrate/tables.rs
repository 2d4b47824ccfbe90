//! The tables `cradle migrate` copies, and the per-table steps over any entity: count, page
//! through in primary-key order, copy, look rows up by key, and the canonical serialization
//! the checksums are computed over.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ColumnType, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    IdenStatic, IntoActiveModel, Iterable, ModelTrait, PaginatorTrait, PrimaryKeyToColumn,
    Statement, Value,
};

use crate::store::{
    accounts, bans, clients, credentials, events, parent_stations, pending_starts, sessions,
    ws_handover,
};

use super::{one_line, MigrateError, INSERT_ROWS, LOOKUP_ROWS};

/// A table's row count and checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Summary {
    pub(super) rows: u64,
    pub(super) checksum: String,
}

/// The result of looking the source's rows up in the target by primary key.
pub(super) struct Matched {
    /// The source's summary, recomputed on the way.
    pub(super) source: Summary,
    /// Checksum of the target rows with the source's keys, in the source's order.
    pub(super) target_checksum: String,
    /// Source keys the target lacks.
    pub(super) missing: u64,
    /// Source keys whose target row differs.
    pub(super) differing: u64,
}

pub(super) type Blake2b256 = Blake2b<U32>;

pub(super) fn hex(digest: &[u8]) -> String {
    crate::ids::hex(digest)
}

pub(super) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, MigrateError>> + Send + 'a>>;

/// The per-table steps, over any entity.
pub(super) trait TableOps: Sync {
    fn name(&self) -> &'static str;
    fn count<'a>(&'a self, conn: &'a DatabaseTransaction, role: &'static str) -> BoxFut<'a, u64>;
    fn summary<'a>(
        &'a self,
        conn: &'a DatabaseTransaction,
        role: &'static str,
        page: u64,
    ) -> BoxFut<'a, Summary>;
    fn copy<'a>(
        &'a self,
        src: &'a DatabaseTransaction,
        dst: &'a DatabaseTransaction,
        page: u64,
        skip_existing: bool,
    ) -> BoxFut<'a, u64>;
    fn matched<'a>(
        &'a self,
        src: &'a DatabaseTransaction,
        dst: &'a DatabaseTransaction,
        page: u64,
    ) -> BoxFut<'a, Matched>;
}

struct Table<E>(&'static str, PhantomData<fn() -> E>);

/// Every copied table (there are no foreign keys between them; accounts come first anyway).
pub(super) static TABLES: [&dyn TableOps; 9] = [
    &Table::<accounts::Entity>("accounts", PhantomData),
    &Table::<credentials::Entity>("credentials", PhantomData),
    &Table::<clients::Entity>("clients", PhantomData),
    &Table::<sessions::Entity>("sessions", PhantomData),
    &Table::<parent_stations::Entity>("parent_stations", PhantomData),
    &Table::<pending_starts::Entity>("pending_starts", PhantomData),
    &Table::<ws_handover::Entity>("ws_handover", PhantomData),
    &Table::<bans::Entity>("bans", PhantomData),
    &Table::<events::Entity>("events", PhantomData),
];

impl<E> TableOps for Table<E>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel> + Sync,
    E::ActiveModel: Send,
{
    fn name(&self) -> &'static str {
        self.0
    }

    fn count<'a>(&'a self, conn: &'a DatabaseTransaction, role: &'static str) -> BoxFut<'a, u64> {
        Box::pin(async move {
            E::find()
                .count(conn)
                .await
                .map_err(|e| read_err(self.0, role, e))
        })
    }

    fn summary<'a>(
        &'a self,
        conn: &'a DatabaseTransaction,
        role: &'static str,
        page: u64,
    ) -> BoxFut<'a, Summary> {
        Box::pin(async move {
            let mut hasher = Blake2b256::new();
            let mut rows = 0u64;
            let mut after: Option<Vec<Value>> = None;
            loop {
                let batch = read_page::<E>(conn, after.as_deref(), page)
                    .await
                    .map_err(|e| read_err(self.0, role, e))?;
                for m in &batch {
                    hasher.update(canonical::<E>(self.0, m)?.as_bytes());
                    hasher.update(b"\n");
                }
                rows += batch.len() as u64;
                match batch.last() {
                    Some(last) if batch.len() as u64 == page => after = Some(key_of::<E>(last)),
                    _ => break,
                }
            }
            Ok(Summary {
                rows,
                checksum: hex(&hasher.finalize()),
            })
        })
    }

    fn copy<'a>(
        &'a self,
        src: &'a DatabaseTransaction,
        dst: &'a DatabaseTransaction,
        page: u64,
        skip_existing: bool,
    ) -> BoxFut<'a, u64> {
        Box::pin(async move {
            let mut copied = 0u64;
            let mut after: Option<Vec<Value>> = None;
            loop {
                let batch = read_page::<E>(src, after.as_deref(), page)
                    .await
                    .map_err(|e| read_err(self.0, "source", e))?;
                for chunk in batch.chunks(INSERT_ROWS) {
                    let mut insert = E::insert_many(
                        chunk
                            .iter()
                            .cloned()
                            .map(IntoActiveModel::into_active_model),
                    );
                    if skip_existing {
                        insert = insert.on_conflict(
                            OnConflict::columns(E::PrimaryKey::iter())
                                .do_nothing()
                                .to_owned(),
                        );
                    }
                    copied += insert.exec_without_returning(dst).await.map_err(|e| {
                        MigrateError::Write {
                            table: self.0,
                            message: one_line(e),
                        }
                    })?;
                }
                match batch.last() {
                    Some(last) if batch.len() as u64 == page => after = Some(key_of::<E>(last)),
                    _ => break,
                }
            }
            Ok(copied)
        })
    }

    fn matched<'a>(
        &'a self,
        src: &'a DatabaseTransaction,
        dst: &'a DatabaseTransaction,
        page: u64,
    ) -> BoxFut<'a, Matched> {
        Box::pin(async move {
            let mut source_hash = Blake2b256::new();
            let mut target_hash = Blake2b256::new();
            let (mut rows, mut missing, mut differing) = (0u64, 0u64, 0u64);
            let mut after: Option<Vec<Value>> = None;
            loop {
                let batch = read_page::<E>(src, after.as_deref(), page)
                    .await
                    .map_err(|e| read_err(self.0, "source", e))?;
                for chunk in batch.chunks(LOOKUP_ROWS) {
                    let keys: Vec<Vec<Value>> = chunk.iter().map(key_of::<E>).collect();
                    let found = lookup::<E>(dst, &keys)
                        .await
                        .map_err(|e| read_err(self.0, "target", e))?;
                    let mut by_key = HashMap::with_capacity(found.len());
                    for m in &found {
                        by_key.insert(key_text(self.0, key_of::<E>(m))?, m);
                    }
                    for (m, key) in chunk.iter().zip(keys) {
                        let row = canonical::<E>(self.0, m)?;
                        source_hash.update(row.as_bytes());
                        source_hash.update(b"\n");
                        match by_key.get(&key_text(self.0, key)?) {
                            Some(t) => {
                                let target_row = canonical::<E>(self.0, t)?;
                                target_hash.update(target_row.as_bytes());
                                target_hash.update(b"\n");
                                if target_row != row {
                                    differing += 1;
                                }
                            }
                            None => missing += 1,
                        }
                    }
                }
                rows += batch.len() as u64;
                match batch.last() {
                    Some(last) if batch.len() as u64 == page => after = Some(key_of::<E>(last)),
                    _ => break,
                }
            }
            Ok(Matched {
                source: Summary {
                    rows,
                    checksum: hex(&source_hash.finalize()),
                },
                target_checksum: hex(&target_hash.finalize()),
                missing,
                differing,
            })
        })
    }
}

fn read_err(table: &'static str, role: &'static str, e: DbErr) -> MigrateError {
    MigrateError::Read {
        table,
        role,
        message: one_line(e),
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn primary_key<E: EntityTrait>() -> Vec<E::Column> {
    E::PrimaryKey::iter().map(|k| k.into_column()).collect()
}

/// A primary-key column as it is ordered and compared: strings byte-wise on both databases
/// (SQLite's default BINARY collation; PostgreSQL's "C" collation, whatever the database's
/// locale), so both sides walk the rows in the same order.
fn sort_expr<C: ColumnTrait>(backend: DbBackend, column: C) -> String {
    let name = quote(column.as_str());
    let text = matches!(
        column.def().get_column_type(),
        ColumnType::String(_) | ColumnType::Text | ColumnType::Char(_)
    );
    if backend == DbBackend::Postgres && text {
        format!("{name} COLLATE \"C\"")
    } else {
        name
    }
}

fn placeholders(backend: DbBackend, first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| match backend {
            DbBackend::Postgres => format!("${i}"),
            _ => "?".to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Up to `limit` rows after the key `after`, in primary-key order.
async fn read_page<E: EntityTrait>(
    conn: &DatabaseTransaction,
    after: Option<&[Value]>,
    limit: u64,
) -> Result<Vec<E::Model>, DbErr> {
    let backend = conn.get_database_backend();
    let keys = primary_key::<E>()
        .into_iter()
        .map(|c| sort_expr(backend, c))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!("SELECT * FROM {}", quote(E::default().table_name()));
    let mut values = Vec::new();
    if let Some(after) = after {
        sql.push_str(&format!(
            " WHERE ({keys}) > ({})",
            placeholders(backend, 1, after.len())
        ));
        values.extend(after.iter().cloned());
    }
    sql.push_str(&format!(" ORDER BY {keys} LIMIT {limit}"));
    E::find()
        .from_raw_sql(Statement::from_sql_and_values(backend, sql, values))
        .all(conn)
        .await
}

/// The rows whose primary keys are among `keys` (in no particular order).
async fn lookup<E: EntityTrait>(
    conn: &DatabaseTransaction,
    keys: &[Vec<Value>],
) -> Result<Vec<E::Model>, DbErr> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let backend = conn.get_database_backend();
    let columns = primary_key::<E>();
    let names = columns
        .iter()
        .map(|c| quote(c.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let width = columns.len();
    let list = if width == 1 {
        format!("{names} IN ({})", placeholders(backend, 1, keys.len()))
    } else {
        let rows = (0..keys.len())
            .map(|i| format!("({})", placeholders(backend, 1 + i * width, width)))
            .collect::<Vec<_>>()
            .join(", ");
        format!("({names}) IN (VALUES {rows})")
    };
    let sql = format!(
        "SELECT * FROM {} WHERE {list}",
        quote(E::default().table_name())
    );
    let values: Vec<Value> = keys.iter().flatten().cloned().collect();
    E::find()
        .from_raw_sql(Statement::from_sql_and_values(backend, sql, values))
        .all(conn)
        .await
}

fn key_of<E: EntityTrait>(m: &E::Model) -> Vec<Value> {
    primary_key::<E>().into_iter().map(|c| m.get(c)).collect()
}

fn key_text(table: &'static str, key: Vec<Value>) -> Result<String, MigrateError> {
    let parts = key
        .into_iter()
        .map(|v| {
            json_of(v).ok_or_else(|| MigrateError::UnsupportedColumn {
                table,
                column: "primary key".to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::Value::Array(parts).to_string())
}

/// One row's canonical form: a JSON array of its column values in declaration order.
/// Values are read into the typed model first, so a SQLite boolean (0/1) and a PostgreSQL
/// boolean serialize the same, as do integers of any width, strings and NULLs.
fn canonical<E: EntityTrait>(table: &'static str, m: &E::Model) -> Result<String, MigrateError> {
    let values = E::Column::iter()
        .map(|c| {
            json_of(m.get(c)).ok_or_else(|| MigrateError::UnsupportedColumn {
                table,
                column: c.as_str().to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::Value::Array(values).to_string())
}

fn json_of(v: Value) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    fn or_null<T: Into<J>>(v: Option<T>) -> J {
        v.map_or(J::Null, Into::into)
    }
    Some(match v {
        Value::Bool(b) => or_null(b),
        Value::TinyInt(i) => or_null(i),
        Value::SmallInt(i) => or_null(i),
        Value::Int(i) => or_null(i),
        Value::BigInt(i) => or_null(i),
        Value::TinyUnsigned(i) => or_null(i),
        Value::SmallUnsigned(i) => or_null(i),
        Value::Unsigned(i) => or_null(i),
        Value::BigUnsigned(i) => or_null(i),
        Value::String(s) => or_null(s.map(|s| *s)),
        Value::Char(c) => or_null(c.map(String::from)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_do_not_depend_on_the_backend_s_representation() {
        let m = clients::Model {
            account_id: "a".into(),
            client_id: "c\"1".into(),
            connected: true,
            connection_id: "k".into(),
            connected_at_millis: 5,
            disconnected_at_millis: None,
            last_disconnect_reason: Some("lost".into()),
            stream_version: 2,
            updated_at_millis: -1,
            edge_connection_id: None,
        };
        assert_eq!(
            canonical::<clients::Entity>("clients", &m).unwrap(),
            r#"["a","c\"1",true,"k",5,null,"lost",2,-1,null]"#
        );
        assert_eq!(
            key_text("clients", key_of::<clients::Entity>(&m)).unwrap(),
            r#"["a","c\"1"]"#
        );
    }

    #[test]
    fn keyset_pages_compare_strings_byte_wise_on_postgres() {
        assert_eq!(
            sort_expr(DbBackend::Postgres, clients::Column::ClientId),
            "\"client_id\" COLLATE \"C\""
        );
        assert_eq!(
            sort_expr(DbBackend::Postgres, events::Column::Position),
            "\"position\""
        );
        assert_eq!(
            sort_expr(DbBackend::Sqlite, clients::Column::ClientId),
            "\"client_id\""
        );
        assert_eq!(placeholders(DbBackend::Postgres, 3, 2), "$3, $4");
        assert_eq!(placeholders(DbBackend::Sqlite, 3, 2), "?, ?");
    }
}
