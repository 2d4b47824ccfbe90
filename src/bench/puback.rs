//! What a device sees when it publishes statuses at QoS 1: the time from writing a PUBLISH to
//! reading its PUBACK, and how many PUBACKs per second its connections get. D devices (raw
//! MQTT 3.1.1 sockets, `wire`), each keeping at most `window` statuses unacknowledged
//! (a device library's in-flight window), publish `connected` statuses of distinct clients,
//! as fast as they are acknowledged or at an offered rate.
//!
//! Against Cradle with `mqtt.puback_after_commit` (the default) a PUBACK leaves once the
//! status's event is committed; without it, and against Mosquitto, once the broker holds the
//! message in memory. The difference is what a PUBACK that means "committed" costs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Connect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::{broker_addr, proc_stats, run_id, wire, BenchError, BenchResult};

/// Parameters of a PUBACK run.
#[derive(Debug, Clone)]
pub struct Puback {
    /// `mqtt://host:port` of the broker under test.
    pub broker: String,
    /// Name of the target in the report.
    pub label: String,
    /// The broker's pid, for CPU and memory.
    pub pid: Option<u32>,
    /// Publishing connections.
    pub devices: usize,
    /// Unacknowledged statuses per device at most.
    pub window: usize,
    /// Statuses over all devices.
    pub messages: u64,
    /// Offered statuses per second over all devices; 0 = as fast as acknowledged.
    pub rate: u64,
    /// Time limit of the measured phase.
    pub max_secs: u64,
}

/// When each packet id in flight was written.
type Sent = Arc<Mutex<HashMap<u16, Instant>>>;

/// One device: publishes `per` statuses, returns the publish-to-PUBACK samples (µs).
async fn device(
    p: Arc<Puback>,
    host: String,
    port: u16,
    name: String,
    per: u64,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<u64>, BenchError> {
    let mut c = Connect::new(name.clone());
    c.keep_alive = 30;
    let stream = super::connections::open(&host, port, &c).await?;
    let (mut rd, wr) = stream.into_split();
    let window = Arc::new(Semaphore::new(p.window.max(1)));
    let sent: Sent = Arc::default();
    let writer = tokio::spawn(write_statuses(
        wr,
        (window.clone(), sent.clone(), stop.clone()),
        p.rate as f64 / p.devices as f64,
        name,
        per,
    ));
    let mut buf = BytesMut::with_capacity(4096);
    let mut samples = Vec::with_capacity(per as usize);
    let mut got = 0u64;
    while got < per && !stop.load(Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), rd.read_buf(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
        }
        while let Some(frame) = wire::next_frame(&mut buf)? {
            if frame.kind() != wire::PUBACK {
                continue;
            }
            let at = sent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&frame.pkid());
            if let Some(at) = at {
                samples.push(at.elapsed().as_micros() as u64);
                got += 1;
                acked.fetch_add(1, Relaxed);
                window.add_permits(1);
            }
        }
    }
    window.close();
    drop(writer.await);
    Ok(samples)
}

/// The device's writer: `per` statuses at `each_rate` per second (0: as fast as the window
/// lets it), each recorded in `sent` by packet id as it goes out. Returns the socket's write
/// half, kept open until the last PUBACK is read (dropping it would close the socket for
/// writing, and a broker ends the connection on that).
async fn write_statuses(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    (window, sent, stop): (Arc<Semaphore>, Sent, Arc<AtomicBool>),
    each_rate: f64,
    name: String,
    per: u64,
) -> tokio::net::tcp::OwnedWriteHalf {
    let began = Instant::now();
    let mut out = BytesMut::new();
    for n in 0..per {
        if each_rate > 0.0 {
            let due = Duration::from_secs_f64(n as f64 / each_rate);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        if stop.load(Relaxed) {
            break;
        }
        let pkid = (n % 65_535) as u16 + 1;
        let topic = format!("accounts/bench-ack/clients/{name}c{n}/status");
        let payload = format!(
            r#"{{"type":"connected","connection_id":"k1","at_millis":{}}}"#,
            crate::clock::now_millis()
        );
        out.clear();
        wire::put_publish(&mut out, &topic, 1, pkid, payload.as_bytes());
        sent.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pkid, Instant::now());
        if wr.write_all(&out).await.is_err() {
            break;
        }
    }
    wr
}

/// Runs the scenario.
pub async fn run(p: Puback) -> Result<BenchResult, BenchError> {
    let (host, port) = broker_addr(&p.broker)?;
    let run = run_id();
    let per = p.messages / p.devices.max(1) as u64;
    let expected = per * p.devices as u64;
    let p = Arc::new(p);
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let before = proc_stats(p.pid);
    let started = Instant::now();
    let tasks: Vec<_> = (0..p.devices)
        .map(|i| {
            tokio::spawn(device(
                p.clone(),
                host.clone(),
                port,
                format!("ack-{run}-{i}"),
                per,
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(p.max_secs);
    while acked.load(Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = proc_stats(p.pid);
    stop.store(true, Relaxed);
    let mut samples = Vec::with_capacity(expected as usize);
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => samples.extend(s),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(BenchError::Target(format!("device task: {e}"))),
        }
    }
    let offered = match p.rate {
        0 => "as fast as acknowledged".to_string(),
        r => format!("{r}/s offered"),
    };
    let mut r = BenchResult::new(
        if p.rate == 0 {
            "puback-throughput"
        } else {
            "puback-latency"
        },
        &p.label,
        format!(
            "{} devices × window {}, {expected} QoS 1 statuses, {offered}",
            p.devices, p.window
        ),
        "msg/s",
    );
    r.counted(samples.len() as u64, expected, seconds);
    r.latencies(samples);
    r.process(before, after);
    r.note = "publish-to-PUBACK latency per message, as the device sees it".into();
    Ok(r)
}
