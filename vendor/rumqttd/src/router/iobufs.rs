use std::{
    collections::VecDeque,
    sync::Arc,
};

use flume::{Receiver, Sender};
use parking_lot::Mutex;
use tracing::{error, warn};

use crate::{
    protocol::{Packet, QoS},
    router::{FilterIdx, MAX_CHANNEL_CAPACITY},
    Cursor, Notification,
};

use super::{connection::BrokerAliases, Forward, IncomingMeter, OutgoingMeter};

// CRADLE PATCH 4: a QoS 1 window of 100 made a consumer that acknowledges after a durable
// commit wait for each batch of 100; 1024 lets it pipeline. Buffers start small and grow.
const MAX_INFLIGHT: usize = 1024;
const MAX_PKID: u16 = MAX_INFLIGHT as u16;

#[derive(Debug)]
pub struct Incoming {
    /// Identifier associated with connected client
    pub(crate) client_id: String,
    /// Recv buffer
    pub(crate) buffer: Arc<Mutex<VecDeque<Packet>>>,
    /// incoming metrics
    pub(crate) meter: IncomingMeter,
}

impl Incoming {
    #[inline]
    pub(crate) fn new(client_id: String) -> Self {
        Self {
            buffer: Arc::new(Mutex::new(VecDeque::new())),
            meter: Default::default(),
            client_id,
        }
    }

    #[inline]
    pub(crate) fn buffer(&self) -> Arc<Mutex<VecDeque<Packet>>> {
        self.buffer.clone()
    }

    #[inline]
    pub(crate) fn exchange(&mut self, mut v: VecDeque<Packet>) -> VecDeque<Packet> {
        std::mem::swap(&mut v, &mut self.buffer.lock());
        v
    }
}

#[derive(Debug)]
pub struct Outgoing {
    /// Identifier associated with connected client
    pub(crate) client_id: String,
    /// Send buffer
    pub(crate) data_buffer: Arc<Mutex<VecDeque<Notification>>>,
    /// Handle which is given to router to allow router to communicate with this connection
    pub(crate) handle: Sender<()>,
    /// The buffer to keep track of inflight packets.
    /// CRADLE PATCH 23: each with the delivery as it went out (before any topic alias), so
    /// that a resumed session re-sends it with its packet id and DUP set. Kept inline, not
    /// boxed: an allocation per QoS 1/2 delivery cost a fifth of the QoS 1 fan-out rate.
    inflight_buffer: VecDeque<(u16, Forward)>,
    /// CRADLE PATCH 23: the inflight deliveries restored from a saved session are still to be
    /// re-sent (after the CONNACK).
    resend: bool,
    /// PubRels waiting for PubComp
    pub(crate) unacked_pubrels: VecDeque<u16>,
    /// Last packet id
    last_pkid: u16,
    /// Metrics of outgoing messages of this connection
    pub(crate) meter: OutgoingMeter,
    /// CRADLE PATCH 20: QoS 1/2 deliveries in flight at most: the client's MQTT 5 Receive
    /// Maximum, or `MAX_INFLIGHT`.
    max_inflight: usize,
}

impl Outgoing {
    #[inline]
    pub(crate) fn new(client_id: String) -> (Self, Receiver<()>) {
        let (handle, rx) = flume::bounded(MAX_CHANNEL_CAPACITY);
        let data_buffer = VecDeque::new();
        let inflight_buffer = VecDeque::new();
        let unacked_pubrels = VecDeque::new();

        let outgoing = Self {
            client_id,
            data_buffer: Arc::new(Mutex::new(data_buffer)),
            inflight_buffer,
            resend: false,
            unacked_pubrels,
            handle,
            last_pkid: 0,
            meter: Default::default(),
            max_inflight: MAX_INFLIGHT,
        };

        (outgoing, rx)
    }

    #[inline]
    pub(crate) fn buffer(&self) -> Arc<Mutex<VecDeque<Notification>>> {
        self.data_buffer.clone()
    }

    pub fn free_slots(&self) -> usize {
        // CRADLE PATCH 12: `push_forwards` warns when the window is exceeded; the subtraction
        // must not then overflow (a panic in a debug build).
        self.max_inflight
            .saturating_sub(self.inflight_buffer.len())
    }

    /// CRADLE PATCH 20: keeps at most `receive_max` QoS 1/2 deliveries in flight (the
    /// client's MQTT 5 Receive Maximum; never more than `MAX_INFLIGHT`).
    pub(crate) fn limit_inflight(&mut self, receive_max: u16) {
        self.max_inflight = usize::from(receive_max).clamp(1, MAX_INFLIGHT);
    }

    pub fn push_notification(&mut self, notification: Notification) -> usize {
        let mut buffer = self.data_buffer.lock();
        buffer.push_back(notification);
        buffer.len()
    }

    /// Push packets to the outgoing buffer.
    /// CRADLE PATCH 23: a QoS 1/2 delivery is kept in flight as it went out; CRADLE PATCH 24:
    /// server topic aliases are applied per topic here, after that copy, by `aliases` (the
    /// connection's, when the client allows them).
    pub fn push_forwards(
        &mut self,
        publishes: impl Iterator<Item = Forward>,
        mut aliases: Option<&mut BrokerAliases>,
    ) -> (usize, usize) {
        let mut buffer = self.data_buffer.lock();

        for mut p in publishes {
            self.meter.publish_count += 1;
            if p.publish.qos == QoS::AtMostOnce {
                // CRADLE PATCH 17: also a message lowered to QoS 0 by its subscription.
                p.publish.pkid = 0;
            } else {
                self.last_pkid += 1;
                p.publish.pkid = self.last_pkid;
                if self.last_pkid == MAX_PKID {
                    self.last_pkid = 0;
                }
                self.meter.total_size += p.publish.topic.len() + p.publish.payload.len();
                self.inflight_buffer
                    .push_back((p.publish.pkid, p.clone()));
            }
            if let Some(aliases) = aliases.as_deref_mut() {
                aliases.apply(&mut p);
            }
            buffer.push_back(Notification::Forward(p));
        }

        let buffer_count = buffer.len();
        let inflight_count = self.inflight_buffer.len();

        if inflight_count > MAX_INFLIGHT {
            warn!(
                "More inflight publishes than max allowed, inflight count = {}, max allowed = {}",
                inflight_count, MAX_INFLIGHT
            );
        }

        (buffer_count, inflight_count)
    }

    /// CRADLE PATCH 23: the unacknowledged deliveries, for a persistent session to keep.
    pub(crate) fn take_inflight(&mut self) -> VecDeque<(u16, Forward)> {
        std::mem::take(&mut self.inflight_buffer)
    }

    /// CRADLE PATCH 23: restores a saved session's unacknowledged deliveries; they are re-sent
    /// by `resend_inflight` once the CONNACK is queued, and new packet ids follow theirs.
    pub(crate) fn restore_inflight(&mut self, inflight: VecDeque<(u16, Forward)>) {
        if let Some(&(last, _)) = inflight.back() {
            self.last_pkid = last % MAX_PKID;
        }
        self.resend = !inflight.is_empty();
        self.inflight_buffer = inflight;
    }

    /// CRADLE PATCH 23: re-sends the restored deliveries with their packet ids and DUP set
    /// (MQTT 3.1.1 §4.4, MQTT 5 §4.4), once.
    pub(crate) fn resend_inflight(&mut self) {
        if !std::mem::take(&mut self.resend) {
            return;
        }
        let mut buffer = self.data_buffer.lock();
        for (_, forward) in self.inflight_buffer.iter() {
            let mut forward = Forward::clone(forward);
            forward.publish.dup = true;
            buffer.push_back(Notification::Forward(forward));
        }
    }

    /// CRADLE PATCH 27: returns the acknowledged delivery's log and offset.
    pub fn register_ack(&mut self, pkid: u16) -> Option<(usize, Option<(u64, u64)>)> {
        let (head, forward) = self.inflight_buffer.pop_front()?;
        // CRADLE PATCH 23: the entries hold whole deliveries; a connection with none in flight
        // keeps no room for them (as PATCH 14 does for acks).
        if self.inflight_buffer.is_empty() && self.inflight_buffer.capacity() <= 16 {
            self.inflight_buffer = VecDeque::new();
        }

        // We don't support out of order acks
        if pkid != head {
            error!(pkid, head, "out of order ack.");
            return None;
        }

        Some((forward.filter_idx, forward.cursor))
    }

    pub fn register_pubrec(&mut self, pkid: u16) {
        // NOTE: we can return true of false
        // to indicate whether this is duplicate or not
        self.unacked_pubrels.push_back(pkid);
    }

    // OASIS standards don't specify anything about ordering of PubComp
    // https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901240
    // But we don't support out of order / unsolicited pubcomps
    // to be consistent with the behaviour with other acks
    pub fn register_pubcomp(&mut self, pkid: u16) -> Option<()> {
        let id = self.unacked_pubrels.pop_front()?;

        // out of order acks
        if pkid != id {
            error!(pkid, id, "out of order ack.");
            return None;
        }

        Some(())
    }

    // Here we are assuming that the first unique filter_idx we find while iterating will have the
    // least corresponding cursor because of the way we insert into the inflight_buffer
}

#[cfg(test)]
mod test {
    use super::*;

    use crate::protocol::{Publish, PublishProperties};

    fn forward(topic: &str, qos: QoS) -> Forward {
        Forward {
            cursor: Some((0, 0)),
            filter_idx: 0,
            size: 0,
            publish: Publish {
                dup: false,
                qos,
                retain: false,
                topic: topic.to_owned().into(),
                pkid: 0,
                payload: vec![1, 2, 3].into(),
            },
            properties: None,
        }
    }

    fn sent(outgoing: &Outgoing) -> Vec<(u16, bool, String, Option<u16>)> {
        let buffer = outgoing.data_buffer.lock();
        buffer
            .iter()
            .map(|n| match n {
                Notification::Forward(f) => (
                    f.publish.pkid,
                    f.publish.dup,
                    String::from_utf8_lossy(&f.publish.topic).into_owned(),
                    f.properties.as_ref().and_then(|p| p.topic_alias),
                ),
                other => panic!("not a delivery: {other:?}"),
            })
            .collect()
    }

    /// CRADLE PATCH 23: given deliveries in flight, when the session is saved and restored,
    /// then they go out again with their packet ids and DUP set, and new ones follow their ids.
    #[test]
    fn a_restored_session_resends_its_inflight_deliveries_with_their_ids_and_dup() {
        let (mut before, _rx) = Outgoing::new("c".to_owned());
        let publishes = [
            forward("a", QoS::AtLeastOnce),
            forward("b", QoS::AtMostOnce),
            forward("c", QoS::ExactlyOnce),
        ];
        before.push_forwards(publishes.into_iter(), None);
        assert_eq!(before.register_ack(1).map(|_| ()), Some(()));
        let inflight = before.take_inflight();

        let (mut after, _rx) = Outgoing::new("c".to_owned());
        after.restore_inflight(inflight);
        after.resend_inflight();
        after.resend_inflight();
        assert_eq!(sent(&after), [(2, true, "c".into(), None)]);
        after.push_forwards([forward("d", QoS::AtLeastOnce)].into_iter(), None);
        assert_eq!(sent(&after)[1].0, 3);
        assert_eq!(after.register_ack(2).map(|_| ()), Some(()));
        assert_eq!(after.register_ack(3).map(|_| ()), Some(()));
        assert_eq!(after.free_slots(), MAX_INFLIGHT);
    }

    /// CRADLE PATCH 24: aliases are per topic: a second topic under the same filter gets its
    /// own alias, a known topic goes out empty with its alias, and the kept copy has the topic.
    #[test]
    fn server_topic_aliases_are_per_topic() {
        let (mut outgoing, _rx) = Outgoing::new("c".to_owned());
        let mut aliases = BrokerAliases::new(1);
        let publishes = [
            forward("a/1", QoS::AtLeastOnce),
            forward("a/2", QoS::AtMostOnce),
            forward("a/1", QoS::AtLeastOnce),
        ];
        outgoing.push_forwards(publishes.into_iter(), Some(&mut aliases));
        assert_eq!(
            sent(&outgoing),
            [
                (1, false, "a/1".into(), Some(1)),
                (0, false, "a/2".into(), None),
                (2, false, "".into(), Some(1)),
            ]
        );
        let kept = outgoing.take_inflight();
        assert_eq!(kept[1].1.publish.topic, "a/1");
        let no_props: Option<PublishProperties> = None;
        assert_eq!(kept[1].1.properties, no_props);
    }

    // use super::{Outgoing, MAX_INFLIGHT};
    // use crate::protocol::{Publish, QoS};
    // use crate::router::Forward;
    // use crate::Notification;
    //
    // fn publishes(count: usize) -> impl Iterator<Item = Forward> {
    //     (1..=count).map(|v| {
    //         let publish = Publish {
    //             dup: false,
    //             retain: false,
    //             pkid: 0,
    //             qos: QoS::AtLeastOnce,
    //             topic: "hello/world".into(),
    //             payload: vec![1, 2, 3].into(),
    //         };
    //
    //         Forward {
    //             cursor: (0, v as u64),
    //             publish,
    //             size: 0,
    //         }
    //     })
    // }
    //
    // #[test]
    // fn inflight_ring_buffer_pushes_correctly() {
    //     let count = MAX_INFLIGHT as usize;
    //     let (mut outgoing, _rx) = Outgoing::new("hello".to_owned());
    //     outgoing.push_forwards(publishes(count), 1, 3);
    //
    //     // Index 1 = (0, 1), Index 99 = (0, 99), Index 0 = (0, 100)
    //     assert_eq!(outgoing.inflight_buffer[0].unwrap().1, (0, count as u64));
    //     for i in 1..count {
    //         assert_eq!(outgoing.inflight_buffer[i].unwrap().1, (0, i as u64));
    //     }
    //
    //     // Outgoing publish pkids are as expected
    //     for (i, o) in outgoing.data_buffer.lock().iter().enumerate() {
    //         let pkid = match &o {
    //             Notification::Forward(f) => f.publish.pkid,
    //             _ => unreachable!(),
    //         };
    //
    //         assert_eq!(pkid, i as u16 + 1);
    //     }
    // }
    //
    // #[test]
    // fn inflight_ring_buffer_pops_correctly() {
    //     let (mut outgoing, _rx) = Outgoing::new("hello".to_owned());
    //     outgoing.push_forwards(publishes(MAX_INFLIGHT as usize), 1, 3);
    //
    //     for pkid in 1..=MAX_INFLIGHT {
    //         let (unsolicited, outoforder) = outgoing.register_ack(pkid);
    //         assert_eq!(unsolicited, false);
    //         assert_eq!(outoforder, false);
    //     }
    // }
}
