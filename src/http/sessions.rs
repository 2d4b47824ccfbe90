//! Session routes: the legacy `PUT`/`DELETE /sessions/{session_id}` the PWA calls, and the
//! session read models under `/v1/accounts/{account_id}/…` (baby stations, parent stations,
//! usage).
//!
//! The account of `/sessions/…` comes from the bearer token. In open mode (no accounts,
//! loopback) and for the admin token it comes from the `X-Cradle-Account` header: this is
//! the one place that header is read.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::auth::{AccountPath, Caller};
use super::error::ErrorBody;
use super::params::id_param;
use super::{ApiError, AppState};
use crate::clock::now_millis;
use crate::domain::session::EndReason;
use crate::sync::session_input::{parse_start, MAX_NAME_CHARS};
use crate::sync::sessions::{usage, EndOutcome, StartOutcome, StartRequest};
use crate::topics::is_valid_id;

/// Header naming the account when the caller's token does not (open mode, admin token).
pub(crate) const ACCOUNT_HEADER: &str = "x-cradle-account";

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/sessions/{session_id}", put(start).delete(end))
        .route(
            "/v1/accounts/{account_id}/baby-stations",
            get(baby_stations),
        )
        .route(
            "/v1/accounts/{account_id}/parent-stations",
            get(parent_stations),
        )
        .route("/v1/accounts/{account_id}/usage", get(usage_route))
}

/// The account a session route acts on.
fn session_account(caller: &Caller, headers: &HeaderMap) -> Result<String, ApiError> {
    let named = headers
        .get(ACCOUNT_HEADER)
        .map(|v| v.to_str().unwrap_or_default().to_string());
    if let Some(a) = &named {
        if !is_valid_id(a) {
            return Err(ApiError::InvalidParameter {
                field: "X-Cradle-Account",
                message: "1-128 characters of A-Z a-z 0-9 - _ . : @".into(),
            });
        }
    }
    match caller {
        Caller::Account(own) => match named {
            Some(a) if a != *own => Err(ApiError::Forbidden(a)),
            _ => Ok(own.clone()),
        },
        Caller::Open | Caller::Admin(_) => named.ok_or_else(|| ApiError::InvalidParameter {
            field: "X-Cradle-Account",
            message: "required without an account token (open mode, admin token)".into(),
        }),
        // Operators watch; they do not start or end sessions.
        Caller::Operator => Err(ApiError::Refused {
            status: axum::http::StatusCode::FORBIDDEN,
            code: "forbidden",
            message: "an operator secret watches and reads; it does not start or end sessions"
                .into(),
            retry_after_secs: None,
        }),
    }
}

fn session_path(session_id: &str) -> Result<(), ApiError> {
    id_param("session_id", session_id)
}

#[utoipa::path(put, path = "/sessions/{session_id}", tag = "sessions", summary = "Starts a monitoring session (idempotent).", params(("session_id" = String, Path), ("X-Cradle-Account" = Option<String>, Header)), request_body(content = Object, description = "{session_id, connection_id, client_id?, name?, started_at_millis} or the legacy {id, host_connection_id, name, started_at}"), responses((status = 201, body = SessionStatus), (status = 200, body = SessionStatus), (status = 202, body = SessionStatus), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)), security(("bearer" = [])))]
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(session_id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<SessionStatus>), ApiError> {
    session_path(&session_id)?;
    let account_id = session_account(&caller, &headers)?;
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(state.max_body_bytes))?;
    let parsed = parse_start(&bytes, MAX_NAME_CHARS).map_err(|e| ApiError::InvalidBody {
        field: e.field,
        message: e.message,
    })?;
    if parsed.session_id != session_id {
        return Err(ApiError::InvalidBody {
            field: "session_id",
            message: format!(
                "`{}` in the body is not the path's `{session_id}`",
                parsed.session_id
            ),
        });
    }
    let span = tracing::info_span!("session", account_id = %account_id, session_id = %session_id, connection_id = %parsed.connection_id);
    let outcome = state
        .sessions
        .start(
            &account_id,
            StartRequest {
                session_id: session_id.clone(),
                client_id: parsed.client_id,
                connection_id: parsed.connection_id,
                name: parsed.name,
                started_at_millis: parsed.started_at_millis,
            },
        )
        .instrument(span)
        .await?;
    let (status, word) = match outcome {
        StartOutcome::Started => (StatusCode::CREATED, "started"),
        StartOutcome::AlreadyActive => (StatusCode::OK, "already_started"),
        StartOutcome::Pending => (StatusCode::ACCEPTED, "pending"),
        StartOutcome::AlreadyEnded => return Err(ApiError::SessionEnded(session_id)),
        // The account's own starts are never refused (only a station's are).
        StartOutcome::Refused(r) => return Err(ApiError::Forbidden(r.as_str().into())),
    };
    Ok((
        status,
        Json(SessionStatus {
            session_id,
            account_id,
            status: word,
        }),
    ))
}

#[utoipa::path(delete, path = "/sessions/{session_id}", tag = "sessions", summary = "Ends a monitoring session.", params(("session_id" = String, Path), ("X-Cradle-Account" = Option<String>, Header)), responses((status = 200, body = SessionStatus), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn end(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(session_id): Path<String>,
) -> Result<Json<SessionStatus>, ApiError> {
    session_path(&session_id)?;
    let account_id = session_account(&caller, &headers)?;
    let outcome = state
        .sessions
        .end(&account_id, &session_id, now_millis(), EndReason::Explicit)
        .await?;
    let word = match outcome {
        EndOutcome::Ended => "ended",
        EndOutcome::AlreadyEnded => "already_ended",
        EndOutcome::PendingRemoved => "pending_removed",
        EndOutcome::Unknown => return Err(ApiError::SessionNotFound(session_id)),
        EndOutcome::Refused(r) => return Err(ApiError::Forbidden(r.as_str().into())),
    };
    Ok(Json(SessionStatus {
        session_id,
        account_id,
        status: word,
    }))
}

/// What a session start or end did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SessionStatus {
    session_id: String,
    account_id: String,
    /// `started`, `already_started`, `pending`, `ended`, `already_ended`, `pending_removed`.
    status: &'static str,
}

/// `GET …/baby-stations`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BabyStationList {
    account_id: String,
    baby_stations: Vec<crate::sync::sessions::BabyStation>,
}

/// One parent station's announcement.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ParentStationView {
    client_id: String,
    /// What it announced (a JSON object; `null` if the stored text is not JSON).
    announcement: serde_json::Value,
    updated_at_millis: i64,
}

/// `GET …/parent-stations`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ParentStationList {
    account_id: String,
    parent_stations: Vec<ParentStationView>,
}

/// `GET …/usage`: the account's usage in the window.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UsageView {
    account_id: String,
    #[serde(flatten)]
    usage: crate::domain::usage::Usage,
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/baby-stations", tag = "sessions", summary = "Active sessions and whether each station is connected.", params(("account_id" = String, Path)), responses((status = 200, body = BabyStationList)), security(("bearer" = [])))]
async fn baby_stations(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
) -> Result<Json<BabyStationList>, ApiError> {
    let baby_stations = state.sessions.baby_stations(&account_id).await?;
    Ok(Json(BabyStationList {
        account_id,
        baby_stations,
    }))
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/parent-stations", tag = "sessions", summary = "What the parent stations announced.", params(("account_id" = String, Path)), responses((status = 200, body = ParentStationList)), security(("bearer" = [])))]
async fn parent_stations(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
) -> Result<Json<ParentStationList>, ApiError> {
    let rows = state.sessions.parent_stations(&account_id).await?;
    let parent_stations = rows
        .into_iter()
        .map(|r| ParentStationView {
            client_id: r.client_id,
            announcement: serde_json::from_str(&r.announcement).unwrap_or(serde_json::Value::Null),
            updated_at_millis: r.updated_at_millis,
        })
        .collect();
    Ok(Json(ParentStationList {
        account_id,
        parent_stations,
    }))
}

#[derive(Debug, Deserialize)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

fn millis_param(value: Option<&str>, field: &'static str, default: i64) -> Result<i64, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => {
            v.parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .ok_or_else(|| ApiError::InvalidParameter {
                    field,
                    message: "Unix milliseconds, a whole number ≥ 0".into(),
                })
        }
    }
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/usage", tag = "sessions", summary = "Monitoring time per session and station in a window.", params(("account_id" = String, Path), ("from" = Option<i64>, Query), ("to" = Option<i64>, Query)), responses((status = 200, body = UsageView), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
async fn usage_route(
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
    super::params::Params(q): super::params::Params<UsageQuery>,
) -> Result<Json<UsageView>, ApiError> {
    let from = millis_param(q.from.as_deref(), "from", 0)?;
    let to = millis_param(q.to.as_deref(), "to", now_millis())?;
    if to <= from {
        return Err(ApiError::InvalidParameter {
            field: "to",
            message: "must be after `from`".into(),
        });
    }
    let rows = state
        .sessions
        .sessions_between(&account_id, from, to)
        .await?;
    Ok(Json(UsageView {
        account_id,
        usage: usage(&rows, from, to),
    }))
}
