//! The ConnectionHub: every WebSocket session by connection id, and by account for fan-out.
//!
//! A session outlives its socket for the resume window: frames sent while it is detached go
//! to its replay buffer only, and a resuming socket gets every frame after the `seq` it saw.
//! One `std::sync::Mutex` per session and one for the index; neither is ever held across an
//! await (senders are cloned out, then used).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::protocol::{stamp, ServerFrame};

/// What the writer task of a socket is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A numbered text frame.
    Text(Arc<str>),
    /// A WebSocket ping.
    Ping,
    /// Close with this code (and its reason, `close::reason`), then stop.
    Close(u16),
}

/// Why a send did not reach a socket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Queued for the socket's writer.
    Queued,
    /// No socket attached: kept in the replay buffer for a resume.
    Buffered,
    /// The socket's queue is full: the client is too slow (the caller disconnects it).
    SlowConsumer,
    /// The session has ended.
    Closed,
}

struct State {
    /// Who may resume it (replaced when a transfer completes, [`WsSession::take_over`]).
    key: ResumeKey,
    /// Several replicas: a session being transferred from another replica, collecting the
    /// frames for it meanwhile; no resume takes it and it has no status of its own yet.
    placeholder: bool,
    seq: u64,
    replay: VecDeque<(u64, Arc<str>)>,
    tx: Option<mpsc::Sender<Outgoing>>,
    /// Bumped at every attach, so a stale detach timer does nothing.
    generation: u64,
    ended: bool,
}

impl State {
    /// A live session's state at attach generation 1 (a placeholder is marked after).
    fn new(
        key: ResumeKey,
        seq: u64,
        replay: VecDeque<(u64, Arc<str>)>,
        tx: Option<mpsc::Sender<Outgoing>>,
    ) -> State {
        State {
            key,
            placeholder: false,
            seq,
            replay,
            tx,
            generation: 1,
            ended: false,
        }
    }
}

/// Who may resume a session: a socket authenticated with the bearer token's credential that
/// opened it, or one that gives the session's resume secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResumeKey {
    /// The credential id of the token that opened the session (`None` in open mode).
    pub credential_id: Option<String>,
    /// The per-session secret, handed out in this session's `hello` only.
    pub secret: String,
    /// After a hand-over through the store (a restart, a move between replicas): the stored
    /// hashes of the secrets the client may hold (`accounts::hashing`, as every stored secret;
    /// one per line, newest first, at most [`KEPT_SECRETS`]), accepted as well; the new
    /// `secret` goes out in the resumed `hello`. A session moved twice before its client
    /// resumed still takes the secret the client has.
    pub(crate) handed_over: Option<String>,
}

/// Digests of earlier resume secrets a handed-over session keeps (it may move several times
/// before its client resumes and learns the newest).
pub(crate) const KEPT_SECRETS: usize = 4;

/// A session as a graceful shutdown hands it over: its key, last `seq` and replay buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandedOver {
    pub account_id: String,
    pub client_id: String,
    pub connection_id: String,
    pub credential_id: Option<String>,
    /// The stored hashes of the resume secrets it accepts (`accounts::hashing::hash`), one
    /// per line, newest first.
    pub secret_hash: String,
    pub seq: u64,
    pub replay: Vec<(u64, String)>,
}

/// One WebSocket session (one `connection_id`), across resumes.
pub(crate) struct WsSession {
    /// Its account.
    pub account_id: String,
    /// Its client.
    pub client_id: String,
    /// Its connection id.
    pub connection_id: String,
    /// When this replica opened or took it (Unix milliseconds).
    opened_at_millis: i64,
    replay_max: usize,
    state: Mutex<State>,
    /// Text frames and their bytes, from and to the client, on this replica.
    pub(crate) traffic: Traffic,
    /// The address of the client on its current socket.
    peer: Mutex<Option<std::net::IpAddr>>,
}

/// A session's traffic counters (who is connected lists them).
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) messages_in: std::sync::atomic::AtomicU64,
    pub(crate) messages_out: std::sync::atomic::AtomicU64,
    pub(crate) bytes_in: std::sync::atomic::AtomicU64,
    pub(crate) bytes_out: std::sync::atomic::AtomicU64,
}

impl Traffic {
    /// Counts one frame of `bytes` from (`inbound`) or to the client.
    pub(crate) fn count(&self, inbound: bool, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let (messages, total) = if inbound {
            (&self.messages_in, &self.bytes_in)
        } else {
            (&self.messages_out, &self.bytes_out)
        };
        messages.fetch_add(1, Relaxed);
        total.fetch_add(bytes as u64, Relaxed);
    }

    /// (messages in, messages out, bytes in, bytes out).
    pub(crate) fn read(&self) -> (u64, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.messages_in.load(Relaxed),
            self.messages_out.load(Relaxed),
            self.bytes_in.load(Relaxed),
            self.bytes_out.load(Relaxed),
        )
    }
}

impl WsSession {
    /// A session of (account, client, connection id) `ids`.
    fn new(ids: (String, String, String), replay_max: usize, state: State) -> Arc<WsSession> {
        let (account_id, client_id, connection_id) = ids;
        Arc::new(WsSession {
            account_id,
            client_id,
            connection_id,
            opened_at_millis: crate::clock::now_millis(),
            replay_max: replay_max.max(1),
            state: Mutex::new(state),
            traffic: Traffic::default(),
            peer: Mutex::new(None),
        })
    }

    /// Notes the address of the client on the socket now attached.
    pub(crate) fn set_peer(&self, peer: Option<std::net::IpAddr>) {
        *self
            .peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = peer;
    }

    /// The address of the client on its current (or last) socket.
    pub(crate) fn peer(&self) -> Option<std::net::IpAddr> {
        *self
            .peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who holds the session, as a revocation or a kick matches it.
    pub(crate) fn owner(&self) -> crate::domain::control::Owner {
        crate::domain::control::Owner {
            account_id: Some(self.account_id.clone()),
            client_id: self.client_id.clone(),
            credential_id: self.lock().key.credential_id.clone(),
            since_millis: self.opened_at_millis,
        }
    }

    /// Whether a resume may take this session: asked with the token credential that opened
    /// it (`credential_id`), or with its resume secret (compared in constant time). A session
    /// opened without a token (open mode) needs the secret.
    pub(crate) fn may_resume(&self, credential_id: Option<&str>, secret: Option<&str>) -> bool {
        let (key, placeholder) = {
            let st = self.lock();
            (st.key.clone(), st.placeholder)
        };
        if placeholder {
            return false;
        }
        let same_token =
            key.credential_id.is_some() && key.credential_id.as_deref() == credential_id;
        let handed_over = |s: &str| {
            key.handed_over.as_ref().is_some_and(|stored| {
                stored
                    .lines()
                    .any(|digest| crate::accounts::hashing::verify(s, digest))
            })
        };
        same_token
            || secret.is_some_and(|s| {
                crate::accounts::hashing::constant_time_eq(s.as_bytes(), key.secret.as_bytes())
                    || handed_over(s)
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The resume secret (for this session's own `hello` only).
    pub fn resume_secret(&self) -> String {
        self.lock().key.secret.clone()
    }

    /// Whether it is a transfer's placeholder ([`Hub::placeholder`]).
    pub(crate) fn is_placeholder(&self) -> bool {
        self.lock().placeholder
    }

    /// Completes a transfer: the placeholder becomes the handed-over session `h` (its key,
    /// `seq` and replay buffer), followed by the frames it collected that `h` does not
    /// already hold ([`merge_replay`]), with `secret` as its new resume secret. Done under
    /// the session's lock, so a frame sent meanwhile is numbered after them. `false` when it
    /// is no placeholder (any more).
    pub(crate) fn take_over(&self, h: HandedOver, secret: String) -> bool {
        let mut st = self.lock();
        if !st.placeholder || st.ended {
            return false;
        }
        let collected: Vec<Arc<str>> = st.replay.drain(..).map(|(_, t)| t).collect();
        let (seq, replay) = merge_replay(h.seq, h.replay, collected, self.replay_max);
        st.seq = seq;
        st.replay = replay;
        st.key = ResumeKey {
            credential_id: h.credential_id,
            secret,
            handed_over: Some(h.secret_hash),
        };
        st.placeholder = false;
        true
    }

    /// Numbers `frame`, keeps it for replay and queues it for the socket (if attached).
    pub fn send(&self, frame: &ServerFrame) -> Delivery {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.ended {
            return Delivery::Closed;
        }
        st.seq += 1;
        let text: Arc<str> = stamp(st.seq, frame).into();
        let seq = st.seq;
        st.replay.push_back((seq, text.clone()));
        while st.replay.len() > self.replay_max {
            st.replay.pop_front();
        }
        let bytes = text.len();
        match &st.tx {
            None => Delivery::Buffered,
            Some(tx) => match tx.try_send(Outgoing::Text(text)) {
                Ok(()) => {
                    self.traffic.count(false, bytes);
                    Delivery::Queued
                }
                Err(mpsc::error::TrySendError::Full(_)) => Delivery::SlowConsumer,
                Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Buffered,
            },
        }
    }

    /// Queues a control message (ping, close) for the attached socket, if any.
    pub(crate) fn control(&self, out: Outgoing) -> bool {
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.tx.as_ref().is_some_and(|tx| tx.try_send(out).is_ok())
    }

    /// The last `seq` sent.
    #[cfg(test)]
    pub fn seq(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seq
    }

    /// Detaches the socket of `generation` (a newer socket keeps its place), asking its
    /// writer to close with `close` first. Returns whether it was detached.
    pub(crate) fn detach(&self, generation: u64, close: Option<u16>) -> bool {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.generation != generation || st.ended {
            return false;
        }
        if let (Some(code), Some(tx)) = (close, &st.tx) {
            let _ = tx.try_send(Outgoing::Close(code));
        }
        st.tx = None;
        true
    }

    /// Whether a socket is attached now.
    pub(crate) fn attached(&self) -> bool {
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.tx.is_some() && !st.ended
    }

    /// Whether the socket of `generation` is still the detached, current one (the resume
    /// window passed without a resume).
    pub(crate) fn still_detached(&self, generation: u64) -> bool {
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.generation == generation && st.tx.is_none() && !st.ended
    }

    /// Ends the session for a hand-over: an attached socket is closed with `close` (the
    /// client resumes after the restart); returns what the next start needs, or `None` when
    /// it had already ended.
    pub(crate) fn hand_over(&self, close: u16) -> Option<HandedOver> {
        let mut st = self.lock();
        if st.ended || st.placeholder {
            return None;
        }
        if let Some(tx) = &st.tx {
            let _ = tx.try_send(Outgoing::Close(close));
        }
        st.ended = true;
        st.tx = None;
        Some(HandedOver {
            account_id: self.account_id.clone(),
            client_id: self.client_id.clone(),
            connection_id: self.connection_id.clone(),
            credential_id: st.key.credential_id.clone(),
            secret_hash: std::iter::once(crate::accounts::hashing::hash(&st.key.secret))
                .chain(
                    st.key
                        .handed_over
                        .iter()
                        .flat_map(|d| d.lines().map(str::to_string)),
                )
                .take(KEPT_SECRETS)
                .collect::<Vec<_>>()
                .join("\n"),
            seq: st.seq,
            replay: st.replay.iter().map(|(q, t)| (*q, t.to_string())).collect(),
        })
    }

    /// Marks the session ended, asking an attached writer to close with `close` first;
    /// returns false when it already was.
    fn end(&self, close: u16) -> bool {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = !st.ended;
        if let Some(tx) = &st.tx {
            let _ = tx.try_send(Outgoing::Close(close));
        }
        st.ended = true;
        st.tx = None;
        first
    }
}

/// Why a resume could not attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResumeError {
    /// The session no longer exists (it expired or ended): close 4100 / HTTP 410.
    Expired,
    /// `resume_from` is older than the replay buffer holds: close 4101.
    TooOld,
    /// `resume_from` is ahead of what was sent.
    Ahead,
}

/// A socket attached to a session.
pub(crate) struct Attached {
    /// The session.
    pub session: Arc<WsSession>,
    /// The attach generation (give it back to `detach`).
    pub(crate) generation: u64,
    /// Frames to replay, in order.
    pub replay: Vec<Arc<str>>,
    /// The previous socket's sender, when this attach took a live socket's place.
    pub replaced: Option<mpsc::Sender<Outgoing>>,
}

#[derive(Default)]
struct Index {
    sessions: HashMap<String, Arc<WsSession>>,
    by_account: HashMap<String, HashSet<String>>,
}

/// Every WebSocket session of this replica.
#[derive(Default)]
pub(crate) struct Hub {
    index: Mutex<Index>,
}

impl Hub {
    /// A new session with its first socket attached, not yet findable: its first frames
    /// (`hello`) go out before any other part of the bridge can send it anything. [`Hub::add`]
    /// registers it.
    pub fn prepare(
        account_id: &str,
        client_id: &str,
        connection_id: &str,
        key: ResumeKey,
        replay_max: usize,
        tx: mpsc::Sender<Outgoing>,
    ) -> Attached {
        let ids = (account_id.into(), client_id.into(), connection_id.into());
        let state = State::new(key, 0, VecDeque::new(), Some(tx));
        Attached {
            session: WsSession::new(ids, replay_max, state),
            generation: 1,
            replay: Vec::new(),
            replaced: None,
        }
    }

    /// Registers a prepared session: from now on presence, lists and inbox messages reach it.
    pub fn add(&self, session: &Arc<WsSession>) {
        self.insert(session.clone(), false);
    }

    /// Registers a new session and attaches its first socket ([`Hub::prepare`], then
    /// [`Hub::add`]).
    #[cfg(test)]
    pub fn open(
        &self,
        account_id: &str,
        client_id: &str,
        connection_id: &str,
        key: ResumeKey,
        replay_max: usize,
        tx: mpsc::Sender<Outgoing>,
    ) -> Attached {
        let a = Self::prepare(account_id, client_id, connection_id, key, replay_max, tx);
        self.add(&a.session);
        a
    }

    /// Takes back a session a graceful shutdown handed over: detached (generation 1), with
    /// its `seq` and replay buffer, resumable with the secret its client holds.
    pub(crate) fn restore(
        &self,
        h: HandedOver,
        secret: String,
        replay_max: usize,
    ) -> Arc<WsSession> {
        let key = ResumeKey {
            credential_id: h.credential_id,
            secret,
            handed_over: Some(h.secret_hash),
        };
        let replay = h.replay.into_iter().map(|(q, t)| (q, t.into())).collect();
        let state = State::new(key, h.seq, replay, None);
        let ids = (h.account_id, h.client_id, h.connection_id);
        let session = WsSession::new(ids, replay_max, state);
        self.insert(session.clone(), false);
        session
    }

    /// Indexes `session`; with `if_absent`, only when no session has its id (whether it did).
    fn insert(&self, session: Arc<WsSession>, if_absent: bool) -> bool {
        let mut index = self
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if if_absent && index.sessions.contains_key(&session.connection_id) {
            return false;
        }
        index
            .by_account
            .entry(session.account_id.clone())
            .or_default()
            .insert(session.connection_id.clone());
        index
            .sessions
            .insert(session.connection_id.clone(), session);
        true
    }

    /// The live session of `connection_id`, if any.
    pub fn get(&self, connection_id: &str) -> Option<Arc<WsSession>> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sessions
            .get(connection_id)
            .cloned()
    }

    /// Attaches a resuming socket to `connection_id`. Every frame after `resume_from` (all
    /// buffered frames when `None`) is queued to `tx` first, in order and under the
    /// session's lock, so no new frame can overtake the replay; `tx` must have room for the
    /// replay buffer. A session that ended between the caller's check and this call is
    /// `Expired`, and nothing is created.
    pub fn resume(
        &self,
        connection_id: &str,
        resume_from: Option<u64>,
        tx: mpsc::Sender<Outgoing>,
    ) -> Result<Attached, ResumeError> {
        let session = self.get(connection_id).ok_or(ResumeError::Expired)?;
        let mut st = session
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if st.ended || st.placeholder {
            return Err(ResumeError::Expired);
        }
        let oldest = st.replay.front().map(|(s, _)| *s).unwrap_or(st.seq + 1);
        let resume_from = resume_from.unwrap_or(oldest.saturating_sub(1));
        if resume_from > st.seq {
            return Err(ResumeError::Ahead);
        }
        if resume_from + 1 < oldest {
            return Err(ResumeError::TooOld);
        }
        let replay: Vec<Arc<str>> = st
            .replay
            .iter()
            .filter(|(s, _)| *s > resume_from)
            .map(|(_, t)| t.clone())
            .collect();
        for text in &replay {
            if tx.try_send(Outgoing::Text(text.clone())).is_err() {
                break;
            }
        }
        st.generation += 1;
        let generation = st.generation;
        let replaced = st.tx.replace(tx);
        drop(st);
        Ok(Attached {
            session,
            generation,
            replay,
            replaced,
        })
    }

    /// Ends a session and removes it, closing an attached socket with `close_code`;
    /// returns it when this call ended it.
    pub fn close(&self, connection_id: &str, close_code: u16) -> Option<Arc<WsSession>> {
        let session = {
            let mut index = self
                .index
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let session = index.sessions.remove(connection_id)?;
            if let Some(set) = index.by_account.get_mut(&session.account_id) {
                set.remove(connection_id);
                if set.is_empty() {
                    index.by_account.remove(&session.account_id);
                }
            }
            session
        };
        session.end(close_code).then_some(session)
    }

    /// The sessions of `account_id`.
    pub(crate) fn of_account(&self, account_id: &str) -> Vec<Arc<WsSession>> {
        let index = self
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        index
            .by_account
            .get(account_id)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| index.sessions.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Several replicas: a detached placeholder for `connection_id` of `client_id` of
    /// `account_id`, held by another replica, that collects the frames for it while the
    /// transfer runs; `None` when this hub has a session of that id already.
    pub(crate) fn placeholder(
        &self,
        account_id: &str,
        client_id: &str,
        connection_id: &str,
        replay_max: usize,
    ) -> Option<Arc<WsSession>> {
        let key = ResumeKey {
            credential_id: None,
            secret: String::new(),
            handed_over: None,
        };
        let mut state = State::new(key, 0, VecDeque::new(), None);
        state.placeholder = true;
        let ids = (account_id.into(), client_id.into(), connection_id.into());
        let session = WsSession::new(ids, replay_max, state);
        self.insert(session.clone(), true).then_some(session)
    }

    /// Removes the placeholder of a transfer that did not complete (nothing is published:
    /// it never was a session here).
    pub(crate) fn discard(&self, placeholder: &Arc<WsSession>) {
        let mut index = self
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !index
            .sessions
            .get(&placeholder.connection_id)
            .is_some_and(|s| Arc::ptr_eq(s, placeholder) && s.is_placeholder())
        {
            return;
        }
        index.sessions.remove(&placeholder.connection_id);
        if let Some(set) = index.by_account.get_mut(&placeholder.account_id) {
            set.remove(&placeholder.connection_id);
            if set.is_empty() {
                index.by_account.remove(&placeholder.account_id);
            }
        }
        placeholder.lock().ended = true;
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<WsSession>> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sessions
            .values()
            .cloned()
            .collect()
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sessions
            .len()
    }
}

/// A frame's text without its `seq`: two replicas number the same frame differently.
fn unnumbered(text: &str) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.as_object_mut()?.remove("seq");
    Some(v)
}

/// The replay of a transferred session: what the replica that held it had (`handed`, the
/// last numbered `seq`), then each frame the placeholder `collected` meanwhile that is not
/// one of those (both replicas received what was published between the placeholder's
/// subscriptions and the hand-over), numbered on. Returns the last `seq` and the buffer,
/// trimmed to `max`.
pub(crate) fn merge_replay(
    seq: u64,
    handed: Vec<(u64, String)>,
    collected: Vec<Arc<str>>,
    max: usize,
) -> (u64, VecDeque<(u64, Arc<str>)>) {
    // Only the holder's last frames can be ones the placeholder also collected (it began
    // collecting shortly before the holder let go): an older frame of the same content is a
    // frame of its own.
    let overlap = handed.len().saturating_sub(collected.len());
    let mut unmatched: Vec<serde_json::Value> = handed[overlap..]
        .iter()
        .filter_map(|(_, t)| unnumbered(t))
        .collect();
    let mut replay: VecDeque<(u64, Arc<str>)> =
        handed.into_iter().map(|(q, t)| (q, t.into())).collect();
    let mut seq = seq;
    for text in collected {
        let Some(mut frame) = unnumbered(&text) else {
            continue;
        };
        if let Some(i) = unmatched.iter().position(|f| *f == frame) {
            unmatched.remove(i);
            continue;
        }
        seq += 1;
        if let Some(o) = frame.as_object_mut() {
            o.insert("seq".into(), seq.into());
        }
        replay.push_back((seq, frame.to_string().into()));
    }
    while replay.len() > max.max(1) {
        replay.pop_front();
    }
    (seq, replay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(credential_id: Option<&str>) -> ResumeKey {
        ResumeKey {
            credential_id: credential_id.map(str::to_string),
            secret: "s3cret".into(),
            handed_over: None,
        }
    }

    fn channel() -> (mpsc::Sender<Outgoing>, mpsc::Receiver<Outgoing>) {
        mpsc::channel(8)
    }

    fn texts(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Outgoing::Text(t)) = rx.try_recv() {
            out.push(t.to_string());
        }
        out
    }

    /// Given a session handed over at a shutdown, when the next start takes it back, then it
    /// is detached with its seq and replay, resumable with the secret the client holds (or
    /// the new one), not with another, and resumes where the client left off.
    #[test]
    fn a_handed_over_session_resumes_with_its_old_secret_and_replay() {
        let old = Hub::default();
        let (tx, mut rx) = channel();
        let a = old.open("acc", "pwa", "c1", key(None), 10, tx);
        a.session.send(&ServerFrame::Ping); // 1, seen
        a.session.send(&ServerFrame::Pong); // 2, missed
        let h = a.session.hand_over(1012).expect("live");
        assert_eq!(a.session.send(&ServerFrame::Ping), Delivery::Closed);
        assert_eq!(h.seq, 2);
        let _ = texts(&mut rx);

        let new = Hub::default();
        let restored = new.restore(h, "fresh".into(), 10);
        assert!(!restored.attached());
        assert!(restored.may_resume(None, Some("s3cret")));
        assert!(restored.may_resume(None, Some("fresh")));
        assert!(!restored.may_resume(None, Some("other")));
        assert_eq!(restored.resume_secret(), "fresh");
        let (tx, mut rx) = channel();
        let b = new.resume("c1", Some(1), tx).expect("resumed");
        assert_eq!(b.replay.len(), 1);
        assert_eq!(texts(&mut rx).len(), 1);
        assert_eq!(b.session.seq(), 2);
    }

    #[test]
    fn given_a_prepared_session_then_nobody_finds_it_until_it_is_added() {
        let hub = Hub::default();
        let (tx, _rx) = channel();
        let a = Hub::prepare("acc", "pwa", "c1", key(None), 10, tx);
        assert!(hub.get("c1").is_none());
        assert!(hub.of_account("acc").is_empty());
        hub.add(&a.session);
        assert!(hub.get("c1").is_some());
        assert_eq!(hub.of_account("acc").len(), 1);
    }

    #[test]
    fn given_a_session_moved_twice_before_its_client_resumed_then_its_first_secret_still_opens_it()
    {
        let a = Hub::default();
        let (tx, _rx) = channel();
        let opened = a.open("acc", "pwa", "c1", key(None), 10, tx);
        let first = opened.session.hand_over(1012).unwrap();
        let b = Hub::default();
        let moved = b.restore(first, "never-sent".into(), 10);
        let second = moved.hand_over(1012).unwrap();
        let c = Hub::default();
        let again = c.restore(second, "newest".into(), 10);
        assert!(
            again.may_resume(None, Some("s3cret")),
            "the secret the client holds"
        );
        assert!(again.may_resume(None, Some("never-sent")));
        assert!(!again.may_resume(None, Some("other")));
    }

    #[test]
    fn given_a_dropped_socket_when_resumed_then_exactly_the_missed_frames_replay_in_order() {
        let hub = Hub::default();
        let (tx, mut rx) = channel();
        let a = hub.open("acc", "pwa", "c1", key(None), 10, tx);
        a.session.send(&ServerFrame::Ping); // seq 1, seen
        assert_eq!(texts(&mut rx).len(), 1);
        assert!(a.session.detach(a.generation, None));
        assert_eq!(a.session.send(&ServerFrame::Pong), Delivery::Buffered); // 2
        assert_eq!(a.session.send(&ServerFrame::Ping), Delivery::Buffered); // 3
        let (tx2, _rx2) = channel();
        let b = hub.resume("c1", Some(1), tx2).unwrap();
        assert_eq!(
            b.replay.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            vec![
                r#"{"seq":2,"type":"pong"}"#.to_string(),
                r#"{"seq":3,"type":"ping"}"#.to_string()
            ]
        );
        // the old socket's late detach does not detach the new one
        assert!(!a.session.detach(a.generation, None));
        assert!(!b.session.still_detached(b.generation));
    }

    #[test]
    fn given_a_session_that_expired_after_the_check_when_the_socket_attaches_then_it_is_refused() {
        let hub = Hub::default();
        let (tx, _rx) = channel();
        let a = hub.open("acc", "pwa", "c1", key(None), 10, tx);
        a.session.detach(a.generation, None);
        // the resume check passed (the session existed)…
        assert!(hub.get("c1").is_some());
        // …then the window ran out before the new socket registered
        assert!(hub.close("c1", 4100).is_some());
        let (tx2, _rx2) = channel();
        assert_eq!(
            hub.resume("c1", Some(0), tx2).err(),
            Some(ResumeError::Expired)
        );
        assert!(hub.len() == 0, "no session was created");
    }

    #[test]
    fn given_a_resume_older_than_the_buffer_then_it_is_too_old() {
        let hub = Hub::default();
        let (tx, _rx) = channel();
        let a = hub.open("acc", "pwa", "c1", key(None), 2, tx);
        for _ in 0..5 {
            a.session.send(&ServerFrame::Ping);
        }
        let (tx2, _) = channel();
        assert_eq!(
            hub.resume("c1", Some(1), tx2.clone()).err(),
            Some(ResumeError::TooOld)
        );
        assert_eq!(
            hub.resume("c1", Some(9), tx2.clone()).err(),
            Some(ResumeError::Ahead)
        );
        assert_eq!(
            hub.resume("c1", Some(3), tx2.clone()).unwrap().replay.len(),
            2
        );
        // without a seq: the whole buffer
        assert_eq!(hub.resume("c1", None, tx2).unwrap().replay.len(), 2);
    }

    #[test]
    fn a_full_queue_is_a_slow_consumer() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(1);
        let a = hub.open("acc", "pwa", "c1", key(None), 10, tx);
        assert_eq!(a.session.send(&ServerFrame::Ping), Delivery::Queued);
        assert_eq!(a.session.send(&ServerFrame::Ping), Delivery::SlowConsumer);
    }

    #[test]
    fn fan_out_is_per_account() {
        let hub = Hub::default();
        let (tx, _rx) = channel();
        hub.open("a", "x", "c1", key(None), 10, tx.clone());
        hub.open("b", "y", "c2", key(None), 10, tx);
        assert_eq!(hub.of_account("a").len(), 1);
        assert_eq!(hub.of_account("a")[0].client_id, "x");
        assert!(hub.of_account("z").is_empty());
        hub.close("c1", 1000);
        assert!(hub.of_account("a").is_empty());
    }

    #[test]
    fn given_a_session_opened_with_a_token_when_the_same_token_resumes_then_no_secret_is_needed() {
        let hub = Hub::default();
        let (tx, _rx) = channel();
        let a = hub.open("acc", "pwa", "c1", key(Some("tok-a")), 10, tx);
        assert!(a.session.may_resume(Some("tok-a"), None));
    }

    #[test]
    fn given_a_session_opened_with_a_token_when_another_token_resumes_without_the_secret_then_it_is_refused(
    ) {
        let hub = Hub::default();
        let (tx, _rx) = channel();
        let a = hub.open("acc", "pwa", "c1", key(Some("tok-a")), 10, tx);
        assert!(!a.session.may_resume(Some("tok-b"), None));
        assert!(!a.session.may_resume(Some("tok-b"), Some("wrong")));
        assert!(!a.session.may_resume(Some("tok-b"), Some("")));
        assert!(a.session.may_resume(Some("tok-b"), Some("s3cret")));
    }

    #[test]
    fn given_a_session_opened_in_open_mode_when_resumed_then_only_the_secret_opens_it() {
        let hub = Hub::default();
        let (tx, _rx) = channel();
        let a = hub.open("acc", "pwa", "c1", key(None), 10, tx);
        assert!(!a.session.may_resume(None, None));
        assert!(!a.session.may_resume(None, Some("s3cre")));
        assert!(a.session.may_resume(None, Some("s3cret")));
        assert_eq!(a.session.resume_secret(), "s3cret");
    }

    fn presence(client: &str, seq: u64) -> String {
        stamp(
            seq,
            &ServerFrame::Presence {
                client_id: client.into(),
                connection_id: "k".into(),
                connected: true,
                reason: None,
            },
        )
    }

    #[test]
    fn given_frames_both_replicas_received_when_merged_then_each_is_kept_once_in_order() {
        let handed = vec![(4, presence("a", 4)), (5, presence("b", 5))];
        let collected: Vec<Arc<str>> = vec![presence("b", 1).into(), presence("c", 2).into()];
        let (seq, replay) = merge_replay(5, handed, collected, 10);
        assert_eq!(seq, 6);
        let texts: Vec<(u64, String)> = replay.iter().map(|(q, t)| (*q, t.to_string())).collect();
        assert_eq!(
            texts,
            vec![
                (4, presence("a", 4)),
                (5, presence("b", 5)),
                (6, presence("c", 6))
            ]
        );
    }

    #[test]
    fn given_a_frame_repeating_an_older_one_when_merged_then_it_is_kept() {
        // The holder sent b, then a; the placeholder collected only a new b.
        let handed = vec![(1, presence("b", 1)), (2, presence("a", 2))];
        let collected: Vec<Arc<str>> = vec![presence("b", 1).into()];
        let (seq, replay) = merge_replay(2, handed, collected, 10);
        assert_eq!(seq, 3, "b again is a new frame");
        assert_eq!(replay.len(), 3);
    }

    #[test]
    fn given_a_frame_collected_twice_and_held_once_when_merged_then_the_second_is_new() {
        let handed = vec![(1, presence("b", 1))];
        let collected: Vec<Arc<str>> = vec![presence("b", 1).into(), presence("b", 2).into()];
        let (seq, replay) = merge_replay(1, handed, collected, 1);
        assert_eq!(seq, 2);
        assert_eq!(replay.len(), 1, "trimmed to the buffer's size");
        assert_eq!(replay[0].0, 2);
    }

    #[test]
    fn given_a_placeholder_when_the_session_arrives_then_it_takes_its_key_and_frames() {
        let hub = Hub::default();
        let p = hub.placeholder("acc", "pwa", "c1", 10).unwrap();
        assert!(
            hub.placeholder("acc", "pwa", "c1", 10).is_none(),
            "one per id"
        );
        assert_eq!(p.send(&ServerFrame::Ping), Delivery::Buffered);
        assert!(
            !p.may_resume(None, Some("")),
            "a placeholder is never resumed"
        );
        let h = HandedOver {
            account_id: "acc".into(),
            client_id: "pwa".into(),
            connection_id: "c1".into(),
            credential_id: None,
            secret_hash: crate::accounts::hashing::hash("old"),
            seq: 7,
            replay: vec![(7, presence("a", 7))],
        };
        assert!(p.take_over(h.clone(), "new".into()));
        assert!(!p.take_over(h, "again".into()), "once");
        assert!(p.may_resume(None, Some("old")) && p.may_resume(None, Some("new")));
        assert_eq!(p.seq(), 8, "the ping collected meanwhile follows");
        let (tx, _rx) = channel();
        let a = hub.resume("c1", Some(6), tx).unwrap();
        assert_eq!(a.replay.len(), 2);
    }

    #[test]
    fn given_a_placeholder_when_discarded_then_it_is_gone_without_a_trace() {
        let hub = Hub::default();
        let p = hub.placeholder("acc", "pwa", "c1", 10).unwrap();
        hub.discard(&p);
        assert!(hub.get("c1").is_none() && hub.of_account("acc").is_empty());
    }
}
