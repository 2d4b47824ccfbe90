//! Credentials: MQTT device secrets, bearer tokens and operator secrets, stored as argon2id
//! hashes. The secret itself is shown once, when issued, and never stored. The [`Store`]
//! and [`StoreTx`] methods here are the queries the accounts module makes of them.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{ActiveValue, ConnectionTrait, QueryOrder};

use super::{Store, StoreError, StoreTx};

/// What a credential is for; stored as its name (`device`, `token`, `operator`) in the
/// `kind` column, which sea-orm reads back into this type (any other name is a
/// [`DbErr::Type`], a [`StoreError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum CredentialKind {
    /// One MQTT device (client id) of one account.
    #[sea_orm(string_value = "device")]
    Device,
    /// A bearer token of one account, for HTTP and the WebSocket.
    #[sea_orm(string_value = "token")]
    Token,
    /// An operator: watches every account's status.
    #[sea_orm(string_value = "operator")]
    Operator,
    /// An administrator: the admin API over HTTP, as the admin token, under its own name.
    #[sea_orm(string_value = "admin")]
    Admin,
}

impl CredentialKind {
    /// The stored name, as the CLI prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Token => "token",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Device credentials issued per insert statement.
const INSERT_CHUNK: usize = 500;

/// One credential.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credentials")]
pub struct Model {
    /// Public id of the credential (also the prefix of a bearer token).
    #[sea_orm(primary_key, auto_increment = false)]
    pub credential_id: String,
    /// What it is for (stored as `device`, `token`, `operator` or `admin`).
    pub kind: CredentialKind,
    /// The account it belongs to (none for an operator).
    pub account_id: Option<String>,
    /// The MQTT client id a device credential is bound to.
    pub client_id: Option<String>,
    /// argon2id PHC string of the secret.
    pub secret_hash: String,
    /// When it was issued (Unix milliseconds).
    pub created_at_millis: i64,
    /// When it was revoked, if it was.
    pub revoked_at_millis: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// The row to insert for `m` (never revoked when issued).
fn active(m: &Model) -> ActiveModel {
    ActiveModel {
        credential_id: ActiveValue::Set(m.credential_id.clone()),
        kind: ActiveValue::Set(m.kind),
        account_id: ActiveValue::Set(m.account_id.clone()),
        client_id: ActiveValue::Set(m.client_id.clone()),
        secret_hash: ActiveValue::Set(m.secret_hash.clone()),
        created_at_millis: ActiveValue::Set(m.created_at_millis),
        revoked_at_millis: ActiveValue::Set(None),
    }
}

/// Marks every live credential matching `condition` revoked at `at_millis`, through `db`;
/// returns how many.
async fn revoke_where<C: ConnectionTrait>(
    db: &C,
    condition: SimpleExpr,
    at_millis: i64,
) -> Result<u64, StoreError> {
    let result = Entity::update_many()
        .col_expr(Column::RevokedAtMillis, Expr::value(at_millis))
        .filter(condition)
        .filter(Column::RevokedAtMillis.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// The live device credentials of (`account_id`, `client_id`).
fn live_device(account_id: &str, client_id: &str) -> Select<Entity> {
    Entity::find()
        .filter(Column::Kind.eq(CredentialKind::Device))
        .filter(Column::AccountId.eq(account_id))
        .filter(Column::ClientId.eq(client_id))
        .filter(Column::RevokedAtMillis.is_null())
}

impl Store {
    /// Inserts an issued credential (live: its `revoked_at_millis` is not stored).
    pub(crate) async fn insert_credential(&self, credential: &Model) -> Result<(), StoreError> {
        Entity::insert(active(credential)).exec(&self.db).await?;
        Ok(())
    }

    /// The credentials of `account_id`, or of every account and operator when `None`, newest
    /// first.
    pub(crate) async fn credentials(
        &self,
        account_id: Option<&str>,
    ) -> Result<Vec<Model>, StoreError> {
        let mut q = Entity::find().order_by_desc(Column::CreatedAtMillis);
        if let Some(a) = account_id {
            q = q.filter(Column::AccountId.eq(a));
        }
        Ok(q.all(&self.db).await?)
    }

    /// Revokes credential `credential_id` at `at_millis` unless it is revoked already;
    /// whether this call revoked it.
    pub(crate) async fn revoke_credential(
        &self,
        credential_id: &str,
        at_millis: i64,
    ) -> Result<bool, StoreError> {
        let revoked = revoke_where(&self.db, Column::CredentialId.eq(credential_id), at_millis);
        Ok(revoked.await? > 0)
    }

    /// Whether (`account_id`, `client_id`) holds a live device credential.
    pub(crate) async fn has_live_device_credential(
        &self,
        account_id: &str,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(live_device(account_id, client_id)
            .one(&self.db)
            .await?
            .is_some())
    }

    /// Every live device credential of (`account_id`, `client_id`).
    pub(crate) async fn live_device_credentials(
        &self,
        account_id: &str,
        client_id: &str,
    ) -> Result<Vec<Model>, StoreError> {
        Ok(live_device(account_id, client_id).all(&self.db).await?)
    }

    /// Credential `credential_id`, live or revoked.
    pub(crate) async fn credential(
        &self,
        credential_id: &str,
    ) -> Result<Option<Model>, StoreError> {
        Ok(Entity::find_by_id(credential_id).one(&self.db).await?)
    }

    /// Credential `credential_id` if it is live (of any kind).
    pub(crate) async fn live_credential(
        &self,
        credential_id: &str,
    ) -> Result<Option<Model>, StoreError> {
        Ok(Entity::find_by_id(credential_id)
            .filter(Column::RevokedAtMillis.is_null())
            .one(&self.db)
            .await?)
    }
}

impl StoreTx {
    /// Inserts issued credentials (live), a few hundred per statement.
    pub(crate) async fn insert_credentials(&self, credentials: &[Model]) -> Result<(), StoreError> {
        for chunk in credentials.chunks(INSERT_CHUNK) {
            Entity::insert_many(chunk.iter().map(active))
                .exec(&self.txn)
                .await?;
        }
        Ok(())
    }

    /// Revokes, at `at_millis`, every live credential of `account_id`; returns how many.
    pub(crate) async fn revoke_credentials_of_account(
        &self,
        account_id: &str,
        at_millis: i64,
    ) -> Result<u64, StoreError> {
        revoke_where(&self.txn, Column::AccountId.eq(account_id), at_millis).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::accounts;

    fn credential(
        id: &str,
        kind: CredentialKind,
        account: &str,
        client: Option<&str>,
        at: i64,
    ) -> Model {
        Model {
            credential_id: id.into(),
            kind,
            account_id: Some(account.into()),
            client_id: client.map(str::to_string),
            secret_hash: format!("hash-{id}"),
            created_at_millis: at,
            revoked_at_millis: Some(1),
        }
    }

    #[test]
    fn each_kind_is_stored_under_its_name() {
        use sea_orm::{ActiveEnum, Iterable};
        let stored: Vec<(String, &str)> = CredentialKind::iter()
            .map(|k| (k.to_value(), k.as_str()))
            .collect();
        assert_eq!(
            stored,
            [
                ("device".to_string(), "device"),
                ("token".to_string(), "token"),
                ("operator".to_string(), "operator"),
                ("admin".to_string(), "admin"),
            ]
        );
        assert_eq!(format!("{:<9}|", CredentialKind::Token), "token    |");
    }

    /// Given a credential row whose kind is no kind Cradle knows, when it is read, then the
    /// read fails with a store error instead of taking it for some kind.
    #[tokio::test]
    async fn an_unknown_stored_kind_is_an_error() {
        use sea_orm::ConnectionTrait;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::temp_store(&dir).await;
        store
            .db
            .execute_unprepared(
                "INSERT INTO credentials (credential_id, kind, secret_hash, created_at_millis) \
                 VALUES ('x1', 'superuser', 'h', 1)",
            )
            .await
            .unwrap();
        assert!(matches!(
            store.live_credential("x1").await,
            Err(StoreError::Unreadable(m)) if m.contains("superuser")
        ));
    }

    /// Given an account with a device credential, a token and a second device of another
    /// account, when credentials are listed, revoked and the account deleted, then a stored
    /// credential starts live, a revocation happens once, only live devices of the client
    /// count, and deleting the account revokes what is left of it and nothing else.
    #[tokio::test]
    async fn credentials_are_issued_live_revoked_once_and_revoked_with_their_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::temp_store(&dir).await;
        for id in ["a", "b"] {
            let account = accounts::Model {
                account_id: id.into(),
                name: id.into(),
                created_at_millis: 1,
            };
            store.insert_account(&account).await.unwrap();
        }
        assert!(store
            .insert_account(&accounts::Model {
                account_id: "a".into(),
                name: "again".into(),
                created_at_millis: 2,
            })
            .await
            .is_err());
        store
            .insert_credential(&credential(
                "d1",
                CredentialKind::Device,
                "a",
                Some("c"),
                10,
            ))
            .await
            .unwrap();
        let tx = store.begin().await.unwrap();
        tx.insert_credentials(&[
            credential("t1", CredentialKind::Token, "a", None, 20),
            credential("d2", CredentialKind::Device, "b", Some("c"), 30),
        ])
        .await
        .unwrap();
        tx.commit().await.unwrap();

        let all: Vec<String> = store
            .credentials(None)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.credential_id)
            .collect();
        assert_eq!(all, vec!["d2", "t1", "d1"]);
        assert_eq!(store.credentials(Some("a")).await.unwrap().len(), 2);
        assert!(store.has_live_device_credential("a", "c").await.unwrap());
        assert_eq!(
            store.live_device_credentials("a", "c").await.unwrap().len(),
            1
        );
        assert!(store.live_credential("t1").await.unwrap().is_some());

        assert!(store.revoke_credential("d1", 50).await.unwrap());
        assert!(!store.revoke_credential("d1", 60).await.unwrap());
        assert!(!store.revoke_credential("nobody", 60).await.unwrap());
        assert!(!store.has_live_device_credential("a", "c").await.unwrap());
        assert!(store
            .live_device_credentials("a", "c")
            .await
            .unwrap()
            .is_empty());

        let tx = store.begin().await.unwrap();
        assert!(tx.account_exists("a").await.unwrap());
        assert!(tx.delete_account("a").await.unwrap());
        assert!(!tx.delete_account("a").await.unwrap());
        assert_eq!(tx.revoke_credentials_of_account("a", 70).await.unwrap(), 1);
        tx.commit().await.unwrap();
        assert!(!store.account_exists("a").await.unwrap());
        assert!(store.any_account().await.unwrap());
        assert_eq!(store.accounts().await.unwrap().len(), 1);
        assert!(store.live_credential("t1").await.unwrap().is_none());
        let d1 = store.credentials(Some("a")).await.unwrap();
        let d1 = d1.iter().find(|c| c.credential_id == "d1").unwrap();
        assert_eq!(d1.revoked_at_millis, Some(50));
        assert!(store.live_credential("d2").await.unwrap().is_some());
    }
}
