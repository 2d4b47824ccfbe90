//! Path and query parameters every route checks the same way.

use super::ApiError;
use crate::topics::is_valid_id;

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
