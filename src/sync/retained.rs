//! The broker's retained state, rebuilt from the store. The store is the source of truth; the
//! embedded broker keeps its retained messages in memory and starts empty, so before any
//! device is accepted Cradle publishes again what a late subscriber must find: each client's
//! last status (after a restart, the `disconnected`/`server_shutdown` just recorded for every
//! connection the previous process left open), the announcement of every station hosting an
//! active session, and every parent station's last announcement.

use std::collections::HashMap;

use crate::store::{clients, parent_stations, sessions, Store, StoreError};
use crate::sync::sessions::{active_of, announcement, announcement_topic};
use crate::topics::{parent_station_topic, status_topic, StatusKind, StatusPayload};

/// One retained message to publish (QoS 1, retained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// How many of each kind a snapshot holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub statuses: usize,
    pub baby_stations: usize,
    pub parent_stations: usize,
}

/// Clients read per page when their statuses are rebuilt.
pub(crate) const PAGE: u64 = 1000;

/// One page of clients' last statuses, after the client `after` (account, client) in key
/// order; with the key of its last client, to read the next page from.
pub(crate) async fn statuses_page(
    store: &Store,
    after: Option<&(String, String)>,
) -> Result<(Vec<Retained>, Option<(String, String)>), StoreError> {
    let key = after.map(|(a, c)| (a.as_str(), c.as_str()));
    let rows = store.clients_page(key, PAGE).await?;
    let last = rows
        .last()
        .map(|r| (r.account_id.clone(), r.client_id.clone()));
    Ok((retained_state(&rows, &[], &[]).0, last))
}

/// The announcements the broker should retain: active sessions' and parent stations'.
pub async fn announcements(store: &Store) -> Result<(Vec<Retained>, Counts), StoreError> {
    let active = store.active_sessions_by_start().await?;
    let parents = store.all_parent_stations().await?;
    Ok(retained_state(&[], &active, &parents))
}

/// The retained messages of a store's read models: pure, so what is rebuilt is tested
/// without a broker.
pub(crate) fn retained_state(
    clients: &[clients::Model],
    active_sessions: &[sessions::Model],
    parents: &[parent_stations::Model],
) -> (Vec<Retained>, Counts) {
    let mut out = Vec::with_capacity(clients.len() + active_sessions.len() + parents.len());
    out.extend(clients.iter().map(|c| Retained {
        topic: status_topic(&c.account_id, &c.client_id),
        payload: serde_json::to_vec(&last_status(c)).unwrap_or_default(),
    }));
    // A station hosting several active sessions announces the latest started.
    let mut stations: HashMap<(&str, &str), &sessions::Model> = HashMap::new();
    for s in active_sessions.iter().filter(|s| s.active) {
        let key = (s.account_id.as_str(), s.client_id.as_str());
        let latest = stations.entry(key).or_insert(s);
        if s.started_at_millis >= latest.started_at_millis {
            *latest = s;
        }
    }
    let mut stations: Vec<_> = stations.into_iter().collect();
    stations.sort_by(|a, b| a.0.cmp(&b.0));
    let baby_stations = stations.len();
    out.extend(stations.into_iter().map(|((account, client), s)| Retained {
        topic: announcement_topic(account, client),
        payload: announcement(&active_of(s)),
    }));
    out.extend(parents.iter().map(|p| Retained {
        topic: parent_station_topic(&p.account_id, &p.client_id),
        payload: p.announcement.clone().into_bytes(),
    }));
    let counts = Counts {
        statuses: clients.len(),
        baby_stations,
        parent_stations: parents.len(),
    };
    (out, counts)
}

/// A client's last status as the status topic carries it.
fn last_status(c: &clients::Model) -> StatusPayload {
    match (c.connected, c.disconnected_at_millis) {
        (false, Some(at)) => StatusPayload {
            kind: StatusKind::Disconnected,
            connection_id: c.connection_id.clone(),
            at_millis: at,
            reason: c.last_disconnect_reason.clone(),
            edge_connection_id: c.edge_connection_id.clone(),
            observed: false,
        },
        _ => StatusPayload {
            kind: StatusKind::Connected,
            connection_id: c.connection_id.clone(),
            at_millis: c.connected_at_millis,
            reason: None,
            edge_connection_id: c.edge_connection_id.clone(),
            observed: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, connected: bool) -> clients::Model {
        clients::Model {
            account_id: "a".into(),
            client_id: id.into(),
            connected,
            connection_id: format!("k-{id}"),
            connected_at_millis: 10,
            disconnected_at_millis: (!connected).then_some(20),
            last_disconnect_reason: (!connected).then(|| "server_shutdown".into()),
            stream_version: 2,
            updated_at_millis: 20,
            edge_connection_id: None,
        }
    }

    fn session(id: &str, station: &str, started: i64, active: bool) -> sessions::Model {
        sessions::Model {
            account_id: "a".into(),
            session_id: id.into(),
            client_id: station.into(),
            connection_id: format!("k-{station}"),
            name: format!("room {id}"),
            started_at_millis: started,
            active,
            ended_at_millis: None,
            end_reason: None,
            recorded_at_millis: started,
        }
    }

    fn json(r: &Retained) -> serde_json::Value {
        serde_json::from_slice(&r.payload).unwrap()
    }

    /// Given a client left disconnected by a shutdown, a station hosting two active sessions
    /// and a parent station, when the retained state is rebuilt, then the status is the
    /// recorded end, the station announces its latest session, and the parent station its
    /// announcement as stored.
    #[test]
    fn the_retained_state_follows_the_read_models() {
        let parent = parent_stations::Model {
            account_id: "a".into(),
            client_id: "p".into(),
            announcement: r#"{"name":"mum"}"#.into(),
            updated_at_millis: 5,
        };
        let (out, counts) = retained_state(
            &[client("b", false), client("c", true)],
            &[
                session("s1", "b", 100, true),
                session("s2", "b", 200, true),
                session("s0", "b", 300, false),
            ],
            &[parent],
        );
        assert_eq!(
            counts,
            Counts {
                statuses: 2,
                baby_stations: 1,
                parent_stations: 1
            }
        );
        assert_eq!(out[0].topic, "accounts/a/clients/b/status");
        assert_eq!(
            json(&out[0]),
            serde_json::json!({"type": "disconnected", "connection_id": "k-b", "at_millis": 20, "reason": "server_shutdown"})
        );
        assert_eq!(json(&out[1])["type"], "connected");
        assert_eq!(out[2].topic, "accounts/a/baby_stations/b");
        assert_eq!(json(&out[2])["session_id"], "s2");
        assert_eq!(out[3].topic, "accounts/a/parent_stations/p");
        assert_eq!(out[3].payload, br#"{"name":"mum"}"#);
    }
}
