//! Operations routes: liveness, readiness, metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::metrics::ConnectedClients;
use super::AppState;
use crate::bus::BusState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `/metrics`, on the admin listener when there is one.
pub(super) fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// 200 while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "200 while the process serves HTTP.", responses((status = 200, description = "{\"status\":\"ok\"}")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// 200 when the store answers and the bus is subscribed; 503 with the failing part otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "Ready: the store answers, the bus is subscribed, no critical task failed.", responses((status = 200, description = "ready"), (status = 503, description = "not ready, with the failing part")))]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = match state.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(error) => {
            tracing::warn!(%error, "readiness: store unreachable");
            "unreachable".to_string()
        }
    };
    let (broker, broker_error) = match &*state.bus.borrow() {
        BusState::Ready => ("ok", None),
        BusState::Connecting(e) => ("connecting", e.clone()),
        BusState::Reconnecting(e) => ("reconnecting", Some(e.clone())),
        BusState::Closed => ("closed", None),
        BusState::Refused(e) => ("refused", Some(e.clone())),
    };
    // A task the service depends on panicked: Cradle is draining and exits.
    let failed = crate::tasks::failed();
    let ready = store == "ok" && broker == "ok" && failed.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": store,
        "broker": broker,
    });
    if let Some(e) = broker_error {
        body["broker_error"] = e.into();
    }
    if let Some(task) = failed {
        body["failed_task"] = task.as_str().into();
    }
    (status, Json(body))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus text format.", responses((status = 200, description = "text/plain; version=0.0.4")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let connected = match state.store.connected_count().await {
        Ok(n) => Some(n),
        Err(error) => {
            tracing::warn!(%error, "metrics: connected clients not counted");
            None
        }
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        match connected {
            Some(n) => state.registry.render(&[&ConnectedClients(n)]),
            None => state.registry.render(&[]),
        },
    )
}
