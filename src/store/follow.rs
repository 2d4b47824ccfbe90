//! Following the log in commit order.
//!
//! A reader that has read every event up to position `N` must never later be handed a
//! smaller position. On SQLite that holds by itself: one writer at a time takes positions
//! and commits. On PostgreSQL a position is taken at insert and concurrent transactions
//! commit in any order, so position `N + 1` can commit after `N + 2` has been read.
//!
//! The rule here: every position is taken by `cradle_event_position()` (the column's
//! default, migration 9), which first takes the shared advisory lock [`APPEND_LOCK`] until
//! its transaction ends. Shared holders never wait for each other, so appends still run
//! concurrently. [`Store::settled_position`] reads, in one statement, the largest visible
//! position `M` and the transactions holding the lock; once every one of them has ended
//! (committed or rolled back), no position up to `M` can appear any more. (A holder's
//! commit is visible before its lock is released, and a transaction that takes the lock
//! after the statement takes positions above `M`.) Readers read only up to a settled
//! position.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::{Backend, Store, StoreError};

/// The advisory lock every PostgreSQL transaction appending events holds, shared, from its
/// first position to its end ("cradevnt" in ASCII).
pub(crate) const APPEND_LOCK: i64 = 0x6372_6164_6576_6e74;

/// How long [`Store::settled_position`] waits for the appends in flight to end.
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// `pg_locks`' rows of [`APPEND_LOCK`] granted in this database (a bigint key shows as
/// `classid` = its high half, `objid` = its low half, `objsubid` = 1).
fn holders_where() -> String {
    format!(
        "locktype = 'advisory' AND granted AND objsubid = 1 AND classid = {} AND objid = {} \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        APPEND_LOCK >> 32,
        APPEND_LOCK & 0xffff_ffff
    )
}

impl Store {
    /// The largest position below which the log is complete and can never change: every
    /// event at or below it that will ever be committed is committed. Read the log only up
    /// to it (`EventFilter::upto`) to follow it without a gap. On PostgreSQL this waits for
    /// the appends in flight when it was asked (milliseconds); a transaction that holds them
    /// up for [`SETTLE_WAIT`] is an error.
    pub async fn settled_position(&self) -> Result<i64, StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let row = self
                    .db
                    .query_one(Statement::from_string(
                        DbBackend::Sqlite,
                        "SELECT COALESCE(MAX(position), 0) AS settled FROM events",
                    ))
                    .await?;
                Ok(row.map_or(Ok(0), |r| r.try_get::<i64>("", "settled"))?)
            }
            Backend::Postgres => self.settled_postgres().await,
        }
    }

    async fn settled_postgres(&self) -> Result<i64, StoreError> {
        let sql = format!(
            "SELECT COALESCE((SELECT max(position) FROM events), 0) AS settled, \
             COALESCE((SELECT string_agg(virtualtransaction, ',') FROM pg_locks WHERE {}), '') \
             AS holders",
            holders_where()
        );
        let row = self
            .db
            .query_one(Statement::from_string(DbBackend::Postgres, sql))
            .await?;
        let Some(row) = row else { return Ok(0) };
        let settled: i64 = row.try_get("", "settled")?;
        let holders: String = row.try_get("", "holders")?;
        if holders.is_empty() {
            return Ok(settled);
        }
        let still = format!(
            "SELECT count(*) AS n FROM pg_locks WHERE {} \
             AND virtualtransaction = ANY(string_to_array($1, ','))",
            holders_where()
        );
        let deadline = Instant::now() + SETTLE_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            tokio::time::sleep(pause).await;
            let row = self
                .db
                .query_one(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    still.as_str(),
                    [holders.clone().into()],
                ))
                .await?;
            let left: i64 = row.map_or(Ok(0), |r| r.try_get("", "n"))?;
            if left == 0 {
                return Ok(settled);
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unsettled(holders));
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Wakes on every commit of this process that appended events (other processes' commits
    /// are found by polling).
    pub(crate) fn appended(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.appended.clone()
    }
}
