//! Hostile HTTP clients against the real binary (issue 12, findings 5 and 6): unfinished
//! headers, trickled bodies, too many connections, a huge declared body, an upgrade offering
//! many wrong secrets, and the verified-token cache.

use cradle_testkit as common;

use std::time::{Duration, Instant};

use common::{cli, Cradle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn db(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("hostile.db").display())
}

fn addr(c: &Cradle) -> String {
    c.http.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `limit` passes); returns what was read
/// and whether the connection was closed by then.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP response with a `Content-Length` body; returns (status, body).
async fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body[..length].to_string());
            }
        }
    }
}

async fn get_on(s: &mut TcpStream, path: &str) -> (u16, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: cradle\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(s).await
}

/// The value of one series in a `/metrics` text.
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no series {name} in:\n{text}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_never_completed_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cradle::spawn_ready(
        dir.path(),
        &db(dir.path()),
        &[("CRADLE_HTTP_HEADER_TIMEOUT_MS", "600".into())],
    )
    .await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr(&c)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: cradle\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    for s in &mut slow {
        let (_, closed) = read_to_close(s, Duration::from_secs(5)).await;
        assert!(closed, "an unfinished request head is still open after 5 s");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "closed before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "closed late: {took:?}");
    assert!(
        c.metric("cradle_http_refused_total{reason=\"header_timeout\"}")
            .await
            >= 20
    );

    // A keep-alive connection that sends nothing more is closed after the same time.
    let mut idle = TcpStream::connect(addr(&c)).await.unwrap();
    assert_eq!(get_on(&mut idle, "/healthz").await.0, 200);
    let (_, closed) = read_to_close(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle keep-alive connection stays open");
    assert!(c.metric("cradle_http_idle_closed_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_at_one_byte_a_second_is_cut_after_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cradle::spawn_ready(
        dir.path(),
        &db(dir.path()),
        &[("CRADLE_HTTP_BODY_TIMEOUT_MS", "1500".into())],
    )
    .await;
    let s = TcpStream::connect(addr(&c)).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(
        b"PUT /sessions/s1 HTTP/1.1\r\nHost: cradle\r\nX-Cradle-Account: fam\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(8), rd.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    let took = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&out);
    assert!(closed, "the connection stays open: {text}");
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"]["code"], "body_timeout");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "cut after {took:?}"
    );
    assert_eq!(
        c.metric("cradle_http_refused_total{reason=\"body_timeout\"}")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_http_max_connections_are_refused_and_counted_while_an_existing_client_keeps_working(
) {
    let dir = tempfile::tempdir().unwrap();
    let c = Cradle::spawn_ready(
        dir.path(),
        &db(dir.path()),
        &[("CRADLE_HTTP_MAX_CONNECTIONS", "4".into())],
    )
    .await;
    // The readiness probes' connections are closed by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = TcpStream::connect(addr(&c)).await.unwrap();
    assert_eq!(get_on(&mut client, "/healthz").await.0, 200);
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(TcpStream::connect(addr(&c)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..6 {
        let mut s = TcpStream::connect(addr(&c)).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: cradle\r\n\r\n")
            .await;
        let (text, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
        assert!(closed, "a connection over the cap is held open");
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 503 "),
            "over the cap: {text}"
        );
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["error"]["code"], "too_many_connections");
        }
    }
    // The existing client is still served, on its own connection.
    let (status, metrics) = get_on(&mut client, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        series(
            &metrics,
            "cradle_http_refused_total{reason=\"connection_limit\"}"
        ),
        6
    );
    assert_eq!(series(&metrics, "cradle_http_connections"), 4);
    // Slots come back when connections end.
    drop(holders);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = TcpStream::connect(addr(&c)).await.unwrap();
    assert_eq!(get_on(&mut late, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_content_length_gets_413_with_a_json_body_having_read_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cradle::spawn_ready(dir.path(), &db(dir.path()), &[]).await;
    let mut s = TcpStream::connect(addr(&c)).await.unwrap();
    // Only the head: the answer must come without a byte of the body.
    s.write_all(
        b"PUT /sessions/s1 HTTP/1.1\r\nHost: cradle\r\nX-Cradle-Account: fam\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 413);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(
        closed,
        "the connection stays open for a body that will not be read"
    );
    assert_eq!(
        c.metric("cradle_http_refused_total{reason=\"too_large\"}")
            .await,
        1
    );

    // A chunked body has no length to check: it is still stopped at http.max_body_bytes.
    let mut s = TcpStream::connect(addr(&c)).await.unwrap();
    s.write_all(
        b"PUT /sessions/s2 HTTP/1.1\r\nHost: cradle\r\nX-Cradle-Account: fam\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = vec![b' '; 16 * 1024];
    for _ in 0..5 {
        let _ = s
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = s.write_all(&chunk).await;
        let _ = s.write_all(b"\r\n").await;
    }
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 413);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
}

/// An account `fam` with a bearer token; Cradle started over it (authentication required).
async fn with_token(dir: &std::path::Path, extra: &[(&str, String)]) -> (Cradle, String) {
    let db = db(dir);
    cli(&db, &["accounts", "create", "fam"]);
    let token = cli(
        &db,
        &["credentials", "issue", "--account", "fam", "--token"],
    );
    (Cradle::spawn_ready(dir, &db, extra).await, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_offering_150_wrong_secrets_costs_at_most_one_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (c, token) = with_token(dir.path(), &[]).await;
    let (id, _) = token.split_once('.').unwrap();
    let wrong: Vec<String> = (0..150).map(|i| format!("{id}.wrong{i:04}")).collect();
    let upgrade = |protocols: String, auth: Option<&str>| {
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        format!(
            "GET /ws?client_id=pwa HTTP/1.1\r\nHost: cradle\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}Sec-WebSocket-Protocol: cradle, {protocols}\r\n\r\n"
        )
    };
    let mut s = TcpStream::connect(addr(&c)).await.unwrap();
    let started = Instant::now();
    s.write_all(upgrade(wrong.join(", "), None).as_bytes())
        .await
        .unwrap();
    let (status, body) = read_response(&mut s).await;
    let took = started.elapsed();
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    assert!(took < Duration::from_millis(500), "answered after {took:?}");
    let text = c.metrics().await;
    assert_eq!(
        series(&text, "cradle_http_token_checks_total{outcome=\"refused\"}"),
        1,
        "one candidate checked"
    );
    assert_eq!(
        series(
            &text,
            "cradle_http_token_checks_total{outcome=\"verified\"}"
        ),
        0
    );

    // The header comes first: a valid token there upgrades despite the wrong subprotocols.
    let mut s = TcpStream::connect(addr(&c)).await.unwrap();
    s.write_all(upgrade(wrong.join(", "), Some(&token)).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_gets_with_a_valid_token_are_served_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (c, token) = with_token(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    for _ in 0..200 {
        let r = client
            .get(format!("{}/v1/accounts/fam/clients", c.http))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let took = started.elapsed();
    let text = c.metrics().await;
    assert_eq!(
        series(
            &text,
            "cradle_http_token_checks_total{outcome=\"verified\"}"
        ),
        1,
        "one argon2 verification"
    );
    assert_eq!(
        series(&text, "cradle_http_token_checks_total{outcome=\"cached\"}"),
        199
    );
    // 200 argon2 runs take 10 s and more; from the cache well under that.
    assert!(took < Duration::from_secs(5), "200 GETs took {took:?}");

    // A wrong secret for the same credential id is not taken from the cache.
    let bad = format!("{}.not-the-secret", token.split_once('.').unwrap().0);
    let r = client
        .get(format!("{}/v1/accounts/fam/clients", c.http))
        .bearer_auth(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_within_cache_secs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/cradle.toml"),
        "[auth]\ncache_secs = 1\n",
    )
    .unwrap();
    let (c, token) = with_token(dir.path(), &[]).await;
    let get = || {
        reqwest::Client::new()
            .get(format!("{}/v1/accounts/fam/clients", c.http))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    cli(
        &c.database_url,
        &["credentials", "revoke", token.split_once('.').unwrap().0],
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = get().await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "a revoked token still works after cache_secs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_responses_is_closed_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cradle::spawn_ready(
        dir.path(),
        &db(dir.path()),
        &[("CRADLE_HTTP_WRITE_TIMEOUT_MS", "500".into())],
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let s = socket.connect(addr(&c).parse().unwrap()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Pipelined requests whose answers (several MB) outgrow every socket buffer.
    let writer = tokio::spawn(async move {
        let one = b"GET /metrics HTTP/1.1\r\nHost: cradle\r\n\r\n";
        for _ in 0..1000 {
            if wr.write_all(one).await.is_err() {
                return;
            }
        }
        // Keep the write half open.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let n = common::wait_for(Duration::from_secs(20), "write timeout", || async {
        let n = c
            .metric("cradle_http_refused_total{reason=\"write_timeout\"}")
            .await;
        (n >= 1).then_some(n)
    })
    .await;
    assert_eq!(n, 1);
    writer.abort();
    // The connection was closed: what was queued drains, then EOF (or a reset).
    let mut buf = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stays open");
}
