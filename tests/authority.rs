//! Inside an account, each station and each PWA acts only for itself (issue 12, finding 7),
//! against the `cradle` binary: a station cannot end another station's session, a token
//! holder cannot resume another PWA's WebSocket session, and a device cannot forge `from` on
//! an inbox message. Account `fam` with real credentials, except where open mode is the point.

use cradle_testkit as common;

use std::time::Duration;

use futures_util::SinkExt;
use rumqttc::{MqttOptions, QoS};
use tokio_tungstenite::tungstenite::Message;

use common::{cli, next_frame, subscriber, wait_for, Cradle, Device, Ws};

const ADMIN: &str = "authority-tests-admin-token";
const ACCOUNT: &str = "fam";

/// Cradle with account `fam`: devices `baby-a` and `baby-b` (their secrets), and two
/// account tokens.
struct Setup {
    _dir: tempfile::TempDir,
    c: Cradle,
    baby_a: String,
    baby_b: String,
    token_1: String,
    token_2: String,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("authority.db").display());
    cli(&db, &["accounts", "create", ACCOUNT]);
    let device = |client: &str| {
        cli(
            &db,
            &[
                "credentials",
                "issue",
                "--account",
                ACCOUNT,
                "--client",
                client,
            ],
        )
    };
    let (baby_a, baby_b) = (device("baby-a"), device("baby-b"));
    let token = || {
        cli(
            &db,
            &["credentials", "issue", "--account", ACCOUNT, "--token"],
        )
    };
    let (token_1, token_2) = (token(), token());
    let c = ws_cradle(
        dir.path(),
        &db,
        &[("CRADLE_ADMIN_TOKEN", ADMIN.to_string())],
    )
    .await;
    Setup {
        _dir: dir,
        c,
        baby_a,
        baby_b,
        token_1,
        token_2,
    }
}

/// Cradle with a short WebSocket heartbeat and a resume window long enough for the tests.
async fn ws_cradle(dir: &std::path::Path, db: &str, env: &[(&str, String)]) -> Cradle {
    let config = dir.join("authority.toml");
    std::fs::write(
        &config,
        "[websocket]\nheartbeat_secs = 1\nheartbeat_timeout_secs = 3\nresume_window_secs = 20\n",
    )
    .unwrap();
    let mut env = env.to_vec();
    env.push(("CRADLE_CONFIG", config.display().to_string()));
    Cradle::spawn_ready(dir, db, &env).await
}

/// A device of `fam` connected with its credentials.
async fn device(c: &Cradle, client: &str, secret: &str) -> Device {
    let mut o = MqttOptions::new(client, "127.0.0.1", c.mqtt_port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_credentials(ACCOUNT, secret);
    Device::connect_with(o).await
}

/// A device of `fam` that reported `connected` on `connection`, once recorded.
async fn station(c: &Cradle, client: &str, secret: &str, connection: &str) -> Device {
    let d = device(c, client, secret).await;
    c.report_connected(d, ACCOUNT, client, connection).await
}

fn start(session: &str, connection: &str, at: i64) -> String {
    format!(
        r#"{{"session_id":"{session}","connection_id":"{connection}","name":"Nursery","started_at_millis":{at}}}"#
    )
}

/// The account's session events as (type, session, reason).
async fn session_events(c: &Cradle) -> Vec<(String, String, String)> {
    c.session_events(ACCOUNT, |e| {
        e["type"].as_str().unwrap_or("").starts_with("session.")
    })
    .await
}

async fn active_sessions(c: &Cradle) -> Vec<(String, String)> {
    let body = c
        .get_json(&format!("/v1/accounts/{ACCOUNT}/baby-stations"), 200)
        .await;
    body["baby_stations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["session_id"].as_str().unwrap().to_string(),
                s["client_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn wait_metric(c: &Cradle, series: &str, at_least: u64) {
    wait_for(Duration::from_secs(10), series, || async {
        (c.metric(series).await >= at_least).then_some(())
    })
    .await;
}

/// baby-a connected as `ka`, with session `sa` started and active.
async fn baby_a_in_session_sa(s: &Setup) -> Device {
    let c = &s.c;
    let a = station(c, "baby-a", &s.baby_a, "ka").await;
    a.publish(
        &format!("accounts/{ACCOUNT}/baby_stations/baby-a"),
        start("sa", "ka", 10_000),
    )
    .await;
    wait_for(Duration::from_secs(10), "baby-a's session", || async {
        (active_sessions(c).await == vec![("sa".to_string(), "baby-a".to_string())]).then_some(())
    })
    .await;
    a
}

/// baby-b connected as `connection`, announcing session `sb` on baby-a's connection `ka`:
/// returns once the start was dropped as a foreign connection.
async fn baby_b_starts_sb_on_ka(s: &Setup, connection: &str) -> Device {
    let c = &s.c;
    let b = station(c, "baby-b", &s.baby_b, connection).await;
    b.publish(
        &format!("accounts/{ACCOUNT}/baby_stations/baby-b"),
        start("sb", "ka", 20_000),
    )
    .await;
    wait_metric(
        c,
        "cradle_mqtt_messages_dropped_total{family=\"stations\",reason=\"foreign_connection\"}",
        1,
    )
    .await;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_cannot_end_another_stations_session_by_naming_its_connection() {
    let s = setup().await;
    let c = &s.c;
    let _a = baby_a_in_session_sa(&s).await;

    // baby-b announces a start on its own topic naming baby-a's connection…
    let b = baby_b_starts_sb_on_ka(&s, "kb").await;
    // …and an end of baby-a's session.
    b.publish(
        &format!("accounts/{ACCOUNT}/baby_stations/baby-b"),
        r#"{"session_id":"sa","ended_at_millis":21000}"#,
    )
    .await;
    wait_metric(
        c,
        "cradle_mqtt_messages_dropped_total{family=\"stations\",reason=\"client_mismatch\"}",
        1,
    )
    .await;
    // Nothing of baby-a's changed: no `replaced`, no end.
    assert_eq!(
        session_events(c).await,
        vec![("session.started".into(), "sa".into(), "".into())]
    );
    assert_eq!(
        active_sessions(c).await,
        vec![("sa".to_string(), "baby-a".to_string())]
    );
    assert!(c.log().contains("station message dropped"));

    // On its own connection baby-b starts as before.
    b.publish(
        &format!("accounts/{ACCOUNT}/baby_stations/baby-b"),
        start("sb", "kb", 22_000),
    )
    .await;
    wait_for(Duration::from_secs(10), "baby-b's session", || async {
        (active_sessions(c).await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        session_events(c).await,
        vec![
            ("session.started".into(), "sa".into(), "".into()),
            ("session.started".into(), "sb".into(), "".into()),
        ]
    );
}

/// Connects and reads up to the `hello`; returns the frames before it (a resume's replay).
async fn connect(c: &Cradle, query: &str) -> (Ws, Vec<serde_json::Value>, serde_json::Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(c.ws_url(query))
        .await
        .expect("upgrade");
    let mut before = Vec::new();
    loop {
        let f = next_frame(&mut ws).await.expect("hello");
        if f["type"] == "hello" {
            return (ws, before, f);
        }
        before.push(f);
    }
}

/// The HTTP status of an upgrade attempt that is refused (or 101).
async fn upgrade_status(c: &Cradle, query: &str) -> u16 {
    match tokio_tungstenite::connect_async(c.ws_url(query)).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(other) => panic!("{query}: {other:?}"),
    }
}

/// Sends `payload` to `to`'s inbox from an MQTT device and waits for its PUBACK (QoS 1).
async fn inbox_message(d: &Device, to: &str, payload: &str) {
    d.client
        .publish(
            format!("accounts/{ACCOUNT}/clients/{to}/webrtc_inbox"),
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_holder_cannot_resume_another_pwas_session() {
    let s = setup().await;
    let c = &s.c;
    let (ws, _, hello) = connect(c, &format!("client_id=pwa1&token={}", s.token_1)).await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    let secret = hello["resume_secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32, "{hello}");
    // Another PWA of the account (the other token) sees pwa1's connection id in presence,
    // never its secret.
    let (mut other, _, other_hello) =
        connect(c, &format!("client_id=pwa2&token={}", s.token_2)).await;
    assert_ne!(other_hello["resume_secret"], secret.as_str());
    // The network drops pwa1's socket; a private signal waits in its replay buffer.
    drop(ws);
    let baby = device(c, "baby-a", &s.baby_a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    inbox_message(&baby, "pwa1", r#"{"data":"private"}"#).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The other token holder, naming pwa1's client and connection: refused like an unknown
    // session, with or without a guessed secret.
    for extra in ["", "&resume_secret=0123456789abcdef0123456789abcdef"] {
        let query = format!(
            "client_id=pwa1&token={}&connection_id={conn}&resume_from=0{extra}",
            s.token_2
        );
        assert_eq!(upgrade_status(c, &query).await, 410, "{query}");
    }
    assert_eq!(
        c.metric("cradle_ws_resumes_total{outcome=\"refused\"}")
            .await,
        2
    );
    assert!(c.log().contains("WebSocket resume refused"));
    // pwa2's socket never received the replay or the secret.
    while let Ok(Some(f)) =
        tokio::time::timeout(Duration::from_millis(300), next_frame(&mut other)).await
    {
        assert_ne!(f["type"], "signal", "{f}");
        assert!(!f.to_string().contains(&secret), "{f}");
    }

    // The token that opened the session resumes it without the secret, and gets the replay.
    let (_ws, replay, hello2) = connect(
        c,
        &format!(
            "client_id=pwa1&token={}&connection_id={conn}&resume_from=1",
            s.token_1
        ),
    )
    .await;
    assert_eq!(hello2["resumed"], true);
    assert_eq!(hello2["connection_id"], conn.as_str());
    assert!(
        replay
            .iter()
            .any(|f| f["type"] == "signal" && f["data"] == "private"),
        "{replay:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_the_session_secret_works() {
    // Open mode: no tokens, so the secret is the only proof.
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("open.db").display());
    let c = ws_cradle(dir.path(), &db, &[]).await;
    let (ws, _, hello) = connect(&c, "account=fam&client_id=pwa").await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    let secret = hello["resume_secret"].as_str().unwrap().to_string();
    let seen = hello["seq"].as_u64().unwrap();
    drop(ws);
    let (baby, _) = subscriber(c.mqtt_port, "baby", &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    baby.publish(
        "accounts/fam/clients/pwa/webrtc_inbox",
        QoS::AtLeastOnce,
        false,
        r#"{"data":"missed"}"#,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resume = format!("account=fam&client_id=pwa&connection_id={conn}&resume_from={seen}");
    // Without the secret, or with another one: 410.
    assert_eq!(upgrade_status(&c, &resume).await, 410);
    let wrong = format!("{resume}&resume_secret={}", "f".repeat(32));
    assert_eq!(upgrade_status(&c, &wrong).await, 410);
    assert_eq!(
        c.metric("cradle_ws_resumes_total{outcome=\"refused\"}")
            .await,
        2
    );
    // With it: resumed, the missed frame replayed, the same secret in the new hello.
    let (_ws, replay, hello2) = connect(&c, &format!("{resume}&resume_secret={secret}")).await;
    assert_eq!(hello2["resumed"], true);
    assert_eq!(hello2["resume_secret"], secret.as_str());
    let signal = replay
        .iter()
        .find(|f| f["type"] == "signal")
        .unwrap_or_else(|| panic!("{replay:?}"));
    assert_eq!(signal["data"], "missed");
    // `from` is the sender the edge saw (open mode: its MQTT client id).
    assert_eq!(signal["from"], "baby");
    assert_eq!(
        c.metric("cradle_ws_resumes_total{outcome=\"resumed\"}")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_forge_from_on_a_pwa_inbox_message() {
    let s = setup().await;
    let c = &s.c;
    let (mut pwa, _, hello) = connect(c, &format!("client_id=pwa&token={}", s.token_1)).await;
    let pwa_conn = hello["connection_id"].as_str().unwrap().to_string();
    // baby-b watches the PWA's inbox as an MQTT device (it may, inside its account).
    let mut o = MqttOptions::new("baby-b", "127.0.0.1", c.mqtt_port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_credentials(ACCOUNT, &s.baby_b);
    let (_watch, mut seen) = {
        let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            while let Ok(e) = el.poll().await {
                match e {
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                        let _ = tx.send(p);
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
        client
            .subscribe(
                format!("accounts/{ACCOUNT}/clients/pwa/webrtc_inbox"),
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("SUBACK")
            .unwrap();
        (client, rx)
    };

    // baby-a writes another client's name (and connection) as `from`.
    let baby = device(c, "baby-a", &s.baby_a).await;
    inbox_message(
        &baby,
        "pwa",
        r#"{"from":"pwa2","from_connection":"ws-000000000000000000","data":{"sdp":"evil"}}"#,
    )
    .await;
    let f = loop {
        let f = next_frame(&mut pwa).await.expect("signal");
        if f["type"] == "signal" {
            break f;
        }
    };
    assert_eq!(f["from"], "baby-a", "{f}");
    assert_eq!(f["data"]["sdp"], "evil");
    // Devices reading the inbox see the stamped `from` too.
    let p = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("inbox message")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["from"], "baby-a", "{v}");

    // A payload that is not a JSON object has nowhere to carry `from`: dropped, counted.
    inbox_message(&baby, "pwa", "not json").await;
    wait_metric(
        c,
        "cradle_mqtt_messages_dropped_total{family=\"inbox\",reason=\"not_json_object\"}",
        1,
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), seen.recv())
            .await
            .is_err(),
        "a dropped inbox message reached a subscriber"
    );

    // The PWA's own signal carries its own client id and connection, set by the bridge.
    pwa.send(Message::text(
        r#"{"type":"signal","to":"pwa","data":"to myself"}"#,
    ))
    .await
    .unwrap();
    let p = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("the PWA's signal")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["from"], "pwa");
    assert_eq!(v["from_connection"], pwa_conn.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_cannot_claim_another_stations_connection_by_reporting_its_id() {
    let s = setup().await;
    let c = &s.c;
    let _a = baby_a_in_session_sa(&s).await;
    // baby-b reports baby-a's connection id as its own, then starts a session on it.
    let _b = baby_b_starts_sb_on_ka(&s, "ka").await;
    // baby-a's session runs on, never `replaced`.
    assert_eq!(
        session_events(c).await,
        vec![("session.started".into(), "sa".into(), "".into())]
    );
    assert_eq!(
        active_sessions(c).await,
        vec![("sa".to_string(), "baby-a".to_string())]
    );
}
