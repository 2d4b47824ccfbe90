//! The live event stream (`…/events/stream`, Server-Sent Events) against the real `cradle`
//! binary: resume after a drop with no gap and no duplicate, on SQLite and (when there is one)
//! PostgreSQL; who may follow, with which token, how many at once; heartbeats; filters.

use cradle_testkit as common;

use std::collections::HashSet;
use std::time::Duration;

use common::sse::Sse;
use common::{status, Cradle, Device};

const ACCOUNT: &str = "fam";
const CLIENTS: usize = 10;

fn topic(client: &str) -> String {
    format!("accounts/{ACCOUNT}/clients/{client}/status")
}

/// Publishes `n` statuses (QoS 1) over `CLIENTS` clients: each client connects and
/// disconnects in turn with a new connection id, so every status records one event.
async fn publish_statuses(device: &Device, n: usize) {
    for i in 0..n {
        let client = format!("c{}", i % CLIENTS);
        let round = i / CLIENTS;
        let k = format!("{client}-k{}", round / 2);
        let at = 1_000_000 + i as i64;
        let payload = if round % 2 == 0 {
            status("connected", &k, at, None)
        } else {
            status("disconnected", &k, at, Some("clean"))
        };
        device.publish(&topic(&client), payload).await;
        if i % 50 == 49 {
            // A steady trickle, so the stream is followed while events commit.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads events from `sse` into `got` until it holds `until` of them; `false` if the stream
/// ended first.
async fn read_until(sse: &mut Sse, got: &mut Vec<serde_json::Value>, until: usize) -> bool {
    while got.len() < until {
        let Some(m) = sse.next_event(Duration::from_secs(20)).await else {
            return false;
        };
        match m.event.as_str() {
            "" => {
                let event = m.json();
                assert_eq!(
                    m.id.as_deref(),
                    Some(event["position"].to_string().as_str()),
                    "every event's id is its position"
                );
                got.push(event);
            }
            "live" => {}
            other => panic!("unexpected `{other}`: {}", m.data),
        }
    }
    true
}

async fn cut_and_resumed_twice(cradle: &Cradle) {
    let url = format!("{}/v1/accounts/{ACCOUNT}/events/stream", cradle.http);
    let device = Device::connect(cradle.mqtt_port, "publisher", None).await;
    let mut got = Vec::new();
    // From the start of the log; the statuses commit while it is followed.
    let mut sse = Sse::open(&format!("{url}?after=0"), &[]).await;
    let publishing = tokio::spawn(async move {
        publish_statuses(&device, 1000).await;
        device
    });
    for until in [300, 650] {
        assert!(
            read_until(&mut sse, &mut got, until).await,
            "stream ended early"
        );
        // Cut: the connection drops, the follower resumes from the last id it saw.
        drop(sse);
        let last = got.last().unwrap()["position"].to_string();
        sse = Sse::open(&url, &[("Last-Event-ID", last)]).await;
    }
    assert!(
        read_until(&mut sse, &mut got, 1000).await,
        "only {} events arrived",
        got.len()
    );
    let _device = publishing.await.unwrap();
    let positions: Vec<i64> = got
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions in order, none twice: {positions:?}"
    );
    let identities: HashSet<String> = got
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["type"], e["data"]["client_id"], e["data"]["connection_id"]
            )
        })
        .collect();
    assert_eq!(identities.len(), 1000, "every status once");
    assert!(got.iter().all(|e| e["account_id"] == ACCOUNT));
    // Nothing more than the 1,000 (a duplicate would be a 1,001st).
    assert!(sse.next_event(Duration::from_millis(500)).await.is_none());
    // The paged events route agrees.
    let page: serde_json::Value = reqwest::get(format!(
        "{}/v1/accounts/{ACCOUNT}/events?after=0&limit=1000",
        cradle.http
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let paged: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(paged, positions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_and_resumed_twice_gets_every_event_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    cut_and_resumed_twice(&cradle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_follower_cut_and_resumed_twice_gets_every_event_once_and_in_order() {
    let Some(server) = common::postgres_server_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = common::fresh_postgres_database(&server).await;
    let cradle = Cradle::start(dir.path(), Some(db)).await;
    cut_and_resumed_twice(&cradle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_need_a_token_of_their_account_and_are_bounded_and_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("stream.db").display());
    common::cli(&db, &["accounts", "create", ACCOUNT]);
    common::cli(&db, &["accounts", "create", "other"]);
    let token = common::cli(
        &db,
        &["credentials", "issue", "--account", ACCOUNT, "--token"],
    );
    let other = common::cli(
        &db,
        &["credentials", "issue", "--account", "other", "--token"],
    );
    let config = dir.path().join("stream.toml");
    std::fs::write(&config, "[stream]\nmax_followers = 2\nheartbeat_ms = 200\n").unwrap();
    let admin = "an-admin-token-of-some-length".to_string();
    let cradle = Cradle::spawn_ready(
        dir.path(),
        &db,
        &[
            ("CRADLE_CONFIG", config.display().to_string()),
            ("CRADLE_ADMIN_TOKEN", admin.clone()),
            // As many HTTP connections as followers: they must not take them.
            ("CRADLE_HTTP_MAX_CONNECTIONS", "2".to_string()),
        ],
    )
    .await;
    let url = format!("{}/v1/accounts/{ACCOUNT}/events/stream", cradle.http);
    let get = |url: String, bearer: Option<String>| async move {
        let mut r = reqwest::Client::new().get(url);
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (
            status,
            r.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    };
    // No token, a bad one, another account's, and an unknown parameter: refused with a reason.
    assert_eq!(get(url.clone(), None).await.0, 401);
    assert_eq!(get(format!("{url}?token=x.y"), None).await.0, 401);
    let (code, body) = get(url.clone(), Some(other.clone())).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = get(format!("{url}?wait=5"), Some(token.clone())).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
    // An account token does not follow every account.
    let (code, _) = get(
        format!("{}/v1/events/stream", cradle.http),
        Some(token.clone()),
    )
    .await;
    assert_eq!(code, 403);

    // The token as a query parameter (what an EventSource can send); heartbeats arrive.
    let mut first = Sse::open(&format!("{url}?token={token}"), &[]).await;
    let live = first.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(live.event, "live");
    let beat = first.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(beat.comment.as_deref(), Some("keep-alive"), "{beat:?}");
    let _second = Sse::open(&url, &[("authorization", format!("Bearer {token}"))]).await;
    // Two followers stream, yet the API still answers: they left http.max_connections' count.
    let (code, body) = get(
        format!("{}/v1/accounts/{ACCOUNT}/clients", cradle.http),
        Some(token.clone()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // The third follower is over stream.max_followers; it is counted.
    let (code, body) = get(url.clone(), Some(token.clone())).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("too_many_followers")),
        "{body}"
    );
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", cradle.http))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("cradle_stream_followers 2\n"), "{metrics}");
    assert!(
        metrics.contains("cradle_stream_followers_refused_total 1\n"),
        "{metrics}"
    );
    // A follower leaving frees its place.
    drop(first);
    common::wait_for(Duration::from_secs(5), "a free follower place", || {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gets_only_the_client_and_types_it_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let cradle = Cradle::start(dir.path(), None).await;
    let url = format!(
        "{}/v1/accounts/{ACCOUNT}/events/stream?after=0&client_id=c3&type=connection.disconnected",
        cradle.http
    );
    let mut sse = Sse::open(&url, &[]).await;
    let device = Device::connect(cradle.mqtt_port, "publisher", None).await;
    publish_statuses(&device, 100).await;
    let mut got = Vec::new();
    assert!(read_until(&mut sse, &mut got, 5).await);
    assert!(got.iter().all(|e| e["type"] == "connection.disconnected"
        && e["data"]["client_id"] == "c3"
        && e["stream"] == format!("connection/{ACCOUNT}/c3")));
    assert!(
        sse.next_event(Duration::from_millis(500)).await.is_none(),
        "nothing else"
    );
}
