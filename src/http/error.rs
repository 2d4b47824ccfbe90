//! API errors: each variant's status code is documented; the body is
//! `{"error":{"code":"…","message":"…"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;

/// An error answered to an HTTP caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a path or query parameter is invalid; names the parameter.
    #[error("{field}: {message}")]
    InvalidParameter {
        field: &'static str,
        message: String,
    },
    /// 404: no such route.
    #[error("no such route")]
    NotFound,
    /// 405: the route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 503: the store failed; the caller may retry. Details are logged, not shown.
    #[error("store unavailable")]
    Store(#[from] StoreError),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let mut body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        match &self {
            ApiError::Store(error) => tracing::error!(%error, "store error answering a request"),
            ApiError::InvalidParameter { field, .. } => body["error"]["field"] = (*field).into(),
            ApiError::NotFound | ApiError::MethodNotAllowed => {}
        }
        (status, Json(body)).into_response()
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
