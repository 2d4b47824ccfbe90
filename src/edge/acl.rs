//! Topic access control for authenticated MQTT clients: pure functions of the client's
//! identity and the topic or filter, so every rule has a plain test beside it.

use crate::topics::{is_valid_id, parse_topic, Family};

/// What kind of refused packet (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AclDrop {
    /// A PUBLISH to a topic the client may not publish to.
    Publish,
    /// One SUBSCRIBE filter the client may not use.
    Subscribe,
}

pub use crate::auth::Principal;

/// Whether `principal` may publish to `topic` (also checked for a Will's topic).
pub fn may_publish(principal: &Principal, topic: &str) -> bool {
    let (account_id, client_id) = match principal {
        Principal::Open => return true,
        Principal::Operator => return false,
        Principal::Device {
            account_id,
            client_id,
        } => (account_id, client_id),
    };
    match parse_topic(topic) {
        // Anywhere in its account, an inbox: signalling goes to any client of the account.
        Some(t) if t.family == Family::Inbox => t.account_id == account_id,
        // Its own status and announcements only.
        Some(t) => t.account_id == account_id && t.client_id == client_id,
        None => false,
    }
}

/// Whether a PUBLISH to `topic` may carry the retain flag: not where the topic contract says
/// its messages are never retained (`webrtc_inbox`: signalling is live, and a retained inbox
/// message per target would let a device fill the broker's memory). Applies to every
/// principal, open mode included.
pub(crate) fn may_retain(topic: &str) -> bool {
    !topic.ends_with("/webrtc_inbox")
}

/// Whether `principal` may subscribe to `filter`: only filters that cannot match a topic
/// outside `accounts/{its account}/` (for an operator: only the status wildcard family).
/// A shared subscription, `$share/{group}/{filter}`, is judged by its filter; the group
/// name is one non-empty level without wildcards. The broker keys the group by name and
/// filter (CRADLE PATCH 16), so a group name common to two accounts shares no cursor or turn.
pub fn may_subscribe(principal: &Principal, filter: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, inner)) if is_valid_share_name(group) => inner,
            _ => return false,
        },
        None => filter,
    };
    if !is_valid_filter(filter) {
        return false;
    }
    match principal {
        Principal::Open => true,
        Principal::Operator => {
            let levels: Vec<&str> = filter.split('/').collect();
            matches!(
                levels.as_slice(),
                ["accounts", a, "clients", c, "status"] if (*a == "+" || is_valid_id(a)) && (*c == "+" || is_valid_id(c))
            )
        }
        Principal::Device { account_id, .. } => {
            let mut levels = filter.split('/');
            levels.next() == Some("accounts")
                && levels.next() == Some(account_id.as_str())
                && levels.next().is_some()
        }
    }
}

fn is_valid_share_name(group: &str) -> bool {
    !group.is_empty() && !group.contains(['+', '#', '/'])
}

/// MQTT filter syntax: `#` only as the whole last level, `+` only as a whole level, no
/// empty filter, and no `$` topics (broker internals, shared subscriptions).
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.starts_with('$') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains('#') && !l.contains('+'),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(a: &str, c: &str) -> Principal {
        Principal::Device {
            account_id: a.into(),
            client_id: c.into(),
        }
    }

    #[test]
    fn a_device_publishes_its_own_status_and_stations() {
        let d = device("a", "c");
        assert!(may_publish(&d, "accounts/a/clients/c/status"));
        assert!(may_publish(&d, "accounts/a/baby_stations/c"));
        assert!(may_publish(&d, "accounts/a/parent_stations/c"));
    }

    #[test]
    fn a_device_may_not_speak_for_another_client() {
        let d = device("a", "c");
        assert!(!may_publish(&d, "accounts/a/clients/other/status"));
        assert!(!may_publish(&d, "accounts/a/baby_stations/other"));
    }

    #[test]
    fn a_device_signals_any_inbox_of_its_own_account_only() {
        let d = device("a", "c");
        assert!(may_publish(&d, "accounts/a/clients/other/webrtc_inbox"));
        assert!(!may_publish(&d, "accounts/b/clients/other/webrtc_inbox"));
        assert!(!may_publish(&d, "accounts/a/clients/bad id/webrtc_inbox"));
    }

    #[test]
    fn a_device_publishes_nothing_outside_the_contract() {
        let d = device("a", "c");
        for t in [
            "x",
            "accounts/a",
            "accounts/a/other",
            "accounts/b/clients/c/status",
            "$SYS/x",
        ] {
            assert!(!may_publish(&d, t), "{t}");
        }
    }

    #[test]
    fn a_shared_subscription_is_judged_by_its_filter() {
        let d = device("a", "c");
        assert!(may_subscribe(&d, "$share/g/accounts/a/#"));
        assert!(may_subscribe(
            &d,
            "$share/workers/accounts/a/clients/+/status"
        ));
        assert!(!may_subscribe(&d, "$share/g/accounts/b/#"));
        assert!(may_subscribe(
            &Principal::Operator,
            "$share/g/accounts/+/clients/+/status"
        ));
        assert!(!may_subscribe(
            &Principal::Operator,
            "$share/g/accounts/a/#"
        ));
        assert!(may_subscribe(&Principal::Open, "$share/g/x/y"));
        assert!(!may_subscribe(&Principal::Open, "$share/g/$SYS/#"));
    }

    #[test]
    fn a_device_subscribes_inside_its_account_only() {
        let d = device("a", "c");
        assert!(may_subscribe(&d, "accounts/a/clients/+/status"));
        assert!(may_subscribe(&d, "accounts/a/#"));
        assert!(may_subscribe(&d, "accounts/a/baby_stations/+"));
        for f in [
            "#",
            "+/a/#",
            "accounts/+/clients/+/status",
            "accounts/b/#",
            "accounts/#",
            "accounts/a",
            "$SYS/#",
            "$share/g/accounts/b/#",
            "$share/g/#",
            "$share//accounts/a/#",
            "$share/g+/accounts/a/#",
            "$share/g",
            "accounts/a/x#",
            "accounts/a/#/x",
            "",
        ] {
            assert!(!may_subscribe(&d, f), "{f}");
        }
    }

    #[test]
    fn an_operator_watches_status_of_every_account_and_publishes_nothing() {
        let o = Principal::Operator;
        assert!(may_subscribe(&o, "accounts/+/clients/+/status"));
        assert!(may_subscribe(&o, "accounts/a/clients/+/status"));
        assert!(!may_subscribe(&o, "accounts/+/clients/+/webrtc_inbox"));
        assert!(!may_subscribe(&o, "#"));
        assert!(!may_publish(&o, "accounts/a/clients/c/status"));
    }

    #[test]
    fn open_mode_checks_only_filter_syntax() {
        assert!(may_publish(&Principal::Open, "anything/at/all"));
        assert!(may_subscribe(&Principal::Open, "#"));
        assert!(!may_subscribe(&Principal::Open, "a/#/b"));
    }

    #[test]
    fn inbox_messages_are_never_retained_and_other_topics_may_be() {
        assert!(!may_retain("accounts/a/clients/c/webrtc_inbox"));
        assert!(may_retain("accounts/a/clients/c/status"));
        assert!(may_retain("accounts/a/baby_stations/c"));
        assert!(may_retain("anything/at/all"));
    }
}
