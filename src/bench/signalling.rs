//! Signalling round trip: client A sends to B's `webrtc_inbox` at a fixed offered load, B
//! echoes each message to A's inbox, A measures the round trip. QoS 1 both ways, as the
//! topic contract says.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::{broker_addr, now_nanos, proc_stats, run_id, BenchError, BenchResult};

/// Parameters of a signalling run.
#[derive(Debug, Clone)]
pub struct Signalling {
    /// Broker URL.
    pub broker: String,
    /// Name in the report.
    pub label: String,
    /// The broker's pid.
    pub pid: Option<u32>,
    /// Messages A sends.
    pub messages: u64,
    /// Offered load, messages per second.
    pub rate: u64,
    /// Payload bytes (an SDP offer is 1-4 KB; ICE candidates ~200 B).
    pub payload: usize,
}

fn client(id: String, host: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30)).set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    crate::mqtt_client::nodelay(&mut eventloop);
    (client, eventloop)
}

/// A signalling payload of about `size` bytes: a JSON object, as inbox messages must be
/// (Cradle's edge drops anything else and stamps `from`), whose `data` starts with the send
/// time (Unix nanoseconds, 16 hex digits).
fn signal_payload(size: usize) -> Vec<u8> {
    let stamp = format!("{:016x}", now_nanos());
    let pad = "x".repeat(size.saturating_sub(stamp.len() + 12));
    format!(r#"{{"data":"{stamp}{pad}"}}"#).into_bytes()
}

/// Microseconds since the send time in a [`signal_payload`].
fn signal_age_micros(payload: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let sent = u64::from_str_radix(v.get("data")?.as_str()?.get(..16)?, 16).ok()?;
    Some(now_nanos().saturating_sub(sent) / 1000)
}

/// What both peers share with the run: the stop flag and the count of subscriptions ready.
#[derive(Clone)]
struct Flags {
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
}

/// Runs the scenario.
pub async fn run(s: Signalling) -> Result<BenchResult, BenchError> {
    let (host, port) = broker_addr(&s.broker)?;
    let run = run_id();
    let account = format!("sig-{run}");
    let inbox = |c: &str| format!("accounts/{account}/clients/{c}/webrtc_inbox");
    let (a_inbox, b_inbox) = (inbox("a"), inbox("b"));
    let flags = Flags {
        stop: Arc::new(AtomicBool::new(false)),
        ready: Arc::new(AtomicU64::new(0)),
    };
    let (stop, ready) = (flags.stop.clone(), flags.ready.clone());
    let received = Arc::new(AtomicU64::new(0));

    // B: echo everything from its inbox to A's.
    let (b, b_loop) = client(format!("sig-{run}-b"), &host, port);
    let b_task = spawn_echo(b, b_loop, flags.clone(), b_inbox.clone(), a_inbox.clone());
    // A: collect round trips.
    let (a, a_loop) = client(format!("sig-{run}-a"), &host, port);
    let a_task = spawn_collector(a.clone(), a_loop, flags, a_inbox.clone(), received.clone());
    if !super::wait_until(Duration::from_secs(20), || ready.load(Relaxed) == 2).await {
        stop.store(true, Relaxed);
        return Err(BenchError::Target(format!(
            "{}: inbox subscriptions not ready",
            s.broker
        )));
    }

    let before = proc_stats(s.pid);
    let (sent, send_secs) = send_paced(&a, &b_inbox, &s).await?;
    super::wait_until(Duration::from_secs(10), || {
        received.load(Relaxed) >= s.messages
    })
    .await;
    let after = proc_stats(s.pid);
    stop.store(true, Relaxed);
    let samples = a_task.await.unwrap_or_default();
    let _ = b_task.await;

    let mut r = BenchResult::new(
        "signalling-rtt",
        &s.label,
        format!(
            "{} msg/s offered, {} B, {} msgs, QoS 1",
            s.rate, s.payload, s.messages
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
        "rate = achieved offered load; latency = A → B → A round trip",
    );
    Ok(r)
}

/// B: subscribes to `inbox` on every CONNACK and echoes each message it receives to
/// `reply_to`, until the stop flag is set.
fn spawn_echo(
    b: AsyncClient,
    mut b_loop: rumqttc::EventLoop,
    flags: Flags,
    inbox: String,
    reply_to: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !flags.stop.load(Relaxed) {
            let Ok(event) = tokio::time::timeout(Duration::from_millis(200), b_loop.poll()).await
            else {
                continue;
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = b.subscribe(inbox.as_str(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    flags.ready.fetch_add(1, Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = b.try_publish(reply_to.as_str(), QoS::AtLeastOnce, false, p.payload);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
}

/// A: subscribes to `inbox` on every CONNACK and counts each echo in `received`, until the
/// stop flag is set; returns the round trips measured (microseconds).
fn spawn_collector(
    a: AsyncClient,
    mut a_loop: rumqttc::EventLoop,
    flags: Flags,
    inbox: String,
    received: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !flags.stop.load(Relaxed) {
            let Ok(event) = tokio::time::timeout(Duration::from_millis(200), a_loop.poll()).await
            else {
                continue;
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = a.subscribe(inbox.as_str(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    flags.ready.fetch_add(1, Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(age) = signal_age_micros(&p.payload) {
                        samples.push(age);
                    }
                    received.fetch_add(1, Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        samples
    })
}

/// Sends `s.messages` signals from A to `b_inbox` at `s.rate` a second; returns how many
/// were sent and the seconds it took.
async fn send_paced(
    a: &AsyncClient,
    b_inbox: &str,
    s: &Signalling,
) -> Result<(u64, f64), BenchError> {
    let started = Instant::now();
    // Pace in 1 ms ticks: rate/1000 messages a tick, the remainder spread by a running total.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while sent < s.messages {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * s.rate as f64) as u64;
        while sent < due.min(s.messages) {
            a.publish(b_inbox, QoS::AtLeastOnce, false, signal_payload(s.payload))
                .await
                .map_err(|e| BenchError::Target(e.to_string()))?;
            sent += 1;
        }
    }
    Ok((sent, started.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_payload_is_a_json_object_whose_age_survives_a_stamped_from() {
        let p = signal_payload(256);
        assert!((250..=262).contains(&p.len()), "{}", p.len());
        let stamped = crate::edge::inbox::stamp_from("b", &p).unwrap();
        assert!(signal_age_micros(&stamped).unwrap() < 5_000_000);
        assert_eq!(signal_age_micros(b"not json"), None);
    }
}
