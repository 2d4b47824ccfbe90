//! Schema migrations. Named `mYYYYMMDD_NNNNNN_verb_noun`; never edited once merged.

use sea_orm_migration::prelude::*;

/// Runs every migration in order.
pub(crate) struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_events::Migration),
            Box::new(m20261122_000002_create_clients::Migration),
            Box::new(m20261122_000003_create_accounts_and_credentials::Migration),
            Box::new(m20261122_000004_create_sessions_and_parent_stations::Migration),
            Box::new(m20261130_000005_create_pending_starts::Migration),
            Box::new(m20261130_000006_create_ws_handover::Migration),
            Box::new(m20261207_000007_create_bans::Migration),
            Box::new(m20261207_000008_clients_edge_connection::Migration),
            Box::new(m20261208_000009_events_position_in_commit_order::Migration),
        ]
    }
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Position,
    AccountId,
    Stream,
    StreamVersion,
    EventType,
    EventVersion,
    Data,
    AtMillis,
    RecordedAtMillis,
    IdempotencyKey,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    AccountId,
    SessionId,
    ClientId,
    ConnectionId,
    Name,
    StartedAtMillis,
    Active,
    EndedAtMillis,
    EndReason,
    RecordedAtMillis,
}

#[derive(DeriveIden)]
enum WsHandover {
    Table,
    ConnectionId,
    AccountId,
    ClientId,
    CredentialId,
    SecretDigest,
    Seq,
    Replay,
    DeadlineMillis,
}

#[derive(DeriveIden)]
enum Bans {
    Table,
    AccountId,
    ClientId,
    UntilMillis,
    CreatedAtMillis,
    By,
}

#[derive(DeriveIden)]
enum PendingStarts {
    Table,
    AccountId,
    SessionId,
    ConnectionId,
    Name,
    StartedAtMillis,
    ParkedSeq,
    ParkedAtMillis,
}

#[derive(DeriveIden)]
enum ParentStations {
    Table,
    AccountId,
    ClientId,
    Announcement,
    UpdatedAtMillis,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    AccountId,
    Name,
    CreatedAtMillis,
}

#[derive(DeriveIden)]
enum Credentials {
    Table,
    CredentialId,
    Kind,
    AccountId,
    ClientId,
    SecretHash,
    CreatedAtMillis,
    RevokedAtMillis,
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    EdgeConnectionId,
    AccountId,
    ClientId,
    Connected,
    ConnectionId,
    ConnectedAtMillis,
    DisconnectedAtMillis,
    LastDisconnectReason,
    StreamVersion,
    UpdatedAtMillis,
}

mod m20261122_000001_create_events {
    use super::*;

    pub(crate) struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261122_000001_create_events"
        }
    }

    #[sea_orm_migration::async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(Events::Table)
                        .if_not_exists()
                        .col(
                            ColumnDef::new(Events::Position)
                                .big_integer()
                                .not_null()
                                .auto_increment()
                                .primary_key(),
                        )
                        .col(ColumnDef::new(Events::AccountId).string().not_null())
                        .col(ColumnDef::new(Events::Stream).string().not_null())
                        .col(
                            ColumnDef::new(Events::StreamVersion)
                                .big_integer()
                                .not_null(),
                        )
                        .col(ColumnDef::new(Events::EventType).string().not_null())
                        .col(ColumnDef::new(Events::EventVersion).integer().not_null())
                        .col(ColumnDef::new(Events::Data).text().not_null())
                        .col(ColumnDef::new(Events::AtMillis).big_integer().not_null())
                        .col(
                            ColumnDef::new(Events::RecordedAtMillis)
                                .big_integer()
                                .not_null(),
                        )
                        .col(ColumnDef::new(Events::IdempotencyKey).string().not_null())
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("ux_events_idempotency_key")
                        .table(Events::Table)
                        .col(Events::IdempotencyKey)
                        .unique()
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("ux_events_stream_version")
                        .table(Events::Table)
                        .col(Events::Stream)
                        .col(Events::StreamVersion)
                        .unique()
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("ix_events_account_position")
                        .table(Events::Table)
                        .col(Events::AccountId)
                        .col(Events::Position)
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(Events::Table).to_owned())
                .await
        }
    }
}

mod m20261122_000002_create_clients {
    use super::*;

    pub(crate) struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261122_000002_create_clients"
        }
    }

    #[sea_orm_migration::async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(Clients::Table)
                        .if_not_exists()
                        .col(ColumnDef::new(Clients::AccountId).string().not_null())
                        .col(ColumnDef::new(Clients::ClientId).string().not_null())
                        .col(ColumnDef::new(Clients::Connected).boolean().not_null())
                        .col(ColumnDef::new(Clients::ConnectionId).string().not_null())
                        .col(
                            ColumnDef::new(Clients::ConnectedAtMillis)
                                .big_integer()
                                .not_null(),
                        )
                        .col(ColumnDef::new(Clients::DisconnectedAtMillis).big_integer())
                        .col(ColumnDef::new(Clients::LastDisconnectReason).string())
                        .col(
                            ColumnDef::new(Clients::StreamVersion)
                                .big_integer()
                                .not_null(),
                        )
                        .col(
                            ColumnDef::new(Clients::UpdatedAtMillis)
                                .big_integer()
                                .not_null(),
                        )
                        .primary_key(
                            Index::create()
                                .col(Clients::AccountId)
                                .col(Clients::ClientId),
                        )
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("ix_clients_connected")
                        .table(Clients::Table)
                        .col(Clients::Connected)
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(Clients::Table).to_owned())
                .await
        }
    }
}

mod m20261122_000003_create_accounts_and_credentials {
    use super::*;

    pub(crate) struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261122_000003_create_accounts_and_credentials"
        }
    }

    #[sea_orm_migration::async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(Accounts::Table)
                        .if_not_exists()
                        .col(
                            ColumnDef::new(Accounts::AccountId)
                                .string()
                                .not_null()
                                .primary_key(),
                        )
                        .col(ColumnDef::new(Accounts::Name).string().not_null())
                        .col(
                            ColumnDef::new(Accounts::CreatedAtMillis)
                                .big_integer()
                                .not_null(),
                        )
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(Credentials::Table)
                        .if_not_exists()
                        .col(
                            ColumnDef::new(Credentials::CredentialId)
                                .string()
                                .not_null()
                                .primary_key(),
                        )
                        .col(ColumnDef::new(Credentials::Kind).string().not_null())
                        .col(ColumnDef::new(Credentials::AccountId).string())
                        .col(ColumnDef::new(Credentials::ClientId).string())
                        .col(ColumnDef::new(Credentials::SecretHash).string().not_null())
                        .col(
                            ColumnDef::new(Credentials::CreatedAtMillis)
                                .big_integer()
                                .not_null(),
                        )
                        .col(ColumnDef::new(Credentials::RevokedAtMillis).big_integer())
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("ix_credentials_account_client")
                        .table(Credentials::Table)
                        .col(Credentials::AccountId)
                        .col(Credentials::ClientId)
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(Credentials::Table).to_owned())
                .await?;
            manager
                .drop_table(Table::drop().table(Accounts::Table).to_owned())
                .await
        }
    }
}

mod m20261122_000004_create_sessions_and_parent_stations {
    use super::*;

    pub(crate) struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261122_000004_create_sessions_and_parent_stations"
        }
    }

    #[sea_orm_migration::async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let text = |c: Sessions| ColumnDef::new(c).string().not_null().to_owned();
            let millis = |c: Sessions| ColumnDef::new(c).big_integer().not_null().to_owned();
            manager
                .create_table(
                    Table::create()
                        .table(Sessions::Table)
                        .if_not_exists()
                        .col(text(Sessions::AccountId))
                        .col(text(Sessions::SessionId))
                        .col(text(Sessions::ClientId))
                        .col(text(Sessions::ConnectionId))
                        .col(text(Sessions::Name))
                        .col(millis(Sessions::StartedAtMillis))
                        .col(ColumnDef::new(Sessions::Active).boolean().not_null())
                        .col(ColumnDef::new(Sessions::EndedAtMillis).big_integer())
                        .col(ColumnDef::new(Sessions::EndReason).string())
                        .col(millis(Sessions::RecordedAtMillis))
                        .primary_key(
                            Index::create()
                                .col(Sessions::AccountId)
                                .col(Sessions::SessionId),
                        )
                        .to_owned(),
                )
                .await?;
            for (name, col) in [
                ("ix_sessions_account_connection", Sessions::ConnectionId),
                ("ix_sessions_account_client", Sessions::ClientId),
            ] {
                manager
                    .create_index(
                        Index::create()
                            .name(name)
                            .if_not_exists()
                            .table(Sessions::Table)
                            .col(Sessions::AccountId)
                            .col(col)
                            .to_owned(),
                    )
                    .await?;
            }
            manager
                .create_table(
                    Table::create()
                        .table(ParentStations::Table)
                        .if_not_exists()
                        .col(
                            ColumnDef::new(ParentStations::AccountId)
                                .string()
                                .not_null(),
                        )
                        .col(ColumnDef::new(ParentStations::ClientId).string().not_null())
                        .col(
                            ColumnDef::new(ParentStations::Announcement)
                                .text()
                                .not_null(),
                        )
                        .col(
                            ColumnDef::new(ParentStations::UpdatedAtMillis)
                                .big_integer()
                                .not_null(),
                        )
                        .primary_key(
                            Index::create()
                                .col(ParentStations::AccountId)
                                .col(ParentStations::ClientId),
                        )
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(ParentStations::Table).to_owned())
                .await?;
            manager
                .drop_table(Table::drop().table(Sessions::Table).to_owned())
                .await
        }
    }
}

mod m20261130_000005_create_pending_starts {
    use super::*;

    pub(crate) struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261130_000005_create_pending_starts"
        }
    }

    #[sea_orm_migration::async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let text = |c: PendingStarts| ColumnDef::new(c).string().not_null().to_owned();
            let big = |c: PendingStarts| ColumnDef::new(c).big_integer().not_null().to_owned();
            manager
                .create_table(
                    Table::create()
                        .table(PendingStarts::Table)
                        .if_not_exists()
                        .col(text(PendingStarts::AccountId))
                        .col(text(PendingStarts::SessionId))
                        .col(text(PendingStarts::ConnectionId))
                        .col(text(PendingStarts::Name))
                        .col(big(PendingStarts::StartedAtMillis))
                        .col(big(PendingStarts::ParkedSeq))
                        .col(big(PendingStarts::ParkedAtMillis))
                        .primary_key(
                            Index::create()
                                .col(PendingStarts::AccountId)
                                .col(PendingStarts::SessionId),
                        )
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("ix_pending_starts_account_connection")
                        .if_not_exists()
                        .table(PendingStarts::Table)
                        .col(PendingStarts::AccountId)
                        .col(PendingStarts::ConnectionId)
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(PendingStarts::Table).to_owned())
                .await
        }
    }
}

mod m20261130_000006_create_ws_handover {
    use super::*;

    pub(crate) struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261130_000006_create_ws_handover"
        }
    }

    #[sea_orm_migration::async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let text = |c: WsHandover| ColumnDef::new(c).string().not_null().to_owned();
            manager
                .create_table(
                    Table::create()
                        .table(WsHandover::Table)
                        .if_not_exists()
                        .col(text(WsHandover::ConnectionId).primary_key().to_owned())
                        .col(text(WsHandover::AccountId))
                        .col(text(WsHandover::ClientId))
                        .col(ColumnDef::new(WsHandover::CredentialId).string())
                        .col(text(WsHandover::SecretDigest))
                        .col(ColumnDef::new(WsHandover::Seq).big_integer().not_null())
                        .col(ColumnDef::new(WsHandover::Replay).text().not_null())
                        .col(
                            ColumnDef::new(WsHandover::DeadlineMillis)
                                .big_integer()
                                .not_null(),
                        )
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(WsHandover::Table).to_owned())
                .await
        }
    }
}

mod m20261207_000007_create_bans {
    use super::*;

    pub(crate) struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261207_000007_create_bans"
        }
    }

    #[sea_orm_migration::async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let text = |c: Bans| ColumnDef::new(c).string().not_null().to_owned();
            let millis = |c: Bans| ColumnDef::new(c).big_integer().not_null().to_owned();
            manager
                .create_table(
                    Table::create()
                        .table(Bans::Table)
                        .if_not_exists()
                        .col(text(Bans::AccountId))
                        .col(text(Bans::ClientId))
                        .col(millis(Bans::UntilMillis))
                        .col(millis(Bans::CreatedAtMillis))
                        .col(text(Bans::By))
                        .primary_key(Index::create().col(Bans::AccountId).col(Bans::ClientId))
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(Bans::Table).to_owned())
                .await
        }
    }
}

mod m20261207_000008_clients_edge_connection {
    use super::*;

    pub(crate) struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261207_000008_clients_edge_connection"
        }
    }

    /// The MQTT connection behind the edge of each client's current or last connection
    /// (null for clients the edge does not see, and for rows written before).
    #[sea_orm_migration::async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .alter_table(
                    Table::alter()
                        .table(Clients::Table)
                        .add_column(ColumnDef::new(Clients::EdgeConnectionId).string().null())
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .alter_table(
                    Table::alter()
                        .table(Clients::Table)
                        .drop_column(Clients::EdgeConnectionId)
                        .to_owned(),
                )
                .await
        }
    }
}

mod m20261208_000009_events_position_in_commit_order {
    use super::*;

    pub(crate) struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261208_000009_events_position_in_commit_order"
        }
    }

    /// PostgreSQL only (SQLite commits one writer at a time, in position order): an event's
    /// position is taken by `cradle_event_position()`, which first takes the shared advisory
    /// lock `store::follow::APPEND_LOCK` for the rest of the transaction. Shared holders never
    /// wait for each other, so writers still run concurrently; a reader of the log sees in
    /// `pg_locks` which transactions may still commit a position it has not seen
    /// (`Store::settled_position`).
    #[sea_orm_migration::async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            if manager.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
                return Ok(());
            }
            let lock = crate::store::follow::APPEND_LOCK;
            let db = manager.get_connection();
            db.execute_unprepared(&format!(
                "CREATE OR REPLACE FUNCTION cradle_event_position() RETURNS bigint \
                 LANGUAGE plpgsql VOLATILE AS $$ \
                 BEGIN \
                   PERFORM pg_advisory_xact_lock_shared({lock}); \
                   RETURN nextval('events_position_seq'); \
                 END $$"
            ))
            .await?;
            db.execute_unprepared(
                "ALTER TABLE events ALTER COLUMN position SET DEFAULT cradle_event_position()",
            )
            .await?;
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            if manager.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
                return Ok(());
            }
            let db = manager.get_connection();
            db.execute_unprepared(
                "ALTER TABLE events ALTER COLUMN position \
                 SET DEFAULT nextval('events_position_seq')",
            )
            .await?;
            db.execute_unprepared("DROP FUNCTION IF EXISTS cradle_event_position()")
                .await?;
            Ok(())
        }
    }
}
