//! The HTTP server's counters: open and accepted connections, refusals, idle closes and
//! bearer token checks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::metrics::{labels, Desc, Exposition, Family, Labeled};

/// Why the HTTP server refused or cut a connection or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpRefusal {
    /// `http.max_connections` reached: answered 503 and closed at once.
    ConnectionLimit,
    /// No complete request headers within `http.header_timeout_ms` (first request).
    HeaderTimeout,
    /// The body did not arrive within `http.body_timeout_ms`: 408.
    BodyTimeout,
    /// `Content-Length` over `http.max_body_bytes`: 413 before any of the body is read.
    TooLarge,
    /// The client took no byte of a response within `http.write_timeout_ms`.
    WriteTimeout,
    /// A browser request from an origin not in `http.allowed_origins`: a CORS preflight or a
    /// `/ws` upgrade answered 403.
    Origin,
}

impl HttpRefusal {
    /// Every refusal, in exposition order.
    const ALL: [HttpRefusal; 6] = [
        Self::ConnectionLimit,
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::TooLarge,
        Self::WriteTimeout,
        Self::Origin,
    ];

    /// Metric label.
    fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::TooLarge => "too_large",
            Self::WriteTimeout => "write_timeout",
            Self::Origin => "origin",
        }
    }
}

/// How a bearer token (HTTP API, `/ws`) was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    /// Found in the verified-token cache: no argon2 run.
    Cached,
    /// Verified against the store (argon2) and accepted.
    Verified,
    /// Not a live credential (or a wrong secret).
    Refused,
}

impl TokenCheck {
    /// Every outcome, in exposition order.
    const ALL: [TokenCheck; 3] = [Self::Cached, Self::Verified, Self::Refused];

    /// Metric label.
    fn as_str(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Verified => "verified",
            Self::Refused => "refused",
        }
    }
}

labels!(HttpRefusal, TokenCheck, AdminAction);

/// Counters of the HTTP server.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Open HTTP connections (upgraded WebSockets leave this count).
    pub(crate) open: AtomicI64,
    /// HTTP connections accepted.
    pub(crate) accepted: AtomicU64,
    /// HTTP connections or requests refused or cut.
    refused: Labeled<HttpRefusal>,
    /// Keep-alive connections closed after `http.header_timeout_ms` without a new request.
    pub(crate) idle_closed: AtomicU64,
    /// Bearer token checks.
    token_checks: Labeled<TokenCheck>,
    /// Administrative actions over HTTP.
    admin_actions: Labeled<AdminAction>,
}

/// An administrative action, as `cradle_admin_actions_total` and the event log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminAction {
    AccountCreated,
    AccountDeleted,
    AccountErased,
    CredentialIssued,
    CredentialRevoked,
    CredentialRotated,
    DevicesProvisioned,
    ClientDisconnected,
    ClientBanned,
    BanLifted,
}

impl AdminAction {
    pub(crate) const ALL: [AdminAction; 10] = [
        Self::AccountCreated,
        Self::AccountDeleted,
        Self::AccountErased,
        Self::CredentialIssued,
        Self::CredentialRevoked,
        Self::CredentialRotated,
        Self::DevicesProvisioned,
        Self::ClientDisconnected,
        Self::ClientBanned,
        Self::BanLifted,
    ];

    /// The label's value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::AccountCreated => "account_created",
            Self::AccountDeleted => "account_deleted",
            Self::AccountErased => "account_erased",
            Self::CredentialIssued => "credential_issued",
            Self::CredentialRevoked => "credential_revoked",
            Self::CredentialRotated => "credential_rotated",
            Self::DevicesProvisioned => "devices_provisioned",
            Self::ClientDisconnected => "client_disconnected",
            Self::ClientBanned => "client_banned",
            Self::BanLifted => "ban_lifted",
        }
    }

    /// The event type it is recorded as.
    pub(crate) fn event_type(self) -> &'static str {
        match self {
            Self::AccountCreated => "admin.account_created",
            Self::AccountDeleted => "admin.account_deleted",
            Self::AccountErased => "admin.account_erased",
            Self::CredentialIssued => "admin.credential_issued",
            Self::CredentialRevoked => "admin.credential_revoked",
            Self::CredentialRotated => "admin.credential_rotated",
            Self::DevicesProvisioned => "admin.devices_provisioned",
            Self::ClientDisconnected => "admin.client_disconnected",
            Self::ClientBanned => "admin.client_banned",
            Self::BanLifted => "admin.ban_lifted",
        }
    }
}

impl HttpMetrics {
    /// Counts one refused or cut HTTP connection or request.
    pub(crate) fn refused(&self, reason: HttpRefusal) {
        self.refused.inc(reason);
    }

    /// Counts one administrative action.
    pub(crate) fn admin_action(&self, action: AdminAction) {
        self.admin_actions.inc(action);
    }

    /// Counts one bearer token check.
    pub(crate) fn token_check(&self, outcome: TokenCheck) {
        self.token_checks.inc(outcome);
    }
}

impl Family for HttpMetrics {
    fn render(&self, out: &mut Exposition) {
        out.gauge(
            "cradle_http_connections",
            "Open HTTP connections (not counting upgraded WebSockets).",
            self.open.load(Relaxed),
        );
        out.counter(
            "cradle_http_connections_total",
            "HTTP connections accepted (within http.max_connections).",
            self.accepted.load(Relaxed),
        );
        out.family(Desc::counter(
            "cradle_http_refused_total",
            "HTTP connections and requests refused or cut, by reason.",
        ))
        .labeled("", "reason", &self.refused);
        out.counter(
            "cradle_http_idle_closed_total",
            "Keep-alive HTTP connections closed for sending no new request within http.header_timeout_ms.",
            self.idle_closed.load(Relaxed),
        );
        out.family(Desc::counter(
            "cradle_http_token_checks_total",
            "Bearer token checks (HTTP API and /ws), by outcome: cached (no argon2), verified, refused.",
        ))
        .labeled("", "outcome", &self.token_checks);
        out.family(Desc::counter(
            "cradle_admin_actions_total",
            "Administrative actions over HTTP (each also an admin.* event in the log), by action.",
        ))
        .labeled("", "action", &self.admin_actions);
    }
}

/// `cradle_connected_clients`, counted in the store at the scrape so that every replica
/// reports the same figure.
pub(crate) struct ConnectedClients(pub(crate) u64);

impl Family for ConnectedClients {
    fn render(&self, out: &mut Exposition) {
        out.gauge(
            "cradle_connected_clients",
            "Clients whose current connection is connected, over every account.",
            self.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{assert_places, Metrics};
    use std::sync::Arc;

    #[test]
    fn every_label_s_index_is_its_place_in_the_exposition_order() {
        assert_places::<HttpRefusal>();
        assert_places::<TokenCheck>();
    }

    #[test]
    fn refusals_and_token_checks_are_rendered_by_label_and_connected_clients_at_the_scrape() {
        let m = Arc::new(HttpMetrics::default());
        m.refused(HttpRefusal::Origin);
        m.token_check(TokenCheck::Cached);
        m.token_check(TokenCheck::Cached);
        let registry = Metrics::default().with(m);
        let text = registry.render(&[&ConnectedClients(3)]);
        for line in [
            "cradle_http_refused_total{reason=\"origin\"} 1",
            "cradle_http_refused_total{reason=\"too_large\"} 0",
            "cradle_http_token_checks_total{outcome=\"cached\"} 2",
            "cradle_connected_clients 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!registry.render(&[]).contains("cradle_connected_clients"));
    }
}
