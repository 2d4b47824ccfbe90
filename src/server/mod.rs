//! `cradle serve`: wires broker, store, bus, sync handlers and HTTP together, runs until the
//! shutdown future resolves, then drains in order so that nothing acknowledged is lost.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::Publish;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::accounts::gate::GateMetrics;
use crate::auth::Authenticator;
use crate::broker::BrokerMetrics;
use crate::broker::{self, BrokerError};
use crate::bus::BusMetrics;
use crate::bus::{Bus, BusError};
use crate::config::{AuthMode, BrokerMode, BusConfig, Config};
use crate::control::Control;
use crate::domain::connection::DisconnectReason;
use crate::edge::metrics::EdgeMetrics;
use crate::edge::{self, publisher::Publisher, EdgeError};
use crate::endpoint::{Endpoint, EndpointError};
use crate::http::metrics::HttpMetrics;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::sync::metrics::SyncMetrics;
use crate::sync::sessions::{SessionSettings, Sessions};
use crate::sync::stations::{self, StationSettings};
use crate::sync::status::{self, StatusSettings};
use crate::tasks::{self, spawn_critical, Task, TaskMetrics};
use crate::ws::inbox::InboxSubscriptions;
use crate::ws::{Bridge, WsMetrics, WsSettings};

mod process;
mod routes;

pub use process::shutdown_signal;
use process::{check_open_files, host_name};
pub(crate) use routes::route_table;
use routes::Queues;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener of the broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The HTTP listener (`http.listen` or `http.admin_listen`).
    #[error("{key}: cannot listen on {addr}: {error}")]
    Http {
        key: &'static str,
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
    /// A task the service depends on panicked: Cradle drained and exits, so that a
    /// supervisor restarts it.
    #[error("the {} task panicked (see the log); Cradle drained and exits so that it can be restarted", .0.as_str())]
    TaskPanicked(Task),
    /// Open mode would expose a non-loopback listener.
    #[error("{key}: {addr} is not a loopback address and no account exists, so anyone could connect: create an account (`cradle accounts create ...`) or set auth.mode = \"open\" (CRADLE_AUTH_MODE=open) for development")]
    OpenNonLoopback { key: &'static str, addr: SocketAddr },
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

/// Runs Cradle until `shutdown` resolves, then drains it. Should a task the service depends
/// on panic, Cradle is not ready from that moment (`/readyz`), drains the same way and
/// returns [`ServeError::TaskPanicked`], so the process exits non-zero.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let cradle = build(config).await?;
    tracing::info!(http = %cradle.config.http.listen, "Cradle ready");
    let failed = tokio::select! {
        () = shutdown => None,
        task = tasks::wait_failed() => Some(task),
    };
    if let Some(task) = failed {
        tracing::error!(
            task = task.as_str(),
            "draining after a panic; Cradle exits with an error"
        );
    }
    cradle.drain().await?;
    match failed {
        Some(task) => Err(ServeError::TaskPanicked(task)),
        None => Ok(()),
    }
}

/// Where the bus, the edge's publisher and the edge reach the broker, and what the previous
/// run of an embedded broker handed over.
struct BrokerSide {
    endpoint: Endpoint,
    v5_endpoint: Endpoint,
    upstream: edge::Upstream,
    handed_over: Vec<(crate::ws::hub::HandedOver, Duration)>,
}

/// Every part's counters, each handed to its owner and registered for `/metrics`.
#[derive(Default)]
struct Counters {
    sync: Arc<SyncMetrics>,
    bus: Arc<BusMetrics>,
    edge: Arc<EdgeMetrics>,
    http: Arc<HttpMetrics>,
}

impl Counters {
    /// Every metric family, in the order `/metrics` shows them: the handlers, the bus, the
    /// edge, the verification gate, the embedded broker, HTTP and the bridge.
    fn registry(
        &self,
        bridge: Arc<WsMetrics>,
        feed: Arc<crate::feed::FeedMetrics>,
    ) -> Arc<Metrics> {
        Arc::new(
            Metrics::default()
                .with(self.sync.clone())
                .with(self.bus.clone())
                .with(self.edge.clone())
                .with(Arc::new(GateMetrics))
                .with(Arc::new(BrokerMetrics))
                .with(self.http.clone())
                .with(bridge)
                .with(feed)
                .with(Arc::new(crate::store::retention::RetentionMetrics))
                .with(Arc::new(TaskMetrics)),
        )
    }
}

/// A started Cradle: every part running, each task to drain at shutdown.
struct Running {
    config: Config,
    store: Store,
    bus: Bus,
    edge: edge::Edge,
    handlers: Handlers,
    http_task: JoinHandle<()>,
    http_stop: watch::Sender<bool>,
    feed: Arc<crate::feed::Feed>,
    retention_task: Option<JoinHandle<()>>,
}

/// Builds Cradle from `config`, in the order that keeps every promise: listeners checked,
/// store open, open mode judged, broker (embedded, with its retained state rebuilt from the
/// store) or external broker reached, bus subscribed, and only then the edge and HTTP
/// accept clients.
async fn build(config: Config) -> Result<Running, ServeError> {
    let counters = Counters::default();
    check_open_files(&config);
    // Every listener is checked before anything is created or migrated.
    let listeners = bind_listeners(&config).await?;
    let store = Store::connect(&config.store).await?;
    tracing::info!(backend = ?store.backend(), url = %crate::store::redact(&config.store.database_url), "store ready");
    let auth = authenticator(&config, &store).await?;
    let embedded = config.broker.mode == BrokerMode::Embedded;
    let broker = broker_side(&config, &store).await?;
    let bus_config = bus_config(&config);

    // The bus connects before any listener accepts a client: a broker that is unreachable or
    // refuses Cradle's credentials fails the start here.
    let queues = Queues::new(config.sync.queue);
    let inbox_subscriptions = (!embedded).then(|| {
        InboxSubscriptions::start(
            &broker.endpoint,
            &format!("{}-inbox", bus_config.client_id),
            config.mqtt.max_packet_bytes,
            Some(&config.broker.share_group),
            queues.inbox.0.clone(),
        )
    });
    let bus = start_bus(
        &config,
        &bus_config,
        &broker.endpoint,
        &queues,
        counters.bus.clone(),
    )
    .await?;

    let edge = start_edge(
        &config,
        auth.clone(),
        broker.upstream,
        &broker.v5_endpoint,
        &bus_config.client_id,
        counters.edge.clone(),
    )
    .await?;

    let base = Base {
        config: &config,
        store: &store,
        metrics: &counters.sync,
        bus: &bus,
        endpoint: &broker.endpoint,
        client_id: &bus_config.client_id,
    };
    let handlers = start_handlers(
        base,
        queues,
        inbox_subscriptions,
        broker.handed_over,
        (edge.ender(), auth.clone()),
    );
    let (feed, retention_task) = start_feed(&config, &store);
    let state = app_state(&config, (&store, &feed), &counters, &bus, auth, &handlers);
    let (http_task, http_stop) = start_http(&config, listeners, state, counters.http);
    Ok(Running {
        config,
        store,
        bus,
        edge,
        handlers,
        http_task,
        http_stop,
        feed,
        retention_task,
    })
}

/// Starts the live feed of the event log and, with `store.retention_days`, retention.
fn start_feed(config: &Config, store: &Store) -> (Arc<crate::feed::Feed>, Option<JoinHandle<()>>) {
    let feed = crate::feed::Feed::new(store.clone(), config.stream.clone());
    spawn_critical(Task::Feed, feed.clone().run());
    let retention = (config.store.retention_days > 0).then(|| {
        spawn_critical(
            Task::Retention,
            crate::store::retention::run(store.clone(), config.store.retention_days),
        )
    });
    (feed, retention)
}

/// Connects the bus and subscribes the route table (shared among replicas with an external
/// broker).
async fn start_bus(
    config: &Config,
    bus_config: &BusConfig,
    endpoint: &Endpoint,
    queues: &Queues,
    metrics: Arc<BusMetrics>,
) -> Result<Bus, ServeError> {
    let embedded = config.broker.mode == BrokerMode::Embedded;
    let bus = Bus::start(
        bus_config,
        endpoint,
        config.mqtt.max_payload_bytes,
        queues.routes(&route_table(embedded, &bus_config.client_id)),
        (!embedded).then(|| config.broker.share_group.clone()),
        metrics,
        (!embedded).then(|| crate::replicas::presence_topic(&bus_config.client_id)),
    )
    .await?;
    tracing::info!(broker = %endpoint, "bus subscribed");
    Ok(bus)
}

/// Starts the MQTT edge's listeners, its publisher (MQTT 5, so a Will keeps its properties)
/// named `{client_id}-edge`.
async fn start_edge(
    config: &Config,
    auth: Arc<Authenticator>,
    upstream: edge::Upstream,
    v5_endpoint: &Endpoint,
    client_id: &str,
    metrics: Arc<EdgeMetrics>,
) -> Result<edge::Edge, ServeError> {
    let publisher = Publisher::start(
        v5_endpoint,
        &format!("{client_id}-edge"),
        config.mqtt.max_packet_bytes,
    );
    let edge = edge::start(&config.mqtt, auth, upstream, publisher, metrics).await?;
    for (key, addr) in &edge.listening {
        tracing::info!(listener = key, %addr, "MQTT edge listening");
    }
    Ok(edge)
}

/// Binds `http.listen` and, when set, `http.admin_listen`.
async fn bind_listeners(
    config: &Config,
) -> Result<(tokio::net::TcpListener, Option<tokio::net::TcpListener>), ServeError> {
    let http = bind_http("http.listen", config.http.listen).await?;
    let admin = match config.http.admin_listen {
        Some(addr) => Some(bind_http("http.admin_listen", addr).await?),
        None => None,
    };
    Ok((http, admin))
}

/// Binds an HTTP listener; a failure names its key.
async fn bind_http(
    key: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| ServeError::Http { key, addr, error })
}

/// Serves the HTTP API (and `/ws`) on `listener`, and the administration routes and
/// `/metrics` on `admin` when there is one, until the returned sender says stop.
fn start_http(
    config: &Config,
    (listener, admin): (tokio::net::TcpListener, Option<tokio::net::TcpListener>),
    state: AppState,
    metrics: Arc<HttpMetrics>,
) -> (JoinHandle<()>, watch::Sender<bool>) {
    let (stop, stop_rx) = watch::channel(false);
    let limits = http::serve::Limits::from(&config.http);
    let max_body = config.http.max_body_bytes;
    let serve = |listener, surface, metrics| {
        let mut stop_rx: watch::Receiver<bool> = stop_rx.clone();
        let app = http::app(state.clone(), max_body, surface);
        http::serve::serve(listener, app, limits, metrics, async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        })
    };
    let task = match admin {
        None => spawn_critical(
            Task::HttpServer,
            serve(listener, http::Surface::All, metrics),
        ),
        Some(admin) => {
            tracing::info!(addr = ?admin.local_addr().ok(), "administration routes and /metrics on http.admin_listen");
            let public = serve(listener, http::Surface::Public, metrics.clone());
            let admin = serve(admin, http::Surface::Admin, metrics);
            spawn_critical(Task::HttpServer, async move {
                tokio::join!(public, admin);
            })
        }
    };
    (task, stop)
}

/// What the handlers are started with.
#[derive(Clone, Copy)]
struct Base<'a> {
    config: &'a Config,
    store: &'a Store,
    metrics: &'a Arc<SyncMetrics>,
    bus: &'a Bus,
    /// Where Cradle's own publisher (`{client_id}-out`) connects.
    endpoint: &'a Endpoint,
    /// The bus's client id, which Cradle's other clients are named after.
    client_id: &'a str,
}

/// The running handlers: status, sessions, stations, the WebSocket bridge and decisions.
struct Handlers {
    sessions: Arc<Sessions>,
    bridge: Arc<Bridge>,
    control: Arc<Control>,
    control_task: JoinHandle<()>,
    status_task: JoinHandle<()>,
    stations_task: JoinHandle<()>,
    sessions_task: JoinHandle<()>,
    bridge_task: JoinHandle<()>,
    expiry_task: Option<JoinHandle<()>>,
}

/// Starts the handlers on the bus's queues: the status handler feeds the session handler
/// (and, with the embedded broker, the bridge's presence); the bridge takes back the
/// sessions the previous run handed over.
fn start_handlers(
    base: Base<'_>,
    queues: Queues,
    inbox_subscriptions: Option<Arc<InboxSubscriptions>>,
    handed_over: Vec<(crate::ws::hub::HandedOver, Duration)>,
    (ender, auth): (edge::Ender, Arc<Authenticator>),
) -> Handlers {
    let Base {
        config,
        store,
        metrics,
        bus,
        endpoint,
        client_id,
    } = base;
    let Queues {
        status: (_, status_rx),
        stations: (_, stations_rx),
        inbox: (_, inbox_rx),
        control: (_, control_rx),
    } = queues;
    let embedded = config.broker.mode == BrokerMode::Embedded;
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let (presence_tx, presence_rx) = mpsc::unbounded_channel();
    let changes = [Some(changes_tx), embedded.then_some(presence_tx)];
    let status_task = spawn_status(base, status_rx, changes.into_iter().flatten().collect());
    let out = crate::mqtt_client::publisher(
        endpoint,
        &format!("{client_id}-out"),
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
    let sessions_task = spawn_critical(Task::SessionHandler, sessions.clone().run(changes_rx));
    let (bridge, lists_rx) = bridge(config, store, out.clone(), &sessions, inbox_subscriptions);
    let control = Arc::new(Control::new(
        auth,
        ender,
        bridge.clone(),
        (out, client_id.to_string()),
    ));
    let control_task = start_control(&control, control_rx, bus);
    bridge.take_back(handed_over);
    // Several replicas: sessions a replica handed over at its shutdown and nobody resumed
    // are ended by whichever replica claims them first once their window has passed.
    let expiry_task = (!embedded).then(|| {
        spawn_critical(
            Task::HandoverExpiry,
            end_expired_handovers(bridge.clone(), store.clone()),
        )
    });
    let bridge_task = spawn_critical(
        Task::Bridge,
        crate::ws::run(bridge.clone(), inbox_rx, bus.acker(), presence_rx, lists_rx),
    );
    let stations_task = spawn_stations(base, stations_rx, &sessions);

    Handlers {
        sessions,
        bridge,
        control,
        control_task,
        status_task,
        stations_task,
        sessions_task,
        bridge_task,
        expiry_task,
    }
}

/// Starts the station handler (baby- and parent-station announcements into sessions).
fn spawn_stations(
    base: Base<'_>,
    rx: mpsc::Receiver<Publish>,
    sessions: &Arc<Sessions>,
) -> JoinHandle<()> {
    spawn_critical(
        Task::StationHandler,
        stations::run(
            rx,
            sessions.clone(),
            base.bus.acker(),
            base.metrics.clone(),
            StationSettings {
                max_payload_bytes: base.config.sync.max_status_bytes,
                max_name_chars: crate::sync::session_input::MAX_NAME_CHARS,
            },
        ),
    )
}

/// Applies decisions from `cradle/control` (revocations, kicks, bans) to this replica, and
/// reads the bans in force from the store every second (a ban lifted on another replica, a
/// ban set before this replica started).
fn start_control(control: &Arc<Control>, rx: mpsc::Receiver<Publish>, bus: &Bus) -> JoinHandle<()> {
    let (control, acker) = (control.clone(), bus.acker());
    spawn_critical(Task::Control, async move {
        let auth = control.auth().clone();
        let refresh = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                auth.refresh_bans().await;
            }
        };
        tokio::select! {
            () = crate::control::run(control, rx, acker) => {}
            () = refresh => {}
        }
    })
}

/// Starts the status handler; it tells `changes` of every committed change. (With several
/// replicas, presence comes from the broker, any replica's reports, not from this replica's
/// commits: the bridge is then not among `changes`.)
fn spawn_status(
    base: Base<'_>,
    rx: mpsc::Receiver<Publish>,
    changes: Vec<mpsc::UnboundedSender<status::ConnectionChange>>,
) -> JoinHandle<()> {
    let config = base.config;
    spawn_critical(
        Task::StatusWriter,
        status::run(
            rx,
            base.store.clone(),
            base.bus.acker(),
            base.metrics.clone(),
            StatusSettings {
                max_status_bytes: config.sync.max_status_bytes,
                batch_max: config.sync.batch_max,
                changes,
            },
        ),
    )
}

/// The WebSocket bridge, publishing with `out`. With several replicas (`inbox` given) it
/// subscribes its sessions' topics itself, and pushes baby-station lists when the broker
/// delivers an announcement (whichever replica recorded the session); with the embedded
/// broker the session handler sends it the lists (the returned receiver).
fn bridge(
    config: &Config,
    store: &Store,
    out: rumqttc::AsyncClient,
    sessions: &Arc<Sessions>,
    inbox: Option<Arc<InboxSubscriptions>>,
) -> (
    Arc<Bridge>,
    mpsc::UnboundedReceiver<(String, serde_json::Value)>,
) {
    let bridge = Bridge::new(out, WsSettings::from(&config.websocket));
    let (lists_tx, lists_rx) = mpsc::unbounded_channel();
    let bridge = match inbox {
        Some(inbox) => bridge.with_replica_subscriptions(inbox, sessions.clone(), store.clone()),
        None => {
            sessions.follow_baby_stations(lists_tx);
            bridge
        }
    };
    (Arc::new(bridge), lists_rx)
}

/// What every HTTP handler (and `/ws`) may use.
fn app_state(
    config: &Config,
    (store, feed): (&Store, &Arc<crate::feed::Feed>),
    counters: &Counters,
    bus: &Bus,
    auth: Arc<Authenticator>,
    handlers: &Handlers,
) -> AppState {
    let revocations = auth.revocations();
    AppState {
        store: store.clone(),
        metrics: counters.http.clone(),
        registry: counters.registry(handlers.bridge.metrics.clone(), feed.metrics.clone()),
        bus: bus.state(),
        max_page_size: config.http.max_page_size,
        admin_token: config.http.admin_token.clone(),
        auth,
        http_loopback: config.http.listen.ip().is_loopback(),
        sessions: handlers.sessions.clone(),
        max_body_bytes: config.http.max_body_bytes,
        bridge: handlers.bridge.clone(),
        control: handlers.control.clone(),
        tokens: Arc::new(http::TokenCache::new(config.auth.cache_secs, revocations)),
        origins: Arc::new(http::Origins::from_config(
            config.http.allowed_origins.as_deref(),
        )),
        feed: feed.clone(),
        history: config.history.clone(),
    }
}

/// The verification gate's limits, and the authenticator of the edge and the HTTP API. Open
/// mode chosen by default (no account) refuses to start with a non-loopback listener.
async fn authenticator(config: &Config, store: &Store) -> Result<Arc<Authenticator>, ServeError> {
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
            if let Some((key, addr)) = config.client_listeners()
                .into_iter()
                .find(|(_, a)| !a.ip().is_loopback())
            {
                return Err(ServeError::OpenNonLoopback { key, addr });
            }
            tracing::info!("no account exists: open mode, anonymous clients on loopback only");
        }
        _ => {}
    }
    Ok(auth)
}

/// Starts the embedded broker (after recording what the previous run left connected, and
/// then rebuilding its retained state from the store), or names the external broker.
async fn broker_side(config: &Config, store: &Store) -> Result<BrokerSide, ServeError> {
    // The edge's publisher speaks MQTT 5 (a Will keeps its properties): the embedded
    // broker's MQTT 5 listener, or the external broker's one listener.
    if config.broker.mode == BrokerMode::External {
        // Other replicas' devices are still connected: nothing is closed here.
        let url = config.broker.url.as_deref().unwrap_or_default();
        let endpoint = Endpoint::external(url, config.broker.ca_file.as_deref())?;
        tracing::info!(broker = %endpoint, share_group = %config.broker.share_group, "using the external MQTT broker");
        return Ok(BrokerSide {
            v5_endpoint: endpoint.clone(),
            upstream: edge::Upstream::External(endpoint.clone()),
            endpoint,
            handed_over: Vec::new(),
        });
    }
    // The embedded broker starts empty: whoever the store still shows connected lost that
    // connection when the previous process ended (a crash, or a shutdown that could not
    // finish). Record it before new statuses arrive.
    // WebSocket sessions the previous process handed over stay open: they are taken back
    // and resumed, or ended when their window passes.
    let handed_over = crate::ws::handover::take(store).await?;
    let keep = handed_over
        .iter()
        .map(|(h, _)| h.connection_id.clone())
        .collect();
    let closed =
        status::close_open_connections(store, DisconnectReason::ServerShutdown, &keep).await?;
    if closed > 0 {
        tracing::warn!(
            clients = closed,
            "connections left open by the previous run recorded as ended"
        );
    }
    let broker = broker::start(&config.mqtt, &config.bus.client_id).await?;
    tracing::info!(v4 = %broker.v4, v5 = %broker.v5, "embedded MQTT broker listening on loopback");
    restore_retained(store, &broker).await?;
    Ok(BrokerSide {
        endpoint: Endpoint::embedded(broker.v4),
        v5_endpoint: Endpoint::embedded(broker.v5),
        upstream: edge::Upstream::Embedded(broker.links.clone()),
        handed_over,
    })
}

/// The bus's settings; with an external broker and the default client id, the id is derived
/// from the host name.
fn bus_config(config: &Config) -> BusConfig {
    let mut bus_config = config.bus.clone();
    if config.broker.mode == BrokerMode::External
        && bus_config.client_id == BusConfig::default().client_id
    {
        // Replicas must not share a client id (each would take the other's session over),
        // and a replica's persistent session holds its share of unacknowledged messages,
        // so the id should survive restarts: the host name is both.
        bus_config.client_id = format!("cradle-{}", host_name());
        tracing::info!(client_id = %bus_config.client_id, "bus.client_id derived from the host name; set CRADLE_BUS_CLIENT_ID to a stable unique id per replica");
    }
    bus_config
}

/// Several replicas: once a second, ends the sessions handed over through the store whose
/// resume window has passed (whichever replica claims them first).
async fn end_expired_handovers(bridge: Arc<Bridge>, store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        bridge.end_expired_handovers(&store).await;
    }
}

impl Running {
    /// Drains in order, so that nothing acknowledged is lost: WebSocket sessions offered or
    /// handed over, the edge's connections ended, the handlers drained, the sessions handed
    /// to the next start, the bus closed, the open connections recorded as ended, HTTP
    /// stopped, the store closed.
    async fn drain(self) -> Result<(), ServeError> {
        let embedded = self.config.broker.mode == BrokerMode::Embedded;
        tracing::info!("shutting down: ending WebSocket sessions and MQTT connections");
        // Replicas hand their WebSocket sessions over through the store at once: the PWAs
        // reconnect to the other replicas, which claim them on resume. With the embedded
        // broker they are handed over to the next start once the devices' ends reached them
        // (below).
        if let Some(task) = &self.handlers.expiry_task {
            task.abort();
        }
        if !embedded {
            self.handlers.bridge.offer_all().await;
            self.handlers.bridge.hand_over(&self.store).await;
        }
        self.edge.shutdown(Duration::from_secs(5)).await;
        // The ends just published reach the bus through the broker; give them a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !embedded && self.config.broker.leave_on_shutdown {
            // Scaling down or restarting must not leave a member of the group that the
            // broker keeps dealing messages to while nobody reads them.
            self.bus.leave_group(Duration::from_secs(5)).await;
        }
        drain_handlers(
            &self.bus,
            self.handlers.status_task,
            self.handlers.stations_task,
            self.handlers.sessions_task,
        )
        .await;
        // The devices' ends committed above reach the WebSocket sessions as presence frames
        // (kept in their replay buffers), then the sessions are handed over through the
        // store.
        let kept = if embedded {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.handlers.bridge.hand_over(&self.store).await
        } else {
            Default::default()
        };
        self.handlers.bridge_task.abort();
        self.handlers.control_task.abort();
        self.bus.close(Duration::from_secs(5)).await;
        // The embedded broker ends with this process, and every device's connection with
        // it. (An external broker keeps its directly connected clients and other replicas'
        // ones.)
        if embedded {
            record_ends(&self.store, &kept).await;
        }
        // Followers of the live stream end (`event: cut`, shutdown), then HTTP drains.
        self.feed.close();
        if let Some(task) = &self.retention_task {
            task.abort();
        }
        let _ = self.http_stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), self.http_task)
            .await
            .is_err()
        {
            tracing::warn!("HTTP server did not stop in time");
        }
        self.store.close().await?;
        tracing::info!("store closed; bye");
        Ok(())
    }
}

/// Stops the bus's forwarding and lets the status and station handlers finish what they
/// were given; then the session handler, whose change feed the status handler closes.
async fn drain_handlers(
    bus: &Bus,
    status_task: JoinHandle<()>,
    stations_task: JoinHandle<()>,
    sessions_task: JoinHandle<()>,
) {
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
}

/// Records every connection still open as ended by `server_shutdown`, except the WebSocket
/// sessions handed to the next start (`kept`).
async fn record_ends(store: &Store, kept: &std::collections::HashSet<String>) {
    match status::close_open_connections(store, DisconnectReason::ServerShutdown, kept).await {
        Ok(n) => tracing::info!(
            clients = n,
            "open connections recorded as ended by server_shutdown"
        ),
        Err(error) => {
            tracing::error!(%error, "open connections not recorded as ended; the next start will")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_written_once_with_its_samples_under_its_header() {
        let text = Counters::default()
            .registry(Arc::default(), Arc::default())
            .render(&[&crate::http::metrics::ConnectedClients(1)]);
        let mut seen = std::collections::HashSet::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                current = rest.split(' ').next().unwrap_or_default();
                assert!(seen.insert(current), "{current} written twice");
            } else if !line.starts_with("# TYPE ") {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert_eq!(name, current, "{line} away from its family");
            }
        }
        for family in [
            "cradle_mqtt_messages_dropped_total",
            "cradle_edge_connects_total",
            "cradle_auth_verifications_total",
            "cradle_broker_acks_held",
            "cradle_http_refused_total",
            "cradle_ws_resumes_total",
            "cradle_connected_clients",
        ] {
            assert!(seen.contains(family), "{family} missing");
        }
        assert!(text.contains(
            "cradle_mqtt_messages_dropped_total{family=\"inbox\",reason=\"malformed\"} 0"
        ));
    }
}
