//! The edge's live connections by upstream client id: how a takeover finds the connection it
//! replaces, and how a kick or a shutdown reaches a connection.
//!
//! One `std::sync::Mutex` around a map, never held across an await: claim and release are a
//! few map operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::connection::DisconnectReason;
use crate::domain::control::{EndCommand, Owner};

/// What a live connection and the registry share: the end asked of it, and whether it has
/// finished. About 100 bytes per connection (two `watch` channels were ~800).
#[derive(Default)]
struct Signal {
    end: Mutex<Option<DisconnectReason>>,
    ended: Notify,
    done: AtomicBool,
    finished: Notify,
}

impl Signal {
    fn reason(&self) -> Option<DisconnectReason> {
        *self
            .end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ask(&self, reason: DisconnectReason) {
        *self
            .end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
        self.ended.notify_waiters();
    }

    /// Waits until the connection has finished. Cancel-safe.
    async fn wait_done(&self) {
        loop {
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// What the list of live connections shows of one connection besides its owner; its
/// counters are kept by the connection's task.
#[derive(Debug)]
pub struct ConnDetails {
    /// The edge's id of this MQTT connection (`m-…`), the `edge_connection_id` its
    /// statuses carry.
    pub connection_id: Box<str>,
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The listener's config key (`mqtt.listen`, `mqtt.ws_listen`, `mqtt.tls_listen`, …).
    pub listener: &'static str,
    /// `3.1.1` or `5`.
    pub protocol: &'static str,
    /// The keep-alive the client asked for, in seconds.
    pub keep_alive_secs: u16,
    /// PUBLISH packets from the client.
    pub messages_in: AtomicU64,
    /// PUBLISH packets to the client.
    pub messages_out: AtomicU64,
    /// Bytes from the client.
    pub bytes_in: AtomicU64,
    /// Bytes to the client.
    pub bytes_out: AtomicU64,
}

impl ConnDetails {
    /// A connection's details with its counters at zero.
    pub fn new(
        connection_id: Box<str>,
        peer: std::net::SocketAddr,
        (listener, protocol): (&'static str, &'static str),
        keep_alive_secs: u16,
    ) -> Self {
        Self {
            connection_id,
            peer,
            listener,
            protocol,
            keep_alive_secs,
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

/// One live connection as listed.
#[derive(Debug, Clone)]
pub struct LiveConnection {
    /// Who holds it.
    pub owner: Owner,
    /// Its details (the counters as read now).
    pub details: Arc<ConnDetails>,
}

/// A live connection's handle in the registry.
struct Entry {
    seq: u64,
    signal: Arc<Signal>,
    /// Who holds it: what a revocation or a kick matches.
    owner: Owner,
    details: Arc<ConnDetails>,
}

/// Live connections by upstream client id.
#[derive(Default)]
pub(crate) struct Registry {
    next_seq: AtomicU64,
    live: Mutex<HashMap<String, Entry>>,
}

/// What a connection holds while it is registered.
pub(crate) struct Claim {
    /// Its sequence number (a newer claim of the same id has a larger one).
    pub seq: u64,
    signal: Arc<Signal>,
    /// Its details, whose counters the connection's task keeps.
    pub(crate) details: Arc<ConnDetails>,
}

impl Claim {
    /// Waits until the connection is asked to end, and says why. Cancel-safe (it runs in the
    /// connection's `select!`).
    pub async fn ended(&self) -> DisconnectReason {
        loop {
            let notified = self.signal.ended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.signal.reason() {
                return reason;
            }
            notified.await;
        }
    }

    /// The end asked of the connection, if any.
    #[cfg(test)]
    pub(crate) fn asked(&self) -> Option<DisconnectReason> {
        self.signal.reason()
    }

    /// Marks the connection finished (its end published, its link closed): a newer
    /// connection of the same client id or a shutdown waiting for it goes on.
    pub(crate) fn finished(&self) {
        self.signal.done.store(true, Ordering::Release);
        self.signal.finished.notify_waiters();
    }
}

impl Registry {
    /// Registers a connection of `client_id`. A connection already registered under that
    /// id is told to end with reason `takeover`, and this waits (at most `wait`) until it has
    /// finished, so its end is published before the new connection reaches the broker.
    pub(crate) async fn claim(
        &self,
        client_id: &str,
        (owner, details): (Owner, Arc<ConnDetails>),
        wait: Duration,
    ) -> Claim {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Signal::default());
        let previous = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                client_id.to_string(),
                Entry {
                    seq,
                    signal: signal.clone(),
                    owner,
                    details: details.clone(),
                },
            );
        if let Some(old) = previous {
            old.signal.ask(DisconnectReason::Takeover);
            let _ = tokio::time::timeout(wait, old.signal.wait_done()).await;
        }
        Claim {
            seq,
            signal,
            details,
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
    pub(crate) fn end_all(&self, reason: DisconnectReason) -> usize {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in live.values() {
            e.signal.ask(reason);
        }
        live.len()
    }

    /// Tells every live connection `command` ends to end with its reason; returns how many
    /// were told.
    pub(crate) fn end_matching(&self, command: &EndCommand) -> usize {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut told = 0;
        for e in live.values().filter(|e| command.ends(&e.owner)) {
            e.signal.ask(command.reason);
            told += 1;
        }
        told
    }

    /// The first `limit` live connections of an account's devices (of `account`, or of every
    /// account) in (account, client id) order from `after` on (inclusive), each with its details. Only those
    /// are copied: a page of 1,000 among 19,000 connections selects them without sorting or
    /// copying the rest.
    pub(crate) fn list(
        &self,
        account: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Vec<LiveConnection> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fn key(e: &Entry) -> (&str, &str) {
            let a = e.owner.account_id.as_deref().unwrap_or_default();
            (a, e.owner.client_id.as_str())
        }
        let mut found: Vec<&Entry> = live
            .values()
            .filter(|e| match (&e.owner.account_id, account) {
                (None, _) => false,
                (Some(own), Some(a)) => own == a,
                (Some(_), None) => true,
            })
            .filter(|e| after.is_none_or(|after| key(e) >= after))
            .collect();
        if found.len() > limit {
            found.select_nth_unstable_by(limit, |a, b| key(a).cmp(&key(b)));
            found.truncate(limit);
        }
        found.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
        found
            .into_iter()
            .map(|e| LiveConnection {
                owner: e.owner.clone(),
                details: e.details.clone(),
            })
            .collect()
    }

    /// Waits until every connection told to end has finished, at most `wait`.
    pub(crate) async fn wait_all_done(&self, wait: Duration) {
        let pending: Vec<Arc<Signal>> = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|e| e.signal.clone())
            .collect();
        let all = async {
            for s in pending {
                s.wait_done().await;
            }
        };
        let _ = tokio::time::timeout(wait, all).await;
    }

    /// Live connections.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details() -> Arc<ConnDetails> {
        Arc::new(ConnDetails::new(
            "m-1".into(),
            "127.0.0.1:1".parse().unwrap(),
            ("mqtt.listen", "5"),
            30,
        ))
    }

    #[tokio::test]
    async fn a_second_claim_tells_the_first_to_end_by_takeover_and_waits_for_it() {
        let r = std::sync::Arc::new(Registry::default());
        let first = r
            .claim("a/c", (Owner::default(), details()), Duration::from_secs(5))
            .await;
        let r2 = r.clone();
        let second = tokio::spawn(async move {
            r2.claim("a/c", (Owner::default(), details()), Duration::from_secs(5))
                .await
        });
        assert_eq!(first.ended().await, DisconnectReason::Takeover);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        r.release("a/c", first.seq);
        first.finished();
        let second = second.await.unwrap();
        assert!(second.seq > first.seq);
        // the old connection's release did not remove the new one
        assert_eq!(r.len(), 1);
        r.release("a/c", second.seq);
        assert!(r.len() == 0);
    }

    #[tokio::test]
    async fn end_all_reaches_every_connection() {
        let r = Registry::default();
        let a = r
            .claim("a", (Owner::default(), details()), Duration::from_secs(1))
            .await;
        let b = r
            .claim("b", (Owner::default(), details()), Duration::from_secs(1))
            .await;
        assert_eq!(r.end_all(DisconnectReason::ServerShutdown), 2);
        assert_eq!(a.asked(), Some(DisconnectReason::ServerShutdown));
        assert_eq!(b.ended().await, DisconnectReason::ServerShutdown);
    }

    #[tokio::test]
    async fn a_revocation_ends_only_the_connections_of_its_credential() {
        let r = Registry::default();
        let owner = |client: &str, credential: &str| Owner {
            account_id: Some("acct".into()),
            client_id: client.into(),
            credential_id: Some(credential.into()),
            since_millis: 1,
        };
        let old = r
            .claim(
                "d|acct|c1",
                (owner("c1", "cr_old"), details()),
                Duration::from_secs(1),
            )
            .await;
        let new = r
            .claim(
                "d|acct|c2",
                (owner("c2", "cr_new"), details()),
                Duration::from_secs(1),
            )
            .await;
        let command = EndCommand {
            target: crate::domain::control::Target::Credential {
                credential_id: "cr_old".into(),
            },
            reason: DisconnectReason::Revoked,
            at_millis: 2,
            origin: "r".into(),
            ban_until_millis: None,
        };
        assert_eq!(r.end_matching(&command), 1);
        assert_eq!(old.ended().await, DisconnectReason::Revoked);
        assert_eq!(new.asked(), None);
    }
}
