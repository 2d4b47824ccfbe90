//! One typed configuration: built-in defaults, then a TOML file, then `CRADLE_*`
//! environment variables, then command-line flags (the last two merged by clap, flag wins).
//!
//! Every key is documented in `config/cradle.toml`; errors name the key that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What went wrong while building the configuration. Each message is one line naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file was named but cannot be read.
    #[error("config file {path}: cannot be read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or a key has the wrong type or is unknown.
    #[error("config file {path}: {key}: {message}")]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// An environment variable or flag holds a value that does not parse.
    #[error("{key} (--{flag} / {env}): {message}")]
    Override {
        key: &'static str,
        flag: &'static str,
        env: &'static str,
        message: String,
    },
    /// A value parsed but is not usable (for example a zero batch size).
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The whole configuration of the `cradle serve` process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The MQTT listeners devices connect to, and the embedded broker's limits.
    pub mqtt: MqttConfig,
    /// The HTTP API, health and metrics.
    pub http: HttpConfig,
    /// The event log and read models.
    pub store: StoreConfig,
    /// Cradle's own MQTT client that consumes the topic families.
    pub bus: BusConfig,
    /// The status pipeline: validation limits and commit batching.
    pub sync: SyncConfig,
    /// Logging.
    pub log: LogConfig,
    /// Who may connect: accounts, open mode for local development.
    pub auth: AuthConfig,
    /// Monitoring sessions: grace period and pending starts.
    pub sessions: SessionsConfig,
    /// The legacy WebSocket bridge (`GET /ws`).
    pub websocket: WebSocketConfig,
    /// Which MQTT broker: the embedded one, or an external cluster shared by replicas.
    pub broker: BrokerConfig,
}

/// Where the MQTT broker runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    /// rumqttd inside this process, reached only through the edge (one machine).
    #[default]
    Embedded,
    /// An external broker cluster (EMQX, VerneMQ, HiveMQ, Mosquitto) at `broker.url`, shared
    /// by several Cradle replicas.
    External,
}

/// Broker settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `embedded` or `external`.
    pub mode: BrokerMode,
    /// The external broker: `mqtt://[user:password@]host[:port]` (port 1883 by default) or
    /// `mqtts://…` (TLS, port 8883 by default). Required when `mode = "external"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// PEM file with the CA certificates an `mqtts://` broker is verified against. Unset:
    /// the Mozilla root certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Shared-subscription group of the handled topic families in external mode
    /// (`$share/{group}/…`): replicas in one group split the messages between them. Every
    /// replica of one deployment must use the same group.
    pub share_group: String,
    /// External mode: on shutdown, leave the share group (UNSUBSCRIBE) before draining, so
    /// the broker deals this replica's share to the others at once. `false` keeps the
    /// replica a member while it is down: its share waits in its persistent session until
    /// a replica with the same `bus.client_id` returns (a fixed set of replicas that always
    /// come back); a replica removed for good then holds messages until its session
    /// expires at the broker.
    pub leave_on_shutdown: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            mode: BrokerMode::Embedded,
            url: None,
            ca_file: None,
            share_group: "cradle".to_string(),
            leave_on_shutdown: true,
        }
    }
}

/// WebSocket bridge settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Seconds between the server's heartbeats (a `ping` frame and a WebSocket ping).
    pub heartbeat_secs: u64,
    /// A socket that sends nothing (frames, pongs) this long is dropped, in seconds; the
    /// session then waits `resume_window_secs` for a resume before it is `lost`.
    pub heartbeat_timeout_secs: u64,
    /// How long a dropped session waits for a resume, in seconds.
    pub resume_window_secs: u64,
    /// Frames kept per session for replay after a resume.
    pub replay_frames: usize,
    /// Frames queued per socket; a client this far behind is disconnected (`slow_consumer`).
    pub send_queue: usize,
    /// Longest a single write may take, in milliseconds, before the socket is dropped.
    pub write_timeout_ms: u64,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// Signal frames per second per connection (token bucket); 0 = unlimited.
    pub signal_rate: u32,
    /// Burst of the signal token bucket.
    pub signal_burst: u32,
    /// Refused frames (invalid, rate-limited) before the socket is closed with code 4008.
    pub max_errors: u32,
    /// Bridge sessions held at once (connected or waiting for a resume); a new session beyond
    /// it is refused with 503 before the upgrade.
    pub max_sessions: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            heartbeat_secs: 15,
            heartbeat_timeout_secs: 45,
            resume_window_secs: 30,
            replay_frames: 500,
            send_queue: 256,
            write_timeout_ms: 5000,
            max_frame_bytes: 64 * 1024,
            signal_rate: 50,
            signal_burst: 100,
            max_errors: 20,
            max_sessions: 10_000,
        }
    }
}

/// Session settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// How long a baby station whose connection was lost (not a clean disconnect) may stay
    /// away before its active session ends (reason `grace_expired`), in seconds.
    pub grace_secs: u64,
    /// Session starts waiting for their connection to appear, kept per account; the least
    /// recently used is evicted (logged and counted) beyond it.
    pub pending_per_account: usize,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            grace_secs: 120,
            pending_per_account: 1000,
        }
    }
}

/// How MQTT and HTTP clients are authenticated.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Open (anonymous) while no account exists, and then on loopback listeners only; a
    /// non-loopback listener refuses to start until an account exists. Credentials once any
    /// account exists.
    #[default]
    Auto,
    /// Anonymous clients accepted on every listener, as well as credentials (development
    /// only; warned about at every start).
    Open,
    /// Credentials always, even before the first account exists.
    Required,
}

/// Authentication settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `auto`, `open` or `required`.
    pub mode: AuthMode,
    /// How long a verified device secret (MQTT edge) or bearer token (HTTP API, `/ws`) is
    /// remembered, in seconds, so a reconnect storm does not run one argon2 verification per
    /// CONNECT, nor an HTTP client one per request. A revoked credential stops working for
    /// new connections and requests at most this long after the revocation. 0 disables the
    /// cache.
    pub cache_secs: u64,
    /// argon2 verifications (MQTT passwords, bearer tokens) running at once, process-wide;
    /// each costs ~19 MiB and tens of milliseconds of a core.
    pub max_verifications: usize,
    /// Verifications waiting or running at once for one source address.
    pub max_verifications_per_source: usize,
    /// How long a CONNECT or request waits for a verification slot, in milliseconds; then it
    /// is refused (MQTT: CONNACK server busy; HTTP: 503).
    pub verify_wait_ms: u64,
    /// Longest delay before a verification for a source that keeps failing, in milliseconds
    /// (after 3 failures: 250 ms, doubling per failure).
    pub failure_delay_max_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Auto,
            cache_secs: 60,
            max_verifications: 2,
            max_verifications_per_source: 1,
            verify_wait_ms: 5000,
            failure_delay_max_ms: 10_000,
        }
    }
}

/// MQTT listeners (the edge), its limits, and the embedded broker behind it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// The edge's MQTT listener, 3.1.1 and 5 on one port. Loopback by default, as Mosquitto 2.
    pub listen: SocketAddr,
    /// A second edge listener, also 3.1.1 and 5 (kept for devices configured with the MQTT 5
    /// port of earlier versions).
    pub v5_listen: SocketAddr,
    /// The edge's MQTT over WebSocket listener (subprotocol `mqtt`, 3.1.1 and 5).
    pub ws_listen: SocketAddr,
    /// MQTT over TLS (usually port 8883); needs `tls_cert` and `tls_key`. Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS; needs `tls_cert` and `tls_key`. Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wss_listen: Option<SocketAddr>,
    /// PEM file with the certificate chain of the TLS listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key of the TLS listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Largest MQTT packet the edge accepts from a client, in bytes; larger ones end the
    /// connection (MQTT 5: DISCONNECT 0x95 packet too large).
    pub max_packet_bytes: usize,
    /// Largest PUBLISH payload the broker accepts, in bytes.
    pub max_payload_bytes: usize,
    /// Most simultaneous client connections the edge accepts; more get CONNACK "server
    /// unavailable".
    pub max_connections: usize,
    /// How long a new connection may take to send CONNECT, in milliseconds.
    pub connect_timeout_ms: u16,
    /// PUBLISH packets per second one client connection may send (token bucket); above it
    /// the edge stops reading from that client until tokens refill. 0: unlimited.
    pub publish_rate: u32,
    /// Burst size of the publish token bucket.
    pub publish_burst: u32,
    /// Refused PUBLISH/SUBSCRIBE filters one connection may send before it is disconnected
    /// (reason `kicked`).
    pub max_violations: u32,
    /// Longest keep-alive a client may use, in seconds (0: no maximum). An MQTT 5 client
    /// asking for more, or for none, is told this one (Server Keep Alive); an MQTT 3.1.1
    /// client, which cannot be told, is refused (identifier rejected).
    pub max_keep_alive_secs: u16,
    /// Embedded broker: a QoS 1 PUBLISH on a status or station topic gets its PUBACK (QoS 2:
    /// PUBCOMP) only once its events are committed, so an acknowledged status survives a crash.
    /// `false` acknowledges once the broker has it in memory (lower publish latency; a crash
    /// loses what was acknowledged and not yet committed). An external broker acknowledges as
    /// it does.
    pub puback_after_commit: bool,
    /// Largest CONNECT packet accepted before authentication, in bytes; a larger one is
    /// refused before it is read.
    pub max_connect_bytes: usize,
    /// Connections accepted but not yet admitted (TLS or WebSocket handshake, CONNECT,
    /// authentication) at once; more are closed as they are accepted.
    pub max_pending: usize,
    /// How long the edge waits for a client to take bytes it writes (deliveries, acks), in
    /// milliseconds; a client that reads nothing for this long is disconnected (`kicked`).
    pub write_timeout_ms: u64,
    /// Retained messages the devices of one account may keep in the broker.
    pub max_retained_per_account: usize,
    /// Bytes (topic + payload) of retained messages the devices of one account may keep in
    /// the broker.
    pub max_retained_bytes_per_account: usize,
    /// The embedded broker's MQTT 3.1.1 listener, reached only by the edge and Cradle's own
    /// clients. Must be loopback; port 0 picks a free port.
    pub broker_listen: SocketAddr,
    /// The embedded broker's MQTT 5 listener (same rules as `broker_listen`).
    pub broker_v5_listen: SocketAddr,
    /// Most unacknowledged QoS 1 messages in flight per connection.
    pub max_inflight: usize,
    /// Size of one in-memory log segment per topic filter, in bytes.
    pub segment_bytes: usize,
    /// Segments kept per topic filter before the oldest is dropped.
    pub segment_count: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: loopback(1883),
            v5_listen: loopback(1884),
            ws_listen: loopback(8083),
            tls_listen: None,
            wss_listen: None,
            tls_cert: None,
            tls_key: None,
            max_packet_bytes: 256 * 1024 + 4096,
            max_payload_bytes: 256 * 1024,
            max_connections: 20_000,
            connect_timeout_ms: 10_000,
            publish_rate: 200,
            publish_burst: 400,
            max_violations: 10,
            max_keep_alive_secs: 0,
            puback_after_commit: true,
            max_connect_bytes: 65_536,
            max_pending: 1024,
            write_timeout_ms: 30_000,
            max_retained_per_account: 10_000,
            max_retained_bytes_per_account: 16 * 1024 * 1024,
            broker_listen: loopback(0),
            broker_v5_listen: loopback(0),
            max_inflight: 500,
            segment_bytes: 16 * 1024 * 1024,
            segment_count: 8,
        }
    }
}

/// HTTP API settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP API, `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Largest request body read, in bytes; larger bodies get 413 before being read.
    pub max_body_bytes: usize,
    /// Largest `limit` a caller may ask of a list route.
    pub max_page_size: u64,
    /// Bearer token that may read every account (operators' scripts). Unset: no admin token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// How long a connection may take to send a request's complete headers, in milliseconds,
    /// counted from when the server waits for them (so an idle keep-alive connection is also
    /// closed after this long); then the connection is closed.
    pub header_timeout_ms: u64,
    /// How long a request's body may take to arrive, from its headers, in milliseconds; a
    /// handler still reading it then answers 408 and the connection is closed.
    pub body_timeout_ms: u64,
    /// Most simultaneous HTTP connections (WebSockets on `/ws` included until upgraded);
    /// more are answered 503 and closed at once. Their descriptors come from the same
    /// process limit as the MQTT listeners'.
    pub max_connections: usize,
    /// How long a response may wait for the client to take it (no byte written), in
    /// milliseconds; then the connection is closed. Not applied to upgraded WebSockets
    /// (`websocket.write_timeout_ms` is theirs).
    pub write_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: loopback(8080),
            max_body_bytes: 64 * 1024,
            max_page_size: 1000,
            admin_token: None,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_connections: 1024,
            write_timeout_ms: 10_000,
        }
    }
}

/// Durability level of SQLite commits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// fsync on every commit: an acknowledged event survives a power loss.
    #[default]
    Full,
    /// fsync at checkpoints: survives a process crash, may lose the last commits on power loss.
    Normal,
}

/// Store settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path` (created when missing) or `postgres://user:pass@host:port/db`.
    pub database_url: String,
    /// Most pooled database connections (per replica: PostgreSQL's `max_connections` must
    /// cover every replica's pool).
    pub max_connections: u32,
    /// Connections the pool keeps open even when idle (PostgreSQL).
    pub min_connections: u32,
    /// How long a query waits for a free pooled connection before it fails, in milliseconds.
    pub acquire_timeout_ms: u64,
    /// An idle pooled connection above `min_connections` is closed after this many seconds;
    /// 0 keeps them.
    pub idle_timeout_secs: u64,
    /// Every pooled connection is replaced after this many seconds (lets a PostgreSQL
    /// failover or a pooler rebalance); 0 keeps them.
    pub max_lifetime_secs: u64,
    /// SQLite only: `full` or `normal`.
    pub sqlite_synchronous: SqliteSync,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: "sqlite://data/cradle.db".to_string(),
            max_connections: 8,
            min_connections: 0,
            acquire_timeout_ms: 10_000,
            idle_timeout_secs: 600,
            max_lifetime_secs: 1800,
            sqlite_synchronous: SqliteSync::Full,
        }
    }
}

/// Cradle's own MQTT client (the bus).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// MQTT client id of the bus connection; unique per replica.
    pub client_id: String,
    /// Keep-alive of the bus connection, in seconds.
    pub keep_alive_secs: u64,
    /// How long start-up waits for the broker to accept the bus, in milliseconds.
    pub connect_timeout_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            client_id: "cradle-sync".to_string(),
            keep_alive_secs: 30,
            connect_timeout_ms: 10_000,
        }
    }
}

/// Status pipeline settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Largest status payload accepted, in bytes; larger ones are dropped and counted.
    pub max_status_bytes: usize,
    /// Most status messages committed in one transaction.
    pub batch_max: usize,
    /// Messages buffered between the bus and the writer before the bus waits.
    pub queue: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            max_status_bytes: 4096,
            batch_max: 512,
            queue: 4096,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, for example `info,cradle=debug`.
    pub filter: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info,sqlx=warn,rumqttd=off".to_string(),
            format: LogFormat::Text,
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Overrides from the environment and the command line; clap merges the two (flag wins).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// mqtt.listen: MQTT 3.1.1 TCP listener.
    #[arg(long, env = "CRADLE_MQTT_LISTEN", value_name = "ADDR")]
    pub mqtt_listen: Option<String>,
    /// mqtt.v5_listen: MQTT 5 TCP listener.
    #[arg(long, env = "CRADLE_MQTT_V5_LISTEN", value_name = "ADDR")]
    pub mqtt_v5_listen: Option<String>,
    /// mqtt.ws_listen: MQTT over WebSocket listener.
    #[arg(long, env = "CRADLE_MQTT_WS_LISTEN", value_name = "ADDR")]
    pub mqtt_ws_listen: Option<String>,
    /// http.listen: HTTP API listener.
    #[arg(long, env = "CRADLE_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// store.database_url: `sqlite://…` or `postgres://…`.
    #[arg(long, env = "CRADLE_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// log.filter: tracing filter.
    #[arg(long, env = "CRADLE_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// log.format: `text` or `json`.
    #[arg(long, env = "CRADLE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// http.admin_token: bearer token that may read every account.
    #[arg(
        long,
        env = "CRADLE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// bus.client_id: MQTT client id of Cradle's own subscriber.
    #[arg(long, env = "CRADLE_BUS_CLIENT_ID", value_name = "ID")]
    pub bus_client_id: Option<String>,
    /// auth.mode: `auto`, `open` or `required`.
    #[arg(long, env = "CRADLE_AUTH_MODE", value_name = "MODE")]
    pub auth_mode: Option<String>,
    /// mqtt.publish_rate: PUBLISH packets per second per client connection, 0 = unlimited.
    #[arg(long, env = "CRADLE_MQTT_PUBLISH_RATE", value_name = "N")]
    pub mqtt_publish_rate: Option<String>,
    /// mqtt.max_keep_alive_secs: longest keep-alive a client may use, 0 = no maximum.
    #[arg(long, env = "CRADLE_MQTT_MAX_KEEP_ALIVE_SECS", value_name = "SECS")]
    pub mqtt_max_keep_alive_secs: Option<String>,
    /// mqtt.puback_after_commit: `true` or `false`.
    #[arg(long, env = "CRADLE_MQTT_PUBACK_AFTER_COMMIT", value_name = "BOOL")]
    pub mqtt_puback_after_commit: Option<String>,
    /// websocket.signal_rate: signal frames per second per WebSocket session, 0 = unlimited.
    #[arg(long, env = "CRADLE_WEBSOCKET_SIGNAL_RATE", value_name = "N")]
    pub websocket_signal_rate: Option<String>,
    /// broker.mode: `embedded` or `external`.
    #[arg(long, env = "CRADLE_BROKER_MODE", value_name = "MODE")]
    pub broker_mode: Option<String>,
    /// broker.url: the external broker, `mqtt://[user:password@]host:port` or `mqtts://…`.
    #[arg(
        long,
        env = "CRADLE_BROKER_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub broker_url: Option<String>,
    /// broker.share_group: shared-subscription group of the replicas.
    #[arg(long, env = "CRADLE_BROKER_SHARE_GROUP", value_name = "GROUP")]
    pub broker_share_group: Option<String>,
    /// store.max_connections: most pooled database connections.
    #[arg(long, env = "CRADLE_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    pub database_max_connections: Option<String>,
    /// http.header_timeout_ms: time to send a request's headers, in milliseconds.
    #[arg(long, env = "CRADLE_HTTP_HEADER_TIMEOUT_MS", value_name = "MS")]
    pub http_header_timeout_ms: Option<String>,
    /// http.body_timeout_ms: time to send a request's body, in milliseconds.
    #[arg(long, env = "CRADLE_HTTP_BODY_TIMEOUT_MS", value_name = "MS")]
    pub http_body_timeout_ms: Option<String>,
    /// http.max_connections: most simultaneous HTTP connections.
    #[arg(long, env = "CRADLE_HTTP_MAX_CONNECTIONS", value_name = "N")]
    pub http_max_connections: Option<String>,
    /// http.write_timeout_ms: time a response may wait for the client to take it, in ms.
    #[arg(long, env = "CRADLE_HTTP_WRITE_TIMEOUT_MS", value_name = "MS")]
    pub http_write_timeout_ms: Option<String>,
}

/// The default config file, read when present and no `--config` is given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "config/cradle.toml";

impl Config {
    /// Builds the configuration: defaults, then `file` (or the default file when present),
    /// then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Config::default(),
        };
        config.apply(overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads one TOML file over the defaults.
    pub(crate) fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|(key, message)| ConfigError::Parse {
            path: path.to_path_buf(),
            key,
            message,
        })
    }

    /// Parses TOML text; on error returns the dotted key path and a one-line message.
    pub(crate) fn from_toml(text: &str) -> Result<Config, (String, String)> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let message = one_line(err.inner().message());
            let key = if key == "." {
                "(file)".to_string()
            } else {
                key
            };
            (key, message)
        })
    }

    /// Applies command-line and environment overrides over the file's values, in a fixed order:
    /// the first value that does not parse is the error reported.
    fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        self.apply_listeners(o)?;
        self.apply_settings(o)?;
        self.apply_broker(o)?;
        self.apply_limits(o)
    }

    /// Applies the overrides of the four plain listeners (MQTT 3.1.1, MQTT 5, MQTT over WebSocket, HTTP).
    fn apply_listeners(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(v) = &o.mqtt_listen {
            self.mqtt.listen = parse_addr(v, "mqtt.listen", "mqtt-listen", "CRADLE_MQTT_LISTEN")?;
        }
        if let Some(v) = &o.mqtt_v5_listen {
            self.mqtt.v5_listen = parse_addr(
                v,
                "mqtt.v5_listen",
                "mqtt-v5-listen",
                "CRADLE_MQTT_V5_LISTEN",
            )?;
        }
        if let Some(v) = &o.mqtt_ws_listen {
            self.mqtt.ws_listen = parse_addr(
                v,
                "mqtt.ws_listen",
                "mqtt-ws-listen",
                "CRADLE_MQTT_WS_LISTEN",
            )?;
        }
        if let Some(v) = &o.http_listen {
            self.http.listen = parse_addr(v, "http.listen", "http-listen", "CRADLE_HTTP_LISTEN")?;
        }
        Ok(())
    }

    /// Applies the overrides of the database URL, logging, admin token, bus client id,
    /// authentication mode and WebSocket signal rate.
    fn apply_settings(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(v) = &o.database_url {
            self.store.database_url = v.clone();
        }
        if let Some(v) = &o.log {
            self.log.filter = v.clone();
        }
        if let Some(v) = &o.log_format {
            self.log.format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Override {
                        key: "log.format",
                        flag: "log-format",
                        env: "CRADLE_LOG_FORMAT",
                        message: format!("expected `text` or `json`, got `{other}`"),
                    })
                }
            };
        }
        if let Some(v) = &o.admin_token {
            self.http.admin_token = Some(v.clone());
        }
        if let Some(v) = &o.bus_client_id {
            self.bus.client_id = v.clone();
        }
        if let Some(v) = &o.auth_mode {
            self.auth.mode = match v.as_str() {
                "auto" => AuthMode::Auto,
                "open" => AuthMode::Open,
                "required" => AuthMode::Required,
                other => {
                    return Err(ConfigError::Override {
                        key: "auth.mode",
                        flag: "auth-mode",
                        env: "CRADLE_AUTH_MODE",
                        message: format!("expected `auto`, `open` or `required`, got `{other}`"),
                    })
                }
            };
        }
        if let Some(v) = &o.websocket_signal_rate {
            self.websocket.signal_rate = parse_override(
                v,
                "websocket.signal_rate",
                "websocket-signal-rate",
                "CRADLE_WEBSOCKET_SIGNAL_RATE",
                "is not a whole number",
            )?;
        }
        Ok(())
    }

    /// Applies the overrides of the broker's mode, URL and share group.
    fn apply_broker(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(v) = &o.broker_mode {
            self.broker.mode = match v.as_str() {
                "embedded" => BrokerMode::Embedded,
                "external" => BrokerMode::External,
                other => {
                    return Err(ConfigError::Override {
                        key: "broker.mode",
                        flag: "broker-mode",
                        env: "CRADLE_BROKER_MODE",
                        message: format!("expected `embedded` or `external`, got `{other}`"),
                    })
                }
            };
        }
        if let Some(v) = &o.broker_url {
            self.broker.url = Some(v.clone());
        }
        if let Some(v) = &o.broker_share_group {
            self.broker.share_group = v.clone();
        }
        Ok(())
    }

    /// Applies the numeric and boolean overrides: pool size, MQTT rate and keep-alive,
    /// PUBACK-after-commit, and the HTTP timeouts and connection limit.
    fn apply_limits(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(v) = &o.database_max_connections {
            self.store.max_connections = parse_override(
                v,
                "store.max_connections",
                "database-max-connections",
                "CRADLE_DATABASE_MAX_CONNECTIONS",
                "is not a whole number",
            )?;
        }
        if let Some(v) = &o.mqtt_publish_rate {
            self.mqtt.publish_rate = parse_override(
                v,
                "mqtt.publish_rate",
                "mqtt-publish-rate",
                "CRADLE_MQTT_PUBLISH_RATE",
                "is not a whole number",
            )?;
        }
        if let Some(v) = &o.mqtt_max_keep_alive_secs {
            self.mqtt.max_keep_alive_secs = parse_override(
                v,
                "mqtt.max_keep_alive_secs",
                "mqtt-max-keep-alive-secs",
                "CRADLE_MQTT_MAX_KEEP_ALIVE_SECS",
                "is not a whole number of seconds up to 65535",
            )?;
        }
        if let Some(v) = &o.mqtt_puback_after_commit {
            self.mqtt.puback_after_commit = parse_override(
                v,
                "mqtt.puback_after_commit",
                "mqtt-puback-after-commit",
                "CRADLE_MQTT_PUBACK_AFTER_COMMIT",
                "is not `true` or `false`",
            )?;
        }
        if let Some(v) = &o.http_header_timeout_ms {
            self.http.header_timeout_ms = parse_override(
                v,
                "http.header_timeout_ms",
                "http-header-timeout-ms",
                "CRADLE_HTTP_HEADER_TIMEOUT_MS",
                "is not a whole number",
            )?;
        }
        if let Some(v) = &o.http_body_timeout_ms {
            self.http.body_timeout_ms = parse_override(
                v,
                "http.body_timeout_ms",
                "http-body-timeout-ms",
                "CRADLE_HTTP_BODY_TIMEOUT_MS",
                "is not a whole number",
            )?;
        }
        if let Some(v) = &o.http_max_connections {
            self.http.max_connections = parse_override(
                v,
                "http.max_connections",
                "http-max-connections",
                "CRADLE_HTTP_MAX_CONNECTIONS",
                "is not a whole number",
            )?;
        }
        if let Some(v) = &o.http_write_timeout_ms {
            self.http.write_timeout_ms = parse_override(
                v,
                "http.write_timeout_ms",
                "http-write-timeout-ms",
                "CRADLE_HTTP_WRITE_TIMEOUT_MS",
                "is not a whole number",
            )?;
        }
        Ok(())
    }

    /// Checks values that parse but cannot work. The checks run in a fixed order, section by
    /// section, and the first failure is the error reported.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_basics()?;
        self.validate_mqtt_buffers()?;
        self.validate_http()?;
        self.validate_sync_bus_log()?;
        self.validate_store_pool()?;
        self.validate_broker()?;
        self.validate_websocket()?;
        self.validate_sessions()?;
        self.validate_mqtt_limits()?;
        self.validate_tls()?;
        self.validate_listeners()
    }

    /// Checks the database URL's scheme and the sizes that must be at least one
    /// (sync batch and queue, WebSocket sessions, verifications) and the bus client id.
    fn validate_basics(&self) -> Result<(), ConfigError> {
        if !(self.store.database_url.starts_with("sqlite:")
            || self.store.database_url.starts_with("postgres://")
            || self.store.database_url.starts_with("postgresql://"))
        {
            return invalid(
                "store.database_url",
                "must start with sqlite:, postgres:// or postgresql://",
            );
        }
        if self.sync.batch_max == 0 {
            return invalid("sync.batch_max", "must be at least 1");
        }
        if self.sync.queue == 0 {
            return invalid("sync.queue", "must be at least 1");
        }
        if self.bus.client_id.is_empty() {
            return invalid("bus.client_id", "must not be empty");
        }
        if self.websocket.max_sessions == 0 {
            return invalid("websocket.max_sessions", "must be at least 1");
        }
        if self.auth.max_verifications == 0 {
            return invalid("auth.max_verifications", "must be at least 1");
        }
        if self.auth.max_verifications_per_source == 0 {
            return invalid("auth.max_verifications_per_source", "must be at least 1");
        }
        Ok(())
    }

    /// Checks the edge's CONNECT size, pending queue and write timeout.
    fn validate_mqtt_buffers(&self) -> Result<(), ConfigError> {
        if self.mqtt.max_connect_bytes < 64 {
            return invalid("mqtt.max_connect_bytes", "must be at least 64");
        }
        if self.mqtt.max_pending == 0 {
            return invalid("mqtt.max_pending", "must be at least 1");
        }
        if self.mqtt.write_timeout_ms == 0 {
            return invalid("mqtt.write_timeout_ms", "must be at least 1");
        }
        Ok(())
    }

    /// Checks the `[http]` section: admin token length, page size, timeouts, connection limit.
    fn validate_http(&self) -> Result<(), ConfigError> {
        if matches!(&self.http.admin_token, Some(t) if t.len() < 16) {
            return invalid("http.admin_token", "must be at least 16 characters");
        }
        if self.http.max_page_size == 0 {
            return invalid("http.max_page_size", "must be at least 1");
        }
        if self.http.header_timeout_ms < 100 {
            return invalid("http.header_timeout_ms", "must be at least 100");
        }
        if self.http.body_timeout_ms < 100 {
            return invalid("http.body_timeout_ms", "must be at least 100");
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1");
        }
        if self.http.write_timeout_ms < 100 {
            return invalid("http.write_timeout_ms", "must be at least 100");
        }
        Ok(())
    }

    /// Checks the status size limit, the bus keep-alive and that the log filter parses.
    fn validate_sync_bus_log(&self) -> Result<(), ConfigError> {
        if self.sync.max_status_bytes < 64 {
            return invalid("sync.max_status_bytes", "must be at least 64");
        }
        if self.bus.keep_alive_secs < 5 {
            return invalid("bus.keep_alive_secs", "must be at least 5");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(ConfigError::Invalid {
                key: "log.filter",
                message: one_line(&e.to_string()),
            });
        }
        Ok(())
    }

    /// Checks the database pool's bounds and acquire timeout.
    fn validate_store_pool(&self) -> Result<(), ConfigError> {
        if self.store.max_connections == 0 {
            return invalid("store.max_connections", "must be at least 1");
        }
        if self.store.min_connections > self.store.max_connections {
            return invalid(
                "store.min_connections",
                "must not exceed store.max_connections",
            );
        }
        if self.store.acquire_timeout_ms == 0 {
            return invalid("store.acquire_timeout_ms", "must be at least 1");
        }
        Ok(())
    }

    /// Checks that the broker's URL goes with its mode, and the share group's name.
    fn validate_broker(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        match (b.mode, &b.url) {
            (BrokerMode::External, None) => {
                return invalid(
                    "broker.url",
                    "broker.mode = \"external\" needs the broker's URL (CRADLE_BROKER_URL=mqtt://host:port)",
                )
            }
            (BrokerMode::Embedded, Some(_)) => {
                return invalid(
                    "broker.url",
                    "is set but broker.mode is \"embedded\": set broker.mode = \"external\" (CRADLE_BROKER_MODE=external) to use it",
                )
            }
            (BrokerMode::External, Some(url)) => {
                if let Err(message) = crate::endpoint::BrokerUrl::parse(url) {
                    return Err(ConfigError::Invalid {
                        key: "broker.url",
                        message,
                    });
                }
            }
            (BrokerMode::Embedded, None) => {}
        }
        if b.share_group.is_empty() || b.share_group.contains(['/', '+', '#']) {
            return invalid(
                "broker.share_group",
                "must be a non-empty name without '/', '+' or '#'",
            );
        }
        Ok(())
    }

    /// Checks the `[websocket]` heartbeat, replay, send queue, write timeout and frame size.
    fn validate_websocket(&self) -> Result<(), ConfigError> {
        let w = &self.websocket;
        if w.heartbeat_secs == 0 {
            return invalid("websocket.heartbeat_secs", "must be at least 1");
        }
        if w.heartbeat_timeout_secs <= w.heartbeat_secs {
            return invalid(
                "websocket.heartbeat_timeout_secs",
                "must be larger than websocket.heartbeat_secs",
            );
        }
        if w.replay_frames == 0 {
            return invalid("websocket.replay_frames", "must be at least 1");
        }
        if w.send_queue == 0 {
            return invalid("websocket.send_queue", "must be at least 1");
        }
        if w.write_timeout_ms == 0 {
            return invalid("websocket.write_timeout_ms", "must be at least 1");
        }
        if w.max_frame_bytes < 256 {
            return invalid("websocket.max_frame_bytes", "must be at least 256");
        }
        Ok(())
    }

    /// Checks the `[sessions]` section.
    fn validate_sessions(&self) -> Result<(), ConfigError> {
        if self.sessions.pending_per_account == 0 {
            return invalid("sessions.pending_per_account", "must be at least 1");
        }
        Ok(())
    }

    /// Checks the edge's packet size, connection limit, publish burst, and that the
    /// broker's listeners are on loopback.
    fn validate_mqtt_limits(&self) -> Result<(), ConfigError> {
        if self.mqtt.max_packet_bytes < 64 {
            return invalid("mqtt.max_packet_bytes", "must be at least 64");
        }
        if self.mqtt.max_connections == 0 {
            return invalid("mqtt.max_connections", "must be at least 1");
        }
        if self.mqtt.publish_rate > 0 && self.mqtt.publish_burst == 0 {
            return invalid(
                "mqtt.publish_burst",
                "must be at least 1 when publish_rate is set",
            );
        }
        for (key, addr) in [
            ("mqtt.broker_listen", self.mqtt.broker_listen),
            ("mqtt.broker_v5_listen", self.mqtt.broker_v5_listen),
        ] {
            if !addr.ip().is_loopback() {
                return invalid(
                    key,
                    "must be a loopback address: only the edge reaches the broker",
                );
            }
        }
        Ok(())
    }

    /// Checks that a TLS or WSS listener comes with both a certificate and a key.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls_wanted = self.mqtt.tls_listen.is_some() || self.mqtt.wss_listen.is_some();
        if tls_wanted && (self.mqtt.tls_cert.is_none() || self.mqtt.tls_key.is_none()) {
            return invalid(
                "mqtt.tls_cert",
                "tls_listen/wss_listen need both mqtt.tls_cert and mqtt.tls_key",
            );
        }
        Ok(())
    }

    /// Every client-facing listener, by key: the edge's (TLS ones when set) and HTTP.
    pub(crate) fn client_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut listeners = vec![
            ("mqtt.listen", self.mqtt.listen),
            ("mqtt.v5_listen", self.mqtt.v5_listen),
            ("mqtt.ws_listen", self.mqtt.ws_listen),
            ("http.listen", self.http.listen),
        ];
        if let Some(a) = self.mqtt.tls_listen {
            listeners.push(("mqtt.tls_listen", a));
        }
        if let Some(a) = self.mqtt.wss_listen {
            listeners.push(("mqtt.wss_listen", a));
        }
        listeners
    }

    /// Checks that every public listener names a port and no two share an address.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let listeners = self.client_listeners();
        for (i, (key, addr)) in listeners.iter().enumerate() {
            if addr.port() == 0 {
                return invalid(key, "port 0 is not supported: name a port");
            }
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{addr} is already used by {other}"),
                });
            }
        }
        Ok(())
    }
}

/// The error for a value that parses but cannot work.
fn invalid(key: &'static str, message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        message: message.to_string(),
    })
}

/// Parses one override value, or names its key, flag and variable and says what `value` is not.
fn parse_override<T: std::str::FromStr>(
    value: &str,
    key: &'static str,
    flag: &'static str,
    env: &'static str,
    problem: &str,
) -> Result<T, ConfigError> {
    value.parse().map_err(|_| ConfigError::Override {
        key,
        flag,
        env,
        message: format!("`{value}` {problem}"),
    })
}

fn parse_addr(
    value: &str,
    key: &'static str,
    flag: &'static str,
    env: &'static str,
) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::Override {
        key,
        flag,
        env,
        message: format!("`{value}` is not a socket address like 127.0.0.1:1883"),
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback() {
        let c = Config::default();
        assert_eq!(c.mqtt.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(c.mqtt.v5_listen.to_string(), "127.0.0.1:1884");
        assert_eq!(c.mqtt.ws_listen.to_string(), "127.0.0.1:8083");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert!(c.store.database_url.starts_with("sqlite://data/"));
    }

    #[test]
    fn shipped_config_file_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let c = Config::from_file(&path).expect("config/cradle.toml parses");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn file_values_override_defaults_and_unset_keys_keep_them() {
        let c = Config::from_toml("[mqtt]\nlisten = \"0.0.0.0:1999\"\n").unwrap();
        assert_eq!(c.mqtt.listen.to_string(), "0.0.0.0:1999");
        assert_eq!(c.mqtt.v5_listen, MqttConfig::default().v5_listen);
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut c = Config::from_toml("[http]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let o = Overrides {
            http_listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        c.apply(&o).unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9100");
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_key() {
        let (key, message) = Config::from_toml("[mqtt]\nlisten = \"nope\"\n").unwrap_err();
        assert_eq!(key, "mqtt.listen");
        assert!(!message.contains('\n'));
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name() {
        let (key, message) = Config::from_toml("[mqtt]\nlisten_typo = 1\n").unwrap_err();
        assert!(key.starts_with("mqtt"), "{key}");
        assert!(message.contains("listen_typo"), "{message}");
    }

    #[test]
    fn a_bad_override_names_key_flag_and_variable() {
        let mut c = Config::default();
        let o = Overrides {
            mqtt_listen: Some("x".into()),
            ..Default::default()
        };
        let err = c.apply(&o).unwrap_err().to_string();
        assert!(err.contains("mqtt.listen"), "{err}");
        assert!(err.contains("CRADLE_MQTT_LISTEN"), "{err}");
    }

    #[test]
    fn a_missing_named_file_is_an_error_naming_the_path() {
        let err = Config::load(
            Some(Path::new("/nonexistent/cradle.toml")),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/cradle.toml"), "{err}");
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let mut c = Config::default();
        c.http.listen = c.mqtt.listen;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("http.listen"), "{err}");
    }

    #[test]
    fn http_timeouts_and_the_connection_cap_are_checked_and_overridable() {
        for (key, set) in [
            (
                "http.header_timeout_ms",
                (|c: &mut Config| c.http.header_timeout_ms = 10) as fn(&mut Config),
            ),
            ("http.body_timeout_ms", |c: &mut Config| {
                c.http.body_timeout_ms = 0
            }),
            ("http.max_connections", |c: &mut Config| {
                c.http.max_connections = 0
            }),
            ("http.write_timeout_ms", |c: &mut Config| {
                c.http.write_timeout_ms = 99
            }),
        ] {
            let mut c = Config::default();
            set(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
        let mut c = Config::default();
        c.apply(&Overrides {
            http_header_timeout_ms: Some("500".into()),
            http_body_timeout_ms: Some("700".into()),
            http_max_connections: Some("9".into()),
            http_write_timeout_ms: Some("800".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (
                c.http.header_timeout_ms,
                c.http.body_timeout_ms,
                c.http.max_connections,
                c.http.write_timeout_ms
            ),
            (500, 700, 9, 800)
        );
        let err = Config::default()
            .apply(&Overrides {
                http_max_connections: Some("many".into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("CRADLE_HTTP_MAX_CONNECTIONS"), "{err}");
    }

    #[test]
    fn values_that_parse_but_cannot_work_are_refused_by_key() {
        let mut c = Config::default();
        c.http.max_page_size = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("http.max_page_size"));
        let mut c = Config::default();
        c.log.filter = "info,[[[".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("log.filter"));
        let mut c = Config::default();
        c.bus.keep_alive_secs = 1;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("bus.keep_alive_secs"));
    }

    #[test]
    fn external_mode_needs_a_valid_broker_url() {
        let mut c = Config::default();
        c.broker.mode = BrokerMode::External;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("broker.url"));
        c.broker.url = Some("http://x:1883".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("broker.url"));
        c.broker.url = Some("mqtt://u:p@broker:1883".into());
        c.validate().unwrap();
        let mut c = Config::default();
        c.broker.url = Some("mqtt://broker:1883".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("CRADLE_BROKER_MODE"), "{err}");
        let mut c = Config::default();
        c.broker.share_group = "a/b".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("broker.share_group"));
    }

    #[test]
    fn an_unknown_database_scheme_is_refused() {
        let mut c = Config::default();
        c.store.database_url = "mysql://x".into();
        assert!(c.validate().is_err());
    }
}
