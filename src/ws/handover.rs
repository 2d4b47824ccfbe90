//! WebSocket sessions handed over through the store across a graceful restart of Cradle with
//! its embedded broker (`ws_handover`). The shutdown saves every session (its key, last `seq`
//! and replay buffer, with the deadline of its resume window) instead of ending it; the next
//! start takes them back before it records the connections the previous process left open,
//! so a handed-over PWA stays connected and resumes with every frame it missed.

use std::collections::HashSet;
use std::time::Duration;

use sea_orm::{ActiveValue, EntityTrait, TransactionTrait};

use super::hub::HandedOver;
use crate::store::{ws_handover, Store, StoreError};
use crate::sync::status::now_millis;

/// Saves `sessions`, each resumable until `window` from now; returns their connection ids.
pub async fn save(
    store: &Store,
    sessions: Vec<HandedOver>,
    window: Duration,
) -> Result<HashSet<String>, StoreError> {
    let deadline = now_millis() + window.as_millis() as i64;
    let ids = sessions.iter().map(|s| s.connection_id.clone()).collect();
    let txn = store.db().begin().await?;
    for chunk in sessions.chunks(200) {
        let rows = chunk.iter().map(|s| ws_handover::ActiveModel {
            connection_id: ActiveValue::Set(s.connection_id.clone()),
            account_id: ActiveValue::Set(s.account_id.clone()),
            client_id: ActiveValue::Set(s.client_id.clone()),
            credential_id: ActiveValue::Set(s.credential_id.clone()),
            secret_digest: ActiveValue::Set(s.secret_hash.clone()),
            seq: ActiveValue::Set(s.seq as i64),
            replay: ActiveValue::Set(serde_json::to_string(&s.replay).unwrap_or_default()),
            deadline_millis: ActiveValue::Set(deadline),
        });
        ws_handover::Entity::insert_many(rows).exec(&txn).await?;
    }
    txn.commit().await?;
    Ok(ids)
}

/// Takes every handed-over session out of the store; returns those whose resume window is
/// still open, with how long it has left. (The others were lost: the caller records their
/// connections as ended with the rest.)
pub async fn take(store: &Store) -> Result<Vec<(HandedOver, Duration)>, StoreError> {
    let txn = store.db().begin().await?;
    let rows = ws_handover::Entity::find().all(&txn).await?;
    ws_handover::Entity::delete_many().exec(&txn).await?;
    txn.commit().await?;
    let now = now_millis();
    Ok(rows
        .into_iter()
        .filter(|r| r.deadline_millis > now)
        .map(|r| {
            let left = Duration::from_millis((r.deadline_millis - now) as u64);
            let replay = serde_json::from_str(&r.replay).unwrap_or_default();
            let h = HandedOver {
                account_id: r.account_id,
                client_id: r.client_id,
                connection_id: r.connection_id,
                credential_id: r.credential_id,
                secret_hash: r.secret_digest,
                seq: r.seq.max(0) as u64,
                replay,
            };
            (h, left)
        })
        .collect())
}
