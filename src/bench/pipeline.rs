//! Status pipeline: N clients' `connected` statuses published as fast as the pipeline takes
//! them, measured until their events are committed (Cradle's `/metrics`), with the
//! publish-to-commit latency of every event (`recorded_at_millis - at_millis`). Also the raw
//! batched-insert rate of the same database, the ceiling the pipeline can approach.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};

use super::{broker_addr, proc_stats, run_id, BenchError, BenchResult};
use crate::store::NewEvent;

/// Parameters of a pipeline run.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Cradle's MQTT URL.
    pub broker: String,
    /// Cradle's HTTP base URL; several replicas' URLs separated by commas (their commits are
    /// summed; the events are read from the first, all replicas share the store).
    pub http: String,
    /// Name of the target in the report (e.g. `cradle+sqlite`).
    pub label: String,
    /// Cradle's pid.
    pub pid: Option<u32>,
    /// Distinct clients, one `connected` each.
    pub clients: u64,
    /// Publishing MQTT connections.
    pub publishers: usize,
    /// Time limit.
    pub max_secs: u64,
    /// Offered load in statuses per second over all publishers; 0 = as fast as accepted.
    pub rate: u64,
}

async fn appended(http: &str) -> Result<u64, BenchError> {
    let mut total = 0;
    for url in http.split(',') {
        total += super::metric(
            url,
            "cradle_events_appended_total{type=\"connection.connected\"}",
        )
        .await?;
    }
    Ok(total)
}

/// Runs the scenario.
pub async fn run(p: Pipeline) -> Result<BenchResult, BenchError> {
    let (host, port) = broker_addr(&p.broker)?;
    let run = run_id();
    let account = format!("bench-{run}");
    let base = appended(&p.http).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let before = proc_stats(p.pid);
    let started = Instant::now();
    let per = p.clients / p.publishers as u64;
    let mut tasks = Vec::new();
    for i in 0..p.publishers {
        let mut o = MqttOptions::new(format!("bench-{run}-p{i}"), host.clone(), port);
        o.set_keep_alive(Duration::from_secs(30)).set_inflight(1000);
        let (client, eventloop) = AsyncClient::new(o, 1000);
        let pump = super::pump(eventloop, stop.clone());
        let account = account.clone();
        let each_rate = p.rate as f64 / p.publishers as f64;
        tasks.push(tokio::spawn(async move {
            publish_statuses(&client, &account, i, per, each_rate).await;
            (client, pump)
        }));
    }
    let expected = per * p.publishers as u64;
    let count = super::wait_count(base, expected, p.max_secs, || appended(&p.http)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let after = proc_stats(p.pid);
    stop.store(true, Relaxed);
    for t in tasks {
        if let Ok((client, pump)) = t.await {
            let _ = client.disconnect().await;
            let _ = pump.await;
        }
    }

    let first = p.http.split(',').next().unwrap_or_default();
    let samples = commit_lags(first, &account, count).await?;

    let mut r = BenchResult::new(
        if p.rate > 0 {
            "status-pipeline-latency"
        } else {
            "status-pipeline"
        },
        &p.label,
        if p.rate > 0 {
            format!(
                "{} clients at {}/s offered, {} publishers, QoS 1",
                p.clients, p.rate, p.publishers
            )
        } else {
            format!(
                "{} clients as fast as accepted, {} publishers, QoS 1",
                p.clients, p.publishers
            )
        },
        "events/s",
    );
    r.counted(count, expected, seconds);
    r.latencies(samples);
    r.process(before, after);
    r.note = "publish-to-commit latency at 1 ms resolution".into();
    if count < expected {
        r.note = format!(
            "{count} of {expected} committed before the time limit; {}",
            r.note
        );
    }
    Ok(r)
}

/// Publisher `i`: one `connected` status for each of its `per` clients, paced at `each_rate`
/// a second (0: as fast as accepted); stops at the first publish that fails.
async fn publish_statuses(client: &AsyncClient, account: &str, i: usize, per: u64, each_rate: f64) {
    let began = Instant::now();
    for n in 0..per {
        if each_rate > 0.0 {
            // Paced: wait until this message is due.
            let due = Duration::from_secs_f64(n as f64 / each_rate);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let topic = format!("accounts/{account}/clients/p{i}c{n}/status");
        let payload = format!(
            r#"{{"type":"connected","connection_id":"k1","at_millis":{}}}"#,
            crate::clock::now_millis()
        );
        if client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Reads the account's events from Cradle's HTTP API at `http`, page by page; returns each
/// one's publish-to-commit lag in microseconds (`count`: the capacity to reserve).
async fn commit_lags(http: &str, account: &str, count: u64) -> Result<Vec<u64>, BenchError> {
    let mut samples = Vec::with_capacity(count as usize);
    let mut after_pos = 0i64;
    loop {
        let url = format!("{http}/v1/accounts/{account}/events?after={after_pos}&limit=1000");
        let body: serde_json::Value = reqwest::get(&url)
            .await
            .map_err(|e| BenchError::Target(e.to_string()))?
            .json()
            .await
            .map_err(|e| BenchError::Target(e.to_string()))?;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        for e in &events {
            let lag = e["recorded_at_millis"].as_i64().unwrap_or(0)
                - e["at_millis"].as_i64().unwrap_or(0);
            samples.push(lag.max(0) as u64 * 1000);
        }
        after_pos = body["next_after"].as_i64().unwrap_or(after_pos);
    }
    Ok(samples)
}

/// Parameters of the raw insert run.
#[derive(Debug, Clone)]
pub struct RawInsert {
    /// Database URL.
    pub database_url: String,
    /// Name in the report.
    pub label: String,
    /// Events in all.
    pub events: u64,
    /// Events per transaction.
    pub batch: usize,
}

/// Appends `events` events through the store, `batch` per transaction.
pub async fn raw_insert(p: RawInsert) -> Result<BenchResult, BenchError> {
    let store = super::open_store(&p.database_url).await?;
    let run = run_id();
    let started = Instant::now();
    let mut done = 0u64;
    let mut samples = Vec::new();
    while done < p.events {
        let n = (p.events - done).min(p.batch as u64);
        let batch: Vec<NewEvent> = (done..done + n)
            .map(|i| NewEvent {
                account_id: format!("raw-{run}"),
                stream: format!("connection/raw-{run}/c{i}"),
                stream_version: 1,
                event_type: "connection.connected",
                event_version: 1,
                data: serde_json::json!({"client_id": format!("c{i}"), "connection_id": "k1", "at_millis": 1}),
                at_millis: 1,
                idempotency_key: format!("connection.connected/raw-{run}/c{i}/k1"),
            })
            .collect();
        let t = Instant::now();
        let txn = store
            .begin()
            .await
            .map_err(|e| BenchError::Target(e.to_string()))?;
        txn.append(&batch, 1)
            .await
            .map_err(|e| BenchError::Target(e.to_string()))?;
        txn.commit()
            .await
            .map_err(|e| BenchError::Target(e.to_string()))?;
        samples.push(t.elapsed().as_micros() as u64);
        done += n;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = store.close().await;
    let mut r = BenchResult::new(
        "raw-insert",
        &p.label,
        format!("{} events, {} per transaction", p.events, p.batch),
        "events/s",
    );
    r.counted(done, p.events, seconds);
    r.latencies(samples);
    r.note = "latency = one transaction (insert + commit)".into();
    Ok(r)
}
