//! Accounts (tenants). Every topic, event and read-model row belongs to one. The [`Store`]
//! and [`StoreTx`] methods here are the queries the accounts module makes of them.

use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue, ConnectionTrait, QueryOrder};

use super::{Store, StoreError, StoreTx};

/// One account.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "accounts")]
pub struct Model {
    /// The account id, as it appears in topics (`accounts/{account_id}/…`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub account_id: String,
    /// A human-readable name.
    pub name: String,
    /// When it was created (Unix milliseconds).
    pub created_at_millis: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Whether account `account_id` exists, read through `db`.
async fn account_exists_in<C: ConnectionTrait>(
    db: &C,
    account_id: &str,
) -> Result<bool, StoreError> {
    Ok(Entity::find_by_id(account_id).one(db).await?.is_some())
}

impl Store {
    /// Whether account `account_id` exists.
    pub(crate) async fn account_exists(&self, account_id: &str) -> Result<bool, StoreError> {
        account_exists_in(&self.db, account_id).await
    }

    /// Inserts an account (a [`StoreError::Conflict`] if its id is taken).
    pub(crate) async fn insert_account(&self, account: &Model) -> Result<(), StoreError> {
        Entity::insert(ActiveModel {
            account_id: ActiveValue::Set(account.account_id.clone()),
            name: ActiveValue::Set(account.name.clone()),
            created_at_millis: ActiveValue::Set(account.created_at_millis),
        })
        .exec(&self.db)
        .await?;
        Ok(())
    }

    /// Every account, by id.
    pub(crate) async fn accounts(&self) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find()
            .order_by_asc(Column::AccountId)
            .all(&self.db)
            .await?)
    }

    /// Account `account_id`, if it exists.
    pub(crate) async fn account(&self, account_id: &str) -> Result<Option<Model>, StoreError> {
        Ok(Entity::find_by_id(account_id).one(&self.db).await?)
    }

    /// Whether any account exists.
    pub(crate) async fn any_account(&self) -> Result<bool, StoreError> {
        Ok(Entity::find().one(&self.db).await?.is_some())
    }
}

impl StoreTx {
    /// Whether account `account_id` exists, inside the transaction.
    pub(crate) async fn account_exists(&self, account_id: &str) -> Result<bool, StoreError> {
        account_exists_in(&self.txn, account_id).await
    }

    /// Deletes account `account_id`; whether it existed.
    pub(crate) async fn delete_account(&self, account_id: &str) -> Result<bool, StoreError> {
        let deleted = Entity::delete_by_id(account_id).exec(&self.txn).await?;
        Ok(deleted.rows_affected > 0)
    }
}
