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
    let rows: Vec<ws_handover::Model> = sessions
        .into_iter()
        .map(|s| ws_handover::Model {
            connection_id: s.connection_id,
            account_id: s.account_id,
            client_id: s.client_id,
            credential_id: s.credential_id,
            secret_digest: s.secret_hash,
            seq: s.seq as i64,
            replay: serde_json::to_string(&s.replay).unwrap_or_default(),
            deadline_millis: deadline,
        })
        .collect();
    store.save_ws_handovers(&rows).await?;
    Ok(ids)
}

/// Takes every handed-over session out of the store; returns those whose resume window is
/// still open, with how long it has left. (The others were lost: the caller records their
/// connections as ended with the rest.)
pub async fn take(store: &Store) -> Result<Vec<(HandedOver, Duration)>, StoreError> {
    let rows = store.take_ws_handovers().await?;
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
    let Some(row) = store.ws_handover(connection_id).await? else {
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
    if !store.delete_ws_handover(connection_id).await? {
        return Ok(None);
    }
    let left = Duration::from_millis((row.deadline_millis - now) as u64);
    Ok(Some((handed_over(row), left)))
}

/// Claims up to 100 handed-over sessions whose resume window passed without a resume (the
/// replica that handed them over is gone; their PWA never came back). The caller ends them.
pub(crate) async fn claim_expired(store: &Store) -> Result<Vec<HandedOver>, StoreError> {
    let rows = store.expired_ws_handovers(now_millis(), 100).await?;
    let mut claimed = Vec::new();
    for row in rows {
        if store.delete_ws_handover(&row.connection_id).await? {
            claimed.push(handed_over(row));
        }
    }
    Ok(claimed)
}
