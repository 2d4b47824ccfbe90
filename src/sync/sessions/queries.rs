//! Reads for HTTP and the WebSocket bridge: the baby-station list and usage.

use serde::Serialize;

use super::{Sessions, Usage};
use crate::domain::usage::SessionSpan;
use crate::store::{sessions, StoreError};

/// A baby station in the list: an active session and whether its station is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BabyStation {
    /// The station's client id.
    pub client_id: String,
    /// The connection that started the session.
    pub connection_id: String,
    /// The session.
    pub session_id: String,
    /// Display name.
    pub name: String,
    /// When the session started.
    pub started_at_millis: i64,
    /// Whether the station is connected now (false when Cradle never saw its status).
    pub connected: bool,
}

impl Sessions {
    /// The account's active baby stations.
    pub async fn baby_stations(&self, account_id: &str) -> Result<Vec<BabyStation>, StoreError> {
        let active = self.store.active_sessions_of_account(account_id).await?;
        let connected = self
            .store
            .connected_by_client(account_id, active.iter().map(|s| s.client_id.as_str()))
            .await?;
        Ok(active
            .into_iter()
            .map(|s| BabyStation {
                connected: connected.get(&s.client_id).copied().unwrap_or(false),
                client_id: s.client_id,
                connection_id: s.connection_id,
                session_id: s.session_id,
                name: s.name,
                started_at_millis: s.started_at_millis,
            })
            .collect())
    }

    /// Every session of the account that overlaps `[from, to)`.
    pub(crate) async fn sessions_between(
        &self,
        account_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<sessions::Model>, StoreError> {
        self.store.sessions_between(account_id, from, to).await
    }
}

/// Computes usage in `[from, to)` from the `sessions` rows (see [`crate::domain::usage`]).
pub fn usage(rows: &[sessions::Model], from: i64, to: i64) -> Usage {
    let spans: Vec<SessionSpan> = rows.iter().map(SessionSpan::from).collect();
    crate::domain::usage::usage(&spans, from, to)
}
