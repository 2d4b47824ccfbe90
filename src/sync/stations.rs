//! The MQTT side of sessions: baby-station announcements (`accounts/+/baby_stations/+`) and
//! parent stations (`accounts/+/parent_stations/+`), consumed with QoS 1 and acknowledged on
//! every path: after the commit, or at once for a message that is dropped (logged, counted).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use rumqttc::Publish;
use tokio::sync::mpsc;

use super::metrics::{StationDrop, SyncMetrics};
use crate::bus::Acker;
use crate::domain::session::{Actor, EndReason, SessionRefused};
use crate::retry::Backoff;
use crate::store::StoreError;
use crate::sync::session_input::{parse_announcement, Announcement};
use crate::sync::sessions::{EndOutcome, Sessions, StartOutcome, StartRequest};
use crate::topics::is_valid_id;

/// Which family a station topic belongs to, and its account and client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StationTopic {
    /// `accounts/{account}/baby_stations/{client}`
    Baby {
        account_id: String,
        client_id: String,
    },
    /// `accounts/{account}/parent_stations/{client}`
    Parent {
        account_id: String,
        client_id: String,
    },
}

/// Parses a station topic.
pub(crate) fn parse_station_topic(topic: &str) -> Option<StationTopic> {
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        ["accounts", a, family, c] if is_valid_id(a) && is_valid_id(c) => {
            let (account_id, client_id) = (a.to_string(), c.to_string());
            match *family {
                "baby_stations" => Some(StationTopic::Baby {
                    account_id,
                    client_id,
                }),
                "parent_stations" => Some(StationTopic::Parent {
                    account_id,
                    client_id,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Settings of the station handler.
#[derive(Debug, Clone)]
pub struct StationSettings {
    /// Largest payload accepted, in bytes.
    pub(crate) max_payload_bytes: usize,
    /// Longest session name.
    pub(crate) max_name_chars: usize,
}

/// Runs until `rx` closes and is drained.
pub async fn run(
    mut rx: mpsc::Receiver<Publish>,
    sessions: Arc<Sessions>,
    acker: Acker,
    metrics: Arc<SyncMetrics>,
    settings: StationSettings,
) {
    while let Some(publish) = rx.recv().await {
        handle(&publish, &sessions, &metrics, &settings).await;
        acker.ack(&publish).await;
    }
    tracing::debug!("station handler drained");
}

/// Handles one station message: drops it (logged, counted) or records its effect, retrying
/// store failures until it is durable.
async fn handle(
    publish: &Publish,
    sessions: &Sessions,
    metrics: &SyncMetrics,
    settings: &StationSettings,
) {
    let message = Message {
        publish,
        sessions,
        metrics,
        settings,
    };
    let Some(topic) = parse_station_topic(&publish.topic) else {
        return message.drop(StationDrop::InvalidTopic, "");
    };
    if publish.payload.len() > settings.max_payload_bytes {
        return message.drop(StationDrop::Oversize, "");
    }
    match topic {
        StationTopic::Baby {
            account_id,
            client_id,
        } => message.baby_station(&account_id, &client_id).await,
        StationTopic::Parent {
            account_id,
            client_id,
        } => message.parent_station(&account_id, &client_id).await,
    }
}

/// One station message being handled, and what handling it needs.
struct Message<'a> {
    publish: &'a Publish,
    sessions: &'a Sessions,
    metrics: &'a SyncMetrics,
    settings: &'a StationSettings,
}

impl Message<'_> {
    /// Drops the message: counted by `reason` and logged with `detail`.
    fn drop(&self, reason: StationDrop, detail: &str) {
        self.metrics.station_drop(reason);
        tracing::warn!(topic = %self.publish.topic, reason = reason.as_str(), detail, "station message dropped");
    }

    /// A baby station's announcement: a session started or ended on its own behalf.
    async fn baby_station(&self, account_id: &str, client_id: &str) {
        self.metrics.baby_station_messages.fetch_add(1, Relaxed);
        if self.publish.payload.is_empty() {
            // An empty retained payload clears the topic (an erased account's); it announces
            // nothing.
            return;
        }
        let announcement =
            match parse_announcement(&self.publish.payload, self.settings.max_name_chars) {
                Ok(a) => a,
                Err(e) => return self.drop(StationDrop::InvalidPayload, &e.to_string()),
            };
        if let Announcement::Start(p) = &announcement {
            if p.client_id.as_ref().is_some_and(|c| *c != client_id) {
                return self.drop(
                    StationDrop::ClientMismatch,
                    "client_id differs from the topic's",
                );
            }
        }
        // The station acts only for itself: the decider refuses a start on another
        // client's connection and an end of another station's session.
        let by = Actor::Station(client_id.to_string());
        let mut pause = Backoff::store();
        // A store failure is retried until it succeeds: the message is acknowledged only
        // once its effect is durable (as on the status path).
        loop {
            let Some(result) = self
                .announce(&by, account_id, client_id, &announcement)
                .await
            else {
                return;
            };
            match result {
                Ok(Err(refused)) => {
                    let (reason, detail) = refusal(refused);
                    return self.drop(reason, detail);
                }
                Ok(Ok(outcome)) => {
                    tracing::debug!(%account_id, %client_id, outcome, "baby-station announcement");
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, %account_id, %client_id, retry_in_ms = pause.pause().as_millis() as u64, "baby-station announcement not recorded");
                    pause.wait().await;
                }
            }
        }
    }

    /// One attempt at recording `announcement` as the station `by`: the outcome (or the
    /// refusal) once the store answered; `None` for a withdrawn announcement (nothing to do).
    async fn announce(
        &self,
        by: &Actor,
        account_id: &str,
        client_id: &str,
        announcement: &Announcement,
    ) -> Option<Result<Result<String, SessionRefused>, StoreError>> {
        Some(match announcement {
            Announcement::Withdrawn => return None,
            Announcement::Start(p) => {
                let req = StartRequest {
                    session_id: p.session_id.clone(),
                    client_id: Some(client_id.to_string()),
                    connection_id: p.connection_id.clone(),
                    name: p.name.clone(),
                    started_at_millis: p.started_at_millis,
                };
                self.sessions
                    .start_as(by, account_id, req)
                    .await
                    .map(|o| match o {
                        StartOutcome::Refused(r) => Err(r),
                        o => Ok(format!("{o:?}")),
                    })
            }
            Announcement::End {
                session_id,
                ended_at_millis,
            } => self
                .sessions
                .end_as(
                    by,
                    account_id,
                    session_id,
                    *ended_at_millis,
                    EndReason::Explicit,
                )
                .await
                .map(|o| match o {
                    EndOutcome::Refused(r) => Err(r),
                    o => Ok(format!("{o:?}")),
                }),
        })
    }

    /// A parent station's retained description (a JSON object; empty: withdrawn), recorded
    /// with retries until the store takes it.
    async fn parent_station(&self, account_id: &str, client_id: &str) {
        self.metrics.parent_station_messages.fetch_add(1, Relaxed);
        let value = if self.publish.payload.is_empty() {
            None
        } else {
            match serde_json::from_slice::<serde_json::Value>(&self.publish.payload) {
                Ok(v) if v.is_object() => Some(v),
                _ => return self.drop(StationDrop::InvalidPayload, "not a JSON object"),
            }
        };
        let mut pause = Backoff::store();
        while let Err(error) = self
            .sessions
            .parent_station(account_id, client_id, value.as_ref())
            .await
        {
            tracing::error!(%error, %account_id, %client_id, retry_in_ms = pause.pause().as_millis() as u64, "parent station not recorded");
            pause.wait().await;
        }
    }
}

/// The drop reason and log detail of a station's refused start or end.
fn refusal(refused: SessionRefused) -> (StationDrop, &'static str) {
    match refused {
        SessionRefused::OtherStation => (
            StationDrop::ClientMismatch,
            "the start names another station as its host",
        ),
        SessionRefused::ForeignSession => (
            StationDrop::ClientMismatch,
            "the session belongs to another station",
        ),
        SessionRefused::ForeignConnection => (
            StationDrop::ForeignConnection,
            "connection_id is another client's connection",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn station_topics_name_family_account_and_client() {
        assert_eq!(
            parse_station_topic("accounts/a/baby_stations/c"),
            Some(StationTopic::Baby {
                account_id: "a".into(),
                client_id: "c".into()
            })
        );
        assert_eq!(
            parse_station_topic("accounts/a/parent_stations/p"),
            Some(StationTopic::Parent {
                account_id: "a".into(),
                client_id: "p".into()
            })
        );
        assert_eq!(parse_station_topic("accounts/a/other/c"), None);
        assert_eq!(parse_station_topic("accounts/a/baby_stations"), None);
        assert_eq!(parse_station_topic("accounts/a b/baby_stations/c"), None);
    }
}
