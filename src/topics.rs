//! The topic contract: topic names, the ids inside them, and the status payload.
//!
//! `topics.md` at the top of the repository is the human-readable authority; this module
//! is its executable form. Topic names and ids are parsed here into typed values or a
//! [`DropReason`] that the caller logs and counts; the status payload's meaning (a
//! connection command) is parsed by `domain::connection::parse_status_payload`. Plumbing:
//! this module imports nothing else of Cradle's.

use serde::{Deserialize, Serialize};

/// Longest account, client or connection id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Subscription filter of every client's status, in every account.
pub(crate) const STATUS_FILTER: &str = "accounts/+/clients/+/status";

/// Filter of every client's signalling inbox (the WebSocket bridge routes these).
pub(crate) const INBOX_FILTER: &str = "accounts/+/clients/+/webrtc_inbox";

/// Filter of baby-station announcements.
pub(crate) const BABY_STATIONS_FILTER: &str = "accounts/+/baby_stations/+";
/// Filter of parent-station announcements.
pub(crate) const PARENT_STATIONS_FILTER: &str = "accounts/+/parent_stations/+";

/// The families whose messages are durable on arrival: with the embedded broker, a device's
/// PUBACK for a QoS 1 message on them (PUBCOMP for QoS 2) leaves only once the bus has
/// acknowledged it, which its handler does once the effect is committed (rumqttd CRADLE
/// PATCH 27). The bus subscribes them exactly so.
pub(crate) const DURABLE_FILTERS: [&str; 3] =
    [STATUS_FILTER, BABY_STATIONS_FILTER, PARENT_STATIONS_FILTER];

/// Status filter of one account (`+` for every account).
pub(crate) fn status_filter(account: &str) -> String {
    format!("accounts/{account}/clients/+/status")
}

/// Status topic of one client.
pub fn status_topic(account_id: &str, client_id: &str) -> String {
    format!("accounts/{account_id}/clients/{client_id}/status")
}

/// Topic of a parent station's (retained) announcement.
pub(crate) fn parent_station_topic(account_id: &str, client_id: &str) -> String {
    format!("accounts/{account_id}/parent_stations/{client_id}")
}

/// Why an incoming message was dropped. Each reason is a `/metrics` label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The topic does not have the shape of the family it arrived on.
    InvalidTopic,
    /// An id in the topic is empty, too long or has a character outside the allowed set.
    InvalidId,
    /// The payload is larger than `sync.max_status_bytes`.
    Oversize,
    /// The payload is not JSON or not an object of the expected shape.
    MalformedJson,
    /// The `type` field names no known status.
    UnknownType,
    /// `at_millis` is missing, not an integer, or not positive.
    InvalidAtMillis,
    /// `connection_id` is missing or not a valid id.
    InvalidConnectionId,
    /// `reason` is not one of the documented disconnect reasons.
    InvalidReason,
}

impl DropReason {
    /// Every reason, in the order `/metrics` lists them.
    pub(crate) const ALL: [DropReason; 8] = [
        DropReason::InvalidTopic,
        DropReason::InvalidId,
        DropReason::Oversize,
        DropReason::MalformedJson,
        DropReason::UnknownType,
        DropReason::InvalidAtMillis,
        DropReason::InvalidConnectionId,
        DropReason::InvalidReason,
    ];

    /// Stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::InvalidTopic => "invalid_topic",
            DropReason::InvalidId => "invalid_id",
            DropReason::Oversize => "oversize",
            DropReason::MalformedJson => "malformed_json",
            DropReason::UnknownType => "unknown_type",
            DropReason::InvalidAtMillis => "invalid_at_millis",
            DropReason::InvalidConnectionId => "invalid_connection_id",
            DropReason::InvalidReason => "invalid_reason",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `id` may stand as one topic level: 1 to 128 characters from
/// `A-Z a-z 0-9 - _ . : @`. That excludes `/`, the wildcards `+` and `#`, `$`, whitespace
/// and control characters, so an id can never widen a subscription or change a topic's shape.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

/// One client of one account: the key of its connection stream and read-model row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientKey {
    /// The account (tenant) the client belongs to.
    pub account_id: String,
    /// The client's id inside its account.
    pub client_id: String,
}

/// Parses `accounts/{account_id}/clients/{client_id}/status`.
pub fn parse_status_topic(topic: &str) -> Result<ClientKey, DropReason> {
    let mut parts = topic.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("accounts"), Some(account), Some("clients"), Some(client), Some("status"), None) => {
            if is_valid_id(account) && is_valid_id(client) {
                Ok(ClientKey {
                    account_id: account.to_string(),
                    client_id: client.to_string(),
                })
            } else {
                Err(DropReason::InvalidId)
            }
        }
        _ => Err(DropReason::InvalidTopic),
    }
}

/// The families of per-client topics in the contract (topics.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `accounts/{account}/clients/{client}/status`
    Status,
    /// `accounts/{account}/clients/{client}/webrtc_inbox`
    Inbox,
    /// `accounts/{account}/baby_stations/{client}`
    BabyStation,
    /// `accounts/{account}/parent_stations/{client}`
    ParentStation,
}

/// A per-client topic of the contract, parsed: its family, account and client (both valid
/// ids, borrowed from the topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    /// Which family.
    pub family: Family,
    /// The account.
    pub account_id: &'a str,
    /// The client the topic is of (for an inbox: its recipient).
    pub client_id: &'a str,
}

/// Parses any per-client topic of the contract; `None` for any other shape or an invalid id.
/// The one parser of topic shapes: the ACL, the inbox checks and the bridge's routing ask it.
pub(crate) fn parse_topic(topic: &str) -> Option<Parsed<'_>> {
    let mut levels = topic.split('/');
    let (Some("accounts"), Some(account_id), Some(second), Some(third)) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return None;
    };
    let (family, client_id) = match (second, levels.next(), levels.next()) {
        ("clients", Some("status"), None) => (Family::Status, third),
        ("clients", Some("webrtc_inbox"), None) => (Family::Inbox, third),
        ("baby_stations", None, None) => (Family::BabyStation, third),
        ("parent_stations", None, None) => (Family::ParentStation, third),
        _ => return None,
    };
    (is_valid_id(account_id) && is_valid_id(client_id)).then_some(Parsed {
        family,
        account_id,
        client_id,
    })
}

/// Signalling inbox topic of one client.
pub(crate) fn inbox_topic(account_id: &str, client_id: &str) -> String {
    format!("accounts/{account_id}/clients/{client_id}/webrtc_inbox")
}

/// Baby-station announcement filter of one account.
pub(crate) fn baby_stations_filter(account_id: &str) -> String {
    format!("accounts/{account_id}/baby_stations/+")
}

/// The `type` of a status payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StatusKind {
    /// `connected`
    Connected,
    /// `disconnected`
    Disconnected,
}

/// The status payload as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StatusPayload {
    /// `connected` or `disconnected`.
    #[serde(rename = "type")]
    pub kind: StatusKind,
    /// Names one connection of the client; a reconnect uses a new one.
    pub connection_id: String,
    /// The observer's clock, Unix milliseconds.
    pub at_millis: i64,
    /// Only on `disconnected`: why the connection ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set by Cradle's edge: the MQTT connection the status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_connection_id: Option<String>,
    /// Set by Cradle's edge on its own `connected`: it observed the start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub observed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_charset() {
        assert!(is_valid_id("acct-1"));
        assert!(is_valid_id("baby_station.01:a@b"));
        assert!(is_valid_id(&"a".repeat(MAX_ID_LEN)));
    }

    #[test]
    fn ids_refuse_wildcards_slashes_and_oddities() {
        for bad in [
            "",
            "+",
            "#",
            "a/b",
            "a b",
            "$sys",
            "é",
            "a\n",
            &"a".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(!is_valid_id(bad), "{bad:?} must be refused");
        }
    }

    #[test]
    fn status_topic_round_trips() {
        let key = parse_status_topic(&status_topic("a1", "c1")).unwrap();
        assert_eq!(key.account_id, "a1");
        assert_eq!(key.client_id, "c1");
    }

    #[test]
    fn status_topic_of_another_shape_is_invalid() {
        for t in [
            "accounts/a/clients/c",
            "accounts/a/clients/c/status/x",
            "account/a/clients/c/status",
            "accounts/a/devices/c/status",
        ] {
            assert_eq!(parse_status_topic(t), Err(DropReason::InvalidTopic), "{t}");
        }
    }

    #[test]
    fn status_topic_with_a_bad_id_is_invalid_id() {
        assert_eq!(
            parse_status_topic("accounts/a b/clients/c/status"),
            Err(DropReason::InvalidId)
        );
        assert_eq!(
            parse_status_topic("accounts//clients/c/status"),
            Err(DropReason::InvalidId)
        );
    }

    #[test]
    fn every_family_parses_and_every_other_shape_is_none() {
        let parsed = |t: &str| {
            parse_topic(t).map(|p| (p.family, p.account_id.to_string(), p.client_id.to_string()))
        };
        let ac = |f| Some((f, "a".to_string(), "c".to_string()));
        assert_eq!(parsed("accounts/a/clients/c/status"), ac(Family::Status));
        assert_eq!(parsed(&inbox_topic("a", "c")), ac(Family::Inbox));
        assert_eq!(
            parsed("accounts/a/baby_stations/c"),
            ac(Family::BabyStation)
        );
        assert_eq!(
            parsed(&parent_station_topic("a", "c")),
            ac(Family::ParentStation)
        );
        for other in [
            "accounts/a/clients/c",
            "accounts/a/clients/c/status/x",
            "accounts/a/baby_stations/c/x",
            "accounts/a/clients/+/status",
            "accounts/a b/clients/c/status",
            "accounts/a/other/c",
            "cradle/ws/offer/x",
            "",
        ] {
            assert_eq!(parse_topic(other), None, "{other}");
        }
    }
}
