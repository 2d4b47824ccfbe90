//! Wills held back by their MQTT 5 Will Delay Interval (MQTT 5 §3.1.3.2.2): published when
//! the delay (or, if shorter, the session) runs out, not at all when a connection with the
//! same client id is admitted first. At most one per client id, at most `limit` in all (the
//! edge's `mqtt.max_connections`); beyond it a Will is published at once. On shutdown every
//! held Will is published: the embedded broker's sessions end with the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::lifecycle::Publication;
use super::EdgeShared;

/// Wills waiting for their delay, by namespaced client id.
pub(crate) struct DelayedWills {
    limit: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    next: u64,
    wills: HashMap<String, (u64, Publication)>,
}

impl DelayedWills {
    /// Holds at most `limit` Wills.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Mutex::new(Held::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `will` of `client` for `delay`; gives it back when `limit` Wills are held
    /// (the caller publishes it at once). A Will already held for `client` is replaced:
    /// its connection's session was taken over by the one that ended now.
    pub fn hold(
        shared: &Arc<EdgeShared>,
        client: &str,
        will: Publication,
        delay: Duration,
    ) -> Option<Publication> {
        let token = {
            let mut held = shared.wills.lock();
            if held.wills.len() >= shared.wills.limit && !held.wills.contains_key(client) {
                return Some(will);
            }
            held.next += 1;
            let token = held.next;
            held.wills.insert(client.to_string(), (token, will));
            token
        };
        let (shared, client) = (shared.clone(), client.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let due = {
                let mut held = shared.wills.lock();
                match held.wills.get(&client) {
                    Some((t, _)) if *t == token => held.wills.remove(&client).map(|(_, p)| p),
                    _ => None,
                }
            };
            if let Some(will) = due {
                shared.publisher.publish(will).await;
            }
        });
        None
    }

    /// A connection of `client` was admitted: its held Will, if any, is not published.
    pub(crate) fn cancel(&self, client: &str) -> bool {
        self.lock().wills.remove(client).is_some()
    }

    /// Every held Will, for publishing at shutdown.
    pub fn drain(&self) -> Vec<Publication> {
        self.lock().wills.drain().map(|(_, (_, p))| p).collect()
    }
}
