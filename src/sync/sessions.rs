//! The session lifecycle around the pure decider (`domain::session`): starts and ends from
//! HTTP and MQTT, pending starts waiting for their connection, ends caused by connection
//! changes (clean disconnect, grace period), and the read models they keep.
//!
//! Every change is one transaction: the session events (stream `session/{account}/{id}`,
//! `session.started` version 1, `session.ended` version 2, idempotency keys per event) and
//! the `sessions` read-model rows. The baby-station announcement (retained) is published
//! after the commit.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use sea_orm::{
    ActiveValue, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::now_millis;
use crate::domain::connection::ConnectionEvent;
use crate::domain::session::{
    decide_end, decide_start, ActiveSession, Actor, EndReason, Rejected, SessionEvent,
    SessionIgnored, SessionRefused, SessionState,
};
use crate::metrics::Metrics;
use crate::store::{clients, parent_stations, sessions, NewEvent, Store, StoreError};
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

fn state_of(row: Option<&sessions::Model>) -> SessionState {
    match row {
        None => SessionState::None,
        Some(r) if r.active => SessionState::Active(active_of(r)),
        Some(_) => SessionState::Ended,
    }
}

pub(crate) fn active_of(r: &sessions::Model) -> ActiveSession {
    ActiveSession {
        session_id: r.session_id.clone(),
        client_id: r.client_id.clone(),
        connection_id: r.connection_id.clone(),
        name: r.name.clone(),
        started_at_millis: r.started_at_millis,
    }
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
        let txn = self.store.db().begin().await?;
        let row = sessions::Entity::find_by_id((account_id.to_string(), start.session_id.clone()))
            .one(&txn)
            .await?;
        let on_connection = sessions::Entity::find()
            .filter(sessions::Column::AccountId.eq(account_id))
            .filter(sessions::Column::ConnectionId.eq(&start.connection_id))
            .filter(sessions::Column::Active.eq(true))
            .filter(sessions::Column::SessionId.ne(&start.session_id))
            .one(&txn)
            .await?;
        // Whose connection it is matters only to a station's start. Connection ids are the
        // devices' own words, so two clients may claim one: the connection counts as another
        // client's when ANY other client has it as its current or last connection (a station
        // cannot make a connection its own by reporting another's id on its status topic).
        let owner = match by {
            Actor::Account => None,
            Actor::Station(station) => {
                let owners: Vec<String> = clients::Entity::find()
                    .filter(clients::Column::AccountId.eq(account_id))
                    .filter(clients::Column::ConnectionId.eq(&start.connection_id))
                    .all(&txn)
                    .await?
                    .into_iter()
                    .map(|c| c.client_id)
                    .collect();
                owners
                    .iter()
                    .find(|o| *o != station)
                    .or(owners.first())
                    .cloned()
            }
        };
        let events = match decide_start(
            by,
            start,
            &state_of(row.as_ref()),
            owner.as_deref(),
            on_connection.as_ref().map(active_of).as_ref(),
        ) {
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
            let txn = self.store.db().begin().await?;
            let row =
                sessions::Entity::find_by_id((account_id.to_string(), session_id.to_string()))
                    .one(&txn)
                    .await?;
            let state = state_of(row.as_ref());
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
                let e = StoreError::from(e);
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
        txn: &sea_orm::DatabaseTransaction,
        account_id: &str,
        events: &[SessionEvent],
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let new: Vec<NewEvent> = events.iter().map(|e| new_event(account_id, e)).collect();
        crate::store::append_in(txn, &new, now).await?;
        for event in events {
            match event {
                SessionEvent::Started(s) => {
                    sessions::Entity::insert(sessions::ActiveModel {
                        account_id: ActiveValue::Set(account_id.to_string()),
                        session_id: ActiveValue::Set(s.session_id.clone()),
                        client_id: ActiveValue::Set(s.client_id.clone()),
                        connection_id: ActiveValue::Set(s.connection_id.clone()),
                        name: ActiveValue::Set(s.name.clone()),
                        started_at_millis: ActiveValue::Set(s.started_at_millis),
                        active: ActiveValue::Set(true),
                        ended_at_millis: ActiveValue::Set(None),
                        end_reason: ActiveValue::Set(None),
                        recorded_at_millis: ActiveValue::Set(now),
                    })
                    .exec(txn)
                    .await?;
                    self.metrics.sessions_started.fetch_add(1, Relaxed);
                }
                SessionEvent::Ended {
                    session,
                    ended_at_millis,
                    reason,
                    ..
                } => {
                    sessions::Entity::update_many()
                        .col_expr(sessions::Column::Active, false.into())
                        .col_expr(sessions::Column::EndedAtMillis, (*ended_at_millis).into())
                        .col_expr(sessions::Column::EndReason, reason.as_str().into())
                        .filter(sessions::Column::AccountId.eq(account_id))
                        .filter(sessions::Column::SessionId.eq(&session.session_id))
                        .exec(txn)
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
                    match self.active_of_client(account_id, &s.client_id).await {
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

    async fn active_of_client(
        &self,
        account_id: &str,
        client_id: &str,
    ) -> Result<Option<ActiveSession>, StoreError> {
        Ok(sessions::Entity::find()
            .filter(sessions::Column::AccountId.eq(account_id))
            .filter(sessions::Column::ClientId.eq(client_id))
            .filter(sessions::Column::Active.eq(true))
            .order_by_desc(sessions::Column::StartedAtMillis)
            .one(self.store.db())
            .await?
            .as_ref()
            .map(active_of))
    }

    /// The client whose current (or last) connection is `connection_id`.
    async fn client_of_connection(
        &self,
        account_id: &str,
        connection_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(clients::Entity::find()
            .filter(clients::Column::AccountId.eq(account_id))
            .filter(clients::Column::ConnectionId.eq(connection_id))
            .order_by_desc(clients::Column::UpdatedAtMillis)
            .one(self.store.db())
            .await?
            .map(|c| c.client_id))
    }

    /// Parks a start whose connection is unknown. Checks the log first: a session that
    /// already started (or ended) is answered as such, not parked.
    async fn park(&self, account_id: &str, req: StartRequest) -> Result<StartOutcome, StoreError> {
        let row = sessions::Entity::find_by_id((account_id.to_string(), req.session_id.clone()))
            .one(self.store.db())
            .await?;
        match state_of(row.as_ref()) {
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
        let active = sessions::Entity::find()
            .filter(sessions::Column::Active.eq(true))
            .all(self.store.db())
            .await?;
        if active.is_empty() {
            return Ok(0);
        }
        let mut ended = 0;
        for chunk in active.chunks(200) {
            let mut accounts: Vec<&str> = chunk.iter().map(|s| s.account_id.as_str()).collect();
            accounts.sort_unstable();
            accounts.dedup();
            let rows = clients::Entity::find()
                .filter(
                    Condition::all()
                        .add(clients::Column::AccountId.is_in(accounts))
                        .add(
                            clients::Column::ClientId
                                .is_in(chunk.iter().map(|s| s.client_id.as_str())),
                        )
                        .add(clients::Column::Connected.eq(false)),
                )
                .all(self.store.db())
                .await?;
            let by_key: HashMap<(&str, &str), &clients::Model> = rows
                .iter()
                .map(|c| ((c.account_id.as_str(), c.client_id.as_str()), c))
                .collect();
            for s in chunk {
                let Some(c) = by_key.get(&(s.account_id.as_str(), s.client_id.as_str())) else {
                    continue;
                };
                let at = c.disconnected_at_millis.unwrap_or(now);
                let clean = c.last_disconnect_reason.as_deref() == Some("clean");
                let since = c.updated_at_millis.max(s.recorded_at_millis);
                let reason = if clean && c.updated_at_millis >= s.recorded_at_millis {
                    EndReason::CleanDisconnect
                } else if now - since >= self.settings.grace.as_millis() as i64 {
                    EndReason::GraceExpired
                } else {
                    continue;
                };
                let at = at.max(s.started_at_millis);
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
        let active = sessions::Entity::find()
            .filter(sessions::Column::AccountId.eq(account_id))
            .filter(sessions::Column::Active.eq(true))
            .order_by_asc(sessions::Column::StartedAtMillis)
            .all(self.store.db())
            .await?;
        let connected: HashMap<String, bool> = clients::Entity::find()
            .filter(clients::Column::AccountId.eq(account_id))
            .filter(clients::Column::ClientId.is_in(active.iter().map(|s| s.client_id.as_str())))
            .all(self.store.db())
            .await?
            .into_iter()
            .map(|c| (c.client_id, c.connected))
            .collect();
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
        Ok(sessions::Entity::find()
            .filter(sessions::Column::AccountId.eq(account_id))
            .filter(sessions::Column::StartedAtMillis.lt(to))
            .filter(
                Condition::any()
                    .add(sessions::Column::EndedAtMillis.is_null())
                    .add(sessions::Column::EndedAtMillis.gt(from)),
            )
            .order_by_asc(sessions::Column::StartedAtMillis)
            .all(self.store.db())
            .await?)
    }

    /// Records a parent station's announcement (an empty one removes it).
    pub async fn parent_station(
        &self,
        account_id: &str,
        client_id: &str,
        announcement: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        use parent_stations::Column as C;
        match announcement {
            None => {
                parent_stations::Entity::delete_many()
                    .filter(C::AccountId.eq(account_id))
                    .filter(C::ClientId.eq(client_id))
                    .exec(self.store.db())
                    .await?;
            }
            Some(value) => {
                parent_stations::Entity::insert(parent_stations::ActiveModel {
                    account_id: ActiveValue::Set(account_id.to_string()),
                    client_id: ActiveValue::Set(client_id.to_string()),
                    announcement: ActiveValue::Set(value.to_string()),
                    updated_at_millis: ActiveValue::Set(now_millis()),
                })
                .on_conflict(
                    sea_orm::sea_query::OnConflict::columns([C::AccountId, C::ClientId])
                        .update_columns([C::Announcement, C::UpdatedAtMillis])
                        .to_owned(),
                )
                .exec(self.store.db())
                .await?;
            }
        }
        Ok(())
    }

    /// The account's parent stations.
    pub async fn parent_stations(
        &self,
        account_id: &str,
    ) -> Result<Vec<parent_stations::Model>, StoreError> {
        Ok(parent_stations::Entity::find()
            .filter(parent_stations::Column::AccountId.eq(account_id))
            .order_by_asc(parent_stations::Column::ClientId)
            .all(self.store.db())
            .await?)
    }
}

/// One session's share of a usage window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageSession {
    /// The session.
    pub session_id: String,
    /// Its baby station.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// When it started.
    pub started_at_millis: i64,
    /// When it ended; `null` while it runs.
    pub ended_at_millis: Option<i64>,
    /// Whether it is still running (counted up to `to`).
    pub open: bool,
    /// Time inside the window.
    pub duration_millis: i64,
}

/// Usage totals of one baby station.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageClient {
    /// The baby station.
    pub client_id: String,
    /// Sessions overlapping the window.
    pub sessions: usize,
    /// Time covered by at least one of its sessions (overlaps counted once).
    pub total_millis: i64,
}

/// Usage of an account in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Window start (inclusive), Unix milliseconds.
    pub from: i64,
    /// Window end (exclusive).
    pub to: i64,
    /// Every session overlapping the window, by start.
    pub sessions: Vec<UsageSession>,
    /// Per baby station.
    pub clients: Vec<UsageClient>,
    /// Sum of the clients' totals.
    pub total_millis: i64,
}

/// `sum + (b - a)`, saturating: a window up to `i64::MAX` (any caller's `to`) must not
/// overflow.
fn add_millis(sum: i64, b: i64, a: i64) -> i64 {
    sum.saturating_add(b.saturating_sub(a))
}

/// Computes usage in `[from, to)`: each session is clipped to the window (a running one
/// counts up to `to`); a station's total is the union of its sessions' intervals, so
/// overlapping sessions of one station are not counted twice.
pub fn usage(rows: &[sessions::Model], from: i64, to: i64) -> Usage {
    let mut sessions_out = Vec::new();
    let mut intervals: std::collections::BTreeMap<String, Vec<(i64, i64)>> = Default::default();
    for r in rows {
        let end = if r.active {
            to
        } else {
            r.ended_at_millis.unwrap_or(to)
        };
        let (a, b) = (r.started_at_millis.max(from), end.min(to));
        if r.started_at_millis >= to || end < from {
            continue;
        }
        let b = b.max(a);
        sessions_out.push(UsageSession {
            session_id: r.session_id.clone(),
            client_id: r.client_id.clone(),
            name: r.name.clone(),
            started_at_millis: r.started_at_millis,
            ended_at_millis: if r.active { None } else { r.ended_at_millis },
            open: r.active,
            duration_millis: b.saturating_sub(a),
        });
        intervals
            .entry(r.client_id.clone())
            .or_default()
            .push((a, b));
    }
    let mut clients = Vec::new();
    let mut total = 0;
    for (client_id, mut iv) in intervals {
        iv.sort_unstable();
        let count = iv.len();
        let mut sum = 0;
        let mut current: Option<(i64, i64)> = None;
        for (a, b) in iv {
            current = match current {
                Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    sum = add_millis(sum, cb, ca);
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        if let Some((ca, cb)) = current {
            sum = add_millis(sum, cb, ca);
        }
        total = i64::saturating_add(total, sum);
        clients.push(UsageClient {
            client_id,
            sessions: count,
            total_millis: sum,
        });
    }
    Usage {
        from,
        to,
        sessions: sessions_out,
        clients,
        total_millis: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, client: &str, start: i64, end: Option<i64>) -> sessions::Model {
        sessions::Model {
            account_id: "a".into(),
            session_id: id.into(),
            client_id: client.into(),
            connection_id: "k".into(),
            name: "n".into(),
            started_at_millis: start,
            active: end.is_none(),
            ended_at_millis: end,
            end_reason: end.map(|_| "explicit".into()),
            recorded_at_millis: start,
        }
    }

    #[test]
    fn a_window_up_to_the_largest_time_saturates_instead_of_overflowing() {
        let u = usage(
            &[row("s1", "b1", 1, None), row("s2", "b2", 1, None)],
            0,
            i64::MAX,
        );
        assert_eq!(u.total_millis, i64::MAX);
    }

    #[test]
    fn sessions_are_clipped_to_the_window_and_open_ones_count_up_to_its_end() {
        let u = usage(
            &[row("s1", "b1", 0, Some(150)), row("s2", "b2", 180, None)],
            100,
            200,
        );
        assert_eq!(u.sessions[0].duration_millis, 50);
        assert!(u.sessions[1].open);
        assert_eq!(u.sessions[1].duration_millis, 20);
        assert_eq!(u.total_millis, 70);
    }

    #[test]
    fn overlapping_sessions_of_one_station_are_counted_once() {
        let u = usage(
            &[
                row("s1", "b1", 100, Some(300)),
                row("s2", "b1", 200, Some(400)),
            ],
            0,
            1_000,
        );
        assert_eq!(u.clients.len(), 1);
        assert_eq!(u.clients[0].sessions, 2);
        assert_eq!(u.clients[0].total_millis, 300);
        assert_eq!(u.total_millis, 300);
        // each session still shows its own duration
        assert_eq!(
            u.sessions[0].duration_millis + u.sessions[1].duration_millis,
            400
        );
    }

    #[test]
    fn stations_are_totalled_separately() {
        let u = usage(
            &[row("s1", "b1", 0, Some(10)), row("s2", "b2", 0, Some(30))],
            0,
            100,
        );
        let totals: Vec<(String, i64)> = u
            .clients
            .iter()
            .map(|c| (c.client_id.clone(), c.total_millis))
            .collect();
        assert_eq!(totals, vec![("b1".into(), 10), ("b2".into(), 30)]);
        assert_eq!(u.total_millis, 40);
    }
}
