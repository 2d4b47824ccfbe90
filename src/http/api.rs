//! Read-model routes under `/v1/accounts/{account_id}/…`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::AccountPath;
use super::error::ErrorBody;
use super::params::Params;
use super::{ApiError, AppState};
use crate::store::EventFilter;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/accounts/{account_id}/clients", get(clients))
        .route("/v1/accounts/{account_id}/events", get(events))
        .route("/v1/accounts/{account_id}/connections", get(connections))
}

/// One client's current state.
#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub(crate) struct ClientView {
    /// The client id.
    pub client_id: String,
    /// Whether its current connection is connected.
    pub connected: bool,
    /// The current connection, or the last one.
    pub connection_id: String,
    /// Since when it has been in this state (Unix milliseconds).
    pub since_millis: i64,
    /// When the current or last connection connected.
    pub connected_at_millis: i64,
    /// When the last connection ended, if one has.
    pub disconnected_at_millis: Option<i64>,
    /// Why the last connection ended, if one has.
    pub last_disconnect_reason: Option<String>,
}

/// The account's live connections on every replica, paged.
#[utoipa::path(get, path = "/v1/accounts/{account_id}/connections", tag = "account", summary = "Who is connected now: the account's live MQTT connections and WebSocket sessions on every replica, paged.", params(("account_id" = String, Path), super::admin::PageQuery), responses((status = 200, body = super::admin::ConnectionPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
async fn connections(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
    Params(q): Params<super::admin::PageQuery>,
) -> Result<Json<super::admin::ConnectionPage>, ApiError> {
    Ok(Json(
        super::admin::connection_page(&state, Some(account_id), q).await?,
    ))
}

/// The filter `client_id` and `type` ask for, or 400.
fn event_filter(account_id: &str, q: &EventsQuery) -> Result<EventFilter, ApiError> {
    let stream = match q.client_id.as_deref() {
        None => None,
        Some(c) => {
            super::params::id_param("client_id", c)?;
            Some(crate::sync::status::stream_id(&crate::topics::ClientKey {
                account_id: account_id.to_string(),
                client_id: c.to_string(),
            }))
        }
    };
    let types: Vec<String> = q
        .event_type
        .as_deref()
        .map(|t| t.split(',').map(str::trim).map(str::to_string).collect())
        .unwrap_or_default();
    if let Some(bad) = types.iter().find(|t| {
        t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
    }) {
        return Err(ApiError::InvalidParameter {
            field: "type",
            message: format!("event types, comma-separated (like connection.connected): {bad:?}"),
        });
    }
    Ok(EventFilter { stream, types })
}

/// `GET …/clients`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ClientList {
    account_id: String,
    clients: Vec<ClientView>,
}

/// `GET …/events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EventPage {
    account_id: String,
    events: Vec<crate::store::StoredEvent>,
    /// Pass as `after` for the next page.
    next_after: i64,
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/clients", tag = "account", summary = "Every client of the account and its current connection state.", params(("account_id" = String, Path)), responses((status = 200, body = ClientList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
async fn clients(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
) -> Result<Json<ClientList>, ApiError> {
    let rows = state.store.clients(&account_id).await?;
    let clients: Vec<ClientView> = rows
        .into_iter()
        .map(|r| ClientView {
            since_millis: if r.connected {
                r.connected_at_millis
            } else {
                r.disconnected_at_millis.unwrap_or(r.connected_at_millis)
            },
            client_id: r.client_id,
            connected: r.connected,
            connection_id: r.connection_id,
            connected_at_millis: r.connected_at_millis,
            disconnected_at_millis: r.disconnected_at_millis,
            last_disconnect_reason: r.last_disconnect_reason,
        })
        .collect();
    Ok(Json(ClientList {
        account_id,
        clients,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<String>,
    limit: Option<String>,
    /// Only this client's connection events (its stream `connection/{account}/{client}`).
    client_id: Option<String>,
    /// Only events of these types, comma-separated (`connection.connected,session.started`).
    #[serde(rename = "type")]
    event_type: Option<String>,
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/events", tag = "account", summary = "The account's events in log order, after a position.", params(("account_id" = String, Path), ("after" = Option<i64>, Query), ("limit" = Option<u64>, Query), ("client_id" = Option<String>, Query, description = "Only this client's connection events."), ("type" = Option<String>, Query, description = "Only events of these types, comma-separated.")), responses((status = 200, body = EventPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn events(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
    Params(q): Params<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let after = match q.after.as_deref() {
        None => 0,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or(ApiError::InvalidParameter {
                field: "after",
                message: "a position: an integer of 0 or more".to_string(),
            })?,
    };
    let limit = super::params::limit(q.limit.as_deref(), state.max_page_size)?;
    let filter = event_filter(&account_id, &q)?;
    let events = state
        .store
        .events_where(&account_id, after, limit, &filter)
        .await?;
    let next_after = events.last().map_or(after, |e| e.position);
    Ok(Json(EventPage {
        account_id,
        events,
        next_after,
    }))
}
