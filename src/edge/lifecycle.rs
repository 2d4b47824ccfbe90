//! How a connection's end becomes messages: a pure decision, given what the edge saw.
//!
//! The edge keeps the client's Will to itself (the broker never sees it) and follows the
//! client's own status reports. When the connection ends it decides here what to publish:
//!
//! - the Will, when the end was not a clean DISCONNECT (MQTT semantics); a Will that is a
//!   Cradle `disconnected` status is stamped with the reason the edge observed and the time
//!   of the end, so the event log records what happened, not what the device guessed at
//!   CONNECT;
//! - a `disconnected` status with the observed reason for the connection the client last
//!   reported as `connected`, unless the client reported the end itself or its Will already
//!   covers that connection.
//!
//! It also vouches for the start ([`observed_start`]): when it accepts a device's connection
//! it publishes a `connected` status of its own (`"observed": true`), so the connection is
//! recorded whether or not the device reports it. Every MQTT connection gets an id of the
//! edge's (`edge_connection_id`), stamped on that start, on the device's own reports on its
//! status topic ([`stamp_status`]) and on the end, so the status decider tells one
//! connection's messages from another's in whatever order they arrive.
//!
//! The status decider ignores an end for a connection that already ended, so a duplicate
//! can never record a second end; this module makes sure there is always a first one.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::auth::Principal;
use crate::domain::connection::DisconnectReason;
use crate::topics::{is_valid_id, parse_status_topic, status_topic, StatusKind, StatusPayload};

/// A new id of the edge's for one MQTT connection (`m-` and 16 hex digits).
pub(crate) fn new_edge_id() -> String {
    format!("m-{}", crate::ids::random_hex(8))
}

/// The status topic of the client on the other end, if the edge knows it: a device's own,
/// or in open mode the one its Will reports on.
fn own_status_topic(principal: &Principal, client_id: &str, will: Option<&Will>) -> Option<String> {
    match principal {
        Principal::Device {
            account_id,
            client_id,
        } => Some(status_topic(account_id, client_id)),
        Principal::Open => {
            let will = will?;
            let key = parse_status_topic(&will.topic).ok()?;
            (key.client_id == client_id).then(|| will.topic.clone())
        }
        Principal::Operator => None,
    }
}

/// The connection id a status Will on `topic` names, if it is one.
fn will_connection_id(will: &Will, topic: &str) -> Option<String> {
    if will.topic != topic {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&will.payload).ok()?;
    let id = value.get("connection_id")?.as_str()?;
    is_valid_id(id).then(|| id.to_string())
}

/// What the edge publishes when it accepts a connection (a retained QoS 1 `connected`
/// status, observed, under the Will's connection id or else the edge's), and what it then
/// follows as the connection's last report; `None` for a client without a status topic.
pub(crate) fn observed_start(
    principal: &Principal,
    client_id: &str,
    will: Option<&Will>,
    edge: &str,
    now_millis: i64,
) -> Option<(Publication, Reported)> {
    let topic = own_status_topic(principal, client_id, will)?;
    let connection_id = will
        .and_then(|w| will_connection_id(w, &topic))
        .unwrap_or_else(|| edge.to_string());
    let status = StatusPayload {
        kind: StatusKind::Connected,
        connection_id: connection_id.clone(),
        at_millis: now_millis,
        reason: None,
        edge_connection_id: Some(edge.to_string()),
        observed: true,
    };
    // Invariant: a StatusPayload is strings, an i64, a bool and a unit enum (derived
    // Serialize, no maps), which serde_json always serialises.
    let payload = serde_json::to_vec(&status).expect("status serialises");
    let publication = Publication {
        topic: topic.clone(),
        payload: Bytes::from(payload),
        qos: 1,
        retain: true,
        properties: None,
    };
    let reported = Reported {
        topic,
        connection_id,
        ended: false,
    };
    Some((publication, reported))
}

/// A status payload (a JSON object) with the edge's connection id set, whatever the device
/// wrote there; `None` for a payload that is not a JSON object (left to the status pipeline
/// to drop and count).
pub(crate) fn stamp_status(payload: &[u8], edge: &str) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let obj = value.as_object_mut()?;
    obj.insert("edge_connection_id".into(), edge.into());
    // Only the edge observes.
    obj.remove("observed");
    serde_json::to_vec(&value).ok()
}

/// A message to publish at the end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS (0, 1 or 2).
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 properties (a Will's), passed on untouched.
    pub properties: Option<Box<PublishProperties>>,
}

/// A Will as the client gave it at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Its MQTT 5 properties as a PUBLISH carries them (the Will Delay Interval aside).
    pub properties: Option<Box<PublishProperties>>,
    /// MQTT 5 Will Delay Interval, seconds (0: at once).
    pub(crate) delay_secs: u32,
}

/// The last connection the client reported on a status topic during this MQTT connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reported {
    /// The status topic.
    pub topic: String,
    /// The connection id of its last report.
    pub connection_id: String,
    /// Whether that last report was `disconnected` (the client reported the end itself).
    pub ended: bool,
}

/// Follows one status report the client published (already allowed by the ACL) about
/// itself: the topic's client id is the MQTT client id. Reports that do not parse are left
/// to the status pipeline to drop and count.
pub(crate) fn observe_status(
    reported: &mut Option<Reported>,
    client_id: &str,
    topic: &str,
    payload: &[u8],
) {
    match parse_status_topic(topic) {
        Ok(key) if key.client_id == client_id => {}
        _ => return,
    }
    let Ok(status) = serde_json::from_slice::<StatusPayload>(payload) else {
        return;
    };
    match status.kind {
        StatusKind::Connected => {
            *reported = Some(Reported {
                topic: topic.to_string(),
                connection_id: status.connection_id,
                ended: false,
            })
        }
        StatusKind::Disconnected => {
            if let Some(r) = reported {
                if r.topic == topic && r.connection_id == status.connection_id {
                    r.ended = true;
                }
            }
        }
    }
}

/// What to publish when a connection ends. `will_fires` is false after a clean DISCONNECT
/// (MQTT 3.1.1, or MQTT 5 with reason 0x00), true for every other end.
pub(crate) fn end_publications(
    will: Option<&Will>,
    will_fires: bool,
    (reported, edge): (Option<&Reported>, Option<&str>),
    reason: DisconnectReason,
    now_millis: i64,
) -> Vec<Publication> {
    let mut out = Vec::with_capacity(2);
    let mut covered = false;
    if let (Some(will), true) = (will, will_fires) {
        match stamped_status_will(will, reason, now_millis, edge) {
            Some((payload, connection_id)) => {
                covered = matches!(reported, Some(r) if r.topic == will.topic && r.connection_id == connection_id);
                out.push(Publication {
                    topic: will.topic.clone(),
                    payload,
                    qos: will.qos,
                    retain: will.retain,
                    properties: will.properties.clone(),
                });
            }
            None => out.push(Publication {
                topic: will.topic.clone(),
                payload: will.payload.clone(),
                qos: will.qos,
                retain: will.retain,
                properties: will.properties.clone(),
            }),
        }
    }
    if let Some(r) = reported {
        if !r.ended && !covered {
            let status = StatusPayload {
                kind: StatusKind::Disconnected,
                connection_id: r.connection_id.clone(),
                at_millis: now_millis,
                reason: Some(reason.as_str().to_string()),
                edge_connection_id: edge.map(str::to_string),
                observed: false,
            };
            // Invariant: a StatusPayload is strings, an i64 and a unit enum (derived
            // Serialize, no maps), which serde_json always serialises.
            out.push(Publication {
                topic: r.topic.clone(),
                payload: Bytes::from(serde_json::to_vec(&status).expect("status serialises")),
                qos: 1,
                retain: true,
                properties: None,
            });
        }
    }
    out
}

/// A Will that is a `disconnected` status on a status topic, with its reason and time set
/// to what the edge observed (other fields kept). Returns the payload and connection id.
fn stamped_status_will(
    will: &Will,
    reason: DisconnectReason,
    now_millis: i64,
    edge: Option<&str>,
) -> Option<(Bytes, String)> {
    parse_status_topic(&will.topic).ok()?;
    let mut value: serde_json::Value = serde_json::from_slice(&will.payload).ok()?;
    let obj = value.as_object_mut()?;
    if obj.get("type")?.as_str()? != "disconnected" {
        return None;
    }
    let connection_id = obj.get("connection_id")?.as_str()?.to_string();
    obj.insert("reason".into(), reason.as_str().into());
    obj.insert("at_millis".into(), now_millis.into());
    if let Some(edge) = edge {
        obj.insert("edge_connection_id".into(), edge.into());
    }
    Some((Bytes::from(serde_json::to_vec(&value).ok()?), connection_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "accounts/a/clients/c/status";

    fn status_will(connection_id: &str) -> Will {
        Will {
            topic: TOPIC.into(),
            payload: Bytes::from(format!(
                r#"{{"type":"disconnected","connection_id":"{connection_id}","at_millis":5,"reason":"lost"}}"#
            )),
            qos: 1,
            retain: true,
            properties: None,
            delay_secs: 0,
        }
    }

    fn reported(connection_id: &str) -> Option<Reported> {
        let mut r = None;
        observe_status(
            &mut r,
            "c",
            TOPIC,
            format!(r#"{{"type":"connected","connection_id":"{connection_id}","at_millis":1}}"#)
                .as_bytes(),
        );
        r
    }

    fn payload(p: &Publication) -> serde_json::Value {
        serde_json::from_slice(&p.payload).unwrap()
    }

    #[test]
    fn given_a_status_will_when_the_socket_is_lost_then_the_will_is_published_once() {
        let out = end_publications(
            Some(&status_will("k1")),
            true,
            (reported("k1").as_ref(), None),
            DisconnectReason::Lost,
            99,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(payload(&out[0])["reason"], "lost");
        assert_eq!(payload(&out[0])["at_millis"], 99);
        assert!(out[0].retain);
    }

    #[test]
    fn given_a_status_will_when_taken_over_then_the_will_carries_the_observed_reason() {
        let out = end_publications(
            Some(&status_will("k1")),
            true,
            (reported("k1").as_ref(), None),
            DisconnectReason::Takeover,
            99,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(payload(&out[0])["reason"], "takeover");
        assert_eq!(payload(&out[0])["connection_id"], "k1");
    }

    #[test]
    fn given_no_will_when_the_socket_is_lost_then_the_edge_reports_the_end() {
        let out = end_publications(
            None,
            true,
            (reported("k1").as_ref(), None),
            DisconnectReason::Lost,
            7,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, TOPIC);
        let p = payload(&out[0]);
        assert_eq!(p["type"], "disconnected");
        assert_eq!(p["connection_id"], "k1");
        assert_eq!(p["reason"], "lost");
        assert_eq!(p["at_millis"], 7);
    }

    #[test]
    fn given_a_will_when_the_client_disconnects_cleanly_then_only_a_clean_end_is_published() {
        let out = end_publications(
            Some(&status_will("k1")),
            false,
            (reported("k1").as_ref(), None),
            DisconnectReason::Clean,
            7,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(payload(&out[0])["reason"], "clean");
    }

    #[test]
    fn given_the_client_reported_its_end_when_it_disconnects_then_nothing_more_is_published() {
        let mut r = reported("k1");
        observe_status(
            &mut r,
            "c",
            TOPIC,
            br#"{"type":"disconnected","connection_id":"k1","at_millis":2,"reason":"clean"}"#,
        );
        let out = end_publications(None, false, (r.as_ref(), None), DisconnectReason::Clean, 7);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn given_a_will_for_another_connection_then_both_the_will_and_the_end_are_published() {
        let out = end_publications(
            Some(&status_will("old")),
            true,
            (reported("k2").as_ref(), None),
            DisconnectReason::KeepaliveTimeout,
            7,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(payload(&out[1])["connection_id"], "k2");
        assert_eq!(payload(&out[1])["reason"], "keepalive_timeout");
    }

    #[test]
    fn given_a_will_that_is_not_a_status_then_it_is_published_unchanged() {
        let will = Will {
            topic: "accounts/a/baby_stations/c".into(),
            payload: Bytes::from_static(b""),
            qos: 0,
            retain: true,
            properties: Some(Box::new(PublishProperties {
                content_type: Some("text/plain".into()),
                user_properties: vec![("k".into(), "v".into())],
                ..PublishProperties::default()
            })),
            delay_secs: 0,
        };
        let out = end_publications(Some(&will), true, (None, None), DisconnectReason::Kicked, 7);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, Bytes::from_static(b""));
        assert_eq!(out[0].properties, will.properties, "MQTT 5 properties kept");
    }

    #[test]
    fn given_nothing_reported_and_no_will_then_nothing_is_published() {
        assert!(end_publications(None, true, (None, None), DisconnectReason::Lost, 7).is_empty());
    }

    #[test]
    fn reports_on_other_topics_or_unparsable_ones_are_not_followed() {
        let mut r = None;
        observe_status(&mut r, "c", "accounts/a/baby_stations/c", b"{}");
        observe_status(&mut r, "c", TOPIC, b"not json");
        observe_status(
            &mut r,
            "other",
            TOPIC,
            br#"{"type":"connected","connection_id":"k","at_millis":1}"#,
        );
        assert_eq!(r, None);
    }

    #[test]
    fn given_a_device_with_a_status_will_when_accepted_then_the_observed_start_names_the_wills_connection(
    ) {
        let device = Principal::Device {
            account_id: "a".into(),
            client_id: "c".into(),
        };
        let (start, reported) =
            observed_start(&device, "c", Some(&status_will("k1")), "m-1", 42).unwrap();
        assert_eq!(start.topic, TOPIC);
        assert!(start.retain && start.qos == 1);
        let p = payload(&start);
        assert_eq!(p["type"], "connected");
        assert_eq!(p["connection_id"], "k1");
        assert_eq!(p["edge_connection_id"], "m-1");
        assert_eq!(p["observed"], true);
        assert_eq!(p["at_millis"], 42);
        assert_eq!(reported.connection_id, "k1");
        // Without a Will the edge's own id names it.
        let (start, _) = observed_start(&device, "c", None, "m-2", 42).unwrap();
        assert_eq!(payload(&start)["connection_id"], "m-2");
        // An operator has no status topic; in open mode the Will's topic is the client's.
        assert!(observed_start(&Principal::Operator, "op", None, "m-3", 1).is_none());
        assert!(observed_start(&Principal::Open, "c", None, "m-4", 1).is_none());
        let (open, _) =
            observed_start(&Principal::Open, "c", Some(&status_will("k9")), "m-5", 1).unwrap();
        assert_eq!(payload(&open)["connection_id"], "k9");
    }

    #[test]
    fn given_a_devices_report_when_stamped_then_the_edges_id_is_set_and_nothing_else_changes() {
        let stamped = stamp_status(
            br#"{"type":"connected","connection_id":"k1","at_millis":1,"fw":"2.1","edge_connection_id":"forged","observed":true}"#,
            "m-1",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&stamped).unwrap();
        assert_eq!(v["edge_connection_id"], "m-1");
        assert_eq!(v["fw"], "2.1");
        assert_eq!(v["connection_id"], "k1");
        assert!(v.get("observed").is_none(), "only the edge observes");
        assert_eq!(stamp_status(b"not json", "m-1"), None);
        assert_eq!(stamp_status(b"", "m-1"), None);
    }

    #[test]
    fn given_an_edge_id_when_the_connection_ends_then_its_will_and_end_status_carry_it() {
        let mut r = reported("k2");
        let out = end_publications(
            Some(&status_will("k1")),
            true,
            (r.as_ref(), Some("m-1")),
            DisconnectReason::Lost,
            99,
        );
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|p| payload(p)["edge_connection_id"] == "m-1"));
        r = None;
        let out = end_publications(
            None,
            true,
            (r.as_ref(), Some("m-1")),
            DisconnectReason::Lost,
            99,
        );
        assert!(out.is_empty());
    }
}
