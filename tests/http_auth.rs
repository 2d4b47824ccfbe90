//! HTTP authentication once accounts exist: the account comes from the bearer token; another
//! account's token gets 403, no or a bad token 401; the admin token and an operator secret
//! read any account. Before any account exists (open mode) no token is needed.

use cradle_testkit as common;

use common::Cradle;

use common::cli as issue;

async fn get(cradle: &Cradle, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut r = reqwest::Client::new().get(format!("{}{path}", cradle.http));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scope_every_route_to_their_account() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("auth.db").display());

    // Open mode: no account yet, no token needed.
    let open = Cradle::start(dir.path(), Some(db.clone())).await;
    assert_eq!(get(&open, "/v1/accounts/a/clients", None).await.0, 200);
    drop(open);

    issue(&db, &["accounts", "create", "a"]);
    issue(&db, &["accounts", "create", "b"]);
    let token_a = issue(&db, &["credentials", "issue", "--account", "a", "--token"]);
    let operator = issue(&db, &["credentials", "issue", "--operator"]);
    let device_a = issue(
        &db,
        &["credentials", "issue", "--account", "a", "--client", "d"],
    );
    let admin = "an-admin-token-of-some-length".to_string();

    let cradle =
        Cradle::spawn_ready(dir.path(), &db, &[("CRADLE_ADMIN_TOKEN", admin.clone())]).await;
    for path in ["/v1/accounts/a/clients", "/v1/accounts/a/events"] {
        let (status, body) = get(&cradle, path, None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(get(&cradle, path, Some(&token_a)).await.0, 200, "{path}");
        assert_eq!(get(&cradle, path, Some("cr_x.nope")).await.0, 401, "{path}");
        assert_eq!(
            get(&cradle, path, Some(&device_a)).await.0,
            401,
            "a device secret is no bearer token"
        );
    }
    let (status, body) = get(&cradle, "/v1/accounts/b/events", Some(&token_a)).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        get(&cradle, "/v1/accounts/b/clients", Some(&admin)).await.0,
        200
    );
    assert_eq!(
        get(&cradle, "/v1/accounts/b/clients", Some(&operator))
            .await
            .0,
        200
    );
    // Health and metrics stay open for probes and scrapers on the loopback listener.
    assert_eq!(get(&cradle, "/readyz", None).await.0, 200);
}
