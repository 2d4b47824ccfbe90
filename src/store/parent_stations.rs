//! Read model: the parent stations each account's clients announce on
//! `accounts/{account_id}/parent_stations/{client_id}`, with the [`Store`] methods that
//! record and list them.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue, QueryOrder};

use super::{Store, StoreError};

/// One announced parent station.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "parent_stations")]
pub struct Model {
    /// The account.
    #[sea_orm(primary_key, auto_increment = false)]
    pub account_id: String,
    /// The parent station's client id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub client_id: String,
    /// Its announcement (a JSON object, as published).
    pub announcement: String,
    /// When Cradle recorded it (Cradle's clock, Unix milliseconds).
    pub updated_at_millis: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Store {
    /// Records (or replaces) the announcement of a parent station.
    pub(crate) async fn record_parent_station(
        &self,
        account_id: &str,
        client_id: &str,
        announcement: &serde_json::Value,
        updated_at_millis: i64,
    ) -> Result<(), StoreError> {
        Entity::insert(ActiveModel {
            account_id: ActiveValue::Set(account_id.to_string()),
            client_id: ActiveValue::Set(client_id.to_string()),
            announcement: ActiveValue::Set(announcement.to_string()),
            updated_at_millis: ActiveValue::Set(updated_at_millis),
        })
        .on_conflict(
            OnConflict::columns([Column::AccountId, Column::ClientId])
                .update_columns([Column::Announcement, Column::UpdatedAtMillis])
                .to_owned(),
        )
        .exec(&self.db)
        .await?;
        Ok(())
    }

    /// Removes a parent station (nothing when it is not recorded).
    pub(crate) async fn remove_parent_station(
        &self,
        account_id: &str,
        client_id: &str,
    ) -> Result<(), StoreError> {
        Entity::delete_many()
            .filter(Column::AccountId.eq(account_id))
            .filter(Column::ClientId.eq(client_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Every parent station of every account (in no particular order).
    pub(crate) async fn all_parent_stations(&self) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find().all(&self.db).await?)
    }

    /// The account's parent stations, by client id.
    pub async fn parent_stations(&self, account_id: &str) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find()
            .filter(Column::AccountId.eq(account_id))
            .order_by_asc(Column::ClientId)
            .all(&self.db)
            .await?)
    }
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn a_parent_station_is_recorded_replaced_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::temp_store(&dir).await;
        let first = serde_json::json!({"name": "Kitchen"});
        let second = serde_json::json!({"name": "Bedroom"});
        store
            .record_parent_station("a", "p2", &first, 10)
            .await
            .unwrap();
        store
            .record_parent_station("a", "p1", &first, 11)
            .await
            .unwrap();
        store
            .record_parent_station("a", "p1", &second, 12)
            .await
            .unwrap();
        store
            .record_parent_station("b", "p9", &first, 13)
            .await
            .unwrap();
        let listed = store.parent_stations("a").await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|p| p.client_id.as_str()).collect();
        assert_eq!(ids, vec!["p1", "p2"]);
        assert_eq!(listed[0].announcement, second.to_string());
        assert_eq!(listed[0].updated_at_millis, 12);
        store.remove_parent_station("a", "p1").await.unwrap();
        store.remove_parent_station("a", "nobody").await.unwrap();
        assert_eq!(store.parent_stations("a").await.unwrap().len(), 1);
    }
}
