//! Which live connections a decision ends: revoking a credential, deleting an account and
//! disconnecting a client each name a [`Target`]; [`Target::matches`] is the rule, applied to
//! every live MQTT connection and WebSocket session by its [`Owner`]. The decision travels
//! between replicas as an [`EndCommand`] on [`CONTROL_TOPIC`] (`crate::control`).

use serde::{Deserialize, Serialize};

use super::connection::DisconnectReason;

/// The topic every replica subscribes (not shared) and Cradle's own publisher writes. Devices
/// cannot reach it: the edge lets them publish under `accounts/{their account}/…` only.
pub const CONTROL_TOPIC: &str = "cradle/control";

/// Which live connections an [`EndCommand`] ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Target {
    /// Every connection that authenticated with this credential.
    Credential { credential_id: String },
    /// Every connection of this account.
    Account { account_id: String },
    /// Every connection of this client of this account.
    Client {
        account_id: String,
        client_id: String,
    },
}

/// Who holds a live connection, as [`Target::matches`] compares it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// Its account (none for an operator or in open mode).
    pub account_id: Option<String>,
    /// Its client id within the account.
    pub client_id: String,
    /// The credential it authenticated with (none in open mode).
    pub credential_id: Option<String>,
    /// When it was accepted (Unix milliseconds).
    pub since_millis: i64,
}

impl Target {
    /// Whether the connection of `owner` is one this target ends.
    pub fn matches(&self, owner: &Owner) -> bool {
        match self {
            Target::Credential { credential_id } => {
                owner.credential_id.as_deref() == Some(credential_id)
            }
            Target::Account { account_id } => owner.account_id.as_deref() == Some(account_id),
            Target::Client {
                account_id,
                client_id,
            } => owner.account_id.as_deref() == Some(account_id) && owner.client_id == *client_id,
        }
    }
}

/// End every live connection of `target` accepted by `at_millis`, recording `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndCommand {
    /// Which connections.
    pub target: Target,
    /// Why (`revoked` or `admin_disconnect`).
    pub reason: DisconnectReason,
    /// When the decision was taken (Unix milliseconds): a connection accepted later (a
    /// kicked client that reconnected before the decision reached this replica) is not
    /// ended.
    pub at_millis: i64,
    /// The replica that took it (its bus client id), which ended its own connections then
    /// and skips the decision when the broker brings it back.
    pub origin: String,
    /// A client target is also banned until then (Unix milliseconds): every replica refuses
    /// its reconnects at once, before it reads the ban from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban_until_millis: Option<i64>,
}

impl EndCommand {
    /// Whether this decision ends the connection of `owner`.
    pub fn ends(&self, owner: &Owner) -> bool {
        owner.since_millis <= self.at_millis && self.target.matches(owner)
    }

    /// The payload published on [`CONTROL_TOPIC`].
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a payload of [`CONTROL_TOPIC`]; anything else is `None` (logged and dropped by
    /// the caller).
    pub fn parse(payload: &[u8]) -> Option<EndCommand> {
        serde_json::from_slice(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(account: Option<&str>, client: &str, credential: Option<&str>) -> Owner {
        Owner {
            account_id: account.map(str::to_string),
            client_id: client.to_string(),
            credential_id: credential.map(str::to_string),
            since_millis: 100,
        }
    }

    #[test]
    fn a_decision_spares_a_connection_accepted_after_it() {
        let command = |at_millis| EndCommand {
            target: Target::Client {
                account_id: "a".into(),
                client_id: "c".into(),
            },
            reason: DisconnectReason::AdminDisconnect,
            at_millis,
            origin: "r1".into(),
            ban_until_millis: None,
        };
        let before = owner(Some("a"), "c", None);
        assert!(command(100).ends(&before));
        assert!(!command(99).ends(&before));
    }

    #[test]
    fn a_credential_target_ends_only_connections_of_that_credential() {
        let t = Target::Credential {
            credential_id: "cr_1".into(),
        };
        assert!(t.matches(&owner(Some("a"), "c", Some("cr_1"))));
        assert!(!t.matches(&owner(Some("a"), "c", Some("cr_2"))));
        assert!(!t.matches(&owner(None, "c", None)));
    }

    #[test]
    fn a_client_target_ends_that_client_of_that_account_only() {
        let t = Target::Client {
            account_id: "a".into(),
            client_id: "c".into(),
        };
        assert!(t.matches(&owner(Some("a"), "c", Some("cr_1"))));
        assert!(!t.matches(&owner(Some("b"), "c", Some("cr_1"))));
        assert!(!t.matches(&owner(Some("a"), "d", Some("cr_1"))));
        let t = Target::Account {
            account_id: "a".into(),
        };
        assert!(t.matches(&owner(Some("a"), "d", None)));
        assert!(!t.matches(&owner(None, "d", None)));
    }

    #[test]
    fn a_command_round_trips_through_its_payload() {
        let c = EndCommand {
            target: Target::Client {
                account_id: "a".into(),
                client_id: "c".into(),
            },
            reason: DisconnectReason::AdminDisconnect,
            at_millis: 7,
            origin: "r1".into(),
            ban_until_millis: None,
        };
        let payload = c.to_payload();
        assert_eq!(
            String::from_utf8_lossy(&payload),
            r#"{"target":{"by":"client","account_id":"a","client_id":"c"},"reason":"admin_disconnect","at_millis":7,"origin":"r1"}"#
        );
        assert_eq!(EndCommand::parse(&payload), Some(c));
        assert_eq!(EndCommand::parse(b"{}"), None);
    }
}
