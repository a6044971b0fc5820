//! Receiving an upload: the request body streamed to a staging file, hashed, counted
//! and sniffed on the way, so memory use is bounded by a chunk plus the sniff prefix
//! however large the file, and a refused upload is refused as early as possible: at
//! the first byte past the limit, or as soon as the first bytes show a disallowed type.
//!
//! The staging file is a `tempfile` that deletes itself when dropped, so every early
//! return (too large, wrong type, client gone, storage failure) cleans up after itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use super::sniff::{classify, Accepted, Sniffed, Utf8Check, SNIFF_LEN};
use super::storage_failure;
use crate::error::ApiError;

/// A complete upload in the staging directory. Dropping it deletes the file.
#[derive(Debug)]
pub struct StagedFile {
    pub path: TempPath,
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
}

/// An accepted upload: the file and what it turned out to be.
#[derive(Debug)]
pub struct Received {
    pub staged: StagedFile,
    pub accepted: Accepted,
}

/// 413 `too_large`.
pub fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("uploads are limited to {max} bytes"),
    )
}

/// 422 `empty`.
pub fn empty() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "empty",
        "the upload is empty: send the file as the request body",
    )
}

/// 415 `unsupported_type`.
pub fn unsupported(declared: &str) -> ApiError {
    let declared = if declared.is_empty() {
        "no declared type".to_owned()
    } else {
        format!("declared {declared}")
    };
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_type",
        format!(
            "this file type is not accepted ({declared}); accepted are images (JPEG, PNG, \
             GIF, WebP, HEIC), audio (Ogg/Opus, MP3, M4A/AAC, WAV, WebM), video (MP4, \
             WebM, QuickTime), PDF, Word/Excel/PowerPoint documents, and UTF-8 text or CSV"
        ),
    )
}

/// Streams `body` into a new file in `staging`. `declared` is the client's media type
/// (see [`super::sniff::essence`]); `max` the largest size accepted.
pub async fn receive(
    body: Body,
    staging: &Path,
    declared: &str,
    max: u64,
) -> Result<Received, ApiError> {
    let dir = staging.to_owned();
    let temp = tokio::task::spawn_blocking(move || {
        tempfile::Builder::new().prefix("upload-").tempfile_in(dir)
    })
    .await
    .map_err(|e| storage_failure("staging task failed", &e.into()))?
    .map_err(|e| storage_failure("cannot create a staging file", &e.into()))?;
    let (std_file, path) = temp.into_parts();
    let mut file = tokio::fs::File::from_std(std_file);

    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut prefix: Vec<u8> = Vec::new();
    let mut verdict: Option<Sniffed> = None;
    let mut utf8 = Utf8Check::default();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::body_unreadable(&e, "the upload could not be read"))?;
        size = size.saturating_add(chunk.len() as u64);
        if size > max {
            return Err(too_large(max));
        }
        if verdict.is_none() {
            let take = (SNIFF_LEN - prefix.len()).min(chunk.len());
            prefix.extend_from_slice(&chunk[..take]);
            if prefix.len() == SNIFF_LEN {
                verdict = Some(judge(&prefix, declared)?);
                prefix = Vec::new();
            }
        }
        // Only text needs the whole body checked; a known binary format does not.
        if !matches!(verdict, Some(Sniffed::Binary(_))) {
            utf8.feed(&chunk);
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| storage_failure("cannot write a staging file", &e.into()))?;
    }
    if size == 0 {
        return Err(empty());
    }
    let accepted = match verdict {
        Some(v) => v,
        None => judge(&prefix, declared)?,
    };
    let accepted = match accepted {
        Sniffed::Binary(a) => a,
        Sniffed::Text(a) if utf8.finish() => a,
        Sniffed::Text(_) | Sniffed::Unsupported => return Err(unsupported(declared)),
    };
    // The file must be on disk before a row points at it.
    file.flush()
        .await
        .map_err(|e| storage_failure("cannot write a staging file", &e.into()))?;
    file.sync_data()
        .await
        .map_err(|e| storage_failure("cannot sync a staging file", &e.into()))?;
    Ok(Received {
        staged: StagedFile {
            path,
            size,
            sha256: hex::encode(hasher.finalize()),
        },
        accepted,
    })
}

fn judge(prefix: &[u8], declared: &str) -> Result<Sniffed, ApiError> {
    match classify(prefix, declared) {
        Sniffed::Unsupported => Err(unsupported(declared)),
        v => Ok(v),
    }
}

/// Staging files older than this at start belong to uploads a crash interrupted.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Creates the staging directory (private to the server's user) and removes what
/// interrupted uploads left there. Only old files go: another process sharing the
/// directory may be receiving right now.
pub(super) fn prepare_staging(dir: &Path) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let now = SystemTime::now();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path: PathBuf = entry.path();
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale upload");
            }
        }
    }
    Ok(())
}

/// `mkdir -p` with mode 0700 for what it creates: uploads are private to members.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receives `chunks` into `dir`; a refusal must leave `dir` empty.
    async fn run_in(
        dir: &tempfile::TempDir,
        chunks: Vec<Vec<u8>>,
        declared: &str,
        max: u64,
    ) -> Result<Received, ApiError> {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(Ok::<_, std::io::Error>)
                .collect::<Vec<_>>(),
        );
        let out = receive(Body::from_stream(stream), dir.path(), declared, max).await;
        if out.is_err() {
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "a refused upload leaves no file"
            );
        }
        out
    }

    async fn run(chunks: Vec<Vec<u8>>, declared: &str, max: u64) -> Result<Received, ApiError> {
        run_in(&tempfile::tempdir().unwrap(), chunks, declared, max).await
    }

    #[tokio::test]
    async fn counts_hashes_and_sniffs_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = vec![b"%PDF-".to_vec(), b"1.7\n...".to_vec()];
        let got = run_in(&dir, chunks, "application/pdf", 100).await.unwrap();
        assert_eq!(got.staged.size, 12);
        assert_eq!(
            got.staged.sha256,
            hex::encode(Sha256::digest(b"%PDF-1.7\n..."))
        );
        assert_eq!(got.accepted.mime, "application/pdf");
        assert_eq!(std::fs::read(&got.staged.path).unwrap(), b"%PDF-1.7\n...");
    }

    #[tokio::test]
    async fn refuses_at_the_limit_and_empty_and_unknown() {
        let e = run(vec![vec![b'a'; 60], vec![b'a'; 60]], "text/plain", 100)
            .await
            .unwrap_err();
        assert_eq!(e.code, "too_large");
        let e = run(vec![], "text/plain", 100).await.unwrap_err();
        assert_eq!(e.code, "empty");
        let e = run(vec![b"\x7fELF\x02\x01\x01\0".to_vec()], "image/png", 100)
            .await
            .unwrap_err();
        assert_eq!(e.code, "unsupported_type");
        let e = run(vec![b"caf\xc3".to_vec()], "text/plain", 100)
            .await
            .unwrap_err();
        assert_eq!(e.code, "unsupported_type", "text cut mid-character");
    }

    #[tokio::test]
    async fn a_large_disallowed_file_is_refused_at_the_sniff_window() {
        // Zeros declared as PNG, then a read error: the refusal comes from the first
        // SNIFF_LEN bytes, before the rest of the body (and its error) is read.
        let dir = tempfile::tempdir().unwrap();
        let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..5).map(|_| Ok(vec![0u8; 16 * 1024])).collect();
        chunks.push(Err(std::io::Error::other("client went away")));
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let e = receive(body, dir.path(), "image/png", 10 * 1024 * 1024)
            .await
            .unwrap_err();
        assert_eq!(e.code, "unsupported_type");
    }
}
