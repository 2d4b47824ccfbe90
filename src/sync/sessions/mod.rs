//! The session lifecycle around the pure decider (`domain::session`): starts and ends from
//! HTTP and MQTT, pending starts waiting for their connection, ends caused by connection
//! changes (clean disconnect, grace period), and the read models they keep.
//!
//! Every change is one transaction: the session events (stream `session/{account}/{id}`,
//! `session.started` version 1, `session.ended` version 2, idempotency keys per event) and
//! the `sessions` read-model rows. The baby-station announcement (retained) is published
//! after the commit.
//!
//! One job per file: [`Sessions`] and its types here; `commands` (starts and ends: load
//! the state, decide, append and project in one transaction, announce), `parked` (starts
//! waiting for their connection), `sweep` (ends caused by connection changes), `announce`
//! (the retained baby-station announcements and the list's followers), `queries` (the
//! baby-station list and usage, for HTTP and the bridge) and `parents` (the parent
//! stations' read model).

mod announce;
mod commands;
mod parents;
mod parked;
mod queries;
mod sweep;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::AsyncClient;
use tokio::sync::mpsc;

use super::metrics::SyncMetrics;
use crate::domain::session::SessionRefused;
pub(crate) use crate::domain::usage::Usage;
use crate::store::Store;
use crate::sync::pending::PendingStarts;

pub(crate) use announce::active_of;
pub(crate) use announce::{announcement, announcement_topic};
pub(crate) use queries::{usage, BabyStation};

/// Settings of the session handler.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// How long a lost baby station may stay away before its session ends.
    pub grace: Duration,
    /// Pending starts kept per account (the least recently parked evicted).
    pub(crate) pending_per_account: usize,
}

/// What a start did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// Recorded now.
    Started,
    /// The session was already active (a duplicate).
    AlreadyActive,
    /// The connection is not known yet: the start waits for it.
    Pending,
    /// The session already ended; the start was dropped.
    AlreadyEnded,
    /// A station's start named what is not its own: nothing recorded.
    Refused(SessionRefused),
}

/// What an end did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    /// Recorded now.
    Ended,
    /// It had already ended.
    AlreadyEnded,
    /// It was still pending: removed, nothing recorded.
    PendingRemoved,
    /// No such session.
    Unknown,
    /// A station's end named another station's session: nothing recorded.
    Refused(SessionRefused),
}

/// A start as asked (HTTP or MQTT), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// The session.
    pub session_id: String,
    /// The baby station, when the caller knows it; otherwise resolved from the connection.
    pub client_id: Option<String>,
    /// The baby station's connection.
    pub connection_id: String,
    /// Display name.
    pub name: String,
    /// When it started (the caller's clock).
    pub started_at_millis: i64,
}

/// The session handler: shared by the HTTP routes, the MQTT handlers and the sweeper.
pub struct Sessions {
    store: Store,
    metrics: Arc<SyncMetrics>,
    mqtt: AsyncClient,
    settings: SessionSettings,
    pending: PendingStarts,
    listeners: Mutex<Vec<mpsc::UnboundedSender<(String, serde_json::Value)>>>,
}

impl Sessions {
    /// A handler over `store`, publishing announcements with `mqtt`.
    pub fn new(
        store: Store,
        metrics: Arc<SyncMetrics>,
        mqtt: AsyncClient,
        settings: SessionSettings,
    ) -> Self {
        let pending =
            PendingStarts::new(store.clone(), metrics.clone(), settings.pending_per_account);
        Self {
            store,
            metrics,
            mqtt,
            settings,
            pending,
            listeners: Mutex::new(Vec::new()),
        }
    }
}
