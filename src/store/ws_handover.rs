//! WebSocket sessions handed over through the store at a graceful shutdown of Cradle with its
//! embedded broker: the next start takes them back, so a PWA resumes across the restart with
//! every frame it missed. Rows live for at most the resume window; the resume secret is kept
//! only as its stored hash (`accounts::hashing`, salted BLAKE2b, as every stored secret).

use sea_orm::entity::prelude::*;

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
