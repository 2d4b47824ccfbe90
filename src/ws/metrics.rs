//! The bridge's counters: sessions opened and closed (by reason), resumes (by outcome),
//! replays, refusals; a [`Family`] of the process's metrics registry.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::domain::connection::DisconnectReason;
use crate::metrics::{labels, Desc, Exposition, Family, Labeled};

/// Counters of the bridge.
#[derive(Debug, Default)]
pub struct WsMetrics {
    /// Sessions opened.
    pub opened: AtomicU64,
    /// Sessions closed, by reason ([`CLOSE_REASONS`]; see [`WsMetrics::closed`]).
    closed: [AtomicU64; CLOSE_REASONS.len()],
    /// Upgrades refused for missing or bad credentials.
    pub(crate) auth_failures: AtomicU64,
    /// New sessions refused at `websocket.max_sessions`.
    pub session_limit: AtomicU64,
    /// Resume attempts by [`ResumeOutcome`].
    resumes: Labeled<ResumeOutcome>,
    /// Frames replayed to resumed sockets.
    pub replayed: AtomicU64,
    /// Signal frames refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Client frames refused as invalid.
    pub(crate) invalid_frames: AtomicU64,
    /// Inbox messages for a connection that is not the topic's account and client.
    pub(crate) inbox_dropped: AtomicU64,
    /// Live sessions (attached or waiting for a resume).
    pub live: std::sync::atomic::AtomicI64,
}

/// Close reasons counted in [`WsMetrics::closed`].
pub(crate) const CLOSE_REASONS: [DisconnectReason; 8] = [
    DisconnectReason::Clean,
    DisconnectReason::Lost,
    DisconnectReason::SlowConsumer,
    DisconnectReason::Kicked,
    DisconnectReason::ServerShutdown,
    DisconnectReason::Takeover,
    DisconnectReason::Revoked,
    DisconnectReason::AdminDisconnect,
];

/// How a resume attempt ended, as counted (`cradle_ws_resumes_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// Attached to its session.
    Resumed,
    /// No such session here (410).
    Gone,
    /// The session expired (4100).
    Expired,
    /// `resume_from` outside the replay buffer (4101).
    TooOld,
    /// Neither the opening token nor the resume secret (410).
    Refused,
}

impl ResumeOutcome {
    /// Every outcome, in exposition order.
    pub(crate) const ALL: [ResumeOutcome; 5] = [
        Self::Resumed,
        Self::Gone,
        Self::Expired,
        Self::TooOld,
        Self::Refused,
    ];

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resumed => "resumed",
            Self::Gone => "gone",
            Self::Expired => "expired",
            Self::TooOld => "too_old",
            Self::Refused => "refused",
        }
    }
}

labels!(ResumeOutcome);

impl WsMetrics {
    /// Counts a resume attempt.
    pub fn resumed(&self, outcome: ResumeOutcome) {
        self.resumes.inc(outcome);
    }

    /// Resume attempts that ended so.
    pub fn resumes(&self, outcome: ResumeOutcome) -> u64 {
        self.resumes.get(outcome)
    }

    /// Counts a session ended for `reason`.
    pub(super) fn closed(&self, reason: DisconnectReason) {
        let i = match reason {
            DisconnectReason::Clean => 0,
            DisconnectReason::Lost => 1,
            DisconnectReason::SlowConsumer => 2,
            DisconnectReason::Kicked => 3,
            DisconnectReason::ServerShutdown => 4,
            DisconnectReason::Takeover => 5,
            DisconnectReason::Revoked => 6,
            DisconnectReason::AdminDisconnect => 7,
            // Not a way a WebSocket session ends.
            _ => return,
        };
        self.closed[i].fetch_add(1, Relaxed);
    }
}

impl Family for WsMetrics {
    fn render(&self, out: &mut Exposition) {
        out.gauge(
            "cradle_ws_sessions",
            "WebSocket sessions (attached or waiting for a resume).",
            self.live.load(Relaxed),
        );
        out.counter(
            "cradle_ws_sessions_opened_total",
            "WebSocket sessions opened.",
            self.opened.load(Relaxed),
        );
        let mut closed = out.family(Desc::counter(
            "cradle_ws_sessions_closed_total",
            "WebSocket sessions ended, by reason.",
        ));
        for (i, r) in CLOSE_REASONS.iter().enumerate() {
            closed.sample(
                &format!("reason=\"{}\"", r.as_str()),
                self.closed[i].load(Relaxed),
            );
        }
        out.family(Desc::counter(
            "cradle_ws_resumes_total",
            "Resume attempts, by outcome.",
        ))
        .labeled("", "outcome", &self.resumes);
        for (name, help, v) in [
            (
                "cradle_ws_replayed_frames_total",
                "Frames replayed to resumed sockets.",
                &self.replayed,
            ),
            (
                "cradle_ws_auth_failures_total",
                "Upgrades refused for missing or bad credentials.",
                &self.auth_failures,
            ),
            (
                "cradle_ws_rate_limited_frames_total",
                "Signal frames refused by the rate limit.",
                &self.rate_limited,
            ),
            (
                "cradle_ws_invalid_frames_total",
                "Client frames refused as invalid.",
                &self.invalid_frames,
            ),
            (
                "cradle_ws_inbox_dropped_total",
                "Inbox messages naming a connection of another client or account.",
                &self.inbox_dropped,
            ),
        ] {
            out.counter(name, help, v.load(Relaxed));
        }
        out.family(Desc::counter(
            "cradle_ws_refused_total",
            "Upgrades refused before the 101 for a limit, by reason (session_limit: websocket.max_sessions).",
        ))
        .sample("reason=\"session_limit\"", self.session_limit.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_close_reason_is_counted_under_its_own_label() {
        for (i, reason) in CLOSE_REASONS.into_iter().enumerate() {
            let m = WsMetrics::default();
            m.closed(reason);
            let counts: Vec<u64> = m.closed.iter().map(|c| c.load(Relaxed)).collect();
            let mut want = vec![0; CLOSE_REASONS.len()];
            want[i] = 1;
            assert_eq!(counts, want, "{}", reason.as_str());
        }
    }

    #[test]
    fn every_resume_outcome_s_index_is_its_place() {
        crate::metrics::assert_places::<ResumeOutcome>();
    }

    #[test]
    fn each_resume_outcome_is_counted_under_its_own_label() {
        let m = WsMetrics::default();
        m.resumed(ResumeOutcome::TooOld);
        m.resumed(ResumeOutcome::TooOld);
        m.resumed(ResumeOutcome::Gone);
        let counts: Vec<(&str, u64)> = ResumeOutcome::ALL
            .into_iter()
            .map(|o| (o.as_str(), m.resumes(o)))
            .collect();
        assert_eq!(
            counts,
            [
                ("resumed", 0),
                ("gone", 1),
                ("expired", 0),
                ("too_old", 2),
                ("refused", 0)
            ]
        );
    }
}
