//! The live feed of the event log: one reader per replica follows every committed event
//! (its own commits and every other replica's) in log order, and hands each to the stream's
//! followers (`http::stream`) through a bounded broadcast, so a thousand followers cost one
//! database poll, not a thousand.
//!
//! The feed reads only up to the store's settled position ([`Store::settled_position`]), so
//! a position it has passed can never commit later: a follower that has seen `N` is never
//! handed a smaller position. It wakes on this process's commits at once and polls every
//! `stream.poll_ms` for other processes' ones. A follower joins by [`Feed::join`]: it is
//! subscribed first, then told the feed's horizon, so that reading the log up to that
//! horizon and the broadcast after it leave no gap (positions read twice are skipped by the
//! follower).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::StreamConfig;
use crate::metrics::{Desc, Exposition, Family};
use crate::store::{EventFilter, Store, StoredEvent};

/// Events read from the log per query.
const PAGE: u64 = 500;

/// An event as the feed hands it out: serialised once for every follower.
#[derive(Debug)]
pub(crate) struct Fed {
    /// The event.
    pub event: StoredEvent,
    /// Its JSON, as the stream sends it.
    pub json: String,
}

impl Fed {
    pub(crate) fn new(event: StoredEvent) -> Fed {
        // Invariant: a StoredEvent is strings, integers and a JSON value: it serialises.
        let json = serde_json::to_string(&event).unwrap_or_default();
        Fed { event, json }
    }
}

/// Why a follower's stream ended on the server's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// It fell more than `stream.buffer_events` behind the feed.
    Lagged,
    /// Cradle is shutting down.
    Shutdown,
}

impl Cut {
    /// Every value, in exposition order.
    const ALL: [Cut; 2] = [Cut::Lagged, Cut::Shutdown];

    /// The wire name (`event: cut`'s `reason`, the metric's label).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cut::Lagged => "lagged",
            Cut::Shutdown => "shutdown",
        }
    }
}
crate::metrics::labels!(Cut);

/// The feed's counters (`/metrics`).
#[derive(Default)]
pub(crate) struct FeedMetrics {
    /// Events the feed read from the log and broadcast.
    pub read: AtomicU64,
    /// The feed's horizon (settled position).
    pub horizon: AtomicI64,
    /// Polls that failed (the database unreachable, appends held up).
    pub errors: AtomicU64,
    /// Followers streaming now.
    pub followers: AtomicI64,
    /// Followers refused at `stream.max_followers`.
    pub refused: AtomicU64,
    /// Events sent to followers.
    pub sent: AtomicU64,
    /// Followers cut, by reason.
    pub cut: crate::metrics::Labeled<Cut>,
}

impl Family for FeedMetrics {
    fn render(&self, out: &mut Exposition) {
        out.gauge(
            "cradle_stream_followers",
            "Followers of the live event stream on this replica.",
            self.followers.load(Relaxed),
        );
        out.counter(
            "cradle_stream_followers_refused_total",
            "Followers refused at stream.max_followers (503 too_many_followers).",
            self.refused.load(Relaxed),
        );
        out.counter(
            "cradle_stream_events_sent_total",
            "Events sent to followers of the live stream.",
            self.sent.load(Relaxed),
        );
        out.family(Desc::counter(
            "cradle_stream_cut_total",
            "Followers cut by the server, by reason (lagged: over stream.buffer_events behind).",
        ))
        .labeled("", "reason", &self.cut);
        out.counter(
            "cradle_feed_events_total",
            "Committed events the live feed read from the log.",
            self.read.load(Relaxed),
        );
        out.gauge(
            "cradle_feed_position",
            "The live feed's settled position: every event up to it has been read.",
            self.horizon.load(Relaxed),
        );
        out.counter(
            "cradle_feed_errors_total",
            "Polls of the log by the live feed that failed (retried).",
            self.errors.load(Relaxed),
        );
    }
}

/// The live feed of one replica.
pub(crate) struct Feed {
    store: Store,
    /// Every event up to here has been broadcast.
    horizon: AtomicI64,
    events: broadcast::Sender<Arc<Fed>>,
    /// True once the feed stops (shutdown): followers end.
    closed: watch::Sender<bool>,
    followers: Arc<Semaphore>,
    /// Held while a follower joins, and while the feed decides that nobody follows: so a
    /// follower either joins before that decision (and gets the broadcast) or reads the
    /// horizon after it (and reads those events from the log).
    joining: std::sync::Mutex<()>,
    settings: StreamConfig,
    /// Its counters.
    pub metrics: Arc<FeedMetrics>,
}

/// A follower's place: its slot under `stream.max_followers` (released when dropped).
pub(crate) struct Follower {
    _slot: OwnedSemaphorePermit,
    metrics: Arc<FeedMetrics>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.metrics.followers.fetch_sub(1, Relaxed);
    }
}

/// What a follower gets when it joins: the broadcast from now on and the horizon the log
/// must be read up to first.
pub(crate) struct Joined {
    /// Every event after `horizon` (and possibly some before it).
    pub events: broadcast::Receiver<Arc<Fed>>,
    /// Read the log up to here first.
    pub horizon: i64,
    /// Turns true when the feed stops.
    pub closed: watch::Receiver<bool>,
}

impl Feed {
    /// A feed of `store`'s log, not yet running ([`Feed::run`]).
    pub(crate) fn new(store: Store, settings: StreamConfig) -> Arc<Feed> {
        let (events, _) = broadcast::channel(settings.buffer_events.max(1));
        Arc::new(Feed {
            store,
            horizon: AtomicI64::new(0),
            events,
            closed: watch::channel(false).0,
            followers: Arc::new(Semaphore::new(settings.max_followers)),
            joining: std::sync::Mutex::new(()),
            settings,
            metrics: Arc::default(),
        })
    }

    /// The stream's settings.
    pub(crate) fn settings(&self) -> &StreamConfig {
        &self.settings
    }

    /// The store the feed reads.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// A follower's slot, or `None` at `stream.max_followers` (counted).
    pub(crate) fn follower(&self) -> Option<Follower> {
        match self.followers.clone().try_acquire_owned() {
            Ok(slot) => {
                self.metrics.followers.fetch_add(1, Relaxed);
                Some(Follower {
                    _slot: slot,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
                self.metrics.refused.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Subscribes a follower, then reads the horizon (in that order: see the module docs).
    pub(crate) fn join(&self) -> Joined {
        let _joining = self.joining.lock().unwrap_or_else(|e| e.into_inner());
        let events = self.events.subscribe();
        Joined {
            events,
            horizon: self.horizon.load(std::sync::atomic::Ordering::Acquire),
            closed: self.closed.subscribe(),
        }
    }

    /// Stops the feed; every follower's stream ends (reason `shutdown`).
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Follows the log until [`Feed::close`]: from the settled position at start, each
    /// commit of this process or every `stream.poll_ms`, the events up to the settled
    /// position are read and broadcast.
    pub(crate) async fn run(self: Arc<Self>) {
        let wake = self.store.appended();
        let mut closed = self.closed.subscribe();
        let poll = Duration::from_millis(self.settings.poll_ms);
        let mut started = false;
        loop {
            if *closed.borrow() {
                return;
            }
            let step = if started {
                self.catch_up().await
            } else {
                self.start().await
            };
            match step {
                Ok(()) => started = true,
                Err(error) => {
                    self.metrics.errors.fetch_add(1, Relaxed);
                    tracing::warn!(%error, "live feed: reading the log failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = closed.changed() => return,
                    }
                    continue;
                }
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
                _ = closed.changed() => return,
            }
        }
    }

    /// Starts at the settled position: followers read what came before from the log.
    async fn start(&self) -> Result<(), crate::store::StoreError> {
        let settled = self.store.settled_position().await?;
        self.advance(settled);
        Ok(())
    }

    /// Reads and broadcasts every event up to the settled position (only moves the horizon
    /// while nobody follows: the pipeline's events are not read back for nobody).
    async fn catch_up(&self) -> Result<(), crate::store::StoreError> {
        let settled = self.store.settled_position().await?;
        {
            let _joining = self.joining.lock().unwrap_or_else(|e| e.into_inner());
            if self.events.receiver_count() == 0 {
                self.advance(settled);
                return Ok(());
            }
        }
        let mut after = self.horizon.load(Relaxed);
        let filter = EventFilter {
            upto: Some(settled),
            ..EventFilter::default()
        };
        while after < settled {
            let page = self.store.log(None, after, PAGE, &filter).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            // The horizon moves before the events go out: a follower joining in between
            // reads them from the log and skips them in the broadcast.
            self.advance(last);
            self.metrics.read.fetch_add(page.len() as u64, Relaxed);
            for event in page {
                let _ = self.events.send(Arc::new(Fed::new(event)));
            }
            after = last;
        }
        self.advance(settled);
        Ok(())
    }

    /// Broadcasts `event` as if read from the log (the followers' tests).
    #[cfg(test)]
    pub(crate) fn broadcast(&self, event: StoredEvent) {
        let _ = self.events.send(Arc::new(Fed::new(event)));
    }

    fn advance(&self, to: i64) {
        let before = self
            .horizon
            .fetch_max(to, std::sync::atomic::Ordering::Release);
        self.metrics.horizon.store(before.max(to), Relaxed);
    }
}
