//! Followers of the live event stream: F followers of one account's
//! `…/events/stream` while devices' statuses commit at a steady rate. Every status carries its
//! publish time as `at_millis`, and Cradle stamps `recorded_at_millis` when it records the
//! event, so each follower measures, per event, publish → delivery and record → delivery
//! (commit → delivery, within the millisecond before the commit). Sender, Cradle and
//! followers share the machine's clock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};

use super::{broker_addr, proc_stats, run_id, BenchError, BenchResult};
use crate::clock::now_millis;

/// Parameters of a followers run.
#[derive(Debug, Clone)]
pub struct StreamFollowers {
    /// Cradle's HTTP base URL.
    pub http: String,
    /// Cradle's MQTT listener (`mqtt://host:port`), in open mode.
    pub broker: String,
    /// Cradle's pid, for CPU and memory.
    pub pid: Option<u32>,
    /// Followers of the account.
    pub followers: usize,
    /// Statuses committed while they follow.
    pub events: u64,
    /// Offered statuses per second.
    pub rate: u64,
    /// Time limit of the measured phase.
    pub max_secs: u64,
}

/// One follower's samples: (publish → delivery, record → delivery) in µs, per event.
type Samples = Vec<(u64, u64)>;

/// Follows `url` until `expected` events arrived or `deadline`; signals `ready` at `live`.
async fn follow(
    client: reqwest::Client,
    url: String,
    expected: u64,
    ready: Arc<AtomicU64>,
    deadline: Instant,
) -> Result<Samples, BenchError> {
    let mut response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| BenchError::Target(format!("{url}: {e}")))?;
    if !response.status().is_success() {
        return Err(BenchError::Target(format!("{url}: {}", response.status())));
    }
    let mut buffer = String::new();
    let mut samples = Vec::with_capacity(expected as usize);
    while (samples.len() as u64) < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(c))) => c,
            _ => break,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        let now = now_millis();
        // The follower must not be the bottleneck: a thousand of them share two cores with
        // Cradle, so each event's two stamps are found by a text search, not a JSON parse.
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if block.starts_with("event: live") {
                ready.fetch_add(1, Relaxed);
                continue;
            }
            if !block.starts_with("id:") {
                continue;
            }
            let stamp = |key: &str| {
                let from = block.find(key)? + key.len();
                let digits: String = block[from..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse::<i64>().ok()
            };
            let micros = |t: Option<i64>| (now - t.unwrap_or(now)).max(0) as u64 * 1000;
            samples.push((
                micros(stamp("\"at_millis\":")),
                micros(stamp("\"recorded_at_millis\":")),
            ));
        }
    }
    Ok(samples)
}

/// Runs the scenario: two rows, publish → delivery and record → delivery.
pub async fn run(p: StreamFollowers) -> Result<Vec<BenchResult>, BenchError> {
    let account = format!("follow-{}", run_id());
    let url = format!(
        "{}/v1/accounts/{account}/events/stream",
        p.http.trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| BenchError::Target(e.to_string()))?;
    let ready = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(p.max_secs + 30);
    let followers: Vec<_> = (0..p.followers)
        .map(|_| {
            tokio::spawn(follow(
                client.clone(),
                url.clone(),
                p.events,
                ready.clone(),
                deadline,
            ))
        })
        .collect();
    let joined = Instant::now();
    while ready.load(Relaxed) < p.followers as u64 {
        if joined.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::Target(format!(
                "only {} of {} followers joined in 60 s",
                ready.load(Relaxed),
                p.followers
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let join_secs = joined.elapsed().as_secs_f64();

    let before = proc_stats(p.pid);
    let start = Instant::now();
    publish(&p, &account).await?;
    let mut publish_to_delivery = Vec::new();
    let mut record_to_delivery = Vec::new();
    let mut complete = 0u64;
    for f in followers {
        let samples = f.await.map_err(|e| BenchError::Target(e.to_string()))??;
        if samples.len() as u64 == p.events {
            complete += 1;
        }
        for (a, b) in samples {
            publish_to_delivery.push(a);
            record_to_delivery.push(b);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = proc_stats(p.pid);
    let params = format!(
        "{} followers of one account, {} statuses at {}/s",
        p.followers, p.events, p.rate
    );
    let expected = p.events * p.followers as u64;
    let mut rows = Vec::new();
    for (scenario, samples) in [
        ("stream-publish-to-delivery", publish_to_delivery),
        ("stream-commit-to-delivery", record_to_delivery),
    ] {
        let mut r = BenchResult::new(scenario, "cradle", params.clone(), "deliveries/s");
        r.counted(samples.len() as u64, expected, seconds);
        r.latencies(samples);
        r.process(before, after);
        r.note = format!(
            "{complete} of {} followers got every event; all joined in {join_secs:.1} s",
            p.followers
        );
        rows.push(r);
    }
    Ok(rows)
}

/// Publishes `p.events` statuses of the account's 100 clients at `p.rate`, each stamped with
/// its publish time.
async fn publish(p: &StreamFollowers, account: &str) -> Result<(), BenchError> {
    let (host, port) = broker_addr(&p.broker)?;
    let mut options = MqttOptions::new(format!("bench-follow-{}", run_id()), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(100);
    let (mqtt, mut eventloop) = AsyncClient::new(options, 1000);
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / p.rate.max(1) as f64);
    for i in 0..p.events {
        let client_id = format!("c{}", i % 100);
        let round = i / 100;
        let k = format!("{client_id}-k{}", round / 2);
        let (kind, reason) = if round % 2 == 0 {
            ("connected", "")
        } else {
            ("disconnected", r#","reason":"clean""#)
        };
        let payload = format!(
            r#"{{"type":"{kind}","connection_id":"{k}","at_millis":{}{reason}}}"#,
            now_millis()
        );
        let topic = format!("accounts/{account}/clients/{client_id}/status");
        mqtt.publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| BenchError::Target(e.to_string()))?;
        let due = start + gap * (i as u32 + 1);
        tokio::time::sleep_until(due.into()).await;
    }
    // Give the last PUBACKs a moment before the connection goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    driver.abort();
    Ok(())
}
