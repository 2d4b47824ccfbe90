//! `cradle migrate`: copies a whole store (every table of the event log and the read
//! models) from one database to another, typically an embedded SQLite deployment to
//! PostgreSQL.
//!
//! ## Guarantees
//!
//! - **Same keys.** Every row keeps its primary key, `events.position` included, so readers'
//!   `after={position}` cursors stay valid. On PostgreSQL the `events.position` sequence is
//!   then moved past the largest position, so appends after the migration do not collide.
//! - **One transaction.** Both stores are opened with [`Store::connect`], which runs the
//!   schema migrations (so the target gets the schema; sea-orm's own `seaql_migrations`
//!   table is never copied). Every row is then written inside one transaction on the target:
//!   a run that fails at any point, verification included, leaves the target's rows as they
//!   were. The source is read inside one transaction too (a snapshot), in pages of
//!   `DEFAULT_PAGE_ROWS` ordered by primary key, so a large log never has to fit in
//!   memory. Stop the service that writes to the source first.
//! - **Verification.** For every table the row count and a BLAKE2b-256 checksum over a
//!   canonical serialization of every row (a JSON array of its column values, one line per
//!   row, in primary-key order with byte-wise string ordering on both databases) are
//!   computed on the source and, inside the transaction after the copy, on the target. Any
//!   difference fails the run before it commits.
//! - **Re-runs.** A target with rows is refused, unless every table's count and checksum
//!   already equal the source's: then the run reports that the target already holds the
//!   source's data and writes nothing, so running the same command twice is safe. With
//!   [`MigrateOptions::allow_non_empty`], only rows whose primary key the target lacks are
//!   inserted; the run then checks that every source row is present and identical in the
//!   target (the source rows' checksum against the checksum of the target rows with the
//!   same keys, read in the same order) and reports the target's extra rows without
//!   failing.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::sqlite::SqliteConnectOptions;
use sea_orm::sqlx::{ConnectOptions, Connection};
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, IsolationLevel, Statement,
    TransactionTrait,
};

use crate::config::StoreConfig;
use crate::store::redact;
use crate::store::{Backend, Store};

mod tables;

use tables::{Summary, TableOps, TABLES};

/// Rows read per page (ordered by primary key).
pub(crate) const DEFAULT_PAGE_ROWS: u64 = 1000;
/// Rows per INSERT statement (ten columns each stay far below the parameter limits).
const INSERT_ROWS: usize = 100;
/// Keys per target lookup while checking that the source's rows are present.
const LOOKUP_ROWS: usize = 200;
/// How long a PostgreSQL server may take to accept the first connection.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How to migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateOptions {
    /// Write into a target that already has rows: insert only the rows whose primary key is
    /// missing, keep the rest.
    pub allow_non_empty: bool,
    /// Rows read per page.
    pub page_rows: u64,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            allow_non_empty: false,
            page_rows: DEFAULT_PAGE_ROWS,
        }
    }
}

/// What a successful run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target was empty; every row was copied and verified.
    Copied,
    /// The target already held exactly the source's rows; nothing was written.
    AlreadyPresent,
    /// The target had rows (`--allow-non-empty`); the missing rows were copied and every
    /// source row was verified present and identical.
    Merged,
}

/// One table's figures after a successful run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    /// Table name.
    pub table: &'static str,
    /// Rows in the source.
    pub rows: u64,
    /// BLAKE2b-256 (hex) of the source's rows, which the target matched.
    pub checksum: String,
    /// Rows this run inserted into the target.
    pub copied: u64,
    /// Rows the target holds that the source does not (only with `--allow-non-empty`).
    pub(crate) extra_in_target: u64,
}

/// What [`migrate`] did, per table; its [`fmt::Display`] is the command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The source URL, password redacted.
    pub from: String,
    /// The target URL, password redacted.
    pub to: String,
    /// Which of the three outcomes.
    pub outcome: Outcome,
    /// One entry per table, in copy order.
    pub tables: Vec<TableReport>,
}

impl MigrationReport {
    /// The figures of `table`, if it is one of the copied tables.
    pub fn table(&self, table: &str) -> Option<&TableReport> {
        self.tables.iter().find(|t| t.table == table)
    }

    /// Rows inserted over every table.
    pub fn copied(&self) -> u64 {
        self.tables.iter().map(|t| t.copied).sum()
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:>10}  {:<64}  STATUS",
            "TABLE", "ROWS", "CHECKSUM (BLAKE2b-256)"
        )?;
        for t in &self.tables {
            let status = match self.outcome {
                Outcome::Copied => format!("copied {}", t.copied),
                Outcome::AlreadyPresent => "already present".to_string(),
                Outcome::Merged => {
                    let mut s = format!(
                        "copied {}, {} already present",
                        t.copied,
                        t.rows.saturating_sub(t.copied)
                    );
                    if t.extra_in_target > 0 {
                        s.push_str(&format!(", {} extra in target", t.extra_in_target));
                    }
                    s
                }
            };
            writeln!(
                f,
                "{:<16} {:>10}  {:<64}  ({status})",
                t.table, t.rows, t.checksum
            )?;
        }
        let rows: u64 = self.tables.iter().map(|t| t.rows).sum();
        match self.outcome {
            Outcome::Copied => write!(
                f,
                "copied {rows} rows from {} to {} in one transaction; every table verified \
                 (row count and checksum)",
                self.from, self.to
            ),
            Outcome::AlreadyPresent => write!(
                f,
                "the target {} already holds the source's data (verified: every table's row \
                 count and checksum match); nothing written",
                self.to
            ),
            Outcome::Merged => {
                let extra: u64 = self.tables.iter().map(|t| t.extra_in_target).sum();
                write!(
                    f,
                    "copied {} missing rows from {} to {} in one transaction; all {rows} source \
                     rows verified present and identical; {extra} extra target rows kept",
                    self.copied(),
                    self.from,
                    self.to
                )
            }
        }
    }
}

/// Why a migration failed; each message is one line and names the table or the (redacted)
/// URL. When a run fails after connecting, the target's rows are as they were.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// `--from` and `--to` name the same database.
    #[error("--from and --to name the same database ({0}); nothing to migrate")]
    SameDatabase(String),
    /// A URL is neither SQLite nor PostgreSQL.
    #[error(
        "{role} {url}: not a database URL the store supports \
         (sqlite://PATH or postgres://USER:PASS@HOST:PORT/DB)"
    )]
    UnsupportedUrl { role: &'static str, url: String },
    /// The source SQLite file does not exist.
    #[error("source {url}: no SQLite database at {path}")]
    MissingSource { url: String, path: String },
    /// A database could not be opened (or its schema migrated).
    #[error("{role} {url}: cannot open: {message}")]
    Open {
        role: &'static str,
        url: String,
        message: String,
    },
    /// The target has rows that are not exactly the source's.
    #[error(
        "target {url} is not empty ({tables}) and does not hold the source's data; nothing \
         written (pass --allow-non-empty to copy only the rows it lacks)"
    )]
    NonEmptyTarget { url: String, tables: String },
    /// Reading a table failed.
    #[error("{table}: cannot read the {role}: {message}")]
    Read {
        table: &'static str,
        role: &'static str,
        message: String,
    },
    /// Writing a table failed.
    #[error("{table}: cannot write to the target: {message}; nothing written")]
    Write {
        table: &'static str,
        message: String,
    },
    /// A column's type has no canonical form for the checksum.
    #[error("{table}: column `{column}` has a type the checksum does not cover")]
    UnsupportedColumn { table: &'static str, column: String },
    /// After the copy, the target's table differs from the source's.
    #[error(
        "{table}: verification failed: source {source_rows} rows, checksum {source_checksum}; \
         target {target_rows} rows, checksum {target_checksum}; nothing written"
    )]
    Mismatch {
        table: &'static str,
        source_rows: u64,
        source_checksum: String,
        target_rows: u64,
        target_checksum: String,
    },
    /// After a `--allow-non-empty` copy, some source rows are missing or differ in the target.
    #[error(
        "{table}: verification failed: of {source_rows} source rows, {missing} are missing and \
         {differing} differ in the target (source checksum {source_checksum}, target checksum \
         {target_checksum} over the same keys); nothing written"
    )]
    NotContained {
        table: &'static str,
        source_rows: u64,
        missing: u64,
        differing: u64,
        source_checksum: String,
        target_checksum: String,
    },
    /// Any other database step (transaction, sequence) failed.
    #[error("{role} {url}: {action}: {message}")]
    Db {
        role: &'static str,
        url: String,
        action: &'static str,
        message: String,
    },
}

/// Copies every table of the store at `from` into the store at `to` and verifies it (see the
/// module documentation for the guarantees).
pub async fn migrate(
    from: &str,
    to: &str,
    options: MigrateOptions,
) -> Result<MigrationReport, MigrateError> {
    let from_path = check_url("source", from)?;
    let to_path = check_url("target", to)?;
    if from == to || same_file(from_path.as_ref(), to_path.as_ref()) {
        return Err(MigrateError::SameDatabase(redact(from)));
    }
    if let Some(path) = &from_path {
        if !path.is_file() {
            return Err(MigrateError::MissingSource {
                url: redact(from),
                path: path.display().to_string(),
            });
        }
    }
    let source = open("source", from).await?;
    let target = match open("target", to).await {
        Ok(t) => t,
        Err(e) => {
            let _ = source.close().await;
            return Err(e);
        }
    };
    let page_rows = options.page_rows.max(1);
    let run = Run {
        from: redact(from),
        to: redact(to),
        allow_non_empty: options.allow_non_empty,
        page_rows,
    };
    let result = run.transfer(&source, &target).await;
    let _ = source.close().await;
    let _ = target.close().await;
    result
}

/// Checks a URL's scheme; returns the file of a SQLite URL.
fn check_url(role: &'static str, url: &str) -> Result<Option<PathBuf>, MigrateError> {
    let unsupported = || MigrateError::UnsupportedUrl {
        role,
        url: redact(url),
    };
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url).map_err(|_| unsupported())?;
        Ok(Some(options.get_filename().to_path_buf()))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url::Url::parse(url).map_err(|_| unsupported())?;
        Ok(None)
    } else {
        Err(unsupported())
    }
}

/// Whether two SQLite URLs name the same file (written differently).
fn same_file(a: Option<&PathBuf>, b: Option<&PathBuf>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a == b
                || matches!(
                    (a.canonicalize(), b.canonicalize()),
                    (Ok(x), Ok(y)) if x == y
                )
        }
        _ => false,
    }
}

/// Opens a store. A PostgreSQL server is first reached with one plain connection, so that
/// an unreachable server or a refused login fails at once with the driver's own reason
/// instead of the pool's timeout.
async fn open(role: &'static str, url: &str) -> Result<Store, MigrateError> {
    let failed = |message: String| MigrateError::Open {
        role,
        url: redact(url),
        message,
    };
    if !url.starts_with("sqlite:") {
        let options = PgConnectOptions::from_str(url).map_err(|e| failed(one_line(e)))?;
        match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(e)) => return Err(failed(one_line(e))),
            Err(_) => {
                return Err(failed(format!(
                    "no answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                )))
            }
        }
    }
    let config = StoreConfig {
        database_url: url.to_string(),
        ..StoreConfig::default()
    };
    Store::connect(&config)
        .await
        .map_err(|e| failed(one_line(e)))
}

fn one_line(e: impl fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// One run's settings.
struct Run {
    from: String,
    to: String,
    allow_non_empty: bool,
    page_rows: u64,
}

impl Run {
    fn db_err(&self, role: &'static str, action: &'static str, e: DbErr) -> MigrateError {
        let url = if role == "source" {
            &self.from
        } else {
            &self.to
        };
        MigrateError::Db {
            role,
            url: url.clone(),
            action,
            message: one_line(e),
        }
    }

    /// Opens the two transactions, runs the copy, commits only when it verified.
    async fn transfer(
        &self,
        source: &Store,
        target: &Store,
    ) -> Result<MigrationReport, MigrateError> {
        let src = match source.backend() {
            // One snapshot for every read of the source.
            Backend::Postgres => {
                source
                    .db()
                    .begin_with_config(
                        Some(IsolationLevel::RepeatableRead),
                        Some(AccessMode::ReadOnly),
                    )
                    .await
            }
            // A SQLite read transaction is a snapshot already (WAL).
            Backend::Sqlite => source.db().begin().await,
        }
        .map_err(|e| self.db_err("source", "cannot begin a transaction", e))?;
        let dst = target
            .db()
            .begin()
            .await
            .map_err(|e| self.db_err("target", "cannot begin a transaction", e))?;
        let result = self.body(&src, &dst, target.backend()).await;
        let _ = src.rollback().await;
        match result {
            Ok(report) if report.outcome != Outcome::AlreadyPresent => {
                dst.commit()
                    .await
                    .map_err(|e| self.db_err("target", "cannot commit", e))?;
                Ok(report)
            }
            Ok(report) => {
                let _ = dst.rollback().await;
                Ok(report)
            }
            Err(e) => {
                let _ = dst.rollback().await;
                Err(e)
            }
        }
    }

    /// Surveys both sides, recognises or refuses a non-empty target, copies every table,
    /// verifies it and moves the PostgreSQL position sequence.
    async fn body(
        &self,
        src: &DatabaseTransaction,
        dst: &DatabaseTransaction,
        target_backend: Backend,
    ) -> Result<MigrationReport, MigrateError> {
        let page = self.page_rows;
        let (source_sums, non_empty) = self.survey(src, dst).await?;

        let merge = !non_empty.is_empty();
        if merge {
            if self.target_matches(dst, &source_sums).await? {
                let tables = TABLES
                    .iter()
                    .zip(source_sums)
                    .map(|(t, s)| TableReport {
                        table: t.name(),
                        rows: s.rows,
                        checksum: s.checksum,
                        copied: 0,
                        extra_in_target: 0,
                    })
                    .collect();
                return Ok(self.report(Outcome::AlreadyPresent, tables));
            }
            if !self.allow_non_empty {
                return Err(MigrateError::NonEmptyTarget {
                    url: self.to.clone(),
                    tables: non_empty.join(", "),
                });
            }
        }

        let mut copied = Vec::with_capacity(TABLES.len());
        for t in TABLES {
            copied.push(t.copy(src, dst, page, merge).await?);
        }

        let mut tables = Vec::with_capacity(TABLES.len());
        for ((t, s), copied) in TABLES.iter().zip(source_sums).zip(copied) {
            let extra_in_target = if merge {
                self.verify_contained(*t, &s, src, dst).await?
            } else {
                self.verify_equal(*t, &s, dst).await?;
                0
            };
            tables.push(TableReport {
                table: t.name(),
                rows: s.rows,
                checksum: s.checksum,
                copied,
                extra_in_target,
            });
        }

        if target_backend == Backend::Postgres {
            self.reset_position_sequence(dst).await?;
        }
        Ok(self.report(
            if merge {
                Outcome::Merged
            } else {
                Outcome::Copied
            },
            tables,
        ))
    }

    /// The report of this run's two URLs with `outcome` and `tables`.
    fn report(&self, outcome: Outcome, tables: Vec<TableReport>) -> MigrationReport {
        MigrationReport {
            from: self.from.clone(),
            to: self.to.clone(),
            outcome,
            tables,
        }
    }

    /// Every table's source summary, and the target's non-empty tables as `name: n rows`
    /// (read table by table, source first).
    async fn survey(
        &self,
        src: &DatabaseTransaction,
        dst: &DatabaseTransaction,
    ) -> Result<(Vec<Summary>, Vec<String>), MigrateError> {
        let mut source_sums = Vec::with_capacity(TABLES.len());
        let mut non_empty = Vec::new();
        for t in TABLES {
            source_sums.push(t.summary(src, "source", self.page_rows).await?);
            let n = t.count(dst, "target").await?;
            if n > 0 {
                non_empty.push(format!("{}: {n} rows", t.name()));
            }
        }
        Ok((source_sums, non_empty))
    }

    /// Whether every target table's summary equals the source's (stops at the first that differs).
    async fn target_matches(
        &self,
        dst: &DatabaseTransaction,
        source_sums: &[Summary],
    ) -> Result<bool, MigrateError> {
        for (t, s) in TABLES.iter().zip(source_sums) {
            if t.summary(dst, "target", self.page_rows).await? != *s {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// After a merge: checks every source row of `t` is in the target unchanged; returns the
    /// target's extra rows.
    async fn verify_contained(
        &self,
        t: &dyn TableOps,
        s: &Summary,
        src: &DatabaseTransaction,
        dst: &DatabaseTransaction,
    ) -> Result<u64, MigrateError> {
        let m = t.matched(src, dst, self.page_rows).await?;
        if m.missing > 0 || m.differing > 0 || m.source != *s {
            return Err(MigrateError::NotContained {
                table: t.name(),
                source_rows: s.rows,
                missing: m.missing,
                differing: m.differing,
                source_checksum: s.checksum.clone(),
                target_checksum: m.target_checksum,
            });
        }
        Ok(t.count(dst, "target").await?.saturating_sub(s.rows))
    }

    /// After a copy into an empty target: checks the target's table `t` has the source's
    /// count and checksum.
    async fn verify_equal(
        &self,
        t: &dyn TableOps,
        s: &Summary,
        dst: &DatabaseTransaction,
    ) -> Result<(), MigrateError> {
        let d = t.summary(dst, "target", self.page_rows).await?;
        if d != *s {
            return Err(MigrateError::Mismatch {
                table: t.name(),
                source_rows: s.rows,
                source_checksum: s.checksum.clone(),
                target_rows: d.rows,
                target_checksum: d.checksum,
            });
        }
        Ok(())
    }

    /// Moves the sequence behind `events.position` past the largest position, so the next
    /// append gets `MAX(position) + 1` instead of a copied position.
    async fn reset_position_sequence(&self, dst: &DatabaseTransaction) -> Result<(), MigrateError> {
        let sql = "SELECT setval(pg_get_serial_sequence('events', 'position'), \
                   COALESCE((SELECT MAX(\"position\") FROM \"events\"), 0) + 1, false) AS next";
        let row = dst
            .query_one(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .map_err(|e| self.db_err("target", "cannot reset the events.position sequence", e))?;
        let next: Option<i64> = match row {
            Some(row) => row.try_get("", "next").map_err(|e| {
                self.db_err("target", "cannot reset the events.position sequence", e)
            })?,
            None => None,
        };
        if next.is_none() {
            return Err(MigrateError::Db {
                role: "target",
                url: self.to.clone(),
                action: "cannot reset the events.position sequence",
                message: "no sequence owns events.position".to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_connecting() {
        assert!(matches!(
            check_url("source", "mysql://x"),
            Err(MigrateError::UnsupportedUrl { .. })
        ));
        assert_eq!(
            check_url("source", "sqlite://data/c.db").unwrap(),
            Some(PathBuf::from("data/c.db"))
        );
        assert_eq!(check_url("target", "postgres://u:p@h:1/d").unwrap(), None);
    }
}
