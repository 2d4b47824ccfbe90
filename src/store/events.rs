//! The event log: one row per recorded event, in global order.

use sea_orm::entity::prelude::*;

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    /// Global position in the log; readers follow the log with `after={position}`.
    #[sea_orm(primary_key)]
    pub position: i64,
    /// The account the stream belongs to; every read is scoped by it.
    pub account_id: String,
    /// Stream id, for example `connection/{account_id}/{client_id}`.
    pub stream: String,
    /// 1-based version inside the stream; unique with `stream` (optimistic concurrency).
    pub stream_version: i64,
    /// Stable type name, for example `connection.connected`.
    pub event_type: String,
    /// Version of the payload shape of `event_type`.
    pub event_version: i32,
    /// The event payload as JSON text.
    pub data: String,
    /// When it happened, on the observer's clock (Unix milliseconds).
    pub at_millis: i64,
    /// When Cradle recorded it (Unix milliseconds).
    pub recorded_at_millis: i64,
    /// Unique per logical event, so a redelivered message can never append twice.
    #[sea_orm(unique)]
    pub idempotency_key: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
