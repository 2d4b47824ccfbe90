//! The retained baby-station announcements (`accounts/{account}/baby_stations/{client}`)
//! published after each committed start or end, and the followers of the baby-station list.

use rumqttc::QoS;
use tokio::sync::mpsc;

use super::Sessions;
use crate::domain::session::{ActiveSession, SessionEvent};
use crate::store::sessions;

/// The retained announcement topic of a baby station.
pub(crate) fn announcement_topic(account_id: &str, client_id: &str) -> String {
    format!("accounts/{account_id}/baby_stations/{client_id}")
}

/// The active session a `sessions` row holds (its announcement's content).
pub(crate) fn active_of(r: &sessions::Model) -> ActiveSession {
    ActiveSession::from(r)
}

/// The announcement payload of an active session (compact JSON).
pub fn announcement(s: &ActiveSession) -> Vec<u8> {
    s.to_json().to_string().into_bytes()
}

impl Sessions {
    /// Registers a follower of baby-station list changes: it gets `(account, new list)`
    /// after every committed start or end.
    pub(crate) fn follow_baby_stations(
        &self,
        tx: mpsc::UnboundedSender<(String, serde_json::Value)>,
    ) {
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tx);
    }

    async fn notify_baby_stations(&self, account_id: &str) {
        if self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
        {
            return;
        }
        let value = match self.baby_stations(account_id).await {
            Ok(list) => match serde_json::to_value(list) {
                Ok(value) => value,
                Err(error) => {
                    tracing::warn!(%error, account_id, "baby-station list not pushed");
                    return;
                }
            },
            Err(error) => {
                tracing::warn!(%error, account_id, "baby-station list not pushed");
                return;
            }
        };
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|tx| tx.send((account_id.to_string(), value.clone())).is_ok());
    }

    /// Publishes (retained) the announcement of each started session and withdraws the
    /// announcement of each ended one, unless its station hosts another active session;
    /// then tells the followers of the list.
    pub(super) async fn announce(&self, account_id: &str, events: &[SessionEvent]) {
        self.publish_announcements(account_id, events).await;
        self.notify_baby_stations(account_id).await;
    }

    async fn publish_announcements(&self, account_id: &str, events: &[SessionEvent]) {
        for event in events {
            let s = event.session();
            let topic = announcement_topic(account_id, &s.client_id);
            let payload = match event {
                SessionEvent::Started(s) => announcement(s),
                SessionEvent::Ended { .. } => {
                    if events.iter().any(
                        |e| matches!(e, SessionEvent::Started(n) if n.client_id == s.client_id),
                    ) {
                        continue;
                    }
                    match self
                        .store
                        .active_session_of_client(account_id, &s.client_id)
                        .await
                    {
                        Ok(Some(other)) => announcement(&other),
                        _ => Vec::new(),
                    }
                }
            };
            if let Err(error) = self
                .mqtt
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
            {
                tracing::error!(%error, "baby-station announcement not queued");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_is_the_sessions_fields_as_compact_json() {
        let s = ActiveSession {
            session_id: "s1".into(),
            client_id: "baby".into(),
            connection_id: "k1".into(),
            name: "Nursery \"A\"".into(),
            started_at_millis: 1_700_000_000_000,
        };
        // The bytes devices and the bridge have read since the first version: keys sorted.
        assert_eq!(
            String::from_utf8(announcement(&s)).unwrap(),
            r#"{"client_id":"baby","connection_id":"k1","name":"Nursery \"A\"","session_id":"s1","started_at_millis":1700000000000}"#
        );
    }
}
