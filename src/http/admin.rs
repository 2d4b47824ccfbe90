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
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::params::id_param;
use super::{ApiError, AppState};
use crate::accounts::{self, AccountsError, CredentialKind, Issued};
use crate::control::Ended;
use crate::domain::connection::DisconnectReason;
use crate::domain::control::Target;
use crate::store::{accounts as account_rows, credentials as credential_rows};

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
}

/// A caller allowed to administer: the admin token, or anyone in open mode.
pub(crate) struct Administrator;

impl axum::extract::FromRequestParts<AppState> for Administrator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin | Caller::Open => Ok(Administrator),
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

/// The HTTP answer to an error of the accounts module.
fn refusal(error: AccountsError) -> ApiError {
    let refused = |status, code, message: String| ApiError::Refused {
        status,
        code,
        message,
        retry_after_secs: None,
    };
    match error {
        AccountsError::InvalidId { field, .. } => ApiError::InvalidParameter {
            field,
            message: error.to_string(),
        },
        AccountsError::NoAccount(_) => refused(
            StatusCode::NOT_FOUND,
            "account_not_found",
            error.to_string(),
        ),
        AccountsError::NoCredential(_) => refused(
            StatusCode::NOT_FOUND,
            "credential_not_found",
            error.to_string(),
        ),
        AccountsError::AccountExists(_) => {
            refused(StatusCode::CONFLICT, "account_exists", error.to_string())
        }
        AccountsError::Usage(message) => ApiError::InvalidBody {
            field: "kind",
            message,
        },
        other => ApiError::Accounts(other),
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
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
pub(crate) struct CredentialView {
    /// Its id (`cr_…`), also the prefix of a bearer token or operator secret.
    pub credential_id: String,
    /// `device`, `token` or `operator`.
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
#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
struct AccountList {
    accounts: Vec<AccountView>,
}

async fn list_accounts(
    _: Administrator,
    State(state): State<AppState>,
) -> Result<Json<AccountList>, ApiError> {
    let rows = accounts::list_accounts(&state.store)
        .await
        .map_err(refusal)?;
    Ok(Json(AccountList {
        accounts: rows.into_iter().map(AccountView::from).collect(),
    }))
}

async fn get_account(
    _: Administrator,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let row = accounts::account(&state.store, &account_id)
        .await
        .map_err(refusal)?;
    Ok(Json(row.into()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutAccount {
    /// Human-readable name (default: the id).
    name: Option<String>,
}

/// Longest account name.
const MAX_NAME_CHARS: usize = 256;

/// Creates the account unless it exists: `201` when this request created it, `200` with the
/// existing account on a repeat (a sign-up service may retry safely).
async fn put_account(
    _: Administrator,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    id_param("account_id", &account_id)?;
    let put: PutAccount = json_body(&state, body).await?;
    let name = put.name.unwrap_or_else(|| account_id.clone());
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::InvalidBody {
            field: "name",
            message: format!("at most {MAX_NAME_CHARS} characters, no control characters"),
        });
    }
    let (created, row) = accounts::ensure_account(&state.store, &account_id, &name)
        .await
        .map_err(refusal)?;
    state.auth.account_created();
    if created {
        tracing::info!(account_id, "account created over HTTP");
    }
    let status = match created {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json(row.into())))
}

/// What deleting an account did.
#[derive(Debug, Serialize)]
struct AccountDeleted {
    account_id: String,
    deleted: bool,
    /// Credentials of the account revoked by the deletion.
    credentials_revoked: u64,
    /// What stays: the account's events and read models (`kept`).
    events: &'static str,
    /// Live connections of the account this replica ended (reason `revoked`); every other
    /// replica ends its own.
    ended: Ended,
}

async fn delete_account(
    _: Administrator,
    State(state): State<AppState>,
    Path(account_id): Path<String>,
) -> Result<Json<AccountDeleted>, ApiError> {
    id_param("account_id", &account_id)?;
    let revoked = accounts::delete_account(&state.store, &account_id)
        .await
        .map_err(refusal)?;
    state.tokens.clear();
    state.auth.forget_verified();
    let ended = state
        .control
        .end(
            Target::Account {
                account_id: account_id.clone(),
            },
            DisconnectReason::Revoked,
        )
        .await;
    tracing::info!(
        account_id,
        credentials_revoked = revoked,
        "account deleted over HTTP"
    );
    Ok(Json(AccountDeleted {
        account_id,
        deleted: true,
        credentials_revoked: revoked,
        events: "kept",
        ended,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    account_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct CredentialList {
    credentials: Vec<CredentialView>,
}

async fn list_credentials(
    _: Administrator,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<CredentialList>, ApiError> {
    if let Some(a) = &q.account_id {
        id_param("account_id", a)?;
    }
    let rows = accounts::list_credentials(&state.store, q.account_id.as_deref())
        .await
        .map_err(refusal)?;
    Ok(Json(CredentialList {
        credentials: rows.into_iter().map(CredentialView::from).collect(),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    /// `device`, `token` or `operator`.
    kind: Option<String>,
    account_id: Option<String>,
    client_id: Option<String>,
}

async fn issue_credential(
    _: Administrator,
    State(state): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<IssuedView>), ApiError> {
    let b: IssueBody = json_body(&state, body).await?;
    let kind = match b.kind.as_deref() {
        Some("device") => CredentialKind::Device,
        Some("token") => CredentialKind::Token,
        Some("operator") => CredentialKind::Operator,
        _ => {
            return Err(ApiError::InvalidBody {
                field: "kind",
                message: "one of `device`, `token`, `operator`".into(),
            })
        }
    };
    let issued = accounts::issue(
        &state.store,
        kind,
        b.account_id.as_deref(),
        b.client_id.as_deref(),
    )
    .await
    .map_err(refusal)?;
    tracing::info!(
        credential_id = %issued.credential.credential_id,
        kind = kind.as_str(),
        "credential issued over HTTP"
    );
    Ok((StatusCode::CREATED, Json(issued.into())))
}

async fn get_credential(
    _: Administrator,
    State(state): State<AppState>,
    Path(credential_id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    id_param("credential_id", &credential_id)?;
    let row = accounts::credential(&state.store, &credential_id)
        .await
        .map_err(refusal)?;
    Ok(Json(row.into()))
}

/// A revoked credential, and the live connections this replica ended.
#[derive(Debug, Serialize)]
struct Revoked {
    #[serde(flatten)]
    credential: CredentialView,
    ended: Ended,
}

/// Revokes a credential: new connections and requests with it are refused at once (the
/// verification caches are emptied), and every live MQTT connection and WebSocket session
/// that authenticated with it ends (reason `revoked`), here at once and on every other
/// replica through `cradle/control`.
async fn revoke_credential(
    _: Administrator,
    State(state): State<AppState>,
    Path(credential_id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    id_param("credential_id", &credential_id)?;
    accounts::revoke(&state.store, &credential_id)
        .await
        .map_err(refusal)?;
    state.tokens.clear();
    state.auth.forget_verified();
    let ended = state
        .control
        .end(
            Target::Credential {
                credential_id: credential_id.clone(),
            },
            DisconnectReason::Revoked,
        )
        .await;
    tracing::info!(credential_id, "credential revoked over HTTP");
    let row = accounts::credential(&state.store, &credential_id)
        .await
        .map_err(refusal)?;
    Ok(Json(Revoked {
        credential: row.into(),
        ended,
    }))
}

/// What a disconnect did.
#[derive(Debug, Serialize)]
struct Disconnected {
    account_id: String,
    client_id: String,
    /// The live connections this replica ended (reason `admin_disconnect`); every other
    /// replica ends its own.
    ended: Ended,
}

/// Ends every live connection of the client (MQTT 5: DISCONNECT 0x98; WebSocket: close
/// 4011), recorded with reason `admin_disconnect`. The client may connect again.
async fn disconnect_client(
    _: Administrator,
    State(state): State<AppState>,
    Path((account_id, client_id)): Path<(String, String)>,
) -> Result<Json<Disconnected>, ApiError> {
    id_param("account_id", &account_id)?;
    id_param("client_id", &client_id)?;
    let ended = state
        .control
        .end(
            Target::Client {
                account_id: account_id.clone(),
                client_id: client_id.clone(),
            },
            DisconnectReason::AdminDisconnect,
        )
        .await;
    tracing::info!(account_id, client_id, "client disconnected over HTTP");
    Ok(Json(Disconnected {
        account_id,
        client_id,
        ended,
    }))
}

/// A new secret for the same kind, account and client; the old credential keeps working
/// until it is revoked.
async fn rotate_credential(
    _: Administrator,
    State(state): State<AppState>,
    Path(credential_id): Path<String>,
) -> Result<(StatusCode, Json<IssuedView>), ApiError> {
    id_param("credential_id", &credential_id)?;
    let issued = accounts::rotate(&state.store, &credential_id)
        .await
        .map_err(refusal)?;
    tracing::info!(
        credential_id,
        new_credential_id = %issued.credential.credential_id,
        "credential rotated over HTTP"
    );
    Ok((StatusCode::CREATED, Json(issued.into())))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    client_ids: Vec<String>,
}

#[derive(Debug, Serialize)]
struct BulkIssued {
    account_id: String,
    credentials: Vec<IssuedView>,
}

/// One device credential per client id, in one transaction: all are issued or none.
async fn provision_devices(
    _: Administrator,
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
    let issued = accounts::issue_devices(&state.store, &account_id, &b.client_ids)
        .await
        .map_err(refusal)?;
    tracing::info!(
        account_id,
        count = issued.len(),
        "device credentials provisioned over HTTP"
    );
    Ok((
        StatusCode::CREATED,
        Json(BulkIssued {
            account_id,
            credentials: issued.into_iter().map(IssuedView::from).collect(),
        }),
    ))
}
