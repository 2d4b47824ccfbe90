//! The legacy WebSocket frame protocol: JSON text frames, every server frame numbered.
//! `docs/websocket.md` documents each frame, field, error and close code.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::topics::is_valid_id;

/// Close codes the server uses.
pub mod close {
    /// Normal closure (the client said goodbye, or the server is shutting down).
    pub(crate) const NORMAL: u16 = 1000;
    /// Repeated invalid frames or rate-limit abuse.
    pub(crate) const POLICY: u16 = 4008;
    /// The session to resume expired between the resume check and the new socket's
    /// registration; no session was created. Reconnect without `resume_from`.
    pub(crate) const SESSION_EXPIRED: u16 = 4100;
    /// `resume_from` is older than the replay buffer holds: do a cold catch-up over the HTTP
    /// API (`/v1/accounts/{account}/clients`, `/baby-stations`) and reconnect without it.
    pub(crate) const RESUME_TOO_OLD: u16 = 4101;
    /// The client did not read its frames fast enough (`slow_consumer`).
    pub(crate) const SLOW_CONSUMER: u16 = 4102;
    /// No frame or pong within the heartbeat timeout.
    pub(crate) const HEARTBEAT_TIMEOUT: u16 = 4103;
    /// A newer socket resumed this session.
    pub(crate) const REPLACED: u16 = 4104;
    /// Cradle is restarting (graceful shutdown with the embedded broker) and handed the
    /// session over through the store: resume it (same `connection_id`, `resume_from`) once
    /// Cradle is back, within the resume window.
    pub(crate) const SERVICE_RESTART: u16 = 1012;
    /// A frame over `websocket.max_frame_bytes` (RFC 6455's "message too big"): the socket
    /// is closed and the session waits for a resume, like a drop.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// The token that opened the session was revoked, or its account deleted: the session
    /// ended for good; do not reconnect with that token.
    pub(crate) const REVOKED: u16 = 4010;
    /// An administrator disconnected the client: the session ended for good (a new one may
    /// be opened, unless the client is banned).
    pub(crate) const ADMIN_DISCONNECT: u16 = 4011;

    /// The reason text sent with `code` (docs/websocket.md, "Close codes"): every close
    /// Cradle initiates carries its code and this reason.
    pub(crate) fn reason(code: u16) -> &'static str {
        match code {
            NORMAL => "normal closure",
            POLICY => "too many refused frames",
            SESSION_EXPIRED => "session expired: connect without resume parameters",
            RESUME_TOO_OLD => "resume_from outside the replay buffer: catch up over HTTP",
            SLOW_CONSUMER => "slow consumer",
            HEARTBEAT_TIMEOUT => "heartbeat timeout: resume",
            REPLACED => "resumed elsewhere",
            SERVICE_RESTART => "service restart: resume",
            TOO_BIG => "frame over websocket.max_frame_bytes: resume",
            REVOKED => "credential revoked",
            ADMIN_DISCONNECT => "disconnected by an administrator",
            _ => "",
        }
    }
}

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Signalling for another client of the account.
    Signal {
        /// Target client id.
        to: String,
        /// Target connection, when the sender knows it.
        #[serde(default)]
        to_connection: Option<String>,
        /// Opaque signalling payload (SDP, ICE candidate, …).
        data: Value,
    },
    /// Application heartbeat from the client; answered with `pong`.
    Ping,
    /// Answer to the server's `ping`.
    Pong,
}

/// Why a client frame was refused (sent back as an `error` frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Stable code.
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
}

/// Parses one text frame from the client.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
        code: "invalid_json",
        message: e.to_string(),
    })?;
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    if !matches!(kind, "signal" | "ping" | "pong") {
        return Err(FrameError {
            code: "unknown_type",
            message: format!("unknown frame type `{kind}` (expected signal, ping or pong)"),
        });
    }
    let frame: ClientFrame = serde_json::from_value(value).map_err(|e| FrameError {
        code: "invalid_frame",
        message: e.to_string(),
    })?;
    if let ClientFrame::Signal {
        to, to_connection, ..
    } = &frame
    {
        if !is_valid_id(to) || to_connection.as_deref().is_some_and(|c| !is_valid_id(c)) {
            return Err(FrameError {
                code: "invalid_frame",
                message: "`to` and `to_connection` must be 1-128 of A-Z a-z 0-9 - _ . : @".into(),
            });
        }
    }
    Ok(frame)
}

/// A frame to the client, before its `seq` is stamped.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame of every socket (also after a resume).
    Hello {
        /// The account.
        account_id: String,
        /// The client.
        client_id: String,
        /// This session's connection id (give it back with `resume_from`).
        connection_id: String,
        /// Whether this socket resumed an earlier one.
        resumed: bool,
        /// Seconds between the server's heartbeats.
        heartbeat_secs: u64,
        /// Seconds a dropped session waits for a resume.
        resume_window_secs: u64,
        /// This session's resume secret: give it back with `resume_secret` to resume from a
        /// socket without the token that opened the session. Sent in this session's `hello`
        /// only, never to other sessions.
        resume_secret: String,
    },
    /// Signalling from another client of the account.
    Signal {
        /// Sender client id.
        from: String,
        /// Sender connection id.
        from_connection: Option<String>,
        /// Payload as sent.
        data: Value,
    },
    /// A client of the account connected or disconnected.
    Presence {
        /// The client.
        client_id: String,
        /// Its connection.
        connection_id: String,
        /// Whether it is connected now.
        connected: bool,
        /// Why it disconnected.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The account's baby-station list changed (the whole new list).
    BabyStations {
        /// Same shape as `GET /v1/accounts/{account}/baby-stations`.
        baby_stations: Value,
    },
    /// Application heartbeat; answer with `{"type":"pong"}`.
    Ping,
    /// Answer to the client's `ping`.
    Pong,
    /// A frame was refused.
    Error {
        /// Stable code.
        code: String,
        /// Detail.
        message: String,
    },
}

/// The text of `frame` with its `seq` (fields in name order).
pub fn stamp(seq: u64, frame: &ServerFrame) -> String {
    // Invariant: every ServerFrame derives Serialize over strings, numbers, bools and
    // serde_json values (maps with string keys), which serde_json always serialises.
    let mut value = serde_json::to_value(frame).expect("frames serialise");
    let mut out = serde_json::Map::with_capacity(8);
    out.insert("seq".into(), seq.into());
    if let Value::Object(fields) = &mut value {
        out.append(fields);
    }
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_ping_and_pong_parse() {
        assert_eq!(
            parse_client_frame(r#"{"type":"signal","to":"baby","data":{"sdp":"x"}}"#).unwrap(),
            ClientFrame::Signal {
                to: "baby".into(),
                to_connection: None,
                data: serde_json::json!({"sdp":"x"})
            }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"pong"}"#).unwrap(),
            ClientFrame::Pong
        );
    }

    #[test]
    fn bad_frames_get_a_code() {
        assert_eq!(parse_client_frame("{").unwrap_err().code, "invalid_json");
        assert_eq!(
            parse_client_frame(r#"{"type":"dance"}"#).unwrap_err().code,
            "unknown_type"
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"signal","data":1}"#)
                .unwrap_err()
                .code,
            "invalid_frame"
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"signal","to":"a/b","data":1}"#)
                .unwrap_err()
                .code,
            "invalid_frame"
        );
    }

    #[test]
    fn server_frames_carry_seq_first() {
        let text = stamp(7, &ServerFrame::Ping);
        assert_eq!(text, r#"{"seq":7,"type":"ping"}"#);
    }
}
