//! Upload storage: where attachment bytes live (local files by default, or S3), and the
//! checks every upload passes on its way in.
//!
//! An upload is streamed into a staging file ([`receive`]) while it is hashed, counted
//! and sniffed, so its size is bounded by the configuration and never by memory. Only
//! a complete, accepted file is handed to the [`BlobStore`], under a key the server
//! generates (`{uploader_id}/{attachment_id}`); the client's file name is display
//! metadata ([`filename`]) and never part of a path or key.

pub mod filename;
mod local;
mod receive;
mod s3;
pub mod sniff;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

pub use receive::{empty, receive, too_large, unsupported, Received, StagedFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadBackend {
    Local,
    S3,
}

/// The `[uploads]` section of the configuration (env: `TIDINGS_UPLOADS_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadsConfig {
    pub backend: UploadBackend,
    /// Local backend: directory for the files; default `{data_dir}/uploads`. Both
    /// backends stage incoming uploads in its `.incoming` subdirectory.
    pub dir: Option<PathBuf>,
    /// Largest upload in bytes.
    pub max_bytes: u64,
    /// Bytes one user may upload in any 24 hours (0: no quota).
    pub max_bytes_per_day: u64,
    /// Files one user may upload in any hour (0: no quota).
    pub max_files_per_hour: u64,
    /// Seconds an upload may stay unsent (carried by no message) before the sweeper
    /// deletes it; also how long after its message is deleted a file goes.
    pub unattached_grace_secs: u64,
    /// Seconds between two sweeps.
    pub sweep_interval_secs: u64,
    /// S3: endpoint URL for S3-compatible servers (MinIO, moto, …); AWS when unset.
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    pub s3_bucket: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub s3_path_style: bool,
    /// Credentials; the AWS default chain is not consulted when these are set.
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Lifetime of presigned download URLs, in seconds.
    pub s3_presign_secs: u64,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            backend: UploadBackend::Local,
            dir: None,
            max_bytes: tidings_core::protocol::limits::MAX_UPLOAD_BYTES,
            max_bytes_per_day: 1 << 30,
            max_files_per_hour: 100,
            unattached_grace_secs: 24 * 3600,
            sweep_interval_secs: 3600,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_bucket: "tidings".into(),
            s3_path_style: true,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_presign_secs: 300,
        }
    }
}

/// How a stored file is to be presented to the downloader. The local backend sets
/// these headers itself; S3 stores them with the object and also names them in the
/// presigned URL, so the object store answers with them too.
#[derive(Debug, Clone)]
pub struct ServeAs {
    pub content_type: String,
    pub content_disposition: String,
}

/// What a download turns into.
pub enum Fetched {
    /// The bytes, to stream from this server.
    File { file: tokio::fs::File, len: u64 },
    /// A short-lived URL the client fetches the bytes from directly, so large files
    /// never pass through this server.
    Redirect(String),
}

/// Where upload bytes are kept.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Where [`receive`] writes uploads in progress. For the local backend it is on the
    /// same file system as the files, so storing one is an atomic rename.
    fn staging_dir(&self) -> &Path;
    /// Stores a received file under `key`, consuming it.
    async fn put(&self, key: &str, staged: StagedFile, serve: &ServeAs) -> anyhow::Result<()>;
    /// How to deliver the file under `key`.
    async fn fetch(&self, key: &str, serve: &ServeAs) -> anyhow::Result<Fetched>;
    /// Removes the file under `key` (used to undo a put whose row could not be stored).
    async fn delete(&self, key: &str) -> anyhow::Result<()>;
}

/// Attachment rows a sweep deletes at most per round (rounds repeat until one comes
/// back short), so one sweep never holds a long list in memory.
const SWEEP_BATCH: u32 = 500;

/// Deletes uploads no message carries once they are older than the grace period:
/// the row first (atomically checked, so a send racing the sweep keeps its file),
/// then the bytes. A failure to delete bytes is logged and leaves an orphan file, never
/// a row without its file. Returns how many were swept.
pub async fn sweep_once(
    store: &dyn tidings_store::Store,
    blobs: &dyn BlobStore,
    grace: Duration,
) -> anyhow::Result<usize> {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let before = tidings_store::now_ms().saturating_sub(grace_ms);
    let mut swept = 0;
    loop {
        let batch = store.sweep_unattached(before, SWEEP_BATCH).await?;
        for a in &batch {
            if let Err(e) = blobs.delete(&a.storage_key).await {
                tracing::warn!(key = %a.storage_key, error = format!("{e:#}"),
                    "cannot delete the file of a swept upload; it is orphaned");
            }
        }
        swept += batch.len();
        if batch.len() < SWEEP_BATCH as usize {
            return Ok(swept);
        }
    }
}

/// Runs [`sweep_once`] every `uploads.sweep_interval_secs`, for the life of the process.
pub async fn run_sweeper(
    store: Arc<dyn tidings_store::Store>,
    blobs: Arc<dyn BlobStore>,
    config: UploadsConfig,
) {
    let grace = Duration::from_secs(config.unattached_grace_secs);
    let mut tick = tokio::time::interval(Duration::from_secs(config.sweep_interval_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep_once(&*store, &*blobs, grace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(swept = n, "deleted uploads no message carries"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "upload sweep failed"),
        }
    }
}

/// Opens the configured backend.
pub async fn open(config: &UploadsConfig, data_dir: &Path) -> anyhow::Result<Arc<dyn BlobStore>> {
    let dir = config
        .dir
        .clone()
        .unwrap_or_else(|| data_dir.join("uploads"));
    let staging = dir.join(".incoming");
    receive::prepare_staging(&staging).with_context(|| {
        format!(
            "preparing the upload staging directory {}",
            staging.display()
        )
    })?;
    Ok(match config.backend {
        UploadBackend::Local => {
            tracing::info!(dir = %dir.display(), "uploads stored in local files");
            Arc::new(local::LocalBlobs::new(dir, staging))
        }
        UploadBackend::S3 => {
            let presign = presign_duration(config.s3_presign_secs)?;
            let s3 = s3::S3Blobs::open(config, presign, staging).await?;
            tracing::info!(bucket = %config.s3_bucket, endpoint = ?config.s3_endpoint, "uploads stored in S3");
            Arc::new(s3)
        }
    })
}

/// S3 refuses presigned URLs valid for more than a week; say so at start, not at the
/// first download.
fn presign_duration(secs: u64) -> anyhow::Result<Duration> {
    const WEEK: u64 = 7 * 24 * 3600;
    anyhow::ensure!(
        (1..=WEEK).contains(&secs),
        "uploads.s3_presign_secs must be between 1 and {WEEK} (it is {secs})"
    );
    Ok(Duration::from_secs(secs))
}

/// A storage key is `{uploader_id}/{attachment_id}`: two ULIDs. Backends check it again
/// before use, so a corrupted row can never address a path outside their storage.
pub(crate) fn valid_key(key: &str) -> bool {
    let mut parts = key.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty() && p.len() <= 64 && p.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The storage backend failed (disk, S3): logged in full, reported as retryable.
pub(crate) fn storage_failure(what: &str, error: &anyhow::Error) -> ApiError {
    tracing::error!(error = format!("{error:#}"), "{what}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "file storage failed; try again later",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_two_plain_components() {
        assert!(valid_key(
            "01HZX3K7Q1M2N3P4R5S6T7V8W9/01HZX3K7Q1M2N3P4R5S6T7V8WA"
        ));
        for bad in [
            "", "a", "a/", "/a", "a/b/c", "../b", "a/..", "a/b c", "a\\b/c",
        ] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn presign_lifetime_is_bounded() {
        assert!(presign_duration(300).is_ok());
        assert!(presign_duration(0).is_err());
        assert!(presign_duration(8 * 24 * 3600).is_err());
    }
}
