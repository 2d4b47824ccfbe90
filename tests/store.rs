//! The store's suite, run on SQLite and on PostgreSQL: migrations, the status batch
//! (decide + append + read model in one transaction), idempotency across batches and across
//! two concurrent writers, account scoping, and durability across reconnects.

use cradle_testkit as common;

use cradle::config::StoreConfig;
use cradle::domain::connection::{ConnectionCommand, DisconnectReason};
use cradle::store::Store;
use cradle::sync::status::{apply_batch, close_open_connections, Outcome, Report};
use cradle::topics::ClientKey;

fn key(account: &str, client: &str) -> ClientKey {
    ClientKey {
        account_id: account.into(),
        client_id: client.into(),
    }
}

fn connect(account: &str, client: &str, conn: &str, at: i64) -> Report {
    (
        key(account, client),
        ConnectionCommand::Connect {
            connection_id: conn.into(),
            at_millis: at,
            edge: None,
            observed: false,
        },
    )
}

fn disconnect(account: &str, client: &str, conn: &str, at: i64) -> Report {
    (
        key(account, client),
        ConnectionCommand::Disconnect {
            connection_id: conn.into(),
            reason: DisconnectReason::Lost,
            at_millis: at,
            edge: None,
        },
    )
}

fn config(url: &str) -> StoreConfig {
    StoreConfig {
        database_url: url.into(),
        ..StoreConfig::default()
    }
}

async fn suite(url: &str) {
    migrations_are_idempotent(url).await;
    a_batch_appends_events_and_projects_the_read_model(url).await;
    redelivery_in_a_later_batch_appends_nothing(url).await;
    two_concurrent_writers_append_each_event_once(url).await;
    reads_are_scoped_by_account_and_paged_by_position(url).await;
    data_survives_a_reconnect_and_open_connections_can_be_closed(url).await;
    accounts_and_credentials_round_trip(url).await;
}

async fn accounts_and_credentials_round_trip(url: &str) {
    use cradle::accounts::{self, CredentialKind};
    let store = Store::connect(&config(url)).await.unwrap();
    assert!(!accounts::any_account(&store).await.unwrap());
    accounts::create_account(&store, "acc", "Acc")
        .await
        .unwrap();
    let device = accounts::issue(&store, CredentialKind::Device, Some("acc"), Some("d1"))
        .await
        .unwrap();
    let operator = accounts::issue(&store, CredentialKind::Operator, None, None)
        .await
        .unwrap();
    assert!(accounts::verify_device(&store, "acc", "d1", &device.secret)
        .await
        .unwrap());
    let op = accounts::verify_secret(&store, &operator.secret)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(op.kind, CredentialKind::Operator);
    assert!(accounts::verify_secret(&store, &device.secret)
        .await
        .unwrap()
        .is_none());
    accounts::revoke(&store, &operator.credential.credential_id)
        .await
        .unwrap();
    assert!(accounts::verify_secret(&store, &operator.secret)
        .await
        .unwrap()
        .is_none());
    store.close().await.unwrap();
}

async fn migrations_are_idempotent(url: &str) {
    let a = Store::connect(&config(url))
        .await
        .expect("first connect migrates");
    let b = Store::connect(&config(url))
        .await
        .expect("second connect is a no-op");
    a.ping().await.unwrap();
    b.close().await.unwrap();
    a.close().await.unwrap();
}

async fn a_batch_appends_events_and_projects_the_read_model(url: &str) {
    let store = Store::connect(&config(url)).await.unwrap();
    let batch = vec![
        connect("t1", "c1", "k1", 100),
        connect("t1", "c1", "k1", 100),
        connect("t1", "c1", "k2", 200),
        disconnect("t1", "c1", "k1", 300),
    ];
    let outcomes = apply_batch(&store, &batch, 1_000).await.unwrap();
    assert!(matches!(outcomes[0], Outcome::Applied(ref e) if e.len() == 1));
    assert!(matches!(outcomes[1], Outcome::Ignored(_)));
    assert!(
        matches!(outcomes[2], Outcome::Applied(ref e) if e.len() == 2),
        "takeover"
    );
    assert!(
        matches!(outcomes[3], Outcome::Ignored(_)),
        "late will of k1"
    );
    let events = store.events("t1", 0, 100).await.unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "connection.connected",
            "connection.disconnected",
            "connection.connected"
        ]
    );
    let versions: Vec<_> = events.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(events[1].data["reason"], "takeover");
    assert!(events.iter().all(|e| e.recorded_at_millis == 1_000));
    let clients = store.clients("t1").await.unwrap();
    assert_eq!(clients.len(), 1);
    assert!(clients[0].connected);
    assert_eq!(clients[0].connection_id, "k2");
    assert_eq!(clients[0].stream_version, 3);
    store.close().await.unwrap();
}

async fn redelivery_in_a_later_batch_appends_nothing(url: &str) {
    let store = Store::connect(&config(url)).await.unwrap();
    let batch = vec![
        connect("t2", "c1", "k1", 100),
        disconnect("t2", "c1", "k1", 200),
    ];
    apply_batch(&store, &batch, 1).await.unwrap();
    let again = apply_batch(&store, &batch, 2).await.unwrap();
    assert!(again.iter().all(|o| matches!(o, Outcome::Ignored(_))));
    assert_eq!(store.events("t2", 0, 100).await.unwrap().len(), 2);
    store.close().await.unwrap();
}

async fn two_concurrent_writers_append_each_event_once(url: &str) {
    let a = Store::connect(&config(url)).await.unwrap();
    let b = Store::connect(&config(url)).await.unwrap();
    let batch: Vec<Report> = (0..50)
        .map(|i| connect("t3", &format!("c{i}"), "k1", 100 + i))
        .collect();
    let (ra, rb) = tokio::join!(
        retry(|| apply_batch(&a, &batch, 1)),
        retry(|| apply_batch(&b, &batch, 2))
    );
    let applied = ra
        .iter()
        .chain(rb.iter())
        .filter(|o| matches!(o, Outcome::Applied(_)))
        .count();
    assert_eq!(applied, 50, "each report applied by exactly one writer");
    assert_eq!(a.events("t3", 0, 1000).await.unwrap().len(), 50);
    assert_eq!(b.clients("t3").await.unwrap().len(), 50);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Retries a batch on conflict, as the status handler does.
async fn retry<F, Fut>(mut f: F) -> Vec<Outcome>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Outcome>, cradle::store::StoreError>>,
{
    for _ in 0..20 {
        match f().await {
            Ok(o) => return o,
            Err(cradle::store::StoreError::Conflict(_)) => continue,
            // SQLite answers a concurrent writer with "database is locked" after its busy
            // timeout; the handler retries those with a pause.
            Err(e) if e.to_string().contains("locked") => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("batch failed: {e}"),
        }
    }
    panic!("batch never committed");
}

async fn reads_are_scoped_by_account_and_paged_by_position(url: &str) {
    let store = Store::connect(&config(url)).await.unwrap();
    let batch: Vec<Report> = (0..10)
        .map(|i| {
            connect(
                if i % 2 == 0 { "even" } else { "odd" },
                &format!("c{i}"),
                "k",
                1 + i,
            )
        })
        .collect();
    apply_batch(&store, &batch, 1).await.unwrap();
    let even = store.events("even", 0, 100).await.unwrap();
    assert_eq!(even.len(), 5);
    assert!(even
        .iter()
        .all(|e| e.stream.starts_with("connection/even/")));
    let page1 = store.events("even", 0, 2).await.unwrap();
    let page2 = store.events("even", page1[1].position, 100).await.unwrap();
    assert_eq!(page1.len() + page2.len(), 5);
    assert!(page2[0].position > page1[1].position);
    assert_eq!(store.clients("odd").await.unwrap().len(), 5);
    assert!(store.clients("nobody").await.unwrap().is_empty());
    store.close().await.unwrap();
}

async fn data_survives_a_reconnect_and_open_connections_can_be_closed(url: &str) {
    let store = Store::connect(&config(url)).await.unwrap();
    apply_batch(&store, &[connect("t5", "c1", "k1", 5)], 1)
        .await
        .unwrap();
    store.close().await.unwrap();
    let store = Store::connect(&config(url)).await.unwrap();
    assert_eq!(store.events("t5", 0, 10).await.unwrap().len(), 1);
    assert!(store.clients("t5").await.unwrap()[0].connected);
    let before = store.connected_count().await.unwrap();
    assert!(before >= 1);
    let closed = close_open_connections(
        &store,
        DisconnectReason::ServerShutdown,
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(closed as u64, before);
    assert_eq!(store.connected_count().await.unwrap(), 0);
    let events = store.events("t5", 0, 10).await.unwrap();
    assert_eq!(events[1].data["reason"], "server_shutdown");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_suite_passes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    suite(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_suite_passes_on_postgresql() {
    let Some(server) = common::postgres_server_url() else {
        return;
    };
    let url = common::fresh_postgres_database(&server).await;
    suite(&url).await;
}
