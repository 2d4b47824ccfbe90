//! Reconnect storm (issue 15): `count` authenticated devices connected, each with its status
//! reported, Cradle restarted (SIGTERM, started again on the same store), and every device
//! reconnecting at once with jittered exponential backoff and reporting a new connection.
//! One device in five never reports (no Will, no status): the edge's observation alone
//! records it. Reports the time from the restart until every device is recorded connected
//! again, the events lost and duplicated (each device must have exactly two
//! `connection.connected`, one `connection.disconnected` and, if it reports, two
//! `connection.reported`), and the restarted Cradle's peak memory.
//!
//! The bench runs Cradle itself (`--cradle-bin`), on free loopback ports and its embedded
//! broker, so that it can restart it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{LastWill, Publish};
use rumqttc::mqttbytes::QoS;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connections::{open, Device};
use super::storm_pwa::{self, PwaStats};
use super::{metric, proc_stats, run_id, BenchError, BenchResult, ProcStats};
use crate::store::{events, Store};

/// What the storm runs against.
pub struct StormOptions {
    /// The `cradle` binary to start and restart.
    pub cradle_bin: PathBuf,
    /// Cradle's store (devices are provisioned in it).
    pub database_url: String,
    /// Devices.
    pub count: usize,
    /// Longest wait for the storm to settle, seconds.
    pub max_secs: u64,
}

/// A Cradle process the bench started.
struct Cradle {
    child: Child,
    mqtt: u16,
    http: String,
    http_port: u16,
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cradle {
    /// Starts Cradle on free ports (the same MQTT port when `mqtt` is given) and waits until
    /// `/readyz` answers.
    async fn start(
        opts: &StormOptions,
        dir: &std::path::Path,
        ports: Option<(u16, u16)>,
    ) -> Result<Cradle, BenchError> {
        let (mqtt, http) = match ports {
            Some(p) => p,
            None => (free_port()?, free_port()?),
        };
        let (v5, ws) = (free_port()?, free_port()?);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("cradle.log"))?;
        // Canonical: a relative program path would be taken relative to `dir`.
        let bin = std::fs::canonicalize(&opts.cradle_bin)?;
        let child = Command::new(bin)
            .arg("serve")
            .current_dir(dir)
            .env("CRADLE_DATABASE_URL", &opts.database_url)
            .env("CRADLE_MQTT_LISTEN", format!("127.0.0.1:{mqtt}"))
            .env("CRADLE_MQTT_V5_LISTEN", format!("127.0.0.1:{v5}"))
            .env("CRADLE_MQTT_WS_LISTEN", format!("127.0.0.1:{ws}"))
            .env("CRADLE_HTTP_LISTEN", format!("127.0.0.1:{http}"))
            .env("CRADLE_MQTT_PUBLISH_RATE", "0")
            .env("CRADLE_LOG", "warn,rumqttd=off")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let http_port = http;
        let http = format!("http://127.0.0.1:{http}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let ready = reqwest::get(format!("{http}/readyz")).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(Cradle {
                    child,
                    mqtt,
                    http,
                    http_port,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BenchError::Target("cradle not ready within 60 s".into()))
    }

    /// SIGTERM, and waits for the exit.
    fn terminate(&mut self) -> Result<(), BenchError> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }
}

/// Whether device `i` reports its status (four in five do).
fn reports(i: usize) -> bool {
    i % 5 != 4
}

/// One device's life: connect, report `k1`, wait for the server to close the connection (the
/// restart), then reconnect with jittered exponential backoff and report `k2`; holds the
/// connection until `stop`. A device that does not [`reports`] sets no Will and says nothing.
async fn device(
    i: usize,
    d: Device,
    port: u16,
    connected: Arc<AtomicU64>,
    stop: Arc<tokio::sync::Notify>,
    last_reconnect: Arc<AtomicU64>,
) -> Result<(), BenchError> {
    let topic = format!("accounts/{}/clients/{}/status", d.account, d.client);
    let mut c = rumqttc::mqttbytes::v4::Connect::new(d.client.clone());
    c.set_login(d.account.clone(), d.secret.clone());
    c.keep_alive = 600;
    for (round, k) in ["k1", "k2"].into_iter().enumerate() {
        let at = crate::clock::now_millis();
        c.last_will = reports(i).then(|| LastWill::new(
            topic.clone(),
            format!(
                r#"{{"type":"disconnected","connection_id":"{k}","reason":"lost","at_millis":{at}}}"#
            ),
            QoS::AtLeastOnce,
            true,
        ));
        let mut attempt = 0;
        let mut stream = loop {
            match open("127.0.0.1", port, &c).await {
                Ok(s) => break s,
                Err(_) => {
                    attempt += 1;
                    let cap = (100u64 << attempt.min(6)).min(5_000);
                    tokio::time::sleep(Duration::from_millis(super::jitter(i, attempt, cap))).await;
                }
            }
        };
        let mut up = Publish::new(
            topic.clone(),
            QoS::AtMostOnce,
            format!(r#"{{"type":"connected","connection_id":"{k}","at_millis":{at}}}"#),
        );
        up.retain = true;
        let mut buf = BytesMut::new();
        up.write(&mut buf)
            .map_err(|e| BenchError::Target(format!("encode: {e:?}")))?;
        if reports(i) {
            stream.write_all(&buf).await?;
        }
        connected.fetch_add(1, Relaxed);
        if round == 1 {
            last_reconnect.fetch_max(crate::clock::now_millis() as u64, Relaxed);
        }
        let mut sink = [0u8; 256];
        if round == 0 {
            // Until the server goes away.
            while !matches!(stream.read(&mut sink).await, Ok(0) | Err(_)) {}
        } else {
            stop.notified().await;
        }
    }
    Ok(())
}

/// Recorded `(type, connection_id)` sequences by `(account, client)`, in the run's accounts.
type ByClient = HashMap<(String, String), Vec<(String, String)>>;

async fn recorded(store: &Store, run: &str) -> Result<ByClient, BenchError> {
    let rows = events::Entity::find()
        .filter(events::Column::AccountId.starts_with(format!("storm-{run}-")))
        .order_by_asc(events::Column::Position)
        .all(store.db())
        .await
        .map_err(|e| BenchError::Target(e.to_string()))?;
    let mut by_client = ByClient::new();
    for e in rows {
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap_or_default();
        let field = |k: &str| data[k].as_str().unwrap_or_default().to_string();
        by_client
            .entry((e.account_id, field("client_id")))
            .or_default()
            .push((e.event_type, field("connection_id")));
    }
    Ok(by_client)
}

/// Creates the run's accounts (families of `FAMILY` devices and one PWA), a device
/// credential per device and a bearer token per account; returns the devices and the
/// `(account, token)` pairs.
async fn seed(
    database_url: &str,
    run: &str,
    count: usize,
) -> Result<(Vec<Device>, Vec<(String, String)>), BenchError> {
    let target = |e: crate::accounts::AccountsError| BenchError::Target(e.to_string());
    let store = super::open_store(database_url).await?;
    let (mut devices, mut tokens) = (Vec::with_capacity(count), Vec::new());
    for (a, first) in (0..count).step_by(FAMILY).enumerate() {
        let account = format!("storm-{run}-{a}");
        crate::accounts::create_account(&store, &account, "cradle-bench")
            .await
            .map_err(target)?;
        let clients: Vec<String> = (first..(first + FAMILY).min(count))
            .map(|i| format!("dev-{i}"))
            .collect();
        let issued = crate::accounts::issue_devices(&store, &account, &clients)
            .await
            .map_err(target)?;
        devices.extend(issued.into_iter().zip(clients).map(|(i, client)| Device {
            account: account.clone(),
            client,
            secret: i.secret,
        }));
        let kind = crate::accounts::CredentialKind::Token;
        let token = crate::accounts::issue(&store, kind, Some(&account), None)
            .await
            .map_err(target)?;
        tokens.push((account, token.secret));
    }
    Ok((devices, tokens))
}

/// Devices per account, with one PWA each (a family).
const FAMILY: usize = 10;

/// PWA connections recorded other than exactly one `connected` each (a handed-over session
/// is never ended by the restart, nor connected again).
fn pwa_anomalies(by_client: &ByClient) -> u64 {
    by_client
        .iter()
        .filter(|((_, client), _)| client.starts_with("pwa-"))
        .map(|(_, got)| {
            let connected = got
                .iter()
                .filter(|(t, _)| t == "connection.connected")
                .count();
            (got.len() - connected) as u64 + (connected as u64).abs_diff(1)
        })
        .sum()
}

/// Missing and extra events against the expected ones per device: two connections, the
/// first ended by the restart, each reported by a device that [`reports`].
fn lost_and_duplicated(devices: &[Device], by_client: &ByClient) -> (u64, u64) {
    let (mut lost, mut extra) = (0, 0);
    for (i, d) in devices.iter().enumerate() {
        let got = by_client
            .get(&(d.account.clone(), d.client.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let reported: u64 = if reports(i) { 2 } else { 0 };
        let expected: [(&str, u64); 3] = [
            ("connection.connected", 2),
            ("connection.disconnected", 1),
            ("connection.reported", reported),
        ];
        for (t, want) in expected {
            let n = got.iter().filter(|(gt, _)| gt == t).count() as u64;
            lost += want.saturating_sub(n);
            extra += n.saturating_sub(want);
        }
        extra += got
            .iter()
            .filter(|(gt, _)| !expected.iter().any(|(t, _)| gt == t))
            .count() as u64;
    }
    (lost, extra)
}

/// Waits until Cradle at `http` recorded `n` connections since it started (or `deadline`);
/// whether it did.
async fn until_connected(http: &str, n: u64, deadline: Instant) -> Result<bool, BenchError> {
    let series = "cradle_events_appended_total{type=\"connection.connected\"}";
    while Instant::now() < deadline {
        if metric(http, series).await? >= n {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(false)
}

/// Runs the storm and reports it.
pub async fn restart_storm(opts: StormOptions) -> Result<BenchResult, BenchError> {
    let run = run_id();
    let (devices, tokens) = seed(&opts.database_url, &run, opts.count).await?;
    let dir = std::env::temp_dir().join(format!("cradle-storm-{run}"));
    std::fs::create_dir_all(&dir)?;
    let mut first = Cradle::start(&opts, &dir, None).await?;
    let (port, http_port) = (first.mqtt, first.http_port);
    let stop = Arc::new(tokio::sync::Notify::new());
    let last_reconnect = Arc::new(AtomicU64::new(0));
    let mut tasks = spawn_devices(&devices, port, &stop, &last_reconnect).await;
    let n = opts.count as u64;
    let limit = Duration::from_secs(opts.max_secs);
    until_connected(&first.http, n, Instant::now() + limit).await?;
    // One PWA per account, opened once its devices are connected.
    let pwas = Arc::new(PwaStats::default());
    tasks.extend(open_pwas(&first.http, &tokens, &pwas).await);
    let m = tokens.len() as u64;
    until_connected(&first.http, n + m, Instant::now() + limit).await?;
    first.terminate()?;
    let restarted = Instant::now();
    let restarted_millis = crate::clock::now_millis() as u64;
    let second = Cradle::start(&opts, &dir, Some((port, http_port))).await?;
    let ready_secs = restarted.elapsed().as_secs_f64();
    let pid = Some(second.child.id());
    let before = proc_stats(pid);
    let all_connected = until_connected(&second.http, n, restarted + limit)
        .await?
        .then(|| restarted.elapsed().as_secs_f64());
    while pwas.resumed.load(Relaxed) + pwas.gone.load(Relaxed) < m
        && Instant::now() < restarted + limit
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = proc_stats(pid);
    let store = super::open_store(&opts.database_url).await?;
    let by_client = recorded(&store, &run).await?;
    let (lost, duplicated) = lost_and_duplicated(&devices, &by_client);
    let pwa_events = pwa_anomalies(&by_client);
    stop.notify_waiters();
    let mut second = second;
    second.terminate()?;
    for t in tasks {
        t.abort();
    }
    let measured = Measured {
        devices: n,
        pwas: m,
        all_connected,
        limit,
        ready_secs,
        restarted_millis,
        lost,
        duplicated,
        pwa_events,
        before,
        after,
    };
    let r = storm_result(&measured, &last_reconnect, &pwas);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r)
}

/// Starts every device's task against the MQTT `port`, pausing 5 ms after each hundred.
async fn spawn_devices(
    devices: &[Device],
    port: u16,
    stop: &Arc<tokio::sync::Notify>,
    last_reconnect: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Result<(), BenchError>>> {
    let connected = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().cloned().enumerate() {
        let (connected, stop, last) = (connected.clone(), stop.clone(), last_reconnect.clone());
        tasks.push(tokio::spawn(device(i, d, port, connected, stop, last)));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tasks
}

/// Starts one PWA per `(account, token)` against Cradle at `http` and waits up to 30 s for
/// them all to open; returns their tasks.
async fn open_pwas(
    http: &str,
    tokens: &[(String, String)],
    pwas: &Arc<PwaStats>,
) -> Vec<tokio::task::JoinHandle<Result<(), BenchError>>> {
    let mut tasks = Vec::with_capacity(tokens.len());
    for (i, (account, token)) in tokens.iter().enumerate() {
        let (http, account, token) = (http.to_string(), account.clone(), token.clone());
        tasks.push(tokio::spawn(storm_pwa::pwa(
            i,
            http,
            account,
            token,
            pwas.clone(),
        )));
    }
    let m = tokens.len() as u64;
    let opened = Instant::now() + Duration::from_secs(30);
    while pwas.opened.load(Relaxed) < m && Instant::now() < opened {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks
}

/// What one storm measured, for its report.
struct Measured {
    /// Devices in the storm.
    devices: u64,
    /// PWAs in the storm (one per account).
    pwas: u64,
    /// Seconds after the restart until every device was recorded connected again, if it was.
    all_connected: Option<f64>,
    /// The run's time limit.
    limit: Duration,
    /// Seconds the second Cradle took to be ready.
    ready_secs: f64,
    /// When Cradle was restarted (Unix milliseconds).
    restarted_millis: u64,
    /// Device events missing from the store.
    lost: u64,
    /// Device events recorded twice.
    duplicated: u64,
    /// PWA connections ended or reconnected.
    pwa_events: u64,
    /// The second Cradle's process figures after its start and at the end.
    before: Option<ProcStats>,
    after: Option<ProcStats>,
}

/// The storm's result line: devices a second until all were back, and the note on the last
/// reconnects, lost and duplicated events, PWAs and the restart.
fn storm_result(s: &Measured, last_reconnect: &AtomicU64, pwas: &PwaStats) -> BenchResult {
    let (n, m, lost, duplicated, pwa_events) =
        (s.devices, s.pwas, s.lost, s.duplicated, s.pwa_events);
    let (restarted_millis, ready_secs) = (s.restarted_millis, s.ready_secs);
    let seconds = s.all_connected.unwrap_or(s.limit.as_secs_f64());
    let mut r = BenchResult::new(
        "restart-storm",
        "cradle",
        format!("{n} authenticated devices and {m} PWAs ({FAMILY} devices + 1 PWA per account), SIGTERM + restart on the same store, all reconnecting with jittered backoff (100 ms doubling to 5 s)"),
        "devices/s",
    );
    r.counted(n * 3 - lost, n * 3, seconds);
    r.rate = n as f64 / seconds.max(1e-9);
    r.process(s.before, s.after);
    let last_secs = last_reconnect
        .load(Relaxed)
        .saturating_sub(restarted_millis) as f64
        / 1000.0;
    let pwa_secs = pwas
        .last_resume
        .load(Relaxed)
        .saturating_sub(restarted_millis) as f64
        / 1000.0;
    r.note = format!(
        "{} until every device was recorded connected again (the last device reconnected at {last_secs:.2} s, its backoff); events lost {lost}, duplicated {duplicated}; PWAs: {} of {m} resumed, the last at {pwa_secs:.2} s, {} gone (410), frames lost {}, repeated {}, PWA connections ended or reconnected {pwa_events}; restart {ready_secs:.2} s to ready",
        match s.all_connected {
            Some(secs) => format!("{secs:.2} s"),
            None => "not settled".to_string(),
        },
        pwas.resumed.load(Relaxed),
        pwas.gone.load(Relaxed),
        pwas.lost.load(Relaxed),
        pwas.repeated.load(Relaxed),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Given the expected events per device (two connections, one end, and two reports from
    /// a device that reports), when one is missing and one repeated, then each is counted once.
    #[test]
    fn lost_and_duplicated_events_are_counted_per_device() {
        let d = |c: &str| Device {
            account: "a".into(),
            client: c.into(),
            secret: String::new(),
        };
        let e = |t: &str, k: &str| (format!("connection.{t}"), k.to_string());
        let mut by_client = HashMap::new();
        // Device 0 reports: complete.
        by_client.insert(
            ("a".to_string(), "x".to_string()),
            vec![
                e("connected", "k1"),
                e("reported", "k1"),
                e("disconnected", "k1"),
                e("connected", "m-2"),
                e("reported", "m-2"),
            ],
        );
        // Device 1 reports: its end is missing, its first start recorded twice.
        by_client.insert(
            ("a".to_string(), "y".to_string()),
            vec![
                e("connected", "k1"),
                e("connected", "k1"),
                e("reported", "k1"),
                e("connected", "k2"),
                e("reported", "k2"),
            ],
        );
        // Device 4 never reports: complete without reports.
        by_client.insert(
            ("a".to_string(), "w".to_string()),
            vec![
                e("connected", "m-1"),
                e("disconnected", "m-1"),
                e("connected", "m-2"),
            ],
        );
        let devices = [d("x"), d("y"), d("2"), d("3"), d("w")];
        // Devices 2 and 3 report but recorded nothing: 5 events each missing.
        assert_eq!(lost_and_duplicated(&devices, &by_client), (1 + 10, 1));
        assert!(crate::bench::jitter(3, 2, 400) < 400);
    }
}
