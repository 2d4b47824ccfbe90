//! API errors: each variant's status code is documented; the body is
//! `{"error":{"code":"…","message":"…"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;

/// An error answered to an HTTP caller.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400: a path or query parameter is invalid; names the parameter.
    #[error("{field}: {message}")]
    InvalidParameter {
        field: &'static str,
        message: String,
    },
    /// 400: the request body is invalid; names the field (`body` for JSON errors).
    #[error("{field}: {message}")]
    InvalidBody {
        field: &'static str,
        message: String,
    },
    /// 413: the request body is larger than `http.max_body_bytes`.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 408: the request body did not arrive within `http.body_timeout_ms` (milliseconds).
    #[error("request body not received within {0} ms")]
    BodyTimeout(u64),
    /// 404: no such session (and no pending start of it).
    #[error("no session `{0}`")]
    SessionNotFound(String),
    /// 409: the session already ended; a start cannot revive it.
    #[error("session `{0}` already ended")]
    SessionEnded(String),
    /// 401: no bearer token, or one that is not valid (outside open mode).
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 403: the token is valid but not for this account.
    #[error("this token may not access account `{0}`")]
    Forbidden(String),
    /// 404: no such route.
    #[error("no such route")]
    NotFound,
    /// 405: the route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 503: the store failed; the caller may retry. Details are logged, not shown.
    #[error("store unavailable")]
    Store(#[from] StoreError),
    /// 503: the credentials store failed (or `busy`: too many verifications). The accounts
    /// module's other errors become their own answers ([`From<AccountsError>`]).
    #[error("store unavailable")]
    Accounts(crate::accounts::AccountsError),
    /// 500: the request's handler panicked (logged and counted in
    /// `cradle_task_panics_total{task="http_request"}`); every other request goes on.
    #[error("internal error")]
    Internal,
    /// A refusal with its own status, code and message (`GET /ws` before the upgrade, a
    /// browser origin not allowed), with `Retry-After: {retry_after_secs}` when set.
    #[error("{message}")]
    Refused {
        status: StatusCode,
        code: &'static str,
        message: String,
        retry_after_secs: Option<&'static str>,
    },
}

/// Every route answers an error of the accounts module alike: an invalid id `400` naming its
/// field, an unknown account or credential `404`, an existing account `409`, a credential
/// kind's rule broken `400` (field `kind`), and a store failure `503`.
impl From<crate::accounts::AccountsError> for ApiError {
    fn from(error: crate::accounts::AccountsError) -> Self {
        use crate::accounts::AccountsError as E;
        let refused = |status, code, message: String| ApiError::Refused {
            status,
            code,
            message,
            retry_after_secs: None,
        };
        match error {
            E::InvalidId { field, .. } => ApiError::InvalidParameter {
                field,
                message: error.to_string(),
            },
            E::NoAccount(_) => refused(
                StatusCode::NOT_FOUND,
                "account_not_found",
                error.to_string(),
            ),
            E::NoCredential(_) => refused(
                StatusCode::NOT_FOUND,
                "credential_not_found",
                error.to_string(),
            ),
            E::AccountExists(_) => {
                refused(StatusCode::CONFLICT, "account_exists", error.to_string())
            }
            E::Usage(message) => ApiError::InvalidBody {
                field: "kind",
                message,
            },
            other => ApiError::Accounts(other),
        }
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            ApiError::InvalidBody { .. } => (StatusCode::BAD_REQUEST, "invalid_body"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::SessionNotFound(_) => (StatusCode::NOT_FOUND, "session_not_found"),
            ApiError::SessionEnded(_) => (StatusCode::CONFLICT, "session_ended"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Accounts(crate::accounts::AccountsError::Busy(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "busy")
            }
            ApiError::Store(_) | ApiError::Accounts(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            ApiError::Refused { status, code, .. } => (*status, code),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable code: `invalid_parameter`, `unauthorized`, `account_not_found`, ….
    code: &'static str,
    /// A sentence for people.
    message: String,
    /// The parameter or body field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let mut body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
                field: None,
            },
        };
        match &self {
            ApiError::Store(error) => tracing::error!(%error, "store error answering a request"),
            ApiError::Accounts(error) => {
                tracing::error!(%error, "credentials error answering a request")
            }
            ApiError::InvalidParameter { field, .. } | ApiError::InvalidBody { field, .. } => {
                body.error.field = Some(field)
            }
            ApiError::PayloadTooLarge(_)
            | ApiError::BodyTimeout(_)
            | ApiError::SessionNotFound(_)
            | ApiError::SessionEnded(_) => {}
            ApiError::NotFound
            | ApiError::MethodNotAllowed
            | ApiError::Unauthorized
            | ApiError::Forbidden(_)
            | ApiError::Refused { .. }
            | ApiError::Internal => {}
        }
        let mut response = (status, Json(body)).into_response();
        if let ApiError::Refused {
            retry_after_secs: Some(secs),
            ..
        } = &self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(secs),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
