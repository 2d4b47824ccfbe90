//! Read model: every session of every account (active ones are the baby-station list; all
//! of them feed the usage statistics), updated in the same transaction as the session
//! events.

use sea_orm::entity::prelude::*;

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
