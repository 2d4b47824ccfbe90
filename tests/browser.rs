//! The JavaScript client (`clients/js/cradle.js`) in a real browser: headless Chromium driven
//! over DevTools (testkit's `browser` module), against the `cradle` binary. Each test serves a
//! folder holding `tests/browser/page.html`, `tests/browser/harness.js` and a copy of the library
//! from a static server of its own, so the page has an origin Cradle can allow or refuse; the
//! test calls the harness's `window.h` helpers through `Runtime.evaluate`.
//!
//! Skipped without Chromium (`/usr/bin/chromium`, Debian's `chromium`), a failure with
//! `CRADLE_REQUIRE_CHROMIUM=1`. `CRADLE_JS_CLIENT` names another copy of the library to test.

use cradle_testkit as common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use common::browser::{serve_dir, Browser, Page, Proxy, TaskGuard};
use common::{wait_for, Cradle};

/// The test site: a folder with the page, its harness and the library, served on a free port.
struct Site {
    dir: tempfile::TempDir,
    port: u16,
    _server: TaskGuard,
}

impl Site {
    /// Copies the site's files to a new folder and serves it.
    async fn serve() -> Site {
        let dir = tempfile::tempdir().expect("the site's folder");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let library = std::env::var_os("CRADLE_JS_CLIENT")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("clients/js/cradle.js"));
        std::fs::copy(&library, dir.path().join("cradle.js"))
            .unwrap_or_else(|e| panic!("copy the JS client {}: {e}", library.display()));
        for file in ["page.html", "harness.js"] {
            std::fs::copy(repo.join("tests/browser").join(file), dir.path().join(file))
                .unwrap_or_else(|e| panic!("copy tests/browser/{file}: {e}"));
        }
        let (port, server) = serve_dir(dir.path()).await;
        Site {
            dir,
            port,
            _server: server,
        }
    }

    /// `http://127.0.0.1:{port}`: the origin of pages from this site.
    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// What every test starts from: Chromium (`None`: not installed, the test is skipped), the test
/// site, and a folder with the SQLite URL of Cradle's store in it.
async fn setup() -> Option<(Browser, Site, tempfile::TempDir, String)> {
    let browser = Browser::launch().await?;
    let site = Site::serve().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    Some((browser, site, dir, db))
}

/// Cradle with a short heartbeat and a long resume window (plus `websocket` lines of
/// `extra`), on the SQLite file `db`, with `env` added.
async fn cradle(dir: &Path, db: &str, extra: &str, env: &[(&str, String)]) -> Cradle {
    let config = dir.join("browser.toml");
    std::fs::write(
        &config,
        format!(
            "[websocket]\nheartbeat_secs = 2\nheartbeat_timeout_secs = 6\nresume_window_secs = 30\n{extra}"
        ),
    )
    .expect("write the config");
    let mut env = env.to_vec();
    env.push(("CRADLE_CONFIG", config.display().to_string()));
    Cradle::spawn_ready(dir, db, &env).await
}

/// Account `fam` with an account token and a device secret for client `baby`, created on the
/// SQLite file `db` before Cradle starts (so Cradle runs with accounts: tokens required).
fn account_fam(db: &str) -> (String, String) {
    common::cli(db, &["accounts", "create", "fam"]);
    let token = common::cli(db, &["credentials", "issue", "--account", "fam", "--token"]);
    let baby = common::cli(
        db,
        &[
            "credentials",
            "issue",
            "--account",
            "fam",
            "--client",
            "baby",
        ],
    );
    (token, baby)
}

/// The port of Cradle's HTTP listener.
fn http_port(c: &Cradle) -> u16 {
    c.http
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("Cradle's HTTP port")
}

/// The client row of `fam`'s `client` once its `field` is `value` (waits up to `secs`).
async fn recorded(
    c: &Cradle,
    client: &str,
    field: &str,
    value: impl Into<Value>,
    secs: u64,
) -> Value {
    let value = value.into();
    wait_for(
        Duration::from_secs(secs),
        &format!("{client}'s {field} = {value}"),
        || async { c.client("fam", client).await.filter(|r| r[field] == value) },
    )
    .await
}

/// Opens `{origin}/page.html` and waits for its harness.
async fn open_page(browser: &Browser, origin: &str) -> Page {
    let page = browser
        .new_page(&format!("{origin}/page.html"))
        .await
        .unwrap_or_else(|e| panic!("the test page did not load: {e}"));
    if let Err(e) = page
        .wait_for("window.harnessReady === true", Duration::from_secs(10))
        .await
    {
        panic!(
            "the harness did not start: {e}\nthe page's console:\n{}",
            page.console_text()
        );
    }
    page
}

/// Creates the page's client with `options` (the library's) and connects it; fails the test,
/// with the page's console, unless the first `hello` came. Returns that `hello`.
async fn connect_client(page: &Page, options: &Value) -> Value {
    js(page, &format!("h.open({options})")).await;
    let connected = js(page, "h.connect()").await;
    check(page, connected["ok"] == true, &connected);
    connected["hello"].clone()
}

/// Evaluates `expression` in `page`; a thrown exception fails the test with the console.
async fn js(page: &Page, expression: &str) -> Value {
    page.evaluate(expression).await.unwrap_or_else(|e| {
        panic!(
            "`{expression}` threw: {e}\nthe page's console:\n{}",
            page.console_text()
        )
    })
}

/// Waits until `expression` is truthy in `page` and returns its value; fails with the console.
async fn wait_js(page: &Page, expression: &str, secs: u64) -> Value {
    page.wait_for(expression, Duration::from_secs(secs))
        .await
        .unwrap_or_else(|e| panic!("{e}\nthe page's console:\n{}", page.console_text()))
}

/// `assert!` with the page's console (and `context`) in the message.
#[track_caller]
fn check(page: &Page, ok: bool, context: impl std::fmt::Display) {
    assert!(
        ok,
        "{context}\nthe page's console:\n{}",
        page.console_text()
    );
}

/// An MQTT client of Cradle (`login` outside open mode) whose publishes on `subscribe` arrive
/// on a channel; returned once every filter is acknowledged.
async fn device(
    c: &Cradle,
    id: &str,
    login: Option<(&str, &str)>,
    subscribe: &[&str],
) -> (AsyncClient, UnboundedReceiver<rumqttc::Publish>) {
    use rumqttc::{Event, Packet};
    let mut options = MqttOptions::new(id, "127.0.0.1", c.mqtt_port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let wanted = subscribe.len();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut acks = 0;
        loop {
            let ready_now = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                    false
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    acks += 1;
                    acks == wanted
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => wanted == 0,
                Ok(_) => false,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    false
                }
            };
            if ready_now {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
        }
    });
    for filter in subscribe {
        client
            .subscribe(*filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
    }
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("the device connected and subscribed in time")
        .expect("the device's event loop is alive");
    (client, rx)
}

/// The JSON payload of the next publish on `rx`, within 5 s.
async fn next_json(rx: &mut UnboundedReceiver<rumqttc::Publish>) -> Value {
    let p = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a publish within 5 s")
        .expect("the device is alive");
    serde_json::from_slice(&p.payload).expect("a JSON payload")
}

/// A page whose origin Cradle allows (`http.allowed_origins`, set here through
/// `CRADLE_HTTP_ALLOWED_ORIGINS`), with an account token: the library connects and gets its
/// hello, signals flow both ways between the page and an MQTT device, and the page starts and
/// ends a session over cross-origin HTTP (CORS) with the answers' statuses and error codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_an_allowed_origin_signals_and_starts_sessions_with_a_token() {
    let Some((browser, site, dir, db)) = setup().await else {
        return;
    };
    let (token, baby_secret) = account_fam(&db);
    let mut c = cradle(
        dir.path(),
        &db,
        "",
        &[("CRADLE_HTTP_ALLOWED_ORIGINS", site.origin())],
    )
    .await;
    c.token = Some(token.clone());
    let (baby, mut baby_inbox) = device(
        &c,
        "baby",
        Some(("fam", &baby_secret)),
        &["accounts/fam/clients/baby/webrtc_inbox"],
    )
    .await;

    let page = open_page(&browser, &site.origin()).await;
    let options = json!({ "url": c.http, "clientId": "pwa", "token": token });
    let hello = &connect_client(&page, &options).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["account_id"], "fam", "{hello}");
    assert_eq!(hello["client_id"], "pwa", "{hello}");
    assert_eq!(hello["resumed"], false, "{hello}");
    let connection = hello["connection_id"].as_str().expect("a connection id");
    assert_eq!(js(&page, "h.client.state").await, "open");
    // The token went as the subprotocol pair; Cradle picked `cradle`.
    let socket = js(&page, "h.sockets[0]").await;
    assert_eq!(socket["protocol"], "cradle", "{socket}");
    assert!(
        !socket["url"].as_str().unwrap_or("").contains(&token),
        "{socket}"
    );

    // Device → page: a publish on the browser client's inbox arrives as a signal.
    baby.publish(
        "accounts/fam/clients/pwa/webrtc_inbox",
        QoS::AtLeastOnce,
        false,
        r#"{"from":"baby","data":{"sdp":"answer"}}"#,
    )
    .await
    .expect("publish queued");
    let signal = wait_js(&page, "h.log.signal[0]", 10).await;
    assert_eq!(signal["from"], "baby", "{signal}");
    assert_eq!(signal["data"]["sdp"], "answer", "{signal}");

    // Page → device: the library's signal lands on the device's inbox, stamped with the sender.
    let written = js(&page, r#"h.signal("baby", { sdp: "offer" })"#).await;
    check(&page, written == true, "signal() on an open socket writes");
    let got = next_json(&mut baby_inbox).await;
    assert_eq!(got["from"], "pwa", "{got}");
    assert_eq!(got["from_connection"], connection, "{got}");
    assert_eq!(got["data"]["sdp"], "offer", "{got}");

    // Sessions over cross-origin HTTP: 201 started, 200 already_started, 200 ended, and a
    // refusal's status and code readable by the page (404 session_not_found).
    let start = r#"h.call("startSession", "s1", { connectionId: "k1", clientId: "baby", name: "Nursery", startedAtMillis: 5 })"#;
    let started = js(&page, start).await;
    check(&page, started["ok"] == true, &started);
    assert_eq!(started["value"]["status"], "started", "{started}");
    assert_eq!(started["value"]["account_id"], "fam", "{started}");
    let again = js(&page, start).await;
    assert_eq!(again["value"]["status"], "already_started", "{again}");
    let ended = js(&page, r#"h.call("endSession", "s1")"#).await;
    check(&page, ended["ok"] == true, &ended);
    assert_eq!(ended["value"]["status"], "ended", "{ended}");
    let missing = js(&page, r#"h.call("endSession", "nope")"#).await;
    assert_eq!(missing["ok"], false, "{missing}");
    assert_eq!(missing["status"], 404, "{missing}");
    assert_eq!(missing["code"], "session_not_found", "{missing}");

    // The page reads the HTTP API cross-origin with its token (a preflighted GET).
    let read = js(
        &page,
        &format!(
            "h.fetchJson({}, {{ headers: {{ Authorization: {} }} }})",
            json!(format!("{}/v1/accounts/fam/clients", c.http)),
            json!(format!("Bearer {token}"))
        ),
    )
    .await;
    check(&page, read["ok"] == true, &read);
    assert_eq!(read["status"], 200, "{read}");
    let pwa = read["body"]["clients"]
        .as_array()
        .and_then(|clients| clients.iter().find(|r| r["client_id"] == "pwa"))
        .unwrap_or_else(|| panic!("pwa in {read}"));
    assert_eq!(pwa["connected"], true, "{pwa}");

    // The preflight itself, as Cradle answers it to the allowed origin.
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{}/sessions/s2", c.http))
        .header("Origin", site.origin())
        .header("Access-Control-Request-Method", "PUT")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{preflight:?}");
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(site.origin().as_str()),
        "{preflight:?}"
    );
    let row = c.client("fam", "pwa").await.expect("pwa recorded");
    assert_eq!(row["connected"], true, "{row}");
    assert_eq!(row["connection_id"], connection, "{row}");
}

/// Network loss under a stream of signals: the page reaches Cradle through a proxy that is cut
/// twice (the second time staying down for a second, so reconnects fail and the library's
/// diagnostic fetch fails too); the library resumes its session each time, and the page gets
/// every signal exactly once, in order, from one fresh session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_and_every_signal_arrives_once_in_order() {
    const N: u64 = 200;
    let Some((browser, site, dir, db)) = setup().await else {
        return;
    };
    let c = cradle(dir.path(), &db, "", &[]).await;
    let proxy = Proxy::start(http_port(&c)).await;

    let page = open_page(&browser, &site.origin()).await;
    let options = json!({
        "url": format!("http://127.0.0.1:{}", proxy.port),
        "clientId": "pwa",
        "account": "fam",
        "backoff": { "initialMs": 100, "maxMs": 1000, "factor": 2, "jitter": 0.5 },
    });
    let connection = connect_client(&page, &options).await["connection_id"].clone();

    let (baby, _) = device(&c, "baby", None, &[]).await;
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            baby.publish(
                "accounts/fam/clients/pwa/webrtc_inbox",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"from":"baby","data":{i}}}"#),
            )
            .await
            .expect("publish queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        baby
    });

    wait_js(&page, "h.log.signal.length >= 40", 20).await;
    assert!(proxy.cut() >= 1, "the page's socket went through the proxy");
    wait_js(&page, "h.log.resumed.length >= 1", 20).await;
    let seen = js(&page, "h.log.signal.length").await.as_u64().unwrap_or(0);
    wait_js(
        &page,
        &format!("h.log.signal.length >= {}", (seen + 20).min(N)),
        20,
    )
    .await;
    proxy.set_refusing(true);
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set_refusing(false);
    let _baby = publisher.await.expect("the publisher finished");

    wait_js(&page, &format!("h.log.signal.length >= {N}"), 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // duplicates would come now
    let snapshot = js(&page, "h.snapshot()").await;
    let data: Vec<u64> = snapshot["signalData"]
        .as_array()
        .map(|d| d.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let expected: Vec<u64> = (1..=N).collect();
    check(
        &page,
        data == expected,
        format!("the signals, once each in order: {data:?}\n{snapshot}"),
    );
    check(
        &page,
        snapshot["resumeCount"].as_u64() >= Some(1),
        format!("resumed: {snapshot}"),
    );
    assert_eq!(snapshot["freshCount"], 1, "one fresh session: {snapshot}");
    assert_eq!(
        snapshot["libFreshCount"], 0,
        "no new session after the first: {snapshot}"
    );
    assert_eq!(
        snapshot["libResumeCount"], snapshot["resumeCount"],
        "the library counts the resumes it emitted: {snapshot}"
    );
    assert_eq!(snapshot["gone"], json!([]), "{snapshot}");
    assert_eq!(snapshot["connectionId"], connection, "{snapshot}");
    assert_eq!(snapshot["state"], "open", "{snapshot}");
    // Sockets: the first, one resumed after the first cut, at least one refused while the proxy
    // refused (a failed handshake: the library asked /ws why, and that fetch failed too), and
    // the one resumed after.
    let sockets = snapshot["sockets"].as_array().cloned().unwrap_or_default();
    let refused = sockets.iter().filter(|s| s["opened"] == false).count();
    assert!(sockets.len() >= 4 && refused >= 1, "sockets: {sockets:?}");
    assert!(
        proxy.accepted() >= 4,
        "the library reconnected through the proxy"
    );
    // Cradle never saw the client leave.
    let row = recorded(&c, "pwa", "connected", true, 5).await;
    assert_eq!(row["connection_id"], connection, "{row}");
}

/// A page whose origin Cradle does not allow: its WebSocket to `/ws` never opens (Cradle answers
/// the upgrade `403 origin_not_allowed`), its cross-origin read of the HTTP API is blocked by
/// CORS, and Cradle records nothing for the client it tried to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_a_foreign_origin_cannot_open_the_socket_or_read_the_api() {
    let Some((browser, site, dir, db)) = setup().await else {
        return;
    };
    // The same files from another port: another origin, not allowed.
    let (foreign_port, _foreign_server) = serve_dir(site.dir.path()).await;
    let foreign = format!("http://127.0.0.1:{foreign_port}");
    let (token, _) = account_fam(&db);
    let mut c = cradle(
        dir.path(),
        &db,
        "",
        &[("CRADLE_HTTP_ALLOWED_ORIGINS", site.origin())],
    )
    .await;
    c.token = Some(token.clone());

    let page = open_page(&browser, &foreign).await;
    let options = json!({
        "url": c.http,
        "clientId": "intruder",
        "token": token,
        "backoff": { "initialMs": 200, "maxMs": 1000, "factor": 2, "jitter": 0.5 },
    });
    js(&page, &format!("h.open({options})")).await;
    let connected = js(&page, "h.connect(4000)").await;
    check(
        &page,
        connected["ok"] == false,
        format!("connect from a foreign origin must fail: {connected}"),
    );
    // The library may learn why (its diagnostic fetch is itself cross-origin, so a browser
    // normally cannot read the answer); when it does, the reason is the origin.
    if connected["status"].as_u64().is_some_and(|s| s != 0) {
        assert_eq!(connected["status"], 403, "{connected}");
        assert_eq!(connected["code"], "origin_not_allowed", "{connected}");
    }
    let hellos = js(&page, "h.log.hello.length").await;
    assert_eq!(hellos, 0, "no hello from a foreign origin");
    js(&page, "h.close()").await;

    // A plain WebSocket from the page: refused before it opens (a browser sees 1006).
    let ws_url = format!(
        "{}/ws?client_id=intruder",
        c.http.replace("http://", "ws://")
    );
    let i = js(
        &page,
        &format!(
            "h.rawOpen({}, [\"cradle\", {}])",
            json!(ws_url),
            json!(token)
        ),
    )
    .await;
    let closed = wait_js(&page, &format!("h.raw[{i}].close"), 10).await;
    let record = js(&page, &format!("h.raw[{i}]")).await;
    assert_eq!(record["opened"], false, "{record}");
    assert_eq!(closed["code"], 1006, "{record}");

    // What Cradle answered that upgrade: 403 origin_not_allowed, before the 101.
    let refused = common::upgrade_request(&format!("{}/ws?client_id=intruder", c.http))
        .header("Origin", &foreign)
        .header("Sec-WebSocket-Protocol", format!("cradle, {token}"))
        .send()
        .await
        .expect("upgrade request");
    assert_eq!(refused.status().as_u16(), 403, "{refused:?}");
    let body: Value = refused.json().await.unwrap_or_default();
    assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");

    // A cross-origin read of the HTTP API with a valid token: the browser blocks it (CORS).
    let read = js(
        &page,
        &format!(
            "h.fetchJson({}, {{ headers: {{ Authorization: {} }} }})",
            json!(format!("{}/v1/accounts/fam/clients", c.http)),
            json!(format!("Bearer {token}"))
        ),
    )
    .await;
    check(
        &page,
        read["ok"] == false,
        format!("the foreign page read the API: {read}"),
    );
    let preflight = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/accounts/fam/clients", c.http),
        )
        .header("Origin", &foreign)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .expect("preflight");
    let allowed = preflight
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert!(
        allowed.as_deref() != Some(foreign.as_str()) && allowed.as_deref() != Some("*"),
        "a foreign origin allowed: {preflight:?}"
    );

    // Nothing recorded for the client the page tried to be.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        c.client("fam", "intruder").await.is_none(),
        "a status was recorded for a refused origin"
    );
}

/// The library's `close()` is a WebSocket close handshake: the browser's close event of the
/// socket has code 1000 and `wasClean` (Cradle answered the close frame before closing the
/// connection), the library reports 1000 and state `closed`, and Cradle records a `clean`
/// disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_librarys_close_is_a_clean_close_1000() {
    let Some((browser, site, dir, db)) = setup().await else {
        return;
    };
    let c = cradle(dir.path(), &db, "", &[]).await;
    let page = open_page(&browser, &site.origin()).await;

    // Open mode, a loopback origin: allowed without configuration.
    let options = json!({ "url": c.http, "clientId": "pwa", "account": "fam" });
    let hello = connect_client(&page, &options).await;
    assert_eq!(hello["account_id"], "fam");
    recorded(&c, "pwa", "connected", true, 10).await;

    js(&page, "h.close()").await;
    wait_js(&page, "h.log.close.length >= 1", 10).await;
    let reported = js(&page, "h.log.close[h.log.close.length - 1]").await;
    assert_eq!(
        reported["code"], 1000,
        "the library's close event: {reported}"
    );
    assert_eq!(js(&page, "h.client.state").await, "closed");
    // What the browser itself saw of that socket.
    let close = wait_js(&page, "h.sockets[h.sockets.length - 1].close", 10).await;
    let row = recorded(&c, "pwa", "connected", false, 10).await;
    assert_eq!(row["last_disconnect_reason"], "clean", "{row}");
    check(
        &page,
        close["code"] == 1000 && close["wasClean"] == true,
        format!("the browser's close event after close(): {close}"),
    );
}

/// A close Cradle starts is a close handshake with its documented code: a socket that sends more
/// than `max_errors` bad frames gets its `error` frames, then close 4008 with `wasClean`, and
/// Cradle records it `kicked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_socket_gets_a_clean_close_4008() {
    let Some((browser, site, dir, db)) = setup().await else {
        return;
    };
    let c = cradle(dir.path(), &db, "max_errors = 3\n", &[]).await;
    let page = open_page(&browser, &site.origin()).await;

    // A plain socket (no library, which would resume), in open mode from a loopback origin.
    let ws_url = format!(
        "{}/ws?account=fam&client_id=rude",
        c.http.replace("http://", "ws://")
    );
    let i = js(&page, &format!("h.rawOpen({})", json!(ws_url))).await;
    wait_js(&page, &format!("h.raw[{i}].opened"), 10).await;
    for _ in 0..5 {
        js(&page, &format!(r#"h.rawSend({i}, '{{"type":"dance"}}')"#)).await;
    }
    let closed = wait_js(&page, &format!("h.raw[{i}].close"), 10).await;
    let record = js(&page, &format!("h.raw[{i}]")).await;
    let errors = record["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|t| t.as_str().is_some_and(|t| t.contains(r#""type":"error""#)))
                .count()
        })
        .unwrap_or(0);
    assert!(errors >= 3, "the error frames came first: {record}");
    recorded(&c, "rude", "last_disconnect_reason", "kicked", 10).await;
    check(
        &page,
        closed["code"] == 4008 && closed["wasClean"] == true,
        format!("kicked: {record}"),
    );
}

/// The harness itself, without any server feature in progress: Chromium starts, the page loads
/// from its own origin, and the library gets its hello over `/ws` in open mode from a loopback
/// origin (allowed without configuration) and answers heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_connects_in_open_mode_from_a_loopback_origin() {
    let Some((browser, site, dir, db)) = setup().await else {
        return;
    };
    let c = cradle(dir.path(), &db, "", &[]).await;
    let page = open_page(&browser, &site.origin()).await;
    assert_eq!(js(&page, "location.origin").await, site.origin());
    let options = json!({ "url": c.http, "clientId": "pwa", "account": "fam" });
    let hello = connect_client(&page, &options).await;
    assert_eq!(hello["client_id"], "pwa");
    // Heartbeats every 2 s, a timeout of 6 s: still the same session after 7 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let snapshot = js(&page, "h.snapshot()").await;
    assert_eq!(snapshot["state"], "open", "{snapshot}");
    assert_eq!(snapshot["freshCount"], 1, "{snapshot}");
    assert_eq!(
        snapshot["connectionId"], hello["connection_id"],
        "{snapshot}"
    );
    let row = c.client("fam", "pwa").await.expect("pwa recorded");
    assert_eq!(row["connected"], true, "{row}");
    // An evaluation that throws is an Err carrying the exception's text.
    let err = page
        .evaluate("(() => { throw new Error('boom') })()")
        .await
        .expect_err("a throw");
    assert!(err.contains("boom"), "{err}");
    let err = page
        .evaluate("Promise.reject(new Error('late boom'))")
        .await
        .expect_err("a rejection");
    assert!(err.contains("late boom"), "{err}");
}

/// A session that is gone when the page comes back (Cradle was killed, so nothing was handed
/// over): the resume's upgrade is refused `410` before the `101`, which a browser cannot see;
/// the library learns it from its plain `GET /ws`, tells the app (`gone`, code 410: frames
/// were lost) and opens a fresh session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gone_after_a_crash_is_reported_and_a_fresh_one_opened() {
    let Some((browser, site, dir, db)) = setup().await else {
        return;
    };
    let mut c = cradle(dir.path(), &db, "", &[]).await;
    let address = c.http.trim_start_matches("http://").to_string();

    let page = open_page(&browser, &site.origin()).await;
    let options = json!({
        "url": c.http,
        "clientId": "pwa",
        "account": "fam",
        "backoff": { "initialMs": 100, "maxMs": 1000, "factor": 2, "jitter": 0.5 },
    });
    let first = connect_client(&page, &options).await["connection_id"].clone();

    // SIGKILL: no hand-over; the next start on the same store and address has no session.
    c.child.kill().expect("kill Cradle");
    let _ = c.child.wait();
    let config = dir.path().join("browser.toml").display().to_string();
    let mut again = Cradle::spawn(
        dir.path(),
        &db,
        &[
            ("CRADLE_CONFIG", config),
            ("CRADLE_HTTP_LISTEN", address.clone()),
        ],
    );
    again.http = format!("http://{address}");
    again.wait_ready().await;

    let gone = wait_js(&page, "h.log.gone[0]", 30).await;
    assert_eq!(gone["reason"], "session_gone", "{gone}");
    assert_eq!(gone["code"], 410, "{gone}");
    let hello = wait_js(&page, "h.log.hello.length >= 2 && h.log.hello[1]", 30).await;
    assert_eq!(hello["resumed"], false, "{hello}");
    assert_ne!(hello["connection_id"], first, "a new session: {hello}");
    assert_eq!(js(&page, "h.client.state").await, "open");
    assert_eq!(
        js(&page, "h.client.connectionId").await,
        hello["connection_id"]
    );
}

/// A page whose origin Cradle does not allow learns it was refused: each handshake fails with
/// 1006 and the diagnostic `GET /ws` is blocked by CORS, but Cradle answers HTTP (the library's
/// `no-cors` probe of `/healthz` gets an answer), so after `reportAfter` handshakes the page
/// gets an `error` event `refused` naming `http.allowed_origins`; after `maxRefused` the client
/// stops (state `closed`, `failure`, a final `error`, `connect()` rejects) and opens no more
/// sockets. It never reaches `open`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_a_foreign_origin_learns_it_was_refused_and_the_client_stops() {
    let Some((browser, site, dir, db)) = setup().await else {
        return;
    };
    let (foreign_port, _foreign_server) = serve_dir(site.dir.path()).await;
    let foreign = format!("http://127.0.0.1:{foreign_port}");
    let (token, _) = account_fam(&db);
    let mut c = cradle(
        dir.path(),
        &db,
        "",
        &[("CRADLE_HTTP_ALLOWED_ORIGINS", site.origin())],
    )
    .await;
    c.token = Some(token.clone());

    let page = open_page(&browser, &foreign).await;
    let options = json!({
        "url": c.http,
        "clientId": "intruder",
        "token": token,
        "backoff": { "initialMs": 50, "maxMs": 200, "factor": 2, "jitter": 0 },
        "reportAfter": 2,
        "maxRefused": 5,
    });
    js(&page, &format!("h.open({options})")).await;
    let connected = js(&page, "h.connect(20000)").await;
    check(
        &page,
        connected["ok"] == false && connected["code"] == "refused",
        format!("connect() rejects as refused: {connected}"),
    );
    assert_eq!(connected["attempts"], 5, "{connected}");

    let errors = js(&page, "h.log.error").await;
    let errors = errors.as_array().cloned().unwrap_or_default();
    check(
        &page,
        errors.len() == 2,
        format!("one report, then the final error: {errors:?}"),
    );
    assert_eq!(errors[0]["code"], "refused", "{errors:?}");
    assert_eq!(errors[0]["attempts"], 2, "{errors:?}");
    assert_eq!(errors[0]["final"], false, "{errors:?}");
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("http.allowed_origins") && m.contains(&foreign)),
        "the message says why and names the page's origin: {errors:?}"
    );
    assert_eq!(errors[1]["code"], "refused", "{errors:?}");
    assert_eq!(errors[1]["attempts"], 5, "{errors:?}");
    assert_eq!(errors[1]["final"], true, "{errors:?}");

    assert_eq!(js(&page, "h.client.state").await, "closed");
    assert_eq!(js(&page, "h.client.failure.code").await, "refused");
    let states = js(&page, "h.log.state").await;
    assert_eq!(
        states,
        json!(["connecting", "closed"]),
        "never open: {states}"
    );
    // Bounded: five handshakes, none opened, and none after the client stopped.
    let sockets = js(&page, "h.sockets").await;
    let sockets = sockets.as_array().cloned().unwrap_or_default();
    assert_eq!(sockets.len(), 5, "{sockets:?}");
    assert!(sockets.iter().all(|s| s["opened"] == false), "{sockets:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        js(&page, "h.sockets.length").await,
        5,
        "no retry after the stop"
    );
    assert!(c.client("fam", "intruder").await.is_none());
}

/// A server that does not answer at all (nothing listens on the port): after `reportAfter`
/// failed handshakes the page gets one `error` event `unreachable`, and by default the client
/// keeps retrying with backoff (an outage ends by itself) without a report per attempt; with
/// `maxUnreachable` it stops there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported_and_retried_with_backoff_or_up_to_a_limit() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let site = Site::serve().await;
    let nowhere = format!("http://127.0.0.1:{}", common::free_port());
    let page = open_page(&browser, &site.origin()).await;
    let backoff = json!({ "initialMs": 50, "maxMs": 200, "factor": 2, "jitter": 0 });

    // The default: report, then retry without end.
    let options = json!({ "url": nowhere, "clientId": "pwa", "account": "fam", "backoff": backoff, "reportAfter": 2 });
    js(
        &page,
        &format!("h.open({options}); h.client.connect(); true"),
    )
    .await;
    let error = wait_js(&page, "h.log.error[0]", 10).await;
    assert_eq!(error["code"], "unreachable", "{error}");
    assert_eq!(error["attempts"], 2, "{error}");
    assert_eq!(error["final"], false, "{error}");
    wait_js(&page, "h.sockets.length >= 7", 10).await;
    let snapshot = js(&page, "h.snapshot()").await;
    assert_eq!(snapshot["state"], "connecting", "{snapshot}");
    assert_eq!(
        snapshot["errors"].as_array().map(Vec::len),
        Some(1),
        "one report, not one per attempt: {snapshot}"
    );
    assert_eq!(js(&page, "h.client.failure").await, Value::Null);
    js(&page, "h.close()").await;

    // With a limit: the client stops.
    let options = json!({
        "url": nowhere, "clientId": "pwa", "account": "fam", "backoff": backoff,
        "reportAfter": 2, "maxUnreachable": 3,
    });
    js(&page, &format!("h.open({options})")).await;
    let connected = js(&page, "h.connect(10000)").await;
    check(
        &page,
        connected["ok"] == false && connected["code"] == "unreachable",
        format!("connect() rejects as unreachable: {connected}"),
    );
    let last = js(&page, "h.log.error[h.log.error.length - 1]").await;
    assert_eq!(last["final"], true, "{last}");
    assert_eq!(last["attempts"], 3, "{last}");
    assert_eq!(js(&page, "h.sockets.length").await, 3);
    assert_eq!(js(&page, "h.client.state").await, "closed");
}

/// What a fake event-stream server saw of one request: its request line and its
/// `Authorization` header.
#[derive(Debug, Clone)]
struct SeenRequest {
    method: String,
    target: String,
    authorization: Option<String>,
}

/// The requests a fake server saw, oldest first.
type SeenRequests = std::sync::Arc<std::sync::Mutex<Vec<SeenRequest>>>;

/// The CORS headers of the fake server's answers: any origin, the token header.
const FAKE_CORS: &str = "Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: authorization\r\nAccess-Control-Allow-Methods: GET\r\n";

/// A stand-in for Cradle's `GET /v1/accounts/fam/events/stream` on a free port, answering
/// CORS for any origin (preflights included): the first stream sends events 1-3, `live`,
/// event 4, then `event: cut` (lagged) and ends; a stream resumed `after=4` sends a
/// keep-alive, `live` and event 5 and stays open. `GET /v1/accounts/fam/clients` answers
/// Cradle's JSON `403`.
async fn fake_event_stream() -> (u16, TaskGuard, SeenRequests) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake stream");
    let port = listener.local_addr().expect("its address").port();
    let seen = SeenRequests::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(fake_answer(stream, log.clone()));
        }
    });
    (port, TaskGuard::from(task), seen)
}

/// One request to the fake event-stream server, recorded in `seen` and answered.
async fn fake_answer(mut stream: tokio::net::TcpStream, seen: SeenRequests) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let request = SeenRequest {
        method: words.next().unwrap_or_default().to_string(),
        target: words.next().unwrap_or_default().to_string(),
        authorization: head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        }),
    };
    seen.lock().expect("the log").push(request.clone());
    let event = |p: u32| {
        let data = json!({ "position": p, "type": "connection.connected", "data": { "client_id": "baby" } });
        format!("id: {p}\ndata: {data}\n\n")
    };
    let answer = if request.method == "OPTIONS" {
        format!("HTTP/1.1 204 No Content\r\n{FAKE_CORS}Connection: close\r\n\r\n")
    } else if request.target.starts_with("/v1/accounts/fam/clients") {
        let body =
            json!({ "error": { "code": "forbidden", "message": "not this account" } }).to_string();
        format!(
            "HTTP/1.1 403 Forbidden\r\n{FAKE_CORS}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        format!("HTTP/1.1 200 OK\r\n{FAKE_CORS}Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n")
    };
    if stream.write_all(answer.as_bytes()).await.is_err() || !answer.contains("event-stream") {
        return;
    }
    if request.target.contains("after=4") {
        let resumed = format!(
            ": keep-alive\n\nevent: live\ndata: {{\"position\":4}}\n\n{}",
            event(5)
        );
        let _ = stream.write_all(resumed.as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    // The backlog in two pieces cut mid-line, as a network may deliver it.
    let backlog = format!(
        "{}{}{}event: live\ndata: {{\"position\":3}}\n\n",
        event(1),
        event(2),
        event(3)
    );
    let (a, b) = backlog.split_at(backlog.len() / 2);
    for piece in [a, b] {
        let _ = stream.write_all(piece.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut = format!(
        "{}event: cut\ndata: {{\"reason\":\"lagged\",\"message\":\"too slow\"}}\n\n",
        event(4)
    );
    let _ = stream.write_all(cut.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The library's HTTP helper in a real browser: a refusal's JSON body becomes an error with
/// `status`, `code` and `message`; `follow` reads an event stream over `fetch` with the token
/// as `Authorization` (cross-origin, preflighted), delivers each event once in order across an
/// `event: cut`, and follows again `after` the last id it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_helper_reads_errors_and_follows_an_event_stream_across_a_cut() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let site = Site::serve().await;
    let (port, _server, seen) = fake_event_stream().await;
    let page = open_page(&browser, &site.origin()).await;
    let options = json!({ "baseUrl": format!("http://127.0.0.1:{port}"), "token": "s3cret" });
    js(&page, &format!("h.apiOpen({options})")).await;

    let refused = js(&page, r#"h.apiCall("get", "/v1/accounts/fam/clients")"#).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["status"], 403, "{refused}");
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["error"], "not this account", "{refused}");
    assert_eq!(refused["name"], "CradleError", "{refused}");

    js(
        &page,
        r#"h.follow("/v1/accounts/fam/events/stream", { query: { type: "connection.connected" }, backoff: { initialMs: 50, maxMs: 200 } })"#,
    )
    .await;
    wait_js(&page, "h.followed.events.length >= 5", 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // duplicates would come now
    let followed = js(&page, "h.followed").await;
    let positions: Vec<u64> = followed["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["position"].as_u64()).collect())
        .unwrap_or_default();
    check(
        &page,
        positions == [1, 2, 3, 4, 5],
        format!("every event once, in order: {followed}"),
    );
    assert_eq!(followed["events"][0]["data"]["client_id"], "baby");
    let states: Vec<String> = followed["states"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| match s[1]["reason"].as_str() {
                    Some(reason) => format!("{}:{reason}", s[0].as_str().unwrap_or("?")),
                    None => s[0].as_str().unwrap_or("?").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        states,
        [
            "connecting",
            "open",
            "live",
            "reconnecting:lagged",
            "connecting",
            "open",
            "live"
        ],
        "{followed}"
    );
    let live = &followed["states"][2][1];
    assert_eq!(live["position"], 3, "{followed}");

    js(&page, "h.unfollow()").await;
    let outcome = wait_js(&page, "h.followed.outcome", 5).await;
    assert_eq!(outcome["ok"], true, "{outcome}");

    // What the server saw: each stream with the token and the filter; the second after 4.
    let seen = seen.lock().expect("the log").clone();
    let streams: Vec<&SeenRequest> = seen
        .iter()
        .filter(|r| r.method == "GET" && r.target.contains("/events/stream"))
        .collect();
    assert_eq!(streams.len(), 2, "{seen:?}");
    assert!(!streams[0].target.contains("after="), "{seen:?}");
    assert!(streams[1].target.contains("after=4"), "{seen:?}");
    for stream in &streams {
        assert!(
            stream.target.contains("type=connection.connected"),
            "{seen:?}"
        );
        assert_eq!(
            stream.authorization.as_deref(),
            Some("Bearer s3cret"),
            "{seen:?}"
        );
    }
}
