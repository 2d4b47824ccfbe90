//! Presence the broker vouches for: the edge records every device connection from the moment
//! it accepts it, whether or not the device reports `connected`, and meets the device's own
//! report on the same connection (one `connection.connected`, one end).
//!
//! - the README's worked example (`mosquitto_pub -l`, which reconnects by itself but never
//!   publishes its `connected` line again) is shown connected again after Cradle restarts, in
//!   the read model, the events and the retained status a late subscriber gets;
//! - a device that never reports is recorded from its CONNACK to its end;
//! - a station on paho's automatic reconnect, which reports `connected` only once, is shown
//!   connected again after Cradle restarts.

use cradle_testkit as common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, wait_for, Cradle};

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A configuration file in `dir` that turns the edge's observed starts on.
fn observing(dir: &std::path::Path) -> String {
    let path = dir.join("observing.toml");
    std::fs::write(&path, "[mqtt]\nobserve_starts = true\n").unwrap();
    path.display().to_string()
}

const T: &str = "accounts/acct-1/clients/baby-1/status";

/// The README's baby station: `mosquitto_pub -l` with a status Will and one `connected`
/// line, connection id `K`, on port `port`; its standard input stays open.
fn readme_baby_station(port: u16, k: &str, now: i64) -> std::process::Child {
    let will = format!(
        r#"{{"type":"disconnected","connection_id":"{k}","reason":"lost","at_millis":{now}}}"#
    );
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", "baby-1"])
        .args(["-q", "1", "-r", "-l", "-t", T])
        .args(["--will-topic", T, "--will-qos", "1", "--will-retain"])
        .args(["--will-payload", &will])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_pub");
    let line = format!(r#"{{"type":"connected","connection_id":"{k}","at_millis":{now}}}"#);
    let stdin = child.stdin.as_mut().expect("stdin");
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
    child
}

/// Waits until `acct-1`'s log holds a `connection.reported`.
async fn report_recorded(cradle: &Cradle) {
    wait_for(Duration::from_secs(10), "the report recorded", || async {
        let events = cradle.events("acct-1").await;
        events
            .iter()
            .any(|e| e["type"] == "connection.reported")
            .then_some(())
    })
    .await;
}

/// Stops `cradle` (SIGTERM) and starts it again in `dir` on `db` with `env` (the same MQTT
/// port), then waits until `client` of `acct-1` is shown connected since the restart; the
/// new Cradle, when it was restarted (Unix milliseconds) and the client's row.
async fn restart_until_connected(
    mut cradle: Cradle,
    (dir, db, env): (&std::path::Path, &str, &[(&str, String)]),
    client: &str,
) -> (Cradle, i64, serde_json::Value) {
    assert!(cradle.terminate().success());
    let restarted_at = now_millis();
    let cradle = Cradle::spawn_ready(dir, db, env).await;
    let again = wait_for(
        Duration::from_secs(20),
        &format!("{client} connected again"),
        || async {
            cradle.client("acct-1", client).await.filter(|c| {
                c["connected"] == true && c["since_millis"].as_i64() > Some(restarted_at)
            })
        },
    )
    .await;
    (cradle, restarted_at, again)
}

/// The retained status a late subscriber gets, as `mosquitto_sub` prints it.
fn retained_status(port: u16) -> serde_json::Value {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", T])
        .args(["-C", "1", "-W", "5", "--retained-only"])
        .output()
        .expect("mosquitto_sub");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_baby_station_is_shown_connected_again_after_a_restart() {
    if !common::mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("presence.db").display());
    let port = free_port();
    let env = [
        ("CRADLE_MQTT_LISTEN", format!("127.0.0.1:{port}")),
        ("CRADLE_CONFIG", observing(dir.path())),
    ];
    let cradle = Cradle::spawn_ready(dir.path(), &db, &env).await;
    let now = now_millis();
    let k = format!("baby-1-{now}");
    let mut station = readme_baby_station(port, &k, now);

    let first = wait_for(Duration::from_secs(10), "baby-1 connected", || async {
        cradle
            .client("acct-1", "baby-1")
            .await
            .filter(|c| c["connected"] == true)
    })
    .await;
    assert_eq!(first["connection_id"], k.as_str(), "the device's own id");
    // Its `connected` line is committed (and acknowledged), so it is not sent again.
    report_recorded(&cradle).await;

    // mosquitto_pub reconnects by itself and says nothing more: the edge vouches for it.
    let (cradle, _, again) =
        restart_until_connected(cradle, (dir.path(), &db, &env), "baby-1").await;
    assert_ne!(
        again["connection_id"],
        k.as_str(),
        "a new connection, not the old one: {:#?}",
        cradle.events("acct-1").await
    );

    let events = cradle.events("acct-1").await;
    let summary: Vec<(String, bool, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["data"]["observed"] == true,
                e["data"]["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // The first connection's observed start and the device's report may arrive in either
    // order (two MQTT connections to the broker); the reconnect has no report: observed.
    let first_observed = summary[0].1;
    let expected = [
        ("connection.connected", first_observed, ""),
        ("connection.reported", false, ""),
        ("connection.disconnected", false, "server_shutdown"),
        ("connection.connected", true, ""),
    ];
    assert_eq!(
        summary,
        expected
            .iter()
            .map(|(t, o, r)| (t.to_string(), *o, r.to_string()))
            .collect::<Vec<_>>(),
        "one connected, one end per connection: {events:#?}"
    );
    // Recorded within a second of the edge accepting it.
    let last = events.last().unwrap();
    let lag = last["recorded_at_millis"].as_i64().unwrap() - last["at_millis"].as_i64().unwrap();
    assert!(lag < 1000, "recorded {lag} ms after the CONNACK");
    // A late subscriber is told the station is connected.
    let retained = retained_status(port);
    assert_eq!(retained["type"], "connected", "{retained}");
    assert_eq!(retained["observed"], true, "{retained}");

    let _ = station.kill();
    let _ = station.wait();
    // Its end is recorded too: the Will, stamped with the edge's connection id.
    wait_for(Duration::from_secs(10), "baby-1 disconnected", || async {
        cradle
            .client("acct-1", "baby-1")
            .await
            .filter(|c| c["connected"] == false && c["last_disconnect_reason"] == "lost")
    })
    .await;
}

/// A device that never reports its status (no Will, no `connected`) is recorded from its
/// CONNACK to its end, under an id of the edge's, and the WebSocket bridge's presence shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reports_is_recorded_from_connack_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("silent.db").display());
    common::cli(&db, &["accounts", "create", "fam"]);
    let secret = common::cli(
        &db,
        &[
            "credentials",
            "issue",
            "--account",
            "fam",
            "--client",
            "quiet",
        ],
    );
    let env = [
        ("CRADLE_CONFIG", observing(dir.path())),
        (
            "CRADLE_ADMIN_TOKEN",
            "an-admin-token-of-some-length".to_string(),
        ),
    ];
    let token = common::cli(
        &db,
        &["credentials", "issue", "--account", "fam", "--token"],
    );
    let cradle = Cradle::spawn_ready(dir.path(), &db, &env).await;
    // The PWA of the family follows presence over the WebSocket bridge.
    let (mut pwa, _) =
        tokio_tungstenite::connect_async(cradle.ws_url(&format!("client_id=pwa&token={token}")))
            .await
            .expect("upgrade");
    assert_eq!(common::next_frame(&mut pwa).await.unwrap()["type"], "hello");
    let (device, _) =
        common::RawV4::connect(cradle.mqtt_port, "quiet", Some(("fam", &secret)), 30).await;
    // The bridge tells the PWA the station is there, though it said nothing.
    let presence = loop {
        let frame = common::next_frame(&mut pwa)
            .await
            .expect("a presence frame");
        if frame["type"] == "presence" && frame["client_id"] == "quiet" {
            break frame;
        }
    };
    assert_eq!(presence["connected"], true, "{presence}");
    let shown = wait_for(Duration::from_secs(10), "quiet connected", || async {
        cradle
            .client("fam", "quiet")
            .await
            .filter(|c| c["connected"] == true)
    })
    .await;
    assert!(
        shown["connection_id"].as_str().unwrap().starts_with("m-"),
        "{shown}"
    );
    drop(device);
    // The station's own events (the PWA's connection is in the account's log too).
    let quiet = |events: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        events
            .into_iter()
            .filter(|e| e["data"]["client_id"] == "quiet")
            .collect()
    };
    let events = wait_for(Duration::from_secs(10), "its end", || async {
        let events = quiet(cradle.events("fam").await);
        (events.len() >= 2).then_some(events)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(quiet(cradle.events("fam").await).len(), 2, "{events:#?}");
    assert_eq!(events[0]["type"], "connection.connected");
    assert_eq!(events[0]["data"]["observed"], true);
    assert_eq!(events[1]["type"], "connection.disconnected");
    assert_eq!(events[1]["data"]["reason"], "lost");
    assert_eq!(
        events[0]["data"]["edge_connection_id"],
        events[1]["data"]["edge_connection_id"]
    );
}

/// A station that dies silently (power cut: no DISCONNECT, no TCP close, nothing more on the
/// socket) is shown offline once 1.5 × its keep-alive has passed without a packet; one that
/// asked for no keep-alive is held to `mqtt.max_keep_alive_secs` (MQTT 5 tells it so in the
/// CONNACK). The bound is topics.md's; the upper limit here leaves room for a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_that_dies_silently_is_shown_offline_after_one_and_a_half_keep_alives() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("silent.db").display());
    common::cli(&db, &["accounts", "create", "fam"]);
    let issue = |client: &str| {
        common::cli(
            &db,
            &[
                "credentials",
                "issue",
                "--account",
                "fam",
                "--client",
                client,
            ],
        )
    };
    let (s1, s2) = (issue("ka2"), issue("none"));
    let config = dir.path().join("ka.toml");
    std::fs::write(&config, "[mqtt]\nmax_keep_alive_secs = 2\n").unwrap();
    let env = [
        ("CRADLE_CONFIG", config.display().to_string()),
        (
            "CRADLE_ADMIN_TOKEN",
            "an-admin-token-of-some-length".to_string(),
        ),
    ];
    let cradle = Cradle::spawn_ready(dir.path(), &db, &env).await;
    // 3.1.1 with keep-alive 2 s, and MQTT 5 asking for none (held to 2 s).
    let (_v4, code) = common::RawV4::connect(cradle.mqtt_port, "ka2", Some(("fam", &s1)), 2).await;
    assert_eq!(code, 0);
    let (_v5, _) = common::RawV5::connect(cradle.v5_port, "none", Some(("fam", &s2)), 0).await;
    let since = Instant::now();
    for client in ["ka2", "none"] {
        wait_for(Duration::from_secs(5), "shown connected", || async {
            cradle
                .client("fam", client)
                .await
                .filter(|c| c["connected"] == true)
        })
        .await;
    }
    // Both stay silent, their sockets open: the power went.
    for client in ["ka2", "none"] {
        let row = wait_for(Duration::from_secs(10), "shown offline", || async {
            cradle
                .client("fam", client)
                .await
                .filter(|c| c["connected"] == false)
        })
        .await;
        let after = since.elapsed();
        assert_eq!(row["last_disconnect_reason"], "keepalive_timeout", "{row}");
        assert!(
            after >= Duration::from_millis(2_900),
            "{client} shown offline before 1.5 × 2 s: {after:?}"
        );
        assert!(
            after < Duration::from_secs(8),
            "{client} shown offline only after {after:?}"
        );
    }
}

/// A baby station on Eclipse Paho (Python, paho-mqtt 2.x) as much firmware is written: a
/// status Will, paho's automatic reconnect (1 to 2 s apart), and its `connected` status
/// published once, at its first connection, never again after a reconnect. Prints
/// `connected`, `acknowledged` (the broker's PUBACK of its status) and `disconnected`.
const PAHO_STATION: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
port, client, topic, k, now = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client, protocol=mqtt.MQTTv311)
c.will_set(topic, json.dumps({"type": "disconnected", "connection_id": k, "reason": "lost", "at_millis": now}), qos=1, retain=True)
c.reconnect_delay_set(min_delay=1, max_delay=2)
first = [True]
def on_connect(c, userdata, flags, rc, props):
    print("connected", rc.value, flush=True)
    if first[0]:
        first[0] = False
        c.publish(topic, json.dumps({"type": "connected", "connection_id": k, "at_millis": now}), qos=1, retain=True)
c.on_connect = on_connect
c.on_publish = lambda c, userdata, mid, rc, props: print("acknowledged", flush=True)
c.on_disconnect = lambda c, userdata, flags, rc, props: print("disconnected", rc.value, flush=True)
c.connect("127.0.0.1", port, keepalive=30)
c.loop_forever(retry_first_connection=True)
"#;

/// A child process killed (and reaped) when dropped, also when the test fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts [`PAHO_STATION`] (written to `dir`) as client `baby-2` of `acct-1` on `port`,
/// connection id `k`; its stdout lines arrive on the returned channel.
fn paho_station(
    dir: &std::path::Path,
    port: u16,
    k: &str,
    now: i64,
) -> (Killed, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let script = dir.join("paho_station.py");
    std::fs::write(&script, PAHO_STATION).unwrap();
    let mut child = Command::new("python3")
        .arg(&script)
        .args([&port.to_string(), "baby-2", T2, k, &now.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt 2.x (scripts/test installs it)");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Killed(child), rx)
}

/// The next line of the paho station, waiting up to `within`.
fn next_paho_line(rx: &std::sync::mpsc::Receiver<String>, within: Duration) -> String {
    rx.recv_timeout(within)
        .unwrap_or_else(|e| panic!("no line from the paho station: {e}"))
}

const T2: &str = "accounts/acct-1/clients/baby-2/status";

/// A station on paho's automatic reconnect, which publishes its `connected` status only at
/// its first connection, is shown connected again within seconds of a restart of Cradle (on
/// the same MQTT port): paho reconnects by itself and says nothing more, and the edge
/// vouches for the new connection (an observed `connection.connected`, no second
/// `connection.reported`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_automatic_reconnect_is_shown_connected_after_a_restart() {
    if !common::paho_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("paho.db").display());
    let port = free_port();
    let env = [
        ("CRADLE_MQTT_LISTEN", format!("127.0.0.1:{port}")),
        ("CRADLE_CONFIG", observing(dir.path())),
    ];
    let cradle = Cradle::spawn_ready(dir.path(), &db, &env).await;
    let now = now_millis();
    let k = format!("baby-2-{now}");
    let (mut station, lines) = paho_station(dir.path(), port, &k, now);
    assert_eq!(
        next_paho_line(&lines, Duration::from_secs(15)),
        "connected 0"
    );
    // Its `connected` status is acknowledged (so paho will not send it again) and committed.
    assert_eq!(
        next_paho_line(&lines, Duration::from_secs(10)),
        "acknowledged"
    );
    report_recorded(&cradle).await;
    let first = cradle
        .client("acct-1", "baby-2")
        .await
        .expect("baby-2's row");
    assert_eq!(first["connected"], true, "{first}");
    assert_eq!(first["connection_id"], k.as_str(), "the device's own id");

    let (cradle, restarted_at, again) =
        restart_until_connected(cradle, (dir.path(), &db, &env), "baby-2").await;
    // paho saw its connection end and made a new one by itself.
    let mut said = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
        said.push(line);
    }
    assert!(
        said.first().is_some_and(|l| l.starts_with("disconnected"))
            && said.last().map(String::as_str) == Some("connected 0")
            && !said.iter().any(|l| l == "acknowledged"),
        "paho's reconnect, without a second status: {said:?}"
    );
    assert_ne!(
        again["connection_id"],
        k.as_str(),
        "a new connection: {again}"
    );
    // Nothing more arrives: no second report.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = cradle.events("acct-1").await;
    // The first connection's start is observed or reported first, whichever the status
    // pipeline got first (the edge's observation and the device's report travel on two
    // broker connections); the second's is the edge's alone.
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["data"]["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected = [
        ("connection.connected", ""),
        ("connection.reported", ""),
        ("connection.disconnected", "server_shutdown"),
        ("connection.connected", ""),
    ];
    assert_eq!(
        summary,
        expected
            .iter()
            .map(|(t, r)| (t.to_string(), r.to_string()))
            .collect::<Vec<_>>(),
        "after the restart, an observed start and no second report: {events:#?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["data"]["observed"], true, "{last}");
    assert!(
        last["recorded_at_millis"].as_i64() > Some(restarted_at),
        "{last}"
    );
    assert_eq!(
        last["data"]["connection_id"], again["connection_id"],
        "{last}"
    );

    // Its end is recorded too: the Will, stamped with the edge's connection id.
    let _ = station.0.kill();
    let _ = station.0.wait();
    let ended = wait_for(Duration::from_secs(10), "baby-2 disconnected", || async {
        cradle
            .client("acct-1", "baby-2")
            .await
            .filter(|c| c["connected"] == false)
    })
    .await;
    assert_eq!(ended["last_disconnect_reason"], "lost", "{ended}");
}
