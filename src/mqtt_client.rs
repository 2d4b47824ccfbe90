//! Cradle's own MQTT clients' plumbing: the options of a client that only publishes, a
//! publisher with its event loop, `TCP_NODELAY` on an event loop, and [`drive`], the one
//! event-loop task (poll, hand each event over, wait out a broken connection with
//! [`Backoff`], reconnect). Used by the bus, the edge's publisher, the bridge's inbox client,
//! the monitor and the bench.

use std::ops::ControlFlow;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions};

use crate::endpoint::Endpoint;
use crate::retry::Backoff;

/// An MQTT client's event loop, 3.1.1 or 5, as [`drive`] polls it.
pub(crate) trait EventSource {
    /// What a poll yields.
    type Event;
    /// Why a poll failed (the connection broke, or could not be made).
    type Error: std::fmt::Display;
    /// The next event; polling again after an error reconnects.
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Self::Event, Self::Error>> + Send;
    /// Whether `event` is the broker's CONNACK (a connection made).
    fn connected(event: &Self::Event) -> bool;
}

impl EventSource for EventLoop {
    type Event = rumqttc::Event;
    type Error = rumqttc::ConnectionError;
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Self::Event, Self::Error>> + Send {
        self.poll()
    }
    fn connected(event: &Self::Event) -> bool {
        matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))
    }
}

impl EventSource for rumqttc::v5::EventLoop {
    type Event = rumqttc::v5::Event;
    type Error = rumqttc::v5::ConnectionError;
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Self::Event, Self::Error>> + Send {
        self.poll()
    }
    fn connected(event: &Self::Event) -> bool {
        matches!(
            event,
            rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(_))
        )
    }
}

/// What [`drive`] hands its handler: an event, or a failed poll (the connection broke or
/// could not be made; `drive` waits out a backoff after it, then polls again, which
/// reconnects).
pub(crate) enum Polled<S: EventSource> {
    /// An event of the connection.
    Event(S::Event),
    /// The poll failed (already logged).
    Failed(S::Error),
}

/// What [`drive`] hands each polled event to: a closure returning a future that owns what
/// it uses (clone an `Arc` into it), or a type with state of its own, such as the bus's loop,
/// borrowed for one event at a time.
pub(crate) trait Handler<S: EventSource> {
    /// What the handler ends with.
    type Out;
    /// Handles one event or failed poll; `Break` ends [`drive`] with its value.
    fn on(
        &mut self,
        polled: Polled<S>,
    ) -> impl std::future::Future<Output = ControlFlow<Self::Out>>;
}

impl<S, F, Fut, B> Handler<S> for F
where
    S: EventSource,
    F: FnMut(Polled<S>) -> Fut,
    Fut: std::future::Future<Output = ControlFlow<B>>,
{
    type Out = B;
    fn on(&mut self, polled: Polled<S>) -> impl std::future::Future<Output = ControlFlow<B>> {
        self(polled)
    }
}

/// The one event-loop task of Cradle's MQTT clients: polls `source` and hands every event
/// to `handler`, until it breaks (with its value). A failed poll is logged as `name`'s,
/// handed to `handler` too, then waited out with a broker [`Backoff`] (reset by each
/// CONNACK).
pub async fn drive<S, H>(source: &mut S, name: &str, mut handler: H) -> H::Out
where
    S: EventSource,
    H: Handler<S>,
{
    let mut backoff = Backoff::broker();
    loop {
        match source.next().await {
            Ok(event) => {
                if S::connected(&event) {
                    backoff.reset();
                }
                if let ControlFlow::Break(b) = handler.on(Polled::Event(event)).await {
                    return b;
                }
            }
            Err(error) => {
                tracing::warn!(%error, client = name, retry_in_ms = backoff.pause().as_millis() as u64, "MQTT client: broker connection failed");
                if let ControlFlow::Break(b) = handler.on(Polled::Failed(error)).await {
                    return b;
                }
                backoff.wait().await;
            }
        }
    }
}

/// Keep-alive of Cradle's publishing clients.
const PUBLISHER_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// QoS 1 publications a publishing client keeps in flight.
const PUBLISHER_INFLIGHT: u16 = 1000;
/// Room above the edge's largest packet for a publication's own header and properties.
const PUBLISHER_PACKET_ROOM: usize = 1024;

/// Options of a client that only publishes Cradle's own messages (clean session, a wide
/// QoS 1 window, packets as large as the edge accepts).
pub(crate) fn publisher_options(
    endpoint: &Endpoint,
    client_id: &str,
    max_packet: usize,
) -> MqttOptions {
    let mut options = endpoint.options(client_id);
    let max = max_packet + PUBLISHER_PACKET_ROOM;
    options.set_keep_alive(PUBLISHER_KEEP_ALIVE);
    options.set_clean_session(true);
    options.set_max_packet_size(max, max);
    options.set_inflight(PUBLISHER_INFLIGHT);
    options
}

/// [`publisher_options`] for an MQTT 5 client (the edge's publisher of Wills and ends),
/// with `TCP_NODELAY`.
pub(crate) fn publisher_options_v5(
    endpoint: &Endpoint,
    client_id: &str,
    max_packet: usize,
) -> rumqttc::v5::MqttOptions {
    let mut options = endpoint.options_v5(client_id);
    let max = u32::try_from(max_packet + PUBLISHER_PACKET_ROOM).unwrap_or(u32::MAX);
    options
        .set_keep_alive(PUBLISHER_KEEP_ALIVE)
        .set_clean_start(true)
        .set_max_packet_size(Some(max))
        .set_outgoing_inflight_upper_limit(PUBLISHER_INFLIGHT);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    options
}

/// A second client of the broker for Cradle's own publications (baby-station
/// announcements, statuses and signalling on behalf of WebSocket clients). They stay off the
/// bus's connection: its request queue carries the acks, which must never wait behind (or be
/// refused by) a burst of publications. Reconnects on its own.
pub fn publisher(endpoint: &Endpoint, client_id: &str, max_packet: usize) -> AsyncClient {
    let options = publisher_options(endpoint, client_id, max_packet);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    nodelay(&mut eventloop);
    let name = format!("{client_id} (publisher)");
    tokio::spawn(async move {
        drive(&mut eventloop, &name, |_| async {
            ControlFlow::<()>::Continue(())
        })
        .await
    });
    client
}

/// Turns off Nagle's algorithm on an event loop's socket: MQTT packets are small and an
/// ack held back 40 ms stalls a QoS 1 window.
pub(crate) fn nodelay(eventloop: &mut EventLoop) {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    eventloop.set_network_options(options);
}
