//! Process metrics, rendered in the Prometheus text format on `/metrics`.
//!
//! Fixed label sets (families, drop reasons, decider outcomes) are arrays of atomics, so
//! counting on the hot path is one relaxed add and no lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::topics::DropReason;

/// Decider outcomes counted per decider.
pub const OUTCOMES: [&str; 3] = ["applied", "duplicate", "stale"];

/// Every counter and gauge of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Status messages received from the bus.
    pub status_received: AtomicU64,
    /// Status messages dropped, by [`DropReason`] (index into `DropReason::ALL`).
    pub status_dropped: [AtomicU64; DropReason::ALL.len()],
    /// Events appended, `connection.connected` / `connection.disconnected`.
    pub events_connected: AtomicU64,
    /// See `events_connected`.
    pub events_disconnected: AtomicU64,
    /// Connection decider outcomes, by [`OUTCOMES`] index.
    pub connection_outcomes: [AtomicU64; 3],
    /// Store transactions committed by the status writer.
    pub store_commits: AtomicU64,
    /// Sum of commit batch durations, in microseconds.
    pub store_commit_micros: AtomicU64,
    /// Batches retried after a write conflict (another writer got there first).
    pub store_conflicts: AtomicU64,
    /// Batches that failed on a database error and were retried after a pause.
    pub store_errors: AtomicU64,
    /// Whether the bus is connected to the broker (0 or 1).
    pub bus_connected: AtomicU64,
    /// Times the bus (re)connected.
    pub bus_connects: AtomicU64,
}

impl Metrics {
    /// Counts one dropped status message.
    pub fn status_drop(&self, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.status_dropped[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts one decider outcome (`applied`, `duplicate`, `stale`).
    pub fn connection_outcome(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.connection_outcomes[i].fetch_add(1, Relaxed);
        }
    }

    /// Renders every metric; `connected_clients` comes from the store at scrape time so that
    /// every replica reports the same figure.
    pub fn render(&self, connected_clients: Option<u64>) -> String {
        let mut out = String::with_capacity(4096);
        let c = |out: &mut String, name: &str, help: &str, kind: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        c(
            &mut out,
            "cradle_mqtt_messages_received_total",
            "MQTT messages received by Cradle's handlers, by topic family.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_mqtt_messages_received_total{{family=\"status\"}} {}",
            self.status_received.load(Relaxed)
        );
        c(
            &mut out,
            "cradle_mqtt_messages_dropped_total",
            "MQTT messages acknowledged and dropped without effect, by family and reason.",
            "counter",
        );
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_mqtt_messages_dropped_total{{family=\"status\",reason=\"{}\"}} {}",
                reason.as_str(),
                self.status_dropped[i].load(Relaxed)
            );
        }
        c(
            &mut out,
            "cradle_events_appended_total",
            "Events appended to the event log, by type.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_events_appended_total{{type=\"connection.connected\"}} {}",
            self.events_connected.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "cradle_events_appended_total{{type=\"connection.disconnected\"}} {}",
            self.events_disconnected.load(Relaxed)
        );
        c(
            &mut out,
            "cradle_decider_outcomes_total",
            "Decisions taken, by decider and outcome.",
            "counter",
        );
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "cradle_decider_outcomes_total{{decider=\"connection\",outcome=\"{outcome}\"}} {}",
                self.connection_outcomes[i].load(Relaxed)
            );
        }
        c(
            &mut out,
            "cradle_store_commits_total",
            "Write transactions committed.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_store_commits_total {}",
            self.store_commits.load(Relaxed)
        );
        c(
            &mut out,
            "cradle_store_commit_seconds_total",
            "Time spent in write transactions.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_store_commit_seconds_total {:.6}",
            self.store_commit_micros.load(Relaxed) as f64 / 1e6
        );
        c(
            &mut out,
            "cradle_store_conflicts_total",
            "Write batches retried after a conflict with another writer.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_store_conflicts_total {}",
            self.store_conflicts.load(Relaxed)
        );
        c(
            &mut out,
            "cradle_store_errors_total",
            "Write batches that failed on a database error and were retried.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_store_errors_total {}",
            self.store_errors.load(Relaxed)
        );
        c(
            &mut out,
            "cradle_bus_connected",
            "1 while Cradle's own MQTT client is connected to the broker.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "cradle_bus_connected {}",
            self.bus_connected.load(Relaxed)
        );
        c(
            &mut out,
            "cradle_bus_connects_total",
            "Times Cradle's own MQTT client (re)connected.",
            "counter",
        );
        let _ = writeln!(
            out,
            "cradle_bus_connects_total {}",
            self.bus_connects.load(Relaxed)
        );
        if let Some(n) = connected_clients {
            c(
                &mut out,
                "cradle_connected_clients",
                "Clients whose current connection is connected, over every account.",
                "gauge",
            );
            let _ = writeln!(out, "cradle_connected_clients {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_rendered_by_reason() {
        let m = Metrics::default();
        m.status_drop(DropReason::MalformedJson);
        m.status_drop(DropReason::MalformedJson);
        let text = m.render(Some(3));
        assert!(text.contains(
            "cradle_mqtt_messages_dropped_total{family=\"status\",reason=\"malformed_json\"} 2"
        ));
        assert!(text.contains("cradle_connected_clients 3"));
    }

    #[test]
    fn outcomes_are_rendered_per_decider() {
        let m = Metrics::default();
        m.connection_outcome("stale");
        let text = m.render(None);
        assert!(text
            .contains("cradle_decider_outcomes_total{decider=\"connection\",outcome=\"stale\"} 1"));
        assert!(!text.contains("cradle_connected_clients"));
    }
}
