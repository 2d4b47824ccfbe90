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
    /// With `at`: whether the device reported the connection itself (false: the broker only
    /// observed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<bool>,
    /// With `at`: where the log the answer was computed from starts, when retention removed
    /// what came before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_from_millis: Option<i64>,
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
pub(super) fn event_filter(
    account_id: &str,
    client_id: Option<&str>,
    event_type: Option<&str>,
) -> Result<EventFilter, ApiError> {
    let stream = match client_id {
        None => None,
        Some(c) => {
            super::params::id_param("client_id", c)?;
            Some(crate::sync::status::stream_id(&crate::topics::ClientKey {
                account_id: account_id.to_string(),
                client_id: c.to_string(),
            }))
        }
    };
    let types: Vec<String> = event_type
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
    Ok(EventFilter {
        stream,
        types,
        upto: None,
    })
}

/// `GET …/clients`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ClientList {
    account_id: String,
    /// The instant asked for with `at` (absent: now, from the read model).
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<i64>,
    clients: Vec<ClientView>,
}

/// `GET …/clients`' query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsQuery {
    /// An instant (Unix milliseconds): every client's state as it was then.
    at: Option<String>,
}

/// `GET …/events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EventPage {
    account_id: String,
    events: Vec<crate::store::StoredEvent>,
    /// Pass as `after` for the next page.
    next_after: i64,
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/clients", tag = "account", summary = "Every client of the account and its connection state: now, or as it was at an instant (`at`, computed from the event log).", params(("account_id" = String, Path), ("at" = Option<i64>, Query, description = "An instant, Unix ms: every client's state as it was then (clients not seen by then are left out).")), responses((status = 200, body = ClientList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
async fn clients(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
    Params(q): Params<ClientsQuery>,
) -> Result<Json<ClientList>, ApiError> {
    if let Some(at) = super::history::millis("at", q.at.as_deref())? {
        return Ok(Json(clients_at(&state, account_id, at).await?));
    }
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
            reported: None,
            history_from_millis: None,
        })
        .collect();
    Ok(Json(ClientList {
        account_id,
        at: None,
        clients,
    }))
}

/// Every client's state at `at`, from the log.
async fn clients_at(state: &AppState, account_id: String, at: i64) -> Result<ClientList, ApiError> {
    let states = super::history::states_at(&state.store, &account_id, at).await?;
    let clients = states
        .into_iter()
        .map(|(client_id, s, history_from_millis)| {
            let since = s.since_millis.or(history_from_millis).unwrap_or(0);
            ClientView {
                client_id,
                connected: s.connected,
                connection_id: s.connection_id.unwrap_or_default(),
                since_millis: since,
                connected_at_millis: if s.connected { since } else { 0 },
                disconnected_at_millis: (!s.connected).then_some(since),
                last_disconnect_reason: s.end_reason.map(|r| r.as_str().to_string()),
                reported: s.reported,
                history_from_millis,
            }
        })
        .collect();
    Ok(ClientList {
        account_id,
        at: Some(at),
        clients,
    })
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
    let mut filter = event_filter(&account_id, q.client_id.as_deref(), q.event_type.as_deref())?;
    // Only up to the settled position: a page never skips an event that commits later with
    // a smaller position (PostgreSQL with concurrent writers), so `next_after` is safe.
    filter.upto = Some(state.store.settled_position().await?);
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
