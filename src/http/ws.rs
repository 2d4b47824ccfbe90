//! `GET /ws`: everything the HTTP side decides before a socket reaches the WebSocket bridge.
//!
//! The page's origin (`http.allowed_origins`), the subprotocols offered, the credential (one
//! bearer token from the `Authorization` header, the `token` query parameter or a
//! `Sec-WebSocket-Protocol` value; or open mode), the client id, the resume parameters and the
//! bridge's admission (shutting down, `websocket.max_sessions`) are all checked here, before
//! the `101`; a refusal is a status with a JSON body, and leaves no session, status or session
//! metric behind. A plain `GET /ws` (no upgrade) runs the same checks and answers `426` when
//! they all pass: a browser, which cannot see why an upgrade failed, learns it this way. The
//! upgraded socket is then handed to [`Bridge::serve`], which owns it from there.

use std::net::IpAddr;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::{ApiError, AppState, SourceIp};
use crate::accounts::{self, AccountsError, CredentialKind};
use crate::topics::is_valid_id;
use crate::ws::{Admission, Bridge, Proof, Resume};

/// Query parameters of `GET /ws`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WsQuery {
    /// Bearer token (browsers cannot set headers on a WebSocket).
    pub token: Option<String>,
    /// The client id (required with an account token; the token names only the account).
    pub client_id: Option<String>,
    /// Open mode only: the account.
    pub account: Option<String>,
    /// Resume: the session's connection id.
    pub connection_id: Option<String>,
    /// Resume: the last `seq` the client saw.
    pub resume_from: Option<u64>,
    /// Resume without a known `seq` (replays the whole buffer).
    pub resume: Option<bool>,
    /// Resume: the session's resume secret (from its `hello`); not needed with the token
    /// that opened the session.
    pub resume_secret: Option<String>,
}

/// The `/ws` route.
pub(super) fn router() -> Router<AppState> {
    Router::new().route("/ws", get(upgrade))
}

/// The caller of an upgrade: its account and the credential id of its token (none in open
/// mode).
struct Caller {
    account_id: String,
    credential_id: Option<String>,
}

#[utoipa::path(get, path = "/ws", tag = "websocket", summary = "The WebSocket bridge's handshake (docs/websocket.md): every refusal comes before the 101.", params(("client_id" = String, Query), ("account" = Option<String>, Query), ("token" = Option<String>, Query), ("connection_id" = Option<String>, Query), ("resume_from" = Option<u64>, Query), ("resume_secret" = Option<String>, Query)), responses((status = 101, description = "upgraded"), (status = 401, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody), (status = 410, body = super::error::ErrorBody), (status = 426, body = super::error::ErrorBody)))]
async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    SourceIp(source): SourceIp,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // First: a page of another website learns nothing else (RFC 6455 10.2).
    if let Some(refused) = state.origins.refusal(&state, &headers) {
        return refused;
    }
    let offers_cradle = match subprotocols(&headers) {
        Ok(offers_cradle) => offers_cradle,
        Err(refusal) => return refusal.into_response(),
    };
    let bridge = state.bridge.clone();
    if bridge.is_closing() {
        // Sessions are being ended or handed over: a resume here would find nothing.
        return unavailable(
            "shutting_down",
            "Cradle is shutting down: retry (a session handed over resumes on the next start or on another replica)",
            "1",
        )
        .into_response();
    }
    let caller = match authenticate(&state, &headers, &q, source).await {
        Ok(Some(caller)) => caller,
        Ok(None) => {
            bridge.auth_failed();
            tracing::warn!("WebSocket upgrade refused: no valid token");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required (Authorization header, `token` query parameter or Sec-WebSocket-Protocol)",
            )
            .into_response();
        }
        Err(error) => return ApiError::Accounts(error).into_response(),
    };
    let client_id = match client_id(&state, &caller, &q).await {
        Ok(c) => c,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(until) = state.auth.banned_until(&caller.account_id, &client_id) {
        return ApiError::Refused {
            status: StatusCode::FORBIDDEN,
            code: "banned",
            message: format!("client `{client_id}` is banned until {until} (Unix milliseconds)"),
            retry_after_secs: None,
        }
        .into_response();
    }
    let resume = match resume_request(&q) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(refusal) = admit(&state, &bridge, &caller, &client_id, &q, resume.as_ref()).await {
        return refusal.into_response();
    }
    let ws = match ws {
        Ok(ws) => configure(ws, &bridge, offers_cradle),
        Err(rejection) => return not_an_upgrade(&headers, &rejection),
    };
    let Caller {
        account_id,
        credential_id,
    } = caller;
    ws.on_upgrade(move |socket| {
        bridge.serve(
            socket,
            (account_id, client_id),
            credential_id,
            resume,
            source,
        )
    })
}

/// The subprotocols a browser may offer: none, or a list with `cradle` (the one the server
/// selects; a token may ride beside it). A browser fails a handshake whose answer selects
/// none of the protocols it offered, after the `101`, so a page offering only its token is
/// refused here instead. Clients without `Origin` (not browsers) keep the older rule: any
/// offer is accepted, `cradle` selected when present. Says whether `cradle` was offered.
fn subprotocols(headers: &HeaderMap) -> Result<bool, Refusal> {
    let Some(offered) = headers.get(header::SEC_WEBSOCKET_PROTOCOL) else {
        return Ok(false);
    };
    let with_cradle = offered
        .to_str()
        .is_ok_and(|p| p.split(',').any(|x| x.trim() == "cradle"));
    if with_cradle || !headers.contains_key(header::ORIGIN) {
        return Ok(with_cradle);
    }
    Err(refuse(
        StatusCode::BAD_REQUEST,
        "subprotocol_not_supported",
        "offer the `cradle` subprotocol (a token may be offered beside it): new WebSocket(url, [\"cradle\", token])",
    ))
}

/// The answer to a `GET /ws` that passed every check but is no WebSocket upgrade: `426`
/// (`upgrade_required`) for a plain request, the diagnostic a browser uses to learn why its
/// upgrade failed; a malformed upgrade gets the web framework's status with a JSON body.
fn not_an_upgrade(headers: &HeaderMap, rejection: &WebSocketUpgradeRejection) -> Response {
    if !headers.contains_key(header::UPGRADE) {
        let mut r = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "every check passed: open this URL as a WebSocket",
        )
        .into_response();
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    ApiError::Refused {
        status: rejection.status(),
        code: "invalid_upgrade",
        message: rejection.body_text(),
        retry_after_secs: None,
    }
    .into_response()
}

/// Finds the account of the caller and the credential id of its token: ONE bearer token, the
/// first present of the `Authorization: Bearer` header, the `token` query parameter, and the
/// first `Sec-WebSocket-Protocol` value that looks like a token (contains a `.`), checked
/// through the verified-token cache (at most one argon2 run per upgrade); or open mode with
/// `account` (no credential).
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    q: &WsQuery,
    source: Option<IpAddr>,
) -> Result<Option<Caller>, AccountsError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let protocol = || {
        headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.split(',').map(str::trim).find(|t| t.contains('.')))
    };
    let candidate = header.or(q.token.as_deref()).or_else(protocol);
    if let Some(token) = candidate {
        // Busy (the verification gate) and store errors are the caller's answer (503), not
        // a bad token.
        if let Some(c) = state
            .tokens
            .verify(&state.store, &state.metrics, token, source)
            .await?
        {
            if c.kind == CredentialKind::Token {
                let credential_id = token.split_once('.').map(|(id, _)| id.to_string());
                return Ok(c.account_id.map(|account_id| Caller {
                    account_id,
                    credential_id,
                }));
            }
        }
    }
    if state.auth.anonymous_allowed(state.http_loopback).await {
        return Ok(q
            .account
            .clone()
            .filter(|a| is_valid_id(a))
            .map(|account_id| Caller {
                account_id,
                credential_id: None,
            }));
    }
    Ok(None)
}

/// The client id the socket speaks for: valid, and not one of the account's MQTT devices (a
/// WebSocket client may not pose as one: their status would be overwritten on their behalf).
async fn client_id(state: &AppState, caller: &Caller, q: &WsQuery) -> Result<String, Refusal> {
    let Some(client_id) = q.client_id.clone().filter(|c| is_valid_id(c)) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "client_id: 1-128 characters of A-Z a-z 0-9 - _ . : @ is required",
        ));
    };
    if accounts::is_device_client(&state.store, &caller.account_id, &client_id)
        .await
        .unwrap_or(true)
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "client_id belongs to an MQTT device of this account",
        ));
    }
    Ok(client_id)
}

/// The resume the query asks for: `connection_id` with `resume_from`, or with `resume=true`
/// (the whole buffer); a resume parameter without `connection_id` is a `400`.
fn resume_request(q: &WsQuery) -> Result<Option<Resume>, Refusal> {
    match (&q.connection_id, q.resume_from, q.resume) {
        (Some(id), Some(from), _) => Ok(Some((id.clone(), Some(from)))),
        (Some(id), None, Some(true)) => Ok(Some((id.clone(), None))),
        (None, Some(_), _) | (None, None, Some(true)) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "connection_id: required to resume",
        )),
        _ => Ok(None),
    }
}

/// The bridge's answer before the upgrade: a resume finds its session (moved here first when
/// another replica or the store holds it) or gets `410`; a new session fits under
/// `websocket.max_sessions` or gets `503`.
async fn admit(
    state: &AppState,
    bridge: &std::sync::Arc<Bridge>,
    caller: &Caller,
    client_id: &str,
    q: &WsQuery,
    resume: Option<&Resume>,
) -> Result<(), Refusal> {
    let proof = Proof {
        credential_id: caller.credential_id.as_deref(),
        secret: q.resume_secret.as_deref(),
        offer: None,
    };
    let connection_id = resume.map(|(id, _)| id.as_str());
    let admission = bridge
        .admit(
            &state.store,
            &caller.account_id,
            client_id,
            connection_id,
            proof,
        )
        .await;
    match admission {
        Admission::Open => Ok(()),
        Admission::SessionGone => Err(refuse(
            StatusCode::GONE,
            "session_gone",
            "no session to resume: connect again without resume parameters",
        )),
        Admission::Full => Err(unavailable(
            "too_many_sessions",
            "websocket.max_sessions reached: retry later",
            "5",
        )),
    }
}

/// The upgrade's buffers and frame limits (`websocket.max_frame_bytes`), and the `cradle`
/// subprotocol when the client offered it ([`subprotocols`]).
fn configure(ws: WebSocketUpgrade, bridge: &Bridge, offers_cradle: bool) -> WebSocketUpgrade {
    let max_frame_bytes = bridge.max_frame_bytes();
    let ws = ws
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(max_frame_bytes * 4 + 64 * 1024)
        .max_message_size(max_frame_bytes)
        .max_frame_size(max_frame_bytes);
    if offers_cradle {
        ws.protocols(["cradle"])
    } else {
        ws
    }
}

/// A refusal of the upgrade: `status` with the API's JSON error body (`WWW-Authenticate:
/// Bearer` with a `401`).
type Refusal = ApiError;

/// `status` with `code` and `message`.
fn refuse(status: StatusCode, code: &'static str, message: &'static str) -> Refusal {
    ApiError::Refused {
        status,
        code,
        message: message.to_string(),
        retry_after_secs: None,
    }
}

/// `503` with `code` and `message`, and `Retry-After: {retry_after_secs}`.
fn unavailable(
    code: &'static str,
    message: &'static str,
    retry_after_secs: &'static str,
) -> Refusal {
    ApiError::Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code,
        message: message.to_string(),
        retry_after_secs: Some(retry_after_secs),
    }
}
