//! `cradle-monitor --events`: follows Cradle's live event stream over HTTP (Server-Sent
//! Events, `…/events/stream`), so an operator sees every committed event — connections and
//! sessions — one line each; it resumes from the last id after a drop, with no gap and no
//! duplicate.

use std::io::Write;
use std::time::Duration;

use super::{format_millis, MonitorError};

/// What to follow.
#[derive(Debug, Clone)]
pub struct EventsOptions {
    /// Cradle's HTTP API base URL.
    pub http: String,
    /// One account (default: every account: an operator secret or the admin token).
    pub account: Option<String>,
    /// Start after this position (default: from now on).
    pub after: Option<i64>,
    /// Bearer token.
    pub token: Option<String>,
    /// One JSON object per line instead of a table.
    pub json: bool,
}

/// The stream's URL for `options`.
fn stream_url(options: &EventsOptions) -> String {
    let base = options.http.trim_end_matches('/');
    match &options.account {
        Some(a) => format!("{base}/v1/accounts/{a}/events/stream"),
        None => format!("{base}/v1/events/stream"),
    }
}

/// One Server-Sent Events message.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Message {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Splits the complete messages off the front of `buffer` (comments dropped).
pub(crate) fn take_messages(buffer: &mut String) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let mut m = Message::default();
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                m.event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                m.id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        m.data = data.join("\n");
        if !(m.event.is_empty() && m.id.is_none() && m.data.is_empty()) {
            out.push(m);
        }
    }
    out
}

/// One event as a table line: when, account, type, stream, and the payload's telling fields.
pub(crate) fn event_line(e: &serde_json::Value) -> String {
    let at = e["at_millis"]
        .as_i64()
        .map_or_else(String::new, format_millis);
    let d = &e["data"];
    let mut detail = Vec::new();
    for key in [
        "client_id",
        "connection_id",
        "reported_connection_id",
        "reason",
        "session_id",
        "name",
    ] {
        if let Some(v) = d[key].as_str() {
            detail.push(format!("{key}={v}"));
        }
    }
    if d["observed"].as_bool() == Some(true) {
        detail.push("observed".into());
    }
    format!(
        "{at:<24} {:>8} {:<16} {:<24} {}",
        e["position"],
        e["account_id"].as_str().unwrap_or("-"),
        e["type"].as_str().unwrap_or("-"),
        detail.join(" ")
    )
}

/// Follows the stream until `stop`: a refusal (401, 403, 400) ends it with an error; a drop,
/// a cut or an unreachable server is retried every second from the last id.
pub async fn follow(
    options: EventsOptions,
    out: &mut impl Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), MonitorError> {
    tokio::pin!(stop);
    let url = stream_url(&options);
    let mut last: Option<i64> = options.after;
    let client = reqwest::Client::new();
    loop {
        let mut request = client.get(&url);
        if let Some(token) = &options.token {
            request = request.bearer_auth(token);
        }
        if let Some(p) = last {
            request = request.header("Last-Event-ID", p.to_string());
        }
        let followed = tokio::select! {
            () = &mut stop => return Ok(()),
            r = request.send() => r,
        };
        match followed {
            Ok(response) if response.status().is_success() => {
                let done = read(response, out, &options, &mut last, &mut stop).await?;
                if done {
                    return Ok(());
                }
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                return Err(MonitorError::Stream(format!("{url}: {status} {body}")));
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), "event stream refused; retrying")
            }
            Err(error) => tracing::warn!(%error, "event stream unreachable; retrying"),
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Prints the stream's events until it ends (`false`) or `stop` (`true`).
async fn read(
    mut response: reqwest::Response,
    out: &mut impl Write,
    options: &EventsOptions,
    last: &mut Option<i64>,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<bool, MonitorError> {
    let mut buffer = String::new();
    loop {
        let chunk = tokio::select! {
            () = stop.as_mut() => return Ok(true),
            c = response.chunk() => c,
        };
        let Ok(Some(bytes)) = chunk else {
            return Ok(false);
        };
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        for m in take_messages(&mut buffer) {
            match m.event.as_str() {
                "" => {
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(&m.data) else {
                        continue;
                    };
                    *last = event["position"].as_i64().or(*last);
                    if options.json {
                        writeln!(out, "{event}")?;
                    } else {
                        writeln!(out, "{}", event_line(&event))?;
                    }
                }
                "cut" => tracing::warn!(data = %m.data, "event stream cut by the server; resuming"),
                _ => {}
            }
        }
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_at_blank_lines_and_comments_dropped() {
        let mut buffer =
            ": keep-alive\n\nid: 7\ndata: {\"a\":1}\n\nevent: live\ndata: {}\n\nid: 8".to_string();
        let got = take_messages(&mut buffer);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id.as_deref(), Some("7"));
        assert_eq!(got[0].data, "{\"a\":1}");
        assert_eq!(got[1].event, "live");
        assert_eq!(buffer, "id: 8", "an incomplete message waits for the rest");
    }

    #[test]
    fn an_event_line_names_its_client_connection_and_reason() {
        let e = serde_json::json!({"position": 12, "account_id": "fam", "type": "connection.disconnected",
            "at_millis": 0, "data": {"client_id": "baby-1", "connection_id": "k1", "reason": "lost"}});
        let line = event_line(&e);
        assert!(line.starts_with("1970-01-01 00:00:00.000"), "{line}");
        for part in [
            "12",
            "fam",
            "connection.disconnected",
            "client_id=baby-1",
            "connection_id=k1",
            "reason=lost",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }
}
