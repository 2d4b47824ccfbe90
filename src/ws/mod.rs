//! The legacy WebSocket bridge: PWA clients that speak JSON over a WebSocket look, to every
//! MQTT device, like any other client of their account.
//!
//! - `GET /ws` authenticates before the upgrade (bearer token in `Authorization`, a `token`
//!   query parameter, or a `Sec-WebSocket-Protocol` value), assigns a connection id,
//!   registers the session in the `hub::Hub`, publishes the client's `connected` status on
//!   its behalf and sends `hello`.
//! - Every server frame carries a per-session, strictly increasing `seq` and is kept in a
//!   bounded replay buffer; a dropped socket leaves the session suspended for the resume
//!   window, and `?connection_id=…&resume_from=…` replays what was missed. Only when the
//!   window passes does the status become `disconnected` (`lost`).
//! - Signalling frames are published to the target's `webrtc_inbox`; inbox messages for a
//!   WebSocket client, presence (committed status changes) and baby-station list changes are
//!   pushed to the account's sockets.
//!
//! Map: `protocol` (frames, close codes), `hub` (sessions, replay, resume, the merge of a
//! moved session), `handover` (sessions in the store), `transfer` (sessions moving between
//! replicas), `inbox` (a replica's subscriptions), this file (the route, the socket tasks,
//! the MQTT side).

pub(crate) mod handover;
pub(crate) mod hub;
pub mod inbox;
mod metrics;
pub mod protocol;
mod socket;
pub(crate) mod transfer;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocket;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;

use crate::clock::now_millis;
use crate::domain::connection::{ConnectionCommand, ConnectionEvent, DisconnectReason};
use crate::domain::control::EndCommand;
use crate::store::Store;
use crate::sync::sessions::Sessions;
use crate::sync::status::ConnectionChange;
use crate::tasks::Task;
use crate::topics::{is_valid_id, parse_topic, status_topic, Family, StatusKind, StatusPayload};
use hub::{Delivery, HandedOver, Hub, ResumeKey, WsSession};
pub use metrics::{ResumeOutcome, WsMetrics};
use protocol::{close, ServerFrame};

/// Settings of the bridge (config `[websocket]`).
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// Interval of the server's heartbeat (`ping` frame and WebSocket ping).
    pub heartbeat: Duration,
    /// A socket silent this long is dropped (then resumable within the window).
    pub(crate) heartbeat_timeout: Duration,
    /// How long a dropped session waits for a resume.
    pub(crate) resume_window: Duration,
    /// Frames kept per session for replay.
    pub(crate) replay_frames: usize,
    /// Frames queued per socket before the client counts as a slow consumer.
    pub send_queue: usize,
    /// Longest a single write may take before the client counts as a slow consumer.
    pub write_timeout: Duration,
    /// Largest frame accepted from a client, in bytes.
    pub(crate) max_frame_bytes: usize,
    /// Signal frames per second per connection (token bucket), 0 = unlimited.
    pub signal_rate: u32,
    /// Token bucket burst.
    pub(crate) signal_burst: u32,
    /// Refused frames (invalid, rate-limited) before the socket is closed with 4008.
    pub(crate) max_errors: u32,
    /// Sessions held at once (connected or resumable).
    pub max_sessions: usize,
}

impl From<&crate::config::WebSocketConfig> for WsSettings {
    fn from(w: &crate::config::WebSocketConfig) -> Self {
        Self {
            heartbeat: Duration::from_secs(w.heartbeat_secs),
            heartbeat_timeout: Duration::from_secs(w.heartbeat_timeout_secs),
            resume_window: Duration::from_secs(w.resume_window_secs),
            replay_frames: w.replay_frames,
            send_queue: w.send_queue,
            write_timeout: Duration::from_millis(w.write_timeout_ms),
            max_frame_bytes: w.max_frame_bytes,
            signal_rate: w.signal_rate,
            signal_burst: w.signal_burst,
            max_errors: w.max_errors,
            max_sessions: w.max_sessions,
        }
    }
}

/// Per client id: the connection id last pushed and whether it was connected.
type PresenceByClient = HashMap<String, (String, bool)>;

/// The bridge: the hub, the MQTT client it publishes with, and its settings.
pub struct Bridge {
    /// Every session of this replica.
    pub(crate) hub: Hub,
    mqtt: AsyncClient,
    settings: WsSettings,
    /// Counters.
    pub metrics: Arc<WsMetrics>,
    /// Per-connection inbox subscriptions (several replicas on an external broker); `None`
    /// when the bus's wildcard subscription delivers every inbox to this one replica.
    inbox: Option<Arc<inbox::InboxSubscriptions>>,
    /// With several replicas: the store, through which sessions move between replicas.
    store: Option<Store>,
    /// This bridge's name in its transfer requests (it hears its own requests too).
    instance: String,
    /// Transfers running now (`transfer::MAX_TRANSFERS` at most).
    transfers: std::sync::atomic::AtomicUsize,
    /// At a replica's shutdown: the token its offers carry, which a transfer request for an
    /// offered session gives back instead of the PWA's proof.
    offer_token: std::sync::Mutex<Option<String>>,
    /// With several replicas: the last presence pushed per account and client (connection
    /// id, connected), so that reports seen on the broker are pushed once and in order.
    presence: std::sync::Mutex<HashMap<String, PresenceByClient>>,
    /// With several replicas: where baby-station lists are read when an announcement is
    /// seen on the broker, and the last list pushed per account.
    lists: Option<Arc<Sessions>>,
    last_lists: std::sync::Mutex<HashMap<String, serde_json::Value>>,
    /// Set at shutdown: upgrades are refused with 503 from then on.
    closing: std::sync::atomic::AtomicBool,
}

fn new_connection_id() -> String {
    format!("ws-{}", crate::ids::random_hex(9))
}

pub(crate) use transfer::{Proof, OFFER_PREFIX, TRANSFER_PREFIX};

/// A session's resume secret: 128 random bits, hex.
fn new_resume_secret() -> String {
    crate::ids::random_hex(16)
}

/// Whether a resume of `connection_id` may proceed: the session exists for this account and
/// client, and the caller opened it (same token credential) or gives its resume secret.
/// Anything else is answered like an unknown session (410 `session_gone`) by the caller and
/// counted here (`gone`, or `refused`, also logged).
fn may_resume(
    bridge: &Bridge,
    connection_id: &str,
    account_id: &str,
    client_id: &str,
    credential_id: Option<&str>,
    secret: Option<&str>,
) -> bool {
    let known = bridge
        .hub
        .get(connection_id)
        .filter(|s| s.account_id == account_id && s.client_id == client_id);
    let outcome = match known {
        None => ResumeOutcome::Gone,
        Some(s) if !s.may_resume(credential_id, secret) => {
            tracing::warn!(%account_id, %client_id, connection_id, "WebSocket resume refused: neither the opening token nor the session's resume secret");
            ResumeOutcome::Refused
        }
        Some(_) => return true,
    };
    bridge.metrics.resumed(outcome);
    false
}

impl Bridge {
    /// A bridge publishing with `mqtt`.
    pub fn new(mqtt: AsyncClient, settings: WsSettings) -> Self {
        Self {
            hub: Hub::default(),
            mqtt,
            settings,
            metrics: Arc::default(),
            inbox: None,
            store: None,
            instance: new_resume_secret(),
            transfers: std::sync::atomic::AtomicUsize::new(0),
            offer_token: std::sync::Mutex::new(None),
            presence: std::sync::Mutex::new(HashMap::new()),
            lists: None,
            last_lists: std::sync::Mutex::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// For several replicas: subscribes each session's inbox, and its account's statuses and
    /// announcements, through `inbox` (instead of relying on a wildcard), and pushes
    /// presence and baby-station lists (read from `sessions`) from what the broker delivers,
    /// whichever replica processed it.
    pub(crate) fn with_replica_subscriptions(
        mut self,
        inbox: Arc<inbox::InboxSubscriptions>,
        sessions: Arc<Sessions>,
        store: Store,
    ) -> Self {
        self.inbox = Some(inbox);
        self.lists = Some(sessions);
        self.store = Some(store);
        self
    }

    /// Routes one message of the replica subscriptions (or the bus's inbox wildcard).
    pub(crate) async fn on_message(self: &Arc<Self>, publish: &Publish) {
        if publish.topic.starts_with(TRANSFER_PREFIX) {
            self.on_transfer_request(publish).await;
        } else if publish.topic.starts_with(OFFER_PREFIX) {
            self.on_offer(publish);
        } else {
            match parse_topic(&publish.topic).map(|t| t.family) {
                Some(Family::Inbox) => self.on_inbox(publish).await,
                // Retained messages sent on subscribe are history, not changes.
                _ if publish.retain => {}
                Some(Family::Status) => self.on_status_report(publish).await,
                Some(Family::BabyStation) => self.on_announcement(publish).await,
                Some(Family::ParentStation) | None => {}
            }
        }
    }

    /// Pushes a status report seen on the broker as presence, once per change, ignoring a
    /// report about a connection other than the one last pushed connected (a late Will).
    async fn on_status_report(&self, publish: &Publish) {
        let Ok(key) = crate::topics::parse_status_topic(&publish.topic) else {
            return;
        };
        let Ok(command) =
            crate::domain::connection::parse_status_payload(&publish.payload, 64 * 1024)
        else {
            return;
        };
        let (connection_id, connected, reason) = match &command {
            ConnectionCommand::Connect { connection_id, .. } => (connection_id, true, None),
            ConnectionCommand::Disconnect {
                connection_id,
                reason,
                ..
            } => (connection_id, false, Some(reason.as_str().to_string())),
        };
        {
            let mut presence = self
                .presence
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let clients = presence.entry(key.account_id.clone()).or_default();
            match clients.get(&key.client_id) {
                Some((c, was)) if c == connection_id && *was == connected => return,
                Some((c, true)) if !connected && c != connection_id => return,
                _ => {}
            }
            clients.insert(key.client_id.clone(), (connection_id.clone(), connected));
        }
        let frame = ServerFrame::Presence {
            client_id: key.client_id.clone(),
            connection_id: connection_id.clone(),
            connected,
            reason,
        };
        for s in self.hub.of_account(&key.account_id) {
            self.deliver(&s, &frame).await;
        }
    }

    /// Pushes the account's baby-station list when an announcement is seen on the broker
    /// and the list changed (a device's start and Cradle's announcement of it both arrive).
    async fn on_announcement(&self, publish: &Publish) {
        let Some(sessions) = &self.lists else { return };
        let account_id = match publish.topic.split('/').collect::<Vec<_>>().as_slice() {
            ["accounts", a, "baby_stations", _] if is_valid_id(a) => a.to_string(),
            _ => return,
        };
        if self.hub.of_account(&account_id).is_empty() {
            return;
        }
        let list = match sessions.baby_stations(&account_id).await {
            // Invariant: a baby-station list derives Serialize over strings, integers and bools,
            // which serde_json always serialises.
            Ok(list) => serde_json::to_value(list).expect("list serialises"),
            Err(error) => {
                tracing::warn!(%error, account_id, "baby-station list not pushed");
                return;
            }
        };
        {
            let mut last = self
                .last_lists
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.get(&account_id) == Some(&list) {
                return;
            }
            last.insert(account_id.clone(), list.clone());
        }
        self.on_baby_stations(&account_id, list).await;
    }

    async fn publish_status(&self, s: &WsSession, reason: Option<DisconnectReason>) {
        let payload = StatusPayload {
            kind: if reason.is_some() {
                StatusKind::Disconnected
            } else {
                StatusKind::Connected
            },
            connection_id: s.connection_id.clone(),
            at_millis: now_millis(),
            reason: reason.map(|r| r.as_str().to_string()),
            edge_connection_id: None,
            observed: false,
        };
        // Invariant: a StatusPayload is strings, an i64 and a unit enum (derived Serialize),
        // which serde_json always serialises.
        let body = serde_json::to_vec(&payload).expect("status serialises");
        if let Err(error) = self
            .mqtt
            .publish(
                status_topic(&s.account_id, &s.client_id),
                QoS::AtLeastOnce,
                true,
                body,
            )
            .await
        {
            tracing::error!(%error, connection_id = %s.connection_id, "status on behalf of a WebSocket client not queued");
        }
    }

    /// Ends a session for good: removes it, closes its socket and publishes its end.
    pub async fn end(&self, connection_id: &str, reason: DisconnectReason, code: u16) {
        if let Some(session) = self.hub.close(connection_id, code) {
            if let Some(inbox) = &self.inbox {
                inbox.remove(&session.account_id, &session.client_id);
                if self.hub.of_account(&session.account_id).is_empty() {
                    self.presence
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&session.account_id);
                    self.last_lists
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&session.account_id);
                }
            }
            self.metrics.live.fetch_sub(1, Relaxed);
            self.metrics.closed(reason);
            self.publish_status(&session, Some(reason)).await;
            tracing::info!(account_id = %session.account_id, client_id = %session.client_id, connection_id, reason = reason.as_str(), "WebSocket session ended");
        }
    }

    /// Sends `frame` to `session`; a client whose queue is full is cut off.
    async fn deliver(&self, session: &WsSession, frame: &ServerFrame) {
        if session.send(frame) == Delivery::SlowConsumer {
            tracing::warn!(connection_id = %session.connection_id, "WebSocket client too slow: disconnecting");
            self.end(
                &session.connection_id,
                DisconnectReason::SlowConsumer,
                close::SLOW_CONSUMER,
            )
            .await;
        }
    }

    /// Routes one `webrtc_inbox` message to the WebSocket sessions of its topic's client.
    pub(crate) async fn on_inbox(&self, publish: &Publish) {
        let (account_id, client_id) = match parse_topic(&publish.topic) {
            Some(t) if t.family == Family::Inbox => (t.account_id, t.client_id),
            _ => return,
        };
        let targets: Vec<Arc<WsSession>> = self
            .hub
            .of_account(account_id)
            .into_iter()
            .filter(|s| s.client_id == client_id)
            .collect();
        let value: serde_json::Value =
            serde_json::from_slice(&publish.payload).unwrap_or_else(|_| {
                String::from_utf8_lossy(&publish.payload)
                    .into_owned()
                    .into()
            });
        let to_connection = value.get("to_connection").and_then(|v| v.as_str());
        if let Some(target) = to_connection {
            // Routed by connection id only when that connection is this topic's account
            // and client; anything else is dropped and counted.
            if target.starts_with("ws-") && !targets.iter().any(|s| s.connection_id == target) {
                self.metrics.inbox_dropped.fetch_add(1, Relaxed);
                tracing::warn!(topic = %publish.topic, to_connection = target, "inbox message for a connection of another client or account dropped");
                return;
            }
        }
        let (from, from_connection, data) = match value.as_object() {
            Some(o) if o.contains_key("from") && o.contains_key("data") => (
                o.get("from")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string(),
                o.get("from_connection")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                o.get("data").cloned().unwrap_or_default(),
            ),
            _ => (String::new(), None, value.clone()),
        };
        let frame = ServerFrame::Signal {
            from,
            from_connection,
            data,
        };
        for s in targets {
            if to_connection.is_some_and(|t| t != s.connection_id) {
                continue;
            }
            self.deliver(&s, &frame).await;
        }
    }

    /// Pushes a committed status change to the account's sessions.
    pub(crate) async fn on_presence(&self, change: &ConnectionChange) {
        let frame = match &change.event {
            ConnectionEvent::Connected { connection_id, .. }
            | ConnectionEvent::Reported {
                reported_connection_id: connection_id,
                ..
            } => ServerFrame::Presence {
                client_id: change.key.client_id.clone(),
                connection_id: connection_id.clone(),
                connected: true,
                reason: None,
            },
            ConnectionEvent::Disconnected {
                connection_id,
                reason,
                ..
            } => ServerFrame::Presence {
                client_id: change.key.client_id.clone(),
                connection_id: connection_id.clone(),
                connected: false,
                reason: Some(reason.as_str().to_string()),
            },
        };
        for s in self.hub.of_account(&change.key.account_id) {
            self.deliver(&s, &frame).await;
        }
    }

    /// Pushes an account's new baby-station list to its sessions.
    pub(crate) async fn on_baby_stations(&self, account_id: &str, list: serde_json::Value) {
        let frame = ServerFrame::BabyStations {
            baby_stations: list,
        };
        for s in self.hub.of_account(account_id) {
            self.deliver(&s, &frame).await;
        }
    }

    /// Hands every session over through the store (a graceful shutdown): to the next start
    /// with the embedded broker, to whichever replica each PWA resumes on with several. Each
    /// socket is closed with 1012, and no end is published.
    /// Returns the connection ids handed over; when the store cannot take them they are
    /// ended (`server_shutdown`) instead.
    pub(crate) async fn hand_over(&self, store: &Store) -> HashSet<String> {
        self.closing.store(true, Relaxed);
        let mut handed = Vec::new();
        let mut sessions = Vec::new();
        for s in self.hub.all() {
            if let Some(h) = s.hand_over(close::SERVICE_RESTART) {
                self.hub.close(&s.connection_id, close::SERVICE_RESTART);
                self.metrics.live.fetch_sub(1, Relaxed);
                handed.push(h);
                sessions.push(s);
            }
        }
        let n = handed.len();
        match handover::save(store, handed, self.settings.resume_window).await {
            Ok(ids) => {
                tracing::info!(
                    sessions = n,
                    "WebSocket sessions handed over through the store"
                );
                ids
            }
            Err(error) => {
                tracing::error!(%error, "WebSocket sessions not handed over: ended instead");
                for s in sessions {
                    self.publish_status(&s, Some(DisconnectReason::ServerShutdown))
                        .await;
                }
                HashSet::new()
            }
        }
    }

    /// Takes back the sessions the previous process handed over: detached, each resumable
    /// for what is left of its window, then ended (`lost`) as any dropped session.
    pub(crate) fn take_back(self: &Arc<Self>, handed: Vec<(HandedOver, Duration)>) {
        for (h, left) in handed {
            let session = self.restore(h);
            tracing::info!(account_id = %session.account_id, client_id = %session.client_id, connection_id = %session.connection_id, "WebSocket session taken back after a restart");
            end_unless_resumed(self.clone(), session, 1, left);
        }
    }

    /// A handed-over session, detached in the hub with a new resume secret.
    fn restore(&self, h: HandedOver) -> Arc<WsSession> {
        let session = self
            .hub
            .restore(h, new_resume_secret(), self.settings.replay_frames);
        self.metrics.live.fetch_add(1, Relaxed);
        session
    }
}

/// A resume asked for at the upgrade: the session's connection id, and the last `seq` the
/// client saw (`None`: replay the whole buffer).
pub(crate) type Resume = (String, Option<u64>);

/// The bridge's answer to an upgrade, before the `101`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead: a new session fits, or the resumed session is here and the caller may
    /// take it.
    Open,
    /// The resumed session is not here (nor could it be moved here), or the caller may not
    /// take it: `410`.
    SessionGone,
    /// `websocket.max_sessions` sessions are held: `503`.
    Full,
}

impl Bridge {
    /// Whether the bridge is shutting down (upgrades are refused with 503 from then on).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    /// Counts an upgrade refused for missing or bad credentials.
    pub(crate) fn auth_failed(&self) {
        self.metrics.auth_failures.fetch_add(1, Relaxed);
    }

    /// Largest frame accepted from a client (`websocket.max_frame_bytes`).
    pub(crate) fn max_frame_bytes(&self) -> usize {
        self.settings.max_frame_bytes
    }

    /// Decides an upgrade of `account_id`'s `client_id`. A resume of `connection_id` first
    /// brings the session here when the store (`adopt`) or another replica (`transfer`)
    /// holds it, then needs `proof` (the opening token's credential id or the session's
    /// resume secret); a new session needs room under `websocket.max_sessions`.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        store: &Store,
        account_id: &str,
        client_id: &str,
        connection_id: Option<&str>,
        proof: Proof<'_>,
    ) -> Admission {
        let Some(id) = connection_id else {
            if self.hub.len() >= self.settings.max_sessions {
                self.metrics.session_limit.fetch_add(1, Relaxed);
                tracing::warn!(
                    limit = self.settings.max_sessions,
                    "WebSocket upgrade refused: websocket.max_sessions reached"
                );
                return Admission::Full;
            }
            return Admission::Open;
        };
        let (credential, secret) = (proof.credential_id, proof.secret);
        // Several replicas: the session may have been handed over by one that shut down, or
        // be held by another that runs.
        // (Only an id of ours: it becomes part of a topic.)
        let ours = is_valid_id(id) && self.hub.get(id).is_none();
        if ours && !self.adopt(store, id, account_id, client_id).await {
            self.transfer(store, id, account_id, client_id, proof).await;
        }
        if self.revoked(store, id, account_id, client_id).await {
            self.metrics.resumed(ResumeOutcome::Gone);
            return Admission::SessionGone;
        }
        if may_resume(self, id, account_id, client_id, credential, secret) {
            Admission::Open
        } else {
            Admission::SessionGone
        }
    }

    /// Whether session `id` of (`account_id`, `client_id`) was opened with a credential the
    /// store no longer holds live (revoked, or its account deleted); such a session is ended
    /// here (`revoked`) and never resumed, also when it was parked or handed over between
    /// replicas before the revocation reached it.
    async fn revoked(&self, store: &Store, id: &str, account_id: &str, client_id: &str) -> bool {
        let Some(session) = self
            .hub
            .get(id)
            .filter(|s| s.account_id == account_id && s.client_id == client_id)
        else {
            return false;
        };
        let Some(credential) = session.owner().credential_id else {
            return false;
        };
        if !matches!(store.live_credential(&credential).await, Ok(None)) {
            return false;
        }
        self.end(id, DisconnectReason::Revoked, close::REVOKED)
            .await;
        true
    }

    /// The sessions of `account` (or all), not those being transferred here.
    pub(crate) fn sessions(&self, account: Option<&str>) -> Vec<SessionInfo> {
        let heartbeat_secs = self.settings.heartbeat.as_secs();
        let sessions = match account {
            Some(a) => self.hub.of_account(a),
            None => self.hub.all(),
        };
        sessions
            .into_iter()
            .filter(|s| !s.is_placeholder())
            .map(|s| SessionInfo {
                owner: s.owner(),
                connection_id: s.connection_id.clone(),
                heartbeat_secs,
                traffic: s.traffic.read(),
                peer: s.peer(),
            })
            .collect()
    }

    /// Ends every session `command` ends (not those being transferred here), with its reason
    /// and that reason's close code; returns how many.
    pub(crate) async fn end_matching(&self, command: &EndCommand) -> usize {
        let reason = command.reason;
        let code = match reason {
            DisconnectReason::Revoked => close::REVOKED,
            _ => close::ADMIN_DISCONNECT,
        };
        let matching: Vec<String> = self
            .hub
            .all()
            .into_iter()
            .filter(|s| !s.is_placeholder() && command.ends(&s.owner()))
            .map(|s| s.connection_id.clone())
            .collect();
        for id in &matching {
            self.end(id, reason, code).await;
        }
        matching.len()
    }

    /// Runs an upgraded socket: a new session (with a fresh resume secret), or the resumed
    /// one, until the socket and the session are done.
    /// `peer` is the client's address (as `http.trusted_proxies` resolves it).
    pub async fn serve(
        self: Arc<Self>,
        socket: WebSocket,
        (account_id, client_id): (String, String),
        credential_id: Option<String>,
        resume: Option<Resume>,
        peer: Option<std::net::IpAddr>,
    ) {
        let key = ResumeKey {
            credential_id,
            secret: new_resume_secret(),
            handed_over: None,
        };
        let run = async move {
            crate::tasks::inject("ws", &client_id);
            socket::run(socket, self, (account_id, client_id), key, resume, peer).await
        };
        if crate::tasks::contain(Task::WsSocket, run).await.is_none() {
            tracing::warn!("WebSocket socket ended by a panic in its task");
        }
    }
}

/// One session as the connections listing shows it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Who holds it.
    pub owner: crate::domain::control::Owner,
    /// Its connection id.
    pub connection_id: String,
    /// Its heartbeat, in seconds.
    pub heartbeat_secs: u64,
    /// Text frames from and to the client, and their bytes: (messages in, messages out,
    /// bytes in, bytes out).
    pub traffic: (u64, u64, u64, u64),
    /// The client's address on its current socket.
    pub peer: Option<std::net::IpAddr>,
}

/// Detaches the socket; the session ends (`lost`) unless resumed within the window.
async fn detach_and_wait(
    bridge: Arc<Bridge>,
    session: Arc<WsSession>,
    generation: u64,
    close_code: u16,
) {
    if !session.detach(generation, Some(close_code)) {
        return;
    }
    let window = bridge.settings.resume_window;
    end_unless_resumed(bridge, session, generation, window);
}

/// Ends `session` (`lost`) when `window` passes with the socket of `generation` still the
/// detached, current one.
fn end_unless_resumed(
    bridge: Arc<Bridge>,
    session: Arc<WsSession>,
    generation: u64,
    window: Duration,
) {
    tokio::spawn(async move {
        tokio::time::sleep(window).await;
        if session.still_detached(generation) {
            bridge
                .end(
                    &session.connection_id,
                    DisconnectReason::Lost,
                    close::NORMAL,
                )
                .await;
        }
    });
}

/// Runs the bridge's MQTT side: inbox messages (acknowledged once routed), committed
/// connection changes (presence), and baby-station list changes.
pub async fn run(
    bridge: Arc<Bridge>,
    mut inbox: mpsc::Receiver<Publish>,
    acker: crate::bus::Acker,
    mut changes: mpsc::UnboundedReceiver<ConnectionChange>,
    mut stations: mpsc::UnboundedReceiver<(String, serde_json::Value)>,
) {
    let (mut changes_open, mut stations_open) = (true, true);
    loop {
        tokio::select! {
            p = inbox.recv() => {
                let Some(p) = p else { return };
                bridge.on_message(&p).await;
                acker.ack(&p).await;
            }
            // A feed not used in this mode (several replicas) is closed: stop polling it.
            c = changes.recv(), if changes_open => match c {
                Some(c) => bridge.on_presence(&c).await,
                None => changes_open = false,
            },
            s = stations.recv(), if stations_open => match s {
                Some((account, list)) => bridge.on_baby_stations(&account, list).await,
                None => stations_open = false,
            },
        }
    }
}
