//! Presence history against the real `cradle` binary: two devices of an account connect over
//! MQTT (one reports its status, one never does), drop, and the history routes tell what
//! happened: each connection with its start, end, reason and whether the device reported it;
//! availability with flaps; every client's state at an instant.

use cradle_testkit as common;

use std::time::Duration;

use common::{wait_for, Cradle, Device};
use rumqttc::{LastWill, MqttOptions, QoS};

const T: &str = "accounts/fam/clients/talker/status";

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn get(cradle: &Cradle, token: &str, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", cradle.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

async fn connected(cradle: &Cradle, token: &str, client: &str, want: bool) {
    wait_for(
        Duration::from_secs(10),
        &format!("{client} connected={want}"),
        || async {
            let (_, body) = get(cradle, token, "/v1/accounts/fam/clients").await;
            body["clients"]
                .as_array()?
                .iter()
                .any(|c| c["client_id"] == client && c["connected"] == want)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_routes_tell_each_connection_its_availability_and_the_state_at_an_instant() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("history.db").display());
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
    let (quiet_secret, talker_secret) = (issue("quiet"), issue("talker"));
    let token = common::cli(
        &db,
        &["credentials", "issue", "--account", "fam", "--token"],
    );
    let admin = (
        "CRADLE_ADMIN_TOKEN",
        "an-admin-token-of-some-length".to_string(),
    );
    let cradle = Cradle::spawn_ready(dir.path(), &db, &[admin]).await;

    let before = now_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A device that never says anything: the edge observes it.
    let (quiet, _) =
        common::RawV4::connect(cradle.mqtt_port, "quiet", Some(("fam", &quiet_secret)), 30).await;
    // A device that follows the contract: a Will and its own `connected`.
    let k = format!("talker-{}", now_millis());
    let mut options = MqttOptions::new("talker", "127.0.0.1", cradle.mqtt_port);
    options.set_credentials("fam", talker_secret);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_last_will(LastWill::new(
        T,
        common::status("disconnected", &k, now_millis(), Some("lost")),
        QoS::AtLeastOnce,
        true,
    ));
    let talker = Device::connect_with(options).await;
    talker
        .publish(T, common::status("connected", &k, now_millis(), None))
        .await;
    connected(&cradle, &token, "quiet", true).await;
    connected(&cradle, &token, "talker", true).await;
    wait_for(Duration::from_secs(10), "the talker's report", || async {
        let events = cradle.events("fam").await;
        events
            .iter()
            .any(|e| e["type"] == "connection.reported")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let during = now_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(quiet);
    talker.drop_connection().await;
    connected(&cradle, &token, "quiet", false).await;
    connected(&cradle, &token, "talker", false).await;
    let after = now_millis() + 10;

    // Each client's connection in the last day.
    let (code, talker) = get(&cradle, &token, "/v1/accounts/fam/clients/talker/history").await;
    assert_eq!(code, 200, "{talker}");
    let c = &talker["connections"].as_array().unwrap()[..];
    assert_eq!(c.len(), 1, "{talker}");
    assert_eq!(
        c[0]["connection_id"],
        k.as_str(),
        "known by the reported id"
    );
    assert_eq!(c[0]["reported"], true);
    assert_eq!(c[0]["observed"], true);
    assert_eq!(c[0]["end_reason"], "lost");
    assert_eq!(c[0]["open"], false);
    assert!(
        c[0]["duration_millis"].as_i64().unwrap() >= 1000,
        "{talker}"
    );
    assert!(talker["history_from_millis"].is_null());
    let (_, quiet) = get(&cradle, &token, "/v1/accounts/fam/clients/quiet/history").await;
    let c = &quiet["connections"].as_array().unwrap()[..];
    assert_eq!(c.len(), 1, "{quiet}");
    assert_eq!(c[0]["reported"], false, "only observed: {quiet}");
    assert_eq!(c[0]["observed"], true);
    assert!(c[0]["end_reason"].is_string(), "{quiet}");

    // Availability: both were online over a second, each a flap under the default minute.
    let window = format!("/v1/accounts/fam/availability?from={before}&to={after}");
    let (code, a) = get(&cradle, &token, &window).await;
    assert_eq!(code, 200, "{a}");
    assert_eq!(a["flap_threshold_millis"], 60_000);
    let clients = a["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2, "{a}");
    for c in clients {
        assert_eq!(c["connections"], 1, "{a}");
        assert_eq!(c["flaps"], 1, "{a}");
        assert!(c["online_millis"].as_i64().unwrap() >= 1000, "{a}");
        let pct = c["online_percent"].as_f64().unwrap();
        assert!(pct > 0.0 && pct < 100.0, "{a}");
    }
    let (_, a) = get(&cradle, &token, &format!("{window}&flap_ms=10")).await;
    assert!(
        a["clients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["flaps"] == 0),
        "{a}"
    );

    // The state at an instant: before (nobody yet), during (both online), after (both ended).
    let at = |t: i64| format!("/v1/accounts/fam/clients?at={t}");
    let (_, b) = get(&cradle, &token, &at(before)).await;
    assert_eq!(b["clients"].as_array().unwrap().len(), 0, "{b}");
    let (_, d) = get(&cradle, &token, &at(during)).await;
    assert_eq!(d["at"], during);
    let d = d["clients"].as_array().unwrap();
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d.iter().all(|c| c["connected"] == true), "{d:?}");
    let talker_then = d.iter().find(|c| c["client_id"] == "talker").unwrap();
    assert_eq!(talker_then["reported"], true);
    let (_, e) = get(&cradle, &token, &at(after)).await;
    let e = e["clients"].as_array().unwrap();
    assert!(
        e.iter()
            .all(|c| c["connected"] == false && c["last_disconnect_reason"].is_string()),
        "{e:?}"
    );

    // Bad windows and parameters are refused with a reason.
    for (path, field) in [
        (
            format!("/v1/accounts/fam/availability?from={after}&to={before}"),
            "to",
        ),
        (
            "/v1/accounts/fam/availability?from=soon".to_string(),
            "from",
        ),
        (
            "/v1/accounts/fam/clients/talker/history?since=1".to_string(),
            "query",
        ),
        ("/v1/accounts/fam/clients?at=-5".to_string(), "at"),
    ] {
        let (code, body) = get(&cradle, &token, &path).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_is_read_back_page_by_page_as_far_as_the_window_needs() {
    let dir = tempfile::tempdir().unwrap();
    let admin = (
        "CRADLE_ADMIN_TOKEN",
        "an-admin-token-of-some-length".to_string(),
    );
    let db = format!("sqlite://{}", dir.path().join("long.db").display());
    let cradle = Cradle::spawn_ready(dir.path(), &db, &[admin]).await;
    let device = Device::connect(cradle.mqtt_port, "publisher", None).await;
    let topic = "accounts/fam/clients/c0/status";
    // 150 connections of a second each, a minute apart: 300 events.
    for i in 0..150_i64 {
        let at = 1_000_000 + i * 60_000;
        let k = format!("k{i}");
        device
            .publish(topic, common::status("connected", &k, at, None))
            .await;
        device
            .publish(
                topic,
                common::status("disconnected", &k, at + 1_000, Some("clean")),
            )
            .await;
    }
    cradle.wait_events("fam", 300).await;
    let get = |path: String| {
        let url = format!("{}{path}", cradle.http);
        async move {
            let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            body
        }
    };
    // The whole log: every connection, in order.
    let all = get(format!(
        "/v1/accounts/fam/clients/c0/history?from=0&to={}",
        now_millis()
    ))
    .await;
    let c = all["connections"].as_array().unwrap();
    assert_eq!(c.len(), 150, "{all}");
    assert!(c
        .iter()
        .enumerate()
        .all(|(i, c)| c["connection_id"] == format!("k{i}")
            && c["duration_millis"] == 1_000
            && c["end_reason"] == "clean"));
    // A window in the middle: connections 100..109 (and nothing of the ones around it).
    let from = 1_000_000 + 100 * 60_000;
    let window = get(format!(
        "/v1/accounts/fam/clients/c0/history?from={from}&to={}",
        from + 10 * 60_000
    ))
    .await;
    let ids: Vec<&str> = window["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["connection_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, (100..110).map(|i| format!("k{i}")).collect::<Vec<_>>());
    // Its availability: ten seconds online in ten minutes, ten flaps.
    let a = get(format!(
        "/v1/accounts/fam/availability?from={from}&to={}",
        from + 10 * 60_000
    ))
    .await;
    let c0 = &a["clients"][0];
    assert_eq!(
        (
            c0["online_millis"].as_i64(),
            c0["connections"].as_i64(),
            c0["flaps"].as_i64()
        ),
        (Some(10_000), Some(10), Some(10)),
        "{a}"
    );
    assert_eq!(c0["online_percent"].as_f64(), Some(1.67));
    // At an instant inside connection 120, and between 120 and 121.
    let at = get(format!(
        "/v1/accounts/fam/clients?at={}",
        1_000_000 + 120 * 60_000 + 500
    ))
    .await;
    assert_eq!(at["clients"][0]["connection_id"], "k120", "{at}");
    assert_eq!(at["clients"][0]["connected"], true);
    let at = get(format!(
        "/v1/accounts/fam/clients?at={}",
        1_000_000 + 120 * 60_000 + 5_000
    ))
    .await;
    assert_eq!(at["clients"][0]["connected"], false, "{at}");
    assert_eq!(at["clients"][0]["last_disconnect_reason"], "clean");
}
