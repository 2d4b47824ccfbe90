//! The record of administrative actions: who (a credential id, or `admin_token`), what and
//! when, as events of their own in the event log (`admin.*`, stream `admin/{account_id}`),
//! in the account's log for an action on an account, in the log of [`CRADLE_ACCOUNT`] for one
//! on no account (an operator secret).

use sea_orm::entity::prelude::*;
use sea_orm::{QueryOrder, QuerySelect, TransactionTrait};

use super::{append_in, events, NewEvent, Store, StoreError};
use crate::clock::now_millis;
use crate::ids::random_hex;

/// The account whose log holds administrative actions on no account (operator secrets). No
/// customer account may take this id.
pub const CRADLE_ACCOUNT: &str = "_cradle";

/// One administrative action to record.
#[derive(Debug, Clone)]
pub struct AdminAction<'a> {
    /// The account acted on (`None`: Cradle's own, [`CRADLE_ACCOUNT`]).
    pub account_id: Option<&'a str>,
    /// Its event type: `admin.account_created`, `admin.credential_revoked`, ….
    pub event_type: &'static str,
    /// Who: a credential id, `admin_token`, or `open_mode`.
    pub by: &'a str,
    /// What: the action's own fields (ids, counts; never a secret).
    pub data: serde_json::Value,
}

impl Store {
    /// Appends `action` to its account's `admin/{account_id}` stream (retried on a race with
    /// another replica's action on the same account).
    pub async fn record_admin(&self, action: AdminAction<'_>) -> Result<(), StoreError> {
        let account_id = action.account_id.unwrap_or(CRADLE_ACCOUNT);
        let stream = format!("admin/{account_id}");
        let mut data = action.data;
        if let Some(map) = data.as_object_mut() {
            map.insert("by".into(), action.by.into());
        }
        let mut attempts = 0;
        loop {
            let txn = self.db.begin().await?;
            let last = events::Entity::find()
                .filter(events::Column::Stream.eq(&stream))
                .order_by_desc(events::Column::StreamVersion)
                .limit(1)
                .one(&txn)
                .await?
                .map_or(0, |e| e.stream_version);
            let at = now_millis();
            let event = NewEvent {
                account_id: account_id.to_string(),
                stream: stream.clone(),
                stream_version: last + 1,
                event_type: action.event_type,
                event_version: 1,
                data: data.clone(),
                at_millis: at,
                idempotency_key: format!("{}/{}", action.event_type, random_hex(12)),
            };
            let appended = append_in(&txn, &[event], at).await;
            let result = match appended {
                Ok(()) => match txn.commit().await {
                    Ok(()) => {
                        self.appended.notify_one();
                        Ok(())
                    }
                    Err(e) => Err(StoreError::from(e)),
                },
                Err(e) => Err(e),
            };
            match result {
                Err(StoreError::Conflict(_)) if attempts < 5 => attempts += 1,
                other => return other,
            }
        }
    }
}

/// What erasing an account's data removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Erased {
    pub events: u64,
    pub clients: u64,
    pub sessions: u64,
    pub parent_stations: u64,
    pub pending_starts: u64,
    pub bans: u64,
    pub ws_handovers: u64,
}

impl Store {
    /// Deletes every row of `account_id` from the event log and the read models, in one
    /// transaction: a family that leaves. (Credentials and the account row are the caller's.)
    pub async fn erase_account_data(&self, account_id: &str) -> Result<Erased, StoreError> {
        use super::{bans, clients, parent_stations, pending_starts, sessions, ws_handover};
        let txn = self.db.begin().await?;
        let erased = Erased {
            events: events::Entity::delete_many()
                .filter(events::Column::AccountId.eq(account_id))
                .exec(&txn)
                .await?
                .rows_affected,
            clients: clients::Entity::delete_many()
                .filter(clients::Column::AccountId.eq(account_id))
                .exec(&txn)
                .await?
                .rows_affected,
            sessions: sessions::Entity::delete_many()
                .filter(sessions::Column::AccountId.eq(account_id))
                .exec(&txn)
                .await?
                .rows_affected,
            parent_stations: parent_stations::Entity::delete_many()
                .filter(parent_stations::Column::AccountId.eq(account_id))
                .exec(&txn)
                .await?
                .rows_affected,
            pending_starts: pending_starts::Entity::delete_many()
                .filter(pending_starts::Column::AccountId.eq(account_id))
                .exec(&txn)
                .await?
                .rows_affected,
            bans: bans::Entity::delete_many()
                .filter(bans::Column::AccountId.eq(account_id))
                .exec(&txn)
                .await?
                .rows_affected,
            ws_handovers: ws_handover::Entity::delete_many()
                .filter(ws_handover::Column::AccountId.eq(account_id))
                .exec(&txn)
                .await?
                .rows_affected,
        };
        txn.commit().await?;
        Ok(erased)
    }
}
