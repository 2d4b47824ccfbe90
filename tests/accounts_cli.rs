//! `cradle accounts` and `cradle credentials` against a real SQLite store: secrets are
//! printed once on the last line, stored only as hashes, verified, and revocable.

use std::process::Command;

use cradle::accounts::{self, CredentialKind};
use cradle::config::StoreConfig;
use cradle::store::Store;

fn cradle(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(args)
        .env("CRADLE_DATABASE_URL", db)
        .env_remove("CRADLE_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run cradle");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_secrets_are_shown_once_stored_hashed_verified_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("c.db").display());

    // No store yet: a command that reads or changes one creates nothing and names the path.
    for args in [
        &["accounts", "create", "fam"][..],
        &["accounts", "list"][..],
        &["credentials", "list"][..],
    ] {
        let (ok, out, err) = cradle(&db, args);
        assert!(!ok, "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("no Cradle store at") && err.contains("c.db"),
            "{err}"
        );
        assert!(
            !dir.path().join("c.db").exists(),
            "{args:?} created a store"
        );
    }
    // An explicit flag creates it.
    let (ok, out, _) = cradle(
        &db,
        &[
            "accounts",
            "create",
            "fam",
            "--name",
            "Family",
            "--create-store",
        ],
    );
    assert!(ok, "{out}");
    let (ok, _, err) = cradle(&db, &["accounts", "create", "fam"]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = cradle(&db, &["accounts", "create", "bad id"]);
    assert!(!ok && err.contains("not a valid id"), "{err}");

    let (ok, out, _) = cradle(
        &db,
        &[
            "credentials",
            "issue",
            "--account",
            "fam",
            "--client",
            "baby-1",
        ],
    );
    assert!(ok, "{out}");
    let device_secret = out.lines().last().unwrap().to_string();
    assert_eq!(device_secret.len(), 64);
    let (ok, out, _) = cradle(
        &db,
        &["credentials", "issue", "--account", "fam", "--token"],
    );
    assert!(ok);
    let token = out.lines().last().unwrap().to_string();
    let (ok, _, err) = cradle(
        &db,
        &["credentials", "issue", "--account", "nope", "--token"],
    );
    assert!(!ok && err.contains("no account"), "{err}");

    let (ok, listing, _) = cradle(&db, &["credentials", "list", "--account", "fam"]);
    assert!(ok);
    assert!(!listing.contains(&device_secret) && !listing.contains(&token));
    assert_eq!(listing.lines().count(), 3, "{listing}");

    let store = Store::connect(&StoreConfig {
        database_url: db.clone(),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    let stored = accounts::list_credentials(&store, Some("fam"))
        .await
        .unwrap();
    // Stored as salted BLAKE2b-512 digests (256-bit random secrets need no slow hash), never
    // the secret itself.
    assert!(stored
        .iter()
        .all(|c| c.secret_hash.starts_with("$cradle-b2$")
            && !c.secret_hash.contains(&device_secret)
            && !c.secret_hash.contains(&token)));
    assert!(
        accounts::verify_device(&store, "fam", "baby-1", &device_secret)
            .await
            .unwrap()
    );
    assert!(
        !accounts::verify_device(&store, "fam", "baby-2", &device_secret)
            .await
            .unwrap()
    );
    assert!(!accounts::verify_device(&store, "fam", "baby-1", "wrong")
        .await
        .unwrap());
    let c = accounts::verify_secret(&store, &token)
        .await
        .unwrap()
        .expect("token valid");
    assert_eq!(c.account_id.as_deref(), Some("fam"));
    store.close().await.unwrap();

    let device_id = stored
        .iter()
        .find(|c| c.kind == CredentialKind::Device)
        .unwrap()
        .credential_id
        .clone();
    let (ok, _, _) = cradle(&db, &["credentials", "revoke", &device_id]);
    assert!(ok);
    let (ok, _, err) = cradle(&db, &["credentials", "revoke", &device_id]);
    assert!(!ok && err.contains("no credential"), "{err}");
    let (ok, _, _) = cradle(&db, &["accounts", "delete", "fam"]);
    assert!(ok);

    let store = Store::connect(&StoreConfig {
        database_url: db,
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    assert!(
        !accounts::verify_device(&store, "fam", "baby-1", &device_secret)
            .await
            .unwrap()
    );
    assert!(
        accounts::verify_secret(&store, &token)
            .await
            .unwrap()
            .is_none(),
        "deleting the account revokes its token"
    );
    assert!(!accounts::any_account(&store).await.unwrap());
}
