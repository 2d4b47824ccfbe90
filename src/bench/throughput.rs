//! Broker path: P publishers → S subscribers on one topic, `payload` bytes, QoS 0 or 1.
//! `10 → 1` measures ingest; `1 → 100` measures fan-out. Throughput counts deliveries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::{
    age_micros, broker_addr, proc_stats, run_id, stamped_payload, BenchError, BenchResult,
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

fn options(id: String, host: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(1000);
    o
}

/// Runs the scenario.
pub async fn run(t: Throughput) -> Result<BenchResult, BenchError> {
    let (host, port) = broker_addr(&t.broker)?;
    let qos = match t.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        q => return Err(BenchError::Usage(format!("--qos {q}: 0 or 1"))),
    };
    let run = run_id();
    let topic = format!("bench/{run}/t");
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let last_nanos = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));

    let mut subs = Vec::new();
    for i in 0..t.subscribers {
        let (client, mut eventloop) =
            AsyncClient::new(options(format!("bench-{run}-s{i}"), &host, port), 100);
        crate::bus::nodelay(&mut eventloop);
        let (stop, received, last_nanos, ready, topic) = (
            stop.clone(),
            received.clone(),
            last_nanos.clone(),
            ready.clone(),
            topic.clone(),
        );
        subs.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Relaxed) {
                let event = match tokio::time::timeout(Duration::from_millis(200), eventloop.poll())
                    .await
                {
                    Ok(e) => e,
                    Err(_) => continue,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(topic.as_str(), qos).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        ready.fetch_add(1, Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(age) = age_micros(&p.payload) {
                            samples.push(age);
                        }
                        received.fetch_add(1, Relaxed);
                        last_nanos.store(super::now_nanos(), Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            let _ = client.disconnect().await;
            samples
        }));
    }
    let subscribed = super::wait_until(Duration::from_secs(20), || {
        ready.load(Relaxed) as usize == t.subscribers
    })
    .await;
    if !subscribed {
        stop.store(true, Relaxed);
        return Err(BenchError::Target(format!(
            "{}: only {} of {} subscribers ready",
            t.broker,
            ready.load(Relaxed),
            t.subscribers
        )));
    }

    let before = proc_stats(t.pid);
    let started = Instant::now();
    let start_nanos = super::now_nanos();
    let per = t.messages / t.publishers as u64;
    let mut pubs = Vec::new();
    for i in 0..t.publishers {
        let (client, eventloop) =
            AsyncClient::new(options(format!("bench-{run}-p{i}"), &host, port), 1000);
        let pump = super::pump(eventloop, stop.clone());
        let topic = topic.clone();
        let size = t.payload;
        pubs.push(tokio::spawn(async move {
            for _ in 0..per {
                if client
                    .publish(topic.as_str(), qos, false, stamped_payload(size))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            (client, pump)
        }));
    }
    let expected = per * t.publishers as u64 * t.subscribers as u64;
    super::wait_until(Duration::from_secs(t.max_secs), || {
        received.load(Relaxed) >= expected
    })
    .await;
    // Let stragglers of a lossy run arrive before counting.
    if received.load(Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = proc_stats(t.pid);
    let elapsed_wall = started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    let mut samples = Vec::new();
    for s in subs {
        samples.extend(s.await.unwrap_or_default());
    }
    for p in pubs {
        if let Ok((client, pump)) = p.await {
            let _ = client.disconnect().await;
            let _ = pump.await;
        }
    }

    let count = received.load(Relaxed);
    let last = last_nanos.load(Relaxed);
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
