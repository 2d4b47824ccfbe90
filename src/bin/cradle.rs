//! `cradle`: the service. `cradle serve` runs it on its embedded defaults; `cradle accounts`
//! and `cradle credentials` manage tenants and their secrets in the same store; `cradle
//! migrate` copies a store to another database (SQLite to PostgreSQL).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cradle::accounts::CredentialKind;
use cradle::admin_client::Admin;
use cradle::config::{Config, Overrides};
use cradle::store::Store;

#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "cradle",
    version,
    about = "Realtime backbone: embedded MQTT broker, durable connection events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// TOML config file (default: config/cradle.toml when present).
    #[arg(long, env = "CRADLE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

/// Where the store of `cradle accounts` and `cradle credentials` is: only what they need.
#[derive(clap::Args)]
struct StoreArgs {
    /// TOML config file whose store.database_url is used (default: config/cradle.toml when
    /// present).
    #[arg(long, env = "CRADLE_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// store.database_url: sqlite://PATH or postgres://USER:PASS@HOST:PORT/DB [default:
    /// sqlite://data/cradle.db, relative to the working directory].
    #[arg(long, env = "CRADLE_DATABASE_URL", value_name = "URL", global = true)]
    database_url: Option<String>,
    /// Create the store when none is there (otherwise a missing store is an error, so that
    /// a command run from the wrong directory or with a mistyped URL changes nothing).
    #[arg(long, env = "CRADLE_CREATE_STORE", global = true)]
    create_store: bool,
    /// Act through a running Cradle's admin API instead of the store (`http://host:port`;
    /// needs --admin-token): no database access needed, and a revocation ends live connections.
    #[arg(long, env = "CRADLE_SERVER", value_name = "URL", global = true)]
    server: Option<String>,
    /// The admin token (http.admin_token) for --server.
    #[arg(
        long = "admin-token",
        env = "CRADLE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
}

// Parsed once per process: `serve`'s many overrides make its variant large, which costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the service: broker, status pipeline, HTTP API.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Manage accounts (tenants).
    Accounts {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: AccountsAction,
    },
    /// Manage credentials: device secrets, bearer tokens, operator secrets.
    Credentials {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: CredentialsAction,
    },
    /// Copy a whole store to another database (SQLite to PostgreSQL) in one transaction,
    /// keeping every key, and verify every table's row count and checksum.
    Migrate(MigrateArgs),
}

#[derive(clap::Args)]
#[command(
    after_help = "Stop `cradle serve` on the source first. Re-running after a \
    successful migration verifies and writes nothing."
)]
struct MigrateArgs {
    /// The store to copy (must exist): sqlite://PATH or postgres://USER:PASS@HOST:PORT/DB.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The store to copy into; its schema is created when missing. It must be empty,
    /// unless it already holds exactly the source's rows (then nothing is written).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Write into a non-empty target: insert only the rows whose key it lacks, keep its
    /// other rows, then verify every source row is present and identical.
    #[arg(long)]
    allow_non_empty: bool,
}

#[derive(Subcommand)]
enum AccountsAction {
    /// Create an account.
    Create {
        /// Account id, as used in topics.
        account: String,
        /// Human-readable name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List accounts.
    List,
    /// Delete an account and revoke its credentials (its events stay).
    Delete { account: String },
}

#[derive(Subcommand)]
enum CredentialsAction {
    /// Issue a credential; prints the secret alone on the last line, once.
    Issue {
        /// The account (device and token credentials).
        #[arg(long)]
        account: Option<String>,
        /// The device's MQTT client id (a device credential).
        #[arg(long, conflicts_with_all = ["token", "operator"])]
        client: Option<String>,
        /// A bearer token for HTTP and the WebSocket.
        #[arg(long, conflicts_with = "operator")]
        token: bool,
        /// An operator secret: watch every account's status.
        #[arg(long, conflicts_with = "admin")]
        operator: bool,
        /// An administrator secret: the admin API over HTTP, like the admin token but
        /// recorded under its own id and revocable.
        #[arg(long, conflicts_with_all = ["token", "client", "account"])]
        admin: bool,
    },
    /// List credentials (never secrets).
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a credential.
    Revoke { credential: String },
}

/// The config of an admin command: the file, then `--database-url` alone.
fn load_store(args: &StoreArgs) -> Result<Config, ExitCode> {
    check_environment()?;
    let overrides = Overrides {
        database_url: args.database_url.clone(),
        ..Overrides::default()
    };
    Config::load(args.config.as_deref(), &overrides).map_err(|error| {
        eprintln!("cradle: {error}");
        ExitCode::from(2)
    })
}

fn load(args: &ConfigArgs) -> Result<Config, ExitCode> {
    check_environment()?;
    Config::load(args.config.as_deref(), &args.overrides).map_err(|error| {
        eprintln!("cradle: {error}");
        ExitCode::from(2)
    })
}

/// Refuses a `CRADLE_*` variable that is a near miss of a setting's (every subcommand's
/// flags name theirs).
fn check_environment() -> Result<(), ExitCode> {
    use clap::CommandFactory;
    let command = Cli::command();
    let known: Vec<String> = command
        .get_subcommands()
        .flat_map(|s| s.get_arguments())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let vars: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    cradle::config::environment::check(&known, vars.iter().map(String::as_str)).map_err(|error| {
        eprintln!("cradle: {error}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            cradle::telemetry::init(&config.log);
            serve(config)
        }
        Command::Accounts { store, action } => match load_store(&store) {
            Ok(c) => admin(c, &store, |a| Box::pin(accounts_cmd(a, action))),
            Err(code) => return code,
        },
        Command::Credentials { store, action } => match load_store(&store) {
            Ok(c) => admin(c, &store, |a| Box::pin(credentials_cmd(a, action))),
            Err(code) => return code,
        },
        Command::Migrate(args) => migrate_cmd(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Each error's message already carries its cause on one line.
            eprintln!("cradle: {error}");
            ExitCode::FAILURE
        }
    }
}

type AdminFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>>;

/// Runs one admin command: through `--server`'s admin API, or against the configured store,
/// which must exist unless `--create-store`.
fn admin(
    config: Config,
    args: &StoreArgs,
    command: impl for<'a> FnOnce(&'a Admin) -> AdminFuture<'a>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        if let Some(server) = &args.server {
            return command(&Admin::remote(server, args.admin_token.clone())).await;
        }
        let store = match args.create_store {
            true => Store::connect(&config.store).await?,
            false => Store::connect_existing(&config.store).await?,
        };
        let admin = Admin::Local(store);
        let result = command(&admin).await;
        if let Admin::Local(store) = admin {
            store.close().await?;
        }
        result
    })
}

async fn accounts_cmd(admin: &Admin, action: AccountsAction) -> anyhow::Result<()> {
    match action {
        AccountsAction::Create { account, name } => {
            let name = name.unwrap_or_else(|| account.clone());
            let a = admin.create_account(&account, &name).await?;
            println!("created account {} ({})", a.account_id, a.name);
        }
        AccountsAction::List => {
            println!("{:<32} {:<32} CREATED (UNIX MS)", "ACCOUNT", "NAME");
            for a in admin.accounts().await? {
                println!(
                    "{:<32} {:<32} {}",
                    a.account_id, a.name, a.created_at_millis
                );
            }
        }
        AccountsAction::Delete { account } => {
            let revoked = admin.delete_account(&account).await?;
            println!("deleted account {account}; its {revoked} credentials are revoked");
        }
    }
    Ok(())
}

async fn credentials_cmd(admin: &Admin, action: CredentialsAction) -> anyhow::Result<()> {
    match action {
        CredentialsAction::Issue {
            account,
            client,
            token,
            operator,
            admin: administrator,
        } => {
            let kind = if administrator {
                CredentialKind::Admin
            } else if operator {
                CredentialKind::Operator
            } else if token {
                CredentialKind::Token
            } else {
                CredentialKind::Device
            };
            let issued = admin
                .issue(kind, account.as_deref(), client.as_deref())
                .await?;
            let c = &issued.credential;
            println!(
                "issued {} credential {} (account {}, client {}); the secret is shown once:",
                c.kind,
                c.credential_id,
                c.account_id.as_deref().unwrap_or("-"),
                c.client_id.as_deref().unwrap_or("-"),
            );
            println!("{}", issued.secret);
        }
        CredentialsAction::List { account } => {
            println!(
                "{:<20} {:<9} {:<24} {:<24} REVOKED",
                "CREDENTIAL", "KIND", "ACCOUNT", "CLIENT"
            );
            for c in admin.credentials(account.as_deref()).await? {
                println!(
                    "{:<20} {:<9} {:<24} {:<24} {}",
                    c.credential_id,
                    c.kind.as_str(),
                    c.account_id.as_deref().unwrap_or("-"),
                    c.client_id.as_deref().unwrap_or("-"),
                    if c.revoked_at_millis.is_some() {
                        "yes"
                    } else {
                        "no"
                    }
                );
            }
        }
        CredentialsAction::Revoke { credential } => {
            admin.revoke(&credential).await?;
            println!("revoked {credential}");
        }
    }
    Ok(())
}

fn migrate_cmd(args: MigrateArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let options = cradle::migrate::MigrateOptions {
        allow_non_empty: args.allow_non_empty,
        ..Default::default()
    };
    let report = runtime.block_on(cradle::migrate::migrate(&args.from, &args.to, options))?;
    println!("{report}");
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cradle")
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(cradle::server::run(
        config,
        cradle::server::shutdown_signal(),
    ))?;
    // rumqttd's router thread and listener tasks have no shutdown; leaving the runtime
    // without waiting for them ends the process once Cradle's own parts have drained.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}
