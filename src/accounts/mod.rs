//! Accounts and their credentials: device secrets (MQTT), bearer tokens (HTTP, WebSocket)
//! and operator secrets (watching every account's status).
//!
//! Secrets are 256 random bits, shown once when issued and stored only as salted BLAKE2b-512
//! digests (`hashing`: a slow hash adds nothing against 2^256 candidates); argon2id hashes
//! stored by earlier versions still verify, on the blocking pool. Comparisons run in constant
//! time.
//! A bearer or operator secret reads `{credential_id}.{random}` so that it is looked up by id
//! and verified once; a device secret is the password of an MQTT CONNECT whose username is
//! the account id and whose client id is the credential's client id.
//!
//! Every verification passes the process-wide `gate` first (bounded concurrency, per-source
//! limits, a growing delay after failures), and an unknown credential costs the same check
//! as a known one, so timing does not tell which ids exist.

pub(crate) mod gate;
pub(crate) mod hashing;

use std::net::IpAddr;

use crate::store::{accounts, credentials, Store, StoreError};
use crate::topics::is_valid_id;

/// Errors at the accounts edge.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// An id has characters that cannot stand in a topic.
    #[error("{field}: `{value}` is not a valid id (1-128 of A-Z a-z 0-9 - _ . : @)")]
    InvalidId { field: &'static str, value: String },
    /// The account exists already.
    #[error("account `{0}` exists already")]
    AccountExists(String),
    /// No such account.
    #[error("no account `{0}`")]
    NoAccount(String),
    /// No such credential.
    #[error("no credential `{0}`")]
    NoCredential(String),
    /// The request does not fit the credential kind.
    #[error("{0}")]
    Usage(String),
    /// Hashing failed (never expected; the message says why).
    #[error("hashing: {0}")]
    Hash(String),
    /// Too many verifications at once; the caller may retry (see `gate`).
    #[error(transparent)]
    Busy(#[from] gate::Busy),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub use crate::store::credentials::CredentialKind;

/// A newly issued credential and its secret, which is never stored.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The stored record (hash only).
    pub credential: credentials::Model,
    /// The secret to hand to its holder, once.
    pub secret: String,
}

use crate::clock::now_millis;

use crate::ids::random_hex;

fn check_id(field: &'static str, value: &str) -> Result<(), AccountsError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(AccountsError::InvalidId {
            field,
            value: value.to_string(),
        })
    }
}

/// Creates an account.
pub async fn create_account(
    store: &Store,
    account_id: &str,
    name: &str,
) -> Result<accounts::Model, AccountsError> {
    check_id("account", account_id)?;
    if account_id == crate::store::audit::CRADLE_ACCOUNT {
        return Err(AccountsError::Usage(format!(
            "`{account_id}` is reserved: its log holds Cradle's own administrative actions"
        )));
    }
    if store.account_exists(account_id).await? {
        return Err(AccountsError::AccountExists(account_id.to_string()));
    }
    let model = accounts::Model {
        account_id: account_id.to_string(),
        name: name.to_string(),
        created_at_millis: now_millis(),
    };
    store.insert_account(&model).await?;
    Ok(model)
}

/// Every account, by id.
pub async fn list_accounts(store: &Store) -> Result<Vec<accounts::Model>, AccountsError> {
    Ok(store.accounts().await?)
}

/// Whether any account exists (no account means open mode).
pub async fn any_account(store: &Store) -> Result<bool, AccountsError> {
    Ok(store.any_account().await?)
}

/// Account `account_id`.
pub async fn account(store: &Store, account_id: &str) -> Result<accounts::Model, AccountsError> {
    check_id("account", account_id)?;
    store
        .account(account_id)
        .await?
        .ok_or_else(|| AccountsError::NoAccount(account_id.to_string()))
}

/// Creates account `account_id` unless it exists: whether this call created it, and the
/// account (safe to retry: a repeat finds the account it created).
pub async fn ensure_account(
    store: &Store,
    account_id: &str,
    name: &str,
) -> Result<(bool, accounts::Model), AccountsError> {
    match create_account(store, account_id, name).await {
        Ok(model) => Ok((true, model)),
        // A concurrent create of the same id lands here too (a unique-key conflict).
        Err(AccountsError::AccountExists(_))
        | Err(AccountsError::Store(StoreError::Conflict(_))) => {
            Ok((false, account(store, account_id).await?))
        }
        Err(e) => Err(e),
    }
}

/// Deletes an account and revokes every credential of it, in one transaction (a token must
/// never outlive its account); returns how many credentials were revoked. Its events stay in
/// the log.
pub async fn delete_account(store: &Store, account_id: &str) -> Result<u64, AccountsError> {
    let txn = store.begin().await?;
    if !txn.delete_account(account_id).await? {
        return Err(AccountsError::NoAccount(account_id.to_string()));
    }
    let revoked = txn
        .revoke_credentials_of_account(account_id, now_millis())
        .await?;
    txn.commit().await?;
    Ok(revoked)
}

/// Verifies `secret` against each of `hashes` (none: one check against a hash nobody knows
/// the secret of, so a miss costs what a check costs) and reports a failure to the gate.
/// Fast digests are checked in place; an argon2 hash of an earlier version runs on the
/// blocking pool, and the gate's `permit` moves into that task: a caller that goes away
/// mid-verification (a client hanging up) cannot free its slot while argon2 still runs.
/// Returns the place in `hashes` of the one `secret` matches.
async fn verify_gated(
    permit: gate::Permit<'static>,
    secret: String,
    hashes: Vec<String>,
) -> Option<usize> {
    let slow = hashes.iter().any(|h| hashing::is_slow(h));
    let check = move || {
        let found = match hashes.is_empty() {
            true => {
                hashing::verify(&secret, hashing::dummy());
                None
            }
            false => hashes.iter().position(|h| hashing::verify(&secret, h)),
        };
        if found.is_none() {
            permit.failed();
        }
        found
    };
    if !slow {
        return check();
    }
    tokio::task::spawn_blocking(check).await.unwrap_or(None)
}

/// Issues a credential. A device needs `account` and `client`; a token needs `account`; an
/// operator needs neither.
pub async fn issue(
    store: &Store,
    kind: CredentialKind,
    account: Option<&str>,
    client: Option<&str>,
) -> Result<Issued, AccountsError> {
    match (kind, account, client) {
        (CredentialKind::Device, Some(a), Some(c)) => {
            check_id("account", a)?;
            check_id("client", c)?;
        }
        (CredentialKind::Token, Some(a), None) => check_id("account", a)?,
        (CredentialKind::Operator, None, None) | (CredentialKind::Admin, None, None) => {}
        (CredentialKind::Device, _, _) => {
            return Err(AccountsError::Usage(
                "a device credential needs --account and --client".into(),
            ))
        }
        (CredentialKind::Token, _, _) => {
            return Err(AccountsError::Usage(
                "a token needs --account and no --client".into(),
            ))
        }
        (CredentialKind::Operator, _, _) => {
            return Err(AccountsError::Usage(
                "an operator credential belongs to no account".into(),
            ))
        }
        (CredentialKind::Admin, _, _) => {
            return Err(AccountsError::Usage(
                "an administrator credential belongs to no account".into(),
            ))
        }
    }
    if let Some(a) = account {
        if !store.account_exists(a).await? {
            return Err(AccountsError::NoAccount(a.to_string()));
        }
    }
    let issued = new_credential(kind, account, client);
    store.insert_credential(&issued.credential).await?;
    Ok(issued)
}

/// A new credential and its secret (not stored yet).
fn new_credential(kind: CredentialKind, account: Option<&str>, client: Option<&str>) -> Issued {
    let credential_id = format!("cr_{}", random_hex(8));
    let random = random_hex(32);
    let secret = match kind {
        CredentialKind::Device => random,
        CredentialKind::Token | CredentialKind::Operator | CredentialKind::Admin => {
            format!("{credential_id}.{random}")
        }
    };
    let credential = credentials::Model {
        credential_id,
        kind,
        account_id: account.map(str::to_string),
        client_id: client.map(str::to_string),
        secret_hash: hashing::hash(&secret),
        created_at_millis: now_millis(),
        revoked_at_millis: None,
    };
    Issued { credential, secret }
}

/// Issues one device credential per client id of `clients` in `account`, in one
/// transaction (provisioning a fleet; each secret is returned once).
pub async fn issue_devices(
    store: &Store,
    account: &str,
    clients: &[String],
) -> Result<Vec<Issued>, AccountsError> {
    check_id("account", account)?;
    for c in clients {
        check_id("client", c)?;
    }
    let issued: Vec<Issued> = clients
        .iter()
        .map(|c| new_credential(CredentialKind::Device, Some(account), Some(c)))
        .collect();
    let rows: Vec<credentials::Model> = issued.iter().map(|i| i.credential.clone()).collect();
    // The transaction reads, then writes: on SQLite a commit of another writer in between
    // (the status writer recording a connection) refuses it at once (SQLITE_BUSY_SNAPSHOT),
    // and it is run again, as every retryable store error.
    let mut attempts = 0;
    loop {
        match insert_devices(store, account, &rows).await {
            Err(AccountsError::Store(e)) if e.is_retryable() && attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
            Ok(()) => return Ok(issued),
        }
    }
}

/// One attempt of [`issue_devices`]: the account must exist; every row is inserted.
async fn insert_devices(
    store: &Store,
    account: &str,
    rows: &[credentials::Model],
) -> Result<(), AccountsError> {
    let txn = store.begin().await?;
    if !txn.account_exists(account).await? {
        return Err(AccountsError::NoAccount(account.to_string()));
    }
    txn.insert_credentials(rows).await?;
    txn.commit().await?;
    Ok(())
}

/// Credentials, of one account or all, newest first (hashes included; never secrets).
pub async fn list_credentials(
    store: &Store,
    account: Option<&str>,
) -> Result<Vec<credentials::Model>, AccountsError> {
    Ok(store.credentials(account).await?)
}

/// Revokes one credential.
pub async fn revoke(store: &Store, credential_id: &str) -> Result<(), AccountsError> {
    if !store.revoke_credential(credential_id, now_millis()).await? {
        return Err(AccountsError::NoCredential(credential_id.to_string()));
    }
    Ok(())
}

/// Credential `credential_id`, live or revoked (its hash included; never a secret).
pub async fn credential(
    store: &Store,
    credential_id: &str,
) -> Result<credentials::Model, AccountsError> {
    store
        .credential(credential_id)
        .await?
        .ok_or_else(|| AccountsError::NoCredential(credential_id.to_string()))
}

/// Rotates a live credential: a new secret of the same kind for the same account and client,
/// while the old one keeps working until it is revoked, so a fleet can roll over.
pub async fn rotate(store: &Store, credential_id: &str) -> Result<Issued, AccountsError> {
    let old = store
        .live_credential(credential_id)
        .await?
        .ok_or_else(|| AccountsError::NoCredential(credential_id.to_string()))?;
    issue(
        store,
        old.kind,
        old.account_id.as_deref(),
        old.client_id.as_deref(),
    )
    .await
}

/// Whether (`account_id`, `client_id`) holds a live device credential (an MQTT device).
pub(crate) async fn is_device_client(
    store: &Store,
    account_id: &str,
    client_id: &str,
) -> Result<bool, AccountsError> {
    Ok(store
        .has_live_device_credential(account_id, client_id)
        .await?)
}

/// Whether `password` is a live device secret of (`account_id`, `client_id`).
pub async fn verify_device(
    store: &Store,
    account_id: &str,
    client_id: &str,
    password: &str,
) -> Result<bool, AccountsError> {
    Ok(
        verify_device_from(store, account_id, client_id, password, None)
            .await?
            .is_some(),
    )
}

/// [`verify_device`] on behalf of a source address (the gate's per-source limits apply):
/// the id of the live device credential `password` is the secret of, if any.
pub(crate) async fn verify_device_from(
    store: &Store,
    account_id: &str,
    client_id: &str,
    password: &str,
    source: Option<IpAddr>,
) -> Result<Option<String>, AccountsError> {
    let candidates = store.live_device_credentials(account_id, client_id).await?;
    let permit = gate::gate().enter(source).await?;
    let hashes = candidates.iter().map(|c| c.secret_hash.clone()).collect();
    let found = verify_gated(permit, password.to_string(), hashes).await;
    Ok(found.and_then(|i| candidates.into_iter().nth(i).map(|c| c.credential_id)))
}

/// The live credential a bearer or operator secret belongs to, if any.
pub async fn verify_secret(
    store: &Store,
    secret: &str,
) -> Result<Option<credentials::Model>, AccountsError> {
    verify_secret_from(store, secret, None).await
}

/// [`verify_secret`] on behalf of a source address (the gate's per-source limits apply).
/// A secret naming an unknown, revoked or device credential costs the same argon2 run as a
/// known one.
pub(crate) async fn verify_secret_from(
    store: &Store,
    secret: &str,
    source: Option<IpAddr>,
) -> Result<Option<credentials::Model>, AccountsError> {
    let Some((credential_id, _)) = secret.split_once('.') else {
        return Ok(None);
    };
    let found = if is_valid_id(credential_id) {
        store
            .live_credential(credential_id)
            .await?
            .filter(|c| c.kind != CredentialKind::Device)
    } else {
        None
    };
    let permit = gate::gate().enter(source).await?;
    let hashes = found.iter().map(|c| c.secret_hash.clone()).collect();
    Ok(verify_gated(permit, secret.to_string(), hashes)
        .await
        .and(found))
}
