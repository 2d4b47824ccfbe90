//! What a panic costs, by task: one in a task that serves one client (a device's MQTT
//! connection, an HTTP request, a WebSocket session) ends that client's work alone; one in a
//! task the whole service depends on (the status writer, the station and session handlers,
//! the bus, the bridge, a listener) makes Cradle not ready (`/readyz` answers 503 naming the
//! task) and `cradle serve` drains and exits non-zero, so a supervisor restarts it instead of
//! Cradle serving on with a dead pipeline.
//!
//! Every panic is logged with its task and message and counted in `cradle_task_panics_total`
//! by task. The state is process-wide, as a panic hook is: one `cradle serve` per process.
//!
//! This module imports nothing of Cradle's but the metrics registry.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::LazyLock;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::{labels, Desc, Exposition, Family, Labeled};

/// A kind of task, as `cradle_task_panics_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One device's MQTT connection behind the edge.
    MqttConnection,
    /// One HTTP request.
    HttpRequest,
    /// One WebSocket session's socket on `/ws`.
    WsSocket,
    /// An MQTT edge listener's accept loop.
    MqttListener,
    /// The HTTP server's accept loop.
    HttpServer,
    /// The status writer (`sync::status`).
    StatusWriter,
    /// The station handler (`sync::stations`).
    StationHandler,
    /// The session handler (`sync::sessions`).
    SessionHandler,
    /// Cradle's subscriber (`bus`).
    Bus,
    /// The WebSocket bridge's MQTT side.
    Bridge,
    /// Ends handed-over WebSocket sessions whose window passed (several replicas).
    HandoverExpiry,
    /// Applies decisions from `cradle/control` (revocations, kicks).
    Control,
    /// The live feed of the event log (`feed`).
    Feed,
    /// Removes events past `store.retention_days` (`store::retention`).
    Retention,
}

impl Task {
    /// Every kind, in exposition order.
    pub const ALL: [Task; 14] = [
        Self::MqttConnection,
        Self::HttpRequest,
        Self::WsSocket,
        Self::MqttListener,
        Self::HttpServer,
        Self::StatusWriter,
        Self::StationHandler,
        Self::SessionHandler,
        Self::Bus,
        Self::Bridge,
        Self::HandoverExpiry,
        Self::Control,
        Self::Feed,
        Self::Retention,
    ];

    /// The label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MqttConnection => "mqtt_connection",
            Self::HttpRequest => "http_request",
            Self::WsSocket => "ws_socket",
            Self::MqttListener => "mqtt_listener",
            Self::HttpServer => "http_server",
            Self::StatusWriter => "status_writer",
            Self::StationHandler => "station_handler",
            Self::SessionHandler => "session_handler",
            Self::Bus => "bus",
            Self::Bridge => "bridge",
            Self::HandoverExpiry => "handover_expiry",
            Self::Control => "control",
            Self::Feed => "feed",
            Self::Retention => "retention",
        }
    }

    /// Does the service depend on this task (a panic makes Cradle not ready and exit)?
    pub fn critical(self) -> bool {
        !matches!(
            self,
            Self::MqttConnection | Self::HttpRequest | Self::WsSocket
        )
    }
}

labels!(Task);

/// Panics by task, and the first critical task that panicked.
struct State {
    panics: Labeled<Task>,
    failed: watch::Sender<Option<Task>>,
}

static STATE: LazyLock<State> = LazyLock::new(|| State {
    panics: Labeled::default(),
    failed: watch::Sender::new(None),
});

/// Runs `work` as a task of kind `task`: its output, or `None` when it panicked (logged,
/// counted; a critical task also makes Cradle not ready, [`failed`]).
pub(crate) async fn contain<T>(task: Task, work: impl Future<Output = T>) -> Option<T> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(out) => Some(out),
        Err(panic) => {
            record(task, panic.as_ref());
            None
        }
    }
}

/// Spawns a task the service depends on: should it panic, Cradle becomes not ready and
/// `cradle serve` exits (see [`wait_failed`]).
pub(crate) fn spawn_critical<F>(task: Task, work: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    debug_assert!(task.critical(), "{task:?} is not a critical task");
    tokio::spawn(async move {
        contain(task, work).await;
    })
}

/// Logs and counts a panic of `task`; a critical task's marks Cradle failed.
fn record(task: Task, panic: &(dyn std::any::Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    STATE.panics.inc(task);
    if task.critical() {
        tracing::error!(
            task = task.as_str(),
            message,
            "a task Cradle depends on panicked; Cradle is not ready and exits"
        );
        STATE.failed.send_if_modified(|failed| {
            let first = failed.is_none();
            if first {
                *failed = Some(task);
            }
            first
        });
    } else {
        tracing::error!(
            task = task.as_str(),
            message,
            "task panicked; that client's work alone ended"
        );
    }
}

/// The first critical task that panicked, if any.
pub fn failed() -> Option<Task> {
    *STATE.failed.borrow()
}

/// Resolves with the first critical task that panicked.
pub async fn wait_failed() -> Task {
    let mut rx = STATE.failed.subscribe();
    loop {
        if let Some(task) = *rx.borrow_and_update() {
            return task;
        }
        if rx.changed().await.is_err() {
            // The sender lives in a static: never closed.
            std::future::pending::<()>().await;
        }
    }
}

/// `cradle_task_panics_total`, by task.
pub(crate) struct TaskMetrics;

impl Family for TaskMetrics {
    fn render(&self, out: &mut Exposition) {
        out.family(Desc::counter(
            "cradle_task_panics_total",
            "Tasks that ended by a panic, by task: a client's task ended alone; a critical one made Cradle not ready and exit.",
        ))
        .labeled("", "task", &STATE.panics);
    }
}

/// Test-only fault injection, compiled into debug builds alone (the test suite's binary):
/// `CRADLE_TEST_PANIC="place:key,…"` makes the named place panic when it handles `key`.
/// Places: `http` (a request's path), `mqtt` (a device's client id, once admitted), `ws` (a
/// WebSocket session's client id), `status` (a status report's client id). A release build
/// has none of this.
pub(crate) fn inject(place: &str, key: &str) {
    #[cfg(debug_assertions)]
    {
        static FAULTS: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
            std::env::var("CRADLE_TEST_PANIC")
                .unwrap_or_default()
                .split(',')
                .filter_map(|f| f.split_once(':'))
                .map(|(p, k)| (p.trim().to_string(), k.trim().to_string()))
                .collect()
        });
        if FAULTS.iter().any(|(p, k)| p == place && k == key) {
            panic!("injected panic (CRADLE_TEST_PANIC) at {place} for {key}");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = (place, key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_is_at_its_place() {
        crate::metrics::assert_places::<Task>();
    }

    #[test]
    fn only_the_tasks_of_one_client_are_not_critical() {
        let clients: Vec<Task> = Task::ALL.into_iter().filter(|t| !t.critical()).collect();
        assert_eq!(
            clients,
            [Task::MqttConnection, Task::HttpRequest, Task::WsSocket]
        );
    }

    #[tokio::test]
    async fn a_contained_panic_of_a_client_task_is_counted_and_leaves_cradle_ready() {
        let before = STATE.panics.get(Task::WsSocket);
        let out = contain(Task::WsSocket, async { panic!("boom") }).await;
        let ok: Option<u8> = contain(Task::WsSocket, async { 7 }).await;
        assert_eq!((out, ok), (None::<()>, Some(7)));
        assert_eq!(STATE.panics.get(Task::WsSocket), before + 1);
        // (Only this test module's process: no critical task panics in unit tests.)
        assert_eq!(failed(), None);
    }
}
