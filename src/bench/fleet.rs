//! What a realistic fleet costs the broker: N devices, ten per account, each shaped as a baby
//! station: it connects (MQTT 3.1.1, keep-alive 600) with a retained QoS 1 Will on its status
//! topic, publishes a retained QoS 1 `connected` status, subscribes to its account's statuses
//! (`accounts/{a}/clients/+/status`, QoS 1), then idles. Each device is a rumqttc client (it
//! acknowledges what it receives, as a device's library does). The broker's resident memory
//! before and after, per device, is the figure; open mode (anonymous devices).

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use super::{broker_addr, proc_stats, run_id, BenchError, BenchResult};

/// Devices per account.
const PER_ACCOUNT: usize = 10;

/// Connects `count` fleet-shaped devices to `broker` and reports the broker's memory per device.
pub async fn run(
    broker: &str,
    label: &str,
    pid: Option<u32>,
    count: usize,
) -> Result<BenchResult, BenchError> {
    let (host, port) = broker_addr(broker)?;
    if pid.is_none() {
        return Err(BenchError::Usage(
            "fleet memory needs --pid of the broker".into(),
        ));
    }
    let run = run_id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc_stats(pid);
    let started = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        devices.push(device((&host, port), &run, i, ready_tx.clone()));
        // A hundred connecting at once, as the idle scenario.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(ready_tx);
    let mut ready = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the retained statuses and their deliveries settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = proc_stats(pid);
    let mut r = BenchResult::new(
        &super::count_name("fleet-memory", count),
        label,
        format!(
            "{count} devices, {PER_ACCOUNT} per account: retained QoS 1 Will and status, account subscription (open mode)"
        ),
        "KiB/device",
    );
    r.memory_per_connection(count, ready, connect_secs, before, after, "devices ready");
    for (_, task) in devices {
        task.abort();
    }
    Ok(r)
}

/// Device `i`: connects with its Will, then publishes its status and subscribes to its
/// account's on every CONNACK; tells `ready` at its first SUBACK.
fn device(
    (host, port): (&str, u16),
    run: &str,
    i: usize,
    ready: mpsc::UnboundedSender<()>,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let account = format!("fleet-{run}-{}", i / PER_ACCOUNT);
    let client = format!("baby-{i}");
    let topic = format!("accounts/{account}/clients/{client}/status");
    let k = format!("{client}-{run}");
    let mut options = MqttOptions::new(format!("{account}-{client}"), host, port);
    options.set_keep_alive(Duration::from_secs(600));
    let will =
        format!(r#"{{"type":"disconnected","connection_id":"{k}","reason":"lost","at_millis":1}}"#);
    options.set_last_will(LastWill::new(&topic, will, QoS::AtLeastOnce, true));
    let (mqtt, mut eventloop) = AsyncClient::new(options, 16);
    let status = format!(r#"{{"type":"connected","connection_id":"{k}","at_millis":1}}"#);
    let filter = format!("accounts/{account}/clients/+/status");
    let device = mqtt.clone();
    let task = tokio::spawn(async move {
        let mut told = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = device
                        .publish(&topic, QoS::AtLeastOnce, true, status.clone())
                        .await;
                    let _ = device.subscribe(&filter, QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) if !told => {
                    told = true;
                    let _ = ready.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (mqtt, task)
}
