//! The embedded MQTT broker: rumqttd's router and its v4 and v5 listeners on loopback, run
//! on Cradle's own runtime. Devices never reach it directly: the MQTT edge (`crate::edge`)
//! authenticates them, checks every packet and hands it to the router through [`RouterLinks`]
//! from the connection's own task; the loopback listeners serve Cradle's own clients.
//!
//! rumqttd 0.20's `Broker::start()` blocks forever and reports neither bind failures nor
//! the bound port, so Cradle wires `Router::spawn` and `Server::serve` (vendored patch 5)
//! itself: Cradle binds the listeners (port 0 by default), so it knows the ports and a bind
//! failure names its key; the listeners' tasks live on Cradle's runtime, ending with the
//! process after Cradle's own parts have drained.

use std::net::SocketAddr;

use rumqttd::local::{LinkError, LinkRx, LinkTx, RouterLinks, SessionOptions};
use rumqttd::protocol::{v4::V4, v5::V5};
use rumqttd::protocol::{Packet, Publish, QoS};
use rumqttd::{
    ConnectionSettings, DurableConsumer, LinkType, Router, RouterConfig, Server, ServerSettings,
};
use tokio::net::TcpListener;

use crate::config::MqttConfig;
use crate::metrics::{Desc, Exposition, Family};

/// What the embedded broker reports for `/metrics` (vendored rumqttd): the panics it caught
/// (CRADLE PATCH 8 and 11), each of which ended the one connection it happened for instead
/// of the whole broker (should stay 0), and the PUBACKs (PUBCOMPs) it holds until the bus
/// has committed the message (CRADLE PATCH 27): each device holds at most its in-flight
/// window; a figure that keeps growing means the status or station handler is behind.
pub(crate) struct BrokerMetrics;

impl Family for BrokerMetrics {
    fn render(&self, out: &mut Exposition) {
        let (link, router) = rumqttd::caught_panics();
        out.family(Desc::counter(
            "cradle_broker_panics_total",
            "Panics the embedded broker caught, by where; each ended one connection only.",
        ))
        .sample("in=\"connection\"", link)
        .sample("in=\"router\"", router);
        out.gauge(
            "cradle_broker_acks_held",
            "Device acknowledgements the embedded broker holds until their messages are committed.",
            rumqttd::held_acks(),
        );
    }
}

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener address cannot be bound.
    #[error("{key}: cannot listen on {addr}: {error}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// Where the embedded broker listens (loopback only; the edge and Cradle's own clients).
#[derive(Clone)]
pub struct EmbeddedBroker {
    /// MQTT 3.1.1 over TCP (Cradle's own clients: bus, edge publisher).
    pub v4: SocketAddr,
    /// MQTT 5 over TCP.
    pub v5: SocketAddr,
    /// Links straight to the router, for the edge's device connections (no socket).
    pub links: RouterLinks,
}

/// Binds one of the broker's loopback listeners (port 0 picks a free port).
async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| BrokerError::Bind { key, addr, error })
}

/// Starts the router (its own thread) and the v4 and v5 listeners (tasks on the current
/// Tokio runtime) on loopback, and returns their bound addresses once they accept.
/// Under `mqtt.puback_after_commit`, `bus_client_id` is the durable consumer: a publisher's
/// PUBACK for a message on one of `crate::topics::DURABLE_FILTERS` waits for the bus's own
/// acknowledgement of it.
pub async fn start(
    config: &MqttConfig,
    bus_client_id: &str,
) -> Result<EmbeddedBroker, BrokerError> {
    let v4_listener = bind("mqtt.broker_listen", config.broker_listen).await?;
    let v5_listener = bind("mqtt.broker_v5_listen", config.broker_v5_listen).await?;
    let local = |key, l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|error| BrokerError::Bind { key, addr, error })
    };
    let v4_addr = local("mqtt.broker_listen", &v4_listener, config.broker_listen)?;
    let v5_addr = local(
        "mqtt.broker_v5_listen",
        &v5_listener,
        config.broker_v5_listen,
    )?;

    let router = Router::new(0, router_config(config, bus_client_id));
    let router_tx = router.spawn();
    // Publishing to a topic nobody subscribed to yet must still store it (retained status
    // for later subscribers).
    let dynamic_filters = true;
    let links = RouterLinks::new(router_tx.clone(), dynamic_filters);

    let mut v4 = Server::new(
        server_settings(config, "mqtt-v4", v4_addr, dynamic_filters),
        router_tx.clone(),
        V4,
    );
    let mut v5 = Server::new(
        server_settings(config, "mqtt-v5", v5_addr, dynamic_filters),
        router_tx,
        V5,
    );
    tokio::spawn(async move {
        if let Err(error) = v4.serve(v4_listener, LinkType::Remote).await {
            tracing::error!(%error, key = "mqtt.broker_listen", "broker MQTT 3.1.1 listener stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(error) = v5.serve(v5_listener, LinkType::Remote).await {
            tracing::error!(%error, key = "mqtt.broker_v5_listen", "broker MQTT 5 listener stopped");
        }
    });
    Ok(EmbeddedBroker {
        v4: v4_addr,
        v5: v5_addr,
        links,
    })
}

/// The router's settings: room for the edge's connections and Cradle's own clients, the
/// segment sizes, and under `mqtt.puback_after_commit` the bus as durable consumer.
fn router_config(config: &MqttConfig, bus_client_id: &str) -> RouterConfig {
    RouterConfig {
        // The edge enforces mqtt.max_connections; the broker leaves room for Cradle's
        // own clients (bus, edge publisher, monitor).
        max_connections: config.max_connections + 64,
        max_outgoing_packet_count: 200,
        max_segment_size: config.segment_bytes,
        max_segment_count: config.segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
        durable: config.puback_after_commit.then(|| DurableConsumer {
            client_id: bus_client_id.to_string(),
            filters: crate::topics::DURABLE_FILTERS.map(String::from).to_vec(),
            // Cradle's own publishers (WebSocket clients' statuses and signals, the edge's
            // ends and Wills) must not wait on the bus, which may be waiting on them; what
            // they publish is rebuilt from the store at the next start.
            exempt: ["out", "edge"]
                .map(|suffix| format!("{bus_client_id}-{suffix}"))
                .to_vec(),
        }),
    }
}

/// The settings of the loopback listener `name` on `listen`.
fn server_settings(
    config: &MqttConfig,
    name: &str,
    listen: SocketAddr,
    dynamic_filters: bool,
) -> ServerSettings {
    ServerSettings {
        name: name.to_string(),
        listen,
        tls: None,
        // rumqttd's default of 1 ms between accepts caps new connections near 470/s.
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: config.connect_timeout_ms,
            max_payload_size: config.max_payload_bytes,
            max_inflight_count: config.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters,
        },
    }
}

/// Retained messages published at once (QoS 1) before their acknowledgements are awaited.
const RESTORE_WINDOW: usize = 512;

/// A link straight into the router that publishes retained messages at QoS 1 and waits for
/// every PUBACK, so that a device accepted afterwards finds them. Used at start to rebuild the
/// retained state from the store (`sync::retained`), page by page.
pub(crate) struct RetainedWriter {
    tx: LinkTx,
    rx: LinkRx,
    pkid: u16,
    written: usize,
}

impl RetainedWriter {
    /// Opens the link (client id `cradle-restore`, clean session).
    pub async fn open(links: &RouterLinks) -> Result<Self, LinkError> {
        let session = SessionOptions {
            clean_session: true,
            session_expiry: None,
            topic_alias_max: 0,
            receive_max: None,
        };
        let (tx, rx, _connack) = links.connect("cradle-restore", session).await?;
        Ok(Self {
            tx,
            rx,
            pkid: 0,
            written: 0,
        })
    }

    /// Publishes `messages` (topic, payload) retained, `RESTORE_WINDOW` at a time, each
    /// window acknowledged before the next.
    pub async fn write(&mut self, messages: Vec<(String, Vec<u8>)>) -> Result<(), LinkError> {
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let mut sent = 0;
            {
                let mut buffer = self.tx.buffer();
                for (topic, payload) in messages.by_ref().take(RESTORE_WINDOW) {
                    self.pkid = self.pkid % u16::MAX + 1;
                    let publish = Publish::with_qos(
                        topic.into_bytes(),
                        payload,
                        QoS::AtLeastOnce,
                        self.pkid,
                        true,
                    );
                    buffer.push_back(Packet::Publish(publish, None));
                    sent += 1;
                }
            }
            self.tx.notify().await?;
            self.written += sent;
            while sent > 0 {
                let packet: Option<Packet> = self.rx.next().await?.and_then(Into::into);
                if let Some(Packet::PubAck(..)) = packet {
                    sent -= 1;
                }
            }
        }
        Ok(())
    }

    /// Closes the link; returns how many messages were written.
    pub async fn close(self) -> Result<usize, LinkError> {
        self.rx.disconnect().await?;
        Ok(self.written)
    }
}
