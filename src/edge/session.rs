//! One client connection through the edge: CONNECT and authentication, the relay loop with
//! its per-packet checks, and the end.
//!
//! One task per connection reads from the client and from the broker's link (`uplink`).
//! Frames from the client are measured and only the packets the edge must check, answer or
//! change are decoded (see `codec`); the link hands them to the broker. `admit` (CONNECT to
//! CONNACK) and `Live::finish` run boxed, so only the relay loop's state stays with an idle
//! connection. The broker never sees the client's credentials, Will or keep-alive: upstream
//! the edge connects with the namespaced client id, no Will and its own keep-alive, and
//! answers the client's PINGREQs itself.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::Instrument;

use super::acl::{may_publish, may_retain, may_subscribe, Principal};
use super::codec::{self, connack, kind, reason, FrameError, Header, Proto};
use super::lifecycle::{self, Reported, Will};
use super::uplink::{read_some, UpLink, MIN_READ};
use super::{EdgeShared, ListenerInfo, Upstream};
use crate::auth::Refusal;
use crate::domain::connection::DisconnectReason;
use crate::metrics::EdgeConnect;
use crate::rate::TokenBucket;

/// Writes `bytes` to the client and flushes (TLS and WebSocket writers buffer; for TCP the
/// flush is free).
async fn send<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}

/// Topic aliases one MQTT 5 connection may set.
const MAX_ALIASES: usize = 1024;
/// Bytes of topic those aliases may hold in all.
const MAX_ALIAS_BYTES: usize = 64 * 1024;

/// Keep-alive of the edge's upstream connections, in seconds; the edge pings well within it.
const UPSTREAM_KEEP_ALIVE: u16 = 60;
/// The edge sends PINGREQ upstream after this long without writing upstream.
const UPSTREAM_PING: Duration = Duration::from_secs(20);

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the client; MQTT 5 reason 0x04 asks for the Will anyway, and an MQTT 5
    /// Session Expiry Interval replaces the CONNECT's.
    Disconnect {
        will_fires: bool,
        session_expiry: Option<u32>,
    },
    /// The socket closed or failed without a DISCONNECT.
    Lost,
    /// Nothing from the client within 1.5 × its keep-alive.
    KeepaliveTimeout,
    /// A newer connection of the same client id.
    Takeover,
    /// Cradle is stopping.
    ServerShutdown,
    /// The edge closed it: a protocol error, a packet over the limit, too many violations.
    Kicked { v5_reason: u8 },
    /// The broker closed the upstream connection.
    UpstreamClosed,
    /// The client took nothing the edge wrote for mqtt.write_timeout_ms.
    WriteTimeout,
}

impl End {
    fn reason(self) -> DisconnectReason {
        match self {
            End::Disconnect { .. } => DisconnectReason::Clean,
            End::Lost | End::UpstreamClosed => DisconnectReason::Lost,
            End::KeepaliveTimeout => DisconnectReason::KeepaliveTimeout,
            End::Takeover => DisconnectReason::Takeover,
            End::ServerShutdown => DisconnectReason::ServerShutdown,
            End::Kicked { .. } | End::WriteTimeout => DisconnectReason::Kicked,
        }
    }

    fn will_fires(self) -> bool {
        !matches!(
            self,
            End::Disconnect {
                will_fires: false,
                ..
            }
        )
    }

    /// The MQTT 5 DISCONNECT reason the edge sends the client, if it closes the connection.
    fn v5_reason(self) -> Option<u8> {
        match self {
            End::KeepaliveTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
            End::Takeover => Some(reason::SESSION_TAKEN_OVER),
            End::ServerShutdown => Some(reason::SERVER_SHUTTING_DOWN),
            End::Kicked { v5_reason } => Some(v5_reason),
            End::UpstreamClosed => Some(reason::UNSPECIFIED),
            End::Disconnect { .. } | End::Lost | End::WriteTimeout => None,
        }
    }

    fn from_frame_error(e: FrameError) -> End {
        match e {
            FrameError::TooLarge => End::Kicked {
                v5_reason: reason::PACKET_TOO_LARGE,
            },
            FrameError::Malformed => End::Kicked {
                v5_reason: reason::PROTOCOL_ERROR,
            },
        }
    }
}

/// The CONNECT, decoded, in the form of its protocol (re-encoded upstream).
enum Connect {
    V4(v4::Connect),
    V5(Box<(v5::Connect, Option<v5::LastWill>, Option<v5::Login>)>),
}

impl Connect {
    fn client_id(&self) -> &str {
        match self {
            Connect::V4(c) => &c.client_id,
            Connect::V5(b) => &b.0.client_id,
        }
    }

    fn keep_alive(&self) -> u16 {
        match self {
            Connect::V4(c) => c.keep_alive,
            Connect::V5(b) => b.0.keep_alive,
        }
    }

    fn clean(&self) -> bool {
        match self {
            Connect::V4(c) => c.clean_session,
            Connect::V5(b) => b.0.clean_start,
        }
    }

    /// The CONNECT's MQTT 5 properties (none for MQTT 3.1.1).
    fn v5_properties(&self) -> Option<&v5::ConnectProperties> {
        match self {
            Connect::V4(_) => None,
            Connect::V5(b) => b.0.properties.as_ref(),
        }
    }

    /// The MQTT 5 Topic Alias Maximum the client accepts from the server (0: none).
    fn topic_alias_max(&self) -> u16 {
        self.v5_properties()
            .and_then(|p| p.topic_alias_max)
            .unwrap_or(0)
    }

    /// The MQTT 5 Session Expiry Interval (absent: 0); `None` for MQTT 3.1.1, whose session
    /// outlives the connection when clean session is off.
    fn session_expiry(&self) -> Option<u32> {
        match self {
            Connect::V4(_) => None,
            Connect::V5(_) => Some(
                self.v5_properties()
                    .and_then(|p| p.session_expiry_interval)
                    .unwrap_or(0),
            ),
        }
    }

    /// What the router's session for this connection follows: clean session / Clean Start,
    /// Session Expiry Interval, Topic Alias Maximum, Receive Maximum.
    fn session_options(&self) -> rumqttd::local::SessionOptions {
        rumqttd::local::SessionOptions {
            clean_session: self.clean(),
            session_expiry: self.session_expiry(),
            topic_alias_max: self.topic_alias_max(),
            receive_max: self.v5_properties().and_then(|p| p.receive_maximum),
        }
    }

    fn proto(&self) -> Proto {
        match self {
            Connect::V4(_) => Proto::V4,
            Connect::V5(_) => Proto::V5,
        }
    }

    /// The keep-alive this client is held to under `mqtt.max_keep_alive_secs` (`max`):
    /// see [`keep_alive_rule`].
    fn held_keep_alive(&self, max: u16) -> Result<KeepAlive, KeepAliveTooLong> {
        keep_alive_rule(self.proto(), self.keep_alive(), max)
    }

    /// Refuses this CONNECT ([`refuse_connect`]) with `codes` (3.1.1, MQTT 5), the Reason
    /// String only if the client's Maximum Packet Size has room for it.
    async fn refuse<W: AsyncWrite + Unpin>(&self, wr: &mut W, codes: (u8, u8)) {
        refuse_connect(wr, self.proto(), codes, self.client_max_packet()).await;
    }

    /// Which refusals carry Reason Strings (MQTT 5 §3.1.2.11.7): a DISCONNECT when the
    /// client's Maximum Packet Size has room; a PUBACK, PUBREC or SUBACK only if the client
    /// did not set Request Problem Information to 0 as well.
    fn explain(&self) -> Explain {
        let ends = has_room(self.client_max_packet());
        let asked = self
            .v5_properties()
            .and_then(|p| p.request_problem_info)
            .unwrap_or(1);
        Explain {
            ends,
            acks: ends && asked != 0,
        }
    }

    /// The MQTT 5 Maximum Packet Size the client accepts (`usize::MAX`: no limit).
    fn client_max_packet(&self) -> usize {
        self.v5_properties()
            .and_then(|p| p.max_packet_size)
            .map_or(usize::MAX, |m| m as usize)
    }

    fn login(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Connect::V4(c) => match &c.login {
                Some(l) => (Some(l.username.as_str()), Some(l.password.as_str())),
                None => (None, None),
            },
            Connect::V5(b) => match &b.2 {
                Some(l) => (Some(l.username.as_str()), Some(l.password.as_str())),
                None => (None, None),
            },
        }
    }

    /// Replaces the Will's payload (the edge stamps `from` on an inbox Will), so that the
    /// Will forwarded to an external broker is the one the edge checked.
    fn set_will_payload(&mut self, payload: Bytes) {
        match self {
            Connect::V4(c) => {
                if let Some(w) = c.last_will.as_mut() {
                    w.message = payload;
                }
            }
            Connect::V5(b) => {
                if let Some(w) = b.1.as_mut() {
                    w.message = payload;
                }
            }
        }
    }

    fn will(&self) -> Option<Will> {
        match self {
            Connect::V4(c) => c.last_will.as_ref().map(|w| Will {
                topic: w.topic.clone(),
                payload: w.message.clone(),
                qos: w.qos as u8,
                retain: w.retain,
                properties: None,
                delay_secs: 0,
            }),
            Connect::V5(b) => b.1.as_ref().map(|w| {
                let p = w.properties.as_ref();
                Will {
                    topic: String::from_utf8_lossy(&w.topic).into_owned(),
                    payload: w.message.clone(),
                    qos: w.qos as u8,
                    retain: w.retain,
                    properties: p.map(|p| Box::new(will_publish_properties(p))),
                    // Held back at most as long as the session outlives the connection.
                    delay_secs: p
                        .and_then(|p| p.delay_interval)
                        .unwrap_or(0)
                        .min(self.session_expiry().unwrap_or(0)),
                }
            }),
        }
    }

    /// The CONNECT the broker gets: namespaced client id, Cradle's own credentials for the
    /// broker (`login`; none for the embedded one), the edge's keep-alive, MQTT 5
    /// properties kept (minus enhanced authentication). The client's Will (already checked
    /// by the ACL) goes along: the external broker fires it if this replica dies; the edge
    /// ends every link it closes itself with a DISCONNECT, which discards it, and publishes
    /// the end it observed. (The embedded router gets no CONNECT frame: `UpLink::router`.)
    fn upstream(&self, client_id: &str, login: Option<&(String, String)>) -> BytesMut {
        let mut out = BytesMut::with_capacity(64);
        match self {
            Connect::V4(c) => {
                let up = v4::Connect {
                    protocol: rumqttc::mqttbytes::Protocol::V4,
                    keep_alive: UPSTREAM_KEEP_ALIVE,
                    client_id: client_id.to_string(),
                    clean_session: c.clean_session,
                    last_will: c.last_will.clone(),
                    login: login.map(|(u, p)| v4::Login::new(u, p)),
                };
                let _ = v4::Packet::Connect(up).write(&mut out, usize::MAX);
            }
            Connect::V5(b) => {
                let c = &b.0;
                let mut properties = c.properties.clone();
                if let Some(p) = properties.as_mut() {
                    p.authentication_method = None;
                    p.authentication_data = None;
                }
                let up = v5::Connect {
                    keep_alive: UPSTREAM_KEEP_ALIVE,
                    client_id: client_id.to_string(),
                    clean_start: c.clean_start,
                    properties,
                };
                let login = login.map(|(u, p)| v5::Login::new(u, p));
                let will = b.1.clone();
                let _ = v5::Packet::Connect(up, will, login).write(&mut out, None);
            }
        }
        out
    }
}

fn proto_code(proto: Proto, v4_code: u8, v5_code: u8) -> u8 {
    match proto {
        Proto::V4 => v4_code,
        Proto::V5 => v5_code,
    }
}

/// Answers a refused CONNECT with a CONNACK of the client's protocol: `v4_code` for 3.1.1,
/// `v5_code` for MQTT 5 with its Reason String when the client's Maximum Packet Size
/// (`client_max`; 0 when the CONNECT was not read) has room for one. The connection closes
/// after it.
async fn refuse_connect<W: AsyncWrite + Unpin>(
    wr: &mut W,
    proto: Proto,
    (v4_code, v5_code): (u8, u8),
    client_max: usize,
) {
    let mut out = BytesMut::with_capacity(8);
    let why = codec::reason_text(kind::CONNACK, v5_code).filter(|_| has_room(client_max));
    codec::put_connack(&mut out, proto, proto_code(proto, v4_code, v5_code), why);
    let _ = send(wr, &out).await;
}

/// Whether a client that accepts packets up to `client_max` bytes gets Reason Strings: MQTT
/// 5 forbids any property that would take a packet past the client's Maximum Packet Size,
/// and a refusal with its string stays under this.
fn has_room(client_max: usize) -> bool {
    client_max >= 256
}

/// Answers a CONNECT over `mqtt.max_connect_bytes`, judged on its fixed header and first
/// bytes (never buffered whole): MQTT 5 gets CONNACK 0x95 "packet too large", 3.1.1 (which has
/// no such code) "identifier rejected"; then the connection closes.
async fn refuse_large_connect<W: AsyncWrite + Unpin>(
    wr: &mut W,
    start: &[u8],
    peer: SocketAddr,
    shared: &EdgeShared,
) {
    if let Ok(Some(h)) = codec::header(start, usize::MAX) {
        if h.kind() == kind::CONNECT {
            let proto = codec::connect_proto(start, &h).unwrap_or(Proto::V4);
            let (v4_code, v5_code) = (
                connack::V4_IDENTIFIER_REJECTED,
                connack::V5_PACKET_TOO_LARGE,
            );
            refuse_connect(wr, proto, (v4_code, v5_code), 0).await;
        }
    }
    tracing::warn!(%peer, max = shared.settings.max_connect_bytes, "CONNECT refused: larger than mqtt.max_connect_bytes");
    shared.metrics.edge_connect(EdgeConnect::ConnectTooLarge);
}

/// The rules a Will meets beyond its topic's ACL (checked at CONNECT, since the Will is
/// published later by the edge, not through the PUBLISH path): a retained Will only on a
/// topic that may be retained, and within the account's retained quota (reserved now); a Will
/// on an inbox gets `from` = its client, like any inbox message. Refusals are CONNACK codes.
fn admit_will(
    will: &mut Will,
    principal: &Principal,
    client_id: &str,
    shared: &EdgeShared,
) -> Result<(), (u8, u8)> {
    if will.retain && !may_retain(&will.topic) {
        return Err((connack::V4_NOT_AUTHORIZED, connack::V5_RETAIN_NOT_SUPPORTED));
    }
    if super::inbox::is_inbox_topic(&will.topic) {
        will.payload = super::inbox::stamp_from(client_id, &will.payload).map_err(|_| {
            (
                connack::V4_NOT_AUTHORIZED,
                connack::V5_PAYLOAD_FORMAT_INVALID,
            )
        })?;
    }
    if will.retain {
        let account = super::retained::ledger_key(principal);
        shared
            .retained
            .admit(account, &will.topic, will.payload.len(), &shared.metrics)
            .map_err(|_| {
                shared.metrics.edge_retained_refused(true);
                (connack::V4_SERVER_UNAVAILABLE, connack::V5_QUOTA_EXCEEDED)
            })?;
    }
    Ok(())
}

/// Reads one whole frame from `rd` into the front of `buf`.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(Header, BytesMut), Option<FrameError>> {
    loop {
        if let Some(h) = codec::header(buf, max).map_err(Some)? {
            if buf.len() >= h.frame_len {
                return Ok((h, buf.split_to(h.frame_len)));
            }
        }
        buf.reserve(MIN_READ);
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

/// The client id the broker sees: namespaced by kind and account, so equal client ids of
/// two accounts (or of an anonymous client) never take each other over, and none can
/// collide with Cradle's own clients. Device ids cannot contain `|`; other ids have the
/// characters rumqttd refuses in a client id (`+ $ # /`, and `%` itself) percent-encoded.
pub(crate) fn upstream_client_id(principal: &Principal, client_id: &str) -> String {
    match principal {
        Principal::Device {
            account_id,
            client_id,
        } => format!("d|{account_id}|{client_id}"),
        Principal::Operator => format!("o|{}", escape_client_id(client_id)),
        Principal::Open => format!("open|{}", escape_client_id(client_id)),
    }
}

fn escape_client_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '+' | '$' | '#' | '/' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn random_id() -> String {
    crate::ids::random_hex(8)
}

/// Serves one client connection until it ends. A TCP stream's halves come from
/// `into_split` (no lock between them); TLS and WebSocket streams from `tokio::io::split`.
pub async fn serve<R, W>(
    rd: R,
    wr: W,
    peer: SocketAddr,
    listener: ListenerInfo,
    shared: Arc<EdgeShared>,
    pending: super::Pending,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Boxed, as is the end: reading and checking the CONNECT, authentication and the broker's
    // CONNACK need several times the room of the relay loop, and inline that room would be
    // part of every connection's task for its whole life (BENCHMARKS.md, issue 13).
    let admitted = Box::pin(admit(rd, wr, peer, listener, shared, pending)).await;
    let Some(live) = admitted else {
        return;
    };
    live.run().await;
}

/// A connection the edge admitted: authenticated, claimed in the registry, linked to the
/// broker, CONNACK sent.
struct Live<R, W> {
    conn: Conn,
    rd: R,
    wr: W,
    /// Bytes from the client not processed yet.
    dbuf: BytesMut,
    up: UpLink,
    /// Frames from the broker not processed yet.
    ubuf: BytesMut,
    claim: super::registry::Claim,
    /// 1.5 × the client's keep-alive (zero: none).
    keep_alive: Duration,
    upstream_id: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
    span: tracing::Span,
}

/// Reads the client's first frame within mqtt.connect_timeout_ms and decodes it as a CONNECT
/// of MQTT 3.1.1 or 5 (at most mqtt.max_connect_bytes, judged on the fixed header); answers
/// and counts a refusal (`None`), a keep-alive over `mqtt.max_keep_alive_secs` included.
/// Returns the bytes the client sent behind the CONNECT too, and the keep-alive it is held to.
async fn read_connect<R, W>(
    rd: &mut R,
    wr: &mut W,
    peer: SocketAddr,
    shared: &EdgeShared,
) -> Option<(Connect, BytesMut, KeepAlive)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut dbuf = BytesMut::with_capacity(MIN_READ);
    let max = shared.settings.max_packet_bytes;
    // Before authentication a client may make the edge buffer at most a CONNECT of
    // mqtt.max_connect_bytes: a larger one is refused on its fixed header.
    let max_connect = shared.settings.max_connect_bytes.min(max);
    let first = tokio::time::timeout(
        shared.settings.connect_timeout,
        read_frame(rd, &mut dbuf, max_connect),
    )
    .await;
    let (h, mut frame) = match first {
        Ok(Ok(f)) => f,
        Ok(Err(Some(FrameError::TooLarge))) => {
            refuse_large_connect(wr, &dbuf, peer, shared).await;
            return None;
        }
        Ok(Err(_)) => {
            shared.metrics.edge_connect(EdgeConnect::Malformed);
            return None;
        }
        Err(_) => {
            shared.metrics.edge_connect(EdgeConnect::Timeout);
            return None;
        }
    };
    if h.kind() != kind::CONNECT {
        shared.metrics.edge_connect(EdgeConnect::Malformed);
        return None;
    }
    let Some(proto) = codec::connect_proto(&frame, &h) else {
        // An unknown protocol level: answered as 3.1.1 does.
        let code = connack::V4_BAD_PROTOCOL;
        refuse_connect(wr, Proto::V4, (code, code), 0).await;
        shared.metrics.edge_connect(EdgeConnect::Malformed);
        return None;
    };
    let connect = match proto {
        Proto::V4 => match v4::Packet::read(&mut frame, max) {
            Ok(v4::Packet::Connect(c)) => Some(Connect::V4(c)),
            _ => None,
        },
        Proto::V5 => match v5::Packet::read(&mut frame, Some(max as u32)) {
            Ok(v5::Packet::Connect(c, w, l)) => Some(Connect::V5(Box::new((c, w, l)))),
            _ => None,
        },
    };
    let Some(connect) = connect else {
        // 3.1.1 has no "malformed" return code; the closest is "identifier rejected".
        let (v4_code, v5_code) = (connack::V4_IDENTIFIER_REJECTED, connack::V5_MALFORMED);
        refuse_connect(wr, proto, (v4_code, v5_code), 0).await;
        shared.metrics.edge_connect(EdgeConnect::Malformed);
        return None;
    };
    let Ok(keep_alive) = connect.held_keep_alive(shared.settings.max_keep_alive) else {
        let code = connack::V4_IDENTIFIER_REJECTED;
        connect.refuse(wr, (code, code)).await;
        tracing::warn!(%peer, client = connect.client_id(), keep_alive = connect.keep_alive(), "MQTT connection refused: keep-alive over mqtt.max_keep_alive_secs");
        shared.metrics.edge_connect(EdgeConnect::KeepAliveTooLong);
        return None;
    };
    Some((connect, dbuf, keep_alive))
}

/// Authenticates the CONNECT's credentials to a principal (the store query boxed: inline it
/// would size the admission future); answers and counts a refusal (`None`).
async fn authenticate<W: AsyncWrite + Unpin>(
    wr: &mut W,
    connect: &Connect,
    peer: SocketAddr,
    listener: ListenerInfo,
    shared: &EdgeShared,
) -> Option<Principal> {
    let (username, password) = connect.login();
    match Box::pin(shared.auth.connect(
        username,
        password,
        connect.client_id(),
        listener.loopback,
        Some(peer.ip()),
    ))
    .await
    {
        Ok(p) => Some(p),
        Err(refusal) => {
            let (v4_code, v5_code) = match refusal {
                Refusal::Busy => (connack::V4_SERVER_UNAVAILABLE, connack::V5_SERVER_BUSY),
                _ => (connack::V4_NOT_AUTHORIZED, connack::V5_NOT_AUTHORIZED),
            };
            connect.refuse(wr, (v4_code, v5_code)).await;
            tracing::warn!(
                %peer, listener = listener.name, username = username.unwrap_or(""),
                client = connect.client_id(), reason = refusal.as_str(),
                "MQTT connection refused: not authorized"
            );
            shared.metrics.edge_refused(refusal);
            None
        }
    }
}

/// What the checks after authentication settled: the Will (its payload as published), the
/// connection slot, the client id, and the id the edge assigned if it did.
struct Vetted {
    will: Option<Will>,
    permit: tokio::sync::OwnedSemaphorePermit,
    client_id: String,
    assigned: Option<String>,
}

/// The checks after authentication: the Will's topic, a free connection slot, the client id
/// (assigned for an empty one), the Will's other rules; answers and counts a refusal (`None`).
async fn vet<W: AsyncWrite + Unpin>(
    connect: &mut Connect,
    wr: &mut W,
    peer: SocketAddr,
    principal: &Principal,
    shared: &EdgeShared,
) -> Option<Vetted> {
    let proto = connect.proto();
    let mut will = connect.will();
    if let Some(w) = &will {
        if !may_publish(principal, &w.topic) {
            let (v4_code, v5_code) = (connack::V4_NOT_AUTHORIZED, connack::V5_NOT_AUTHORIZED);
            connect.refuse(wr, (v4_code, v5_code)).await;
            tracing::warn!(%peer, client = connect.client_id(), will_topic = %w.topic, "MQTT connection refused: Will topic not allowed");
            shared.metrics.edge_connect(EdgeConnect::WillRefused);
            return None;
        }
    }
    // The connection slot is taken only now: clients that have not authenticated cannot
    // take the slots of devices that can.
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        let (v4_code, v5_code) = (connack::V4_SERVER_UNAVAILABLE, connack::V5_QUOTA_EXCEEDED);
        connect.refuse(wr, (v4_code, v5_code)).await;
        tracing::warn!(%peer, "connection refused: mqtt.max_connections reached");
        shared.metrics.edge_connect(EdgeConnect::Limit);
        return None;
    };
    let mut assigned = None;
    let client_id = if connect.client_id().is_empty() {
        if proto == Proto::V4 && !connect.clean() {
            let (v4_code, v5_code) = (
                connack::V4_IDENTIFIER_REJECTED,
                connack::V5_CLIENT_ID_NOT_VALID,
            );
            connect.refuse(wr, (v4_code, v5_code)).await;
            shared.metrics.edge_connect(EdgeConnect::Malformed);
            return None;
        }
        let id = format!("auto-{}", random_id());
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id().to_string()
    };
    if let Some(w) = will.as_mut() {
        if let Err((code4, code5)) = admit_will(w, principal, &client_id, shared) {
            connect.refuse(wr, (code4, code5)).await;
            tracing::warn!(%peer, client = %client_id, will_topic = %w.topic, "MQTT connection refused: Will not accepted");
            shared.metrics.edge_connect(EdgeConnect::WillRefused);
            return None;
        }
        connect.set_will_payload(w.payload.clone());
    }
    Some(Vetted {
        will,
        permit,
        client_id,
        assigned,
    })
}

/// Reads and checks the CONNECT, authenticates it, claims the client id and links the
/// connection to the broker; answers and counts every refusal (`None`).
async fn admit<R, W>(
    mut rd: R,
    mut wr: W,
    peer: SocketAddr,
    listener: ListenerInfo,
    shared: Arc<EdgeShared>,
    pending: super::Pending,
) -> Option<Box<Live<R, W>>>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (mut connect, dbuf, keep_alive) = read_connect(&mut rd, &mut wr, peer, &shared).await?;
    let principal = authenticate(&mut wr, &connect, peer, listener, &shared).await?;
    let Vetted {
        will,
        permit,
        client_id,
        assigned,
    } = vet(&mut connect, &mut wr, peer, &principal, &shared).await?;
    let upstream_id = upstream_client_id(&principal, &client_id);
    let account = match &principal {
        Principal::Device { account_id, .. } => account_id.clone(),
        Principal::Operator | Principal::Open => String::new(),
    };
    let span = tracing::info_span!("mqtt", account = %account, client = %client_id, %peer, listener = listener.name);
    let opened = async {
        let mut claim = shared
            .registry
            .claim(&upstream_id, Duration::from_secs(5))
            .await;
        let conn = Conn::new(&connect, principal, will, client_id.clone(), shared.clone());
        let linked = conn
            .open(&mut wr, &connect, &upstream_id, assigned, &mut claim)
            .await;
        (conn, claim, linked)
    }
    .instrument(span.clone())
    .await;
    let (conn, claim, linked) = opened;
    // Admitted (or refused): the connection leaves the mqtt.max_pending count.
    drop(pending);
    let Some((up, ubuf)) = linked else {
        shared.registry.release(&upstream_id, claim.seq);
        return None;
    };
    // A connection with the same client id within an earlier one's Will Delay Interval:
    // that Will is not published (MQTT 5 §3.1.3.2.2).
    if shared.wills.cancel(&upstream_id) {
        tracing::debug!(client = %client_id, "delayed Will cancelled by the new connection");
    }
    Some(Box::new(Live {
        conn,
        rd,
        wr,
        dbuf,
        up,
        ubuf,
        claim,
        keep_alive: Duration::from_millis(keep_alive.secs as u64 * 1500),
        upstream_id,
        _permit: permit,
        span,
    }))
}

/// Per-connection state most devices never need.
#[derive(Default)]
struct Rare {
    /// SUBSCRIBEs forwarded with some filters removed: packet id → which filters were kept.
    pending_subs: HashMap<u16, Vec<bool>>,
    /// MQTT 3.1.1 QoS 2 publishes the edge refused and answered itself (PUBREL → PUBCOMP).
    local_qos2: HashSet<u16>,
    /// MQTT 5 topic aliases as the client set them (the edge resolves them itself).
    aliases: HashMap<u16, String>,
    /// Bytes of the topics in `aliases`.
    alias_bytes: usize,
}

/// The keep-alive a connection is held to, in seconds (0: none), and whether the CONNACK
/// tells the client so (MQTT 5 Server Keep Alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeepAlive {
    secs: u16,
    server: bool,
}

/// An MQTT 3.1.1 client asked for a longer keep-alive than `mqtt.max_keep_alive_secs`.
#[derive(Debug, PartialEq, Eq)]
struct KeepAliveTooLong;

/// The keep-alive rule (MQTT 5 §3.2.2.3.14): with a maximum `max` (0: none), a client asking
/// for no keep-alive (0) or a longer one is held to `max`; MQTT 5 is told in the CONNACK, an
/// MQTT 3.1.1 client cannot be and is refused (as Mosquitto's `max_keepalive` does).
fn keep_alive_rule(proto: Proto, asked: u16, max: u16) -> Result<KeepAlive, KeepAliveTooLong> {
    if max == 0 || (asked != 0 && asked <= max) {
        return Ok(KeepAlive {
            secs: asked,
            server: false,
        });
    }
    match proto {
        Proto::V5 => Ok(KeepAlive {
            secs: max,
            server: true,
        }),
        Proto::V4 => Err(KeepAliveTooLong),
    }
}

/// Which of the edge's MQTT 5 refusals carry a Reason String ([`Connect::explain`]).
#[derive(Clone, Copy)]
struct Explain {
    /// PUBACK, PUBREC and SUBACK refusals.
    acks: bool,
    /// DISCONNECT.
    ends: bool,
}

/// The state of one relayed connection.
struct Conn {
    proto: Proto,
    explain: Explain,
    principal: Principal,
    will: Option<Will>,
    reported: Option<Reported>,
    /// The MQTT client id (as the client sent it, or assigned).
    client_id: String,
    violations: u32,
    /// PUBLISH packets in the batch being processed (for the token bucket).
    publishes: u32,
    /// What few connections need, boxed on first use (inline it would take 150 bytes of
    /// every idle connection's task).
    rare: Option<Box<Rare>>,
    /// The PUBLISH being processed was a refused retained one (answered, not forwarded).
    retain_refused: bool,
    bucket: TokenBucket,
    shared: Arc<EdgeShared>,
}

impl Conn {
    /// Whether a SUBACK from the broker must be completed with the filters the edge refused.
    fn awaits_suback(&self) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|r| !r.pending_subs.is_empty())
    }

    fn new(
        connect: &Connect,
        principal: Principal,
        will: Option<Will>,
        client_id: String,
        shared: Arc<EdgeShared>,
    ) -> Conn {
        Conn {
            proto: connect.proto(),
            explain: connect.explain(),
            principal,
            will,
            reported: None,
            client_id,
            violations: 0,
            publishes: 0,
            rare: None,
            retain_refused: false,
            bucket: TokenBucket::new(shared.settings.publish_rate, shared.settings.publish_burst),
            shared,
        }
    }

    /// Links the connection to the broker under `upstream_id` and answers the client with
    /// the broker's CONNACK (with the client id the edge assigned, for MQTT 5). `None` when
    /// the broker is unavailable or refused (the client got its CONNACK; the claim is done).
    async fn open<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        connect: &Connect,
        upstream_id: &str,
        assigned: Option<String>,
        claim: &mut super::registry::Claim,
    ) -> Option<(UpLink, BytesMut)> {
        let shared = self.shared.clone();
        let proto = self.proto;
        let mut out = BytesMut::with_capacity(64);
        let opened = self.link(connect, upstream_id).await;
        let Some(super::uplink::Opened {
            link: up,
            connack: connack_frame,
            header: h,
            rest: ubuf,
        }) = opened
        else {
            let (v4_code, v5_code) = (
                connack::V4_SERVER_UNAVAILABLE,
                connack::V5_SERVER_UNAVAILABLE,
            );
            connect.refuse(wr, (v4_code, v5_code)).await;
            tracing::error!(broker = %shared.upstream, "broker did not accept the relayed connection");
            shared.metrics.edge_connect(EdgeConnect::BrokerUnavailable);
            claim.finished();
            return None;
        };
        let code = connack_frame.get(h.header_len + 1).copied().unwrap_or(0xff);
        if proto == Proto::V5 && code == 0 {
            self.v5_connack(&connack_frame, connect, assigned, &mut out);
        } else {
            out.extend_from_slice(&connack_frame);
        }
        if send(wr, &out).await.is_err() || code != 0 {
            if code != 0 {
                tracing::warn!(code, "broker refused the relayed connection");
                shared.metrics.edge_connect(EdgeConnect::BrokerRefused);
            }
            claim.finished();
            return None;
        }
        shared.metrics.edge_connect(EdgeConnect::Accepted);
        shared.metrics.edge_live(1);
        tracing::debug!("connected");

        Some((up, ubuf))
    }

    /// Links to the broker under `upstream_id` (a router link, or a socket that relays the
    /// CONNECT), within mqtt.connect_timeout_ms; `None` unless the broker's first frame is
    /// a CONNACK.
    async fn link(&self, connect: &Connect, upstream_id: &str) -> Option<super::uplink::Opened> {
        let shared = &self.shared;
        let proto = self.proto;
        let opened = async {
            match &shared.upstream {
                Upstream::Embedded(links) => {
                    let session = connect.session_options();
                    let max = (
                        shared.settings.max_packet_bytes,
                        connect.client_max_packet(),
                    );
                    UpLink::router(links, proto, upstream_id, session, max).await
                }
                Upstream::External(endpoint) => {
                    let frame = connect.upstream(upstream_id, endpoint.login.as_ref());
                    UpLink::socket(endpoint, &frame).await
                }
            }
        };
        tokio::time::timeout(shared.settings.connect_timeout, Box::pin(opened))
            .await
            .ok()
            .and_then(Result::ok)
            .filter(|o| o.header.kind() == kind::CONNACK)
    }

    /// Writes the broker's accepting CONNACK to an MQTT 5 client into `out`, with the edge's
    /// own rules: the Maximum Packet Size it enforces, the client id it `assigned`, and the
    /// Server Keep Alive; a CONNACK that does not decode goes as it came.
    fn v5_connack(
        &self,
        connack_frame: &BytesMut,
        connect: &Connect,
        assigned: Option<String>,
        out: &mut BytesMut,
    ) {
        let settings = &self.shared.settings;
        let mut f = connack_frame.clone();
        match v5::Packet::read(&mut f, None) {
            Ok(v5::Packet::ConnAck(mut ack)) => {
                let p = ack.properties.get_or_insert_with(empty_connack_properties);
                p.max_packet_size = u32::try_from(settings.max_packet_bytes).ok();
                p.assigned_client_identifier = assigned;
                p.server_keep_alive = connect
                    .held_keep_alive(settings.max_keep_alive)
                    .ok()
                    .filter(|k| k.server)
                    .map(|k| k.secs);
                let _ = v5::Packet::ConnAck(ack).write(out, None);
            }
            _ => out.extend_from_slice(connack_frame),
        }
    }
}

/// The relay's clocks: the client's keep-alive, when the client was last heard and the
/// broker last written to, and until when the client's reads are paused by the publish rate.
struct Clocks {
    keep_alive: Duration,
    last_dev: Instant,
    last_up_write: Instant,
    throttled_until: Option<Instant>,
}

impl Clocks {
    /// When the timer must fire next: the broker link's ping, or the client's keep-alive
    /// deadline if sooner.
    fn next_check(&self) -> Instant {
        let ping = self.last_up_write + UPSTREAM_PING;
        if self.keep_alive.is_zero() {
            ping
        } else {
            ping.min(self.last_dev + self.keep_alive)
        }
    }
}

impl<R, W> Live<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Relays, then ends the connection, in its span. Boxed: an `async fn` keeps its
    /// arguments in their own slots for its whole life (and a `mut self` twice), so the
    /// connection's 600 bytes would be stored two or three times in every idle device's task.
    async fn run(mut self: Box<Self>) {
        let span = self.span.clone();
        let end = self.relay().instrument(span.clone()).await;
        Box::pin(self.finish(end)).instrument(span).await;
    }

    /// Writes to the client within mqtt.write_timeout_ms: a client that takes nothing for
    /// that long (a subscriber that never reads while its topic is flooded) is cut, and what
    /// waits for it stays bounded by the broker's per-connection queue.
    async fn write_client(&mut self, bytes: &[u8]) -> Result<(), End> {
        let limit = self.conn.shared.settings.write_timeout;
        match tokio::time::timeout(limit, send(&mut self.wr, bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Lost),
            Err(_) => {
                self.conn.shared.metrics.edge_write_timeout();
                tracing::warn!(
                    waiting = bytes.len(),
                    "disconnecting: the client took nothing written to it within mqtt.write_timeout_ms"
                );
                Err(End::WriteTimeout)
            }
        }
    }

    /// Delivers what an external broker sent in the same read as its CONNACK (a resumed
    /// session's queued and unacknowledged messages): it waited for the broker's next bytes,
    /// which may never come.
    async fn broker_frames_behind_connack(&mut self, to_dev: &mut BytesMut) -> Result<(), End> {
        if self.ubuf.is_empty() {
            return Ok(());
        }
        self.conn.broker_frames(&mut self.ubuf, to_dev)?;
        if !to_dev.is_empty() {
            self.write_client(to_dev).await?;
            to_dev.clear();
        }
        Ok(())
    }

    /// Relays until the connection ends: the client's frames are checked and forwarded,
    /// the broker's delivered, keep-alive and the client's publish rate enforced.
    async fn relay(&mut self) -> End {
        let mut to_up = BytesMut::new();
        let mut to_dev = BytesMut::new();
        let mut clocks = Clocks {
            keep_alive: self.keep_alive,
            last_dev: Instant::now(),
            last_up_write: Instant::now(),
            throttled_until: None,
        };
        let timer = tokio::time::sleep_until(clocks.next_check());
        tokio::pin!(timer);
        let mut dev_room = MIN_READ;

        if let Err(end) = self.broker_frames_behind_connack(&mut to_dev).await {
            return end;
        }
        // Frames from the client are processed at the top of the loop: after each read, and
        // once before the first read for packets sent right behind the CONNECT.
        let mut unread = !self.dbuf.is_empty();
        loop {
            if std::mem::take(&mut unread) {
                match self
                    .device_batch(&mut to_up, &mut to_dev, &mut clocks)
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(wait)) => timer.as_mut().reset(Instant::now() + wait),
                    Err(end) => break end,
                }
            }
            // The router's frames go to the client as they are encoded, unless a SUBACK of a
            // trimmed SUBSCRIBE is due (completed by `broker_frames`); an external broker's
            // stream is always parsed (partial frames, the edge's own PINGRESPs).
            let direct = self.up.is_router() && !self.conn.awaits_suback();
            tokio::select! {
                r = read_some(&mut self.rd, &mut self.dbuf, &mut dev_room), if clocks.throttled_until.is_none() => {
                    match r {
                        Ok(0) | Err(_) => break End::Lost,
                        Ok(_) => {}
                    }
                    clocks.last_dev = Instant::now();
                    unread = true;
                }
                r = self.up.recv(if direct { &mut to_dev } else { &mut self.ubuf }) => {
                    if let Err(end) = self.deliver(r, direct, &mut to_dev).await {
                        break end;
                    }
                }
                _ = &mut timer => {
                    match self.tick(&mut clocks, &mut to_up).await {
                        Ok(next) => timer.as_mut().reset(next),
                        Err(end) => break end,
                    }
                }
                asked = self.claim.ended() => {
                    match asked {
                        DisconnectReason::Takeover => break End::Takeover,
                        DisconnectReason::ServerShutdown => break End::ServerShutdown,
                        _ => break End::Kicked { v5_reason: reason::ADMINISTRATIVE_ACTION },
                    }
                }
            }
        }
    }

    /// Processes the client's unread frames: answers go to the client, the rest to the
    /// broker; then the batch's publishes are counted against the publish rate. `Err` ends
    /// the connection; `Some(wait)`: the client's reads pause for `wait`.
    async fn device_batch(
        &mut self,
        to_up: &mut BytesMut,
        to_dev: &mut BytesMut,
        clocks: &mut Clocks,
    ) -> Result<Option<Duration>, End> {
        // One reservation of the batch's size: on the embedded broker the previous
        // batch's buffer is still shared with the packets it became, and growing from
        // empty by doubling reallocated and copied it at every step.
        to_up.reserve(self.dbuf.len());
        let step = self.conn.device_frames(&mut self.dbuf, to_up, to_dev);
        if !to_dev.is_empty() {
            self.write_client(to_dev).await?;
            to_dev.clear();
        }
        if !to_up.is_empty() {
            if self.up.send(to_up).await.is_err() {
                return Err(End::UpstreamClosed);
            }
            clocks.last_up_write = Instant::now();
        }
        if let Some(end) = step? {
            return Err(end);
        }
        let wait = self.conn.take_publish_tokens();
        if let Some(wait) = wait {
            clocks.throttled_until = Some(Instant::now() + wait);
            self.conn.shared.metrics.edge_throttled();
        }
        Ok(wait)
    }

    /// What the broker sent (`read`: what `recv` returned): parsed from `ubuf` unless it
    /// came `direct`ly into `to_dev`, then written to the client.
    async fn deliver(
        &mut self,
        read: std::io::Result<usize>,
        direct: bool,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        match read {
            Ok(0) | Err(_) => return Err(End::UpstreamClosed),
            Ok(_) => {}
        }
        if !direct {
            self.conn.broker_frames(&mut self.ubuf, to_dev)?;
        }
        if !to_dev.is_empty() {
            self.write_client(to_dev).await?;
            to_dev.clear();
        }
        Ok(())
    }

    /// The relay's timer fired: lifts an expired pause, ends a client silent past its
    /// keep-alive, pings a quiet external broker; returns when the timer fires next.
    async fn tick(&mut self, clocks: &mut Clocks, to_up: &mut BytesMut) -> Result<Instant, End> {
        let now = Instant::now();
        if clocks.throttled_until.is_some_and(|until| now >= until) {
            clocks.throttled_until = None;
        }
        if !clocks.keep_alive.is_zero() && now.duration_since(clocks.last_dev) >= clocks.keep_alive
        {
            return Err(End::KeepaliveTimeout);
        }
        if now.duration_since(clocks.last_up_write) >= UPSTREAM_PING {
            if self.up.wants_ping() {
                codec::put_pingreq(to_up);
                if self.up.send(to_up).await.is_err() {
                    return Err(End::UpstreamClosed);
                }
            }
            clocks.last_up_write = now;
        }
        let mut next = clocks.next_check();
        if let Some(until) = clocks.throttled_until {
            next = next.min(until);
        }
        Ok(next)
    }

    /// Ends the connection: tells the client why (MQTT 5), closes the link to the broker,
    /// publishes the end it observed (and the Will), and releases the client id.
    async fn finish(mut self: Box<Self>, end: End) {
        let shared = self.conn.shared.clone();
        let proto = self.conn.proto;
        let mut to_dev = BytesMut::new();
        let wr = &mut self.wr;
        // Tell the client why, when the edge ends it (MQTT 5 only; 3.1.1 servers just close).
        if proto == Proto::V5 {
            if let Some(code) = end.v5_reason() {
                let why =
                    codec::reason_text(kind::DISCONNECT, code).filter(|_| self.conn.explain.ends);
                codec::put_disconnect(&mut to_dev, Proto::V5, code, why);
                let _ = tokio::time::timeout(Duration::from_secs(1), send(wr, &to_dev)).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        // The link ends before the claim is released: the broker processes this connection's
        // end before a newer connection of the same client id (see `UpLink::close`).
        let session_expiry = match end {
            End::Disconnect { session_expiry, .. } => session_expiry,
            _ => None,
        };
        self.up
            .close(proto, matches!(end, End::UpstreamClosed), session_expiry)
            .await;

        let reason = end.reason();
        let mut publications = lifecycle::end_publications(
            self.conn.will.as_ref(),
            end.will_fires(),
            self.conn.reported.as_ref(),
            reason,
            crate::clock::now_millis(),
        );
        // A Will with a delay (the first publication, when it fires) waits for it, at most
        // as long as a DISCONNECT's new Session Expiry Interval says.
        let delay = match (&self.conn.will, end.will_fires()) {
            (Some(w), true) => w.delay_secs.min(session_expiry.unwrap_or(u32::MAX)),
            _ => 0,
        };
        if delay > 0 && !publications.is_empty() {
            let will = publications.remove(0);
            let delay = Duration::from_secs(u64::from(delay));
            if let Some(now) =
                super::wills::DelayedWills::hold(&shared, &self.upstream_id, will, delay)
            {
                tracing::warn!(
                    "delayed Wills at their bound (mqtt.max_connections): published at once"
                );
                publications.insert(0, now);
            }
        }
        for p in publications {
            Box::pin(shared.publisher.publish(p)).await;
        }
        shared.metrics.edge_live(-1);
        shared.metrics.edge_disconnect(reason);
        tracing::debug!(reason = reason.as_str(), "disconnected");
        self.claim.finished();
        shared.registry.release(&self.upstream_id, self.claim.seq);
    }
}

impl Conn {
    /// Counts the publishes of the last batch against the bucket.
    fn take_publish_tokens(&mut self) -> Option<Duration> {
        let n = std::mem::take(&mut self.publishes);
        self.bucket.take(n)
    }
}

/// A Will's MQTT 5 properties as its PUBLISH carries them (MQTT 5 §3.1.3.2: all but the
/// Will Delay Interval).
fn will_publish_properties(p: &v5::LastWillProperties) -> v5::PublishProperties {
    v5::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        subscription_identifiers: Vec::new(),
        content_type: p.content_type.clone(),
    }
}

/// The Session Expiry Interval an MQTT 5 DISCONNECT carries, if any.
fn disconnect_session_expiry(frame: BytesMut) -> Option<u32> {
    let mut frame = frame;
    match v5::Packet::read(&mut frame, None) {
        Ok(v5::Packet::Disconnect(d)) => d.properties.and_then(|p| p.session_expiry_interval),
        _ => None,
    }
}

fn empty_connack_properties() -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// Writes an MQTT 5 PUBLISH to `to_up` with its resolved `topic` and without its Topic
/// Alias; a PUBLISH that does not decode closes the connection.
fn forward_unaliased(
    frame: BytesMut,
    h: &Header,
    topic: Bytes,
    to_up: &mut BytesMut,
) -> Result<(), End> {
    let mut p = v5::Publish::read(v5_fixed(h), frame.freeze()).map_err(|_| End::Kicked {
        v5_reason: reason::PROTOCOL_ERROR,
    })?;
    p.topic = topic;
    if let Some(props) = p.properties.as_mut() {
        props.topic_alias = None;
    }
    v5::Packet::Publish(p)
        .write(to_up, None)
        .map_err(|_| End::Kicked {
            v5_reason: reason::PROTOCOL_ERROR,
        })?;
    Ok(())
}

/// Builds the mqttbytes fixed header of a frame the edge has already measured.
fn v4_fixed(h: &Header) -> rumqttc::mqttbytes::FixedHeader {
    rumqttc::mqttbytes::FixedHeader::new(h.byte1, h.header_len - 1, h.frame_len - h.header_len)
}

fn v5_fixed(h: &Header) -> v5::FixedHeader {
    v5::FixedHeader::new(h.byte1, h.header_len - 1, h.frame_len - h.header_len)
}

impl Conn {
    /// One violation more; past the limit the connection is kicked.
    fn violation(&mut self) -> Result<(), End> {
        self.violations += 1;
        if self.violations > self.shared.settings.max_violations {
            tracing::warn!(
                violations = self.violations,
                "disconnecting: too many refused packets"
            );
            return Err(End::Kicked {
                v5_reason: reason::NOT_AUTHORIZED,
            });
        }
        Ok(())
    }

    /// Processes whole frames from the client: forwards, answers or refuses each.
    fn device_frames(
        &mut self,
        buf: &mut BytesMut,
        to_up: &mut BytesMut,
        to_dev: &mut BytesMut,
    ) -> Result<Option<End>, End> {
        let max = self.shared.settings.max_packet_bytes;
        loop {
            let h = match codec::header(buf, max) {
                Ok(Some(h)) if buf.len() >= h.frame_len => h,
                Ok(_) => return Ok(None),
                Err(e) => {
                    self.shared.metrics.edge_protocol_error(e);
                    return Err(End::from_frame_error(e));
                }
            };
            let frame = buf.split_to(h.frame_len);
            match h.kind() {
                kind::PUBLISH => self.publish(frame, &h, to_up, to_dev)?,
                kind::SUBSCRIBE => self.subscribe(frame, &h, to_up, to_dev)?,
                kind::PINGREQ => codec::put_pingresp(to_dev),
                kind::DISCONNECT => {
                    let will_fires = self.proto == Proto::V5
                        && codec::disconnect_reason(&frame, &h) == reason::DISCONNECT_WITH_WILL;
                    let session_expiry = match self.proto {
                        Proto::V5 => disconnect_session_expiry(frame),
                        Proto::V4 => None,
                    };
                    return Ok(Some(End::Disconnect {
                        will_fires,
                        session_expiry,
                    }));
                }
                kind::PUBREL => {
                    let pkid = codec::packet_id(&frame, &h).map_err(End::from_frame_error)?;
                    if self
                        .rare
                        .as_mut()
                        .is_some_and(|r| r.local_qos2.remove(&pkid))
                    {
                        codec::put_ack(to_dev, kind::PUBCOMP, pkid, self.proto, 0, None);
                    } else {
                        to_up.extend_from_slice(&frame);
                    }
                }
                kind::PUBACK | kind::PUBREC | kind::PUBCOMP | kind::UNSUBSCRIBE => {
                    to_up.extend_from_slice(&frame)
                }
                _ => {
                    self.shared
                        .metrics
                        .edge_protocol_error(FrameError::Malformed);
                    return Err(End::Kicked {
                        v5_reason: reason::PROTOCOL_ERROR,
                    });
                }
            }
        }
    }

    /// One PUBLISH from the client: its topic resolved and checked (ACL, retained rules,
    /// inbox stamp), then forwarded, or answered and refused.
    fn publish(
        &mut self,
        frame: BytesMut,
        h: &Header,
        to_up: &mut BytesMut,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        self.publishes += 1;
        let proto = self.proto;
        let v = codec::publish_view(&frame, h, proto).map_err(End::from_frame_error)?;
        let (qos, pkid) = (v.qos, v.pkid);
        if qos == 2 {
            // A new QoS 2 flow with this packet id: any earlier refused one with it is over,
            // and this one's PUBREL belongs to whoever handles this PUBLISH.
            if let Some(r) = self.rare.as_mut() {
                r.local_qos2.remove(&pkid);
            }
        }
        let resolved = self.resolve_topic(v.alias, v.topic)?;
        let topic: &str = &resolved;
        if !may_publish(&self.principal, topic) {
            self.shared.metrics.edge_acl_drop(super::AclDrop::Publish);
            tracing::warn!(topic, "PUBLISH refused: not allowed for this client");
            self.answer_refused(qos, pkid, reason::NOT_AUTHORIZED, to_dev);
            return self.violation();
        }
        if h.byte1 & 0x01 != 0 {
            self.admit_retained(topic, v.payload.len(), qos, pkid, to_dev)?;
            if self.retain_refused {
                self.retain_refused = false;
                return Ok(());
            }
        }
        if topic.ends_with("/status") {
            lifecycle::observe_status(&mut self.reported, &self.client_id, topic, v.payload);
        }
        // Inbox messages carry `from` = the authenticated sender, whatever the sender wrote.
        if let Some(stamped) =
            super::inbox::stamp_publish(&frame, h, proto, topic, v.payload, &self.client_id)
        {
            let refused = match stamped {
                Ok(out) => {
                    to_up.extend_from_slice(&out);
                    return Ok(());
                }
                Err(drop) => drop,
            };
            self.shared.metrics.inbox_drop(refused);
            tracing::warn!(topic, reason = refused.as_str(), "inbox message dropped");
            let code = super::inbox::PAYLOAD_FORMAT_INVALID;
            self.answer_refused(qos, pkid, code, to_dev);
            return Ok(());
        }
        if v.alias.is_none() {
            to_up.extend_from_slice(&frame);
            return Ok(());
        }
        // MQTT 5 alias: forward the resolved topic without the alias, so the broker's alias
        // table can never disagree with what the edge checked.
        let topic = Bytes::copy_from_slice(topic.as_bytes());
        drop(resolved); // it may borrow `frame`, which goes on below
        forward_unaliased(frame, h, topic, to_up)
    }

    /// The topic a PUBLISH means: its own, or the one its MQTT 5 alias stands for (an alias
    /// given with a topic is recorded). A missing topic or an unknown or zero alias closes
    /// the connection.
    fn resolve_topic<'a>(
        &mut self,
        alias: Option<u16>,
        topic: &'a str,
    ) -> Result<std::borrow::Cow<'a, str>, End> {
        Ok(match alias {
            None if topic.is_empty() => {
                return Err(End::Kicked {
                    v5_reason: reason::PROTOCOL_ERROR,
                })
            }
            None => topic.into(),
            Some(0) => {
                return Err(End::Kicked {
                    v5_reason: reason::TOPIC_ALIAS_INVALID,
                })
            }
            Some(alias) if topic.is_empty() => {
                match self.rare.as_ref().and_then(|r| r.aliases.get(&alias)) {
                    Some(t) => t.clone().into(),
                    None => {
                        return Err(End::Kicked {
                            v5_reason: reason::TOPIC_ALIAS_INVALID,
                        })
                    }
                }
            }
            Some(alias) => {
                // Set even when the PUBLISH is refused below: the client now means that topic
                // by this alias, and its later uses must be refused too, not delivered to the
                // alias's previous topic. Bounded in count and bytes.
                self.set_alias(alias, topic)?;
                topic.into()
            }
        })
    }

    /// Records an MQTT 5 topic alias the client set: at most [`MAX_ALIASES`] aliases and
    /// [`MAX_ALIAS_BYTES`] bytes of their topics per connection; beyond either the connection
    /// is closed (DISCONNECT 0x94 topic alias invalid).
    fn set_alias(&mut self, alias: u16, topic: &str) -> Result<(), End> {
        let rare = self.rare.get_or_insert_with(Default::default);
        let old = rare.aliases.get(&alias).map_or(0, String::len);
        let bytes = rare.alias_bytes - old + topic.len();
        if (old == 0 && rare.aliases.len() >= MAX_ALIASES) || bytes > MAX_ALIAS_BYTES {
            return Err(End::Kicked {
                v5_reason: reason::TOPIC_ALIAS_INVALID,
            });
        }
        rare.aliases.insert(alias, topic.to_string());
        rare.alias_bytes = bytes;
        Ok(())
    }

    /// Answers a PUBLISH the edge refused or dropped: PUBACK for QoS 1, PUBREC for QoS 2 (MQTT
    /// 5 with `code`), and for QoS 2 remembers the packet id so that the edge completes the
    /// client's PUBREL itself (on either protocol; MQTT 5 ends the flow on a PUBREC with an
    /// error code, but a client may still send PUBREL, which the broker never saw).
    fn answer_refused(&mut self, qos: u8, pkid: u16, code: u8, to_dev: &mut BytesMut) {
        let why = codec::reason_text(kind::PUBACK, code).filter(|_| self.explain.acks);
        match qos {
            1 => codec::put_ack(to_dev, kind::PUBACK, pkid, self.proto, code, why),
            2 => {
                codec::put_ack(to_dev, kind::PUBREC, pkid, self.proto, code, why);
                self.rare
                    .get_or_insert_with(Default::default)
                    .local_qos2
                    .insert(pkid);
            }
            _ => {}
        }
    }

    /// Checks a retained PUBLISH against the topic contract and the account's retained quota.
    /// A refusal is answered (MQTT 5: reason 0x83 for a topic that is never retained, 0x97
    /// over the quota; 3.1.1 acknowledges) and sets `retain_refused`; a retained PUBLISH on a
    /// never-retained topic also counts as a violation.
    fn admit_retained(
        &mut self,
        topic: &str,
        payload_len: usize,
        qos: u8,
        pkid: u16,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        let account = super::retained::ledger_key(&self.principal);
        let (code, violation) = if !may_retain(topic) {
            tracing::warn!(
                topic,
                "retained PUBLISH refused: this topic is never retained"
            );
            (reason::IMPLEMENTATION_SPECIFIC, true)
        } else {
            match self
                .shared
                .retained
                .admit(account, topic, payload_len, &self.shared.metrics)
            {
                Ok(()) => return Ok(()),
                Err(super::retained::RetainRefused::Quota) => {
                    tracing::warn!(
                        topic,
                        "retained PUBLISH refused: the account's retained quota is full"
                    );
                    (reason::QUOTA_EXCEEDED, false)
                }
            }
        };
        self.shared.metrics.edge_retained_refused(!violation);
        self.retain_refused = true;
        self.answer_refused(qos, pkid, code, to_dev);
        if violation {
            self.violation()?;
        }
        Ok(())
    }

    fn subscribe(
        &mut self,
        frame: BytesMut,
        h: &Header,
        to_up: &mut BytesMut,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        let bytes = frame.freeze();
        let malformed = End::Kicked {
            v5_reason: reason::PROTOCOL_ERROR,
        };
        let mask = match self.proto {
            Proto::V4 => {
                let mut s =
                    v4::Subscribe::read(v4_fixed(h), bytes.clone()).map_err(|_| malformed)?;
                let Some(mask) = self.filter_mask(s.filters.iter().map(|f| f.path.as_str())) else {
                    to_up.extend_from_slice(&bytes);
                    return Ok(());
                };
                if mask.iter().all(|ok| !ok) {
                    let codes = vec![v4::SubscribeReasonCode::Failure; mask.len()];
                    let _ = v4::SubAck::new(s.pkid, codes).write(to_dev);
                } else {
                    let mut keep = mask.iter();
                    s.filters.retain(|_| *keep.next().unwrap_or(&false));
                    let _ = s.write(to_up);
                    self.rare
                        .get_or_insert_with(Default::default)
                        .pending_subs
                        .insert(s.pkid, mask.clone());
                }
                mask
            }
            Proto::V5 => {
                let mut s =
                    v5::Subscribe::read(v5_fixed(h), bytes.clone()).map_err(|_| malformed)?;
                let Some(mask) = self.filter_mask(s.filters.iter().map(|f| f.path.as_str())) else {
                    to_up.extend_from_slice(&bytes);
                    return Ok(());
                };
                if mask.iter().all(|ok| !ok) {
                    let ack = v5::SubAck {
                        pkid: s.pkid,
                        return_codes: vec![v5::SubscribeReasonCode::NotAuthorized; mask.len()],
                        properties: self.explain_suback(None),
                    };
                    let _ = ack.write(to_dev);
                } else {
                    let mut keep = mask.iter();
                    s.filters.retain(|_| *keep.next().unwrap_or(&false));
                    let _ = s.write(to_up);
                    self.rare
                        .get_or_insert_with(Default::default)
                        .pending_subs
                        .insert(s.pkid, mask.clone());
                }
                mask
            }
        };
        for _ in mask.iter().filter(|ok| !**ok) {
            self.violation()?;
        }
        Ok(())
    }

    /// Which of a SUBSCRIBE's filters this client may use; `None` when all may (the packet
    /// passes unchanged). Each refused filter is logged and counted.
    fn filter_mask<'a>(&self, filters: impl Iterator<Item = &'a str>) -> Option<Vec<bool>> {
        let mut refused = false;
        let mask = filters
            .map(|filter| {
                let ok = may_subscribe(&self.principal, filter);
                if !ok {
                    refused = true;
                    self.shared.metrics.edge_acl_drop(super::AclDrop::Subscribe);
                    tracing::warn!(
                        filter,
                        "SUBSCRIBE filter refused: not allowed for this client"
                    );
                }
                ok
            })
            .collect();
        refused.then_some(mask)
    }

    /// Processes whole frames from the broker: swallows the edge's own PINGRESPs and
    /// completes SUBACKs of SUBSCRIBEs the edge trimmed.
    fn broker_frames(&mut self, buf: &mut BytesMut, to_dev: &mut BytesMut) -> Result<(), End> {
        loop {
            let h = match codec::header(buf, usize::MAX) {
                Ok(Some(h)) if buf.len() >= h.frame_len => h,
                Ok(_) => return Ok(()),
                Err(_) => return Err(End::UpstreamClosed),
            };
            let frame = buf.split_to(h.frame_len);
            match h.kind() {
                kind::PINGRESP => {}
                kind::SUBACK
                    if self
                        .rare
                        .as_ref()
                        .is_some_and(|r| !r.pending_subs.is_empty()) =>
                {
                    let pkid = codec::packet_id(&frame, &h).map_err(|_| End::UpstreamClosed)?;
                    match self
                        .rare
                        .as_mut()
                        .and_then(|r| r.pending_subs.remove(&pkid))
                    {
                        Some(mask) => self.complete_suback(frame, &h, &mask, to_dev)?,
                        None => to_dev.extend_from_slice(&frame),
                    }
                }
                _ => to_dev.extend_from_slice(&frame),
            }
        }
    }

    /// The properties of a SUBACK that refuses a filter: the broker's, with the refusal's
    /// Reason String when the client asked for them.
    fn explain_suback(
        &self,
        properties: Option<v5::SubAckProperties>,
    ) -> Option<v5::SubAckProperties> {
        if !self.explain.acks {
            return properties;
        }
        let mut properties = properties.unwrap_or(v5::SubAckProperties {
            reason_string: None,
            user_properties: Vec::new(),
        });
        properties.reason_string =
            codec::reason_text(kind::SUBACK, reason::NOT_AUTHORIZED).map(String::from);
        Some(properties)
    }

    fn complete_suback(
        &self,
        frame: BytesMut,
        h: &Header,
        mask: &[bool],
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        let bytes = frame.freeze();
        match self.proto {
            Proto::V4 => {
                let ack = v4::SubAck::read(v4_fixed(h), bytes).map_err(|_| End::UpstreamClosed)?;
                let mut granted = ack.return_codes.into_iter();
                let codes = mask
                    .iter()
                    .map(|ok| match ok {
                        true => granted.next().unwrap_or(v4::SubscribeReasonCode::Failure),
                        false => v4::SubscribeReasonCode::Failure,
                    })
                    .collect();
                let _ = v4::SubAck::new(ack.pkid, codes).write(to_dev);
            }
            Proto::V5 => {
                let ack = v5::SubAck::read(v5_fixed(h), bytes).map_err(|_| End::UpstreamClosed)?;
                let mut granted = ack.return_codes.into_iter();
                let codes = mask
                    .iter()
                    .map(|ok| match ok {
                        true => granted
                            .next()
                            .unwrap_or(v5::SubscribeReasonCode::Unspecified),
                        false => v5::SubscribeReasonCode::NotAuthorized,
                    })
                    .collect();
                let _ = v5::SubAck {
                    pkid: ack.pkid,
                    return_codes: codes,
                    properties: self.explain_suback(ack.properties),
                }
                .write(to_dev);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Given `mqtt.max_keep_alive_secs`, when a client asks for a keep-alive, then it keeps
    /// its own within the maximum; MQTT 5 is held to (and told) the maximum beyond it or for
    /// none; MQTT 3.1.1 is refused; without a maximum every client keeps its own.
    #[test]
    fn the_keep_alive_rule() {
        let own = |secs| {
            Ok(KeepAlive {
                secs,
                server: false,
            })
        };
        let server = |secs| Ok(KeepAlive { secs, server: true });
        assert_eq!(keep_alive_rule(Proto::V5, 30, 60), own(30));
        assert_eq!(keep_alive_rule(Proto::V4, 60, 60), own(60));
        assert_eq!(keep_alive_rule(Proto::V5, 600, 60), server(60));
        assert_eq!(keep_alive_rule(Proto::V5, 0, 60), server(60));
        assert_eq!(keep_alive_rule(Proto::V4, 600, 60), Err(KeepAliveTooLong));
        assert_eq!(keep_alive_rule(Proto::V4, 0, 60), Err(KeepAliveTooLong));
        assert_eq!(keep_alive_rule(Proto::V4, 0, 0), own(0));
        assert_eq!(keep_alive_rule(Proto::V5, 65535, 0), own(65535));
    }

    #[test]
    fn upstream_ids_of_two_accounts_and_open_mode_never_collide() {
        let a = Principal::Device {
            account_id: "a".into(),
            client_id: "c".into(),
        };
        let b = Principal::Device {
            account_id: "b".into(),
            client_id: "c".into(),
        };
        let ids = [
            upstream_client_id(&a, "c"),
            upstream_client_id(&b, "c"),
            upstream_client_id(&Principal::Open, "c"),
            upstream_client_id(&Principal::Operator, "c"),
        ];
        for (i, x) in ids.iter().enumerate() {
            assert!(!"+$#/".chars().any(|ch| x.contains(ch)), "{x}");
            assert!(ids[..i].iter().all(|y| y != x), "{ids:?}");
        }
    }

    #[test]
    fn open_ids_with_characters_the_broker_refuses_are_escaped() {
        assert_eq!(
            upstream_client_id(&Principal::Open, "mosq/a+b%"),
            "open|mosq%2Fa%2Bb%25"
        );
    }
}
