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

/// One request with an optional bearer token and JSON body: (status, body).
async fn call(
    cradle: &Cradle,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut r = reqwest::Client::new().request(method, format!("{}{path}", cradle.http));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Whether `secret` lets device `client` of `account` connect over MQTT (CONNACK 0).
async fn device_connects(cradle: &Cradle, account: &str, client: &str, secret: &str) -> bool {
    let (_, code) =
        common::RawV4::connect(cradle.mqtt_port, client, Some((account, secret)), 30).await;
    code == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_provisions_rotates_and_revokes_over_http() {
    use reqwest::Method;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("admin.db").display());
    let admin = "an-admin-token-of-some-length".to_string();
    let cradle =
        Cradle::spawn_ready(dir.path(), &db, &[("CRADLE_ADMIN_TOKEN", admin.clone())]).await;
    let a = Some(admin.as_str());

    // Open mode (no account, loopback): the first account is created over HTTP; a retry of
    // the same PUT finds it (200), which ends open mode at once.
    let (status, body) = call(
        &cradle,
        Method::PUT,
        "/v1/admin/accounts/fam",
        None,
        Some(json!({"name": "The Family"})),
    )
    .await;
    assert_eq!(
        (status, &body["name"]),
        (201, &json!("The Family")),
        "{body}"
    );
    let (status, _) = call(&cradle, Method::PUT, "/v1/admin/accounts/fam", a, None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&cradle, Method::GET, "/v1/admin/accounts", None, None).await;
    assert_eq!(status, 401, "open mode ended with the first account");
    let (status, body) = call(&cradle, Method::GET, "/v1/admin/accounts", a, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["accounts"][0]["account_id"], "fam", "{body}");
    let (status, body) = call(&cradle, Method::GET, "/v1/admin/accounts/nope", a, None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("account_not_found"))
    );

    // Credentials of each kind; the secret is in the issuing response only.
    let issue = |body: serde_json::Value| {
        call(
            &cradle,
            Method::POST,
            "/v1/admin/credentials",
            a,
            Some(body),
        )
    };
    let (status, device) =
        issue(json!({"kind": "device", "account_id": "fam", "client_id": "baby-1"})).await;
    assert_eq!(status, 201, "{device}");
    let secret = device["secret"].as_str().unwrap().to_string();
    let device_id = device["credential_id"].as_str().unwrap().to_string();
    let (status, token) = issue(json!({"kind": "token", "account_id": "fam"})).await;
    assert_eq!(status, 201, "{token}");
    let token = token["secret"].as_str().unwrap().to_string();
    let (status, operator) = issue(json!({"kind": "operator"})).await;
    assert_eq!(status, 201);
    let operator = operator["secret"].as_str().unwrap().to_string();
    let (status, body) = issue(json!({"kind": "device", "account_id": "fam"})).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("kind")),
        "{body}"
    );
    let (status, body) = issue(json!({"kind": "token", "account_id": "ghost"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, list) = call(
        &cradle,
        Method::GET,
        "/v1/admin/credentials?account_id=fam",
        a,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["credentials"].as_array().unwrap().len(), 2, "{list}");
    assert!(
        !list.to_string().contains(&secret),
        "a listing shows no secret"
    );
    assert!(!list.to_string().contains("secret_hash"), "nor a hash");

    // Operators read but do not administer; an account's token neither.
    for t in [&operator, &token] {
        let (status, body) = call(&cradle, Method::GET, "/v1/admin/accounts", Some(t), None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (403, &json!("forbidden")),
            "{body}"
        );
    }

    // Rotation: the new secret works, the old one too, until it is revoked.
    assert!(device_connects(&cradle, "fam", "baby-1", &secret).await);
    let (status, rotated) = call(
        &cradle,
        Method::POST,
        &format!("/v1/admin/credentials/{device_id}/rotate"),
        a,
        None,
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    assert_eq!(rotated["client_id"], "baby-1");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert!(device_connects(&cradle, "fam", "baby-1", &new_secret).await);
    assert!(device_connects(&cradle, "fam", "baby-1", &secret).await);
    let (status, revoked) = call(
        &cradle,
        Method::DELETE,
        &format!("/v1/admin/credentials/{device_id}"),
        a,
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at_millis"].as_i64().unwrap() > 0);
    // Refused at once, although the secret was verified (and cached) a moment ago.
    assert!(!device_connects(&cradle, "fam", "baby-1", &secret).await);
    assert!(device_connects(&cradle, "fam", "baby-1", &new_secret).await);

    // Bulk provisioning: all or nothing, one secret per client id.
    let ids: Vec<String> = (0..50).map(|i| format!("cam-{i}")).collect();
    let (status, bulk) = call(
        &cradle,
        Method::POST,
        "/v1/admin/accounts/fam/devices",
        a,
        Some(json!({"client_ids": ids})),
    )
    .await;
    assert_eq!(status, 201, "{bulk}");
    let issued = bulk["credentials"].as_array().unwrap();
    assert_eq!(issued.len(), 50);
    let last = issued[49]["secret"].as_str().unwrap();
    assert!(device_connects(&cradle, "fam", "cam-49", last).await);
    let (status, _) = call(
        &cradle,
        Method::POST,
        "/v1/admin/accounts/fam/devices",
        a,
        Some(json!({"client_ids": ["x", "x"]})),
    )
    .await;
    assert_eq!(status, 400);

    // Deleting the account revokes its credentials; its token is refused at once.
    assert_eq!(
        get(&cradle, "/v1/accounts/fam/clients", Some(&token))
            .await
            .0,
        200
    );
    let (status, deleted) = call(&cradle, Method::DELETE, "/v1/admin/accounts/fam", a, None).await;
    assert_eq!(status, 200, "{deleted}");
    // the token, the rotated device secret and the 50 bulk ones (the first device secret was
    // revoked already; the operator belongs to no account)
    assert_eq!(deleted["credentials_revoked"], 52, "{deleted}");
    assert_eq!(
        get(&cradle, "/v1/accounts/fam/clients", Some(&token))
            .await
            .0,
        401
    );
    let (status, _) = call(&cradle, Method::DELETE, "/v1/admin/accounts/fam", a, None).await;
    assert_eq!(status, 404);
}
