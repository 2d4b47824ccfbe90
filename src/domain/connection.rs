//! The connection decider: one stream per (account, client).
//!
//! It turns status reports (`connected`, `disconnected`) into `connection.connected` and
//! `connection.disconnected` events. Reports arrive at least once and sometimes late or out
//! of order (QoS 1 redelivery, retained replay, a Will fired after the client already
//! reconnected), so the rules below make the log say what really happened.

use serde::{Deserialize, Serialize};

use crate::topics::{is_valid_id, DropReason};

/// Why a connection ended. The wire names are part of the topic contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The client said goodbye (MQTT DISCONNECT, WebSocket close frame).
    Clean,
    /// The connection dropped without a goodbye (the Last Will path).
    Lost,
    /// The client stopped answering within its keep-alive.
    KeepaliveTimeout,
    /// A newer connection of the same client replaced this one.
    Takeover,
    /// Cradle shut down while the client was connected.
    ServerShutdown,
    /// An operator or policy closed the connection.
    Kicked,
    /// The client did not read what it was sent fast enough (WebSocket bridge).
    SlowConsumer,
    /// The credential it connected with was revoked, or its account deleted.
    Revoked,
    /// An administrator disconnected the client (`POST …/disconnect`).
    AdminDisconnect,
}

impl DisconnectReason {
    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "clean" => Self::Clean,
            "lost" => Self::Lost,
            "keepalive_timeout" => Self::KeepaliveTimeout,
            "takeover" => Self::Takeover,
            "server_shutdown" => Self::ServerShutdown,
            "kicked" => Self::Kicked,
            "slow_consumer" => Self::SlowConsumer,
            "revoked" => Self::Revoked,
            "admin_disconnect" => Self::AdminDisconnect,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Lost => "lost",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::Takeover => "takeover",
            Self::ServerShutdown => "server_shutdown",
            Self::Kicked => "kicked",
            Self::SlowConsumer => "slow_consumer",
            Self::Revoked => "revoked",
            Self::AdminDisconnect => "admin_disconnect",
        }
    }
}

/// What a status report asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionCommand {
    /// Record that `connection_id` connected at `at_millis`.
    Connect {
        connection_id: String,
        at_millis: i64,
        /// The MQTT connection behind Cradle's edge it is about (the edge stamps it on
        /// what it publishes and on the device's own reports); `None` for clients the
        /// edge does not see (WebSocket sessions, devices on an external broker).
        edge: Option<String>,
        /// The edge's own observation of the start (not the device's report).
        observed: bool,
    },
    /// Record that `connection_id` ended at `at_millis` for `reason`.
    Disconnect {
        connection_id: String,
        reason: DisconnectReason,
        at_millis: i64,
        /// As for [`ConnectionCommand::Connect`].
        edge: Option<String>,
    },
}

impl ConnectionCommand {
    /// The connection the command is about.
    pub fn connection_id(&self) -> &str {
        match self {
            Self::Connect { connection_id, .. } | Self::Disconnect { connection_id, .. } => {
                connection_id
            }
        }
    }

    /// The event type this command would record for its own connection. Together with
    /// the stream and connection id it is the idempotency key: a connection connects once
    /// and disconnects once, so a second event of the same type for it is a redelivery.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Connect {
                edge: Some(_),
                observed: false,
                ..
            } => REPORTED,
            Self::Connect { .. } => CONNECTED,
            Self::Disconnect { .. } => DISCONNECTED,
        }
    }

    /// The MQTT connection behind the edge the command is about, if the edge stamped one.
    pub fn edge(&self) -> Option<&str> {
        match self {
            Self::Connect { edge, .. } | Self::Disconnect { edge, .. } => edge.as_deref(),
        }
    }
}

/// What the log already holds of one MQTT connection behind the edge (found by the
/// idempotency keys of its three event types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Its `connection.connected`.
    pub connected: bool,
    /// Its `connection.reported`.
    pub reported: bool,
    /// Its `connection.disconnected`.
    pub ended: bool,
}

/// Stored type name of [`ConnectionEvent::Connected`].
pub(crate) const CONNECTED: &str = "connection.connected";
/// Stored type name of [`ConnectionEvent::Disconnected`].
pub(crate) const DISCONNECTED: &str = "connection.disconnected";
/// Stored type name of [`ConnectionEvent::Reported`].
pub(crate) const REPORTED: &str = "connection.reported";

fn is_false(b: &bool) -> bool {
    !*b
}
pub(crate) use super::EVENT_VERSION;

/// What happened to a client's connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ConnectionEvent {
    /// `connection.connected`
    #[serde(rename = "connection.connected")]
    Connected {
        connection_id: String,
        at_millis: i64,
        /// The MQTT connection behind the edge (none for clients the edge does not see).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edge_connection_id: Option<String>,
        /// Recorded from the edge's observation of the start, before any report of the
        /// device's (a `connection.reported` follows if the device reports).
        #[serde(default, skip_serializing_if = "is_false")]
        observed: bool,
    },
    /// `connection.disconnected`
    #[serde(rename = "connection.disconnected")]
    Disconnected {
        connection_id: String,
        reason: DisconnectReason,
        at_millis: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edge_connection_id: Option<String>,
    },
    /// `connection.reported`: the device's own `connected` report for a connection behind
    /// the edge; from then on the connection is known by the id the device reported.
    #[serde(rename = "connection.reported")]
    Reported {
        connection_id: String,
        reported_connection_id: String,
        at_millis: i64,
        edge_connection_id: String,
    },
}

impl ConnectionEvent {
    /// Stored type name.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Connected { .. } => CONNECTED,
            Self::Disconnected { .. } => DISCONNECTED,
            Self::Reported { .. } => REPORTED,
        }
    }

    /// The connection the event is about.
    pub fn connection_id(&self) -> &str {
        match self {
            Self::Connected { connection_id, .. }
            | Self::Disconnected { connection_id, .. }
            | Self::Reported { connection_id, .. } => connection_id,
        }
    }

    /// The MQTT connection behind the edge it is about, if any.
    pub fn edge(&self) -> Option<&str> {
        match self {
            Self::Connected {
                edge_connection_id, ..
            }
            | Self::Disconnected {
                edge_connection_id, ..
            } => edge_connection_id.as_deref(),
            Self::Reported {
                edge_connection_id, ..
            } => Some(edge_connection_id),
        }
    }

    /// When it happened, on the observer's clock.
    pub fn at_millis(&self) -> i64 {
        match self {
            Self::Connected { at_millis, .. }
            | Self::Disconnected { at_millis, .. }
            | Self::Reported { at_millis, .. } => *at_millis,
        }
    }
}

/// The state of one client's connection stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientConnection {
    /// No event recorded yet.
    #[default]
    Unknown,
    /// `connection_id` is the client's current connection.
    Connected {
        connection_id: String,
        since_millis: i64,
        /// Its MQTT connection behind the edge, if the edge saw it.
        edge: Option<String>,
    },
    /// The client's last connection ended.
    Disconnected {
        connection_id: String,
        reason: DisconnectReason,
        at_millis: i64,
        edge: Option<String>,
    },
}

/// Why a command records nothing although it is well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The command repeats what the state already says.
    Duplicate,
    /// The command is about a connection that is no longer (or never was) the current one,
    /// or it is older than the current state.
    Stale,
}

impl Ignored {
    /// Stable `/metrics` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
        }
    }
}

/// How far before the current connection's start a `connected` of another connection may
/// be stamped and still be taken as an older report arriving late, not as a new connection
/// from a device whose clock went back. (It applies while a connection is current, whose
/// start the same device stamped; never after an end, which the edge may have stamped.)
///
/// Several replicas consume the status topics through one shared subscription, and the
/// broker deals a client's messages round robin, so two reports of one client can be
/// processed in the opposite order (one replica commits faster). A device's own reports
/// of one boot are stamped by one clock, so inside this window the stamps order them;
/// beyond it, connection ids alone decide (a device whose clock went back after a reboot
/// must still be able to connect). Redeliveries never get here: their idempotency keys
/// are already in the log.
pub(crate) const REORDER_WINDOW_MILLIS: i64 = 5_000;

/// Decides which events `command` records given `state`, for a client the edge does not
/// see ([`decide_seen`] with nothing seen).
pub fn decide(
    command: &ConnectionCommand,
    state: &ClientConnection,
) -> Result<Vec<ConnectionEvent>, Ignored> {
    decide_seen(command, state, Seen::default())
}

/// Decides which events `command` records given `state` and, for a command about an MQTT
/// connection behind the edge, what the log already holds of that connection (`seen`): one
/// table per command.
///
/// How the edge's observation and the device's report meet: every MQTT connection behind
/// the edge has an id of its own (`edge`), which the edge stamps on its observed start, on
/// the device's own reports and on the end it publishes. Whichever arrives first records
/// the connection; the other confirms it:
/// - the observed start records `connection.connected` (`observed`) under the id the
///   device's Will names (a device that follows the contract reports the same id), else
///   under the edge's id; a reused id that already ended (a Will replayed over reconnects)
///   gives way to the edge's id;
/// - the device's first report records `connection.reported` (and first the
///   `connection.connected` if the observed start has not arrived); the connection is known
///   by the reported id from then on;
/// - an end with the edge's id ends the connection whatever id it carries.
pub fn decide_seen(
    command: &ConnectionCommand,
    state: &ClientConnection,
    seen: Seen,
) -> Result<Vec<ConnectionEvent>, Ignored> {
    // The state is at least as new as the keys it was read after: what it says of its own
    // edge connection is seen too.
    let seen = match (command.edge(), state) {
        (Some(e), ClientConnection::Connected { edge: Some(s), .. }) if e == s => Seen {
            connected: true,
            ..seen
        },
        (Some(e), ClientConnection::Disconnected { edge: Some(s), .. }) if e == s => Seen {
            connected: true,
            ended: true,
            ..seen
        },
        _ => seen,
    };
    match command {
        ConnectionCommand::Connect {
            connection_id,
            at_millis,
            edge: Some(edge),
            observed,
        } => {
            let edge = EdgeConnect {
                edge,
                observed: *observed,
                seen,
            };
            decide_edge_connect(connection_id, *at_millis, edge, state)
        }
        ConnectionCommand::Connect {
            connection_id,
            at_millis,
            edge: None,
            ..
        } => decide_connect(connection_id, *at_millis, None, state),
        ConnectionCommand::Disconnect {
            connection_id,
            reason,
            at_millis,
            edge: Some(edge),
        } => decide_edge_disconnect(connection_id, (*reason, *at_millis), (edge, seen), state),
        ConnectionCommand::Disconnect {
            connection_id,
            reason,
            at_millis,
            edge: None,
        } => decide_disconnect(connection_id, *reason, *at_millis, None, state),
    }
}

/// A connect about an MQTT connection behind the edge.
#[derive(Debug, Clone, Copy)]
struct EdgeConnect<'a> {
    edge: &'a str,
    observed: bool,
    seen: Seen,
}

/// Decides a connect about the edge connection `c.edge` (see [`decide_seen`]).
fn decide_edge_connect(
    connection_id: &str,
    at_millis: i64,
    c: EdgeConnect<'_>,
    state: &ClientConnection,
) -> Result<Vec<ConnectionEvent>, Ignored> {
    // The id the connection is known by, if it is the current one.
    let current = match state {
        ClientConnection::Connected {
            connection_id: cur,
            edge: Some(e),
            ..
        } if e == c.edge => Some(cur),
        _ => None,
    };
    if unbound_current(state, connection_id) {
        // The current connection has this id and no edge id (recorded from a status published
        // by another client, as open mode allows): the same connection, already recorded.
        return Err(Ignored::Duplicate);
    }
    // The device's report, for the connection known as `known_as`.
    let reported = |known_as: &str| ConnectionEvent::Reported {
        connection_id: known_as.to_string(),
        reported_connection_id: connection_id.to_string(),
        at_millis,
        edge_connection_id: c.edge.to_string(),
    };
    match (c.observed, c.seen.connected, current) {
        // The observed start of a connection already recorded (the report came first).
        (true, true, _) => Err(Ignored::Duplicate),
        (false, _, _) if c.seen.reported => Err(Ignored::Duplicate),
        // The device confirms the connection the edge recorded.
        (false, true, Some(cur)) => Ok(vec![reported(cur)]),
        // A report of a connection that is over (ended, or taken over).
        (false, true, None) => Err(Ignored::Stale),
        // The connection is new to the log: recorded now, whichever message came first.
        (_, false, _) => {
            let id = unused_id(connection_id, c.edge, state);
            let mut events = decide_connect(id, at_millis, Some((c.edge, c.observed)), state)?;
            if !c.observed {
                events.push(reported(id));
            }
            Ok(events)
        }
    }
}

/// Whether the current connection is `id`, recorded without an edge id.
fn unbound_current(state: &ClientConnection, id: &str) -> bool {
    matches!(state, ClientConnection::Connected { connection_id, edge: None, .. } if connection_id == id)
}

/// `id`, unless the client's current or last connection already has it (a Will or a
/// report replayed over reconnects): then the edge's id, which is new for every connection.
fn unused_id<'a>(id: &'a str, edge: &'a str, state: &ClientConnection) -> &'a str {
    match state {
        ClientConnection::Connected { connection_id, .. }
        | ClientConnection::Disconnected { connection_id, .. }
            if connection_id == id =>
        {
            edge
        }
        _ => id,
    }
}

/// Decides the end of the edge connection `edge` (see [`decide_seen`]).
fn decide_edge_disconnect(
    connection_id: &str,
    (reason, at_millis): (DisconnectReason, i64),
    (edge, seen): (&str, Seen),
    state: &ClientConnection,
) -> Result<Vec<ConnectionEvent>, Ignored> {
    match state {
        _ if seen.ended => Err(Ignored::Duplicate),
        // The current connection by its id, recorded without an edge id.
        _ if unbound_current(state, connection_id) => {
            decide_disconnect(connection_id, reason, at_millis, None, state)
        }
        ClientConnection::Connected {
            connection_id: cur,
            since_millis,
            edge: Some(e),
        } if e == edge => Ok(vec![ConnectionEvent::Disconnected {
            connection_id: cur.clone(),
            reason,
            at_millis: at_millis.max(*since_millis),
            edge_connection_id: Some(edge.to_string()),
        }]),
        // Recorded, and no longer current: its end was the takeover.
        _ if seen.connected => Err(Ignored::Stale),
        // The end of a connection not recorded yet (its start went to another replica, which
        // has not committed it) while an older one is current: this one took over from it.
        // Both stamps are the edges' clocks.
        ClientConnection::Connected {
            connection_id: cur,
            since_millis,
            edge: cur_edge,
        } if at_millis >= *since_millis => {
            let mut events = vec![ConnectionEvent::Disconnected {
                connection_id: cur.clone(),
                reason: DisconnectReason::Takeover,
                at_millis,
                edge_connection_id: cur_edge.clone(),
            }];
            let id = unused_id(connection_id, edge, state);
            events.extend(ended_unseen(id, reason, at_millis, Some(edge)));
            Ok(events)
        }
        _ => decide_disconnect(
            unused_id(connection_id, edge, state),
            reason,
            at_millis,
            Some(edge),
            state,
        ),
    }
}

/// Decides a `connected` of `connection_id` stamped `at_millis` given `state`; the new
/// connection is the edge's `edge` (and observed by it) if given.
fn decide_connect(
    connection_id: &str,
    at_millis: i64,
    edge: Option<(&str, bool)>,
    state: &ClientConnection,
) -> Result<Vec<ConnectionEvent>, Ignored> {
    use ClientConnection as S;
    let connected = |at_millis| ConnectionEvent::Connected {
        connection_id: connection_id.to_string(),
        at_millis,
        edge_connection_id: edge.map(|(e, _)| e.to_string()),
        observed: edge.is_some_and(|(_, observed)| observed),
    };
    match state {
        S::Unknown => Ok(vec![connected(at_millis)]),
        S::Connected {
            connection_id: cur, ..
        } if cur == connection_id => Err(Ignored::Duplicate),
        // An older connection's `connected`, processed after the newer one's (an edge's
        // observed start is a new connection whatever its stamp: the edge saw it).
        S::Connected { since_millis, .. }
            if reordered(at_millis, *since_millis) && edge.is_none() =>
        {
            Err(Ignored::Stale)
        }
        S::Connected {
            connection_id: cur,
            since_millis,
            edge: cur_edge,
        } => {
            // A new connection took over without the old one reporting its end. Connection
            // ids, not clocks, tell connections apart: a device whose clock went back after
            // a reboot must still be able to connect. An older connection's late `connected`
            // never gets here: its idempotency key is already in the log.
            let at = at_millis.max(*since_millis);
            Ok(vec![
                ConnectionEvent::Disconnected {
                    connection_id: cur.clone(),
                    reason: DisconnectReason::Takeover,
                    at_millis: at,
                    edge_connection_id: cur_edge.clone(),
                },
                connected(at),
            ])
        }
        S::Disconnected {
            connection_id: last,
            ..
        } if last == connection_id => {
            // The connection already ended; its `connected` is a late replay.
            Err(Ignored::Stale)
        }
        // No window after an end: ends are often stamped by the edge's clock, not the
        // device's, and a device whose clock lags the server's must be able to reconnect
        // right after its end.
        S::Disconnected { .. } => Ok(vec![connected(at_millis)]),
    }
}

/// Decides a `disconnected` of `connection_id` for `reason` stamped `at_millis` given
/// `state`; an end not yet seen is the edge connection `edge`'s, if given.
fn decide_disconnect(
    connection_id: &str,
    reason: DisconnectReason,
    at_millis: i64,
    edge: Option<&str>,
    state: &ClientConnection,
) -> Result<Vec<ConnectionEvent>, Ignored> {
    use ClientConnection as S;
    match state {
        S::Connected {
            connection_id: cur,
            since_millis,
            edge: cur_edge,
        } if cur == connection_id => Ok(vec![ConnectionEvent::Disconnected {
            connection_id: connection_id.to_string(),
            reason,
            // A disconnect cannot precede its connect, whatever the clocks say.
            at_millis: at_millis.max(*since_millis),
            edge_connection_id: cur_edge.clone(),
        }]),
        S::Disconnected {
            connection_id: last,
            ..
        } if last == connection_id => Err(Ignored::Duplicate),
        S::Unknown => Ok(ended_unseen(connection_id, reason, at_millis, edge)),
        S::Disconnected {
            at_millis: ended, ..
        } if at_millis >= *ended => Ok(ended_unseen(connection_id, reason, at_millis, edge)),
        // A disconnect of a connection that is not the current one (a late Will after a
        // reconnect), or older than the last end.
        _ => Err(Ignored::Stale),
    }
}

/// Whether a `connected` stamped `at` of another connection is older than the current
/// connection's start `current`, inside [`REORDER_WINDOW_MILLIS`].
fn reordered(at: i64, current: i64) -> bool {
    at < current && current - at <= REORDER_WINDOW_MILLIS
}

/// The end of a connection whose `connected` has not been processed (yet): it was
/// processed first by another replica, or lost. The connection existed, so both are
/// recorded, at the end's time; the late `connected` is then a redelivery.
fn ended_unseen(
    connection_id: &str,
    reason: DisconnectReason,
    at: i64,
    edge: Option<&str>,
) -> Vec<ConnectionEvent> {
    vec![
        ConnectionEvent::Connected {
            connection_id: connection_id.to_string(),
            at_millis: at,
            edge_connection_id: edge.map(str::to_string),
            observed: edge.is_some(),
        },
        ConnectionEvent::Disconnected {
            connection_id: connection_id.to_string(),
            reason,
            at_millis: at,
            edge_connection_id: edge.map(str::to_string),
        },
    ]
}

/// Applies one recorded event to the state.
pub(crate) fn evolve(state: ClientConnection, event: &ConnectionEvent) -> ClientConnection {
    match event {
        ConnectionEvent::Connected {
            connection_id,
            at_millis,
            edge_connection_id,
            ..
        } => ClientConnection::Connected {
            connection_id: connection_id.clone(),
            since_millis: *at_millis,
            edge: edge_connection_id.clone(),
        },
        ConnectionEvent::Disconnected {
            connection_id,
            reason,
            at_millis,
            edge_connection_id,
        } => ClientConnection::Disconnected {
            connection_id: connection_id.clone(),
            reason: *reason,
            at_millis: *at_millis,
            edge: edge_connection_id.clone(),
        },
        // The connection is known by the device's id from now on.
        ConnectionEvent::Reported {
            reported_connection_id,
            ..
        } => match state {
            ClientConnection::Connected {
                since_millis, edge, ..
            } => ClientConnection::Connected {
                connection_id: reported_connection_id.clone(),
                since_millis,
                edge,
            },
            other => other,
        },
    }
}

/// Parses a status payload into a connection command, or says why it must be dropped.
/// The checks run from cheapest to dearest; the first failing one decides the reason.
pub fn parse_status_payload(
    payload: &[u8],
    max_bytes: usize,
) -> Result<ConnectionCommand, DropReason> {
    if payload.len() > max_bytes {
        return Err(DropReason::Oversize);
    }
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| DropReason::MalformedJson)?;
    let obj = value.as_object().ok_or(DropReason::MalformedJson)?;
    let kind = obj
        .get("type")
        .and_then(|v| v.as_str())
        .ok_or(DropReason::UnknownType)?;
    if kind != "connected" && kind != "disconnected" {
        return Err(DropReason::UnknownType);
    }
    let at_millis = obj
        .get("at_millis")
        .and_then(|v| v.as_i64())
        .filter(|v| *v > 0)
        .ok_or(DropReason::InvalidAtMillis)?;
    let connection_id = obj
        .get("connection_id")
        .and_then(|v| v.as_str())
        .filter(|v| is_valid_id(v))
        .ok_or(DropReason::InvalidConnectionId)?
        .to_string();
    // Stamped by Cradle's edge (it overwrites whatever a device wrote there).
    let edge = match obj.get("edge_connection_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .filter(|v| is_valid_id(v))
                .ok_or(DropReason::InvalidConnectionId)?
                .to_string(),
        ),
    };
    if kind == "connected" {
        let observed =
            edge.is_some() && obj.get("observed") == Some(&serde_json::Value::Bool(true));
        return Ok(ConnectionCommand::Connect {
            connection_id,
            at_millis,
            edge,
            observed,
        });
    }
    let reason = match obj.get("reason") {
        None | Some(serde_json::Value::Null) => DisconnectReason::Lost,
        Some(v) => v
            .as_str()
            .and_then(DisconnectReason::parse)
            .ok_or(DropReason::InvalidReason)?,
    };
    Ok(ConnectionCommand::Disconnect {
        connection_id,
        reason,
        at_millis,
        edge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(events: &[ConnectionEvent]) -> ClientConnection {
        events.iter().fold(ClientConnection::default(), evolve)
    }

    fn connected(id: &str, at: i64) -> ConnectionEvent {
        ConnectionEvent::Connected {
            connection_id: id.into(),
            at_millis: at,
            edge_connection_id: None,
            observed: false,
        }
    }

    fn disconnected(id: &str, reason: DisconnectReason, at: i64) -> ConnectionEvent {
        ConnectionEvent::Disconnected {
            connection_id: id.into(),
            reason,
            at_millis: at,
            edge_connection_id: None,
        }
    }

    fn connect(id: &str, at: i64) -> ConnectionCommand {
        ConnectionCommand::Connect {
            connection_id: id.into(),
            at_millis: at,
            edge: None,
            observed: false,
        }
    }

    fn disconnect(id: &str, reason: DisconnectReason, at: i64) -> ConnectionCommand {
        ConnectionCommand::Disconnect {
            connection_id: id.into(),
            reason,
            at_millis: at,
            edge: None,
        }
    }

    use DisconnectReason::*;

    #[test]
    fn a_first_connect_records_connected() {
        let state = given(&[]);
        let then = decide(&connect("k1", 10), &state);
        assert_eq!(then, Ok(vec![connected("k1", 10)]));
    }

    #[test]
    fn a_duplicate_connect_is_a_no_op() {
        let state = given(&[connected("k1", 10)]);
        assert_eq!(decide(&connect("k1", 10), &state), Err(Ignored::Duplicate));
        assert_eq!(decide(&connect("k1", 99), &state), Err(Ignored::Duplicate));
    }

    #[test]
    fn a_disconnect_of_the_current_connection_records_disconnected() {
        let state = given(&[connected("k1", 10)]);
        assert_eq!(
            decide(&disconnect("k1", Lost, 20), &state),
            Ok(vec![disconnected("k1", Lost, 20)])
        );
    }

    #[test]
    fn a_duplicate_disconnect_is_a_no_op() {
        let state = given(&[connected("k1", 10), disconnected("k1", Clean, 20)]);
        assert_eq!(
            decide(&disconnect("k1", Clean, 20), &state),
            Err(Ignored::Duplicate)
        );
    }

    #[test]
    fn a_late_will_of_an_old_connection_after_a_reconnect_is_stale() {
        let state = given(&[
            connected("k1", 10),
            disconnected("k1", Takeover, 30),
            connected("k2", 30),
        ]);
        assert_eq!(
            decide(&disconnect("k1", Lost, 40), &state),
            Err(Ignored::Stale)
        );
        assert_eq!(
            state,
            ClientConnection::Connected {
                connection_id: "k2".into(),
                since_millis: 30,
                edge: None,
            }
        );
    }

    #[test]
    fn a_disconnect_processed_before_its_connect_records_both_and_the_connect_is_then_known() {
        // Given nothing recorded for the client (its `connected` went to another replica),
        // when its end is processed, then the connection is recorded as having existed.
        assert_eq!(
            decide(&disconnect("k1", Clean, 40), &given(&[])),
            Ok(vec![connected("k1", 40), disconnected("k1", Clean, 40)])
        );
        // The same after an older connection's end.
        let state = given(&[connected("k0", 10), disconnected("k0", Lost, 20)]);
        assert_eq!(
            decide(&disconnect("k1", Clean, 40), &state),
            Ok(vec![connected("k1", 40), disconnected("k1", Clean, 40)])
        );
        // An end older than the last one is a late report: nothing.
        assert_eq!(
            decide(&disconnect("k1", Clean, 15), &state),
            Err(Ignored::Stale)
        );
    }

    #[test]
    fn an_older_connections_connect_processed_late_inside_the_window_is_stale() {
        // Given k2 connected at 12, when k1's `connected` stamped 10 arrives (another
        // replica was slower), then k2 stays current.
        let state = given(&[connected("k2", 12)]);
        assert_eq!(decide(&connect("k1", 10), &state), Err(Ignored::Stale));
        // Beyond the window the clock is not trusted: a new connection.
        let late = 12 + REORDER_WINDOW_MILLIS + 1;
        let state = given(&[connected("k2", late)]);
        assert_eq!(
            decide(&connect("k1", 11), &state),
            Ok(vec![
                disconnected("k2", Takeover, late),
                connected("k1", late)
            ])
        );
    }

    #[test]
    fn a_device_whose_clock_lags_the_edges_reconnects_right_after_its_end() {
        // Given an end stamped by the edge at 10_000, when the device (its clock 1 s
        // behind) reconnects at once, then the new connection is recorded.
        let state = given(&[connected("k1", 5_000), disconnected("k1", Lost, 10_000)]);
        assert_eq!(
            decide(&connect("k2", 9_500), &state),
            Ok(vec![connected("k2", 9_500)])
        );
    }

    #[test]
    fn every_processing_order_of_one_clients_burst_ends_in_the_true_state() {
        // c k1 @10, d k1 @11, c k2 @12 dealt to two replicas may be processed in any order.
        let burst = [
            connect("k1", 10),
            disconnect("k1", Clean, 11),
            connect("k2", 12),
        ];
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let mut state = ClientConnection::Unknown;
            let mut keys = std::collections::HashSet::new();
            for i in order {
                let cmd = &burst[i];
                // The status writer skips a command whose own event is already logged.
                if !keys.insert((cmd.event_type(), cmd.connection_id().to_string())) {
                    continue;
                }
                if let Ok(events) = decide(cmd, &state) {
                    for e in &events {
                        keys.insert((e.event_type(), e.connection_id().to_string()));
                        state = evolve(state, e);
                    }
                }
            }
            assert!(
                matches!(&state, ClientConnection::Connected { connection_id, .. } if connection_id == "k2"),
                "order {order:?} ended in {state:?}"
            );
        }
    }

    #[test]
    fn a_reconnect_after_a_disconnect_starts_a_new_connection() {
        let state = given(&[connected("k1", 10), disconnected("k1", Lost, 20)]);
        assert_eq!(
            decide(&connect("k2", 25), &state),
            Ok(vec![connected("k2", 25)])
        );
    }

    #[test]
    fn a_connect_of_a_connection_that_already_ended_is_stale() {
        let state = given(&[connected("k1", 10), disconnected("k1", Lost, 20)]);
        assert_eq!(decide(&connect("k1", 10), &state), Err(Ignored::Stale));
    }

    #[test]
    fn a_new_connection_while_connected_takes_the_old_one_over() {
        let state = given(&[connected("k1", 10)]);
        assert_eq!(
            decide(&connect("k2", 50), &state),
            Ok(vec![disconnected("k1", Takeover, 50), connected("k2", 50)])
        );
    }

    #[test]
    fn a_new_connection_stamped_earlier_still_connects_clocks_do_not_order_connections() {
        // A device whose clock went back after a reboot.
        let state = given(&[connected("k1", 50_000), disconnected("k1", Lost, 60_000)]);
        assert_eq!(
            decide(&connect("k2", 10), &state),
            Ok(vec![connected("k2", 10)])
        );
        let state = given(&[connected("k1", 50_000)]);
        assert_eq!(
            decide(&connect("k2", 10), &state),
            Ok(vec![
                disconnected("k1", Takeover, 50_000),
                connected("k2", 50_000)
            ])
        );
    }

    #[test]
    fn a_disconnect_stamped_before_its_connect_is_clamped_to_the_connect() {
        let state = given(&[connected("k1", 100)]);
        assert_eq!(
            decide(&disconnect("k1", Lost, 90), &state),
            Ok(vec![disconnected("k1", Lost, 100)])
        );
    }

    #[test]
    fn the_decider_needs_no_clock_the_same_inputs_give_the_same_outputs() {
        let state = given(&[connected("k1", 10)]);
        let cmd = connect("k2", 20);
        assert_eq!(decide(&cmd, &state), decide(&cmd, &state));
    }

    #[test]
    fn reasons_round_trip_through_their_wire_names() {
        for r in [
            Clean,
            Lost,
            KeepaliveTimeout,
            Takeover,
            ServerShutdown,
            Kicked,
            SlowConsumer,
        ] {
            assert_eq!(DisconnectReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(DisconnectReason::parse("other"), None);
    }

    // The status payload (topics.md) parsed into a command.

    const MAX: usize = 4096;

    #[test]
    fn connected_payload_parses() {
        let cmd = parse_status_payload(
            br#"{"type":"connected","connection_id":"k1","at_millis":5}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(
            cmd,
            ConnectionCommand::Connect {
                connection_id: "k1".into(),
                at_millis: 5,
                edge: None,
                observed: false,
            }
        );
    }

    #[test]
    fn disconnected_payload_parses_with_and_without_reason() {
        let cmd = parse_status_payload(
            br#"{"type":"disconnected","connection_id":"k1","reason":"clean","at_millis":7}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(
            cmd,
            ConnectionCommand::Disconnect {
                connection_id: "k1".into(),
                reason: DisconnectReason::Clean,
                at_millis: 7,
                edge: None,
            }
        );
        let cmd = parse_status_payload(
            br#"{"type":"disconnected","connection_id":"k1","at_millis":7}"#,
            MAX,
        )
        .unwrap();
        assert!(matches!(
            cmd,
            ConnectionCommand::Disconnect {
                reason: DisconnectReason::Lost,
                ..
            }
        ));
    }

    #[test]
    fn each_bad_payload_has_its_reason() {
        let cases: [(&[u8], DropReason); 9] = [
            (b"not json", DropReason::MalformedJson),
            (b"[1,2]", DropReason::MalformedJson),
            (
                br#"{"type":"hello","connection_id":"k","at_millis":1}"#,
                DropReason::UnknownType,
            ),
            (
                br#"{"connection_id":"k","at_millis":1}"#,
                DropReason::UnknownType,
            ),
            (
                br#"{"type":"connected","connection_id":"k"}"#,
                DropReason::InvalidAtMillis,
            ),
            (
                br#"{"type":"connected","connection_id":"k","at_millis":0}"#,
                DropReason::InvalidAtMillis,
            ),
            (
                br#"{"type":"connected","connection_id":"k","at_millis":-4}"#,
                DropReason::InvalidAtMillis,
            ),
            (
                br#"{"type":"connected","connection_id":"a/b","at_millis":1}"#,
                DropReason::InvalidConnectionId,
            ),
            (
                br#"{"type":"disconnected","connection_id":"k","at_millis":1,"reason":"bored"}"#,
                DropReason::InvalidReason,
            ),
        ];
        for (payload, reason) in cases {
            assert_eq!(
                parse_status_payload(payload, MAX),
                Err(reason),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn an_oversize_payload_is_dropped_before_parsing() {
        let big = vec![b' '; MAX + 1];
        assert_eq!(parse_status_payload(&big, MAX), Err(DropReason::Oversize));
    }

    // How the edge's observation and the device's report meet (`decide_seen`).
    mod observed_and_reported {
        use super::*;

        /// What one test's log holds: its events, and the edge connections they name.
        struct Log(Vec<ConnectionEvent>);

        impl Log {
            fn state(&self) -> ClientConnection {
                self.0.iter().fold(ClientConnection::default(), evolve)
            }

            fn seen(&self, edge: &str) -> Seen {
                let has = |t: &str| {
                    self.0
                        .iter()
                        .any(|e| e.edge() == Some(edge) && e.event_type() == t)
                };
                Seen {
                    connected: has(CONNECTED),
                    reported: has(REPORTED),
                    ended: has(DISCONNECTED),
                }
            }

            /// Decides `command` against the log and appends what it records.
            fn when(
                &mut self,
                command: ConnectionCommand,
            ) -> Result<Vec<ConnectionEvent>, Ignored> {
                let seen = command.edge().map(|e| self.seen(e)).unwrap_or_default();
                let out = decide_seen(&command, &self.state(), seen);
                if let Ok(events) = &out {
                    self.0.extend(events.iter().cloned());
                }
                out
            }

            fn types(&self) -> Vec<&'static str> {
                self.0.iter().map(ConnectionEvent::event_type).collect()
            }
        }

        /// The edge's observed start of `edge`, under the Will's id `id`.
        fn observed(id: &str, edge: &str, at: i64) -> ConnectionCommand {
            ConnectionCommand::Connect {
                connection_id: id.into(),
                at_millis: at,
                edge: Some(edge.into()),
                observed: true,
            }
        }

        /// The device's own `connected` report on `edge`, stamped by the edge.
        fn report(id: &str, edge: &str, at: i64) -> ConnectionCommand {
            ConnectionCommand::Connect {
                connection_id: id.into(),
                at_millis: at,
                edge: Some(edge.into()),
                observed: false,
            }
        }

        /// An end of `edge` (the stamped Will or the edge's end status).
        fn end(id: &str, edge: &str, reason: DisconnectReason, at: i64) -> ConnectionCommand {
            ConnectionCommand::Disconnect {
                connection_id: id.into(),
                reason,
                at_millis: at,
                edge: Some(edge.into()),
            }
        }

        fn connected_as(state: &ClientConnection) -> Option<(&str, Option<&str>)> {
            match state {
                ClientConnection::Connected {
                    connection_id,
                    edge,
                    ..
                } => Some((connection_id, edge.as_deref())),
                _ => None,
            }
        }

        #[test]
        fn given_an_observed_start_when_the_device_reports_then_it_is_confirmed_not_connected_twice(
        ) {
            let mut log = Log(vec![]);
            let first = log.when(observed("k1", "e1", 10)).unwrap();
            assert!(matches!(
                &first[..],
                [ConnectionEvent::Connected { observed: true, .. }]
            ));
            log.when(report("k1", "e1", 11)).unwrap();
            log.when(end("k1", "e1", Lost, 20)).unwrap();
            assert_eq!(
                log.types(),
                [CONNECTED, REPORTED, DISCONNECTED],
                "one connection, one connected, one end"
            );
            // Redeliveries of any of them change nothing.
            assert_eq!(log.when(observed("k1", "e1", 10)), Err(Ignored::Duplicate));
            assert_eq!(log.when(report("k1", "e1", 11)), Err(Ignored::Duplicate));
            assert_eq!(log.when(end("k1", "e1", Lost, 20)), Err(Ignored::Duplicate));
        }

        #[test]
        fn given_no_report_at_all_when_the_edge_sees_start_and_end_then_both_are_recorded_under_the_edges_id(
        ) {
            let mut log = Log(vec![]);
            log.when(observed("e1", "e1", 10)).unwrap();
            assert_eq!(connected_as(&log.state()), Some(("e1", Some("e1"))));
            log.when(end("e1", "e1", KeepaliveTimeout, 50)).unwrap();
            assert_eq!(log.types(), [CONNECTED, DISCONNECTED]);
        }

        #[test]
        fn given_a_report_that_arrives_before_the_observed_start_then_the_start_confirms_nothing_new(
        ) {
            let mut log = Log(vec![]);
            log.when(report("k1", "e1", 9)).unwrap();
            assert_eq!(log.types(), [CONNECTED, REPORTED]);
            assert_eq!(log.when(observed("k1", "e1", 10)), Err(Ignored::Duplicate));
            assert_eq!(connected_as(&log.state()), Some(("k1", Some("e1"))));
        }

        #[test]
        fn given_a_device_that_reports_another_id_than_its_will_then_the_connection_takes_the_reported_id(
        ) {
            let mut log = Log(vec![]);
            log.when(observed("e1", "e1", 10)).unwrap();
            log.when(report("k1", "e1", 11)).unwrap();
            assert_eq!(connected_as(&log.state()), Some(("k1", Some("e1"))));
            // The edge's end names its own id; it ends the connection the device named.
            let ended = log.when(end("e1", "e1", Lost, 20)).unwrap();
            assert!(
                matches!(&ended[..], [ConnectionEvent::Disconnected { connection_id, .. }] if connection_id == "k1")
            );
        }

        #[test]
        fn given_the_same_will_reused_over_reconnects_then_each_connection_is_recorded_and_shown_connected(
        ) {
            // `mosquitto_pub -l` keeps one Will, and with it one connection id, for ever.
            let mut log = Log(vec![]);
            log.when(observed("k", "e1", 10)).unwrap();
            log.when(report("k", "e1", 11)).unwrap();
            log.when(end("k", "e1", Lost, 20)).unwrap();
            let second = log.when(observed("k", "e2", 30)).unwrap();
            assert!(
                matches!(&second[..], [ConnectionEvent::Connected { connection_id, .. }] if connection_id == "e2")
            );
            assert_eq!(connected_as(&log.state()), Some(("e2", Some("e2"))));
            log.when(end("k", "e2", Lost, 40)).unwrap();
            // Only the last connection's id is known to the decider: an older one's may come
            // back (each connection is still its own, by its edge id).
            log.when(observed("k", "e3", 50)).unwrap();
            assert_eq!(connected_as(&log.state()), Some(("k", Some("e3"))));
            assert_eq!(
                log.types(),
                [
                    CONNECTED,
                    REPORTED,
                    DISCONNECTED,
                    CONNECTED,
                    DISCONNECTED,
                    CONNECTED
                ]
            );
        }

        #[test]
        fn given_a_takeover_when_the_old_connections_end_and_report_arrive_late_then_nothing_more_is_recorded(
        ) {
            let mut log = Log(vec![]);
            log.when(observed("k1", "e1", 10)).unwrap();
            let took = log.when(observed("k2", "e2", 20)).unwrap();
            assert!(matches!(
                &took[..],
                [
                    ConnectionEvent::Disconnected {
                        reason: Takeover,
                        ..
                    },
                    ConnectionEvent::Connected { .. }
                ]
            ));
            assert_eq!(
                log.when(end("k1", "e1", Takeover, 20)),
                Err(Ignored::Duplicate)
            );
            assert_eq!(log.when(report("k1", "e1", 12)), Err(Ignored::Stale));
            assert_eq!(connected_as(&log.state()), Some(("k2", Some("e2"))));
        }

        #[test]
        fn given_a_restart_in_between_when_the_device_reconnects_without_reporting_then_it_is_shown_connected(
        ) {
            // The README's example: one Will, one `connected` line, a restart of Cradle.
            let mut log = Log(vec![]);
            log.when(observed("K", "e1", 10)).unwrap();
            log.when(report("K", "e1", 11)).unwrap();
            log.when(end("K", "e1", ServerShutdown, 100)).unwrap();
            // The new process's edge sees the reconnect; the device says nothing more.
            log.when(observed("K", "e2", 105)).unwrap();
            assert!(matches!(log.state(), ClientConnection::Connected { .. }));
        }

        #[test]
        fn given_an_end_processed_before_its_start_then_both_are_recorded_once() {
            let mut log = Log(vec![]);
            log.when(end("k1", "e1", Lost, 20)).unwrap();
            assert_eq!(log.types(), [CONNECTED, DISCONNECTED]);
            assert_eq!(log.when(observed("k1", "e1", 10)), Err(Ignored::Duplicate));
            assert_eq!(log.when(report("k1", "e1", 11)), Err(Ignored::Stale));
            assert_eq!(log.types(), [CONNECTED, DISCONNECTED]);
        }

        #[test]
        fn given_the_end_of_a_newer_connection_whose_start_is_not_recorded_yet_then_it_took_over_and_ended(
        ) {
            // Another replica holds e2's observed start, not committed yet.
            let mut log = Log(vec![]);
            log.when(observed("k1", "e1", 10)).unwrap();
            log.when(end("k2", "e2", Lost, 30)).unwrap();
            assert_eq!(
                log.types(),
                [CONNECTED, DISCONNECTED, CONNECTED, DISCONNECTED],
                "e1 taken over, e2 connected and ended"
            );
            assert!(matches!(log.state(), ClientConnection::Disconnected { .. }));
            assert_eq!(log.when(observed("k2", "e2", 20)), Err(Ignored::Duplicate));
            assert_eq!(log.when(report("k2", "e2", 21)), Err(Ignored::Stale));
            // An end stamped before the current connection's start is an older one's.
            let mut log = Log(vec![]);
            log.when(observed("k1", "e1", 10)).unwrap();
            assert_eq!(log.when(end("k0", "e0", Lost, 5)), Err(Ignored::Stale));
        }

        #[test]
        fn given_a_state_newer_than_the_keys_read_before_it_then_what_it_says_of_its_connection_counts_as_seen(
        ) {
            // The keys were read before another replica committed e1's start; the row after.
            let state = Log(vec![]).state();
            let mut newer = Log(vec![]);
            newer.when(observed("k1", "e1", 10)).unwrap();
            let unseen = Seen::default();
            assert_eq!(
                decide_seen(&observed("k1", "e1", 10), &newer.state(), unseen),
                Err(Ignored::Duplicate)
            );
            // The report then confirms it (its key makes a second one a conflict, not a loss).
            assert!(matches!(
                decide_seen(&report("k1", "e1", 11), &newer.state(), unseen).as_deref(),
                Ok([ConnectionEvent::Reported { .. }])
            ));
            assert!(decide_seen(&observed("k1", "e1", 10), &state, unseen).is_ok());
        }

        #[test]
        fn given_a_connection_recorded_without_an_edge_id_when_the_edge_observes_it_then_it_is_the_same_connection(
        ) {
            // Open mode: another client published the device's `connected k1` first.
            let mut log = Log(vec![connected("k1", 10)]);
            assert_eq!(log.when(observed("k1", "e1", 11)), Err(Ignored::Duplicate));
            let ended = log.when(end("k1", "e1", Lost, 20)).unwrap();
            assert!(
                matches!(&ended[..], [ConnectionEvent::Disconnected { connection_id, .. }] if connection_id == "k1")
            );
            assert_eq!(log.types(), [CONNECTED, DISCONNECTED]);
        }

        #[test]
        fn given_every_order_of_one_connections_three_messages_then_the_same_three_events() {
            let messages = [
                observed("k1", "e1", 10),
                report("k1", "e1", 11),
                end("k1", "e1", Lost, 20),
            ];
            for order in [
                [0, 1, 2],
                [1, 0, 2],
                [0, 2, 1],
                [2, 0, 1],
                [1, 2, 0],
                [2, 1, 0],
            ] {
                let mut log = Log(vec![]);
                for i in order {
                    let _ = log.when(messages[i].clone());
                }
                let connects = log.types().iter().filter(|t| **t == CONNECTED).count();
                let ends = log.types().iter().filter(|t| **t == DISCONNECTED).count();
                assert_eq!((connects, ends), (1, 1), "{order:?}: {:?}", log.types());
                assert!(
                    matches!(log.state(), ClientConnection::Disconnected { .. }),
                    "{order:?}"
                );
            }
        }
    }
}
