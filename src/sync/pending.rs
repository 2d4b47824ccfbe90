//! Pending session starts, kept in the store (`pending_starts`): a start whose connection no
//! replica has recorded yet waits there until one does. Any replica parks, removes and
//! applies them, a restart keeps them, and each account keeps at most
//! `sessions.pending_per_account` (the least recently parked is evicted, logged and counted).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use sea_orm::{
    sea_query::OnConflict, ActiveValue, ColumnTrait, Condition, EntityTrait, QueryFilter,
    QueryOrder, TransactionTrait,
};

use crate::clock::now_millis;
use crate::metrics::Metrics;
use crate::store::{clients, pending_starts, Store, StoreError};

/// A start that waits for its connection, as parked.
pub(crate) type PendingStart = pending_starts::Model;

/// The store's pending starts, with a hint of whether any exist so that the common case (a
/// connection nobody waits for) costs no query.
pub(crate) struct PendingStarts {
    store: Store,
    metrics: Arc<Metrics>,
    per_account: usize,
    /// Set when this replica parks one, or the last scan found some (another replica's).
    maybe_any: AtomicBool,
}

impl PendingStarts {
    pub fn new(store: Store, metrics: Arc<Metrics>, per_account: usize) -> Self {
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
        let txn = self.store.db().begin().await?;
        let last = pending_starts::Entity::find()
            .filter(pending_starts::Column::AccountId.eq(account_id.as_str()))
            .order_by_desc(pending_starts::Column::ParkedSeq)
            .one(&txn)
            .await?
            .map_or(0, |p| p.parked_seq);
        let row = pending_starts::ActiveModel {
            account_id: ActiveValue::Set(start.account_id),
            session_id: ActiveValue::Set(start.session_id),
            connection_id: ActiveValue::Set(start.connection_id),
            name: ActiveValue::Set(start.name),
            started_at_millis: ActiveValue::Set(start.started_at_millis),
            parked_seq: ActiveValue::Set(last + 1),
            parked_at_millis: ActiveValue::Set(now_millis()),
        };
        pending_starts::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    pending_starts::Column::AccountId,
                    pending_starts::Column::SessionId,
                ])
                .update_columns([
                    pending_starts::Column::ConnectionId,
                    pending_starts::Column::Name,
                    pending_starts::Column::StartedAtMillis,
                    pending_starts::Column::ParkedSeq,
                    pending_starts::Column::ParkedAtMillis,
                ])
                .to_owned(),
            )
            .exec(&txn)
            .await?;
        // (OFFSET without LIMIT is not SQLite: the few beyond the bound are skipped here.)
        let parked: Vec<PendingStart> = pending_starts::Entity::find()
            .filter(pending_starts::Column::AccountId.eq(account_id.as_str()))
            .order_by_desc(pending_starts::Column::ParkedSeq)
            .all(&txn)
            .await?
            .into_iter()
            .skip(self.per_account)
            .collect();
        for evicted in &parked {
            pending_starts::Entity::delete_by_id((
                evicted.account_id.clone(),
                evicted.session_id.clone(),
            ))
            .exec(&txn)
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
        let done =
            pending_starts::Entity::delete_by_id((account_id.to_string(), session_id.to_string()))
                .exec(self.store.db())
                .await?;
        Ok(done.rows_affected > 0)
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
        Ok(pending_starts::Entity::find()
            .filter(pending_starts::Column::AccountId.eq(account_id))
            .filter(pending_starts::Column::ConnectionId.eq(connection_id))
            .order_by_asc(pending_starts::Column::ParkedSeq)
            .all(self.store.db())
            .await?)
    }

    /// Every parked start whose connection the store shows connected (recorded by any
    /// replica), with that connection's client.
    pub async fn ready(&self) -> Result<Vec<(String, PendingStart)>, StoreError> {
        let parked = pending_starts::Entity::find()
            .order_by_asc(pending_starts::Column::ParkedSeq)
            .all(self.store.db())
            .await?;
        self.maybe_any.store(!parked.is_empty(), Relaxed);
        let mut ready = Vec::new();
        for chunk in parked.chunks(200) {
            let rows = clients::Entity::find()
                .filter(
                    Condition::all()
                        .add(
                            clients::Column::ConnectionId
                                .is_in(chunk.iter().map(|p| p.connection_id.as_str())),
                        )
                        .add(clients::Column::Connected.eq(true)),
                )
                .all(self.store.db())
                .await?;
            for p in chunk {
                if let Some(c) = rows
                    .iter()
                    .find(|c| c.account_id == p.account_id && c.connection_id == p.connection_id)
                {
                    ready.push((c.client_id.clone(), p.clone()));
                }
            }
        }
        Ok(ready)
    }
}
