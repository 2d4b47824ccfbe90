//! Broker path: P publishers → S subscribers on one topic, `payload` bytes, QoS 0 or 1.
//! `10 → 1` measures ingest; `1 → 100` measures fan-out. Throughput counts deliveries.
//!
//! The clients are raw MQTT 3.1.1 sockets framed by `wire`: publishers write pre-encoded
//! PUBLISH frames in batches, subscribers answer QoS 1 with PUBACKs in one write per read,
//! so on a shared machine the load generator leaves the cores to the broker under test.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Connect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{
    age_micros, broker_addr, proc_stats, run_id, stamped_payload, wire, BenchError, BenchResult,
};

/// Parameters of a throughput run.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// `mqtt://host:port` of the broker under test.
    pub broker: String,
    /// Name of the target in the report.
    pub label: String,
    /// The broker's pid, for CPU and memory.
    pub pid: Option<u32>,
    /// Publishing clients.
    pub publishers: usize,
    /// Subscribing clients.
    pub subscribers: usize,
    /// Messages published in all (each delivered to every subscriber).
    pub messages: u64,
    /// Payload bytes.
    pub payload: usize,
    /// 0 or 1.
    pub qos: u8,
    /// Time limit of the measured phase.
    pub max_secs: u64,
}

/// QoS 1 messages a publisher keeps unacknowledged, as rumqttc's `inflight` did before.
const INFLIGHT: usize = 1000;
/// PUBLISH frames a publisher writes per `write_all`.
const BATCH: usize = 64;

/// Counters the subscribers share.
#[derive(Default)]
struct Tally {
    ready: AtomicU64,
    received: AtomicU64,
    last_nanos: AtomicU64,
}

/// Connects as `id` (anonymous, clean session, keep-alive 30 s).
async fn open(host: &str, port: u16, id: String) -> Result<TcpStream, BenchError> {
    let mut c = Connect::new(id);
    c.keep_alive = 30;
    super::connections::open(host, port, &c).await
}

/// Subscribes to `topic` and counts deliveries until `stop`, answering QoS 1 with PUBACKs
/// in one write per read; returns the latency samples.
async fn subscriber(
    mut stream: TcpStream,
    topic: String,
    qos: u8,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<u64>, BenchError> {
    let mut out = BytesMut::new();
    wire::put_subscribe(&mut out, 1, &topic, qos);
    stream.write_all(&out).await?;
    out.clear();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut samples = Vec::new();
    while !stop.load(Relaxed) {
        buf.reserve(16 * 1024);
        match tokio::time::timeout(Duration::from_millis(200), stream.read_buf(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) => return Err(BenchError::Target("subscriber disconnected".into())),
            Ok(r) => r?,
        };
        let mut n = 0;
        while let Some(frame) = wire::next_frame(&mut buf)? {
            match frame.kind() {
                wire::PUBLISH => {
                    let (pkid, payload) = frame.publish()?;
                    if let Some(age) = age_micros(payload) {
                        samples.push(age);
                    }
                    if pkid != 0 {
                        wire::put_puback(&mut out, pkid);
                    }
                    n += 1;
                }
                wire::SUBACK => {
                    tally.ready.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
        if n > 0 {
            tally.received.fetch_add(n, Relaxed);
            tally.last_nanos.store(super::now_nanos(), Relaxed);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
    let _ = stream.write_all(&wire::DISCONNECT).await;
    Ok(samples)
}

/// Publishes `count` stamped messages on `topic`, `BATCH` frames per write, with at most
/// `INFLIGHT` unacknowledged at QoS 1; stops early on `stop`.
async fn publisher(
    stream: TcpStream,
    topic: String,
    qos: u8,
    count: u64,
    size: usize,
    stop: Arc<AtomicBool>,
) -> Result<(), BenchError> {
    let (mut rd, mut wr) = stream.into_split();
    let window = Arc::new(Semaphore::new(INFLIGHT));
    let acks = tokio::spawn({
        let window = window.clone();
        async move {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            while let Ok(n) = rd.read_buf(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut acked = 0;
                while let Ok(Some(frame)) = wire::next_frame(&mut buf) {
                    acked += usize::from(frame.kind() == wire::PUBACK);
                }
                window.add_permits(acked);
                buf.reserve(4 * 1024);
            }
        }
    });
    let mut out = BytesMut::with_capacity(BATCH * (topic.len() + size + 8));
    let (mut sent, mut pkid) = (0u64, 0u16);
    let mut payload = stamped_payload(size);
    while sent < count && !stop.load(Relaxed) {
        let n = (BATCH as u64).min(count - sent);
        if qos > 0 {
            let permits = window
                .acquire_many(n as u32)
                .await
                .map_err(|e| BenchError::Target(e.to_string()))?;
            permits.forget();
        }
        for _ in 0..n {
            pkid = pkid % u16::MAX + 1;
            super::stamp(&mut payload);
            wire::put_publish(&mut out, &topic, qos, pkid, &payload);
        }
        wr.write_all(&out).await?;
        out.clear();
        sent += n;
    }
    while !stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = wr.write_all(&wire::DISCONNECT).await;
    acks.abort();
    Ok(())
}

/// Connects and subscribes `t.subscribers` clients and waits until every SUBACK arrived.
async fn subscribe_all(
    t: &Throughput,
    (host, port): (&str, u16),
    run: &str,
    topic: &str,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<Result<Vec<u64>, BenchError>>>, BenchError> {
    let mut subs = Vec::new();
    for i in 0..t.subscribers {
        let stream = open(host, port, format!("bench-{run}-s{i}")).await?;
        let (topic, tally, stop) = (topic.to_string(), tally.clone(), stop.clone());
        subs.push(tokio::spawn(subscriber(stream, topic, t.qos, tally, stop)));
    }
    let subscribed = super::wait_until(Duration::from_secs(20), || {
        tally.ready.load(Relaxed) as usize == t.subscribers
    })
    .await;
    if !subscribed {
        stop.store(true, Relaxed);
        return Err(BenchError::Target(format!(
            "{}: only {} of {} subscribers ready",
            t.broker,
            tally.ready.load(Relaxed),
            t.subscribers
        )));
    }
    Ok(subs)
}

/// Runs the scenario.
pub async fn run(t: Throughput) -> Result<BenchResult, BenchError> {
    let (host, port) = broker_addr(&t.broker)?;
    if t.qos > 1 {
        return Err(BenchError::Usage(format!("--qos {}: 0 or 1", t.qos)));
    }
    let run = run_id();
    let topic = format!("bench/{run}/t");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());

    let subs = subscribe_all(&t, (&host, port), &run, &topic, &tally, &stop).await?;
    let mut streams = Vec::new();
    for i in 0..t.publishers {
        streams.push(open(&host, port, format!("bench-{run}-p{i}")).await?);
    }

    let before = proc_stats(t.pid);
    let started = Instant::now();
    let start_nanos = super::now_nanos();
    let per = t.messages / t.publishers as u64;
    let pubs: Vec<_> = streams
        .into_iter()
        .map(|s| {
            let p = publisher(s, topic.clone(), t.qos, per, t.payload, stop.clone());
            tokio::spawn(p)
        })
        .collect();
    let expected = per * t.publishers as u64 * t.subscribers as u64;
    let received = || tally.received.load(Relaxed);
    super::wait_until(Duration::from_secs(t.max_secs), || received() >= expected).await;
    // Let stragglers of a lossy run arrive before counting.
    if received() < expected {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = proc_stats(t.pid);
    let elapsed_wall = started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    let mut samples = Vec::new();
    for s in subs {
        if let Ok(Ok(s)) = s.await {
            samples.extend(s);
        }
    }
    for p in pubs {
        let _ = p.await;
    }

    let count = received();
    let last = tally.last_nanos.load(Relaxed);
    let seconds = if last > start_nanos {
        (last - start_nanos) as f64 / 1e9
    } else {
        elapsed_wall
    };
    let scenario = format!("broker-qos{}", t.qos);
    let mut r = BenchResult::new(
        &scenario,
        &t.label,
        format!(
            "{} pub → {} sub, {} B, {} msgs",
            t.publishers, t.subscribers, t.payload, t.messages
        ),
        "msg/s",
    );
    r.counted(count, expected, seconds);
    r.latencies(samples);
    r.process(before, after);
    if count < expected {
        r.note = format!("{} of {} delivered", count, expected);
    }
    Ok(r)
}
