//! Read model: every client's current connection state, updated in the same transaction
//! as the events that change it.

use sea_orm::entity::prelude::*;

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
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
