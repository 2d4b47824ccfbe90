//! `cradle-bench`: bounded load scenarios against Cradle or any MQTT broker, one small
//! module per scenario, each producing a [`BenchResult`] (a JSON line); [`report`] turns the
//! lines into the Markdown tables of `BENCHMARKS.md`.
//!
//! Every scenario has a message count and a time limit and stops by itself. Latencies are
//! measured on one machine's wall clock (sender and receiver share it); broker CPU and peak
//! RSS come from `/proc/{pid}` when the broker's pid is given.

pub mod connections;
pub mod fleet;
pub mod history;
pub mod pipeline;
pub mod puback;
pub mod report;
pub mod signalling;
pub mod storm;
pub(crate) mod storm_pwa;
pub mod stream;
pub mod throughput;
pub mod websocket;
pub(crate) mod wire;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The broker or Cradle misbehaved.
    #[error("{0}")]
    Target(String),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchResult {
    /// Scenario name, e.g. `throughput-qos0`.
    pub scenario: String,
    /// What was measured: `cradle`, `mosquitto`, `sqlite`, ...
    pub target: String,
    /// The scenario's parameters, human-readable.
    pub(crate) params: String,
    /// Units completed (messages, events, connections).
    pub count: u64,
    /// Units expected.
    pub expected: u64,
    /// Wall-clock seconds of the measured phase.
    pub seconds: f64,
    /// `count / seconds`, or the scenario's main figure.
    pub rate: f64,
    /// Unit of `rate`.
    pub(crate) unit: String,
    /// Latency percentiles in milliseconds, when measured.
    pub(crate) p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub(crate) p99_ms: Option<f64>,
    /// See `p50_ms`.
    pub(crate) p999_ms: Option<f64>,
    /// CPU seconds the target process used during the phase.
    pub(crate) cpu_seconds: Option<f64>,
    /// Peak resident memory of the target process, MiB.
    pub(crate) peak_rss_mib: Option<f64>,
    /// Anything a reader must know about this row.
    pub note: String,
}

/// What a round-trip run did: `received` of `expected` messages came back, `sent` of them
/// were offered over `send_secs`, with one latency sample (µs) per message received.
pub(crate) struct RoundTrip {
    pub(crate) received: u64,
    pub(crate) expected: u64,
    pub(crate) sent: u64,
    pub(crate) send_secs: f64,
    pub(crate) samples: Vec<u64>,
}

impl BenchResult {
    /// A result with the common fields set.
    pub fn new(scenario: &str, target: &str, params: String, unit: &str) -> BenchResult {
        BenchResult {
            scenario: scenario.into(),
            target: target.into(),
            params,
            count: 0,
            expected: 0,
            seconds: 0.0,
            rate: 0.0,
            unit: unit.into(),
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
            cpu_seconds: None,
            peak_rss_mib: None,
            note: String::new(),
        }
    }

    /// Records `count` of `expected` units done in `seconds`, the rate being their quotient.
    pub fn counted(&mut self, count: u64, expected: u64, seconds: f64) {
        self.count = count;
        self.expected = expected;
        self.seconds = seconds;
        self.rate = count as f64 / seconds.max(1e-9);
    }

    /// Fills the latency percentiles from samples in microseconds.
    pub(crate) fn latencies(&mut self, mut micros: Vec<u64>) {
        if micros.is_empty() {
            return;
        }
        micros.sort_unstable();
        let pick = |q: f64| {
            let i = ((micros.len() as f64 - 1.0) * q).round() as usize;
            micros[i] as f64 / 1000.0
        };
        self.p50_ms = Some(pick(0.50));
        self.p99_ms = Some(pick(0.99));
        self.p999_ms = Some(pick(0.999));
    }

    /// Fills CPU and memory from two samples of the target process.
    pub fn process(&mut self, before: Option<ProcStats>, after: Option<ProcStats>) {
        if let (Some(b), Some(a)) = (before, after) {
            self.cpu_seconds = Some(a.cpu_seconds - b.cpu_seconds);
            self.peak_rss_mib = Some(a.peak_rss_kib as f64 / 1024.0);
        }
    }
}

/// CPU and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStats {
    /// User plus system CPU seconds since start.
    pub(crate) cpu_seconds: f64,
    /// Resident memory now, KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident memory, KiB.
    pub peak_rss_kib: u64,
}

/// Reads `/proc/{pid}/stat` and `/proc/{pid}/status`; `None` without a pid or on error.
pub(crate) fn proc_stats(pid: Option<u32>) -> Option<ProcStats> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    // USER_HZ is 100 on every mainstream Linux configuration.
    Some(ProcStats {
        cpu_seconds: (utime + stime) / 100.0,
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:")?,
    })
}

/// Wall-clock nanoseconds, the timestamp carried in payloads.
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A payload of `size` bytes (at least 8) starting with the send time.
pub(crate) fn stamped_payload(size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(8)];
    stamp(&mut p);
    p
}

/// Writes the current time over the first 8 bytes of a payload from `stamped_payload`
/// (a payload reused for message after message).
pub fn stamp(payload: &mut [u8]) {
    payload[..8].copy_from_slice(&now_nanos().to_be_bytes());
}

/// `{prefix}-{count}` with thousands as `k` (`idle-memory-10k`).
pub(crate) fn count_name(prefix: &str, count: usize) -> String {
    if count >= 1000 {
        format!("{prefix}-{}k", count / 1000)
    } else {
        format!("{prefix}-{count}")
    }
}

impl BenchResult {
    /// A round-trip run (`run`: what was sent, received and timed), the target's process
    /// stats, and a note.
    pub(crate) fn round_trip(
        &mut self,
        run: RoundTrip,
        before: Option<ProcStats>,
        after: Option<ProcStats>,
        note: &str,
    ) {
        self.count = run.received;
        self.expected = run.expected;
        self.seconds = run.send_secs;
        self.rate = run.sent as f64 / run.send_secs.max(1e-9);
        self.latencies(run.samples);
        self.process(before, after);
        self.note = note.to_string();
    }

    /// Resident memory per connection: `opened` of `count` connections opened in
    /// `connect_secs`, the target's RSS `before` and `after`; `verb` names a connect in the
    /// note (`connects`, `upgrades`).
    pub(crate) fn memory_per_connection(
        &mut self,
        count: usize,
        opened: usize,
        connect_secs: f64,
        before: Option<ProcStats>,
        after: Option<ProcStats>,
        verb: &str,
    ) {
        self.count = opened as u64;
        self.expected = count as u64;
        self.seconds = connect_secs;
        if let (Some(b), Some(a)) = (before, after) {
            self.rate = (a.rss_kib.saturating_sub(b.rss_kib)) as f64 / count as f64;
            self.peak_rss_mib = Some(a.peak_rss_kib as f64 / 1024.0);
            self.cpu_seconds = Some(a.cpu_seconds - b.cpu_seconds);
            self.note = format!(
                "RSS {:.1} → {:.1} MiB; {:.0} {verb}/s",
                b.rss_kib as f64 / 1024.0,
                a.rss_kib as f64 / 1024.0,
                count as f64 / connect_secs
            );
        }
    }
}

/// Microseconds since the time stamped in `payload`.
pub(crate) fn age_micros(payload: &[u8]) -> Option<u64> {
    let sent = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    Some(now_nanos().saturating_sub(sent) / 1000)
}

/// Host and port of an `mqtt://` URL.
pub(crate) fn broker_addr(url: &str) -> Result<(String, u16), BenchError> {
    crate::monitor::parse_broker_url(url).map_err(|e| BenchError::Usage(e.to_string()))
}

/// A run id that keeps topics and client ids of concurrent runs apart.
pub fn run_id() -> String {
    format!("{:x}", now_nanos() & 0xff_ffff_ffff)
}

/// Cradle's store at `database_url`, opened by the bench (to provision devices or check the
/// event log).
pub(crate) async fn open_store(database_url: &str) -> Result<crate::store::Store, BenchError> {
    crate::store::Store::connect(&crate::config::StoreConfig {
        database_url: database_url.to_string(),
        ..crate::config::StoreConfig::default()
    })
    .await
    .map_err(|e| BenchError::Target(e.to_string()))
}

/// The value of one series of Cradle's `/metrics` (0 when absent).
pub async fn metric(http: &str, series: &str) -> Result<u64, BenchError> {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Target(format!("{http}/metrics: {e}")))?
        .text()
        .await
        .map_err(|e| BenchError::Target(e.to_string()))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Drives a publisher's event loop (with `TCP_NODELAY`) until `stop` is set.
pub fn pump(
    mut eventloop: rumqttc::EventLoop,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    crate::mqtt_client::nodelay(&mut eventloop);
    tokio::spawn(async move {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
}

/// Polls `read` (a count, e.g. from `/metrics`) every 10 ms until it is `expected` past
/// `base`, or `max_secs` passed; returns how far past `base` it got.
pub(crate) async fn wait_count<F, Fut>(
    base: u64,
    expected: u64,
    max_secs: u64,
    mut read: F,
) -> Result<u64, BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, BenchError>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(max_secs);
    let mut count = 0;
    while std::time::Instant::now() < deadline {
        count = read().await?.saturating_sub(base);
        if count >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(count)
}

/// Waits until `f` is true or `limit` passes; returns whether it became true.
pub(crate) async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// A deterministic jitter in `0..max_ms` for device `i`'s `attempt`-th retry.
pub(crate) fn jitter(i: usize, attempt: u32, max_ms: u64) -> u64 {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(attempt);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x % max_ms.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_sorted_samples() {
        let mut r = BenchResult::new("s", "t", String::new(), "msg/s");
        r.latencies((1..=1000).rev().collect());
        assert_eq!(r.p50_ms, Some(0.501));
        assert_eq!(r.p99_ms, Some(0.990));
        assert_eq!(r.p999_ms, Some(0.999));
    }

    #[test]
    fn a_stamped_payload_has_its_size_and_a_small_age() {
        let p = stamped_payload(100);
        assert_eq!(p.len(), 100);
        assert!(age_micros(&p).unwrap() < 5_000_000);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = proc_stats(Some(std::process::id())).unwrap();
        assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib);
    }
}
