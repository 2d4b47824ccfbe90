//! Process metrics, rendered in the Prometheus text format on `/metrics`.
//!
//! Fixed label sets (families, drop reasons, decider outcomes) are arrays of atomics, so
//! counting on the hot path is one relaxed add and no lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::auth::Refusal;
use crate::domain::connection::{DisconnectReason, Ignored};
use crate::domain::session::SessionIgnored;
use crate::edge::acl::AclDrop;
use crate::edge::codec::FrameError;
use crate::edge::inbox::InboxDrop;
use crate::topics::DropReason;

/// Outcomes of a client's CONNECT at the edge (other than a refused authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeConnect {
    /// Accepted and relayed to the broker.
    Accepted,
    /// No CONNECT within mqtt.connect_timeout_ms.
    Timeout,
    /// Not an MQTT 3.1.1/5 CONNECT, or a failed WebSocket handshake.
    Malformed,
    /// TLS handshake failed.
    Tls,
    /// mqtt.max_connections reached.
    Limit,
    /// The Will's topic is not one the client may publish to.
    WillRefused,
    /// The broker could not be reached.
    BrokerUnavailable,
    /// The broker refused the relayed CONNECT.
    BrokerRefused,
    /// A CONNECT larger than mqtt.max_connect_bytes, refused before it was read.
    ConnectTooLarge,
    /// mqtt.max_pending connections were being admitted: closed as accepted.
    PendingLimit,
    /// An MQTT 3.1.1 keep-alive over mqtt.max_keep_alive_secs (or 0 while it is set).
    KeepAliveTooLong,
}

impl EdgeConnect {
    const ALL: [EdgeConnect; 11] = [
        Self::Accepted,
        Self::Timeout,
        Self::Malformed,
        Self::Tls,
        Self::Limit,
        Self::WillRefused,
        Self::BrokerUnavailable,
        Self::BrokerRefused,
        Self::ConnectTooLarge,
        Self::PendingLimit,
        Self::KeepAliveTooLong,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Timeout => "timeout",
            Self::Malformed => "malformed",
            Self::Tls => "tls_failed",
            Self::Limit => "limit",
            Self::WillRefused => "will_not_allowed",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::BrokerRefused => "broker_refused",
            Self::ConnectTooLarge => "connect_too_large",
            Self::PendingLimit => "pending_limit",
            Self::KeepAliveTooLong => "keep_alive_too_long",
        }
    }
}

/// Why the HTTP server refused or cut a connection or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpRefusal {
    /// `http.max_connections` reached: answered 503 and closed at once.
    ConnectionLimit,
    /// No complete request headers within `http.header_timeout_ms` (first request).
    HeaderTimeout,
    /// The body did not arrive within `http.body_timeout_ms`: 408.
    BodyTimeout,
    /// `Content-Length` over `http.max_body_bytes`: 413 before any of the body is read.
    TooLarge,
    /// The client took no byte of a response within `http.write_timeout_ms`.
    WriteTimeout,
    /// A browser request from an origin not in `http.allowed_origins`: a CORS preflight or a
    /// `/ws` upgrade answered 403.
    Origin,
}

impl HttpRefusal {
    /// Every refusal, in the order of `Metrics::http_refused`.
    pub(crate) const ALL: [HttpRefusal; 6] = [
        Self::ConnectionLimit,
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::TooLarge,
        Self::WriteTimeout,
        Self::Origin,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::TooLarge => "too_large",
            Self::WriteTimeout => "write_timeout",
            Self::Origin => "origin",
        }
    }
}

/// How a bearer token (HTTP API, `/ws`) was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    /// Found in the verified-token cache: no argon2 run.
    Cached,
    /// Verified against the store (argon2) and accepted.
    Verified,
    /// Not a live credential (or a wrong secret).
    Refused,
}

impl TokenCheck {
    /// Every outcome, in the order of `Metrics::http_token_checks`.
    pub(crate) const ALL: [TokenCheck; 3] = [Self::Cached, Self::Verified, Self::Refused];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Verified => "verified",
            Self::Refused => "refused",
        }
    }
}

/// Why a station message (baby or parent station topic) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StationDrop {
    /// Not `accounts/{account}/{baby|parent}_stations/{client}` with valid ids.
    InvalidTopic,
    /// Over `sync.max_status_bytes`.
    Oversize,
    /// Not a valid announcement (the log names the field).
    InvalidPayload,
    /// The payload's `client_id` is not the topic's, or an end names another station's
    /// session.
    ClientMismatch,
    /// A start names a connection of another client.
    ForeignConnection,
}

impl StationDrop {
    const ALL: [StationDrop; 5] = [
        Self::InvalidTopic,
        Self::Oversize,
        Self::InvalidPayload,
        Self::ClientMismatch,
        Self::ForeignConnection,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTopic => "invalid_topic",
            Self::Oversize => "oversize",
            Self::InvalidPayload => "invalid_payload",
            Self::ClientMismatch => "client_mismatch",
            Self::ForeignConnection => "foreign_connection",
        }
    }
}

const SESSION_IGNORED: [SessionIgnored; 4] = [
    SessionIgnored::DuplicateStart,
    SessionIgnored::StartAfterEnd,
    SessionIgnored::DuplicateEnd,
    SessionIgnored::UnknownSession,
];

const END_REASONS: [DisconnectReason; 6] = [
    DisconnectReason::Clean,
    DisconnectReason::Lost,
    DisconnectReason::KeepaliveTimeout,
    DisconnectReason::Takeover,
    DisconnectReason::ServerShutdown,
    DisconnectReason::Kicked,
];

/// Decider outcomes counted per decider.
pub(crate) const OUTCOMES: [&str; 3] = ["applied", "duplicate", "stale"];

/// Every counter and gauge of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Status messages received from the bus.
    pub(crate) status_received: AtomicU64,
    /// Status messages dropped, by [`DropReason`] (index into `DropReason::ALL`).
    pub(crate) status_dropped: [AtomicU64; DropReason::ALL.len()],
    /// Events appended, `connection.connected` / `connection.disconnected`.
    pub(crate) events_connected: AtomicU64,
    /// See `events_connected`.
    pub(crate) events_disconnected: AtomicU64,
    /// Connection decider outcomes, by [`OUTCOMES`] index.
    pub(crate) connection_outcomes: [AtomicU64; 3],
    /// Store transactions committed by the status writer.
    pub(crate) store_commits: AtomicU64,
    /// Sum of commit batch durations, in microseconds.
    pub(crate) store_commit_micros: AtomicU64,
    /// Batches retried after a write conflict (another writer got there first).
    pub(crate) store_conflicts: AtomicU64,
    /// Batches that failed on a database error and were retried after a pause.
    pub(crate) store_errors: AtomicU64,
    /// Whether the bus is connected to the broker (0 or 1).
    pub(crate) bus_connected: AtomicU64,
    /// Times the bus (re)connected.
    pub(crate) bus_connects: AtomicU64,
    /// Retained messages refed to the handlers after the bus connected (external broker).
    pub(crate) bus_replayed: AtomicU64,
    /// Edge CONNECT outcomes, by `EdgeConnect::ALL` index.
    pub(crate) edge_connects: [AtomicU64; EdgeConnect::ALL.len()],
    /// Edge CONNECTs refused by authentication, by `Refusal::ALL` index.
    pub(crate) edge_refusals: [AtomicU64; Refusal::ALL.len()],
    /// Retained PUBLISH packets refused: on a topic that is never retained / over the
    /// account's retained quota.
    pub(crate) edge_retained_not_retained: AtomicU64,
    /// See `edge_retained_not_retained`.
    pub(crate) edge_retained_quota: AtomicU64,
    /// Retained messages and bytes the edge counts for all accounts.
    pub(crate) edge_retained_messages: std::sync::atomic::AtomicI64,
    /// See `edge_retained_messages`.
    pub(crate) edge_retained_bytes: std::sync::atomic::AtomicI64,
    /// Tasks (one client connection each) that ended by a panic; the rest went on.
    pub(crate) task_panics: AtomicU64,
    /// Live edge connections.
    pub(crate) edge_live: std::sync::atomic::AtomicI64,
    /// Ended edge connections, by `END_REASONS` index.
    pub(crate) edge_ends: [AtomicU64; 6],
    /// Refused PUBLISH packets and SUBSCRIBE filters.
    pub(crate) edge_acl_publish: AtomicU64,
    /// See `edge_acl_publish`.
    pub(crate) edge_acl_subscribe: AtomicU64,
    /// Connections closed for a packet over the limit / a malformed packet.
    pub(crate) edge_too_large: AtomicU64,
    /// See `edge_too_large`.
    pub(crate) edge_malformed: AtomicU64,
    /// Times a connection was paused by the publish rate limit.
    pub(crate) edge_throttled: AtomicU64,
    /// Connections accepted and not yet admitted (handshake, CONNECT, authentication).
    pub(crate) edge_pending: std::sync::atomic::AtomicI64,
    /// Connections cut because the client took nothing the edge wrote for
    /// mqtt.write_timeout_ms.
    pub(crate) edge_write_timeouts: AtomicU64,
    /// `session.started` events appended.
    pub(crate) sessions_started: AtomicU64,
    /// `session.ended` events appended.
    pub(crate) sessions_ended: AtomicU64,
    /// Session commands that changed nothing, by `SESSION_IGNORED` index.
    pub(crate) sessions_ignored: [AtomicU64; 4],
    /// Starts parked until their connection appears.
    pub(crate) sessions_pending: AtomicU64,
    /// Pending starts evicted by the per-account bound.
    pub(crate) sessions_pending_evicted: AtomicU64,
    /// Messages received on baby-station topics.
    pub(crate) baby_station_messages: AtomicU64,
    /// Messages received on parent-station topics.
    pub(crate) parent_station_messages: AtomicU64,
    /// Station messages dropped, by `StationDrop::ALL` index.
    pub(crate) station_drops: [AtomicU64; 5],
    /// Open HTTP connections (upgraded WebSockets leave this count).
    pub(crate) http_open: std::sync::atomic::AtomicI64,
    /// HTTP connections accepted.
    pub(crate) http_accepted: AtomicU64,
    /// HTTP connections or requests refused or cut, by `HttpRefusal::ALL` index.
    pub(crate) http_refused: [AtomicU64; 6],
    /// Keep-alive connections closed after `http.header_timeout_ms` without a new request.
    pub(crate) http_idle_closed: AtomicU64,
    /// Bearer token checks, by `TokenCheck::ALL` index.
    pub(crate) http_token_checks: [AtomicU64; 3],
    /// Inbox messages the edge dropped (not stamped with `from`), by `InboxDrop::ALL` index.
    pub(crate) inbox_drops: [AtomicU64; 2],
}

/// A label of a counter family: every value (`ALL`, the exposition order, declared in the
/// enum's order) and each value's place in it, found without a search (the discriminant).
pub(crate) trait Label: Copy + 'static {
    /// This value's place in its type's `ALL`.
    fn index(self) -> usize;
}

/// Implements [`Label`] for fieldless enums whose `ALL` lists the variants in declaration
/// order (a test checks that every value's index is its place).
macro_rules! labels {
    ($($t:ty),* $(,)?) => {$(
        impl Label for $t {
            fn index(self) -> usize {
                self as usize
            }
        }
    )*};
}

labels!(
    DropReason,
    EdgeConnect,
    Refusal,
    StationDrop,
    HttpRefusal,
    TokenCheck,
    InboxDrop
);

/// Adds one to the counter of `label` in `family` (one counter per value of its label).
fn count<L: Label>(family: &[AtomicU64], label: L) {
    if let Some(c) = family.get(label.index()) {
        c.fetch_add(1, Relaxed);
    }
}

impl Metrics {
    /// Counts one dropped status message.
    pub(crate) fn status_drop(&self, reason: DropReason) {
        count(&self.status_dropped, reason);
    }

    /// Counts one decider outcome: applied (`None`), or why it was ignored.
    pub(crate) fn connection_outcome(&self, ignored: Option<Ignored>) {
        let i = match ignored {
            None => 0,
            Some(Ignored::Duplicate) => 1,
            Some(Ignored::Stale) => 2,
        };
        self.connection_outcomes[i].fetch_add(1, Relaxed);
    }

    /// Counts one CONNECT outcome.
    pub(crate) fn edge_connect(&self, outcome: EdgeConnect) {
        count(&self.edge_connects, outcome);
    }

    /// Counts one CONNECT refused by authentication.
    pub(crate) fn edge_refused(&self, refusal: Refusal) {
        count(&self.edge_refusals, refusal);
    }

    /// Moves the live connection gauge.
    pub(crate) fn edge_live(&self, delta: i64) {
        self.edge_live.fetch_add(delta, Relaxed);
    }

    /// Counts one ended connection.
    pub(crate) fn edge_disconnect(&self, reason: DisconnectReason) {
        if let Some(i) = END_REASONS.iter().position(|r| *r == reason) {
            self.edge_ends[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts one refused PUBLISH or SUBSCRIBE filter.
    pub(crate) fn edge_acl_drop(&self, kind: AclDrop) {
        match kind {
            AclDrop::Publish => self.edge_acl_publish.fetch_add(1, Relaxed),
            AclDrop::Subscribe => self.edge_acl_subscribe.fetch_add(1, Relaxed),
        };
    }

    /// Counts one connection closed for a bad packet.
    pub(crate) fn edge_protocol_error(&self, e: FrameError) {
        match e {
            FrameError::TooLarge => self.edge_too_large.fetch_add(1, Relaxed),
            FrameError::Malformed => self.edge_malformed.fetch_add(1, Relaxed),
        };
    }

    /// Counts one session command that changed nothing.
    pub(crate) fn session_ignored(&self, ignored: SessionIgnored) {
        if let Some(i) = SESSION_IGNORED.iter().position(|x| *x == ignored) {
            self.sessions_ignored[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts one dropped station message.
    pub(crate) fn station_drop(&self, reason: StationDrop) {
        count(&self.station_drops, reason);
    }

    /// Counts one refused or cut HTTP connection or request.
    pub(crate) fn http_refused(&self, reason: HttpRefusal) {
        count(&self.http_refused, reason);
    }

    /// Counts one bearer token check.
    pub(crate) fn token_check(&self, outcome: TokenCheck) {
        count(&self.http_token_checks, outcome);
    }

    /// The HTTP server's families: connections, refusals, idle closes, token checks.
    fn render_http(&self, out: &mut String) {
        header(
            out,
            "cradle_http_connections",
            "Open HTTP connections (not counting upgraded WebSockets).",
            "gauge",
        );
        let _ = writeln!(
            out,
            "cradle_http_connections {}",
            self.http_open.load(Relaxed)
        );
        header(
            out,
            "cradle_http_connections_total",
            "HTTP connections accepted (within http.max_connections).",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_http_connections_total {}",
            self.http_accepted.load(Relaxed)
        );
        header(
            out,
            "cradle_http_refused_total",
            "HTTP connections and requests refused or cut, by reason.",
            "counter",
        );
        for (i, r) in HttpRefusal::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_http_refused_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.http_refused[i].load(Relaxed)
            );
        }
        header(
            out,
            "cradle_http_idle_closed_total",
            "Keep-alive HTTP connections closed for sending no new request within http.header_timeout_ms.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_http_idle_closed_total {}",
            self.http_idle_closed.load(Relaxed)
        );
        header(
            out,
            "cradle_http_token_checks_total",
            "Bearer token checks (HTTP API and /ws), by outcome: cached (no argon2), verified, refused.",
            "counter",
        );
        for (i, r) in TokenCheck::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_http_token_checks_total{{outcome=\"{}\"}} {}",
                r.as_str(),
                self.http_token_checks[i].load(Relaxed)
            );
        }
    }

    /// Counts one inbox message the edge dropped.
    pub(crate) fn inbox_drop(&self, reason: InboxDrop) {
        count(&self.inbox_drops, reason);
    }

    /// Session events, ignored commands and parked session starts.
    fn render_sessions(&self, out: &mut String) {
        header(
            out,
            "cradle_sessions_total",
            "Session events appended, by type.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_sessions_total{{event=\"started\"}} {}\ncradle_sessions_total{{event=\"ended\"}} {}",
            self.sessions_started.load(Relaxed),
            self.sessions_ended.load(Relaxed)
        );
        header(
            out,
            "cradle_session_commands_ignored_total",
            "Session commands that changed nothing, by reason.",
            "counter",
        );
        for (i, r) in SESSION_IGNORED.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_session_commands_ignored_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.sessions_ignored[i].load(Relaxed)
            );
        }
        header(
            out,
            "cradle_session_pending_total",
            "Session starts parked until their connection appears, and those evicted.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_session_pending_total{{outcome=\"parked\"}} {}\ncradle_session_pending_total{{outcome=\"evicted\"}} {}",
            self.sessions_pending.load(Relaxed),
            self.sessions_pending_evicted.load(Relaxed)
        );
    }

    /// One connection more (`1`) or less (`-1`) being admitted.
    pub(crate) fn edge_pending(&self, delta: i64) {
        self.edge_pending.fetch_add(delta, Relaxed);
    }

    /// Counts one connection cut for not reading (mqtt.write_timeout_ms).
    pub(crate) fn edge_write_timeout(&self) {
        self.edge_write_timeouts.fetch_add(1, Relaxed);
    }

    /// Connections waiting to be admitted, and connections cut by the write timeout.
    fn render_edge_bounds(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP cradle_edge_pending MQTT connections accepted and not yet admitted (handshake, CONNECT, authentication; at most mqtt.max_pending).\n# TYPE cradle_edge_pending gauge\ncradle_edge_pending {}",
            self.edge_pending.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cradle_edge_write_timeouts_total MQTT connections cut because the client took nothing written to it for mqtt.write_timeout_ms.\n# TYPE cradle_edge_write_timeouts_total counter\ncradle_edge_write_timeouts_total {}",
            self.edge_write_timeouts.load(Relaxed)
        );
    }

    /// Counts one pause by the publish rate limit.
    pub(crate) fn edge_throttled(&self) {
        self.edge_throttled.fetch_add(1, Relaxed);
    }

    /// Counts one retained PUBLISH refused (`quota`: over the account's retained quota;
    /// otherwise its topic is never retained).
    pub(crate) fn edge_retained_refused(&self, quota: bool) {
        match quota {
            true => self.edge_retained_quota.fetch_add(1, Relaxed),
            false => self.edge_retained_not_retained.fetch_add(1, Relaxed),
        };
    }

    /// Counts one task that panicked.
    pub(crate) fn task_panic(&self) {
        self.task_panics.fetch_add(1, Relaxed);
    }

    /// Retained-message limits, task panics and the verification gate.
    fn render_limits(&self, out: &mut String) {
        self.render_retained(out);
        self.render_task_panics(out);
        Self::render_auth_gate(out);
    }

    /// Retained PUBLISH packets refused, and the retained messages and bytes devices keep.
    fn render_retained(&self, out: &mut String) {
        header(
            out,
            "cradle_edge_retained_refused_total",
            "Retained PUBLISH packets refused at the edge, by reason.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_edge_retained_refused_total{{reason=\"not_retained\"}} {}\ncradle_edge_retained_refused_total{{reason=\"quota\"}} {}",
            self.edge_retained_not_retained.load(Relaxed),
            self.edge_retained_quota.load(Relaxed)
        );
        header(
            out,
            "cradle_edge_retained_messages",
            "Retained messages devices keep in the broker, as the edge counts them (all accounts).",
            "gauge",
        );
        let _ = writeln!(
            out,
            "cradle_edge_retained_messages {}",
            self.edge_retained_messages.load(Relaxed)
        );
        header(
            out,
            "cradle_edge_retained_bytes",
            "Bytes (topic + payload) of those retained messages.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "cradle_edge_retained_bytes {}",
            self.edge_retained_bytes.load(Relaxed)
        );
    }

    /// Connection tasks that ended by a panic.
    fn render_task_panics(&self, out: &mut String) {
        header(
            out,
            "cradle_task_panics_total",
            "Connection tasks that ended by a panic (that connection alone ended; logged).",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_task_panics_total {}",
            self.task_panics.load(Relaxed)
        );
    }

    /// The argon2 verification gate: outcomes, delays, waiters, tracked sources.
    fn render_auth_gate(out: &mut String) {
        let gate = crate::accounts::gate::gate();
        let st = &gate.stats;
        header(
            out,
            "cradle_auth_verifications_total",
            "argon2 secret verifications (MQTT passwords, bearer tokens), by outcome; busy: refused after auth.verify_wait_ms without a slot.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_auth_verifications_total{{outcome=\"ok\"}} {}\ncradle_auth_verifications_total{{outcome=\"failed\"}} {}\ncradle_auth_verifications_total{{outcome=\"busy\"}} {}",
            st.ok.load(Relaxed),
            st.failed.load(Relaxed),
            st.busy.load(Relaxed)
        );
        header(
            out,
            "cradle_auth_verifications_delayed_total",
            "Verifications delayed because their source address failed repeatedly.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_auth_verifications_delayed_total {}",
            st.delayed.load(Relaxed)
        );
        header(
            out,
            "cradle_auth_verifications_waiting",
            "Callers waiting for a verification slot now.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "cradle_auth_verifications_waiting {}",
            st.waiting.load(Relaxed)
        );
        header(
            out,
            "cradle_auth_sources",
            "Source addresses the verification gate tracks (bounded).",
            "gauge",
        );
        let _ = writeln!(out, "cradle_auth_sources {}", gate.sources());
    }

    /// The edge's families: limits, bounds, connections and refusals.
    fn render_edge(&self, out: &mut String) {
        self.render_limits(out);
        self.render_edge_bounds(out);
        self.render_edge_connections(out);
        self.render_edge_refusals(out);
    }

    /// MQTT CONNECTs by outcome, live connections, and disconnects by reason.
    fn render_edge_connections(&self, out: &mut String) {
        header(
            out,
            "cradle_edge_connects_total",
            "MQTT CONNECTs at the edge, by outcome (refused ones by reason).",
            "counter",
        );
        for (i, o) in EdgeConnect::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_edge_connects_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                self.edge_connects[i].load(Relaxed)
            );
        }
        for (i, r) in Refusal::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_edge_connects_total{{outcome=\"not_authorized\",reason=\"{}\"}} {}",
                r.as_str(),
                self.edge_refusals[i].load(Relaxed)
            );
        }
        header(
            out,
            "cradle_edge_connections",
            "Live MQTT client connections at the edge.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "cradle_edge_connections {}",
            self.edge_live.load(Relaxed)
        );
        header(
            out,
            "cradle_edge_disconnects_total",
            "Ended MQTT client connections, by the reason the edge observed.",
            "counter",
        );
        for (i, r) in END_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_edge_disconnects_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.edge_ends[i].load(Relaxed)
            );
        }
    }

    /// What the edge refused or slowed: ACL refusals, bad packets, throttling.
    fn render_edge_refusals(&self, out: &mut String) {
        header(
            out,
            "cradle_edge_acl_refused_total",
            "PUBLISH packets and SUBSCRIBE filters refused by the account rules.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_edge_acl_refused_total{{packet=\"publish\"}} {}\ncradle_edge_acl_refused_total{{packet=\"subscribe\"}} {}",
            self.edge_acl_publish.load(Relaxed),
            self.edge_acl_subscribe.load(Relaxed)
        );
        header(
            out,
            "cradle_edge_bad_packets_total",
            "Connections closed for a bad packet, by kind.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_edge_bad_packets_total{{kind=\"too_large\"}} {}\ncradle_edge_bad_packets_total{{kind=\"malformed\"}} {}",
            self.edge_too_large.load(Relaxed),
            self.edge_malformed.load(Relaxed)
        );
        header(
            out,
            "cradle_edge_throttled_total",
            "Times a client connection was paused by mqtt.publish_rate.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_edge_throttled_total {}",
            self.edge_throttled.load(Relaxed)
        );
    }

    /// Panics the embedded broker caught (vendored rumqttd, CRADLE PATCH 8 and 11): each
    /// ended the one connection it happened for instead of the whole broker. Should stay 0.
    fn render_broker_panics(out: &mut String) {
        let (link, router) = rumqttd::caught_panics();
        let _ = writeln!(
            out,
            "# HELP cradle_broker_panics_total Panics the embedded broker caught, by where; each ended one connection only.\n\
             # TYPE cradle_broker_panics_total counter\n\
             cradle_broker_panics_total{{in=\"connection\"}} {link}\n\
             cradle_broker_panics_total{{in=\"router\"}} {router}"
        );
    }

    /// PUBACKs (PUBCOMPs) the embedded broker holds until the bus has committed the message
    /// (vendored rumqttd, CRADLE PATCH 27). Each device holds at most its in-flight window;
    /// a figure that keeps growing means the status or station handler is behind.
    fn render_held_acks(out: &mut String) {
        let held = rumqttd::held_acks();
        let _ = writeln!(
            out,
            "# HELP cradle_broker_acks_held Device acknowledgements the embedded broker holds until their messages are committed.\n\
             # TYPE cradle_broker_acks_held gauge\n\
             cradle_broker_acks_held {held}"
        );
    }

    /// Messages received by the handlers and dropped without effect, by family.
    fn render_messages(&self, out: &mut String) {
        header(
            out,
            "cradle_mqtt_messages_received_total",
            "MQTT messages received by Cradle's handlers, by topic family.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_mqtt_messages_received_total{{family=\"status\"}} {}",
            self.status_received.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "cradle_mqtt_messages_received_total{{family=\"baby_stations\"}} {}\ncradle_mqtt_messages_received_total{{family=\"parent_stations\"}} {}",
            self.baby_station_messages.load(Relaxed),
            self.parent_station_messages.load(Relaxed)
        );
        header(
            out,
            "cradle_mqtt_messages_dropped_total",
            "MQTT messages acknowledged and dropped without effect, by family and reason.",
            "counter",
        );
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_mqtt_messages_dropped_total{{family=\"status\",reason=\"{}\"}} {}",
                reason.as_str(),
                self.status_dropped[i].load(Relaxed)
            );
        }
        for (i, r) in StationDrop::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_mqtt_messages_dropped_total{{family=\"stations\",reason=\"{}\"}} {}",
                r.as_str(),
                self.station_drops[i].load(Relaxed)
            );
        }
        for (i, r) in InboxDrop::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_mqtt_messages_dropped_total{{family=\"inbox\",reason=\"{}\"}} {}",
                r.as_str(),
                self.inbox_drops[i].load(Relaxed)
            );
        }
    }

    /// Events appended to the log and the connection decider's outcomes.
    fn render_decisions(&self, out: &mut String) {
        header(
            out,
            "cradle_events_appended_total",
            "Events appended to the event log, by type.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_events_appended_total{{type=\"connection.connected\"}} {}",
            self.events_connected.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "cradle_events_appended_total{{type=\"connection.disconnected\"}} {}",
            self.events_disconnected.load(Relaxed)
        );
        header(
            out,
            "cradle_decider_outcomes_total",
            "Decisions taken, by decider and outcome.",
            "counter",
        );
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_decider_outcomes_total{{decider=\"connection\",outcome=\"{outcome}\"}} {}",
                self.connection_outcomes[i].load(Relaxed)
            );
        }
    }

    /// Write transactions: commits, time spent, conflicts and errors.
    fn render_store(&self, out: &mut String) {
        header(
            out,
            "cradle_store_commits_total",
            "Write transactions committed.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_store_commits_total {}",
            self.store_commits.load(Relaxed)
        );
        header(
            out,
            "cradle_store_commit_seconds_total",
            "Time spent in write transactions.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_store_commit_seconds_total {:.6}",
            self.store_commit_micros.load(Relaxed) as f64 / 1e6
        );
        header(
            out,
            "cradle_store_conflicts_total",
            "Write batches retried after a conflict with another writer.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_store_conflicts_total {}",
            self.store_conflicts.load(Relaxed)
        );
        header(
            out,
            "cradle_store_errors_total",
            "Write batches that failed on a database error and were retried.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_store_errors_total {}",
            self.store_errors.load(Relaxed)
        );
    }

    /// Cradle's own MQTT client: connected, connects, replayed retained messages.
    fn render_bus(&self, out: &mut String) {
        header(
            out,
            "cradle_bus_connected",
            "1 while Cradle's own MQTT client is connected to the broker.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "cradle_bus_connected {}",
            self.bus_connected.load(Relaxed)
        );
        header(
            out,
            "cradle_bus_connects_total",
            "Times Cradle's own MQTT client (re)connected.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_bus_connects_total {}",
            self.bus_connects.load(Relaxed)
        );
        header(
            out,
            "cradle_bus_replayed_total",
            "Retained messages refed to the handlers after the bus connected (external broker).",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_bus_replayed_total {}",
            self.bus_replayed.load(Relaxed)
        );
    }

    /// Renders every metric; `connected_clients` comes from the store at scrape time so that
    /// every replica reports the same figure.
    pub(crate) fn render(&self, connected_clients: Option<u64>) -> String {
        let mut out = String::with_capacity(4096);
        self.render_messages(&mut out);
        self.render_decisions(&mut out);
        self.render_store(&mut out);
        self.render_bus(&mut out);
        self.render_edge(&mut out);
        Self::render_broker_panics(&mut out);
        Self::render_held_acks(&mut out);
        self.render_sessions(&mut out);
        self.render_http(&mut out);
        if let Some(n) = connected_clients {
            header(
                &mut out,
                "cradle_connected_clients",
                "Clients whose current connection is connected, over every account.",
                "gauge",
            );
            let _ = writeln!(out, "cradle_connected_clients {n}");
        }
        out
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places_match<L: Label + std::fmt::Debug>(all: &[L]) {
        for (i, l) in all.iter().enumerate() {
            assert_eq!(l.index(), i, "{l:?} is not at its place in ALL");
        }
    }

    #[test]
    fn every_label_s_index_is_its_place_in_the_exposition_order() {
        places_match(&DropReason::ALL);
        places_match(&EdgeConnect::ALL);
        places_match(&Refusal::ALL);
        places_match(&StationDrop::ALL);
        places_match(&HttpRefusal::ALL);
        places_match(&TokenCheck::ALL);
        places_match(&InboxDrop::ALL);
    }

    #[test]
    fn drops_are_rendered_by_reason() {
        let m = Metrics::default();
        m.status_drop(DropReason::MalformedJson);
        m.status_drop(DropReason::MalformedJson);
        let text = m.render(Some(3));
        assert!(text.contains(
            "cradle_mqtt_messages_dropped_total{family=\"status\",reason=\"malformed_json\"} 2"
        ));
        assert!(text.contains("cradle_connected_clients 3"));
    }

    #[test]
    fn outcomes_are_rendered_per_decider() {
        let m = Metrics::default();
        m.connection_outcome(Some(Ignored::Stale));
        let text = m.render(None);
        assert!(text
            .contains("cradle_decider_outcomes_total{decider=\"connection\",outcome=\"stale\"} 1"));
        assert!(text.contains(
            "cradle_decider_outcomes_total{decider=\"connection\",outcome=\"applied\"} 0"
        ));
        assert!(!text.contains("cradle_connected_clients"));
    }
}
