//! CRADLE PATCH 27: a publisher's acknowledgement means its durable consumer has it.
//!
//! rumqttd acknowledged a QoS 1 PUBLISH (and completed a QoS 2 one) as soon as it was in the
//! in-memory log, so a crash lost whatever the consumer had not read yet although the device
//! had its PUBACK. With a [`DurableConsumer`] configured, a PUBLISH appended to one of its
//! filters (once that client has subscribed it) keeps its PUBACK (PUBCOMP) here until the
//! consumer has acknowledged the delivery of that log offset, which it does only once the
//! message's effect is stored. A publisher's acknowledgements leave in the order its
//! PUBLISHes came (MQTT 3.1.1 §4.6, MQTT 5 §4.6): one held back holds back those after it.
//!
//! The state is pure bookkeeping, decided here and applied by the router: which
//! acknowledgements are held, and which each consumer acknowledgement releases.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Ack, FilterIdx};
use crate::{ConnectionId, Offset};

/// Acknowledgements held for one publisher at most: as many as it has packet ids. One more
/// means it reused a packet id still unacknowledged (MQTT §2.2.1), and it is disconnected.
pub const MAX_HELD_PER_CONNECTION: usize = u16::MAX as usize;

/// The client whose acknowledgement of a message releases its publisher's.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DurableConsumer {
    /// Its client id.
    pub client_id: String,
    /// The filters (exactly as it subscribes them) whose messages it makes durable.
    pub filters: Vec<String>,
    /// Clients whose acknowledgements are never held: the consumer's own publishers, which
    /// must not wait on the consumer (it may be waiting on them).
    #[serde(default)]
    pub exempt: Vec<String>,
}

/// One publisher's acknowledgement, held until the consumer has its message.
#[derive(Debug)]
struct Held {
    /// Order of holding, router-wide (tells a connection's entries from a later connection's
    /// that reused its id).
    seq: u64,
    ack: Ack,
    /// Deliveries to the consumer still to be acknowledged (one per durable filter the
    /// message was appended to).
    needs: u8,
    /// Where it waits in `Durable::waiting` (removed with a gone publisher).
    keys: Vec<(FilterIdx, Offset)>,
}

/// Held acknowledgements and what releases them.
#[derive(Debug, Default)]
pub struct Durable {
    consumer: DurableConsumer,
    /// The consumer's live connection.
    consumer_id: Option<ConnectionId>,
    /// Live connections of exempt clients.
    exempt_ids: HashSet<ConnectionId>,
    /// Logs of the durable filters the consumer has subscribed.
    logs: HashSet<FilterIdx>,
    /// Per durable log: the offsets whose delivery to the consumer releases an entry.
    waiting: HashMap<FilterIdx, BTreeMap<Offset, (ConnectionId, u64)>>,
    /// Per publisher: its acknowledgements not yet sent, in order.
    held: HashMap<ConnectionId, VecDeque<Held>>,
    /// Entries in `held`, kept as they change (read after every publish for the gauge).
    total: usize,
    next_seq: u64,
}

impl Durable {
    pub fn new(consumer: Option<DurableConsumer>) -> Durable {
        Durable {
            consumer: consumer.unwrap_or_default(),
            ..Durable::default()
        }
    }

    fn enabled(&self) -> bool {
        !self.consumer.client_id.is_empty()
    }

    /// A connection with `client_id` was registered as `id`.
    pub fn connected(&mut self, id: ConnectionId, client_id: &str) {
        if self.enabled() && client_id == self.consumer.client_id {
            self.consumer_id = Some(id);
        }
        if self.consumer.exempt.iter().any(|c| c == client_id) {
            self.exempt_ids.insert(id);
        }
    }

    /// Connection `id` is gone: its held acknowledgements can no longer be sent (it re-sends
    /// those PUBLISHes, with DUP, when it comes back).
    pub fn disconnected(&mut self, id: ConnectionId) {
        self.exempt_ids.remove(&id);
        let gone = self.held.remove(&id).unwrap_or_default();
        self.total -= gone.len();
        for h in gone {
            for (idx, offset) in h.keys {
                if let Some(waiting) = self.waiting.get_mut(&idx) {
                    if waiting.get(&offset) == Some(&(id, h.seq)) {
                        waiting.remove(&offset);
                    }
                    if waiting.is_empty() {
                        self.waiting.remove(&idx);
                    }
                }
            }
        }
        if self.consumer_id == Some(id) {
            self.consumer_id = None;
        }
    }

    /// Connection `id` subscribed `filter` (log `idx`); `fresh` when it did not hold that
    /// subscription (a new session), reading from `cursor`. When that is the consumer and one
    /// of its filters, the log becomes durable. A fresh subscription of the consumer means its
    /// session was lost: whatever was held on that log before `cursor` will never reach it,
    /// and is released. (A replaced one keeps its read position and its deliveries in flight,
    /// whose acknowledgements still come.)
    pub fn subscribed(
        &mut self,
        id: ConnectionId,
        filter: &str,
        idx: FilterIdx,
        (fresh, cursor): (bool, Offset),
        released: &mut Vec<(ConnectionId, Ack)>,
    ) {
        if self.consumer_id != Some(id) || !self.consumer.filters.iter().any(|f| f == filter) {
            return;
        }
        self.logs.insert(idx);
        if fresh {
            self.release_below(idx, cursor, released);
        }
    }

    /// Publisher `id`'s acknowledgement `ack` for a message appended at `appended`: sent now
    /// (`Ok(Some)`) unless the message is on a durable log or an earlier one of `id` is held
    /// (`Ok(None)`); `Err(())` when `id` already has [`MAX_HELD_PER_CONNECTION`] held.
    #[allow(clippy::result_unit_err)]
    pub fn hold(
        &mut self,
        id: ConnectionId,
        ack: Ack,
        appended: &[(FilterIdx, Offset)],
    ) -> Result<Option<Ack>, ()> {
        if self.exempt_ids.contains(&id) {
            return Ok(Some(ack));
        }
        let durable = appended
            .iter()
            .filter(|(idx, _)| self.logs.contains(idx))
            .count();
        let held = self.held.get(&id).map_or(0, VecDeque::len);
        if durable == 0 && held == 0 {
            return Ok(Some(ack));
        }
        if held >= MAX_HELD_PER_CONNECTION {
            return Err(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let keys: Vec<(FilterIdx, Offset)> = appended
            .iter()
            .filter(|(idx, _)| self.logs.contains(idx))
            .copied()
            .collect();
        for (idx, offset) in &keys {
            self.waiting
                .entry(*idx)
                .or_default()
                .insert(*offset, (id, seq));
        }
        self.total += 1;
        self.held.entry(id).or_default().push_back(Held {
            seq,
            ack,
            needs: durable.min(u8::MAX as usize) as u8,
            keys,
        });
        Ok(None)
    }

    /// Connection `id` acknowledged the delivery of log `idx` at `cursor`. When that is the
    /// consumer, every message on that log up to `cursor` is its (it reads and acknowledges
    /// in order; a message it skipped was dropped from the bounded log).
    pub fn acked(
        &mut self,
        id: ConnectionId,
        idx: FilterIdx,
        cursor: Option<Offset>,
        released: &mut Vec<(ConnectionId, Ack)>,
    ) {
        if self.consumer_id != Some(id) {
            return;
        }
        if let Some((segment, offset)) = cursor {
            self.release_below(idx, (segment, offset.saturating_add(1)), released);
        }
    }

    /// Counts the consumer's delivery of every waiting offset of log `idx` below `bound`, and
    /// releases each publisher's acknowledgements that are then first in its order.
    fn release_below(
        &mut self,
        idx: FilterIdx,
        bound: Offset,
        released: &mut Vec<(ConnectionId, Ack)>,
    ) {
        let Some(waiting) = self.waiting.get_mut(&idx) else {
            return;
        };
        let later = waiting.split_off(&bound);
        let done = std::mem::replace(waiting, later);
        if waiting.is_empty() {
            self.waiting.remove(&idx);
        }
        for (id, seq) in done.into_values() {
            let Some(queue) = self.held.get_mut(&id) else {
                continue;
            };
            if let Ok(at) = queue.binary_search_by_key(&seq, |h| h.seq) {
                queue[at].needs = queue[at].needs.saturating_sub(1);
            }
            while queue.front().is_some_and(|h| h.needs == 0) {
                if let Some(h) = queue.pop_front() {
                    self.total -= 1;
                    released.push((id, h.ack));
                }
            }
            if queue.is_empty() {
                self.held.remove(&id);
            }
        }
    }

    /// Acknowledgements held now (all publishers).
    pub fn held_count(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::protocol::{PubAck, PubAckReason};

    fn puback(pkid: u16) -> Ack {
        Ack::PubAck(PubAck {
            pkid,
            reason: PubAckReason::Success,
        })
    }

    fn pkids(released: &[(ConnectionId, Ack)]) -> Vec<(ConnectionId, u16)> {
        released
            .iter()
            .map(|(id, a)| (*id, super::super::packetid(a)))
            .collect()
    }

    /// Consumer 9 subscribed "s/+" as log 1; log 2 is not durable; "bus-out" is exempt.
    fn given() -> Durable {
        let mut d = Durable::new(Some(DurableConsumer {
            client_id: "bus".into(),
            filters: vec!["s/+".into()],
            exempt: vec!["bus-out".into()],
        }));
        d.connected(9, "bus");
        let mut r = Vec::new();
        d.subscribed(9, "s/+", 1, (true, (0, 0)), &mut r);
        d.subscribed(9, "other", 2, (true, (0, 0)), &mut r);
        assert!(r.is_empty());
        d
    }

    #[test]
    fn an_ack_on_a_durable_log_waits_for_the_consumer() {
        let mut d = given();
        assert!(matches!(d.hold(3, puback(1), &[(1, (0, 0))]), Ok(None)));
        let mut r = Vec::new();
        d.acked(4, 1, Some((0, 0)), &mut r);
        assert!(r.is_empty(), "only the consumer's ack releases");
        d.acked(9, 1, Some((0, 0)), &mut r);
        assert_eq!(pkids(&r), vec![(3, 1)]);
        assert_eq!(d.held_count(), 0);
    }

    #[test]
    fn other_logs_are_acknowledged_at_once_unless_an_earlier_ack_is_held() {
        let mut d = given();
        assert!(matches!(d.hold(3, puback(1), &[(2, (0, 0))]), Ok(Some(_))));
        assert!(matches!(d.hold(3, puback(2), &[(1, (0, 5))]), Ok(None)));
        assert!(matches!(d.hold(3, puback(3), &[(2, (0, 1))]), Ok(None)), "order kept");
        assert!(matches!(d.hold(4, puback(1), &[(2, (0, 2))]), Ok(Some(_))));
        let mut r = Vec::new();
        d.acked(9, 1, Some((0, 5)), &mut r);
        assert_eq!(pkids(&r), vec![(3, 2), (3, 3)]);
    }

    #[test]
    fn one_consumer_ack_releases_every_offset_up_to_it_in_each_publishers_order() {
        let mut d = given();
        let _ = d.hold(3, puback(1), &[(1, (0, 1))]);
        let _ = d.hold(4, puback(7), &[(1, (0, 2))]);
        let _ = d.hold(3, puback(2), &[(1, (0, 3))]);
        assert_eq!(d.held_count(), 3);
        let mut r = Vec::new();
        d.acked(9, 1, Some((0, 2)), &mut r);
        r.sort_by_key(|(id, _)| *id);
        assert_eq!(pkids(&r), vec![(3, 1), (4, 7)]);
        assert_eq!(d.held_count(), 1);
        r.clear();
        d.acked(9, 1, Some((1, 0)), &mut r);
        assert_eq!(pkids(&r), vec![(3, 2)]);
    }

    #[test]
    fn a_message_on_two_durable_logs_waits_for_both() {
        let mut d = given();
        let mut r = Vec::new();
        d.subscribed(9, "s/+", 5, (true, (0, 0)), &mut r);
        let _ = d.hold(3, puback(1), &[(1, (0, 0)), (5, (0, 0))]);
        d.acked(9, 1, Some((0, 0)), &mut r);
        assert!(r.is_empty());
        d.acked(9, 5, Some((0, 0)), &mut r);
        assert_eq!(pkids(&r), vec![(3, 1)]);
    }

    #[test]
    fn a_gone_publisher_is_forgotten_and_its_id_reused_safely() {
        let mut d = given();
        let _ = d.hold(3, puback(1), &[(1, (0, 0))]);
        d.disconnected(3);
        let _ = d.hold(3, puback(1), &[(1, (0, 1))]);
        let mut r = Vec::new();
        d.acked(9, 1, Some((0, 0)), &mut r);
        assert!(r.is_empty(), "the old connection's entry does not release the new one");
        d.acked(9, 1, Some((0, 1)), &mut r);
        assert_eq!(pkids(&r), vec![(3, 1)]);
    }

    #[test]
    fn a_consumer_that_lost_its_session_releases_what_it_will_never_read() {
        let mut d = given();
        let _ = d.hold(3, puback(1), &[(1, (0, 4))]);
        let _ = d.hold(3, puback(2), &[(1, (0, 9))]);
        d.disconnected(9);
        let mut r = Vec::new();
        d.connected(10, "bus");
        d.subscribed(10, "s/+", 1, (false, (0, 9)), &mut r);
        assert!(r.is_empty(), "a resumed session still acknowledges what it was sent");
        d.subscribed(10, "s/+", 1, (true, (0, 9)), &mut r);
        assert_eq!(pkids(&r), vec![(3, 1)]);
    }

    #[test]
    fn a_publisher_with_every_packet_id_held_is_refused_one_more() {
        let mut d = given();
        for n in 0..MAX_HELD_PER_CONNECTION as u64 {
            assert!(matches!(d.hold(3, puback(1), &[(1, (0, n))]), Ok(None)));
        }
        assert!(d.hold(3, puback(1), &[(1, (1, 0))]).is_err());
        assert!(d.hold(4, puback(1), &[(1, (1, 1))]).is_ok(), "others are not affected");
    }

    #[test]
    fn an_exempt_publisher_is_acknowledged_at_once_and_a_gone_one_leaves_nothing_waiting() {
        let mut d = given();
        d.connected(5, "bus-out");
        assert!(matches!(d.hold(5, puback(1), &[(1, (0, 0))]), Ok(Some(_))));
        let _ = d.hold(3, puback(1), &[(1, (0, 1))]);
        d.disconnected(3);
        assert!(d.waiting.is_empty() && d.held_count() == 0);
    }

    #[test]
    fn without_a_consumer_nothing_is_held() {
        let mut d = Durable::new(None);
        d.connected(1, "");
        let mut r = Vec::new();
        d.subscribed(1, "s/+", 1, (true, (0, 0)), &mut r);
        assert!(matches!(d.hold(3, puback(1), &[(1, (0, 0))]), Ok(Some(_))));
    }
}
