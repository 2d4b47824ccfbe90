//! `cradle-monitor`: watch every client's status change live.

use std::process::ExitCode;

use clap::Parser;
use cradle::monitor::{self, MonitorOptions};

#[derive(Parser)]
#[command(
    name = "cradle-monitor",
    version,
    about = "Live view of every client's status"
)]
struct Cli {
    /// Broker URL.
    #[arg(
        long,
        env = "CRADLE_MONITOR_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    broker: String,
    /// Only this account (default: every account).
    #[arg(long)]
    account: Option<String>,
    /// Cradle's HTTP API base URL, for an initial snapshot (needs --account).
    #[arg(long, value_name = "URL")]
    http: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// MQTT username (any, with an operator secret as the password; both or neither).
    #[arg(long, env = "CRADLE_MONITOR_USERNAME")]
    username: Option<String>,
    /// MQTT password: an operator secret (both --username and --password, or neither).
    #[arg(long, env = "CRADLE_MONITOR_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Bearer token for --http and --events (an account token, operator secret or admin token).
    #[arg(long, env = "CRADLE_MONITOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Follow Cradle's live event stream at --http instead of the broker: every committed event
    /// (connections and sessions) of --account, or of every account (operator secret or admin
    /// token); resumes after a drop with no gap.
    #[arg(long, requires = "http")]
    events: bool,
    /// With --events: start after this position (default: from now on; 0: the whole log).
    #[arg(long, requires = "events", value_name = "POSITION")]
    after: Option<i64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // MQTT sends a password only with a username: one without the other would connect
    // anonymously and end in "not authorized" without naming the cause.
    match (&cli.username, &cli.password) {
        (Some(_), None) => {
            eprintln!("cradle-monitor: --username (CRADLE_MONITOR_USERNAME) given without --password (CRADLE_MONITOR_PASSWORD): give both, the password being an operator secret");
            return ExitCode::from(2);
        }
        (None, Some(_)) => {
            eprintln!("cradle-monitor: --password (CRADLE_MONITOR_PASSWORD) given without --username (CRADLE_MONITOR_USERNAME): give both (any username will do)");
            return ExitCode::from(2);
        }
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CRADLE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if cli.events {
        let options = monitor::events::EventsOptions {
            http: cli.http.unwrap_or_default(),
            account: cli.account,
            after: cli.after,
            token: cli.token,
            json: cli.json,
        };
        return run(monitor::events::follow(
            options,
            &mut std::io::stdout(),
            cradle::server::shutdown_signal(),
        ));
    }
    let options = MonitorOptions {
        broker: cli.broker,
        account: cli.account,
        http: cli.http,
        json: cli.json,
        username: cli.username,
        password: cli.password,
        token: cli.token,
    };
    let mut out = std::io::stdout();
    run(monitor::run(
        options,
        &mut out,
        cradle::server::shutdown_signal(),
    ))
}

/// Runs `watch` on a single-threaded runtime; its error is printed and the exit code says it.
fn run(watch: impl std::future::Future<Output = Result<(), monitor::MonitorError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(error) => {
            eprintln!("cradle-monitor: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(watch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cradle-monitor: {error}");
            ExitCode::FAILURE
        }
    }
}
