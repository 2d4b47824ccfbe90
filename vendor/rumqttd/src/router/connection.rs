use slab::Slab;

use crate::protocol::LastWillProperties;
use crate::Filter;
use crate::{protocol::LastWill, Topic};
use std::collections::{HashMap, HashSet};

use super::ConnectionEvents;

/// Used to register a new connection with the router
/// Connection messages encompasses a handle for router to
/// communicate with this connection
#[derive(Debug)]
pub struct Connection {
    pub client_id: String,
    /// Id of client's organisation/tenant and the prefix associated with tenant's MQTT topic
    pub tenant_prefix: Option<String>,
    /// Dynamically create subscription filters incase they didn't exist during a publish
    pub dynamic_filters: bool,
    /// Clean session
    pub clean: bool,
    /// CRADLE PATCH 18: the MQTT 5 Session Expiry Interval in seconds (`None`: an MQTT 3.1.1
    /// connection, whose session outlives it when `clean` is false). The last one the client
    /// gave, at CONNECT or at DISCONNECT.
    pub session_expiry: Option<u32>,
    /// Subscriptions
    pub subscriptions: HashSet<Filter>,
    /// Last will of this connection
    pub last_will: Option<LastWill>,
    /// Properties of Last will
    pub last_will_properties: Option<LastWillProperties>,
    /// Connection events
    pub events: ConnectionEvents,
    /// Topic aliases set by clients
    pub(crate) topic_aliases: HashMap<u16, Topic>,
    /// Topic aliases used by broker
    pub(crate) broker_topic_aliases: Option<BrokerAliases>,
    /// subscription IDs for a connection
    pub(crate) subscription_ids: HashMap<Filter, usize>,
    /// CRADLE PATCH 21: a hash of the client id, stamped on what this client publishes so
    /// that a No Local subscription of the same client id skips it.
    pub(crate) client_hash: u64,
}

impl Connection {
    /// Create connection state to hold identifying information of connecting device
    pub fn new(
        tenant_id: Option<String>,
        client_id: String,
        clean: bool,
        dynamic_filters: bool,
    ) -> Connection {
        // Change client id to -> tenant_id.client_id and derive topic path prefix
        // to validate topics
        let (client_id, tenant_prefix) = match tenant_id {
            Some(tenant_id) => {
                let tenant_prefix = Some("/tenants/".to_owned() + &tenant_id + "/");
                let client_id = tenant_id + "." + &client_id;
                (client_id, tenant_prefix)
            }
            None => (client_id, None),
        };

        let client_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            client_id.hash(&mut h);
            h.finish().max(1)
        };
        Connection {
            client_hash,
            client_id,
            tenant_prefix,
            dynamic_filters,
            clean,
            session_expiry: None,
            subscriptions: HashSet::default(),
            last_will: None,
            last_will_properties: None,
            events: ConnectionEvents::default(),
            topic_aliases: HashMap::new(),
            broker_topic_aliases: None,
            subscription_ids: HashMap::new(),
        }
    }

    pub fn topic_alias_max(&mut self, max: u16) -> &mut Connection {
        // if topic_alias_max is 0, that means client doesn't want to use / support topic alias
        // CRADLE PATCH 24: the broker uses at most `SERVER_TOPIC_ALIASES` of them, so a
        // connection's alias table stays small whatever maximum the client allows.
        if max > 0 {
            self.broker_topic_aliases =
                Some(BrokerAliases::new(max.min(SERVER_TOPIC_ALIASES)));
        }
        self
    }

    /// CRADLE PATCH 18: whether the session outlives the connection (MQTT 3.1.1: clean
    /// session off; MQTT 5: a Session Expiry Interval above 0).
    pub fn persists(&self) -> bool {
        match self.session_expiry {
            None => !self.clean,
            Some(secs) => secs > 0,
        }
    }

    /// CRADLE PATCH 18: when a session saved now expires (`None`: never; MQTT 5's
    /// 0xFFFFFFFF, and MQTT 3.1.1 sessions).
    pub fn session_deadline(&self) -> Option<std::time::Instant> {
        match self.session_expiry {
            Some(secs) if secs != u32::MAX => {
                Some(std::time::Instant::now() + std::time::Duration::from_secs(u64::from(secs)))
            }
            _ => None,
        }
    }

    pub fn last_will(
        &mut self,
        will: Option<LastWill>,
        props: Option<LastWillProperties>,
    ) -> &mut Connection {
        self.last_will = will;
        self.last_will_properties = props;
        self
    }
}

/// CRADLE PATCH 24: server topic aliases per connection at most.
const SERVER_TOPIC_ALIASES: u16 = 64;

#[derive(Debug)]
pub(crate) struct BrokerAliases {
    /// CRADLE PATCH 24: keyed by topic.
    pub(crate) broker_topic_aliases: HashMap<String, u16>,
    pub(crate) used_aliases: Slab<()>,
    pub(crate) topic_alias_max: u16,
}

impl BrokerAliases {
    pub(crate) fn new(topic_alias_max: u16) -> BrokerAliases {
        let mut used_aliases = Slab::new();
        // occupy 0th index as 0 is invalid topic alias
        assert_eq!(0, used_aliases.insert(()));

        let broker_topic_aliases = HashMap::new();

        BrokerAliases {
            broker_topic_aliases,
            used_aliases,
            topic_alias_max,
        }
    }

    // Get alias used for the topic, if it exists
    pub fn get_alias(&self, topic: &str) -> Option<u16> {
        self.broker_topic_aliases.get(topic).copied()
    }

    // Set new alias for a topic and return the alias
    // returns None if can't set new alias
    pub fn set_new_alias(&mut self, topic: &str) -> Option<u16> {
        let alias_to_use = self.used_aliases.insert(());

        // NOTE: maybe we can use self.used_aliases.len()
        // to check for availability of alias
        if alias_to_use > self.topic_alias_max as usize {
            self.used_aliases.remove(alias_to_use);
            return None;
        }

        let alias_to_use = alias_to_use as u16;
        self.broker_topic_aliases
            .insert(topic.to_owned(), alias_to_use);
        Some(alias_to_use)
    }

    /// CRADLE PATCH 24: gives `forward` the alias of its topic: an alias already sent goes out
    /// with an empty topic, a new one (while any is free) with the topic that defines it.
    pub(crate) fn apply(&mut self, forward: &mut super::Forward) {
        let Ok(topic) = std::str::from_utf8(&forward.publish.topic) else {
            return;
        };
        let alias = match self.get_alias(topic) {
            Some(alias) => {
                forward.publish.topic.clear();
                alias
            }
            None => match self.set_new_alias(topic) {
                Some(alias) => alias,
                None => return,
            },
        };
        forward
            .properties
            .get_or_insert_with(Default::default)
            .topic_alias = Some(alias);
    }
}
