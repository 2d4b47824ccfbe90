//! The session decider: one stream per (account, session), pure (no I/O, no clock).
//! [`decide`] takes a command and the state, [`evolve`] folds a recorded event into the state.
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
//! Across streams (`decide_start`): a start on a connection that already hosts another
//! active session ends that session first (reason `replaced`).
//!
//! Who asks (`Actor`): the account (an HTTP caller with its token, or Cradle itself) may act
//! on any session of the account; a baby station, on its own topic, acts only for itself. It
//! starts sessions only on its own connections and ends only its own sessions
//! ([`SessionRefused`]); the state is decided first, so a duplicate is never a refusal.

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

impl ActiveSession {
    /// The session as JSON: the `session.started` event's data and its baby station's
    /// announcement. Through `serde_json::Value`, whose map writes keys sorted (not in the
    /// fields' order above), so the bytes are those stored and announced since the first
    /// version.
    pub fn to_json(&self) -> serde_json::Value {
        // Invariant: strings and integers through a derived Serialize (no map with non-string
        // keys, no custom serializer), which `to_value` cannot fail on.
        serde_json::to_value(self).expect("a session serialises")
    }
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

/// Who asks for a start or an end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Actor {
    /// The account: an HTTP caller with the account's token (the PWA starts and ends sessions
    /// for its baby stations), or Cradle itself (a connection's end, the grace sweep, a
    /// pending start applied when its connection appears). May act on any session.
    Account,
    /// One baby station (its client id), publishing on its own topic
    /// `accounts/{account}/baby_stations/{client_id}`: acts only on its own connections and
    /// its own sessions.
    Station(String),
}

/// Why a station's command was refused: it named what is not its own. Nothing changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefused {
    /// A start whose host is not the station itself.
    OtherStation,
    /// A start on a connection of another client: that client's current or last
    /// connection, or a connection hosting another station's active session.
    ForeignConnection,
    /// An end of another station's session.
    ForeignSession,
}

impl SessionRefused {
    /// Wire name (log detail).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OtherStation => "other_station",
            Self::ForeignConnection => "foreign_connection",
            Self::ForeignSession => "foreign_session",
        }
    }
}

/// Why a start or an end changed nothing: ignored by the state, or refused to its actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// The session's state makes it a no-op (duplicate, late, unknown).
    Ignored(SessionIgnored),
    /// The actor may not do it.
    Refused(SessionRefused),
}

impl From<SessionIgnored> for Rejected {
    fn from(i: SessionIgnored) -> Self {
        Self::Ignored(i)
    }
}

/// Decides one command against one session's state.
pub fn decide(
    command: &SessionCommand,
    state: &SessionState,
) -> Result<SessionEvent, SessionIgnored> {
    match (command, state) {
        (SessionCommand::Start(s), SessionState::None) => Ok(SessionEvent::Started(s.clone())),
        (SessionCommand::Start(_), SessionState::Active(_)) => Err(SessionIgnored::DuplicateStart),
        (SessionCommand::Start(_), SessionState::Ended) => Err(SessionIgnored::StartAfterEnd),
        (SessionCommand::End { .. }, SessionState::None) => Err(SessionIgnored::UnknownSession),
        (SessionCommand::End { .. }, SessionState::Ended) => Err(SessionIgnored::DuplicateEnd),
        (SessionCommand::End { at_millis, reason }, SessionState::Active(s)) => {
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

/// Applies one recorded event to its session's state.
pub fn evolve(_state: SessionState, event: &SessionEvent) -> SessionState {
    match event {
        SessionEvent::Started(s) => SessionState::Active(s.clone()),
        SessionEvent::Ended { .. } => SessionState::Ended,
    }
}

/// Decides a start by `by`, given the new session's state, the client whose current (or
/// last) connection is the start's connection (`connection_owner`, when known) and the
/// session that connection hosts now (if another one is active there): that one ends first
/// (`replaced`, at the new start).
///
/// A station's start is refused when the session's host is not the station, when its
/// connection is another client's current or last connection, or when the connection hosts
/// another station's active session and is not known as the station's own connection (the
/// station's own known connection replaces whatever runs on it, so nobody can squat on a
/// connection id a station will use). The account's starts are not checked.
pub(crate) fn decide_start(
    by: &Actor,
    start: &ActiveSession,
    state: &SessionState,
    connection_owner: Option<&str>,
    on_same_connection: Option<&ActiveSession>,
) -> Result<Vec<SessionEvent>, Rejected> {
    let started = decide(&SessionCommand::Start(start.clone()), state)?;
    let on_same_connection = on_same_connection.filter(|old| old.session_id != start.session_id);
    if let Actor::Station(station) = by {
        if start.client_id != *station {
            return Err(Rejected::Refused(SessionRefused::OtherStation));
        }
        let owned = match connection_owner {
            Some(owner) if owner != station => {
                return Err(Rejected::Refused(SessionRefused::ForeignConnection))
            }
            Some(_) => true,
            None => false,
        };
        if !owned && on_same_connection.is_some_and(|old| old.client_id != *station) {
            return Err(Rejected::Refused(SessionRefused::ForeignConnection));
        }
    }
    let mut events = Vec::with_capacity(2);
    if let Some(old) = on_same_connection {
        let end = SessionCommand::End {
            at_millis: start.started_at_millis.max(old.started_at_millis),
            reason: EndReason::Replaced,
        };
        events.push(decide(&end, &SessionState::Active(old.clone()))?);
    }
    events.push(started);
    Ok(events)
}

/// Decides an end by `by`: a station may end only its own sessions (an ended or unknown
/// session is decided by its state, as for the account).
pub(crate) fn decide_end(
    by: &Actor,
    at_millis: i64,
    reason: EndReason,
    state: &SessionState,
) -> Result<SessionEvent, Rejected> {
    if let (Actor::Station(station), SessionState::Active(s)) = (by, state) {
        if s.client_id != *station {
            return Err(Rejected::Refused(SessionRefused::ForeignSession));
        }
    }
    Ok(decide(&SessionCommand::End { at_millis, reason }, state)?)
}

/// An active session whose baby station is not connected, as the station's last recorded
/// status left it: what decides whether the station's absence ends the session
/// ([`end_when_away`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AwaySession {
    /// The account.
    pub account_id: String,
    /// The session.
    pub session_id: String,
    /// Its baby station.
    pub client_id: String,
    /// When the session started (the starter's clock).
    pub started_at_millis: i64,
    /// When Cradle recorded the start (Cradle's clock).
    pub recorded_at_millis: i64,
    /// When the station's last connection ended, when known.
    pub disconnected_at_millis: Option<i64>,
    /// Whether that connection ended with a goodbye (reason `clean`).
    pub clean_disconnect: bool,
    /// When Cradle recorded the station's last status change (Cradle's clock).
    pub(crate) station_updated_at_millis: i64,
}

/// Whether a session ends because its baby station is away, why, and when.
///
/// A clean disconnect recorded at or after the session's start ends it
/// (`clean_disconnect`); anything else (a lost connection, or a clean disconnect recorded
/// before the start) ends it once `grace_millis` have passed since the later of the two
/// records (`grace_expired`). `None` while within the grace period. The end is at the
/// station's disconnect (at `now_millis` when unknown), never before the session started.
/// Both records are on Cradle's clock, so `now_millis` must be too.
pub(crate) fn end_when_away(
    away: &AwaySession,
    now_millis: i64,
    grace_millis: i64,
) -> Option<(EndReason, i64)> {
    let since = away.station_updated_at_millis.max(away.recorded_at_millis);
    let reason =
        if away.clean_disconnect && away.station_updated_at_millis >= away.recorded_at_millis {
            EndReason::CleanDisconnect
        } else if now_millis - since >= grace_millis {
            EndReason::GraceExpired
        } else {
            return None;
        };
    let at = away
        .disconnected_at_millis
        .unwrap_or(now_millis)
        .max(away.started_at_millis);
    Some((reason, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state the given events leave.
    fn given(events: &[SessionEvent]) -> SessionState {
        events.iter().fold(SessionState::None, evolve)
    }

    fn session(id: &str, connection: &str, at: i64) -> ActiveSession {
        ActiveSession {
            session_id: id.into(),
            client_id: "baby".into(),
            connection_id: connection.into(),
            name: "Nursery".into(),
            started_at_millis: at,
        }
    }

    fn started(s: &ActiveSession) -> SessionEvent {
        SessionEvent::Started(s.clone())
    }

    fn ended(s: &ActiveSession, at: i64, reason: EndReason) -> SessionEvent {
        SessionEvent::Ended {
            session: s.clone(),
            ended_at_millis: at,
            duration_millis: (at - s.started_at_millis).max(0),
            reason,
        }
    }

    fn start(s: &ActiveSession) -> SessionCommand {
        SessionCommand::Start(s.clone())
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
        let e = decide(&start(&s), &given(&[])).unwrap();
        assert_eq!(e, started(&s));
        assert_eq!(e.event_type(), "session.started");
    }

    #[test]
    fn given_an_active_session_when_started_again_then_it_is_a_duplicate() {
        let s = session("s1", "k1", 100);
        assert_eq!(
            decide(&start(&s), &given(&[started(&s)])),
            Err(SessionIgnored::DuplicateStart)
        );
    }

    #[test]
    fn given_an_ended_session_when_a_late_start_arrives_then_it_is_dropped() {
        let s = session("s1", "k1", 100);
        let state = given(&[started(&s), ended(&s, 900, EndReason::Explicit)]);
        assert_eq!(
            decide(&start(&s), &state),
            Err(SessionIgnored::StartAfterEnd)
        );
    }

    #[test]
    fn given_an_active_session_when_ended_then_it_ends_with_its_duration() {
        let s = session("s1", "k1", 100);
        let e = decide(&end(1_100, EndReason::Explicit), &given(&[started(&s)])).unwrap();
        assert_eq!(e.event_type(), "session.ended");
        assert_eq!(e, ended(&s, 1_100, EndReason::Explicit));
        match e {
            SessionEvent::Ended {
                duration_millis, ..
            } => assert_eq!(duration_millis, 1_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn given_clocks_that_disagree_when_ended_before_it_started_then_the_duration_is_zero() {
        let s = session("s1", "k1", 5_000);
        match decide(
            &end(4_000, EndReason::CleanDisconnect),
            &given(&[started(&s)]),
        )
        .unwrap()
        {
            SessionEvent::Ended {
                duration_millis, ..
            } => assert_eq!(duration_millis, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn given_an_ended_session_when_ended_again_then_it_is_a_duplicate() {
        let s = session("s1", "k1", 100);
        let state = given(&[started(&s), ended(&s, 900, EndReason::Explicit)]);
        assert_eq!(
            decide(&end(1_000, EndReason::Explicit), &state),
            Err(SessionIgnored::DuplicateEnd)
        );
    }

    #[test]
    fn given_no_session_when_ended_then_it_is_unknown() {
        assert_eq!(
            decide(&end(1, EndReason::Explicit), &given(&[])),
            Err(SessionIgnored::UnknownSession)
        );
    }

    #[test]
    fn given_no_event_then_there_is_no_session() {
        assert_eq!(given(&[]), SessionState::None);
    }

    #[test]
    fn given_a_start_then_the_session_is_active_as_started() {
        let s = session("s1", "k1", 100);
        assert_eq!(given(&[started(&s)]), SessionState::Active(s));
    }

    #[test]
    fn given_a_start_and_an_end_then_the_session_is_ended() {
        let s = session("s1", "k1", 100);
        let state = given(&[started(&s), ended(&s, 900, EndReason::GraceExpired)]);
        assert_eq!(state, SessionState::Ended);
    }

    #[test]
    fn given_the_events_a_start_decided_when_it_is_repeated_then_it_is_a_duplicate() {
        let s = session("s1", "k1", 100);
        let first = decide(&start(&s), &given(&[])).unwrap();
        assert_eq!(
            decide(&start(&s), &given(&[first])),
            Err(SessionIgnored::DuplicateStart)
        );
    }

    #[test]
    fn given_the_events_an_end_decided_when_it_is_repeated_then_it_is_a_duplicate() {
        let s = session("s1", "k1", 100);
        let state = given(&[started(&s)]);
        let first = decide(&end(900, EndReason::Explicit), &state).unwrap();
        let state = evolve(state, &first);
        assert_eq!(
            decide(&end(900, EndReason::Explicit), &state),
            Err(SessionIgnored::DuplicateEnd)
        );
    }

    #[test]
    fn the_decider_needs_no_clock_the_same_inputs_give_the_same_outputs() {
        let s = session("s1", "k1", 100);
        let state = given(&[started(&s)]);
        let command = end(700, EndReason::CleanDisconnect);
        assert_eq!(decide(&command, &state), decide(&command, &state));
    }

    #[test]
    fn given_a_session_on_the_connection_when_a_new_one_starts_there_then_the_old_ends_first() {
        let old = session("s1", "k1", 100);
        let new = session("s2", "k1", 500);
        let events = decide_start(&Actor::Account, &new, &given(&[]), None, Some(&old)).unwrap();
        assert_eq!(
            events,
            vec![ended(&old, 500, EndReason::Replaced), started(&new)]
        );
        match &events[0] {
            SessionEvent::Ended {
                duration_millis, ..
            } => assert_eq!(*duration_millis, 400),
            other => panic!("{other:?}"),
        }
        // Folded onto their own streams, the old session is ended and the new one active.
        assert_eq!(
            given(&[started(&old), events[0].clone()]),
            SessionState::Ended
        );
        assert_eq!(given(&events[1..]), SessionState::Active(new));
    }

    #[test]
    fn given_the_same_session_on_the_connection_when_started_again_then_nothing_ends() {
        let s = session("s1", "k1", 100);
        assert_eq!(
            decide_start(&Actor::Account, &s, &given(&[started(&s)]), None, Some(&s)),
            Err(Rejected::Ignored(SessionIgnored::DuplicateStart))
        );
    }

    #[test]
    fn given_an_ended_session_when_a_late_start_reuses_a_busy_connection_then_nothing_changes() {
        let other = session("s9", "k1", 100);
        let late = session("s1", "k1", 50);
        let state = given(&[started(&late), ended(&late, 80, EndReason::Explicit)]);
        assert_eq!(
            decide_start(&Actor::Account, &late, &state, None, Some(&other)),
            Err(Rejected::Ignored(SessionIgnored::StartAfterEnd))
        );
    }

    fn hosted_by(client: &str, id: &str, connection: &str, at: i64) -> ActiveSession {
        ActiveSession {
            client_id: client.into(),
            ..session(id, connection, at)
        }
    }

    fn station(client: &str) -> Actor {
        Actor::Station(client.into())
    }

    #[test]
    fn given_another_stations_session_on_a_connection_when_a_station_starts_there_then_it_is_refused(
    ) {
        let theirs = hosted_by("baby-a", "sa", "ka", 100);
        let mine = hosted_by("baby-b", "sb", "ka", 500);
        assert_eq!(
            decide_start(&station("baby-b"), &mine, &given(&[]), None, Some(&theirs)),
            Err(Rejected::Refused(SessionRefused::ForeignConnection))
        );
    }

    #[test]
    fn given_another_clients_current_connection_when_a_station_starts_on_it_then_it_is_refused() {
        let mine = hosted_by("baby-b", "sb", "ka", 500);
        assert_eq!(
            decide_start(&station("baby-b"), &mine, &given(&[]), Some("baby-a"), None),
            Err(Rejected::Refused(SessionRefused::ForeignConnection))
        );
    }

    #[test]
    fn given_its_own_connection_when_a_station_starts_a_new_session_there_then_its_old_one_is_replaced(
    ) {
        let old = hosted_by("baby-a", "s1", "ka", 100);
        let new = hosted_by("baby-a", "s2", "ka", 500);
        let events = decide_start(
            &station("baby-a"),
            &new,
            &given(&[]),
            Some("baby-a"),
            Some(&old),
        )
        .unwrap();
        assert_eq!(
            events,
            vec![ended(&old, 500, EndReason::Replaced), started(&new)]
        );
    }

    #[test]
    fn given_a_squatters_session_on_a_stations_own_connection_when_the_station_starts_there_then_the_squatter_is_replaced(
    ) {
        let squat = hosted_by("baby-b", "sb", "ka", 100);
        let real = hosted_by("baby-a", "sa", "ka", 500);
        let events = decide_start(
            &station("baby-a"),
            &real,
            &given(&[]),
            Some("baby-a"),
            Some(&squat),
        )
        .unwrap();
        assert_eq!(
            events,
            vec![ended(&squat, 500, EndReason::Replaced), started(&real)]
        );
    }

    #[test]
    fn given_a_connection_nobody_reported_yet_when_a_station_starts_on_it_then_it_starts() {
        let mine = hosted_by("baby-b", "sb", "kb", 500);
        assert_eq!(
            decide_start(&station("baby-b"), &mine, &given(&[]), None, None),
            Ok(vec![started(&mine)])
        );
    }

    #[test]
    fn given_a_start_naming_another_station_as_host_when_a_station_sends_it_then_it_is_refused() {
        let theirs = hosted_by("baby-a", "s1", "ka", 500);
        assert_eq!(
            decide_start(&station("baby-b"), &theirs, &given(&[]), None, None),
            Err(Rejected::Refused(SessionRefused::OtherStation))
        );
    }

    #[test]
    fn given_an_active_session_when_another_station_repeats_its_start_then_it_is_only_a_duplicate()
    {
        let theirs = hosted_by("baby-a", "sa", "ka", 100);
        let echo = hosted_by("baby-b", "sa", "ka", 100);
        assert_eq!(
            decide_start(
                &station("baby-b"),
                &echo,
                &given(&[started(&theirs)]),
                Some("baby-a"),
                None,
            ),
            Err(Rejected::Ignored(SessionIgnored::DuplicateStart))
        );
    }

    #[test]
    fn given_the_account_when_it_starts_on_a_connection_of_another_station_then_it_is_not_checked()
    {
        let theirs = hosted_by("baby-a", "sa", "ka", 100);
        let new = hosted_by("baby-b", "sb", "ka", 500);
        let events = decide_start(
            &Actor::Account,
            &new,
            &given(&[]),
            Some("baby-a"),
            Some(&theirs),
        )
        .unwrap();
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn given_another_stations_session_when_a_station_ends_it_then_it_is_refused() {
        let theirs = given(&[started(&hosted_by("baby-a", "sa", "ka", 100))]);
        assert_eq!(
            decide_end(&station("baby-b"), 900, EndReason::Explicit, &theirs),
            Err(Rejected::Refused(SessionRefused::ForeignSession))
        );
    }

    #[test]
    fn given_its_own_session_when_a_station_ends_it_then_it_ends() {
        let s = hosted_by("baby-a", "sa", "ka", 100);
        let e = decide_end(
            &station("baby-a"),
            900,
            EndReason::Explicit,
            &given(&[started(&s)]),
        )
        .unwrap();
        assert_eq!(e, ended(&s, 900, EndReason::Explicit));
    }

    #[test]
    fn given_the_account_when_it_ends_any_stations_session_then_it_ends() {
        let theirs = given(&[started(&hosted_by("baby-a", "sa", "ka", 100))]);
        assert!(decide_end(&Actor::Account, 900, EndReason::Explicit, &theirs).is_ok());
    }

    #[test]
    fn given_an_unknown_session_when_a_station_ends_it_then_it_is_unknown_not_refused() {
        assert_eq!(
            decide_end(&station("baby-b"), 900, EndReason::Explicit, &given(&[])),
            Err(Rejected::Ignored(SessionIgnored::UnknownSession))
        );
    }

    /// A session started at 1,000 and recorded at 1,010, its station away since 2,000
    /// (recorded at 2,005), lost unless changed.
    fn away() -> AwaySession {
        AwaySession {
            account_id: "a".into(),
            session_id: "s1".into(),
            client_id: "baby".into(),
            started_at_millis: 1_000,
            recorded_at_millis: 1_010,
            disconnected_at_millis: Some(2_000),
            clean_disconnect: false,
            station_updated_at_millis: 2_005,
        }
    }

    const GRACE: i64 = 30_000;

    #[test]
    fn given_a_clean_disconnect_after_the_start_when_swept_then_it_ends_at_the_disconnect() {
        let a = AwaySession {
            clean_disconnect: true,
            ..away()
        };
        assert_eq!(
            end_when_away(&a, 2_010, GRACE),
            Some((EndReason::CleanDisconnect, 2_000))
        );
    }

    #[test]
    fn given_a_clean_disconnect_recorded_before_the_start_when_swept_then_it_waits_for_grace() {
        let a = AwaySession {
            clean_disconnect: true,
            station_updated_at_millis: 900,
            disconnected_at_millis: Some(890),
            ..away()
        };
        assert_eq!(end_when_away(&a, 1_010 + GRACE - 1, GRACE), None);
        assert_eq!(
            end_when_away(&a, 1_010 + GRACE, GRACE),
            Some((EndReason::GraceExpired, 1_000))
        );
    }

    #[test]
    fn given_a_lost_connection_when_swept_within_grace_then_the_session_stays() {
        assert_eq!(end_when_away(&away(), 2_005 + GRACE - 1, GRACE), None);
    }

    #[test]
    fn given_a_lost_connection_when_the_grace_period_passed_then_it_ends_at_the_disconnect() {
        assert_eq!(
            end_when_away(&away(), 2_005 + GRACE, GRACE),
            Some((EndReason::GraceExpired, 2_000))
        );
    }

    #[test]
    fn given_a_station_away_since_before_the_start_when_swept_then_grace_counts_from_the_start() {
        let a = AwaySession {
            station_updated_at_millis: 500,
            ..away()
        };
        assert_eq!(end_when_away(&a, 1_010 + GRACE - 1, GRACE), None);
        assert!(end_when_away(&a, 1_010 + GRACE, GRACE).is_some());
    }

    #[test]
    fn given_no_disconnect_time_when_the_session_ends_then_it_ends_now() {
        let a = AwaySession {
            disconnected_at_millis: None,
            ..away()
        };
        let now = 2_005 + GRACE + 7;
        assert_eq!(
            end_when_away(&a, now, GRACE),
            Some((EndReason::GraceExpired, now))
        );
    }

    #[test]
    fn given_a_disconnect_stamped_before_the_start_when_it_ends_then_it_ends_at_the_start() {
        let a = AwaySession {
            clean_disconnect: true,
            disconnected_at_millis: Some(400),
            ..away()
        };
        assert_eq!(
            end_when_away(&a, 2_010, GRACE),
            Some((EndReason::CleanDisconnect, 1_000))
        );
    }
}
