//! Who is calling: the one place the HTTP API authenticates. The account a caller may read
//! comes from its token, never from a path or body it controls.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::accounts::{self, CredentialKind};
use crate::auth::constant_time_eq;

/// An authenticated (or, in open mode, anonymous) caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No account exists yet: the local, loopback quick start. Everything is readable.
    Open,
    /// The configured admin token: every account.
    Admin,
    /// An operator secret: every account, read-only.
    Operator,
    /// A bearer token of one account.
    Account(String),
}

impl Caller {
    /// Allows the call if this caller may act on `account_id`.
    pub fn authorize(&self, account_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::Open | Caller::Admin | Caller::Operator => Ok(()),
            Caller::Account(own) if own == account_id => Ok(()),
            Caller::Account(_) => Err(ApiError::Forbidden(account_id.to_string())),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return if state.auth.anonymous_allowed(state.http_loopback).await {
                Ok(Caller::Open)
            } else {
                Err(ApiError::Unauthorized)
            };
        };
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        if let Some(admin) = &state.admin_token {
            if constant_time_eq(admin.as_bytes(), token.as_bytes()) {
                return Ok(Caller::Admin);
            }
        }
        let credential = accounts::verify_secret(&state.store, token)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        match (credential.kind.as_str(), credential.account_id) {
            (k, _) if k == CredentialKind::Operator.as_str() => Ok(Caller::Operator),
            (k, Some(account)) if k == CredentialKind::Token.as_str() => {
                Ok(Caller::Account(account))
            }
            _ => Err(ApiError::Unauthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_token_reads_only_its_account() {
        let c = Caller::Account("a".into());
        assert!(c.authorize("a").is_ok());
        assert!(matches!(c.authorize("b"), Err(ApiError::Forbidden(_))));
    }

    #[test]
    fn admin_operator_and_open_mode_read_any_account() {
        for c in [Caller::Admin, Caller::Operator, Caller::Open] {
            assert!(c.authorize("any").is_ok());
        }
    }
}
