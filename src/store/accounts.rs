//! Accounts (tenants). Every topic, event and read-model row belongs to one.

use sea_orm::entity::prelude::*;

/// One account.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "accounts")]
pub struct Model {
    /// The account id, as it appears in topics (`accounts/{account_id}/…`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub account_id: String,
    /// A human-readable name.
    pub name: String,
    /// When it was created (Unix milliseconds).
    pub created_at_millis: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
