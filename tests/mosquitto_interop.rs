//! Interoperability with a third-party MQTT client: Debian's `mosquitto_pub` and
//! `mosquitto_sub`. A device that sets a Last Will and drops its TCP connection without
//! DISCONNECT must produce `connection.disconnected` with reason `lost`.

use cradle_testkit as common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{signal, status, Cradle};

fn have_mosquitto_clients() -> bool {
    common::mosquitto_available()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_status_and_will_become_events() {
    if !have_mosquitto_clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let port = cradle.mqtt_port.to_string();
    let topic = "accounts/fam/clients/baby-1/status";

    // The device: a long-lived mosquitto_sub with a retained Will, as a real device sets one.
    let will = status("disconnected", "m1", 2_000, Some("lost"));
    let mut device = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-i", "baby-1", "-k", "5"])
        .args(["-t", "accounts/fam/clients/baby-1/webrtc_inbox"])
        .args([
            "--will-topic",
            topic,
            "--will-payload",
            &will,
            "--will-qos",
            "1",
            "--will-retain",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "baby-1-status",
            "-q",
            "1",
            "-r",
        ])
        .args(["-t", topic, "-m", &status("connected", "m1", 1_000, None)])
        .status()
        .expect("mosquitto_pub")
        .success();
    assert!(ok, "mosquitto_pub failed");
    let events = cradle.wait_events("fam", 1).await;
    assert_eq!(events[0]["type"], "connection.connected");

    // A parent station (another third-party client) sees the retained status.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-C", "1", "-W", "5"])
        .args(["-t", "accounts/fam/clients/+/status"])
        .output()
        .expect("mosquitto_sub -C 1");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("\"connected\""),
        "retained status not seen: {seen}"
    );

    // Give the device's CONNECT time to land, then drop its TCP connection without DISCONNECT.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(device.id(), "KILL");
    let _ = device.wait();
    let events = cradle.wait_events("fam", 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["type"], "connection.disconnected");
    assert_eq!(events[1]["data"]["reason"], "lost");
    assert_eq!(events[1]["data"]["connection_id"], "m1");
    let row = cradle.client("fam", "baby-1").await.unwrap();
    assert_eq!(row["connected"], false);
}
