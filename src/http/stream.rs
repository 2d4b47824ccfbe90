//! The live event stream as Server-Sent Events: `GET /v1/accounts/{account_id}/events/stream`
//! (one account's events) and `GET /v1/events/stream` (every account's, for operators and
//! administrators).
//!
//! A follower first gets every event after its position (`Last-Event-ID`, else `after`;
//! neither: only what commits from now on) read from the log, then `event: live`, then each
//! event as the replica's live feed (`crate::feed`) reads it, every one with `id:
//! {position}`, so a browser's `EventSource` resumes after a drop with no gap and no
//! duplicate. Every position is read up to the store's settled position only, so the order
//! holds on PostgreSQL with replicas committing at once. A follower that falls over
//! `stream.buffer_events` behind is sent `event: cut` (`lagged`) and the stream ends; so it
//! does at shutdown (`shutdown`). The stream leaves `http.max_connections`' count once it
//! starts; `stream.max_followers` bounds followers instead.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::auth::{AccountPath, Caller};
use super::error::ErrorBody;
use super::params::Params;
use super::{ApiError, AppState};
use crate::feed::{Cut, Feed, Follower, Joined};
use crate::store::{EventFilter, StoredEvent};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/accounts/{account_id}/events/stream",
            get(account_stream),
        )
        .route("/v1/events/stream", get(every_account_stream))
}

/// Events read from the log per query while catching up.
const PAGE: u64 = 500;

/// A stream's query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Start after this position (`Last-Event-ID` wins); absent: from now on.
    after: Option<String>,
    /// Only this client's connection events.
    client_id: Option<String>,
    /// Only events of these types, comma-separated.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// The bearer token, for a browser's `EventSource` (it cannot set headers); never logged.
    /// Read by [`TokenParam`]; named here so that it is not an unknown parameter.
    #[serde(rename = "token")]
    _token: Option<String>,
}

/// Takes the `token` query parameter as the bearer token when no `Authorization` header is
/// there; it must come before the extractors that authenticate.
struct TokenParam;

impl<S: Send + Sync> FromRequestParts<S> for TokenParam {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            return Ok(TokenParam);
        }
        let token = parts.uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        });
        if let Some(value) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            parts
                .headers
                .insert(axum::http::header::AUTHORIZATION, value);
        }
        Ok(TokenParam)
    }
}

#[utoipa::path(get, path = "/v1/accounts/{account_id}/events/stream", tag = "account", summary = "The account's events live, as Server-Sent Events: the backlog after a position, then each event as it commits (resume with Last-Event-ID).", params(("account_id" = String, Path), ("after" = Option<i64>, Query, description = "Start after this position; absent: only events from now on. The Last-Event-ID header wins."), ("client_id" = Option<String>, Query, description = "Only this client's connection events."), ("type" = Option<String>, Query, description = "Only events of these types, comma-separated."), ("token" = Option<String>, Query, description = "The bearer token, for an EventSource (which cannot send headers)."), ("Last-Event-ID" = Option<i64>, Header, description = "The last id received: resume after it.")), responses((status = 200, content_type = "text/event-stream", description = "`id: {position}` + `data: {event}` per event; `event: live` once the backlog is sent; `event: cut` (reason lagged or shutdown) before the server ends it; `: keep-alive` comments."), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody, description = "stream.max_followers reached (too_many_followers).")), security(("bearer" = [])))]
async fn account_stream(
    _token: TokenParam,
    State(state): State<AppState>,
    AccountPath(account_id): AccountPath,
    Params(q): Params<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let filter =
        super::api::event_filter(&account_id, q.client_id.as_deref(), q.event_type.as_deref())?;
    start(
        &state.feed,
        Some(account_id),
        filter,
        q.after.as_deref(),
        &headers,
    )
}

#[utoipa::path(get, path = "/v1/events/stream", tag = "operator", summary = "Every account's events live, as Server-Sent Events (operators and administrators); as the account stream.", params(("after" = Option<i64>, Query), ("type" = Option<String>, Query, description = "Only events of these types, comma-separated."), ("token" = Option<String>, Query), ("Last-Event-ID" = Option<i64>, Header)), responses((status = 200, content_type = "text/event-stream", description = "As the account stream; each event names its account_id."), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)), security(("bearer" = [])))]
async fn every_account_stream(
    _token: TokenParam,
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Caller::Account(own) = caller {
        return Err(ApiError::Refused {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: format!(
                "an account token follows its own account: /v1/accounts/{own}/events/stream"
            ),
            retry_after_secs: None,
        });
    }
    if q.client_id.is_some() {
        return Err(ApiError::InvalidParameter {
            field: "client_id",
            message:
                "names a client of one account: follow /v1/accounts/{account_id}/events/stream"
                    .to_string(),
        });
    }
    let filter = super::api::event_filter("", None, q.event_type.as_deref())?;
    start(&state.feed, None, filter, q.after.as_deref(), &headers)
}

/// Where the follower starts: `Last-Event-ID`, else `after`, else `None` (from now on).
fn start_after(after: Option<&str>, headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let parse = |field: &'static str, v: &str| {
        v.trim()
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or(ApiError::InvalidParameter {
                field,
                message: "a position: an integer of 0 or more".to_string(),
            })
    };
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or("-");
        return parse("Last-Event-ID", text).map(Some);
    }
    after.map(|a| parse("after", a)).transpose()
}

/// Starts a follower, or refuses it (`400`, `503 too_many_followers`).
fn start(
    feed: &Arc<Feed>,
    account_id: Option<String>,
    filter: EventFilter,
    after: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let after = start_after(after, headers)?;
    let follower = feed.follower().ok_or_else(|| ApiError::Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "too_many_followers",
        message: format!(
            "stream.max_followers ({}) reached on this replica: retry later",
            feed.settings().max_followers
        ),
        retry_after_secs: Some("1"),
    })?;
    let joined = feed.join();
    tracing::debug!(
        account_id = account_id.as_deref().unwrap_or("*"),
        after,
        horizon = joined.horizon,
        "stream follower joined"
    );
    let follow = Follow {
        feed: feed.clone(),
        after: after.unwrap_or(joined.horizon),
        horizon: joined.horizon,
        account_id,
        filter,
        backlog: VecDeque::new(),
        caught_up: false,
        done: false,
        joined,
        _follower: follower,
    };
    let events = futures_util::stream::unfold(follow, |mut f| async move {
        let event = f.next().await?;
        Some((Ok::<_, Infallible>(event), f))
    });
    let heartbeat = Duration::from_millis(feed.settings().heartbeat_ms);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("keep-alive"))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.extensions_mut().insert(super::serve::LeavesCount);
    Ok(response)
}

/// One follower's stream.
struct Follow {
    feed: Arc<Feed>,
    /// The last position sent or passed over.
    after: i64,
    /// The backlog is read from the log up to here; the broadcast brings what follows.
    horizon: i64,
    account_id: Option<String>,
    filter: EventFilter,
    backlog: VecDeque<StoredEvent>,
    caught_up: bool,
    done: bool,
    joined: Joined,
    _follower: Follower,
}

impl Follow {
    /// The next message, or `None` once the stream has ended.
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            if let Some(event) = self.backlog.pop_front() {
                let json = serde_json::to_string(&event).unwrap_or_default();
                return Some(self.send(event.position, json));
            }
            if !self.caught_up {
                if self.after >= self.horizon {
                    self.caught_up = true;
                    self.after = self.after.max(self.horizon);
                    let live = serde_json::json!({ "position": self.after });
                    return Some(Event::default().event("live").data(live.to_string()));
                }
                let filter = EventFilter {
                    upto: Some(self.horizon),
                    ..self.filter.clone()
                };
                let read = self
                    .feed
                    .store()
                    .log(self.account_id.as_deref(), self.after, PAGE, &filter)
                    .await;
                match read {
                    Ok(page) if page.is_empty() => self.after = self.horizon,
                    Ok(page) => self.backlog = page.into(),
                    Err(error) => {
                        tracing::warn!(%error, "stream follower: reading the log failed");
                        return Some(self.cut(None, "the store is unavailable: resume later"));
                    }
                }
                continue;
            }
            let Joined { events, closed, .. } = &mut self.joined;
            let received = tokio::select! {
                r = events.recv() => r,
                _ = closed.wait_for(|c| *c) => Err(RecvError::Closed),
            };
            match received {
                Ok(fed) => {
                    let position = fed.event.position;
                    if position <= self.after {
                        continue;
                    }
                    self.after = position;
                    if self.wanted(&fed.event) {
                        return Some(self.send(position, fed.json.clone()));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    let message = format!(
                        "fell {missed} events behind (stream.buffer_events): resume from the last id"
                    );
                    return Some(self.cut(Some(Cut::Lagged), &message));
                }
                Err(RecvError::Closed) => {
                    return Some(self.cut(Some(Cut::Shutdown), "Cradle is shutting down: resume from the last id on another replica or after the restart"));
                }
            }
        }
    }

    fn wanted(&self, event: &StoredEvent) -> bool {
        self.account_id
            .as_ref()
            .is_none_or(|a| *a == event.account_id)
            && self.filter.matches(event)
    }

    fn send(&mut self, position: i64, json: String) -> Event {
        self.after = self.after.max(position);
        self.feed
            .metrics
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Event::default().id(position.to_string()).data(json)
    }

    /// The last message: why the server ends the stream (`unavailable` when `cut` is None).
    fn cut(&mut self, cut: Option<Cut>, message: &str) -> Event {
        self.done = true;
        if let Some(cut) = cut {
            self.feed.metrics.cut.inc(cut);
        }
        let reason = cut.map_or("unavailable", Cut::as_str);
        tracing::debug!(reason, after = self.after, "stream follower cut");
        let data = serde_json::json!({ "reason": reason, "message": message });
        Event::default().event("cut").data(data.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StreamConfig;

    fn event(position: i64, account_id: &str) -> StoredEvent {
        StoredEvent {
            position,
            account_id: account_id.into(),
            stream: format!("connection/{account_id}/c"),
            stream_version: position,
            event_type: "connection.connected".into(),
            event_version: 1,
            at_millis: position,
            recorded_at_millis: position,
            data: serde_json::json!({}),
        }
    }

    async fn follower_of(feed: &Arc<Feed>, account: &str) -> Follow {
        let joined = feed.join();
        Follow {
            feed: feed.clone(),
            after: joined.horizon,
            horizon: joined.horizon,
            account_id: Some(account.into()),
            filter: EventFilter::default(),
            backlog: VecDeque::new(),
            caught_up: false,
            done: false,
            joined,
            _follower: feed.follower().unwrap(),
        }
    }

    /// The message's SSE text.
    fn text(e: Event) -> String {
        use axum::response::IntoResponse;
        let body = Sse::new(futures_util::stream::iter([Ok::<_, Infallible>(e)])).into_response();
        let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            body.into_body(),
            usize::MAX,
        ))
        .unwrap()
        .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn given_a_follower_that_fell_behind_the_buffer_when_it_reads_then_it_is_cut_as_lagged() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::temp_store(&dir).await;
        let settings = StreamConfig {
            buffer_events: 16,
            ..StreamConfig::default()
        };
        let feed = Feed::new(store, settings);
        let mut follow = follower_of(&feed, "a").await;
        assert!(text(follow.next().await.unwrap()).starts_with("event: live"));
        for p in 1..=20 {
            feed.broadcast(event(p, "a"));
        }
        let cut = text(follow.next().await.unwrap());
        assert!(cut.starts_with("event: cut"), "{cut}");
        assert!(cut.contains("\"reason\":\"lagged\""), "{cut}");
        assert!(
            follow.next().await.is_none(),
            "the stream ends after the cut"
        );
        assert_eq!(feed.metrics.cut.get(Cut::Lagged), 1);
    }

    #[tokio::test]
    async fn given_live_events_of_two_accounts_when_following_one_then_only_its_own_arrive_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::temp_store(&dir).await;
        let feed = Feed::new(store, StreamConfig::default());
        let mut follow = follower_of(&feed, "a").await;
        let live = text(follow.next().await.unwrap());
        assert!(live.starts_with("event: live"), "{live}");
        for (p, account) in [(1, "a"), (2, "b"), (3, "a"), (3, "a"), (2, "a"), (4, "a")] {
            feed.broadcast(event(p, account));
        }
        let mut ids = Vec::new();
        for _ in 0..3 {
            let t = text(follow.next().await.unwrap());
            ids.push(
                t.lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(
            ids,
            ["1", "3", "4"],
            "another account's, a repeat and an older one are skipped"
        );
    }

    #[tokio::test]
    async fn given_a_closing_feed_when_following_then_the_stream_is_cut_for_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::temp_store(&dir).await;
        let feed = Feed::new(store, StreamConfig::default());
        let mut follow = follower_of(&feed, "a").await;
        let live = text(follow.next().await.unwrap());
        assert!(live.starts_with("event: live"), "{live}");
        feed.close();
        let cut = text(follow.next().await.unwrap());
        assert!(cut.contains("\"reason\":\"shutdown\""), "{cut}");
    }
}
