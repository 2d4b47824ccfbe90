//! Starts and ends: load the session's state, decide, append the events and project the
//! `sessions` rows in one transaction, then announce.

use std::sync::atomic::Ordering::Relaxed;

use super::{EndOutcome, Sessions, StartOutcome, StartRequest};
use crate::clock::now_millis;
use crate::domain::session::{
    decide_end, decide_start, ActiveSession, Actor, EndReason, Rejected, SessionEvent,
    SessionIgnored,
};
use crate::store::{NewEvent, StoreError, StoreTx};

use crate::domain::EVENT_VERSION;

fn stream_id(account_id: &str, session_id: &str) -> String {
    format!("session/{account_id}/{session_id}")
}

fn new_event(account_id: &str, event: &SessionEvent) -> NewEvent {
    let s = event.session();
    let (version, data, at) = match event {
        SessionEvent::Started(s) => (1, s.to_json(), s.started_at_millis),
        SessionEvent::Ended {
            session,
            ended_at_millis,
            duration_millis,
            reason,
        } => (
            2,
            serde_json::json!({
                "session_id": session.session_id, "client_id": session.client_id,
                "connection_id": session.connection_id,
                "started_at_millis": session.started_at_millis,
                "ended_at_millis": ended_at_millis, "duration_millis": duration_millis,
                "reason": reason.as_str(),
            }),
            *ended_at_millis,
        ),
    };
    NewEvent {
        account_id: account_id.to_string(),
        stream: stream_id(account_id, &s.session_id),
        stream_version: version,
        event_type: event.event_type(),
        event_version: EVENT_VERSION,
        data,
        at_millis: at,
        idempotency_key: format!(
            "{}/{}",
            stream_id(account_id, &s.session_id),
            event.event_type()
        ),
    }
}

impl Sessions {
    /// Starts a session for the account (resolving its client from the connection when not
    /// given).
    pub async fn start(
        &self,
        account_id: &str,
        req: StartRequest,
    ) -> Result<StartOutcome, StoreError> {
        self.start_as(&Actor::Account, account_id, req).await
    }

    /// Starts a session asked by `by` (a station may start only on its own connections).
    pub(crate) async fn start_as(
        &self,
        by: &Actor,
        account_id: &str,
        req: StartRequest,
    ) -> Result<StartOutcome, StoreError> {
        let client_id = match &req.client_id {
            Some(c) => c.clone(),
            None => match self
                .store
                .client_of_connection(account_id, &req.connection_id)
                .await?
            {
                Some(c) => c,
                None => return self.park(account_id, req).await,
            },
        };
        let start = ActiveSession {
            session_id: req.session_id.clone(),
            client_id,
            connection_id: req.connection_id.clone(),
            name: req.name.clone(),
            started_at_millis: req.started_at_millis,
        };
        for attempt in 0..3 {
            match self.try_start(by, account_id, &start).await {
                // Another writer got there first (or holds SQLite's write lock): wait a
                // little, as it may still be committing, then decide again.
                Err(e) if e.is_retryable() => {
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await
                }
                other => return other,
            }
        }
        self.try_start(by, account_id, &start).await
    }

    async fn try_start(
        &self,
        by: &Actor,
        account_id: &str,
        start: &ActiveSession,
    ) -> Result<StartOutcome, StoreError> {
        let txn = self.store.begin().await?;
        let state = txn.session_state(account_id, &start.session_id).await?;
        let on_connection = txn
            .active_on_connection(account_id, &start.connection_id, &start.session_id)
            .await?;
        // Whose connection it is matters only to a station's start. Connection ids are the
        // devices' own words, so two clients may claim one: the connection counts as another
        // client's when ANY other client has it as its current or last connection (a station
        // cannot make a connection its own by reporting another's id on its status topic).
        let owner = match by {
            Actor::Account => None,
            Actor::Station(station) => {
                let owners = txn
                    .clients_of_connection(account_id, &start.connection_id)
                    .await?;
                owners
                    .iter()
                    .find(|o| *o != station)
                    .or(owners.first())
                    .cloned()
            }
        };
        let events = match decide_start(by, start, &state, owner.as_deref(), on_connection.as_ref())
        {
            Ok(events) => events,
            Err(Rejected::Refused(refused)) => return Ok(StartOutcome::Refused(refused)),
            Err(Rejected::Ignored(ignored)) => {
                self.count_ignored(ignored);
                return Ok(match ignored {
                    SessionIgnored::StartAfterEnd => StartOutcome::AlreadyEnded,
                    _ => StartOutcome::AlreadyActive,
                });
            }
        };
        self.write(&txn, account_id, &events).await?;
        txn.commit().await?;
        self.announce(account_id, &events).await;
        Ok(StartOutcome::Started)
    }

    /// Ends a session for the account; a pending one is removed instead.
    pub async fn end(
        &self,
        account_id: &str,
        session_id: &str,
        at_millis: i64,
        reason: EndReason,
    ) -> Result<EndOutcome, StoreError> {
        self.end_as(&Actor::Account, account_id, session_id, at_millis, reason)
            .await
    }

    /// Ends a session asked by `by`: a station may end only its own sessions, and does not
    /// remove pending starts (they belong to no station until their connection appears).
    pub(crate) async fn end_as(
        &self,
        by: &Actor,
        account_id: &str,
        session_id: &str,
        at_millis: i64,
        reason: EndReason,
    ) -> Result<EndOutcome, StoreError> {
        for attempt in 0..4 {
            let txn = self.store.begin().await?;
            let state = txn.session_state(account_id, session_id).await?;
            let event = match decide_end(by, at_millis, reason, &state) {
                Ok(e) => e,
                Err(Rejected::Refused(refused)) => return Ok(EndOutcome::Refused(refused)),
                Err(Rejected::Ignored(SessionIgnored::UnknownSession)) => {
                    drop(txn);
                    let account = *by == Actor::Account;
                    return Ok(
                        if account && self.pending.remove(account_id, session_id).await? {
                            EndOutcome::PendingRemoved
                        } else {
                            self.count_ignored(SessionIgnored::UnknownSession);
                            EndOutcome::Unknown
                        },
                    );
                }
                Err(Rejected::Ignored(ignored)) => {
                    self.count_ignored(ignored);
                    return Ok(EndOutcome::AlreadyEnded);
                }
            };
            let events = [event];
            if let Err(e) = self.write(&txn, account_id, &events).await {
                if matches!(e, StoreError::Conflict(_)) && attempt < 3 {
                    continue;
                }
                return Err(e);
            }
            if let Err(e) = txn.commit().await {
                if matches!(e, StoreError::Conflict(_)) && attempt < 3 {
                    continue;
                }
                return Err(e);
            }
            self.announce(account_id, &events).await;
            return Ok(EndOutcome::Ended);
        }
        Ok(EndOutcome::AlreadyEnded)
    }

    /// Appends `events` and updates the read model, inside `txn`.
    async fn write(
        &self,
        txn: &StoreTx,
        account_id: &str,
        events: &[SessionEvent],
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let new: Vec<NewEvent> = events.iter().map(|e| new_event(account_id, e)).collect();
        txn.append(&new, now).await?;
        for event in events {
            match event {
                SessionEvent::Started(s) => {
                    txn.insert_session(account_id, s, now).await?;
                    self.metrics.sessions_started.fetch_add(1, Relaxed);
                }
                SessionEvent::Ended {
                    session,
                    ended_at_millis,
                    reason,
                    ..
                } => {
                    txn.end_session(account_id, &session.session_id, *ended_at_millis, *reason)
                        .await?;
                    self.metrics.sessions_ended.fetch_add(1, Relaxed);
                }
            }
        }
        Ok(())
    }

    fn count_ignored(&self, ignored: SessionIgnored) {
        self.metrics.session_ignored(ignored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored bytes of a `session.started`, as written since the first version: the
    /// session's fields, keys sorted.
    #[test]
    fn a_started_session_is_stored_as_before() {
        let started = SessionEvent::Started(ActiveSession {
            session_id: "s1".into(),
            client_id: "baby".into(),
            connection_id: "k1".into(),
            name: "Nursery".into(),
            started_at_millis: 5,
        });
        let e = new_event("acc", &started);
        assert_eq!(
            e.data.to_string(),
            r#"{"client_id":"baby","connection_id":"k1","name":"Nursery","session_id":"s1","started_at_millis":5}"#
        );
        assert_eq!((e.stream_version, e.at_millis), (1, 5));
    }
}
