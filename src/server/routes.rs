//! The route table: which topic filters the bus subscribes, which handler each feeds, and
//! whether replicas share it; and the queues from the bus to the handlers.

use rumqttc::Publish;
use tokio::sync::mpsc;

use crate::bus::Route;
use crate::domain::control::CONTROL_TOPIC;
use crate::topics::STATUS_FILTER;

/// Which sync handler a bus subscription feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handler {
    /// `sync::status`: connection statuses into events and read models.
    Status,
    /// `sync::stations`: baby- and parent-station announcements into sessions.
    Stations,
    /// `ws`: inbox messages for WebSocket clients.
    Bridge,
    /// `control`: decisions that end live connections on every replica.
    Control,
}

/// One row of the route table: a topic filter, the handler its messages feed, and whether
/// replicas share it (`$share/{broker.share_group}/...`: each message to one replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteRow {
    /// The MQTT filter the bus subscribes with QoS 1.
    pub filter: String,
    /// The handler.
    pub handler: Handler,
    /// Shared among replicas.
    pub shared: bool,
}

/// The route table from topic filters to handlers. With the embedded broker the bus also
/// takes every inbox (one replica holds every WebSocket session); with an external broker
/// each replica subscribes its own sessions' inboxes (`ws::inbox`) instead, and the
/// replicas' presence, queries and the replies to `replica` (`crate::replicas`).
pub(crate) fn route_table(embedded: bool, replica: &str) -> Vec<RouteRow> {
    use crate::topics::{BABY_STATIONS_FILTER, INBOX_FILTER, PARENT_STATIONS_FILTER};
    let row = |filter: &str, handler, shared| RouteRow {
        filter: filter.to_string(),
        handler,
        shared,
    };
    let mut table = vec![
        row(STATUS_FILTER, Handler::Status, true),
        row(BABY_STATIONS_FILTER, Handler::Stations, true),
        row(PARENT_STATIONS_FILTER, Handler::Stations, true),
    ];
    if embedded {
        table.push(row(INBOX_FILTER, Handler::Bridge, false));
    }
    // Every replica applies every decision: never shared.
    table.push(row(CONTROL_TOPIC, Handler::Control, false));
    if !embedded {
        // Every replica answers every query and hears every replica come and go.
        table.push(row(crate::replicas::QUERY_TOPIC, Handler::Control, false));
        table.push(row(
            crate::replicas::PRESENCE_FILTER,
            Handler::Control,
            false,
        ));
        table.push(row(
            &crate::replicas::reply_topic(replica),
            Handler::Control,
            false,
        ));
    }
    table
}

/// The queues from the bus to the handlers, and their receiving ends.
pub(super) struct Queues {
    pub(super) status: (mpsc::Sender<Publish>, mpsc::Receiver<Publish>),
    pub(super) stations: (mpsc::Sender<Publish>, mpsc::Receiver<Publish>),
    pub(super) inbox: (mpsc::Sender<Publish>, mpsc::Receiver<Publish>),
    pub(super) control: (mpsc::Sender<Publish>, mpsc::Receiver<Publish>),
}

impl Queues {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            status: mpsc::channel(capacity),
            stations: mpsc::channel(capacity),
            inbox: mpsc::channel(capacity),
            control: mpsc::channel(capacity),
        }
    }

    /// The bus's routes: each row of `table` with its handler's queue.
    pub(super) fn routes(&self, table: &[RouteRow]) -> Vec<Route> {
        table
            .iter()
            .map(|row| Route {
                filter: row.filter.clone(),
                tx: match row.handler {
                    Handler::Status => self.status.0.clone(),
                    Handler::Stations => self.stations.0.clone(),
                    Handler::Bridge => self.inbox.0.clone(),
                    Handler::Control => self.control.0.clone(),
                },
                shared: row.shared,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_the_embedded_broker_when_routing_then_every_family_has_its_handler_and_inboxes_go_to_the_bridge(
    ) {
        let table = route_table(true, "r");
        let handler = |filter: &str| {
            table
                .iter()
                .find(|r| r.filter == filter)
                .map(|r| (r.handler, r.shared))
        };
        assert_eq!(handler(STATUS_FILTER), Some((Handler::Status, true)));
        assert_eq!(
            handler(crate::topics::BABY_STATIONS_FILTER),
            Some((Handler::Stations, true))
        );
        assert_eq!(
            handler(crate::topics::PARENT_STATIONS_FILTER),
            Some((Handler::Stations, true))
        );
        // One replica holds every WebSocket session: its inboxes are not shared.
        assert_eq!(
            handler(crate::topics::INBOX_FILTER),
            Some((Handler::Bridge, false))
        );
        assert_eq!(handler(CONTROL_TOPIC), Some((Handler::Control, false)));
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn given_an_external_broker_when_routing_then_inboxes_are_not_the_bus_s_and_only_decisions_reach_every_replica(
    ) {
        let table = route_table(false, "r");
        assert!(table
            .iter()
            .all(|r| r.shared == (r.handler != Handler::Control)));
        assert!(table.iter().all(|r| r.handler != Handler::Bridge));
        assert_eq!(table.len(), 7);
    }

    #[test]
    fn every_durable_filter_is_routed_so_its_pubacks_are_released() {
        for embedded in [true, false] {
            let table = route_table(embedded, "r");
            for filter in crate::topics::DURABLE_FILTERS {
                assert!(
                    table.iter().any(|r| r.filter == filter),
                    "{filter} (embedded: {embedded})"
                );
            }
        }
    }
}
