//! Connection capacity: memory per idle MQTT connection, and connect/disconnect churn with
//! every resulting event recorded.
//!
//! Connections are raw TCP sockets speaking MQTT 3.1.1 through rumqttc's packet codecs, so
//! the bench itself stays small at 10k connections and the figures are the broker's.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Disconnect, LastWill, Publish};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{broker_addr, metric, proc_stats, run_id, BenchError, BenchResult};

/// A device the bench connects as, with authentication on: MQTT username = account,
/// client id, password = the device secret.
#[derive(Clone)]
pub struct Device {
    /// Account id (the username).
    pub account: String,
    /// MQTT client id (the credential's client).
    pub client: String,
    /// Device secret (the password).
    pub secret: String,
}

/// Creates account `account` in Cradle's store at `database_url` and issues a device
/// credential for each of `clients` (one transaction), as an operator provisioning a fleet.
pub async fn seed_devices(
    database_url: &str,
    account: &str,
    clients: Vec<String>,
) -> Result<Vec<Device>, BenchError> {
    let target = |e: crate::accounts::AccountsError| BenchError::Target(e.to_string());
    let store = super::open_store(database_url).await?;
    crate::accounts::create_account(&store, account, "cradle-bench")
        .await
        .map_err(target)?;
    let issued = crate::accounts::issue_devices(&store, account, &clients)
        .await
        .map_err(target)?;
    Ok(issued
        .into_iter()
        .zip(clients)
        .map(|(i, client)| Device {
            account: account.to_string(),
            client,
            secret: i.secret,
        })
        .collect())
}

/// The CONNECT of client `i`: as device `i` when `devices` are given, else anonymous as
/// `{prefix}{i}`.
fn connect_as(devices: Option<&[Device]>, prefix: &str, i: usize, keep_alive: u16) -> Connect {
    let mut c = match devices.and_then(|d| d.get(i)) {
        Some(d) => {
            let mut c = Connect::new(d.client.clone());
            c.set_login(d.account.clone(), d.secret.clone());
            c
        }
        None => Connect::new(format!("{prefix}{i}")),
    };
    c.keep_alive = keep_alive;
    c
}

/// Connects with `connect` and waits for an accepting CONNACK.
pub(super) async fn open(
    host: &str,
    port: u16,
    connect: &Connect,
) -> Result<TcpStream, BenchError> {
    let mut stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::new();
    connect
        .write(&mut buf)
        .map_err(|e| BenchError::Target(format!("encode CONNECT: {e:?}")))?;
    stream.write_all(&buf).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut connack))
        .await
        .map_err(|_| BenchError::Target("no CONNACK within 10 s".into()))??;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(BenchError::Target(format!("CONNACK refused: {connack:?}")));
    }
    Ok(stream)
}

/// Opens `count` idle connections and reports the broker's resident memory per connection.
pub async fn idle(
    broker: &str,
    label: &str,
    pid: Option<u32>,
    count: usize,
    devices: Option<Arc<Vec<Device>>>,
) -> Result<BenchResult, BenchError> {
    let (host, port) = broker_addr(broker)?;
    if devices.as_ref().is_some_and(|d| d.len() < count) {
        return Err(BenchError::Usage("fewer devices than connections".into()));
    }
    if pid.is_none() {
        return Err(BenchError::Usage(
            "idle memory needs --pid of the broker".into(),
        ));
    }
    let run = run_id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc_stats(pid);
    let started = Instant::now();
    let mut streams = Vec::with_capacity(count);
    let parallel = 100;
    let mut next = 0;
    while next < count {
        let n = parallel.min(count - next);
        let mut batch = Vec::with_capacity(n);
        for i in next..next + n {
            let host = host.clone();
            let c = connect_as(
                devices.as_deref().map(|d| &d[..]),
                &format!("idle-{run}-"),
                i,
                600,
            );
            batch.push(tokio::spawn(async move { open(&host, port, &c).await }));
        }
        for b in batch {
            streams.push(b.await.map_err(|e| BenchError::Target(e.to_string()))??);
        }
        next += n;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = proc_stats(pid);
    let mut r = BenchResult::new(
        &super::count_name("idle-memory", count),
        label,
        match devices {
            Some(_) => format!("{count} idle MQTT 3.1.1 devices, authenticated"),
            None => format!("{count} idle MQTT 3.1.1 connections"),
        },
        "KiB/conn",
    );
    r.memory_per_connection(
        count,
        streams.len(),
        connect_secs,
        before,
        after,
        "connects",
    );
    drop(streams);
    Ok(r)
}

/// Parameters of a churn run.
#[derive(Clone)]
pub struct Churn {
    /// Broker URL.
    pub broker: String,
    /// Cradle's HTTP base URL (its `/metrics` count the recorded events).
    pub http: String,
    /// Name in the report.
    pub label: String,
    /// The broker's pid.
    pub pid: Option<u32>,
    /// Cycles in all.
    pub count: u64,
    /// Client ids cycling at once.
    pub parallel: u64,
    /// Time limit for the events to be recorded.
    pub max_secs: u64,
    /// The devices to connect as, when authentication is on.
    pub devices: Option<Arc<Vec<Device>>>,
}

/// The two series whose sum counts the churn's recorded events.
const CONNECTED_SERIES: &str = "cradle_events_appended_total{type=\"connection.connected\"}";
const DISCONNECTED_SERIES: &str = "cradle_events_appended_total{type=\"connection.disconnected\"}";

/// Connects, reports `connected`, reports `disconnected` (clean) and disconnects, `count`
/// times over `parallel` client ids, and waits until Cradle recorded every event.
pub async fn churn(p: Churn) -> Result<BenchResult, BenchError> {
    let Churn {
        broker,
        http,
        label,
        pid,
        count,
        parallel,
        max_secs,
        devices,
    } = p;
    let (host, port) = broker_addr(&broker)?;
    if devices
        .as_ref()
        .is_some_and(|d| (d.len() as u64) < parallel)
    {
        return Err(BenchError::Usage(
            "fewer devices than parallel clients".into(),
        ));
    }
    let run = run_id();
    let account = match &devices {
        Some(d) => d[0].account.clone(),
        None => format!("churn-{run}"),
    };
    let base = recorded_events(&http).await?;
    let before = proc_stats(pid);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..parallel {
        let (host, account, next, run) = (host.clone(), account.clone(), next.clone(), run.clone());
        let devices = devices.clone();
        workers.push(tokio::spawn(async move {
            let prefix = format!("churn-{run}-w");
            let mut c = connect_as(devices.as_deref().map(|d| &d[..]), &prefix, w as usize, 60);
            let topic = format!("accounts/{account}/clients/{}/status", c.client_id);
            loop {
                let n = next.fetch_add(1, Relaxed);
                if n >= count {
                    return Ok::<(), BenchError>(());
                }
                churn_cycle(&host, port, &mut c, &topic, n).await?;
            }
        }));
    }
    for w in workers {
        w.await.map_err(|e| BenchError::Target(e.to_string()))??;
    }
    let cycle_secs = started.elapsed().as_secs_f64();
    let expected = count * 2;
    let recorded = super::wait_count(base, expected, max_secs, || recorded_events(&http)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let after = proc_stats(pid);
    let mut r = BenchResult::new(
        "churn",
        &label,
        format!(
            "{count} connect/report/disconnect cycles over {parallel} {}",
            if devices.is_some() {
                "authenticated devices"
            } else {
                "clients"
            }
        ),
        "cycles/s",
    );
    r.counted(recorded / 2, count, seconds);
    r.process(before, after);
    r.note =
        format!("{recorded} of {expected} events recorded; cycles alone took {cycle_secs:.2} s");
    Ok(r)
}

/// One cycle `n` of a churn client: connects (its will a `lost` disconnect), writes a retained
/// `connected`, a retained clean `disconnected` and DISCONNECT, and waits for the broker to close.
async fn churn_cycle(
    host: &str,
    port: u16,
    c: &mut Connect,
    topic: &str,
    n: u64,
) -> Result<(), BenchError> {
    let at = crate::clock::now_millis();
    c.last_will = Some(LastWill::new(
        topic,
        format!(
            r#"{{"type":"disconnected","connection_id":"k{n}","reason":"lost","at_millis":{at}}}"#
        ),
        QoS::AtLeastOnce,
        true,
    ));
    let mut stream = open(host, port, c).await?;
    let mut buf = BytesMut::new();
    let mut up = Publish::new(
        topic,
        QoS::AtMostOnce,
        format!(r#"{{"type":"connected","connection_id":"k{n}","at_millis":{at}}}"#),
    );
    up.retain = true;
    let mut down = Publish::new(
        topic,
        QoS::AtMostOnce,
        format!(
            r#"{{"type":"disconnected","connection_id":"k{n}","reason":"clean","at_millis":{}}}"#,
            at + 1
        ),
    );
    down.retain = true;
    let encode = |e| BenchError::Target(format!("encode: {e:?}"));
    up.write(&mut buf).map_err(encode)?;
    down.write(&mut buf).map_err(encode)?;
    Disconnect.write(&mut buf).map_err(encode)?;
    stream.write_all(&buf).await?;
    stream.flush().await?;
    // Wait for the broker to close after DISCONNECT, so the next connect of this
    // client id is not a takeover.
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}

/// Connection events Cradle has appended so far (connected + disconnected), from `/metrics`.
async fn recorded_events(http: &str) -> Result<u64, BenchError> {
    Ok(metric(http, CONNECTED_SERIES).await? + metric(http, DISCONNECTED_SERIES).await?)
}

/// Parameters of a listing run.
pub struct Listing {
    /// The MQTT edge's URL.
    pub broker: String,
    /// Cradle's HTTP base URL.
    pub http: String,
    /// Cradle's store (the devices and a token are seeded there).
    pub database_url: String,
    /// Devices connected.
    pub count: usize,
    /// Walks of every page.
    pub walks: usize,
    /// Connections per page.
    pub page: usize,
    /// Label of the target.
    pub label: String,
}

/// Connects `count` authenticated devices of one account, then walks every page of the
/// account's live connections (`GET /v1/accounts/{a}/connections`) `walks` times: the
/// latency of each page (p50, p99) and the time of the slowest whole walk.
pub async fn list_connections(p: Listing) -> Result<BenchResult, BenchError> {
    let (host, port) = broker_addr(&p.broker)?;
    let account = format!("bench-list-{}", run_id());
    let clients = (0..p.count).map(|i| format!("list{i}")).collect();
    let devices = seed_devices(&p.database_url, &account, clients).await?;
    let store = super::open_store(&p.database_url).await?;
    let token = crate::accounts::issue(
        &store,
        crate::accounts::CredentialKind::Token,
        Some(&account),
        None,
    )
    .await
    .map_err(|e| BenchError::Target(e.to_string()))?
    .secret;
    let mut streams = Vec::with_capacity(p.count);
    for chunk in devices.chunks(100) {
        let opened = chunk.iter().map(|d| {
            let mut c = Connect::new(d.client.clone());
            c.set_login(d.account.clone(), d.secret.clone());
            c.keep_alive = 600;
            let host = host.clone();
            tokio::spawn(async move { open(&host, port, &c).await })
        });
        for o in opened.collect::<Vec<_>>() {
            streams.push(o.await.map_err(|e| BenchError::Target(e.to_string()))??);
        }
    }
    let http = reqwest::Client::new();
    let mut pages = Vec::new();
    let mut slowest_walk = 0f64;
    let mut listed = 0;
    for _ in 0..p.walks {
        let walk = Instant::now();
        let mut after = String::new();
        listed = 0;
        loop {
            let url = format!(
                "{}/v1/accounts/{account}/connections?limit={}&after={after}",
                p.http, p.page
            );
            let started = Instant::now();
            let body: serde_json::Value = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| BenchError::Target(e.to_string()))?
                .json()
                .await
                .map_err(|e| BenchError::Target(e.to_string()))?;
            pages.push(started.elapsed().as_micros() as u64);
            listed += body["connections"].as_array().map_or(0, Vec::len);
            match body["next_after"].as_str() {
                Some(next) => after = next.to_string(),
                None => break,
            }
        }
        slowest_walk = slowest_walk.max(walk.elapsed().as_secs_f64());
    }
    let mut r = BenchResult::new(
        &super::count_name("list-connections", p.count),
        &p.label,
        format!(
            "{} authenticated devices of one account, pages of {}, {} walks; slowest walk of every page {:.0} ms",
            p.count,
            p.page,
            p.walks,
            slowest_walk * 1000.0
        ),
        "µs/page",
    );
    r.counted(listed as u64, p.count as u64, slowest_walk);
    r.latencies(pages);
    drop(streams);
    Ok(r)
}
