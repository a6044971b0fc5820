//! Where the session's tokens live: never in the SQLite file. With no keystore they
//! are in a 0600 file in the data path; with the app's `SecretStore` only there.
//! `logout` clears them, `wipe` deletes every local file, logged in or not. Each
//! "absent" check greps the raw bytes of the database and its WAL, with a positive
//! control: the same grep finds the token where it is meant to be.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::Server;
use tidings_core::sdk::*;

fn config(server: &Server, dir: &Path, device: &str) -> ClientConfig {
    ClientConfig::new(server.http(), server.mqtt(), dir.to_string_lossy(), device)
}

/// The raw bytes of every file in `dir` whose name starts with `prefix`.
fn bytes_of(dir: &Path, prefix: &str) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            all.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

/// (access, refresh) from the JSON a secret store holds.
fn tokens(json: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[derive(Default)]
struct MapStore(Mutex<HashMap<String, String>>);

impl SecretStore for MapStore {
    fn get(&self, key: String) -> Result<Option<String>, SdkError> {
        Ok(self.0.lock().unwrap().get(&key).cloned())
    }
    fn set(&self, key: String, value: String) -> Result<(), SdkError> {
        self.0.lock().unwrap().insert(key, value);
        Ok(())
    }
    fn delete(&self, key: String) -> Result<(), SdkError> {
        self.0.lock().unwrap().remove(&key);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keystore_tokens_are_in_a_0600_file_and_not_in_sqlite() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new(
        config(&server, dir.path(), "desk"),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    c.register("dora", "dora-password").await.unwrap();
    c.create_conversation("group", Some("notes".into()), vec![])
        .await
        .unwrap();
    let file = dir.path().join("tidings-secrets.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "secrets file mode {mode:o}");
    }
    let map: HashMap<String, String> =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let (access, refresh) = tokens(&map["tidings.session"]);
    let secrets = bytes_of(dir.path(), "tidings-secrets");
    assert!(contains(&secrets, &access) && contains(&secrets, &refresh));
    let db = bytes_of(dir.path(), "tidings-sdk.sqlite3");
    assert!(
        contains(&db, "notes"),
        "positive control: the cache is in the file"
    );
    assert!(!contains(&db, &access), "access token in the SQLite file");
    assert!(!contains(&db, &refresh), "refresh token in the SQLite file");
    c.shutdown();
    drop(c);

    // A restart finds the session through the file store, and the tokens work.
    let again = Client::new(
        config(&server, dir.path(), "desk"),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    assert!(again.session().await.is_some());
    assert_eq!(again.conversations().await.unwrap().len(), 1);
    again.logout().await.unwrap();
    assert!(!file.exists(), "logout leaves the secrets file");
    assert!(again.session().await.is_none());
    assert!(again.cached_conversations().unwrap().is_empty());
    again.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_keystore_holds_the_tokens_and_wipe_removes_everything() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MapStore::default());
    let c = Client::with_secret_store(
        config(&server, dir.path(), "phone"),
        tokio::runtime::Handle::current(),
        store.clone(),
    )
    .unwrap();
    c.register("erin", "erin-password").await.unwrap();
    c.create_conversation("group", Some("plans".into()), vec![])
        .await
        .unwrap();
    let (access, refresh) = tokens(&store.0.lock().unwrap()["tidings.session"]);
    assert!(!dir.path().join("tidings-secrets.json").exists());
    let db = bytes_of(dir.path(), "tidings-sdk.sqlite3");
    assert!(
        contains(&db, "plans"),
        "positive control: the cache is in the file"
    );
    assert!(!contains(&db, &access) && !contains(&db, &refresh));

    c.wipe().await.unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "wipe left {left:?}");
    assert!(store.0.lock().unwrap().is_empty(), "wipe left secrets");
    assert_eq!(
        c.send_text("01ARZ3NDEKTSV4RRFFQ69G5FAV", "x", None, vec![])
            .await,
        Err(SdkError::Closed)
    );
    drop(c);
    let fresh = Client::with_secret_store(
        config(&server, dir.path(), "phone"),
        tokio::runtime::Handle::current(),
        store.clone(),
    )
    .unwrap();
    assert!(fresh.session().await.is_none());
    assert!(fresh.cached_conversations().unwrap().is_empty());

    // Not logged in at all: wipe still removes the files.
    fresh.wipe().await.unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
