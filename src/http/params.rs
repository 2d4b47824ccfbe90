//! Path and query parameters every route checks the same way.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::ApiError;
use crate::topics::is_valid_id;

/// A route's query parameters, as `axum::extract::Query` reads them, but a parameter the
/// route does not know (its type denies unknown fields) or cannot read is refused with a
/// JSON `400 invalid_parameter`, not ignored.
pub(crate) struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(t)) => Ok(Params(t)),
            Err(rejection) => Err(ApiError::InvalidParameter {
                field: "query",
                message: rejection
                    .body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
                    .to_string(),
            }),
        }
    }
}

/// A path id that can stand in a topic, or 400 naming `field`.
pub(super) fn id_param(field: &'static str, value: &str) -> Result<(), ApiError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(ApiError::InvalidParameter {
            field,
            message: "1-128 characters of A-Z a-z 0-9 - _ . : @".to_string(),
        })
    }
}

/// The path's `account_id`.
pub(super) fn account(account_id: &str) -> Result<(), ApiError> {
    id_param("account_id", account_id)
}

/// A list route's `limit`: 1 to `max` (`http.max_page_size`), 100 (or `max`) when absent.
pub(super) fn limit(value: Option<&str>, max: u64) -> Result<u64, ApiError> {
    match value {
        None => Ok(100.min(max)),
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|v| (1..=max).contains(v))
            .ok_or(ApiError::InvalidParameter {
                field: "limit",
                message: format!("an integer from 1 to {max}"),
            }),
    }
}
