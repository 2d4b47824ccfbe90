//! Values that parse but cannot work: checked in a fixed order, section by section; the
//! first failure is the error reported, naming its key.

use super::*;

impl Config {
    /// Checks values that parse but cannot work. The checks run in a fixed order, section by
    /// section, and the first failure is the error reported.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_basics()?;
        self.validate_mqtt_buffers()?;
        self.validate_http()?;
        self.validate_sync_bus_log()?;
        self.validate_store_pool()?;
        self.validate_stream()?;
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
        for origin in self.http.allowed_origins.iter().flatten() {
            if let Err(why) = normalize_origin(origin) {
                return invalid("http.allowed_origins", &format!("`{origin}` {why}"));
            }
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

    /// Checks the live stream's and presence history's bounds.
    fn validate_stream(&self) -> Result<(), ConfigError> {
        let s = &self.stream;
        if s.max_followers == 0 {
            return invalid("stream.max_followers", "must be at least 1");
        }
        if s.buffer_events < 16 {
            return invalid("stream.buffer_events", "must be at least 16");
        }
        if s.heartbeat_ms < 100 {
            return invalid("stream.heartbeat_ms", "must be at least 100");
        }
        if s.poll_ms < 10 {
            return invalid("stream.poll_ms", "must be at least 10");
        }
        if self.history.flap_threshold_ms < 0 {
            return invalid("history.flap_threshold_ms", "must be 0 or more");
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
        if let Some(a) = self.http.admin_listen {
            listeners.push(("http.admin_listen", a));
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
pub(super) fn invalid(key: &'static str, message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        message: message.to_string(),
    })
}
