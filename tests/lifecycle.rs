//! Start-up, shutdown and restart of the real binary.

use cradle_testkit as common;

use std::process::Command;
use std::time::Duration;

use common::{signal, status, wait_exit, Cradle, Device};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_sqlite_file_keeps_events_and_client_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Cradle::start(dir.path(), None).await;
    let d = Device::connect(first.mqtt_port, "pub", None).await;
    d.publish(
        "accounts/a/clients/c1/status",
        status("connected", "k1", 10, None),
    )
    .await;
    d.publish(
        "accounts/a/clients/c2/status",
        status("connected", "k2", 20, None),
    )
    .await;
    d.publish(
        "accounts/a/clients/c2/status",
        status("disconnected", "k2", 30, Some("clean")),
    )
    .await;
    let before = first.wait_events("a", 3).await;
    drop(d);
    let exit = first.terminate();
    assert!(
        exit.success(),
        "graceful exit, got {exit:?}\n{}",
        first.log()
    );
    assert!(first.log().contains("store closed"), "{}", first.log());

    let second = Cradle::start(dir.path(), Some(first.database_url.clone())).await;
    // Everything recorded is still there, and the embedded broker's end ended c1's
    // connection: the shutdown recorded that, so the state matches reality.
    let kept = second.events("a").await;
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert_eq!(kept[..3], before[..]);
    assert_eq!(kept[3]["type"], "connection.disconnected");
    assert_eq!(kept[3]["data"]["client_id"], "c1");
    assert_eq!(kept[3]["data"]["reason"], "server_shutdown");
    let c1 = second.client("a", "c1").await.unwrap();
    assert_eq!(c1["connected"], false);
    assert_eq!(c1["last_disconnect_reason"], "server_shutdown");
    let c2 = second.client("a", "c2").await.unwrap();
    assert_eq!(c2["connected"], false);
    assert_eq!(c2["last_disconnect_reason"], "clean");

    // The log continues after the restart, and the kept state still decides: the replayed
    // k1 connect is stale (k1 ended), the new k3 connects.
    let d = Device::connect(second.mqtt_port, "pub", None).await;
    d.publish(
        "accounts/a/clients/c1/status",
        status("connected", "k1", 10, None),
    )
    .await;
    d.publish(
        "accounts/a/clients/c2/status",
        status("connected", "k3", 40, None),
    )
    .await;
    let after = second.wait_events("a", 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(second.events("a").await.len(), 5);
    assert_eq!(after[4]["data"]["connection_id"], "k3");
    assert!(after[4]["position"].as_i64() > kept[3]["position"].as_i64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_left_open_by_a_crash_are_ended_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Cradle::start(dir.path(), None).await;
    let d = Device::connect(first.mqtt_port, "pub", None).await;
    d.publish(
        "accounts/a/clients/c1/status",
        status("connected", "k1", 10, None),
    )
    .await;
    first.wait_events("a", 1).await;
    signal(first.child.id(), "KILL");
    let _ = first.child.wait();
    let second = Cradle::start(dir.path(), Some(first.database_url.clone())).await;
    let events = second.events("a").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["data"]["reason"], "server_shutdown");
    assert_eq!(second.client("a", "c1").await.unwrap()["connected"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cradle = Cradle::start(dir.path(), None).await;
    let d = Device::connect(cradle.mqtt_port, "pub", None).await;
    for i in 0..200 {
        d.publish(
            &format!("accounts/s/clients/c{i}/status"),
            status("connected", "k", 1 + i, None),
        )
        .await;
    }
    let seen = cradle.wait_events("s", 200).await.len();
    assert_eq!(seen, 200);
    let exit = cradle.terminate();
    assert!(exit.success(), "{exit:?}");
    let log = cradle.log();
    assert!(log.contains("draining status handler"), "{log}");
    assert!(log.contains("store closed"), "{log}");
    // Everything recorded before the signal is still there, plus the end of each of the
    // 200 connections the shutdown closed.
    let again = Cradle::start(dir.path(), Some(cradle.database_url.clone())).await;
    let events = again.events("s").await;
    assert_eq!(events.len(), 400);
    assert!(events[200..]
        .iter()
        .all(|e| e["data"]["reason"] == "server_shutdown"));
}

#[test]
fn a_port_in_use_fails_fast_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let mut cradle = Cradle::spawn(
        dir.path(),
        &db,
        &[("CRADLE_MQTT_LISTEN", format!("127.0.0.1:{port}"))],
    );
    let exit = wait_exit(&mut cradle.child, Duration::from_secs(20));
    assert!(!exit.success());
    let log = cradle.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("cradle: mqtt.listen: cannot listen on 127.0.0.1:"),
        "{log}"
    );
}

#[test]
fn an_unreadable_or_invalid_config_fails_with_a_one_line_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(["serve", "--config", "/nonexistent/cradle.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/cradle.toml"), "{err}");

    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[http]\nlisten = \"not an address\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(["serve", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("http.listen"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .arg("serve")
        .env("CRADLE_HTTP_LISTEN", "nope")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CRADLE_HTTP_LISTEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_file_and_its_folder_are_created_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/deeper/cradle.db");
    let _cradle = Cradle::start(dir.path(), Some(format!("sqlite://{}", db.display()))).await;
    assert!(db.exists());
}

/// Issue 15: the embedded broker starts empty, so a restart rebuilds its retained state from
/// the store before any device is accepted. A parent station subscribing late after the
/// restart (`mosquitto_sub --retained-only`, as any MQTT client) finds the active session's
/// announcement, every client's last status (the shutdown's `disconnected`/`server_shutdown`
/// for the station that was connected) and the parent station's announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rebuilds_the_brokers_retained_state_from_the_store() {
    if !common::mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut first = Cradle::start(dir.path(), None).await;
    let station = Device::connect(first.mqtt_port, "b", None).await;
    station
        .publish(
            "accounts/fam/clients/b/status",
            status("connected", "kb", 10, None),
        )
        .await;
    station
        .publish("accounts/fam/parent_stations/p", r#"{"name":"Mum"}"#)
        .await;
    first.wait_events("fam", 1).await;
    let started = reqwest::Client::new()
        .put(format!("{}/sessions/s1", first.http))
        .header("X-Cradle-Account", "fam")
        .body(r#"{"session_id":"s1","client_id":"b","connection_id":"kb","name":"Nursery","started_at_millis":20}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(started.status().as_u16(), 201);
    common::wait_for(
        Duration::from_secs(10),
        "parent station recorded",
        || async {
            let list = first
                .get_json("/v1/accounts/fam/parent-stations", 200)
                .await;
            (list["parent_stations"].as_array().map_or(0, Vec::len) == 1).then_some(())
        },
    )
    .await;
    drop(station);
    assert!(first.terminate().success(), "{}", first.log());

    let second = Cradle::start(dir.path(), Some(first.database_url.clone())).await;
    assert!(
        second
            .log()
            .contains("retained state rebuilt from the store"),
        "{}",
        second.log()
    );
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &second.mqtt_port.to_string()])
        .args(["-t", "accounts/fam/#", "--retained-only", "-v", "-W", "2"])
        .output()
        .expect("mosquitto_sub");
    let text = String::from_utf8_lossy(&out.stdout);
    let retained: std::collections::HashMap<&str, serde_json::Value> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(topic, payload)| (topic, serde_json::from_str(payload).unwrap()))
        .collect();
    assert_eq!(retained.len(), 3, "{text}");
    let announced = &retained["accounts/fam/baby_stations/b"];
    assert_eq!(announced["session_id"], "s1", "{text}");
    assert_eq!(announced["connection_id"], "kb");
    let last = &retained["accounts/fam/clients/b/status"];
    assert_eq!(last["type"], "disconnected", "{text}");
    assert_eq!(last["connection_id"], "kb");
    assert_eq!(last["reason"], "server_shutdown");
    assert_eq!(retained["accounts/fam/parent_stations/p"]["name"], "Mum");
}

/// Every status of account `a`'s log, as `(type, connection_id)`, paging through the API.
async fn all_connection_events(cradle: &Cradle, account: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after = 0i64;
    loop {
        let page = cradle
            .get_json(
                &format!("/v1/accounts/{account}/events?after={after}&limit=1000"),
                200,
            )
            .await;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            return out;
        }
        for e in &events {
            out.push((
                e["type"].as_str().unwrap_or_default().to_string(),
                e["data"]["connection_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
        after = page["next_after"].as_i64().expect("next_after");
    }
}

/// One device publishing QoS 1 statuses as fast as its in-flight window lets it, each a new
/// connection id (`k{device}-{n}`), until its connection breaks. Returns the ids whose
/// PUBACK it received.
async fn publish_until_broken(port: u16, device: usize) -> Vec<String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    use std::collections::{HashMap, VecDeque};
    let mut options = MqttOptions::new(format!("dev{device}"), "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_inflight(10);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let topic = format!("accounts/a/clients/dev{device}/status");
    let sent = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
    let publisher = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let start = 1_000_000i64 * (device as i64 + 1);
            for n in 0i64.. {
                let id = format!("k{device}-{n}");
                sent.lock().unwrap().push_back(id.clone());
                let payload = status("connected", &id, start + n, None);
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let mut by_pkid = HashMap::new();
    let mut acked = Vec::new();
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(id) = sent.lock().unwrap().pop_front() {
                    by_pkid.insert(pkid, id);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                acked.extend(by_pkid.remove(&ack.pkid));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    publisher.abort();
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_whose_puback_a_device_got_survives_a_sigkill_exactly_once() {
    const DEVICES: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let mut first = Cradle::start(dir.path(), None).await;
    let port = first.mqtt_port;
    let devices: Vec<_> = (0..DEVICES)
        .map(|d| tokio::spawn(publish_until_broken(port, d)))
        .collect();
    // Mid-stream: every device has a window of statuses in flight when the process dies.
    first.wait_events("a", 500).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(first.child.id(), "KILL");
    let _ = first.child.wait();
    let mut acked = Vec::new();
    for d in devices {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(20), d)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(acked.len() >= 500, "only {} PUBACKs", acked.len());
    eprintln!("{} statuses acknowledged before the kill", acked.len());

    let second = Cradle::start(dir.path(), Some(first.database_url.clone())).await;
    let events = all_connection_events(&second, "a").await;
    let mut connected = std::collections::HashMap::<&str, usize>::new();
    for (kind, id) in &events {
        if kind == "connection.connected" {
            *connected.entry(id.as_str()).or_default() += 1;
        }
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !connected.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged statuses are not in the log, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let twice: Vec<_> = connected.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "recorded more than once: {twice:?}");
}

/// Cradle with faults injected (`CRADLE_TEST_PANIC`, debug builds only), in open mode.
async fn with_faults(dir: &std::path::Path, faults: &str) -> Cradle {
    let url = format!("sqlite://{}", dir.join("data/cradle.db").display());
    Cradle::spawn_ready(dir, &url, &[("CRADLE_TEST_PANIC", faults.to_string())]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_request_a_device_connection_or_a_websocket_ends_that_alone() {
    use common::RawV4;
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let cradle = with_faults(
        dir.path(),
        "http:/v1/accounts/boom/clients,mqtt:boom-device,ws:boom-pwa",
    )
    .await;

    // A request whose handler panics is answered 500; the next request is served.
    let r = reqwest::get(format!("{}/v1/accounts/boom/clients", cradle.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal", "{body}");
    cradle.get_json("/v1/accounts/a/clients", 200).await;

    // A device whose connection task panics after its CONNACK is cut alone.
    let (mut boom, code) = RawV4::connect(cradle.mqtt_port, "boom-device", None, 30).await;
    assert_eq!(code, 0);
    assert!(
        boom.read().await.is_none(),
        "the panicking connection is closed"
    );
    let d = Device::connect(cradle.mqtt_port, "fine", None).await;
    d.publish(
        "accounts/a/clients/fine/status",
        status("connected", "k-fine", 10, None),
    )
    .await;
    cradle.wait_events("a", 1).await;

    // A WebSocket session whose task panics is closed; another one gets its hello.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(cradle.ws_url("account=a&client_id=boom-pwa"))
            .await
            .expect("upgrade");
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the socket ends in time");
    assert!(
        !matches!(
            next,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))
        ),
        "no frame from a panicked session: {next:?}"
    );
    let (mut ok, _) = tokio_tungstenite::connect_async(cradle.ws_url("account=a&client_id=pwa"))
        .await
        .expect("upgrade");
    let hello = common::next_frame(&mut ok).await.expect("hello");
    assert_eq!(hello["type"], "hello");

    // Each panic was counted by task; Cradle is still ready and serving.
    for task in ["http_request", "mqtt_connection", "ws_socket"] {
        let series = format!("cradle_task_panics_total{{task=\"{task}\"}}");
        assert_eq!(cradle.metric(&series).await, 1, "{series}");
    }
    assert_eq!(
        cradle
            .metric("cradle_task_panics_total{task=\"status_writer\"}")
            .await,
        0
    );
    let ready = cradle.get_json("/readyz", 200).await;
    assert_eq!(ready["status"], "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_status_writer_makes_cradle_not_ready_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut cradle = with_faults(dir.path(), "status:boom").await;
    let d = Device::connect(cradle.mqtt_port, "boom", None).await;
    d.publish(
        "accounts/a/clients/boom/status",
        status("connected", "k-boom", 10, None),
    )
    .await;
    // From the panic on, /readyz says why until the process is gone (the drain takes at
    // least a few hundred milliseconds, so a poll every 10 ms sees it).
    let url = format!("{}/readyz", cradle.http);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut not_ready = None;
    while not_ready.is_none() && std::time::Instant::now() < deadline {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status() == 503 {
                not_ready = r.json::<serde_json::Value>().await.ok();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = not_ready.unwrap_or_else(|| panic!("/readyz never failed\n{}", cradle.log()));
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["failed_task"], "status_writer", "{body}");
    let exit = wait_exit(&mut cradle.child, Duration::from_secs(40));
    assert_eq!(exit.code(), Some(1), "exit {exit:?}\n{}", cradle.log());
    let log = cradle.log();
    assert!(log.contains("the status_writer task panicked"), "{log}");
}

#[test]
fn a_misspelled_cradle_variable_refuses_the_start_naming_the_nearest_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .arg("serve")
        .env("CRADLE_HTTP_LISTN", "127.0.0.1:1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("CRADLE_HTTP_LISTN") && err.contains("did you mean CRADLE_HTTP_LISTEN"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn each_subcommand_lists_only_its_own_flags() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cradle"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let accounts = help(&["accounts", "--help"]);
    assert!(accounts.contains("--database-url"), "{accounts}");
    assert!(!accounts.contains("--mqtt-listen"), "{accounts}");
    let serve = help(&["serve", "--help"]);
    assert!(
        serve.contains("MQTT 3.1.1 and 5 over TCP [default: 127.0.0.1:1883]"),
        "{serve}"
    );
    assert!(serve.contains("loopback origins only"), "{serve}");
}
