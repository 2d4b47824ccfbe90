//! Who may connect: the one authenticator of the MQTT edge (and the HTTP API's open-mode
//! rule), over the credentials in `crate::accounts`.
//!
//! - A device connects with username = account id, password = its secret, and the client id
//!   of its credential. Wrong secret and unknown client id are both refused as "not
//!   authorized": a client cannot probe which client ids exist.
//! - An operator connects with its operator secret as the password (any username).
//! - Anonymous clients are accepted only in open mode: `auth.mode = "open"`, or `auto` while
//!   no account exists and only on a loopback listener (as Mosquitto 2 does).
//!
//! A verified device secret is remembered for `auth.cache_secs` by its BLAKE2b digest (never in
//! the clear): a reconnect storm of known devices costs one digest each, no store query and no
//! gate (a secret issued before issue 13 would otherwise cost an argon2 run).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use blake2::{Blake2b512, Digest};

use crate::accounts::hashing::constant_time_eq;
use crate::accounts::{self, CredentialKind};
use crate::config::AuthMode;
use crate::store::Store;
use crate::topics::is_valid_id;

/// Why a CONNECT was refused (logged and counted; the client sees "not authorized").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, and open mode does not apply.
    Anonymous,
    /// The secret does not match a live credential of that account and client id.
    BadCredentials,
    /// The credential is valid but not for MQTT (an HTTP bearer token).
    WrongKind,
    /// The store could not be asked; fail closed.
    StoreUnavailable,
    /// No verification slot within `auth.verify_wait_ms` (see `accounts::gate`).
    Busy,
    /// The client is banned for a while (an administrator's disconnect with `ban_secs`).
    Banned,
}

impl Refusal {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::BadCredentials => "bad_credentials",
            Self::WrongKind => "wrong_kind",
            Self::StoreUnavailable => "store_unavailable",
            Self::Busy => "busy",
            Self::Banned => "banned",
        }
    }

    /// Every refusal, for metrics.
    pub(crate) const ALL: [Refusal; 6] = [
        Self::Anonymous,
        Self::BadCredentials,
        Self::WrongKind,
        Self::StoreUnavailable,
        Self::Busy,
        Self::Banned,
    ];

    fn from_error(e: accounts::AccountsError) -> Self {
        match e {
            accounts::AccountsError::Busy(_) => Self::Busy,
            _ => Self::StoreUnavailable,
        }
    }
}

/// Verified device secrets: (account, client) → (digest of the secret, when verified, the
/// credential it is the secret of).
type VerifiedCache = HashMap<(String, String), ([u8; 64], Instant, String)>;

/// Authenticates MQTT CONNECTs and answers whether anonymous callers are allowed.
pub struct Authenticator {
    store: Store,
    mode: AuthMode,
    cache_ttl: Duration,
    verified: Mutex<VerifiedCache>,
    accounts_exist: Mutex<Option<(bool, Instant)>>,
    /// Bans in force: (account, client) → until (Unix milliseconds); refreshed from the store
    /// every second ([`Authenticator::refresh_bans`]) and at once by a decision.
    /// Keyed by account, then client, so a CONNECT's look-up allocates nothing.
    bans: Mutex<HashMap<String, HashMap<String, i64>>>,
    /// Bumped at every revocation or account deletion, here or on another replica: a bearer
    /// token verified before it is verified again (`http::TokenCache`).
    revocations: Arc<AtomicU64>,
}

/// How long the "does any account exist" answer is reused.
const ACCOUNTS_EXIST_TTL: Duration = Duration::from_secs(1);
/// Verified secrets remembered at most (the oldest are dropped beyond).
const CACHE_MAX: usize = 100_000;

impl Authenticator {
    /// An authenticator over `store`.
    pub fn new(store: Store, mode: AuthMode, cache_secs: u64) -> Self {
        Self {
            store,
            mode,
            cache_ttl: Duration::from_secs(cache_secs),
            verified: Mutex::new(HashMap::new()),
            accounts_exist: Mutex::new(None),
            bans: Mutex::new(HashMap::new()),
            revocations: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A credential was revoked or an account deleted (here or on another replica): nothing
    /// verified before is trusted from a cache any more.
    pub(crate) fn revoked_now(&self) {
        self.revocations
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.forget_verified();
    }

    /// The revocation count bearer-token caches compare their entries with.
    pub(crate) fn revocations(&self) -> Arc<AtomicU64> {
        self.revocations.clone()
    }

    /// Forgets every verified device secret, so the next CONNECT of each checks the store
    /// again (after a revocation or an account's deletion).
    fn forget_verified(&self) {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self
            .accounts_exist
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Until when (Unix milliseconds) client `client_id` of `account_id` is banned, if it is.
    pub(crate) fn banned_until(&self, account_id: &str, client_id: &str) -> Option<i64> {
        let until = *self
            .bans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account_id)?
            .get(client_id)?;
        (until > crate::clock::now_millis()).then_some(until)
    }

    /// Notes a ban decided here or on another replica, before the store is read again.
    pub(crate) fn note_ban(&self, account_id: &str, client_id: &str, until_millis: i64) {
        self.bans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(account_id.into())
            .or_default()
            .insert(client_id.into(), until_millis);
    }

    /// Forgets a ban lifted here (other replicas forget it at their next refresh).
    pub(crate) fn forget_ban(&self, account_id: &str, client_id: &str) {
        let mut bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(clients) = bans.get_mut(account_id) {
            clients.remove(client_id);
            if clients.is_empty() {
                bans.remove(account_id);
            }
        }
    }

    /// Reads the bans in force from the store (a failure keeps the last ones, logged).
    pub(crate) async fn refresh_bans(&self) {
        match self.store.bans(None, crate::clock::now_millis()).await {
            Ok(rows) => {
                let mut bans: HashMap<String, HashMap<String, i64>> = HashMap::new();
                for b in rows {
                    bans.entry(b.account_id)
                        .or_default()
                        .insert(b.client_id, b.until_millis);
                }
                *self.bans.lock().unwrap_or_else(|e| e.into_inner()) = bans;
            }
            Err(error) => tracing::warn!(%error, "bans not refreshed from the store"),
        }
    }

    /// An account was just created: open mode ends now, not within a second.
    pub(crate) fn account_created(&self) {
        *self
            .accounts_exist
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((true, Instant::now()));
    }

    /// The configured mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether a caller without credentials is let in on a listener (`loopback`: the
    /// listener's address is a loopback address).
    pub(crate) async fn anonymous_allowed(&self, loopback: bool) -> bool {
        match self.mode {
            AuthMode::Open => true,
            AuthMode::Required => false,
            AuthMode::Auto => loopback && !self.any_account().await,
        }
    }

    /// Whether any account exists (answers reused for a second; a store error counts as
    /// "yes", so an outage never opens the door).
    pub async fn any_account(&self) -> bool {
        if let Some((exists, at)) = *self
            .accounts_exist
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            if at.elapsed() < ACCOUNTS_EXIST_TTL {
                return exists;
            }
        }
        let exists = accounts::any_account(&self.store).await.unwrap_or(true);
        *self
            .accounts_exist
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((exists, Instant::now()));
        exists
    }

    /// Authenticates a CONNECT from `source` (its address: the verification gate's
    /// per-source limits apply): who it is, and the credential it presented (none in open
    /// mode), which a revocation matches.
    pub async fn connect(
        &self,
        username: Option<&str>,
        password: Option<&str>,
        client_id: &str,
        loopback: bool,
        source: Option<IpAddr>,
    ) -> Result<(Principal, Option<String>), Refusal> {
        let admitted = self
            .verify(username, password, client_id, loopback, source)
            .await?;
        if let (
            Principal::Device {
                account_id,
                client_id,
            },
            _,
        ) = &admitted
        {
            if self.banned_until(account_id, client_id).is_some() {
                return Err(Refusal::Banned);
            }
        }
        Ok(admitted)
    }

    /// Who the CONNECT's credentials say it is (bans aside).
    async fn verify(
        &self,
        username: Option<&str>,
        password: Option<&str>,
        client_id: &str,
        loopback: bool,
        source: Option<IpAddr>,
    ) -> Result<(Principal, Option<String>), Refusal> {
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            return if self.anonymous_allowed(loopback).await {
                Ok((Principal::Open, None))
            } else {
                Err(Refusal::Anonymous)
            };
        };
        if password.contains('.') {
            // `{credential_id}.{random}`: an operator secret (bearer tokens are not for MQTT).
            return match accounts::verify_secret_from(&self.store, password, source).await {
                Ok(Some(c)) if c.kind == CredentialKind::Operator => {
                    Ok((Principal::Operator, Some(c.credential_id)))
                }
                Ok(Some(_)) => Err(Refusal::WrongKind),
                Ok(None) => Err(Refusal::BadCredentials),
                Err(e) => Err(Refusal::from_error(e)),
            };
        }
        let account_id = username.unwrap_or_default();
        if !is_valid_id(account_id) || !is_valid_id(client_id) {
            return Err(Refusal::BadCredentials);
        }
        let key = (account_id.to_string(), client_id.to_string());
        let digest: [u8; 64] = Blake2b512::digest(password.as_bytes()).into();
        if self.cache_ttl > Duration::ZERO {
            let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((d, at, credential)) = cache.get(&key) {
                if at.elapsed() < self.cache_ttl && constant_time_eq(d, &digest) {
                    let credential = credential.clone();
                    return Ok((principal(key), Some(credential)));
                }
            }
        }
        match accounts::verify_device_from(&self.store, account_id, client_id, password, source)
            .await
        {
            Ok(Some(credential)) => {
                if self.cache_ttl > Duration::ZERO {
                    let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= CACHE_MAX {
                        let ttl = self.cache_ttl;
                        cache.retain(|_, (_, at, _)| at.elapsed() < ttl);
                        if cache.len() >= CACHE_MAX {
                            cache.clear();
                        }
                    }
                    cache.insert(key.clone(), (digest, Instant::now(), credential.clone()));
                }
                Ok((principal(key), Some(credential)))
            }
            Ok(None) => Err(Refusal::BadCredentials),
            Err(e) => Err(Refusal::from_error(e)),
        }
    }
}

fn principal((account_id, client_id): (String, String)) -> Principal {
    Principal::Device {
        account_id,
        client_id,
    }
}

/// Who is on the other end of an MQTT connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A device (baby or parent station) of one account.
    Device {
        /// Its account.
        account_id: String,
        /// Its client id inside the account.
        client_id: String,
    },
    /// An operator: may watch every account's status, may publish nothing.
    Operator,
    /// Open mode (no accounts configured, loopback only): no checks, as before accounts.
    Open,
}
