//! `cradle-monitor`: a live view of every status change, as a table or as JSON lines.
//!
//! It subscribes to the status wildcard (one account or all). With `--http` it first takes
//! a snapshot of the account's clients from the API, because a late MQTT subscriber may see
//! only part of the retained statuses; after a snapshot, retained replays are skipped.
//! With `--events` it follows Cradle's live event stream over HTTP instead ([`events`]):
//! every committed event, sessions included.

pub mod events;

use std::cell::RefCell;
use std::io::Write;
use std::ops::ControlFlow;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde::Serialize;

use crate::domain::connection::parse_status_payload;
use crate::domain::connection::ConnectionCommand;
use crate::mqtt_client::{drive, Polled};
use crate::topics::{is_valid_id, parse_status_topic, status_filter};

/// Errors of the monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The broker URL does not parse.
    #[error("--broker: {0}")]
    BrokerUrl(String),
    /// The account id is not a valid id.
    #[error("--account: `{0}` is not a valid account id")]
    Account(String),
    /// A snapshot needs an account.
    #[error("--http needs --account: the API lists one account's clients")]
    SnapshotNeedsAccount,
    /// The snapshot request failed.
    #[error("--http: snapshot failed: {0}")]
    Snapshot(String),
    /// The event stream refused the monitor (a bad token, an account it may not read).
    #[error("--events: {0}")]
    Stream(String),
    /// The broker refused or dropped the connection.
    #[error("broker: {0}")]
    Broker(String),
    /// Writing the output failed (a closed pipe).
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// What to watch and how to print it.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// `mqtt://host:port`.
    pub broker: String,
    /// Only this account (default: every account).
    pub account: Option<String>,
    /// Base URL of Cradle's HTTP API for an initial snapshot.
    pub http: Option<String>,
    /// One JSON object per line instead of a table.
    pub json: bool,
    /// MQTT username, if the broker needs one.
    pub username: Option<String>,
    /// MQTT password.
    pub password: Option<String>,
    /// Bearer token for the `--http` snapshot (needed once accounts exist).
    pub token: Option<String>,
}

/// One line of output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Row {
    /// `snapshot` (from the API), `retained` (the broker's last known) or `live`.
    pub source: &'static str,
    /// The account.
    pub account_id: String,
    /// The client.
    pub client_id: String,
    /// `connected`, `disconnected` or `invalid`.
    pub state: String,
    /// Who said a connection started: `edge` (Cradle's edge observed it) or `device` (the
    /// device's own report); none on an end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<&'static str>,
    /// The connection reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    /// Why it disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, on the reporter's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_millis: Option<i64>,
    /// Why the report is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Parses `mqtt://host[:port]` (or `tcp://`) into host and port.
pub(crate) fn parse_broker_url(url: &str) -> Result<(String, u16), MonitorError> {
    let parsed = crate::endpoint::BrokerUrl::parse(url)
        .map_err(|e| MonitorError::BrokerUrl(format!("{url}: {e}")))?;
    if parsed.tls {
        return Err(MonitorError::BrokerUrl(format!(
            "{url}: scheme must be mqtt:// or tcp://"
        )));
    }
    Ok((parsed.host, parsed.port))
}

/// Turns one status message into a row.
pub(crate) fn row_from_message(topic: &str, payload: &[u8], retained: bool) -> Option<Row> {
    let key = parse_status_topic(topic).ok()?;
    let source = if retained { "retained" } else { "live" };
    if payload.is_empty() {
        return None;
    }
    let row = match parse_status_payload(payload, 64 * 1024) {
        Ok(ConnectionCommand::Connect {
            connection_id,
            at_millis,
            observed,
            ..
        }) => Row {
            source,
            account_id: key.account_id,
            client_id: key.client_id,
            state: "connected".into(),
            by: Some(if observed { "edge" } else { "device" }),
            connection_id: Some(connection_id),
            reason: None,
            at_millis: Some(at_millis),
            error: None,
        },
        Ok(ConnectionCommand::Disconnect {
            connection_id,
            reason,
            at_millis,
            ..
        }) => Row {
            source,
            account_id: key.account_id,
            client_id: key.client_id,
            state: "disconnected".into(),
            by: None,
            connection_id: Some(connection_id),
            reason: Some(reason.as_str().into()),
            at_millis: Some(at_millis),
            error: None,
        },
        Err(reason) => Row {
            source,
            account_id: key.account_id,
            client_id: key.client_id,
            state: "invalid".into(),
            by: None,
            connection_id: None,
            reason: None,
            at_millis: None,
            error: Some(reason.as_str().into()),
        },
    };
    Some(row)
}

/// The table header.
pub(crate) const HEADER: &str = "TIME (UTC)               SOURCE    ACCOUNT          CLIENT           STATE         CONNECTION           REASON";

/// Formats a row for the table.
pub(crate) fn table_line(row: &Row) -> String {
    let time = row
        .at_millis
        .map(format_millis)
        .unwrap_or_else(|| "-".into());
    let state = match &row.error {
        Some(e) => format!("invalid:{e}"),
        None => row.state.clone(),
    };
    format!(
        "{:<24} {:<9} {:<16} {:<16} {:<13} {:<6} {:<20} {}",
        time,
        row.source,
        row.account_id,
        row.client_id,
        state,
        row.by.unwrap_or("-"),
        row.connection_id.as_deref().unwrap_or("-"),
        row.reason.as_deref().unwrap_or("-"),
    )
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmm`.
pub(crate) fn format_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03}",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

fn emit(out: &mut impl Write, row: &Row, json: bool) -> Result<(), MonitorError> {
    if json {
        let line = serde_json::to_string(row).map_err(|e| std::io::Error::other(e.to_string()))?;
        writeln!(out, "{line}")?;
    } else {
        writeln!(out, "{}", table_line(row))?;
    }
    out.flush()?;
    Ok(())
}

async fn snapshot(
    base: &str,
    account: &str,
    token: Option<&str>,
) -> Result<Vec<Row>, MonitorError> {
    let url = format!(
        "{}/v1/accounts/{account}/clients",
        base.trim_end_matches('/')
    );
    let mut request = reqwest::Client::new().get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let body: serde_json::Value = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| MonitorError::Snapshot(e.to_string()))?
        .json()
        .await
        .map_err(|e| MonitorError::Snapshot(e.to_string()))?;
    let clients = body["clients"]
        .as_array()
        .ok_or_else(|| MonitorError::Snapshot("no `clients` array in the answer".into()))?;
    Ok(clients
        .iter()
        .map(|c| Row {
            source: "snapshot",
            account_id: account.to_string(),
            client_id: c["client_id"].as_str().unwrap_or_default().to_string(),
            state: if c["connected"].as_bool().unwrap_or(false) {
                "connected".into()
            } else {
                "disconnected".into()
            },
            by: None,
            connection_id: c["connection_id"].as_str().map(str::to_string),
            reason: c["last_disconnect_reason"]
                .as_str()
                .filter(|_| !c["connected"].as_bool().unwrap_or(false))
                .map(str::to_string),
            at_millis: c["since_millis"].as_i64(),
            error: None,
        })
        .collect())
}

/// What the watch has done so far.
struct Watch<'a, W> {
    out: &'a mut W,
    /// The snapshot (`--http`) was printed: retained messages are history from then on.
    took_snapshot: bool,
    /// The broker accepted the monitor once: later failures are reconnected, not fatal.
    connected_once: bool,
}

/// One event of the monitor's connection: subscribe after each CONNACK, take the snapshot
/// after the first SUBACK, print each status; a failure before the first connection ends the
/// watch with an error.
async fn on_polled<W: Write>(
    watch: &RefCell<Watch<'_, W>>,
    client: &AsyncClient,
    filter: &str,
    options: &MonitorOptions,
    polled: Polled<EventLoop>,
) -> ControlFlow<Result<(), MonitorError>> {
    let step = async {
        match polled {
            Polled::Event(Event::Incoming(Packet::ConnAck(_))) => {
                watch.borrow_mut().connected_once = true;
                client
                    .subscribe(filter, QoS::AtMostOnce)
                    .await
                    .map_err(|e| MonitorError::Broker(e.to_string()))?;
            }
            Polled::Event(Event::Incoming(Packet::SubAck(_))) => {
                let took = watch.borrow().took_snapshot;
                if let (Some(base), Some(account), false) = (&options.http, &options.account, took)
                {
                    let rows = snapshot(base, account, options.token.as_deref()).await?;
                    let mut w = watch.borrow_mut();
                    for row in rows {
                        emit(w.out, &row, options.json)?;
                    }
                    w.took_snapshot = true;
                }
            }
            Polled::Event(Event::Incoming(Packet::Publish(p))) => {
                let mut w = watch.borrow_mut();
                if p.retain && w.took_snapshot {
                    return Ok(());
                }
                if let Some(row) = row_from_message(&p.topic, &p.payload, p.retain) {
                    emit(w.out, &row, options.json)?;
                }
            }
            Polled::Event(_) => {}
            Polled::Failed(error) => {
                if !watch.borrow().connected_once {
                    return Err(MonitorError::Broker(format!(
                        "cannot connect to {}: {error}",
                        options.broker
                    )));
                }
            }
        }
        Ok(())
    };
    match step.await {
        Ok(()) => ControlFlow::Continue(()),
        Err(error) => ControlFlow::Break(Err(error)),
    }
}

/// Runs until `shutdown` resolves, printing to `out`.
pub async fn run(
    options: MonitorOptions,
    out: &mut impl Write,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), MonitorError> {
    let (host, port) = parse_broker_url(&options.broker)?;
    let account = match &options.account {
        Some(a) if !is_valid_id(a) => return Err(MonitorError::Account(a.clone())),
        Some(a) => a.clone(),
        None => "+".to_string(),
    };
    if options.http.is_some() && options.account.is_none() {
        return Err(MonitorError::SnapshotNeedsAccount);
    }
    let mut mqtt = MqttOptions::new(format!("cradle-monitor-{}", std::process::id()), host, port);
    mqtt.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
    if let (Some(u), Some(p)) = (&options.username, &options.password) {
        mqtt.set_credentials(u.clone(), p.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(mqtt, 64);
    crate::mqtt_client::nodelay(&mut eventloop);
    let filter = status_filter(&account);
    if !options.json {
        writeln!(out, "{HEADER}")?;
    }
    let watch = RefCell::new(Watch {
        out,
        took_snapshot: false,
        connected_once: false,
    });
    let ended = tokio::select! {
        _ = shutdown => Ok(()),
        ended = drive(&mut eventloop, "cradle-monitor", |polled| {
            on_polled(&watch, &client, &filter, &options, polled)
        }) => ended,
    };
    ended?;
    let _ = client.disconnect().await;
    // Let the DISCONNECT reach the broker, briefly.
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1999").unwrap(),
            ("127.0.0.1".to_string(), 1999)
        );
        assert_eq!(
            parse_broker_url("mqtt://localhost").unwrap(),
            ("localhost".to_string(), 1883)
        );
        assert!(parse_broker_url("http://x").is_err());
    }

    #[test]
    fn millis_format_as_utc() {
        assert_eq!(format_millis(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_millis(1_795_000_000_123), "2026-11-18 11:06:40.123");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29 00:00:00.000");
    }

    #[test]
    fn a_status_message_becomes_a_row() {
        let row = row_from_message(
            "accounts/a/clients/c/status",
            br#"{"type":"disconnected","connection_id":"k","reason":"clean","at_millis":1}"#,
            true,
        )
        .unwrap();
        assert_eq!(row.source, "retained");
        assert_eq!(row.state, "disconnected");
        assert_eq!(row.reason.as_deref(), Some("clean"));
        let line = table_line(&row);
        assert!(
            line.contains("disconnected") && line.contains("clean"),
            "{line}"
        );
    }

    #[test]
    fn an_invalid_payload_is_shown_with_its_reason() {
        let row = row_from_message("accounts/a/clients/c/status", b"{", false).unwrap();
        assert_eq!(row.state, "invalid");
        assert_eq!(row.error.as_deref(), Some("malformed_json"));
    }
}
