//! MQTT 3.1.1 and 5 conformance through the device port, proven with third-party clients:
//! Eclipse paho-mqtt 2.x (Python, `tests/conformance/mqtt.py`) and Debian's
//! `mosquitto_pub`/`mosquitto_sub`. Each test names the behaviour of the OASIS specification
//! it holds Cradle to; `topics.md` → "MQTT 3.1.1 and MQTT 5" has the whole table.

use cradle_testkit as common;

use std::process::Command;

use common::Cradle;

/// Runs paho checks against `port` and asserts each printed `ok`.
fn paho(port: u16, checks: &[&str]) {
    paho_over(port, &[], checks);
}

/// [`paho`] with environment for the script (`CONF_TRANSPORT`, `CONF_CA`, and for accounts
/// mode `CONF_ACCOUNT` and `CONF_DEVICES`).
fn paho_over(port: u16, env: &[(&str, String)], checks: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/mqtt.py");
    let out = Command::new("python3")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg(script)
        .args(["127.0.0.1", &port.to_string()])
        .args(checks)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    for check in checks {
        assert!(
            text.lines().any(|l| l == format!("ok {check}")),
            "{check} on port {port}:\n{text}\n{errors}"
        );
    }
    assert!(out.status.success(), "{text}\n{errors}");
}

/// Runs `mosquitto_pub` against 127.0.0.1:`port` with `args` and asserts it succeeded.
fn mosquitto_pub(port: &str, args: &[&str]) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port])
        .args(args)
        .output()
        .expect("mosquitto_pub");
    assert!(out.status.success(), "mosquitto_pub {args:?}: {out:?}");
}

async fn cradle() -> (tempfile::TempDir, Cradle) {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    (dir, cradle)
}

/// Runs paho `checks` against a fresh Cradle in open mode, on the listener `port` picks.
async fn holds(port: fn(&Cradle) -> u16, checks: &[&str]) {
    if !common::paho_available() {
        return;
    }
    let (_dir, cradle) = cradle().await;
    paho(port(&cradle), checks);
}

fn tcp(c: &Cradle) -> u16 {
    c.mqtt_port
}

fn tcp_v5(c: &Cradle) -> u16 {
    c.v5_port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_311_persistent_session_keeps_subscriptions_and_queues_qos1_while_away() {
    // Both edge listeners serve both protocols.
    holds(
        tcp,
        &[
            "persistent_session_v311",
            "inflight_redelivered_v311",
            "inflight_redelivered_v5",
        ],
    )
    .await;
    holds(tcp_v5, &["persistent_session_v311"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_arrive_at_the_lower_of_published_and_granted_qos() {
    holds(tcp, &["retained_qos_is_min_of_publish_and_grant"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publish_properties_subscription_ids_and_topic_aliases_both_ways_hold() {
    holds(
        tcp_v5,
        &[
            "publish_properties_pass_through",
            "subscription_identifiers",
            "client_topic_alias",
            "server_topic_aliases_are_per_topic",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_maximum_packet_size_and_receive_maximum_hold_and_keep_alive_0_is_accepted() {
    holds(
        tcp,
        &[
            "maximum_packet_size_from_server",
            "maximum_packet_size_to_client",
            "maximum_packet_size_qos2_discard_completes",
            "keep_alive_0_is_accepted",
            "receive_maximum_2_loses_nothing",
            "receive_maximum_bounds_unacknowledged_deliveries",
        ],
    )
    .await;
}

/// MQTT 5 refusals carry Reason Strings (CONNACK, SUBACK, PUBACK, DISCONNECT), and none on
/// the acknowledgements of a client that set Request Problem Information to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_refusals_carry_reason_strings_unless_the_client_asked_for_none() {
    holds(
        tcp,
        &[
            "reason_strings_on_refusals",
            "request_problem_information_0_keeps_acks_bare",
        ],
    )
    .await;
}

/// With `mqtt.max_keep_alive_secs` set, an MQTT 5 client asking for none or more is told the
/// maximum (Server Keep Alive) and held to it; MQTT 3.1.1 over it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_holds_clients_to_the_configured_maximum() {
    if !common::paho_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cradle.db").display());
    let env = [("CRADLE_MQTT_MAX_KEEP_ALIVE_SECS", "2".to_string())];
    let cradle = Cradle::spawn_ready(dir.path(), &db, &env).await;
    paho(cradle.mqtt_port, &["server_keep_alive"]);
    let refused = cradle
        .metric("cradle_edge_connects_total{outcome=\"keep_alive_too_long\"}")
        .await;
    assert_eq!(refused, 1, "the refused 3.1.1 CONNECT is counted");
}

/// A shared group splits a stream; a 3.1.1 client gets a 3.1.1 SUBACK; an UNSUBSCRIBE ends
/// only the subscription it names (another group's, or the plain filter's, go on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_split_a_stream_and_a_311_client_gets_a_311_suback() {
    holds(
        tcp,
        &[
            "shared_subscription_v5",
            "shared_subscription_suback_v311",
            "unsubscribe_ends_only_that_subscription",
        ],
    )
    .await;
}

/// `mosquitto_sub -c` (clean session off) is away while `mosquitto_pub` publishes at QoS 1;
/// when it comes back it gets what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_with_a_persistent_session_gets_what_was_published_while_away() {
    if !common::mosquitto_available() {
        return;
    }
    let (_dir, cradle) = cradle().await;
    let port = cradle.mqtt_port.to_string();
    let topic = "accounts/conf/clients/m-persist/data";
    let sub = |extra: &[&str]| {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", "m-persist", "-c"])
            .args(["-q", "1", "-t", topic, "-W", "5"])
            .args(extra)
            .output()
            .expect("mosquitto_sub")
    };
    // Subscribe once and leave (-E: exit after the SUBACK).
    let first = sub(&["-E"]);
    assert!(first.status.success(), "{first:?}");
    for m in ["one", "two"] {
        mosquitto_pub(&port, &["-q", "1", "-t", topic, "-m", m]);
    }
    let back = sub(&["-C", "2"]);
    let got = String::from_utf8_lossy(&back.stdout);
    assert_eq!(got.lines().collect::<Vec<_>>(), ["one", "two"], "{back:?}");
}

/// A retained QoS 0 message reaches a QoS 1 `mosquitto_sub` at QoS 0 (`-v` prints nothing
/// about QoS, so the debug output's PUBLISH line is read: `q0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_gets_a_retained_qos0_message_at_qos0() {
    if !common::mosquitto_available() {
        return;
    }
    let (_dir, cradle) = cradle().await;
    let port = cradle.mqtt_port.to_string();
    let topic = "accounts/conf/clients/m-retained/data";
    mosquitto_pub(&port, &["-q", "0", "-r", "-t", topic, "-m", "r0"]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic])
        .args(["-C", "1", "-W", "5", "-d"])
        .output()
        .expect("mosquitto_sub");
    let text = String::from_utf8_lossy(&out.stdout);
    let publish = text
        .lines()
        .find(|l| l.contains("received PUBLISH"))
        .unwrap_or_else(|| panic!("no PUBLISH: {text}"));
    assert!(
        publish.contains("q0") && publish.contains("r1"),
        "{publish}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_session_expiry_keeps_a_session_within_it_and_message_expiry_drops_stale_ones() {
    holds(tcp_v5, &["session_expiry_v5", "message_expiry"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_will_keeps_its_properties() {
    holds(tcp_v5, &["will_keeps_its_v5_properties"]).await;
}

/// A Will with a Will Delay Interval waits for it, and a reconnect within it cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_will_waits_for_its_delay_and_a_reconnect_within_it_cancels_it() {
    holds(tcp_v5, &["will_delay_interval"]).await;
}

/// Retain As Published keeps the flag on live deliveries, Retain Handling 2 sends no retained
/// message, 1 sends them on a new subscription only, 0 on a re-subscription too (which
/// replaces the subscription's QoS); only a retained empty PUBLISH deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_retain_as_published_and_retain_handling_hold() {
    holds(
        tcp_v5,
        &[
            "retain_as_published_and_handling",
            "only_a_retained_empty_publish_deletes",
            "resubscription_replaces_the_subscription_v5",
        ],
    )
    .await;
    holds(tcp, &["resubscription_resends_retained_v311"]).await;
}

/// The same semantics on every device listener: MQTT over WebSocket, TLS and WebSocket over
/// TLS, with paho's own transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_keeps_sessions_properties_and_retained_qos() {
    if !common::paho_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cradle, tls_port, wss_port, ca) = common::cradle_with_tls(dir.path()).await;
    let checks = [
        "persistent_session_v311",
        "session_expiry_v5",
        "retained_qos_is_min_of_publish_and_grant",
        "publish_properties_pass_through",
        "receive_maximum_bounds_unacknowledged_deliveries",
    ];
    let ws = ("CONF_TRANSPORT", "websockets".to_string());
    let ca = ("CONF_CA", ca.display().to_string());
    paho_over(cradle.ws_port, std::slice::from_ref(&ws), &checks);
    paho_over(tls_port, std::slice::from_ref(&ca), &checks);
    paho_over(wss_port, &[ws, ca], &checks);
}

/// Through the edge onto an external broker (Debian's Mosquitto, as replicas run): every
/// check Mosquitto itself passes holds through Cradle too. Left out, as Mosquitto's own
/// choices (topics.md, "Conformance"): server topic aliases (Mosquitto sends none), its
/// Receive Maximum accounting, and its answer to a QoS 2 delivery over the client's
/// Maximum Packet Size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_edge_an_external_broker_keeps_its_mqtt_semantics() {
    if !common::paho_available() || !common::mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Mosquitto::start(&dir.path().join("broker"))
        .await
        .expect("mosquitto");
    let db = format!("sqlite://{}", dir.path().join("cradle.db").display());
    let env = [
        ("CRADLE_BROKER_MODE", "external".to_string()),
        ("CRADLE_BROKER_URL", broker.url()),
    ];
    let cradle = Cradle::spawn_ready(dir.path(), &db, &env).await;
    paho(
        cradle.mqtt_port,
        &[
            "persistent_session_v311",
            "inflight_redelivered_v311",
            "inflight_redelivered_v5",
            "session_expiry_v5",
            "retained_qos_is_min_of_publish_and_grant",
            "publish_properties_pass_through",
            "will_keeps_its_v5_properties",
            "will_delay_interval",
            "no_local",
            "retain_as_published_and_handling",
            "resubscription_replaces_the_subscription_v5",
            "resubscription_resends_retained_v311",
            "only_a_retained_empty_publish_deletes",
            "message_expiry",
            "subscription_identifiers",
            "client_topic_alias",
            "reason_strings_on_refusals",
            "request_problem_information_0_keeps_acks_bare",
            "keep_alive_0_is_accepted",
            "receive_maximum_2_loses_nothing",
            "maximum_packet_size_to_client",
            "maximum_packet_size_from_server",
            "shared_subscription_v5",
            "shared_subscription_suback_v311",
            "unsubscribe_ends_only_that_subscription",
        ],
    );
}

/// With accounts: a device's persistent session queues what another device of its account
/// published while it was away, and a shared subscription with a group name another account
/// also uses gets its own account's messages only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_accounts_sessions_persist_and_shared_groups_stay_inside_their_account() {
    if !common::mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("acc.db").display());
    common::cli(&db, &["accounts", "create", "a"]);
    common::cli(&db, &["accounts", "create", "b"]);
    let issue = |account: &str, client: &str| {
        let args = [
            "credentials",
            "issue",
            "--account",
            account,
            "--client",
            client,
        ];
        common::cli(&db, &args)
    };
    let (a1, a2, b1, b2) = (
        issue("a", "d1"),
        issue("a", "d2"),
        issue("b", "d1"),
        issue("b", "d2"),
    );
    let cradle = Cradle::spawn_ready(dir.path(), &db, &[]).await;
    let port = cradle.mqtt_port.to_string();
    let sub = |account: &str, client: &str, secret: &str, filter: &str, extra: &[&str]| {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-V", "mqttv5"])
            .args(["-u", account, "-P", secret, "-i", client, "-t", filter])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub")
    };
    let publish = |m: &str| {
        let topic = "accounts/a/parent_stations/d2";
        mosquitto_pub(
            &port,
            &[
                "-q", "1", "-u", "a", "-P", &a2, "-i", "d2", "-t", topic, "-m", m,
            ],
        );
    };

    // a/d1 subscribes with a session that outlives the connection, and leaves.
    let keep = ["-c", "-x", "300", "-E"];
    let first = sub("a", "d1", &a1, "accounts/a/parent_stations/+", &keep);
    assert!(first.wait_with_output().unwrap().status.success());
    publish("while-away");
    let back = sub(
        "a",
        "d1",
        &a1,
        "accounts/a/parent_stations/+",
        &["-c", "-x", "300", "-C", "1", "-W", "5"],
    );
    let got = back.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "while-away");

    // The same group name in two accounts: b's member gets nothing of a's messages.
    let b_share = sub(
        "b",
        "d1",
        &b1,
        "$share/g/accounts/b/parent_stations/+",
        &["-C", "1", "-W", "5"],
    );
    let a_share = sub(
        "a",
        "d1",
        &a1,
        "$share/g/accounts/a/parent_stations/+",
        &["-C", "1", "-W", "5"],
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    publish("shared");
    let a_got = a_share.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&a_got.stdout).trim(), "shared");
    // b's member is subscribed (it gets b's own message), and its first message is b's.
    let topic = "accounts/b/parent_stations/d2";
    mosquitto_pub(
        &port,
        &[
            "-q", "1", "-u", "b", "-P", &b2, "-i", "d2", "-t", topic, "-m", "b-own",
        ],
    );
    let b_got = b_share.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&b_got.stdout).trim(), "b-own");

    // MQTT 5 with paho: session, redelivery and properties inside the account; refusals.
    if common::paho_available() {
        let devices = ("CONF_DEVICES", format!("d1:{a1},d2:{a2}"));
        let account = ("CONF_ACCOUNT", "a".to_string());
        let checks = ["accounts_v5_session_properties_and_refusals"];
        paho_over(cradle.mqtt_port, &[account, devices], &checks);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_no_local_skips_a_clients_own_messages_only() {
    holds(tcp_v5, &["no_local"]).await;
}
