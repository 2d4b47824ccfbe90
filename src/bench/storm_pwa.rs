//! The PWAs of the reconnect storm (issue 15): WebSocket sessions that follow their frames'
//! `seq`, answer heartbeats, and when their socket closes (Cradle restarting: `1012`) resume
//! with jittered exponential backoff, counting every frame missed or received twice.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::websocket::{open, Ws};
use super::BenchError;

/// What the PWAs saw.
#[derive(Default)]
pub(crate) struct PwaStats {
    /// Sessions opened before the restart.
    pub opened: AtomicU64,
    /// Sessions resumed after it.
    pub resumed: AtomicU64,
    /// Resumes answered `410` (the session was gone).
    pub gone: AtomicU64,
    /// Frames never received (gaps in `seq`).
    pub lost: AtomicU64,
    /// Frames received twice (a `seq` not above the last).
    pub(crate) repeated: AtomicU64,
    /// When the last resume succeeded (Unix milliseconds).
    pub(crate) last_resume: AtomicU64,
}

/// A session as its PWA knows it.
struct Known {
    connection_id: String,
    secret: String,
    last_seq: u64,
}

/// Reads frames until the socket ends, checking `seq` and answering pings.
async fn follow(ws: &mut Ws, known: &mut Known, stats: &PwaStats) {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else {
            if matches!(msg, Message::Close(_)) {
                return;
            }
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        if v["type"] == "ping" {
            let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
        }
        if v["type"] == "hello" {
            known.connection_id = v["connection_id"].as_str().unwrap_or_default().into();
            known.secret = v["resume_secret"].as_str().unwrap_or_default().into();
        }
        if let Some(seq) = v["seq"].as_u64() {
            if seq <= known.last_seq {
                stats.repeated.fetch_add(1, Relaxed);
            } else {
                stats.lost.fetch_add(seq - known.last_seq - 1, Relaxed);
                known.last_seq = seq;
            }
        }
    }
}

/// One PWA: opens a session, follows it until the restart closes it, then resumes with
/// backoff (100 ms doubling to 5 s, full jitter) and follows it again until aborted.
pub async fn pwa(
    i: usize,
    http: String,
    account: String,
    token: String,
    stats: Arc<PwaStats>,
) -> Result<(), BenchError> {
    let query = format!("client_id=pwa-{i}&token={token}");
    let mut ws = open(&http, &query).await?;
    stats.opened.fetch_add(1, Relaxed);
    let mut known = Known {
        connection_id: String::new(),
        secret: String::new(),
        last_seq: 0,
    };
    follow(&mut ws, &mut known, &stats).await;
    let mut attempt = 0u32;
    loop {
        let resume = format!(
            "{query}&connection_id={}&resume_from={}&resume_secret={}",
            known.connection_id, known.last_seq, known.secret
        );
        match open(&http, &resume).await {
            Ok(mut ws) => {
                stats.resumed.fetch_add(1, Relaxed);
                stats
                    .last_resume
                    .fetch_max(crate::clock::now_millis() as u64, Relaxed);
                follow(&mut ws, &mut known, &stats).await;
                return Ok(());
            }
            Err(BenchError::Target(e)) if e.contains("410") => {
                stats.gone.fetch_add(1, Relaxed);
                tracing::debug!(%account, "resume refused: {e}");
                return Ok(());
            }
            Err(_) => {
                attempt += 1;
                let cap = (100u64 << attempt.min(6)).min(5_000);
                let wait = super::jitter(i.wrapping_add(7919), attempt, cap);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
}
