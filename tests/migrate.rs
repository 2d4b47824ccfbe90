//! `cradle migrate` against real databases: an embedded SQLite store with rows in every
//! table (more than one page of events, ids whose byte order differs from a locale's order)
//! is copied to PostgreSQL through the real binary, checked row by row and by checksum,
//! re-run, refused or merged into a non-empty target, and fed bad input.

use cradle_testkit as common;

use std::path::Path;
use std::process::Command;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use cradle::accounts::{self, CredentialKind};
use cradle::config::StoreConfig;
use cradle::migrate::{migrate, MigrateOptions, Outcome};
use cradle::store::{
    clients, credentials, events, parent_stations, sessions, NewEvent, Store, StoredEvent,
};
use sea_orm::{ActiveValue, EntityTrait};

/// Account ids whose byte order (`A_z`, `a-b`, `a.c`, `aB`, `ab`) is not an English
/// collation's, so a copy that walked PostgreSQL rows in locale order would not verify.
const ACCOUNTS: [&str; 5] = ["ab", "aB", "a-b", "a.c", "A_z"];
const CLIENTS_PER_ACCOUNT: usize = 50;
const VERSIONS_PER_CLIENT: i64 = 5;
/// 5 accounts x 50 clients x 5 versions: more than one page of 1000.
const EVENTS: usize = ACCOUNTS.len() * CLIENTS_PER_ACCOUNT * VERSIONS_PER_CLIENT as usize;

fn config(url: &str) -> StoreConfig {
    StoreConfig {
        database_url: url.to_string(),
        ..StoreConfig::default()
    }
}

fn sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(name).display())
}

/// Secrets issued in the source, to check they still verify in the target.
struct Seeded {
    device_secret: String,
    token_secret: String,
}

/// Fills every table of the store at `url` through the library.
async fn seed(url: &str) -> Seeded {
    let store = Store::connect(&config(url)).await.expect("open the source");
    for a in ACCOUNTS {
        accounts::create_account(&store, a, &format!("Account «{a}»"))
            .await
            .unwrap();
    }
    let device = accounts::issue(&store, CredentialKind::Device, Some("ab"), Some("cam-1"))
        .await
        .unwrap();
    let token = accounts::issue(&store, CredentialKind::Token, Some("aB"), None)
        .await
        .unwrap();
    accounts::issue(&store, CredentialKind::Operator, None, None)
        .await
        .unwrap();
    let revoked = accounts::issue(&store, CredentialKind::Token, Some("a-b"), None)
        .await
        .unwrap();
    accounts::revoke(&store, &revoked.credential.credential_id)
        .await
        .unwrap();

    // Events, one transaction per version round, and the clients read model.
    for version in 1..=VERSIONS_PER_CLIENT {
        let tx = store.begin().await.unwrap();
        let mut new = Vec::new();
        let mut rows = Vec::new();
        for a in ACCOUNTS {
            for c in 0..CLIENTS_PER_ACCOUNT {
                let client = client_id(c);
                let connected = version % 2 == 1;
                let at = 1_700_000_000_000 + version * 1000 + c as i64;
                new.push(NewEvent {
                    account_id: a.to_string(),
                    stream: format!("connection/{a}/{client}"),
                    stream_version: version,
                    event_type: if connected {
                        "connection.connected"
                    } else {
                        "connection.disconnected"
                    },
                    event_version: 1,
                    data: serde_json::json!({
                        "connection_id": format!("k{version}"),
                        "note": "ünïcödé \"quoted\" \\ back",
                        "n": version,
                    }),
                    at_millis: at,
                    idempotency_key: format!("{a}/{client}/{version}"),
                });
                rows.push(clients::Model {
                    account_id: a.to_string(),
                    client_id: client,
                    connected,
                    connection_id: format!("k{version}"),
                    connected_at_millis: at,
                    disconnected_at_millis: (!connected).then_some(at + 1),
                    last_disconnect_reason: (!connected).then(|| "lost".to_string()),
                    stream_version: version,
                    updated_at_millis: at + 2,
                    edge_connection_id: None,
                });
            }
        }
        tx.append(&new, 1_700_000_000_000 + version).await.unwrap();
        tx.upsert_clients(&rows).await.unwrap();
        tx.commit().await.unwrap();
    }

    let mut session_rows = Vec::new();
    let mut station_rows = Vec::new();
    for a in ACCOUNTS {
        for i in 0..12 {
            let ended = i % 3 == 0;
            session_rows.push(sessions::ActiveModel {
                account_id: ActiveValue::Set(a.to_string()),
                session_id: ActiveValue::Set(format!(
                    "S-{i}{}",
                    if i % 2 == 0 { "x" } else { "X" }
                )),
                client_id: ActiveValue::Set(client_id(i)),
                connection_id: ActiveValue::Set("k1".into()),
                name: ActiveValue::Set(format!("Nursery {i}")),
                started_at_millis: ActiveValue::Set(1_000 + i as i64),
                active: ActiveValue::Set(!ended),
                ended_at_millis: ActiveValue::Set(ended.then_some(2_000 + i as i64)),
                end_reason: ActiveValue::Set(ended.then(|| "ended".to_string())),
                recorded_at_millis: ActiveValue::Set(1_001 + i as i64),
            });
            station_rows.push(parent_stations::ActiveModel {
                account_id: ActiveValue::Set(a.to_string()),
                client_id: ActiveValue::Set(format!("parent.{i}")),
                announcement: ActiveValue::Set(format!(r#"{{"name":"Parent {i}","v":true}}"#)),
                updated_at_millis: ActiveValue::Set(3_000 + i as i64),
            });
        }
    }
    sessions::Entity::insert_many(session_rows)
        .exec(store.db())
        .await
        .unwrap();
    parent_stations::Entity::insert_many(station_rows)
        .exec(store.db())
        .await
        .unwrap();
    store.close().await.unwrap();
    Seeded {
        device_secret: device.secret,
        token_secret: token.secret,
    }
}

/// Client ids in mixed case and punctuation.
fn client_id(i: usize) -> String {
    match i % 4 {
        0 => format!("cam-{i}"),
        1 => format!("Cam_{i}"),
        2 => format!("cam.{i}"),
        _ => format!("cAm:{i}"),
    }
}

/// Every row of every table, sorted by primary key in byte order.
#[derive(Debug, PartialEq)]
struct Dump {
    accounts: Vec<cradle::store::accounts::Model>,
    credentials: Vec<credentials::Model>,
    clients: Vec<clients::Model>,
    sessions: Vec<sessions::Model>,
    parent_stations: Vec<parent_stations::Model>,
    events: Vec<events::Model>,
}

async fn dump(url: &str) -> Dump {
    let store = Store::connect(&config(url)).await.unwrap();
    let db = store.db();
    let mut d = Dump {
        accounts: cradle::store::accounts::Entity::find()
            .all(db)
            .await
            .unwrap(),
        credentials: credentials::Entity::find().all(db).await.unwrap(),
        clients: clients::Entity::find().all(db).await.unwrap(),
        sessions: sessions::Entity::find().all(db).await.unwrap(),
        parent_stations: parent_stations::Entity::find().all(db).await.unwrap(),
        events: events::Entity::find().all(db).await.unwrap(),
    };
    d.accounts.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    d.credentials
        .sort_by(|a, b| a.credential_id.cmp(&b.credential_id));
    d.clients
        .sort_by(|a, b| (&a.account_id, &a.client_id).cmp(&(&b.account_id, &b.client_id)));
    d.sessions
        .sort_by(|a, b| (&a.account_id, &a.session_id).cmp(&(&b.account_id, &b.session_id)));
    d.parent_stations
        .sort_by(|a, b| (&a.account_id, &a.client_id).cmp(&(&b.account_id, &b.client_id)));
    d.events.sort_by_key(|e| e.position);
    store.close().await.unwrap();
    d
}

/// The documented checksum, computed independently: BLAKE2b-256 over one JSON array of
/// column values per row, newline-terminated, in primary-key (byte) order.
fn checksum(rows: impl IntoIterator<Item = serde_json::Value>) -> String {
    let mut h = Blake2b::<U32>::new();
    for r in rows {
        h.update(r.to_string().as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Dump {
    /// (table, rows, checksum) for every table.
    fn figures(&self) -> Vec<(&'static str, usize, String)> {
        use serde_json::json;
        vec![
            (
                "accounts",
                self.accounts.len(),
                checksum(
                    self.accounts
                        .iter()
                        .map(|r| json!([r.account_id, r.name, r.created_at_millis])),
                ),
            ),
            (
                "credentials",
                self.credentials.len(),
                checksum(self.credentials.iter().map(|r| {
                    json!([
                        r.credential_id,
                        r.kind.as_str(),
                        r.account_id,
                        r.client_id,
                        r.secret_hash,
                        r.created_at_millis,
                        r.revoked_at_millis
                    ])
                })),
            ),
            (
                "clients",
                self.clients.len(),
                checksum(self.clients.iter().map(|r| {
                    json!([
                        r.account_id,
                        r.client_id,
                        r.connected,
                        r.connection_id,
                        r.connected_at_millis,
                        r.disconnected_at_millis,
                        r.last_disconnect_reason,
                        r.stream_version,
                        r.updated_at_millis,
                        r.edge_connection_id
                    ])
                })),
            ),
            (
                "sessions",
                self.sessions.len(),
                checksum(self.sessions.iter().map(|r| {
                    json!([
                        r.account_id,
                        r.session_id,
                        r.client_id,
                        r.connection_id,
                        r.name,
                        r.started_at_millis,
                        r.active,
                        r.ended_at_millis,
                        r.end_reason,
                        r.recorded_at_millis
                    ])
                })),
            ),
            (
                "parent_stations",
                self.parent_stations.len(),
                checksum(self.parent_stations.iter().map(|r| {
                    json!([
                        r.account_id,
                        r.client_id,
                        r.announcement,
                        r.updated_at_millis
                    ])
                })),
            ),
            (
                "events",
                self.events.len(),
                checksum(self.events.iter().map(|r| {
                    json!([
                        r.position,
                        r.account_id,
                        r.stream,
                        r.stream_version,
                        r.event_type,
                        r.event_version,
                        r.data,
                        r.at_millis,
                        r.recorded_at_millis,
                        r.idempotency_key
                    ])
                })),
            ),
        ]
    }
}

/// What one `cradle migrate` run printed.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cradle migrate ARGS` (the real binary) and captures its output.
fn cradle_migrate(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .arg("migrate")
        .args(args)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run cradle");
    let run = Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "cradle migrate panicked:\n{}",
        run.stderr
    );
    run
}

/// Asserts a run failed with one line on stderr containing every one of `needles`.
fn assert_refused(run: &Run, needles: &[&str]) {
    assert!(!run.success, "expected a failure; stdout:\n{}", run.stdout);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one-line error expected:\n{}", run.stderr);
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {}", lines[0]);
    }
}

/// Asserts the password of `url` (if it has one) does not appear in `output`.
fn assert_no_password(url: &str, output: &str) {
    if let Some(p) = url::Url::parse(url).unwrap().password() {
        assert!(
            !output.contains(&format!(":{p}@")),
            "password printed:\n{output}"
        );
    }
}

/// The (rows, checksum, status) the command printed for `table`.
fn printed(stdout: &str, table: &str) -> (usize, String, String) {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(table))
        .unwrap_or_else(|| panic!("no line for {table} in:\n{stdout}"));
    let mut parts = line.split_whitespace();
    parts.next();
    let rows = parts.next().unwrap().parse().unwrap();
    let checksum = parts.next().unwrap().to_string();
    let status = line[line.find('(').unwrap()..].to_string();
    (rows, checksum, status)
}

/// A new database on the PostgreSQL server, with an ICU English collation when the server
/// has one (text then sorts `ab` before `aB`, unlike byte order).
async fn fresh_database(server: &str) -> String {
    let name = common::unique_database_name("cradle_migrate");
    let icu = " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C.UTF-8'";
    match common::create_database(server, &name, icu).await {
        Ok(url) => url,
        Err(_) => common::fresh_postgres_database(server).await,
    }
}

#[tokio::test]
async fn round_trip_to_postgres_keeps_every_row_key_and_secret() {
    let Some(server) = common::postgres_server_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(dir.path(), "cradle.db");
    let seeded = seed(&from).await;
    let to = fresh_database(&server).await;

    let run = cradle_migrate(&["--from", &from, "--to", &to]);
    assert!(run.success, "migrate failed:\n{}", run.stderr);

    let source = dump(&from).await;
    let target = dump(&to).await;
    assert_eq!(source.events.len(), EVENTS);
    assert!(source.sessions.iter().any(|s| s.active) && source.sessions.iter().any(|s| !s.active));
    assert_eq!(source, target, "every row of every table, keys included");
    for (table, rows, sum) in source.figures() {
        assert!(rows > 0, "{table} has rows");
        let (printed_rows, printed_sum, status) = printed(&run.stdout, table);
        assert_eq!(printed_rows, rows, "{table} rows");
        assert_eq!(printed_sum, sum, "{table} checksum as documented");
        assert_eq!(status, format!("(copied {rows})"), "{table}");
    }
    assert_eq!(source.figures(), target.figures());
    assert_no_password(&to, &run.stdout);

    let src = Store::connect(&config(&from)).await.unwrap();
    let dst = Store::connect(&config(&to)).await.unwrap();
    let all: Vec<StoredEvent> = src.all_events().await.unwrap();
    assert_eq!(all, dst.all_events().await.unwrap());
    for a in ACCOUNTS {
        // `Store::clients` orders by the database's collation (ICU here), so compare as sets.
        let mut s = src.clients(a).await.unwrap();
        let mut d = dst.clients(a).await.unwrap();
        s.sort_by(|x, y| x.client_id.cmp(&y.client_id));
        d.sort_by(|x, y| x.client_id.cmp(&y.client_id));
        assert_eq!(s.len(), CLIENTS_PER_ACCOUNT);
        assert_eq!(s, d);
    }
    // A reader's cursor means the same thing on both.
    let cursor = all[all.len() / 2].position;
    assert_eq!(
        src.events("aB", cursor, 50).await.unwrap(),
        dst.events("aB", cursor, 50).await.unwrap()
    );

    // Secrets issued on SQLite verify against PostgreSQL.
    assert!(
        accounts::verify_device(&dst, "ab", "cam-1", &seeded.device_secret)
            .await
            .unwrap()
    );
    let token = accounts::verify_secret(&dst, &seeded.token_secret)
        .await
        .unwrap()
        .expect("token verifies");
    assert_eq!(token.account_id.as_deref(), Some("aB"));

    // The position sequence was moved past the copied log.
    let max = all.iter().map(|e| e.position).max().unwrap();
    let tx = dst.begin().await.unwrap();
    tx.append(
        &[NewEvent {
            account_id: "ab".into(),
            stream: "connection/ab/after-migration".into(),
            stream_version: 1,
            event_type: "connection.connected",
            event_version: 1,
            data: serde_json::json!({"connection_id": "k9"}),
            at_millis: 9,
            idempotency_key: "after-migration".into(),
        }],
        9,
    )
    .await
    .expect("append after the migration");
    tx.commit().await.unwrap();
    let after = dst.events("ab", max, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert!(after[0].position > max);
    src.close().await.unwrap();
    dst.close().await.unwrap();
}

#[tokio::test]
async fn a_second_run_verifies_and_writes_nothing() {
    let Some(server) = common::postgres_server_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(dir.path(), "cradle.db");
    seed(&from).await;
    let to = fresh_database(&server).await;

    let first = cradle_migrate(&["--from", &from, "--to", &to]);
    assert!(first.success, "{}", first.stderr);
    let before = dump(&to).await;

    let again = cradle_migrate(&["--from", &from, "--to", &to]);
    assert!(again.success, "re-run failed:\n{}", again.stderr);
    assert!(
        again.stdout.contains("already holds the source's data"),
        "{}",
        again.stdout
    );
    for (table, rows, sum) in before.figures() {
        assert_eq!(
            printed(&again.stdout, table),
            (rows, sum, "(already present)".to_string())
        );
    }
    assert_eq!(dump(&to).await, before, "nothing written");
}

#[tokio::test]
async fn a_non_empty_target_is_refused_unless_allowed_then_merged() {
    let Some(server) = common::postgres_server_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(dir.path(), "cradle.db");
    seed(&from).await;
    let source = dump(&from).await;

    // A target with a row of its own.
    let to = fresh_database(&server).await;
    let store = Store::connect(&config(&to)).await.unwrap();
    accounts::create_account(&store, "intruder", "Not from SQLite")
        .await
        .unwrap();
    store.close().await.unwrap();
    let before = dump(&to).await;

    let refused = cradle_migrate(&["--from", &from, "--to", &to]);
    assert_refused(
        &refused,
        &["not empty", "--allow-non-empty", "accounts: 1 rows"],
    );
    assert_no_password(&to, &refused.stderr);
    assert_eq!(dump(&to).await, before, "nothing written");

    let merged = cradle_migrate(&["--from", &from, "--to", &to, "--allow-non-empty"]);
    assert!(merged.success, "merge failed:\n{}", merged.stderr);
    let after = dump(&to).await;
    assert_eq!(after.accounts.len(), source.accounts.len() + 1);
    assert!(after.accounts.iter().any(|a| a.account_id == "intruder"));
    for a in &source.accounts {
        assert!(after.accounts.contains(a), "{a:?} copied");
    }
    assert_eq!(after.events, source.events);
    assert_eq!(after.clients, source.clients);
    assert_eq!(after.credentials, source.credentials);
    let (rows, _, status) = printed(&merged.stdout, "accounts");
    assert_eq!(rows, source.accounts.len());
    assert_eq!(
        status,
        format!("(copied {rows}, 0 already present, 1 extra in target)")
    );
    let (rows, sum, status) = printed(&merged.stdout, "events");
    assert_eq!((rows, &sum), (EVENTS, &source.figures()[5].2));
    assert_eq!(status, format!("(copied {EVENTS}, 0 already present)"));

    // Merging again copies nothing and still verifies.
    let again = cradle_migrate(&["--from", &from, "--to", &to, "--allow-non-empty"]);
    assert!(again.success, "{}", again.stderr);
    assert!(printed(&again.stdout, "events").2.starts_with("(copied 0,"));
    assert_eq!(dump(&to).await, after);

    // A target whose row under the same key differs fails verification and keeps nothing.
    let to = fresh_database(&server).await;
    let store = Store::connect(&config(&to)).await.unwrap();
    accounts::create_account(&store, "ab", "Someone else")
        .await
        .unwrap();
    store.close().await.unwrap();
    let before = dump(&to).await;
    let conflict = cradle_migrate(&["--from", &from, "--to", &to, "--allow-non-empty"]);
    assert_refused(&conflict, &["accounts", "1 differ", "nothing written"]);
    assert_eq!(dump(&to).await, before, "the transaction rolled back");
}

#[tokio::test]
async fn bad_input_fails_with_one_line_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(dir.path(), "cradle.db");
    seed(&from).await;

    let same = cradle_migrate(&["--from", &from, "--to", &from]);
    assert_refused(&same, &["same database"]);

    let missing = dir.path().join("missing.db");
    let missing_url = format!("sqlite://{}", missing.display());
    let to = sqlite_url(dir.path(), "target.db");
    let run = cradle_migrate(&["--from", &missing_url, "--to", &to]);
    assert_refused(&run, &["no SQLite database", "missing.db"]);
    assert!(!missing.exists(), "a missing source is not created");

    let unreachable = "postgres://cradle:hunter2@127.0.0.1:1/cradle";
    let run = cradle_migrate(&["--from", &from, "--to", unreachable]);
    assert_refused(&run, &["target", "127.0.0.1:1", "cannot open"]);
    assert!(!run.stderr.contains("hunter2"), "password redacted");

    let run = cradle_migrate(&["--from", "mysql://x@y/z", "--to", &to]);
    assert_refused(&run, &["source", "not a database URL"]);

    let run = cradle_migrate(&["--from", &from]);
    assert!(!run.success, "--to is required");
}

/// The library with tiny pages: keyset paging over composite string keys (in byte order on
/// PostgreSQL too) must visit every row exactly once.
#[tokio::test]
async fn small_pages_copy_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(dir.path(), "cradle.db");
    seed(&from).await;
    let source = dump(&from).await;
    let options = MigrateOptions {
        page_rows: 7,
        ..MigrateOptions::default()
    };

    let mut targets = vec![sqlite_url(dir.path(), "copy.db")];
    if let Some(server) = common::postgres_server_url() {
        targets.push(fresh_database(&server).await);
    }
    for to in targets {
        let report = migrate(&from, &to, options.clone()).await.expect("migrate");
        assert_eq!(report.outcome, Outcome::Copied);
        for (table, rows, sum) in source.figures() {
            let t = report.table(table).unwrap();
            assert_eq!(
                (t.rows as usize, &t.checksum, t.copied as usize),
                (rows, &sum, rows)
            );
        }
        assert_eq!(dump(&to).await, source, "{to}");
        let again = migrate(&from, &to, options.clone()).await.expect("re-run");
        assert_eq!(again.outcome, Outcome::AlreadyPresent);
        assert_eq!(again.copied(), 0);
    }
}
