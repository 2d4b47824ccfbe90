//! Retention (`store.retention_days`): events recorded longer ago than that leave the log,
//! once an hour, in batches small enough that the pipeline's commits never wait long behind
//! one. Each stream keeps its latest [`KEEP`] events whatever their age: a connection open
//! for months keeps its `connected` (and its report), which the connection decider's
//! idempotency checks and presence history need. History answers say where the log they were
//! computed from starts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::{Backend, Store, StoreError};
use crate::metrics::{Exposition, Family};

/// Each stream's latest events kept whatever their age.
pub(crate) const KEEP: i64 = 3;

/// Events removed per statement.
const BATCH: i64 = 2_000;

/// How often retention runs.
const EVERY: Duration = Duration::from_secs(3600);

/// Events removed by retention since the start.
static REMOVED: AtomicU64 = AtomicU64::new(0);

/// Retention's counter (`/metrics`).
pub(crate) struct RetentionMetrics;

impl Family for RetentionMetrics {
    fn render(&self, out: &mut Exposition) {
        out.counter(
            "cradle_store_retention_removed_total",
            "Events removed from the log past store.retention_days.",
            REMOVED.load(Relaxed),
        );
    }
}

/// Applies retention every hour (the first time at once) until the task is stopped.
pub(crate) async fn run(store: Store, days: u32) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        let cutoff = crate::clock::now_millis() - i64::from(days) * 86_400_000;
        match store.remove_expired(cutoff).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, days, "retention: old events removed"),
            Err(error) => tracing::warn!(%error, "retention failed; retried in an hour"),
        }
    }
}

impl Store {
    /// Removes the events recorded before `cutoff_millis`, but for each stream's latest
    /// [`KEEP`], in batches of [`BATCH`]; returns how many.
    pub async fn remove_expired(&self, cutoff_millis: i64) -> Result<u64, StoreError> {
        let (backend, p) = match self.backend {
            Backend::Sqlite => (DbBackend::Sqlite, ["?", "?", "?"]),
            Backend::Postgres => (DbBackend::Postgres, ["$1", "$2", "$3"]),
        };
        let candidates = format!(
            "SELECT e.position FROM events e WHERE e.position > {} AND e.recorded_at_millis < {} \
             AND e.stream_version <= (SELECT max(l.stream_version) FROM events l \
             WHERE l.stream = e.stream) - {KEEP} ORDER BY e.position LIMIT {}",
            p[0], p[1], p[2]
        );
        let mut after = 0_i64;
        let mut removed = 0;
        loop {
            let rows = self
                .db
                .query_all(Statement::from_sql_and_values(
                    backend,
                    candidates.as_str(),
                    [after.into(), cutoff_millis.into(), BATCH.into()],
                ))
                .await?;
            let positions: Vec<i64> = rows
                .iter()
                .map(|r| r.try_get::<i64>("", "position"))
                .collect::<Result<_, _>>()?;
            let Some(&last) = positions.last() else {
                return Ok(removed);
            };
            let list = positions
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let done = self
                .db
                .execute(Statement::from_string(
                    backend,
                    format!("DELETE FROM events WHERE position IN ({list})"),
                ))
                .await?;
            removed += done.rows_affected();
            REMOVED.fetch_add(done.rows_affected(), Relaxed);
            after = last;
            // Let the pipeline's commits through between batches.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{temp_store, NewEvent};

    fn event(stream: &str, version: i64) -> NewEvent {
        NewEvent {
            account_id: "a".into(),
            stream: stream.into(),
            stream_version: version,
            event_type: "connection.connected",
            event_version: 1,
            data: serde_json::json!({}),
            at_millis: version,
            idempotency_key: format!("{stream}#{version}"),
        }
    }

    #[tokio::test]
    async fn old_events_leave_the_log_but_each_stream_keeps_its_latest_three() {
        let dir = tempfile::tempdir().unwrap();
        let store = temp_store(&dir).await;
        let tx = store.begin().await.unwrap();
        let old: Vec<NewEvent> = (1..=10)
            .map(|v| event("s1", v))
            .chain((1..=2).map(|v| event("s2", v)))
            .collect();
        tx.append(&old, 1_000).await.unwrap();
        tx.commit().await.unwrap();
        let tx = store.begin().await.unwrap();
        tx.append(&[event("s1", 11)], 9_000).await.unwrap();
        tx.commit().await.unwrap();

        let removed = store.remove_expired(5_000).await.unwrap();

        // s1 keeps versions 9, 10 (old, but among its latest three) and 11; s2 keeps both.
        assert_eq!(removed, 8);
        let left: Vec<(String, i64)> = store
            .all_events()
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.stream, e.stream_version))
            .collect();
        assert_eq!(
            left,
            vec![
                ("s1".into(), 9),
                ("s1".into(), 10),
                ("s2".into(), 1),
                ("s2".into(), 2),
                ("s1".into(), 11)
            ]
        );
        assert_eq!(store.remove_expired(5_000).await.unwrap(), 0);
    }
}
