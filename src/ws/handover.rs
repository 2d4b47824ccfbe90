//! WebSocket sessions handed over through the store across a graceful shutdown
//! (`ws_handover`). The shutdown saves every session (its key, last `seq` and replay buffer,
//! with the deadline of its resume window) instead of ending it. With the embedded broker the
//! next start takes them all back before it records the connections the previous process
//! left open. With several replicas, the replica a PWA resumes on claims its session
//! ([`claim`]), and sessions nobody resumed within their window are claimed and ended by any
//! replica ([`claim_expired`]). Either way a handed-over PWA stays connected and resumes with
//! the frames its session had.

use std::collections::HashSet;
use std::time::Duration;

use sea_orm::{ActiveValue, EntityTrait, TransactionTrait};

use super::hub::HandedOver;
use crate::clock::now_millis;
use crate::store::{ws_handover, Store, StoreError};

/// Saves `sessions`, each resumable until `window` from now; returns their connection ids.
pub(crate) async fn save(
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
            (handed_over(r), left)
        })
        .collect())
}

fn handed_over(r: ws_handover::Model) -> HandedOver {
    HandedOver {
        account_id: r.account_id,
        client_id: r.client_id,
        connection_id: r.connection_id,
        credential_id: r.credential_id,
        secret_hash: r.secret_digest,
        seq: r.seq.max(0) as u64,
        replay: serde_json::from_str(&r.replay).unwrap_or_default(),
    }
}

/// Claims one handed-over session of `client_id` of `account_id` for this replica (several
/// replicas: whichever replica its PWA resumes on). Deleting the row is the claim: of two replicas racing for it, one
/// deletes it and the other finds nothing. `None` when no replica handed it over, another
/// claimed it first, or its window has passed (then it is left for [`claim_expired`]).
pub(crate) async fn claim(
    store: &Store,
    connection_id: &str,
    account_id: &str,
    client_id: &str,
) -> Result<Option<(HandedOver, Duration)>, StoreError> {
    use sea_orm::{ColumnTrait, QueryFilter};
    let Some(row) = ws_handover::Entity::find_by_id(connection_id.to_string())
        .one(store.db())
        .await?
    else {
        return Ok(None);
    };
    // Only the session's own account and client id may pull it (the resume's proof is
    // checked once it is here).
    if row.account_id != account_id || row.client_id != client_id {
        return Ok(None);
    }
    let now = now_millis();
    if row.deadline_millis <= now {
        return Ok(None);
    }
    let deleted = ws_handover::Entity::delete_many()
        .filter(ws_handover::Column::ConnectionId.eq(connection_id))
        .exec(store.db())
        .await?;
    if deleted.rows_affected != 1 {
        return Ok(None);
    }
    let left = Duration::from_millis((row.deadline_millis - now) as u64);
    Ok(Some((handed_over(row), left)))
}

/// Claims up to 100 handed-over sessions whose resume window passed without a resume (the
/// replica that handed them over is gone; their PWA never came back). The caller ends them.
pub(crate) async fn claim_expired(store: &Store) -> Result<Vec<HandedOver>, StoreError> {
    use sea_orm::{ColumnTrait, QueryFilter, QuerySelect};
    let rows = ws_handover::Entity::find()
        .filter(ws_handover::Column::DeadlineMillis.lte(now_millis()))
        .limit(100)
        .all(store.db())
        .await?;
    let mut claimed = Vec::new();
    for row in rows {
        let deleted = ws_handover::Entity::delete_many()
            .filter(ws_handover::Column::ConnectionId.eq(row.connection_id.clone()))
            .exec(store.db())
            .await?;
        if deleted.rows_affected == 1 {
            claimed.push(handed_over(row));
        }
    }
    Ok(claimed)
}
