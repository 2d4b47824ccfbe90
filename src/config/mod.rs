//! One typed configuration: built-in defaults, then a TOML file, then `CRADLE_*`
//! environment variables, then command-line flags (the last two merged by clap, flag wins).
//!
//! Every key is documented in `config/cradle.toml`; errors name the key that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod environment;
mod overrides;
mod validate;

pub use overrides::Overrides;
use overrides::*;

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
    /// The live event stream (`…/events/stream`).
    pub stream: StreamConfig,
    /// Presence history (`…/history`, `…/availability`, `…/clients?at=`).
    pub history: HistoryConfig,
}

/// The live event stream: Server-Sent Events of every committed event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Most followers of the stream at once on this replica; one more is answered 503
    /// `too_many_followers`. A follower leaves `http.max_connections`' count once it streams.
    pub max_followers: usize,
    /// How many events a follower may fall behind the live feed before it is cut (`event:
    /// cut`, reason `lagged`); it then resumes from its last id.
    pub buffer_events: usize,
    /// A comment line is sent when nothing else was for this long, in milliseconds, so that
    /// proxies keep the connection open.
    pub heartbeat_ms: u64,
    /// How often the feed looks for events other processes committed (other replicas), in
    /// milliseconds; this process's own commits wake it at once.
    pub poll_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_followers: 1000,
            buffer_events: 4096,
            heartbeat_ms: 15_000,
            poll_ms: 100,
        }
    }
}

/// Presence history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// A connection that started in the window and lasted less than this is a flap in
    /// `…/availability` (a caller may pass `flap_ms`), in milliseconds.
    pub flap_threshold_ms: i64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            flap_threshold_ms: 60_000,
        }
    }
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
    /// The edge records every device connection it accepts (a `connected` status of its
    /// own, `"observed": true`), whether or not the device reports it, and stamps its
    /// connection id on the device's reports and on the end (topics.md).
    pub observe_starts: bool,
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
            observe_starts: true,
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
    /// Address of the HTTP API, `/ws`, `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// A listener of its own for the administration routes (`/v1/admin/…`, the disconnect
    /// route) and `/metrics`, which then leave `listen` (the port the PWA reaches). Unset: all
    /// on `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
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
    /// Origins of the web pages allowed to call the HTTP API and open `/ws` from a browser
    /// (`scheme://host[:port]`, as a browser sends them in `Origin`). Unset: loopback origins
    /// only. Requests without `Origin` (devices, scripts) are not affected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: loopback(8080),
            admin_listen: None,
            max_body_bytes: 64 * 1024,
            max_page_size: 1000,
            admin_token: None,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_connections: 1024,
            write_timeout_ms: 10_000,
            allowed_origins: None,
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
    /// Events older than this many days are removed from the log, hourly, in small
    /// batches (each stream keeps its latest events, which the deciders and history need).
    /// 0 keeps every event.
    pub retention_days: u32,
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
            retention_days: 0,
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

/// The ASCII serialisation of a web origin (`scheme://host[:port]`, lower case, default port
/// left out), as a browser sends it in `Origin`; an error says what is wrong. Only `http` and
/// `https` origins, with no user, path (but `/`), query or fragment.
pub(crate) fn normalize_origin(origin: &str) -> Result<String, &'static str> {
    let url = url::Url::parse(origin.trim()).map_err(|_| "is not an origin URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// origin");
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err("must be scheme://host[:port] with no path, query or user");
    }
    Ok(url.origin().ascii_serialization())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
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
    fn allowed_origins_are_checked_and_overridable() {
        let mut c = Config::default();
        c.http.allowed_origins = Some(vec!["https://app.example.com/path".into()]);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("http.allowed_origins"), "{err}");
        assert!(err.contains("https://app.example.com/path"), "{err}");
        c.http.allowed_origins = Some(vec!["ftp://files.example.com".into()]);
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.apply(&Overrides {
            http_allowed_origins: Some("https://a.example, http://127.0.0.1:5173 ,".into()),
            ..Default::default()
        })
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.http.allowed_origins.as_deref(),
            Some(
                &[
                    "https://a.example".to_string(),
                    "http://127.0.0.1:5173".to_string()
                ][..]
            )
        );
        assert_eq!(
            normalize_origin("HTTPS://App.Example.com:443/").as_deref(),
            Ok("https://app.example.com")
        );
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
