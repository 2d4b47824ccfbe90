use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::{
    Forward,
    scheduler::{PauseReason, Tracker},
    ConnectionEvents,
};

pub struct Graveyard {
    connections: HashMap<String, SavedState>,
    /// CRADLE PATCH 18: saves since expired sessions were last swept out.
    saves: usize,
}

impl Graveyard {
    pub fn new() -> Graveyard {
        Graveyard {
            connections: HashMap::new(),
            saves: 0,
        }
    }

    /// Add a new connection.
    /// Return tracker of previous connection if connection id already exists
    /// CRADLE PATCH 18: an expired session is not handed back (its metrics are).
    pub fn retrieve(&mut self, id: &str) -> Option<SavedState> {
        let mut saved = self.connections.remove(id)?;
        if saved.expired(Instant::now()) {
            saved.session_state = None;
        }
        Some(saved)
    }

    /// CRADLE PATCH 18: drops expired sessions every 1,024 saves, so that sessions nobody
    /// comes back for do not pile up.
    fn sweep(&mut self) {
        self.saves += 1;
        if self.saves < 1024 {
            return;
        }
        self.saves = 0;
        let now = Instant::now();
        self.connections.retain(|_, s| !s.expired(now));
    }

    /// Save connection tracker
    pub fn save_state(
        &mut self,
        mut tracker: Tracker,
        subscriptions: HashSet<String>,
        metrics: ConnectionEvents,
        unacked_pubrels: VecDeque<u16>,
        inflight: VecDeque<(u16, Forward)>,
        expires: Option<Instant>,
    ) {
        self.sweep();
        tracker.pause(PauseReason::Busy);
        let id = tracker.id.clone();

        let session_state = SessionState {
            tracker,
            subscriptions,
            unacked_pubrels,
            inflight,
        };

        self.connections.insert(
            id,
            SavedState {
                session_state: Some(session_state),
                metrics,
                expires,
            },
        );
    }

    /// Save only metrics for connection
    pub fn save_metrics(&mut self, id: String, metrics: ConnectionEvents) {
        self.sweep();
        self.connections.insert(
            id,
            SavedState {
                session_state: None,
                metrics,
                expires: None,
            },
        );
    }
}

#[derive(Debug)]
pub struct SavedState {
    pub session_state: Option<SessionState>,
    pub metrics: ConnectionEvents,
    /// CRADLE PATCH 18: when the session expires (`None`: never).
    pub expires: Option<Instant>,
}

impl SavedState {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

#[derive(Debug)]
pub struct SessionState {
    pub tracker: Tracker,
    pub subscriptions: HashSet<String>,
    // used for pubrel in qos2
    pub unacked_pubrels: VecDeque<u16>,
    /// CRADLE PATCH 23: QoS 1/2 deliveries not yet acknowledged, re-sent on resumption.
    pub inflight: VecDeque<(u16, Forward)>,
}
