//! A Server-Sent Events reader over reqwest (`Response::chunk`), for the live event stream's
//! tests: messages as the server framed them, comments (heartbeats) included.

use std::time::Duration;

/// One message of the stream: a comment line (`: …`) or an event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// `event:` (empty for the default, a log event).
    pub event: String,
    /// `id:`, if any.
    pub id: Option<String>,
    /// `data:` lines joined by `\n`.
    pub data: String,
    /// A comment line's text (heartbeats); then the other fields are empty.
    pub comment: Option<String>,
}

impl Message {
    /// `data` as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// An open stream.
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    /// `GET url` with `headers`; panics unless it answers 200 `text/event-stream`.
    pub async fn open(url: &str, headers: &[(&str, String)]) -> Sse {
        let mut request = reqwest::Client::new().get(url);
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let response = request.send().await.expect("the stream request");
        let status = response.status();
        let kind = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        if status != 200 || !kind.starts_with("text/event-stream") {
            let body = response.text().await.unwrap_or_default();
            panic!("{url}: {status} {kind} {body}");
        }
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// The next message, `None` when the server ended the stream or nothing came in `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Message> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(&block));
            }
            match tokio::time::timeout(wait, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next message that is not a comment.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Message> {
        loop {
            let m = self.next(wait).await?;
            if m.comment.is_none() {
                return Some(m);
            }
        }
    }
}

fn parse(block: &str) -> Message {
    let mut m = Message::default();
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            m.comment = Some(c.trim().to_string());
        } else if let Some(v) = line.strip_prefix("event:") {
            m.event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("id:") {
            m.id = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
        }
    }
    m.data = data.join("\n");
    m
}

/// A stream read in the background: every message (comments left out) kept in arrival order,
/// and how the stream ended, if it did. The reading stops when it is dropped.
pub struct Collected {
    state: std::sync::Arc<std::sync::Mutex<(Vec<Message>, Option<String>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collected {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collected {
    /// Every message received so far.
    pub fn messages(&self) -> Vec<Message> {
        self.state.lock().unwrap().0.clone()
    }

    /// Why the stream ended (the server ended it, or it failed), once it has.
    pub fn ended(&self) -> Option<String> {
        self.state.lock().unwrap().1.clone()
    }
}

impl Sse {
    /// Reads the rest of the stream in a task.
    pub fn collect(mut self) -> Collected {
        let state = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), None)));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let ended = loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let m = parse(&block);
                    if m.comment.is_none() {
                        shared.lock().unwrap().0.push(m);
                    }
                }
                match self.response.chunk().await {
                    Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                    Ok(None) => break "the server ended the stream".to_string(),
                    Err(e) => break format!("the stream failed: {e}"),
                }
            };
            shared.lock().unwrap().1 = Some(ended);
        });
        Collected { state, task }
    }
}
