//! The HTTP API: read models under `/v1/`, `/healthz`, `/readyz` and `/metrics`, the
//! session routes and `/ws`, with CORS for the browser origins of `http.allowed_origins`.
//!
//! One small router per resource, merged by `app`; shared state in `AppState`; every
//! error is an `ApiError` that answers with a status and a JSON body and logs internals.

mod admin;
mod api;
mod auth;
mod dashboard;
mod error;
mod history;
pub(crate) mod metrics;
mod openapi;
mod ops;
mod origins;
mod params;
pub mod serve;
mod sessions;
mod stream;
mod ws;

pub(crate) use auth::{SourceIp, TokenCache};
pub(crate) use origins::Origins;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;

pub(crate) use error::ApiError;

use crate::bus::BusState;
use crate::metrics::Metrics;
use crate::store::Store;
use metrics::HttpMetrics;

/// What every handler may use.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Event log and read models.
    pub store: Store,
    /// The HTTP server's counters.
    pub metrics: Arc<HttpMetrics>,
    /// Every registered metric family, rendered on `/metrics`.
    pub(crate) registry: Arc<Metrics>,
    /// Bus state, for readiness.
    pub bus: tokio::sync::watch::Receiver<BusState>,
    /// Largest `limit` a list route accepts.
    pub(crate) max_page_size: u64,
    /// Bearer token that may read every account.
    pub(crate) admin_token: Option<String>,
    /// Open-mode rules and the "any account exists" answer (shared with the MQTT edge).
    pub auth: std::sync::Arc<crate::auth::Authenticator>,
    /// Whether the HTTP listener is on loopback (open mode applies only there).
    pub(crate) http_loopback: bool,
    /// The session handler.
    pub sessions: Arc<crate::sync::sessions::Sessions>,
    /// Largest request body read (`http.max_body_bytes`).
    pub max_body_bytes: usize,
    /// The WebSocket bridge (`GET /ws`).
    pub bridge: Arc<crate::ws::Bridge>,
    /// Ends live connections on every replica (revocations, kicks).
    pub(crate) control: Arc<crate::control::Control>,
    /// Verified bearer tokens (HTTP API and `/ws`), for `auth.cache_secs`.
    pub tokens: Arc<TokenCache>,
    /// The browser origins allowed (`http.allowed_origins`): CORS and `/ws`'s `Origin` check.
    pub(crate) origins: Arc<Origins>,
    /// The live feed of the event log (`…/events/stream`).
    pub(crate) feed: Arc<crate::feed::Feed>,
    /// Presence history settings.
    pub(crate) history: crate::config::HistoryConfig,
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// Every route (no `http.admin_listen`).
    All,
    /// `http.listen` beside an admin listener: all but administration and `/metrics`.
    Public,
    /// `http.admin_listen`: administration, `/metrics`, `/healthz`, `/readyz`.
    Admin,
}

/// Builds the router of one listener.
pub(crate) fn app(state: AppState, max_body_bytes: usize, surface: Surface) -> Router {
    let routes = match surface {
        Surface::All => Router::new()
            .merge(openapi::router())
            .merge(ops::router())
            .merge(ops::metrics_router())
            .merge(api::router())
            .merge(history::router())
            .merge(stream::router())
            .merge(sessions::router())
            .merge(ws::router())
            .merge(dashboard::router())
            .merge(admin::router()),
        Surface::Public => Router::new()
            .merge(openapi::router())
            .merge(ops::router())
            .merge(api::router())
            .merge(history::router())
            .merge(stream::router())
            .merge(sessions::router())
            .merge(ws::router())
            .merge(dashboard::router()),
        Surface::Admin => Router::new()
            .merge(openapi::router())
            .merge(ops::router())
            .merge(ops::metrics_router())
            .merge(admin::router()),
    };
    routes
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            declared_length,
        ))
        .layer(axum::middleware::from_fn(contain_panic))
        // Outermost: preflights are answered before any route, and every answer to an
        // allowed origin (a 404, 405 or 413 included) carries its CORS headers.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origins::cors,
        ))
        .with_state(state)
}

/// Runs one request; should its handler panic, that request alone ends, answered `500`
/// (`internal`), logged and counted (`cradle_task_panics_total{task="http_request"}`).
async fn contain_panic(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = request.uri().path().to_string();
    let run = async move {
        crate::tasks::inject("http", request.uri().path());
        next.run(request).await
    };
    match crate::tasks::contain(crate::tasks::Task::HttpRequest, run).await {
        Some(response) => response,
        None => {
            tracing::warn!(path, "HTTP request ended by a panic in its handler");
            ApiError::Internal.into_response()
        }
    }
}

/// Refuses a request whose `Content-Length` is over `http.max_body_bytes` with 413 before
/// any byte of its body is read (and closes the connection, so the body is never read).
/// Chunked bodies have no length to check: `DefaultBodyLimit` stops reading them at the
/// limit.
async fn declared_length(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > state.max_body_bytes as u64 => {
            state.metrics.refused(metrics::HttpRefusal::TooLarge);
            tracing::debug!(
                content_length = n,
                limit = state.max_body_bytes,
                "HTTP request refused: Content-Length over http.max_body_bytes"
            );
            let mut response = ApiError::PayloadTooLarge(state.max_body_bytes).into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
        _ => next.run(request).await,
    }
}
