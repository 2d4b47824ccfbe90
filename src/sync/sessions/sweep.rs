//! Ends caused by connection changes: a clean disconnect after the start, or a station away
//! longer than the grace period (the rule is `domain::session::end_when_away`); and the loop
//! that follows the status writer's changes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{EndOutcome, Sessions};
use crate::clock::now_millis;
use crate::domain::connection::ConnectionEvent;
use crate::domain::session::end_when_away;
use crate::store::StoreError;
use crate::sync::status::ConnectionChange;

impl Sessions {
    /// Ends the sessions whose baby station disconnected cleanly after the start, or has
    /// been away longer than the grace period. Returns how many ended.
    pub(crate) async fn sweep(&self, now: i64) -> Result<usize, StoreError> {
        let active = self.store.active_sessions().await?;
        if active.is_empty() {
            return Ok(0);
        }
        let grace = self.settings.grace.as_millis() as i64;
        let mut ended = 0;
        for chunk in active.chunks(200) {
            for s in self.store.away_sessions(chunk).await? {
                let Some((reason, at)) = end_when_away(&s, now, grace) else {
                    continue;
                };
                if self.end(&s.account_id, &s.session_id, at, reason).await? == EndOutcome::Ended {
                    tracing::info!(account_id = %s.account_id, client_id = %s.client_id, session_id = %s.session_id, reason = reason.as_str(), "session ended by its station's connection");
                    ended += 1;
                }
            }
        }
        Ok(ended)
    }

    /// Follows the status writer's committed changes: applies pending starts when their
    /// connection appears, ends sessions on clean disconnects, and sweeps for expired grace
    /// periods every second. Ends when `changes` closes.
    pub async fn run(self: Arc<Self>, mut changes: mpsc::UnboundedReceiver<ConnectionChange>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    match &change.event {
                        ConnectionEvent::Connected { connection_id, .. }
                        | ConnectionEvent::Reported { reported_connection_id: connection_id, .. } => {
                            self.on_connected(&change.key.account_id, &change.key.client_id, connection_id).await;
                        }
                        ConnectionEvent::Disconnected { .. } => {
                            if let Err(error) = self.sweep(now_millis()).await {
                                tracing::error!(%error, "session sweep failed");
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    if let Err(error) = self.apply_pending_from_store().await {
                        tracing::error!(%error, "pending session starts not checked");
                    }
                    if let Err(error) = self.sweep(now_millis()).await {
                        tracing::error!(%error, "session sweep failed");
                    }
                }
            }
        }
    }
}
