//! Presence history from the event log: a client's connections in a window
//! (`…/clients/{client_id}/history`), every client's availability (`…/availability`) and
//! every client's state at an instant (`…/clients?at=`, in `api`).
//!
//! Each client's connection stream is read backwards from its newest event (the unique
//! `(stream, stream_version)` index) only as far as the window needs: to the first
//! `connected` or `disconnected` stamped more than the decider's reorder window before the
//! window's start. So a recent window costs a few rows per client, however long the log.
//! `domain::presence` computes the answers, purely.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::AccountPath;
use super::error::ErrorBody;
use super::params::Params;
use super::{ApiError, AppState};
use crate::clock::now_millis;
use crate::domain::connection::{ConnectionEvent, REORDER_WINDOW_MILLIS};
use crate::domain::presence::{self, ClientLog, HistoryEntry, PresenceAt, Span};
use crate::store::{Store, StoredEvent};
use crate::topics::ClientKey;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/accounts/{account_id}/clients/{client_id}/history",
            get(client_history),
        )
        .route("/v1/accounts/{account_id}/availability", get(availability))
}

/// Rows read by the first query while walking a stream backwards: enough for a recent
/// window of a client that reconnects a few times a day (reading 64 at once made a 24-hour
/// availability six times slower on a 10-million-event log: BENCHMARKS.md). Each further
/// query reads four times as many, up to [`PAGE`] (4, 16, 64, 64, …).
const FIRST_PAGE: u64 = 4;

/// Rows read by a query at most.
const PAGE: u64 = 64;

/// A day: the default window.
const DAY_MILLIS: i64 = 86_400_000;

/// One client's connections rebuilt from its log, far enough back for instants from `from`.
pub(super) struct Rebuilt {
    /// Its connections.
    pub spans: Vec<Span>,
    /// Where the answers are complete from (`None`: from the client's first event); set
    /// when retention removed the older part of the log the window needs.
    pub history_from_millis: Option<i64>,
}

/// Reads `client_id`'s connection log backwards until it knows the client's state at `from`,
/// and rebuilds its connections.
pub(super) async fn rebuild(
    store: &Store,
    account_id: &str,
    client_id: &str,
    from: i64,
) -> Result<Rebuilt, ApiError> {
    let stream = crate::sync::status::stream_id(&ClientKey {
        account_id: account_id.to_string(),
        client_id: client_id.to_string(),
    });
    let boundary = from.saturating_sub(REORDER_WINDOW_MILLIS);
    let mut newest_first: Vec<StoredEvent> = Vec::new();
    let mut before = i64::MAX;
    let mut size = FIRST_PAGE;
    let complete = loop {
        let page = store.stream_back(&stream, before, size).await?;
        let full = page.len() as u64 == size;
        size = (size * 4).min(PAGE);
        let mut stop = false;
        for event in page {
            before = event.stream_version;
            let bounds = event.at_millis < boundary
                && matches!(
                    event.event_type.as_str(),
                    "connection.connected" | "connection.disconnected"
                );
            newest_first.push(event);
            if bounds {
                stop = true;
                break;
            }
        }
        if stop {
            break true;
        }
        if !full {
            // The oldest event still in the log: the stream's first unless retention cut it.
            break newest_first.last().is_none_or(|e| e.stream_version == 1);
        }
    };
    let events: Vec<ConnectionEvent> = newest_first.iter().rev().filter_map(parse).collect();
    let log = ClientLog {
        events: &events,
        complete,
    };
    Ok(Rebuilt {
        spans: presence::spans(&log),
        history_from_millis: presence::history_from(&log),
    })
}

/// A stored connection event as the decider wrote it (its data lacks the `type`, which is
/// the row's); an event that does not parse is skipped and logged.
fn parse(event: &StoredEvent) -> Option<ConnectionEvent> {
    let mut data = event.data.clone();
    data.as_object_mut()?
        .insert("type".into(), event.event_type.clone().into());
    match serde_json::from_value(data) {
        Ok(e) => Some(e),
        Err(error) => {
            tracing::warn!(position = event.position, %error, "presence history: an event of a connection stream does not parse; skipped");
            None
        }
    }
}

/// A window's query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `…/availability`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AvailabilityQuery {
    from: Option<String>,
    to: Option<String>,
    /// Connections shorter than this (milliseconds) are flaps.
    flap_ms: Option<String>,
}

/// A whole number of 0 or more, or 400 naming `field`.
pub(super) fn millis(field: &'static str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .ok_or(ApiError::InvalidParameter {
                    field,
                    message: "Unix milliseconds, a whole number of 0 or more".into(),
                })
        })
        .transpose()
}

/// `[from, to)`: `to` defaults to now, `from` to a day before `to`.
fn window(from: Option<&str>, to: Option<&str>, now: i64) -> Result<(i64, i64), ApiError> {
    let to = millis("to", to)?.unwrap_or(now);
    let from = millis("from", from)?.unwrap_or(to.saturating_sub(DAY_MILLIS));
    if to <= from {
        return Err(ApiError::InvalidParameter {
            field: "to",
            message: "must be after `from`".into(),
        });
    }
    Ok((from, to))
}

/// `GET …/clients/{client_id}/history`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct HistoryView {
    account_id: String,
    client_id: String,
    /// Window start (inclusive), Unix milliseconds.
    from: i64,
    /// Window end (exclusive).
    to: i64,
    /// Where the log this answer was computed from starts, when retention removed older
    /// events the window needed (`null`: complete).
    history_from_millis: Option<i64>,
    /// The connections overlapping the window, by start.
    connections: Vec<HistoryEntry>,
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/clients/{client_id}/history", tag = "account", summary = "The client's connections in a window: start, end, duration, end reason, and whether the device reported each or the broker only observed it.", params(("account_id" = String, Path), ("client_id" = String, Path), ("from" = Option<i64>, Query, description = "Window start, Unix ms (default: a day before `to`)."), ("to" = Option<i64>, Query, description = "Window end, exclusive (default: now).")), responses((status = 200, body = HistoryView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
async fn client_history(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
    Path((_, client_id)): Path<(String, String)>,
    Params(q): Params<WindowQuery>,
) -> Result<Json<HistoryView>, ApiError> {
    super::params::id_param("client_id", &client_id)?;
    let now = now_millis();
    let (from, to) = window(q.from.as_deref(), q.to.as_deref(), now)?;
    let rebuilt = rebuild(&state.store, &account_id, &client_id, from).await?;
    Ok(Json(HistoryView {
        connections: presence::history(&rebuilt.spans, from, to, now),
        history_from_millis: rebuilt.history_from_millis,
        account_id,
        client_id,
        from,
        to,
    }))
}

/// One client's availability in the window.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ClientAvailability {
    client_id: String,
    /// Time online inside the window (up to now).
    online_millis: i64,
    /// `online_millis` over the window's elapsed length, in percent (two decimals).
    online_percent: f64,
    /// Connections overlapping the window.
    connections: usize,
    /// Connections that started in the window and ended within the flap threshold.
    flaps: usize,
    /// As in the history answer.
    history_from_millis: Option<i64>,
}

/// `GET …/availability`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AvailabilityView {
    account_id: String,
    from: i64,
    to: i64,
    /// The flap threshold applied (`flap_ms`, else `history.flap_threshold_ms`).
    flap_threshold_millis: i64,
    /// Every client of the account, by client id.
    clients: Vec<ClientAvailability>,
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/availability", tag = "account", summary = "Per client: time online in a window, its percentage, connections and flaps (connections shorter than a threshold).", params(("account_id" = String, Path), ("from" = Option<i64>, Query, description = "Window start, Unix ms (default: a day before `to`)."), ("to" = Option<i64>, Query, description = "Window end, exclusive (default: now)."), ("flap_ms" = Option<i64>, Query, description = "Flap threshold in ms (default history.flap_threshold_ms).")), responses((status = 200, body = AvailabilityView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
async fn availability(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
    Params(q): Params<AvailabilityQuery>,
) -> Result<Json<AvailabilityView>, ApiError> {
    let now = now_millis();
    let (from, to) = window(q.from.as_deref(), q.to.as_deref(), now)?;
    let flap = millis("flap_ms", q.flap_ms.as_deref())?.unwrap_or(state.history.flap_threshold_ms);
    let clients = state.store.clients(&account_id).await?;
    let rebuilt = futures_util::future::try_join_all(
        clients
            .iter()
            .map(|c| rebuild(&state.store, &account_id, &c.client_id, from)),
    )
    .await?;
    let clients = clients
        .into_iter()
        .zip(rebuilt)
        .map(|(c, r)| {
            let a = presence::availability(&r.spans, from, to, now, flap);
            ClientAvailability {
                client_id: c.client_id,
                online_millis: a.online_millis,
                online_percent: a.online_percent,
                connections: a.connections,
                flaps: a.flaps,
                history_from_millis: r.history_from_millis,
            }
        })
        .collect();
    Ok(Json(AvailabilityView {
        account_id,
        from,
        to,
        flap_threshold_millis: flap,
        clients,
    }))
}

/// Every client's state at `at` (clients whose log starts after `at` are left out).
pub(super) async fn states_at(
    store: &Store,
    account_id: &str,
    at: i64,
) -> Result<Vec<(String, PresenceAt, Option<i64>)>, ApiError> {
    let clients = store.clients(account_id).await?;
    let rebuilt = futures_util::future::try_join_all(
        clients
            .iter()
            .map(|c| rebuild(store, account_id, &c.client_id, at)),
    )
    .await?;
    Ok(clients
        .into_iter()
        .zip(rebuilt)
        .filter_map(|(c, r)| {
            let state = presence::state_at(&r.spans, at);
            state
                .connection_id
                .is_some()
                .then_some((c.client_id, state, r.history_from_millis))
        })
        .collect())
}
