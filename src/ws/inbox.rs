//! Per-connection inbox subscriptions, for several replicas on an external broker.
//!
//! With one replica, the bus's single `accounts/+/clients/+/webrtc_inbox` subscription sees
//! every inbox. With several, each replica subscribes only the inboxes of the WebSocket
//! sessions it holds (`accounts/{a}/clients/{c}/webrtc_inbox`), so the broker routes a
//! device's signalling to the replica holding the socket, whichever replica processes the
//! device's status. For presence and baby-station lists it also follows the status and
//! announcement topics of each account it holds sessions of
//! (`accounts/{a}/clients/+/status`, `accounts/{a}/baby_stations/+`): another replica may
//! have processed them. Every filter is reference counted (a client id or an account with
//! several sessions on one replica is subscribed once). A session's `hello` is sent only
//! once its subscriptions are acknowledged, so what is published after `hello` reaches it.
//! After a reconnect the client subscribes every live filter again.

use std::collections::{HashMap, VecDeque};
use std::future::ready;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::Either;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot};

use crate::endpoint::Endpoint;
use crate::mqtt_client::{drive, Polled};
use crate::topics;

/// Waiters of SUBSCRIBEs queued, then sent (by packet id), until their SUBACK.
#[derive(Default)]
struct Waiters {
    queued: VecDeque<Option<oneshot::Sender<()>>>,
    sent: HashMap<u16, Option<oneshot::Sender<()>>>,
}

/// The replica's inbox subscriptions.
pub(crate) struct InboxSubscriptions {
    client: AsyncClient,
    /// Filter → sessions on this replica that need it. The lock is never held across an
    /// await; subscribe requests are queued under it so they keep the refcount's order.
    refs: Mutex<HashMap<String, usize>>,
    waiters: Arc<Mutex<Waiters>>,
    /// The shared subscription to other replicas' session offers, left at shutdown.
    offers: Option<String>,
}

/// How long a session's `hello` waits for its inbox subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// The filters one WebSocket session needs: its inbox, its account's statuses and its
/// account's baby-station announcements.
fn session_filters(account_id: &str, client_id: &str) -> [String; 3] {
    [
        topics::inbox_topic(account_id, client_id),
        topics::status_filter(account_id),
        topics::baby_stations_filter(account_id),
    ]
}

impl InboxSubscriptions {
    /// Connects a client `client_id` to `endpoint`; every inbox message goes to `tx`. With
    /// `share_group`, it also takes its share of the session offers of replicas that shut
    /// down (`$share/{group}/cradle/ws/offer/+`).
    pub fn start(
        endpoint: &Endpoint,
        client_id: &str,
        max_packet: usize,
        share_group: Option<&str>,
        tx: mpsc::Sender<Publish>,
    ) -> Arc<Self> {
        let options = crate::mqtt_client::publisher_options(endpoint, client_id, max_packet);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        crate::mqtt_client::nodelay(&mut eventloop);
        // Requests to move a session between replicas, for as long as the replica runs
        // (subscribed, as every live filter, at each connect).
        let mut refs = HashMap::from([(format!("{}+", super::TRANSFER_PREFIX), 1)]);
        let offers = share_group.map(|g| format!("$share/{g}/{}+", super::OFFER_PREFIX));
        if let Some(filter) = &offers {
            refs.insert(filter.clone(), 1);
        }
        let this = Arc::new(Self {
            client,
            offers,
            refs: Mutex::new(refs),
            waiters: Arc::new(Mutex::new(Waiters::default())),
        });
        let weak = Arc::downgrade(&this);
        let name = format!("{client_id} (inbox subscriber)");
        tokio::spawn(async move {
            drive(&mut eventloop, &name, |polled| {
                let this = weak.upgrade();
                let forward = match (&this, polled) {
                    (None, _) => return Either::Left(ready(ControlFlow::Break(()))),
                    (Some(this), polled) => this.on_polled(polled),
                };
                match forward {
                    Ok(flow) => Either::Left(ready(flow)),
                    Err(publish) => {
                        let tx = tx.clone();
                        Either::Right(async move {
                            match tx.send(publish).await {
                                Ok(()) => ControlFlow::Continue(()),
                                Err(_) => ControlFlow::Break(()),
                            }
                        })
                    }
                }
            })
            .await
        });
        this
    }

    /// Handles one event of the client's connection: re-subscribes after a CONNACK, tracks
    /// SUBSCRIBEs until their SUBACK, forgets those in flight when the connection breaks
    /// (they are sent again after the reconnect). A message is handed back (`Err`) to be
    /// forwarded.
    fn on_polled(&self, polled: Polled<rumqttc::EventLoop>) -> Result<ControlFlow<()>, Publish> {
        let waiters = || {
            self.waiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        match polled {
            Polled::Event(Event::Incoming(Packet::ConnAck(_))) => self.resubscribe(),
            Polled::Event(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                let mut w = waiters();
                let waiter = w.queued.pop_front().flatten();
                w.sent.insert(pkid, waiter);
            }
            Polled::Event(Event::Incoming(Packet::SubAck(ack))) => {
                let waiter = waiters().sent.remove(&ack.pkid).flatten();
                if let Some(w) = waiter {
                    let _ = w.send(());
                }
            }
            Polled::Event(Event::Incoming(Packet::Publish(p))) => return Err(p),
            Polled::Event(Event::Outgoing(Outgoing::Disconnect)) => {
                return Ok(ControlFlow::Break(()))
            }
            Polled::Event(_) => {}
            Polled::Failed(_) => waiters().sent.clear(),
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Queues a SUBSCRIBE of `filter`; the receiver fires on its SUBACK.
    fn subscribe(&self, filter: &str, notify: bool) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        let mut w = self
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.client.try_subscribe(filter, QoS::AtLeastOnce) {
            Ok(()) => {
                w.queued.push_back(notify.then_some(tx));
                notify.then_some(rx)
            }
            Err(error) => {
                tracing::error!(%error, filter, "inbox subscription not queued");
                None
            }
        }
    }

    fn resubscribe(&self) {
        let refs = self
            .refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut w = self
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Whatever was queued before the connection dropped is already in the client's
        // queue or was lost with it; every live filter is subscribed again below.
        w.sent.clear();
        drop(w);
        for filter in refs.keys() {
            let _ = self.subscribe(filter, false);
        }
    }

    /// Subscribes what one more session of `client_id` of `account_id` needs; returns once
    /// the broker acknowledged every new subscription (at most a few seconds).
    pub async fn add(&self, account_id: &str, client_id: &str) {
        let waits: Vec<oneshot::Receiver<()>> = {
            let mut refs = self
                .refs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            session_filters(account_id, client_id)
                .into_iter()
                .filter_map(|filter| {
                    let n = refs.entry(filter.clone()).or_insert(0);
                    *n += 1;
                    // The first session subscribes; later ones find it live or on its way.
                    if *n == 1 {
                        self.subscribe(&filter, true)
                    } else {
                        None
                    }
                })
                .collect()
        };
        // One deadline for all of them: a broker that is away delays a `hello` once.
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_WAIT;
        for rx in waits {
            if tokio::time::timeout_at(deadline, rx).await.is_err() {
                tracing::warn!(
                    account_id,
                    client_id,
                    "subscription not acknowledged in time; continuing"
                );
            }
        }
    }

    /// Leaves the shared subscription to session offers (this replica is shutting down and
    /// offers its own), and gives the broker a moment to process it (its UNSUBACK is not
    /// tracked).
    pub(crate) async fn leave_offers(&self) {
        let Some(filter) = &self.offers else {
            return;
        };
        self.refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(filter);
        if let Err(error) = self.client.unsubscribe(filter.as_str()).await {
            tracing::warn!(%error, filter, "unsubscribe not queued");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Drops one session's needs; the last user of a filter unsubscribes it.
    pub fn remove(&self, account_id: &str, client_id: &str) {
        let mut refs = self
            .refs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for filter in session_filters(account_id, client_id) {
            if let Some(n) = refs.get_mut(&filter) {
                *n -= 1;
                if *n == 0 {
                    refs.remove(&filter);
                    if let Err(error) = self.client.try_unsubscribe(filter.as_str()) {
                        tracing::warn!(%error, filter, "unsubscribe not queued");
                    }
                }
            }
        }
    }
}
