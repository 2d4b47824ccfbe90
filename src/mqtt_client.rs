//! Cradle's own MQTT clients' plumbing: the options of a client that only publishes, a
//! publisher with its event loop, and `TCP_NODELAY` on an event loop. Used by the bus, the
//! edge's publisher, the bridge's inbox client, the monitor and the bench.

use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions};

use crate::endpoint::Endpoint;

/// Keep-alive of Cradle's publishing clients.
const PUBLISHER_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// QoS 1 publications a publishing client keeps in flight.
const PUBLISHER_INFLIGHT: u16 = 1000;
/// Room above the edge's largest packet for a publication's own header and properties.
const PUBLISHER_PACKET_ROOM: usize = 1024;

/// Options of a client that only publishes Cradle's own messages (clean session, a wide
/// QoS 1 window, packets as large as the edge accepts).
pub fn publisher_options(endpoint: &Endpoint, client_id: &str, max_packet: usize) -> MqttOptions {
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
pub fn publisher_options_v5(
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
    tokio::spawn(async move {
        loop {
            if let Err(error) = eventloop.poll().await {
                tracing::warn!(%error, "publisher: broker connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    client
}

/// Turns off Nagle's algorithm on an event loop's socket: MQTT packets are small and an
/// ack held back 40 ms stalls a QoS 1 window.
pub fn nodelay(eventloop: &mut EventLoop) {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    eventloop.set_network_options(options);
}
