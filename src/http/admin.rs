//! Administration routes under `/v1/admin/…`: accounts (create, safe to retry; list; get;
//! delete), credentials of every kind (issue, list, get, revoke), secret rotation and bulk
//! provisioning of device credentials. The same `accounts` functions serve these routes and
//! the `cradle accounts` / `cradle credentials` commands.
//!
//! Who may call them: the admin token (`http.admin_token`), and in open mode (no account yet,
//! loopback only) anyone, so that the first account can be created over HTTP. Operator
//! secrets watch and read; they do not administer (`403`), nor does an account's token.
//! A secret appears in the response that issued it, and never again.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::ErrorBody;
use super::metrics::AdminAction;
use super::params::id_param;
use super::{ApiError, AppState};
use crate::accounts::{self, AccountsError, CredentialKind, Issued};
use crate::control::Ended;
use crate::domain::connection::DisconnectReason;
use crate::domain::control::Target;
use crate::store::audit::AdminAction as AdminAction_;
use crate::store::{accounts as account_rows, credentials as credential_rows};
use serde_json::json;

/// Device credentials one bulk request may issue.
pub(crate) const MAX_BULK: usize = 10_000;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/accounts", get(list_accounts))
        .route(
            "/v1/admin/accounts/{account_id}",
            get(get_account).put(put_account).delete(delete_account),
        )
        .route(
            "/v1/admin/accounts/{account_id}/devices",
            post(provision_devices),
        )
        .route(
            "/v1/admin/credentials",
            get(list_credentials).post(issue_credential),
        )
        .route(
            "/v1/admin/credentials/{credential_id}",
            get(get_credential).delete(revoke_credential),
        )
        .route(
            "/v1/admin/credentials/{credential_id}/rotate",
            post(rotate_credential),
        )
        .route(
            "/v1/accounts/{account_id}/clients/{client_id}/disconnect",
            post(disconnect_client),
        )
        .route("/v1/admin/bans", get(list_bans))
        .route("/v1/admin/connections", get(all_connections))
        .route(
            "/v1/admin/bans/{account_id}/{client_id}",
            axum::routing::delete(lift_ban),
        )
}

/// A caller allowed to administer: the admin token, an administrator credential, or anyone
/// in open mode; who it is, as the record of its actions names it (`admin_token`, the
/// credential's id, `open_mode`).
pub(crate) struct Administrator(String);

impl axum::extract::FromRequestParts<AppState> for Administrator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin(None) => Ok(Administrator("admin_token".into())),
            Caller::Admin(Some(credential_id)) => Ok(Administrator(credential_id)),
            Caller::Open => Ok(Administrator("open_mode".into())),
            Caller::Operator => Err(not_admin(
                "an operator secret watches and reads; administration needs the admin token",
            )),
            Caller::Account(_) => Err(not_admin(
                "an account's token may not administer; administration needs the admin token",
            )),
        }
    }
}

fn not_admin(message: &str) -> ApiError {
    ApiError::Refused {
        status: StatusCode::FORBIDDEN,
        code: "forbidden",
        message: message.to_string(),
        retry_after_secs: None,
    }
}

/// Counts, logs and records `action` in the event log (a failure to record is logged: the
/// action itself is done).
async fn record(
    state: &AppState,
    action: AdminAction,
    by: &str,
    account_id: Option<&str>,
    data: serde_json::Value,
) {
    state.metrics.admin_action(action);
    tracing::info!(
        action = action.as_str(),
        by,
        account_id = account_id.unwrap_or(""),
        %data,
        "administrative action"
    );
    let recorded = state
        .store
        .record_admin(AdminAction_ {
            account_id,
            event_type: action.event_type(),
            by,
            data,
        })
        .await;
    if let Err(error) = recorded {
        tracing::error!(%error, action = action.as_str(), "administrative action not recorded in the event log");
    }
}

/// Reads a JSON body of at most `http.max_body_bytes` (empty: `T::default()`).
async fn json_body<T: DeserializeOwned + Default>(
    state: &AppState,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(state.max_body_bytes))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidBody {
        field: "body",
        message: e.to_string(),
    })
}

/// An account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AccountView {
    /// The account id, as used in topics.
    pub account_id: String,
    /// Its human-readable name.
    pub name: String,
    /// When it was created (Unix milliseconds).
    pub created_at_millis: i64,
}

impl From<account_rows::Model> for AccountView {
    fn from(m: account_rows::Model) -> Self {
        Self {
            account_id: m.account_id,
            name: m.name,
            created_at_millis: m.created_at_millis,
        }
    }
}

/// A credential, never its secret nor its hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CredentialView {
    /// Its id (`cr_…`), also the prefix of a bearer token or operator secret.
    pub credential_id: String,
    /// `device`, `token`, `operator` or `admin`.
    pub kind: &'static str,
    /// The account (none for an operator).
    pub account_id: Option<String>,
    /// The MQTT client id of a device credential.
    pub client_id: Option<String>,
    /// When it was issued (Unix milliseconds).
    pub created_at_millis: i64,
    /// When it was revoked, if it was.
    pub revoked_at_millis: Option<i64>,
}

impl From<credential_rows::Model> for CredentialView {
    fn from(m: credential_rows::Model) -> Self {
        Self {
            credential_id: m.credential_id,
            kind: m.kind.as_str(),
            account_id: m.account_id,
            client_id: m.client_id,
            created_at_millis: m.created_at_millis,
            revoked_at_millis: m.revoked_at_millis,
        }
    }
}

/// A newly issued credential and its secret, shown in this response only.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct IssuedView {
    /// The credential.
    #[serde(flatten)]
    pub credential: CredentialView,
    /// The secret: a device's MQTT password, or the bearer token / operator secret.
    pub secret: String,
}

impl From<Issued> for IssuedView {
    fn from(i: Issued) -> Self {
        Self {
            credential: i.credential.into(),
            secret: i.secret,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AccountList {
    accounts: Vec<AccountView>,
}

#[utoipa::path(get, path = "/v1/admin/accounts", tag = "admin", summary = "Every account.", responses((status = 200, body = AccountList), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
async fn list_accounts(
    _: Administrator,
    State(state): State<AppState>,
) -> Result<Json<AccountList>, ApiError> {
    let rows = accounts::list_accounts(&state.store).await?;
    Ok(Json(AccountList {
        accounts: rows.into_iter().map(AccountView::from).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/admin/accounts/{account_id}", tag = "admin", summary = "One account.", params(("account_id" = String, Path)), responses((status = 200, body = AccountView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_account(
    _: Administrator,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let row = accounts::account(&state.store, &account_id).await?;
    Ok(Json(row.into()))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct PutAccount {
    /// Human-readable name (default: the id).
    name: Option<String>,
}

/// Longest account name.
const MAX_NAME_CHARS: usize = 256;

/// Creates the account unless it exists: `201` when this request created it, `200` with the
/// existing account on a repeat (a sign-up service may retry safely).
#[utoipa::path(put, path = "/v1/admin/accounts/{account_id}", tag = "admin", summary = "Creates the account unless it exists (safe to retry).", params(("account_id" = String, Path)), request_body(content = PutAccount), responses((status = 201, body = AccountView), (status = 200, body = AccountView), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
async fn put_account(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    id_param("account_id", &account_id)?;
    if account_id == crate::store::audit::CRADLE_ACCOUNT {
        return Err(ApiError::InvalidParameter {
            field: "account_id",
            message: format!("`{account_id}` is reserved for Cradle's own log"),
        });
    }
    let put: PutAccount = json_body(&state, body).await?;
    let name = put.name.unwrap_or_else(|| account_id.clone());
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::InvalidBody {
            field: "name",
            message: format!("at most {MAX_NAME_CHARS} characters, no control characters"),
        });
    }
    let (created, row) = accounts::ensure_account(&state.store, &account_id, &name).await?;
    state.auth.account_created();
    if created {
        let data = json!({"account_id": account_id, "name": row.name});
        record(
            &state,
            AdminAction::AccountCreated,
            &by,
            Some(&account_id),
            data,
        )
        .await;
    }
    let status = match created {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json(row.into())))
}

/// What deleting an account did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AccountDeleted {
    account_id: String,
    /// Whether an account row was deleted (an erase of a deleted account's data has none).
    deleted: bool,
    /// Credentials of the account revoked by the deletion.
    credentials_revoked: u64,
    /// The account's events and read models: `kept`, or `erased` (`?erase=true`).
    events: &'static str,
    /// Live connections of the account this replica ended (reason `revoked`); every other
    /// replica ends its own.
    ended: Ended,
    /// What the erase removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    erased: Option<crate::store::audit::Erased>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Also erase the account's events and read models, and clear its retained messages.
    erase: Option<bool>,
}

/// Deletes an account: its credentials revoked, its live connections ended (on every
/// replica); with `?erase=true` its events, read models and retained messages go too (also
/// for an account deleted earlier).
#[utoipa::path(delete, path = "/v1/admin/accounts/{account_id}", tag = "admin", summary = "Deletes the account (credentials revoked, live connections ended); ?erase=true erases its data too.", params(("account_id" = String, Path), DeleteQuery), responses((status = 200, body = AccountDeleted), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_account(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    super::params::Params(q): super::params::Params<DeleteQuery>,
) -> Result<Json<AccountDeleted>, ApiError> {
    id_param("account_id", &account_id)?;
    let erase = q.erase.unwrap_or(false);
    let revoked = match accounts::delete_account(&state.store, &account_id).await {
        Ok(n) => Some(n),
        Err(AccountsError::NoAccount(_)) if erase => None,
        Err(e) => return Err(e.into()),
    };
    let ended = state
        .control
        .end(
            Target::Account {
                account_id: account_id.clone(),
            },
            DisconnectReason::Revoked,
        )
        .await;
    let erased = match erase {
        true => Some(erase_data(&state, &account_id).await?),
        false => None,
    };
    if revoked.is_none() && erased == Some(Default::default()) {
        return Err(AccountsError::NoAccount(account_id).into());
    }
    let data = json!({"account_id": account_id, "credentials_revoked": revoked, "ended": ended, "erased": erased});
    match erase {
        // The account's own log is gone: the erase is recorded in Cradle's.
        true => record(&state, AdminAction::AccountErased, &by, None, data).await,
        false => {
            let action = AdminAction::AccountDeleted;
            record(&state, action, &by, Some(&account_id), data).await
        }
    }
    Ok(Json(AccountDeleted {
        account_id,
        deleted: revoked.is_some(),
        credentials_revoked: revoked.unwrap_or(0),
        events: if erase { "erased" } else { "kept" },
        ended,
        erased,
    }))
}

/// Erases the account's events and read models, then clears its retained statuses and
/// station announcements in the broker.
async fn erase_data(
    state: &AppState,
    account_id: &str,
) -> Result<crate::store::audit::Erased, ApiError> {
    use crate::topics::{parent_station_topic, status_topic};
    let mut topics = Vec::new();
    for c in state.store.clients(account_id).await? {
        topics.push(status_topic(account_id, &c.client_id));
        topics.push(format!(
            "accounts/{account_id}/baby_stations/{}",
            c.client_id
        ));
    }
    for p in state.store.parent_stations(account_id).await? {
        topics.push(parent_station_topic(account_id, &p.client_id));
    }
    let erased = state.store.erase_account_data(account_id).await?;
    state.control.clear_retained(topics).await;
    Ok(erased)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    account_id: Option<String>,
}

impl ListQuery {
    /// The account the list is limited to, checked; none for every account.
    fn account(&self) -> Result<Option<&str>, ApiError> {
        if let Some(a) = &self.account_id {
            id_param("account_id", a)?;
        }
        Ok(self.account_id.as_deref())
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CredentialList {
    credentials: Vec<CredentialView>,
}

#[utoipa::path(get, path = "/v1/admin/credentials", tag = "admin", summary = "Credentials (never secrets).", params(ListQuery), responses((status = 200, body = CredentialList)), security(("bearer" = [])))]
async fn list_credentials(
    _: Administrator,
    State(state): State<AppState>,
    super::params::Params(q): super::params::Params<ListQuery>,
) -> Result<Json<CredentialList>, ApiError> {
    let rows = accounts::list_credentials(&state.store, q.account()?).await?;
    Ok(Json(CredentialList {
        credentials: rows.into_iter().map(CredentialView::from).collect(),
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    /// `device`, `token`, `operator` or `admin`.
    kind: Option<String>,
    account_id: Option<String>,
    client_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/admin/credentials", tag = "admin", summary = "Issues a credential; its secret is in this response only.", request_body(content = IssueBody), responses((status = 201, body = IssuedView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn issue_credential(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<IssuedView>), ApiError> {
    let b: IssueBody = json_body(&state, body).await?;
    let kind = match b.kind.as_deref() {
        Some("device") => CredentialKind::Device,
        Some("token") => CredentialKind::Token,
        Some("operator") => CredentialKind::Operator,
        Some("admin") => CredentialKind::Admin,
        _ => {
            return Err(ApiError::InvalidBody {
                field: "kind",
                message: "one of `device`, `token`, `operator`, `admin`".into(),
            })
        }
    };
    let issued = accounts::issue(
        &state.store,
        kind,
        b.account_id.as_deref(),
        b.client_id.as_deref(),
    )
    .await?;
    let c = &issued.credential;
    let data =
        json!({"credential_id": c.credential_id, "kind": kind.as_str(), "client_id": c.client_id});
    record(
        &state,
        AdminAction::CredentialIssued,
        &by,
        c.account_id.as_deref(),
        data,
    )
    .await;
    Ok((StatusCode::CREATED, Json(issued.into())))
}

#[utoipa::path(get, path = "/v1/admin/credentials/{credential_id}", tag = "admin", summary = "One credential.", params(("credential_id" = String, Path)), responses((status = 200, body = CredentialView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_credential(
    _: Administrator,
    State(state): State<AppState>,
    Path(credential_id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    id_param("credential_id", &credential_id)?;
    let row = accounts::credential(&state.store, &credential_id).await?;
    Ok(Json(row.into()))
}

/// A revoked credential, and the live connections this replica ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Revoked {
    #[serde(flatten)]
    credential: CredentialView,
    ended: Ended,
}

/// Revokes a credential: new connections and requests with it are refused at once (the
/// verification caches are emptied), and every live MQTT connection and WebSocket session
/// that authenticated with it ends (reason `revoked`), here at once and on every other
/// replica through `cradle/control`.
#[utoipa::path(delete, path = "/v1/admin/credentials/{credential_id}", tag = "admin", summary = "Revokes a credential and ends its live connections on every replica.", params(("credential_id" = String, Path)), responses((status = 200, body = Revoked), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn revoke_credential(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    Path(credential_id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    id_param("credential_id", &credential_id)?;
    accounts::revoke(&state.store, &credential_id).await?;
    let ended = state
        .control
        .end(
            Target::Credential {
                credential_id: credential_id.clone(),
            },
            DisconnectReason::Revoked,
        )
        .await;
    let row = accounts::credential(&state.store, &credential_id).await?;
    let data = json!({"credential_id": credential_id, "kind": row.kind.as_str(), "client_id": row.client_id, "ended": ended});
    record(
        &state,
        AdminAction::CredentialRevoked,
        &by,
        row.account_id.as_deref(),
        data,
    )
    .await;
    Ok(Json(Revoked {
        credential: row.into(),
        ended,
    }))
}

/// What a disconnect did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Disconnected {
    account_id: String,
    client_id: String,
    /// The live connections this replica ended (reason `admin_disconnect`); every other
    /// replica ends its own.
    ended: Ended,
    /// Until when its reconnects are refused (Unix milliseconds), when `ban_secs` was given.
    banned_until_millis: Option<i64>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    /// Refuse the client's reconnects for this long (1 s to one year).
    ban_secs: Option<u64>,
}

/// The longest ban, in seconds (a year).
const MAX_BAN_SECS: u64 = 366 * 24 * 3600;

/// Ends every live connection of the client (MQTT 5: DISCONNECT 0x98; WebSocket: close
/// 4011), recorded with reason `admin_disconnect`. With `ban_secs` its reconnects are refused
/// until then (MQTT 5: CONNACK 0x8A banned; 3.1.1: not authorized; `/ws`: 403 `banned`), on
/// every replica; otherwise it may connect again at once.
#[utoipa::path(post, path = "/v1/accounts/{account_id}/clients/{client_id}/disconnect", tag = "admin", summary = "Ends the client's live connections on every replica, optionally banning it.", params(("account_id" = String, Path), ("client_id" = String, Path)), request_body(content = Option<DisconnectBody>), responses((status = 200, body = Disconnected), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
async fn disconnect_client(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    Path((account_id, client_id)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Disconnected>, ApiError> {
    id_param("account_id", &account_id)?;
    id_param("client_id", &client_id)?;
    let b: DisconnectBody = json_body(&state, body).await?;
    let banned_until_millis = match b.ban_secs {
        None => None,
        Some(secs) if (1..=MAX_BAN_SECS).contains(&secs) => {
            let now = crate::clock::now_millis();
            let until = now + (secs as i64) * 1000;
            let ban = crate::store::bans::Model {
                account_id: account_id.clone(),
                client_id: client_id.clone(),
                until_millis: until,
                created_at_millis: now,
                by: by.clone(),
            };
            state.store.put_ban(&ban).await?;
            Some(until)
        }
        Some(_) => {
            return Err(ApiError::InvalidBody {
                field: "ban_secs",
                message: format!("1 to {MAX_BAN_SECS} seconds"),
            })
        }
    };
    let target = Target::Client {
        account_id: account_id.clone(),
        client_id: client_id.clone(),
    };
    let ended = state
        .control
        .end_and_ban(
            target,
            DisconnectReason::AdminDisconnect,
            banned_until_millis,
        )
        .await;
    let data = json!({"client_id": client_id, "ended": ended});
    record(
        &state,
        AdminAction::ClientDisconnected,
        &by,
        Some(&account_id),
        data,
    )
    .await;
    if let Some(until) = banned_until_millis {
        let data = json!({"client_id": client_id, "until_millis": until});
        record(
            &state,
            AdminAction::ClientBanned,
            &by,
            Some(&account_id),
            data,
        )
        .await;
    }
    Ok(Json(Disconnected {
        account_id,
        client_id,
        ended,
        banned_until_millis,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// A page of live connections, gathered from every replica.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ConnectionPage {
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<String>,
    connections: Vec<crate::control::ConnectionView>,
    /// Pass as `after` for the next page; none after the last.
    next_after: Option<String>,
    /// The replicas whose connections the page holds (the one that answered first).
    replicas: Vec<String>,
    /// Replicas present that did not answer within a second: their connections are missing
    /// from the page (empty when it is complete).
    unanswered_replicas: Vec<String>,
}

/// A page of the live connections (MQTT and WebSocket) of `account` (or all), on every
/// replica.
pub(super) async fn connection_page(
    state: &AppState,
    account: Option<String>,
    q: PageQuery,
) -> Result<ConnectionPage, ApiError> {
    let limit = super::params::limit(q.limit.as_deref(), state.max_page_size)? as usize;
    let gathered = state
        .control
        .gather(account.as_deref(), q.after.as_deref(), limit)
        .await;
    let connections = gathered.connections;
    let next_after = (connections.len() == limit)
        .then(|| connections.last().map(|c| c.cursor()))
        .flatten();
    Ok(ConnectionPage {
        account_id: account,
        connections,
        next_after,
        replicas: gathered.replicas,
        unanswered_replicas: gathered.unanswered,
    })
}

/// Every account's live connections on this replica.
#[utoipa::path(get, path = "/v1/admin/connections", tag = "admin", summary = "Every account's live connections on every replica, paged.", params(PageQuery), responses((status = 200, body = ConnectionPage)), security(("bearer" = [])))]
async fn all_connections(
    _: Administrator,
    State(state): State<AppState>,
    super::params::Params(q): super::params::Params<PageQuery>,
) -> Result<Json<ConnectionPage>, ApiError> {
    Ok(Json(connection_page(&state, None, q).await?))
}

/// A ban in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BanView {
    account_id: String,
    client_id: String,
    until_millis: i64,
    created_at_millis: i64,
    by: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BanList {
    bans: Vec<BanView>,
}

#[utoipa::path(get, path = "/v1/admin/bans", tag = "admin", summary = "The bans in force.", params(ListQuery), responses((status = 200, body = BanList)), security(("bearer" = [])))]
async fn list_bans(
    _: Administrator,
    State(state): State<AppState>,
    super::params::Params(q): super::params::Params<ListQuery>,
) -> Result<Json<BanList>, ApiError> {
    let rows = state
        .store
        .bans(q.account()?, crate::clock::now_millis())
        .await?;
    Ok(Json(BanList {
        bans: rows
            .into_iter()
            .map(|b| BanView {
                account_id: b.account_id,
                client_id: b.client_id,
                until_millis: b.until_millis,
                created_at_millis: b.created_at_millis,
                by: b.by,
            })
            .collect(),
    }))
}

/// Lifts a ban: this replica admits the client at once, the others within a second.
#[utoipa::path(delete, path = "/v1/admin/bans/{account_id}/{client_id}", tag = "admin", summary = "Lifts a ban.", params(("account_id" = String, Path), ("client_id" = String, Path)), responses((status = 204, description = "lifted"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn lift_ban(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    Path((account_id, client_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    id_param("account_id", &account_id)?;
    id_param("client_id", &client_id)?;
    let now = crate::clock::now_millis();
    if !state.store.lift_ban(&account_id, &client_id, now).await? {
        return Err(ApiError::Refused {
            status: StatusCode::NOT_FOUND,
            code: "ban_not_found",
            message: format!("client `{client_id}` of account `{account_id}` is not banned"),
            retry_after_secs: None,
        });
    }
    state.auth.forget_ban(&account_id, &client_id);
    let data = json!({"client_id": client_id});
    record(&state, AdminAction::BanLifted, &by, Some(&account_id), data).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret for the same kind, account and client; the old credential keeps working
/// until it is revoked.
#[utoipa::path(post, path = "/v1/admin/credentials/{credential_id}/rotate", tag = "admin", summary = "A new secret of the same kind, account and client; the old one works until revoked.", params(("credential_id" = String, Path)), responses((status = 201, body = IssuedView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn rotate_credential(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    Path(credential_id): Path<String>,
) -> Result<(StatusCode, Json<IssuedView>), ApiError> {
    id_param("credential_id", &credential_id)?;
    let issued = accounts::rotate(&state.store, &credential_id).await?;
    let c = &issued.credential;
    let data = json!({"credential_id": credential_id, "new_credential_id": c.credential_id, "client_id": c.client_id});
    record(
        &state,
        AdminAction::CredentialRotated,
        &by,
        c.account_id.as_deref(),
        data,
    )
    .await;
    Ok((StatusCode::CREATED, Json(issued.into())))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    client_ids: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BulkIssued {
    account_id: String,
    credentials: Vec<IssuedView>,
}

/// One device credential per client id, in one transaction: all are issued or none.
#[utoipa::path(post, path = "/v1/admin/accounts/{account_id}/devices", tag = "admin", summary = "Issues one device credential per client id, in one transaction.", params(("account_id" = String, Path)), request_body(content = BulkBody), responses((status = 201, body = BulkIssued), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn provision_devices(
    Administrator(by): Administrator,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<BulkIssued>), ApiError> {
    id_param("account_id", &account_id)?;
    let b: BulkBody = json_body(&state, body).await?;
    if b.client_ids.is_empty() || b.client_ids.len() > MAX_BULK {
        return Err(ApiError::InvalidBody {
            field: "client_ids",
            message: format!("1 to {MAX_BULK} client ids"),
        });
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = b.client_ids.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(ApiError::InvalidBody {
            field: "client_ids",
            message: format!("`{dup}` appears twice"),
        });
    }
    let issued = accounts::issue_devices(&state.store, &account_id, &b.client_ids).await?;
    let data = json!({"account_id": account_id, "count": issued.len()});
    record(
        &state,
        AdminAction::DevicesProvisioned,
        &by,
        Some(&account_id),
        data,
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(BulkIssued {
            account_id,
            credentials: issued.into_iter().map(IssuedView::from).collect(),
        }),
    ))
}
