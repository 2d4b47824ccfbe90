//! Input that once took the embedded broker down (issue 12), against the real `cradle`
//! binary with third-party clients (mosquitto_pub for MQTT 5 properties, rumqttc for 3.1.1):
//!
//! - an MQTT 5 PUBLISH with properties, delivered to an MQTT 3.1.1 subscriber (Cradle's own
//!   bus among them), hit `unreachable!()` in rumqttd's 3.1.1 writer; the reconnect then
//!   panicked under a poisoned lock and every later CONNECT was refused;
//! - in open mode, a PUBLISH to a topic whose first character takes more than one byte
//!   panicked rumqttd's router (`topic[..1]`).
//!
//! Each test then checks the service: `/readyz`, a fresh client's round trip, and a log
//! without "panicked".

use cradle_testkit as common;

use std::process::{Command, Output};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::sync::mpsc;

use common::{cli, status, Cradle};

/// An MQTT 3.1.1 client (rumqttc) whose incoming publishes arrive on a channel, returned
/// after its CONNACK (panics on a refusal) and the SUBACK of every filter.
async fn client(
    port: u16,
    id: &str,
    login: Option<(&str, &str)>,
    subscribe: &[&str],
) -> (AsyncClient, mpsc::UnboundedReceiver<rumqttc::Publish>) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let n = subscribe.len();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut acks = 0;
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => {
                    assert_eq!(c.code, rumqttc::ConnectReturnCode::Success);
                    if n == 0 {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s))) => {
                    assert!(
                        s.return_codes
                            .iter()
                            .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure)),
                        "SUBACK refused: {s:?}"
                    );
                    acks += 1;
                    if acks == n {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    panic!("CONNACK refused: {code:?}")
                }
                Err(_) => return,
            }
        }
    });
    for f in subscribe {
        client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("CONNACK (and SUBACKs) in time")
        .expect("client connected");
    (client, rx)
}

/// The next publish on `rx` within 10 s.
async fn next(rx: &mut mpsc::UnboundedReceiver<rumqttc::Publish>) -> rumqttc::Publish {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a publish in time")
        .expect("subscriber alive")
}

/// mosquitto_pub, QoS 1, to the edge's port.
fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(args)
        .output()
        .expect("run mosquitto_pub")
}

/// `/readyz` answers 200, the log has no panic, and a fresh 3.1.1 client `id` (with `login`)
/// round-trips a message through `topic` (which it may subscribe and publish).
async fn still_serving(cradle: &Cradle, id: &str, login: Option<(&str, &str)>, topic: &str) {
    let ready = reqwest::get(format!("{}/readyz", cradle.http))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status().as_u16(), 200, "/readyz");
    let (c, mut rx) = client(cradle.mqtt_port, id, login, &[topic]).await;
    // An inbox payload is a JSON object; the edge stamps `from` with the sender's id.
    c.publish(topic, QoS::AtLeastOnce, false, r#"{"data":"round-trip"}"#)
        .await
        .unwrap();
    let p = next(&mut rx).await;
    assert_eq!(p.topic.as_str(), topic);
    let got: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
    let expected = match topic.ends_with("/webrtc_inbox") {
        true => serde_json::json!({"data": "round-trip", "from": id}),
        false => serde_json::json!({"data": "round-trip"}),
    };
    assert_eq!(got, expected);
    let log = cradle.log();
    assert!(!log.contains("panicked"), "{log}");
    for place in ["connection", "router"] {
        let series = format!("cradle_broker_panics_total{{in=\"{place}\"}}");
        assert_eq!(cradle.metric(&series).await, 0, "{series}");
    }
}

struct Accounts {
    _dir: tempfile::TempDir,
    cradle: Cradle,
    d1: String,
    d2: String,
    d3: String,
}

/// Account `a` with devices `d1`, `d2`, `d3`, and Cradle serving it.
async fn accounts() -> Accounts {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("h.db").display());
    cli(&db, &["accounts", "create", "a"]);
    let issue = |c: &str| {
        cli(
            &db,
            &["credentials", "issue", "--account", "a", "--client", c],
        )
    };
    let (d1, d2, d3) = (issue("d1"), issue("d2"), issue("d3"));
    let token = ("CRADLE_ADMIN_TOKEN", "hostile-broker-admin".to_string());
    let cradle = Cradle::spawn_ready(dir.path(), &db, &[token]).await;
    Accounts {
        _dir: dir,
        cradle,
        d1,
        d2,
        d3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_publish_with_properties_to_an_own_status_topic_keeps_the_service_up() {
    if !common::mosquitto_available() {
        return;
    }
    let s = accounts().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let payload = status("connected", "m5-props", now, None);
    for _ in 0..2 {
        // Twice: the second one is what found the poisoned lock (the subscriber's reconnect).
        let out = mosquitto_pub(
            s.cradle.mqtt_port,
            &[
                "-V",
                "mqttv5",
                "-u",
                "a",
                "-P",
                &s.d1,
                "-i",
                "d1",
                "-t",
                "accounts/a/clients/d1/status",
                "-D",
                "publish",
                "content-type",
                "application/json",
                "-m",
                &payload,
            ],
        );
        assert!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Recorded by the status pipeline (Cradle's own MQTT 3.1.1 subscriber).
    let events = s.cradle.wait_events("a", 1).await;
    assert!(
        events
            .iter()
            .any(|e| e["data"]["connection_id"] == "m5-props"),
        "{events:?}"
    );
    still_serving(
        &s.cradle,
        "d3",
        Some(("a", &s.d3)),
        "accounts/a/clients/d3/webrtc_inbox",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mqtt5_publish_property_reaches_an_mqtt311_subscriber_without_harm() {
    if !common::mosquitto_available() {
        return;
    }
    let s = accounts().await;
    let inbox = "accounts/a/clients/d2/webrtc_inbox";
    // d2 reads its inbox over MQTT 3.1.1 (as does Cradle's bus, for every inbox).
    let (_d2, mut rx) = client(s.cradle.mqtt_port, "d2", Some(("a", &s.d2)), &[inbox]).await;
    let properties: [&[&str]; 6] = [
        &["user-property", "k", "v"],
        &["payload-format-indicator", "1"],
        &["message-expiry-interval", "60"],
        &["correlation-data", "c0ffee"],
        &["response-topic", "accounts/a/clients/d1/webrtc_inbox"],
        &["content-type", "application/json"],
    ];
    for property in properties {
        let kind = property[0];
        let payload = format!(r#"{{"from":"d1","data":{{"kind":"{kind}"}}}}"#);
        let mut args = vec!["-V", "mqttv5", "-u", "a", "-P", &s.d1, "-i", "d1"];
        args.extend(["-t", inbox, "-D", "publish"]);
        args.extend(property);
        args.extend(["-m", &payload]);
        let out = mosquitto_pub(s.cradle.mqtt_port, &args);
        assert!(
            out.status.success(),
            "{kind}: mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The 3.1.1 subscriber gets the message as published, minus the property (3.1.1 has
        // no place for it), on a connection that survived it.
        let p = next(&mut rx).await;
        assert_eq!(p.topic, inbox, "{kind}");
        // The same JSON object (the edge re-serialises it when it stamps `from`).
        let got: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
        let sent: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(got, sent, "{kind}");
    }
    still_serving(
        &s.cradle,
        "d3",
        Some(("a", &s.d3)),
        "accounts/a/clients/d3/webrtc_inbox",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_publish_to_a_topic_starting_with_a_multibyte_character_is_harmless() {
    if !common::mosquitto_available() {
        return;
    }
    // No account exists: open mode on loopback.
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("o.db").display());
    let cradle = Cradle::spawn_ready(dir.path(), &db, &[]).await;
    let (_sub, mut rx) = client(cradle.mqtt_port, "watcher", None, &["é/#"]).await;
    for topic in ["é/x", "日本/x", "€"] {
        let out = mosquitto_pub(cradle.mqtt_port, &["-i", "poker", "-t", topic, "-m", topic]);
        assert!(
            out.status.success(),
            "{topic}: mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Routed like any topic: the subscriber of `é/#` gets its one message.
    let p = next(&mut rx).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("é/x", "é/x".as_bytes())
    );
    still_serving(&cradle, "fresh", None, "r/t").await;
}

// The broker's own codec, without a process: every input is an error or a packet, never a
// panic, and whatever it reads it can write to either protocol version.

use bytes::BytesMut;
use rumqttd::protocol::{self as broker, v4::V4, v5::V5, Packet, Protocol};

/// Valid MQTT 3.1.1 and 5 packets as clients send them (rumqttc's encoders), properties
/// included: the seeds of the mutations below.
fn corpus() -> Vec<(bool, Vec<u8>)> {
    use rumqttc::mqttbytes::v4;
    use rumqttc::v5::mqttbytes::v5;
    let mut out = Vec::new();
    let mut v4p = |p: v4::Packet| {
        let mut b = BytesMut::new();
        p.write(&mut b, 1 << 20).unwrap();
        out.push((false, b.to_vec()));
    };
    let mut c = v4::Connect::new("c1");
    c.keep_alive = 30;
    v4p(v4::Packet::Connect(c));
    let mut p = v4::Publish::new("é/x", rumqttc::QoS::AtLeastOnce, b"payload".to_vec());
    p.pkid = 7;
    v4p(v4::Packet::Publish(p));
    v4p(v4::Packet::Subscribe(v4::Subscribe::new(
        "accounts/a/#",
        rumqttc::QoS::AtLeastOnce,
    )));
    v4p(v4::Packet::Unsubscribe(v4::Unsubscribe::new("a/b")));
    v4p(v4::Packet::PubAck(v4::PubAck::new(7)));
    v4p(v4::Packet::PubRec(v4::PubRec::new(7)));
    v4p(v4::Packet::PubRel(v4::PubRel::new(7)));
    v4p(v4::Packet::PubComp(v4::PubComp::new(7)));
    v4p(v4::Packet::PingReq);
    v4p(v4::Packet::Disconnect);
    let mut v5p = |p: v5::Packet| {
        let mut b = BytesMut::new();
        p.write(&mut b, None).unwrap();
        out.push((true, b.to_vec()));
    };
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(3),
        response_topic: Some("accounts/a/clients/d1/webrtc_inbox".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"c0ffee")),
        user_properties: vec![("k".into(), "v".into())],
        subscription_identifiers: vec![],
        content_type: Some("application/json".into()),
    };
    let mut p = v5::Publish::new(
        "accounts/a/clients/d1/status",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        "{}",
        Some(props),
    );
    p.pkid = 9;
    v5p(v5::Packet::Publish(p));
    v5p(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 30,
            client_id: "c5".into(),
            clean_start: true,
            properties: Some(v5::ConnectProperties {
                session_expiry_interval: Some(10),
                receive_maximum: Some(10),
                max_packet_size: Some(1 << 16),
                topic_alias_max: Some(10),
                request_response_info: Some(1),
                request_problem_info: Some(1),
                user_properties: vec![("k".into(), "v".into())],
                authentication_method: None,
                authentication_data: None,
            }),
        },
        None,
        None,
    ));
    v5p(v5::Packet::Subscribe(v5::Subscribe::new(
        v5::Filter::new("accounts/a/#", rumqttc::v5::mqttbytes::QoS::ExactlyOnce),
        None,
    )));
    v5p(v5::Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::DisconnectWithWillMessage,
    )));
    v5p(v5::Packet::PingReq(v5::PingReq));
    // A CONNACK and an UNSUBACK from a client (once `unreachable!()`), a reason-code-only
    // DISCONNECT, a truncated property length.
    for raw in [
        &[0x20, 0x03, 0x00, 0x00, 0x00][..],
        &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x00],
        &[0xE0, 0x01, 0x04],
        &[0x30, 0x05, 0x00, 0x01, b'a', 0x80, 0x80],
    ] {
        out.push((true, raw.to_vec()));
        out.push((false, raw.to_vec()));
    }
    out
}

/// A seeded xorshift, so that a failure names its case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, rng.next() as u8);
            }
            3 if !b.is_empty() => {
                let i = rng.below(b.len());
                b.remove(i);
            }
            _ => b.truncate(rng.below(b.len() + 1)),
        }
    }
    b
}

/// Reads every packet of `bytes` with the broker's reader for the version, and writes each
/// with both writers (the router forwards what one client sent to clients of both).
fn read_and_write_back(v5: bool, bytes: &[u8]) {
    let mut stream = BytesMut::from(bytes);
    let read = |s: &mut BytesMut| -> Result<Packet, broker::Error> {
        if v5 {
            V5.read_mut(s, 1 << 20)
        } else {
            V4.read_mut(s, 1 << 20)
        }
    };
    while let Ok(packet) = read(&mut stream) {
        let mut out = BytesMut::new();
        let _ = V4.write(packet.clone(), &mut out);
        let _ = V5.write(packet, &mut out);
    }
}

#[test]
fn the_broker_codec_reads_and_writes_mutated_packets_without_panicking() {
    let corpus = corpus();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for case in 0..20_000 {
        let (v5, seed) = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, seed);
        let caught = std::panic::catch_unwind(|| read_and_write_back(*v5, &input));
        assert!(caught.is_ok(), "case {case}: v5={v5} input={input:02x?}");
    }
    for (v5, seed) in &corpus {
        read_and_write_back(*v5, seed);
    }
}

#[test]
fn an_mqtt5_publish_with_every_property_is_written_to_mqtt311_without_them() {
    let (_, frame) = corpus()
        .into_iter()
        .find(|(v5, b)| *v5 && b[0] >> 4 == 3)
        .unwrap();
    let packet = V5
        .read_mut(&mut BytesMut::from(&frame[..]), 1 << 20)
        .unwrap();
    let Packet::Publish(_, Some(props)) = &packet else {
        panic!("{packet:?}")
    };
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    let mut out = BytesMut::new();
    V4.write(packet, &mut out).unwrap();
    let expected = {
        let mut p = rumqttc::mqttbytes::v4::Publish::new(
            "accounts/a/clients/d1/status",
            rumqttc::QoS::AtLeastOnce,
            b"{}".to_vec(),
        );
        p.pkid = 9;
        let mut b = BytesMut::new();
        rumqttc::mqttbytes::v4::Packet::Publish(p)
            .write(&mut b, 1 << 20)
            .unwrap();
        b
    };
    assert_eq!(out, expected);
}

#[test]
fn topic_matching_reads_characters_not_bytes() {
    assert!(broker::matches("é/x", "é/#"));
    assert!(broker::matches("日本", "+"));
    assert!(!broker::matches("$SYS/x", "#"));
    assert!(!broker::matches("€/x", "é/#"));
}
