//! The status handler: `accounts/{account_id}/clients/{client_id}/status` messages become
//! `connection.*` events and the `clients` read model.
//!
//! Messages are validated one by one (a bad one is dropped, counted and acknowledged at
//! once), then decided and committed in batches: one transaction per batch appends the
//! events and updates the read model, and only after the commit are the batch's messages
//! acknowledged. A crash before the commit leaves them unacknowledged for redelivery; a
//! redelivery after the commit finds its idempotency key in the log and records nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use rumqttc::Publish;
use tokio::sync::mpsc;

use super::metrics::SyncMetrics;
use crate::bus::Acker;
use crate::clock::now_millis;
use crate::domain::connection::parse_status_payload;
use crate::domain::connection::{
    decide_seen, evolve, ClientConnection, ConnectionCommand, ConnectionEvent, DisconnectReason,
    Ignored, Seen, CONNECTED, DISCONNECTED, EVENT_VERSION, REPORTED,
};
use crate::retry::Backoff;
use crate::store::{clients, NewEvent, Store, StoreError, StoreTx};
use crate::topics::{parse_status_topic, ClientKey};

/// Settings of the status handler.
#[derive(Debug, Clone)]
pub struct StatusSettings {
    /// Largest payload accepted.
    pub(crate) max_status_bytes: usize,
    /// Most messages per transaction.
    pub(crate) batch_max: usize,
    /// Where committed connection changes go (the session handler and the WebSocket
    /// bridge follow them).
    pub changes: Vec<mpsc::UnboundedSender<ConnectionChange>>,
}

/// A connection change the status writer committed.
#[derive(Debug, Clone)]
pub struct ConnectionChange {
    /// The client.
    pub key: ClientKey,
    /// What was recorded.
    pub event: ConnectionEvent,
}

/// A validated status report: which client, and what it asks.
pub type Report = (ClientKey, ConnectionCommand);

/// What one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// These events were appended.
    Applied(Vec<ConnectionEvent>),
    /// Nothing was appended.
    Ignored(Ignored),
}

/// Runs the handler until `rx` closes and is drained.
pub async fn run(
    mut rx: mpsc::Receiver<Publish>,
    store: Store,
    acker: Acker,
    metrics: Arc<SyncMetrics>,
    settings: StatusSettings,
) {
    let mut batch: Vec<Report> = Vec::with_capacity(settings.batch_max);
    let mut publishes: Vec<Publish> = Vec::with_capacity(settings.batch_max);
    let mut cache = ClientCache::new(CACHE_CAPACITY);
    while let Some(first) = rx.recv().await {
        accept(
            first,
            &mut batch,
            &mut publishes,
            &acker,
            &metrics,
            &settings,
        )
        .await;
        while batch.len() < settings.batch_max {
            match rx.try_recv() {
                Ok(publish) => {
                    accept(
                        publish,
                        &mut batch,
                        &mut publishes,
                        &acker,
                        &metrics,
                        &settings,
                    )
                    .await
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let outcomes = commit_until_done(&store, &batch, &mut cache, &metrics).await;
        for changes in &settings.changes {
            for ((key, _), outcome) in batch.iter().zip(&outcomes) {
                if let Outcome::Applied(events) = outcome {
                    for event in events {
                        let _ = changes.send(ConnectionChange {
                            key: key.clone(),
                            event: event.clone(),
                        });
                    }
                }
            }
        }
        batch.clear();
        for publish in publishes.drain(..) {
            acker.ack(&publish).await;
        }
    }
    tracing::debug!("status handler drained");
}

async fn accept(
    publish: Publish,
    batch: &mut Vec<Report>,
    publishes: &mut Vec<Publish>,
    acker: &Acker,
    metrics: &SyncMetrics,
    settings: &StatusSettings,
) {
    metrics.status_received.fetch_add(1, Relaxed);
    if publish.payload.is_empty() {
        // An empty retained payload clears the topic; it reports nothing.
        acker.ack(&publish).await;
        return;
    }
    let parsed = parse_status_topic(&publish.topic).and_then(|key| {
        parse_status_payload(&publish.payload, settings.max_status_bytes).map(|c| (key, c))
    });
    match parsed {
        Ok(report) => {
            crate::tasks::inject("status", &report.0.client_id);
            batch.push(report);
            publishes.push(publish);
        }
        Err(reason) => {
            metrics.status_drop(reason);
            tracing::warn!(
                topic = %publish.topic,
                reason = reason.as_str(),
                bytes = publish.payload.len(),
                "status message dropped"
            );
            acker.ack(&publish).await;
        }
    }
}

/// Commits the batch, retrying conflicts at once and database errors with backoff, so that
/// no validated message is acknowledged without its events.
async fn commit_until_done(
    store: &Store,
    batch: &[Report],
    cache: &mut ClientCache,
    metrics: &SyncMetrics,
) -> Vec<Outcome> {
    let mut pause = Backoff::store();
    loop {
        let started = Instant::now();
        match apply_batch_cached(store, batch, now_millis(), cache).await {
            Ok(outcomes) => {
                metrics.store_commits.fetch_add(1, Relaxed);
                metrics
                    .store_commit_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
                record(batch, &outcomes, metrics);
                return outcomes;
            }
            Err(StoreError::Conflict(what)) => {
                // Another writer changed these streams: forget what we knew of them.
                cache.forget(batch.iter().map(|(key, _)| key));
                metrics.store_conflicts.fetch_add(1, Relaxed);
                tracing::debug!(%what, "status batch conflicted with another writer; retrying");
            }
            Err(error) => {
                metrics.store_errors.fetch_add(1, Relaxed);
                tracing::error!(%error, retry_in_ms = pause.pause().as_millis() as u64, "status batch not committed");
                pause.wait().await;
            }
        }
    }
}

fn record(batch: &[Report], outcomes: &[Outcome], metrics: &SyncMetrics) {
    for ((key, command), outcome) in batch.iter().zip(outcomes) {
        let span = tracing::info_span!(
            "status",
            account_id = %key.account_id,
            client_id = %key.client_id,
            connection_id = %command.connection_id(),
        );
        let _guard = span.enter();
        match outcome {
            Outcome::Applied(events) => {
                metrics.connection_outcome(None);
                for event in events {
                    match event {
                        ConnectionEvent::Connected { .. } => {
                            metrics.events_connected.fetch_add(1, Relaxed)
                        }
                        ConnectionEvent::Disconnected { .. } => {
                            metrics.events_disconnected.fetch_add(1, Relaxed)
                        }
                        ConnectionEvent::Reported { .. } => {
                            metrics.events_reported.fetch_add(1, Relaxed)
                        }
                    };
                    tracing::info!(
                        event = event.event_type(),
                        event_connection_id = event.connection_id(),
                        at_millis = event.at_millis(),
                        "recorded"
                    );
                }
            }
            Outcome::Ignored(why) => {
                metrics.connection_outcome(Some(*why));
                tracing::debug!(outcome = why.as_str(), "status ignored");
            }
        }
    }
}

/// Stream id of a client's connection stream.
pub(crate) fn stream_id(key: &ClientKey) -> String {
    format!("connection/{}/{}", key.account_id, key.client_id)
}

/// Idempotency key of a connection event: a connection connects once and disconnects once.
/// Ids never contain `/`, so the key is unambiguous.
pub fn idempotency_key(key: &ClientKey, event_type: &str, connection_id: &str) -> String {
    format!(
        "{event_type}/{}/{}/{connection_id}",
        key.account_id, key.client_id
    )
}

/// The idempotency key of an event about the MQTT connection `edge` behind the edge: one
/// per connection and event type, whatever id the connection is known by (`#` is not in
/// any id, so it cannot meet a key of [`idempotency_key`]).
pub fn edge_key(key: &ClientKey, event_type: &str, edge: &str) -> String {
    format!("{event_type}/{}/{}#{edge}", key.account_id, key.client_id)
}

/// An event's idempotency key.
fn event_key(key: &ClientKey, event: &ConnectionEvent) -> String {
    match event.edge() {
        Some(edge) => edge_key(key, event.event_type(), edge),
        None => idempotency_key(key, event.event_type(), event.connection_id()),
    }
}

/// The keys a report is checked against: its own event's, or for an MQTT connection behind
/// the edge those of its three event types (what the log already holds of it).
fn command_keys(key: &ClientKey, command: &ConnectionCommand) -> Vec<String> {
    match command.edge() {
        Some(edge) => [CONNECTED, REPORTED, DISCONNECTED]
            .iter()
            .map(|t| edge_key(key, t, edge))
            .collect(),
        None => vec![idempotency_key(
            key,
            command.event_type(),
            command.connection_id(),
        )],
    }
}

/// Rows the status writer holds between batches, so a busy client's state is not read back
/// from the database for every report. Correct with several writers: a stale row makes the
/// writer append a stream version another writer already took, the unique constraint turns
/// that into a [`StoreError::Conflict`], and the writer forgets the batch's rows and retries.
/// Idempotency keys are always checked against the database.
#[derive(Debug, Default)]
pub(crate) struct ClientCache {
    rows: HashMap<ClientKey, clients::Model>,
    capacity: usize,
}

/// Rows kept by the status writer (about 200 B each).
pub(crate) const CACHE_CAPACITY: usize = 500_000;

impl ClientCache {
    /// A cache of at most `capacity` rows (0 keeps nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            rows: HashMap::new(),
            capacity,
        }
    }

    fn forget<'a>(&mut self, keys: impl Iterator<Item = &'a ClientKey>) {
        for key in keys {
            self.rows.remove(key);
        }
    }

    fn remember(&mut self, rows: impl Iterator<Item = clients::Model>) {
        for row in rows {
            if self.rows.len() >= self.capacity {
                // Simple and bounded: start over rather than track recency.
                self.rows.clear();
                if self.capacity == 0 {
                    return;
                }
            }
            let key = ClientKey {
                account_id: row.account_id.clone(),
                client_id: row.client_id.clone(),
            };
            self.rows.insert(key, row);
        }
    }
}

/// Decides and commits one batch of reports in one transaction; returns one outcome per
/// report. `now` is the recording time. A [`StoreError::Conflict`] means another writer
/// changed the same streams: the caller retries the whole batch.
pub async fn apply_batch(
    store: &Store,
    batch: &[Report],
    now: i64,
) -> Result<Vec<Outcome>, StoreError> {
    apply_batch_cached(store, batch, now, &mut ClientCache::new(0)).await
}

/// [`apply_batch`] reading rows from `cache` first and updating it after the commit.
///
/// A cached row may be older than the log (another replica wrote since): a decision to
/// record something is checked by the stream version's unique constraint, but a decision to
/// ignore a message writes nothing, so nothing would notice. A batch in which a cached row
/// led to ignoring a message is therefore decided again on rows read afresh.
pub(crate) async fn apply_batch_cached(
    store: &Store,
    batch: &[Report],
    now: i64,
    cache: &mut ClientCache,
) -> Result<Vec<Outcome>, StoreError> {
    loop {
        match attempt_batch(store, batch, now, cache).await? {
            Attempt::Done(outcomes) => return Ok(outcomes),
            Attempt::Unsure(keys) => cache.forget(keys.iter()),
        }
    }
}

/// What one attempt at a batch came to.
enum Attempt {
    /// Committed.
    Done(Vec<Outcome>),
    /// Not committed: these clients' cached rows led to ignoring a message.
    Unsure(Vec<ClientKey>),
}

/// One attempt at a batch. The idempotency keys are read before the rows, so a row read
/// from the database is at least as new as what the keys say.
async fn attempt_batch(
    store: &Store,
    batch: &[Report],
    now: i64,
    cache: &mut ClientCache,
) -> Result<Attempt, StoreError> {
    let t0 = Instant::now();
    let txn = store.begin().await?;
    let t_begin = t0.elapsed();
    let command_keys: Vec<Vec<String>> = batch
        .iter()
        .map(|(key, command)| command_keys(key, command))
        .collect();
    let all_keys: Vec<String> = command_keys.iter().flatten().cloned().collect();
    let recorded: HashSet<String> = txn.existing_keys(&all_keys).await?;
    let t_keys = t0.elapsed();
    let (rows, loaded) = load_rows(&txn, batch, cache).await?;
    let t_load = t0.elapsed();

    let mut d = Decisions {
        rows,
        recorded,
        new_events: Vec::new(),
        dirty: HashSet::new(),
        outcomes: Vec::with_capacity(batch.len()),
    };
    let mut unsure = Vec::new();
    for ((key, command), command_key) in batch.iter().zip(&command_keys) {
        d.decide_report(key, command, command_key, now);
        let ignored = matches!(d.outcomes.last(), Some(Outcome::Ignored(Ignored::Stale)));
        if ignored && cache.rows.contains_key(key) {
            unsure.push(key.clone());
        }
    }
    if !unsure.is_empty() {
        return Ok(Attempt::Unsure(unsure));
    }
    let t_decide = t0.elapsed();
    let mut t_append = t_decide;
    if !d.new_events.is_empty() {
        txn.append(&d.new_events, now).await?;
        t_append = t0.elapsed();
        let changed: Vec<clients::Model> = d
            .dirty
            .iter()
            .filter_map(|k| d.rows.get(k).cloned())
            .collect();
        txn.upsert_clients(&changed).await?;
    }
    let t_upsert = t0.elapsed();
    txn.commit().await?;
    cache.remember(d.dirty.iter().filter_map(|k| d.rows.remove(k)));
    tracing::trace!(
        reports = batch.len(),
        begin_us = t_begin.as_micros() as u64,
        loaded,
        keys_us = t_keys.as_micros() as u64,
        load_us = t_load.as_micros() as u64,
        decide_us = t_decide.as_micros() as u64,
        append_us = t_append.as_micros() as u64,
        upsert_us = t_upsert.as_micros() as u64,
        commit_us = t0.elapsed().as_micros() as u64,
        "status batch timings (cumulative)"
    );
    Ok(Attempt::Done(d.outcomes))
}

/// The rows of the batch's clients: from `cache` when it has them, else loaded in `txn`;
/// also how many were loaded.
async fn load_rows(
    txn: &StoreTx,
    batch: &[Report],
    cache: &ClientCache,
) -> Result<(HashMap<ClientKey, clients::Model>, usize), StoreError> {
    let mut keys: Vec<ClientKey> = batch
        .iter()
        .map(|(key, _)| key)
        .filter(|key| !cache.rows.contains_key(*key))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    let mut rows = txn.load_clients(&keys).await?;
    for (key, _) in batch {
        if let Some(row) = cache.rows.get(key) {
            rows.entry(key.clone()).or_insert_with(|| row.clone());
        }
    }
    Ok((rows, keys.len()))
}

/// A batch's decisions so far: each client's row as the batch leaves it, the idempotency
/// keys recorded, the events to append, the clients changed, one outcome per report.
struct Decisions {
    rows: HashMap<ClientKey, clients::Model>,
    recorded: HashSet<String>,
    new_events: Vec<NewEvent>,
    dirty: HashSet<ClientKey>,
    outcomes: Vec<Outcome>,
}

impl Decisions {
    /// Decides one report against its client's row as the earlier reports left it; a
    /// command already recorded is a duplicate; for a connection behind the edge, the
    /// decider learns what the log holds of it (`command_keys`: connected, reported, ended).
    fn decide_report(
        &mut self,
        key: &ClientKey,
        command: &ConnectionCommand,
        command_keys: &[String],
        now: i64,
    ) {
        let has = |i: usize| {
            command_keys
                .get(i)
                .is_some_and(|k| self.recorded.contains(k))
        };
        let seen = if command.edge().is_some() {
            // `command_keys`' order: connected, reported, ended.
            Seen {
                connected: has(0),
                reported: has(1),
                ended: has(2),
            }
        } else if has(0) {
            self.outcomes.push(Outcome::Ignored(Ignored::Duplicate));
            return;
        } else {
            Seen::default()
        };
        let row = self.rows.get(key);
        let state = row.map(state_of).unwrap_or_default();
        match decide_seen(command, &state, seen) {
            Ok(events) => {
                let row = row.cloned();
                self.record(key, &events, row, state, now);
                self.outcomes.push(Outcome::Applied(events));
            }
            Err(why) => self.outcomes.push(Outcome::Ignored(why)),
        }
    }

    /// Queues `events` for appending after the client's stream version, and folds them into
    /// its `state` and projected `row`.
    fn record(
        &mut self,
        key: &ClientKey,
        events: &[ConnectionEvent],
        mut row: Option<clients::Model>,
        mut state: ClientConnection,
        now: i64,
    ) {
        let mut version = row.as_ref().map_or(0, |r| r.stream_version);
        for event in events {
            version += 1;
            let idem = event_key(key, event);
            self.recorded.insert(idem.clone());
            self.new_events.push(NewEvent {
                account_id: key.account_id.clone(),
                stream: stream_id(key),
                stream_version: version,
                event_type: event.event_type(),
                event_version: EVENT_VERSION,
                data: event_data(key, event),
                at_millis: event.at_millis(),
                idempotency_key: idem,
            });
            state = evolve(state, event);
            let projected = project(row, key, event, version, now);
            // The read model is the decider's state, stored: both folds must agree.
            debug_assert_eq!(state_of(&projected), state);
            row = Some(projected);
        }
        if let Some(row) = row {
            self.rows.insert(key.clone(), row);
            self.dirty.insert(key.clone());
        }
    }
}

/// The decider's state as the read model holds it.
pub(crate) fn state_of(row: &clients::Model) -> ClientConnection {
    if row.connected {
        return ClientConnection::Connected {
            connection_id: row.connection_id.clone(),
            since_millis: row.connected_at_millis,
            edge: row.edge_connection_id.clone(),
        };
    }
    ClientConnection::Disconnected {
        connection_id: row.connection_id.clone(),
        reason: row
            .last_disconnect_reason
            .as_deref()
            .and_then(DisconnectReason::parse)
            .unwrap_or(DisconnectReason::Lost),
        at_millis: row
            .disconnected_at_millis
            .unwrap_or(row.connected_at_millis),
        edge: row.edge_connection_id.clone(),
    }
}

/// Projects one event onto a client's read-model row.
pub(crate) fn project(
    row: Option<clients::Model>,
    key: &ClientKey,
    event: &ConnectionEvent,
    version: i64,
    now: i64,
) -> clients::Model {
    let mut row = row.unwrap_or_else(|| clients::Model {
        account_id: key.account_id.clone(),
        client_id: key.client_id.clone(),
        connected: false,
        connection_id: String::new(),
        connected_at_millis: 0,
        disconnected_at_millis: None,
        last_disconnect_reason: None,
        stream_version: 0,
        updated_at_millis: now,
        edge_connection_id: None,
    });
    match event {
        ConnectionEvent::Connected {
            connection_id,
            at_millis,
            edge_connection_id,
            ..
        } => {
            row.connected = true;
            row.connection_id = connection_id.clone();
            row.connected_at_millis = *at_millis;
            row.edge_connection_id = edge_connection_id.clone();
        }
        ConnectionEvent::Disconnected {
            reason, at_millis, ..
        } => {
            row.connected = false;
            row.disconnected_at_millis = Some(*at_millis);
            row.last_disconnect_reason = Some(reason.as_str().to_string());
        }
        // The device named the connection: it is known by that id from now on.
        ConnectionEvent::Reported {
            reported_connection_id,
            ..
        } => {
            if row.connected {
                row.connection_id = reported_connection_id.clone();
            }
        }
    }
    row.stream_version = version;
    row.updated_at_millis = now;
    row
}

/// An event's stored data: the event's fields as it serialises them, less its `type` (the
/// row's `event_type`), with the client's id. Keys come out sorted (serde_json's map), the
/// bytes stored since the first version.
fn event_data(key: &ClientKey, event: &ConnectionEvent) -> serde_json::Value {
    // Invariant: a derived Serialize of strings, integers and unit variants (no map with
    // non-string keys, no custom serializer), which `to_value` cannot fail on.
    let mut data = serde_json::to_value(event).expect("a connection event serialises");
    if let Some(fields) = data.as_object_mut() {
        fields.remove("type");
        fields.insert("client_id".into(), key.client_id.clone().into());
    }
    data
}

/// Records `reason` as the end of every connection the store still shows open, but those in
/// `keep` (WebSocket sessions handed over to the next start); returns how many. Used when the
/// embedded broker, and with it every device's connection, went away.
pub async fn close_open_connections(
    store: &Store,
    reason: DisconnectReason,
    keep: &std::collections::HashSet<String>,
) -> Result<usize, StoreError> {
    let mut open = store.connected_clients().await?;
    open.retain(|(_, connection_id)| !keep.contains(connection_id));
    let now = now_millis();
    let reports: Vec<Report> = open
        .into_iter()
        .map(|(key, connection_id)| {
            (
                key,
                ConnectionCommand::Disconnect {
                    connection_id,
                    reason,
                    at_millis: now,
                    edge: None,
                },
            )
        })
        .collect();
    for chunk in reports.chunks(512) {
        apply_batch(store, chunk, now).await?;
    }
    Ok(reports.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored bytes of both connection events, as written since the first version: the
    /// event's fields and the client's id, keys sorted, no `type`.
    #[test]
    fn event_data_is_stored_as_before() {
        let key = ClientKey {
            account_id: "acc".into(),
            client_id: "baby".into(),
        };
        let connected = ConnectionEvent::Connected {
            connection_id: "k1".into(),
            at_millis: 10,
            edge_connection_id: None,
            observed: false,
        };
        let disconnected = ConnectionEvent::Disconnected {
            connection_id: "k1".into(),
            reason: DisconnectReason::KeepaliveTimeout,
            at_millis: 20,
            edge_connection_id: None,
        };
        assert_eq!(
            event_data(&key, &connected).to_string(),
            r#"{"at_millis":10,"client_id":"baby","connection_id":"k1"}"#
        );
        assert_eq!(
            event_data(&key, &disconnected).to_string(),
            r#"{"at_millis":20,"client_id":"baby","connection_id":"k1","reason":"keepalive_timeout"}"#
        );
    }
}
