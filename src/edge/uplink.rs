//! One relayed connection's link to the broker, as the edge's connection task sees it:
//! frames go up, frames come down.
//!
//! - **Embedded broker** (`Router`): no socket, no pipe, no task of the broker's own. The
//!   edge's task hands the checked frames, decoded once by rumqttd's own reader, straight to
//!   the router's per-connection buffer, and encodes the router's notifications for the
//!   client (vendored CRADLE PATCH 13, `rumqttd::local::RouterLinks`). One task per device.
//! - **External broker** (`Socket`): an MQTT connection over TCP or TLS with Cradle's
//!   credentials for that broker, carrying the same frames.

use std::io;

use bytes::BytesMut;
use rumqttd::local::{LinkRx, LinkTx, RouterLinks, SessionOptions};
use rumqttd::protocol::{v4::V4, v5::V5, Packet, Protocol};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::codec::{self, Header, Proto};
use super::{UpRead, UpWrite};
use crate::endpoint::Endpoint;

/// Spare room ensured before a socket read; doubled after a read that fills it (up to
/// `MAX_READ`), halved after small ones, so idle connections stay small (an idle device's
/// read waits with this much room) and a flood reads up to 64 KiB per syscall.
pub(crate) const MIN_READ: usize = 256;
/// See `MIN_READ`.
pub(crate) const MAX_READ: usize = 64 * 1024;

/// A relayed connection's link to the broker.
pub(crate) enum UpLink {
    /// The embedded router, packet by packet.
    Router(RouterLink),
    /// An external broker over a socket.
    Socket(SocketLink),
}

/// The embedded router's two ends of one connection.
pub(crate) struct RouterLink {
    tx: LinkTx,
    rx: LinkRx,
    codec: Codec,
    /// Largest packet the router is handed (the edge has checked every frame against it).
    max: usize,
    /// Where the router's notifications are swapped in (kept empty between batches).
    notifications: std::collections::VecDeque<Notification>,
    /// The client's MQTT 5 Maximum Packet Size (`usize::MAX` when it set none): a delivery
    /// larger than that is discarded as if sent (MQTT 5 §3.1.2.25): at QoS 1 the router gets
    /// the PUBACK the client would have sent, at QoS 2 its PUBREC (the client answers the
    /// PUBREL that follows with PUBCOMP 0x92, which completes the flow).
    client_max: usize,
    /// The router paused this connection's deliveries (its outgoing window was full): it
    /// resumes them on `Ready`, sent before the next wait for notifications.
    wake: bool,
}

/// An external broker's connection.
pub(crate) struct SocketLink {
    rd: UpRead,
    wr: UpWrite,
    room: usize,
}

/// rumqttd's reader and writer for one protocol version.
#[derive(Clone, Copy)]
enum Codec {
    V4,
    V5,
}

impl Codec {
    fn proto(self) -> Proto {
        match self {
            Codec::V4 => Proto::V4,
            Codec::V5 => Proto::V5,
        }
    }

    fn read(self, buf: &mut BytesMut, max: usize) -> Result<Packet, rumqttd::protocol::Error> {
        match self {
            Codec::V4 => V4.read_mut(buf, max),
            Codec::V5 => V5.read_mut(buf, max),
        }
    }

    fn write(self, packet: Packet, buf: &mut BytesMut) -> Result<usize, rumqttd::protocol::Error> {
        match self {
            Codec::V4 => V4.write(packet, buf),
            Codec::V5 => V5.write(packet, buf),
        }
    }
}

fn broken(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// What the broker answered a relayed CONNECT with.
pub(crate) struct Opened {
    /// The link.
    pub link: UpLink,
    /// The CONNACK frame, as the broker wrote it.
    pub(crate) connack: BytesMut,
    /// Its header.
    pub header: Header,
    /// Bytes the broker sent right behind the CONNACK (the next `recv` appends to them).
    pub rest: BytesMut,
}

impl UpLink {
    /// Registers a connection with the embedded router under `client_id` (already
    /// namespaced) and encodes the router's CONNACK.
    pub async fn router(
        links: &RouterLinks,
        proto: Proto,
        client_id: &str,
        session: SessionOptions,
        (max, client_max): (usize, usize),
    ) -> io::Result<Opened> {
        let (tx, rx, ack) = links.connect(client_id, session).await.map_err(broken)?;
        let codec = match proto {
            Proto::V4 => Codec::V4,
            Proto::V5 => Codec::V5,
        };
        let mut connack = BytesMut::new();
        let packet: Option<Packet> = ack.into();
        let packet = packet.ok_or_else(|| broken("router answered without a CONNACK"))?;
        codec.write(packet, &mut connack).map_err(broken)?;
        let header = codec::header(&connack, usize::MAX)
            .ok()
            .flatten()
            .ok_or_else(|| broken("unreadable CONNACK"))?;
        let link = UpLink::Router(RouterLink {
            tx,
            rx,
            codec,
            max,
            client_max,
            notifications: std::collections::VecDeque::new(),
            wake: false,
        });
        Ok(Opened {
            link,
            connack,
            header,
            rest: BytesMut::new(),
        })
    }

    /// Connects to an external broker, sends `connect` (the relayed CONNECT frame) and reads
    /// its answer.
    pub async fn socket(endpoint: &Endpoint, connect: &[u8]) -> io::Result<Opened> {
        let (rd, mut wr) = endpoint.open().await?;
        wr.write_all(connect).await?;
        let mut link = SocketLink {
            rd,
            wr,
            room: MIN_READ,
        };
        let mut rest = BytesMut::with_capacity(64);
        let header = loop {
            if let Some(h) = codec::header(&rest, 1 << 16).map_err(|_| broken("bad CONNACK"))? {
                if rest.len() >= h.frame_len {
                    break h;
                }
            }
            if link.read(&mut rest).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let connack = rest.split_to(header.frame_len);
        Ok(Opened {
            link: UpLink::Socket(link),
            connack,
            header,
            rest,
        })
    }

    /// Whether this is the embedded router's link: what it appends are whole frames the
    /// router encoded, never a PINGRESP of the edge's own.
    pub(crate) fn is_router(&self) -> bool {
        matches!(self, UpLink::Router(_))
    }

    /// Whether the link needs the edge's keep-alive pings (a socket to a broker that
    /// enforces the keep-alive of the relayed CONNECT; the router has no timer of its own).
    pub(crate) fn wants_ping(&self) -> bool {
        matches!(self, UpLink::Socket(_))
    }

    /// Sends whole frames to the broker; `frames` is left empty.
    pub async fn send(&mut self, frames: &mut BytesMut) -> io::Result<()> {
        match self {
            UpLink::Socket(s) => {
                s.wr.write_all(frames).await?;
                frames.clear();
                Ok(())
            }
            UpLink::Router(r) => r.send(frames).await,
        }
    }

    /// Waits for the broker and appends what it sent, as frames, to `buf`; 0 when the broker
    /// closed the link. Cancel-safe (it runs in the connection's `select!`).
    pub async fn recv(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            UpLink::Socket(s) => s.read(buf).await,
            UpLink::Router(r) => r.recv(buf).await,
        }
    }

    /// Ends the link. An external broker gets a DISCONNECT first unless it closed the link
    /// itself (it holds the client's Will, which the edge publishes itself), and the edge
    /// waits until it closed its side; the router is told the connection is gone, which
    /// it processes before any later connection of the same client id (one channel, in
    /// order). `session_expiry` is what the client's MQTT 5 DISCONNECT set: the router
    /// takes it before the end, an external broker gets it in the edge's DISCONNECT (it
    /// got the client's CONNECT, with the interval it set first).
    pub async fn close(self, proto: Proto, broker_closed: bool, session_expiry: Option<u32>) {
        match self {
            UpLink::Router(r) => {
                let _ = Box::pin(r.rx.disconnect_with_expiry(session_expiry)).await;
            }
            UpLink::Socket(mut s) => {
                if !broker_closed {
                    let mut out = BytesMut::with_capacity(9);
                    match (proto, session_expiry) {
                        (Proto::V5, Some(secs)) => {
                            codec::put_disconnect_session_expiry(&mut out, secs)
                        }
                        _ => codec::put_disconnect(&mut out, proto, 0, None),
                    }
                    let write = s.wr.write_all(&out);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
                }
                let _ = s.wr.shutdown().await;
                let mut sink = [0u8; 256];
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    while let Ok(n) = s.rd.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }
}

impl SocketLink {
    async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        read_some(&mut self.rd, buf, &mut self.room).await
    }
}

/// Reads into `buf` with at least `*room` bytes of spare capacity, adapting `*room`.
/// `BytesMut` alone would offer a full buffer only 64 bytes, which turns a flood into a
/// syscall per few packets.
pub(crate) async fn read_some<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    room: &mut usize,
) -> io::Result<usize> {
    buf.reserve(*room);
    let n = rd.read_buf(buf).await?;
    if n >= *room {
        *room = (*room * 2).min(MAX_READ);
    } else if n < *room / 4 {
        *room = (*room / 2).max(MIN_READ);
    }
    Ok(n)
}

impl RouterLink {
    /// Decodes the frames (the edge has checked each) and hands them to the router in one
    /// batch, as rumqttd's own network link does.
    async fn send(&mut self, frames: &mut BytesMut) -> io::Result<()> {
        let any = !frames.is_empty();
        {
            let mut count = 0;
            // One reservation for the batch: the frames are whole (the edge measured each).
            let mut at = 0;
            while let Ok(Some(h)) = codec::header(&frames[at..], usize::MAX) {
                count += 1;
                at += h.frame_len;
                if at >= frames.len() {
                    break;
                }
            }
            let mut buffer = self.tx.buffer();
            buffer.reserve(count);
            while !frames.is_empty() {
                let packet = self.codec.read(frames, self.max).map_err(broken)?;
                buffer.push_back(packet);
            }
        }
        if any {
            self.notify_router().await?;
        }
        Ok(())
    }

    /// Tells the router this connection's incoming buffer has packets. The send future holds
    /// a router event; boxed, it is not part of every connection's future (it is needed only
    /// when the router's channel is full).
    async fn notify_router(&mut self) -> io::Result<()> {
        if !self.tx.try_notify().map_err(broken)? {
            Box::pin(self.tx.notify()).await.map_err(broken)?;
        }
        Ok(())
    }

    async fn recv(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let start = buf.len();
        loop {
            if self.wake {
                // Cancel-safe: the flag stays set until `Ready` is in the router's channel.
                Box::pin(self.rx.wake()).await.map_err(broken)?;
                self.wake = false;
            }
            if self.rx.exchange(&mut self.notifications).await.is_err() {
                return Ok(0);
            }
            // One reservation for the batch instead of doubling from empty.
            let room: usize = self.notifications.iter().map(encoded_room).sum();
            buf.reserve(room);
            let mut discarded = Vec::new();
            for notification in self.notifications.drain(..) {
                let packet: Option<Packet> = notification.into();
                match packet {
                    Some(packet) => {
                        let at = buf.len();
                        self.codec.write(packet, buf).map_err(broken)?;
                        if buf.len() - at > self.client_max {
                            discarded.extend(acked_pkid(&buf[at..], self.codec.proto()));
                            buf.truncate(at);
                        }
                    }
                    None => self.wake = true,
                }
            }
            if !discarded.is_empty() {
                self.ack_discarded(discarded).await?;
            }
            // An idle connection keeps no notification slots (the router refills the
            // buffer it gets in exchange from empty).
            if self.notifications.capacity() <= 16 {
                self.notifications = std::collections::VecDeque::new();
            }
            if buf.len() > start {
                return Ok(buf.len() - start);
            }
        }
    }
}

/// The QoS and packet id of an encoded QoS 1 or 2 PUBLISH frame (`None` for anything else).
fn acked_pkid(frame: &[u8], proto: Proto) -> Option<(u8, u16)> {
    let h = codec::header(frame, usize::MAX).ok().flatten()?;
    if h.kind() != codec::kind::PUBLISH {
        return None;
    }
    let view = codec::publish_view(frame, &h, proto).ok()?;
    (view.qos > 0).then_some((view.qos, view.pkid))
}

impl RouterLink {
    /// Completes, towards the router, QoS 1 and 2 deliveries discarded for the client's
    /// Maximum Packet Size, with the PUBACK or PUBREC the client would have sent.
    async fn ack_discarded(&mut self, pkids: Vec<(u8, u16)>) -> io::Result<()> {
        {
            let mut buffer = self.tx.buffer();
            for (qos, pkid) in pkids {
                use rumqttd::protocol::{PubAck, PubAckReason, PubRec, PubRecReason};
                buffer.push_back(match qos {
                    1 => Packet::PubAck(
                        PubAck {
                            pkid,
                            reason: PubAckReason::Success,
                        },
                        None,
                    ),
                    _ => Packet::PubRec(
                        PubRec {
                            pkid,
                            reason: PubRecReason::Success,
                        },
                        None,
                    ),
                });
            }
        }
        self.notify_router().await
    }
}

/// Room a notification takes once encoded: a delivery's topic and payload plus its header,
/// packet id and properties' usual size; an ack a few bytes.
fn encoded_room(n: &Notification) -> usize {
    match n {
        Notification::Forward(f) => f.publish.topic.len() + f.publish.payload.len() + 16,
        _ => 16,
    }
}
