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
    },
    /// Record that `connection_id` ended at `at_millis` for `reason`.
    Disconnect {
        connection_id: String,
        reason: DisconnectReason,
        at_millis: i64,
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
            Self::Connect { .. } => CONNECTED,
            Self::Disconnect { .. } => DISCONNECTED,
        }
    }
}

/// Stored type name of [`ConnectionEvent::Connected`].
pub(crate) const CONNECTED: &str = "connection.connected";
/// Stored type name of [`ConnectionEvent::Disconnected`].
pub(crate) const DISCONNECTED: &str = "connection.disconnected";
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
    },
    /// `connection.disconnected`
    #[serde(rename = "connection.disconnected")]
    Disconnected {
        connection_id: String,
        reason: DisconnectReason,
        at_millis: i64,
    },
}

impl ConnectionEvent {
    /// Stored type name.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Connected { .. } => CONNECTED,
            Self::Disconnected { .. } => DISCONNECTED,
        }
    }

    /// The connection the event is about.
    pub fn connection_id(&self) -> &str {
        match self {
            Self::Connected { connection_id, .. } | Self::Disconnected { connection_id, .. } => {
                connection_id
            }
        }
    }

    /// When it happened, on the observer's clock.
    pub fn at_millis(&self) -> i64 {
        match self {
            Self::Connected { at_millis, .. } | Self::Disconnected { at_millis, .. } => *at_millis,
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
    },
    /// The client's last connection ended.
    Disconnected {
        connection_id: String,
        reason: DisconnectReason,
        at_millis: i64,
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

/// Decides which events `command` records given `state`: one table per command.
pub fn decide(
    command: &ConnectionCommand,
    state: &ClientConnection,
) -> Result<Vec<ConnectionEvent>, Ignored> {
    match command {
        ConnectionCommand::Connect {
            connection_id,
            at_millis,
        } => decide_connect(connection_id, *at_millis, state),
        ConnectionCommand::Disconnect {
            connection_id,
            reason,
            at_millis,
        } => decide_disconnect(connection_id, *reason, *at_millis, state),
    }
}

/// Decides a `connected` of `connection_id` stamped `at_millis` given `state`.
fn decide_connect(
    connection_id: &str,
    at_millis: i64,
    state: &ClientConnection,
) -> Result<Vec<ConnectionEvent>, Ignored> {
    use ClientConnection as S;
    match state {
        S::Unknown => Ok(vec![ConnectionEvent::Connected {
            connection_id: connection_id.to_string(),
            at_millis,
        }]),
        S::Connected {
            connection_id: cur, ..
        } if cur == connection_id => Err(Ignored::Duplicate),
        S::Connected { since_millis, .. } if reordered(at_millis, *since_millis) => {
            // An older connection's `connected`, processed after the newer one's.
            Err(Ignored::Stale)
        }
        S::Connected {
            connection_id: cur,
            since_millis,
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
                },
                ConnectionEvent::Connected {
                    connection_id: connection_id.to_string(),
                    at_millis: at,
                },
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
        S::Disconnected { .. } => Ok(vec![ConnectionEvent::Connected {
            connection_id: connection_id.to_string(),
            at_millis,
        }]),
    }
}

/// Decides a `disconnected` of `connection_id` for `reason` stamped `at_millis` given `state`.
fn decide_disconnect(
    connection_id: &str,
    reason: DisconnectReason,
    at_millis: i64,
    state: &ClientConnection,
) -> Result<Vec<ConnectionEvent>, Ignored> {
    use ClientConnection as S;
    match state {
        S::Connected {
            connection_id: cur,
            since_millis,
        } if cur == connection_id => Ok(vec![ConnectionEvent::Disconnected {
            connection_id: connection_id.to_string(),
            reason,
            // A disconnect cannot precede its connect, whatever the clocks say.
            at_millis: at_millis.max(*since_millis),
        }]),
        S::Disconnected {
            connection_id: last,
            ..
        } if last == connection_id => Err(Ignored::Duplicate),
        S::Unknown => Ok(ended_unseen(connection_id, reason, at_millis)),
        S::Disconnected {
            at_millis: ended, ..
        } if at_millis >= *ended => Ok(ended_unseen(connection_id, reason, at_millis)),
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
fn ended_unseen(connection_id: &str, reason: DisconnectReason, at: i64) -> Vec<ConnectionEvent> {
    vec![
        ConnectionEvent::Connected {
            connection_id: connection_id.to_string(),
            at_millis: at,
        },
        ConnectionEvent::Disconnected {
            connection_id: connection_id.to_string(),
            reason,
            at_millis: at,
        },
    ]
}

/// Applies one recorded event to the state.
pub(crate) fn evolve(_state: ClientConnection, event: &ConnectionEvent) -> ClientConnection {
    match event {
        ConnectionEvent::Connected {
            connection_id,
            at_millis,
        } => ClientConnection::Connected {
            connection_id: connection_id.clone(),
            since_millis: *at_millis,
        },
        ConnectionEvent::Disconnected {
            connection_id,
            reason,
            at_millis,
        } => ClientConnection::Disconnected {
            connection_id: connection_id.clone(),
            reason: *reason,
            at_millis: *at_millis,
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
    if kind == "connected" {
        return Ok(ConnectionCommand::Connect {
            connection_id,
            at_millis,
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
        }
    }

    fn disconnected(id: &str, reason: DisconnectReason, at: i64) -> ConnectionEvent {
        ConnectionEvent::Disconnected {
            connection_id: id.into(),
            reason,
            at_millis: at,
        }
    }

    fn connect(id: &str, at: i64) -> ConnectionCommand {
        ConnectionCommand::Connect {
            connection_id: id.into(),
            at_millis: at,
        }
    }

    fn disconnect(id: &str, reason: DisconnectReason, at: i64) -> ConnectionCommand {
        ConnectionCommand::Disconnect {
            connection_id: id.into(),
            reason,
            at_millis: at,
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
                since_millis: 30
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
                at_millis: 5
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
                at_millis: 7
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
}
