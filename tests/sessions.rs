//! Sessions end to end against the `cradle` binary with real MQTT clients: HTTP starts and
//! ends, MQTT announcements, clean and lost disconnects, the grace period, pending starts,
//! connection reuse, and the read models after each. Every scenario runs on SQLite and on
//! PostgreSQL (`scripts/test` provides one through `pg_virtualenv`).

use cradle_testkit as common;

use std::time::Duration;

use common::{status, wait_for, Cradle, Device};

const ACCOUNT: &str = "fam";
/// The grace period the tests configure (seconds).
const GRACE_SECS: u64 = 2;

async fn start_cradle(dir: &std::path::Path, postgres: bool) -> Option<Cradle> {
    let db = if postgres {
        let server = common::postgres_server_url()?;
        common::fresh_postgres_database(&server).await
    } else {
        format!("sqlite://{}", dir.join("s.db").display())
    };
    let config = dir.join("sessions.toml");
    std::fs::write(
        &config,
        format!("[sessions]\ngrace_secs = {GRACE_SECS}\npending_per_account = 4\n"),
    )
    .unwrap();
    Some(Cradle::spawn_ready(dir, &db, &[("CRADLE_CONFIG", config.display().to_string())]).await)
}

async fn put(c: &Cradle, session: &str, body: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .put(format!("{}/sessions/{session}", c.http))
        .header("X-Cradle-Account", ACCOUNT)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn delete(c: &Cradle, session: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .delete(format!("{}/sessions/{session}", c.http))
        .header("X-Cradle-Account", ACCOUNT)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

fn start_body(session: &str, client: Option<&str>, connection: &str, at: i64) -> String {
    match client {
        Some(c) => format!(
            r#"{{"session_id":"{session}","client_id":"{c}","connection_id":"{connection}","name":"Nursery","started_at_millis":{at}}}"#
        ),
        None => format!(
            r#"{{"session_id":"{session}","connection_id":"{connection}","name":"Nursery","started_at_millis":{at}}}"#
        ),
    }
}

/// The session events of the account, as (type, session_id, reason).
async fn session_events(c: &Cradle) -> Vec<(String, String, String)> {
    c.session_events(ACCOUNT, |e| {
        e["stream"].as_str().unwrap_or("").starts_with("session/")
    })
    .await
}

async fn wait_session_events(c: &Cradle, n: usize) -> Vec<(String, String, String)> {
    wait_for(Duration::from_secs(15), "session events", || async {
        let e = session_events(c).await;
        (e.len() >= n).then_some(e)
    })
    .await
}

async fn baby_stations(c: &Cradle) -> Vec<serde_json::Value> {
    c.get_json(&format!("/v1/accounts/{ACCOUNT}/baby-stations"), 200)
        .await["baby_stations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn started(s: &str) -> (String, String, String) {
    ("session.started".into(), s.into(), "".into())
}

fn ended(s: &str, reason: &str) -> (String, String, String) {
    ("session.ended".into(), s.into(), reason.into())
}

/// A baby station connected over MQTT with status `connected` on `connection`.
async fn station(c: &Cradle, client: &str, connection: &str) -> Device {
    let d = Device::connect(c.mqtt_port, client, None).await;
    c.report_connected(d, ACCOUNT, client, connection).await
}

async fn http_start_then_mqtt_announcement_is_one_start(c: &Cradle) {
    let d = station(c, "baby1", "k1").await;
    let (code, body) = put(c, "s1", &start_body("s1", Some("baby1"), "k1", 10_000)).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"], "started");
    // The station announces the same session itself; and the PWA retries its PUT.
    d.publish(
        &format!("accounts/{ACCOUNT}/baby_stations/baby1"),
        start_body("s1", Some("baby1"), "k1", 10_000),
    )
    .await;
    let (code, body) = put(c, "s1", &start_body("s1", Some("baby1"), "k1", 10_000)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "already_started");
    wait_for(
        Duration::from_secs(10),
        "the announcement handled",
        || async {
            let m = c
                .metric("cradle_session_commands_ignored_total{reason=\"duplicate_start\"}")
                .await;
            (m >= 2).then_some(())
        },
    )
    .await;
    // Another station cannot end baby1's session over MQTT.
    let other = Device::connect(c.mqtt_port, "baby7", None).await;
    other
        .publish(
            &format!("accounts/{ACCOUNT}/baby_stations/baby7"),
            r#"{"session_id":"s1","ended_at_millis":11000}"#,
        )
        .await;
    wait_for(Duration::from_secs(10), "the foreign end dropped", || async {
        let n = c
            .metric("cradle_mqtt_messages_dropped_total{family=\"stations\",reason=\"client_mismatch\"}")
            .await;
        (n >= 1).then_some(())
    })
    .await;
    assert_eq!(session_events(c).await, vec![started("s1")]);
    let list = baby_stations(c).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["session_id"], "s1");
    assert_eq!(list[0]["client_id"], "baby1");
    assert_eq!(list[0]["connection_id"], "k1");
    assert_eq!(list[0]["name"], "Nursery");
    assert_eq!(list[0]["started_at_millis"], 10_000);
    assert_eq!(list[0]["connected"], true);
}

async fn start_then_immediate_delete_records_both_in_order(c: &Cradle) {
    let (code, _) = put(c, "s2", &start_body("s2", Some("baby9"), "k9", 20_000)).await;
    assert_eq!(code, 201);
    let (code, body) = delete(c, "s2").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ended");
    let (code, body) = delete(c, "s2").await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("already_ended"))
    );
    // A late start after the end is refused, not revived.
    let (code, body) = put(c, "s2", &start_body("s2", Some("baby9"), "k9", 20_000)).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "session_ended");
    assert_eq!(
        session_events(c).await,
        vec![started("s2"), ended("s2", "explicit")]
    );
    assert!(baby_stations(c).await.is_empty());
    // The station without a status row was listed as not connected before it ended (no 500).
}

async fn a_clean_disconnect_ends_the_session(c: &Cradle) {
    let d = station(c, "baby1", "k1").await;
    let (code, _) = put(c, "s3", &start_body("s3", Some("baby1"), "k1", 30_000)).await;
    assert_eq!(code, 201);
    d.publish(
        &format!("accounts/{ACCOUNT}/clients/baby1/status"),
        status("disconnected", "k1", 40_000, Some("clean")),
    )
    .await;
    let events = wait_session_events(c, 2).await;
    assert_eq!(events, vec![started("s3"), ended("s3", "clean_disconnect")]);
    let ev = c.events(ACCOUNT).await;
    let end = ev
        .iter()
        .rev()
        .find(|e| e["type"] == "session.ended")
        .unwrap();
    assert_eq!(end["data"]["duration_millis"], 10_000);
    assert!(baby_stations(c).await.is_empty());
}

async fn a_lost_connection_ends_the_session_only_after_the_grace_period(c: &Cradle) {
    // Lost, then back within the grace period: the session goes on.
    let d = station(c, "baby1", "k1").await;
    let (code, _) = put(c, "s4", &start_body("s4", Some("baby1"), "k1", 50_000)).await;
    assert_eq!(code, 201);
    d.drop_connection().await; // the edge reports `lost`
    wait_for(Duration::from_secs(10), "the loss recorded", || async {
        c.client(ACCOUNT, "baby1")
            .await
            .filter(|r| r["connected"] == false)
    })
    .await;
    let list = baby_stations(c).await;
    assert_eq!(list.len(), 1, "still listed while away");
    assert_eq!(list[0]["connected"], false);
    let _back = station(c, "baby1", "k2").await;
    tokio::time::sleep(Duration::from_secs(GRACE_SECS + 2)).await;
    assert_eq!(session_events(c).await, vec![started("s4")]);
    assert_eq!(baby_stations(c).await[0]["connected"], true);

    // Lost and not back: ended once the grace period passed.
    let d = station(c, "baby2", "m1").await;
    let (code, _) = put(c, "s5", &start_body("s5", Some("baby2"), "m1", 60_000)).await;
    assert_eq!(code, 201);
    d.drop_connection().await;
    let events = wait_session_events(c, 3).await;
    assert_eq!(events[2], ended("s5", "grace_expired"));
    assert_eq!(baby_stations(c).await.len(), 1);
}

async fn a_pending_start_waits_for_its_connection(c: &Cradle) {
    // No client id and an unknown connection: accepted, parked, nothing recorded.
    let (code, body) = put(c, "s6", &start_body("s6", None, "late-1", 70_000)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "pending");
    // A pending start that is deleted leaves nothing behind.
    let (code, _) = put(c, "s7", &start_body("s7", None, "late-2", 70_000)).await;
    assert_eq!(code, 202);
    let (code, body) = delete(c, "s7").await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("pending_removed"))
    );
    assert!(session_events(c).await.is_empty());
    // The connection appears: the start is applied with the station's client id.
    let _d = station(c, "baby3", "late-1").await;
    let events = wait_session_events(c, 1).await;
    assert_eq!(events, vec![started("s6")]);
    let list = baby_stations(c).await;
    assert_eq!(list[0]["client_id"], "baby3");
    assert_eq!(list[0]["session_id"], "s6");
    // A start whose connection is already known resolves at once.
    let (code, _) = put(c, "s8", &start_body("s8", None, "late-1", 80_000)).await;
    assert_eq!(code, 201);
    assert_eq!(
        c.metric("cradle_session_pending_total{outcome=\"parked\"}")
            .await,
        2
    );
}

async fn a_new_session_on_a_reused_connection_replaces_the_old(c: &Cradle) {
    let _d = station(c, "baby1", "k1").await;
    assert_eq!(
        put(c, "r1", &start_body("r1", Some("baby1"), "k1", 90_000))
            .await
            .0,
        201
    );
    assert_eq!(
        put(c, "r2", &start_body("r2", Some("baby1"), "k1", 95_000))
            .await
            .0,
        201
    );
    assert_eq!(
        session_events(c).await,
        vec![started("r1"), ended("r1", "replaced"), started("r2")]
    );
    let list = baby_stations(c).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["session_id"], "r2");
    // Usage: r1 ran 5 s, r2 is open and counted up to `to`.
    let u = c
        .get_json(
            &format!("/v1/accounts/{ACCOUNT}/usage?from=0&to=100000"),
            200,
        )
        .await;
    assert_eq!(u["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(u["sessions"][0]["duration_millis"], 5_000);
    assert_eq!(u["sessions"][1]["open"], true);
    assert_eq!(u["sessions"][1]["duration_millis"], 5_000);
    assert_eq!(u["clients"][0]["client_id"], "baby1");
    assert_eq!(u["total_millis"], 10_000);
}

async fn parent_stations_are_listed_from_their_announcements(c: &Cradle) {
    let p = Device::connect(c.mqtt_port, "mum", None).await;
    p.publish(
        &format!("accounts/{ACCOUNT}/parent_stations/mum"),
        r#"{"name":"Mum's phone"}"#,
    )
    .await;
    p.publish(
        &format!("accounts/{ACCOUNT}/parent_stations/dad"),
        "not json",
    )
    .await;
    let list = wait_for(Duration::from_secs(10), "parent station", || async {
        let body = c
            .get_json(&format!("/v1/accounts/{ACCOUNT}/parent-stations"), 200)
            .await;
        let list = body["parent_stations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["client_id"], "mum");
    assert_eq!(list[0]["announcement"]["name"], "Mum's phone");
    wait_for(Duration::from_secs(10), "the bad one counted", || async {
        let n = c
            .metric("cradle_mqtt_messages_dropped_total{family=\"stations\",reason=\"invalid_payload\"}")
            .await;
        (n >= 1).then_some(())
    })
    .await;
    p.publish(&format!("accounts/{ACCOUNT}/parent_stations/mum"), "")
        .await;
    wait_for(Duration::from_secs(10), "withdrawn", || async {
        let body = c
            .get_json(&format!("/v1/accounts/{ACCOUNT}/parent-stations"), 200)
            .await;
        body["parent_stations"]
            .as_array()
            .is_some_and(|l| l.is_empty())
            .then_some(())
    })
    .await;
}

/// Issue 15: pending starts live in the store. One parked before a restart (SIGTERM, start
/// again on the same database) is applied when its connection appears afterwards; the
/// bound per account still holds across the restart.
async fn a_pending_start_survives_a_restart(dir: &std::path::Path, postgres: bool) {
    let Some(mut first) = start_cradle(dir, postgres).await else {
        return;
    };
    let (code, _) = put(
        &first,
        "kept",
        &start_body("kept", None, "after-restart", 5),
    )
    .await;
    assert_eq!(code, 202);
    assert!(first.terminate().success(), "{}", first.log());
    let config = dir.join("sessions.toml");
    let env = [("CRADLE_CONFIG", config.display().to_string())];
    let second = Cradle::spawn_ready(dir, &first.database_url, &env).await;
    let _d = station(&second, "baby9", "after-restart").await;
    let events = wait_session_events(&second, 1).await;
    assert_eq!(events, vec![started("kept")]);
    assert_eq!(baby_stations(&second).await[0]["client_id"], "baby9");
    // Applied once: the parked start is gone (a DELETE now ends the session itself).
    let (code, body) = delete(&second, "kept").await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("ended")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_start_survives_a_restart_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_pending_start_survives_a_restart(dir.path(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_start_survives_a_restart_postgres() {
    let dir = tempfile::tempdir().unwrap();
    a_pending_start_survives_a_restart(dir.path(), true).await;
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let c = start_cradle(dir.path(), false).await.unwrap();
                super::$name(&c).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let dir = tempfile::tempdir().unwrap();
                let Some(c) = start_cradle(dir.path(), true).await else {
                    return;
                };
                super::$name(&c).await;
            }
        }
    };
}

on_both!(http_start_then_mqtt_announcement_is_one_start);
on_both!(start_then_immediate_delete_records_both_in_order);
on_both!(a_clean_disconnect_ends_the_session);
on_both!(a_lost_connection_ends_the_session_only_after_the_grace_period);
on_both!(a_pending_start_waits_for_its_connection);
on_both!(a_new_session_on_a_reused_connection_replaces_the_old);
on_both!(parent_stations_are_listed_from_their_announcements);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_4xx_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let c = start_cradle(dir.path(), false).await.unwrap();
    let ok = start_body("v1", Some("b"), "k", 1);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("v1", "{".into(), 400, "body"),
        ("v1", "[]".into(), 400, "body"),
        ("v2", ok.clone(), 400, "session_id"),
        ("v1", r#"{"session_id":"v1","connection_id":"k","name":"n"}"#.into(), 400, "started_at_millis"),
        ("v1", r#"{"session_id":"v1","connection_id":"k","name":"n","started_at_millis":0}"#.into(), 400, "started_at_millis"),
        ("v1", r#"{"session_id":"v1","connection_id":"k","name":"n","started_at_millis":-1}"#.into(), 400, "started_at_millis"),
        ("v1", r#"{"id":"v1","host_connection_id":"k","name":"n"}"#.into(), 400, "started_at"),
        ("v1", r#"{"session_id":"v1","connection_id":"k","name":"","started_at_millis":1}"#.into(), 400, "name"),
        ("v1", format!(r#"{{"session_id":"v1","connection_id":"k","name":"{}","started_at_millis":1}}"#, "n".repeat(201)), 400, "name"),
        ("v1", r#"{"session_id":"v1","connection_id":"k/+","name":"n","started_at_millis":1}"#.into(), 400, "connection_id"),
        ("v1", r##"{"session_id":"v1","client_id":"#","connection_id":"k","name":"n","started_at_millis":1}"##.into(), 400, "client_id"),
        ("bad%20id", ok.clone(), 400, "session_id"),
    ];
    for (path, body, code, field) in cases {
        let (got, json) = put(&c, path, &body).await;
        assert_eq!(got, code, "{path} {body}: {json}");
        assert_eq!(json["error"]["field"], field, "{path} {body}: {json}");
    }
    // Larger than http.max_body_bytes (64 KiB): 413 with a JSON body, never read whole.
    let big = format!(
        r#"{{"session_id":"v1","connection_id":"k","name":"n","started_at_millis":1,"pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (got, json) = put(&c, "v1", &big).await;
    assert_eq!(got, 413, "{json}");
    assert_eq!(json["error"]["code"], "payload_too_large");
    // Ending an unknown session: 404.
    let (got, json) = delete(&c, "nope").await;
    assert_eq!(got, 404);
    assert_eq!(json["error"]["code"], "session_not_found");
    // Open mode needs the account header.
    let r = reqwest::Client::new()
        .put(format!("{}/sessions/v1", c.http))
        .body(ok.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"]["field"], "X-Cradle-Account");
    // Usage parameters.
    c.get_json(&format!("/v1/accounts/{ACCOUNT}/usage?from=10&to=5"), 400)
        .await;
    c.get_json(&format!("/v1/accounts/{ACCOUNT}/usage?from=x"), 400)
        .await;
    // Nothing above recorded anything.
    assert!(session_events(&c).await.is_empty());
    // The legacy shape is accepted.
    let (got, json) = put(
        &c,
        "legacy-1",
        r#"{"id":"legacy-1","host_connection_id":"k","name":"Crib","started_at":"2026-11-22T20:00:00Z"}"#,
    )
    .await;
    assert_eq!(
        got, 202,
        "unknown connection, no client id: pending ({json})"
    );
    // The pending queue is bounded per account (4 in this test's config): the least recently
    // used start is evicted, logged and counted.
    for i in 0..5 {
        let id = format!("p{i}");
        let (got, _) = put(&c, &id, &start_body(&id, None, &format!("gone-{i}"), 5)).await;
        assert_eq!(got, 202);
    }
    assert_eq!(
        c.metric("cradle_session_pending_total{outcome=\"evicted\"}")
            .await,
        2
    );
    // legacy-1 was the oldest: evicted, so its DELETE finds nothing.
    assert_eq!(delete(&c, "legacy-1").await.0, 404);
    assert!(c.log().contains("pending session start evicted"));
}
