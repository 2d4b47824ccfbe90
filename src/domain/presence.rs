//! Presence history, pure: one client's connections rebuilt from its connection log
//! (`connection/{account}/{client}`, the decider's [`ConnectionEvent`]s in log order), and what
//! they say about an instant ([`state_at`]), a window ([`history`]) and its availability
//! ([`availability`]). No clock: `now` arrives as an argument.
//!
//! The decider's log is linear (each connection `connected`, maybe `reported`, then
//! `disconnected`), but [`spans`] reads any order without losing time: stamps come from
//! different clocks, so they are clamped (an end never before its start, a start never
//! before the previous end), and a log cut at the front by retention may begin in the middle
//! of a connection.

use serde::Serialize;

use super::connection::{ConnectionEvent, DisconnectReason};

/// One client's connection log as read from the store.
#[derive(Debug, Clone, Copy)]
pub struct ClientLog<'a> {
    /// Its events, in log order.
    pub events: &'a [ConnectionEvent],
    /// Whether `events` begin at the stream's first event (false: older events were removed
    /// by retention).
    pub complete: bool,
}

/// One connection of a client, reconstructed from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Span {
    /// The id it is known by (the device's reported id once it reported).
    pub connection_id: String,
    /// The MQTT connection behind the edge; `null` for clients the edge does not see.
    pub edge_connection_id: Option<String>,
    /// When it started, Unix milliseconds; `null` when it started before the retained history.
    pub started_at_millis: Option<i64>,
    /// When it ended; `null` while it is open (as far as the log says).
    pub ended_at_millis: Option<i64>,
    /// Why it ended (a disconnect reason's wire name); `null` while it is open.
    #[schema(value_type = Option<String>)]
    pub end_reason: Option<DisconnectReason>,
    /// The device reported the connection itself.
    pub reported: bool,
    /// The MQTT edge saw the connection (it has an edge id): `false` for clients the edge
    /// does not see (WebSocket sessions, devices on an external broker).
    pub observed: bool,
}

/// Rebuilds the client's connections, in start order (log order).
///
/// Besides the decider's linear log, it reads defensively: a `connected` while another
/// connection is open ends that one at the new start (a takeover); a `reported` renames the
/// open connection; a `disconnected` ends the open connection if it names it by id or by
/// edge id, else the open one is taken over at that instant and the named connection lasted
/// no time (as the decider records an end whose start it never saw). A `reported` with
/// nothing open is of a connection that is over, and changes nothing.
pub fn spans(log: &ClientLog) -> Vec<Span> {
    let mut b = Rebuild {
        spans: Vec::new(),
        floor: i64::MIN,
    };
    for event in log.events {
        // Before the first connection of a cut log, an event may be about a connection that
        // started before the retained history.
        let before_history = !log.complete && b.spans.is_empty();
        match event {
            ConnectionEvent::Connected {
                connection_id,
                at_millis,
                edge_connection_id,
                observed,
            } => {
                let start = b.stamp(*at_millis);
                b.end_open(start, DisconnectReason::Takeover);
                b.spans.push(Span {
                    connection_id: connection_id.clone(),
                    edge_connection_id: edge_connection_id.clone(),
                    started_at_millis: Some(start),
                    ended_at_millis: None,
                    end_reason: None,
                    reported: !observed,
                    // The edge saw every connection it named, whichever message came first.
                    observed: *observed || edge_connection_id.is_some(),
                });
            }
            ConnectionEvent::Reported {
                reported_connection_id,
                edge_connection_id,
                ..
            } => b.reported(reported_connection_id, edge_connection_id, before_history),
            ConnectionEvent::Disconnected {
                connection_id,
                reason,
                at_millis,
                edge_connection_id,
            } => b.disconnected(
                (connection_id, edge_connection_id.as_deref()),
                (*reason, *at_millis),
                before_history,
            ),
        }
    }
    b.spans
}

impl Rebuild {
    /// The device's report: the open connection is known by the reported id from now on.
    fn reported(&mut self, reported_id: &str, edge: &str, before_history: bool) {
        if let Some(open) = self.open_mut() {
            reported_id.clone_into(&mut open.connection_id);
            open.edge_connection_id
                .get_or_insert_with(|| edge.to_string());
            open.reported = true;
        } else if before_history {
            self.spans.push(Span {
                connection_id: reported_id.to_string(),
                edge_connection_id: Some(edge.to_string()),
                started_at_millis: None,
                ended_at_millis: None,
                end_reason: None,
                reported: true,
                observed: true,
            });
        }
    }

    /// An end: of the open connection when it names it (by id or edge id), else of a
    /// connection that lasted no time, which took the open one over.
    fn disconnected(
        &mut self,
        (connection_id, edge): (&str, Option<&str>),
        (reason, at_millis): (DisconnectReason, i64),
        before_history: bool,
    ) {
        let end = self.stamp(at_millis);
        let names_open = self.open_mut().is_some_and(|open| {
            open.connection_id == connection_id
                || (edge.is_some() && open.edge_connection_id.as_deref() == edge)
        });
        if names_open {
            self.end_open(end, reason);
            return;
        }
        self.end_open(end, DisconnectReason::Takeover);
        self.spans.push(Span {
            connection_id: connection_id.to_string(),
            edge_connection_id: edge.map(str::to_string),
            started_at_millis: (!before_history).then_some(end),
            ended_at_millis: Some(end),
            end_reason: Some(reason),
            reported: false,
            observed: edge.is_some(),
        });
    }
}

/// The connections rebuilt so far, and the latest instant they reach.
struct Rebuild {
    spans: Vec<Span>,
    /// The last start or end placed: no later start or end may go before it.
    floor: i64,
}

impl Rebuild {
    /// `at`, clamped to the floor, which it then becomes.
    fn stamp(&mut self, at: i64) -> i64 {
        self.floor = at.max(self.floor);
        self.floor
    }

    /// The open connection: a new one is only pushed once the open one has ended, so it can
    /// only be the last.
    fn open_mut(&mut self) -> Option<&mut Span> {
        self.spans
            .last_mut()
            .filter(|s| s.ended_at_millis.is_none())
    }

    fn end_open(&mut self, at: i64, reason: DisconnectReason) {
        if let Some(open) = self.open_mut() {
            open.ended_at_millis = Some(at);
            open.end_reason = Some(reason);
        }
    }
}

/// The earliest instant the answers for this log are complete from: `None` when the log is
/// complete, else the stamp of the first retained event (also `None` when retention left no
/// event at all: there is no instant to name).
pub fn history_from(log: &ClientLog) -> Option<i64> {
    if log.complete {
        return None;
    }
    log.events.first().map(ConnectionEvent::at_millis)
}

/// A client's state at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PresenceAt {
    /// Whether a connection covered the instant.
    pub connected: bool,
    /// The connection covering it, else the last one that ended before it; `null` when no
    /// connection had started.
    pub connection_id: Option<String>,
    /// When that connection started (connected; `null` if before the retained history) or
    /// ended (offline).
    pub since_millis: Option<i64>,
    /// Why its last connection ended (when offline).
    #[schema(value_type = Option<String>)]
    pub end_reason: Option<DisconnectReason>,
    /// Whether the device reported that connection itself; `null` when there is none.
    pub reported: Option<bool>,
}

/// The client's state at `at`. A connection covers `[start, end)` (one of unknown start
/// counts as started for ever); a client none of whose connections had started by `at` is
/// offline with nothing known.
pub fn state_at(spans: &[Span], at: i64) -> PresenceAt {
    let started = spans
        .iter()
        .filter(|s| s.started_at_millis.is_none_or(|t| t <= at));
    let mut covering = None;
    let mut last_ended: Option<(&Span, i64)> = None;
    for s in started {
        match s.ended_at_millis {
            Some(end) if end <= at => {
                if last_ended.is_none_or(|(_, e)| end >= e) {
                    last_ended = Some((s, end));
                }
            }
            _ => covering = Some(s),
        }
    }
    if let Some(s) = covering {
        return PresenceAt {
            connected: true,
            connection_id: Some(s.connection_id.clone()),
            since_millis: s.started_at_millis,
            end_reason: None,
            reported: Some(s.reported),
        };
    }
    match last_ended {
        Some((s, end)) => PresenceAt {
            connected: false,
            connection_id: Some(s.connection_id.clone()),
            since_millis: Some(end),
            end_reason: s.end_reason,
            reported: Some(s.reported),
        },
        None => PresenceAt {
            connected: false,
            connection_id: None,
            since_millis: None,
            end_reason: None,
            reported: None,
        },
    }
}

/// A connection as a history answer shows it, for a window `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// The connection, as rebuilt from the log (its fields stand beside the ones below).
    #[serde(flatten)]
    pub connection: Span,
    /// Its whole length if it ended, else up to `now`; `null` when the start is unknown.
    pub duration_millis: Option<i64>,
    /// Time inside the window (an open connection counts up to `now`).
    pub in_window_millis: i64,
    /// Whether it is still open.
    pub open: bool,
}

/// Every connection overlapping `[from, to)`, in start order: started before `to` and
/// ended after `from` or still open; one that lasted no time counts if its instant is inside
/// the window. An open connection counts up to `min(to, now)`.
pub fn history(spans: &[Span], from: i64, to: i64, now: i64) -> Vec<HistoryEntry> {
    spans
        .iter()
        .filter(|s| overlaps(s, from, to))
        .map(|s| {
            let open = s.ended_at_millis.is_none();
            let until = if open { to.min(now) } else { to };
            let (a, b) = clip(s, from, until);
            let duration_millis = s.started_at_millis.map(|start| {
                s.ended_at_millis
                    .unwrap_or(now)
                    .saturating_sub(start)
                    .max(0)
            });
            HistoryEntry {
                connection: s.clone(),
                duration_millis,
                in_window_millis: b.saturating_sub(a),
                open,
            }
        })
        .collect()
}

/// Availability of one client in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Availability {
    /// Time connected inside the window, up to `now` (overlapping connections counted once).
    pub online_millis: i64,
    /// `online_millis` over the window's length up to `now`, in percent, rounded to 2
    /// decimals; 0 when none of the window has passed.
    pub online_percent: f64,
    /// Connections overlapping the window.
    pub connections: usize,
    /// Connections that started inside the window and ended in less than the flap threshold.
    pub flaps: usize,
}

/// Computes availability in `[from, to)`. The part of the window after `now` is not known
/// yet, so it counts neither as online nor in the percentage's denominator.
pub fn availability(
    spans: &[Span],
    from: i64,
    to: i64,
    now: i64,
    flap_threshold_millis: i64,
) -> Availability {
    let counted_to = to.min(now).max(from);
    let overlapping: Vec<&Span> = spans.iter().filter(|s| overlaps(s, from, to)).collect();
    let mut intervals: Vec<(i64, i64)> = overlapping
        .iter()
        .map(|s| clip(s, from, counted_to))
        .collect();
    intervals.sort_unstable();
    let mut online_millis: i64 = 0;
    let mut current: Option<(i64, i64)> = None;
    for (a, b) in intervals {
        current = match current {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                online_millis = online_millis.saturating_add(cb.saturating_sub(ca));
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((ca, cb)) = current {
        online_millis = online_millis.saturating_add(cb.saturating_sub(ca));
    }
    let counted = counted_to.saturating_sub(from);
    let online_percent = if counted == 0 {
        0.0
    } else {
        (online_millis as f64 / counted as f64 * 10_000.0).round() / 100.0
    };
    let flaps = overlapping
        .iter()
        .filter(|s| match (s.started_at_millis, s.ended_at_millis) {
            (Some(start), Some(end)) => {
                (from..to).contains(&start) && end.saturating_sub(start) < flap_threshold_millis
            }
            _ => false,
        })
        .count();
    Availability {
        online_millis,
        online_percent,
        connections: overlapping.len(),
        flaps,
    }
}

/// Whether `s` overlaps `[from, to)` (see [`history`]).
fn overlaps(s: &Span, from: i64, to: i64) -> bool {
    let starts_before_to = s.started_at_millis.is_none_or(|start| start < to);
    let reaches_from = match s.ended_at_millis {
        None => true,
        Some(end) => end > from || (end == from && s.started_at_millis == Some(end)),
    };
    starts_before_to && reaches_from
}

/// The part of `s` inside `[from, until)` as `(a, b)` with `a <= b`: an unknown start counts
/// from `from`, an open connection up to `until`.
fn clip(s: &Span, from: i64, until: i64) -> (i64, i64) {
    let a = s.started_at_millis.map_or(from, |start| start.max(from));
    let b = s.ended_at_millis.map_or(until, |end| end.min(until));
    (a, b.max(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use DisconnectReason::*;

    fn given(events: &[ConnectionEvent]) -> Vec<Span> {
        spans(&ClientLog {
            events,
            complete: true,
        })
    }

    /// A log whose older events retention removed.
    fn given_truncated(events: &[ConnectionEvent]) -> Vec<Span> {
        spans(&ClientLog {
            events,
            complete: false,
        })
    }

    /// A `connected` of a client the edge does not see (its own report).
    fn connected(id: &str, at: i64) -> ConnectionEvent {
        ConnectionEvent::Connected {
            connection_id: id.into(),
            at_millis: at,
            edge_connection_id: None,
            observed: false,
        }
    }

    /// The edge's observed start of `edge`.
    fn observed(id: &str, edge: &str, at: i64) -> ConnectionEvent {
        ConnectionEvent::Connected {
            connection_id: id.into(),
            at_millis: at,
            edge_connection_id: Some(edge.into()),
            observed: true,
        }
    }

    fn reported(id: &str, as_id: &str, edge: &str, at: i64) -> ConnectionEvent {
        ConnectionEvent::Reported {
            connection_id: id.into(),
            reported_connection_id: as_id.into(),
            at_millis: at,
            edge_connection_id: edge.into(),
        }
    }

    fn disconnected(
        id: &str,
        edge: Option<&str>,
        reason: DisconnectReason,
        at: i64,
    ) -> ConnectionEvent {
        ConnectionEvent::Disconnected {
            connection_id: id.into(),
            reason,
            at_millis: at,
            edge_connection_id: edge.map(Into::into),
        }
    }

    /// `(id, start, end, reason)` of one span.
    type Shape<'a> = (&'a str, Option<i64>, Option<i64>, Option<DisconnectReason>);

    fn shape(spans: &[Span]) -> Vec<Shape<'_>> {
        spans
            .iter()
            .map(|s| {
                (
                    s.connection_id.as_str(),
                    s.started_at_millis,
                    s.ended_at_millis,
                    s.end_reason,
                )
            })
            .collect()
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn an_empty_log_has_no_connections_and_the_client_is_offline_with_nothing_known() {
        let spans = given(&[]);
        assert!(spans.is_empty());
        assert_eq!(
            history_from(&ClientLog {
                events: &[],
                complete: true
            }),
            None
        );
        let at = state_at(&spans, 100);
        assert!(!at.connected);
        assert_eq!(
            (
                at.connection_id,
                at.since_millis,
                at.end_reason,
                at.reported
            ),
            (None, None, None, None)
        );
        assert!(history(&spans, 0, 100, 100).is_empty());
        let a = availability(&spans, 0, 100, 100, 10);
        assert_eq!(
            (a.online_millis, a.online_percent, a.connections, a.flaps),
            (0, 0.0, 0, 0)
        );
    }

    #[test]
    fn a_connection_open_across_the_windows_start_counts_from_the_windows_start() {
        let spans = given(&[connected("k1", 50), disconnected("k1", None, Lost, 150)]);
        let h = history(&spans, 100, 200, 1_000);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].in_window_millis, 50);
        assert_eq!(
            h[0].duration_millis,
            Some(100),
            "the whole length, not the window's part"
        );
        assert!(!h[0].open);
        assert_eq!(availability(&spans, 100, 200, 1_000, 0).online_millis, 50);
    }

    #[test]
    fn a_connection_open_across_the_windows_end_counts_up_to_the_windows_end() {
        let spans = given(&[connected("k1", 150), disconnected("k1", None, Clean, 250)]);
        let h = history(&spans, 100, 200, 1_000);
        assert_eq!(h[0].in_window_millis, 50);
        assert_eq!(h[0].duration_millis, Some(100));
        let a = availability(&spans, 100, 200, 1_000, 0);
        assert_eq!((a.online_millis, a.online_percent), (50, 50.0));
    }

    #[test]
    fn a_connection_still_open_counts_up_to_now_not_to_the_windows_end() {
        let spans = given(&[connected("k1", 120)]);
        let h = history(&spans, 100, 200, 150);
        assert!(h[0].open);
        assert_eq!(h[0].connection.ended_at_millis, None);
        assert_eq!(h[0].in_window_millis, 30);
        assert_eq!(h[0].duration_millis, Some(30));
        let a = availability(&spans, 100, 200, 150, 0);
        // 30 of the 50 milliseconds that have passed.
        assert_eq!((a.online_millis, a.online_percent), (30, 60.0));
    }

    #[test]
    fn a_takeover_ends_the_old_connection_at_the_new_ones_start() {
        // As the decider records it, and a `connected` while another is open.
        for log in [
            vec![
                connected("k1", 10),
                disconnected("k1", None, Takeover, 20),
                connected("k2", 20),
            ],
            vec![connected("k1", 10), connected("k2", 20)],
        ] {
            assert_eq!(
                shape(&given(&log)),
                [
                    ("k1", Some(10), Some(20), Some(Takeover)),
                    ("k2", Some(20), None, None)
                ]
            );
        }
    }

    #[test]
    fn a_report_renames_the_connection_to_the_reported_id_and_keeps_its_edge_id() {
        let spans = given(&[observed("e1", "e1", 10), reported("e1", "k1", "e1", 11)]);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].connection_id, "k1");
        assert_eq!(spans[0].edge_connection_id.as_deref(), Some("e1"));
        assert_eq!(spans[0].started_at_millis, Some(10));
        assert!(spans[0].reported && spans[0].observed);
    }

    #[test]
    fn a_connection_the_device_reported_before_the_edges_observation_arrived_is_both() {
        let reported_first = ConnectionEvent::Connected {
            connection_id: "k1".into(),
            at_millis: 10,
            edge_connection_id: Some("e1".into()),
            observed: false,
        };
        let spans = given(&[reported_first, reported("k1", "k1", "e1", 10)]);
        assert_eq!((spans[0].observed, spans[0].reported), (true, true));
    }

    #[test]
    fn an_observed_only_connection_is_observed_and_a_reported_only_one_is_reported() {
        let spans = given(&[
            observed("e1", "e1", 10),
            disconnected("e1", Some("e1"), KeepaliveTimeout, 20),
            connected("k2", 30),
        ]);
        assert_eq!((spans[0].observed, spans[0].reported), (true, false));
        assert_eq!((spans[1].observed, spans[1].reported), (false, true));
    }

    #[test]
    fn a_disconnected_naming_the_reported_id_ends_the_connection() {
        let spans = given(&[
            observed("e1", "e1", 10),
            reported("e1", "k1", "e1", 11),
            disconnected("k1", None, Clean, 20),
        ]);
        assert_eq!(shape(&spans), [("k1", Some(10), Some(20), Some(Clean))]);
    }

    #[test]
    fn a_disconnected_naming_the_edge_id_ends_the_connection_known_by_the_reported_id() {
        let spans = given(&[
            observed("e1", "e1", 10),
            reported("e1", "k1", "e1", 11),
            disconnected("e1", Some("e1"), Lost, 20),
        ]);
        assert_eq!(shape(&spans), [("k1", Some(10), Some(20), Some(Lost))]);
    }

    #[test]
    fn a_disconnected_of_another_connection_while_one_is_open_takes_it_over_and_lasts_no_time() {
        let spans = given(&[
            observed("k1", "e1", 10),
            disconnected("k2", Some("e2"), Lost, 30),
        ]);
        assert_eq!(
            shape(&spans),
            [
                ("k1", Some(10), Some(30), Some(Takeover)),
                ("k2", Some(30), Some(30), Some(Lost))
            ]
        );
    }

    #[test]
    fn a_disconnected_with_nothing_open_in_a_complete_log_is_a_connection_of_no_length() {
        let spans = given(&[disconnected("k1", None, Lost, 30)]);
        assert_eq!(shape(&spans), [("k1", Some(30), Some(30), Some(Lost))]);
        let h = history(&spans, 0, 100, 100);
        assert_eq!(
            (h.len(), h[0].in_window_millis, h[0].duration_millis),
            (1, 0, Some(0))
        );
        assert_eq!(availability(&spans, 0, 100, 100, 10).flaps, 1);
    }

    #[test]
    fn a_connection_of_no_length_at_the_windows_start_is_listed_and_one_at_its_end_is_not() {
        let spans = given(&[disconnected("k1", None, Lost, 100)]);
        assert_eq!(history(&spans, 100, 200, 1_000).len(), 1);
        assert!(history(&spans, 0, 100, 1_000).is_empty());
    }

    #[test]
    fn a_restarts_server_shutdown_end_is_followed_by_the_reconnect() {
        let spans = given(&[
            observed("K", "e1", 10),
            reported("K", "K", "e1", 11),
            disconnected("K", Some("e1"), ServerShutdown, 100),
            observed("K", "e2", 105),
        ]);
        assert_eq!(
            shape(&spans),
            [
                ("K", Some(10), Some(100), Some(ServerShutdown)),
                ("K", Some(105), None, None)
            ]
        );
        assert_eq!(spans[1].edge_connection_id.as_deref(), Some("e2"));
        let gap = state_at(&spans, 102);
        assert_eq!(
            (gap.connected, gap.end_reason),
            (false, Some(ServerShutdown))
        );
        assert!(state_at(&spans, 105).connected);
    }

    #[test]
    fn clock_stamps_going_backwards_are_clamped() {
        let spans = given(&[
            connected("k1", 100),
            // an end stamped before its start
            disconnected("k1", None, Lost, 90),
            // a start stamped before the previous end
            connected("k2", 80),
            disconnected("k2", None, Clean, 120),
        ]);
        assert_eq!(
            shape(&spans),
            [
                ("k1", Some(100), Some(100), Some(Lost)),
                ("k2", Some(100), Some(120), Some(Clean))
            ]
        );
    }

    #[test]
    fn a_truncated_log_starting_with_a_report_has_an_open_connection_of_unknown_start() {
        let events = [
            reported("e1", "k1", "e1", 500),
            disconnected("k1", Some("e1"), Lost, 900),
        ];
        let log = ClientLog {
            events: &events,
            complete: false,
        };
        let spans = spans(&log);
        assert_eq!(shape(&spans), [("k1", None, Some(900), Some(Lost))]);
        assert_eq!(spans[0].edge_connection_id.as_deref(), Some("e1"));
        assert!(spans[0].reported);
        assert_eq!(history_from(&log), Some(500));
        let h = history(&spans, 0, 1_000, 1_000);
        assert_eq!((h[0].duration_millis, h[0].in_window_millis), (None, 900));
        // Started for ever as far as the log says.
        let at = state_at(&spans, i64::MIN);
        assert_eq!((at.connected, at.since_millis), (true, None));
    }

    #[test]
    fn a_truncated_log_starting_with_a_disconnected_has_an_ended_connection_of_unknown_start() {
        let events = [disconnected("k1", None, Clean, 300), connected("k2", 400)];
        let spans = given_truncated(&events);
        assert_eq!(
            shape(&spans),
            [
                ("k1", None, Some(300), Some(Clean)),
                ("k2", Some(400), None, None)
            ]
        );
        assert_eq!(
            history_from(&ClientLog {
                events: &events,
                complete: false
            }),
            Some(300)
        );
        assert_eq!(
            history_from(&ClientLog {
                events: &events,
                complete: true
            }),
            None
        );
    }

    #[test]
    fn the_client_is_offline_with_nothing_known_before_its_first_connection() {
        let spans = given(&[connected("k1", 100)]);
        let at = state_at(&spans, 99);
        assert!(!at.connected);
        assert_eq!(
            (at.connection_id, at.end_reason, at.reported),
            (None, None, None)
        );
    }

    #[test]
    fn the_client_is_connected_exactly_at_a_connections_start() {
        let spans = given(&[connected("k1", 100)]);
        assert_eq!(
            state_at(&spans, 100),
            PresenceAt {
                connected: true,
                connection_id: Some("k1".into()),
                since_millis: Some(100),
                end_reason: None,
                reported: Some(true),
            }
        );
    }

    #[test]
    fn the_client_is_offline_exactly_at_a_connections_end() {
        let spans = given(&[connected("k1", 100), disconnected("k1", None, Lost, 200)]);
        assert!(state_at(&spans, 199).connected);
        let at = state_at(&spans, 200);
        assert!(!at.connected);
        assert_eq!((at.since_millis, at.end_reason), (Some(200), Some(Lost)));
    }

    #[test]
    fn between_connections_the_client_is_offline_with_the_last_ones_end_reason() {
        let spans = given(&[
            connected("k1", 100),
            disconnected("k1", None, Lost, 200),
            connected("k2", 300),
            disconnected("k2", None, KeepaliveTimeout, 400),
            connected("k3", 500),
        ]);
        assert_eq!(
            state_at(&spans, 450),
            PresenceAt {
                connected: false,
                connection_id: Some("k2".into()),
                since_millis: Some(400),
                end_reason: Some(KeepaliveTimeout),
                reported: Some(true),
            }
        );
    }

    #[test]
    fn flaps_are_ended_connections_started_inside_the_window_shorter_than_the_threshold() {
        let spans = given(&[
            connected("before", 50),
            disconnected("before", None, Lost, 105),
            connected("short", 110),
            disconnected("short", None, Lost, 119),
            connected("exactly", 120),
            disconnected("exactly", None, Lost, 130),
            connected("open", 190),
        ]);
        let a = availability(&spans, 100, 200, 1_000, 10);
        assert_eq!(a.connections, 4);
        assert_eq!(
            a.flaps, 1,
            "only `short`: `before` started outside, `exactly` reached it, `open` has not ended"
        );
    }

    #[test]
    fn a_window_entirely_after_now_counts_nothing() {
        let spans = given(&[
            connected("k1", 10),
            disconnected("k1", None, Lost, 20),
            connected("k2", 50),
        ]);
        let a = availability(&spans, 200, 300, 100, 10);
        assert_eq!((a.online_millis, a.online_percent, a.flaps), (0, 0.0, 0));
        // The open connection is open in it as far as the log says, with no time yet.
        assert_eq!(a.connections, 1);
        let h = history(&spans, 200, 300, 100);
        assert_eq!(
            (h.len(), h[0].in_window_millis, h[0].duration_millis),
            (1, 0, Some(50))
        );
    }

    #[test]
    fn the_online_percentage_is_rounded_to_two_decimals() {
        let spans = given(&[connected("k1", 0), disconnected("k1", None, Lost, 1)]);
        assert_eq!(availability(&spans, 0, 3, 100, 0).online_percent, 33.33);
        let spans = given(&[connected("k1", 0), disconnected("k1", None, Lost, 2)]);
        assert_eq!(availability(&spans, 0, 3, 100, 0).online_percent, 66.67);
    }

    #[test]
    fn overlapping_connections_are_counted_once() {
        // Rebuilt spans never overlap, but the answers do not rely on it.
        let span = |id: &str, start, end| Span {
            connection_id: id.into(),
            edge_connection_id: None,
            started_at_millis: Some(start),
            ended_at_millis: Some(end),
            end_reason: Some(Lost),
            reported: true,
            observed: false,
        };
        let spans = [span("a", 0, 60), span("b", 40, 80)];
        let a = availability(&spans, 0, 100, 100, 0);
        assert_eq!((a.online_millis, a.connections), (80, 2));
        assert!(state_at(&spans, 50).connected);
    }

    #[test]
    fn a_window_up_to_the_largest_time_saturates_instead_of_overflowing() {
        let spans = given_truncated(&[reported("e1", "k1", "e1", 5)]);
        let a = availability(&spans, i64::MIN, i64::MAX, i64::MAX, HOUR);
        assert_eq!((a.online_millis, a.online_percent), (i64::MAX, 100.0));
        let h = history(&spans, i64::MIN, i64::MAX, i64::MAX);
        assert_eq!(h[0].in_window_millis, i64::MAX);
    }

    #[test]
    fn the_end_reason_is_shown_by_its_wire_name() {
        let spans = given(&[
            connected("k1", 0),
            disconnected("k1", None, ServerShutdown, 10),
        ]);
        let json = serde_json::to_value(&history(&spans, 0, 100, 100)[0]).unwrap();
        assert_eq!(json["end_reason"], "server_shutdown");
    }
}
