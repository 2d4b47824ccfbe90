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
    Throughput {
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
    },
    /// Statuses published until their events are committed.
    Pipeline {
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
    },
    /// QoS 1 statuses from many devices: publish-to-PUBACK latency and PUBACK rate.
    Puback {
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
    },
    /// Raw batched inserts into the store's event log.
    RawInsert {
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value = "sqlite")]
        label: String,
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        #[arg(long, default_value_t = 512)]
        batch: usize,
    },
    /// Broker memory per idle connection.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[command(flatten)]
        auth: Auth,
    },
    /// Connect/report/disconnect cycles until every event is recorded.
    Churn {
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
    },
    /// Round trip between two clients through their inbox topics at a fixed load.
    Signalling {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 200)]
        payload: usize,
    },
    /// Devices reconnecting all at once after a restart of Cradle (the bench runs Cradle).
    RestartStorm {
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
    },
    /// Cradle's memory per idle WebSocket session (open mode).
    WsIdle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        http: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Round trip WebSocket client → MQTT device → WebSocket client at a fixed load.
    WsSignalling {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        http: String,
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        #[arg(long, default_value_t = 5000)]
        rate: u64,
    },
    /// Reads result lines on stdin and prints Markdown; the header is read from a file.
    Report {
        #[arg(long)]
        header: Option<std::path::PathBuf>,
    },
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
    let result: Result<Option<BenchResult>, String> = runtime.block_on(async {
        let r = match cli.command {
            Command::Throughput {
                target,
                publishers,
                subscribers,
                messages,
                payload,
                qos,
                max_secs,
            } => {
                throughput::run(throughput::Throughput {
                    broker: target.broker,
                    label: target.label,
                    pid: target.pid,
                    publishers,
                    subscribers,
                    messages,
                    payload,
                    qos,
                    max_secs,
                })
                .await
            }
            Command::Pipeline {
                target,
                http,
                clients,
                publishers,
                max_secs,
                rate,
            } => {
                pipeline::run(pipeline::Pipeline {
                    broker: target.broker,
                    http,
                    label: target.label,
                    pid: target.pid,
                    clients,
                    publishers,
                    max_secs,
                    rate,
                })
                .await
            }
            Command::Puback {
                target,
                devices,
                window,
                messages,
                rate,
                max_secs,
            } => {
                puback::run(puback::Puback {
                    broker: target.broker,
                    label: target.label,
                    pid: target.pid,
                    devices,
                    window,
                    messages,
                    rate,
                    max_secs,
                })
                .await
            }
            Command::RawInsert {
                database_url,
                label,
                events,
                batch,
            } => {
                pipeline::raw_insert(pipeline::RawInsert {
                    database_url,
                    label,
                    events,
                    batch,
                })
                .await
            }
            Command::Idle {
                target,
                count,
                auth,
            } => match auth.devices("idle", count).await {
                Ok(devices) => {
                    connections::idle(&target.broker, &target.label, target.pid, count, devices)
                        .await
                }
                Err(e) => Err(e),
            },
            Command::Churn {
                target,
                http,
                count,
                parallel,
                max_secs,
                auth,
            } => match auth.devices("churn", parallel as usize).await {
                Ok(devices) => {
                    connections::churn(
                        &target.broker,
                        &http,
                        &target.label,
                        target.pid,
                        count,
                        parallel,
                        max_secs,
                        devices,
                    )
                    .await
                }
                Err(e) => Err(e),
            },
            Command::Signalling {
                target,
                messages,
                rate,
                payload,
            } => {
                signalling::run(signalling::Signalling {
                    broker: target.broker,
                    label: target.label,
                    pid: target.pid,
                    messages,
                    rate,
                    payload,
                })
                .await
            }
            Command::RestartStorm {
                cradle_bin,
                database_url,
                count,
                max_secs,
            } => {
                bench::storm::restart_storm(bench::storm::StormOptions {
                    cradle_bin,
                    database_url,
                    count,
                    max_secs,
                })
                .await
            }
            Command::WsIdle {
                target,
                http,
                count,
            } => websocket::idle(&http, &target.label, target.pid, count).await,
            Command::WsSignalling {
                target,
                http,
                messages,
                rate,
            } => {
                websocket::signalling(websocket::WsSignalling {
                    http,
                    broker: target.broker,
                    label: target.label,
                    pid: target.pid,
                    messages,
                    rate,
                })
                .await
            }
            Command::Report { header } => {
                let header = match header {
                    Some(p) => {
                        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?
                    }
                    None => "# Benchmarks".to_string(),
                };
                let mut results = Vec::new();
                for line in std::io::stdin().lock().lines() {
                    let line = line.map_err(|e| e.to_string())?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    results.push(
                        serde_json::from_str(&line).map_err(|e| format!("bad result line: {e}"))?,
                    );
                }
                print!("{}", bench::report::markdown(&results, &header));
                return Ok(None);
            }
        };
        r.map(Some).map_err(|e| e.to_string())
    });
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
