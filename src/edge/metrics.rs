//! The edge's counters: CONNECT outcomes (authentication's refusals among them), live and
//! ended connections, refused and bad packets, limits, retained messages, task panics and the
//! inbox messages it dropped; written as the `cradle_edge_*` families (and the inbox's
//! share of [`MESSAGES_DROPPED`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::acl::AclDrop;
use super::codec::FrameError;
use super::inbox::InboxDrop;
use crate::auth::Refusal;
use crate::domain::connection::DisconnectReason;
use crate::metrics::{labels, Desc, Exposition, Family, Label, Labeled, MESSAGES_DROPPED};

/// Outcomes of a client's CONNECT at the edge (other than a refused authentication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeConnect {
    /// Accepted and relayed to the broker.
    Accepted,
    /// No CONNECT within mqtt.connect_timeout_ms.
    Timeout,
    /// Not an MQTT 3.1.1/5 CONNECT, or a failed WebSocket handshake.
    Malformed,
    /// TLS handshake failed.
    Tls,
    /// mqtt.max_connections reached.
    Limit,
    /// The Will's topic is not one the client may publish to.
    WillRefused,
    /// The broker could not be reached.
    BrokerUnavailable,
    /// The broker refused the relayed CONNECT.
    BrokerRefused,
    /// A CONNECT larger than mqtt.max_connect_bytes, refused before it was read.
    ConnectTooLarge,
    /// mqtt.max_pending connections were being admitted: closed as accepted.
    PendingLimit,
    /// An MQTT 3.1.1 keep-alive over mqtt.max_keep_alive_secs (or 0 while it is set).
    KeepAliveTooLong,
}

impl EdgeConnect {
    const ALL: [EdgeConnect; 11] = [
        Self::Accepted,
        Self::Timeout,
        Self::Malformed,
        Self::Tls,
        Self::Limit,
        Self::WillRefused,
        Self::BrokerUnavailable,
        Self::BrokerRefused,
        Self::ConnectTooLarge,
        Self::PendingLimit,
        Self::KeepAliveTooLong,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Timeout => "timeout",
            Self::Malformed => "malformed",
            Self::Tls => "tls_failed",
            Self::Limit => "limit",
            Self::WillRefused => "will_not_allowed",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::BrokerRefused => "broker_refused",
            Self::ConnectTooLarge => "connect_too_large",
            Self::PendingLimit => "pending_limit",
            Self::KeepAliveTooLong => "keep_alive_too_long",
        }
    }
}

/// Why a retained PUBLISH was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetainedRefusal {
    /// Its topic is never retained.
    NotRetained,
    /// Over the account's retained quota.
    Quota,
}

impl RetainedRefusal {
    const ALL: [RetainedRefusal; 2] = [Self::NotRetained, Self::Quota];

    fn as_str(self) -> &'static str {
        match self {
            Self::NotRetained => "not_retained",
            Self::Quota => "quota",
        }
    }
}

labels!(EdgeConnect, RetainedRefusal, Refusal, InboxDrop);

/// How an edge connection ended: every [`DisconnectReason`] but the bridge's slow consumer,
/// in the order of `cradle_edge_disconnects_total`.
#[derive(Debug, Clone, Copy)]
struct End(DisconnectReason);

impl Label for End {
    const ALL: &'static [Self] = &[
        End(DisconnectReason::Clean),
        End(DisconnectReason::Lost),
        End(DisconnectReason::KeepaliveTimeout),
        End(DisconnectReason::Takeover),
        End(DisconnectReason::ServerShutdown),
        End(DisconnectReason::Kicked),
        End(DisconnectReason::Revoked),
        End(DisconnectReason::AdminDisconnect),
    ];

    fn index(self) -> usize {
        match self.0 {
            DisconnectReason::Clean => 0,
            DisconnectReason::Lost => 1,
            DisconnectReason::KeepaliveTimeout => 2,
            DisconnectReason::Takeover => 3,
            DisconnectReason::ServerShutdown => 4,
            DisconnectReason::Kicked => 5,
            DisconnectReason::Revoked => 6,
            DisconnectReason::AdminDisconnect => 7,
            // Not a way an MQTT connection ends: not counted.
            DisconnectReason::SlowConsumer => usize::MAX,
        }
    }

    fn as_str(self) -> &'static str {
        self.0.as_str()
    }
}

impl Label for AclDrop {
    const ALL: &'static [Self] = &[AclDrop::Publish, AclDrop::Subscribe];

    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            AclDrop::Publish => "publish",
            AclDrop::Subscribe => "subscribe",
        }
    }
}

impl Label for FrameError {
    const ALL: &'static [Self] = &[FrameError::TooLarge, FrameError::Malformed];

    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            FrameError::TooLarge => "too_large",
            FrameError::Malformed => "malformed",
        }
    }
}

/// Counters of the edge.
#[derive(Debug, Default)]
pub struct EdgeMetrics {
    /// CONNECT outcomes.
    connects: Labeled<EdgeConnect>,
    /// CONNECTs refused by authentication.
    refusals: Labeled<Refusal>,
    /// Live connections.
    live: AtomicI64,
    /// Ended connections.
    ends: Labeled<End>,
    /// Refused PUBLISH packets and SUBSCRIBE filters.
    acl_refused: Labeled<AclDrop>,
    /// Connections closed for a packet over the limit or a malformed packet.
    bad_packets: Labeled<FrameError>,
    /// Times a connection was paused by the publish rate limit.
    throttled: AtomicU64,
    /// Connections accepted and not yet admitted (handshake, CONNECT, authentication).
    pending: AtomicI64,
    /// Connections cut because the client took nothing the edge wrote for
    /// mqtt.write_timeout_ms.
    write_timeouts: AtomicU64,
    /// Retained PUBLISH packets refused.
    retained_refused: Labeled<RetainedRefusal>,
    /// Retained messages the edge counts for all accounts (`edge::retained`).
    pub(crate) retained_messages: AtomicI64,
    /// Bytes of those retained messages.
    pub(crate) retained_bytes: AtomicI64,
    /// Inbox messages dropped (not stamped with `from`).
    inbox_drops: Labeled<InboxDrop>,
}

impl EdgeMetrics {
    /// Counts one CONNECT outcome.
    pub(crate) fn connect(&self, outcome: EdgeConnect) {
        self.connects.inc(outcome);
    }

    /// Counts one CONNECT refused by authentication.
    pub(crate) fn refused(&self, refusal: Refusal) {
        self.refusals.inc(refusal);
    }

    /// Moves the live connection gauge.
    pub(crate) fn live(&self, delta: i64) {
        self.live.fetch_add(delta, Relaxed);
    }

    /// Counts one ended connection.
    pub(crate) fn disconnect(&self, reason: DisconnectReason) {
        self.ends.inc(End(reason));
    }

    /// Counts one refused PUBLISH or SUBSCRIBE filter.
    pub(crate) fn acl_drop(&self, kind: AclDrop) {
        self.acl_refused.inc(kind);
    }

    /// Counts one connection closed for a bad packet.
    pub(crate) fn protocol_error(&self, e: FrameError) {
        self.bad_packets.inc(e);
    }

    /// Counts one pause by the publish rate limit.
    pub(crate) fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    /// One connection more (`1`) or less (`-1`) being admitted.
    pub(crate) fn pending(&self, delta: i64) {
        self.pending.fetch_add(delta, Relaxed);
    }

    /// Counts one connection cut for not reading (mqtt.write_timeout_ms).
    pub(crate) fn write_timeout(&self) {
        self.write_timeouts.fetch_add(1, Relaxed);
    }

    /// Counts one retained PUBLISH refused (`quota`: over the account's retained quota;
    /// otherwise its topic is never retained).
    pub(crate) fn retained_refused(&self, quota: bool) {
        self.retained_refused.inc(match quota {
            true => RetainedRefusal::Quota,
            false => RetainedRefusal::NotRetained,
        });
    }

    /// Counts one inbox message the edge dropped.
    pub(crate) fn inbox_drop(&self, reason: InboxDrop) {
        self.inbox_drops.inc(reason);
    }

    /// Retained PUBLISH packets refused, and the retained messages and bytes devices keep.
    fn render_retained(&self, out: &mut Exposition) {
        out.family(Desc::counter(
            "cradle_edge_retained_refused_total",
            "Retained PUBLISH packets refused at the edge, by reason.",
        ))
        .labeled("", "reason", &self.retained_refused);
        out.gauge(
            "cradle_edge_retained_messages",
            "Retained messages devices keep in the broker, as the edge counts them (all accounts).",
            self.retained_messages.load(Relaxed),
        );
        out.gauge(
            "cradle_edge_retained_bytes",
            "Bytes (topic + payload) of those retained messages.",
            self.retained_bytes.load(Relaxed),
        );
    }

    /// Connections waiting to be admitted, and connections cut by the write timeout.
    fn render_bounds(&self, out: &mut Exposition) {
        out.gauge(
            "cradle_edge_pending",
            "MQTT connections accepted and not yet admitted (handshake, CONNECT, authentication; at most mqtt.max_pending).",
            self.pending.load(Relaxed),
        );
        out.counter(
            "cradle_edge_write_timeouts_total",
            "MQTT connections cut because the client took nothing written to it for mqtt.write_timeout_ms.",
            self.write_timeouts.load(Relaxed),
        );
    }

    /// MQTT CONNECTs by outcome, live connections, and disconnects by reason.
    fn render_connections(&self, out: &mut Exposition) {
        out.family(Desc::counter(
            "cradle_edge_connects_total",
            "MQTT CONNECTs at the edge, by outcome (refused ones by reason).",
        ))
        .labeled("", "outcome", &self.connects)
        .labeled("outcome=\"not_authorized\",", "reason", &self.refusals);
        out.gauge(
            "cradle_edge_connections",
            "Live MQTT client connections at the edge.",
            self.live.load(Relaxed),
        );
        out.family(Desc::counter(
            "cradle_edge_disconnects_total",
            "Ended MQTT client connections, by the reason the edge observed.",
        ))
        .labeled("", "reason", &self.ends);
    }

    /// What the edge refused or slowed: ACL refusals, bad packets, throttling, and the inbox
    /// messages it dropped.
    fn render_refusals(&self, out: &mut Exposition) {
        out.family(Desc::counter(
            "cradle_edge_acl_refused_total",
            "PUBLISH packets and SUBSCRIBE filters refused by the account rules.",
        ))
        .labeled("", "packet", &self.acl_refused);
        out.family(Desc::counter(
            "cradle_edge_bad_packets_total",
            "Connections closed for a bad packet, by kind.",
        ))
        .labeled("", "kind", &self.bad_packets);
        out.counter(
            "cradle_edge_throttled_total",
            "Times a client connection was paused by mqtt.publish_rate.",
            self.throttled.load(Relaxed),
        );
        out.family(MESSAGES_DROPPED)
            .labeled("family=\"inbox\",", "reason", &self.inbox_drops);
    }
}

impl Family for EdgeMetrics {
    fn render(&self, out: &mut Exposition) {
        self.render_retained(out);
        self.render_bounds(out);
        self.render_connections(out);
        self.render_refusals(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{assert_places, Metrics};
    use std::sync::Arc;

    #[test]
    fn every_label_s_index_is_its_place_in_the_exposition_order() {
        assert_places::<EdgeConnect>();
        assert_places::<RetainedRefusal>();
        assert_places::<Refusal>();
        assert_places::<InboxDrop>();
        assert_places::<End>();
        assert_places::<AclDrop>();
        assert_places::<FrameError>();
    }

    #[test]
    fn an_end_the_edge_never_sees_is_not_counted() {
        let m = EdgeMetrics::default();
        m.disconnect(DisconnectReason::SlowConsumer);
        m.disconnect(DisconnectReason::Kicked);
        let total: u64 = End::ALL.iter().map(|e| m.ends.get(*e)).sum();
        assert_eq!(total, 1);
    }

    #[test]
    fn connects_are_rendered_by_outcome_and_refusals_by_reason() {
        let m = Arc::new(EdgeMetrics::default());
        m.connect(EdgeConnect::WillRefused);
        m.refused(Refusal::BadCredentials);
        m.refused(Refusal::BadCredentials);
        m.retained_refused(true);
        m.inbox_drop(InboxDrop::NotJsonObject);
        let text = Metrics::default().with(m).render(&[]);
        for line in [
            "cradle_edge_connects_total{outcome=\"will_not_allowed\"} 1",
            "cradle_edge_connects_total{outcome=\"accepted\"} 0",
            "cradle_edge_connects_total{outcome=\"not_authorized\",reason=\"bad_credentials\"} 2",
            "cradle_edge_retained_refused_total{reason=\"quota\"} 1",
            "cradle_edge_retained_refused_total{reason=\"not_retained\"} 0",
            "cradle_mqtt_messages_dropped_total{family=\"inbox\",reason=\"not_json_object\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
