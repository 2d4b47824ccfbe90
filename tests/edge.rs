//! The MQTT edge with accounts: real rumqttc clients (and raw MQTT 3.1.1/5 packets where a
//! test needs bytes a library will not send) against the `cradle` binary.
//!
//! Accounts `a` and `b` exist; `a/d1`, `a/d2` and `b/d1` (the same client id in another
//! account) hold device secrets; an operator secret and an admin token exist too.

use cradle_testkit as common;

use futures_util::{SinkExt, StreamExt};
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use common::{status, Cradle, RawV4, RawV5};

const ADMIN: &str = "edge-tests-admin-token";

use common::cli;

struct Setup {
    _dir: tempfile::TempDir,
    cradle: Cradle,
    a_d1: String,
    a_d2: String,
    b_d1: String,
    operator: String,
}

async fn setup(extra_env: &[(&str, String)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("edge.db").display());
    cli(&db, &["accounts", "create", "a"]);
    cli(&db, &["accounts", "create", "b"]);
    let a_d1 = cli(
        &db,
        &["credentials", "issue", "--account", "a", "--client", "d1"],
    );
    let a_d2 = cli(
        &db,
        &["credentials", "issue", "--account", "a", "--client", "d2"],
    );
    let b_d1 = cli(
        &db,
        &["credentials", "issue", "--account", "b", "--client", "d1"],
    );
    let operator = cli(&db, &["credentials", "issue", "--operator"]);
    let mut env = vec![("CRADLE_ADMIN_TOKEN", ADMIN.to_string())];
    env.extend(extra_env.iter().cloned());
    let cradle = Cradle::spawn_ready(dir.path(), &db, &env).await;
    Setup {
        _dir: dir,
        cradle,
        a_d1,
        a_d2,
        b_d1,
        operator,
    }
}

/// A rumqttc client whose incoming packets arrive on a channel; it does not reconnect.
struct Client {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Packet>,
    task: tokio::task::JoinHandle<()>,
}

async fn connect(
    port: u16,
    client_id: &str,
    login: Option<(&str, &str)>,
    will: Option<LastWill>,
) -> Result<Client, ConnectReturnCode> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((u, p)) = login {
        options.set_credentials(u, p);
    }
    if let Some(w) = will {
        options.set_last_will(w);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut result_tx = Some(result_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(r) = result_tx.take() {
                        let _ = r.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(p)) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    if let Some(r) = result_tx.take() {
                        let _ = r.send(Err(code));
                    }
                    return;
                }
                Err(_) => return,
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(10), result_rx)
        .await
        .expect("CONNACK in time")
        .expect("event loop answered")
    {
        Ok(()) => Ok(Client { client, rx, task }),
        Err(code) => Err(code),
    }
}

impl Client {
    /// The next incoming packet matching `pick`, within `wait`.
    async fn next<T>(
        &mut self,
        wait: Duration,
        mut pick: impl FnMut(Packet) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let p = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if let Some(t) = pick(p) {
                return Some(t);
            }
        }
    }

    async fn suback(&mut self) -> Vec<v4::SubscribeReasonCode> {
        self.next(Duration::from_secs(5), |p| match p {
            Packet::SubAck(a) => Some(a.return_codes),
            _ => None,
        })
        .await
        .expect("SUBACK")
    }

    async fn publish_received(&mut self, wait: Duration) -> Option<rumqttc::Publish> {
        self.next(wait, |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// Whether the server closed the connection within `wait`.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, async { while self.rx.recv().await.is_some() {} })
            .await
            .is_ok()
    }

    fn drop_socket(self) {
        self.task.abort();
    }
}

/// Reads, from a subscriber of it, the `connected` status the edge published for the
/// connection of `account`/`client` when it accepted it.
async fn observed_start_of(d: &mut Client, account: &str, client: &str) {
    let p = d
        .publish_received(Duration::from_secs(5))
        .await
        .expect("the edge's observed start");
    assert_eq!(p.topic, status_topic(account, client));
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["type"], "connected", "{v}");
    assert_eq!(v["observed"], true, "{v}");
}

/// The (type, connection id, reason) of each event.
fn summary(events: &[serde_json::Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            let s = |k: &str| e["data"][k].as_str().unwrap_or("").to_string();
            (
                e["type"].as_str().unwrap().to_string(),
                s("connection_id"),
                s("reason"),
            )
        })
        .collect()
}

async fn device(s: &Setup, account: &str, client: &str, secret: &str) -> Client {
    connect(s.cradle.mqtt_port, client, Some((account, secret)), None)
        .await
        .unwrap_or_else(|code| panic!("{account}/{client} refused: {code:?}"))
}

fn inbox(account: &str, client: &str) -> String {
    format!("accounts/{account}/clients/{client}/webrtc_inbox")
}

fn status_topic(account: &str, client: &str) -> String {
    format!("accounts/{account}/clients/{client}/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_wrong_client_id_and_anonymous_are_refused_not_authorized() {
    let s = setup(&[]).await;
    let port = s.cradle.mqtt_port;
    let not_authorized: Result<(), _> = Err(ConnectReturnCode::NotAuthorized);
    let wrong = "0".repeat(64);
    assert_eq!(
        connect(port, "d1", Some(("a", &wrong)), None).await.err(),
        not_authorized.err()
    );
    // a's secret of d1, presented with another client id, or for account b
    assert_eq!(
        connect(port, "d2", Some(("a", &s.a_d1)), None).await.err(),
        not_authorized.err()
    );
    assert_eq!(
        connect(port, "d1", Some(("b", &s.a_d1)), None).await.err(),
        not_authorized.err()
    );
    // accounts exist, so anonymous clients are refused even on loopback
    assert_eq!(
        connect(port, "anon", None, None).await.err(),
        not_authorized.err()
    );
    // MQTT 5 gets reason code 0x87
    let (_, code) = RawV5::connect(port, "d1", Some(("a", &wrong)), 30).await;
    assert_eq!(code, v5::ConnectReturnCode::NotAuthorized);
    let (_, code) = RawV5::connect(port, "d1", Some(("a", &s.a_d1)), 30).await;
    assert_eq!(code, v5::ConnectReturnCode::Success);
    // the right secret with its own client id is let in
    device(&s, "a", "d1", &s.a_d1).await;
    assert!(
        s.cradle
            .metric(
                "cradle_edge_connects_total{outcome=\"not_authorized\",reason=\"bad_credentials\"}"
            )
            .await
            >= 4
    );
    assert_eq!(
        s.cradle
            .metric("cradle_edge_connects_total{outcome=\"not_authorized\",reason=\"anonymous\"}")
            .await,
        1
    );
    let log = s.cradle.log();
    assert!(log.contains("not authorized"), "{log}");
    assert!(!log.contains(&s.a_d1), "a secret was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_cannot_read_or_write_another_account() {
    let s = setup(&[]).await;
    let mut a = device(&s, "a", "d1", &s.a_d1).await;
    let mut a2 = device(&s, "a", "d2", &s.a_d2).await;
    // b/d1 has the same client id as a/d1 and both stay connected: ids are per account.
    let mut b = device(&s, "b", "d1", &s.b_d1).await;
    b.client
        .subscribe("accounts/b/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        b.suback().await,
        vec![v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // b's own connection as the edge recorded it: nothing of account a's follows.
    observed_start_of(&mut b, "b", "d1").await;
    a2.client
        .subscribe(inbox("a", "d2"), QoS::AtLeastOnce)
        .await
        .unwrap();
    a2.suback().await;

    // One SUBSCRIBE, four filters: only the one inside account a is granted.
    a.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("accounts/a/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("accounts/+/clients/+/status".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("accounts/b/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("$SYS/#".into(), QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        a.suback().await,
        vec![
            v4::SubscribeReasonCode::Success(QoS::AtLeastOnce),
            v4::SubscribeReasonCode::Failure,
            v4::SubscribeReasonCode::Failure,
            v4::SubscribeReasonCode::Failure,
            v4::SubscribeReasonCode::Failure,
        ]
    );

    // a publishes into b: acknowledged (QoS 1) but dropped.
    for topic in [
        inbox("b", "d1"),
        status_topic("b", "d1"),
        "accounts/b/baby_stations/d1".into(),
    ] {
        a.client
            .publish(&topic, QoS::AtLeastOnce, false, "from a")
            .await
            .unwrap();
    }
    // a may not publish another client's status in its own account either.
    a.client
        .publish(status_topic("a", "d2"), QoS::AtLeastOnce, false, "spoof")
        .await
        .unwrap();
    let acks = async {
        let mut n = 0;
        while n < 4 {
            a.next(Duration::from_secs(5), |p| {
                matches!(p, Packet::PubAck(_)).then_some(())
            })
            .await
            .expect("PUBACK for a refused publish");
            n += 1;
        }
    };
    acks.await;
    // Allowed: a signals a2 inside its own account (a JSON object; the edge sets `from`).
    a.client
        .publish(
            inbox("a", "d2"),
            QoS::AtLeastOnce,
            false,
            r#"{"data":"offer"}"#,
        )
        .await
        .unwrap();
    let got = a2
        .publish_received(Duration::from_secs(5))
        .await
        .expect("inbox message");
    let got: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(got, serde_json::json!({"data": "offer", "from": "d1"}));

    assert!(b
        .publish_received(Duration::from_millis(700))
        .await
        .is_none());
    // b's own subscription works: b's own publish reaches it.
    b.client
        .publish(
            inbox("b", "d1"),
            QoS::AtLeastOnce,
            false,
            r#"{"data":"own"}"#,
        )
        .await
        .unwrap();
    let own = b
        .publish_received(Duration::from_secs(5))
        .await
        .expect("b's own message");
    let own: serde_json::Value = serde_json::from_slice(&own.payload).unwrap();
    assert_eq!(own["data"], "own");
    // ... and a's subscriber inside a never saw anything of b.
    while let Some(p) = a.publish_received(Duration::from_millis(300)).await {
        assert!(p.topic.starts_with("accounts/a/"), "{}", p.topic);
    }

    assert_eq!(
        s.cradle
            .metric("cradle_edge_acl_refused_total{packet=\"publish\"}")
            .await,
        4
    );
    assert_eq!(
        s.cradle
            .metric("cradle_edge_acl_refused_total{packet=\"subscribe\"}")
            .await,
        4
    );
    // HTTP: a device secret is not a bearer token; b's events are not a's.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/accounts/b/events", s.cradle.http))
        .bearer_auth(&s.a_d1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_aimed_at_another_account_is_refused_at_connect() {
    let s = setup(&[]).await;
    let will = LastWill::new(status_topic("b", "d1"), "x", QoS::AtLeastOnce, true);
    assert_eq!(
        connect(s.cradle.mqtt_port, "d1", Some(("a", &s.a_d1)), Some(will))
            .await
            .err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(
        s.cradle
            .metric("cradle_edge_connects_total{outcome=\"will_not_allowed\"}")
            .await,
        1
    );
    // Its own status as the Will is fine.
    let will = LastWill::new(status_topic("a", "d1"), "x", QoS::AtLeastOnce, true);
    assert!(
        connect(s.cradle.mqtt_port, "d1", Some(("a", &s.a_d1)), Some(will))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_violations_disconnect_the_client_as_kicked() {
    let s = setup(&[]).await;
    let mut a = device(&s, "a", "d1", &s.a_d1).await;
    a.client
        .publish(
            status_topic("a", "d1"),
            QoS::AtLeastOnce,
            true,
            status("connected", "k1", 10, None),
        )
        .await
        .unwrap();
    // Observed by the edge, then reported by the device.
    s.cradle.wait_events("a", 2).await;
    for _ in 0..11 {
        a.client
            .publish(inbox("b", "d1"), QoS::AtMostOnce, false, "x")
            .await
            .unwrap();
    }
    assert!(a.closed_within(Duration::from_secs(5)).await, "kicked");
    let events = s.cradle.wait_events("a", 3).await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[1]["type"], "connection.reported");
    assert_eq!(events[2]["type"], "connection.disconnected");
    assert_eq!(events[2]["data"]["reason"], "kicked");
    assert_eq!(events[2]["data"]["connection_id"], "k1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreported_socket_loss_ends_the_connection_once_as_lost() {
    let s = setup(&[]).await;
    let a = device(&s, "a", "d1", &s.a_d1).await;
    a.client
        .publish(
            status_topic("a", "d1"),
            QoS::AtLeastOnce,
            true,
            status("connected", "k1", 10, None),
        )
        .await
        .unwrap();
    s.cradle.wait_events("a", 2).await;
    // No Will, no goodbye: the socket just goes.
    a.drop_socket();
    s.cradle.wait_events("a", 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = s.cradle.events("a").await;
    // Recorded under the edge's id (no Will) if its observed start came first, else under the
    // reported k1; either way one connection, known as k1 once reported.
    let m = events[0]["data"]["connection_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.starts_with("m-") || m == "k1", "{m}");
    assert_eq!(
        summary(&events),
        [
            ("connection.connected".into(), m.clone(), "".into()),
            ("connection.reported".into(), m, "".into()),
            ("connection.disconnected".into(), "k1".into(), "lost".into()),
        ],
        "one end: {events:#?}"
    );
    assert_eq!(
        s.cradle.client("a", "d1").await.unwrap()["connected"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_ends_the_old_connection_once_as_takeover() {
    let s = setup(&[]).await;
    // The old connection even set a status Will saying "lost": the edge stamps what it saw.
    let will = LastWill::new(
        status_topic("a", "d1"),
        status("disconnected", "k1", 11, Some("lost")),
        QoS::AtLeastOnce,
        true,
    );
    let mut old = connect(s.cradle.mqtt_port, "d1", Some(("a", &s.a_d1)), Some(will))
        .await
        .unwrap();
    old.client
        .publish(
            status_topic("a", "d1"),
            QoS::AtLeastOnce,
            true,
            status("connected", "k1", 10, None),
        )
        .await
        .unwrap();
    s.cradle.wait_events("a", 2).await;
    let new = device(&s, "a", "d1", &s.a_d1).await;
    assert!(
        old.closed_within(Duration::from_secs(5)).await,
        "old connection closed"
    );
    new.client
        .publish(
            status_topic("a", "d1"),
            QoS::AtLeastOnce,
            true,
            status("connected", "k2", 20, None),
        )
        .await
        .unwrap();
    s.cradle.wait_events("a", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = s.cradle.events("a").await;
    // The new connection has no Will: recorded under the edge's id, then reported as k2.
    let m = events[3]["data"]["connection_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        summary(&events),
        vec![
            ("connection.connected".into(), "k1".into(), "".into()),
            ("connection.reported".into(), "k1".into(), "".into()),
            (
                "connection.disconnected".into(),
                "k1".into(),
                "takeover".into()
            ),
            ("connection.connected".into(), m.clone(), "".into()),
            ("connection.reported".into(), m, "".into()),
        ],
        "{events:#?}"
    );
    assert_eq!(events[4]["data"]["reported_connection_id"], "k2");
    assert_eq!(
        s.cradle.client("a", "d1").await.unwrap()["connection_id"],
        "k2"
    );
    assert_eq!(
        s.cradle
            .metric("cradle_edge_disconnects_total{reason=\"takeover\"}")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_is_accepted_and_a_silent_client_times_out() {
    let s = setup(&[]).await;
    // Keep-alive 0 (Paho's default): accepted, never timed out.
    let (mut idle, code) = RawV4::connect(s.cradle.mqtt_port, "d2", Some(("a", &s.a_d2)), 0).await;
    assert_eq!(code, 0);
    // Keep-alive 1 s and then silence: ended after 1.5 s as keepalive_timeout.
    let (mut quiet, code) = RawV4::connect(s.cradle.mqtt_port, "d1", Some(("a", &s.a_d1)), 1).await;
    assert_eq!(code, 0);
    quiet
        .publish(
            &status_topic("a", "d1"),
            status("connected", "k1", 10, None).as_bytes(),
            1,
        )
        .await;
    assert!(matches!(quiet.read().await, Some(v4::Packet::PubAck(_))));
    // d2 and d1 observed, d1 reported, d1's end.
    let events = s.cradle.wait_events("a", 4).await;
    let ended: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "connection.disconnected")
        .collect();
    assert_eq!(ended.len(), 1, "{events:#?}");
    assert_eq!(ended[0]["data"]["reason"], "keepalive_timeout");
    assert_eq!(ended[0]["data"]["client_id"], "d1");
    assert!(quiet.read().await.is_none(), "closed by the edge");
    // The keep-alive 0 client is still there and answered.
    idle.send(&[0xC0, 0]).await;
    assert!(matches!(idle.read().await, Some(v4::Packet::PingResp)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_alias_cannot_smuggle_a_topic_past_the_check() {
    let s = setup(&[]).await;
    let mut b = device(&s, "b", "d1", &s.b_d1).await;
    b.client
        .subscribe("accounts/b/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    b.suback().await;
    observed_start_of(&mut b, "b", "d1").await;
    let (mut a, code) = RawV5::connect(s.cradle.v5_port, "d1", Some(("a", &s.a_d1)), 30).await;
    assert_eq!(code, v5::ConnectReturnCode::Success);
    let mut a_sub = device(&s, "a", "d2", &s.a_d2).await;
    a_sub
        .client
        .subscribe(inbox("a", "d2"), QoS::AtLeastOnce)
        .await
        .unwrap();
    a_sub.suback().await;

    // Alias 1 set on an allowed topic, then reused with an empty topic: delivered.
    a.publish(&inbox("a", "d2"), Some(1), br#"{"data":"first"}"#, 1)
        .await;
    assert_eq!(a.puback().await, v5::PubAckReason::Success);
    a.publish("", Some(1), br#"{"data":"second"}"#, 2).await;
    assert_eq!(a.puback().await, v5::PubAckReason::Success);
    // Alias 1 re-pointed at b's inbox: refused, and so is every use of it afterwards.
    a.publish(&inbox("b", "d1"), Some(1), b"smuggled", 3).await;
    assert_eq!(a.puback().await, v5::PubAckReason::NotAuthorized);
    a.publish("", Some(1), b"smuggled again", 4).await;
    assert_eq!(a.puback().await, v5::PubAckReason::NotAuthorized);

    let mut got = Vec::new();
    while let Some(p) = a_sub.publish_received(Duration::from_millis(700)).await {
        assert_eq!(p.topic, inbox("a", "d2"));
        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(v["from"], "d1");
        got.push(v["data"].as_str().unwrap().to_string());
    }
    assert_eq!(got, vec!["first", "second"]);
    assert!(b
        .publish_received(Duration::from_millis(300))
        .await
        .is_none());
    // An alias that was never set ends the connection (MQTT 5: 0x94 topic alias invalid).
    a.publish("", Some(9), b"?", 5).await;
    match a.read().await {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::TopicAliasInvalid)
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_every_account_status_and_nothing_else() {
    let s = setup(&[]).await;
    let mut op = connect(
        s.cradle.mqtt_port,
        "ops-1",
        Some(("operator", &s.operator)),
        None,
    )
    .await
    .expect("operator connects");
    op.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("accounts/+/clients/+/status".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(
                "accounts/+/clients/+/webrtc_inbox".into(),
                QoS::AtLeastOnce,
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        op.suback().await,
        vec![
            v4::SubscribeReasonCode::Success(QoS::AtLeastOnce),
            v4::SubscribeReasonCode::Failure
        ]
    );
    let a = device(&s, "a", "d1", &s.a_d1).await;
    let b = device(&s, "b", "d1", &s.b_d1).await;
    a.client
        .publish(
            status_topic("a", "d1"),
            QoS::AtLeastOnce,
            false,
            status("connected", "ka", 1, None),
        )
        .await
        .unwrap();
    b.client
        .publish(
            status_topic("b", "d1"),
            QoS::AtLeastOnce,
            false,
            status("connected", "kb", 1, None),
        )
        .await
        .unwrap();
    // Each device's connection as the edge observed it, and each device's own report.
    let mut topics = Vec::new();
    while topics.len() < 4 {
        let p = op
            .publish_received(Duration::from_secs(5))
            .await
            .expect("status seen");
        topics.push(p.topic);
    }
    topics.sort();
    assert_eq!(
        topics,
        vec![
            status_topic("a", "d1"),
            status_topic("a", "d1"),
            status_topic("b", "d1"),
            status_topic("b", "d1")
        ]
    );

    // cradle-monitor with the operator secret, through the edge.
    let out = tokio::task::spawn_blocking({
        let port = s.cradle.mqtt_port;
        let secret = s.operator.clone();
        move || {
            let child = Command::new(env!("CARGO_BIN_EXE_cradle-monitor"))
                .args([
                    "--broker",
                    &format!("mqtt://127.0.0.1:{port}"),
                    "--json",
                    "--username",
                    "operator",
                    "--password",
                    &secret,
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("monitor");
            std::thread::sleep(Duration::from_secs(2));
            common::signal(child.id(), "INT");
            child.wait_with_output().expect("monitor output")
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.client
        .publish(
            status_topic("a", "d1"),
            QoS::AtLeastOnce,
            false,
            status("connected", "ka2", 2, None),
        )
        .await
        .unwrap();
    let out = out.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ka2"),
        "monitor saw:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_authenticate_and_stay_inside_their_account() {
    if !common::mosquitto_available() {
        return;
    }
    let s = setup(&[]).await;
    let port = s.cradle.mqtt_port.to_string();
    let pub_ = |user: &str, secret: &str, id: &str, topic: &str, msg: &str| {
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                user,
                "-P",
                secret,
                "-i",
                id,
            ])
            .args(["-q", "1", "-t", topic, "-m", msg])
            .output()
            .expect("mosquitto_pub")
    };
    let wrong = pub_("a", "nope", "d1", &status_topic("a", "d1"), "x");
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr).to_lowercase();
    assert!(err.contains("not authori"), "{err}");

    // b listens on its whole account with mosquitto_sub.
    let sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "b",
            "-P",
            &s.b_d1,
            "-i",
            "d1",
        ])
        .args(["-t", "accounts/b/#", "-v", "-q", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let into_b = pub_("a", &s.a_d1, "d1", &inbox("b", "d1"), "from-a");
    assert!(
        into_b.status.success(),
        "QoS 1 publish acknowledged, then dropped"
    );
    let own = pub_(
        "a",
        &s.a_d1,
        "d1",
        &status_topic("a", "d1"),
        &status("connected", "m1", 5, None),
    );
    assert!(own.status.success());
    // Each mosquitto_pub is a connection the edge recorded; the second one reported m1.
    let events = s.cradle.wait_events("a", 5).await;
    let kinds: Vec<_> = summary(&events).into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(
        kinds,
        [
            "connection.connected",
            "connection.disconnected",
            "connection.connected",
            "connection.reported",
            "connection.disconnected"
        ],
        "{events:#?}"
    );
    assert_eq!(events[3]["data"]["reported_connection_id"], "m1");
    assert_eq!(events[4]["data"]["connection_id"], "m1");
    assert_eq!(
        events[4]["data"]["reason"], "clean",
        "mosquitto_pub said DISCONNECT"
    );
    let b_own = pub_("b", &s.b_d1, "d1x", &inbox("b", "d1"), "from-b");
    // b's credential is for d1 only.
    assert!(!b_own.status.success());
    common::signal(sub.id(), "TERM");
    let out = sub.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(!seen.contains("from-a"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_over_the_limit_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, "[mqtt]\nmax_packet_bytes = 1024\n").unwrap();
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    let cradle = Cradle::spawn_ready(
        dir.path(),
        &db,
        &[("CRADLE_CONFIG", config.display().to_string())],
    )
    .await;
    let (mut c, code) = RawV4::connect(cradle.mqtt_port, "big", None, 30).await;
    assert_eq!(code, 0);
    c.publish("accounts/x/clients/big/webrtc_inbox", &[b'x'; 600], 1)
        .await;
    assert!(matches!(c.read().await, Some(v4::Packet::PubAck(_))));
    c.publish("accounts/x/clients/big/webrtc_inbox", &[b'x'; 2000], 2)
        .await;
    assert!(c.read().await.is_none(), "closed");
    assert_eq!(
        cradle
            .metric("cradle_edge_bad_packets_total{kind=\"too_large\"}")
            .await,
        1
    );
}

#[test]
fn open_mode_refuses_a_non_loopback_listener_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("o.db").display());
    let port = common::free_port();
    let mut cradle = Cradle::spawn(
        dir.path(),
        &db,
        &[("CRADLE_MQTT_LISTEN", format!("0.0.0.0:{port}"))],
    );
    let exit = common::wait_exit(&mut cradle.child, Duration::from_secs(20));
    assert!(!exit.success());
    let log = cradle.log();
    assert!(
        log.contains("mqtt.listen") && log.contains("auth.mode"),
        "{log}"
    );

    let port = common::free_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cradle = rt.block_on(Cradle::spawn_ready(
        dir.path(),
        &db,
        &[
            ("CRADLE_MQTT_LISTEN", format!("0.0.0.0:{port}")),
            ("CRADLE_AUTH_MODE", "open".to_string()),
        ],
    ));
    assert!(
        cradle.log().contains("ANY client may connect"),
        "{}",
        cradle.log()
    );
    assert!(cradle.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_wss_listeners_serve_clients_with_the_configured_certificate() {
    if !common::mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cradle, tls_port, wss_port, ca) = common::cradle_with_tls(dir.path()).await;
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &tls_port.to_string(), "--cafile"])
        .arg(&ca)
        .args(["-i", "t1", "-q", "1", "-t", "accounts/t/clients/t1/status"])
        .args(["-m", &status("connected", "tls-1", 3, None)])
        .output()
        .expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = cradle.wait_events("t", 2).await;
    assert_eq!(events[0]["data"]["connection_id"], "tls-1");
    // Plain MQTT on the TLS port gets no connection.
    let plain = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &tls_port.to_string()])
        .args(["-i", "t2", "-t", "accounts/t/clients/t2/status", "-m", "x"])
        .output()
        .expect("mosquitto_pub");
    assert!(
        !plain.status.success(),
        "plain MQTT on the TLS port must fail"
    );

    // MQTT over WebSocket over TLS: a rustls client trusting the certificate, the `mqtt`
    // subprotocol, then MQTT 3.1.1 bytes.
    let mut ws = wss_connect(wss_port, &ca).await;
    let mut out = BytesMut::new();
    v4::Packet::Connect(v4::Connect::new("w1"))
        .write(&mut out, 1 << 20)
        .unwrap();
    let mut p = v4::Publish::new(
        "accounts/t/clients/w1/status",
        QoS::AtLeastOnce,
        status("connected", "wss-1", 4, None),
    );
    p.pkid = 1;
    v4::Packet::Publish(p).write(&mut out, 1 << 20).unwrap();
    // MQTT over WebSocket: MQTT bytes in binary messages.
    ws.send(tokio_tungstenite::tungstenite::Message::binary(
        out.to_vec(),
    ))
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    while packets.len() < 2 {
        if let Ok(p) = v4::Packet::read(&mut buf, 1 << 20) {
            packets.push(p);
            continue;
        }
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no answer over wss; log:\n{}", cradle.log()))
            .expect("closed")
            .unwrap();
        buf.extend_from_slice(&message.into_data());
    }
    assert!(matches!(&packets[0], v4::Packet::ConnAck(a) if a.code == ConnectReturnCode::Success));
    assert!(matches!(&packets[1], v4::Packet::PubAck(_)));
    let events = cradle.wait_events("t", 3).await;
    assert_eq!(events[2]["data"]["connection_id"], "wss-1");
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn wss_connect(port: u16, cert: &std::path::Path) -> Wss {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake with the configured certificate");
    let mut request = format!("wss://127.0.0.1:{port}/mqtt")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    let (ws, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("WebSocket handshake");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"mqtt"[..])
    );
    ws
}

/// Cradle with the edge tests' accounts and `toml` as its config file.
async fn setup_with_config(toml: &str) -> (Setup, std::path::PathBuf) {
    let file = std::env::temp_dir().join(format!("cradle-edge-{}.toml", common::free_port()));
    std::fs::write(&file, toml).unwrap();
    let s = setup(&[("CRADLE_CONFIG", file.display().to_string())]).await;
    (s, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_message_with_the_retain_flag_is_refused_and_never_kept() {
    let s = setup(&[]).await;
    let (mut c, code) = RawV5::connect(s.cradle.mqtt_port, "d1", Some(("a", &s.a_d1)), 30).await;
    assert_eq!(code, v5::ConnectReturnCode::Success);
    for pkid in 1..=3 {
        let reason = c
            .publish_retained(&inbox("a", &format!("target{pkid}")), &[b'x'; 1000], pkid)
            .await;
        assert_eq!(reason, v5::PubAckReason::ImplementationSpecificError);
    }
    // A subscriber of those inboxes gets no retained message.
    let mut sub = device(&s, "a", "d2", &s.a_d2).await;
    sub.client
        .subscribe("accounts/a/clients/+/webrtc_inbox", QoS::AtLeastOnce)
        .await
        .unwrap();
    sub.suback().await;
    assert!(sub.publish_received(Duration::from_secs(1)).await.is_none());
    assert_eq!(
        s.cradle
            .metric("cradle_edge_retained_refused_total{reason=\"not_retained\"}")
            .await,
        3
    );
    assert_eq!(s.cradle.metric("cradle_edge_retained_messages").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_beyond_the_account_quota_are_refused_and_deletions_free_room() {
    let (s, _file) = setup_with_config("[mqtt]\nmax_retained_per_account = 2\n").await;
    let port = s.cradle.mqtt_port;
    let (mut d1, _) = RawV5::connect(port, "d1", Some(("a", &s.a_d1)), 30).await;
    let (mut d2, _) = RawV5::connect(port, "d2", Some(("a", &s.a_d2)), 30).await;
    let (mut b1, _) = RawV5::connect(port, "d1", Some(("b", &s.b_d1)), 30).await;
    let ok = v5::PubAckReason::Success;
    let full = v5::PubAckReason::QuotaExceeded;
    assert_eq!(
        d1.publish_retained("accounts/a/parent_stations/d1", b"{}", 1)
            .await,
        ok
    );
    assert_eq!(
        d1.publish_retained("accounts/a/parent_stations/d1", b"{ }", 2)
            .await,
        ok
    );
    assert_eq!(
        d1.publish_retained("accounts/a/baby_stations/d1", b"{}", 3)
            .await,
        ok
    );
    assert_eq!(
        d2.publish_retained("accounts/a/parent_stations/d2", b"{}", 1)
            .await,
        full
    );
    // Another account is not affected by a's quota.
    assert_eq!(
        b1.publish_retained("accounts/b/parent_stations/d1", b"{}", 1)
            .await,
        ok
    );
    // A deletion (empty retained payload) frees room for the next one.
    assert_eq!(
        d1.publish_retained("accounts/a/baby_stations/d1", b"", 4)
            .await,
        ok
    );
    assert_eq!(
        d2.publish_retained("accounts/a/parent_stations/d2", b"{}", 2)
            .await,
        ok
    );
    assert_eq!(
        s.cradle
            .metric("cradle_edge_retained_refused_total{reason=\"quota\"}")
            .await,
        1
    );
    assert_eq!(s.cradle.metric("cradle_edge_retained_messages").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_claiming_256_mb_is_refused_on_its_header_before_it_is_read() {
    let s = setup(&[]).await;
    for (level, expected) in [
        (5u8, [0x20, 3, 0, 0x95, 0].as_slice()),
        (4, &[0x20, 2, 0, 2]),
    ] {
        let mut stream = TcpStream::connect(("127.0.0.1", s.cradle.mqtt_port))
            .await
            .unwrap();
        // Remaining length 268,435,455 (the largest MQTT can say), then the protocol name
        // and level; nothing more is ever sent.
        let mut head = vec![
            0x10, 0xFF, 0xFF, 0xFF, 0x7F, 0, 4, b'M', b'Q', b'T', b'T', level,
        ];
        head.extend_from_slice(&[0u8; 100]);
        stream.write_all(&head).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .unwrap();
        assert_eq!(got, expected, "level {level}");
    }
    assert_eq!(
        s.cradle
            .metric("cradle_edge_connects_total{outcome=\"connect_too_large\"}")
            .await,
        2
    );
}

/// A raw MQTT 3.1.1 CONNECT from `source` with `password`; returns the CONNACK code (`None`
/// when the connection closed without one).
async fn raw_connect_from(source: [u8; 4], port: u16, client: &str, password: &str) -> Option<u8> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.ok()?;
    let mut connect = v4::Connect::new(client);
    connect.set_login("a", password);
    let mut out = BytesMut::new();
    v4::Packet::Connect(connect)
        .write(&mut out, 1 << 20)
        .unwrap();
    stream.write_all(&out).await.ok()?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut ack))
        .await
        .ok()?
        .ok()?;
    Some(ack[3])
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_bad_connects_from_one_address_neither_lock_out_a_device_nor_take_its_slot() {
    // 20 connection slots: 200 unauthenticated CONNECTs must not take them.
    let (s, _file) = setup_with_config("[mqtt]\nmax_connections = 20\n").await;
    let port = s.cradle.mqtt_port;
    let attackers: Vec<_> = (0..200)
        .map(|_| tokio::spawn(raw_connect_from([127, 0, 0, 2], port, "d2", "wrong")))
        .collect();
    common::wait_for(Duration::from_secs(20), "bad CONNECTs queued", || async {
        (s.cradle.metric("cradle_auth_verifications_waiting").await >= 100).then_some(())
    })
    .await;
    // A device from another address gets a verification slot and a connection slot.
    let started = std::time::Instant::now();
    let d1 = device(&s, "a", "d1", &s.a_d1).await;
    eprintln!("device connected {:?} into the attack", started.elapsed());
    let codes: Vec<Option<u8>> = futures_util::future::join_all(attackers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    // Every bad CONNECT was refused: not authorized, or server unavailable once it waited
    // auth.verify_wait_ms for a slot.
    assert!(
        codes.iter().all(|c| matches!(c, Some(3) | Some(5))),
        "{codes:?}"
    );
    assert!(
        s.cradle
            .metric("cradle_auth_verifications_total{outcome=\"busy\"}")
            .await
            > 0
    );
    assert!(
        s.cradle
            .metric("cradle_auth_verifications_delayed_total")
            .await
            > 0
    );
    let peak_mib = peak_rss_kib(s.cradle.child.id()) / 1024;
    eprintln!("peak RSS {peak_mib} MiB");
    assert!(peak_mib < 100, "peak RSS {peak_mib} MiB");
    drop(d1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_credential_id_costs_a_verification_like_a_known_one() {
    let s = setup(&[]).await;
    let before = s
        .cradle
        .metric("cradle_auth_verifications_total{outcome=\"failed\"}")
        .await;
    // An operator-style secret naming no credential, and a wrong secret of a real device id.
    let code = raw_connect_from(
        [127, 0, 0, 3],
        s.cradle.mqtt_port,
        "x",
        "cr_0000000000000000.nope",
    )
    .await;
    assert_eq!(code, Some(5));
    let code = raw_connect_from([127, 0, 0, 3], s.cradle.mqtt_port, "nobody", "wrong").await;
    assert_eq!(code, Some(5));
    let after = s
        .cradle
        .metric("cradle_auth_verifications_total{outcome=\"failed\"}")
        .await;
    assert_eq!(after - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_an_inbox_carries_its_clients_from_and_may_not_be_retained() {
    let s = setup(&[]).await;
    let port = s.cradle.mqtt_port;
    let forged = r#"{"from":"d2","data":{"kind":"bye"}}"#;
    // Retained: the inbox is never retained, so the CONNECT is refused.
    let retained = LastWill::new(inbox("a", "d2"), forged, QoS::AtLeastOnce, true);
    let refused = connect(port, "d1", Some(("a", &s.a_d1)), Some(retained)).await;
    assert!(matches!(refused, Err(ConnectReturnCode::NotAuthorized)));
    // Not retained: accepted, and when it fires its `from` is the client's own id.
    let mut sub = device(&s, "a", "d2", &s.a_d2).await;
    sub.client
        .subscribe(inbox("a", "d2"), QoS::AtLeastOnce)
        .await
        .unwrap();
    sub.suback().await;
    let will = LastWill::new(inbox("a", "d2"), forged, QoS::AtLeastOnce, false);
    let d1 = connect(port, "d1", Some(("a", &s.a_d1)), Some(will))
        .await
        .expect("accepted");
    d1.drop_socket();
    let got = sub
        .publish_received(Duration::from_secs(10))
        .await
        .expect("the Will");
    let payload: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(payload["from"], "d1");
    assert_eq!(payload["data"]["kind"], "bye");
}

/// Whether the server closed `stream` (EOF or reset) within `wait`, reading and discarding
/// whatever arrives.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_send_connect_are_bounded_cut_and_counted() {
    let (s, _file) =
        setup_with_config("[mqtt]\nmax_pending = 20\nconnect_timeout_ms = 2000\n").await;
    let port = s.cradle.mqtt_port;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    common::wait_for(Duration::from_secs(10), "20 pending", || async {
        (s.cradle.metric("cradle_edge_pending").await == 20).then_some(())
    })
    .await;
    // Beyond mqtt.max_pending a socket is closed as soon as it is accepted.
    for _ in 0..30 {
        let mut extra = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        assert!(closed_by_server(&mut extra, Duration::from_secs(1)).await);
    }
    assert!(
        s.cradle
            .metric("cradle_edge_connects_total{outcome=\"pending_limit\"}")
            .await
            >= 30
    );
    // Each silent socket is cut at mqtt.connect_timeout_ms and counted.
    for mut sock in silent {
        assert!(closed_by_server(&mut sock, Duration::from_secs(10)).await);
    }
    assert!(
        s.cradle
            .metric("cradle_edge_connects_total{outcome=\"timeout\"}")
            .await
            >= 20
    );
    assert_eq!(s.cradle.metric("cradle_edge_pending").await, 0);
    // The slots are free again: a device connects.
    let _d1 = device(&s, "a", "d1", &s.a_d1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_cut_after_the_write_timeout() {
    let (s, _file) = setup_with_config("[mqtt]\nwrite_timeout_ms = 1000\npublish_rate = 0\n").await;
    let port = s.cradle.mqtt_port;
    // d2 subscribes to its inbox over a raw socket with a small receive buffer, then never
    // reads again.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut out = BytesMut::new();
    let mut connect = v4::Connect::new("d2");
    connect.set_login("a", s.a_d2.as_str());
    v4::Packet::Connect(connect)
        .write(&mut out, 1 << 20)
        .unwrap();
    let sub = v4::Subscribe::new(inbox("a", "d2"), QoS::AtMostOnce);
    v4::Packet::Subscribe(sub).write(&mut out, 1 << 20).unwrap();
    stuck.write_all(&out).await.unwrap();
    let mut acks = [0u8; 9]; // CONNACK (4) + SUBACK (5)
    tokio::time::timeout(Duration::from_secs(10), stuck.read_exact(&mut acks))
        .await
        .expect("CONNACK and SUBACK")
        .unwrap();
    assert_eq!((acks[0], acks[3], acks[4], acks[8]), (0x20, 0, 0x90, 0));
    // d1 floods d2's inbox: 4,000 messages of 8 KiB (32 MiB), far beyond socket buffers.
    let mut d1 = device(&s, "a", "d1", &s.a_d1).await;
    let payload = format!(r#"{{"kind":"flood","data":"{}"}}"#, "x".repeat(8 * 1024));
    for _ in 0..4000 {
        d1.client
            .publish(inbox("a", "d2"), QoS::AtMostOnce, false, payload.clone())
            .await
            .unwrap();
    }
    common::wait_for(Duration::from_secs(30), "the write timeout", || async {
        (s.cradle.metric("cradle_edge_write_timeouts_total").await >= 1).then_some(())
    })
    .await;
    // Cut with reason kicked; its socket sees the end once the buffered bytes are read.
    assert!(
        s.cradle
            .metric("cradle_edge_disconnects_total{reason=\"kicked\"}")
            .await
            >= 1
    );
    assert!(closed_by_server(&mut stuck, Duration::from_secs(10)).await);
    // Only the subscriber that did not read was cut; the flooding device is still connected.
    assert_eq!(s.cradle.metric("cradle_edge_write_timeouts_total").await, 1);
    assert!(!d1.closed_within(Duration::from_millis(500)).await);
}
