//! The replicas that share an external broker, and the questions one asks all of them:
//! each replica announces itself with a retained message on `cradle/replicas/{bus client
//! id}` at every CONNACK of its bus, and its bus's Will (or its shutdown) clears it, so every
//! replica knows the others that run ([`Replicas::note_presence`]). A replica asked for
//! the live connections publishes a [`Query`] on [`QUERY_TOPIC`]; every replica answers on
//! the asker's own `cradle/replies/{id}` with its rows in [`Reply`] parts; the asker merges
//! what arrives within [`ANSWER_WITHIN`] and says which replicas did not answer. Queries and
//! replies travel at QoS 0: a replica that is away is not asked later.
//!
//! With the embedded broker there is one replica and nothing here is used.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Where every replica's queries go (every replica subscribes it, not shared).
pub const QUERY_TOPIC: &str = "cradle/query";
/// The replicas' presence topics.
pub const PRESENCE_FILTER: &str = "cradle/replicas/+";
/// How long an asker waits for the other replicas' answers.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Most rows in one [`Reply`] message (a row is about 400 bytes: far under the bus's
/// packet limit).
pub const ROWS_PER_REPLY: usize = 200;

/// The retained topic where `replica` announces itself.
pub fn presence_topic(replica: &str) -> String {
    format!("cradle/replicas/{replica}")
}

/// The topic where `replica` takes the answers to its queries.
pub fn reply_topic(replica: &str) -> String {
    format!("cradle/replies/{replica}")
}

/// A replica's question to all: its live connections of `account` (or all) after `after`,
/// at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    pub id: u64,
    /// The asking replica (answers go to its [`reply_topic`]).
    pub from: String,
    pub account: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
}

/// One part of a replica's answer: rows `R` (the live connections, `crate::control`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply<R> {
    /// The query's id.
    pub id: u64,
    /// The answering replica.
    pub replica: String,
    /// The last part of its answer.
    pub last: bool,
    pub connections: Vec<R>,
}

impl<R: Clone> Reply<R> {
    /// `replica`'s answer to `query`, in parts of at most [`ROWS_PER_REPLY`] rows (one part
    /// when there are none).
    pub fn parts(query: &Query, replica: &str, rows: Vec<R>) -> Vec<Reply<R>> {
        let mut parts: Vec<Reply<R>> = rows
            .chunks(ROWS_PER_REPLY)
            .map(|chunk| Reply {
                id: query.id,
                replica: replica.to_string(),
                last: false,
                connections: chunk.to_vec(),
            })
            .collect();
        if parts.is_empty() {
            parts.push(Reply {
                id: query.id,
                replica: replica.to_string(),
                last: false,
                connections: Vec::new(),
            });
        }
        if let Some(last) = parts.last_mut() {
            last.last = true;
        }
        parts
    }
}

/// What a message on one of the replicas' topics is.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<R> {
    /// A replica came (`Some(id)` payload) or went (empty payload).
    Presence {
        replica: String,
        present: bool,
    },
    Query(Query),
    Reply(Reply<R>),
    /// Not one of ours, or not readable: logged and dropped.
    Unreadable,
}

impl<R: DeserializeOwned> Message<R> {
    /// Reads a message of `topic`.
    pub fn parse(topic: &str, payload: &[u8]) -> Message<R> {
        if let Some(replica) = topic.strip_prefix("cradle/replicas/") {
            return Message::Presence {
                replica: replica.to_string(),
                present: !payload.is_empty(),
            };
        }
        let parsed = if topic == QUERY_TOPIC {
            serde_json::from_slice(payload).map(Message::Query)
        } else if topic.starts_with("cradle/replies/") {
            serde_json::from_slice(payload).map(Message::Reply)
        } else {
            return Message::Unreadable;
        };
        parsed.unwrap_or(Message::Unreadable)
    }
}

/// The replicas this one knows, and its queries waiting for answers (of rows `R`).
pub struct Replicas<R> {
    /// This replica's bus client id.
    me: String,
    /// The other replicas present.
    others: Mutex<BTreeSet<String>>,
    /// Queries waiting, by id.
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Reply<R>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<R> Replicas<R> {
    /// The replicas as `me` (its bus client id) sees them: none but itself yet.
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_string(),
            others: Mutex::new(BTreeSet::new()),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// This replica's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Notes that `replica` is present or gone.
    pub fn note_presence(&self, replica: &str, present: bool) {
        if replica == self.me {
            return;
        }
        let mut others = lock(&self.others);
        let changed = if present {
            others.insert(replica.to_string())
        } else {
            others.remove(replica)
        };
        if changed {
            tracing::info!(replica, present, replicas = others.len() + 1, "replica");
        }
    }

    /// The other replicas present.
    pub fn others(&self) -> BTreeSet<String> {
        lock(&self.others).clone()
    }

    /// Waits for the answers to a new query: its id and where they arrive.
    pub fn wait(&self) -> (u64, Waiting<'_, R>) {
        let id = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.waiting).insert(id, tx);
        (
            id,
            Waiting {
                replicas: self,
                id,
                rx,
            },
        )
    }

    /// Hands a part of an answer to the query waiting for it (one no longer waited for is
    /// dropped).
    pub fn answered(&self, reply: Reply<R>) {
        if let Some(tx) = lock(&self.waiting).get(&reply.id) {
            let _ = tx.send(reply);
        }
    }
}

/// A query's answers as they arrive; dropping it stops waiting.
pub struct Waiting<'a, R> {
    replicas: &'a Replicas<R>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Reply<R>>,
}

impl<R> Waiting<'_, R> {
    /// The rows of every replica of `asked` that answered in full within `within`, and the
    /// replicas that did not.
    pub async fn collect(
        mut self,
        mut asked: BTreeSet<String>,
        within: Duration,
    ) -> (Vec<R>, BTreeSet<String>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut partial: HashMap<String, Vec<R>> = HashMap::new();
        let mut rows = Vec::new();
        while !asked.is_empty() {
            let Ok(Some(reply)) = tokio::time::timeout_at(deadline, self.rx.recv()).await else {
                break;
            };
            if !asked.contains(&reply.replica) {
                continue;
            }
            let mut got = partial.remove(&reply.replica).unwrap_or_default();
            got.extend(reply.connections);
            if reply.last {
                asked.remove(&reply.replica);
                rows.append(&mut got);
            } else {
                partial.insert(reply.replica, got);
            }
        }
        (rows, asked)
    }
}

impl<R> Drop for Waiting<'_, R> {
    fn drop(&mut self) {
        lock(&self.replicas.waiting).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row as a replica lists it (the real rows are `crate::control::ConnectionView`).
    fn row(client: &str, replica: &str) -> (String, String) {
        (client.to_string(), replica.to_string())
    }

    fn query() -> Query {
        Query {
            id: 7,
            from: "a".into(),
            account: None,
            after: None,
            limit: 1000,
        }
    }

    #[test]
    fn given_no_rows_when_answering_then_one_last_empty_part() {
        let parts = Reply::<(String, String)>::parts(&query(), "b", Vec::new());
        assert_eq!(parts.len(), 1);
        assert!(parts[0].last && parts[0].connections.is_empty());
    }

    #[test]
    fn given_more_rows_than_a_part_holds_when_answering_then_parts_in_order_and_only_the_last_is_last(
    ) {
        let rows: Vec<_> = (0..450).map(|i| row(&format!("c{i:03}"), "b")).collect();
        let parts = Reply::parts(&query(), "b", rows.clone());
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts.iter().map(|p| p.last).collect::<Vec<_>>(),
            [false, false, true]
        );
        let back: Vec<_> = parts.into_iter().flat_map(|p| p.connections).collect();
        assert_eq!(back, rows);
    }

    #[test]
    fn given_each_topic_when_parsing_then_presence_queries_and_replies_are_told_apart() {
        type M = Message<(String, String)>;
        assert_eq!(
            M::parse("cradle/replicas/b", b"b"),
            Message::Presence {
                replica: "b".into(),
                present: true
            }
        );
        assert_eq!(
            M::parse("cradle/replicas/b", b""),
            Message::Presence {
                replica: "b".into(),
                present: false
            }
        );
        let q = query();
        assert_eq!(
            M::parse(QUERY_TOPIC, &serde_json::to_vec(&q).unwrap()),
            Message::Query(q)
        );
        assert_eq!(M::parse(QUERY_TOPIC, b"{"), Message::Unreadable);
        assert_eq!(M::parse("cradle/other", b"{}"), Message::Unreadable);
    }

    #[tokio::test]
    async fn given_two_replicas_asked_when_one_answers_in_parts_and_one_not_then_the_rows_and_the_silent_one(
    ) {
        let replicas = Replicas::<(String, String)>::new("a");
        replicas.note_presence("a", true);
        replicas.note_presence("b", true);
        replicas.note_presence("c", true);
        assert_eq!(replicas.others(), BTreeSet::from(["b".into(), "c".into()]));
        let (id, waiting) = replicas.wait();
        let rows: Vec<_> = (0..250).map(|i| row(&format!("c{i:03}"), "b")).collect();
        let q = Query { id, ..query() };
        for part in Reply::parts(&q, "b", rows.clone()) {
            replicas.answered(part);
        }
        let (got, silent) = waiting
            .collect(replicas.others(), Duration::from_millis(100))
            .await;
        assert_eq!(got, rows);
        assert_eq!(silent, BTreeSet::from(["c".to_string()]));
        // No longer waited for: a late answer is dropped.
        assert!(replicas.waiting.lock().unwrap().is_empty());
        replicas.note_presence("c", false);
        assert_eq!(replicas.others(), BTreeSet::from(["b".into()]));
    }
}
