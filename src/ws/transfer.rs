//! WebSocket sessions moving between replicas (several replicas on an external broker and
//! one PostgreSQL). A session lives in one replica's memory; it moves, through the store
//! (`ws_handover`), when
//! - a resume reaches a replica other than the one holding it ([`Bridge::transfer`]: a
//!   placeholder collects its frames, the holder is asked on
//!   `cradle/ws/transfer/{connection_id}` and hands it over, the placeholder becomes it);
//! - its replica shuts down ([`Bridge::offer_all`]: each session is offered on
//!   `cradle/ws/offer/{connection_id}` through a shared subscription and moved by the replica
//!   that gets the offer; what nobody takes waits in the store for a resume,
//!   [`Bridge::adopt`], or for its window to pass, [`Bridge::end_expired_handovers`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Publish, QoS};
use serde::Deserialize;
use tokio::time::Instant;

use super::hub::Hub;
use super::{close, end_unless_resumed, handover, new_resume_secret, Bridge};
use crate::domain::connection::DisconnectReason;
use crate::store::Store;

/// Topic prefix of the requests replicas send each other to move a WebSocket session:
/// `cradle/ws/transfer/{connection_id}`.
pub(crate) const TRANSFER_PREFIX: &str = "cradle/ws/transfer/";

/// How long a replica waits for the replica holding a session to hand it over.
const TRANSFER_WAIT: Duration = Duration::from_millis(1500);

/// A transfer request older than this (by the holder's clock) is not answered: its requester
/// gave up long ago. Generous, as replicas' clocks differ.
const STALE_REQUEST: Duration = Duration::from_secs(10);

/// Transfers one replica runs at once at most; a resume beyond that is answered `410`.
const MAX_TRANSFERS: usize = 256;

/// Topic prefix of a shutting-down replica's offers of its sessions to the others:
/// `cradle/ws/offer/{connection_id}`, subscribed through a shared subscription.
pub(crate) const OFFER_PREFIX: &str = "cradle/ws/offer/";

/// How long a shutting-down replica waits for the others to take its sessions.
const OFFER_WAIT: Duration = Duration::from_secs(3);

/// What entitles a replica to move a session: the resume's token credential or resume
/// secret, or the token of the holder's offer.
pub(crate) struct Proof<'a> {
    pub credential_id: Option<&'a str>,
    pub secret: Option<&'a str>,
    pub offer: Option<&'a str>,
}

/// A shutting-down replica's offer of one session.
#[derive(serde::Serialize, Deserialize)]
struct Offer {
    from: String,
    token: String,
    account_id: String,
    client_id: String,
}

/// A request to move a session here, with the resume's proof (the holder checks it).
#[derive(serde::Serialize, Deserialize)]
struct TransferRequest {
    /// The requesting bridge (it ignores its own request).
    from: String,
    /// When it was sent (Cradle's clock): a request older than `STALE_REQUEST` is stale.
    at_millis: i64,
    account_id: String,
    client_id: String,
    credential_id: Option<String>,
    secret: Option<String>,
    /// The offer's token, when the session was offered at its holder's shutdown.
    #[serde(default)]
    offer: Option<String>,
}

impl Bridge {
    /// Several replicas: claims the session `connection_id` another replica handed over at
    /// its shutdown, so that its PWA resumes here (detached, with its `seq`, replay buffer and
    /// what is left of its window), and subscribes what it needs. Whether it was claimed.
    pub(crate) async fn adopt(
        self: &Arc<Self>,
        store: &Store,
        connection_id: &str,
        account_id: &str,
        client_id: &str,
    ) -> bool {
        let Some(inbox) = &self.inbox else {
            return false;
        };
        match handover::claim(store, connection_id, account_id, client_id).await {
            Ok(Some((h, left))) => {
                // Subscribed before the session can take a socket: what is published to it
                // from now on reaches it.
                inbox.add(&h.account_id, &h.client_id).await;
                let session = self.restore(h);
                tracing::info!(account_id = %session.account_id, client_id = %session.client_id, connection_id = %session.connection_id, "WebSocket session taken over from a replica that shut down");
                end_unless_resumed(self.clone(), session, 1, left);
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, connection_id, "handed-over WebSocket session not claimed");
                false
            }
        }
    }

    /// Several replicas: ends (`lost`) the sessions replicas handed over at their shutdown
    /// that no PWA resumed within the window, publishing their end as for any session.
    pub(crate) async fn end_expired_handovers(self: &Arc<Self>, store: &Store) {
        match handover::claim_expired(store).await {
            Ok(expired) => {
                let Some(inbox) = &self.inbox else {
                    return;
                };
                for h in expired {
                    // Ending it releases what a session here holds; it was never subscribed.
                    inbox.add(&h.account_id, &h.client_id).await;
                    let session = self.restore(h);
                    tracing::info!(account_id = %session.account_id, client_id = %session.client_id, connection_id = %session.connection_id, "handed-over WebSocket session not resumed in its window: ended");
                    self.end(
                        &session.connection_id,
                        DisconnectReason::Lost,
                        close::NORMAL,
                    )
                    .await;
                }
            }
            Err(error) => tracing::warn!(%error, "expired WebSocket hand-overs not checked"),
        }
    }

    /// Several replicas: moves the session `connection_id`, held by another replica, here,
    /// for a resume that reached this replica. A placeholder collects the frames for it from
    /// the moment this replica's subscriptions for it are acknowledged; the request (with the
    /// resume's proof, which the holder checks) goes to every replica on
    /// `cradle/ws/transfer/{connection_id}`; the holder hands the session over through the
    /// store; this replica claims it and the placeholder becomes it, followed by what it
    /// collected that the holder had not sent ([`hub::merge_replay`]). Whether it arrived
    /// within `TRANSFER_WAIT`.
    pub(crate) async fn transfer(
        self: &Arc<Self>,
        store: &Store,
        connection_id: &str,
        account_id: &str,
        client_id: &str,
        proof: Proof<'_>,
    ) -> bool {
        let Some(inbox) = &self.inbox else {
            return false;
        };
        if proof.credential_id.is_none() && proof.secret.is_none() && proof.offer.is_none() {
            return false;
        }
        if self.transfers.fetch_add(1, Relaxed) >= MAX_TRANSFERS {
            self.transfers.fetch_sub(1, Relaxed);
            tracing::warn!(
                connection_id,
                "too many WebSocket transfers at once: refused"
            );
            return false;
        }
        let moved = self
            .move_here(inbox, store, connection_id, (account_id, client_id), proof)
            .await;
        self.transfers.fetch_sub(1, Relaxed);
        moved
    }

    /// [`Bridge::transfer`]'s work, one of at most `MAX_TRANSFERS`.
    async fn move_here(
        self: &Arc<Self>,
        inbox: &super::inbox::InboxSubscriptions,
        store: &Store,
        connection_id: &str,
        (account_id, client_id): (&str, &str),
        proof: Proof<'_>,
    ) -> bool {
        let Some(placeholder) = self.hub.placeholder(
            account_id,
            client_id,
            connection_id,
            self.settings.replay_frames,
        ) else {
            return false;
        };
        inbox.add(account_id, client_id).await;
        let request = TransferRequest {
            from: self.instance.clone(),
            at_millis: crate::clock::now_millis(),
            account_id: account_id.to_string(),
            client_id: client_id.to_string(),
            credential_id: proof.credential_id.map(str::to_string),
            secret: proof.secret.map(str::to_string),
            offer: proof.offer.map(str::to_string),
        };
        let topic = format!("{TRANSFER_PREFIX}{connection_id}");
        let body = serde_json::to_string(&request).unwrap_or_default();
        if let Err(error) = self
            .mqtt
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
        {
            tracing::warn!(%error, connection_id, "WebSocket transfer request not queued");
        }
        let deadline = Instant::now() + TRANSFER_WAIT;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let claimed = handover::claim(store, connection_id, account_id, client_id).await;
            let (h, left) = match claimed {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, connection_id, "WebSocket transfer not claimed");
                    break;
                }
            };
            if placeholder.take_over(h.clone(), new_resume_secret()) {
                self.metrics.live.fetch_add(1, Relaxed);
                tracing::info!(%account_id, %client_id, connection_id, "WebSocket session moved here from another replica");
                end_unless_resumed(self.clone(), placeholder, 1, left);
                return true;
            }
            // The placeholder went (this replica is shutting down): the session, out of the
            // store now, is kept here as any taken-back one, so it is not lost.
            self.hub.discard(&placeholder);
            let session = self.restore(h);
            end_unless_resumed(self.clone(), session, 1, left);
            return false;
        }
        self.hub.discard(&placeholder);
        inbox.remove(account_id, client_id);
        false
    }

    /// Several replicas: another replica asks for the session it names (a resume reached
    /// it). Held here and the proof holds: the session is handed over through the store,
    /// its socket (if any) closed with 4104, and nothing is published: it lives on there.
    pub(super) async fn on_transfer_request(&self, publish: &Publish) {
        let Some(connection_id) = publish.topic.strip_prefix(TRANSFER_PREFIX) else {
            return;
        };
        let (Some(store), Some(inbox)) = (&self.store, &self.inbox) else {
            return;
        };
        let Some(session) = self.hub.get(connection_id) else {
            return;
        };
        if session.is_placeholder() {
            return;
        }
        let Ok(request) = serde_json::from_slice::<TransferRequest>(&publish.payload) else {
            tracing::warn!(
                connection_id,
                "malformed WebSocket transfer request ignored"
            );
            return;
        };
        let age = crate::clock::now_millis() - request.at_millis;
        if request.from == self.instance || age > STALE_REQUEST.as_millis() as i64 {
            // Its own, or one whose requester has given up (it answered 410).
            return;
        }
        let offered = request.offer.is_some()
            && *self
                .offer_token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                == request.offer;
        let proven = session.account_id == request.account_id
            && session.client_id == request.client_id
            && (offered
                || session.may_resume(request.credential_id.as_deref(), request.secret.as_deref()));
        if !proven {
            tracing::warn!(
                connection_id,
                "WebSocket transfer request without the session's proof ignored"
            );
            return;
        }
        // Offered at this replica's shutdown: the PWA resumes wherever it lands (1012); asked
        // for by a resume: that resume took the session (4104).
        let code = if offered {
            close::SERVICE_RESTART
        } else {
            close::REPLACED
        };
        let Some(handed) = session.hand_over(code) else {
            return;
        };
        self.hub.close(connection_id, code);
        inbox.remove(&session.account_id, &session.client_id);
        self.metrics.live.fetch_sub(1, Relaxed);
        match handover::save(store, vec![handed], self.settings.resume_window).await {
            Ok(_) => {
                tracing::info!(account_id = %session.account_id, client_id = %session.client_id, connection_id, "WebSocket session handed to the replica its resume reached");
            }
            Err(error) => {
                tracing::error!(%error, connection_id, "WebSocket session not handed over: ended");
                self.publish_status(&session, Some(DisconnectReason::Lost))
                    .await;
            }
        }
    }

    /// Several replicas, at this replica's shutdown: offers every session to the others, on
    /// `cradle/ws/offer/{connection_id}` through a shared subscription this replica has just
    /// left, so that each goes to one other replica. That replica moves it as for a resume
    /// ([`Bridge::transfer`], with the offer's token as proof): it subscribes first, so no
    /// frame is lost in between. Waits until every session has moved or `OFFER_WAIT` has
    /// passed; the caller hands what is left over through the store.
    pub(crate) async fn offer_all(&self) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        self.closing.store(true, Relaxed);
        let held = |hub: &Hub| {
            hub.all()
                .into_iter()
                .filter(|s| !s.is_placeholder())
                .count()
        };
        if held(&self.hub) == 0 {
            return;
        }
        inbox.leave_offers().await;
        let token = new_resume_secret();
        *self
            .offer_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token.clone());
        let offered: Vec<_> = self
            .hub
            .all()
            .into_iter()
            .filter(|s| !s.is_placeholder())
            .collect();
        for s in &offered {
            let offer = Offer {
                from: self.instance.clone(),
                token: token.clone(),
                account_id: s.account_id.clone(),
                client_id: s.client_id.clone(),
            };
            let topic = format!("{OFFER_PREFIX}{}", s.connection_id);
            let body = serde_json::to_string(&offer).unwrap_or_default();
            if let Err(error) = self
                .mqtt
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
            {
                tracing::warn!(%error, connection_id = %s.connection_id, "WebSocket session offer not queued");
            }
        }
        let deadline = Instant::now() + OFFER_WAIT;
        while Instant::now() < deadline && held(&self.hub) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = held(&self.hub);
        tracing::info!(
            moved = offered.len().saturating_sub(left),
            left,
            "WebSocket sessions offered to the other replicas"
        );
    }

    /// Several replicas: another replica, shutting down, offers a session: moved here
    /// (in its own task: the move waits for the store).
    pub(super) fn on_offer(self: &Arc<Self>, publish: &Publish) {
        let (Some(store), Some(_)) = (&self.store, &self.inbox) else {
            return;
        };
        let Some(connection_id) = publish.topic.strip_prefix(OFFER_PREFIX) else {
            return;
        };
        let Ok(offer) = serde_json::from_slice::<Offer>(&publish.payload) else {
            tracing::warn!(connection_id, "malformed WebSocket session offer ignored");
            return;
        };
        if offer.from == self.instance || self.closing.load(Relaxed) {
            return;
        }
        let (bridge, store, id) = (self.clone(), store.clone(), connection_id.to_string());
        tokio::spawn(async move {
            let proof = Proof {
                credential_id: None,
                secret: None,
                offer: Some(&offer.token),
            };
            let (account, client) = (&offer.account_id, &offer.client_id);
            if !bridge.transfer(&store, &id, account, client, proof).await {
                tracing::warn!(connection_id = %id, "offered WebSocket session did not arrive");
            }
        });
    }
}
