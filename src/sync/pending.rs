//! Pending session starts, kept in the store (`pending_starts`): a start whose connection no
//! replica has recorded yet waits there until one does. Any replica parks, removes and
//! applies them, a restart keeps them, and each account keeps at most
//! `sessions.pending_per_account` (the least recently parked is evicted, logged and counted).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::metrics::SyncMetrics;
use crate::clock::now_millis;
use crate::store::{pending_starts, Store, StoreError};

/// A start that waits for its connection, as parked.
pub(crate) type PendingStart = pending_starts::Model;

/// The store's pending starts, with a hint of whether any exist so that the common case (a
/// connection nobody waits for) costs no query.
pub(crate) struct PendingStarts {
    store: Store,
    metrics: Arc<SyncMetrics>,
    per_account: usize,
    /// Set when this replica parks one, or the last scan found some (another replica's).
    maybe_any: AtomicBool,
}

impl PendingStarts {
    pub fn new(store: Store, metrics: Arc<SyncMetrics>, per_account: usize) -> Self {
        Self {
            store,
            metrics,
            per_account: per_account.max(1),
            maybe_any: AtomicBool::new(true),
        }
    }

    /// Parks `start` (a start parked again moves to the back), then evicts the account's
    /// least recently parked beyond the bound. One transaction. `start.parked_seq` and
    /// `start.parked_at_millis` are ignored: they are assigned here.
    pub(crate) async fn park(&self, start: PendingStart) -> Result<(), StoreError> {
        let account_id = start.account_id.clone();
        let txn = self.store.begin().await?;
        let last = txn.last_parked_seq(&account_id).await?;
        txn.upsert_pending_start(PendingStart {
            parked_seq: last + 1,
            parked_at_millis: now_millis(),
            ..start
        })
        .await?;
        // (OFFSET without LIMIT is not SQLite: the few beyond the bound are skipped here.)
        let parked: Vec<PendingStart> = txn
            .pending_starts_of_account(&account_id)
            .await?
            .into_iter()
            .skip(self.per_account)
            .collect();
        for evicted in &parked {
            txn.remove_pending_start(&evicted.account_id, &evicted.session_id)
                .await?;
        }
        txn.commit().await?;
        self.maybe_any.store(true, Relaxed);
        self.metrics.sessions_pending.fetch_add(1, Relaxed);
        for evicted in parked {
            self.metrics.sessions_pending_evicted.fetch_add(1, Relaxed);
            tracing::warn!(
                account_id = %evicted.account_id, session_id = %evicted.session_id,
                connection_id = %evicted.connection_id,
                "pending session start evicted (sessions.pending_per_account reached)"
            );
        }
        Ok(())
    }

    /// Removes a parked start; whether there was one.
    pub async fn remove(&self, account_id: &str, session_id: &str) -> Result<bool, StoreError> {
        self.store
            .remove_pending_start(account_id, session_id)
            .await
    }

    /// The starts waiting for `connection_id` in the account.
    pub(crate) async fn waiting_for(
        &self,
        account_id: &str,
        connection_id: &str,
    ) -> Result<Vec<PendingStart>, StoreError> {
        if !self.maybe_any.load(Relaxed) {
            return Ok(Vec::new());
        }
        self.store
            .pending_starts_for_connection(account_id, connection_id)
            .await
    }

    /// Every parked start whose connection the store shows connected (recorded by any
    /// replica), with that connection's client.
    pub async fn ready(&self) -> Result<Vec<(String, PendingStart)>, StoreError> {
        let parked = self.store.pending_starts().await?;
        self.maybe_any.store(!parked.is_empty(), Relaxed);
        self.store.connected_pending_starts(&parked).await
    }
}
