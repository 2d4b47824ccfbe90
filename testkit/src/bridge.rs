//! A client of the legacy WebSocket bridge (`/ws`): the socket type and its frames as JSON.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Cradle;

/// A bridge socket as `tokio_tungstenite::connect_async` opens it.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Cradle {
    /// The bridge's `/ws` URL with `query`.
    pub fn ws_url(&self, query: &str) -> String {
        format!("{}/ws?{query}", self.http.replace("http://", "ws://"))
    }
}

/// The next text frame, answering and skipping the server's heartbeats; None when closed or
/// after 5 s.
pub async fn next_frame(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "ping" {
                    let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                    continue;
                }
                return Some(v);
            }
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// A WebSocket upgrade GET of `url` written by hand (a fixed key): for the HTTP status an
/// upgrade gets, 101 or a refusal, without a WebSocket client.
pub fn upgrade_request(url: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .get(url)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
}
