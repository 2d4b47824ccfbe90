//! The gate in front of every secret verification.
//!
//! Secrets issued since issue 13 are checked in about a microsecond ([`super::hashing`]); those
//! issued before keep argon2id hashes, slow and memory-hard by design (~19 MiB and tens of
//! milliseconds of a core per run), so anybody who can make Cradle verify a secret — an MQTT CONNECT with a password, an
//! HTTP request or a WebSocket upgrade with a bearer token — could make it spend that without
//! bound. The gate bounds it three ways:
//!
//! - at most `max_running` verifications run at once (process-wide); the others wait for a
//!   slot in arrival order, at most `wait`, and are then refused as busy;
//! - at most `max_per_source` of them wait or run for one source address, so one host cannot
//!   queue in front of every other host;
//! - a source whose verifications failed more than [`FREE_FAILURES`] times recently waits a
//!   growing delay before each further one (250 ms doubling, at most `failure_delay_max`);
//!   its failures are forgotten [`FAILURE_MEMORY`] after the last one.
//!
//! The per-source table holds at most [`MAX_SOURCES`] addresses; beyond that, sources that are
//! neither waiting nor remembered for failures are forgotten first, and a new source that
//! still does not fit is verified without its per-source limits (the process-wide bound
//! holds). The gate is process-wide ([`gate`]), configured once at start ([`configure`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::{Desc, Exposition, Family};

/// Failures a source may have before its verifications are delayed.
pub(crate) const FREE_FAILURES: u32 = 3;
/// How long a source's failures are remembered after its last one.
pub(crate) const FAILURE_MEMORY: Duration = Duration::from_secs(300);
/// Source addresses tracked at most.
pub(crate) const MAX_SOURCES: usize = 65_536;
/// The first delay after [`FREE_FAILURES`] failures; it doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_millis(250);

/// The gate's limits (`[auth]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GateSettings {
    /// Verifications running at once (`auth.max_verifications`).
    pub(crate) max_running: usize,
    /// Verifications waiting or running per source address
    /// (`auth.max_verifications_per_source`).
    pub(crate) max_per_source: usize,
    /// Longest wait for a slot (`auth.verify_wait_ms`).
    pub wait: Duration,
    /// Longest delay after failures (`auth.failure_delay_max_ms`).
    pub(crate) failure_delay_max: Duration,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            max_running: 2,
            max_per_source: 1,
            wait: Duration::from_secs(5),
            failure_delay_max: Duration::from_secs(10),
        }
    }
}

/// No slot within the configured wait: the caller refuses (MQTT: server busy; HTTP: 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many secrets are being verified; try again later")]
pub struct Busy;

/// What the gate remembers of one source address.
struct Source {
    slots: Arc<Semaphore>,
    failures: u32,
    last_failure: Option<Instant>,
}

/// The delay before a verification for a source with `failures` recent failures: none up to
/// [`FREE_FAILURES`], then 250 ms doubling per failure, at most `max`.
pub(crate) fn failure_delay(failures: u32, max: Duration) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(max)
}

/// Counters of the gate, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct GateStats {
    /// Verifications that passed.
    pub ok: AtomicU64,
    /// Verifications that failed (wrong or unknown secret).
    pub failed: AtomicU64,
    /// Callers refused because no slot came within the wait.
    pub busy: AtomicU64,
    /// Verifications delayed because their source failed recently.
    pub(crate) delayed: AtomicU64,
    /// Callers waiting for a slot now.
    pub waiting: AtomicI64,
}

/// The gate (see the module documentation).
pub(crate) struct Gate {
    settings: GateSettings,
    running: Arc<Semaphore>,
    sources: Mutex<HashMap<IpAddr, Source>>,
    /// Counters.
    pub(crate) stats: GateStats,
}

/// A slot to verify in; the caller reports a failure with [`Permit::failed`].
pub(crate) struct Permit<'a> {
    gate: &'a Gate,
    source: Option<IpAddr>,
    _running: OwnedSemaphorePermit,
    _source_slot: Option<OwnedSemaphorePermit>,
    reported: bool,
}

impl Permit<'_> {
    /// The secret did not verify: counts against the source.
    pub fn failed(mut self) {
        self.reported = true;
        self.gate.stats.failed.fetch_add(1, Relaxed);
        if let Some(ip) = self.source {
            let mut sources = self.gate.lock();
            if let Some(s) = sources.get_mut(&ip) {
                let now = Instant::now();
                if s.last_failure
                    .is_some_and(|at| now.duration_since(at) >= FAILURE_MEMORY)
                {
                    s.failures = 0;
                }
                s.failures = s.failures.saturating_add(1);
                s.last_failure = Some(now);
            }
        }
    }
}

impl Drop for Permit<'_> {
    /// Not reported as failed: the secret verified, and the source's failures are forgotten
    /// (a device behind an address that others failed from is not delayed after it succeeds).
    fn drop(&mut self) {
        if !self.reported {
            self.gate.stats.ok.fetch_add(1, Relaxed);
            if let Some(ip) = self.source {
                if let Some(s) = self.gate.lock().get_mut(&ip) {
                    s.failures = 0;
                }
            }
        }
    }
}

struct Waiting<'a>(&'a GateStats);

impl<'a> Waiting<'a> {
    fn new(stats: &'a GateStats) -> Self {
        stats.waiting.fetch_add(1, Relaxed);
        Waiting(stats)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

impl Gate {
    /// A gate with these limits.
    pub fn new(settings: GateSettings) -> Self {
        Self {
            running: Arc::new(Semaphore::new(settings.max_running.max(1))),
            sources: Mutex::new(HashMap::new()),
            stats: GateStats::default(),
            settings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Source>> {
        // A panic while holding this lock cannot leave the table inconsistent (each update is
        // one assignment), so a poisoned lock is used as it is rather than stopping every
        // later verification.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The delay due before a verification for `ip` now.
    fn delay(&self, ip: IpAddr) -> Duration {
        let failures = self.lock().get(&ip).map_or(0, |s| match s.last_failure {
            Some(at) if at.elapsed() < FAILURE_MEMORY => s.failures,
            _ => 0,
        });
        failure_delay(failures, self.settings.failure_delay_max)
    }

    /// The source's slot semaphore; `None` when the table is full.
    fn source(&self, ip: IpAddr) -> Option<Arc<Semaphore>> {
        let mut sources = self.lock();
        let now = Instant::now();
        if !sources.contains_key(&ip) && sources.len() >= MAX_SOURCES {
            let per_source = self.settings.max_per_source.max(1);
            sources.retain(|_, s| {
                s.slots.available_permits() < per_source
                    || s.last_failure
                        .is_some_and(|at| now.duration_since(at) < FAILURE_MEMORY)
            });
            if sources.len() >= MAX_SOURCES {
                return None;
            }
        }
        let s = sources.entry(ip).or_insert_with(|| Source {
            slots: Arc::new(Semaphore::new(self.settings.max_per_source.max(1))),
            failures: 0,
            last_failure: None,
        });
        Some(s.slots.clone())
    }

    /// Waits for a slot for a verification on behalf of `source` (`None`: no address, e.g.
    /// the command line), or refuses with [`Busy`].
    pub(crate) async fn enter(&self, source: Option<IpAddr>) -> Result<Permit<'_>, Busy> {
        let _waiting = Waiting::new(&self.stats);
        let deadline = Instant::now() + self.settings.wait;
        let busy = || {
            self.stats.busy.fetch_add(1, Relaxed);
            Busy
        };
        let mut source_slot = None;
        if let Some((ip, slots)) = source.and_then(|ip| Some((ip, self.source(ip)?))) {
            let slot = tokio::time::timeout_at(deadline, slots.acquire_owned())
                .await
                .map_err(|_| busy())?
                .map_err(|_| busy())?;
            source_slot = Some(slot);
            // The delay is read once this caller has the source's slot, so it counts the
            // failures of the attempts that went before it.
            let delay = self.delay(ip);
            if !delay.is_zero() {
                // Holding the source's slot while delayed: the source's other attempts queue
                // behind this one instead of running in parallel.
                self.stats.delayed.fetch_add(1, Relaxed);
                tokio::time::sleep(delay).await;
            }
        }
        let deadline = deadline.max(Instant::now());
        let running = tokio::time::timeout_at(deadline, self.running.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        Ok(Permit {
            gate: self,
            source,
            _running: running,
            _source_slot: source_slot,
            reported: false,
        })
    }

    /// Source addresses tracked now.
    pub(crate) fn sources(&self) -> usize {
        self.lock().len()
    }
}

static GATE: OnceLock<Gate> = OnceLock::new();

/// Sets the process's gate limits; only the first call (at start) takes effect.
pub fn configure(settings: GateSettings) {
    let _ = GATE.set(Gate::new(settings));
}

/// The process's gate (default limits when [`configure`] was not called).
pub(crate) fn gate() -> &'static Gate {
    GATE.get_or_init(|| Gate::new(GateSettings::default()))
}

/// The process's gate as metric families: outcomes, delays, waiters, tracked sources.
pub(crate) struct GateMetrics;

impl Family for GateMetrics {
    fn render(&self, out: &mut Exposition) {
        let gate = gate();
        let st = &gate.stats;
        out.family(Desc::counter(
            "cradle_auth_verifications_total",
            "argon2 secret verifications (MQTT passwords, bearer tokens), by outcome; busy: refused after auth.verify_wait_ms without a slot.",
        ))
        .sample("outcome=\"ok\"", st.ok.load(Relaxed))
        .sample("outcome=\"failed\"", st.failed.load(Relaxed))
        .sample("outcome=\"busy\"", st.busy.load(Relaxed));
        out.counter(
            "cradle_auth_verifications_delayed_total",
            "Verifications delayed because their source address failed repeatedly.",
            st.delayed.load(Relaxed),
        );
        out.gauge(
            "cradle_auth_verifications_waiting",
            "Callers waiting for a verification slot now.",
            st.waiting.load(Relaxed),
        );
        out.gauge(
            "cradle_auth_sources",
            "Source addresses the verification gate tracks (bounded).",
            gate.sources(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_running: usize, max_per_source: usize, wait_ms: u64) -> GateSettings {
        GateSettings {
            max_running,
            max_per_source,
            wait: Duration::from_millis(wait_ms),
            failure_delay_max: Duration::from_secs(10),
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_few_failures_cost_no_delay_then_the_delay_doubles_up_to_its_cap() {
        let max = Duration::from_secs(10);
        for f in 0..=FREE_FAILURES {
            assert_eq!(failure_delay(f, max), Duration::ZERO);
        }
        assert_eq!(failure_delay(4, max), Duration::from_millis(250));
        assert_eq!(failure_delay(5, max), Duration::from_millis(500));
        assert_eq!(failure_delay(6, max), Duration::from_millis(1000));
        assert_eq!(failure_delay(40, max), max);
        assert_eq!(failure_delay(u32::MAX, max), max);
    }

    #[tokio::test]
    async fn one_source_cannot_take_every_slot() {
        let gate = Gate::new(settings(2, 1, 50));
        let held = gate.enter(ip(1)).await.expect("first of source 1");
        // A second verification of the same source waits for the first, then gives up.
        assert_eq!(gate.enter(ip(1)).await.err(), Some(Busy));
        // Another source still gets the other slot at once.
        let other = gate.enter(ip(2)).await.expect("source 2");
        drop((held, other));
        assert_eq!(gate.stats.busy.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn callers_beyond_the_running_bound_are_refused_after_the_wait() {
        let gate = Gate::new(settings(1, 1, 30));
        let _held = gate.enter(None).await.expect("slot");
        let started = Instant::now();
        assert_eq!(gate.enter(None).await.err(), Some(Busy));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_that_keeps_failing_is_delayed_and_others_are_not() {
        let gate = Gate::new(settings(2, 1, 60_000));
        for _ in 0..FREE_FAILURES + 2 {
            gate.enter(ip(1)).await.expect("slot").failed();
        }
        let started = Instant::now();
        drop(gate.enter(ip(1)).await.expect("slot"));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        let started = Instant::now();
        drop(gate.enter(ip(2)).await.expect("slot"));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(gate.stats.failed.load(Relaxed), 5);
        assert_eq!(gate.stats.ok.load(Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_forgotten_after_a_quiet_spell() {
        let gate = Gate::new(settings(2, 1, 60_000));
        for _ in 0..FREE_FAILURES + 3 {
            gate.enter(ip(1)).await.expect("slot").failed();
        }
        tokio::time::advance(FAILURE_MEMORY).await;
        let started = Instant::now();
        drop(gate.enter(ip(1)).await.expect("slot"));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
