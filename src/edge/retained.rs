//! The retained messages each account's devices keep in the broker, counted by the edge so
//! that one account cannot fill the broker's memory (`mqtt.max_retained_per_account`,
//! `mqtt.max_retained_bytes_per_account`).
//!
//! The edge sees every retained PUBLISH a client sends, so it keeps, per account, the size of
//! each retained topic's latest message: a new retained message on a topic replaces the
//! topic's old one (its size counts once), an empty one deletes it. The ledger is itself
//! bounded by the quotas it enforces. Retained messages Cradle publishes itself (end statuses,
//! announcements) do not pass the edge and are not counted: they are bounded by the clients
//! and sessions in the store. Open-mode clients share one quota (their topics are
//! theirs to choose, so a key from the topic would let them pick a fresh quota).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use super::acl::Principal;
use super::metrics::EdgeMetrics;

/// Why a retained message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetainRefused {
    /// The account holds `mqtt.max_retained_per_account` messages or would exceed
    /// `mqtt.max_retained_bytes_per_account`.
    Quota,
}

#[derive(Default)]
struct Account {
    topics: HashMap<String, usize>,
    bytes: usize,
}

/// Retained messages per account (see the module documentation).
pub struct RetainedLedger {
    max_count: usize,
    max_bytes: usize,
    accounts: Mutex<HashMap<String, Account>>,
}

/// The ledger key of every open-mode (and operator) client: one quota for all of them, since
/// the topics they publish to are theirs to choose.
const SHARED: &str = "";

/// The key a client's retained messages count under: its account, or [`SHARED`].
pub(crate) fn ledger_key(principal: &Principal) -> &str {
    match principal {
        Principal::Device { account_id, .. } => account_id,
        Principal::Operator | Principal::Open => SHARED,
    }
}

impl RetainedLedger {
    /// A ledger with these quotas per account.
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Self {
            max_count,
            max_bytes,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Records a retained PUBLISH of `payload_len` bytes to `topic` by a client of `account`,
    /// or refuses it. An empty payload deletes the topic's retained message and is always
    /// accepted.
    pub(crate) fn admit(
        &self,
        account: &str,
        topic: &str,
        payload_len: usize,
        metrics: &EdgeMetrics,
    ) -> Result<(), RetainRefused> {
        // Each update below is complete before the lock is released; a poisoned lock holds a
        // consistent table.
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let size = topic.len() + payload_len;
        if payload_len == 0 {
            if let Some(a) = accounts.get_mut(account) {
                if let Some(old) = a.topics.remove(topic) {
                    a.bytes -= old;
                    metrics.retained_messages.fetch_sub(1, Relaxed);
                    metrics.retained_bytes.fetch_sub(old as i64, Relaxed);
                }
                if a.topics.is_empty() {
                    accounts.remove(account);
                }
            }
            return Ok(());
        }
        let a = accounts.entry(account.to_string()).or_default();
        let old = a.topics.get(topic).copied();
        let count = a.topics.len() + usize::from(old.is_none());
        let bytes = a.bytes - old.unwrap_or(0) + size;
        if count > self.max_count || bytes > self.max_bytes {
            if a.topics.is_empty() {
                accounts.remove(account);
            }
            return Err(RetainRefused::Quota);
        }
        a.topics.insert(topic.to_string(), size);
        a.bytes = bytes;
        if old.is_none() {
            metrics.retained_messages.fetch_add(1, Relaxed);
        }
        metrics
            .retained_bytes
            .fetch_add(size as i64 - old.unwrap_or(0) as i64, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_over_its_count_is_refused_and_another_account_is_not() {
        let (ledger, m) = (RetainedLedger::new(2, 1 << 20), EdgeMetrics::default());
        assert_eq!(ledger.admit("a", "t/1", 5, &m), Ok(()));
        assert_eq!(ledger.admit("a", "t/2", 5, &m), Ok(()));
        assert_eq!(ledger.admit("a", "t/3", 5, &m), Err(RetainRefused::Quota));
        assert_eq!(ledger.admit("b", "t/3", 5, &m), Ok(()));
        assert_eq!(m.retained_messages.load(Relaxed), 3);
    }

    #[test]
    fn replacing_a_topic_counts_it_once_and_a_deletion_frees_its_room() {
        let (ledger, m) = (RetainedLedger::new(1, 100), EdgeMetrics::default());
        assert_eq!(ledger.admit("a", "t", 50, &m), Ok(()));
        assert_eq!(ledger.admit("a", "t", 90, &m), Ok(()));
        assert_eq!(ledger.admit("a", "t", 100, &m), Err(RetainRefused::Quota));
        assert_eq!(ledger.admit("a", "u", 1, &m), Err(RetainRefused::Quota));
        assert_eq!(ledger.admit("a", "t", 0, &m), Ok(()));
        assert_eq!(ledger.admit("a", "u", 1, &m), Ok(()));
        assert_eq!(m.retained_messages.load(Relaxed), 1);
        assert_eq!(m.retained_bytes.load(Relaxed), 2);
    }

    #[test]
    fn a_deletion_of_an_unknown_topic_is_accepted() {
        let (ledger, m) = (RetainedLedger::new(0, 0), EdgeMetrics::default());
        assert_eq!(ledger.admit("a", "t", 0, &m), Ok(()));
        assert_eq!(ledger.admit("a", "t", 1, &m), Err(RetainRefused::Quota));
    }
}
