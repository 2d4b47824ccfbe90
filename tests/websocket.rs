//! The legacy WebSocket bridge against the `cradle` binary: a real WebSocket client
//! (tokio-tungstenite) and real MQTT clients (rumqttc). Account `fam` in open mode (no
//! accounts, loopback) unless a test creates accounts to check the token path.

use cradle_testkit as common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use tokio_tungstenite::tungstenite::Message;

use common::{next_frame, subscriber, wait_for, Cradle, Ws};

async fn start(dir: &std::path::Path, extra: &str) -> Cradle {
    let config = dir.join("ws.toml");
    std::fs::write(
        &config,
        format!("[websocket]\nheartbeat_secs = 1\nheartbeat_timeout_secs = 2\nresume_window_secs = 2\n{extra}"),
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.join("w.db").display());
    Cradle::spawn_ready(dir, &db, &[("CRADLE_CONFIG", config.display().to_string())]).await
}

async fn connect(c: &Cradle, query: &str) -> (Ws, serde_json::Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(c.ws_url(query))
        .await
        .expect("upgrade");
    let hello = next_frame(&mut ws).await.expect("hello");
    assert_eq!(hello["type"], "hello", "{hello}");
    (ws, hello)
}

/// The next frame of `kind`.
async fn next_of(ws: &mut Ws, kind: &str) -> serde_json::Value {
    loop {
        let f = next_frame(ws)
            .await
            .unwrap_or_else(|| panic!("no {kind} frame"));
        if f["type"] == kind {
            return f;
        }
    }
}

async fn next_publish(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    wait: Duration,
) -> Option<rumqttc::Publish> {
    tokio::time::timeout(wait, rx.recv()).await.ok()?
}

fn status_of(p: &rumqttc::Publish) -> serde_json::Value {
    serde_json::from_slice(&p.payload).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_is_a_client_of_its_account_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "").await;
    let (_watch, mut statuses) =
        subscriber(c.mqtt_port, "watcher", &["accounts/fam/clients/pwa/status"]).await;
    let (ws_conn, hello) = connect(&c, "account=fam&client_id=pwa").await;
    let mut ws = ws_conn;
    let connection_id = hello["connection_id"].as_str().unwrap().to_string();
    assert!(hello["seq"].as_u64().unwrap() >= 1);
    assert_eq!(hello["resume_window_secs"], 2);
    // The status was published on the PWA's behalf …
    let p = next_publish(&mut statuses, Duration::from_secs(5))
        .await
        .expect("status");
    assert_eq!(status_of(&p)["type"], "connected");
    assert_eq!(status_of(&p)["connection_id"], connection_id.as_str());
    // … and recorded.
    wait_for(Duration::from_secs(10), "recorded", || async {
        c.client("fam", "pwa")
            .await
            .filter(|r| r["connected"] == true)
    })
    .await;

    // WS → MQTT device.
    let (device, mut inbox) = subscriber(
        c.mqtt_port,
        "baby",
        &["accounts/fam/clients/baby/webrtc_inbox"],
    )
    .await;
    ws.send(Message::text(
        r#"{"type":"signal","to":"baby","data":{"sdp":"offer"}}"#,
    ))
    .await
    .unwrap();
    let p = next_publish(&mut inbox, Duration::from_secs(5))
        .await
        .expect("signal to device");
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["from"], "pwa");
    assert_eq!(v["from_connection"], connection_id.as_str());
    assert_eq!(v["data"]["sdp"], "offer");

    // MQTT device → WS.
    device
        .publish(
            "accounts/fam/clients/pwa/webrtc_inbox",
            QoS::AtLeastOnce,
            false,
            r#"{"from":"baby","data":{"sdp":"answer"}}"#,
        )
        .await
        .unwrap();
    let f = next_of(&mut ws, "signal").await;
    assert_eq!(f["from"], "baby");
    assert_eq!(f["data"]["sdp"], "answer");

    // Presence of the account's clients arrives without asking.
    let _other = common::Device::connect(c.mqtt_port, "baby2", None).await;
    _other
        .publish(
            "accounts/fam/clients/baby2/status",
            common::status("connected", "kb2", 5, None),
        )
        .await;
    let f = next_of(&mut ws, "presence").await;
    assert_eq!(f["client_id"], "baby2");
    assert_eq!(f["connected"], true);

    // Sequence numbers only go up.
    let mut last = f["seq"].as_u64().unwrap();
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    let pong = next_of(&mut ws, "pong").await;
    assert!(pong["seq"].as_u64().unwrap() > last);
    last = pong["seq"].as_u64().unwrap();

    // Bad frames get error frames.
    ws.send(Message::text("{nope")).await.unwrap();
    let e = next_of(&mut ws, "error").await;
    assert_eq!(e["code"], "invalid_json");
    assert!(e["seq"].as_u64().unwrap() > last);

    // A clean close: status `disconnected` reason `clean`, at once.
    ws.close(None).await.unwrap();
    let p = loop {
        let p = next_publish(&mut statuses, Duration::from_secs(5))
            .await
            .expect("end status");
        if status_of(&p)["type"] == "disconnected" {
            break p;
        }
    };
    assert_eq!(status_of(&p)["reason"], "clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_message_naming_another_accounts_connection_is_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "").await;
    let (mut ws_b, hello_b) = connect(&c, "account=other&client_id=pwa").await;
    let b_conn = hello_b["connection_id"].as_str().unwrap().to_string();
    let (device, _) = subscriber(c.mqtt_port, "baby", &[]).await;
    // Aimed at account fam's client `pwa`, but naming other's WebSocket connection.
    device
        .publish(
            "accounts/fam/clients/pwa/webrtc_inbox",
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"from":"baby","to_connection":"{b_conn}","data":"forged"}}"#),
        )
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "counted drop", || async {
        (c.metric("cradle_ws_inbox_dropped_total").await >= 1).then_some(())
    })
    .await;
    // The other account's socket got nothing but heartbeats.
    let got = tokio::time::timeout(Duration::from_millis(800), next_of(&mut ws_b, "signal")).await;
    assert!(
        got.is_err(),
        "a forged inbox message was delivered: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_inside_the_window_replays_exactly_the_missed_frames() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "").await;
    let (_watch, mut statuses) =
        subscriber(c.mqtt_port, "watcher", &["accounts/fam/clients/pwa/status"]).await;
    let (ws, hello) = connect(&c, "account=fam&client_id=pwa").await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    let seen = hello["seq"].as_u64().unwrap();
    // Open mode: a resume needs the session's secret from its hello.
    let secret = hello["resume_secret"].as_str().unwrap().to_string();
    let _ = next_publish(&mut statuses, Duration::from_secs(5)).await; // connected
                                                                       // The network drops (no close frame).
    drop(ws);
    let (device, _) = subscriber(c.mqtt_port, "baby", &[]).await;
    for i in 0..3 {
        device
            .publish(
                "accounts/fam/clients/pwa/webrtc_inbox",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"from":"baby","data":{i}}}"#),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut ws, hello2) = resume_connect(
        &c,
        &format!(
            "account=fam&client_id=pwa&connection_id={conn}&resume_from={seen}&resume_secret={secret}"
        ),
    )
    .await;
    // Replayed frames come before the new hello, in order, with consecutive seqs.
    let mut replayed = hello2.replayed;
    replayed.retain(|f| f["type"] == "signal");
    let data: Vec<i64> = replayed
        .iter()
        .map(|f| f["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, vec![0, 1, 2], "{:?}", hello2.all_seqs);
    let seqs: Vec<u64> = hello2.all_seqs;
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(seqs[0], seen + 1);
    assert_eq!(hello2.hello["resumed"], true);
    assert_eq!(hello2.hello["connection_id"], conn.as_str());
    // Peers never saw it go offline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Some(p) = next_publish(&mut statuses, Duration::from_millis(100)).await {
        assert_ne!(status_of(&p)["type"], "disconnected", "{}", status_of(&p));
    }
    assert_eq!(
        c.metric("cradle_ws_resumes_total{outcome=\"resumed\"}")
            .await,
        1
    );
    let _ = ws.close(None).await;
}

/// The frames a resumed socket receives up to and including its hello.
struct Resumed {
    replayed: Vec<serde_json::Value>,
    all_seqs: Vec<u64>,
    hello: serde_json::Value,
}

/// Connects a resuming socket and reads up to its hello.
async fn resume_connect(c: &Cradle, query: &str) -> (Ws, Resumed) {
    let (mut ws, _) = tokio_tungstenite::connect_async(c.ws_url(query))
        .await
        .expect("upgrade");
    let mut replayed = Vec::new();
    let mut all_seqs = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("frames")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            all_seqs.push(v["seq"].as_u64().unwrap());
            if v["type"] == "hello" {
                return (
                    ws,
                    Resumed {
                        replayed,
                        all_seqs,
                        hello: v,
                    },
                );
            }
            replayed.push(v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_the_window_is_410_and_the_client_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "").await;
    let (ws, hello) = connect(&c, "account=fam&client_id=pwa").await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    drop(ws);
    // After the window the session is gone and its status became `lost`.
    wait_for(Duration::from_secs(10), "lost", || async {
        c.client("fam", "pwa")
            .await
            .filter(|r| r["connected"] == false && r["last_disconnect_reason"] == "lost")
    })
    .await;
    let r = common::upgrade_request(&format!(
        "{}/ws?account=fam&client_id=pwa&connection_id={conn}&resume_from=1",
        c.http
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_times_out_and_is_lost_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "").await;
    let (ws, _hello) = connect(&c, "account=fam&client_id=quiet").await;
    // Keep the socket open but never read or answer: the heartbeat times out (2 s), then
    // the resume window (2 s) passes.
    let started = std::time::Instant::now();
    let row = wait_for(Duration::from_secs(15), "lost", || async {
        c.client("fam", "quiet")
            .await
            .filter(|r| r["connected"] == false)
    })
    .await;
    assert_eq!(row["last_disconnect_reason"], "lost");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before timeout + window"
    );
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "send_queue = 8\nwrite_timeout_ms = 1000\n").await;
    let (slow, _) = connect(&c, "account=fam&client_id=slow").await;
    // The slow client keeps answering heartbeats (blindly) but never reads a frame.
    let (mut slow_tx, slow_rx) = slow.split();
    let pongs = tokio::spawn(async move {
        loop {
            if slow_tx
                .send(Message::text(r#"{"type":"pong"}"#))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let (mut fine, _) = connect(&c, "account=fam&client_id=fine").await;
    let (device, _) = subscriber(c.mqtt_port, "flood", &[]).await;
    let big = format!(r#"{{"from":"flood","data":"{}"}}"#, "x".repeat(60_000));
    for _ in 0..300 {
        device
            .publish(
                "accounts/fam/clients/slow/webrtc_inbox",
                QoS::AtMostOnce,
                false,
                big.clone(),
            )
            .await
            .unwrap();
    }
    let row = wait_for(Duration::from_secs(20), "slow consumer cut off", || async {
        c.client("fam", "slow")
            .await
            .filter(|r| r["connected"] == false)
    })
    .await;
    assert_eq!(row["last_disconnect_reason"], "slow_consumer");
    device
        .publish(
            "accounts/fam/clients/fine/webrtc_inbox",
            QoS::AtLeastOnce,
            false,
            r#"{"from":"flood","data":"hi"}"#,
        )
        .await
        .unwrap();
    let f = next_of(&mut fine, "signal").await;
    assert_eq!(f["data"], "hi");
    assert_eq!(
        c.metric("cradle_ws_sessions_closed_total{reason=\"slow_consumer\"}")
            .await,
        1
    );
    pongs.abort();
    drop(slow_rx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_token_the_upgrade_is_401() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("w.db").display());
    let cli = |args: &[&str]| common::cli(&db, args);
    cli(&["accounts", "create", "fam"]);
    let token = cli(&["credentials", "issue", "--account", "fam", "--token"]);
    let c = Cradle::spawn_ready(dir.path(), &db, &[]).await;
    for query in [
        "client_id=pwa",
        "client_id=pwa&token=bad.token",
        "client_id=pwa&account=fam",
    ] {
        let err = tokio_tungstenite::connect_async(c.ws_url(query))
            .await
            .unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                assert_eq!(r.status().as_u16(), 401, "{query}")
            }
            other => panic!("{query}: {other:?}"),
        }
    }
    assert!(c.metric("cradle_ws_auth_failures_total").await >= 3);
    // With the token (query parameter, as browsers do) the upgrade works, for its account.
    let (_ws, hello) = connect(&c, &format!("client_id=pwa&token={token}")).await;
    assert_eq!(hello["account_id"], "fam");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_abuse_get_error_frames_then_close_4008() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(
        dir.path(),
        "signal_rate = 1\nsignal_burst = 2\nmax_errors = 3\n",
    )
    .await;
    let (mut ws, _) = connect(&c, "account=fam&client_id=pwa").await;
    for _ in 0..3 {
        ws.send(Message::text(r#"{"type":"signal","to":"baby","data":1}"#))
            .await
            .unwrap();
    }
    let e = next_of(&mut ws, "error").await;
    assert_eq!(e["code"], "rate_limited");
    // Keep misbehaving: the socket is closed with 4008 and the client is `kicked`.
    for _ in 0..5 {
        let _ = ws.send(Message::text(r#"{"type":"dance"}"#)).await;
    }
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break u16::from(f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 4008);
    // The close handshake completes: tungstenite answered Cradle's close, and Cradle then
    // closed the TCP connection (no reset, no frame after the close).
    assert_clean_end(&mut ws).await;
    wait_for(Duration::from_secs(10), "kicked", || async {
        c.client("fam", "pwa")
            .await
            .filter(|r| r["last_disconnect_reason"] == "kicked")
    })
    .await;
    assert!(c.metric("cradle_ws_rate_limited_frames_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_subprotocol_header_authenticates_and_baby_stations_are_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("w.db").display());
    let cli = |args: &[&str]| common::cli(&db, args);
    cli(&["accounts", "create", "fam"]);
    let token = cli(&["credentials", "issue", "--account", "fam", "--token"]);
    let c = Cradle::spawn_ready(dir.path(), &db, &[]).await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = c.ws_url("client_id=pwa").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("cradle, {token}").parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"cradle"[..])
    );
    let hello = next_frame(&mut ws).await.unwrap();
    assert_eq!(hello["account_id"], "fam");
    // A session starts over HTTP: the new baby-station list arrives without asking.
    let r = reqwest::Client::new()
        .put(format!("{}/sessions/s1", c.http))
        .bearer_auth(&token)
        .body(r#"{"session_id":"s1","client_id":"baby","connection_id":"k1","name":"Nursery","started_at_millis":5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let f = next_of(&mut ws, "baby_stations").await;
    assert_eq!(f["baby_stations"][0]["session_id"], "s1");
    assert_eq!(f["baby_stations"][0]["client_id"], "baby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_websocket_max_sessions_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "max_sessions = 2\n").await;
    let (_a, _) = connect(&c, "account=fam&client_id=pwa-a").await;
    let (_b, hello_b) = connect(&c, "account=fam&client_id=pwa-b").await;
    let err = tokio_tungstenite::connect_async(c.ws_url("account=fam&client_id=pwa-c"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status().as_u16(), 503);
            let body: serde_json::Value =
                serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_sessions");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.metric("cradle_ws_refused_total{reason=\"session_limit\"}")
            .await,
        1
    );
    // No session, no status was left by the refused upgrade: pwa-c is unknown.
    assert!(c.client("fam", "pwa-c").await.is_none());
    // A held session still resumes at the limit.
    let id = hello_b["connection_id"].as_str().unwrap();
    let secret = hello_b["resume_secret"].as_str().unwrap();
    let (_b2, hello) = connect(
        &c,
        &format!(
            "account=fam&client_id=pwa-b&connection_id={id}&resume_from=0&resume_secret={secret}"
        ),
    )
    .await;
    assert_eq!(hello["connection_id"], id);
}

/// Starts Cradle with a resume window of `window_secs` (heartbeat timeout 5 s) on the store in
/// `dir`: called again on the same `dir`, it restarts on the same store.
async fn start_with_window(dir: &std::path::Path, window_secs: u64) -> Cradle {
    let config = dir.join("ws.toml");
    std::fs::write(
        &config,
        format!("[websocket]\nheartbeat_secs = 1\nheartbeat_timeout_secs = 5\nresume_window_secs = {window_secs}\n"),
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.join("w.db").display());
    Cradle::spawn_ready(dir, &db, &[("CRADLE_CONFIG", config.display().to_string())]).await
}

/// The next `presence` frame about `client`.
async fn next_presence_of(ws: &mut Ws, client: &str) -> serde_json::Value {
    loop {
        let f = next_of(ws, "presence").await;
        if f["client_id"] == client {
            return f;
        }
    }
}

/// Issue 15: a graceful restart (SIGTERM, start again on the same store) hands the WebSocket
/// sessions over through the store. The socket is closed with 1012; the PWA resumes on the
/// new process with its connection id, `resume_from` and resume secret, gets what it missed
/// in order (its peer's end at the shutdown), then new frames, and a new resume secret. Its
/// status was never recorded as disconnected: the restart does not end a handed-over
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_hands_websocket_sessions_over_and_they_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start_with_window(dir.path(), 30).await;
    let (mut ws, hello) = connect(&first, "account=fam&client_id=pwa").await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    let secret = hello["resume_secret"].as_str().unwrap().to_string();
    let (baby, _) = subscriber(first.mqtt_port, "baby", &[]).await;
    baby.publish(
        "accounts/fam/clients/baby/status",
        QoS::AtLeastOnce,
        true,
        common::status("connected", "kb1", 10, None),
    )
    .await
    .unwrap();
    let seen = next_presence_of(&mut ws, "baby").await;
    assert_eq!(seen["connected"], true, "{seen}");
    let seen = seen["seq"].as_u64().unwrap();

    assert!(first.terminate().success(), "{}", first.log());
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(closed, Some(1012));

    let second = start_with_window(dir.path(), 30).await;
    let (mut ws, resumed) = resume_connect(
        &second,
        &format!(
            "account=fam&client_id=pwa&connection_id={conn}&resume_from={seen}&resume_secret={secret}"
        ),
    )
    .await;
    assert_eq!(resumed.hello["resumed"], true);
    assert_eq!(resumed.hello["connection_id"], conn.as_str());
    assert_ne!(
        resumed.hello["resume_secret"],
        secret.as_str(),
        "a new secret"
    );
    assert!(resumed.all_seqs.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(resumed.all_seqs[0], seen + 1);
    let ended = resumed
        .replayed
        .iter()
        .find(|f| f["type"] == "presence" && f["client_id"] == "baby")
        .unwrap_or_else(|| panic!("the peer's end replayed: {:?}", resumed.replayed));
    assert_eq!(ended["connected"], false, "{:?}", resumed.replayed);
    assert_eq!(ended["reason"], "server_shutdown");

    // New frames flow to the resumed session.
    let (baby, _) = subscriber(second.mqtt_port, "baby", &[]).await;
    baby.publish(
        "accounts/fam/clients/baby/status",
        QoS::AtLeastOnce,
        true,
        common::status("connected", "kb2", 20, None),
    )
    .await
    .unwrap();
    let again = next_presence_of(&mut ws, "baby").await;
    assert_eq!(again["connection_id"], "kb2", "{again}");
    // The PWA's own connection was never recorded as ended.
    let pwa = second.client("fam", "pwa").await.unwrap();
    assert_eq!(pwa["connected"], true, "{pwa}");
    assert_eq!(pwa["connection_id"], conn.as_str());
    let _ = ws.close(None).await;
}

/// Issue 15: a session handed over at a restart and never resumed ends `lost` when its window
/// (counted from the shutdown) passes on the new process, as a dropped session does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_session_not_resumed_ends_lost_when_its_window_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start_with_window(dir.path(), 3).await;
    let (_ws, hello) = connect(&first, "account=fam&client_id=pwa").await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(5), "pwa connected", || async {
        let c = first.client("fam", "pwa").await?;
        (c["connected"] == true).then_some(())
    })
    .await;
    assert!(first.terminate().success(), "{}", first.log());
    let second = start_with_window(dir.path(), 3).await;
    // Taken back: still connected on the new process.
    let pwa = second.client("fam", "pwa").await.unwrap();
    assert_eq!(pwa["connected"], true, "{pwa}");
    let ended = wait_for(Duration::from_secs(10), "ended lost", || async {
        let c = second.client("fam", "pwa").await?;
        (c["connected"] == false).then_some(c)
    })
    .await;
    assert_eq!(ended["connection_id"], conn.as_str());
    assert_eq!(ended["last_disconnect_reason"], "lost", "{ended}");
}

/// After a close frame was received: the socket ends without a reset and nothing follows.
async fn assert_clean_end(ws: &mut Ws) {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(None) | Ok(Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))) => {}
        other => panic!("expected the end of the socket after the close handshake, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_frame_is_answered_and_the_session_ends_clean() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "").await;
    let (mut ws, _) = connect(&c, "account=fam&client_id=pwa").await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // RFC 6455 5.5.1: the server answers with a close frame (echoing the code).
    let answer = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) => continue,
            other => panic!("the client's close was not answered: {other:?}"),
        }
    };
    assert_eq!(answer.map(|f| u16::from(f.code)), Some(1000));
    assert_clean_end(&mut ws).await;
    wait_for(Duration::from_secs(10), "clean", || async {
        c.client("fam", "pwa")
            .await
            .filter(|r| r["last_disconnect_reason"] == "clean")
    })
    .await;
}

/// The status code, `error.code` and headers of a `/ws` request with `origin` and
/// `protocols` (`upgrade`: as a WebSocket upgrade; otherwise a plain GET).
async fn ws_answer(
    c: &Cradle,
    query: &str,
    origin: Option<&str>,
    protocols: Option<&str>,
    upgrade: bool,
) -> (u16, String, reqwest::header::HeaderMap) {
    let url = format!("{}/ws?{query}", c.http);
    let mut request = if upgrade {
        common::upgrade_request(&url)
    } else {
        reqwest::Client::new().get(&url)
    };
    if let Some(o) = origin {
        request = request.header("Origin", o);
    }
    if let Some(p) = protocols {
        request = request.header("Sec-WebSocket-Protocol", p);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let code = if status == 101 {
        String::new()
    } else {
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    (status, code, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_and_subprotocols_are_decided_before_the_upgrade_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "").await;
    // Open mode, `http.allowed_origins` unset: loopback pages only.
    let q = |client: &str| format!("account=fam&client_id={client}");
    for (origin, status, code) in [
        ("https://evil.example", 403, "origin_not_allowed"),
        ("null", 403, "origin_not_allowed"),
        ("http://192.168.1.5:8080", 403, "origin_not_allowed"),
    ] {
        let (s, e, h) = ws_answer(&c, &q("refused-1"), Some(origin), None, true).await;
        assert_eq!((s, e.as_str()), (status, code), "{origin}");
        assert!(h.get("access-control-allow-origin").is_none());
    }
    // A page offering only its token as a subprotocol would fail after the 101: refused.
    let (s, e, _) = ws_answer(
        &c,
        &q("refused-2"),
        Some("http://localhost:5173"),
        Some("abc.def"),
        true,
    )
    .await;
    assert_eq!((s, e.as_str()), (400, "subprotocol_not_supported"));
    // With `cradle` beside it, or from a client that is no browser (no Origin): upgraded.
    let (s, _, h) = ws_answer(
        &c,
        &q("pwa-1"),
        Some("http://localhost:5173"),
        Some("cradle, abc.def"),
        true,
    )
    .await;
    assert_eq!(s, 101);
    assert_eq!(h["sec-websocket-protocol"], "cradle");
    let (s, _, _) = ws_answer(&c, &q("pwa-2"), None, Some("abc.def"), true).await;
    assert_eq!(s, 101);
    // A plain GET runs the same checks: 426 when the upgrade would pass, the refusal
    // otherwise (a browser learns why its upgrade failed).
    let (s, e, h) = ws_answer(&c, &q("probe"), Some("http://127.0.0.1:9"), None, false).await;
    assert_eq!((s, e.as_str()), (426, "upgrade_required"));
    assert_eq!(h["access-control-allow-origin"], "http://127.0.0.1:9");
    let (s, e, _) = ws_answer(
        &c,
        &format!("{}&connection_id=ws-nope&resume_from=3", q("probe")),
        None,
        None,
        false,
    )
    .await;
    assert_eq!((s, e.as_str()), (410, "session_gone"));
    let (s, e, _) = ws_answer(&c, &q("probe"), Some("https://evil.example"), None, false).await;
    assert_eq!((s, e.as_str()), (403, "origin_not_allowed"));
    // Nothing was left by a refusal or a probe: no status, no session, no session metric.
    wait_for(
        Duration::from_secs(10),
        "the two upgrades recorded",
        || async {
            (c.client("fam", "pwa-1").await.is_some() && c.client("fam", "pwa-2").await.is_some())
                .then_some(())
        },
    )
    .await;
    for refused in ["refused-1", "refused-2", "probe"] {
        assert!(c.client("fam", refused).await.is_none(), "{refused}");
    }
    assert_eq!(c.metric("cradle_ws_sessions_opened_total").await, 2);
    assert_eq!(
        c.metric("cradle_http_refused_total{reason=\"origin\"}")
            .await,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_allowed_origins_per_fetch_and_nothing_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(
        dir.path(),
        "[http]\nallowed_origins = [\"https://app.example\"]\n",
    )
    .await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{}/sessions/s-1", c.http))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "PUT")
            .header(
                "Access-Control-Request-Headers",
                "content-type, x-cradle-account",
            )
            .send()
    };
    let r = preflight("https://app.example").await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("PUT") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for needed in [
        "authorization",
        "content-type",
        "x-cradle-account",
        "last-event-id",
    ] {
        assert!(headers.contains(needed), "{headers}");
    }
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Origin")));
    // Another origin (a loopback one too: the list replaces the default) gets no CORS header.
    for foreign in ["https://evil.example", "http://127.0.0.1:5173"] {
        let r = preflight(foreign).await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{foreign}");
        assert!(r.headers().get("access-control-allow-origin").is_none());
    }
    // The actual request: the allowed origin may read the answer (and its Retry-After);
    // without Origin (a script) nothing changes.
    let r = http
        .put(format!("{}/sessions/s-1", c.http))
        .header("Origin", "https://app.example")
        .header("X-Cradle-Account", "fam")
        .json(&serde_json::json!({"session_id": "s-1", "client_id": "baby", "connection_id": "baby-1", "name": "Nursery", "started_at_millis": 1_700_000_000_000_i64}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("Retry-After"));
    let r = http
        .get(format!("{}/v1/accounts/fam/clients", c.http))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = http
        .get(format!("{}/v1/accounts/fam/clients", c.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // The /ws upgrade from a loopback page is refused too once a list is set.
    let (s, e, _) = ws_answer(
        &c,
        "account=fam&client_id=pwa",
        Some("http://127.0.0.1:5173"),
        None,
        true,
    )
    .await;
    assert_eq!((s, e.as_str()), (403, "origin_not_allowed"));
    let (s, _, _) = ws_answer(
        &c,
        "account=fam&client_id=pwa",
        Some("https://app.example"),
        None,
        true,
    )
    .await;
    assert_eq!(s, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_max_frame_bytes_is_closed_1009_and_the_session_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), "max_frame_bytes = 1024\n").await;
    let (mut ws, hello) = connect(&c, "account=fam&client_id=pwa").await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    let secret = hello["resume_secret"].as_str().unwrap().to_string();
    let _ = ws.send(Message::text("x".repeat(2000))).await;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(u16::from(close.code), 1009);
    assert!(close.reason.contains("max_frame_bytes"), "{close:?}");
    // Like a drop: the session waits for its resume (the replay of what followed `seq` 1, if
    // anything did, comes before the resumed `hello`).
    let (mut ws, _) = tokio_tungstenite::connect_async(c.ws_url(&format!(
        "account=fam&client_id=pwa&connection_id={conn}&resume_from=1&resume_secret={secret}"
    )))
    .await
    .expect("upgrade");
    let again = next_of(&mut ws, "hello").await;
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(again["connection_id"], conn.as_str());
}
