//! Usage statistics, pure: how long an account's baby stations were monitored in a window,
//! from the sessions recorded (the store's `sessions` read model, as [`SessionSpan`]s).

use serde::Serialize;

/// A recorded session, as usage counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpan {
    /// The session.
    pub session_id: String,
    /// Its baby station.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// When it started (the starter's clock, Unix milliseconds).
    pub started_at_millis: i64,
    /// Whether it is still running.
    pub active: bool,
    /// When it ended, once it has.
    pub ended_at_millis: Option<i64>,
}

/// One session's share of a usage window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageSession {
    /// The session.
    pub session_id: String,
    /// Its baby station.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// When it started.
    pub started_at_millis: i64,
    /// When it ended; `null` while it runs.
    pub ended_at_millis: Option<i64>,
    /// Whether it is still running (counted up to `to`).
    pub open: bool,
    /// Time inside the window.
    pub duration_millis: i64,
}

/// Usage totals of one baby station.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageClient {
    /// The baby station.
    pub client_id: String,
    /// Sessions overlapping the window.
    pub sessions: usize,
    /// Time covered by at least one of its sessions (overlaps counted once).
    pub total_millis: i64,
}

/// Usage of an account in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Window start (inclusive), Unix milliseconds.
    pub from: i64,
    /// Window end (exclusive).
    pub to: i64,
    /// Every session overlapping the window, by start.
    pub sessions: Vec<UsageSession>,
    /// Per baby station.
    pub clients: Vec<UsageClient>,
    /// Sum of the clients' totals.
    pub total_millis: i64,
}

/// `sum + (b - a)`, saturating: a window up to `i64::MAX` (any caller's `to`) must not
/// overflow.
fn add_millis(sum: i64, b: i64, a: i64) -> i64 {
    sum.saturating_add(b.saturating_sub(a))
}

/// Computes usage in `[from, to)`: each session is clipped to the window (a running one
/// counts up to `to`); a station's total is the union of its sessions' intervals, so
/// overlapping sessions of one station are not counted twice.
pub fn usage(rows: &[SessionSpan], from: i64, to: i64) -> Usage {
    let mut sessions_out = Vec::new();
    let mut intervals: std::collections::BTreeMap<String, Vec<(i64, i64)>> = Default::default();
    for r in rows {
        let end = if r.active {
            to
        } else {
            r.ended_at_millis.unwrap_or(to)
        };
        let (a, b) = (r.started_at_millis.max(from), end.min(to));
        if r.started_at_millis >= to || end < from {
            continue;
        }
        let b = b.max(a);
        sessions_out.push(UsageSession {
            session_id: r.session_id.clone(),
            client_id: r.client_id.clone(),
            name: r.name.clone(),
            started_at_millis: r.started_at_millis,
            ended_at_millis: if r.active { None } else { r.ended_at_millis },
            open: r.active,
            duration_millis: b.saturating_sub(a),
        });
        intervals
            .entry(r.client_id.clone())
            .or_default()
            .push((a, b));
    }
    let mut clients = Vec::new();
    let mut total = 0;
    for (client_id, mut iv) in intervals {
        iv.sort_unstable();
        let count = iv.len();
        let mut sum = 0;
        let mut current: Option<(i64, i64)> = None;
        for (a, b) in iv {
            current = match current {
                Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    sum = add_millis(sum, cb, ca);
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        if let Some((ca, cb)) = current {
            sum = add_millis(sum, cb, ca);
        }
        total = i64::saturating_add(total, sum);
        clients.push(UsageClient {
            client_id,
            sessions: count,
            total_millis: sum,
        });
    }
    Usage {
        from,
        to,
        sessions: sessions_out,
        clients,
        total_millis: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, client: &str, start: i64, end: Option<i64>) -> SessionSpan {
        SessionSpan {
            session_id: id.into(),
            client_id: client.into(),
            name: "n".into(),
            started_at_millis: start,
            active: end.is_none(),
            ended_at_millis: end,
        }
    }

    #[test]
    fn a_window_up_to_the_largest_time_saturates_instead_of_overflowing() {
        let u = usage(
            &[row("s1", "b1", 1, None), row("s2", "b2", 1, None)],
            0,
            i64::MAX,
        );
        assert_eq!(u.total_millis, i64::MAX);
    }

    #[test]
    fn sessions_are_clipped_to_the_window_and_open_ones_count_up_to_its_end() {
        let u = usage(
            &[row("s1", "b1", 0, Some(150)), row("s2", "b2", 180, None)],
            100,
            200,
        );
        assert_eq!(u.sessions[0].duration_millis, 50);
        assert!(u.sessions[1].open);
        assert_eq!(u.sessions[1].duration_millis, 20);
        assert_eq!(u.total_millis, 70);
    }

    #[test]
    fn overlapping_sessions_of_one_station_are_counted_once() {
        let u = usage(
            &[
                row("s1", "b1", 100, Some(300)),
                row("s2", "b1", 200, Some(400)),
            ],
            0,
            1_000,
        );
        assert_eq!(u.clients.len(), 1);
        assert_eq!(u.clients[0].sessions, 2);
        assert_eq!(u.clients[0].total_millis, 300);
        assert_eq!(u.total_millis, 300);
        // each session still shows its own duration
        assert_eq!(
            u.sessions[0].duration_millis + u.sessions[1].duration_millis,
            400
        );
    }

    #[test]
    fn stations_are_totalled_separately() {
        let u = usage(
            &[row("s1", "b1", 0, Some(10)), row("s2", "b2", 0, Some(30))],
            0,
            100,
        );
        let totals: Vec<(String, i64)> = u
            .clients
            .iter()
            .map(|c| (c.client_id.clone(), c.total_millis))
            .collect();
        assert_eq!(totals, vec![("b1".into(), 10), ("b2".into(), 30)]);
        assert_eq!(u.total_millis, 40);
    }

    #[test]
    fn sessions_outside_the_window_are_left_out() {
        let u = usage(
            &[
                row("before", "b1", 0, Some(50)),
                row("after", "b1", 200, None),
                row("inside", "b1", 120, Some(130)),
            ],
            100,
            200,
        );
        let ids: Vec<&str> = u.sessions.iter().map(|s| s.session_id.as_str()).collect();
        assert_eq!(ids, vec!["inside"]);
        assert_eq!(u.total_millis, 10);
    }
}
