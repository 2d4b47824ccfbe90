//! One WebSocket of the bridge, from the upgrade to its end: a writer task drains the
//! session's queue into the socket; the session is opened (or resumed, its replay queued
//! first); a read loop takes the client's frames and sends the heartbeat; how the loop ended
//! decides whether the session ends or waits for a resume.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

use super::hub::{Hub, Outgoing, ResumeError, ResumeKey, WsSession};
use super::protocol::{close, parse_client_frame, ClientFrame, ServerFrame};
use super::{detach_and_wait, new_connection_id, Bridge, Resume, ResumeOutcome, WsSettings};
use crate::domain::connection::DisconnectReason;
use crate::rate::TokenBucket;
use crate::topics::inbox_topic;

/// How a socket's read loop ended.
enum SocketEnd {
    /// Close frame from the client.
    Clean,
    /// Dropped: resumable.
    Lost,
    /// A frame over `websocket.max_frame_bytes`: closed with 1009, resumable.
    TooBig,
    /// Silent past the heartbeat timeout: closed with 4103, resumable.
    HeartbeatTimeout,
    /// The socket failed under the writer: resumable, like a drop.
    WriterGone,
    /// A write timed out: the client does not read (slow consumer).
    SlowWriter,
    /// Too many refused frames.
    Abuse,
    /// The session ended elsewhere (resumed by another socket, shut down, slow consumer).
    Ended,
}

/// How the writer task ended: 0 = still writing, 1 = the socket failed or closed, 2 = a
/// write timed out (slow consumer).
type WriterState = watch::Receiver<u8>;

/// Runs one upgraded socket of `account_id`'s `client_id`: a new session, or `resume`.
pub(super) async fn run(
    socket: WebSocket,
    bridge: Arc<Bridge>,
    (account_id, client_id): (String, String),
    key: ResumeKey,
    resume: Option<Resume>,
    peer: Option<std::net::IpAddr>,
) {
    let settings = bridge.settings.clone();
    let (sink, mut stream) = socket.split();
    // A resumed socket's queue also holds the replay, queued before anything newer.
    let replay = if resume.is_some() {
        settings.replay_frames
    } else {
        0
    };
    let (tx, rx) = mpsc::channel::<Outgoing>(settings.send_queue.max(1) + replay);
    let (writer_done_tx, writer_done) = watch::channel(0u8);
    let writer = spawn_writer(sink, rx, settings.write_timeout, writer_done_tx);
    let attached = match &resume {
        None => Ok(open(&bridge, &account_id, &client_id, key, tx).await),
        Some((connection_id, from)) => resume_session(&bridge, connection_id, *from, tx).await,
    };
    let (session, generation) = match attached {
        Ok(attached) => attached,
        Err(refused) => {
            let _ = writer.await;
            await_close_reply(&mut stream).await;
            if let (Some((connection_id, _)), ResumeError::TooOld | ResumeError::Ahead) =
                (&resume, refused)
            {
                end_if_orphaned(&bridge, connection_id).await;
            }
            return;
        }
    };
    session.set_peer(peer);
    let mut reader = Reader {
        bridge: &bridge,
        session: &session,
        settings: &settings,
        bucket: TokenBucket::new(settings.signal_rate, settings.signal_burst),
        errors: 0,
        last_seen: Instant::now(),
    };
    let end = reader.run(&mut stream, writer_done).await;
    finish(&bridge, end, session, generation).await;
    let _ = writer.await;
    await_close_reply(&mut stream).await;
}

/// How long a socket stays open after Cradle's close frame for the client's answer.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// After the writer sent Cradle's close frame (or answered the client's): reads until the
/// client's close frame or the end of the socket, at most [`CLOSE_REPLY_WAIT`], so the close
/// handshake completes before the TCP connection closes (RFC 6455 7.1.1: the server closes
/// first) and a browser reports `wasClean` with Cradle's code. Frames read here are dropped:
/// the session has let go of the socket.
async fn await_close_reply(stream: &mut SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Writes the session's queue into the socket until a close, a failure or a write that
/// takes longer than `write_timeout`; says which in `done`. A close is `Outgoing::Close`'s
/// code with its documented reason; after the client's own close frame (which the WebSocket
/// library already answered by queueing its echo) the send is refused and closing the sink
/// flushes that echo, so the client's close is answered either way.
fn spawn_writer(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    write_timeout: Duration,
    done: watch::Sender<u8>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // A queue dropped without a close (the session let go of the socket) closes
            // normally.
            let out = rx.recv().await.unwrap_or(Outgoing::Close(close::NORMAL));
            let msg = match out {
                Outgoing::Text(t) => Message::Text(t.as_ref().into()),
                Outgoing::Ping => Message::Ping(Default::default()),
                Outgoing::Close(code) => {
                    let frame = Message::Close(Some(CloseFrame {
                        code,
                        reason: close::reason(code).into(),
                    }));
                    let _ = tokio::time::timeout(write_timeout, async {
                        let _ = sink.send(frame).await;
                        sink.close().await
                    })
                    .await;
                    break;
                }
            };
            match tokio::time::timeout(write_timeout, sink.send(msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // Refused after the client's close frame (or the socket failed):
                    // closing flushes the echo of the client's close, if one is queued.
                    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
                    let _ = done.send(1);
                    return;
                }
                Err(_) => {
                    let _ = done.send(2);
                    return;
                }
            }
        }
        let _ = done.send(1);
    })
}

/// Opens a new session: its inbox subscribed first (with several replicas: what is published
/// to it after `hello` reaches the client), then `hello` as its first frame, queued before the
/// session is registered in the hub (so no presence, list or inbox frame can precede it), then
/// its `connected` status published.
async fn open(
    bridge: &Arc<Bridge>,
    account_id: &str,
    client_id: &str,
    key: ResumeKey,
    tx: mpsc::Sender<Outgoing>,
) -> (Arc<WsSession>, u64) {
    let settings = &bridge.settings;
    let connection_id = new_connection_id();
    if let Some(inbox) = &bridge.inbox {
        inbox.add(account_id, client_id).await;
    }
    let a = Hub::prepare(
        account_id,
        client_id,
        &connection_id,
        key,
        settings.replay_frames,
        tx,
    );
    // The queue is empty: the first frame always fits.
    let _ = a.session.send(&hello(&a.session, false, settings));
    bridge.hub.add(&a.session);
    bridge.metrics.opened.fetch_add(1, Relaxed);
    bridge.metrics.live.fetch_add(1, Relaxed);
    bridge.publish_status(&a.session, None).await;
    tracing::info!(%account_id, %client_id, %connection_id, "WebSocket session opened");
    (a.session, a.generation)
}

/// Attaches the socket to session `connection_id` from `seq` `from`: the socket it
/// replaces is closed `4102`, the replay was queued by the hub, then `hello` (resumed).
/// Refused when the session expired (`4100`) or `from` is outside the replay buffer
/// (`4101`): the close is queued and the queue dropped, so the writer ends.
async fn resume_session(
    bridge: &Arc<Bridge>,
    connection_id: &str,
    from: Option<u64>,
    tx: mpsc::Sender<Outgoing>,
) -> Result<(Arc<WsSession>, u64), ResumeError> {
    match bridge.hub.resume(connection_id, from, tx.clone()) {
        Ok(a) => {
            bridge.metrics.resumed(ResumeOutcome::Resumed);
            if let Some(old) = a.replaced {
                let _ = old.try_send(Outgoing::Close(close::REPLACED));
            }
            // The hub queued the replay ahead of anything newer.
            bridge
                .metrics
                .replayed
                .fetch_add(a.replay.len() as u64, Relaxed);
            let (account_id, client_id) = (&a.session.account_id, &a.session.client_id);
            tracing::info!(%account_id, %client_id, %connection_id, replayed = a.replay.len(), "WebSocket session resumed");
            bridge
                .deliver(&a.session, &hello(&a.session, true, &bridge.settings))
                .await;
            Ok((a.session, a.generation))
        }
        Err(e) => {
            let (code, outcome) = match e {
                ResumeError::Expired => (close::SESSION_EXPIRED, ResumeOutcome::Expired),
                ResumeError::TooOld | ResumeError::Ahead => {
                    (close::RESUME_TOO_OLD, ResumeOutcome::TooOld)
                }
            };
            bridge.metrics.resumed(outcome);
            let _ = tx.try_send(Outgoing::Close(code));
            Err(e)
        }
    }
}

/// After a resume refused as too old: the client cannot continue this session, so it ends
/// now unless another socket still holds it.
async fn end_if_orphaned(bridge: &Bridge, connection_id: &str) {
    let orphaned = bridge.hub.get(connection_id).is_some_and(|s| !s.attached());
    if orphaned {
        bridge
            .end(connection_id, DisconnectReason::Lost, close::RESUME_TOO_OLD)
            .await;
    }
}

/// The read side of one socket: the client's frames, the heartbeat, and the count of
/// refused frames.
struct Reader<'a> {
    bridge: &'a Arc<Bridge>,
    session: &'a Arc<WsSession>,
    settings: &'a WsSettings,
    bucket: TokenBucket,
    errors: u32,
    last_seen: Instant,
}

impl Reader<'_> {
    /// Reads until the socket ends, the client is silent past the heartbeat timeout, the
    /// writer stops or the client has sent too many refused frames.
    async fn run(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        mut writer_done: WriterState,
    ) -> SocketEnd {
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    if let Some(end) = self.on_message(msg).await {
                        return end;
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_seen.elapsed() >= self.settings.heartbeat_timeout {
                        let s = self.session;
                        tracing::info!(account_id = %s.account_id, client_id = %s.client_id, connection_id = %s.connection_id, "WebSocket heartbeat timeout");
                        return SocketEnd::HeartbeatTimeout;
                    }
                    self.bridge.deliver(self.session, &ServerFrame::Ping).await;
                    self.session.control(Outgoing::Ping);
                }
                _ = writer_done.changed() => {
                    let timed_out = *writer_done.borrow() == 2;
                    return if self.bridge.hub.get(&self.session.connection_id).is_none() {
                        SocketEnd::Ended
                    } else if timed_out {
                        SocketEnd::SlowWriter
                    } else {
                        SocketEnd::WriterGone
                    };
                }
            }
        }
    }

    /// One message from the socket (or its end).
    async fn on_message(&mut self, msg: Option<Result<Message, axum::Error>>) -> Option<SocketEnd> {
        let text = match msg {
            Some(Err(e)) if too_big(&e) => {
                self.bridge.metrics.invalid_frames.fetch_add(1, Relaxed);
                return Some(SocketEnd::TooBig);
            }
            None | Some(Err(_)) => return Some(SocketEnd::Lost),
            Some(Ok(Message::Close(_))) => return Some(SocketEnd::Clean),
            Some(Ok(Message::Text(t))) => {
                self.session.traffic.count(true, t.len());
                t
            }
            Some(Ok(Message::Binary(_))) => {
                self.last_seen = Instant::now();
                self.bridge.metrics.invalid_frames.fetch_add(1, Relaxed);
                let refusal = ServerFrame::Error {
                    code: "binary_not_supported".into(),
                    message: "frames are JSON text".into(),
                };
                return self.refused(&refusal).await;
            }
            Some(Ok(_)) => {
                self.last_seen = Instant::now();
                return None;
            }
        };
        self.last_seen = Instant::now();
        match parse_client_frame(text.as_str()) {
            Ok(ClientFrame::Ping) => self.bridge.deliver(self.session, &ServerFrame::Pong).await,
            Ok(ClientFrame::Pong) => {}
            Ok(ClientFrame::Signal {
                to,
                to_connection,
                data,
            }) => return self.signal(&to, to_connection, data).await,
            Err(e) => {
                self.bridge.metrics.invalid_frames.fetch_add(1, Relaxed);
                let refusal = ServerFrame::Error {
                    code: e.code.into(),
                    message: e.message,
                };
                return self.refused(&refusal).await;
            }
        }
        None
    }

    /// Publishes a signal to `to`'s inbox, within the signal rate.
    async fn signal(
        &mut self,
        to: &str,
        to_connection: Option<String>,
        data: serde_json::Value,
    ) -> Option<SocketEnd> {
        if !self.bucket.allow() {
            self.bridge.metrics.rate_limited.fetch_add(1, Relaxed);
            let refusal = ServerFrame::Error {
                code: "rate_limited".into(),
                message: format!(
                    "at most {} signal frames per second",
                    self.settings.signal_rate
                ),
            };
            return self.refused(&refusal).await;
        }
        let s = self.session;
        let payload = serde_json::json!({
            "from": s.client_id,
            "from_connection": s.connection_id,
            "to_connection": to_connection,
            "data": data,
        });
        let topic = inbox_topic(&s.account_id, to);
        let published = self
            .bridge
            .mqtt
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await;
        if let Err(error) = published {
            tracing::error!(%error, "signal not queued");
        }
        None
    }

    /// Answers a refused frame with `error`; past `websocket.max_errors` refusals the socket
    /// ends (`Abuse`).
    async fn refused(&mut self, error: &ServerFrame) -> Option<SocketEnd> {
        self.errors += 1;
        self.bridge.deliver(self.session, error).await;
        (self.errors > self.settings.max_errors).then_some(SocketEnd::Abuse)
    }
}

/// What the end of the read loop means for the session: ended (clean, abuse, slow consumer)
/// or detached and waiting for a resume (dropped, heartbeat timeout).
async fn finish(bridge: &Arc<Bridge>, end: SocketEnd, session: Arc<WsSession>, generation: u64) {
    let connection_id = session.connection_id.clone();
    let (reason, code) = match end {
        SocketEnd::Clean => (DisconnectReason::Clean, close::NORMAL),
        SocketEnd::Abuse => (DisconnectReason::Kicked, close::POLICY),
        SocketEnd::SlowWriter => {
            tracing::warn!(%connection_id, "WebSocket write timed out: disconnecting a slow consumer");
            (DisconnectReason::SlowConsumer, close::SLOW_CONSUMER)
        }
        SocketEnd::WriterGone | SocketEnd::Lost => {
            return detach_and_wait(bridge.clone(), session, generation, close::NORMAL).await
        }
        SocketEnd::TooBig => {
            return detach_and_wait(bridge.clone(), session, generation, close::TOO_BIG).await
        }
        SocketEnd::HeartbeatTimeout => {
            return detach_and_wait(
                bridge.clone(),
                session,
                generation,
                close::HEARTBEAT_TIMEOUT,
            )
            .await
        }
        SocketEnd::Ended => return,
    };
    bridge.end(&connection_id, reason, code).await;
}

/// Whether a read failed for a frame (or message) over `websocket.max_frame_bytes`: the
/// WebSocket library's capacity error, which axum wraps.
fn too_big(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tokio_tungstenite::tungstenite::Error>())
        .is_some_and(|e| matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}

fn hello(session: &WsSession, resumed: bool, settings: &WsSettings) -> ServerFrame {
    ServerFrame::Hello {
        account_id: session.account_id.clone(),
        client_id: session.client_id.clone(),
        connection_id: session.connection_id.clone(),
        resumed,
        heartbeat_secs: settings.heartbeat.as_secs(),
        resume_window_secs: settings.resume_window.as_secs(),
        resume_secret: session.resume_secret().to_string(),
    }
}
