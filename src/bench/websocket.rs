//! WebSocket bridge scenarios: memory per idle WebSocket session, and the signalling round
//! trip WebSocket client → MQTT device → WebSocket client at a fixed offered load.
//! Cradle runs in open mode (no accounts, loopback), so sockets connect with `account=`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_tungstenite::tungstenite::Message;

use super::{broker_addr, now_nanos, proc_stats, run_id, BenchError, BenchResult};

pub(super) type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub(super) async fn open(http: &str, query: &str) -> Result<Ws, BenchError> {
    let url = url::Url::parse(http).map_err(|e| BenchError::Usage(e.to_string()))?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_string();
    let port = url.port().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| BenchError::Target(format!("{http}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://{host}:{port}/ws?{query}").as_str(), tcp)
            .await
            .map_err(|e| BenchError::Target(format!("WebSocket upgrade: {e}")))?;
    Ok(ws)
}

/// Opens `count` idle WebSocket sessions and reports Cradle's resident memory per session.
pub async fn idle(
    http: &str,
    label: &str,
    pid: Option<u32>,
    count: usize,
) -> Result<BenchResult, BenchError> {
    if pid.is_none() {
        return Err(BenchError::Usage("ws-idle needs --pid of Cradle".into()));
    }
    let run = run_id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc_stats(pid);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(count);
    let mut next = 0;
    while next < count {
        let n = 100.min(count - next);
        let mut batch = Vec::with_capacity(n);
        for i in next..next + n {
            let http = http.to_string();
            // One account per socket, as in the field (a family has a few clients): in one
            // account every connect would push presence to every other socket.
            let query = format!("account=wsidle-{run}-{i}&client_id=c{i}");
            batch.push(tokio::spawn(async move { open(&http, &query).await }));
        }
        for b in batch {
            sockets.push(b.await.map_err(|e| BenchError::Target(e.to_string()))??);
        }
        next += n;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Read each hello so the sessions are fully set up, then let the server settle.
    for ws in sockets.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = proc_stats(pid);
    let mut r = BenchResult::new(
        &super::count_name("ws-idle-memory", count),
        label,
        format!("{count} idle WebSocket sessions"),
        "KiB/conn",
    );
    r.memory_per_connection(
        count,
        sockets.len(),
        connect_secs,
        before,
        after,
        "upgrades",
    );
    drop(sockets);
    Ok(r)
}

/// Parameters of a WebSocket signalling run.
#[derive(Debug, Clone)]
pub struct WsSignalling {
    /// Cradle's HTTP URL (`/ws`).
    pub http: String,
    /// Cradle's MQTT URL (the device).
    pub broker: String,
    /// Name in the report.
    pub label: String,
    /// Cradle's pid.
    pub pid: Option<u32>,
    /// Messages the WebSocket client sends.
    pub messages: u64,
    /// Offered load, messages per second.
    pub rate: u64,
}

/// WebSocket client A signals device B over MQTT; B echoes to A's inbox; A measures.
pub async fn signalling(s: WsSignalling) -> Result<BenchResult, BenchError> {
    let run = run_id();
    let account = format!("wssig-{run}");
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let b_task = echo_device(&s.broker, &run, &account, stop.clone(), ready.clone())?;
    if !super::wait_until(Duration::from_secs(20), || ready.load(Relaxed)).await {
        stop.store(true, Relaxed);
        return Err(BenchError::Target(
            "device inbox subscription not ready".into(),
        ));
    }
    let ws = open(&s.http, &format!("account={account}&client_id=a")).await?;
    let (mut tx, rx) = ws.split();
    let received = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_echoes(rx, received.clone(), stop.clone()));

    let before = proc_stats(s.pid);
    let started = Instant::now();
    let sent = send_paced(&mut tx, s.messages, s.rate, started).await?;
    let send_secs = started.elapsed().as_secs_f64();
    super::wait_until(Duration::from_secs(10), || {
        received.load(Relaxed) >= s.messages
    })
    .await;
    let after = proc_stats(s.pid);
    stop.store(true, Relaxed);
    let samples = reader.await.unwrap_or_default();
    let _ = b_task.await;
    let mut r = BenchResult::new(
        "ws-signalling-rtt",
        &s.label,
        format!(
            "{} msg/s offered, ~200 B, {} msgs, WebSocket → MQTT device → WebSocket",
            s.rate, s.messages
        ),
        "msg/s",
    );
    let run = super::RoundTrip {
        received: received.load(Relaxed),
        expected: s.messages,
        sent,
        send_secs,
        samples,
    };
    r.round_trip(
        run,
        before,
        after,
        "rate = achieved offered load; latency = WS → device → WS round trip",
    );
    Ok(r)
}

/// Device B: an MQTT client of `account` echoing every signal in its inbox to A's inbox;
/// sets `ready` once subscribed, ends when `stop` is set.
fn echo_device(
    broker: &str,
    run: &str,
    account: &str,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
) -> Result<tokio::task::JoinHandle<()>, BenchError> {
    let (host, port) = broker_addr(broker)?;
    let mut o = MqttOptions::new(format!("wssig-{run}-b"), host, port);
    o.set_keep_alive(Duration::from_secs(30)).set_inflight(1000);
    let (b, mut b_loop) = AsyncClient::new(o, 10_000);
    crate::mqtt_client::nodelay(&mut b_loop);
    let b_inbox = crate::topics::inbox_topic(account, "b");
    let a_inbox = crate::topics::inbox_topic(account, "a");
    Ok(tokio::spawn(async move {
        while !stop.load(Relaxed) {
            let Ok(event) = tokio::time::timeout(Duration::from_millis(200), b_loop.poll()).await
            else {
                continue;
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = b.subscribe(b_inbox.as_str(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => ready.store(true, Relaxed),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // The bridge's payload: {"from","from_connection","to_connection","data"}.
                    let data = serde_json::from_slice::<serde_json::Value>(&p.payload)
                        .ok()
                        .and_then(|v| v.get("data").cloned())
                        .unwrap_or_default();
                    let echo = serde_json::json!({"from": "b", "data": data}).to_string();
                    let _ = b.try_publish(a_inbox.as_str(), QoS::AtLeastOnce, false, echo);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }))
}

/// Client A's reader: counts the echoed signals in `received` and returns their round
/// trips in microseconds, once `stop` is set.
async fn read_echoes(
    mut rx: futures_util::stream::SplitStream<Ws>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let mut samples = Vec::new();
    while !stop.load(Relaxed) {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_millis(200), rx.next()).await
        else {
            continue;
        };
        let Message::Text(t) = msg else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
            continue;
        };
        if v["type"] == "signal" {
            if let Some(sent) = v["data"]["t"].as_u64() {
                samples.push(now_nanos().saturating_sub(sent) / 1000);
            }
            received.fetch_add(1, Relaxed);
        }
    }
    samples
}

/// Sends `messages` signal frames (~200 B, stamped with the send time) to B at `rate` per
/// second from `started`; returns how many were sent.
async fn send_paced(
    tx: &mut futures_util::stream::SplitSink<Ws, Message>,
    messages: u64,
    rate: u64,
    started: Instant,
) -> Result<u64, BenchError> {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let pad = "x".repeat(150);
    while sent < messages {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due.min(messages) {
            let frame = serde_json::json!({
                "type": "signal", "to": "b", "data": {"t": now_nanos(), "pad": pad}
            });
            tx.send(Message::text(frame.to_string()))
                .await
                .map_err(|e| BenchError::Target(e.to_string()))?;
            sent += 1;
        }
    }
    Ok(sent)
}
