//! Helpers shared by Cradle's integration tests (`tests/*.rs`): free ports, the real
//! `cradle` binary as a child process, HTTP and MQTT clients, Mosquitto, TLS files and
//! PostgreSQL discovery. A library, so each test binary links what it uses.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, QoS};

mod bridge;
pub mod browser;
mod raw;
pub mod sse;

pub use bridge::{next_frame, upgrade_request, Ws};
pub use raw::{RawV4, RawV5};

/// The `cradle` binary cargo built for the integration tests: `CARGO_BIN_EXE_cradle` when
/// cargo sets it at run time, else `cradle` in the profile folder above the test binary's
/// `deps/` (where cargo puts a package's binaries).
pub fn cradle_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_cradle") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut dir = exe.parent().expect("the test binary's folder");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the profile folder");
    }
    let bin = dir.join(format!("cradle{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "no cradle binary at {}", bin.display());
    bin
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct ports free on loopback now: all are held until all are chosen, so the kernel
/// cannot hand the same ephemeral port out twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `cradle serve` child process on free ports.
pub struct Cradle {
    pub child: Child,
    pub http: String,
    pub mqtt_port: u16,
    pub v5_port: u16,
    pub ws_port: u16,
    pub database_url: String,
    pub workdir: PathBuf,
    pub stderr_path: PathBuf,
    /// Bearer token the HTTP helpers send (the admin token, when the test set one).
    pub token: Option<String>,
}

impl Cradle {
    /// Starts Cradle in `workdir` with a SQLite file there (or `database_url`) and waits until
    /// `/readyz` answers 200.
    pub async fn start(workdir: &Path, database_url: Option<String>) -> Cradle {
        let database_url = database_url
            .unwrap_or_else(|| format!("sqlite://{}", workdir.join("data/cradle.db").display()));
        Self::spawn_ready(workdir, &database_url, &[]).await
    }

    /// Spawns Cradle and waits until it is ready. Ports are picked free and released before
    /// the child binds them, so another process (a parallel test's broker binding port 0)
    /// can take one in between: a child that exits with "cannot listen" is started again
    /// on new ports (three tries).
    pub async fn spawn_ready(
        workdir: &Path,
        database_url: &str,
        extra_env: &[(&str, String)],
    ) -> Cradle {
        for _ in 0..3 {
            let mut cradle = Self::spawn(workdir, database_url, extra_env);
            match cradle.ready_or_exit().await {
                Ok(()) => return cradle,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("cradle exited before it was ready; its log:\n{log}"),
            }
        }
        panic!("cradle could not bind free ports three times")
    }

    /// Waits for `/readyz` to answer 200, or for the child to exit (returns its log).
    async fn ready_or_exit(&mut self) -> Result<(), String> {
        let url = format!("{}/readyz", self.http);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(self.log());
            }
            assert!(
                Instant::now() < deadline,
                "cradle not ready; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the child without waiting; `extra_env` overrides the defaults.
    pub fn spawn(workdir: &Path, database_url: &str, extra_env: &[(&str, String)]) -> Cradle {
        let [mqtt_port, v5_port, ws_port, http_port] = free_ports::<4>();
        let stderr_path = workdir.join(format!("cradle-{http_port}.log"));
        let stderr = std::fs::File::create(&stderr_path).expect("log file");
        let mut cmd = Command::new(cradle_bin());
        cmd.arg("serve")
            .current_dir(workdir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CRADLE_MQTT_LISTEN", format!("127.0.0.1:{mqtt_port}"))
            .env("CRADLE_MQTT_V5_LISTEN", format!("127.0.0.1:{v5_port}"))
            .env("CRADLE_MQTT_WS_LISTEN", format!("127.0.0.1:{ws_port}"))
            .env("CRADLE_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
            .env("CRADLE_DATABASE_URL", database_url)
            .env("CRADLE_LOG", "info,cradle=debug,rumqttd=off,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn cradle");
        Cradle {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
            mqtt_port,
            v5_port,
            ws_port,
            database_url: database_url.to_string(),
            workdir: workdir.to_path_buf(),
            stderr_path,
            token: extra_env
                .iter()
                .find(|(k, _)| *k == "CRADLE_ADMIN_TOKEN")
                .map(|(_, v)| v.clone()),
        }
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.http);
        let log = self.stderr_path.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "cradle not ready; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The child's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// GET `path` as JSON, asserting the status.
    pub async fn get_json(&self, path: &str, status: u16) -> serde_json::Value {
        let mut request = reqwest::Client::new().get(format!("{}{path}", self.http));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.expect("HTTP request");
        assert_eq!(r.status().as_u16(), status, "GET {path}");
        r.json().await.expect("JSON body")
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one metric line (name with labels, exactly as rendered).
    pub async fn metric(&self, series: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}")) as u64
    }

    /// Every event of `account`.
    pub async fn events(&self, account: &str) -> Vec<serde_json::Value> {
        let body = self
            .get_json(
                &format!("/v1/accounts/{account}/events?after=0&limit=1000"),
                200,
            )
            .await;
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `account` has `n` events and returns them.
    pub async fn wait_events(&self, account: &str, n: usize) -> Vec<serde_json::Value> {
        wait_for(
            Duration::from_secs(15),
            &format!("{n} events in {account}"),
            || async {
                let events = self.events(account).await;
                (events.len() >= n).then_some(events)
            },
        )
        .await
    }

    /// The events of `account` that `keep` keeps, as (type, session id, reason): a
    /// session's story.
    pub async fn session_events(
        &self,
        account: &str,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<(String, String, String)> {
        self.events(account)
            .await
            .iter()
            .filter(|e| keep(e))
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["data"]["session_id"].as_str().unwrap().to_string(),
                    e["data"]["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// One client's row from `/v1/accounts/{account}/clients`.
    pub async fn client(&self, account: &str, client: &str) -> Option<serde_json::Value> {
        let body = self
            .get_json(&format!("/v1/accounts/{account}/clients"), 200)
            .await;
        body["clients"]
            .as_array()?
            .iter()
            .find(|c| c["client_id"] == client)
            .cloned()
    }

    /// `d`, client `client` of `account`, reports `connected` on `connection`; returns it once
    /// Cradle recorded the client connected on it.
    pub async fn report_connected(
        &self,
        d: Device,
        account: &str,
        client: &str,
        connection: &str,
    ) -> Device {
        d.publish(
            &format!("accounts/{account}/clients/{client}/status"),
            status("connected", connection, 1_000, None),
        )
        .await;
        wait_for(Duration::from_secs(10), "station connected", || async {
            self.client(account, client)
                .await
                .filter(|r| r["connected"] == true && r["connection_id"] == connection)
        })
        .await;
        d
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_exit(&mut self.child, Duration::from_secs(40))
    }
}

impl Drop for Cradle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal by name with the system's `kill`.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// Waits for a child to exit, killing it after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit in {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A status payload.
pub fn status(kind: &str, connection_id: &str, at_millis: i64, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!(
            r#"{{"type":"{kind}","connection_id":"{connection_id}","reason":"{r}","at_millis":{at_millis}}}"#
        ),
        None => format!(
            r#"{{"type":"{kind}","connection_id":"{connection_id}","at_millis":{at_millis}}}"#
        ),
    }
}

/// An MQTT device: a rumqttc client whose event loop runs in a task until dropped.
pub struct Device {
    pub client: AsyncClient,
    pub task: tokio::task::JoinHandle<EventLoop>,
}

impl Device {
    /// Connects `client_id` to `port`, optionally with a retained Last Will on `will_topic`.
    pub async fn connect(port: u16, client_id: &str, will: Option<(&str, String)>) -> Device {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((topic, payload)) = will {
            options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
        }
        Self::connect_with(options).await
    }

    /// Connects with `options` and waits for the CONNACK.
    pub async fn connect_with(options: MqttOptions) -> Device {
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                        return eventloop
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("CONNACK in time")
            .expect("event loop alive");
        Device { client, task }
    }

    /// Publishes retained, QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish queued");
    }

    /// Drops the TCP connection without DISCONNECT, so the broker fires the Will.
    pub async fn drop_connection(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A PostgreSQL server URL for tests: `CRADLE_TEST_POSTGRES_URL`, else the `PG*` variables
/// `pg_virtualenv` sets. `None` when neither is there, unless `CRADLE_REQUIRE_POSTGRES=1`,
/// which makes a missing server a failure instead of a skip.
pub fn postgres_server_url() -> Option<String> {
    if let Ok(url) = std::env::var("CRADLE_TEST_POSTGRES_URL") {
        return Some(url);
    }
    let url = match (std::env::var("PGHOST"), std::env::var("PGUSER")) {
        (Ok(host), Ok(user)) => {
            let password = std::env::var("PGPASSWORD").unwrap_or_default();
            let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
            let db = std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into());
            Some(format!("postgres://{user}:{password}@{host}:{port}/{db}"))
        }
        _ => None,
    };
    if url.is_none() && std::env::var("CRADLE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("CRADLE_REQUIRE_POSTGRES=1 but no PostgreSQL: run the tests through scripts/test");
    }
    if url.is_none() {
        eprintln!("PostgreSQL not configured (no PG* variables): skipping the PostgreSQL half");
    }
    url
}

/// Creates a fresh database on the server and returns its URL.
pub async fn fresh_postgres_database(server_url: &str) -> String {
    create_database(server_url, &unique_database_name("cradle_test"), "")
        .await
        .expect("create test database")
}

/// A database name no other test (or run) uses: `prefix`, the process id and the time.
pub fn unique_database_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Runs `CREATE DATABASE {name}{options}` on the server and returns the new database's URL;
/// fails the test when the server cannot be reached.
pub async fn create_database(
    server_url: &str,
    name: &str,
    options: &str,
) -> Result<String, sea_orm::DbErr> {
    use sea_orm::{ConnectionTrait, Database};
    let admin = Database::connect(server_url)
        .await
        .expect("connect to PostgreSQL");
    let created = admin
        .execute_unprepared(&format!("CREATE DATABASE {name}{options}"))
        .await;
    let _ = admin.close().await;
    created?;
    let mut url = url::Url::parse(server_url).expect("postgres URL");
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Whether the Debian `mosquitto-clients` are installed; with `CRADLE_REQUIRE_MOSQUITTO=1`
/// (as `scripts/test` sets) a missing install is a failure instead of a skip.
pub fn mosquitto_available() -> bool {
    let found = Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    available(
        found,
        "CRADLE_REQUIRE_MOSQUITTO",
        "mosquitto-clients missing: run the tests through scripts/test",
        "mosquitto_pub not installed: skipping",
    )
}

/// Whether Python with paho-mqtt 2.x is installed; with `CRADLE_REQUIRE_PAHO=1` (as
/// `scripts/test` sets, after installing it) a missing install is a failure, not a skip.
pub fn paho_available() -> bool {
    let found = Command::new("python3")
        .args([
            "-c",
            "import paho.mqtt, sys; sys.exit(0 if int(paho.mqtt.__version__.split('.')[0]) >= 2 else 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    available(
        found,
        "CRADLE_REQUIRE_PAHO",
        "python3 with paho-mqtt 2.x missing: run the tests through scripts/test",
        "paho-mqtt 2.x not installed: skipping",
    )
}

/// `found`, for a tool some tests need: when it is missing, a failure with `missing` if the
/// variable `require` is `1` (as `scripts/test` sets), else `skipping` said on stderr.
pub fn available(found: bool, require: &str, missing: &str, skipping: &str) -> bool {
    if !found {
        assert!(std::env::var(require).as_deref() != Ok("1"), "{missing}");
        eprintln!("{skipping}");
    }
    found
}

/// Runs the `cradle` command line against `database_url` and returns the last line it
/// printed (where secrets are shown); fails the test when it fails. Tests seed their stores
/// before Cradle first starts on them, so the store is created when missing
/// (`CRADLE_CREATE_STORE`); `tests/accounts_cli.rs` checks the refusal without it.
pub fn cli(database_url: &str, args: &[&str]) -> String {
    let out = Command::new(cradle_bin())
        .args(args)
        .env("CRADLE_DATABASE_URL", database_url)
        .env("CRADLE_CREATE_STORE", "true")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run cradle");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// The user and password of the test Mosquitto brokers (Cradle presents them in
/// `CRADLE_BROKER_URL`; devices connecting to the broker directly use them too).
pub const BROKER_USER: &str = "cradle";
/// See [`BROKER_USER`].
pub const BROKER_PASSWORD: &str = "broker-secret";

/// A Mosquitto broker from Debian's `mosquitto` package on a free loopback port, with a
/// password file (anonymous refused) and persistence in its own folder; killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Certificate and key of a TLS listener (`mqtts://`), when started with TLS.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Mosquitto {
    /// The broker binary, or `None` (a failure under `CRADLE_REQUIRE_MOSQUITTO=1`).
    pub fn binary() -> Option<PathBuf> {
        let mut candidates = vec![
            PathBuf::from("/usr/sbin/mosquitto"),
            PathBuf::from("/usr/local/sbin/mosquitto"),
        ];
        if let Ok(path) = std::env::var("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|p| p.join("mosquitto")));
        }
        let found = candidates.into_iter().find(|p| p.is_file());
        available(
            found.is_some(),
            "CRADLE_REQUIRE_MOSQUITTO",
            "the mosquitto broker is missing: run the tests through scripts/test",
            "mosquitto broker not installed: skipping",
        );
        found
    }

    /// Starts a broker with its files in `dir` (created); `None` when Mosquitto is not
    /// installed (see [`Mosquitto::binary`]).
    pub async fn start(dir: &Path) -> Option<Mosquitto> {
        Self::start_with(dir, None).await
    }

    /// Like [`Mosquitto::start`], with a TLS listener presenting `cert` and `key`.
    pub async fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Option<Mosquitto> {
        Self::start_with(dir, Some((cert.to_path_buf(), key.to_path_buf()))).await
    }

    async fn start_with(dir: &Path, tls: Option<(PathBuf, PathBuf)>) -> Option<Mosquitto> {
        Self::binary()?;
        std::fs::create_dir_all(dir).expect("broker dir");
        let passwd = dir.join("passwd");
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([BROKER_USER, BROKER_PASSWORD])
            .status()
            .expect("run mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd failed");
        let mut broker = Mosquitto {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            tls,
        };
        broker.spawn().await;
        Some(broker)
    }

    /// `mqtt://user:password@127.0.0.1:port` (`mqtts://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!(
            "{scheme}://{BROKER_USER}:{BROKER_PASSWORD}@127.0.0.1:{}",
            self.port
        )
    }

    async fn spawn(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\npersistence true\npersistence_location {dir}/\nmax_queued_messages 1000000\nmax_inflight_messages 0\n",
            port = self.port,
            passwd = self.dir.join("passwd").display(),
            dir = self.dir.display(),
        );
        if let Some((cert, key)) = &self.tls {
            text.push_str(&format!(
                "certfile {}\nkeyfile {}\n",
                cert.display(),
                key.display()
            ));
        }
        // As root, Mosquitto would switch to its own user, who cannot read this folder.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            text.push_str("user root\n");
        }
        std::fs::write(&conf, text).expect("mosquitto.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .expect("broker log");
        let child = Command::new(Self::binary().expect("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen; its log:\n{}",
                std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the broker as an operator would (SIGTERM: Mosquitto writes its persistence
    /// file), waits for it to exit, and starts it again on the same port.
    pub async fn restart(&mut self, down_for: Duration) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            wait_exit(&mut child, Duration::from_secs(10));
        }
        tokio::time::sleep(down_for).await;
        self.spawn().await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Cradle (SQLite in `dir`) with its MQTT TLS and WebSocket-over-TLS listeners on, serving a
/// certificate for 127.0.0.1 signed by a throwaway CA (webpki refuses a CA certificate used
/// as the server's own). Returns it with the TLS port, the WSS port and the CA file.
pub async fn cradle_with_tls(dir: &Path) -> (Cradle, u16, u16, PathBuf) {
    let (cert, key, ca) = tls_files(dir);
    let [tls_port, wss_port] = free_ports::<2>();
    let config = dir.join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\ntls_listen = \"127.0.0.1:{tls_port}\"\nwss_listen = \"127.0.0.1:{wss_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.join("t.db").display());
    let env = [("CRADLE_CONFIG", config.display().to_string())];
    let cradle = Cradle::spawn_ready(dir, &db, &env).await;
    (cradle, tls_port, wss_port, ca)
}

/// A throwaway CA and a certificate for `127.0.0.1` signed by it (openssl, P-256, one day):
/// returns (certificate, key, CA certificate) in `dir`.
pub fn tls_files(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-days", "1", "-subj", "/CN=cradle-test-ca"],
        ]
        .concat()
        .into_iter()
        .chain(["-keyout", "ca.key", "-out", "ca.pem"])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    (p("cert.pem"), p("key.pem"), p("ca.pem"))
}

/// An MQTT client of `port` whose incoming publishes arrive on a channel, returned once
/// every filter of `subscribe` is acknowledged (QoS 1).
pub async fn subscriber(
    port: u16,
    id: &str,
    subscribe: &[&str],
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 1000);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let n = subscribe.len();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut acks = 0;
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    acks += 1;
                    if acks == n {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) if n == 0 => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    for f in subscribe {
        client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("MQTT ready")
        .unwrap();
    (client, rx)
}
