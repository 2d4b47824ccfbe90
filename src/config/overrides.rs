//! Overrides from the environment and the command line (clap merges the two, flag wins),
//! applied over the file's values in a fixed order.

use super::*;

/// Overrides from the environment and the command line; clap merges the two (flag wins).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// mqtt.listen: MQTT 3.1.1 and 5 over TCP [default: 127.0.0.1:1883].
    #[arg(long, env = "CRADLE_MQTT_LISTEN", value_name = "ADDR")]
    pub mqtt_listen: Option<String>,
    /// mqtt.v5_listen: MQTT 3.1.1 and 5 over TCP, the former MQTT 5 port [default:
    /// 127.0.0.1:1884].
    #[arg(long, env = "CRADLE_MQTT_V5_LISTEN", value_name = "ADDR")]
    pub mqtt_v5_listen: Option<String>,
    /// mqtt.ws_listen: MQTT 3.1.1 and 5 over WebSocket [default: 127.0.0.1:8083].
    #[arg(long, env = "CRADLE_MQTT_WS_LISTEN", value_name = "ADDR")]
    pub mqtt_ws_listen: Option<String>,
    /// http.listen: HTTP API, /ws, /healthz, /readyz, /metrics [default: 127.0.0.1:8080].
    #[arg(long, env = "CRADLE_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// store.database_url: `sqlite://…` or `postgres://…` [default: sqlite://data/cradle.db].
    #[arg(long, env = "CRADLE_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// log.filter: tracing filter.
    #[arg(long, env = "CRADLE_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// log.format: `text` or `json` [default: text]. Text has colours only on a terminal
    /// and without NO_COLOR.
    #[arg(long, env = "CRADLE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// http.admin_token: bearer token that may read and administer every account (at least 16
    /// characters) [default: none].
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
    /// auth.mode: `auto` (open on loopback until an account exists), `open` or `required`
    /// [default: auto].
    #[arg(long, env = "CRADLE_AUTH_MODE", value_name = "MODE")]
    pub auth_mode: Option<String>,
    /// mqtt.publish_rate: PUBLISH packets per second per client connection, 0 = unlimited
    /// [default: 200].
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
    /// broker.mode: `embedded` or `external` [default: embedded].
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
    /// http.allowed_origins: comma-separated origins of the pages allowed to use Cradle from
    /// a browser [default: unset, loopback origins only; an empty value allows none].
    #[arg(long, env = "CRADLE_HTTP_ALLOWED_ORIGINS", value_name = "ORIGINS")]
    pub http_allowed_origins: Option<String>,
    /// http.admin_listen: a listener of its own for /v1/admin/…, the disconnect route and
    /// /metrics [default: unset, all on http.listen].
    #[arg(long, env = "CRADLE_HTTP_ADMIN_LISTEN", value_name = "ADDR")]
    pub http_admin_listen: Option<String>,
}

impl Config {
    /// Applies command-line and environment overrides over the file's values, in a fixed order:
    /// the first value that does not parse is the error reported.
    pub(super) fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
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
    /// PUBACK-after-commit, then the HTTP ones ([`Config::apply_http_limits`]).
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
        self.apply_http_limits(o)
    }

    /// Applies the HTTP overrides: timeouts, connection limit and allowed origins.
    fn apply_http_limits(&mut self, o: &Overrides) -> Result<(), ConfigError> {
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
        if let Some(v) = &o.http_admin_listen {
            self.http.admin_listen = Some(parse_override(
                v,
                "http.admin_listen",
                "http-admin-listen",
                "CRADLE_HTTP_ADMIN_LISTEN",
                "is not an address (host:port)",
            )?);
        }
        if let Some(v) = &o.http_allowed_origins {
            self.http.allowed_origins = Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
        Ok(())
    }
}

/// Parses one override value, or names its key, flag and variable and says what `value` is not.
pub(super) fn parse_override<T: std::str::FromStr>(
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

pub(super) fn parse_addr(
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

pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
