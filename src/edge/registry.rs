//! The edge's live connections by upstream client id: how a takeover finds the connection it
//! replaces, and how a kick or a shutdown reaches a connection.
//!
//! One `std::sync::Mutex` around a map, never held across an await: claim and release are a
//! few map operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::connection::DisconnectReason;

/// A live connection's handle in the registry.
struct Entry {
    seq: u64,
    end: watch::Sender<Option<DisconnectReason>>,
    done: watch::Receiver<bool>,
}

/// Live connections by upstream client id.
#[derive(Default)]
pub struct Registry {
    next_seq: AtomicU64,
    live: Mutex<HashMap<String, Entry>>,
}

/// What a connection holds while it is registered.
pub struct Claim {
    /// Its sequence number (a newer claim of the same id has a larger one).
    pub seq: u64,
    /// Tells the connection to end, and why.
    pub end: watch::Receiver<Option<DisconnectReason>>,
    /// Set to true when the connection has finished (its end published, upstream closed).
    pub done: watch::Sender<bool>,
}

impl Registry {
    /// Registers a connection of `client_id`. A connection already registered under that
    /// id is told to end with reason `takeover`, and this waits (at most `wait`) until it has
    /// finished, so its end is published before the new connection reaches the broker.
    pub async fn claim(&self, client_id: &str, wait: Duration) -> Claim {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (end_tx, end_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        let previous = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                client_id.to_string(),
                Entry {
                    seq,
                    end: end_tx,
                    done: done_rx,
                },
            );
        if let Some(mut old) = previous {
            let _ = old.end.send(Some(DisconnectReason::Takeover));
            let _ = tokio::time::timeout(wait, old.done.wait_for(|d| *d)).await;
        }
        Claim {
            seq,
            end: end_rx,
            done: done_tx,
        }
    }

    /// Removes the connection `seq` of `client_id`, unless a newer one took its place.
    pub fn release(&self, client_id: &str, seq: u64) {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if live.get(client_id).is_some_and(|e| e.seq == seq) {
            live.remove(client_id);
        }
    }

    /// Tells every live connection to end with `reason`; returns how many were told.
    pub fn end_all(&self, reason: DisconnectReason) -> usize {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in live.values() {
            let _ = e.end.send(Some(reason));
        }
        live.len()
    }

    /// Waits until every connection told to end has finished, at most `wait`.
    pub async fn wait_all_done(&self, wait: Duration) {
        let pending: Vec<watch::Receiver<bool>> = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|e| e.done.clone())
            .collect();
        let all = async {
            for mut d in pending {
                let _ = d.wait_for(|d| *d).await;
            }
        };
        let _ = tokio::time::timeout(wait, all).await;
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_claim_tells_the_first_to_end_by_takeover_and_waits_for_it() {
        let r = std::sync::Arc::new(Registry::default());
        let mut first = r.claim("a/c", Duration::from_secs(5)).await;
        let r2 = r.clone();
        let second = tokio::spawn(async move { r2.claim("a/c", Duration::from_secs(5)).await });
        first.end.changed().await.unwrap();
        assert_eq!(*first.end.borrow(), Some(DisconnectReason::Takeover));
        assert!(!second.is_finished());
        r.release("a/c", first.seq);
        first.done.send(true).unwrap();
        let second = second.await.unwrap();
        assert!(second.seq > first.seq);
        // the old connection's release did not remove the new one
        assert_eq!(r.len(), 1);
        r.release("a/c", second.seq);
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn end_all_reaches_every_connection() {
        let r = Registry::default();
        let a = r.claim("a", Duration::from_secs(1)).await;
        let b = r.claim("b", Duration::from_secs(1)).await;
        assert_eq!(r.end_all(DisconnectReason::ServerShutdown), 2);
        assert_eq!(*a.end.borrow(), Some(DisconnectReason::ServerShutdown));
        assert_eq!(*b.end.borrow(), Some(DisconnectReason::ServerShutdown));
    }
}
