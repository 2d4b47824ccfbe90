//! `cradle`: the service. `cradle serve` runs it on its embedded defaults.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cradle::config::{Config, Overrides};

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

#[derive(Subcommand)]
enum Command {
    /// Run the service: broker, status pipeline, HTTP API.
    Serve {
        /// TOML config file (default: config/cradle.toml when present).
        #[arg(long, env = "CRADLE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, overrides } => {
            let config = match Config::load(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(error) => {
                    eprintln!("cradle: {error}");
                    return ExitCode::from(2);
                }
            };
            cradle::telemetry::init(&config.log);
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    // Each error's message already carries its cause on one line.
                    eprintln!("cradle: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
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
