//! How a decision reaches live connections on every replica (see [`crate::domain::control`]
//! for what a decision names): the replica that takes an administrator's request ends its own
//! matching MQTT connections and WebSocket sessions at once and publishes the decision on
//! `cradle/control` (QoS 1); every replica's bus subscribes that topic without sharing it and
//! ends its own ([`run`]). Several replicas share an external broker, so each one, including
//! one reconnecting with its persistent session, gets every decision; one replica on the
//! embedded broker gets its own back, which ends nothing more.

use std::sync::Arc;

use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;

use crate::auth::Authenticator;
use crate::bus::Acker;
use crate::clock::now_millis;
use crate::domain::connection::DisconnectReason;
use crate::domain::control::{EndCommand, Target, CONTROL_TOPIC};
use crate::edge::Ender;
use crate::ws::Bridge;

/// What ending a target did on this replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ended {
    /// MQTT connections behind this replica's edge told to end.
    pub mqtt_connections: usize,
    /// WebSocket sessions ended on this replica.
    pub websocket_sessions: usize,
}

/// Ends live connections here and tells the other replicas.
pub struct Control {
    auth: Arc<Authenticator>,
    edge: Ender,
    bridge: Arc<Bridge>,
    out: AsyncClient,
    /// This replica's name in the decisions it publishes (its bus client id).
    origin: String,
}

impl Control {
    /// Ends with the edge `edge`, the bridge `bridge`, publishing with `out` as `origin`;
    /// bans reach `auth`.
    pub fn new(
        auth: Arc<Authenticator>,
        edge: Ender,
        bridge: Arc<Bridge>,
        (out, origin): (AsyncClient, String),
    ) -> Self {
        Self {
            auth,
            edge,
            bridge,
            out,
            origin,
        }
    }

    /// The authenticator whose bans this keeps.
    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// Ends the connections of `target` accepted until now on this replica, with `reason`,
    /// then publishes the decision for every other replica (a failure to queue it is logged:
    /// the store refuses a revoked credential anyway at every new connection).
    pub async fn end(&self, target: Target, reason: DisconnectReason) -> Ended {
        self.end_and_ban(target, reason, None).await
    }

    /// [`Control::end`], banning a client target until `ban_until_millis` on every replica
    /// (the caller stored the ban first).
    pub async fn end_and_ban(
        &self,
        target: Target,
        reason: DisconnectReason,
        ban_until_millis: Option<i64>,
    ) -> Ended {
        let command = EndCommand {
            target,
            reason,
            at_millis: now_millis(),
            origin: self.origin.clone(),
            ban_until_millis,
        };
        let ended = self.apply(&command).await;
        if let Err(error) = self
            .out
            .publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, command.to_payload())
            .await
        {
            tracing::error!(%error, "decision not published to the other replicas");
        }
        ended
    }

    /// Ends the matching connections of this replica (after noting a ban, so that none of
    /// them gets back in meanwhile).
    pub async fn apply(&self, command: &EndCommand) -> Ended {
        if let (
            Some(until),
            Target::Client {
                account_id,
                client_id,
            },
        ) = (command.ban_until_millis, &command.target)
        {
            self.auth.note_ban(account_id, client_id, until);
        }
        let ended = Ended {
            mqtt_connections: self.edge.end_matching(command),
            websocket_sessions: self.bridge.end_matching(command).await,
        };
        if ended != Ended::default() {
            tracing::info!(
                target = ?command.target,
                reason = command.reason.as_str(),
                mqtt = ended.mqtt_connections,
                websocket = ended.websocket_sessions,
                "live connections ended"
            );
        }
        ended
    }
}

/// Applies every decision the bus delivers on `cradle/control`, acknowledging each (a payload
/// that is not a decision is logged and dropped).
pub async fn run(control: Arc<Control>, mut rx: mpsc::Receiver<Publish>, acker: Acker) {
    while let Some(publish) = rx.recv().await {
        match EndCommand::parse(&publish.payload) {
            // This replica took the decision and applied it then.
            Some(command) if command.origin == control.origin => {}
            Some(command) => {
                control.apply(&command).await;
            }
            None => tracing::warn!(
                bytes = publish.payload.len(),
                "cradle/control message is not a decision; dropped"
            ),
        }
        acker.ack(&publish).await;
    }
}
