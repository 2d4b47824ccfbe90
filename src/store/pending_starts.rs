//! Session starts waiting for their connection: a start named a connection no replica has
//! recorded yet. Kept in the store so that they survive a restart, any replica applies them
//! when it records that connection, and a `DELETE` on any replica removes them. The
//! [`Store`] and [`StoreTx`] methods here are the queries the pending-start handler
//! (`sync::pending`) makes of them.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue, Condition, QueryOrder};

use super::{clients, Store, StoreError, StoreTx, CHUNK};

/// One parked start.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "pending_starts")]
pub struct Model {
    /// The account.
    #[sea_orm(primary_key, auto_increment = false)]
    pub account_id: String,
    /// The session to start.
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    /// The baby station's connection it waits for.
    pub connection_id: String,
    /// Display name.
    pub name: String,
    /// When it started (the starter's clock, Unix milliseconds).
    pub started_at_millis: i64,
    /// Order of parking within the account (the least recently parked is evicted first).
    pub(crate) parked_seq: i64,
    /// When it was parked (Cradle's clock, Unix milliseconds).
    pub(crate) parked_at_millis: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Store {
    /// Removes the parked start of `session_id` in `account_id`; whether there was one.
    pub(crate) async fn remove_pending_start(
        &self,
        account_id: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        let done = Entity::delete_by_id((account_id.to_string(), session_id.to_string()))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected > 0)
    }

    /// The starts parked in `account_id` waiting for `connection_id`, in parking order.
    pub(crate) async fn pending_starts_for_connection(
        &self,
        account_id: &str,
        connection_id: &str,
    ) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find()
            .filter(Column::AccountId.eq(account_id))
            .filter(Column::ConnectionId.eq(connection_id))
            .order_by_asc(Column::ParkedSeq)
            .all(&self.db)
            .await?)
    }

    /// Every parked start of every account, in parking order.
    pub(crate) async fn pending_starts(&self) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find()
            .order_by_asc(Column::ParkedSeq)
            .all(&self.db)
            .await?)
    }

    /// Those of `parked` whose connection the clients' read model shows connected (in the
    /// start's account), in the order given, each with that connection's client id.
    pub(crate) async fn connected_pending_starts(
        &self,
        parked: &[Model],
    ) -> Result<Vec<(String, Model)>, StoreError> {
        let mut ready = Vec::new();
        for chunk in parked.chunks(CHUNK) {
            let rows = clients::Entity::find()
                .filter(
                    Condition::all()
                        .add(
                            clients::Column::ConnectionId
                                .is_in(chunk.iter().map(|p| p.connection_id.as_str())),
                        )
                        .add(clients::Column::Connected.eq(true)),
                )
                .all(&self.db)
                .await?;
            for p in chunk {
                if let Some(c) = rows
                    .iter()
                    .find(|c| c.account_id == p.account_id && c.connection_id == p.connection_id)
                {
                    ready.push((c.client_id.clone(), p.clone()));
                }
            }
        }
        Ok(ready)
    }
}

impl StoreTx {
    /// The highest parking order in `account_id` (0 when nothing is parked there).
    pub(crate) async fn last_parked_seq(&self, account_id: &str) -> Result<i64, StoreError> {
        Ok(Entity::find()
            .filter(Column::AccountId.eq(account_id))
            .order_by_desc(Column::ParkedSeq)
            .one(&self.txn)
            .await?
            .map_or(0, |p| p.parked_seq))
    }

    /// Parks `start` as given (its `parked_seq` and `parked_at_millis` included), replacing
    /// the account's parked start of the same session.
    pub(crate) async fn upsert_pending_start(&self, start: Model) -> Result<(), StoreError> {
        let row = ActiveModel {
            account_id: ActiveValue::Set(start.account_id),
            session_id: ActiveValue::Set(start.session_id),
            connection_id: ActiveValue::Set(start.connection_id),
            name: ActiveValue::Set(start.name),
            started_at_millis: ActiveValue::Set(start.started_at_millis),
            parked_seq: ActiveValue::Set(start.parked_seq),
            parked_at_millis: ActiveValue::Set(start.parked_at_millis),
        };
        Entity::insert(row)
            .on_conflict(
                OnConflict::columns([Column::AccountId, Column::SessionId])
                    .update_columns([
                        Column::ConnectionId,
                        Column::Name,
                        Column::StartedAtMillis,
                        Column::ParkedSeq,
                        Column::ParkedAtMillis,
                    ])
                    .to_owned(),
            )
            .exec(&self.txn)
            .await?;
        Ok(())
    }

    /// The starts parked in `account_id`, most recently parked first.
    pub(crate) async fn pending_starts_of_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find()
            .filter(Column::AccountId.eq(account_id))
            .order_by_desc(Column::ParkedSeq)
            .all(&self.txn)
            .await?)
    }

    /// Removes the parked start of `session_id` in `account_id` (nothing when there is none).
    pub(crate) async fn remove_pending_start(
        &self,
        account_id: &str,
        session_id: &str,
    ) -> Result<(), StoreError> {
        Entity::delete_by_id((account_id.to_string(), session_id.to_string()))
            .exec(&self.txn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(account: &str, session: &str, connection: &str, seq: i64) -> Model {
        Model {
            account_id: account.into(),
            session_id: session.into(),
            connection_id: connection.into(),
            name: "Nursery".into(),
            started_at_millis: 10,
            parked_seq: seq,
            parked_at_millis: 20,
        }
    }

    fn client(account: &str, id: &str, connection: &str, connected: bool) -> clients::Model {
        clients::test_client(account, id, connection, connected)
    }

    /// Given starts parked in two accounts, when one is parked again and one removed, then
    /// the parking order follows, and only the starts whose connection is connected in their
    /// own account are ready, with that connection's client.
    #[tokio::test]
    async fn parked_starts_are_ordered_replaced_removed_and_found_ready() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::temp_store(&dir).await;
        let tx = store.begin().await.unwrap();
        assert_eq!(tx.last_parked_seq("a").await.unwrap(), 0);
        tx.upsert_pending_start(start("a", "s1", "k1", 1))
            .await
            .unwrap();
        tx.upsert_pending_start(start("a", "s2", "k2", 2))
            .await
            .unwrap();
        tx.upsert_pending_start(start("b", "s3", "k1", 1))
            .await
            .unwrap();
        tx.upsert_pending_start(start("a", "s1", "k3", 3))
            .await
            .unwrap();
        assert_eq!(tx.last_parked_seq("a").await.unwrap(), 3);
        let order: Vec<String> = tx
            .pending_starts_of_account("a")
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.session_id)
            .collect();
        assert_eq!(order, vec!["s1", "s2"]);
        tx.remove_pending_start("a", "s2").await.unwrap();
        tx.upsert_clients(&[client("a", "c3", "k3", true), client("a", "c1", "k1", true)])
            .await
            .unwrap();
        tx.commit().await.unwrap();

        assert_eq!(store.pending_starts().await.unwrap().len(), 2);
        assert_eq!(
            store
                .pending_starts_for_connection("a", "k3")
                .await
                .unwrap(),
            vec![start("a", "s1", "k3", 3)]
        );
        let parked = store.pending_starts().await.unwrap();
        // k1 is connected in account a only: b's start on k1 waits on.
        let ready = store.connected_pending_starts(&parked).await.unwrap();
        assert_eq!(ready, vec![("c3".to_string(), start("a", "s1", "k3", 3))]);
        assert!(store.remove_pending_start("b", "s3").await.unwrap());
        assert!(!store.remove_pending_start("b", "s3").await.unwrap());
    }
}
