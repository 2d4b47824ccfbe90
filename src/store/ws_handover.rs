//! WebSocket sessions handed over through the store at a graceful shutdown of Cradle with its
//! embedded broker: the next start takes them back, so a PWA resumes across the restart with
//! every frame it missed. Rows live for at most the resume window; the resume secret is kept
//! only as its stored hash (`accounts::hashing`, salted BLAKE2b, as every stored secret).
//! The [`Store`] methods here save, take and claim them for `ws::handover`.

use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue, QuerySelect, TransactionTrait};

use super::{Store, StoreError, CHUNK};

/// One handed-over session.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ws_handover")]
pub struct Model {
    /// The session's connection id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub connection_id: String,
    /// Its account.
    pub account_id: String,
    /// Its client.
    pub client_id: String,
    /// The credential id of the token that opened it (`None` in open mode).
    pub credential_id: Option<String>,
    /// Its resume secret's stored hash (`accounts::hashing::hash`; the column keeps the name
    /// migration 6 gave it).
    pub(crate) secret_digest: String,
    /// The last `seq` it sent.
    pub seq: i64,
    /// Its replay buffer: a JSON array of `[seq, frame text]`.
    pub replay: String,
    /// When its resume window ends (Unix milliseconds).
    pub(crate) deadline_millis: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl Store {
    /// Saves handed-over sessions, in one transaction.
    pub(crate) async fn save_ws_handovers(&self, rows: &[Model]) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        for chunk in rows.chunks(CHUNK) {
            let models = chunk.iter().cloned().map(|r| ActiveModel {
                connection_id: ActiveValue::Set(r.connection_id),
                account_id: ActiveValue::Set(r.account_id),
                client_id: ActiveValue::Set(r.client_id),
                credential_id: ActiveValue::Set(r.credential_id),
                secret_digest: ActiveValue::Set(r.secret_digest),
                seq: ActiveValue::Set(r.seq),
                replay: ActiveValue::Set(r.replay),
                deadline_millis: ActiveValue::Set(r.deadline_millis),
            });
            Entity::insert_many(models).exec(&txn).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Reads and deletes every handed-over session, in one transaction (whatever their
    /// deadline).
    pub(crate) async fn take_ws_handovers(&self) -> Result<Vec<Model>, StoreError> {
        let txn = self.db.begin().await?;
        let rows = Entity::find().all(&txn).await?;
        Entity::delete_many().exec(&txn).await?;
        txn.commit().await?;
        Ok(rows)
    }

    /// The handed-over session of `connection_id`, if one is stored.
    pub(crate) async fn ws_handover(
        &self,
        connection_id: &str,
    ) -> Result<Option<Model>, StoreError> {
        Ok(Entity::find_by_id(connection_id.to_string())
            .one(&self.db)
            .await?)
    }

    /// Deletes the handed-over session of `connection_id`; whether this call deleted it (the
    /// claim: of two replicas racing, only one sees `true`).
    pub(crate) async fn delete_ws_handover(&self, connection_id: &str) -> Result<bool, StoreError> {
        let deleted = Entity::delete_many()
            .filter(Column::ConnectionId.eq(connection_id))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected == 1)
    }

    /// At most `limit` handed-over sessions whose deadline is `now_millis` or earlier.
    pub(crate) async fn expired_ws_handovers(
        &self,
        now_millis: i64,
        limit: u64,
    ) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find()
            .filter(Column::DeadlineMillis.lte(now_millis))
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, deadline: i64) -> Model {
        Model {
            connection_id: id.into(),
            account_id: "a".into(),
            client_id: "pwa".into(),
            credential_id: None,
            secret_digest: "h".into(),
            seq: 3,
            replay: "[]".into(),
            deadline_millis: deadline,
        }
    }

    /// Given three saved sessions, two past their deadline, when the expired are listed and
    /// one is claimed twice, then the listing is bounded, only the first
    /// claim wins, and taking the rest empties the table.
    #[tokio::test]
    async fn handed_over_sessions_are_saved_claimed_once_and_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::temp_store(&dir).await;
        store
            .save_ws_handovers(&[row("k1", 100), row("k2", 200), row("k3", 300)])
            .await
            .unwrap();
        assert_eq!(store.ws_handover("k2").await.unwrap(), Some(row("k2", 200)));
        assert_eq!(store.ws_handover("nobody").await.unwrap(), None);
        assert_eq!(store.expired_ws_handovers(200, 100).await.unwrap().len(), 2);
        assert_eq!(store.expired_ws_handovers(200, 1).await.unwrap().len(), 1);
        assert!(store.delete_ws_handover("k1").await.unwrap());
        assert!(!store.delete_ws_handover("k1").await.unwrap());
        let mut taken = store.take_ws_handovers().await.unwrap();
        taken.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        assert_eq!(taken, vec![row("k2", 200), row("k3", 300)]);
        assert!(store.take_ws_handovers().await.unwrap().is_empty());
    }
}
