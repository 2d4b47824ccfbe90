//! CONNECT to CONNACK: reading and checking the CONNECT, authentication, the checks after
//! it (Will, connection slot, client id), the keep-alive rule, and the refusals.

use super::*;
use crate::domain::control::Owner;
use crate::edge::registry::ConnDetails;

/// The CONNECT, decoded, in the form of its protocol (re-encoded upstream).
pub(super) enum Connect {
    V4(v4::Connect),
    V5(Box<(v5::Connect, Option<v5::LastWill>, Option<v5::Login>)>),
}

impl Connect {
    pub(super) fn client_id(&self) -> &str {
        match self {
            Connect::V4(c) => &c.client_id,
            Connect::V5(b) => &b.0.client_id,
        }
    }

    pub(super) fn keep_alive(&self) -> u16 {
        match self {
            Connect::V4(c) => c.keep_alive,
            Connect::V5(b) => b.0.keep_alive,
        }
    }

    pub(super) fn clean(&self) -> bool {
        match self {
            Connect::V4(c) => c.clean_session,
            Connect::V5(b) => b.0.clean_start,
        }
    }

    /// The CONNECT's MQTT 5 properties (none for MQTT 3.1.1).
    pub(super) fn v5_properties(&self) -> Option<&v5::ConnectProperties> {
        match self {
            Connect::V4(_) => None,
            Connect::V5(b) => b.0.properties.as_ref(),
        }
    }

    /// The MQTT 5 Topic Alias Maximum the client accepts from the server (0: none).
    pub(super) fn topic_alias_max(&self) -> u16 {
        self.v5_properties()
            .and_then(|p| p.topic_alias_max)
            .unwrap_or(0)
    }

    /// The MQTT 5 Session Expiry Interval (absent: 0); `None` for MQTT 3.1.1, whose session
    /// outlives the connection when clean session is off.
    pub(super) fn session_expiry(&self) -> Option<u32> {
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
    pub(super) fn session_options(&self) -> rumqttd::local::SessionOptions {
        rumqttd::local::SessionOptions {
            clean_session: self.clean(),
            session_expiry: self.session_expiry(),
            topic_alias_max: self.topic_alias_max(),
            receive_max: self.v5_properties().and_then(|p| p.receive_maximum),
        }
    }

    pub(super) fn proto(&self) -> Proto {
        match self {
            Connect::V4(_) => Proto::V4,
            Connect::V5(_) => Proto::V5,
        }
    }

    /// The keep-alive this client is held to under `mqtt.max_keep_alive_secs` (`max`):
    /// see [`keep_alive_rule`].
    pub(super) fn held_keep_alive(&self, max: u16) -> Result<KeepAlive, KeepAliveTooLong> {
        keep_alive_rule(self.proto(), self.keep_alive(), max)
    }

    /// Refuses this CONNECT ([`refuse_connect`]) with `codes` (3.1.1, MQTT 5), the Reason
    /// String only if the client's Maximum Packet Size has room for it.
    pub(super) async fn refuse<W: AsyncWrite + Unpin>(&self, wr: &mut W, codes: (u8, u8)) {
        refuse_connect(wr, self.proto(), codes, self.client_max_packet()).await;
    }

    /// Which refusals carry Reason Strings (MQTT 5 §3.1.2.11.7): a DISCONNECT when the
    /// client's Maximum Packet Size has room; a PUBACK, PUBREC or SUBACK only if the client
    /// did not set Request Problem Information to 0 as well.
    pub(super) fn explain(&self) -> Explain {
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
    pub(super) fn client_max_packet(&self) -> usize {
        self.v5_properties()
            .and_then(|p| p.max_packet_size)
            .map_or(usize::MAX, |m| m as usize)
    }

    pub(super) fn login(&self) -> (Option<&str>, Option<&str>) {
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
    pub(super) fn set_will_payload(&mut self, payload: Bytes) {
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

    pub(super) fn will(&self) -> Option<Will> {
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
    pub(super) fn upstream(&self, client_id: &str, login: Option<&(String, String)>) -> BytesMut {
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

pub(super) fn proto_code(proto: Proto, v4_code: u8, v5_code: u8) -> u8 {
    match proto {
        Proto::V4 => v4_code,
        Proto::V5 => v5_code,
    }
}

/// Answers a refused CONNECT with a CONNACK of the client's protocol: `v4_code` for 3.1.1,
/// `v5_code` for MQTT 5 with its Reason String when the client's Maximum Packet Size
/// (`client_max`; 0 when the CONNECT was not read) has room for one. The connection closes
/// after it.
pub(super) async fn refuse_connect<W: AsyncWrite + Unpin>(
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
pub(super) fn has_room(client_max: usize) -> bool {
    client_max >= 256
}

/// Answers a CONNECT over `mqtt.max_connect_bytes`, judged on its fixed header and first
/// bytes (never buffered whole): MQTT 5 gets CONNACK 0x95 "packet too large", 3.1.1 (which has
/// no such code) "identifier rejected"; then the connection closes.
pub(super) async fn refuse_large_connect<W: AsyncWrite + Unpin>(
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
    shared.metrics.connect(EdgeConnect::ConnectTooLarge);
}

/// The rules a Will meets beyond its topic's ACL (checked at CONNECT, since the Will is
/// published later by the edge, not through the PUBLISH path): a retained Will only on a
/// topic that may be retained, and within the account's retained quota (reserved now); a Will
/// on an inbox gets `from` = its client, like any inbox message. Refusals are CONNACK codes.
pub(super) fn admit_will(
    will: &mut Will,
    principal: &Principal,
    client_id: &str,
    shared: &EdgeShared,
) -> Result<(), (u8, u8)> {
    if will.retain && !may_retain(&will.topic) {
        return Err((connack::V4_NOT_AUTHORIZED, connack::V5_RETAIN_NOT_SUPPORTED));
    }
    if crate::edge::inbox::is_inbox_topic(&will.topic) {
        will.payload = crate::edge::inbox::stamp_from(client_id, &will.payload).map_err(|_| {
            (
                connack::V4_NOT_AUTHORIZED,
                connack::V5_PAYLOAD_FORMAT_INVALID,
            )
        })?;
    }
    if will.retain {
        let account = crate::edge::retained::ledger_key(principal);
        shared
            .retained
            .admit(account, &will.topic, will.payload.len(), &shared.metrics)
            .map_err(|_| {
                shared.metrics.retained_refused(true);
                (connack::V4_SERVER_UNAVAILABLE, connack::V5_QUOTA_EXCEEDED)
            })?;
    }
    Ok(())
}

/// Reads one whole frame from `rd` into the front of `buf`.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
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

pub(super) fn escape_client_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '+' | '$' | '#' | '/' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn random_id() -> String {
    crate::ids::random_hex(8)
}

/// Reads the client's first frame within mqtt.connect_timeout_ms and decodes it as a CONNECT
/// of MQTT 3.1.1 or 5 (at most mqtt.max_connect_bytes, judged on the fixed header); answers
/// and counts a refusal (`None`), a keep-alive over `mqtt.max_keep_alive_secs` included.
/// Returns the bytes the client sent behind the CONNECT too, and the keep-alive it is held to.
pub(super) async fn read_connect<R, W>(
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
            shared.metrics.connect(EdgeConnect::Malformed);
            return None;
        }
        Err(_) => {
            shared.metrics.connect(EdgeConnect::Timeout);
            return None;
        }
    };
    if h.kind() != kind::CONNECT {
        shared.metrics.connect(EdgeConnect::Malformed);
        return None;
    }
    let Some(proto) = codec::connect_proto(&frame, &h) else {
        // An unknown protocol level: answered as 3.1.1 does.
        let code = connack::V4_BAD_PROTOCOL;
        refuse_connect(wr, Proto::V4, (code, code), 0).await;
        shared.metrics.connect(EdgeConnect::Malformed);
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
        shared.metrics.connect(EdgeConnect::Malformed);
        return None;
    };
    let Ok(keep_alive) = connect.held_keep_alive(shared.settings.max_keep_alive) else {
        let code = connack::V4_IDENTIFIER_REJECTED;
        connect.refuse(wr, (code, code)).await;
        tracing::warn!(%peer, client = connect.client_id(), keep_alive = connect.keep_alive(), "MQTT connection refused: keep-alive over mqtt.max_keep_alive_secs");
        shared.metrics.connect(EdgeConnect::KeepAliveTooLong);
        return None;
    };
    Some((connect, dbuf, keep_alive))
}

/// Authenticates the CONNECT's credentials to a principal (the store query boxed: inline it
/// would size the admission future); answers and counts a refusal (`None`).
pub(super) async fn authenticate<W: AsyncWrite + Unpin>(
    wr: &mut W,
    connect: &Connect,
    peer: SocketAddr,
    listener: ListenerInfo,
    shared: &EdgeShared,
) -> Option<(Principal, Option<String>)> {
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
                Refusal::Banned => (connack::V4_NOT_AUTHORIZED, connack::V5_BANNED),
                _ => (connack::V4_NOT_AUTHORIZED, connack::V5_NOT_AUTHORIZED),
            };
            connect.refuse(wr, (v4_code, v5_code)).await;
            tracing::warn!(
                %peer, listener = listener.name, username = username.unwrap_or(""),
                client = connect.client_id(), reason = refusal.as_str(),
                "MQTT connection refused: not authorized"
            );
            shared.metrics.refused(refusal);
            None
        }
    }
}

/// What the checks after authentication settled: the Will (its payload as published), the
/// connection slot, the client id, and the id the edge assigned if it did.
pub(super) struct Vetted {
    pub(super) will: Option<Will>,
    pub(super) permit: tokio::sync::OwnedSemaphorePermit,
    pub(super) client_id: String,
    pub(super) assigned: Option<String>,
}

/// The checks after authentication: the Will's topic, a free connection slot, the client id
/// (assigned for an empty one), the Will's other rules; answers and counts a refusal (`None`).
pub(super) async fn vet<W: AsyncWrite + Unpin>(
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
            shared.metrics.connect(EdgeConnect::WillRefused);
            return None;
        }
    }
    // The connection slot is taken only now: clients that have not authenticated cannot
    // take the slots of devices that can.
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        let (v4_code, v5_code) = (connack::V4_SERVER_UNAVAILABLE, connack::V5_QUOTA_EXCEEDED);
        connect.refuse(wr, (v4_code, v5_code)).await;
        tracing::warn!(%peer, "connection refused: mqtt.max_connections reached");
        shared.metrics.connect(EdgeConnect::Limit);
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
            shared.metrics.connect(EdgeConnect::Malformed);
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
            shared.metrics.connect(EdgeConnect::WillRefused);
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
pub(super) async fn admit<R, W>(
    mut rd: R,
    mut wr: W,
    peer: SocketAddr,
    listener: ListenerInfo,
    shared: Arc<EdgeShared>,
    pending: crate::edge::Pending,
) -> Option<Box<Live<R, W>>>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (mut connect, dbuf, keep_alive) = read_connect(&mut rd, &mut wr, peer, &shared).await?;
    let (principal, credential_id) =
        authenticate(&mut wr, &connect, peer, listener, &shared).await?;
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
    let owner = Owner {
        account_id: (!account.is_empty()).then(|| account.clone()),
        client_id: client_id.clone(),
        credential_id,
        since_millis: crate::clock::now_millis(),
    };
    let details = details_of(&connect, peer, listener);
    let edge = details.connection_id.to_string();
    let opened = async {
        let mut claim = shared
            .registry
            .claim(&upstream_id, (owner, details), Duration::from_secs(5))
            .await;
        let conn = Conn::new(&connect, principal, will, client_id.clone(), shared.clone());
        let linked = conn
            .open(&mut wr, &connect, &upstream_id, assigned, &mut claim)
            .await;
        (conn, claim, linked)
    }
    .instrument(span.clone())
    .await;
    let (mut conn, claim, linked) = opened;
    // Admitted (or refused): the connection leaves the mqtt.max_pending count.
    drop(pending);
    let Some((up, ubuf)) = linked else {
        shared.registry.release(&upstream_id, claim.seq);
        return None;
    };
    vouch(&mut conn, edge).instrument(span.clone()).await;
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

/// The edge vouches for the start of `conn`, the MQTT connection `edge`: its observed
/// `connected` is published (`mqtt.observe_starts`), so the connection is recorded whether or
/// not the device reports it, and the edge follows it as the connection's last report.
async fn vouch(conn: &mut Conn, edge: String) {
    if !conn.shared.settings.observe_starts {
        return;
    }
    let Some((start, reported)) = super::super::lifecycle::observed_start(
        &conn.principal,
        &conn.client_id,
        conn.will.as_ref(),
        &edge,
        crate::clock::now_millis(),
    ) else {
        return;
    };
    conn.reported = Some(reported);
    conn.edge = Some(edge.into());
    let shared = conn.shared.clone();
    Box::pin(shared.publisher.publish(start)).await;
}

/// The keep-alive a connection is held to, in seconds (0: none), and whether the CONNACK
/// tells the client so (MQTT 5 Server Keep Alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeepAlive {
    pub(super) secs: u16,
    pub(super) server: bool,
}

/// An MQTT 3.1.1 client asked for a longer keep-alive than `mqtt.max_keep_alive_secs`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct KeepAliveTooLong;

/// The keep-alive rule (MQTT 5 §3.2.2.3.14): with a maximum `max` (0: none), a client asking
/// for no keep-alive (0) or a longer one is held to `max`; MQTT 5 is told in the CONNACK, an
/// MQTT 3.1.1 client cannot be and is refused (as Mosquitto's `max_keepalive` does).
pub(super) fn keep_alive_rule(
    proto: Proto,
    asked: u16,
    max: u16,
) -> Result<KeepAlive, KeepAliveTooLong> {
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
pub(super) struct Explain {
    /// PUBACK, PUBREC and SUBACK refusals.
    pub(super) acks: bool,
    /// DISCONNECT.
    pub(super) ends: bool,
}

/// What the list of live connections shows of this connection, its counters at zero.
fn details_of(connect: &Connect, peer: SocketAddr, listener: ListenerInfo) -> Arc<ConnDetails> {
    let protocol = match connect.proto() {
        Proto::V4 => "3.1.1",
        Proto::V5 => "5",
    };
    Arc::new(ConnDetails::new(
        super::super::lifecycle::new_edge_id().into(),
        peer,
        (listener.name, protocol),
        connect.keep_alive(),
    ))
}
