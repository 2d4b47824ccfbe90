//! The MQTT edge: what devices connect to.
//!
//! rumqttd has no topic-ACL hook and forgets the username after CONNECT, so devices never
//! reach its listeners: the edge accepts every client connection (MQTT 3.1.1 and 5 on each
//! TCP port, MQTT over WebSocket, and both over TLS), authenticates the CONNECT
//! (`crate::auth`), links the connection to the broker with the client id namespaced per
//! account, checks every PUBLISH, SUBSCRIBE and Will against the account (`acl`), and
//! observes every connection's end, publishing the client's end status with the reason it
//! saw (`lifecycle`). One task per device: on the embedded broker the task hands its checked
//! packets straight to rumqttd's router (`uplink`, CRADLE PATCH 13), with no pipe and no task
//! of the broker's own; on an external broker it relays frames over one socket.
//!
//! Map: `codec` (frame-level MQTT), `acl` (rules), `lifecycle` (end → messages),
//! `registry` (live connections, takeover, shutdown), `session` (one connection),
//! `uplink` (a connection's link to the broker), `publisher` (the edge's own MQTT client for
//! end statuses and Wills), `retained`, `inbox`, this file (listeners).

pub mod acl;
pub mod codec;
pub mod inbox;
pub(crate) mod lifecycle;
pub(crate) mod metrics;
pub mod publisher;
pub mod registry;
pub mod retained;
pub mod session;
pub(crate) mod uplink;
pub(crate) mod wills;
mod ws_bytes;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttd::local::RouterLinks;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::auth::Authenticator;
use crate::config::MqttConfig;
use crate::domain::connection::DisconnectReason;
use crate::endpoint::Endpoint;
use crate::tasks::Task;
use metrics::EdgeMetrics;
use publisher::Publisher;
use registry::Registry;

/// Errors starting the edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A listener address cannot be bound.
    #[error("{key}: cannot listen on {addr}: {error}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        error: io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("{key}: {message}")]
    Tls { key: &'static str, message: String },
}

pub(crate) use acl::AclDrop;

/// Limits of every edge connection.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest packet accepted from a client.
    pub(crate) max_packet_bytes: usize,
    /// Time allowed until CONNECT (and for the broker's CONNACK).
    pub(crate) connect_timeout: Duration,
    /// PUBLISH packets per second per connection (0: unlimited).
    pub(crate) publish_rate: u32,
    /// Token bucket burst.
    pub(crate) publish_burst: u32,
    /// Refused packets before a connection is kicked.
    pub(crate) max_violations: u32,
    /// Longest keep-alive a client may use, in seconds (0: no maximum).
    pub(crate) max_keep_alive: u16,
    /// Largest CONNECT read before authentication.
    pub(crate) max_connect_bytes: usize,
    /// Time a client may leave written bytes untaken before it is disconnected.
    pub write_timeout: Duration,
    /// Publish an observed start for every device connection (`mqtt.observe_starts`).
    pub(crate) observe_starts: bool,
}

impl Settings {
    /// The edge settings of a configuration.
    pub(crate) fn from_config(c: &MqttConfig) -> Self {
        Self {
            max_packet_bytes: c.max_packet_bytes,
            connect_timeout: Duration::from_millis(c.connect_timeout_ms as u64),
            publish_rate: c.publish_rate,
            publish_burst: c.publish_burst,
            max_violations: c.max_violations,
            max_keep_alive: c.max_keep_alive_secs,
            max_connect_bytes: c.max_connect_bytes,
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            observe_starts: c.observe_starts,
        }
    }
}

/// A listener, as its connections see it.
#[derive(Debug, Clone, Copy)]
pub struct ListenerInfo {
    /// Config key, for logs.
    pub name: &'static str,
    /// Whether it listens on a loopback address (open mode applies only there).
    pub loopback: bool,
}

/// What every connection of the edge shares.
pub struct EdgeShared {
    /// Limits.
    pub settings: Settings,
    /// CONNECT authentication.
    pub auth: Arc<Authenticator>,
    /// Live connections.
    pub(crate) registry: Registry,
    /// The edge's own client, for end statuses and Wills.
    pub publisher: Publisher,
    /// Counters.
    pub metrics: Arc<EdgeMetrics>,
    /// How relayed connections reach the broker.
    pub(crate) upstream: Upstream,
    /// One permit per connection (mqtt.max_connections).
    pub connections: Arc<Semaphore>,
    /// One permit per connection being admitted (mqtt.max_pending).
    pub pending: Arc<Semaphore>,
    /// Retained messages per account (mqtt.max_retained_*).
    pub retained: retained::RetainedLedger,
    /// MQTT 5 Wills waiting for their Will Delay Interval.
    pub(crate) wills: wills::DelayedWills,
}

pub(crate) use crate::endpoint::{UpRead, UpWrite};

/// How the edge reaches the broker.
#[derive(Clone)]
pub enum Upstream {
    /// The embedded rumqttd: each connection's packets go straight to its router from the
    /// connection's own task (`uplink`; no socket, no pipe, no second task).
    Embedded(RouterLinks),
    /// An external broker (one listener for MQTT 3.1.1 and 5, as EMQX, VerneMQ, HiveMQ and
    /// Mosquitto have), over TCP or TLS, with Cradle's credentials for it.
    External(Endpoint),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Embedded(_) => write!(f, "embedded broker"),
            Upstream::External(endpoint) => write!(f, "{endpoint}"),
        }
    }
}

/// How a listener's connections arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    WebSocket,
}

/// The running edge.
pub struct Edge {
    shared: Arc<EdgeShared>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Bound addresses by config key.
    pub(crate) listening: Vec<(&'static str, SocketAddr)>,
}

/// Binds every listener of `config` (a failure names its key), then serves them.
pub async fn start(
    config: &MqttConfig,
    auth: Arc<Authenticator>,
    upstream: Upstream,
    publisher: Publisher,
    metrics: Arc<EdgeMetrics>,
) -> Result<Edge, EdgeError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) if config.tls_listen.is_some() || config.wss_listen.is_some() => {
            Some(tls_acceptor(cert, key)?)
        }
        _ => None,
    };
    let mut plan: Vec<(&'static str, SocketAddr, Transport, Option<TlsAcceptor>)> = vec![
        ("mqtt.listen", config.listen, Transport::Tcp, None),
        ("mqtt.v5_listen", config.v5_listen, Transport::Tcp, None),
        (
            "mqtt.ws_listen",
            config.ws_listen,
            Transport::WebSocket,
            None,
        ),
    ];
    if let Some(addr) = config.tls_listen {
        plan.push(("mqtt.tls_listen", addr, Transport::Tcp, tls.clone()));
    }
    if let Some(addr) = config.wss_listen {
        plan.push(("mqtt.wss_listen", addr, Transport::WebSocket, tls.clone()));
    }
    let mut bound = Vec::new();
    for (key, addr, transport, tls) in plan {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| EdgeError::Bind { key, addr, error })?;
        bound.push((key, addr, transport, tls, listener));
    }

    let shared = Arc::new(EdgeShared {
        settings: Settings::from_config(config),
        auth,
        registry: Registry::default(),
        publisher,
        metrics,
        upstream,
        connections: Arc::new(Semaphore::new(config.max_connections)),
        pending: Arc::new(Semaphore::new(config.max_pending)),
        retained: retained::RetainedLedger::new(
            config.max_retained_per_account,
            config.max_retained_bytes_per_account,
        ),
        wills: wills::DelayedWills::new(config.max_connections),
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut listening = Vec::new();
    for (key, addr, transport, tls, listener) in bound {
        listening.push((key, addr));
        let info = ListenerInfo {
            name: key,
            loopback: addr.ip().is_loopback(),
        };
        let accept = accept_loop(
            listener,
            info,
            transport,
            tls,
            shared.clone(),
            stop_rx.clone(),
        );
        tasks.spawn(async move {
            crate::tasks::contain(Task::MqttListener, accept).await;
        });
    }
    Ok(Edge {
        shared,
        stop,
        tasks,
        listening,
    })
}

/// Ends the edge's live connections that a decision names (a revocation, a kick), from
/// anywhere in Cradle; cheap to clone.
#[derive(Clone)]
pub struct Ender(Arc<EdgeShared>);

impl Ender {
    /// Tells every live connection `command` ends to end with its reason (its end is
    /// published as any other); returns how many were told.
    pub fn end_matching(&self, command: &crate::domain::control::EndCommand) -> usize {
        self.0.registry.end_matching(command)
    }

    /// The first `limit` live connections of `account` (or all) behind this replica's edge
    /// after (account, client id) `after`, in that order.
    pub fn connections(
        &self,
        account: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Vec<registry::LiveConnection> {
        self.0.registry.list(account, after, limit)
    }
}

impl Edge {
    /// A handle that ends the edge's matching connections.
    pub fn ender(&self) -> Ender {
        Ender(self.shared.clone())
    }

    /// Stops accepting, ends every connection with reason `server_shutdown` (publishing
    /// their ends), and flushes the edge's publisher. Waits at most `wait` for connections.
    pub async fn shutdown(mut self, wait: Duration) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let n = self
            .shared
            .registry
            .end_all(DisconnectReason::ServerShutdown);
        if n > 0 {
            tracing::info!(connections = n, "ending MQTT connections: server_shutdown");
        }
        self.shared.registry.wait_all_done(wait).await;
        // The sessions end with the process: a Will still waiting for its delay is due now.
        for will in self.shared.wills.drain() {
            self.shared.publisher.publish(will).await;
        }
        self.shared.publisher.flush(Duration::from_secs(5)).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    info: ListenerInfo,
    transport: Transport,
    tls: Option<TlsAcceptor>,
    shared: Arc<EdgeShared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(%error, listener = info.name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // Connections being admitted are bounded: one more is closed at once (its socket and
        // descriptor released now, not after mqtt.connect_timeout_ms).
        let Some(pending) = Pending::take(&shared) else {
            shared.metrics.connect(metrics::EdgeConnect::PendingLimit);
            tracing::warn!(%peer, listener = info.name, "connection closed: mqtt.max_pending connections are being admitted");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (shared, tls) = (shared.clone(), tls.clone());
        let task = connection(stream, peer, info, transport, tls, shared, pending);
        let task = contain_panic(task, peer);
        static LOGGED: std::sync::Once = std::sync::Once::new();
        LOGGED.call_once(|| {
            let bytes = std::mem::size_of_val(&task);
            tracing::debug!(bytes, "size of one client connection's spawned task");
        });
        tokio::spawn(task);
    }
}

/// One accepted connection's whole life, as a future boxed per transport. The spawned task
/// holds only the box: were the transports one `async` block, every connection's task would be
/// as large as the largest of them for its whole life (a heaptrack profile of 10k idle devices
/// found each plain TCP device's task holding room for a TLS and a WebSocket handshake and a
/// TLS stream: 29 KiB; BENCHMARKS.md "Where an idle device's memory goes").
fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    info: ListenerInfo,
    transport: Transport,
    tls: Option<TlsAcceptor>,
    shared: Arc<EdgeShared>,
    pending: Pending,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let timeout = shared.settings.connect_timeout;
    match (tls, transport) {
        (None, Transport::Tcp) => {
            let (rd, wr) = stream.into_split();
            Box::pin(session::serve(rd, wr, peer, info, shared, pending))
        }
        (None, Transport::WebSocket) => Box::pin(async move {
            if let Some(ws) = Box::pin(websocket(stream, timeout, &shared)).await {
                let (rd, wr) = tokio::io::split(ws);
                Box::pin(session::serve(rd, wr, peer, info, shared, pending)).await
            }
        }),
        (Some(tls), transport) => Box::pin(async move {
            let Ok(Ok(stream)) = Box::pin(tokio::time::timeout(timeout, tls.accept(stream))).await
            else {
                shared.metrics.connect(metrics::EdgeConnect::Tls);
                return;
            };
            match transport {
                Transport::Tcp => {
                    let (rd, wr) = tokio::io::split(stream);
                    Box::pin(session::serve(rd, wr, peer, info, shared, pending)).await
                }
                Transport::WebSocket => {
                    if let Some(ws) = Box::pin(websocket(stream, timeout, &shared)).await {
                        let (rd, wr) = tokio::io::split(ws);
                        Box::pin(session::serve(rd, wr, peer, info, shared, pending)).await
                    }
                }
            }
        }),
    }
}

/// A connection being admitted (handshake, CONNECT, authentication): holds one of
/// `mqtt.max_pending` permits and counts in `cradle_edge_pending` until dropped.
pub struct Pending {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<EdgeMetrics>,
}

impl Pending {
    /// A permit, if fewer than `mqtt.max_pending` connections are being admitted.
    fn take(shared: &EdgeShared) -> Option<Pending> {
        let permit = shared.pending.clone().try_acquire_owned().ok()?;
        shared.metrics.pending(1);
        Some(Pending {
            _permit: permit,
            metrics: shared.metrics.clone(),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.metrics.pending(-1);
    }
}

/// Runs one connection's task; should it panic, that connection alone ends: the panic is
/// logged with the peer and counted (`cradle_task_panics_total{task="mqtt_connection"}`), and
/// the listener and every other connection go on.
async fn contain_panic(
    task: impl std::future::Future<Output = ()> + Send + 'static,
    peer: SocketAddr,
) {
    if crate::tasks::contain(Task::MqttConnection, task)
        .await
        .is_none()
    {
        tracing::warn!(%peer, "MQTT connection ended by a panic in its task");
    }
}

/// Completes the WebSocket handshake (answering subprotocol `mqtt` when asked) and
/// returns the connection as a byte stream.
async fn websocket<S>(
    stream: S,
    timeout: Duration,
    shared: &EdgeShared,
) -> Option<ws_bytes::WsBytes<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(
        timeout,
        tokio_tungstenite::accept_hdr_async(stream, MqttSubprotocol),
    )
    .await
    {
        Ok(Ok(ws)) => Some(ws_bytes::WsBytes::new(ws)),
        _ => {
            shared.metrics.connect(metrics::EdgeConnect::Malformed);
            None
        }
    }
}

/// Answers the `mqtt` WebSocket subprotocol when the client offers it (mqtt.js and Paho
/// require it).
struct MqttSubprotocol;

impl Callback for MqttSubprotocol {
    fn on_request(
        self,
        request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        let offered = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if offered {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(response)
    }
}

/// Loads the PEM certificate chain and key of the TLS listeners.
fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, EdgeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| EdgeError::Tls {
            key: "mqtt.tls_cert",
            message: format!("{}: {e}", cert.display()),
        })?;
    if certs.is_empty() {
        return Err(EdgeError::Tls {
            key: "mqtt.tls_cert",
            message: format!("{}: no certificate in the file", cert.display()),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| EdgeError::Tls {
        key: "mqtt.tls_key",
        message: format!("{}: {e}", key.display()),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private))
        .map_err(|e| EdgeError::Tls {
            key: "mqtt.tls_key",
            message: e.to_string(),
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
