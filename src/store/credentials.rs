//! Credentials: MQTT device secrets, bearer tokens and operator secrets, stored as argon2id
//! hashes. The secret itself is shown once, when issued, and never stored.

use sea_orm::entity::prelude::*;

/// One credential.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credentials")]
pub struct Model {
    /// Public id of the credential (also the prefix of a bearer token).
    #[sea_orm(primary_key, auto_increment = false)]
    pub credential_id: String,
    /// `device`, `token` or `operator`.
    pub kind: String,
    /// The account it belongs to (none for an operator).
    pub account_id: Option<String>,
    /// The MQTT client id a device credential is bound to.
    pub client_id: Option<String>,
    /// argon2id PHC string of the secret.
    pub secret_hash: String,
    /// When it was issued (Unix milliseconds).
    pub created_at_millis: i64,
    /// When it was revoked, if it was.
    pub revoked_at_millis: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
