//! HTTP authentication once accounts exist: the account comes from the bearer token; another
//! account's token gets 403, no or a bad token 401; the admin token and an operator secret
//! read any account. Before any account exists (open mode) no token is needed.

use cradle_testkit as common;

use common::Cradle;

use common::cli as issue;

async fn get(cradle: &Cradle, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut r = reqwest::Client::new().get(format!("{}{path}", cradle.http));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scope_every_route_to_their_account() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("auth.db").display());

    // Open mode: no account yet, no token needed.
    let open = Cradle::start(dir.path(), Some(db.clone())).await;
    assert_eq!(get(&open, "/v1/accounts/a/clients", None).await.0, 200);
    drop(open);

    issue(&db, &["accounts", "create", "a"]);
    issue(&db, &["accounts", "create", "b"]);
    let token_a = issue(&db, &["credentials", "issue", "--account", "a", "--token"]);
    let operator = issue(&db, &["credentials", "issue", "--operator"]);
    let device_a = issue(
        &db,
        &["credentials", "issue", "--account", "a", "--client", "d"],
    );
    let admin = "an-admin-token-of-some-length".to_string();

    let cradle =
        Cradle::spawn_ready(dir.path(), &db, &[("CRADLE_ADMIN_TOKEN", admin.clone())]).await;
    for path in ["/v1/accounts/a/clients", "/v1/accounts/a/events"] {
        let (status, body) = get(&cradle, path, None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(get(&cradle, path, Some(&token_a)).await.0, 200, "{path}");
        assert_eq!(get(&cradle, path, Some("cr_x.nope")).await.0, 401, "{path}");
        assert_eq!(
            get(&cradle, path, Some(&device_a)).await.0,
            401,
            "a device secret is no bearer token"
        );
    }
    let (status, body) = get(&cradle, "/v1/accounts/b/events", Some(&token_a)).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        get(&cradle, "/v1/accounts/b/clients", Some(&admin)).await.0,
        200
    );
    assert_eq!(
        get(&cradle, "/v1/accounts/b/clients", Some(&operator))
            .await
            .0,
        200
    );
    // Health and metrics stay open for probes and scrapers on the loopback listener.
    assert_eq!(get(&cradle, "/readyz", None).await.0, 200);
}

/// One request with an optional bearer token and JSON body: (status, body).
async fn call(
    cradle: &Cradle,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut r = reqwest::Client::new().request(method, format!("{}{path}", cradle.http));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Whether `secret` lets device `client` of `account` connect over MQTT (CONNACK 0).
async fn device_connects(cradle: &Cradle, account: &str, client: &str, secret: &str) -> bool {
    let (_, code) =
        common::RawV4::connect(cradle.mqtt_port, client, Some((account, secret)), 30).await;
    code == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_provisions_rotates_and_revokes_over_http() {
    use reqwest::Method;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("admin.db").display());
    let admin = "an-admin-token-of-some-length".to_string();
    let cradle =
        Cradle::spawn_ready(dir.path(), &db, &[("CRADLE_ADMIN_TOKEN", admin.clone())]).await;
    let a = Some(admin.as_str());

    // Open mode (no account, loopback): the first account is created over HTTP; a retry of
    // the same PUT finds it (200), which ends open mode at once.
    let (status, body) = call(
        &cradle,
        Method::PUT,
        "/v1/admin/accounts/fam",
        None,
        Some(json!({"name": "The Family"})),
    )
    .await;
    assert_eq!(
        (status, &body["name"]),
        (201, &json!("The Family")),
        "{body}"
    );
    let (status, _) = call(&cradle, Method::PUT, "/v1/admin/accounts/fam", a, None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&cradle, Method::GET, "/v1/admin/accounts", None, None).await;
    assert_eq!(status, 401, "open mode ended with the first account");
    let (status, body) = call(&cradle, Method::GET, "/v1/admin/accounts", a, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["accounts"][0]["account_id"], "fam", "{body}");
    let (status, body) = call(&cradle, Method::GET, "/v1/admin/accounts/nope", a, None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("account_not_found"))
    );

    // Credentials of each kind; the secret is in the issuing response only.
    let issue = |body: serde_json::Value| {
        call(
            &cradle,
            Method::POST,
            "/v1/admin/credentials",
            a,
            Some(body),
        )
    };
    let (status, device) =
        issue(json!({"kind": "device", "account_id": "fam", "client_id": "baby-1"})).await;
    assert_eq!(status, 201, "{device}");
    let secret = device["secret"].as_str().unwrap().to_string();
    let device_id = device["credential_id"].as_str().unwrap().to_string();
    let (status, token) = issue(json!({"kind": "token", "account_id": "fam"})).await;
    assert_eq!(status, 201, "{token}");
    let token = token["secret"].as_str().unwrap().to_string();
    let (status, operator) = issue(json!({"kind": "operator"})).await;
    assert_eq!(status, 201);
    let operator = operator["secret"].as_str().unwrap().to_string();
    let (status, body) = issue(json!({"kind": "device", "account_id": "fam"})).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("kind")),
        "{body}"
    );
    let (status, body) = issue(json!({"kind": "token", "account_id": "ghost"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, list) = call(
        &cradle,
        Method::GET,
        "/v1/admin/credentials?account_id=fam",
        a,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["credentials"].as_array().unwrap().len(), 2, "{list}");
    assert!(
        !list.to_string().contains(&secret),
        "a listing shows no secret"
    );
    assert!(!list.to_string().contains("secret_hash"), "nor a hash");

    // Operators read but do not administer; an account's token neither.
    for t in [&operator, &token] {
        let (status, body) = call(&cradle, Method::GET, "/v1/admin/accounts", Some(t), None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (403, &json!("forbidden")),
            "{body}"
        );
    }

    // An administrator or operator naming an account that does not exist gets 404, not an
    // empty list; an operator starting a session is told why it may not.
    for t in [admin.as_str(), operator.as_str()] {
        let (status, body) = get(&cradle, "/v1/accounts/nope/clients", Some(t)).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (404, &json!("account_not_found")),
            "{body}"
        );
    }
    let (status, body) = call(
        &cradle,
        Method::PUT,
        "/sessions/s-1",
        Some(&operator),
        Some(json!({"session_id": "s-1", "connection_id": "k", "started_at_millis": 1})),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not start or end sessions"),
        "{body}"
    );

    // Rotation: the new secret works, the old one too, until it is revoked.
    assert!(device_connects(&cradle, "fam", "baby-1", &secret).await);
    let (status, rotated) = call(
        &cradle,
        Method::POST,
        &format!("/v1/admin/credentials/{device_id}/rotate"),
        a,
        None,
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    assert_eq!(rotated["client_id"], "baby-1");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert!(device_connects(&cradle, "fam", "baby-1", &new_secret).await);
    assert!(device_connects(&cradle, "fam", "baby-1", &secret).await);
    let (status, revoked) = call(
        &cradle,
        Method::DELETE,
        &format!("/v1/admin/credentials/{device_id}"),
        a,
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at_millis"].as_i64().unwrap() > 0);
    // Refused at once, although the secret was verified (and cached) a moment ago.
    assert!(!device_connects(&cradle, "fam", "baby-1", &secret).await);
    assert!(device_connects(&cradle, "fam", "baby-1", &new_secret).await);

    // Bulk provisioning: all or nothing, one secret per client id.
    let ids: Vec<String> = (0..50).map(|i| format!("cam-{i}")).collect();
    let (status, bulk) = call(
        &cradle,
        Method::POST,
        "/v1/admin/accounts/fam/devices",
        a,
        Some(json!({"client_ids": ids})),
    )
    .await;
    assert_eq!(status, 201, "{bulk}");
    let issued = bulk["credentials"].as_array().unwrap();
    assert_eq!(issued.len(), 50);
    let last = issued[49]["secret"].as_str().unwrap();
    assert!(device_connects(&cradle, "fam", "cam-49", last).await);
    let (status, _) = call(
        &cradle,
        Method::POST,
        "/v1/admin/accounts/fam/devices",
        a,
        Some(json!({"client_ids": ["x", "x"]})),
    )
    .await;
    assert_eq!(status, 400);

    // Deleting the account revokes its credentials; its token is refused at once.
    assert_eq!(
        get(&cradle, "/v1/accounts/fam/clients", Some(&token))
            .await
            .0,
        200
    );
    let (status, deleted) = call(&cradle, Method::DELETE, "/v1/admin/accounts/fam", a, None).await;
    assert_eq!(status, 200, "{deleted}");
    // the token, the rotated device secret and the 50 bulk ones (the first device secret was
    // revoked already; the operator belongs to no account)
    assert_eq!(deleted["credentials_revoked"], 52, "{deleted}");
    assert_eq!(
        get(&cradle, "/v1/accounts/fam/clients", Some(&token))
            .await
            .0,
        401
    );
    let (status, _) = call(&cradle, Method::DELETE, "/v1/admin/accounts/fam", a, None).await;
    assert_eq!(status, 404);
}

/// An MQTT 5 device on Eclipse Paho (Python, paho-mqtt 2.x): prints `connected {code}` and,
/// when the server ends the connection, `disconnected {reason code}`, then exits.
const PAHO_DEVICE: &str = r#"
import os, sys
import paho.mqtt.client as mqtt
port, user, password, cid = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
c.username_pw_set(user, password)
c.on_connect = lambda c, u, f, rc, p: print("connected", rc.value, flush=True)
def gone(c, u, f, rc, p):
    print("disconnected", rc.value, flush=True)
    os._exit(0)
c.on_disconnect = gone
c.connect("127.0.0.1", int(port), keepalive=30)
c.loop_forever()
"#;

/// Starts [`PAHO_DEVICE`]; its stdout lines arrive on the returned channel.
fn paho_device(
    port: u16,
    account: &str,
    client: &str,
    secret: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            PAHO_DEVICE,
            &port.to_string(),
            account,
            secret,
            client,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt 2.x (scripts/test installs it)");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>, within: std::time::Duration) -> String {
    rx.recv_timeout(within)
        .unwrap_or_else(|e| panic!("no line from paho: {e}"))
}

/// Reads `device` until the server closes it (`read` also gives up after 5 s), allowing only the
/// PUBACKs of statuses it sent before.
async fn until_closed_after_pubacks(device: &mut common::RawV4) {
    while let Some(p) = device.read().await {
        assert!(
            matches!(p, rumqttc::mqttbytes::v4::Packet::PubAck(_)),
            "only a status's PUBACK before the end: {p:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_credential_or_disconnecting_a_client_ends_its_live_connections() {
    use futures_util::StreamExt;
    use reqwest::Method;
    use serde_json::json;
    use std::time::{Duration, Instant};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("revoke.db").display());
    issue(&db, &["accounts", "create", "fam"]);
    let admin = "an-admin-token-of-some-length".to_string();
    let owned =
        Cradle::spawn_ready(dir.path(), &db, &[("CRADLE_ADMIN_TOKEN", admin.clone())]).await;
    let cradle = &owned;
    let a = Some(admin.as_str());
    let new = |body: serde_json::Value| async move {
        let (status, c) = call(cradle, Method::POST, "/v1/admin/credentials", a, Some(body)).await;
        assert_eq!(status, 201, "{c}");
        (
            c["credential_id"].as_str().unwrap().to_string(),
            c["secret"].as_str().unwrap().to_string(),
        )
    };
    let revoke = |id: String| async move {
        let (status, body) = call(
            cradle,
            Method::DELETE,
            &format!("/v1/admin/credentials/{id}"),
            a,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body
    };

    // MQTT 3.1.1: a device that reported `connected` is cut within a second, and its end is
    // recorded with reason `revoked`.
    let (v4_id, v4_secret) =
        new(json!({"kind": "device", "account_id": "fam", "client_id": "baby-1"})).await;
    let (mut v4, code) =
        common::RawV4::connect(cradle.mqtt_port, "baby-1", Some(("fam", &v4_secret)), 30).await;
    assert_eq!(code, 0);
    v4.publish(
        "accounts/fam/clients/baby-1/status",
        common::status("connected", "k-baby-1", 1_000, None).as_bytes(),
        1,
    )
    .await;
    common::wait_for(
        Duration::from_secs(10),
        "baby-1 recorded connected",
        || async {
            let (_, body) = call(cradle, Method::GET, "/v1/accounts/fam/clients", a, None).await;
            (body["clients"][0]["connected"] == true).then_some(())
        },
    )
    .await;
    let started = Instant::now();
    let body = revoke(v4_id).await;
    assert_eq!(body["ended"]["mqtt_connections"], 1, "{body}");
    until_closed_after_pubacks(&mut v4).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    common::wait_for(
        Duration::from_secs(10),
        "the end recorded as revoked",
        || async {
            let (_, body) = call(cradle, Method::GET, "/v1/accounts/fam/clients", a, None).await;
            (body["clients"][0]["last_disconnect_reason"] == "revoked").then_some(())
        },
    )
    .await;
    let (_, code) =
        common::RawV4::connect(cradle.mqtt_port, "baby-1", Some(("fam", &v4_secret)), 30).await;
    assert_ne!(code, 0, "the revoked secret is refused at once");

    // MQTT 5 on Eclipse Paho: DISCONNECT with reason code 0x87 (not authorized).
    let (v5_id, v5_secret) =
        new(json!({"kind": "device", "account_id": "fam", "client_id": "parent-1"})).await;
    let (mut paho, lines) = paho_device(cradle.mqtt_port, "fam", "parent-1", &v5_secret);
    assert_eq!(next_line(&lines, Duration::from_secs(15)), "connected 0");
    revoke(v5_id).await;
    assert_eq!(
        next_line(&lines, Duration::from_secs(5)),
        "disconnected 135"
    );
    let _ = paho.wait();

    // A WebSocket session: closed with 4010, and never resumed, not even with its resume
    // secret and another valid token of the account.
    let (token_id, token) = new(json!({"kind": "token", "account_id": "fam"})).await;
    let (_, other_token) = new(json!({"kind": "token", "account_id": "fam"})).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(cradle.ws_url(&format!("client_id=pwa&token={token}")))
            .await
            .expect("upgrade");
    let hello = common::next_frame(&mut ws).await.expect("hello");
    revoke(token_id).await;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.expect("a close code").code), 4010);
    let resume = common::upgrade_request(&format!(
        "{}/ws?client_id=pwa&token={other_token}&connection_id={}&resume_from=1&resume_secret={}",
        cradle.http,
        hello["connection_id"].as_str().unwrap(),
        hello["resume_secret"].as_str().unwrap(),
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(resume.status(), 410);

    // A kick: MQTT 5 DISCONNECT 0x98, recorded as admin_disconnect; the client may return.
    let (_, kick_secret) =
        new(json!({"kind": "device", "account_id": "fam", "client_id": "baby-2"})).await;
    let (mut v5, _) =
        common::RawV5::connect(cradle.mqtt_port, "baby-2", Some(("fam", &kick_secret)), 30).await;
    let (status, body) = call(
        cradle,
        Method::POST,
        "/v1/accounts/fam/clients/baby-2/disconnect",
        a,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ended"]["mqtt_connections"], 1, "{body}");
    match v5.read().await {
        Some(rumqttc::v5::mqttbytes::v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code as u8, 0x98)
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    let (mut again, code) =
        common::RawV5::connect(cradle.mqtt_port, "baby-2", Some(("fam", &kick_secret)), 30).await;
    assert_eq!(code, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success);
    // The decision, coming back through the broker, does not end the new connection.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), again.read())
            .await
            .is_err(),
        "the reconnected client stays connected"
    );
    drop(again);

    // A kick with a ban: reconnects are refused (MQTT 5: CONNACK 0x8A banned; /ws: 403)
    // until the ban is lifted.
    let (mut v5, _) =
        common::RawV5::connect(cradle.mqtt_port, "baby-2", Some(("fam", &kick_secret)), 30).await;
    let (status, body) = call(
        cradle,
        Method::POST,
        "/v1/accounts/fam/clients/baby-2/disconnect",
        a,
        Some(json!({"ban_secs": 600})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["banned_until_millis"].as_i64().unwrap() > 0, "{body}");
    assert!(matches!(
        v5.read().await,
        Some(rumqttc::v5::mqttbytes::v5::Packet::Disconnect(_))
    ));
    let (_, code) =
        common::RawV5::connect(cradle.mqtt_port, "baby-2", Some(("fam", &kick_secret)), 30).await;
    assert_eq!(code, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Banned);
    let (_, other_token) = new(json!({"kind": "token", "account_id": "fam"})).await;
    let banned_ws = common::upgrade_request(&format!(
        "{}/ws?client_id=baby-2&token={other_token}",
        cradle.http
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(banned_ws.status(), 403);
    let (status, bans) = call(cradle, Method::GET, "/v1/admin/bans", a, None).await;
    assert_eq!(status, 200);
    assert_eq!(bans["bans"][0]["client_id"], "baby-2", "{bans}");
    assert_eq!(bans["bans"][0]["by"], "admin_token", "{bans}");
    let (status, _) = call(cradle, Method::DELETE, "/v1/admin/bans/fam/baby-2", a, None).await;
    assert_eq!(status, 204);
    let (_, code) =
        common::RawV5::connect(cradle.mqtt_port, "baby-2", Some(("fam", &kick_secret)), 30).await;
    assert_eq!(code, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success);

    // Every administrative action is in the account's log: who, what, when.
    let (_, log) = call(
        cradle,
        Method::GET,
        "/v1/accounts/fam/events?after=0&limit=1000",
        a,
        None,
    )
    .await;
    let admin: Vec<(String, String)> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stream"] == "admin/fam")
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["data"]["by"].as_str().unwrap().into(),
            )
        })
        .collect();
    for kind in [
        "admin.credential_issued",
        "admin.credential_revoked",
        "admin.client_disconnected",
        "admin.client_banned",
        "admin.ban_lifted",
    ] {
        assert!(
            admin.iter().any(|(t, by)| t == kind && by == "admin_token"),
            "{kind} missing from {admin:?}"
        );
    }
    assert!(cradle
        .metrics()
        .await
        .contains("cradle_admin_actions_total{action=\"credential_revoked\"} 3"));

    // The edge counts an end once the connection has finished, a moment after the DISCONNECT
    // reached the client.
    for series in [
        "cradle_edge_disconnects_total{reason=\"revoked\"} 2",
        "cradle_edge_disconnects_total{reason=\"admin_disconnect\"} 2",
        "cradle_ws_sessions_closed_total{reason=\"revoked\"} 1",
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = cradle.metrics().await;
            if metrics.contains(series) {
                break;
            }
            assert!(Instant::now() < deadline, "{series}:\n{metrics}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_administers_a_running_cradle_over_http_without_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("remote.db").display());
    let admin = "an-admin-token-of-some-length".to_string();
    let cradle =
        Cradle::spawn_ready(dir.path(), &db, &[("CRADLE_ADMIN_TOKEN", admin.clone())]).await;
    // From a directory without any store, and without the database's URL.
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::cradle_bin())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CRADLE_SERVER", &cradle.http)
            .env("CRADLE_ADMIN_TOKEN", &admin)
            .current_dir(elsewhere.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["accounts", "create", "fam", "--name", "Family"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = run(&["accounts", "create", "fam"]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, out, err) = run(&[
        "credentials",
        "issue",
        "--account",
        "fam",
        "--client",
        "baby-1",
    ]);
    assert!(ok, "{err}");
    let secret = out.lines().last().unwrap().to_string();
    let id = out.split_whitespace().nth(3).unwrap().to_string();
    let (mut device, code) =
        common::RawV4::connect(cradle.mqtt_port, "baby-1", Some(("fam", &secret)), 30).await;
    assert_eq!(code, 0);
    let (ok, listing, _) = run(&["credentials", "list", "--account", "fam"]);
    assert!(
        ok && listing.contains(&id) && !listing.contains(&secret),
        "{listing}"
    );
    let (ok, _, err) = run(&["credentials", "revoke", &id]);
    assert!(ok, "{err}");
    assert!(
        device.read().await.is_none(),
        "revoked over HTTP: the live connection ended"
    );
    let (ok, accounts, _) = run(&["accounts", "list"]);
    assert!(ok && accounts.contains("Family"), "{accounts}");
    assert!(!elsewhere.path().join("data").exists(), "no store created");
    // A wrong token is named as the server's refusal.
    let out = std::process::Command::new(common::cradle_bin())
        .args([
            "accounts",
            "list",
            "--server",
            &cradle.http,
            "--admin-token",
            "wrong-token-xxxxxxxx",
        ])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("401 unauthorized"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_listener_keeps_administration_and_metrics_off_the_public_port() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("admin-port.db").display());
    let admin = "an-admin-token-of-some-length".to_string();
    let port = common::free_port();
    let cradle = Cradle::spawn_ready(
        dir.path(),
        &db,
        &[
            ("CRADLE_ADMIN_TOKEN", admin.clone()),
            ("CRADLE_HTTP_ADMIN_LISTEN", format!("127.0.0.1:{port}")),
        ],
    )
    .await;
    let status = |url: String| {
        let admin = admin.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let inside = format!("http://127.0.0.1:{port}");
    for path in ["/v1/admin/accounts", "/metrics"] {
        assert_eq!(
            status(format!("{}{path}", cradle.http)).await,
            404,
            "{path}"
        );
        assert_eq!(status(format!("{inside}{path}")).await, 200, "{path}");
    }
    assert_eq!(
        status(format!("{}/v1/accounts/a/clients", cradle.http)).await,
        200
    );
    assert_eq!(status(format!("{inside}/v1/accounts/a/clients")).await, 404);
    assert_eq!(status(format!("{inside}/readyz")).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_connections_are_listed_with_their_details_and_paged() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("conns.db").display());
    issue(&db, &["accounts", "create", "fam"]);
    issue(&db, &["accounts", "create", "other"]);
    let secret = |a: &str, c: &str| {
        issue(
            &db,
            &["credentials", "issue", "--account", a, "--client", c],
        )
    };
    let (s1, s2, s3) = (
        secret("fam", "baby-1"),
        secret("fam", "parent-1"),
        secret("other", "x"),
    );
    let token = issue(
        &db,
        &["credentials", "issue", "--account", "fam", "--token"],
    );
    let admin = "an-admin-token-of-some-length".to_string();
    let cradle =
        Cradle::spawn_ready(dir.path(), &db, &[("CRADLE_ADMIN_TOKEN", admin.clone())]).await;
    let (mut baby, _) =
        common::RawV4::connect(cradle.mqtt_port, "baby-1", Some(("fam", &s1)), 30).await;
    baby.publish(
        "accounts/fam/clients/baby-1/status",
        common::status("connected", "k1", 1_000, None).as_bytes(),
        1,
    )
    .await;
    assert!(matches!(
        baby.read().await,
        Some(rumqttc::mqttbytes::v4::Packet::PubAck(_))
    ));
    let (_parent, _) =
        common::RawV5::connect(cradle.mqtt_port, "parent-1", Some(("fam", &s2)), 45).await;
    let (_x, _) = common::RawV4::connect(cradle.mqtt_port, "x", Some(("other", &s3)), 30).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(cradle.ws_url(&format!("client_id=pwa&token={token}")))
            .await
            .unwrap();
    let hello = common::next_frame(&mut ws).await.unwrap();

    let (status, page) = call(
        &cradle,
        Method::GET,
        "/v1/accounts/fam/connections",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let list = page["connections"].as_array().unwrap();
    let clients: Vec<&str> = list
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(clients, ["baby-1", "parent-1", "pwa"], "{page}");
    let baby = &list[0];
    assert_eq!(baby["kind"], "mqtt");
    assert_eq!(baby["protocol"], "3.1.1");
    assert_eq!(baby["listener"], "mqtt.listen");
    assert_eq!(baby["keep_alive_secs"], 30);
    assert!(baby["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(baby["credential_id"].as_str().unwrap().starts_with("cr_"));
    assert_eq!(baby["messages_in"], 1, "{baby}");
    assert!(baby["bytes_in"].as_u64().unwrap() > 20, "{baby}");
    assert!(
        baby["bytes_out"].as_u64().unwrap() >= 4,
        "the PUBACK: {baby}"
    );
    assert_eq!(list[1]["protocol"], "5");
    assert_eq!(list[1]["keep_alive_secs"], 45);
    assert!(
        baby["connection_id"].as_str().unwrap().starts_with("m-"),
        "the edge's id of the MQTT connection: {baby}"
    );
    assert_eq!(list[2]["kind"], "websocket");
    assert_eq!(list[2]["connection_id"], hello["connection_id"]);
    assert!(list[2]["connected_at_millis"].as_i64().unwrap() > 0);
    assert_eq!(list[2]["peer"], "127.0.0.1", "{page}");
    assert!(
        list[2]["messages_out"].as_u64().unwrap() >= 1,
        "hello: {page}"
    );
    assert!(list[2]["bytes_out"].as_u64().unwrap() > 20, "{page}");
    assert_eq!(list[2]["messages_in"], 0, "{page}");

    // Paged one at a time, the same three; another account's token sees none of them.
    let mut walked = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/v1/accounts/fam/connections?limit=1&after={after}");
        let (_, page) = call(&cradle, Method::GET, &path, Some(&token), None).await;
        for c in page["connections"].as_array().unwrap() {
            walked.push(c["client_id"].as_str().unwrap().to_string());
        }
        match page["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(walked, ["baby-1", "parent-1", "pwa"]);
    let (status, _) = call(
        &cradle,
        Method::GET,
        "/v1/accounts/other/connections",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // Administrators see every account.
    let (status, all) = call(
        &cradle,
        Method::GET,
        "/v1/admin/connections",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(all["connections"].as_array().unwrap().len(), 4, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_credential_administers_under_its_own_name_until_revoked() {
    use reqwest::Method;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("admins.db").display());
    issue(&db, &["accounts", "create", "fam"]);
    let secret = issue(&db, &["credentials", "issue", "--admin"]);
    let id = secret.split('.').next().unwrap().to_string();
    let cradle = Cradle::spawn_ready(dir.path(), &db, &[]).await;
    let (status, _) = call(
        &cradle,
        Method::PUT,
        "/v1/admin/accounts/fam-2",
        Some(&secret),
        Some(json!({"name": "Second"})),
    )
    .await;
    assert_eq!(status, 201);
    let (_, log) = call(
        &cradle,
        Method::GET,
        "/v1/accounts/fam-2/events?after=0",
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(log["events"][0]["type"], "admin.account_created", "{log}");
    assert_eq!(log["events"][0]["data"]["by"], id.as_str(), "{log}");
    // It is no MQTT password, and once revoked (by itself, here) it is refused at once.
    let (_, code) = common::RawV4::connect(cradle.mqtt_port, "x", Some(("fam", &secret)), 30).await;
    assert_ne!(code, 0);
    let (status, _) = call(
        &cradle,
        Method::DELETE,
        &format!("/v1/admin/credentials/{id}"),
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &cradle,
        Method::GET,
        "/v1/admin/accounts",
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_that_leaves_is_erased_events_read_models_and_all() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("erase.db").display());
    issue(&db, &["accounts", "create", "fam"]);
    issue(&db, &["accounts", "create", "stays"]);
    let secret = issue(
        &db,
        &[
            "credentials",
            "issue",
            "--account",
            "fam",
            "--client",
            "baby-1",
        ],
    );
    let admin = "an-admin-token-of-some-length".to_string();
    let cradle =
        Cradle::spawn_ready(dir.path(), &db, &[("CRADLE_ADMIN_TOKEN", admin.clone())]).await;
    let a = Some(admin.as_str());
    let (mut baby, _) =
        common::RawV4::connect(cradle.mqtt_port, "baby-1", Some(("fam", &secret)), 30).await;
    baby.publish(
        "accounts/fam/clients/baby-1/status",
        common::status("connected", "k1", 1_000, None).as_bytes(),
        1,
    )
    .await;
    cradle.wait_events("fam", 1).await;

    // Deleting keeps the log; erasing (also after a deletion) removes it.
    let (status, body) = call(&cradle, Method::DELETE, "/v1/admin/accounts/fam", a, None).await;
    assert_eq!(
        (status, &body["events"]),
        (200, &serde_json::json!("kept")),
        "{body}"
    );
    until_closed_after_pubacks(&mut baby).await;
    let (status, body) = call(
        &cradle,
        Method::DELETE,
        "/v1/admin/accounts/fam?erase=true",
        a,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], "erased");
    assert_eq!(body["deleted"], false, "deleted before");
    assert!(body["erased"]["events"].as_u64().unwrap() >= 2, "{body}");
    assert_eq!(body["erased"]["clients"], 1, "{body}");
    // Nothing of it is left to erase, and the erase is in Cradle's own log.
    let (status, _) = call(
        &cradle,
        Method::DELETE,
        "/v1/admin/accounts/fam?erase=true",
        a,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, log) = call(
        &cradle,
        Method::GET,
        "/v1/accounts/_cradle/events?after=0",
        a,
        None,
    )
    .await;
    let erased = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "admin.account_erased")
        .cloned()
        .unwrap_or_else(|| panic!("no admin.account_erased in {log}"));
    assert_eq!(erased["data"]["account_id"], "fam");
    assert_eq!(erased["data"]["by"], "admin_token");
}

/// The API description is generated from the handlers: every route it names is served, with
/// the methods it names (that every declared route is named is `http::openapi`'s unit test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served_with_its_methods() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("openapi.db").display());
    issue(&db, &["accounts", "create", "fam"]);
    let admin = "an-admin-token-of-some-length".to_string();
    let cradle =
        Cradle::spawn_ready(dir.path(), &db, &[("CRADLE_ADMIN_TOKEN", admin.clone())]).await;
    let doc: serde_json::Value = reqwest::get(format!("{}/v1/openapi.json", cradle.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let url = format!("{}{}", cradle.http, path.replace(['{', '}'], ""));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = reqwest::Client::new()
                .request(method.clone(), &url)
                .bearer_auth(&admin)
                .header("X-Cradle-Account", "fam")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            // A live stream never ends: its status and headers say enough.
            let streams = r
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let body: serde_json::Value = if streams {
                serde_json::Value::Null
            } else {
                r.json().await.unwrap_or_default()
            };
            assert!(
                status != 405 && !(status == 404 && body["error"]["code"] == "not_found"),
                "{method} {path} is documented but not served: {status} {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 27, "{checked} routes documented");
    // That every route the routers declare is documented is a unit test of `http::openapi`.
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
