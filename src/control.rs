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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Ended {
    /// MQTT connections behind this replica's edge told to end.
    pub mqtt_connections: usize,
    /// WebSocket sessions ended on this replica.
    pub websocket_sessions: usize,
}

/// One live connection of this replica, as `GET …/connections` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub account_id: String,
    pub client_id: String,
    /// `mqtt` (a device behind the edge) or `websocket` (a session of the bridge).
    pub kind: &'static str,
    /// A WebSocket session's connection id (none for an MQTT connection: the edge lists the
    /// connection by its client id, which it holds once).
    pub connection_id: Option<String>,
    /// The credential it authenticated with (none in open mode).
    pub credential_id: Option<String>,
    /// The client's address (MQTT).
    pub peer: Option<String>,
    /// The listener's config key (`mqtt.listen`, …, `http.listen` for `/ws`).
    pub listener: &'static str,
    /// `3.1.1`, `5` or `websocket`.
    pub protocol: &'static str,
    /// The keep-alive (MQTT) or heartbeat (WebSocket) in seconds.
    pub keep_alive_secs: u64,
    /// When it was accepted (Unix milliseconds).
    pub connected_at_millis: i64,
    /// PUBLISH packets from and to the client, and bytes (MQTT; none for WebSocket).
    pub messages_in: Option<u64>,
    pub messages_out: Option<u64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    /// The replica holding it (its bus client id).
    pub replica: String,
}

impl ConnectionView {
    /// Its place in the listing: account, client, kind, connection id.
    fn key(&self) -> (&str, &str, &str, &str) {
        (
            &self.account_id,
            &self.client_id,
            self.kind,
            self.connection_id.as_deref().unwrap_or(""),
        )
    }

    /// Its place in the listing as the `after` of the next page (ids contain no `/`).
    pub fn cursor(&self) -> String {
        let (a, c, k, id) = self.key();
        format!("{a}/{c}/{k}/{id}")
    }
}

/// A cursor's place: (account, client, kind, connection id); a malformed cursor sorts first.
fn parse_cursor(cursor: &str) -> (&str, &str, &str, &str) {
    let mut parts = cursor.splitn(4, '/');
    let mut next = || parts.next().unwrap_or_default();
    (next(), next(), next(), next())
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

    /// This replica's live MQTT connections and WebSocket sessions, of `account` (or all),
    /// in listing order, after `after` (a [`ConnectionView::cursor`]), at most `limit`.
    pub fn connections(
        &self,
        account: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<ConnectionView> {
        use std::sync::atomic::Ordering::Relaxed;
        let after = after.map(parse_cursor);
        // The devices' connections after the cursor's (account, client): a client id holds
        // one MQTT connection, and `mqtt` sorts before `websocket`.
        let edge_after = after.map(|(a, c, _, _)| (a, c));
        let mut all: Vec<ConnectionView> = self
            .edge
            .connections(account, edge_after, limit)
            .into_iter()
            .filter_map(|c| {
                let d = &c.details;
                Some(ConnectionView {
                    account_id: c.owner.account_id?,
                    client_id: c.owner.client_id,
                    kind: "mqtt",
                    connection_id: None,
                    credential_id: c.owner.credential_id,
                    peer: Some(d.peer.to_string()),
                    listener: d.listener,
                    protocol: d.protocol,
                    keep_alive_secs: u64::from(d.keep_alive_secs),
                    connected_at_millis: c.owner.since_millis,
                    messages_in: Some(d.messages_in.load(Relaxed)),
                    messages_out: Some(d.messages_out.load(Relaxed)),
                    bytes_in: Some(d.bytes_in.load(Relaxed)),
                    bytes_out: Some(d.bytes_out.load(Relaxed)),
                    replica: self.origin.clone(),
                })
            })
            .collect();
        all.extend(
            self.bridge
                .sessions(account)
                .into_iter()
                .map(|s| ConnectionView {
                    account_id: s.owner.account_id.unwrap_or_default(),
                    client_id: s.owner.client_id,
                    kind: "websocket",
                    connection_id: Some(s.connection_id),
                    credential_id: s.owner.credential_id,
                    peer: None,
                    listener: "http.listen",
                    protocol: "websocket",
                    keep_alive_secs: s.heartbeat_secs,
                    connected_at_millis: s.owner.since_millis,
                    messages_in: None,
                    messages_out: None,
                    bytes_in: None,
                    bytes_out: None,
                    replica: self.origin.clone(),
                }),
        );
        if let Some(after) = after {
            all.retain(|c| c.key() > after);
        }
        all.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
        all.truncate(limit);
        all
    }

    /// Clears the retained messages of `topics` in the broker (an erased account's).
    pub async fn clear_retained(&self, topics: Vec<String>) {
        for topic in topics {
            if let Err(error) = self
                .out
                .publish(topic, QoS::AtLeastOnce, true, Vec::new())
                .await
            {
                tracing::error!(%error, "retained message not cleared");
            }
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
        if command.reason == DisconnectReason::Revoked {
            // No cache of this replica may keep the revoked credential alive.
            self.auth.revoked_now();
        }
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
