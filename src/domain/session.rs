//! The session start decider: one stream per (account, session), pure (no I/O, no clock).
//!
//! A baby station starts a monitoring session; the session ends explicitly, by a clean
//! disconnect of its baby station, when its connection is reused by a new session, or when a
//! lost connection's grace period passes without a reconnect. Every session is recorded
//! exactly once, with its true duration.
//!
//! | state \ command | Start | End |
//! |---|---|---|
//! | none | `session.started` | ignored: unknown session |
//! | active | ignored: duplicate start (HTTP start + MQTT announcement) | `session.ended` |
//! | ended | ignored: start after end (late delivery) | ignored: duplicate end |
//!
//! Across streams ([`decide_start`]): a start on a connection that already hosts another
//! active session ends that session first (reason `replaced`).

use serde::{Deserialize, Serialize};

/// A session's state, as its events left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// No event yet.
    None,
    /// Started and not ended.
    Active(ActiveSession),
    /// Ended.
    Ended,
}

/// An active session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveSession {
    /// The session.
    pub session_id: String,
    /// The baby station hosting it.
    pub client_id: String,
    /// The baby station's connection that started it.
    pub connection_id: String,
    /// Display name.
    pub name: String,
    /// When it started (the starter's clock, Unix milliseconds).
    pub started_at_millis: i64,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `DELETE /sessions/{id}` or an MQTT end announcement.
    Explicit,
    /// The baby station disconnected cleanly.
    CleanDisconnect,
    /// The baby station's connection was lost and did not come back within the grace period.
    GraceExpired,
    /// A new session started on the same connection.
    Replaced,
}

impl EndReason {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Explicit => "explicit",
            Self::CleanDisconnect => "clean_disconnect",
            Self::GraceExpired => "grace_expired",
            Self::Replaced => "replaced",
        }
    }
}

/// What is asked of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// Start it.
    Start(ActiveSession),
    /// End it.
    End {
        /// When (observer's clock).
        at_millis: i64,
        /// Why.
        reason: EndReason,
    },
}

/// What happened to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// `session.started`.
    Started(ActiveSession),
    /// `session.ended`.
    Ended {
        /// The session as it was.
        session: ActiveSession,
        /// When it ended.
        ended_at_millis: i64,
        /// `ended_at - started_at`, never negative (clocks of different observers).
        duration_millis: i64,
        /// Why.
        reason: EndReason,
    },
}

impl SessionEvent {
    /// Stable type name.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Started(_) => "session.started",
            Self::Ended { .. } => "session.ended",
        }
    }

    /// The session.
    pub fn session(&self) -> &ActiveSession {
        match self {
            Self::Started(s) | Self::Ended { session: s, .. } => s,
        }
    }
}

/// Why a command changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIgnored {
    /// The session is already active.
    DuplicateStart,
    /// The session already ended; a late start must not revive it.
    StartAfterEnd,
    /// The session already ended.
    DuplicateEnd,
    /// No such session.
    UnknownSession,
}

impl SessionIgnored {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DuplicateStart => "duplicate_start",
            Self::StartAfterEnd => "start_after_end",
            Self::DuplicateEnd => "duplicate_end",
            Self::UnknownSession => "unknown_session",
        }
    }
}

/// Decides one command against one session's state.
pub fn decide(
    state: &SessionState,
    command: &SessionCommand,
) -> Result<SessionEvent, SessionIgnored> {
    match (state, command) {
        (SessionState::None, SessionCommand::Start(s)) => Ok(SessionEvent::Started(s.clone())),
        (SessionState::Active(_), SessionCommand::Start(_)) => Err(SessionIgnored::DuplicateStart),
        (SessionState::Ended, SessionCommand::Start(_)) => Err(SessionIgnored::StartAfterEnd),
        (SessionState::None, SessionCommand::End { .. }) => Err(SessionIgnored::UnknownSession),
        (SessionState::Ended, SessionCommand::End { .. }) => Err(SessionIgnored::DuplicateEnd),
        (SessionState::Active(s), SessionCommand::End { at_millis, reason }) => {
            Ok(SessionEvent::Ended {
                session: s.clone(),
                ended_at_millis: *at_millis,
                // Saturating: the decider does not rely on its callers' range checks.
                duration_millis: at_millis.saturating_sub(s.started_at_millis).max(0),
                reason: *reason,
            })
        }
    }
}

/// Decides a start, given the new session's state and the session its connection hosts now
/// (if another one is active there): the old one ends first (`replaced`, at the new start).
pub fn decide_start(
    state: &SessionState,
    on_same_connection: Option<&ActiveSession>,
    start: &ActiveSession,
) -> Result<Vec<SessionEvent>, SessionIgnored> {
    let started = decide(state, &SessionCommand::Start(start.clone()))?;
    let mut events = Vec::with_capacity(2);
    if let Some(old) = on_same_connection.filter(|old| old.session_id != start.session_id) {
        let end = SessionCommand::End {
            at_millis: start.started_at_millis.max(old.started_at_millis),
            reason: EndReason::Replaced,
        };
        events.push(decide(&SessionState::Active(old.clone()), &end)?);
    }
    events.push(started);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, connection: &str, at: i64) -> ActiveSession {
        ActiveSession {
            session_id: id.into(),
            client_id: "baby".into(),
            connection_id: connection.into(),
            name: "Nursery".into(),
            started_at_millis: at,
        }
    }

    fn end(at: i64, reason: EndReason) -> SessionCommand {
        SessionCommand::End {
            at_millis: at,
            reason,
        }
    }

    #[test]
    fn given_no_session_when_started_then_it_starts() {
        let s = session("s1", "k1", 100);
        let e = decide(&SessionState::None, &SessionCommand::Start(s.clone())).unwrap();
        assert_eq!(e, SessionEvent::Started(s));
        assert_eq!(e.event_type(), "session.started");
    }

    #[test]
    fn given_an_active_session_when_started_again_then_it_is_a_duplicate() {
        let s = session("s1", "k1", 100);
        let state = SessionState::Active(s.clone());
        assert_eq!(
            decide(&state, &SessionCommand::Start(s)),
            Err(SessionIgnored::DuplicateStart)
        );
    }

    #[test]
    fn given_an_ended_session_when_a_late_start_arrives_then_it_is_dropped() {
        assert_eq!(
            decide(
                &SessionState::Ended,
                &SessionCommand::Start(session("s1", "k1", 100))
            ),
            Err(SessionIgnored::StartAfterEnd)
        );
    }

    #[test]
    fn given_an_active_session_when_ended_then_it_ends_with_its_duration() {
        let state = SessionState::Active(session("s1", "k1", 100));
        let e = decide(&state, &end(1_100, EndReason::Explicit)).unwrap();
        assert_eq!(e.event_type(), "session.ended");
        match e {
            SessionEvent::Ended {
                duration_millis,
                ended_at_millis,
                reason,
                ..
            } => {
                assert_eq!(duration_millis, 1_000);
                assert_eq!(ended_at_millis, 1_100);
                assert_eq!(reason, EndReason::Explicit);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn given_clocks_that_disagree_when_ended_before_it_started_then_the_duration_is_zero() {
        let state = SessionState::Active(session("s1", "k1", 5_000));
        match decide(&state, &end(4_000, EndReason::CleanDisconnect)).unwrap() {
            SessionEvent::Ended {
                duration_millis, ..
            } => assert_eq!(duration_millis, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn given_an_ended_session_when_ended_again_then_it_is_a_duplicate() {
        assert_eq!(
            decide(&SessionState::Ended, &end(1, EndReason::Explicit)),
            Err(SessionIgnored::DuplicateEnd)
        );
    }

    #[test]
    fn given_no_session_when_ended_then_it_is_unknown() {
        assert_eq!(
            decide(&SessionState::None, &end(1, EndReason::Explicit)),
            Err(SessionIgnored::UnknownSession)
        );
    }

    #[test]
    fn given_a_session_on_the_connection_when_a_new_one_starts_there_then_the_old_ends_first() {
        let old = session("s1", "k1", 100);
        let new = session("s2", "k1", 500);
        let events = decide_start(&SessionState::None, Some(&old), &new).unwrap();
        assert_eq!(events.len(), 2);
        match &events[0] {
            SessionEvent::Ended {
                session,
                reason,
                ended_at_millis,
                duration_millis,
            } => {
                assert_eq!(session.session_id, "s1");
                assert_eq!(*reason, EndReason::Replaced);
                assert_eq!(*ended_at_millis, 500);
                assert_eq!(*duration_millis, 400);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(events[1], SessionEvent::Started(new));
    }

    #[test]
    fn given_the_same_session_on_the_connection_when_started_again_then_nothing_ends() {
        let s = session("s1", "k1", 100);
        assert_eq!(
            decide_start(&SessionState::Active(s.clone()), Some(&s), &s),
            Err(SessionIgnored::DuplicateStart)
        );
    }

    #[test]
    fn given_an_ended_session_when_a_late_start_reuses_a_busy_connection_then_nothing_changes() {
        let other = session("s9", "k1", 100);
        assert_eq!(
            decide_start(&SessionState::Ended, Some(&other), &session("s1", "k1", 50)),
            Err(SessionIgnored::StartAfterEnd)
        );
    }
}
