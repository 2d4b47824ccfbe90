//! The handlers' counters: messages received and dropped, events appended, the connection
//! decider's outcomes, the status writer's transactions, sessions and parked starts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::domain::connection::Ignored;
use crate::domain::session::SessionIgnored;
use crate::metrics::{labels, Desc, Exposition, Family, Label, Labeled, MESSAGES_DROPPED};
use crate::topics::DropReason;

/// Why a station message (baby or parent station topic) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StationDrop {
    /// Not `accounts/{account}/{baby|parent}_stations/{client}` with valid ids.
    InvalidTopic,
    /// Over `sync.max_status_bytes`.
    Oversize,
    /// Not a valid announcement (the log names the field).
    InvalidPayload,
    /// The payload's `client_id` is not the topic's, or an end names another station's
    /// session.
    ClientMismatch,
    /// A start names a connection of another client.
    ForeignConnection,
}

impl StationDrop {
    const ALL: [StationDrop; 5] = [
        Self::InvalidTopic,
        Self::Oversize,
        Self::InvalidPayload,
        Self::ClientMismatch,
        Self::ForeignConnection,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTopic => "invalid_topic",
            Self::Oversize => "oversize",
            Self::InvalidPayload => "invalid_payload",
            Self::ClientMismatch => "client_mismatch",
            Self::ForeignConnection => "foreign_connection",
        }
    }
}

labels!(StationDrop, DropReason);

impl Label for SessionIgnored {
    const ALL: &'static [Self] = &[
        SessionIgnored::DuplicateStart,
        SessionIgnored::StartAfterEnd,
        SessionIgnored::DuplicateEnd,
        SessionIgnored::UnknownSession,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        SessionIgnored::as_str(self)
    }
}

/// The connection decider's outcome: applied (`None`), or why it was ignored.
impl Label for Option<Ignored> {
    const ALL: &'static [Self] = &[None, Some(Ignored::Duplicate), Some(Ignored::Stale)];

    fn index(self) -> usize {
        match self {
            None => 0,
            Some(Ignored::Duplicate) => 1,
            Some(Ignored::Stale) => 2,
        }
    }

    fn as_str(self) -> &'static str {
        self.map_or("applied", Ignored::as_str)
    }
}

/// Counters of the handlers (status, stations, sessions).
#[derive(Debug, Default)]
pub struct SyncMetrics {
    /// Status messages received from the bus.
    pub(crate) status_received: AtomicU64,
    /// Status messages dropped.
    status_dropped: Labeled<DropReason>,
    /// Events appended, `connection.connected` / `connection.disconnected`.
    pub(crate) events_connected: AtomicU64,
    /// See `events_connected`.
    pub(crate) events_disconnected: AtomicU64,
    /// See `events_connected`: `connection.reported`.
    pub(crate) events_reported: AtomicU64,
    /// Connection decider outcomes.
    connection_outcomes: Labeled<Option<Ignored>>,
    /// Store transactions committed by the status writer.
    pub(crate) store_commits: AtomicU64,
    /// Sum of commit batch durations, in microseconds.
    pub(crate) store_commit_micros: AtomicU64,
    /// Batches retried after a write conflict (another writer got there first).
    pub(crate) store_conflicts: AtomicU64,
    /// Batches that failed on a database error and were retried after a pause.
    pub(crate) store_errors: AtomicU64,
    /// `session.started` events appended.
    pub(crate) sessions_started: AtomicU64,
    /// `session.ended` events appended.
    pub(crate) sessions_ended: AtomicU64,
    /// Session commands that changed nothing.
    sessions_ignored: Labeled<SessionIgnored>,
    /// Starts parked until their connection appears.
    pub(crate) sessions_pending: AtomicU64,
    /// Pending starts evicted by the per-account bound.
    pub(crate) sessions_pending_evicted: AtomicU64,
    /// Messages received on baby-station topics.
    pub(crate) baby_station_messages: AtomicU64,
    /// Messages received on parent-station topics.
    pub(crate) parent_station_messages: AtomicU64,
    /// Station messages dropped.
    station_drops: Labeled<StationDrop>,
}

impl SyncMetrics {
    /// Counts one dropped status message.
    pub(crate) fn status_drop(&self, reason: DropReason) {
        self.status_dropped.inc(reason);
    }

    /// Counts one decider outcome: applied (`None`), or why it was ignored.
    pub(crate) fn connection_outcome(&self, ignored: Option<Ignored>) {
        self.connection_outcomes.inc(ignored);
    }

    /// Counts one session command that changed nothing.
    pub(crate) fn session_ignored(&self, ignored: SessionIgnored) {
        self.sessions_ignored.inc(ignored);
    }

    /// Counts one dropped station message.
    pub(crate) fn station_drop(&self, reason: StationDrop) {
        self.station_drops.inc(reason);
    }

    /// Messages received by the handlers and dropped without effect, by family.
    fn render_messages(&self, out: &mut Exposition) {
        out.family(Desc::counter(
            "cradle_mqtt_messages_received_total",
            "MQTT messages received by Cradle's handlers, by topic family.",
        ))
        .sample("family=\"status\"", self.status_received.load(Relaxed))
        .sample(
            "family=\"baby_stations\"",
            self.baby_station_messages.load(Relaxed),
        )
        .sample(
            "family=\"parent_stations\"",
            self.parent_station_messages.load(Relaxed),
        );
        out.family(MESSAGES_DROPPED)
            .labeled("family=\"status\",", "reason", &self.status_dropped)
            .labeled("family=\"stations\",", "reason", &self.station_drops);
    }

    /// Events appended to the log and the connection decider's outcomes.
    fn render_decisions(&self, out: &mut Exposition) {
        out.family(Desc::counter(
            "cradle_events_appended_total",
            "Events appended to the event log, by type.",
        ))
        .sample(
            "type=\"connection.connected\"",
            self.events_connected.load(Relaxed),
        )
        .sample(
            "type=\"connection.disconnected\"",
            self.events_disconnected.load(Relaxed),
        )
        .sample(
            "type=\"connection.reported\"",
            self.events_reported.load(Relaxed),
        );
        out.family(Desc::counter(
            "cradle_decider_outcomes_total",
            "Decisions taken, by decider and outcome.",
        ))
        .labeled(
            "decider=\"connection\",",
            "outcome",
            &self.connection_outcomes,
        );
    }

    /// Write transactions: commits, time spent, conflicts and errors.
    fn render_store(&self, out: &mut Exposition) {
        out.counter(
            "cradle_store_commits_total",
            "Write transactions committed.",
            self.store_commits.load(Relaxed),
        );
        let seconds = self.store_commit_micros.load(Relaxed) as f64 / 1e6;
        out.family(Desc::counter(
            "cradle_store_commit_seconds_total",
            "Time spent in write transactions.",
        ))
        .sample("", format!("{seconds:.6}"));
        out.counter(
            "cradle_store_conflicts_total",
            "Write batches retried after a conflict with another writer.",
            self.store_conflicts.load(Relaxed),
        );
        out.counter(
            "cradle_store_errors_total",
            "Write batches that failed on a database error and were retried.",
            self.store_errors.load(Relaxed),
        );
    }

    /// Session events, ignored commands and parked session starts.
    fn render_sessions(&self, out: &mut Exposition) {
        out.family(Desc::counter(
            "cradle_sessions_total",
            "Session events appended, by type.",
        ))
        .sample("event=\"started\"", self.sessions_started.load(Relaxed))
        .sample("event=\"ended\"", self.sessions_ended.load(Relaxed));
        out.family(Desc::counter(
            "cradle_session_commands_ignored_total",
            "Session commands that changed nothing, by reason.",
        ))
        .labeled("", "reason", &self.sessions_ignored);
        out.family(Desc::counter(
            "cradle_session_pending_total",
            "Session starts parked until their connection appears, and those evicted.",
        ))
        .sample("outcome=\"parked\"", self.sessions_pending.load(Relaxed))
        .sample(
            "outcome=\"evicted\"",
            self.sessions_pending_evicted.load(Relaxed),
        );
    }
}

impl Family for SyncMetrics {
    fn render(&self, out: &mut Exposition) {
        self.render_messages(out);
        self.render_decisions(out);
        self.render_store(out);
        self.render_sessions(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{assert_places, Metrics};
    use std::sync::Arc;

    #[test]
    fn every_label_s_index_is_its_place_in_the_exposition_order() {
        assert_places::<DropReason>();
        assert_places::<StationDrop>();
        assert_places::<SessionIgnored>();
        assert_places::<Option<Ignored>>();
    }

    #[test]
    fn drops_are_rendered_by_reason() {
        let m = Arc::new(SyncMetrics::default());
        m.status_drop(DropReason::MalformedJson);
        m.status_drop(DropReason::MalformedJson);
        let text = Metrics::default().with(m).render(&[]);
        assert!(text.contains(
            "cradle_mqtt_messages_dropped_total{family=\"status\",reason=\"malformed_json\"} 2"
        ));
    }

    #[test]
    fn outcomes_are_rendered_per_decider() {
        let m = Arc::new(SyncMetrics::default());
        m.connection_outcome(Some(Ignored::Stale));
        let text = Metrics::default().with(m).render(&[]);
        assert!(text
            .contains("cradle_decider_outcomes_total{decider=\"connection\",outcome=\"stale\"} 1"));
        assert!(text.contains(
            "cradle_decider_outcomes_total{decider=\"connection\",outcome=\"applied\"} 0"
        ));
    }
}
