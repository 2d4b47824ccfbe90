//! The bus: Cradle's own MQTT client (rumqttc, QoS 1, manual acks) through which every
//! topic family reaches its handler, whether the broker is embedded or external.
//!
//! One task owns the event loop: `mqtt_client::drive`, the event-loop task of all of Cradle's MQTT
//! clients, polls a `BusSource` (the event loop and the stop signal) and hands each event to
//! the `BusLoop`. It forwards each PUBLISH to the handler whose filter matches over a
//! bounded channel (a full channel stops the loop, which pushes back on the broker instead
//! of growing memory) and reconnects with backoff, resubscribing each time.
//! Handlers acknowledge through [`Acker`] only after their work is durable.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use crate::config::BusConfig;
use crate::endpoint::Endpoint;
use crate::metrics::{Exposition, Family};
use crate::mqtt_client::{drive, nodelay, publisher_options, EventSource, Handler, Polled};

/// Errors at the bus's edge.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker did not accept the bus within the start-up timeout.
    #[error("bus: broker at {addr} not ready after {waited_ms} ms (bus.connect_timeout_ms): {last_error}")]
    NotReady {
        addr: String,
        waited_ms: u64,
        last_error: String,
    },
    /// The broker answered the bus's CONNECT with a refusal (credentials, client id), or its
    /// TLS certificate is not trusted.
    #[error("bus: broker at {addr} refused the connection: {reason} (check the user and password in broker.url / CRADLE_BROKER_URL, broker.ca_file for mqtts://, and the broker's ACL)")]
    Refused { addr: String, reason: String },
}

/// Counters of the bus.
#[derive(Debug, Default)]
pub struct BusMetrics {
    /// Whether the bus is connected to the broker (0 or 1).
    connected: AtomicU64,
    /// Times the bus (re)connected.
    connects: AtomicU64,
    /// Retained messages refed to the handlers after the bus connected (external broker).
    replayed: AtomicU64,
}

impl Family for BusMetrics {
    fn render(&self, out: &mut Exposition) {
        out.gauge(
            "cradle_bus_connected",
            "1 while Cradle's own MQTT client is connected to the broker.",
            self.connected.load(Relaxed),
        );
        out.counter(
            "cradle_bus_connects_total",
            "Times Cradle's own MQTT client (re)connected.",
            self.connects.load(Relaxed),
        );
        out.counter(
            "cradle_bus_replayed_total",
            "Retained messages refed to the handlers after the bus connected (external broker).",
            self.replayed.load(Relaxed),
        );
    }
}

/// Connection state of the bus, for readiness and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BusState {
    /// Not connected yet; the last error, if any.
    Connecting(Option<String>),
    /// Connected and every subscription acknowledged.
    Ready,
    /// The connection was lost; reconnecting.
    Reconnecting(String),
    /// The broker refused the first CONNECT; the bus gave up.
    Refused(String),
    /// Shut down.
    Closed,
}

/// Acknowledges messages once their effect is durable, in the order they were delivered.
///
/// MQTT requires a client to acknowledge QoS 1 messages in the order it received them, and
/// rumqttd closes a connection that does not. Several handlers (status, stations, the
/// WebSocket bridge) finish their messages at their own pace, so an ack only marks its
/// message done; acks leave in delivery order once every earlier message is done.
#[derive(Clone)]
pub struct Acker {
    client: AsyncClient,
    order: Arc<Mutex<AckOrder>>,
}

/// Messages delivered and not yet acknowledged, in delivery order.
#[derive(Default)]
struct AckOrder {
    /// (packet id, payload address) — the address tells a redelivery's message from an
    /// older one that had the same packet id — and the message once its handler is done.
    queue: VecDeque<(u16, usize, Option<Publish>)>,
}

fn identity(publish: &Publish) -> (u16, usize) {
    (publish.pkid, publish.payload.as_ptr() as usize)
}

impl AckOrder {
    fn delivered(&mut self, publish: &Publish) {
        if publish.qos != QoS::AtMostOnce {
            let (pkid, addr) = identity(publish);
            self.queue.push_back((pkid, addr, None));
        }
    }
}

/// The ack order, also after a panic elsewhere while it was held (nothing under it panics;
/// a poisoned lock must still not stop the bus, which every account's statuses go through).
fn lock_order(order: &Mutex<AckOrder>) -> std::sync::MutexGuard<'_, AckOrder> {
    order
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Acker {
    /// Marks `publish` done; sends every ack that is now in order (a no-op for QoS 0). A
    /// send fails only when the bus is gone, and the broker redelivers on the next session.
    pub async fn ack(&self, publish: &Publish) {
        if publish.qos == QoS::AtMostOnce {
            return;
        }
        let (pkid, addr) = identity(publish);
        let mut order = lock_order(&self.order);
        match order
            .queue
            .iter_mut()
            .find(|(p, a, done)| *p == pkid && *a == addr && done.is_none())
        {
            Some(entry) => entry.2 = Some(publish.clone()),
            // From before a reconnect: the broker redelivers it; nothing to send.
            None => return,
        }
        while order
            .queue
            .front()
            .is_some_and(|(_, _, done)| done.is_some())
        {
            let Some((_, _, Some(done))) = order.queue.pop_front() else {
                break;
            };
            // Sent under the lock so acks enter the client's queue in order; the queue
            // holds far more than the broker's in-flight window, so this does not fail
            // while the bus runs.
            if let Err(error) = self.client.try_ack(&done) {
                tracing::warn!(%error, topic = %done.topic, "ack not sent: bus closed");
            }
        }
    }
}

/// A topic filter and the handler queue its messages go to.
pub(crate) struct Route {
    /// MQTT filter subscribed with QoS 1.
    pub filter: String,
    /// The handler's queue.
    pub tx: mpsc::Sender<Publish>,
    /// Subscribed as a shared subscription (`$share/{group}/{filter}`) when the bus has a
    /// share group: each message goes to one replica of the group.
    pub shared: bool,
}

impl Route {
    /// The filter as subscribed: `$share/{group}/{filter}` when shared, else the filter.
    pub fn subscription(&self, group: Option<&str>) -> String {
        match group {
            Some(g) if self.shared => format!("$share/{g}/{}", self.filter),
            _ => self.filter.clone(),
        }
    }
}

/// The running bus.
pub(crate) struct Bus {
    client: AsyncClient,
    order: Arc<Mutex<AckOrder>>,
    state: watch::Receiver<BusState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The shared subscriptions as subscribed (`$share/{group}/…`); empty without a group.
    shared_filters: Vec<String>,
    /// UNSUBACKs received, for [`Bus::leave_group`].
    unsubacks: watch::Receiver<usize>,
    /// This replica's presence topic (`crate::replicas`), cleared at [`Bus::close`].
    presence: Option<String>,
}

impl Bus {
    /// Connects to the broker at `endpoint`, subscribes every route (shared routes in
    /// `share_group` when given), and waits until the subscriptions are acknowledged or
    /// `config.connect_timeout_ms` passes. A refused CONNECT fails at once. With `presence`
    /// (a topic), the bus announces this replica there, retained, at every CONNACK, and
    /// leaves a Will that clears it.
    pub async fn start(
        config: &BusConfig,
        endpoint: &Endpoint,
        max_packet_bytes: usize,
        routes: Vec<Route>,
        share_group: Option<String>,
        metrics: Arc<BusMetrics>,
        presence: Option<String>,
    ) -> Result<Bus, BusError> {
        let (client, eventloop) = client(config, endpoint, max_packet_bytes, presence.as_deref());
        let (state_tx, state) = watch::channel(BusState::Connecting(None));
        let (stop, stop_rx) = watch::channel(false);
        let (unsubacks_tx, unsubacks) = watch::channel(0usize);
        let shared_filters: Vec<String> = match &share_group {
            Some(g) => routes
                .iter()
                .filter(|r| r.shared)
                .map(|r| r.subscription(Some(g)))
                .collect(),
            None => Vec::new(),
        };
        let order = Arc::new(Mutex::new(AckOrder::default()));
        let acker = Acker {
            client: client.clone(),
            order: order.clone(),
        };
        let bus_loop = BusLoop {
            client: client.clone(),
            acker,
            routes: Some(routes),
            shared: share_group.map(|group| Shared {
                group,
                endpoint: endpoint.clone(),
                client_id: config.client_id.clone(),
                max_packet: max_packet_bytes,
            }),
            state: state_tx,
            stop: stop_rx,
            unsubacks: unsubacks_tx,
            metrics,
            pending_subacks: 0,
            presence: presence.clone().map(|t| (t, config.client_id.clone())),
        };
        let mut source = BusSource {
            eventloop,
            stop: bus_loop.stop.clone(),
            stopping: false,
        };
        let task = crate::tasks::spawn_critical(crate::tasks::Task::Bus, async move {
            drive(&mut source, "bus", bus_loop).await
        });
        let bus = Bus {
            client,
            order,
            state,
            stop,
            task,
            shared_filters,
            unsubacks,
            presence,
        };
        bus.until_ready(endpoint, config.connect_timeout_ms).await
    }

    /// Waits up to `waited_ms` for the bus to be ready; on a refusal or the timeout, stops
    /// its task and says why.
    async fn until_ready(self, endpoint: &Endpoint, waited_ms: u64) -> Result<Bus, BusError> {
        let mut state = self.state.clone();
        let ready = tokio::time::timeout(
            Duration::from_millis(waited_ms),
            state.wait_for(|s| matches!(s, BusState::Ready | BusState::Refused(_))),
        )
        .await;
        let refused = match &*self.state.borrow() {
            BusState::Refused(reason) => Some(reason.clone()),
            _ => None,
        };
        match ready {
            _ if refused.is_some() => {
                self.task.abort();
                Err(BusError::Refused {
                    addr: endpoint.to_string(),
                    reason: refused.unwrap_or_default(),
                })
            }
            Ok(Ok(_)) => Ok(self),
            _ => {
                let last_error = match &*self.state.borrow() {
                    BusState::Connecting(Some(e)) | BusState::Reconnecting(e) => e.clone(),
                    other => format!("{other:?}"),
                };
                self.task.abort();
                Err(BusError::NotReady {
                    addr: endpoint.to_string(),
                    waited_ms,
                    last_error,
                })
            }
        }
    }

    /// A handle for acknowledging messages.
    pub(crate) fn acker(&self) -> Acker {
        Acker {
            client: self.client.clone(),
            order: self.order.clone(),
        }
    }

    /// A watch of the bus state.
    pub fn state(&self) -> watch::Receiver<BusState> {
        self.state.clone()
    }

    /// Leaves the shared-subscription group (UNSUBSCRIBE of every shared filter, waiting at
    /// most `wait` for the broker's acknowledgements), so the broker deals this replica's
    /// share to the replicas still running instead of queueing it in this replica's
    /// persistent session. Messages already delivered are still handled and acknowledged.
    /// A no-op without a share group.
    pub(crate) async fn leave_group(&self, wait: Duration) {
        if self.shared_filters.is_empty() {
            return;
        }
        let before = *self.unsubacks.borrow();
        for filter in &self.shared_filters {
            if let Err(error) = self.client.unsubscribe(filter.as_str()).await {
                tracing::warn!(%error, %filter, "bus: unsubscribe not queued");
                return;
            }
        }
        let n = self.shared_filters.len();
        let mut acks = self.unsubacks.clone();
        let left = tokio::time::timeout(wait, acks.wait_for(|a| *a >= before + n)).await;
        match left {
            Ok(Ok(_)) => tracing::info!("left the shared-subscription group"),
            _ => tracing::warn!("shared-subscription group not left in time; this replica's session keeps its share until it returns"),
        }
    }

    /// Stops forwarding new messages to the handlers; what they already hold they finish
    /// and acknowledge. Call [`Bus::close`] after the handlers are done.
    pub(crate) fn stop_forwarding(&self) {
        let _ = self.stop.send(true);
    }

    /// Sends the queued acks, clears this replica's presence, sends a DISCONNECT, then ends
    /// the loop (bounded by `timeout`).
    pub async fn close(self, timeout: Duration) {
        let _ = self.stop.send(true);
        if let Some(topic) = &self.presence {
            let _ = self
                .client
                .publish(topic.as_str(), QoS::AtLeastOnce, true, Vec::new())
                .await;
        }
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("bus did not close in time");
        }
    }
}

/// The bus's client and event loop: a persistent session with manual acks, and a request
/// channel large enough for the acks.
fn client(
    config: &BusConfig,
    endpoint: &Endpoint,
    max_packet_bytes: usize,
    presence: Option<&str>,
) -> (AsyncClient, EventLoop) {
    let mut options = endpoint.options(&config.client_id);
    if let Some(topic) = presence {
        // A replica that dies without a DISCONNECT leaves its presence to the broker,
        // which clears it.
        options.set_last_will(rumqttc::LastWill::new(
            topic,
            Vec::new(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(5)))
        // A persistent session: what the broker delivered but Cradle had not yet
        // acknowledged is delivered again after a reconnect.
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(max_packet_bytes + 1024, max_packet_bytes + 1024);
    // Acks travel through the request channel; it must hold more than the broker's
    // in-flight window so that a handler never waits on it while the loop waits on the
    // handler.
    let (client, mut eventloop) = AsyncClient::new(options, 65_536);
    nodelay(&mut eventloop);
    (client, eventloop)
}

/// The bus loop's whole state: the task that owns the event loop.
struct BusLoop {
    client: AsyncClient,
    acker: Acker,
    /// The handlers' routes; `None` once stopping (dropping the senders lets each handler
    /// drain and finish).
    routes: Option<Vec<Route>>,
    /// With a share group: the group, and what replaying retained messages needs.
    shared: Option<Shared>,
    state: watch::Sender<BusState>,
    stop: watch::Receiver<bool>,
    unsubacks: watch::Sender<usize>,
    metrics: Arc<BusMetrics>,
    /// SUBACKs still awaited since the last CONNACK.
    pending_subacks: usize,
    /// This replica's presence topic and payload (retained), announced at every CONNACK.
    presence: Option<(String, String)>,
}

/// The bus's event loop with its stop signal: the stop is an event of its own, so the bus
/// runs on [`drive`] like every other client of Cradle's.
struct BusSource {
    eventloop: EventLoop,
    stop: watch::Receiver<bool>,
    /// The stop was seen (it is handed over once).
    stopping: bool,
}

/// What the bus's loop polls.
enum BusEvent {
    /// An event of the MQTT connection.
    Mqtt(Event),
    /// Stop forwarding: the handlers drain and finish.
    Stop,
}

impl EventSource for BusSource {
    type Event = BusEvent;
    type Error = rumqttc::ConnectionError;
    async fn next(&mut self) -> Result<BusEvent, rumqttc::ConnectionError> {
        loop {
            tokio::select! {
                biased;
                changed = self.stop.changed(), if !self.stopping => {
                    if changed.is_err() || *self.stop.borrow() {
                        self.stopping = true;
                        return Ok(BusEvent::Stop);
                    }
                }
                event = self.eventloop.poll() => return event.map(BusEvent::Mqtt),
            }
        }
    }
    fn connected(event: &BusEvent) -> bool {
        matches!(event, BusEvent::Mqtt(Event::Incoming(Packet::ConnAck(_))))
    }
}

impl Handler<BusSource> for BusLoop {
    type Out = ();
    /// One event: until the connection is closed (DISCONNECT), the stop leaves nothing to
    /// do, or the broker refuses the first CONNECT.
    async fn on(&mut self, polled: Polled<BusSource>) -> ControlFlow<()> {
        let event = match polled {
            Polled::Event(BusEvent::Stop) => {
                // Dropping the senders lets each handler drain and finish.
                self.routes = None;
                return ControlFlow::Continue(());
            }
            Polled::Event(BusEvent::Mqtt(event)) => event,
            Polled::Failed(error) => return self.failed(error),
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => self.connected(),
            Event::Incoming(Packet::UnsubAck(_)) => {
                self.unsubacks.send_modify(|n| *n += 1);
            }
            Event::Incoming(Packet::SubAck(_)) => {
                self.pending_subacks = self.pending_subacks.saturating_sub(1);
                if self.pending_subacks == 0 {
                    self.metrics.connected.store(1, Relaxed);
                    let _ = self.state.send(BusState::Ready);
                }
            }
            Event::Incoming(Packet::Publish(publish)) => self.forward(publish).await,
            Event::Outgoing(Outgoing::Disconnect) => {
                self.metrics.connected.store(0, Relaxed);
                let _ = self.state.send(BusState::Closed);
                return ControlFlow::Break(());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl BusLoop {
    /// A CONNACK: forgets what the last session left unacknowledged (the broker redelivers
    /// it), subscribes every route, and replays retained messages to the shared routes.
    fn connected(&mut self) {
        // Whatever the last session left unacknowledged, the broker redelivers.
        lock_order(&self.acker.order).queue.clear();
        self.metrics.connects.fetch_add(1, Relaxed);
        let group = self.shared.as_ref().map(|s| s.group.as_str());
        let filters: Vec<String> = self
            .routes
            .iter()
            .flatten()
            .map(|r| r.subscription(group))
            .collect();
        self.pending_subacks = filters.len();
        for filter in filters {
            if let Err(error) = self.client.try_subscribe(filter.as_str(), QoS::AtLeastOnce) {
                tracing::error!(%error, %filter, "bus: subscribe not queued");
            }
        }
        if self.pending_subacks == 0 {
            let _ = self.state.send(BusState::Ready);
        }
        if let Some((topic, payload)) = &self.presence {
            // After the subscriptions, so a query it is asked is answered.
            if let Err(error) =
                self.client
                    .try_publish(topic.as_str(), QoS::AtLeastOnce, true, payload.clone())
            {
                tracing::error!(%error, "bus: presence not queued");
            }
        }
        tracing::info!("bus connected to broker");
        if let (Some(shared), Some(routes)) = (&self.shared, &self.routes) {
            let targets = routes
                .iter()
                .filter(|r| r.shared)
                .map(|r| (r.filter.clone(), r.tx.clone()))
                .collect();
            tokio::spawn(replay_retained(
                shared.clone(),
                targets,
                self.stop.clone(),
                self.metrics.clone(),
            ));
        }
    }

    /// A PUBLISH: goes to the first route whose filter matches (one that matches none is
    /// acknowledged); while stopping, it is left unacknowledged.
    async fn forward(&self, publish: Publish) {
        let Some(routes) = self.routes.as_ref() else {
            // Shutting down: not acknowledged, so the broker still owns it.
            return;
        };
        lock_order(&self.acker.order).delivered(&publish);
        match routes
            .iter()
            .find(|r| filter_matches(&r.filter, &publish.topic))
        {
            Some(route) => {
                if route.tx.send(publish).await.is_err() {
                    tracing::warn!("bus: handler queue closed");
                }
            }
            None => {
                // Not ours (a broker delivering beyond our filters): ack so it is
                // not redelivered forever.
                self.acker.ack(&publish).await;
            }
        }
    }

    /// A connection error (logged by [`drive`], which then waits out its backoff): ends the
    /// loop when stopping or when the first CONNECT is refused for good; otherwise records it.
    fn failed(&mut self, error: rumqttc::ConnectionError) -> ControlFlow<()> {
        self.metrics.connected.store(0, Relaxed);
        if *self.stop.borrow() {
            let _ = self.state.send(BusState::Closed);
            return ControlFlow::Break(());
        }
        let message = error.to_string();
        let first = matches!(&*self.state.borrow(), BusState::Connecting(_));
        if first
            && matches!(
                error,
                rumqttc::ConnectionError::ConnectionRefused(_) | rumqttc::ConnectionError::Tls(_)
            )
        {
            // Wrong credentials or an untrusted certificate do not fix themselves:
            // fail the start-up now.
            let _ = self.state.send(BusState::Refused(message));
            return ControlFlow::Break(());
        }
        let next = match &*self.state.borrow() {
            BusState::Connecting(_) => BusState::Connecting(Some(message.clone())),
            _ => BusState::Reconnecting(message.clone()),
        };
        let _ = self.state.send(next);
        ControlFlow::Continue(())
    }
}

/// What the bus needs to consume through shared subscriptions (external broker).
#[derive(Clone)]
struct Shared {
    group: String,
    endpoint: Endpoint,
    client_id: String,
    max_packet: usize,
}

/// How long the retained replay waits for one more message before it ends.
const REPLAY_QUIET: Duration = Duration::from_secs(1);
/// The longest a retained replay runs.
const REPLAY_MAX: Duration = Duration::from_secs(300);

/// Replays the retained messages of the shared routes' topics into their handlers, once
/// per (re)connect of the bus.
///
/// A broker that restarts may come back without the shared subscriptions (Mosquitto 2.0
/// persists sessions and plain subscriptions, not shared ones) and drops what is published
/// before the bus subscribes again; a shared subscription is never sent retained messages.
/// Status, baby-station and parent-station messages are retained by contract, so each
/// topic's latest message is still at the broker: a short-lived plain subscription fetches
/// them and the handlers record what is missing (everything else is an idempotent no-op).
/// A client's latest status is what decides its current state, and an end whose start was
/// lost still records both (the connection decider's rule for ends seen first).
async fn replay_retained(
    shared: Shared,
    targets: Vec<(String, mpsc::Sender<Publish>)>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<BusMetrics>,
) {
    let mut options = publisher_options(
        &shared.endpoint,
        &format!("{}-replay", shared.client_id),
        shared.max_packet,
    );
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    nodelay(&mut eventloop);
    for (filter, _) in &targets {
        let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
    }
    let started = tokio::time::Instant::now();
    let mut replayed = 0u64;
    let mut subacks = 0;
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(REPLAY_QUIET), if subacks == targets.len() => break,
            event = eventloop.poll() => event,
        };
        if started.elapsed() > REPLAY_MAX {
            tracing::warn!(replayed, "retained replay stopped after its time limit");
            break;
        }
        match event {
            Ok(Event::Incoming(Packet::SubAck(_))) => subacks += 1,
            Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                if let Some((_, tx)) = targets.iter().find(|(f, _)| filter_matches(f, &p.topic)) {
                    replayed += 1;
                    metrics.replayed.fetch_add(1, Relaxed);
                    if tx.send(p).await.is_err() {
                        break;
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "retained replay: broker connection failed; the next reconnect replays again");
                return;
            }
        }
    }
    let _ = client.try_disconnect();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    tracing::info!(
        replayed,
        "retained messages replayed after the bus connected"
    );
}

/// MQTT topic-filter matching (`+` one level, `#` the rest).
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            level => {
                if t.next() != Some(level) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::{filter_matches, Route};

    #[test]
    fn shared_routes_subscribe_in_the_group_and_match_the_plain_filter() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let shared = Route {
            filter: "accounts/+/clients/+/status".into(),
            tx: tx.clone(),
            shared: true,
        };
        let plain = Route {
            filter: "accounts/+/clients/+/webrtc_inbox".into(),
            tx,
            shared: false,
        };
        assert_eq!(
            shared.subscription(Some("cradle")),
            "$share/cradle/accounts/+/clients/+/status"
        );
        assert_eq!(shared.subscription(None), "accounts/+/clients/+/status");
        assert_eq!(
            plain.subscription(Some("cradle")),
            "accounts/+/clients/+/webrtc_inbox"
        );
        // Deliveries of a shared subscription carry the plain topic: routing matches the
        // plain filter.
        assert!(filter_matches(
            &shared.filter,
            "accounts/a/clients/c/status"
        ));
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches(
            "accounts/+/clients/+/status",
            "accounts/a/clients/c/status"
        ));
        assert!(!filter_matches(
            "accounts/+/clients/+/status",
            "accounts/a/clients/c/other"
        ));
        assert!(!filter_matches(
            "accounts/+/clients/+/status",
            "accounts/a/clients/status"
        ));
        assert!(filter_matches("accounts/#", "accounts/a/b/c"));
        assert!(filter_matches("a/b", "a/b"));
        assert!(!filter_matches("a/b", "a/b/c"));
    }
}
