//! Read model: every session of every account (active ones are the baby-station list; all
//! of them feed the usage statistics), updated in the same transaction as the session
//! events; and the queries the session handler (`sync::sessions`) makes of it and of the
//! clients' read model, as [`Store`] and [`StoreTx`] methods returning domain values.

use std::collections::HashMap;

use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue, Condition, QueryOrder};

use super::{clients, Store, StoreError, StoreTx};
use crate::domain::session::{ActiveSession, AwaySession, EndReason, SessionState};
use crate::domain::usage::SessionSpan;

/// One session.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    /// The account.
    #[sea_orm(primary_key, auto_increment = false)]
    pub account_id: String,
    /// The session.
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    /// The baby station hosting it.
    pub client_id: String,
    /// The baby station's connection that started it.
    pub connection_id: String,
    /// Display name.
    pub name: String,
    /// When it started (the starter's clock, Unix milliseconds).
    pub started_at_millis: i64,
    /// Whether it is still running.
    pub active: bool,
    /// When it ended, once it has.
    pub ended_at_millis: Option<i64>,
    /// Why it ended, once it has.
    pub end_reason: Option<String>,
    /// When Cradle recorded the start (Cradle's clock), to compare with connection changes.
    pub recorded_at_millis: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl From<&Model> for SessionSpan {
    fn from(r: &Model) -> Self {
        SessionSpan {
            session_id: r.session_id.clone(),
            client_id: r.client_id.clone(),
            name: r.name.clone(),
            started_at_millis: r.started_at_millis,
            active: r.active,
            ended_at_millis: r.ended_at_millis,
        }
    }
}

impl From<&Model> for ActiveSession {
    fn from(r: &Model) -> Self {
        ActiveSession {
            session_id: r.session_id.clone(),
            client_id: r.client_id.clone(),
            connection_id: r.connection_id.clone(),
            name: r.name.clone(),
            started_at_millis: r.started_at_millis,
        }
    }
}

/// A session's state as its row says: none, active, or ended.
fn state_of(row: Option<&Model>) -> SessionState {
    match row {
        None => SessionState::None,
        Some(r) if r.active => SessionState::Active(r.into()),
        Some(_) => SessionState::Ended,
    }
}

/// The state of session `session_id` of `account_id`, read through `db`.
async fn session_state_in<C: ConnectionTrait>(
    db: &C,
    account_id: &str,
    session_id: &str,
) -> Result<SessionState, StoreError> {
    let row = Entity::find_by_id((account_id.to_string(), session_id.to_string()))
        .one(db)
        .await?;
    Ok(state_of(row.as_ref()))
}

impl Store {
    /// The state of one session, outside any transaction.
    pub(crate) async fn session_state(
        &self,
        account_id: &str,
        session_id: &str,
    ) -> Result<SessionState, StoreError> {
        session_state_in(&self.db, account_id, session_id).await
    }

    /// The latest started of the active sessions `client_id` hosts.
    pub(crate) async fn active_session_of_client(
        &self,
        account_id: &str,
        client_id: &str,
    ) -> Result<Option<ActiveSession>, StoreError> {
        Ok(Entity::find()
            .filter(Column::AccountId.eq(account_id))
            .filter(Column::ClientId.eq(client_id))
            .filter(Column::Active.eq(true))
            .order_by_desc(Column::StartedAtMillis)
            .one(&self.db)
            .await?
            .as_ref()
            .map(ActiveSession::from))
    }

    /// The client whose current (or last) connection is `connection_id` (the most recently
    /// updated, should several claim it).
    pub(crate) async fn client_of_connection(
        &self,
        account_id: &str,
        connection_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(clients::Entity::find()
            .filter(clients::Column::AccountId.eq(account_id))
            .filter(clients::Column::ConnectionId.eq(connection_id))
            .order_by_desc(clients::Column::UpdatedAtMillis)
            .one(&self.db)
            .await?
            .map(|c| c.client_id))
    }

    /// Every active session of every account (the sweep's input).
    pub async fn active_sessions(&self) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find()
            .filter(Column::Active.eq(true))
            .all(&self.db)
            .await?)
    }

    /// Every active session of every account, by start.
    pub(crate) async fn active_sessions_by_start(&self) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find()
            .filter(Column::Active.eq(true))
            .order_by_asc(Column::StartedAtMillis)
            .all(&self.db)
            .await?)
    }

    /// Those of `active` (at most a few hundred: one statement) whose baby station is
    /// recorded and not connected, in the order given, with what its row says of its
    /// absence.
    pub(crate) async fn away_sessions(
        &self,
        active: &[Model],
    ) -> Result<Vec<AwaySession>, StoreError> {
        let mut accounts: Vec<&str> = active.iter().map(|s| s.account_id.as_str()).collect();
        accounts.sort_unstable();
        accounts.dedup();
        let rows = clients::Entity::find()
            .filter(
                Condition::all()
                    .add(clients::Column::AccountId.is_in(accounts))
                    .add(
                        clients::Column::ClientId
                            .is_in(active.iter().map(|s| s.client_id.as_str())),
                    )
                    .add(clients::Column::Connected.eq(false)),
            )
            .all(&self.db)
            .await?;
        let by_key: HashMap<(&str, &str), &clients::Model> = rows
            .iter()
            .map(|c| ((c.account_id.as_str(), c.client_id.as_str()), c))
            .collect();
        Ok(active
            .iter()
            .filter_map(|s| {
                let c = by_key.get(&(s.account_id.as_str(), s.client_id.as_str()))?;
                Some(AwaySession {
                    account_id: s.account_id.clone(),
                    session_id: s.session_id.clone(),
                    client_id: s.client_id.clone(),
                    started_at_millis: s.started_at_millis,
                    recorded_at_millis: s.recorded_at_millis,
                    disconnected_at_millis: c.disconnected_at_millis,
                    clean_disconnect: c.last_disconnect_reason.as_deref() == Some("clean"),
                    station_updated_at_millis: c.updated_at_millis,
                })
            })
            .collect())
    }

    /// The account's active sessions, by start.
    pub(crate) async fn active_sessions_of_account(
        &self,
        account_id: &str,
    ) -> Result<Vec<ActiveSession>, StoreError> {
        Ok(Entity::find()
            .filter(Column::AccountId.eq(account_id))
            .filter(Column::Active.eq(true))
            .order_by_asc(Column::StartedAtMillis)
            .all(&self.db)
            .await?
            .iter()
            .map(ActiveSession::from)
            .collect())
    }

    /// Whether each recorded client of `client_ids` is connected now (unrecorded ones are
    /// left out).
    pub(crate) async fn connected_by_client<'a>(
        &self,
        account_id: &str,
        client_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, bool>, StoreError> {
        Ok(clients::Entity::find()
            .filter(clients::Column::AccountId.eq(account_id))
            .filter(clients::Column::ClientId.is_in(client_ids))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|c| (c.client_id, c.connected))
            .collect())
    }

    /// Every session of the account that overlaps `[from, to)`, by start.
    pub(crate) async fn sessions_between(
        &self,
        account_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<Model>, StoreError> {
        Ok(Entity::find()
            .filter(Column::AccountId.eq(account_id))
            .filter(Column::StartedAtMillis.lt(to))
            .filter(
                Condition::any()
                    .add(Column::EndedAtMillis.is_null())
                    .add(Column::EndedAtMillis.gt(from)),
            )
            .order_by_asc(Column::StartedAtMillis)
            .all(&self.db)
            .await?)
    }
}

impl StoreTx {
    /// The state of one session, inside the transaction.
    pub(crate) async fn session_state(
        &self,
        account_id: &str,
        session_id: &str,
    ) -> Result<SessionState, StoreError> {
        session_state_in(&self.txn, account_id, session_id).await
    }

    /// An active session on `connection_id` other than `session_id`, if any.
    pub(crate) async fn active_on_connection(
        &self,
        account_id: &str,
        connection_id: &str,
        session_id: &str,
    ) -> Result<Option<ActiveSession>, StoreError> {
        Ok(Entity::find()
            .filter(Column::AccountId.eq(account_id))
            .filter(Column::ConnectionId.eq(connection_id))
            .filter(Column::Active.eq(true))
            .filter(Column::SessionId.ne(session_id))
            .one(&self.txn)
            .await?
            .as_ref()
            .map(ActiveSession::from))
    }

    /// Every client whose current (or last) connection is `connection_id`.
    pub(crate) async fn clients_of_connection(
        &self,
        account_id: &str,
        connection_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(clients::Entity::find()
            .filter(clients::Column::AccountId.eq(account_id))
            .filter(clients::Column::ConnectionId.eq(connection_id))
            .all(&self.txn)
            .await?
            .into_iter()
            .map(|c| c.client_id)
            .collect())
    }

    /// Records a started session (active), recorded at `recorded_at_millis`.
    pub(crate) async fn insert_session(
        &self,
        account_id: &str,
        s: &ActiveSession,
        recorded_at_millis: i64,
    ) -> Result<(), StoreError> {
        Entity::insert(ActiveModel {
            account_id: ActiveValue::Set(account_id.to_string()),
            session_id: ActiveValue::Set(s.session_id.clone()),
            client_id: ActiveValue::Set(s.client_id.clone()),
            connection_id: ActiveValue::Set(s.connection_id.clone()),
            name: ActiveValue::Set(s.name.clone()),
            started_at_millis: ActiveValue::Set(s.started_at_millis),
            active: ActiveValue::Set(true),
            ended_at_millis: ActiveValue::Set(None),
            end_reason: ActiveValue::Set(None),
            recorded_at_millis: ActiveValue::Set(recorded_at_millis),
        })
        .exec(&self.txn)
        .await?;
        Ok(())
    }

    /// Records that a session ended.
    pub(crate) async fn end_session(
        &self,
        account_id: &str,
        session_id: &str,
        ended_at_millis: i64,
        reason: EndReason,
    ) -> Result<(), StoreError> {
        Entity::update_many()
            .col_expr(Column::Active, false.into())
            .col_expr(Column::EndedAtMillis, ended_at_millis.into())
            .col_expr(Column::EndReason, reason.as_str().into())
            .filter(Column::AccountId.eq(account_id))
            .filter(Column::SessionId.eq(session_id))
            .exec(&self.txn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &tempfile::TempDir) -> Store {
        crate::store::temp_store(dir).await
    }

    fn session(id: &str, client: &str, connection: &str, at: i64) -> ActiveSession {
        ActiveSession {
            session_id: id.into(),
            client_id: client.into(),
            connection_id: connection.into(),
            name: "Nursery".into(),
            started_at_millis: at,
        }
    }

    fn client(id: &str, connection: &str, connected: bool, reason: Option<&str>) -> clients::Model {
        clients::Model {
            account_id: "a".into(),
            client_id: id.into(),
            connected,
            connection_id: connection.into(),
            connected_at_millis: 100,
            disconnected_at_millis: (!connected).then_some(900),
            last_disconnect_reason: reason.map(str::to_string),
            stream_version: 1,
            updated_at_millis: 950,
            edge_connection_id: None,
        }
    }

    #[tokio::test]
    async fn a_session_reads_back_as_none_then_active_then_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let s = session("s1", "baby", "k1", 100);
        assert_eq!(
            store.session_state("a", "s1").await.unwrap(),
            SessionState::None
        );
        let tx = store.begin().await.unwrap();
        tx.insert_session("a", &s, 110).await.unwrap();
        assert_eq!(
            tx.session_state("a", "s1").await.unwrap(),
            SessionState::Active(s.clone())
        );
        assert_eq!(
            tx.active_on_connection("a", "k1", "s1").await.unwrap(),
            None
        );
        assert_eq!(
            tx.active_on_connection("a", "k1", "s2").await.unwrap(),
            Some(s.clone())
        );
        tx.commit().await.unwrap();
        assert_eq!(
            store.active_session_of_client("a", "baby").await.unwrap(),
            Some(s.clone())
        );
        let tx = store.begin().await.unwrap();
        tx.end_session("a", "s1", 500, EndReason::Explicit)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            store.session_state("a", "s1").await.unwrap(),
            SessionState::Ended
        );
        assert_eq!(
            store.active_session_of_client("a", "baby").await.unwrap(),
            None
        );
        let rows = store.sessions_between("a", 400, 600).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].end_reason.as_deref(), Some("explicit"));
        assert!(store
            .sessions_between("a", 500, 600)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn away_sessions_are_those_whose_station_is_recorded_and_not_connected() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let tx = store.begin().await.unwrap();
        tx.upsert_clients(&[
            client("away", "k1", false, Some("clean")),
            client("here", "k2", true, None),
        ])
        .await
        .unwrap();
        tx.insert_session("a", &session("s1", "away", "k1", 100), 110)
            .await
            .unwrap();
        tx.insert_session("a", &session("s2", "here", "k2", 100), 110)
            .await
            .unwrap();
        tx.insert_session("a", &session("s3", "unseen", "k3", 100), 110)
            .await
            .unwrap();
        assert_eq!(
            tx.clients_of_connection("a", "k1").await.unwrap(),
            vec!["away".to_string()]
        );
        tx.commit().await.unwrap();
        assert_eq!(
            store
                .client_of_connection("a", "k2")
                .await
                .unwrap()
                .as_deref(),
            Some("here")
        );
        let active = store.active_sessions().await.unwrap();
        assert_eq!(active.len(), 3);
        let away = store.away_sessions(&active).await.unwrap();
        assert_eq!(
            away,
            vec![AwaySession {
                account_id: "a".into(),
                session_id: "s1".into(),
                client_id: "away".into(),
                started_at_millis: 100,
                recorded_at_millis: 110,
                disconnected_at_millis: Some(900),
                clean_disconnect: true,
                station_updated_at_millis: 950,
            }]
        );
        let connected = store
            .connected_by_client("a", ["away", "here", "unseen"])
            .await
            .unwrap();
        assert_eq!(connected.get("here"), Some(&true));
        assert_eq!(connected.get("away"), Some(&false));
        assert_eq!(connected.get("unseen"), None);
        let listed = store.active_sessions_of_account("a").await.unwrap();
        assert_eq!(listed.len(), 3);
    }
}
