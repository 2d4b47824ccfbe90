//! `cradle-monitor` against a running Cradle: live JSON lines, the table with an HTTP
//! snapshot, and a clean exit on Ctrl-C (SIGINT).

use cradle_testkit as common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{signal, status, wait_exit, Cradle, Device};

fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Kills the monitor if a test fails before it ends it.
struct Monitor(Child);

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_monitor(args: &[String]) -> (Monitor, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cradle-monitor"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn cradle-monitor");
    let rx = lines_of(child.stdout.take().unwrap());
    (Monitor(child), rx)
}

fn next_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("no output line for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_follow_every_status_change_and_ctrl_c_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let broker = format!("mqtt://127.0.0.1:{}", cradle.mqtt_port);
    let (mut monitor, rx) = spawn_monitor(&[
        "--broker".into(),
        broker,
        "--account".into(),
        "fam".into(),
        "--json".into(),
    ]);
    // Wait until the monitor is subscribed: publish until it shows up.
    let d = Device::connect(cradle.mqtt_port, "pub", None).await;
    d.publish(
        "accounts/fam/clients/a/status",
        status("connected", "k1", 1_000, None),
    )
    .await;
    let first: serde_json::Value =
        serde_json::from_str(&next_line(&rx, "the first status")).expect("a JSON line");
    assert_eq!(first["account_id"], "fam");
    assert_eq!(first["client_id"], "a");
    assert_eq!(first["state"], "connected");
    d.publish(
        "accounts/fam/clients/a/status",
        status("disconnected", "k1", 2_000, Some("clean")),
    )
    .await;
    // Another account is not shown.
    d.publish(
        "accounts/other/clients/z/status",
        status("connected", "k", 1, None),
    )
    .await;
    // When the monitor's SUBSCRIBE and the first PUBLISH cross, the broker may deliver that
    // status twice (retained on subscribe, and live); a copy of the first line is not a change.
    let mut second: serde_json::Value =
        serde_json::from_str(&next_line(&rx, "the disconnect")).unwrap();
    while second["state"] == first["state"] && second["at_millis"] == first["at_millis"] {
        second = serde_json::from_str(&next_line(&rx, "the disconnect")).unwrap();
    }
    assert_eq!(second["state"], "disconnected");
    assert_eq!(second["reason"], "clean");
    assert_eq!(second["source"], "live");
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());

    signal(monitor.0.id(), "INT");
    let exit = wait_exit(&mut monitor.0, Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_starts_from_an_http_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let d = Device::connect(cradle.mqtt_port, "pub", None).await;
    d.publish(
        "accounts/fam/clients/b/status",
        status("connected", "k7", 1_795_000_000_000, None),
    )
    .await;
    cradle.wait_events("fam", 1).await;
    let (mut monitor, rx) = spawn_monitor(&[
        "--broker".into(),
        format!("mqtt://127.0.0.1:{}", cradle.mqtt_port),
        "--account".into(),
        "fam".into(),
        "--http".into(),
        cradle.http.clone(),
    ]);
    let header = next_line(&rx, "the header");
    assert!(header.starts_with("TIME (UTC)"), "{header}");
    let row = next_line(&rx, "the snapshot row");
    assert!(
        row.contains("snapshot") && row.contains("k7") && row.contains("connected"),
        "{row}"
    );
    assert!(row.starts_with("2026-11-18 11:06:40.000"), "{row}");
    // The retained replay is skipped after a snapshot; a live change shows.
    d.publish(
        "accounts/fam/clients/b/status",
        status("connected", "k8", 1_795_000_001_000, None),
    )
    .await;
    let live = next_line(&rx, "a live row");
    assert!(live.contains("live") && live.contains("k8"), "{live}");
    signal(monitor.0.id(), "INT");
    assert!(wait_exit(&mut monitor.0, Duration::from_secs(10)).success());
}

#[test]
fn a_snapshot_without_an_account_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_cradle-monitor"))
        .args(["--http", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--http needs --account"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_events_it_follows_the_log_connections_and_sessions_alike() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let (_monitor, rx) = spawn_monitor(&[
        "--http".into(),
        cradle.http.clone(),
        "--account".into(),
        "fam".into(),
        "--events".into(),
        "--after".into(),
        "0".into(),
    ]);
    let topic = "accounts/fam/clients/baby/status";
    let baby = Device::connect(cradle.mqtt_port, "baby", None).await;
    baby.publish(topic, status("connected", "k1", 1_000, None))
        .await;
    let line = next_line(&rx, "the connection");
    assert!(
        line.contains("connection.connected") && line.contains("client_id=baby"),
        "{line}"
    );
    let http = reqwest::Client::new();
    let start = r#"{"session_id":"s1","client_id":"baby","connection_id":"k1","name":"Nursery","started_at_millis":2000}"#;
    let r = http
        .put(format!("{}/sessions/s1", cradle.http))
        .header("X-Cradle-Account", "fam")
        .header("content-type", "application/json")
        .body(start)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let line = next_line(&rx, "the session's start");
    assert!(
        line.contains("session.started") && line.contains("session_id=s1"),
        "{line}"
    );
    let r = http
        .delete(format!("{}/sessions/s1", cradle.http))
        .header("X-Cradle-Account", "fam")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let line = next_line(&rx, "the session's end");
    assert!(line.contains("session.ended"), "{line}");
}

#[test]
fn with_events_a_refused_token_ends_the_monitor_with_the_reason() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    common::cli(&db, &["accounts", "create", "fam"]);
    let cradle = rt.block_on(Cradle::spawn_ready(dir.path(), &db, &[]));
    let out = Command::new(env!("CARGO_BIN_EXE_cradle-monitor"))
        .args(["--http", &cradle.http, "--account", "fam", "--events"])
        .args(["--token", "nope.nope"])
        .output()
        .expect("run cradle-monitor");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("--events"), "{err}");
}
