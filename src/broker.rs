//! The embedded MQTT broker: rumqttd's router and its v4, v5 and WebSocket listeners,
//! run on Cradle's own runtime.
//!
//! rumqttd 0.20's `Broker::start()` blocks forever and reports neither bind failures nor
//! the bound port, so Cradle wires `Router::spawn` and `Server::start` itself: every
//! address is checked before the router starts (a taken port fails start-up with the key's
//! name), and the listeners' tasks live on Cradle's runtime, ending with the process after
//! Cradle's own parts have drained.

use std::net::SocketAddr;

use rumqttd::protocol::{v4::V4, v5::V5};
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};

use crate::config::MqttConfig;

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
    /// A listener did not start accepting in time.
    #[error("{key}: listener on {addr} did not start within 5 s")]
    NotListening { key: &'static str, addr: SocketAddr },
}

/// Where the embedded broker listens.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// MQTT 3.1.1 over TCP.
    pub v4: SocketAddr,
    /// MQTT 5 over TCP.
    pub v5: SocketAddr,
    /// MQTT 3.1.1 over WebSocket.
    pub ws: SocketAddr,
}

/// Checks that `addr` can be bound now, so a taken port fails start-up with the key's name
/// instead of a log line from a listener task.
pub fn check_bindable(key: &'static str, addr: SocketAddr) -> Result<(), BrokerError> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|error| BrokerError::Bind { key, addr, error })
}

/// Checks every listener address of the broker (see [`check_bindable`]). Between this check
/// and rumqttd's own bind another process could take a port; the listener task then logs
/// the failure and [`start`] reports it.
pub fn check_listeners(config: &MqttConfig) -> Result<(), BrokerError> {
    check_bindable("mqtt.listen", config.listen)?;
    check_bindable("mqtt.v5_listen", config.v5_listen)?;
    check_bindable("mqtt.ws_listen", config.ws_listen)
}

/// Starts the router (its own thread) and the three listeners (tasks on the current
/// Tokio runtime), and returns once every listener accepts connections.
pub async fn start(config: &MqttConfig) -> Result<EmbeddedBroker, BrokerError> {
    check_listeners(config)?;

    let router = Router::new(
        0,
        RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: config.segment_bytes,
            max_segment_count: config.segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
    );
    let router_tx = router.spawn();

    let settings = |name: &str, listen: SocketAddr| ServerSettings {
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
            // Publishing to a topic nobody subscribed to yet must still store it (retained
            // status for later subscribers).
            dynamic_filters: true,
        },
    };

    let mut v4 = Server::new(settings("mqtt-v4", config.listen), router_tx.clone(), V4);
    let mut v5 = Server::new(settings("mqtt-v5", config.v5_listen), router_tx.clone(), V5);
    let mut ws = Server::new(settings("mqtt-ws", config.ws_listen), router_tx, V4);
    tokio::spawn(async move {
        if let Err(error) = v4.start(LinkType::Remote).await {
            tracing::error!(%error, key = "mqtt.listen", "MQTT 3.1.1 listener stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(error) = v5.start(LinkType::Remote).await {
            tracing::error!(%error, key = "mqtt.v5_listen", "MQTT 5 listener stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(error) = ws.start(LinkType::Websocket).await {
            tracing::error!(%error, key = "mqtt.ws_listen", "MQTT over WebSocket listener stopped");
        }
    });
    for (key, addr) in [
        ("mqtt.listen", config.listen),
        ("mqtt.v5_listen", config.v5_listen),
        ("mqtt.ws_listen", config.ws_listen),
    ] {
        wait_accepting(key, addr).await?;
    }
    Ok(EmbeddedBroker {
        v4: config.listen,
        v5: config.v5_listen,
        ws: config.ws_listen,
    })
}

/// Waits until a TCP connect to `addr` succeeds (the listener task has bound its port).
async fn wait_accepting(key: &'static str, addr: SocketAddr) -> Result<(), BrokerError> {
    let target = crate::server::connectable(addr);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(target).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err(BrokerError::NotListening { key, addr })
}
