//! The session lifecycle around the pure decider (`domain::session`): starts and ends from
//! HTTP and MQTT, pending starts waiting for their connection, ends caused by connection
//! changes (clean disconnect, grace period), and the read models they keep.
//!
//! Every change is one transaction: the session events (stream `session/{account}/{id}`,
//! `session.started` version 1, `session.ended` version 2, idempotency keys per event) and
//! the `sessions` read-model rows. The baby-station announcement (retained) is published
//! after the commit.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::now_millis;
use crate::domain::connection::ConnectionEvent;
use crate::domain::session::{
    decide_end, decide_start, end_when_away, ActiveSession, Actor, EndReason, Rejected,
    SessionEvent, SessionIgnored, SessionRefused, SessionState,
};
use crate::domain::usage::SessionSpan;
pub use crate::domain::usage::{Usage, UsageClient, UsageSession};
use crate::metrics::Metrics;
use crate::store::{parent_stations, sessions, NewEvent, Store, StoreError, StoreTx};
use crate::sync::pending::{PendingStart, PendingStarts};
use crate::sync::status::ConnectionChange;

/// Version of the session events' payload shape.
pub const EVENT_VERSION: i32 = 1;

/// Settings of the session handler.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// How long a lost baby station may stay away before its session ends.
    pub grace: Duration,
    /// Pending starts kept per account (the least recently parked evicted).
    pub pending_per_account: usize,
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

/// A baby station in the list: an active session and whether its station is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BabyStation {
    /// The station's client id.
    pub client_id: String,
    /// The connection that started the session.
    pub connection_id: String,
    /// The session.
    pub session_id: String,
    /// Display name.
    pub name: String,
    /// When the session started.
    pub started_at_millis: i64,
    /// Whether the station is connected now (false when Cradle never saw its status).
    pub connected: bool,
}

/// The session handler: shared by the HTTP routes, the MQTT handlers and the sweeper.
pub struct Sessions {
    store: Store,
    metrics: Arc<Metrics>,
    mqtt: AsyncClient,
    settings: SessionSettings,
    pending: PendingStarts,
    listeners: Mutex<Vec<mpsc::UnboundedSender<(String, serde_json::Value)>>>,
}

fn stream_id(account_id: &str, session_id: &str) -> String {
    format!("session/{account_id}/{session_id}")
}

/// The retained announcement topic of a baby station.
pub fn announcement_topic(account_id: &str, client_id: &str) -> String {
    format!("accounts/{account_id}/baby_stations/{client_id}")
}

/// The active session a `sessions` row holds (its announcement's content).
pub(crate) fn active_of(r: &sessions::Model) -> ActiveSession {
    ActiveSession::from(r)
}

fn new_event(account_id: &str, event: &SessionEvent) -> NewEvent {
    let s = event.session();
    let (version, data, at) = match event {
        SessionEvent::Started(s) => (
            1,
            serde_json::json!({
                "session_id": s.session_id, "client_id": s.client_id,
                "connection_id": s.connection_id, "name": s.name,
                "started_at_millis": s.started_at_millis,
            }),
            s.started_at_millis,
        ),
        SessionEvent::Ended {
            session,
            ended_at_millis,
            duration_millis,
            reason,
        } => (
            2,
            serde_json::json!({
                "session_id": session.session_id, "client_id": session.client_id,
                "connection_id": session.connection_id,
                "started_at_millis": session.started_at_millis,
                "ended_at_millis": ended_at_millis, "duration_millis": duration_millis,
                "reason": reason.as_str(),
            }),
            *ended_at_millis,
        ),
    };
    NewEvent {
        account_id: account_id.to_string(),
        stream: stream_id(account_id, &s.session_id),
        stream_version: version,
        event_type: event.event_type(),
        event_version: EVENT_VERSION,
        data,
        at_millis: at,
        idempotency_key: format!(
            "{}/{}",
            stream_id(account_id, &s.session_id),
            event.event_type()
        ),
    }
}

/// The announcement payload of an active session.
pub fn announcement(s: &ActiveSession) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "session_id": s.session_id,
        "client_id": s.client_id,
        "connection_id": s.connection_id,
        "name": s.name,
        "started_at_millis": s.started_at_millis,
    }))
    .expect("announcement serialises")
}

impl Sessions {
    /// A handler over `store`, publishing announcements with `mqtt`.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
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

    /// Registers a follower of baby-station list changes: it gets `(account, new list)`
    /// after every committed start or end.
    pub fn follow_baby_stations(&self, tx: mpsc::UnboundedSender<(String, serde_json::Value)>) {
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tx);
    }

    async fn notify_baby_stations(&self, account_id: &str) {
        if self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
        {
            return;
        }
        match self.baby_stations(account_id).await {
            Ok(list) => {
                let value = serde_json::to_value(list).expect("list serialises");
                self.listeners
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .retain(|tx| tx.send((account_id.to_string(), value.clone())).is_ok());
            }
            Err(error) => tracing::warn!(%error, account_id, "baby-station list not pushed"),
        }
    }

    /// Starts a session for the account (resolving its client from the connection when not
    /// given).
    pub async fn start(
        &self,
        account_id: &str,
        req: StartRequest,
    ) -> Result<StartOutcome, StoreError> {
        self.start_as(&Actor::Account, account_id, req).await
    }

    /// Starts a session asked by `by` (a station may start only on its own connections).
    pub async fn start_as(
        &self,
        by: &Actor,
        account_id: &str,
        req: StartRequest,
    ) -> Result<StartOutcome, StoreError> {
        let client_id = match &req.client_id {
            Some(c) => c.clone(),
            None => match self
                .store
                .client_of_connection(account_id, &req.connection_id)
                .await?
            {
                Some(c) => c,
                None => return self.park(account_id, req).await,
            },
        };
        let start = ActiveSession {
            session_id: req.session_id.clone(),
            client_id,
            connection_id: req.connection_id.clone(),
            name: req.name.clone(),
            started_at_millis: req.started_at_millis,
        };
        for attempt in 0..3 {
            match self.try_start(by, account_id, &start).await {
                // Another writer got there first (or holds SQLite's write lock): wait a
                // little, as it may still be committing, then decide again.
                Err(e) if e.is_retryable() => {
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await
                }
                other => return other,
            }
        }
        self.try_start(by, account_id, &start).await
    }

    async fn try_start(
        &self,
        by: &Actor,
        account_id: &str,
        start: &ActiveSession,
    ) -> Result<StartOutcome, StoreError> {
        let txn = self.store.begin().await?;
        let state = txn.session_state(account_id, &start.session_id).await?;
        let on_connection = txn
            .active_on_connection(account_id, &start.connection_id, &start.session_id)
            .await?;
        // Whose connection it is matters only to a station's start. Connection ids are the
        // devices' own words, so two clients may claim one: the connection counts as another
        // client's when ANY other client has it as its current or last connection (a station
        // cannot make a connection its own by reporting another's id on its status topic).
        let owner = match by {
            Actor::Account => None,
            Actor::Station(station) => {
                let owners = txn
                    .clients_of_connection(account_id, &start.connection_id)
                    .await?;
                owners
                    .iter()
                    .find(|o| *o != station)
                    .or(owners.first())
                    .cloned()
            }
        };
        let events = match decide_start(by, start, &state, owner.as_deref(), on_connection.as_ref())
        {
            Ok(events) => events,
            Err(Rejected::Refused(refused)) => return Ok(StartOutcome::Refused(refused)),
            Err(Rejected::Ignored(ignored)) => {
                self.count_ignored(ignored);
                return Ok(match ignored {
                    SessionIgnored::StartAfterEnd => StartOutcome::AlreadyEnded,
                    _ => StartOutcome::AlreadyActive,
                });
            }
        };
        self.write(&txn, account_id, &events).await?;
        txn.commit().await?;
        self.announce(account_id, &events).await;
        Ok(StartOutcome::Started)
    }

    /// Ends a session for the account; a pending one is removed instead.
    pub async fn end(
        &self,
        account_id: &str,
        session_id: &str,
        at_millis: i64,
        reason: EndReason,
    ) -> Result<EndOutcome, StoreError> {
        self.end_as(&Actor::Account, account_id, session_id, at_millis, reason)
            .await
    }

    /// Ends a session asked by `by`: a station may end only its own sessions, and does not
    /// remove pending starts (they belong to no station until their connection appears).
    pub async fn end_as(
        &self,
        by: &Actor,
        account_id: &str,
        session_id: &str,
        at_millis: i64,
        reason: EndReason,
    ) -> Result<EndOutcome, StoreError> {
        for attempt in 0..4 {
            let txn = self.store.begin().await?;
            let state = txn.session_state(account_id, session_id).await?;
            let event = match decide_end(by, at_millis, reason, &state) {
                Ok(e) => e,
                Err(Rejected::Refused(refused)) => return Ok(EndOutcome::Refused(refused)),
                Err(Rejected::Ignored(SessionIgnored::UnknownSession)) => {
                    drop(txn);
                    let account = *by == Actor::Account;
                    return Ok(
                        if account && self.pending.remove(account_id, session_id).await? {
                            EndOutcome::PendingRemoved
                        } else {
                            self.count_ignored(SessionIgnored::UnknownSession);
                            EndOutcome::Unknown
                        },
                    );
                }
                Err(Rejected::Ignored(ignored)) => {
                    self.count_ignored(ignored);
                    return Ok(EndOutcome::AlreadyEnded);
                }
            };
            let events = [event];
            if let Err(e) = self.write(&txn, account_id, &events).await {
                if matches!(e, StoreError::Conflict(_)) && attempt < 3 {
                    continue;
                }
                return Err(e);
            }
            if let Err(e) = txn.commit().await {
                if matches!(e, StoreError::Conflict(_)) && attempt < 3 {
                    continue;
                }
                return Err(e);
            }
            self.announce(account_id, &events).await;
            return Ok(EndOutcome::Ended);
        }
        Ok(EndOutcome::AlreadyEnded)
    }

    /// Appends `events` and updates the read model, inside `txn`.
    async fn write(
        &self,
        txn: &StoreTx,
        account_id: &str,
        events: &[SessionEvent],
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let new: Vec<NewEvent> = events.iter().map(|e| new_event(account_id, e)).collect();
        txn.append(&new, now).await?;
        for event in events {
            match event {
                SessionEvent::Started(s) => {
                    txn.insert_session(account_id, s, now).await?;
                    self.metrics.sessions_started.fetch_add(1, Relaxed);
                }
                SessionEvent::Ended {
                    session,
                    ended_at_millis,
                    reason,
                    ..
                } => {
                    txn.end_session(account_id, &session.session_id, *ended_at_millis, *reason)
                        .await?;
                    self.metrics.sessions_ended.fetch_add(1, Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Publishes (retained) the announcement of each started session and withdraws the
    /// announcement of each ended one, unless its station hosts another active session;
    /// then tells the followers of the list.
    async fn announce(&self, account_id: &str, events: &[SessionEvent]) {
        self.publish_announcements(account_id, events).await;
        self.notify_baby_stations(account_id).await;
    }

    async fn publish_announcements(&self, account_id: &str, events: &[SessionEvent]) {
        for event in events {
            let s = event.session();
            let topic = announcement_topic(account_id, &s.client_id);
            let payload = match event {
                SessionEvent::Started(s) => announcement(s),
                SessionEvent::Ended { .. } => {
                    if events.iter().any(
                        |e| matches!(e, SessionEvent::Started(n) if n.client_id == s.client_id),
                    ) {
                        continue;
                    }
                    match self
                        .store
                        .active_session_of_client(account_id, &s.client_id)
                        .await
                    {
                        Ok(Some(other)) => announcement(&other),
                        _ => Vec::new(),
                    }
                }
            };
            if let Err(error) = self
                .mqtt
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
            {
                tracing::error!(%error, "baby-station announcement not queued");
            }
        }
    }

    /// Parks a start whose connection is unknown. Checks the log first: a session that
    /// already started (or ended) is answered as such, not parked.
    async fn park(&self, account_id: &str, req: StartRequest) -> Result<StartOutcome, StoreError> {
        match self
            .store
            .session_state(account_id, &req.session_id)
            .await?
        {
            SessionState::Active(_) => return Ok(StartOutcome::AlreadyActive),
            SessionState::Ended => return Ok(StartOutcome::AlreadyEnded),
            SessionState::None => {}
        }
        self.pending
            .park(PendingStart {
                account_id: account_id.to_string(),
                session_id: req.session_id.clone(),
                connection_id: req.connection_id.clone(),
                name: req.name.clone(),
                started_at_millis: req.started_at_millis,
                // assigned by `park`
                parked_seq: 0,
                parked_at_millis: 0,
            })
            .await?;
        tracing::info!(account_id, session_id = %req.session_id, connection_id = %req.connection_id, "session start pending until its connection appears");
        Ok(StartOutcome::Pending)
    }

    /// Applies the pending starts waiting for `connection_id` of `client_id`.
    pub async fn on_connected(&self, account_id: &str, client_id: &str, connection_id: &str) {
        match self.pending.waiting_for(account_id, connection_id).await {
            Ok(ready) => {
                for p in ready {
                    self.apply_pending(client_id, p).await;
                }
            }
            Err(error) => {
                tracing::error!(%error, account_id, connection_id, "pending session starts not read")
            }
        }
    }

    /// Starts a parked session on its station, then removes it from the store: a crash in
    /// between applies it again, which the decider records nothing for (a duplicate start).
    async fn apply_pending(&self, client_id: &str, p: PendingStart) {
        let (account_id, session_id) = (p.account_id.clone(), p.session_id.clone());
        let req = StartRequest {
            session_id: p.session_id,
            client_id: Some(client_id.to_string()),
            connection_id: p.connection_id,
            name: p.name,
            started_at_millis: p.started_at_millis,
        };
        let applied = match self.start(&account_id, req).await {
            Ok(outcome) => {
                tracing::info!(%account_id, client_id, %session_id, ?outcome, "pending session start applied");
                self.pending
                    .remove(&account_id, &session_id)
                    .await
                    .map(|_| ())
            }
            Err(error) => Err(error),
        };
        if let Err(error) = applied {
            tracing::error!(%error, %account_id, %session_id, "pending session start failed");
        }
    }

    /// Applies pending starts whose connection any replica recorded (the change feed only
    /// carries this replica's commits, and a start may have been parked elsewhere).
    pub async fn apply_pending_from_store(&self) -> Result<(), StoreError> {
        for (client_id, p) in self.pending.ready().await? {
            self.apply_pending(&client_id, p).await;
        }
        Ok(())
    }

    /// Ends the sessions whose baby station disconnected cleanly after the start, or has
    /// been away longer than the grace period. Returns how many ended.
    pub async fn sweep(&self, now: i64) -> Result<usize, StoreError> {
        let active = self.store.active_sessions().await?;
        if active.is_empty() {
            return Ok(0);
        }
        let grace = self.settings.grace.as_millis() as i64;
        let mut ended = 0;
        for chunk in active.chunks(200) {
            for s in self.store.away_sessions(chunk).await? {
                let Some((reason, at)) = end_when_away(&s, now, grace) else {
                    continue;
                };
                if self.end(&s.account_id, &s.session_id, at, reason).await? == EndOutcome::Ended {
                    tracing::info!(account_id = %s.account_id, client_id = %s.client_id, session_id = %s.session_id, reason = reason.as_str(), "session ended by its station's connection");
                    ended += 1;
                }
            }
        }
        Ok(ended)
    }

    /// Follows the status writer's committed changes: applies pending starts when their
    /// connection appears, ends sessions on clean disconnects, and sweeps for expired grace
    /// periods every second. Ends when `changes` closes.
    pub async fn run(self: Arc<Self>, mut changes: mpsc::UnboundedReceiver<ConnectionChange>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(change) = change else { return };
                    match &change.event {
                        ConnectionEvent::Connected { connection_id, .. } => {
                            self.on_connected(&change.key.account_id, &change.key.client_id, connection_id).await;
                        }
                        ConnectionEvent::Disconnected { .. } => {
                            if let Err(error) = self.sweep(now_millis()).await {
                                tracing::error!(%error, "session sweep failed");
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    if let Err(error) = self.apply_pending_from_store().await {
                        tracing::error!(%error, "pending session starts not checked");
                    }
                    if let Err(error) = self.sweep(now_millis()).await {
                        tracing::error!(%error, "session sweep failed");
                    }
                }
            }
        }
    }

    fn count_ignored(&self, ignored: SessionIgnored) {
        self.metrics.session_ignored(ignored);
    }

    /// The account's active baby stations.
    pub async fn baby_stations(&self, account_id: &str) -> Result<Vec<BabyStation>, StoreError> {
        let active = self.store.active_sessions_of_account(account_id).await?;
        let connected = self
            .store
            .connected_by_client(account_id, active.iter().map(|s| s.client_id.as_str()))
            .await?;
        Ok(active
            .into_iter()
            .map(|s| BabyStation {
                connected: connected.get(&s.client_id).copied().unwrap_or(false),
                client_id: s.client_id,
                connection_id: s.connection_id,
                session_id: s.session_id,
                name: s.name,
                started_at_millis: s.started_at_millis,
            })
            .collect())
    }

    /// Every session of the account that overlaps `[from, to)`.
    pub async fn sessions_between(
        &self,
        account_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<sessions::Model>, StoreError> {
        self.store.sessions_between(account_id, from, to).await
    }

    /// Records a parent station's announcement (an empty one removes it).
    pub async fn parent_station(
        &self,
        account_id: &str,
        client_id: &str,
        announcement: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        match announcement {
            None => {
                self.store
                    .remove_parent_station(account_id, client_id)
                    .await
            }
            Some(value) => {
                self.store
                    .record_parent_station(account_id, client_id, value, now_millis())
                    .await
            }
        }
    }

    /// The account's parent stations.
    pub async fn parent_stations(
        &self,
        account_id: &str,
    ) -> Result<Vec<parent_stations::Model>, StoreError> {
        self.store.parent_stations(account_id).await
    }
}

/// Computes usage in `[from, to)` from the `sessions` rows (see [`crate::domain::usage`]).
pub fn usage(rows: &[sessions::Model], from: i64, to: i64) -> Usage {
    let spans: Vec<SessionSpan> = rows.iter().map(SessionSpan::from).collect();
    crate::domain::usage::usage(&spans, from, to)
}
