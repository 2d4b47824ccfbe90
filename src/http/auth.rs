//! Who is calling: the one place the HTTP API authenticates. The account a caller may read
//! comes from its token, never from a path or body it controls.
//!
//! A verified bearer token is remembered in a [`TokenCache`] for `auth.cache_secs` (as the MQTT edge remembers
//! device secrets): by its credential id, with the BLAKE2b digest of the whole secret (never
//! the secret in the clear), the credential's kind and account. A revoked token stops working
//! at most `auth.cache_secs` after the revocation.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use blake2::{Blake2b512, Digest};

use super::metrics::{HttpMetrics, TokenCheck};
use super::{ApiError, AppState};
use crate::accounts::hashing::constant_time_eq;
use crate::accounts::{self, AccountsError, CredentialKind};
use crate::store::Store;

/// A verified bearer credential: what it is for, and its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedToken {
    /// `Token` (one account) or `Operator` (every account, read-only); device secrets are
    /// never bearer tokens.
    pub kind: CredentialKind,
    /// The account of an account token.
    pub account_id: Option<String>,
    /// Its id (an administrator's actions are recorded under it).
    pub credential_id: String,
}

struct CachedToken {
    digest: [u8; 64],
    token: VerifiedToken,
    at: Instant,
    /// The revocation count when it was verified: a revocation since voids the entry.
    epoch: u64,
}

/// Verified bearer tokens, by credential id (bounded; entries older than the TTL are not used).
pub(crate) struct TokenCache {
    ttl: Duration,
    /// Revocations so far (the authenticator's, bumped on every replica's decisions).
    revocations: Arc<std::sync::atomic::AtomicU64>,
    verified: Mutex<HashMap<String, CachedToken>>,
    /// One verification at a time per secret (by digest): concurrent requests with the same
    /// token wait for the first one's answer instead of each running argon2. Keyed by the
    /// whole secret, so wrong secrets for a credential id never queue in front of its right
    /// one; an entry lives only while a request for it is in flight (removed by [`Turn`]).
    inflight: Mutex<HashMap<[u8; 64], Arc<tokio::sync::Mutex<()>>>>,
}

/// Verified tokens remembered at most (expired ones are dropped first, then all).
const TOKEN_CACHE_MAX: usize = 10_000;

impl TokenCache {
    /// A cache keeping verified tokens for `cache_secs`, voided by every revocation counted
    /// in `revocations`.
    pub fn new(cache_secs: u64, revocations: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self {
            ttl: Duration::from_secs(cache_secs),
            revocations,
            verified: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, id: &str, digest: &[u8; 64]) -> Option<VerifiedToken> {
        if self.ttl.is_zero() {
            return None;
        }
        let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(id)?;
        let epoch = self.revocations.load(std::sync::atomic::Ordering::Acquire);
        (entry.epoch == epoch
            && entry.at.elapsed() < self.ttl
            && constant_time_eq(&entry.digest, digest))
        .then(|| entry.token.clone())
    }

    fn remember(&self, id: &str, digest: [u8; 64], token: VerifiedToken, epoch: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TOKEN_CACHE_MAX && !cache.contains_key(id) {
            let ttl = self.ttl;
            cache.retain(|_, e| e.at.elapsed() < ttl);
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            id.to_string(),
            CachedToken {
                digest,
                token,
                at: Instant::now(),
                epoch,
            },
        );
    }

    /// Checks one bearer secret (`{credential_id}.{random}`): from the cache when it was
    /// verified less than `auth.cache_secs` ago, else by one argon2 verification in the store.
    /// `None`: not a live token or operator secret.
    pub async fn verify(
        &self,
        store: &Store,
        metrics: &HttpMetrics,
        secret: &str,
        source: Option<IpAddr>,
    ) -> Result<Option<VerifiedToken>, AccountsError> {
        let Some((id, _)) = secret
            .split_once('.')
            .filter(|(id, _)| crate::topics::is_valid_id(id))
        else {
            metrics.token_check(TokenCheck::Refused);
            return Ok(None);
        };
        let digest: [u8; 64] = Blake2b512::digest(secret.as_bytes()).into();
        if let Some(t) = self.cached(id, &digest) {
            metrics.token_check(TokenCheck::Cached);
            return Ok(Some(t));
        }
        let turn = Turn::take(&self.inflight, digest);
        let _turn = turn.gate.lock().await;
        // Whoever held the turn before may have verified this very secret.
        if let Some(t) = self.cached(id, &digest) {
            metrics.token_check(TokenCheck::Cached);
            return Ok(Some(t));
        }
        self.verify_in_store(store, metrics, id, digest, secret, source)
            .await
    }

    async fn verify_in_store(
        &self,
        store: &Store,
        metrics: &HttpMetrics,
        id: &str,
        digest: [u8; 64],
        secret: &str,
        source: Option<IpAddr>,
    ) -> Result<Option<VerifiedToken>, AccountsError> {
        // Read before the store: a revocation committed meanwhile bumps it past this entry.
        let epoch = self.revocations.load(std::sync::atomic::Ordering::Acquire);
        let Some(c) = accounts::verify_secret_from(store, secret, source).await? else {
            metrics.token_check(TokenCheck::Refused);
            return Ok(None);
        };
        if c.kind == CredentialKind::Device {
            metrics.token_check(TokenCheck::Refused);
            return Ok(None);
        }
        let token = VerifiedToken {
            kind: c.kind,
            account_id: c.account_id,
            credential_id: c.credential_id,
        };
        metrics.token_check(TokenCheck::Verified);
        self.remember(id, digest, token.clone(), epoch);
        Ok(Some(token))
    }
}

/// A request's place in the queue of one secret's verification; the map entry goes when the
/// last request holding it ends, whether it finished or was cancelled (a client hanging up).
struct Turn<'a> {
    map: &'a Mutex<HashMap<[u8; 64], Arc<tokio::sync::Mutex<()>>>>,
    key: [u8; 64],
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn take(map: &'a Mutex<HashMap<[u8; 64], Arc<tokio::sync::Mutex<()>>>>, key: [u8; 64]) -> Self {
        let gate = map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        Turn { map, key, gate }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // The map's own reference and ours: nobody else waits on this secret.
        if Arc::strong_count(&self.gate) <= 2 {
            map.remove(&self.key);
        }
    }
}

/// The caller's address, when the request came through Cradle's HTTP listener.
pub(crate) fn source_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The caller's address as an extractor (for handlers that verify secrets themselves).
pub(crate) struct SourceIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for SourceIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(SourceIp(source_ip(parts)))
    }
}

/// An authenticated (or, in open mode, anonymous) caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No account exists yet: the local, loopback quick start. Everything is readable.
    Open,
    /// The configured admin token (`None`) or an administrator credential (its id): every
    /// account, and the admin API.
    Admin(Option<String>),
    /// An operator secret: every account, read-only.
    Operator,
    /// A bearer token of one account.
    Account(String),
}

impl Caller {
    /// Allows the call if this caller may act on `account_id`.
    pub(crate) fn authorize(&self, account_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::Open | Caller::Admin(_) | Caller::Operator => Ok(()),
            Caller::Account(own) if own == account_id => Ok(()),
            Caller::Account(_) => Err(ApiError::Forbidden(account_id.to_string())),
        }
    }
}

/// The `{account_id}` of a route's path, valid and one the caller may act on: what every
/// per-account route checks first (the caller's credential, `401`; the id, `400`; the
/// caller's right to the account, `403`; in that order).
pub(crate) struct AccountPath(pub(crate) String);

impl FromRequestParts<AppState> for AccountPath {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        let caller = Caller::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // By name: a route may have more path parameters (`…/clients/{client_id}/…`).
        let axum::extract::Path(mut params) = axum::extract::Path::<
            std::collections::HashMap<String, String>,
        >::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
        let account_id = params.remove("account_id").unwrap_or_default();
        super::params::account(&account_id).map_err(IntoResponse::into_response)?;
        caller
            .authorize(&account_id)
            .map_err(IntoResponse::into_response)?;
        // The admin token and operators may name any account: one that does not exist is a
        // 404, not an empty answer (an account's token names only its own, which exists).
        // (Cradle's own log, of administrative actions on no account, is no account's.)
        if matches!(caller, Caller::Admin(_) | Caller::Operator)
            && account_id != crate::store::audit::CRADLE_ACCOUNT
            && state.auth.any_account().await
            && !state
                .store
                .account_exists(&account_id)
                .await
                .map_err(|e| ApiError::Store(e).into_response())?
        {
            return Err(ApiError::Refused {
                status: axum::http::StatusCode::NOT_FOUND,
                code: "account_not_found",
                message: format!("no account `{account_id}`"),
                retry_after_secs: None,
            }
            .into_response());
        }
        Ok(Self(account_id))
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
                return Ok(Caller::Admin(None));
            }
        }
        let credential = state
            .tokens
            .verify(&state.store, &state.metrics, token, source_ip(parts))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        match (credential.kind, credential.account_id) {
            (CredentialKind::Operator, _) => Ok(Caller::Operator),
            (CredentialKind::Admin, _) => Ok(Caller::Admin(Some(credential.credential_id))),
            (CredentialKind::Token, Some(account)) => Ok(Caller::Account(account)),
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
        for c in [Caller::Admin(None), Caller::Operator, Caller::Open] {
            assert!(c.authorize("any").is_ok());
        }
    }
}
