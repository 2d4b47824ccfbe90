//! Bans: a client of an account refused at every CONNECT and `/ws` upgrade until a time,
//! set by an administrator's disconnect with `ban_secs` and lifted early by another. Every
//! replica keeps the unexpired ones in memory (`auth`), refreshed from here.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue, QueryOrder};

use super::{Store, StoreError};

/// One ban.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "bans")]
pub struct Model {
    /// The account.
    #[sea_orm(primary_key, auto_increment = false)]
    pub account_id: String,
    /// The banned client id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub client_id: String,
    /// Until when (Unix milliseconds).
    pub until_millis: i64,
    /// When it was set (Unix milliseconds).
    pub created_at_millis: i64,
    /// Who set it: a credential id, or `admin_token`.
    pub by: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Store {
    /// Sets (or replaces) the ban of (`account_id`, `client_id`).
    pub(crate) async fn put_ban(&self, ban: &Model) -> Result<(), StoreError> {
        Entity::insert(ActiveModel {
            account_id: ActiveValue::Set(ban.account_id.clone()),
            client_id: ActiveValue::Set(ban.client_id.clone()),
            until_millis: ActiveValue::Set(ban.until_millis),
            created_at_millis: ActiveValue::Set(ban.created_at_millis),
            by: ActiveValue::Set(ban.by.clone()),
        })
        .on_conflict(
            OnConflict::columns([Column::AccountId, Column::ClientId])
                .update_columns([Column::UntilMillis, Column::CreatedAtMillis, Column::By])
                .to_owned(),
        )
        .exec(&self.db)
        .await?;
        Ok(())
    }

    /// Lifts the ban of (`account_id`, `client_id`); whether one was in force at `now`.
    pub(crate) async fn lift_ban(
        &self,
        account_id: &str,
        client_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let found = Entity::delete_many()
            .filter(Column::AccountId.eq(account_id))
            .filter(Column::ClientId.eq(client_id))
            .filter(Column::UntilMillis.gt(now))
            .exec(&self.db)
            .await?;
        Ok(found.rows_affected > 0)
    }

    /// The bans in force at `now` (of one account, or all), by account and client; expired
    /// ones are deleted on the way.
    pub(crate) async fn bans(
        &self,
        account_id: Option<&str>,
        now: i64,
    ) -> Result<Vec<Model>, StoreError> {
        Entity::delete_many()
            .filter(Column::UntilMillis.lte(now))
            .exec(&self.db)
            .await?;
        let mut q = Entity::find()
            .filter(Column::UntilMillis.gt(now))
            .order_by_asc(Column::AccountId)
            .order_by_asc(Column::ClientId);
        if let Some(a) = account_id {
            q = q.filter(Column::AccountId.eq(a));
        }
        Ok(q.all(&self.db).await?)
    }
}
