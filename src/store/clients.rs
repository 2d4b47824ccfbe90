//! Read model: every client's current connection state, updated in the same transaction
//! as the events that change it; and the [`Store`] method that pages through it.

use sea_orm::entity::prelude::*;
use sea_orm::{Condition, QueryOrder, QuerySelect};

use super::{Store, StoreError};

/// One client of one account.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "clients")]
pub struct Model {
    /// The account.
    #[sea_orm(primary_key, auto_increment = false)]
    pub account_id: String,
    /// The client inside the account.
    #[sea_orm(primary_key, auto_increment = false)]
    pub client_id: String,
    /// Whether `connection_id` is connected now.
    pub connected: bool,
    /// The current connection, or the last one when disconnected.
    pub connection_id: String,
    /// When `connection_id` connected (Unix milliseconds).
    pub connected_at_millis: i64,
    /// When the last connection ended, if one has.
    pub disconnected_at_millis: Option<i64>,
    /// Why the last connection ended, if one has.
    pub last_disconnect_reason: Option<String>,
    /// Version of the client's connection stream this row reflects.
    pub stream_version: i64,
    /// When the row last changed (Unix milliseconds, Cradle's clock).
    pub updated_at_millis: i64,
    /// The MQTT connection behind the edge of `connection_id`, if the edge saw it.
    pub edge_connection_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Store {
    /// At most `limit` clients of every account in key order (account, client), after the
    /// client `after` when given: one page of a walk over the whole read model.
    pub(crate) async fn clients_page(
        &self,
        after: Option<(&str, &str)>,
        limit: u64,
    ) -> Result<Vec<Model>, StoreError> {
        let mut find = Entity::find()
            .order_by_asc(Column::AccountId)
            .order_by_asc(Column::ClientId);
        if let Some((a, c)) = after {
            find = find.filter(
                Condition::any().add(Column::AccountId.gt(a)).add(
                    Condition::all()
                        .add(Column::AccountId.eq(a))
                        .add(Column::ClientId.gt(c)),
                ),
            );
        }
        Ok(find.limit(limit).all(&self.db).await?)
    }
}

/// A client row for the store's unit tests: `connection_id` current since 1, connected or
/// not, stream version 1.
#[cfg(test)]
pub(crate) fn test_client(account: &str, id: &str, connection: &str, connected: bool) -> Model {
    Model {
        account_id: account.into(),
        client_id: id.into(),
        connected,
        connection_id: connection.into(),
        connected_at_millis: 1,
        disconnected_at_millis: None,
        last_disconnect_reason: None,
        stream_version: 1,
        updated_at_millis: 1,
        edge_connection_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(account: &str, id: &str) -> Model {
        test_client(account, id, &format!("k-{id}"), true)
    }

    /// Given clients over two accounts, when they are read a page of two at a time, then
    /// every client comes once, in (account, client) order, and the page after the last is
    /// empty.
    #[tokio::test]
    async fn pages_walk_every_client_once_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::temp_store(&dir).await;
        let rows = [
            client("b", "x"),
            client("a", "z"),
            client("a", "y"),
            client("c", "a"),
            client("b", "a"),
        ];
        let tx = store.begin().await.unwrap();
        tx.upsert_clients(&rows).await.unwrap();
        tx.commit().await.unwrap();
        let mut seen = Vec::new();
        let mut after: Option<(String, String)> = None;
        loop {
            let key = after.as_ref().map(|(a, c)| (a.as_str(), c.as_str()));
            let page = store.clients_page(key, 2).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 2);
            after = page
                .last()
                .map(|r| (r.account_id.clone(), r.client_id.clone()));
            seen.extend(
                page.into_iter()
                    .map(|r| format!("{}/{}", r.account_id, r.client_id)),
            );
        }
        assert_eq!(seen, vec!["a/y", "a/z", "b/a", "b/x", "c/a"]);
    }
}
