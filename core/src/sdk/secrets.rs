//! Where the session's tokens live: a [`SecretStore`] the app implements on the
//! platform's keystore (iOS Keychain, Android Keystore-backed storage), or the SDK's
//! [`FileSecretStore`] (a 0600 JSON file in the data path) for desktop and tests. The
//! local SQLite file keeps only who is logged in and when the access token expires:
//! a cache file is copied into backups and read by anything with the app's file access,
//! a keystore is not.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::sdk::error::{Result, SdkError};

/// The one key the SDK uses: a JSON object with the access and refresh tokens. An app
/// running several clients (data paths) on one keystore namespaces its implementation
/// (e.g. a Keychain service per account).
pub const SESSION_SECRET_KEY: &str = "tidings.session";

/// Implemented by the app on the platform's keystore. Called from SDK threads (never
/// the main thread); keep calls short. Throw `SdkError.Keystore` to report a failure;
/// `get` of a missing key returns null/None, `delete` of a missing key succeeds.
#[uniffi::export(with_foreign)]
pub trait SecretStore: Send + Sync {
    fn get(&self, key: String) -> Result<Option<String>>;
    fn set(&self, key: String, value: String) -> Result<()>;
    fn delete(&self, key: String) -> Result<()>;
}

/// A JSON map in one file, readable and writable by the owner only (0600 on Unix), for
/// platforms without a keystore the SDK knows (desktop) and for tests. Written to a
/// temporary file created 0600 and renamed over, so it is never briefly wider and a
/// crash leaves the old or the new file. Removed when its last key is deleted.
pub struct FileSecretStore {
    path: PathBuf,
    lock: Mutex<()>,
}

fn keystore_err(what: &str, e: impl std::fmt::Display) -> SdkError {
    SdkError::Keystore {
        detail: format!("{what}: {e}"),
    }
}

impl FileSecretStore {
    pub fn new(path: impl Into<PathBuf>) -> FileSecretStore {
        FileSecretStore {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    fn read(&self) -> Result<BTreeMap<String, String>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| keystore_err(&format!("{} is corrupt", self.path.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(keystore_err(&format!("read {}", self.path.display()), e)),
        }
    }

    fn write(&self, map: &BTreeMap<String, String>) -> Result<()> {
        if map.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(keystore_err(&format!("remove {}", self.path.display()), e)),
            };
        }
        let tmp = self.path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let json = serde_json::to_vec(map).map_err(|e| keystore_err("encode", e))?;
        let mut f = opts
            .open(&tmp)
            .map_err(|e| keystore_err(&format!("create {}", tmp.display()), e))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(|e| keystore_err(&format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| keystore_err(&format!("rename to {}", self.path.display()), e))
    }
}

impl SecretStore for FileSecretStore {
    fn get(&self, key: String) -> Result<Option<String>> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.read()?.remove(&key))
    }

    fn set(&self, key: String, value: String) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.read()?;
        map.insert(key, value);
        self.write(&map)
    }

    fn delete(&self, key: String) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // A corrupt file is deleted whole: deleting must not fail on what it deletes.
        let mut map = self.read().unwrap_or_default();
        map.remove(&key);
        self.write(&map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_is_owner_only_and_removed_when_empty() {
        let dir = std::env::temp_dir().join(format!(
            "tidings-secrets-{}",
            crate::protocol::ids::new_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        let s = FileSecretStore::new(&path);
        assert_eq!(s.get("k".into()), Ok(None));
        s.set("k".into(), "v".into()).unwrap();
        s.set("k2".into(), "v2".into()).unwrap();
        assert_eq!(s.get("k".into()), Ok(Some("v".into())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        s.delete("k".into()).unwrap();
        assert!(path.exists());
        s.delete("k2".into()).unwrap();
        assert!(!path.exists());
        s.delete("k2".into()).unwrap();
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(s.get("k".into()), Err(SdkError::Keystore { .. })));
        s.delete("k".into()).unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
