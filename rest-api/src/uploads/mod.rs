//! Upload storage: where attachment bytes live (local files by default, or S3).
//! (Skeleton: the uploads work fills in the backends and routes.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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
    /// Local backend: directory for the files; default `{data_dir}/uploads`.
    pub dir: Option<PathBuf>,
    /// Largest upload in bytes.
    pub max_bytes: u64,
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

/// Where upload bytes are kept.
pub trait BlobStore: Send + Sync {}

struct Unconfigured;
impl BlobStore for Unconfigured {}

/// Opens the configured backend.
pub async fn open(_config: &UploadsConfig, _data_dir: &Path) -> anyhow::Result<Arc<dyn BlobStore>> {
    Ok(Arc::new(Unconfigured))
}
