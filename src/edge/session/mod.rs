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
//!
//! Files: `connect` (CONNECT to CONNACK and its refusals), `relay` (the loop, its timers and
//! the end), `frames` (each packet's checks: PUBLISH, SUBSCRIBE, retained quotas, SUBACKs);
//! this file holds the entry point (`serve`) and the connection's state (`Conn`, `Live`).

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
use super::metrics::EdgeConnect;
use super::uplink::{read_some, UpLink, MIN_READ};
use super::{EdgeShared, ListenerInfo, Upstream};
use crate::auth::Refusal;
use crate::domain::connection::DisconnectReason;
use crate::rate::TokenBucket;

mod connect;
mod frames;
mod relay;

use connect::*;
use frames::*;

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
    /// Its credential was revoked or its account deleted.
    Revoked,
    /// An administrator disconnected the client.
    AdminDisconnect,
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
            End::Revoked => DisconnectReason::Revoked,
            End::AdminDisconnect => DisconnectReason::AdminDisconnect,
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
            End::Revoked => Some(reason::NOT_AUTHORIZED),
            End::AdminDisconnect => Some(reason::ADMINISTRATIVE_ACTION),
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
    crate::tasks::inject("mqtt", &live.conn.client_id);
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

/// The state of one relayed connection.
struct Conn {
    proto: Proto,
    explain: Explain,
    principal: Principal,
    will: Option<Will>,
    reported: Option<Reported>,
    /// The edge's id of this MQTT connection, for a client with a status topic (stamped on
    /// its observed start, its own status reports and its end).
    edge: Option<Box<str>>,
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
            edge: None,
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
            shared.metrics.connect(EdgeConnect::BrokerUnavailable);
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
                shared.metrics.connect(EdgeConnect::BrokerRefused);
            }
            claim.finished();
            return None;
        }
        shared.metrics.connect(EdgeConnect::Accepted);
        shared.metrics.live(1);
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
