//! Read model: the parent stations each account's clients announce on
//! `accounts/{account_id}/parent_stations/{client_id}`.

use sea_orm::entity::prelude::*;

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
