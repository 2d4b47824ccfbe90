//! The status pipeline end to end: the real `cradle` binary on free ports, real rumqttc
//! devices, the HTTP API and `/metrics`.

use cradle_testkit as common;

use std::time::Duration;

use common::{status, Cradle, Device};

const ACCOUNT: &str = "acct-1";

fn topic(client: &str) -> String {
    format!("accounts/{ACCOUNT}/clients/{client}/status")
}

/// The edge records the connection when it accepts it (under its status Will's id), the
/// device's `connected` confirms it, the Will ends it: one connection, three events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_status_and_the_will_become_one_connection_reported_and_ended() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;

    let will = status("disconnected", "k1", 1_000, Some("lost"));
    let device = Device::connect(cradle.mqtt_port, "dev-1", Some((&topic("dev-1"), will))).await;
    device
        .publish(&topic("dev-1"), status("connected", "k1", 1_000, None))
        .await;
    let events = cradle.wait_events(ACCOUNT, 2).await;
    assert_eq!(events[0]["type"], "connection.connected");
    assert_eq!(events[0]["stream"], "connection/acct-1/dev-1");
    // Under the Will's id, whether the edge's observation or the report came first.
    assert_eq!(events[0]["data"]["connection_id"], "k1");
    assert_eq!(events[1]["type"], "connection.reported");
    assert_eq!(events[1]["data"]["reported_connection_id"], "k1");
    assert_eq!(events[1]["data"]["at_millis"], 1000, "the device's clock");
    let row = cradle.client(ACCOUNT, "dev-1").await.expect("client row");
    assert_eq!(row["connected"], true);
    assert_eq!(row["connection_id"], "k1");
    assert_eq!(
        row["since_millis"], events[0]["data"]["at_millis"],
        "since its first record"
    );

    device.drop_connection().await;
    let events = cradle.wait_events(ACCOUNT, 3).await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["type"], "connection.disconnected");
    assert_eq!(events[2]["data"]["reason"], "lost");
    assert_eq!(
        events[2]["data"]["edge_connection_id"],
        events[0]["data"]["edge_connection_id"]
    );
    assert!(events[2]["position"].as_i64() > events[1]["position"].as_i64());
    let row = cradle.client(ACCOUNT, "dev-1").await.unwrap();
    assert_eq!(row["connected"], false);
    assert_eq!(row["last_disconnect_reason"], "lost");

    // Settle: nothing else arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cradle.events(ACCOUNT).await.len(), 3);
    assert_eq!(
        cradle
            .metric("cradle_events_appended_total{type=\"connection.connected\"}")
            .await,
        1
    );
    assert_eq!(
        cradle
            .metric("cradle_events_appended_total{type=\"connection.reported\"}")
            .await,
        1
    );
    assert_eq!(cradle.metric("cradle_connected_clients").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_statuses_append_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let a = Device::connect(cradle.mqtt_port, "pub-a", None).await;
    let b = Device::connect(cradle.mqtt_port, "pub-b", None).await;
    let payload = status("connected", "k1", 5_000, None);
    for _ in 0..3 {
        a.publish(&topic("dev-2"), payload.clone()).await;
        b.publish(&topic("dev-2"), payload.clone()).await;
    }
    common::wait_for(Duration::from_secs(10), "six statuses handled", || async {
        let n = cradle
            .metric("cradle_decider_outcomes_total{decider=\"connection\",outcome=\"applied\"}")
            .await
            + cradle
                .metric(
                    "cradle_decider_outcomes_total{decider=\"connection\",outcome=\"duplicate\"}",
                )
                .await;
        (n == 6).then_some(())
    })
    .await;
    assert_eq!(cradle.events(ACCOUNT).await.len(), 1);
    assert_eq!(
        cradle
            .metric("cradle_decider_outcomes_total{decider=\"connection\",outcome=\"duplicate\"}")
            .await,
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_will_after_a_reconnect_does_not_mark_the_client_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let d = Device::connect(cradle.mqtt_port, "pub", None).await;
    d.publish(&topic("dev-3"), status("connected", "k1", 1_000, None))
        .await;
    cradle.wait_events(ACCOUNT, 1).await;
    d.publish(&topic("dev-3"), status("connected", "k2", 2_000, None))
        .await;
    let events = cradle.wait_events(ACCOUNT, 3).await;
    assert_eq!(events[1]["type"], "connection.disconnected");
    assert_eq!(events[1]["data"]["connection_id"], "k1");
    assert_eq!(events[1]["data"]["reason"], "takeover");
    assert_eq!(events[2]["type"], "connection.connected");
    assert_eq!(events[2]["data"]["connection_id"], "k2");

    // The old connection's Will arrives late.
    d.publish(
        &topic("dev-3"),
        status("disconnected", "k1", 2_500, Some("lost")),
    )
    .await;
    common::wait_for(
        Duration::from_secs(10),
        "the late will to be decided",
        || async {
            let n = cradle
                .metric(
                    "cradle_decider_outcomes_total{decider=\"connection\",outcome=\"duplicate\"}",
                )
                .await
                + cradle
                    .metric(
                        "cradle_decider_outcomes_total{decider=\"connection\",outcome=\"stale\"}",
                    )
                    .await;
            (n >= 1).then_some(())
        },
    )
    .await;
    assert_eq!(cradle.events(ACCOUNT).await.len(), 3);
    let row = cradle.client(ACCOUNT, "dev-3").await.unwrap();
    assert_eq!(row["connected"], true);
    assert_eq!(row["connection_id"], "k2");

    // A reconnect after a real disconnect starts a new connection.
    d.publish(
        &topic("dev-3"),
        status("disconnected", "k2", 3_000, Some("clean")),
    )
    .await;
    d.publish(&topic("dev-3"), status("connected", "k3", 4_000, None))
        .await;
    let events = cradle.wait_events(ACCOUNT, 5).await;
    assert_eq!(events[3]["data"]["reason"], "clean");
    assert_eq!(events[4]["data"]["connection_id"], "k3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dropped_counted_and_the_service_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let d = Device::connect(cradle.mqtt_port, "pub", None).await;
    let t = topic("dev-4");
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (t.clone(), b"{not json".to_vec(), "malformed_json"),
        (
            t.clone(),
            br#"{"type":"exploded","connection_id":"k","at_millis":1}"#.to_vec(),
            "unknown_type",
        ),
        (
            t.clone(),
            br#"{"type":"connected","connection_id":"k"}"#.to_vec(),
            "invalid_at_millis",
        ),
        (
            t.clone(),
            br#"{"type":"connected","connection_id":"k","at_millis":-5}"#.to_vec(),
            "invalid_at_millis",
        ),
        (
            t.clone(),
            br#"{"type":"connected","connection_id":"a+b","at_millis":5}"#.to_vec(),
            "invalid_connection_id",
        ),
        (
            t.clone(),
            br#"{"type":"disconnected","connection_id":"k","at_millis":5,"reason":"x"}"#.to_vec(),
            "invalid_reason",
        ),
        (
            format!("accounts/{ACCOUNT}/clients/bad id/status"),
            status("connected", "k", 5, None).into_bytes(),
            "invalid_id",
        ),
        (t.clone(), vec![b' '; 5_000], "oversize"),
    ];
    for (topic, payload, _) in &cases {
        d.client
            .publish(
                topic.as_str(),
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.clone(),
            )
            .await
            .unwrap();
    }
    // A valid status after the poison still lands.
    d.publish(&t, status("connected", "k9", 9_000, None)).await;
    let events = cradle.wait_events(ACCOUNT, 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["connection_id"], "k9");
    let metrics = cradle.metrics().await;
    for (_, _, reason) in &cases {
        let series =
            format!("cradle_mqtt_messages_dropped_total{{family=\"status\",reason=\"{reason}\"}}");
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
            .unwrap_or(0);
        assert!(value >= 1, "{series} not counted:\n{metrics}");
    }
    assert!(cradle.log().contains("status message dropped"));
    assert_eq!(cradle.get_json("/readyz", 200).await["status"], "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_api_pages_by_position_and_refuses_bad_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let d = Device::connect(cradle.mqtt_port, "pub", None).await;
    for i in 0..5 {
        d.publish(
            &topic(&format!("c{i}")),
            status("connected", "k", 100 + i, None),
        )
        .await;
    }
    // Another account's event must never show up here.
    d.publish(
        "accounts/other/clients/c0/status",
        status("connected", "k", 1, None),
    )
    .await;
    cradle.wait_events(ACCOUNT, 5).await;
    cradle.wait_events("other", 1).await;

    let page = cradle
        .get_json(
            &format!("/v1/accounts/{ACCOUNT}/events?after=0&limit=2"),
            200,
        )
        .await;
    let first = page["events"].as_array().unwrap().clone();
    assert_eq!(first.len(), 2);
    let next = page["next_after"].as_i64().unwrap();
    assert_eq!(next, first[1]["position"].as_i64().unwrap());
    let page = cradle
        .get_json(
            &format!("/v1/accounts/{ACCOUNT}/events?after={next}&limit=10"),
            200,
        )
        .await;
    let rest = page["events"].as_array().unwrap();
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|e| e["stream"]
        .as_str()
        .unwrap()
        .starts_with("connection/acct-1/")));
    assert!(rest[0]["position"].as_i64().unwrap() > next);

    for (query, field) in [
        ("after=-1", "after"),
        ("after=x", "after"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
    ] {
        let body = cradle
            .get_json(&format!("/v1/accounts/{ACCOUNT}/events?{query}"), 400)
            .await;
        assert_eq!(body["error"]["code"], "invalid_parameter", "{query}");
        assert_eq!(body["error"]["field"], field, "{query}");
    }
    let body = cradle.get_json("/v1/accounts/bad%20id/clients", 400).await;
    assert_eq!(body["error"]["field"], "account_id");
    let body = cradle.get_json("/v1/nothing", 404).await;
    assert_eq!(body["error"]["code"], "not_found");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/accounts/{ACCOUNT}/events", cradle.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    assert_eq!(cradle.get_json("/healthz", 200).await["status"], "ok");
    let ready = cradle.get_json("/readyz", 200).await;
    assert_eq!(ready["store"], "ok");
    assert_eq!(ready["broker"], "ok");
    let metrics = cradle.metrics().await;
    for name in [
        "cradle_mqtt_messages_received_total",
        "cradle_mqtt_messages_dropped_total",
        "cradle_events_appended_total",
        "cradle_decider_outcomes_total",
        "cradle_connected_clients",
        "cradle_bus_connected 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_5_and_websocket_listeners_accept_clients() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    // MQTT 5 on its own port.
    let mut options = rumqttc::v5::MqttOptions::new("v5-dev", "127.0.0.1", cradle.v5_port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    client
        .publish(
            topic("v5-dev"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            status("connected", "k5", 77, None),
        )
        .await
        .unwrap();
    let pump = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let events = cradle.wait_events(ACCOUNT, 1).await;
    assert_eq!(events[0]["data"]["client_id"], "v5-dev");
    pump.abort();
    // MQTT over WebSocket: the upgrade answers with the `mqtt` subprotocol.
    let response = common::upgrade_request(&format!("http://127.0.0.1:{}/mqtt", cradle.ws_port))
        .header("Sec-WebSocket-Protocol", "mqtt")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 101);
}

/// The events route filters by client and by type, and refuses a parameter it does not know
/// (a `wait=` or a misspelled filter is an error, not silently a full page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_route_filters_by_client_and_type_and_refuses_unknown_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    for (client, k) in [("dev-1", "k1"), ("dev-2", "k2")] {
        let will = status("disconnected", k, 1_000, Some("lost"));
        let device = Device::connect(cradle.mqtt_port, client, Some((&topic(client), will))).await;
        device
            .publish(&topic(client), status("connected", k, 1_000, None))
            .await;
        cradle
            .wait_events(ACCOUNT, if client == "dev-1" { 2 } else { 4 })
            .await;
        device.drop_connection().await;
    }
    cradle.wait_events(ACCOUNT, 6).await;
    let page = |query: &str| {
        let url = format!("{}/v1/accounts/{ACCOUNT}/events{query}", cradle.http);
        async move {
            let r = reqwest::get(url).await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status_code, body) = page("?client_id=dev-1").await;
    assert_eq!(status_code, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{body}");
    assert!(events.iter().all(|e| e["data"]["client_id"] == "dev-1"));
    let (_, body) = page("?type=connection.disconnected").await;
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{body}");
    assert!(events
        .iter()
        .all(|e| e["type"] == "connection.disconnected"));
    let (_, body) =
        page("?type=connection.connected,connection.disconnected&client_id=dev-2").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 2, "{body}");
    // Paging follows the filtered log.
    let (_, first) = page("?client_id=dev-2&limit=1").await;
    let after = first["next_after"].as_i64().unwrap();
    let (_, rest) = page(&format!("?client_id=dev-2&after={after}")).await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 2, "{rest}");

    for bad in [
        "?wait=5",
        "?clientid=dev-1",
        "?type=Connection",
        "?client_id=a/b",
    ] {
        let (status_code, body) = page(bad).await;
        assert_eq!(status_code, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{bad}: {body}");
    }
    let (_, body) = page("?wait=5").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("wait"),
        "names the parameter: {body}"
    );
}
