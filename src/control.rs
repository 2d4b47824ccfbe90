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
use crate::replicas::{reply_topic, Message, Query, Replicas, Reply, ANSWER_WITHIN, QUERY_TOPIC};
use crate::ws::Bridge;

/// What ending a target did on this replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Ended {
    /// MQTT connections behind this replica's edge told to end.
    pub mqtt_connections: usize,
    /// WebSocket sessions ended on this replica.
    pub websocket_sessions: usize,
}

/// One live connection of a replica, as `GET …/connections` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub account_id: String,
    pub client_id: String,
    /// `mqtt` (a device behind the edge) or `websocket` (a session of the bridge).
    pub kind: String,
    /// The connection's id: an MQTT connection's edge id (`m-…`, the `edge_connection_id`
    /// its statuses carry), a WebSocket session's connection id (`ws-…`).
    pub connection_id: Option<String>,
    /// The credential it authenticated with (none in open mode).
    pub credential_id: Option<String>,
    /// The client's address (MQTT: address and port; WebSocket: the address, as
    /// `http.trusted_proxies` resolves it).
    pub peer: Option<String>,
    /// The listener's config key (`mqtt.listen`, …, `http.listen` for `/ws`).
    pub listener: String,
    /// `3.1.1`, `5` or `websocket`.
    pub protocol: String,
    /// The keep-alive (MQTT) or heartbeat (WebSocket) in seconds.
    pub keep_alive_secs: u64,
    /// When it was accepted (Unix milliseconds).
    pub connected_at_millis: i64,
    /// PUBLISH packets (MQTT) or text frames (WebSocket) from and to the client, and their
    /// bytes (MQTT: every byte on the socket since the CONNACK).
    pub messages_in: Option<u64>,
    pub messages_out: Option<u64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    /// The replica holding it (its bus client id).
    pub replica: String,
}

/// A row's place in the listing: account, client, kind, connection id, replica.
type Key<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);

impl ConnectionView {
    /// Its place in the listing (the replica tells apart one client's connections to two
    /// replicas during a takeover).
    fn key(&self) -> Key<'_> {
        (
            &self.account_id,
            &self.client_id,
            &self.kind,
            self.connection_id.as_deref().unwrap_or(""),
            &self.replica,
        )
    }

    /// Its place in the listing as the `after` of the next page (ids contain no `/`; the
    /// replica's name comes last and may).
    pub fn cursor(&self) -> String {
        let (a, c, k, id, r) = self.key();
        format!("{a}/{c}/{k}/{id}/{r}")
    }
}

/// A cursor's place; a malformed cursor sorts first.
fn parse_cursor(cursor: &str) -> Key<'_> {
    let mut parts = cursor.splitn(5, '/');
    let mut next = || parts.next().unwrap_or_default();
    (next(), next(), next(), next(), next())
}

/// Merges the rows of several replicas into one page: listing order, after `after`, at most
/// `limit`.
fn page_of(
    mut rows: Vec<ConnectionView>,
    after: Option<&str>,
    limit: usize,
) -> Vec<ConnectionView> {
    if let Some(after) = after.map(parse_cursor) {
        rows.retain(|c| c.key() > after);
    }
    rows.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
    rows.truncate(limit);
    rows
}

/// A page of the live connections of every replica that answered.
#[derive(Debug, Default)]
pub struct Gathered {
    pub connections: Vec<ConnectionView>,
    /// The replicas whose connections it holds (this one first).
    pub replicas: Vec<String>,
    /// Replicas present that did not answer in time (their connections are missing).
    pub unanswered: Vec<String>,
}

/// Ends live connections here and tells the other replicas.
pub struct Control {
    auth: Arc<Authenticator>,
    edge: Ender,
    bridge: Arc<Bridge>,
    out: AsyncClient,
    /// This replica's name in the decisions it publishes (its bus client id).
    origin: String,
    /// The other replicas, and this one's questions to them.
    replicas: Replicas<ConnectionView>,
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
            replicas: Replicas::new(&origin),
            origin,
        }
    }

    /// The live connections of every replica, of `account` (or all), in listing order,
    /// after `after` (a [`ConnectionView::cursor`]), at most `limit`: this replica's, and
    /// those of the others that answer within [`ANSWER_WITHIN`].
    pub async fn gather(
        &self,
        account: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Gathered {
        let mine = self.connections(account, after, limit);
        let others = self.replicas.others();
        if others.is_empty() {
            return Gathered {
                connections: mine,
                replicas: vec![self.origin.clone()],
                unanswered: Vec::new(),
            };
        }
        let (id, waiting) = self.replicas.wait();
        let query = Query {
            id,
            from: self.origin.clone(),
            account: account.map(str::to_string),
            after: after.map(str::to_string),
            limit,
        };
        let payload = serde_json::to_vec(&query).unwrap_or_default();
        if let Err(error) = self
            .out
            .publish(QUERY_TOPIC, QoS::AtMostOnce, false, payload)
            .await
        {
            tracing::error!(%error, "query not published to the other replicas");
        }
        let (theirs, silent) = waiting.collect(others.clone(), ANSWER_WITHIN).await;
        let mut rows = mine;
        rows.extend(theirs);
        let mut replicas = vec![self.origin.clone()];
        replicas.extend(others.difference(&silent).cloned());
        Gathered {
            connections: page_of(rows, after, limit),
            replicas,
            unanswered: silent.into_iter().collect(),
        }
    }

    /// Handles a message on the replicas' topics: notes a presence, answers a query, or
    /// hands an answer to the query waiting for it.
    async fn on_replicas_message(&self, publish: &Publish) {
        match Message::<ConnectionView>::parse(&publish.topic, &publish.payload) {
            Message::Presence { replica, present } => {
                self.replicas.note_presence(&replica, present);
            }
            // This replica's own rows it gathered itself.
            Message::Query(query) if query.from == self.origin => {}
            Message::Query(query) => {
                let rows = self.connections(
                    query.account.as_deref(),
                    query.after.as_deref(),
                    query.limit,
                );
                let topic = reply_topic(&query.from);
                for part in Reply::parts(&query, &self.origin, rows) {
                    let payload = serde_json::to_vec(&part).unwrap_or_default();
                    if let Err(error) = self
                        .out
                        .publish(topic.as_str(), QoS::AtMostOnce, false, payload)
                        .await
                    {
                        tracing::warn!(%error, "answer to a replica not published");
                        return;
                    }
                }
            }
            Message::Reply(reply) => self.replicas.answered(reply),
            Message::Unreadable => tracing::warn!(
                topic = %publish.topic,
                bytes = publish.payload.len(),
                "replicas' message not readable; dropped"
            ),
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
        // The devices' connections from the cursor's (account, client) on: a client id holds
        // one MQTT connection here, and the cursor's rest tells whether it came before.
        let edge_after = after.map(parse_cursor).map(|(a, c, _, _, _)| (a, c));
        let mut all: Vec<ConnectionView> = self
            .edge
            .connections(account, edge_after, limit.saturating_add(1))
            .into_iter()
            .filter_map(|c| {
                let d = &c.details;
                Some(ConnectionView {
                    account_id: c.owner.account_id?,
                    client_id: c.owner.client_id,
                    kind: "mqtt".into(),
                    connection_id: Some(d.connection_id.to_string()),
                    credential_id: c.owner.credential_id,
                    peer: Some(d.peer.to_string()),
                    listener: d.listener.into(),
                    protocol: d.protocol.into(),
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
        all.extend(self.bridge.sessions(account).into_iter().map(|s| {
            let (messages_in, messages_out, bytes_in, bytes_out) = s.traffic;
            ConnectionView {
                account_id: s.owner.account_id.unwrap_or_default(),
                client_id: s.owner.client_id,
                kind: "websocket".into(),
                connection_id: Some(s.connection_id),
                credential_id: s.owner.credential_id,
                peer: s.peer.map(|p| p.to_string()),
                listener: "http.listen".into(),
                protocol: "websocket".into(),
                keep_alive_secs: s.heartbeat_secs,
                connected_at_millis: s.owner.since_millis,
                messages_in: Some(messages_in),
                messages_out: Some(messages_out),
                bytes_in: Some(bytes_in),
                bytes_out: Some(bytes_out),
                replica: self.origin.clone(),
            }
        }));
        page_of(all, after, limit)
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
/// Messages on the replicas' topics (`crate::replicas`) are handled there.
pub async fn run(control: Arc<Control>, mut rx: mpsc::Receiver<Publish>, acker: Acker) {
    while let Some(publish) = rx.recv().await {
        if publish.topic != CONTROL_TOPIC {
            control.on_replicas_message(&publish).await;
            acker.ack(&publish).await;
            continue;
        }
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
