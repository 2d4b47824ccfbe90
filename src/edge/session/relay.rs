//! The relay loop of an admitted connection: the client's frames, the broker's deliveries,
//! the timers, and the end.

use super::*;
use std::sync::atomic::Ordering::Relaxed;

/// The relay's clocks: the client's keep-alive, when the client was last heard and the
/// broker last written to, and until when the client's reads are paused by the publish rate.
pub(super) struct Clocks {
    pub(super) keep_alive: Duration,
    pub(super) last_dev: Instant,
    pub(super) last_up_write: Instant,
    pub(super) throttled_until: Option<Instant>,
}

impl Clocks {
    /// When the timer must fire next: the broker link's ping, or the client's keep-alive
    /// deadline if sooner.
    pub(super) fn next_check(&self) -> Instant {
        let ping = self.last_up_write + UPSTREAM_PING;
        if self.keep_alive.is_zero() {
            ping
        } else {
            ping.min(self.last_dev + self.keep_alive)
        }
    }
}

impl<R, W> Live<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Relays, then ends the connection, in its span. Boxed: an `async fn` keeps its
    /// arguments in their own slots for its whole life (and a `mut self` twice), so the
    /// connection's 600 bytes would be stored two or three times in every idle device's task.
    pub(super) async fn run(mut self: Box<Self>) {
        let span = self.span.clone();
        let end = self.relay().instrument(span.clone()).await;
        Box::pin(self.finish(end)).instrument(span).await;
    }

    /// Writes to the client within mqtt.write_timeout_ms: a client that takes nothing for
    /// that long (a subscriber that never reads while its topic is flooded) is cut, and what
    /// waits for it stays bounded by the broker's per-connection queue.
    pub(super) async fn write_client(&mut self, bytes: &[u8]) -> Result<(), End> {
        let limit = self.conn.shared.settings.write_timeout;
        match tokio::time::timeout(limit, send(&mut self.wr, bytes)).await {
            Ok(Ok(())) => {
                let details = &self.claim.details;
                details.bytes_out.fetch_add(bytes.len() as u64, Relaxed);
                details.messages_out.fetch_add(publishes_in(bytes), Relaxed);
                Ok(())
            }
            Ok(Err(_)) => Err(End::Lost),
            Err(_) => {
                self.conn.shared.metrics.write_timeout();
                tracing::warn!(
                    waiting = bytes.len(),
                    "disconnecting: the client took nothing written to it within mqtt.write_timeout_ms"
                );
                Err(End::WriteTimeout)
            }
        }
    }

    /// Delivers what an external broker sent in the same read as its CONNACK (a resumed
    /// session's queued and unacknowledged messages): it waited for the broker's next bytes,
    /// which may never come.
    pub(super) async fn broker_frames_behind_connack(
        &mut self,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        if self.ubuf.is_empty() {
            return Ok(());
        }
        self.conn.broker_frames(&mut self.ubuf, to_dev)?;
        if !to_dev.is_empty() {
            self.write_client(to_dev).await?;
            to_dev.clear();
        }
        Ok(())
    }

    /// Relays until the connection ends: the client's frames are checked and forwarded,
    /// the broker's delivered, keep-alive and the client's publish rate enforced.
    pub(super) async fn relay(&mut self) -> End {
        let mut to_up = BytesMut::new();
        let mut to_dev = BytesMut::new();
        let mut clocks = Clocks {
            keep_alive: self.keep_alive,
            last_dev: Instant::now(),
            last_up_write: Instant::now(),
            throttled_until: None,
        };
        let timer = tokio::time::sleep_until(clocks.next_check());
        tokio::pin!(timer);
        let mut dev_room = MIN_READ;

        if let Err(end) = self.broker_frames_behind_connack(&mut to_dev).await {
            return end;
        }
        // Frames from the client are processed at the top of the loop: after each read, and
        // once before the first read for packets sent right behind the CONNECT.
        let mut unread = !self.dbuf.is_empty();
        loop {
            if std::mem::take(&mut unread) {
                match self
                    .device_batch(&mut to_up, &mut to_dev, &mut clocks)
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(wait)) => timer.as_mut().reset(Instant::now() + wait),
                    Err(end) => break end,
                }
            }
            // The router's frames go to the client as they are encoded, unless a SUBACK of a
            // trimmed SUBSCRIBE is due (completed by `broker_frames`); an external broker's
            // stream is always parsed (partial frames, the edge's own PINGRESPs).
            let direct = self.up.is_router() && !self.conn.awaits_suback();
            tokio::select! {
                r = read_some(&mut self.rd, &mut self.dbuf, &mut dev_room), if clocks.throttled_until.is_none() => {
                    match r {
                        Ok(0) | Err(_) => break End::Lost,
                        Ok(n) => {
                            self.claim.details.bytes_in.fetch_add(n as u64, Relaxed);
                        }
                    }
                    clocks.last_dev = Instant::now();
                    unread = true;
                }
                r = self.up.recv(if direct { &mut to_dev } else { &mut self.ubuf }) => {
                    if let Err(end) = self.deliver(r, direct, &mut to_dev).await {
                        break end;
                    }
                }
                _ = &mut timer => {
                    match self.tick(&mut clocks, &mut to_up).await {
                        Ok(next) => timer.as_mut().reset(next),
                        Err(end) => break end,
                    }
                }
                asked = self.claim.ended() => {
                    match asked {
                        DisconnectReason::Takeover => break End::Takeover,
                        DisconnectReason::ServerShutdown => break End::ServerShutdown,
                        DisconnectReason::Revoked => break End::Revoked,
                        DisconnectReason::AdminDisconnect => break End::AdminDisconnect,
                        _ => break End::Kicked { v5_reason: reason::ADMINISTRATIVE_ACTION },
                    }
                }
            }
        }
    }

    /// Processes the client's unread frames: answers go to the client, the rest to the
    /// broker; then the batch's publishes are counted against the publish rate. `Err` ends
    /// the connection; `Some(wait)`: the client's reads pause for `wait`.
    pub(super) async fn device_batch(
        &mut self,
        to_up: &mut BytesMut,
        to_dev: &mut BytesMut,
        clocks: &mut Clocks,
    ) -> Result<Option<Duration>, End> {
        // One reservation of the batch's size: on the embedded broker the previous
        // batch's buffer is still shared with the packets it became, and growing from
        // empty by doubling reallocated and copied it at every step.
        to_up.reserve(self.dbuf.len());
        let step = self.conn.device_frames(&mut self.dbuf, to_up, to_dev);
        if !to_dev.is_empty() {
            self.write_client(to_dev).await?;
            to_dev.clear();
        }
        if !to_up.is_empty() {
            if self.up.send(to_up).await.is_err() {
                return Err(End::UpstreamClosed);
            }
            clocks.last_up_write = Instant::now();
        }
        if let Some(end) = step? {
            return Err(end);
        }
        let published = u64::from(self.conn.publishes);
        self.claim.details.messages_in.fetch_add(published, Relaxed);
        let wait = self.conn.take_publish_tokens();
        if let Some(wait) = wait {
            clocks.throttled_until = Some(Instant::now() + wait);
            self.conn.shared.metrics.throttled();
        }
        Ok(wait)
    }

    /// What the broker sent (`read`: what `recv` returned): parsed from `ubuf` unless it
    /// came `direct`ly into `to_dev`, then written to the client.
    pub(super) async fn deliver(
        &mut self,
        read: std::io::Result<usize>,
        direct: bool,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        match read {
            Ok(0) | Err(_) => return Err(End::UpstreamClosed),
            Ok(_) => {}
        }
        if !direct {
            self.conn.broker_frames(&mut self.ubuf, to_dev)?;
        }
        if !to_dev.is_empty() {
            self.write_client(to_dev).await?;
            to_dev.clear();
        }
        Ok(())
    }

    /// The relay's timer fired: lifts an expired pause, ends a client silent past its
    /// keep-alive, pings a quiet external broker; returns when the timer fires next.
    pub(super) async fn tick(
        &mut self,
        clocks: &mut Clocks,
        to_up: &mut BytesMut,
    ) -> Result<Instant, End> {
        let now = Instant::now();
        if clocks.throttled_until.is_some_and(|until| now >= until) {
            clocks.throttled_until = None;
        }
        if !clocks.keep_alive.is_zero() && now.duration_since(clocks.last_dev) >= clocks.keep_alive
        {
            return Err(End::KeepaliveTimeout);
        }
        if now.duration_since(clocks.last_up_write) >= UPSTREAM_PING {
            if self.up.wants_ping() {
                codec::put_pingreq(to_up);
                if self.up.send(to_up).await.is_err() {
                    return Err(End::UpstreamClosed);
                }
            }
            clocks.last_up_write = now;
        }
        let mut next = clocks.next_check();
        if let Some(until) = clocks.throttled_until {
            next = next.min(until);
        }
        Ok(next)
    }

    /// Ends the connection: tells the client why (MQTT 5), closes the link to the broker,
    /// publishes the end it observed (and the Will), and releases the client id.
    pub(super) async fn finish(mut self: Box<Self>, end: End) {
        let shared = self.conn.shared.clone();
        let proto = self.conn.proto;
        let mut to_dev = BytesMut::new();
        let wr = &mut self.wr;
        // Tell the client why, when the edge ends it (MQTT 5 only; 3.1.1 servers just close).
        if proto == Proto::V5 {
            if let Some(code) = end.v5_reason() {
                let why =
                    codec::reason_text(kind::DISCONNECT, code).filter(|_| self.conn.explain.ends);
                codec::put_disconnect(&mut to_dev, Proto::V5, code, why);
                let _ = tokio::time::timeout(Duration::from_secs(1), send(wr, &to_dev)).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        // The link ends before the claim is released: the broker processes this connection's
        // end before a newer connection of the same client id (see `UpLink::close`).
        let session_expiry = match end {
            End::Disconnect { session_expiry, .. } => session_expiry,
            _ => None,
        };
        self.up
            .close(proto, matches!(end, End::UpstreamClosed), session_expiry)
            .await;

        let reason = end.reason();
        let mut publications = lifecycle::end_publications(
            self.conn.will.as_ref(),
            end.will_fires(),
            (self.conn.reported.as_ref(), self.conn.edge.as_deref()),
            reason,
            crate::clock::now_millis(),
        );
        // A Will with a delay (the first publication, when it fires) waits for it, at most
        // as long as a DISCONNECT's new Session Expiry Interval says.
        let delay = match (&self.conn.will, end.will_fires()) {
            (Some(w), true) => w.delay_secs.min(session_expiry.unwrap_or(u32::MAX)),
            _ => 0,
        };
        if delay > 0 && !publications.is_empty() {
            let will = publications.remove(0);
            let delay = Duration::from_secs(u64::from(delay));
            if let Some(now) =
                crate::edge::wills::DelayedWills::hold(&shared, &self.upstream_id, will, delay)
            {
                tracing::warn!(
                    "delayed Wills at their bound (mqtt.max_connections): published at once"
                );
                publications.insert(0, now);
            }
        }
        for p in publications {
            Box::pin(shared.publisher.publish(p)).await;
        }
        shared.metrics.live(-1);
        shared.metrics.disconnect(reason);
        tracing::debug!(reason = reason.as_str(), "disconnected");
        self.claim.finished();
        shared.registry.release(&self.upstream_id, self.claim.seq);
    }
}

/// How many PUBLISH packets `frames` (whole frames, as written to a client) holds.
fn publishes_in(mut frames: &[u8]) -> u64 {
    let mut n = 0;
    while let Ok(Some(h)) = codec::header(frames, usize::MAX) {
        if h.kind() == codec::kind::PUBLISH {
            n += 1;
        }
        match frames.get(h.frame_len..) {
            Some(rest) if h.frame_len > 0 => frames = rest,
            _ => break,
        }
    }
    n
}
