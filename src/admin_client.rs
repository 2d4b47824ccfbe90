//! What `cradle accounts` and `cradle credentials` act through: the store itself (`Local`, on
//! the database host), or a running Cradle's admin API over HTTP (`Remote`, `--server URL`
//! with the admin token), so that operators need no database access. Both end in the same
//! `accounts` functions; over HTTP a revocation also ends the live connections.

use serde::Deserialize;

use crate::accounts::{self, AccountsError, CredentialKind};
use crate::store::Store;

/// An account as the commands print it.
#[derive(Debug, Clone, Deserialize)]
pub struct AccountRow {
    pub account_id: String,
    pub name: String,
    pub created_at_millis: i64,
}

/// A credential as the commands print it (never its secret).
#[derive(Debug, Clone, Deserialize)]
pub struct CredentialRow {
    pub credential_id: String,
    pub kind: String,
    pub account_id: Option<String>,
    pub client_id: Option<String>,
    pub revoked_at_millis: Option<i64>,
}

/// A credential just issued, with its secret (shown once).
#[derive(Debug, Clone, Deserialize)]
pub struct IssuedRow {
    #[serde(flatten)]
    pub credential: CredentialRow,
    pub secret: String,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The store refused or failed.
    #[error(transparent)]
    Accounts(#[from] AccountsError),
    /// The server answered with an error.
    #[error("{server}: {status} {code}: {message}")]
    Refused {
        server: String,
        status: u16,
        code: String,
        message: String,
    },
    /// The server could not be reached, or answered something else than JSON.
    #[error("{server}: {message}")]
    Unreachable { server: String, message: String },
}

/// Where the commands act.
pub enum Admin {
    /// The store itself.
    Local(Store),
    /// A running Cradle's admin API.
    Remote {
        /// Base URL, `http://host:port`.
        server: String,
        /// The admin token.
        token: Option<String>,
        http: reqwest::Client,
    },
}

impl From<crate::store::credentials::Model> for CredentialRow {
    fn from(c: crate::store::credentials::Model) -> Self {
        Self {
            credential_id: c.credential_id,
            kind: c.kind.as_str().to_string(),
            account_id: c.account_id,
            client_id: c.client_id,
            revoked_at_millis: c.revoked_at_millis,
        }
    }
}

impl From<crate::store::accounts::Model> for AccountRow {
    fn from(a: crate::store::accounts::Model) -> Self {
        Self {
            account_id: a.account_id,
            name: a.name,
            created_at_millis: a.created_at_millis,
        }
    }
}

#[derive(Deserialize)]
struct Accounts {
    accounts: Vec<AccountRow>,
}

#[derive(Deserialize)]
struct Credentials {
    credentials: Vec<CredentialRow>,
}

#[derive(Deserialize)]
struct Deleted {
    credentials_revoked: u64,
}

impl Admin {
    /// The admin API of the Cradle at `server`, called with `token`.
    pub fn remote(server: &str, token: Option<String>) -> Admin {
        Admin::Remote {
            server: server.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// One request to the admin API: the JSON answer, or the server's error.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, T), AdminError> {
        let Admin::Remote {
            server,
            token,
            http,
        } = self
        else {
            unreachable!("only a remote admin calls the API");
        };
        let unreachable = |message: String| AdminError::Unreachable {
            server: server.clone(),
            message,
        };
        let mut request = http.request(method, format!("{server}{path}"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if status >= 400 {
            let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            return Err(AdminError::Refused {
                server: server.clone(),
                status,
                code: error["error"]["code"].as_str().unwrap_or("").to_string(),
                message: error["error"]["message"]
                    .as_str()
                    .unwrap_or(&text)
                    .to_string(),
            });
        }
        let value = match text.is_empty() {
            true => serde_json::from_str("null"),
            false => serde_json::from_str(&text),
        }
        .map_err(|e| unreachable(format!("not the admin API's answer: {e}")))?;
        Ok((status, value))
    }

    /// Creates an account (an error if it exists already).
    pub async fn create_account(&self, id: &str, name: &str) -> Result<AccountRow, AdminError> {
        match self {
            Admin::Local(store) => Ok(accounts::create_account(store, id, name).await?.into()),
            Admin::Remote { .. } => {
                let body = serde_json::json!({ "name": name });
                let path = format!("/v1/admin/accounts/{id}");
                match self.call(reqwest::Method::PUT, &path, Some(body)).await? {
                    (201, row) => Ok(row),
                    _ => Err(AccountsError::AccountExists(id.to_string()).into()),
                }
            }
        }
    }

    /// Every account.
    pub async fn accounts(&self) -> Result<Vec<AccountRow>, AdminError> {
        match self {
            Admin::Local(store) => Ok(accounts::list_accounts(store)
                .await?
                .into_iter()
                .map(AccountRow::from)
                .collect()),
            Admin::Remote { .. } => {
                let (_, list): (_, Accounts) = self
                    .call(reqwest::Method::GET, "/v1/admin/accounts", None)
                    .await?;
                Ok(list.accounts)
            }
        }
    }

    /// Deletes an account and revokes its credentials; how many were revoked.
    pub async fn delete_account(&self, id: &str) -> Result<u64, AdminError> {
        match self {
            Admin::Local(store) => Ok(accounts::delete_account(store, id).await?),
            Admin::Remote { .. } => {
                let path = format!("/v1/admin/accounts/{id}");
                let (_, d): (_, Deleted) = self.call(reqwest::Method::DELETE, &path, None).await?;
                Ok(d.credentials_revoked)
            }
        }
    }

    /// Issues a credential.
    pub async fn issue(
        &self,
        kind: CredentialKind,
        account: Option<&str>,
        client: Option<&str>,
    ) -> Result<IssuedRow, AdminError> {
        match self {
            Admin::Local(store) => {
                let issued = accounts::issue(store, kind, account, client).await?;
                Ok(IssuedRow {
                    credential: issued.credential.into(),
                    secret: issued.secret,
                })
            }
            Admin::Remote { .. } => {
                let body = serde_json::json!({
                    "kind": kind.as_str(), "account_id": account, "client_id": client,
                });
                let (_, row) = self
                    .call(reqwest::Method::POST, "/v1/admin/credentials", Some(body))
                    .await?;
                Ok(row)
            }
        }
    }

    /// Credentials, of one account or all.
    pub async fn credentials(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<CredentialRow>, AdminError> {
        match self {
            Admin::Local(store) => Ok(accounts::list_credentials(store, account)
                .await?
                .into_iter()
                .map(CredentialRow::from)
                .collect()),
            Admin::Remote { .. } => {
                let path = match account {
                    Some(a) => format!("/v1/admin/credentials?account_id={a}"),
                    None => "/v1/admin/credentials".to_string(),
                };
                let (_, list): (_, Credentials) =
                    self.call(reqwest::Method::GET, &path, None).await?;
                Ok(list.credentials)
            }
        }
    }

    /// Revokes a credential (over HTTP its live connections end too).
    pub async fn revoke(&self, id: &str) -> Result<(), AdminError> {
        match self {
            Admin::Local(store) => Ok(accounts::revoke(store, id).await?),
            Admin::Remote { .. } => {
                let path = format!("/v1/admin/credentials/{id}");
                let _: (_, serde_json::Value) =
                    self.call(reqwest::Method::DELETE, &path, None).await?;
                Ok(())
            }
        }
    }
}
