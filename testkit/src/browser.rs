//! Headless Chromium for the browser tests (`tests/browser.rs`), driven over the DevTools
//! protocol (CDP) with tokio-tungstenite: no Node, no driver binary. Also the two network pieces
//! those tests need: a static file server (so a test page has an origin of its own) and a TCP
//! proxy that can cut every connection at once (a network loss the browser notices).
//!
//! ```no_run
//! # async fn demo() {
//! use cradle_testkit::browser::{serve_dir, Browser};
//! let Some(browser) = Browser::launch().await else { return }; // skipped: no Chromium
//! let (port, _server) = serve_dir(std::path::Path::new("site")).await;
//! let page = browser.new_page(&format!("http://127.0.0.1:{port}/page.html")).await.unwrap();
//! assert_eq!(page.evaluate("1 + 1").await.unwrap(), 2);
//! # }
//! ```

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// How long one DevTools command may take before it is an error (an `evaluate` that awaits a
/// promise included: harness functions should time out on their own well before).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long Chromium may take to start and write its `DevToolsActivePort` file.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags Chromium runs with: headless, no sandbox (containers, root), and none of the
/// background traffic (updates, sync, first-run pages) a test does not want to wait for.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
];

/// A task that is aborted when this handle is dropped (a server's accept loop, a reader).
#[derive(Debug)]
pub struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl From<JoinHandle<()>> for TaskGuard {
    /// Guards a task a test spawned itself (a fake server's accept loop).
    fn from(task: JoinHandle<()>) -> Self {
        TaskGuard(task)
    }
}

/// Locks `m`, also after another thread panicked while holding it (the data are logs and
/// waiting callers: still usable).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The Chromium binary: `CRADLE_CHROMIUM` when set, else Debian's `/usr/bin/chromium` (or
/// `chromium-browser`). `None` when there is none, a failure under `CRADLE_REQUIRE_CHROMIUM=1`.
pub fn chromium_binary() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("CRADLE_CHROMIUM") {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(PathBuf::from("/usr/bin/chromium"));
    candidates.push(PathBuf::from("/usr/bin/chromium-browser"));
    let found = candidates.into_iter().find(|p| p.is_file());
    crate::available(
        found.is_some(),
        "CRADLE_REQUIRE_CHROMIUM",
        "Chromium is missing (CRADLE_REQUIRE_CHROMIUM=1): install Debian's chromium or set CRADLE_CHROMIUM",
        "chromium not installed: skipping the browser test",
    );
    found
}

/// One DevTools connection: commands go out through the writer task, answers come back to
/// their caller by id, and each page's console lines are kept by session id.
struct Cdp {
    next_id: AtomicU64,
    out: mpsc::UnboundedSender<Message>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>,
    console: Mutex<HashMap<String, Vec<String>>>,
    /// Set when the connection to the browser is gone: later commands fail at once.
    closed: AtomicBool,
}

impl Cdp {
    /// Sends `method` (to the page of `session`, or to the browser) and waits for its result.
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if self.closed.load(Ordering::Acquire)
            || self.out.send(Message::text(message.to_string())).is_err()
        {
            lock(&self.pending).remove(&id);
            return Err(format!("{method}: the connection to Chromium is closed"));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer.map_err(|e| format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: the connection to Chromium closed")),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(format!("{method}: no answer in {COMMAND_TIMEOUT:?}"))
            }
        }
    }

    /// Sends `method` without waiting for the answer (from `Drop`).
    fn send_only(&self, session: Option<&str>, method: &str, params: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let _ = self.out.send(Message::text(message.to_string()));
    }

    /// Handles one message from the browser: an answer to a caller, or an event.
    fn dispatch(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = message["id"].as_u64() {
            if let Some(tx) = lock(&self.pending).remove(&id) {
                let answer = match message.get("error") {
                    Some(error) => Err(error.to_string()),
                    None => Ok(message["result"].clone()),
                };
                let _ = tx.send(answer);
            }
            return;
        }
        let (Some(session), Some(method)) =
            (message["sessionId"].as_str(), message["method"].as_str())
        else {
            return;
        };
        if let Some(line) = console_line(method, &message["params"]) {
            lock(&self.console)
                .entry(session.to_string())
                .or_default()
                .push(line);
        }
    }

    /// The browser connection ended: every waiting caller gets an error.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.pending).clear();
    }
}

/// One console line from a DevTools event: `console.*` calls, uncaught exceptions, and the
/// browser's own log (failed loads, CORS refusals, WebSocket errors).
fn console_line(method: &str, params: &Value) -> Option<String> {
    match method {
        "Runtime.consoleAPICalled" => {
            let args: Vec<String> = params["args"]
                .as_array()
                .map(|args| args.iter().map(remote_object_text).collect())
                .unwrap_or_default();
            Some(format!(
                "console.{}: {}",
                params["type"].as_str().unwrap_or("log"),
                args.join(" ")
            ))
        }
        "Runtime.exceptionThrown" => Some(format!(
            "uncaught: {}",
            exception_text(&params["exceptionDetails"])
        )),
        "Log.entryAdded" => {
            let entry = &params["entry"];
            Some(format!(
                "browser {} ({}): {} {}",
                entry["level"].as_str().unwrap_or("?"),
                entry["source"].as_str().unwrap_or("?"),
                entry["text"].as_str().unwrap_or(""),
                entry["url"].as_str().unwrap_or("")
            ))
        }
        _ => None,
    }
}

/// A `Runtime.RemoteObject` as text: its value, else its description.
fn remote_object_text(object: &Value) -> String {
    match (object.get("value"), object["unserializableValue"].as_str()) {
        (Some(Value::String(s)), _) => s.clone(),
        (Some(v), _) => v.to_string(),
        (None, Some(u)) => u.to_string(),
        (None, None) => object["description"]
            .as_str()
            .or_else(|| object["type"].as_str())
            .unwrap_or("?")
            .to_string(),
    }
}

/// The text of a `Runtime.ExceptionDetails`: the exception's description (message and stack)
/// when there is one, else the details' text.
fn exception_text(details: &Value) -> String {
    details["exception"]["description"]
        .as_str()
        .map(str::to_string)
        .or_else(|| details["exception"].get("value").map(|v| v.to_string()))
        .unwrap_or_else(|| details["text"].as_str().unwrap_or("exception").to_string())
}

/// Whether a value returned by `evaluate` is truthy as JavaScript sees it.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A headless Chromium in a throwaway profile, and the DevTools connection to it. Dropping it
/// kills Chromium (its whole process group) and removes the profile.
pub struct Browser {
    child: Child,
    cdp: Arc<Cdp>,
    _reader: TaskGuard,
    _writer: TaskGuard,
    /// The profile (`--user-data-dir`) and Chromium's log; removed after the kill.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium and connects to it. `None` when Chromium is not installed (see
    /// [`chromium_binary`]); a Chromium that is installed but does not start fails the test with
    /// its log.
    pub async fn launch() -> Option<Browser> {
        let binary = chromium_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("cradle-chromium-")
            .tempdir()
            .expect("a temporary folder for Chromium's profile");
        let profile = dir.path().join("profile");
        let log_path = dir.path().join("chromium.log");
        let log = std::fs::File::create(&log_path).expect("Chromium's log file");
        let mut command = Command::new(&binary);
        command
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // A group of its own, so the drop kills Chromium's helper processes too.
            .process_group(0);
        let mut child = command.spawn().expect("spawn Chromium");
        let endpoint = match devtools_endpoint(&mut child, &profile).await {
            Ok(endpoint) => endpoint,
            Err(why) => {
                kill_group(&mut child);
                panic!(
                    "Chromium ({}) did not start: {why}; its log:\n{}",
                    binary.display(),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        let (ws, _) = match tokio_tungstenite::connect_async(&endpoint).await {
            Ok(connected) => connected,
            Err(e) => {
                kill_group(&mut child);
                panic!("connect to Chromium's DevTools at {endpoint}: {e}");
            }
        };
        let (mut sink, mut stream) = ws.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        let cdp = Arc::new(Cdp {
            next_id: AtomicU64::new(1),
            out,
            pending: Mutex::new(HashMap::new()),
            console: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        let writer = tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        });
        let reading = cdp.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Text(text) => reading.dispatch(text.as_str()),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            reading.close();
        });
        Some(Browser {
            child,
            cdp,
            _reader: TaskGuard(reader),
            _writer: TaskGuard(writer),
            dir,
        })
    }

    /// Opens a new tab on `url` and returns it once the document has loaded
    /// (`document.readyState` is `complete`). The page's console is collected from the start.
    pub async fn new_page(&self, url: &str) -> Result<Page, String> {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or_else(|| format!("Target.createTarget answered {target}"))?
            .to_string();
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| format!("Target.attachToTarget answered {attached}"))?
            .to_string();
        let page = Page {
            cdp: self.cdp.clone(),
            session,
            target_id,
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).await?;
        }
        let navigated = page.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = navigated["errorText"].as_str() {
            return Err(format!("navigate to {url}: {error}"));
        }
        page.wait_for(
            "location.href !== 'about:blank' && document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await?;
        Ok(page)
    }

    /// The log Chromium wrote so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Kills Chromium's process group (the browser and its helpers) and reaps the browser.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory preconditions; the group is the child's own (spawned with
        // process_group(0), so its id is the child's pid) and the child is not reaped yet, so
        // the id cannot name another group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for Chromium's `DevToolsActivePort` file (port, then path, one a line) and returns the
/// browser's DevTools WebSocket URL; fails when Chromium exits or takes too long.
async fn devtools_endpoint(child: &mut Child, profile: &Path) -> Result<String, String> {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                if let Ok(port) = port.trim().parse::<u16>() {
                    return Ok(format!("ws://127.0.0.1:{port}{}", path.trim()));
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited with {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("no {} after {LAUNCH_TIMEOUT:?}", file.display()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One tab, attached with a flattened DevTools session. Dropping it closes the tab.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    target_id: String,
}

impl Page {
    /// Sends a DevTools command to this page and returns its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// Evaluates `expression` in the page (`Runtime.evaluate`, awaiting a returned promise) and
    /// returns its value as JSON (`null` for `undefined`). A thrown exception or a rejected
    /// promise is an `Err` with the exception's text.
    pub async fn evaluate(&self, expression: &str) -> Result<Value, String> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "awaitPromise": true,
                    "returnByValue": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(details) = answer.get("exceptionDetails") {
            return Err(exception_text(details));
        }
        Ok(answer["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Evaluates `expression` every 50 ms until its value is truthy, and returns that value;
    /// `Err` after `timeout`, with the last value or exception.
    pub async fn wait_for(&self, expression: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.evaluate(expression).await {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => format!("the last value was {v}"),
                Err(e) => format!("the last evaluation threw: {e}"),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for `{expression}`: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the whole page (`Page.captureScreenshot` beyond the viewport, clipped to the
    /// document's size), as bytes.
    pub async fn screenshot(&self) -> Result<Vec<u8>, String> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &metrics["cssContentSize"];
        let (width, height) = (
            size["width"].as_f64().unwrap_or(800.0),
            size["height"].as_f64().unwrap_or(600.0),
        );
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 },
                }),
            )
            .await?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| format!("Page.captureScreenshot answered {shot}"))?;
        base64_decode(data)
    }

    /// The page's console so far: `console.*` calls, uncaught exceptions and the browser's log
    /// lines for it (failed loads, CORS refusals), oldest first.
    pub fn console(&self) -> Vec<String> {
        lock(&self.cdp.console)
            .get(&self.session)
            .cloned()
            .unwrap_or_default()
    }

    /// The console as one text block, for a failure message.
    pub fn console_text(&self) -> String {
        let lines = self.console();
        if lines.is_empty() {
            "(the page's console is empty)".to_string()
        } else {
            lines.join("\n")
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.cdp.send_only(
            None,
            "Target.closeTarget",
            json!({ "targetId": self.target_id }),
        );
    }
}

/// Decodes standard base64 (with padding), as DevTools sends binary data.
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    fn value(c: u8) -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("not base64: {:?}", c as char)),
        }
        .into())
    }
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if bytes.len() % 4 != 0 {
        return Err(format!("base64 of {} characters", bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return Err("base64 with more than two padding characters".to_string());
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let group = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&group[..3 - pad]);
    }
    Ok(out)
}

/// Serves the files of `dir` over HTTP on a free loopback port: `GET` (and `HEAD`) only,
/// `/` is `index.html`, each response closes its connection and is not cached. Returns the
/// port and the server's task (stopped when dropped).
pub async fn serve_dir(dir: &Path) -> (u16, TaskGuard) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the static server");
    let port = listener
        .local_addr()
        .expect("the static server's address")
        .port();
    let root = Arc::new(dir.to_path_buf());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_file(stream, root.clone()));
        }
    });
    (port, TaskGuard(task))
}

/// The `Content-Type` of a served file, by its extension (module scripts need a JavaScript
/// type).
pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("css") => "text/css; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Reads one request from `stream` and answers it from `root`.
async fn serve_file(mut stream: TcpStream, root: Arc<PathBuf>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("");
    let (status, content_type, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n".to_vec(),
        )
    } else {
        match file_of(&root, path).map(|file| (std::fs::read(&file), file)) {
            Some((Ok(body), file)) => ("200 OK", content_type(&file), body),
            _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(&body);
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// The file a request path names under `root`, or `None` for a path that could leave it.
fn file_of(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() {
        "index.html"
    } else {
        relative
    };
    if !path.starts_with('/')
        || relative
            .split('/')
            .any(|part| part == ".." || part.contains('\\'))
    {
        return None;
    }
    Some(root.join(relative))
}

/// What the proxy's tasks share with its handle.
struct ProxyShared {
    refusing: AtomicBool,
    /// Bumped by [`Proxy::cut`]: every live connection watches it and aborts.
    cuts: watch::Sender<u64>,
    live: AtomicUsize,
    accepted: AtomicU64,
}

/// A TCP proxy on a free loopback port to `127.0.0.1:{target}`, for network loss on demand:
/// [`Proxy::cut`] resets every live connection at once, [`Proxy::set_refusing`] resets new
/// ones as they arrive. Dropping it stops it and cuts what is left.
pub struct Proxy {
    /// The proxy's own port: point the client here instead of at the target.
    pub port: u16,
    shared: Arc<ProxyShared>,
    _accept: TaskGuard,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:{target}`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let shared = Arc::new(ProxyShared {
            refusing: AtomicBool::new(false),
            cuts: watch::channel(0).0,
            live: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
        });
        let state = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                state.accepted.fetch_add(1, Ordering::Relaxed);
                if state.refusing.load(Ordering::Acquire) {
                    // A reset, not a FIN: the connection was refused, not ended.
                    let _ = client.set_zero_linger();
                    drop(client);
                    continue;
                }
                // Subscribed before the task runs, so a cut right after the accept reaches it.
                let cuts = state.cuts.subscribe();
                tokio::spawn(relay(client, target, state.clone(), cuts));
            }
        });
        Proxy {
            port,
            shared,
            _accept: TaskGuard(accept),
        }
    }

    /// Resets every live connection, both ways, at once (no WebSocket close frame, no FIN):
    /// the browser and the server each see the connection fail. Returns how many were cut.
    pub fn cut(&self) -> usize {
        let live = self.shared.live.load(Ordering::Acquire);
        self.shared.cuts.send_modify(|n| *n += 1);
        live
    }

    /// While `refusing`, each new connection is accepted and reset at once (the server looks
    /// down); live connections are left alone (see [`Proxy::cut`]).
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::Release);
    }

    /// Connections relayed now.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Connections accepted so far, refused ones included.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }
}

/// Counts a relayed connection while it lives.
struct LiveGuard(Arc<ProxyShared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Relays `client` to the target until either side closes or the proxy cuts it.
async fn relay(
    mut client: TcpStream,
    target: u16,
    shared: Arc<ProxyShared>,
    mut cuts: watch::Receiver<u64>,
) {
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
        let _ = client.set_zero_linger();
        return;
    };
    shared.live.fetch_add(1, Ordering::AcqRel);
    let _live = LiveGuard(shared.clone());
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => false,
        _ = cuts.changed() => true,
    };
    if cut {
        // Dropped with SO_LINGER 0: both ends get a reset.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(super::base64_decode("iVBORw==").unwrap(), b"\x89PNG");
        assert_eq!(super::base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(super::base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(super::base64_decode("").unwrap(), b"");
        assert!(super::base64_decode("TWE").is_err());
        assert!(super::base64_decode("T===").is_err());
        assert!(super::base64_decode("TW!=").is_err());
    }
}
