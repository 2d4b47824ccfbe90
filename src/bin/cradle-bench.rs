//! `cradle-bench`: bounded benchmark scenarios; each prints one JSON result line.
//! `scripts/bench` runs them all against Cradle and Mosquitto and writes `BENCHMARKS.md`.

use std::io::BufRead;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cradle::bench::{
    self, connections, pipeline, puback, signalling, throughput, websocket, BenchResult,
};

#[derive(Parser)]
#[command(
    name = "cradle-bench",
    version,
    about = "Benchmark scenarios for Cradle and other MQTT brokers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Broker under test.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// Its name in the report.
    #[arg(long, default_value = "cradle")]
    label: String,
    /// Its pid, for CPU seconds and peak RSS.
    #[arg(long)]
    pid: Option<u32>,
}

/// Authentication on: devices with their own credentials.
#[derive(clap::Args, Clone)]
struct Auth {
    /// Cradle's store: the bench creates an account there and a device credential per
    /// client, and connects each client with its credential (authentication on).
    #[arg(long)]
    database_url: Option<String>,
}

impl Auth {
    /// The devices to connect as, when authentication is on.
    async fn devices(
        &self,
        prefix: &str,
        count: usize,
    ) -> Result<Option<std::sync::Arc<Vec<connections::Device>>>, bench::BenchError> {
        let Some(url) = &self.database_url else {
            return Ok(None);
        };
        let account = format!("bench-{prefix}-{}", bench::run_id());
        let clients = (0..count).map(|i| format!("{prefix}{i}")).collect();
        let devices = connections::seed_devices(url, &account, clients).await?;
        Ok(Some(std::sync::Arc::new(devices)))
    }
}

#[derive(Subcommand)]
enum Command {
    /// P publishers → S subscribers on one topic.
    Throughput(ThroughputArgs),
    /// Statuses published until their events are committed.
    Pipeline(PipelineArgs),
    /// QoS 1 statuses from many devices: publish-to-PUBACK latency and PUBACK rate.
    Puback(PubackArgs),
    /// Raw batched inserts into the store's event log.
    RawInsert(RawInsertArgs),
    /// Broker memory per idle connection.
    Idle(IdleArgs),
    /// Broker memory per fleet-shaped device: retained Will and status, account subscription.
    Fleet(FleetArgs),
    /// Connect/report/disconnect cycles until every event is recorded.
    Churn(ChurnArgs),
    /// Pages of the live connections list with many devices connected.
    ListConnections(ListArgs),
    /// Round trip between two clients through their inbox topics at a fixed load.
    Signalling(SignallingArgs),
    /// Devices reconnecting all at once after a restart of Cradle (the bench runs Cradle).
    RestartStorm(RestartStormArgs),
    /// Cradle's memory per idle WebSocket session (open mode).
    WsIdle(WsIdleArgs),
    /// Round trip WebSocket client → MQTT device → WebSocket client at a fixed load.
    WsSignalling(WsSignallingArgs),
    /// Presence history routes on a large log (scripts/history-perf): latency per route.
    History(bench::history::HistoryArgs),
    /// Followers of one account's live event stream while statuses commit: publish → delivery
    /// and commit → delivery per event and follower (two result lines).
    StreamFollowers(StreamFollowersArgs),
    /// Reads result lines on stdin and prints Markdown; the header is read from a file.
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct StreamFollowersArgs {
    #[command(flatten)]
    target: Target,
    /// Cradle's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    #[arg(long, default_value_t = 1000)]
    followers: usize,
    /// Statuses committed while they follow.
    #[arg(long, default_value_t = 2000)]
    events: u64,
    /// Offered statuses per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
}

// Each subcommand's arguments. No doc comments on these structs: each subcommand's help
// is the line on its variant above.

#[derive(clap::Args)]
struct ThroughputArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    #[arg(long, default_value_t = 100)]
    payload: usize,
    #[arg(long, default_value_t = 0)]
    qos: u8,
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
}

#[derive(clap::Args)]
struct PipelineArgs {
    #[command(flatten)]
    target: Target,
    /// Cradle's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    #[arg(long, default_value_t = 50_000)]
    clients: u64,
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    #[arg(long, default_value_t = 120)]
    max_secs: u64,
    /// Offered statuses per second (0: as fast as the pipeline accepts).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

#[derive(clap::Args)]
struct PubackArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Unacknowledged statuses per device at most.
    #[arg(long, default_value_t = 10)]
    window: usize,
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Offered statuses per second over all devices (0: as fast as acknowledged).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 120)]
    max_secs: u64,
}

#[derive(clap::Args)]
struct RawInsertArgs {
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value = "sqlite")]
    label: String,
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, default_value_t = 512)]
    batch: usize,
}

#[derive(clap::Args)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    #[command(flatten)]
    auth: Auth,
}

#[derive(clap::Args)]
struct FleetArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    count: usize,
}

#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    #[arg(long, default_value_t = 20)]
    walks: usize,
    #[arg(long, default_value_t = 1000)]
    page: usize,
}

#[derive(clap::Args)]
struct ChurnArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    #[arg(long, default_value_t = 5000)]
    count: u64,
    #[arg(long, default_value_t = 50)]
    parallel: u64,
    #[arg(long, default_value_t = 120)]
    max_secs: u64,
    #[command(flatten)]
    auth: Auth,
}

#[derive(clap::Args)]
struct SignallingArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    #[arg(long, default_value_t = 200)]
    payload: usize,
}

#[derive(clap::Args)]
struct RestartStormArgs {
    /// The `cradle` binary to run.
    #[arg(long, default_value = "target/release/cradle")]
    cradle_bin: std::path::PathBuf,
    /// Cradle's store; the devices are provisioned in it.
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    #[arg(long, default_value_t = 180)]
    max_secs: u64,
}

#[derive(clap::Args)]
struct WsIdleArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    #[arg(long, default_value_t = 1000)]
    count: usize,
}

#[derive(clap::Args)]
struct WsSignallingArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    #[arg(long, default_value_t = 5000)]
    rate: u64,
}

#[derive(clap::Args)]
struct ReportArgs {
    #[arg(long)]
    header: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cradle-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    finish(result)
}

/// Runs one subcommand: a scenario's result, or `None` for `report` (it prints Markdown).
async fn run(command: Command) -> Result<Option<BenchResult>, String> {
    let r = match command {
        Command::Throughput(a) => run_throughput(a).await,
        Command::Pipeline(a) => run_pipeline(a).await,
        Command::Puback(a) => run_puback(a).await,
        Command::RawInsert(a) => run_raw_insert(a).await,
        Command::Idle(a) => run_idle(a).await,
        Command::Fleet(a) => {
            bench::fleet::run(&a.target.broker, &a.target.label, a.target.pid, a.count).await
        }
        Command::ListConnections(a) => {
            connections::list_connections(connections::Listing {
                broker: a.target.broker,
                http: a.http,
                database_url: a.database_url,
                count: a.count,
                walks: a.walks,
                page: a.page,
                label: a.target.label,
            })
            .await
        }
        Command::Churn(a) => run_churn(a).await,
        Command::Signalling(a) => run_signalling(a).await,
        Command::RestartStorm(a) => run_restart_storm(a).await,
        Command::WsIdle(a) => {
            websocket::idle(&a.http, &a.target.label, a.target.pid, a.count).await
        }
        Command::WsSignalling(a) => run_ws_signalling(a).await,
        Command::History(a) => {
            bench::history::run(a).await.map_err(|e| e.to_string())?;
            return Ok(None);
        }
        Command::StreamFollowers(a) => {
            let rows = bench::stream::run(bench::stream::StreamFollowers {
                http: a.http,
                broker: a.target.broker,
                pid: a.target.pid,
                followers: a.followers,
                events: a.events,
                rate: a.rate,
                max_secs: a.max_secs,
            })
            .await
            .map_err(|e| e.to_string())?;
            for r in rows {
                println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
            }
            return Ok(None);
        }
        Command::Report(a) => {
            run_report(a)?;
            return Ok(None);
        }
    };
    r.map(Some).map_err(|e| e.to_string())
}

/// Prints the result line (or the error) and says how the process exits.
fn finish(result: Result<Option<BenchResult>, String>) -> ExitCode {
    match result {
        Ok(Some(r)) => {
            match serde_json::to_string(&r) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("cradle-bench: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cradle-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `throughput`: P publishers → S subscribers on one topic.
async fn run_throughput(a: ThroughputArgs) -> Result<BenchResult, bench::BenchError> {
    throughput::run(throughput::Throughput {
        broker: a.target.broker,
        label: a.target.label,
        pid: a.target.pid,
        publishers: a.publishers,
        subscribers: a.subscribers,
        messages: a.messages,
        payload: a.payload,
        qos: a.qos,
        max_secs: a.max_secs,
    })
    .await
}

/// `pipeline`: statuses published until their events are committed.
async fn run_pipeline(a: PipelineArgs) -> Result<BenchResult, bench::BenchError> {
    pipeline::run(pipeline::Pipeline {
        broker: a.target.broker,
        http: a.http,
        label: a.target.label,
        pid: a.target.pid,
        clients: a.clients,
        publishers: a.publishers,
        max_secs: a.max_secs,
        rate: a.rate,
    })
    .await
}

/// `puback`: QoS 1 statuses from many devices, publish-to-PUBACK latency and rate.
async fn run_puback(a: PubackArgs) -> Result<BenchResult, bench::BenchError> {
    puback::run(puback::Puback {
        broker: a.target.broker,
        label: a.target.label,
        pid: a.target.pid,
        devices: a.devices,
        window: a.window,
        messages: a.messages,
        rate: a.rate,
        max_secs: a.max_secs,
    })
    .await
}

/// `raw-insert`: raw batched inserts into the store's event log.
async fn run_raw_insert(a: RawInsertArgs) -> Result<BenchResult, bench::BenchError> {
    pipeline::raw_insert(pipeline::RawInsert {
        database_url: a.database_url,
        label: a.label,
        events: a.events,
        batch: a.batch,
    })
    .await
}

/// `idle`: broker memory per idle connection (seeding devices first with authentication on).
async fn run_idle(a: IdleArgs) -> Result<BenchResult, bench::BenchError> {
    let devices = a.auth.devices("idle", a.count).await?;
    connections::idle(
        &a.target.broker,
        &a.target.label,
        a.target.pid,
        a.count,
        devices,
    )
    .await
}

/// `churn`: connect/report/disconnect cycles (seeding devices first with authentication on).
async fn run_churn(a: ChurnArgs) -> Result<BenchResult, bench::BenchError> {
    let devices = a.auth.devices("churn", a.parallel as usize).await?;
    connections::churn(connections::Churn {
        broker: a.target.broker,
        http: a.http,
        label: a.target.label,
        pid: a.target.pid,
        count: a.count,
        parallel: a.parallel,
        max_secs: a.max_secs,
        devices,
    })
    .await
}

/// `signalling`: round trip between two clients through their inbox topics.
async fn run_signalling(a: SignallingArgs) -> Result<BenchResult, bench::BenchError> {
    signalling::run(signalling::Signalling {
        broker: a.target.broker,
        label: a.target.label,
        pid: a.target.pid,
        messages: a.messages,
        rate: a.rate,
        payload: a.payload,
    })
    .await
}

/// `restart-storm`: devices reconnecting all at once after a restart of Cradle.
async fn run_restart_storm(a: RestartStormArgs) -> Result<BenchResult, bench::BenchError> {
    bench::storm::restart_storm(bench::storm::StormOptions {
        cradle_bin: a.cradle_bin,
        database_url: a.database_url,
        count: a.count,
        max_secs: a.max_secs,
    })
    .await
}

/// `ws-signalling`: round trip WebSocket client → MQTT device → WebSocket client.
async fn run_ws_signalling(a: WsSignallingArgs) -> Result<BenchResult, bench::BenchError> {
    websocket::signalling(websocket::WsSignalling {
        http: a.http,
        broker: a.target.broker,
        label: a.target.label,
        pid: a.target.pid,
        messages: a.messages,
        rate: a.rate,
    })
    .await
}

/// `report`: reads result lines on stdin and prints them as Markdown under the header.
fn run_report(a: ReportArgs) -> Result<(), String> {
    let header = match a.header {
        Some(p) => std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => "# Benchmarks".to_string(),
    };
    let mut results = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        results.push(serde_json::from_str(&line).map_err(|e| format!("bad result line: {e}"))?);
    }
    print!("{}", bench::report::markdown(&results, &header));
    Ok(())
}
