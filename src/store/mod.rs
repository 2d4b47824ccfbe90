//! The store: event log and read models behind sea-orm, on SQLite (embedded default, WAL,
//! one writer) or PostgreSQL (same schema, same migrations).
//!
//! Writers use [`Store::begin`] and the [`StoreTx`] methods so that events and the read
//! models they project commit in one transaction. Readers use the query methods on
//! [`Store`]; every read is scoped by account.

pub mod accounts;
pub mod audit;
pub mod bans;
pub mod clients;
pub mod credentials;
pub mod events;
pub(crate) mod follow;
pub mod migration;
pub mod parent_stations;
pub(crate) mod pending_starts;
pub(crate) mod retention;
pub mod sessions;
pub(crate) mod ws_handover;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use sea_orm::sea_query::OnConflict;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::{
    ActiveValue, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
    SqlxPostgresConnector, SqlxSqliteConnector, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::config::{SqliteSync, StoreConfig};
use crate::topics::ClientKey;

/// Errors at the store's edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL does not parse.
    #[error("store.database_url: {0}")]
    Url(String),
    /// The SQLite file's folder cannot be created.
    #[error("store.database_url: cannot create {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    /// A command that reads or changes a store found none there (only `cradle serve` and an
    /// explicit `--create-store` create one).
    #[error("no Cradle store at {0}: start `cradle serve` with this store.database_url first, or pass --create-store")]
    Missing(String),
    /// A unique constraint refused a write: another writer got there first. Retry the batch.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Any other database failure.
    #[error("database: {0}")]
    Db(DbErr),
    /// A stored value is none of its column's type (a credential kind other than `device`,
    /// `token`, `operator` or `admin`): the row was written by something else.
    #[error("stored value not understood: {0}")]
    Unreadable(String),
    /// PostgreSQL transactions appending events stayed open for seconds, so the log's
    /// settled position could not be read (their virtual transaction ids).
    #[error("appends in flight for over 10 s hold up the log's readers: {0}")]
    Unsettled(String),
    /// A stored JSON payload does not parse (the log was written by something else).
    #[error("stored data of event {position} is not JSON: {message}")]
    CorruptData { position: i64, message: String },
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        if let DbErr::Type(msg) = err {
            return StoreError::Unreadable(msg);
        }
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(msg)) => StoreError::Conflict(msg),
            _ => StoreError::Db(err),
        }
    }
}

impl StoreError {
    /// Whether retrying the transaction may succeed: a conflict, or SQLite busy.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            StoreError::Conflict(_) => true,
            StoreError::Db(e) => sqlite_busy(e),
            _ => false,
        }
    }
}

/// SQLite's SQLITE_BUSY (5) or SQLITE_BUSY_SNAPSHOT (517): in WAL mode a transaction that read
/// and then writes while another connection writes gets it at once (the busy timeout does not
/// apply, its snapshot is stale). Like a unique-key conflict, the transaction may be retried.
fn sqlite_busy(err: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    matches!(e, sea_orm::sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("5") | Some("517")))
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A new event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The account of the stream.
    pub account_id: String,
    /// The stream id.
    pub stream: String,
    /// The stream version this event takes.
    pub stream_version: i64,
    /// Stable type name.
    pub event_type: &'static str,
    /// Payload shape version.
    pub event_version: i32,
    /// Payload.
    pub data: serde_json::Value,
    /// When it happened (observer's clock).
    pub at_millis: i64,
    /// Unique per logical event.
    pub idempotency_key: String,
}

/// An event as read back from the log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    /// Global position.
    pub position: i64,
    /// The account of its stream.
    pub account_id: String,
    /// Stream id.
    pub stream: String,
    /// Version inside the stream.
    pub stream_version: i64,
    /// Type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Payload shape version.
    pub event_version: i32,
    /// When it happened.
    pub at_millis: i64,
    /// When it was recorded.
    pub recorded_at_millis: i64,
    /// Payload.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// The event log and read models.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    backend: Backend,
    /// Told of every commit that appended events (the live feed wakes on it).
    appended: std::sync::Arc<tokio::sync::Notify>,
}

impl Store {
    /// Connects and runs every pending migration.
    pub async fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        Self::open(config, true).await
    }

    /// Opens the store at `store.database_url` only when one is there: a missing SQLite file,
    /// or a PostgreSQL database without Cradle's tables, is [`StoreError::Missing`] and
    /// nothing is created. (An older store is migrated, as `cradle serve` would.)
    pub async fn connect_existing(config: &StoreConfig) -> Result<Store, StoreError> {
        Self::open(config, false).await
    }

    async fn open(config: &StoreConfig, create: bool) -> Result<Store, StoreError> {
        let url = config.database_url.as_str();
        let store = if url.starts_with("sqlite:") {
            Self::open_sqlite(config, create).await?
        } else {
            Self::open_postgres(config, create).await?
        };
        match store.backend {
            Backend::Sqlite => migration::Migrator::up(&store.db, None).await?,
            Backend::Postgres => {
                // Replicas starting together on one database would race to create the same
                // tables (a duplicate key in pg_type fails the slower one). A transaction
                // holding an advisory lock serialises them; the migrations run inside it
                // (savepoints), and the second replica then finds nothing to do.
                let txn = store.db.begin().await?;
                txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                    .await?;
                migration::Migrator::up(&txn, None).await?;
                txn.commit().await?;
            }
        }
        Ok(store)
    }

    /// The SQLite pool (the file and its folder created only when `create`).
    async fn open_sqlite(config: &StoreConfig, create: bool) -> Result<Store, StoreError> {
        let url = config.database_url.as_str();
        let sync = match config.sqlite_synchronous {
            SqliteSync::Full => SqliteSynchronous::Full,
            SqliteSync::Normal => SqliteSynchronous::Normal,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Url(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let file = options.get_filename();
        if !create && file != std::path::Path::new(":memory:") && !file.exists() {
            let shown = std::env::current_dir()
                .map(|dir| dir.join(file))
                .unwrap_or_else(|_| file.to_path_buf());
            return Err(StoreError::Missing(shown.display().to_string()));
        }
        if let Some(dir) = file.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Db(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))))?;
        Ok(Store {
            db: SqlxSqliteConnector::from_sqlx_sqlite_pool(pool),
            backend: Backend::Sqlite,
            appended: Default::default(),
        })
    }

    /// The PostgreSQL pool (a database without Cradle's tables refused unless `create`).
    async fn open_postgres(config: &StoreConfig, create: bool) -> Result<Store, StoreError> {
        let url = config.database_url.as_str();
        // Generic plans of the batch statements (hundreds of IN parameters) fall back to
        // sequential scans once PostgreSQL switches to them after five executions: 100 ms
        // per chunk at 10k clients. Custom plans keep every lookup an index probe.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Url(e.to_string()))?
            .options([("plan_cache_mode", "force_custom_plan")]);
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .idle_timeout(secs(config.idle_timeout_secs))
            .max_lifetime(secs(config.max_lifetime_secs))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Db(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))))?;
        let store = Store {
            db: SqlxPostgresConnector::from_sqlx_postgres_pool(pool),
            backend: Backend::Postgres,
            appended: Default::default(),
        };
        if !create && !store.has_schema().await? {
            return Err(StoreError::Missing(redact(url)));
        }
        Ok(store)
    }

    /// Whether Cradle's migrations ever ran on this PostgreSQL database.
    async fn has_schema(&self) -> Result<bool, StoreError> {
        use sea_orm::{ConnectionTrait, Statement};
        let row = self
            .db
            .query_one(Statement::from_string(
                self.db.get_database_backend(),
                "SELECT to_regclass('seaql_migrations') IS NOT NULL AS present",
            ))
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<bool>("", "present")?,
            None => false,
        })
    }

    /// The raw connection, below the store's methods: for the store-to-store copy
    /// (`migrate`), the load generator's check of what it recorded (`bench::storm`) and
    /// integration tests that seed or dump tables. Every other module calls the methods.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Which database this is.
    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }

    /// Closes the pool; for SQLite this checkpoints the WAL into the database file.
    pub async fn close(self) -> Result<(), StoreError> {
        Ok(self.db.close().await?)
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        Ok(StoreTx {
            txn: self.db.begin().await?,
            appended: Some(self.appended.clone()),
            appends: Default::default(),
        })
    }

    /// Every client of `account_id`, ordered by client id.
    pub async fn clients(&self, account_id: &str) -> Result<Vec<clients::Model>, StoreError> {
        Ok(clients::Entity::find()
            .filter(clients::Column::AccountId.eq(account_id))
            .order_by_asc(clients::Column::ClientId)
            .all(&self.db)
            .await?)
    }

    /// How many clients are connected now, over every account.
    pub async fn connected_count(&self) -> Result<u64, StoreError> {
        Ok(clients::Entity::find()
            .filter(clients::Column::Connected.eq(true))
            .count(&self.db)
            .await?)
    }

    /// Every client whose current connection is open, with that connection's id.
    pub(crate) async fn connected_clients(&self) -> Result<Vec<(ClientKey, String)>, StoreError> {
        let rows = clients::Entity::find()
            .filter(clients::Column::Connected.eq(true))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    ClientKey {
                        account_id: r.account_id,
                        client_id: r.client_id,
                    },
                    r.connection_id,
                )
            })
            .collect())
    }

    /// The events of `account_id` after `after`, in log order, at most `limit`.
    pub async fn events(
        &self,
        account_id: &str,
        after: i64,
        limit: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_where(account_id, after, limit, &EventFilter::default())
            .await
    }

    /// [`Store::events`] narrowed by `filter`.
    pub async fn events_where(
        &self,
        account_id: &str,
        after: i64,
        limit: u64,
        filter: &EventFilter,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.log(Some(account_id), after, limit, filter).await
    }

    /// The events after `after` in log order, at most `limit`: of `account_id`, or of every
    /// account, narrowed by `filter`.
    pub async fn log(
        &self,
        account_id: Option<&str>,
        after: i64,
        limit: u64,
        filter: &EventFilter,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut query = events::Entity::find().filter(events::Column::Position.gt(after));
        if let Some(account_id) = account_id {
            query = query.filter(events::Column::AccountId.eq(account_id));
        }
        if let Some(upto) = filter.upto {
            query = query.filter(events::Column::Position.lte(upto));
        }
        if let Some(stream) = &filter.stream {
            query = query.filter(events::Column::Stream.eq(stream.as_str()));
        }
        if !filter.types.is_empty() {
            query = query.filter(events::Column::EventType.is_in(filter.types.iter().cloned()));
        }
        let rows = query
            .order_by_asc(events::Column::Position)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(stored_event).collect()
    }

    /// Up to `limit` events of `stream` with a version below `before`, newest first (a
    /// client's connection log read backwards from now, for presence history).
    pub async fn stream_back(
        &self,
        stream: &str,
        before: i64,
        limit: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = events::Entity::find()
            .filter(events::Column::Stream.eq(stream))
            .filter(events::Column::StreamVersion.lt(before))
            .order_by_desc(events::Column::StreamVersion)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(stored_event).collect()
    }

    /// Every event, in log order; for tests and maintenance tools.
    pub async fn all_events(&self) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = events::Entity::find()
            .order_by_asc(events::Column::Position)
            .all(&self.db)
            .await?;
        rows.into_iter().map(stored_event).collect()
    }
}

/// Which of an account's events to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this stream's (for example a client's connection stream).
    pub stream: Option<String>,
    /// Only events of these types (none: every type).
    pub types: Vec<String>,
    /// Only positions up to this one (a reader's settled position, see
    /// [`Store::settled_position`]).
    pub upto: Option<i64>,
}

impl EventFilter {
    /// Whether `event` (of the account asked for) passes the filter.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        self.stream.as_ref().is_none_or(|s| *s == event.stream)
            && (self.types.is_empty() || self.types.contains(&event.event_type))
            && self.upto.is_none_or(|u| event.position <= u)
    }
}

fn stored_event(row: events::Model) -> Result<StoredEvent, StoreError> {
    let data = serde_json::from_str(&row.data).map_err(|e| StoreError::CorruptData {
        position: row.position,
        message: e.to_string(),
    })?;
    Ok(StoredEvent {
        position: row.position,
        account_id: row.account_id,
        stream: row.stream,
        stream_version: row.stream_version,
        event_type: row.event_type,
        event_version: row.event_version,
        at_millis: row.at_millis,
        recorded_at_millis: row.recorded_at_millis,
        data,
    })
}

/// The PostgreSQL advisory lock key under which migrations run (any constant unique to
/// Cradle: "cradle" in ASCII).
const MIGRATION_LOCK: i64 = 0x0000_6372_6164_6c65;

/// Bound parameters per statement stay well under SQLite's and PostgreSQL's limits.
const CHUNK: usize = 200;

/// One write transaction. Dropping it without [`StoreTx::commit`] rolls back.
pub struct StoreTx {
    txn: DatabaseTransaction,
    /// Set by [`StoreTx::append`]: whom to tell once the events are committed.
    appended: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Whether it appended events.
    appends: std::sync::atomic::AtomicBool,
}

impl StoreTx {
    /// The read-model rows of `keys` that exist.
    pub(crate) async fn load_clients(
        &self,
        keys: &[ClientKey],
    ) -> Result<HashMap<ClientKey, clients::Model>, StoreError> {
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            // `account_id IN (…) AND client_id IN (…)` walks the primary-key index on both
            // databases (a row-value IN list or an OR of pairs made PostgreSQL scan the
            // table). It can return a few pairs not asked for when a chunk spans accounts;
            // the caller looks rows up by key, so extras are harmless.
            let mut accounts: Vec<&str> = chunk.iter().map(|k| k.account_id.as_str()).collect();
            accounts.sort_unstable();
            accounts.dedup();
            let cond = Condition::all()
                .add(clients::Column::AccountId.is_in(accounts))
                .add(clients::Column::ClientId.is_in(chunk.iter().map(|k| k.client_id.as_str())));
            for row in clients::Entity::find().filter(cond).all(&self.txn).await? {
                let key = ClientKey {
                    account_id: row.account_id.clone(),
                    client_id: row.client_id.clone(),
                };
                out.insert(key, row);
            }
        }
        Ok(out)
    }

    /// Which of `keys` are already in the log.
    pub(crate) async fn existing_keys(
        &self,
        keys: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::new();
        for chunk in keys.chunks(CHUNK) {
            let found: Vec<String> = events::Entity::find()
                .select_only()
                .column(events::Column::IdempotencyKey)
                .filter(events::Column::IdempotencyKey.is_in(chunk.iter().map(String::as_str)))
                .into_tuple()
                .all(&self.txn)
                .await?;
            out.extend(found);
        }
        Ok(out)
    }

    /// Appends `events` in order. A duplicate idempotency key or stream version is a
    /// [`StoreError::Conflict`] and the whole transaction must be retried.
    pub async fn append(
        &self,
        new: &[NewEvent],
        recorded_at_millis: i64,
    ) -> Result<(), StoreError> {
        if !new.is_empty() {
            self.appends
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        append_in(&self.txn, new, recorded_at_millis).await
    }

    /// Inserts or replaces read-model rows.
    pub async fn upsert_clients(&self, rows: &[clients::Model]) -> Result<(), StoreError> {
        use clients::Column as C;
        for chunk in rows.chunks(CHUNK) {
            let models = chunk.iter().cloned().map(|m| clients::ActiveModel {
                account_id: ActiveValue::Set(m.account_id),
                client_id: ActiveValue::Set(m.client_id),
                connected: ActiveValue::Set(m.connected),
                connection_id: ActiveValue::Set(m.connection_id),
                connected_at_millis: ActiveValue::Set(m.connected_at_millis),
                disconnected_at_millis: ActiveValue::Set(m.disconnected_at_millis),
                last_disconnect_reason: ActiveValue::Set(m.last_disconnect_reason),
                stream_version: ActiveValue::Set(m.stream_version),
                updated_at_millis: ActiveValue::Set(m.updated_at_millis),
                edge_connection_id: ActiveValue::Set(m.edge_connection_id),
            });
            clients::Entity::insert_many(models)
                .on_conflict(
                    OnConflict::columns([C::AccountId, C::ClientId])
                        .update_columns([
                            C::Connected,
                            C::ConnectionId,
                            C::ConnectedAtMillis,
                            C::DisconnectedAtMillis,
                            C::LastDisconnectReason,
                            C::StreamVersion,
                            C::UpdatedAtMillis,
                            C::EdgeConnectionId,
                        ])
                        .to_owned(),
                )
                .exec(&self.txn)
                .await?;
        }
        Ok(())
    }

    /// Commits (and wakes the live feed when events were appended).
    pub async fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().await?;
        if let (true, Some(appended)) = (self.appends.into_inner(), &self.appended) {
            appended.notify_one();
        }
        Ok(())
    }
}

/// Appends `new` in order inside `txn` (see [`StoreTx::append`]).
pub(crate) async fn append_in(
    txn: &DatabaseTransaction,
    new: &[NewEvent],
    recorded_at_millis: i64,
) -> Result<(), StoreError> {
    for chunk in new.chunks(CHUNK) {
        let models = chunk.iter().map(|e| events::ActiveModel {
            position: ActiveValue::NotSet,
            account_id: ActiveValue::Set(e.account_id.clone()),
            stream: ActiveValue::Set(e.stream.clone()),
            stream_version: ActiveValue::Set(e.stream_version),
            event_type: ActiveValue::Set(e.event_type.to_string()),
            event_version: ActiveValue::Set(e.event_version),
            data: ActiveValue::Set(e.data.to_string()),
            at_millis: ActiveValue::Set(e.at_millis),
            recorded_at_millis: ActiveValue::Set(recorded_at_millis),
            idempotency_key: ActiveValue::Set(e.idempotency_key.clone()),
        });
        events::Entity::insert_many(models).exec(txn).await?;
    }
    Ok(())
}
/// A database URL with its password hidden, for logs.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// A fresh SQLite store in `dir`, for the store's unit tests.
#[cfg(test)]
pub(crate) async fn temp_store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("cradle.db").display());
    let config = StoreConfig {
        database_url: url,
        ..StoreConfig::default()
    };
    Store::connect(&config)
        .await
        .expect("a store in a temporary directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite://data/cradle.db"), "sqlite://data/cradle.db");
    }
}
