//! Beyond one machine: Cradle replicas on an external broker (Debian's Mosquitto, with a
//! password file and persistence) and one PostgreSQL (`pg_virtualenv`).
//!
//! - two replicas in one share group split a stream of status messages from many clients,
//!   and the log holds exactly one event per message, the same on both replicas;
//! - the same messages delivered to two replicas (two share groups) append nothing twice;
//! - the edge's observed start and the device's report, processed by different replicas in
//!   either order, are one connection (one `connected`, one `reported`, one end);
//! - a WebSocket client on replica A gets signalling from a device on replica B's edge whose
//!   statuses B processes, and a resume at the wrong replica is 410;
//! - the broker restarted mid-stream loses no acknowledged message;
//! - an unreachable broker or refused credentials fail the start with a clear message.

use cradle_testkit as common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio_tungstenite::tungstenite::Message;

use common::{
    fresh_postgres_database, postgres_server_url, status, subscriber, wait_for, Cradle, Device,
    Mosquitto, Ws, BROKER_PASSWORD, BROKER_USER,
};

/// A replica named `name` on `broker` and `database_url`, in share group `group`.
async fn replica(
    dir: &Path,
    name: &str,
    database_url: &str,
    broker: &Mosquitto,
    group: &str,
) -> Cradle {
    replica_with(dir, name, database_url, broker, group, &[]).await
}

/// [`replica`] with more settings.
async fn replica_with(
    dir: &Path,
    name: &str,
    database_url: &str,
    broker: &Mosquitto,
    group: &str,
    extra: &[(&str, String)],
) -> Cradle {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = vec![
        ("CRADLE_BROKER_MODE", "external".to_string()),
        ("CRADLE_BROKER_URL", broker.url()),
        ("CRADLE_BROKER_SHARE_GROUP", group.to_string()),
        ("CRADLE_BUS_CLIENT_ID", format!("cradle-{name}")),
    ];
    env.extend(extra.iter().cloned());
    Cradle::spawn_ready(&dir, database_url, &env).await
}

/// PostgreSQL and Mosquitto, or `None` to skip (a failure under scripts/test).
async fn infrastructure(dir: &Path) -> Option<(String, Mosquitto)> {
    let server = postgres_server_url()?;
    let broker = Mosquitto::start(&dir.join("broker")).await?;
    Some((fresh_postgres_database(&server).await, broker))
}

/// An MQTT client of the broker itself (as a device connected to the cluster directly).
async fn broker_client(broker: &Mosquitto, id: &str) -> Device {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
    options.set_credentials(BROKER_USER, BROKER_PASSWORD);
    Device::connect_with(options).await
}

/// Every event of `account` on `replica`, waiting until there are `n` and then a little
/// longer to see that no more arrive.
async fn exactly_events(replica: &Cradle, account: &str, n: usize) -> Vec<serde_json::Value> {
    let events = wait_for(Duration::from_secs(30), "every event", || async {
        let e = replica.events(account).await;
        (e.len() >= n).then_some(e)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = replica.events(account).await;
    assert_eq!(again.len(), events.len(), "events kept arriving");
    assert_eq!(events.len(), n, "one event per message");
    events
}

/// `(stream, type, connection id)` of every event; a duplicate would repeat one.
fn identities(events: &[serde_json::Value]) -> HashSet<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["stream"], e["type"], e["data"]["connection_id"]
            )
        })
        .collect()
}

async fn clients_of(replica: &Cradle, account: &str) -> BTreeMap<String, serde_json::Value> {
    let v = replica
        .get_json(&format!("/v1/accounts/{account}/clients"), 200)
        .await;
    v["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| (c["client_id"].as_str().unwrap().to_string(), c.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_status_stream_and_record_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let a = replica(dir.path(), "a", &db, &broker, "cradle").await;
    let b = replica(dir.path(), "b", &db, &broker, "cradle").await;

    // 40 devices, half through each replica's edge (relayed to the external broker). Each
    // connects (k1), disconnects cleanly, and connects again (k2): a round of 40 messages
    // each time, three events per device. A device's next report follows the previous one
    // by a round (in the field: by a connection's lifetime).
    const DEVICES: usize = 40;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let edge = if i % 2 == 0 { &a } else { &b };
        devices.push(Device::connect(edge.mqtt_port, &format!("dev-{i}"), None).await);
    }
    let t = 1_700_000_000_000i64;
    let rounds = [
        status("connected", "k1", t, None),
        status("disconnected", "k1", t + 1, Some("clean")),
        status("connected", "k2", t + 2, None),
    ];
    for (round, payload) in rounds.iter().enumerate() {
        for (i, d) in devices.iter().enumerate() {
            d.publish(
                &format!("accounts/fleet/clients/dev-{i}/status"),
                payload.clone(),
            )
            .await;
        }
        a.wait_events("fleet", DEVICES * (round + 1)).await;
    }
    let events = exactly_events(&a, "fleet", DEVICES * 3).await;
    assert_eq!(identities(&events).len(), DEVICES * 3, "no event twice");
    // Any replica answers from the shared store: the same log and read models on both.
    assert_eq!(b.events("fleet").await, events);
    let (on_a, on_b) = (clients_of(&a, "fleet").await, clients_of(&b, "fleet").await);
    assert_eq!(on_a, on_b);
    assert_eq!(on_a.len(), DEVICES);
    for c in on_a.values() {
        assert_eq!(c["connected"], true, "{c}");
        assert_eq!(c["connection_id"], "k2", "{c}");
    }
    // The shared subscription split the work: both replicas processed status messages,
    // and together exactly the messages published.
    let series = "cradle_mqtt_messages_received_total{family=\"status\"}";
    let (ra, rb) = (a.metric(series).await, b.metric(series).await);
    assert!(ra > 0 && rb > 0, "both replicas took a share: {ra} + {rb}");
    assert_eq!(ra + rb, (DEVICES * 3) as u64, "each message processed once");

    // A burst: each device reports four changes back to back, so one device's reports are
    // dealt to both replicas and may be committed in either order. Nothing is recorded
    // twice, and every device ends in its true state, the same on both replicas.
    for (i, d) in devices.iter().enumerate() {
        let topic = format!("accounts/fleet/clients/dev-{i}/status");
        d.publish(&topic, status("disconnected", "k2", t + 3, Some("clean")))
            .await;
        d.publish(&topic, status("connected", "k3", t + 4, None))
            .await;
        d.publish(&topic, status("disconnected", "k3", t + 5, Some("lost")))
            .await;
        d.publish(&topic, status("connected", "k4", t + 6, None))
            .await;
    }
    let series_total = (DEVICES * 7) as u64;
    wait_for(Duration::from_secs(30), "the burst processed", || async {
        let n = a.metric(series).await + b.metric(series).await;
        (n == series_total).then_some(())
    })
    .await;
    let on_a = wait_for(Duration::from_secs(30), "every device on k4", || async {
        let c = clients_of(&a, "fleet").await;
        c.values()
            .all(|c| c["connection_id"] == "k4" && c["connected"] == true)
            .then_some(c)
    })
    .await;
    assert_eq!(on_a, clients_of(&b, "fleet").await);
    let events = a.events("fleet").await;
    assert_eq!(identities(&events).len(), events.len(), "no event twice");
    assert!(events.len() <= DEVICES * 7, "at most one event per report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_messages_delivered_to_two_replicas_append_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    // Two share groups: the broker delivers every message to both replicas, which race to
    // record it (as a redelivery or a group misconfiguration would make them).
    let a = replica(dir.path(), "a", &db, &broker, "group-a").await;
    let b = replica(dir.path(), "b", &db, &broker, "group-b").await;
    let device = broker_client(&broker, "publisher").await;
    const CLIENTS: usize = 60;
    let t = 1_700_000_000_000i64;
    for i in 0..CLIENTS {
        let topic = format!("accounts/twice/clients/c{i}/status");
        device
            .client
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                status("connected", "k1", t, None),
            )
            .await
            .unwrap();
        device
            .client
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                status("disconnected", "k1", t + 5, Some("lost")),
            )
            .await
            .unwrap();
    }
    let series = "cradle_mqtt_messages_received_total{family=\"status\"}";
    for r in [&a, &b] {
        wait_for(Duration::from_secs(30), "every message at both", || async {
            (r.metric(series).await == (CLIENTS * 2) as u64).then_some(())
        })
        .await;
    }
    let events = exactly_events(&a, "twice", CLIENTS * 2).await;
    assert_eq!(identities(&events).len(), CLIENTS * 2);
    for e in &events {
        let v = e["stream_version"].as_i64().unwrap();
        let expected = if e["type"] == "connection.connected" {
            1
        } else {
            2
        };
        assert_eq!(v, expected, "{e}");
    }
    assert_eq!(clients_of(&a, "twice").await, clients_of(&b, "twice").await);
}

async fn next_of(ws: &mut Ws, kind: &str) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame in time"))
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

/// The settings of replicas whose WebSocket sessions stay resumable `window_secs` (a config
/// file in `dir`).
fn ws_window(dir: &Path, window_secs: u64) -> [(&'static str, String); 1] {
    let config = dir.join("ws.toml");
    std::fs::write(
        &config,
        format!("[websocket]\nheartbeat_secs = 1\nheartbeat_timeout_secs = 5\nresume_window_secs = {window_secs}\n"),
    )
    .unwrap();
    [("CRADLE_CONFIG", config.display().to_string())]
}

/// A new WebSocket session of `client` of account `home` on `r`, and its `hello`.
async fn open_session(r: &Cradle, client: &str) -> (Ws, serde_json::Value) {
    let url = r.ws_url(&format!("account=home&client_id={client}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = next_of(&mut ws, "hello").await;
    (ws, hello)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_crosses_replicas_and_a_resume_elsewhere_is_410() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let a = replica(dir.path(), "a", &db, &broker, "cradle").await;
    let b = replica(dir.path(), "b", &db, &broker, "cradle").await;

    // The PWA holds its socket on replica A.
    let url = format!(
        "{}/ws?account=home&client_id=pwa",
        a.http.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = next_of(&mut ws, "hello").await;
    let connection = hello["connection_id"].as_str().unwrap().to_string();

    // The baby station is on replica B's edge; its statuses are processed by the replicas'
    // shared subscription (B takes some of them: round robin over three messages).
    let baby = Device::connect(b.mqtt_port, "baby", None).await;
    let (_listener, mut inbox) = subscriber(
        b.mqtt_port,
        "baby-listener",
        &["accounts/home/clients/baby/webrtc_inbox"],
    )
    .await;
    let topic = "accounts/home/clients/baby/status";
    let t = 1_700_000_000_000i64;
    let before = b
        .metric("cradle_mqtt_messages_received_total{family=\"status\"}")
        .await;
    baby.publish(topic, status("connected", "b1", t, None))
        .await;
    baby.publish(topic, status("disconnected", "b1", t + 1, Some("clean")))
        .await;
    baby.publish(topic, status("connected", "b2", t + 2, None))
        .await;
    wait_for(
        Duration::from_secs(20),
        "the baby station connected as b2",
        || async {
            let c = a.client("home", "baby").await?;
            (c["connection_id"] == "b2" && c["connected"] == true).then_some(())
        },
    )
    .await;
    let after = b
        .metric("cradle_mqtt_messages_received_total{family=\"status\"}")
        .await;
    assert!(after > before, "replica B processed the station's statuses");

    // Presence reaches the socket on A whichever replica processed each report: the
    // station's three changes, in order, once each.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let f = next_of(&mut ws, "presence").await;
        if f["client_id"] == "baby" {
            seen.push(format!("{} {}", f["connection_id"], f["connected"]));
        }
    }
    assert_eq!(
        seen,
        ["\"b1\" true", "\"b1\" false", "\"b2\" true"],
        "presence of the station"
    );

    // A session started through replica B's API: the list reaches the socket on A.
    let r = reqwest::Client::new()
        .put(format!("{}/sessions/nap-1", b.http))
        .header("X-Cradle-Account", "home")
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"session_id":"nap-1","client_id":"baby","connection_id":"b2","name":"Nursery","started_at_millis":{}}}"#,
            t + 10
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let list = next_of(&mut ws, "baby_stations").await;
    assert_eq!(list["baby_stations"][0]["session_id"], "nap-1", "{list}");

    // Device (on B) → PWA (socket on A).
    baby.client
        .publish(
            "accounts/home/clients/pwa/webrtc_inbox",
            QoS::AtLeastOnce,
            false,
            r#"{"from":"baby","data":{"sdp":"answer"}}"#,
        )
        .await
        .unwrap();
    let signal = next_of(&mut ws, "signal").await;
    assert_eq!(signal["from"], "baby");
    assert_eq!(signal["data"]["sdp"], "answer");

    // PWA (on A) → device (on B).
    ws.send(Message::text(
        r#"{"type":"signal","to":"baby","data":{"sdp":"offer"}}"#,
    ))
    .await
    .unwrap();
    let p = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .expect("signal reached the device")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["from"], "pwa");
    assert_eq!(v["data"]["sdp"], "offer");

    // A resume without the session's proof (no token, no resume secret) that lands on
    // replica B, which does not hold the session: 410, never a wrong replay. Replica A still
    // holds it (with the proof it would move to B: the next test).
    let resume = format!(
        "{}/ws?account=home&client_id=pwa&connection_id={connection}&resume_from=1",
        b.http
    );
    let r = common::upgrade_request(&resume).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 410);
    let pwa = a.client("home", "pwa").await.expect("pwa recorded");
    assert_eq!(
        pwa["connected"], true,
        "the PWA stays connected on A: {pwa}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, mut broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let r = replica(dir.path(), "a", &db, &broker, "cradle").await;

    // The publisher keeps a persistent session and counts the broker's PUBACKs by message.
    let mut options = MqttOptions::new("stream", "127.0.0.1", broker.port);
    options
        .set_credentials(BROKER_USER, BROKER_PASSWORD)
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let order = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let pending_order = order.clone();
    tokio::spawn(async move {
        let mut in_flight: HashMap<u16, usize> = HashMap::new();
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    // A retransmission reuses its packet id; a new packet id is the next
                    // message in publish order.
                    if let std::collections::hash_map::Entry::Vacant(e) = in_flight.entry(pkid) {
                        if let Some(i) = pending_order.lock().unwrap().pop_front() {
                            e.insert(i);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(i) = in_flight.remove(&ack.pkid) {
                        let _ = acked_tx.send(i);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });

    const MESSAGES: usize = 400;
    let t = 1_700_000_000_000i64;
    let mut acked = HashSet::new();
    for i in 0..MESSAGES {
        order.lock().unwrap().push_back(i);
        client
            .publish(
                format!("accounts/stream/clients/c{i}/status"),
                QoS::AtLeastOnce,
                true, // retained, as the topic contract asks of statuses
                status("connected", &format!("k{i}"), t + i as i64, None),
            )
            .await
            .unwrap();
        if i % 20 == 19 {
            // Let the window drain a little so the restart lands mid-stream.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if i == MESSAGES / 2 {
            while let Ok(n) = acked_rx.try_recv() {
                acked.insert(n);
            }
            assert!(!acked.is_empty(), "the broker acknowledged the first half");
            broker.restart(Duration::from_millis(500)).await;
        }
    }
    wait_for(
        Duration::from_secs(60),
        "every message acknowledged",
        || {
            while let Ok(n) = acked_rx.try_recv() {
                acked.insert(n);
            }
            let done = acked.len() == MESSAGES;
            async move { done.then_some(()) }
        },
    )
    .await;

    // Every acknowledged message is an event, exactly once. (Mosquitto 2.0 does not
    // persist shared subscriptions: what was published between its restart and the bus's
    // resubscription comes back through the retained replay.)
    let events = exactly_events(&r, "stream", MESSAGES).await;
    let recorded: HashSet<String> = events
        .iter()
        .map(|e| e["data"]["connection_id"].as_str().unwrap().to_string())
        .collect();
    for i in &acked {
        assert!(
            recorded.contains(&format!("k{i}")),
            "acknowledged message {i} lost"
        );
    }
    // The bus reconnected (and resubscribed) after the restart, and replayed the retained
    // statuses (those published before the restart at least).
    assert!(r.metric("cradle_bus_connects_total").await >= 2);
    assert!(r.metric("cradle_bus_replayed_total").await >= (MESSAGES / 2) as u64);
    assert_eq!(
        r.get_json("/readyz", 200).await["broker"],
        "ok",
        "ready again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_or_refused_credentials_fail_the_start_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(&dir.path().join("broker")).await else {
        return;
    };
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    let config = dir.path().join("fast.toml");
    std::fs::write(&config, "[bus]\nconnect_timeout_ms = 1500\n").unwrap();

    let closed = common::free_port();
    let mut c = Cradle::spawn(
        dir.path(),
        &db,
        &[
            ("CRADLE_CONFIG", config.display().to_string()),
            ("CRADLE_BROKER_MODE", "external".into()),
            (
                "CRADLE_BROKER_URL",
                format!("mqtt://u:topsecret@127.0.0.1:{closed}"),
            ),
        ],
    );
    let status = common::wait_exit(&mut c.child, Duration::from_secs(20));
    assert!(!status.success());
    let log = c.log();
    assert!(
        log.contains(&format!("broker at mqtt://127.0.0.1:{closed} not ready")),
        "{log}"
    );
    assert!(log.contains("bus.connect_timeout_ms"), "{log}");
    assert!(!log.contains("topsecret"), "the password is never logged");
    assert!(!log.contains("panicked"), "{log}");

    // With a minute's connect timeout, a refusal still ends the start at once.
    std::fs::write(&config, "[bus]\nconnect_timeout_ms = 60000\n").unwrap();
    let started = std::time::Instant::now();
    let mut c = Cradle::spawn(
        dir.path(),
        &db,
        &[
            ("CRADLE_CONFIG", config.display().to_string()),
            ("CRADLE_BROKER_MODE", "external".into()),
            (
                "CRADLE_BROKER_URL",
                format!("mqtt://{BROKER_USER}:wrong@127.0.0.1:{}", broker.port),
            ),
        ],
    );
    let status = common::wait_exit(&mut c.child, Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refused credentials fail at once, not after the connect timeout"
    );
    let log = c.log();
    assert!(log.contains("refused the connection"), "{log}");
    assert!(log.contains("CRADLE_BROKER_URL"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_an_empty_database_both_start() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    // Both run the schema migrations at once; an advisory lock lets one create the tables
    // while the other waits and then finds them.
    let env = |name: &str| {
        vec![
            ("CRADLE_BROKER_MODE", "external".to_string()),
            ("CRADLE_BROKER_URL", broker.url()),
            ("CRADLE_BUS_CLIENT_ID", format!("cradle-{name}")),
        ]
    };
    let (da, db_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db_dir).unwrap();
    let a = Cradle::spawn(&da, &db, &env("a"));
    let b = Cradle::spawn(&db_dir, &db, &env("b"));
    a.wait_ready().await;
    b.wait_ready().await;
    assert!(!a.log().contains("duplicate key"), "{}", a.log());
    assert!(!b.log().contains("duplicate key"), "{}", b.log());
}

async fn until_connected(r: &Cradle, client: &str) {
    wait_for(Duration::from_secs(20), "connected", || async {
        let row = r.client("home", client).await?;
        (row["connected"] == true).then_some(())
    })
    .await
}

async fn until_ended(r: &Cradle, client: &str) -> serde_json::Value {
    wait_for(Duration::from_secs(30), "ended", || async {
        let row = r.client("home", client).await?;
        (row["connected"] == false).then_some(row)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_leaves_its_devices_wills_with_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let mut a = replica(dir.path(), "a", &db, &broker, "cradle").await;
    let b = replica(dir.path(), "b", &db, &broker, "cradle").await;
    let t = 1_700_000_000_000i64;
    // A clean end through a replica's edge discards the Will the edge forwarded to the
    // broker: the log has the edge's `clean` end, nothing from the Will.
    let topic = "accounts/home/clients/cam2/status";
    let will = status("disconnected", "d1", t, Some("lost"));
    let cam2 = Device::connect(a.mqtt_port, "cam2", Some((topic, will))).await;
    cam2.publish(topic, status("connected", "d1", t, None))
        .await;
    until_connected(&b, "cam2").await;
    cam2.client.disconnect().await.unwrap();
    let row = until_ended(&b, "cam2").await;
    assert_eq!(row["last_disconnect_reason"], "clean", "{row}");

    // Replica A dies without a chance to publish anything; the broker fires the Will the
    // edge forwarded. A comes back with its client id, as an orchestrator restarts it (its
    // persistent session holds its share of the stream), and the end is recorded.
    let topic = "accounts/home/clients/cam/status";
    let will = status("disconnected", "c1", t, Some("lost"));
    let cam = Device::connect(a.mqtt_port, "cam", Some((topic, will))).await;
    cam.publish(topic, status("connected", "c1", t, None)).await;
    until_connected(&b, "cam").await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(cam);
    let _a = replica(dir.path(), "a", &db, &broker, "cradle").await;
    let row = until_ended(&b, "cam").await;
    assert_eq!(row["connection_id"], "c1", "{row}");
    assert_eq!(row["last_disconnect_reason"], "lost", "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_for_good_leaves_the_group_and_the_others_take_everything() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let mut a = replica(dir.path(), "a", &db, &broker, "cradle").await;
    let b = replica(dir.path(), "b", &db, &broker, "cradle").await;
    // Scaling down: A stops (SIGTERM) and never comes back. It left the share group, so the
    // broker deals nothing to its offline session: B records every later message.
    assert!(a.terminate().success());
    assert!(
        a.log().contains("left the shared-subscription group"),
        "{}",
        a.log()
    );
    let device = broker_client(&broker, "publisher").await;
    const CLIENTS: usize = 30;
    let t = 1_700_000_000_000i64;
    for i in 0..CLIENTS {
        device
            .client
            .publish(
                format!("accounts/down/clients/c{i}/status"),
                QoS::AtLeastOnce,
                true,
                status("connected", "k1", t, None),
            )
            .await
            .unwrap();
    }
    exactly_events(&b, "down", CLIENTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_over_tls_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = common::tls_files(dir.path());
    let Some(broker) = Mosquitto::start_tls(&dir.path().join("broker"), &cert, &key).await else {
        return;
    };
    let db = format!("sqlite://{}", dir.path().join("tls.db").display());
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nca_file = \"{}\"\n[bus]\nconnect_timeout_ms = 3000\n",
            ca.display()
        ),
    )
    .unwrap();
    let env = [
        ("CRADLE_CONFIG", config.display().to_string()),
        ("CRADLE_BROKER_MODE", "external".to_string()),
        ("CRADLE_BROKER_URL", broker.url()),
        ("CRADLE_BUS_CLIENT_ID", "cradle-tls".to_string()),
    ];
    assert!(broker.url().starts_with("mqtts://"));
    let c = Cradle::spawn_ready(dir.path(), &db, &env).await;
    // A device through the edge: its link to the broker is TLS too (the edge relays over
    // the same endpoint), and its status reaches the bus over TLS.
    let d = Device::connect(c.mqtt_port, "tls-dev", None).await;
    d.publish(
        "accounts/sec/clients/tls-dev/status",
        status("connected", "t1", 1_700_000_000_000, None),
    )
    .await;
    let events = c.wait_events("sec", 1).await;
    assert_eq!(events[0]["data"]["connection_id"], "t1");
    drop(c);

    // Without the CA the broker's certificate is not trusted: the start fails at once.
    let mut c = Cradle::spawn(
        dir.path(),
        &db,
        &[
            ("CRADLE_BROKER_MODE", "external".to_string()),
            ("CRADLE_BROKER_URL", broker.url()),
            ("CRADLE_BUS_CLIENT_ID", "cradle-tls-2".to_string()),
        ],
    );
    let status = common::wait_exit(&mut c.child, Duration::from_secs(30));
    assert!(!status.success());
    let log = c.log();
    assert!(log.contains("refused the connection"), "{log}");
    assert!(log.contains("broker.ca_file"), "{log}");
    assert!(!log.contains(BROKER_PASSWORD), "{log}");
}

/// Issue 15: pending session starts live in the shared store. A start parked on replica A
/// is visible to a `DELETE` on replica B, and one parked on A is applied when its station's
/// connection is recorded through B: once, whichever replica records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_starts_are_shared_by_the_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let a = replica(dir.path(), "a", &db, &broker, "cradle").await;
    let b = replica(dir.path(), "b", &db, &broker, "cradle").await;
    let http = reqwest::Client::new();
    let put = |r: &Cradle, id: &str, connection: &str| {
        http.put(format!("{}/sessions/{id}", r.http))
            .header("X-Cradle-Account", "home")
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"session_id":"{id}","connection_id":"{connection}","name":"Nursery","started_at_millis":5}}"#
            ))
            .send()
    };
    assert_eq!(
        put(&a, "gone", "never").await.unwrap().status().as_u16(),
        202
    );
    let removed = http
        .delete(format!("{}/sessions/gone", b.http))
        .header("X-Cradle-Account", "home")
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status().as_u16(), 200);
    let body: serde_json::Value = removed.json().await.unwrap();
    assert_eq!(body["status"], "pending_removed", "{body}");

    assert_eq!(put(&a, "s1", "late").await.unwrap().status().as_u16(), 202);
    let station = Device::connect(b.mqtt_port, "crib", None).await;
    station
        .publish(
            "accounts/home/clients/crib/status",
            status("connected", "late", 1_700_000_000_000, None),
        )
        .await;
    let list = wait_for(Duration::from_secs(20), "session applied", || async {
        let list = a.get_json("/v1/accounts/home/baby-stations", 200).await;
        let stations = list["baby_stations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (!stations.is_empty()).then_some(stations)
    })
    .await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["session_id"], "s1");
    assert_eq!(list[0]["client_id"], "crib");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started: Vec<_> = a
        .events("home")
        .await
        .into_iter()
        .filter(|e| e["type"] == "session.started")
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
}

/// Issue 15, rolling deploy: a replica stopped with SIGTERM moves its WebSocket sessions to the
/// other replica before it exits (offers, close 1012) instead of ending them. The PWA resumes
/// on the other replica with its connection id, `resume_from` and resume secret, and gets every
/// frame after `resume_from`, including one published while it was reconnecting, then new
/// frames; its connection is never recorded as ended. A session no PWA resumes is ended
/// (`lost`) by the remaining replica once its window has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shut_down_hands_its_websocket_sessions_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let env = ws_window(dir.path(), 6);
    let mut a = replica_with(dir.path(), "a", &db, &broker, "cradle", &env).await;
    let b = replica_with(dir.path(), "b", &db, &broker, "cradle", &env).await;

    let (mut ws, hello) = open_session(&a, "pwa").await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    let secret = hello["resume_secret"].as_str().unwrap().to_string();
    let (_orphan, _) = open_session(&a, "orphan").await;
    until_connected(&b, "pwa").await;
    until_connected(&b, "orphan").await;

    // A station on replica B's edge: its presence reaches the socket on A.
    let baby = Device::connect(b.mqtt_port, "baby", None).await;
    let topic = "accounts/home/clients/baby/status";
    let t = 1_700_000_000_000i64;
    baby.publish(topic, status("connected", "b1", t, None))
        .await;
    let seen = loop {
        let f = next_of(&mut ws, "presence").await;
        if f["client_id"] == "baby" {
            break f;
        }
    };
    assert_eq!(seen["connected"], true, "{seen}");
    let seq = seen["seq"].as_u64().unwrap();

    assert!(a.terminate().success(), "{}", a.log());
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(closed, Some(1012), "closed for a service restart");

    // While the PWA reconnects, the station ends its connection: replica B, which took the
    // session over at A's shutdown, keeps that frame for it.
    baby.publish(topic, status("disconnected", "b1", t + 1, Some("clean")))
        .await;
    wait_for(
        Duration::from_secs(10),
        "the station's end recorded",
        || async {
            let c = b.client("home", "baby").await?;
            (c["connected"] == false).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The PWA reconnects through the load balancer, which sends it to replica B.
    let from = seq - 1;
    let (mut ws, _) = tokio_tungstenite::connect_async(b.ws_url(&format!(
        "account=home&client_id=pwa&connection_id={conn}&resume_from={from}&resume_secret={secret}"
    )))
    .await
    .expect("resumed on replica B");
    let mut frames = Vec::new();
    let hello = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("frame in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = msg {
            let f: serde_json::Value = serde_json::from_str(&text).unwrap();
            if f["type"] == "hello" {
                break f;
            }
            frames.push(f);
        }
    };
    assert_eq!(hello["resumed"], true, "{hello}");
    assert_eq!(hello["connection_id"], conn.as_str());
    assert_ne!(hello["resume_secret"], secret.as_str(), "a new secret");
    // Every frame after `resume_from`, in order, once: the station's presence first.
    let seqs: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), frames.len(), "{frames:?}");
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == seq + i as u64),
        "{frames:?}"
    );
    assert_eq!(frames[0]["client_id"], "baby", "{frames:?}");
    let ends: Vec<_> = frames
        .iter()
        .filter(|f| f["type"] == "presence" && f["client_id"] == "baby" && f["connected"] == false)
        .collect();
    assert_eq!(
        ends.len(),
        1,
        "the end published after A's shutdown, once: {frames:?}"
    );
    let last = *seqs.last().expect("the replay");

    // New frames reach the session on B.
    baby.publish(topic, status("connected", "b2", t + 2, None))
        .await;
    let next = loop {
        let f = next_of(&mut ws, "presence").await;
        if f["client_id"] == "baby" {
            break f;
        }
    };
    assert_eq!(next["connection_id"], "b2", "{next}");
    assert!(next["seq"].as_u64() > Some(last), "seq continues: {next}");

    // Its connection was never recorded as ended; the one nobody resumed ends `lost` when
    // its window passes, ended by replica B.
    let pwa = b.client("home", "pwa").await.unwrap();
    assert_eq!(pwa["connected"], true, "{pwa}");
    assert_eq!(pwa["connection_id"], conn.as_str());
    let orphan = until_ended(&b, "orphan").await;
    assert_eq!(orphan["last_disconnect_reason"], "lost", "{orphan}");
    let pwa_events: Vec<_> = b
        .events("home")
        .await
        .into_iter()
        .filter(|e| e["data"]["client_id"] == "pwa")
        .collect();
    assert_eq!(
        pwa_events.len(),
        1,
        "only the PWA's connect: {pwa_events:?}"
    );
    let _ = ws.close(None).await;
}

/// Reads frames until `hello`; returns it and the frames before it (the replay).
async fn hello_after_replay(ws: &mut Ws) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut frames = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("frame in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(text) = msg {
            let f: serde_json::Value = serde_json::from_str(&text).unwrap();
            if f["type"] == "hello" {
                return (f, frames);
            }
            frames.push(f);
        }
    }
}

/// Issue 15: sticky load balancing is an optimisation. A resume (with the session's resume
/// secret) that reaches a replica other than the one holding the live session moves the
/// session there: the holder hands it over through the store and closes its socket with 4104,
/// the new replica replays every frame after `resume_from` once, in order, and new frames
/// follow on it. And back again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_reaches_another_replica_moves_the_live_session_there() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let a = replica(dir.path(), "a", &db, &broker, "cradle").await;
    let b = replica(dir.path(), "b", &db, &broker, "cradle").await;
    let (mut on_a, hello) = open_session(&a, "pwa").await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    let secret = hello["resume_secret"].as_str().unwrap().to_string();
    until_connected(&b, "pwa").await;

    // A station on replica B's edge signals the PWA (socket on A).
    let baby = Device::connect(b.mqtt_port, "baby", None).await;
    let signal = |n: u32| {
        let baby = baby.client.clone();
        async move {
            baby.publish(
                "accounts/home/clients/pwa/webrtc_inbox",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"from":"baby","data":{{"n":{n}}}}}"#),
            )
            .await
            .unwrap();
        }
    };
    signal(1).await;
    let first = next_of(&mut on_a, "signal").await;
    assert_eq!(first["data"]["n"], 1);
    let seen = first["seq"].as_u64().unwrap();
    signal(2).await;
    let missed = next_of(&mut on_a, "signal").await;
    assert_eq!(missed["data"]["n"], 2);

    // The load balancer sends the PWA's next socket to replica B; it resumes from `seen`.
    let (mut on_b, _) = tokio_tungstenite::connect_async(b.ws_url(&format!(
        "account=home&client_id=pwa&connection_id={conn}&resume_from={seen}&resume_secret={secret}"
    )))
    .await
    .expect("upgraded on replica B");
    let (hello, replay) = hello_after_replay(&mut on_b).await;
    assert_eq!(hello["resumed"], true, "{hello}");
    assert_eq!(hello["connection_id"], conn.as_str());
    let seqs: Vec<u64> = replay.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert_eq!(seqs.first(), Some(&(seen + 1)), "{replay:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{replay:?}");
    let signals: Vec<_> = replay.iter().filter(|f| f["type"] == "signal").collect();
    assert_eq!(signals.len(), 1, "the missed signal once: {replay:?}");
    assert_eq!(signals[0]["data"]["n"], 2);
    // The socket on A was replaced.
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), on_a.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame on A: {other:?}"),
        }
    };
    assert_eq!(closed, Some(4104));

    // New frames follow on B, numbered on after its `hello`.
    let last = *seqs.last().unwrap();
    assert_eq!(hello["seq"].as_u64(), Some(last + 1), "{hello}");
    signal(3).await;
    let next = next_of(&mut on_b, "signal").await;
    assert_eq!(next["data"]["n"], 3);
    let third = next["seq"].as_u64().unwrap();
    assert_eq!(third, last + 2, "{next}");

    // And back to A with the new secret.
    let secret = hello["resume_secret"].as_str().unwrap().to_string();
    let (mut back, _) = tokio_tungstenite::connect_async(a.ws_url(&format!(
            "account=home&client_id=pwa&connection_id={conn}&resume_from={third}&resume_secret={secret}"
        ),
    ))
    .await
    .expect("upgraded on replica A");
    let (hello, replay) = hello_after_replay(&mut back).await;
    assert_eq!(hello["resumed"], true, "{hello}");
    assert!(replay.is_empty(), "nothing missed: {replay:?}");
    signal(4).await;
    let again = next_of(&mut back, "signal").await;
    assert_eq!(again["data"]["n"], 4);
    assert_eq!(
        again["seq"].as_u64(),
        Some(third + 2),
        "after the hello: {again}"
    );

    // One connection all along: never recorded as ended.
    let pwa = a.client("home", "pwa").await.unwrap();
    assert_eq!(pwa["connected"], true, "{pwa}");
    let pwa_events: Vec<_> = a
        .events("home")
        .await
        .into_iter()
        .filter(|e| e["data"]["client_id"] == "pwa")
        .collect();
    assert_eq!(pwa_events.len(), 1, "{pwa_events:?}");
}

/// Issue 15: a replica stopped while no other replica runs (nobody takes its offers within
/// 3 s) hands its sessions over through the store. A replica started later claims one when
/// its PWA resumes there, and ends (`lost`) one nobody resumes once its window has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_replica_stopped_leaves_its_sessions_in_the_store_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let env = ws_window(dir.path(), 8);
    let mut a = replica_with(dir.path(), "a", &db, &broker, "cradle", &env).await;
    let (_first, hello) = open_session(&a, "pwa").await;
    let conn = hello["connection_id"].as_str().unwrap().to_string();
    let secret = hello["resume_secret"].as_str().unwrap().to_string();
    let seq = hello["seq"].as_u64().unwrap();
    let (_orphan, _) = open_session(&a, "orphan").await;
    until_connected(&a, "orphan").await;
    assert!(a.terminate().success(), "{}", a.log());
    assert!(
        a.log()
            .contains("WebSocket sessions handed over through the store"),
        "{}",
        a.log()
    );

    let b = replica_with(dir.path(), "b", &db, &broker, "cradle", &env).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(b.ws_url(&format!(
        "account=home&client_id=pwa&connection_id={conn}&resume_from={seq}&resume_secret={secret}"
    )))
    .await
    .expect("resumed on replica B");
    let (hello, _) = hello_after_replay(&mut ws).await;
    assert_eq!(hello["resumed"], true, "{hello}");
    assert_eq!(hello["connection_id"], conn.as_str());
    let orphan = until_ended(&b, "orphan").await;
    assert_eq!(orphan["last_disconnect_reason"], "lost", "{orphan}");
    let pwa = b.client("home", "pwa").await.unwrap();
    assert_eq!(pwa["connected"], true, "{pwa}");
}

/// Revoking a credential or disconnecting a client on one replica ends the live connections
/// another replica holds, within a second: an MQTT 5 device behind replica A's edge gets
/// DISCONNECT 0x87 (revoked) or 0x98 (disconnected by an administrator), and a WebSocket
/// session on A is closed with 4010, all on requests to replica B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_or_kick_on_one_replica_ends_connections_held_by_another() {
    use rumqttc::v5::mqttbytes::v5::Packet as V5;
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let cli = |args: &[&str]| common::cli(&db, args);
    cli(&["accounts", "create", "fam"]);
    let device = |client: &str| {
        let out = std::process::Command::new(common::cradle_bin())
            .args([
                "credentials",
                "issue",
                "--account",
                "fam",
                "--client",
                client,
            ])
            .env("CRADLE_DATABASE_URL", &db)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let id = text.split_whitespace().nth(3).unwrap().to_string();
        (id, text.lines().last().unwrap().to_string())
    };
    let (baby_id, baby_secret) = device("baby-1");
    let (_, parent_secret) = device("parent-1");
    let token = cli(&["credentials", "issue", "--account", "fam", "--token"]);
    let token_id = token.split('.').next().unwrap().to_string();
    let admin = "an-admin-token-of-some-length".to_string();
    let env = [("CRADLE_ADMIN_TOKEN", admin.clone())];
    let a = replica_with(dir.path(), "a", &db, &broker, "g", &env).await;
    let b = replica_with(dir.path(), "b", &db, &broker, "g", &env).await;
    let on_b = |method: reqwest::Method, path: String| {
        reqwest::Client::new()
            .request(method, format!("{}{path}", b.http))
            .bearer_auth(&admin)
            .send()
    };

    let (mut baby, _) =
        common::RawV5::connect(a.mqtt_port, "baby-1", Some(("fam", &baby_secret)), 30).await;
    let (mut parent, _) =
        common::RawV5::connect(a.mqtt_port, "parent-1", Some(("fam", &parent_secret)), 30).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(a.ws_url(&format!("client_id=pwa&token={token}")))
            .await
            .expect("upgrade");
    next_of(&mut ws, "hello").await;

    let started = Instant::now();
    let r = on_b(
        reqwest::Method::DELETE,
        format!("/v1/admin/credentials/{baby_id}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    match baby.read().await {
        Some(V5::Disconnect(d)) => assert_eq!(d.reason_code as u8, 0x87),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let r = on_b(
        reqwest::Method::POST,
        "/v1/accounts/fam/clients/parent-1/disconnect".into(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    match parent.read().await {
        Some(V5::Disconnect(d)) => assert_eq!(d.reason_code as u8, 0x98),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Replica A verified the token and keeps it cached (auth.cache_secs).
    let on_a = |token: &str| {
        reqwest::Client::new()
            .get(format!("{}/v1/accounts/fam/clients", a.http))
            .bearer_auth(token.to_string())
            .send()
    };
    assert_eq!(on_a(&token).await.unwrap().status(), 200);
    let started = Instant::now();
    let r = on_b(
        reqwest::Method::DELETE,
        format!("/v1/admin/credentials/{token_id}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(4010));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The decision reached A: its cache no longer keeps the token alive.
    assert_eq!(on_a(&token).await.unwrap().status(), 401);

    // Both ends are recorded once, with their reasons, whichever replica wrote them.
    let ends = wait_for(Duration::from_secs(15), "both ends recorded", || async {
        let clients = clients_of(&b, "fam").await;
        let reason = |c: &str| clients.get(c).map(|r| r["last_disconnect_reason"].clone());
        (reason("pwa") == Some("revoked".into())).then_some(clients)
    })
    .await;
    assert_eq!(ends["pwa"]["connected"], false);
}

/// Who is connected is gathered from every replica: each lists its own devices and
/// WebSocket sessions, pages walk the union in one order, and a replica that stops is no
/// longer asked.
#[tokio::test]
async fn who_is_connected_lists_the_connections_of_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let cli = |args: &[&str]| common::cli(&db, args);
    cli(&["accounts", "create", "fam"]);
    let secret = |client: &str| {
        let text = cli(&[
            "credentials",
            "issue",
            "--account",
            "fam",
            "--client",
            client,
        ]);
        text.lines().last().unwrap().to_string()
    };
    let (baby, parent) = (secret("baby-1"), secret("parent-1"));
    let token = cli(&["credentials", "issue", "--account", "fam", "--token"]);
    let admin = "an-admin-token-of-some-length".to_string();
    let env = [("CRADLE_ADMIN_TOKEN", admin.clone())];
    let a = replica_with(dir.path(), "a", &db, &broker, "g", &env).await;
    let mut b = replica_with(dir.path(), "b", &db, &broker, "g", &env).await;

    let (_baby, _) = common::RawV5::connect(a.mqtt_port, "baby-1", Some(("fam", &baby)), 30).await;
    let (_parent, _) =
        common::RawV5::connect(b.mqtt_port, "parent-1", Some(("fam", &parent)), 30).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(b.ws_url(&format!("client_id=pwa&token={token}")))
            .await
            .expect("upgrade");
    next_of(&mut ws, "hello").await;

    let page = |replica: &Cradle, query: String| {
        let url = format!("{}/v1/accounts/fam/connections{query}", replica.http);
        let admin = admin.clone();
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(admin)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let rows = |page: &serde_json::Value| -> Vec<(String, String, String)> {
        page["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("client_id"), s("kind"), s("replica"))
            })
            .collect()
    };
    let expected = vec![
        ("baby-1".into(), "mqtt".into(), "cradle-a".into()),
        ("parent-1".into(), "mqtt".into(), "cradle-b".into()),
        ("pwa".into(), "websocket".into(), "cradle-b".into()),
    ];
    // Asked at either replica, the page holds all three, from both replicas.
    for replica in [&a, &b] {
        let full = wait_for(Duration::from_secs(10), "all three listed", || async {
            let p = page(replica, String::new()).await;
            (rows(&p) == expected).then_some(p)
        })
        .await;
        assert_eq!(full["unanswered_replicas"], serde_json::json!([]));
        let mut names: Vec<_> = full["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["cradle-a", "cradle-b"]);
    }
    // Pages of one walk the same rows once each, in order.
    let mut walked = Vec::new();
    let mut query = "?limit=1".to_string();
    loop {
        let p = page(&a, query).await;
        walked.extend(rows(&p));
        match p["next_after"].as_str() {
            Some(after) => query = format!("?limit=1&after={}", urlencode(after)),
            None => break,
        }
        assert!(walked.len() <= 3, "{walked:?}");
    }
    assert_eq!(walked, expected);

    // B stops: its device is gone from the list (its WebSocket session is handed over to A)
    // and A no longer waits for it.
    assert!(b.terminate().success());
    let after_stop = wait_for(Duration::from_secs(10), "B's device gone", || async {
        let p = page(&a, String::new()).await;
        let listed = rows(&p);
        (listed.first() == expected.first()
            && listed
                .iter()
                .all(|(c, _, r)| c != "parent-1" && r == "cradle-a"))
        .then_some(p)
    })
    .await;
    assert_eq!(after_stop["replicas"], serde_json::json!(["cradle-a"]));
    assert_eq!(after_stop["unanswered_replicas"], serde_json::json!([]));
}

/// `s` as a query-string value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A device written raw on an edge (MQTT 3.1.1 or 5, the testkit's raw clients, with a login
/// and maybe a Will), so the test says exactly when it sends DISCONNECT and when it only drops
/// its socket.
enum RawDevice {
    V4(common::RawV4),
    V5(common::RawV5),
}

impl RawDevice {
    /// Connects `client_id` of `account` (its `secret`) to `port` with MQTT 5 if `v5` (else
    /// 3.1.1), keep-alive 30 s and a retained QoS 1 `will` on its status topic if given;
    /// panics unless the CONNACK accepts it.
    async fn connect(
        port: u16,
        v5: bool,
        (account, client_id, secret): (&str, &str, &str),
        will: Option<String>,
    ) -> RawDevice {
        let topic = format!("accounts/{account}/clients/{client_id}/status");
        let will = will.as_deref().map(|w| (topic.as_str(), w));
        let login = Some((account, secret));
        if v5 {
            let (d, code) =
                common::RawV5::connect_with_will(port, client_id, login, 30, will).await;
            assert_eq!(
                code,
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success,
                "{client_id}"
            );
            RawDevice::V5(d)
        } else {
            let (d, code) =
                common::RawV4::connect_with_will(port, client_id, login, 30, will).await;
            assert_eq!(code, 0, "{client_id}");
            RawDevice::V4(d)
        }
    }

    /// Publishes `payload` retained, QoS 1, on `topic` and waits for its PUBACK.
    async fn publish(&mut self, topic: &str, payload: String) {
        match self {
            RawDevice::V4(d) => d.publish_retained(topic, payload.as_bytes(), 1).await,
            RawDevice::V5(d) => assert_eq!(
                d.publish_retained(topic, payload.as_bytes(), 1).await,
                rumqttc::v5::mqttbytes::v5::PubAckReason::Success
            ),
        }
    }

    /// Says goodbye: DISCONNECT (MQTT 5 reason 0x00, the Will discarded), then waits for the
    /// edge to close the connection.
    async fn disconnect(self) {
        match self {
            RawDevice::V4(mut d) => {
                d.send(&[0xE0, 0x00]).await;
                while d.read().await.is_some() {}
            }
            RawDevice::V5(mut d) => {
                d.send(&[0xE0, 0x00]).await;
                while d.read().await.is_some() {}
            }
        }
    }
}

/// The events of `account` on `replica` by client, once there are `n` (or after 20 s, for
/// the caller to say what is missing).
async fn events_by_client(
    replica: &Cradle,
    account: &str,
    n: usize,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut events = replica.events(account).await;
    while events.len() < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        events = replica.events(account).await;
    }
    let mut by_client: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for e in events {
        let client = e["data"]["client_id"].as_str().expect("client_id");
        by_client.entry(client.to_string()).or_default().push(e);
    }
    by_client
}

/// An edge connection id: `m-` and 16 hex digits.
fn is_edge_id(v: &serde_json::Value) -> bool {
    v.as_str()
        .and_then(|s| s.strip_prefix("m-"))
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The edge's observed start and the device's own `connected` report of one MQTT connection
/// meet on its edge connection id even when two replicas in one share group process them
/// (the status stream is split between them, so either may be committed first): every
/// device, half behind each replica's edge, MQTT 3.1.1 and 5, gets exactly one
/// `connection.connected`, one `connection.reported` (the id it reported) and one
/// `connection.disconnected` (`clean` after DISCONNECT, `lost` for a dropped socket, its
/// Will), all three naming the same edge connection. A device that never reports (no Will,
/// no status) gets one observed `connection.connected` under the edge's id and one end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observed_start_and_the_devices_report_on_two_replicas_are_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    const REPORTING: usize = 20;
    const SILENT: usize = 4;
    common::cli(&db, &["accounts", "create", "fam"]);
    let names: Vec<String> = (0..REPORTING)
        .map(|i| format!("dev-{i}"))
        .chain((0..SILENT).map(|i| format!("quiet-{i}")))
        .collect();
    let secrets: HashMap<&str, String> = names
        .iter()
        .map(|c| {
            let args = ["credentials", "issue", "--account", "fam", "--client", c];
            (c.as_str(), common::cli(&db, &args))
        })
        .collect();
    let env = [(
        "CRADLE_ADMIN_TOKEN",
        "an-admin-token-of-some-length".to_string(),
    )];
    let a = replica_with(dir.path(), "a", &db, &broker, "g", &env).await;
    let b = replica_with(dir.path(), "b", &db, &broker, "g", &env).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Client `i` is behind A's edge if even, ends cleanly if `i / 2` is even, and speaks
    // MQTT 5 if `i / 4` is even: every combination.
    let edge_of = |i: usize| if i % 2 == 0 { &a } else { &b };
    let clean = |i: usize| (i / 2) % 2 == 0;
    let v5 = |i: usize| (i / 4) % 2 == 0;

    // Each reporting device connects with a status Will and reports `connected` at once,
    // as firmware does. The edge's observed start goes out through its own publisher, so the
    // two reach the share group in either order and may be dealt to different replicas.
    let mut reporting = Vec::new();
    for (i, client) in names.iter().take(REPORTING).enumerate() {
        let k = format!("k-{client}");
        let will = status("disconnected", &k, now, Some("lost"));
        let login = ("fam", client.as_str(), secrets[client.as_str()].as_str());
        let mut d = RawDevice::connect(edge_of(i).mqtt_port, v5(i), login, Some(will)).await;
        d.publish(
            &format!("accounts/fam/clients/{client}/status"),
            status("connected", &k, now, None),
        )
        .await;
        reporting.push(d);
    }
    let mut silent = Vec::new();
    for (j, client) in names.iter().skip(REPORTING).enumerate() {
        let login = ("fam", client.as_str(), secrets[client.as_str()].as_str());
        silent.push(RawDevice::connect(edge_of(j).mqtt_port, v5(j), login, None).await);
    }
    // Every start and report committed (an end is not raced against its report: a report
    // processed after its connection's end is stale by design).
    let started = events_by_client(&a, "fam", REPORTING * 2 + SILENT).await;
    for (n, client) in names.iter().enumerate() {
        let types: Vec<&str> = started
            .get(client.as_str())
            .map(|story| story.iter().map(|e| e["type"].as_str().unwrap()).collect())
            .unwrap_or_default();
        let expected: &[&str] = if n < REPORTING {
            &["connection.connected", "connection.reported"]
        } else {
            &["connection.connected"]
        };
        assert_eq!(types, expected, "{client}: {:#?}", started.get(client));
    }
    let connected = clients_of(&b, "fam").await;
    assert_eq!(connected.len(), REPORTING + SILENT, "{connected:#?}");
    for (client, row) in &connected {
        assert_eq!(row["connected"], true, "{row}");
        if client.starts_with("dev-") {
            assert_eq!(row["connection_id"], format!("k-{client}"), "{row}");
        }
    }

    for (i, d) in reporting.into_iter().enumerate() {
        if clean(i) {
            d.disconnect().await;
        } else {
            drop(d);
        }
    }
    for (j, d) in silent.into_iter().enumerate() {
        if clean(j) {
            d.disconnect().await;
        } else {
            drop(d);
        }
    }

    let by_client = events_by_client(&a, "fam", REPORTING * 3 + SILENT * 2).await;
    assert_eq!(by_client.len(), REPORTING + SILENT, "{by_client:#?}");
    let mut edge_ids = HashSet::new();
    let mut observed_first = 0;
    for (n, client) in names.iter().enumerate() {
        let i = n % REPORTING;
        let story = &by_client[client.as_str()];
        let types: Vec<&str> = story.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let edge = &story[0]["data"]["edge_connection_id"];
        assert!(is_edge_id(edge), "{client}: {story:#?}");
        assert!(
            story
                .iter()
                .all(|e| &e["data"]["edge_connection_id"] == edge),
            "{client}: one edge connection: {story:#?}"
        );
        assert!(edge_ids.insert(edge.clone()), "{client}: {edge} reused");
        let connected = &story[0]["data"];
        let end = &story[story.len() - 1]["data"];
        if n < REPORTING {
            assert_eq!(
                types,
                [
                    "connection.connected",
                    "connection.reported",
                    "connection.disconnected"
                ],
                "{client}: {story:#?}"
            );
            let k = format!("k-{client}");
            // Named by the Will's id, whichever message came first.
            assert_eq!(
                connected["connection_id"],
                k.as_str(),
                "{client}: {story:#?}"
            );
            assert_eq!(
                story[1]["data"]["reported_connection_id"],
                k.as_str(),
                "{client}: {story:#?}"
            );
            assert_eq!(end["connection_id"], k.as_str(), "{client}: {story:#?}");
            if connected["observed"] == true {
                observed_first += 1;
            }
        } else {
            assert_eq!(
                types,
                ["connection.connected", "connection.disconnected"],
                "{client}: {story:#?}"
            );
            assert_eq!(connected["observed"], true, "{client}: {story:#?}");
            assert_eq!(&connected["connection_id"], edge, "{client}: {story:#?}");
            assert_eq!(&end["connection_id"], edge, "{client}: {story:#?}");
        }
        let reason = if clean(i) { "clean" } else { "lost" };
        assert_eq!(end["reason"], reason, "{client}: {story:#?}");
    }
    eprintln!("observed start committed first for {observed_first} of {REPORTING} devices");
    // Nothing more arrives, and either replica answers with the same log.
    let events = exactly_events(&a, "fam", REPORTING * 3 + SILENT * 2).await;
    assert_eq!(b.events("fam").await, events, "the same log on both");

    // The read models agree, and the status stream was split between the replicas.
    let (on_a, on_b) = (clients_of(&a, "fam").await, clients_of(&b, "fam").await);
    assert_eq!(on_a, on_b);
    for (n, client) in names.iter().enumerate() {
        let row = &on_a[client.as_str()];
        let reason = if clean(n % REPORTING) {
            "clean"
        } else {
            "lost"
        };
        assert_eq!(row["connected"], false, "{row}");
        assert_eq!(row["last_disconnect_reason"], reason, "{row}");
    }
    let series = "cradle_mqtt_messages_received_total{family=\"status\"}";
    let (ra, rb) = (a.metric(series).await, b.metric(series).await);
    assert!(ra > 0 && rb > 0, "both replicas took a share: {ra} + {rb}");
}

/// A follower of a replica's event stream, read in the background (testkit's `sse`).
struct SseFollower {
    name: String,
    stream: common::sse::Collected,
}

impl SseFollower {
    /// Follows `/v1/accounts/{account}/events/stream?after=0` on `replica`.
    async fn open(replica: &Cradle, name: &str, account: &str) -> SseFollower {
        let url = format!(
            "{}/v1/accounts/{account}/events/stream?after=0",
            replica.http
        );
        SseFollower {
            name: name.to_string(),
            stream: common::sse::Sse::open(&url, &[]).await.collect(),
        }
    }

    fn messages(&self) -> Vec<common::sse::Message> {
        self.stream.messages()
    }

    /// Waits until `event: live` has come.
    async fn until_live(&self) {
        wait_for(Duration::from_secs(10), "event: live", || async {
            let live = self.messages().iter().any(|m| m.event == "live");
            live.then_some(())
        })
        .await;
    }

    /// Waits until an event at `position` or beyond has come (or the stream ended), then a
    /// little longer to see whether anything more arrives; returns every message.
    async fn until_position(&self, position: i64) -> Vec<common::sse::Message> {
        let reached = || {
            self.stream.ended().is_some()
                || self.messages().iter().any(|m| {
                    m.event.is_empty()
                        && m.id.as_deref().and_then(|id| id.parse::<i64>().ok()) >= Some(position)
                })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !reached() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.messages()
    }

    /// Checks the stream's shape and returns its log events in the order received: every
    /// message is a log event (`id` = its position, of `account`) or the one `event: live`,
    /// nothing was cut or ended, positions strictly increase, and `live` sits between the
    /// backlog (at or below its position) and the live events (above it).
    fn log_events(
        &self,
        messages: &[common::sse::Message],
        account: &str,
    ) -> Vec<serde_json::Value> {
        let name = &self.name;
        if let Some(ended) = &self.stream.ended() {
            panic!("{name}: {ended}; received {messages:#?}");
        }
        let mut events = Vec::new();
        let mut live: Option<(usize, i64)> = None;
        let mut last = 0i64;
        for m in messages {
            match m.event.as_str() {
                "" => {
                    let e: serde_json::Value = serde_json::from_str(&m.data).unwrap();
                    let position = e["position"].as_i64().expect("position");
                    assert_eq!(
                        m.id.as_deref(),
                        Some(position.to_string().as_str()),
                        "{name}: id is the position: {m:?}"
                    );
                    assert_eq!(e["account_id"], account, "{name}: {e}");
                    assert!(
                        position > last,
                        "{name}: position {position} after {last}: handed out of order or twice"
                    );
                    last = position;
                    events.push(e);
                }
                "live" => {
                    assert!(live.is_none(), "{name}: a second event: live: {m:?}");
                    let v: serde_json::Value = serde_json::from_str(&m.data).unwrap();
                    let at = v["position"].as_i64().expect("live position");
                    assert!(
                        at >= last,
                        "{name}: live at {at} after the backlog's {last}"
                    );
                    live = Some((events.len(), at));
                }
                other => panic!("{name}: unexpected event: {other}: {m:?}"),
            }
        }
        let (backlog, at) = live.unwrap_or_else(|| panic!("{name}: no event: live"));
        for e in &events[backlog..] {
            assert!(
                e["position"].as_i64().unwrap() > at,
                "{name}: a live event at or below live's position {at}: {e}"
            );
        }
        eprintln!(
            "{name}: {} events from the backlog, then live at {at}, then {} live",
            backlog,
            events.len() - backlog
        );
        events
    }
}

/// Every event of `account` on `replica`, walked page by page (`after` = the last page's
/// `next_after`).
async fn paged_events(replica: &Cradle, account: &str) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    let mut after = 0i64;
    loop {
        let page = replica
            .get_json(
                &format!("/v1/accounts/{account}/events?after={after}&limit=37"),
                200,
            )
            .await;
        let got = page["events"].as_array().expect("events").clone();
        if got.is_empty() {
            return events;
        }
        after = page["next_after"].as_i64().expect("next_after");
        assert_eq!(Some(after), got.last().unwrap()["position"].as_i64());
        events.extend(got);
    }
}

/// Both replicas commit status events at once (the broker deals each round of statuses to
/// both through the share group), and a follower of either replica's event stream gets
/// every event of the account exactly once, in strictly increasing positions: one on each
/// replica from before the first event (all of it live), and one joining A mid-stream
/// while commits are in flight (a backlog, then live). Each holds exactly what the paged
/// `GET …/events` returns at the end, in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_either_replica_gets_every_replicas_events_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, broker)) = infrastructure(dir.path()).await else {
        return;
    };
    let a = replica(dir.path(), "a", &db, &broker, "cradle").await;
    let b = replica(dir.path(), "b", &db, &broker, "cradle").await;
    const ACCOUNT: &str = "followed";
    const CLIENTS: usize = 10;
    const ROUNDS: usize = 20;

    // A follower on each replica from before the first event (all of it comes live).
    let on_b = SseFollower::open(&b, "follower on B", ACCOUNT).await;
    let on_a = SseFollower::open(&a, "follower on A", ACCOUNT).await;
    on_b.until_live().await;
    on_a.until_live().await;

    // Twenty rounds of 10 statuses, one per client: connected on a fresh connection id, then
    // its clean end, and so on. Each round is split between the replicas, which commit
    // their shares at once. (Many small rounds give more chances of one replica committing
    // while the other holds smaller positions than a few large ones or one burst do: a feed
    // that did not wait for the settled position missed events in about two runs of three
    // so, against 1 of 6 for a 200-status burst.) A third follower joins A mid-stream from position 0:
    // a backlog, then live.
    let publisher = broker_client(&broker, "publisher").await;
    let t = 1_700_000_000_000i64;
    let mut late = None;
    for round in 0..ROUNDS {
        let connection = format!("k{}", round / 2);
        let at = t + round as i64;
        let payload = if round % 2 == 0 {
            status("connected", &connection, at, None)
        } else {
            status("disconnected", &connection, at, Some("clean"))
        };
        for i in 0..CLIENTS {
            publisher
                .client
                .publish(
                    format!("accounts/{ACCOUNT}/clients/c{i}/status"),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await
                .unwrap();
        }
        if round == ROUNDS / 2 {
            late = Some(SseFollower::open(&a, "late follower on A", ACCOUNT).await);
        }
        a.wait_events(ACCOUNT, CLIENTS * (round + 1)).await;
    }
    let late = late.unwrap();

    let events = exactly_events(&a, ACCOUNT, CLIENTS * ROUNDS).await;
    let series = "cradle_mqtt_messages_received_total{family=\"status\"}";
    let (ra, rb) = (a.metric(series).await, b.metric(series).await);
    assert!(ra > 0 && rb > 0, "both replicas took a share: {ra} + {rb}");
    assert_eq!(
        ra + rb,
        (CLIENTS * ROUNDS) as u64,
        "each status processed once"
    );
    let paged = paged_events(&b, ACCOUNT).await;
    assert_eq!(paged, events, "the pages walk the whole log");
    assert_eq!(paged_events(&a, ACCOUNT).await, paged, "the same log on A");
    let last = paged.last().unwrap()["position"].as_i64().unwrap();

    for follower in [&on_b, &on_a, &late] {
        let messages = follower.until_position(last).await;
        let streamed = follower.log_events(&messages, ACCOUNT);
        let positions = |events: &[serde_json::Value]| -> Vec<i64> {
            events
                .iter()
                .map(|e| e["position"].as_i64().unwrap())
                .collect()
        };
        let (got, all) = (positions(&streamed), positions(&paged));
        let missed: Vec<i64> = all.iter().filter(|p| !got.contains(p)).copied().collect();
        let extra: Vec<i64> = got.iter().filter(|p| !all.contains(p)).copied().collect();
        assert!(
            got == all,
            "{}: every event once, in log order: got {} of {}; missed positions {missed:?}; \
             positions not in the log {extra:?}",
            follower.name,
            got.len(),
            all.len()
        );
        assert_eq!(streamed, paged, "{}: the same events", follower.name);
    }
}
