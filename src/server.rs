//! `cradle serve`: wires broker, store, bus, sync handlers and HTTP together, runs until the
//! shutdown future resolves, then drains in order so that nothing acknowledged is lost.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::auth::Authenticator;
use crate::broker::{self, BrokerError};
use crate::bus::{Bus, BusError, Route};
use crate::config::{AuthMode, BrokerMode, BusConfig, Config};
use crate::domain::connection::DisconnectReason;
use crate::edge::{self, publisher::Publisher, EdgeError};
use crate::endpoint::{Endpoint, EndpointError};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::sync::sessions::{SessionSettings, Sessions};
use crate::sync::stations::{self, StationSettings};
use crate::sync::status::{self, StatusSettings};
use crate::topics::STATUS_FILTER;
use crate::ws::inbox::InboxSubscriptions;
use crate::ws::{Bridge, WsSettings};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener of the broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The HTTP listener.
    #[error("http.listen: cannot listen on {addr}: {error}")]
    Http {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A listener of the MQTT edge.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// `broker.url` or `broker.ca_file`.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Open mode would expose a non-loopback listener.
    #[error("{key}: {addr} is not a loopback address and no account exists, so anyone could connect: create an account (`cradle accounts create ...`) or set auth.mode = \"open\" (CRADLE_AUTH_MODE=open) for development")]
    OpenNonLoopback { key: &'static str, addr: SocketAddr },
}

/// Every client-facing listener of `config`, by key.
fn client_listeners(config: &Config) -> Vec<(&'static str, SocketAddr)> {
    let mut l = vec![
        ("mqtt.listen", config.mqtt.listen),
        ("mqtt.v5_listen", config.mqtt.v5_listen),
        ("mqtt.ws_listen", config.mqtt.ws_listen),
        ("http.listen", config.http.listen),
    ];
    if let Some(a) = config.mqtt.tls_listen {
        l.push(("mqtt.tls_listen", a));
    }
    if let Some(a) = config.mqtt.wss_listen {
        l.push(("mqtt.wss_listen", a));
    }
    l
}

/// How long each shutdown stage may take before Cradle moves on.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Rebuilds the embedded broker's retained state from the store (`sync::retained`) before
/// any device is accepted: the broker starts empty, the store knows every client's last
/// status, every active session and every parent station's announcement.
async fn restore_retained(
    store: &Store,
    broker: &broker::EmbeddedBroker,
) -> Result<(), ServeError> {
    use crate::sync::retained;
    let pairs = |r: Vec<retained::Retained>| r.into_iter().map(|r| (r.topic, r.payload)).collect();
    let mut writer = match broker::RetainedWriter::open(&broker.links).await {
        Ok(w) => w,
        Err(error) => {
            tracing::error!(%error, "retained state not rebuilt from the store");
            return Ok(());
        }
    };
    // Statuses page by page (one per client: the largest part), then the announcements. A
    // store error fails the start; a broker link error is logged (the state is then partial).
    let (mut statuses, mut after) = (0, None);
    loop {
        let (page, last) = retained::statuses_page(store, after.as_ref()).await?;
        if page.is_empty() {
            break;
        }
        statuses += page.len();
        if let Err(error) = writer.write(pairs(page)).await {
            tracing::error!(%error, "retained state not rebuilt from the store");
            return Ok(());
        }
        after = last;
    }
    let (announced, counts) = retained::announcements(store).await?;
    let written = match writer.write(pairs(announced)).await {
        Ok(()) => writer.close().await,
        Err(error) => Err(error),
    };
    match written {
        Ok(messages) => tracing::info!(
            messages,
            statuses,
            baby_stations = counts.baby_stations,
            parent_stations = counts.parent_stations,
            "retained state rebuilt from the store"
        ),
        Err(error) => tracing::error!(%error, "retained state not rebuilt from the store"),
    }
    Ok(())
}

/// Runs Cradle until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::default());
    // Each client connection holds one descriptor (its socket at the edge; its link to the
    // embedded broker's router takes none), and so does each HTTP connection.
    let wanted = config.mqtt.max_connections as u64 + config.http.max_connections as u64 + 1024;
    let limit = raise_open_files_limit(wanted);
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            max_connections = config.mqtt.max_connections,
            "open-file limit too low for mqtt.max_connections (one per connection): raise it (ulimit -n, LimitNOFILE) or lower mqtt.max_connections"
        );
    }

    // Every listener is checked before anything is created or migrated.
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|error| ServeError::Http {
            addr: config.http.listen,
            error,
        })?;
    let store = Store::connect(&config.store).await?;
    tracing::info!(backend = ?store.backend(), url = %crate::store::redact(&config.store.database_url), "store ready");

    crate::accounts::gate::configure(crate::accounts::gate::GateSettings {
        max_running: config.auth.max_verifications,
        max_per_source: config.auth.max_verifications_per_source,
        wait: Duration::from_millis(config.auth.verify_wait_ms),
        failure_delay_max: Duration::from_millis(config.auth.failure_delay_max_ms),
    });
    let auth = Arc::new(Authenticator::new(
        store.clone(),
        config.auth.mode,
        config.auth.cache_secs,
    ));
    match config.auth.mode {
        AuthMode::Open => tracing::warn!(
            "auth.mode = \"open\": ANY client may connect anonymously on EVERY listener and read or write ANY account. Development only."
        ),
        AuthMode::Auto if !auth.any_account().await => {
            if let Some((key, addr)) = client_listeners(&config)
                .into_iter()
                .find(|(_, a)| !a.ip().is_loopback())
            {
                return Err(ServeError::OpenNonLoopback { key, addr });
            }
            tracing::info!("no account exists: open mode, anonymous clients on loopback only");
        }
        _ => {}
    }

    let embedded = config.broker.mode == BrokerMode::Embedded;
    let mut handed_over = Vec::new();
    // The edge's publisher speaks MQTT 5 (a Will keeps its properties): the embedded
    // broker's MQTT 5 listener, or the external broker's one listener.
    let (endpoint, v5_endpoint, upstream) = match config.broker.mode {
        BrokerMode::Embedded => {
            // The embedded broker starts empty: whoever the store still shows connected lost
            // that connection when the previous process ended (a crash, or a shutdown that
            // could not finish). Record it before new statuses arrive.
            // WebSocket sessions the previous process handed over stay open: they are taken
            // back below and resumed, or ended when their window passes.
            let handed = crate::ws::handover::take(&store).await?;
            let keep = handed
                .iter()
                .map(|(h, _)| h.connection_id.clone())
                .collect();
            handed_over = handed;
            let closed =
                status::close_open_connections(&store, DisconnectReason::ServerShutdown, &keep)
                    .await?;
            if closed > 0 {
                tracing::warn!(
                    clients = closed,
                    "connections left open by the previous run recorded as ended"
                );
            }
            let broker = broker::start(&config.mqtt, &config.bus.client_id).await?;
            tracing::info!(v4 = %broker.v4, v5 = %broker.v5, "embedded MQTT broker listening on loopback");
            restore_retained(&store, &broker).await?;
            (
                Endpoint::embedded(broker.v4),
                Endpoint::embedded(broker.v5),
                edge::Upstream::Embedded(broker.links.clone()),
            )
        }
        BrokerMode::External => {
            // Other replicas' devices are still connected: nothing is closed here.
            let url = config.broker.url.as_deref().unwrap_or_default();
            let endpoint = Endpoint::external(url, config.broker.ca_file.as_deref())?;
            tracing::info!(broker = %endpoint, share_group = %config.broker.share_group, "using the external MQTT broker");
            (
                endpoint.clone(),
                endpoint.clone(),
                edge::Upstream::External(endpoint),
            )
        }
    };
    let mut bus_config = config.bus.clone();
    if !embedded && bus_config.client_id == BusConfig::default().client_id {
        // Replicas must not share a client id (each would take the other's session over),
        // and a replica's persistent session holds its share of unacknowledged messages,
        // so the id should survive restarts: the host name is both.
        bus_config.client_id = format!("cradle-{}", host_name());
        tracing::info!(client_id = %bus_config.client_id, "bus.client_id derived from the host name; set CRADLE_BUS_CLIENT_ID to a stable unique id per replica");
    }

    // The bus connects before any listener accepts a client: a broker that is unreachable or
    // refuses Cradle's credentials fails the start here.
    let (status_tx, status_rx) = mpsc::channel(config.sync.queue);
    let (stations_tx, stations_rx) = mpsc::channel(config.sync.queue);
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let (presence_tx, presence_rx) = mpsc::unbounded_channel();
    let (inbox_tx, inbox_rx) = mpsc::channel(config.sync.queue);
    let mut routes = vec![
        Route {
            filter: STATUS_FILTER.to_string(),
            tx: status_tx,
            shared: true,
        },
        Route {
            filter: stations::BABY_STATIONS_FILTER.to_string(),
            tx: stations_tx.clone(),
            shared: true,
        },
        Route {
            filter: stations::PARENT_STATIONS_FILTER.to_string(),
            tx: stations_tx,
            shared: true,
        },
    ];
    let inbox_subscriptions = if embedded {
        routes.push(Route {
            filter: crate::topics::INBOX_FILTER.to_string(),
            tx: inbox_tx,
            shared: false,
        });
        None
    } else {
        Some(InboxSubscriptions::start(
            &endpoint,
            &format!("{}-inbox", bus_config.client_id),
            config.mqtt.max_packet_bytes,
            Some(&config.broker.share_group),
            inbox_tx,
        ))
    };
    let bus = Bus::start(
        &bus_config,
        &endpoint,
        config.mqtt.max_payload_bytes,
        routes,
        (!embedded).then(|| config.broker.share_group.clone()),
        metrics.clone(),
    )
    .await?;
    tracing::info!(broker = %endpoint, "bus subscribed");

    let publisher = Publisher::start(
        &v5_endpoint,
        &format!("{}-edge", bus_config.client_id),
        config.mqtt.max_packet_bytes,
    );
    let edge = edge::start(
        &config.mqtt,
        auth.clone(),
        upstream,
        publisher,
        metrics.clone(),
    )
    .await?;
    for (key, addr) in &edge.listening {
        tracing::info!(listener = key, %addr, "MQTT edge listening");
    }

    let status_task = tokio::spawn(status::run(
        status_rx,
        store.clone(),
        bus.acker(),
        metrics.clone(),
        StatusSettings {
            max_status_bytes: config.sync.max_status_bytes,
            batch_max: config.sync.batch_max,
            // With several replicas, presence comes from the broker (any replica's reports),
            // not from this replica's commits.
            changes: if embedded {
                vec![changes_tx, presence_tx]
            } else {
                vec![changes_tx]
            },
        },
    ));
    let out = crate::mqtt_client::publisher(
        &endpoint,
        &format!("{}-out", bus_config.client_id),
        config.mqtt.max_packet_bytes,
    );
    let sessions = Arc::new(Sessions::new(
        store.clone(),
        metrics.clone(),
        out.clone(),
        SessionSettings {
            grace: Duration::from_secs(config.sessions.grace_secs),
            pending_per_account: config.sessions.pending_per_account,
        },
    ));
    let sessions_task = tokio::spawn(sessions.clone().run(changes_rx));
    let w = &config.websocket;
    let mut bridge = Bridge::new(
        out.clone(),
        WsSettings {
            heartbeat: Duration::from_secs(w.heartbeat_secs),
            heartbeat_timeout: Duration::from_secs(w.heartbeat_timeout_secs),
            resume_window: Duration::from_secs(w.resume_window_secs),
            replay_frames: w.replay_frames,
            send_queue: w.send_queue,
            write_timeout: Duration::from_millis(w.write_timeout_ms),
            max_frame_bytes: w.max_frame_bytes,
            signal_rate: w.signal_rate,
            signal_burst: w.signal_burst,
            max_errors: w.max_errors,
            max_sessions: w.max_sessions,
        },
    );
    let (lists_tx, lists_rx) = mpsc::unbounded_channel();
    match inbox_subscriptions {
        // With several replicas, lists are pushed when the broker delivers an announcement
        // (whichever replica recorded the session).
        Some(inbox) => {
            bridge = bridge.with_replica_subscriptions(inbox, sessions.clone(), store.clone())
        }
        None => sessions.follow_baby_stations(lists_tx),
    }
    let bridge = Arc::new(bridge);
    bridge.take_back(std::mem::take(&mut handed_over));
    // Several replicas: sessions a replica handed over at its shutdown and nobody resumed
    // are ended by whichever replica claims them first once their window has passed.
    let expiry_task = (!embedded).then(|| {
        let (bridge, store) = (bridge.clone(), store.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                bridge.end_expired_handovers(&store).await;
            }
        })
    });
    let bridge_task = tokio::spawn(crate::ws::run(
        bridge.clone(),
        inbox_rx,
        bus.acker(),
        presence_rx,
        lists_rx,
    ));
    let stations_task = tokio::spawn(stations::run(
        stations_rx,
        sessions.clone(),
        bus.acker(),
        metrics.clone(),
        StationSettings {
            max_payload_bytes: config.sync.max_status_bytes,
            max_name_chars: crate::sync::session_input::MAX_NAME_CHARS,
        },
    ));

    let state = AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        bus: bus.state(),
        max_page_size: config.http.max_page_size,
        admin_token: config.http.admin_token.clone(),
        auth: auth.clone(),
        http_loopback: config.http.listen.ip().is_loopback(),
        sessions: sessions.clone(),
        max_body_bytes: config.http.max_body_bytes,
        bridge: bridge.clone(),
        tokens: Arc::new(http::TokenCache::new(config.auth.cache_secs)),
    };
    let (http_stop_tx, mut http_stop_rx) = watch::channel(false);
    let app = http::app(state, config.http.max_body_bytes);
    let http_task = tokio::spawn(http::serve::serve(
        http_listener,
        app,
        http::serve::Limits::from(&config.http),
        metrics.clone(),
        async move {
            let _ = http_stop_rx.wait_for(|stop| *stop).await;
        },
    ));
    tracing::info!(http = %config.http.listen, "Cradle ready");

    shutdown.await;
    tracing::info!("shutting down: ending WebSocket sessions and MQTT connections");
    // Replicas hand their WebSocket sessions over through the store at once: the PWAs
    // reconnect to the other replicas, which claim them on resume. With the embedded broker
    // they are handed over to the next start once the devices' ends reached them (below).
    if let Some(task) = expiry_task {
        task.abort();
    }
    if !embedded {
        bridge.offer_all().await;
        bridge.hand_over(&store).await;
    }
    edge.shutdown(Duration::from_secs(5)).await;
    // The ends just published reach the bus through the broker; give them a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if !embedded && config.broker.leave_on_shutdown {
        // Scaling down or restarting must not leave a member of the group that the broker
        // keeps dealing messages to while nobody reads them.
        bus.leave_group(Duration::from_secs(5)).await;
    }
    tracing::info!("draining status handler");
    bus.stop_forwarding();
    if tokio::time::timeout(DRAIN_TIMEOUT, status_task)
        .await
        .is_err()
    {
        tracing::error!(
            "status handler did not drain in time; unacknowledged messages stay with the broker"
        );
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, stations_task)
        .await
        .is_err()
    {
        tracing::error!("station handler did not drain in time");
    }
    // The status handler has ended, so the change feed is closed and the session handler
    // finishes what it was given.
    let _ = tokio::time::timeout(Duration::from_secs(5), sessions_task).await;
    // The devices' ends committed above reach the WebSocket sessions as presence frames
    // (kept in their replay buffers), then the sessions are handed over through the store.
    let kept = if embedded {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bridge.hand_over(&store).await
    } else {
        Default::default()
    };
    bridge_task.abort();
    bus.close(Duration::from_secs(5)).await;
    // The embedded broker ends with this process, and every device's connection with it.
    // (An external broker keeps its directly connected clients and other replicas' ones.)
    if embedded {
        match status::close_open_connections(&store, DisconnectReason::ServerShutdown, &kept).await
        {
            Ok(n) => tracing::info!(
                clients = n,
                "open connections recorded as ended by server_shutdown"
            ),
            Err(error) => {
                tracing::error!(%error, "open connections not recorded as ended; the next start will")
            }
        }
    }
    let _ = http_stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), http_task)
        .await
        .is_err()
    {
        tracing::warn!("HTTP server did not stop in time");
    }
    store.close().await?;
    tracing::info!("store closed; bye");
    Ok(())
}

/// Raises the soft open-file limit towards `wanted` (up to the hard limit, or beyond it when
/// the process may), and returns the limit in force.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub fn raise_open_files_limit(wanted: u64) -> u64 {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return 0;
            }
            let current = lim.rlim_cur as u64;
            if current >= wanted {
                return current;
            }
            // Privileged processes may raise the hard limit too; others stop at it.
            let raised = libc::rlimit {
                rlim_cur: wanted as libc::rlim_t,
                rlim_max: (lim.rlim_max as u64).max(wanted) as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return wanted;
            }
            let to_hard = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &to_hard) == 0 {
                return lim.rlim_max as u64;
            }
            current
        }
    }
    #[cfg(not(unix))]
    {
        wanted
    }
}

/// The address Cradle's own client dials for a listener bound to `addr`.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// This machine's host name (`HOSTNAME`, or gethostname), for ids unique per replica.
pub fn host_name() -> String {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.is_empty() {
            return h;
        }
    }
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into buf.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            if end > 0 {
                return String::from_utf8_lossy(&buf[..end]).into_owned();
            }
        }
    }
    "replica".to_string()
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listeners_are_dialled_on_loopback() {
        let a: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(connectable(a).to_string(), "127.0.0.1:1883");
    }
}
