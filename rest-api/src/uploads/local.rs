//! Local files: `{dir}/{uploader_id}/{attachment_id}`, the embedded default.
//!
//! Uploads are staged in `{dir}/.incoming`, on the same file system, so storing one is
//! a rename: a file under its final key is always complete. Downloads are streamed by
//! this server, which therefore sets the response headers itself.

use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;

use super::receive::create_private_dir;
use super::{valid_key, BlobStore, Fetched, ServeAs, StagedFile};

pub struct LocalBlobs {
    dir: PathBuf,
    staging: PathBuf,
}

impl LocalBlobs {
    pub fn new(dir: PathBuf, staging: PathBuf) -> Self {
        LocalBlobs { dir, staging }
    }

    /// The file of `key`, refusing any key that is not the two generated ids.
    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(valid_key(key), "invalid storage key {key:?}");
        Ok(self.dir.join(key))
    }
}

#[async_trait]
impl BlobStore for LocalBlobs {
    fn staging_dir(&self) -> &Path {
        &self.staging
    }

    async fn put(&self, key: &str, staged: StagedFile, _serve: &ServeAs) -> anyhow::Result<()> {
        let dest = self.path(key)?;
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = dest.parent() {
                create_private_dir(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            staged
                .path
                .persist_noclobber(&dest)
                .with_context(|| format!("moving the upload to {}", dest.display()))?;
            Ok(())
        })
        .await?
    }

    async fn fetch(&self, key: &str, _serve: &ServeAs) -> anyhow::Result<Fetched> {
        let path = self.path(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata().await?.len();
        Ok(Fetched::File { file, len })
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let path = self.path(key)?;
        tokio::fs::remove_file(&path)
            .await
            .with_context(|| format!("removing {}", path.display()))
    }
}
