//! Session starts waiting for their connection: a start named a connection no replica has
//! recorded yet. Kept in the store so that they survive a restart, any replica applies them
//! when it records that connection, and a `DELETE` on any replica removes them.

use sea_orm::entity::prelude::*;

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
