//! Starts waiting for their connection: parked when the connection is unknown, applied when
//! a replica records it.

use super::{Sessions, StartOutcome, StartRequest};
use crate::domain::session::SessionState;
use crate::store::StoreError;
use crate::sync::pending::PendingStart;

impl Sessions {
    /// Parks a start whose connection is unknown. Checks the log first: a session that
    /// already started (or ended) is answered as such, not parked.
    pub(super) async fn park(
        &self,
        account_id: &str,
        req: StartRequest,
    ) -> Result<StartOutcome, StoreError> {
        match self
            .store
            .session_state(account_id, &req.session_id)
            .await?
        {
            SessionState::Active(_) => return Ok(StartOutcome::AlreadyActive),
            SessionState::Ended => return Ok(StartOutcome::AlreadyEnded),
            SessionState::None => {}
        }
        self.pending
            .park(PendingStart {
                account_id: account_id.to_string(),
                session_id: req.session_id.clone(),
                connection_id: req.connection_id.clone(),
                name: req.name.clone(),
                started_at_millis: req.started_at_millis,
                // assigned by `park`
                parked_seq: 0,
                parked_at_millis: 0,
            })
            .await?;
        tracing::info!(account_id, session_id = %req.session_id, connection_id = %req.connection_id, "session start pending until its connection appears");
        Ok(StartOutcome::Pending)
    }

    /// Applies the pending starts waiting for `connection_id` of `client_id`.
    pub(crate) async fn on_connected(
        &self,
        account_id: &str,
        client_id: &str,
        connection_id: &str,
    ) {
        match self.pending.waiting_for(account_id, connection_id).await {
            Ok(ready) => {
                for p in ready {
                    self.apply_pending(client_id, p).await;
                }
            }
            Err(error) => {
                tracing::error!(%error, account_id, connection_id, "pending session starts not read")
            }
        }
    }

    /// Starts a parked session on its station, then removes it from the store: a crash in
    /// between applies it again, which the decider records nothing for (a duplicate start).
    async fn apply_pending(&self, client_id: &str, p: PendingStart) {
        let (account_id, session_id) = (p.account_id.clone(), p.session_id.clone());
        let req = StartRequest {
            session_id: p.session_id,
            client_id: Some(client_id.to_string()),
            connection_id: p.connection_id,
            name: p.name,
            started_at_millis: p.started_at_millis,
        };
        let applied = match self.start(&account_id, req).await {
            Ok(outcome) => {
                tracing::info!(%account_id, client_id, %session_id, ?outcome, "pending session start applied");
                self.pending
                    .remove(&account_id, &session_id)
                    .await
                    .map(|_| ())
            }
            Err(error) => Err(error),
        };
        if let Err(error) = applied {
            tracing::error!(%error, %account_id, %session_id, "pending session start failed");
        }
    }

    /// Applies pending starts whose connection any replica recorded (the change feed only
    /// carries this replica's commits, and a start may have been parked elsewhere).
    pub(crate) async fn apply_pending_from_store(&self) -> Result<(), StoreError> {
        for (client_id, p) in self.pending.ready().await? {
            self.apply_pending(&client_id, p).await;
        }
        Ok(())
    }
}
