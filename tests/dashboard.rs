//! The dashboard (`dashboard/`, served by Cradle at `/dashboard/`): its files as Cradle serves
//! them, and the page in headless Chromium (testkit's `browser` module) against the `cradle`
//! binary, with MQTT devices (rumqttc) connecting and dropping.
//!
//! Screenshots go to `$CRADLE_TEST_OUTPUT/dashboard/` when that variable is set, else to
//! `target/test-output/dashboard/` (the target folder of this build). The browser tests are
//! skipped without Chromium (`/usr/bin/chromium`), a failure with `CRADLE_REQUIRE_CHROMIUM=1`.

use cradle_testkit as common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::{LastWill, MqttOptions, QoS};
use serde_json::{json, Value};

use common::browser::{serve_dir, Browser, Page};
use common::{Cradle, Device};

/// The admin token of these tests' Cradle (`CRADLE_ADMIN_TOKEN`).
const ADMIN_TOKEN: &str = "dashboard-admin-token-0123456789";

/// The dashboard's polling period without an event stream (`POLL_MS` in dashboard.js).
const POLL: Duration = Duration::from_secs(3);

/// Account `fam`, its token and the device secret of its client `baby`, created on the SQLite
/// store `db` before Cradle starts (so tokens are required).
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

/// Cradle on a new SQLite store in `dir` holding account `fam`, with the admin token and
/// `env`; its `token` (for the testkit's HTTP helpers) is the admin token. Returns Cradle, the
/// account's token and `baby`'s device secret.
async fn cradle_with_fam(dir: &Path, env: &[(&str, String)]) -> (Cradle, String, String) {
    let db = format!("sqlite://{}", dir.join("dashboard.db").display());
    let (token, baby) = account_fam(&db);
    let mut env = env.to_vec();
    env.push(("CRADLE_ADMIN_TOKEN", ADMIN_TOKEN.to_string()));
    let cradle = Cradle::spawn_ready(dir, &db, &env).await;
    (cradle, token, baby)
}

/// `fam`'s baby station `baby`: connected with its device secret and a status Will, as a
/// station does; returned after its CONNACK.
async fn baby_station(c: &Cradle, secret: &str) -> Device {
    let mut options = MqttOptions::new("baby", "127.0.0.1", c.mqtt_port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_credentials("fam", secret);
    options.set_last_will(LastWill::new(
        "accounts/fam/clients/baby/status",
        common::status("disconnected", "baby-k1", now_millis(), Some("lost")),
        QoS::AtLeastOnce,
        true,
    ));
    Device::connect_with(options).await
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

/// Where screenshots go: `$CRADLE_TEST_OUTPUT/dashboard`, else `target/test-output/dashboard`.
fn output_dir() -> PathBuf {
    let root = std::env::var_os("CRADLE_TEST_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // CARGO_TARGET_TMPDIR is `{target}/tmp`: its parent is this build's target folder.
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("the target folder")
                .join("test-output")
        });
    let dir = root.join("dashboard");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Writes a PNG of the whole page to `{output_dir}/{name}.png` and returns its path.
async fn screenshot(page: &Page, name: &str) -> PathBuf {
    let png = page
        .screenshot()
        .await
        .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let path = output_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    eprintln!("screenshot: {}", path.display());
    path
}

/// Opens `url` (the dashboard) in a 1280×1000 tab and waits until its script ran.
async fn open_dashboard(browser: &Browser, url: &str) -> Page {
    let page = browser
        .new_page(url)
        .await
        .unwrap_or_else(|e| panic!("the dashboard did not load: {e}"));
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await
    .expect("set the viewport");
    wait_js(&page, "document.body.dataset.ready === 'true'", 10).await;
    page
}

/// Fills the sign-in form (`server` empty: the page's own Cradle) and submits it.
async fn sign_in(page: &Page, account: &str, token: &str, server: &str) {
    let script = format!(
        "(() => {{ const f = document.querySelector('#sign-in-form'); \
         f.elements.account.value = {}; f.elements.token.value = {}; f.elements.server.value = {}; \
         f.requestSubmit(); return true; }})()",
        json!(account),
        json!(token),
        json!(server)
    );
    js(page, &script).await;
}

/// Waits for the board (signed in) and for its event stream to be live, or for the page to
/// have fallen back to polling; returns that state.
async fn board_ready(page: &Page) -> String {
    wait_js(page, "!document.querySelector('#board').hidden", 10).await;
    let state = wait_js(
        page,
        "['live', 'polling'].includes(document.querySelector('#stream-state').dataset.state) \
         && document.querySelector('#stream-state').dataset.state",
        10,
    )
    .await;
    state.as_str().unwrap_or_default().to_string()
}

/// The longest a change may take to show: one second on the live stream. A page that polls
/// is accepted only when the server has no stream route (then one polling period more).
async fn bound(c: &Cradle, token: &str, mode: &str) -> Duration {
    if mode == "live" {
        return Duration::from_secs(1);
    }
    let stream = reqwest::Client::new()
        .get(format!("{}/v1/accounts/fam/events/stream", c.http))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET the stream");
    assert_eq!(
        stream.status().as_u16(),
        404,
        "the server serves the event stream, yet the page polls"
    );
    eprintln!("no event stream on this Cradle: the page polls, so the bound is {POLL:?} + 1 s");
    POLL + Duration::from_secs(1)
}

/// The JS expression of `baby`'s row in the clients table.
const BABY: &str = "document.querySelector('#clients tr[data-client=\"baby\"]')";

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

/// How long `expression` took to become truthy in `page` (waiting up to 10 s).
async fn time_until(page: &Page, expression: &str) -> Duration {
    let started = Instant::now();
    wait_js(page, expression, 10).await;
    started.elapsed()
}

/// Cradle serves the dashboard's files to anyone (no token, also once accounts exist), with
/// their content types and a Content-Security-Policy; `/dashboard` leads to the folder; the
/// library beside them is `clients/js/cradle.js` as is; any other name is the API's JSON `404`,
/// and the OpenAPI description has none of these routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_its_files_are_served_to_anyone_with_their_content_types() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (c, _, _) = cradle_with_fam(dir.path(), &[]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");

    let folder = http
        .get(format!("{}/dashboard", c.http))
        .send()
        .await
        .expect("GET /dashboard");
    assert_eq!(folder.status().as_u16(), 308, "{folder:?}");
    assert_eq!(folder.headers()["location"], "dashboard/", "{folder:?}");

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (path, content_type, source) in [
        ("/dashboard/", "text/html", "dashboard/index.html"),
        ("/dashboard/index.html", "text/html", "dashboard/index.html"),
        (
            "/dashboard/dashboard.js",
            "text/javascript",
            "dashboard/dashboard.js",
        ),
        (
            "/dashboard/dashboard.css",
            "text/css",
            "dashboard/dashboard.css",
        ),
        (
            "/dashboard/cradle.js",
            "text/javascript",
            "clients/js/cradle.js",
        ),
    ] {
        let answer = http
            .get(format!("{}{path}", c.http))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(answer.status().as_u16(), 200, "{path}: {answer:?}");
        let headers = answer.headers().clone();
        let served_type = headers["content-type"].to_str().unwrap_or_default();
        assert!(
            served_type.starts_with(content_type),
            "{path}: {served_type}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let csp = headers["content-security-policy"]
            .to_str()
            .unwrap_or_default();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        let body = answer.text().await.expect("the body");
        let file = std::fs::read_to_string(repo.join(source)).expect("the source file");
        assert!(
            body == file,
            "{path} is {source} as it is in the repository"
        );
    }

    let missing = http
        .get(format!("{}/dashboard/secrets.js", c.http))
        .send()
        .await
        .expect("GET a missing file");
    assert_eq!(missing.status().as_u16(), 404);
    let body: Value = missing.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    let doc = c.get_json("/v1/openapi.json", 200).await;
    let paths: Vec<&String> = doc["paths"]
        .as_object()
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    assert!(
        paths.iter().all(|p| !p.starts_with("/dashboard")),
        "{paths:?}"
    );
}

/// The dashboard served by Cradle, signed in with the account's token (a wrong token first:
/// the page says the server refused it): a device that connects over MQTT shows online within
/// a second (the event stream), with how its connection is known; the account token's kick is
/// refused as needing an admin token; the device's connection dies without DISCONNECT and the
/// page shows it offline with the reason `lost`. The sign-in survives a reload (session
/// storage). Screenshots: `dashboard-online.png`, `dashboard-offline.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_device_online_within_a_second_and_its_end_with_the_reason() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let (c, token, baby_secret) = cradle_with_fam(dir.path(), &[]).await;
    let page = open_dashboard(&browser, &format!("{}/dashboard", c.http)).await;
    assert_eq!(
        js(&page, "location.pathname").await,
        "/dashboard/",
        "/dashboard leads to the folder"
    );

    sign_in(&page, "fam", "not-a.valid-token", "").await;
    let refused = wait_js(
        &page,
        "document.querySelector('#sign-in-error').textContent",
        10,
    )
    .await;
    assert!(
        refused
            .as_str()
            .is_some_and(|t| t.contains("refused this token (401")),
        "{refused}"
    );
    assert_eq!(
        js(&page, "document.querySelector('#board').hidden").await,
        true
    );

    sign_in(&page, "fam", &token, "").await;
    let mode = board_ready(&page).await;
    let limit = bound(&c, &token, &mode).await;

    // Online, as soon as the broker's edge accepted the connection.
    let device = baby_station(&c, &baby_secret).await;
    let took = time_until(&page, &format!("{BABY}?.dataset.state === 'online'")).await;
    assert!(
        took <= limit,
        "the page showed baby online after {took:?} (bound {limit:?})\n{}",
        page.console_text()
    );
    eprintln!("baby shown online {took:?} after its CONNACK ({mode})");
    let events = wait_js(
        &page,
        "document.querySelector('#events li[data-type=\"connection.connected\"]')?.textContent",
        10,
    )
    .await;
    assert!(
        events.as_str().is_some_and(|t| t.contains("baby")),
        "{events}"
    );

    // The device reports its connection: the page says so.
    device
        .publish(
            "accounts/fam/clients/baby/status",
            common::status("connected", "baby-k1", now_millis(), None),
        )
        .await;
    if mode == "live" {
        wait_js(&page, &format!("{BABY}?.dataset.provenance === 'both'"), 10).await;
        let badge = js(
            &page,
            &format!("{BABY}.querySelector('.badge').textContent"),
        )
        .await;
        assert_eq!(badge, "reported by the device");
    }
    // Who is connected: the device's MQTT connection, with its peer.
    let connection = wait_js(
        &page,
        "document.querySelector('#connections tr[data-client=\"baby\"]')?.textContent",
        20,
    )
    .await;
    assert!(
        connection
            .as_str()
            .is_some_and(|t| t.contains("MQTT") && t.contains("127.0.0.1")),
        "{connection}"
    );

    // The account's token may not kick: the page says an admin token is needed.
    js(
        &page,
        &format!("{BABY}.querySelector('button').click(); true"),
    )
    .await;
    let flash = wait_js(
        &page,
        &format!("{BABY}?.querySelector('.flash')?.textContent"),
        10,
    )
    .await;
    assert!(
        flash
            .as_str()
            .is_some_and(|t| t.contains("needs an admin token")),
        "{flash}"
    );
    assert_eq!(js(&page, &format!("{BABY}.dataset.state")).await, "online");
    screenshot(&page, "dashboard-online").await;

    // The connection dies without DISCONNECT: offline, reason `lost`.
    device.drop_connection().await;
    let took = time_until(&page, &format!("{BABY}?.dataset.state === 'offline'")).await;
    let reason = js(
        &page,
        &format!("{BABY}.querySelector('.reason')?.textContent"),
    )
    .await;
    assert_eq!(reason, "lost", "{}", page.console_text());
    eprintln!("baby shown offline {took:?} after its connection died ({mode})");
    assert!(
        took <= limit + Duration::from_secs(2),
        "the end showed after {took:?}"
    );
    wait_js(
        &page,
        "document.querySelector('#events li[data-type=\"connection.disconnected\"]')",
        10,
    )
    .await;
    // The timeline: a bar per client from the history route, or a note that there is none.
    wait_js(
        &page,
        "document.querySelector('#timelines [data-client=\"baby\"] svg') \
         || !document.querySelector('#timeline-note').hidden",
        10,
    )
    .await;
    screenshot(&page, "dashboard-offline").await;

    // Signed in until the tab closes: a reload shows the board again.
    js(&page, "location.reload(); true").await;
    wait_js(&page, "document.body.dataset.ready === 'true'", 10).await;
    board_ready(&page).await;
    wait_js(&page, &format!("{BABY}?.dataset.state === 'offline'"), 10).await;
}

/// The dashboard's files served from another origin, with Cradle's URL in the server field:
/// from an origin not in `http.allowed_origins` the sign-in says the server refuses this page
/// and why; from an allowed origin it works, and an administrator's kick (the admin token)
/// ends the device's connection, shown in the event list with the reason `admin_disconnect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_cross_origin_when_allowed_and_an_admin_kicks_a_device() {
    let Some(browser) = Browser::launch().await else {
        return;
    };
    let site = tempfile::tempdir().expect("the site's folder");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (source, name) in [
        ("dashboard/index.html", "index.html"),
        ("dashboard/dashboard.js", "dashboard.js"),
        ("dashboard/dashboard.css", "dashboard.css"),
        ("clients/js/cradle.js", "cradle.js"),
    ] {
        std::fs::copy(repo.join(source), site.path().join(name))
            .unwrap_or_else(|e| panic!("copy {source}: {e}"));
    }
    let (allowed_port, _allowed) = serve_dir(site.path()).await;
    let (foreign_port, _foreign) = serve_dir(site.path()).await;
    let allowed = format!("http://127.0.0.1:{allowed_port}");
    let foreign = format!("http://127.0.0.1:{foreign_port}");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (c, _, baby_secret) = cradle_with_fam(
        dir.path(),
        &[("CRADLE_HTTP_ALLOWED_ORIGINS", allowed.clone())],
    )
    .await;

    let page = open_dashboard(&browser, &format!("{foreign}/index.html")).await;
    sign_in(&page, "fam", ADMIN_TOKEN, &c.http).await;
    let refused = wait_js(
        &page,
        "document.querySelector('#sign-in-error').textContent",
        15,
    )
    .await;
    assert!(
        refused
            .as_str()
            .is_some_and(|t| t.contains("http.allowed_origins") && t.contains(&foreign)),
        "{refused}"
    );
    drop(page);

    let page = open_dashboard(&browser, &format!("{allowed}/index.html")).await;
    sign_in(&page, "fam", ADMIN_TOKEN, &c.http).await;
    board_ready(&page).await;
    let device = baby_station(&c, &baby_secret).await;
    wait_js(&page, &format!("{BABY}?.dataset.state === 'online'"), 10).await;

    js(
        &page,
        &format!("{BABY}.querySelector('button').click(); true"),
    )
    .await;
    let flash = wait_js(
        &page,
        &format!("{BABY}?.querySelector('.flash')?.textContent"),
        10,
    )
    .await;
    assert!(
        flash
            .as_str()
            .is_some_and(|t| t.starts_with("disconnected")),
        "{flash}"
    );
    // The device's client reconnects at once (no ban): the end is read in the event list.
    wait_js(
        &page,
        "[...document.querySelectorAll('#events li[data-type=\"connection.disconnected\"]')] \
         .some((li) => li.textContent.includes('admin_disconnect'))",
        10,
    )
    .await;
    device.drop_connection().await;
}
