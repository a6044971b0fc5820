//! Uploads and attachment downloads.
//!
//! `POST /v1/uploads`: the raw body is the file (no multipart, so a client on a small
//! device can stream it), `Content-Type` the declared type, `?filename=` an optional
//! display name. The reply's `id` is what a `send` command's `attachment` names.
//!
//! `GET /v1/attachments/{id}`: the bytes (local backend) or a redirect to a short-lived
//! URL (S3), for the uploader and for members of a conversation holding a message
//! with it. Anyone else gets the same 404 as for an unknown id, so ids cannot be
//! probed for existence.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tidings_core::protocol::ids::{is_server_id, new_id};
use tidings_store::{now_ms, Attachment};
use tokio_util::io::ReaderStream;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, AuthUser};
use crate::state::AppState;
use crate::uploads::filename::{content_disposition, inline_disposition, sanitize};
use crate::uploads::sniff::{essence, extension};
use crate::uploads::{empty, receive, storage_failure, too_large, Fetched, ServeAs};

/// Both routes with their full paths. The body of an upload is read as a stream by
/// the handler, so the JSON body limit the API applies does not constrain it; the
/// upload limit is `uploads.max_bytes`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(download))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Display name for downloads (path parts and control characters are removed).
    #[serde(default)]
    pub filename: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadBody {
    pub id: String,
    pub mime: String,
    pub size: u64,
    /// SHA-256 of the stored bytes, lower-case hex.
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pixel width and height, for images (read from the header, not decoded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// Upload a file: the raw request body is the file, `Content-Type` its declared type.
/// The real type is sniffed from the bytes and must be an image, audio (voice notes
/// included), video or a common document.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file's bytes"),
    responses((status = 201, body = UploadBody), (status = 413, description = "too_large, or upload_quota (larger than today's remaining quota)"),
        (status = 429, description = "upload_quota (files per hour or bytes per day used up)"),
        (status = 415, description = "unsupported_type"), (status = 422, description = "empty")),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<UploadBody>)> {
    let remaining = quota(&state, &auth.user_id).await?;
    let max = state.uploads.max_bytes.min(remaining);
    let over = |max: u64| {
        if max < state.uploads.max_bytes {
            quota_exhausted(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "this upload would pass your daily upload quota ({} bytes left of {})",
                    max, state.uploads.max_bytes_per_day
                ),
                None,
            )
        } else {
            too_large(max)
        }
    };
    // A declared length decides before a byte is read; the stream is still counted,
    // since the header is only the client's word.
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max {
            return Err(over(max));
        }
        if len == 0 {
            return Err(empty());
        }
    }
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(essence)
        .unwrap_or_default();
    let name = query.filename.as_deref().and_then(sanitize);

    let received = receive(body, state.blobs.staging_dir(), &declared, max)
        .await
        .map_err(|e| if e.code == "too_large" { over(max) } else { e })?;
    let (staged, mime) = (received.staged, received.accepted.mime);
    let dimensions = if mime.starts_with("image/") {
        image_dimensions(staged.path.to_path_buf()).await
    } else {
        None
    };
    let id = new_id();
    let attachment = Attachment {
        id: id.clone(),
        uploader_id: auth.user_id.clone(),
        storage_key: format!("{}/{id}", auth.user_id),
        mime: mime.to_owned(),
        size: staged.size,
        sha256: staged.sha256.clone(),
        filename: name,
        created_at: now_ms(),
        width: dimensions.map(|(w, _)| w),
        height: dimensions.map(|(_, h)| h),
    };
    state
        .blobs
        .put(&attachment.storage_key, staged, &serve_as(&attachment))
        .await
        .map_err(|e| storage_failure("cannot store an upload", &e))?;
    if let Err(e) = state.store.insert_attachment(&attachment).await {
        // Without its row the stored file is unreachable: remove it now.
        if let Err(del) = state.blobs.delete(&attachment.storage_key).await {
            tracing::warn!(key = %attachment.storage_key, error = format!("{del:#}"),
                "cannot remove the file of an upload whose row failed");
        }
        return Err(e.into());
    }
    tracing::debug!(id = %attachment.id, mime, size = attachment.size, "stored an upload");
    Ok((
        StatusCode::CREATED,
        Json(UploadBody {
            id: attachment.id,
            mime: attachment.mime,
            size: attachment.size,
            sha256: attachment.sha256,
            name: attachment.filename,
            width: attachment.width,
            height: attachment.height,
        }),
    ))
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// 429 (or 413, for one upload bigger than what is left) `upload_quota`.
fn quota_exhausted(status: StatusCode, message: String, retry_ms: Option<i64>) -> ApiError {
    let mut e = ApiError::new(status, "upload_quota", message);
    e.retry_after = retry_ms.map(|ms| u64::try_from(ms).unwrap_or(0).div_ceil(1000).max(1));
    e
}

/// Checks the caller's upload quotas (`uploads.max_files_per_hour`,
/// `uploads.max_bytes_per_day`, rolling windows) and returns the bytes left today.
/// Two uploads racing past the check can overshoot by one upload each; the quota is
/// there to stop floods, not to account to the byte.
async fn quota(state: &AppState, user: &str) -> ApiResult<u64> {
    let (files_max, bytes_max) = (
        state.uploads.max_files_per_hour,
        state.uploads.max_bytes_per_day,
    );
    if files_max == 0 && bytes_max == 0 {
        return Ok(u64::MAX);
    }
    let now = now_ms();
    let usage = state
        .store
        .upload_usage(user, now - DAY_MS, now - HOUR_MS)
        .await?;
    if files_max > 0 && usage.files >= files_max {
        return Err(quota_exhausted(
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {files_max} uploads an hour"),
            usage.oldest_file_at.map(|at| at + HOUR_MS - now),
        ));
    }
    if bytes_max == 0 {
        return Ok(u64::MAX);
    }
    let left = bytes_max.saturating_sub(usage.bytes);
    if left == 0 {
        return Err(quota_exhausted(
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {bytes_max} bytes of uploads a day"),
            usage.oldest_byte_at.map(|at| at + DAY_MS - now),
        ));
    }
    Ok(left)
}

/// Download an attachment: its bytes, or a redirect to a short-lived URL on S3. Only
/// its uploader and members of a conversation holding a message with it may.
///
/// The ETag is the content's SHA-256 (an id's content never changes), so
/// `If-None-Match` answers 304 before any storage is touched. From local storage a
/// single `Range` (with `If-Range`) is served as 206, so voice and video can be
/// streamed and resumed; S3 answers ranges on the redirected request itself.
#[utoipa::path(get, path = "/v1/attachments/{id}", tag = "uploads", params(("id" = String, Path)),
    responses((status = 200, description = "the file", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range of the file (local storage)"),
        (status = 304, description = "not modified (If-None-Match)"),
        (status = 302, description = "redirect to a presigned URL (S3)"), (status = 404, description = "unknown, or not yours"),
        (status = 416, description = "range not satisfiable")),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let hidden = || ApiError::not_found("no such attachment");
    if !is_server_id(&id)
        || !state
            .store
            .attachment_readable_by(&id, &auth.user_id)
            .await?
    {
        return Err(hidden());
    }
    let attachment = state.store.attachment(&id).await?.ok_or_else(hidden)?;
    let value = |s: &str| {
        HeaderValue::from_str(s).map_err(|_| {
            tracing::error!(id = %attachment.id, "an attachment header is not a valid header value");
            ApiError::internal()
        })
    };
    let etag = value(&format!("\"{}\"", attachment.sha256))?;
    // The content under an id never changes; only members may hold a copy.
    let cache = HeaderValue::from_static("private, max-age=86400");
    if etag_matches(headers.get(header::IF_NONE_MATCH), &etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache)],
        )
            .into_response());
    }
    let serve = serve_as(&attachment);
    let fetched = state
        .blobs
        .fetch(&attachment.storage_key, &serve)
        .await
        .map_err(|e| storage_failure("cannot read an attachment", &e))?;
    match fetched {
        Fetched::Redirect(url) => {
            let location = HeaderValue::from_str(&url).map_err(|_| {
                tracing::error!("a presigned URL is not a valid header value");
                ApiError::internal()
            })?;
            Ok((
                StatusCode::FOUND,
                [
                    (header::LOCATION, location),
                    // The URL expires: neither the client nor a proxy may reuse it.
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
            )
                .into_response())
        }
        Fetched::File { mut file, len } => {
            // If-Range: the range is only for the version the client already has part of.
            let range_applies = headers
                .get(header::IF_RANGE)
                .is_none_or(|v| v.as_bytes() == etag.as_bytes());
            let range = match headers.get(header::RANGE) {
                Some(r) if range_applies => parse_range(r, len),
                _ => RangeRequest::Whole,
            };
            let (status, start, count) = match range {
                RangeRequest::Whole => (StatusCode::OK, 0, len),
                RangeRequest::Part { start, end } => {
                    (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
                }
                RangeRequest::Unsatisfiable => {
                    let mut res = ApiError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "range_not_satisfiable",
                        format!("the file has {len} bytes"),
                    )
                    .into_response();
                    res.headers_mut()
                        .insert(header::CONTENT_RANGE, value(&format!("bytes */{len}"))?);
                    return Ok(res);
                }
            };
            if start > 0 {
                use tokio::io::AsyncSeekExt;
                file.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(|e| storage_failure("cannot seek in an attachment", &e.into()))?;
            }
            let body = ReaderStream::new(tokio::io::AsyncReadExt::take(file, count));
            let mut response = Response::new(Body::from_stream(body));
            *response.status_mut() = status;
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, value(&serve.content_type)?);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
            if status == StatusCode::PARTIAL_CONTENT {
                h.insert(
                    header::CONTENT_RANGE,
                    value(&format!("bytes {start}-{}/{len}", start + count - 1))?,
                );
            }
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(
                header::CONTENT_DISPOSITION,
                value(&serve.content_disposition)?,
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            // Even an image shown inline runs nothing and loads nothing: opened
            // directly, it is a sandboxed document with no script, frame or fetch.
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DOWNLOAD_CSP),
            );
            h.insert(header::CACHE_CONTROL, cache);
            h.insert(header::ETAG, etag);
            Ok(response)
        }
    }
}

/// The policy every download from local storage carries (as GitHub's raw content does).
const DOWNLOAD_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// Whether `If-None-Match` names `etag` (weak comparison, `*` included).
fn etag_matches(header: Option<&HeaderValue>, etag: &HeaderValue) -> bool {
    let Some(list) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let ours = etag.as_bytes();
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeRequest {
    /// No usable range: the whole file (also for several ranges, which RFC 9110
    /// lets a server answer with the whole representation).
    Whole,
    /// Inclusive byte positions.
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// One `bytes=` range of a file of `len` bytes (RFC 9110 §14.1.2): `a-b`, `a-`, `-n`.
fn parse_range(header: &HeaderValue, len: u64) -> RangeRequest {
    let Some(spec) = header
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let num = |s: &str| s.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim().is_empty(), num(first), num(last)) {
        // A suffix: the last n bytes.
        (true, _, Some(n)) if n > 0 && len > 0 => (len.saturating_sub(n), len - 1),
        (true, _, _) => return RangeRequest::Unsatisfiable,
        (false, Some(a), None) if last.trim().is_empty() => (a, len.saturating_sub(1)),
        (false, Some(a), Some(b)) if a <= b => (a, b.min(len.saturating_sub(1))),
        _ => return RangeRequest::Whole,
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Part { start, end }
}

/// Width and height from an image's header (no pixel is decoded), when the format is
/// one the `image` crate reads (HEIC is not).
async fn image_dimensions(path: std::path::PathBuf) -> Option<(u32, u32)> {
    tokio::task::spawn_blocking(move || {
        image::ImageReader::open(&path)
            .ok()?
            .with_guessed_format()
            .ok()?
            .into_dimensions()
            .ok()
    })
    .await
    .ok()
    .flatten()
}

/// Types a browser may show in place: raster images it renders itself, which run no
/// script. SVG and HTML are never accepted, and would never be inline.
const INLINE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// The headers a download is served with: the sniffed type (text declared UTF-8, the
/// only text accepted) and an attachment disposition named after the upload, or after
/// its id when it had no name.
fn serve_as(a: &Attachment) -> ServeAs {
    let content_type = if a.mime.starts_with("text/") {
        format!("{}; charset=utf-8", a.mime)
    } else {
        a.mime.clone()
    };
    let name = match &a.filename {
        Some(n) => n.clone(),
        None => format!("{}.{}", a.id, extension(&a.mime)),
    };
    ServeAs {
        content_type,
        content_disposition: if INLINE_TYPES.contains(&a.mime.as_str()) {
            inline_disposition(&name)
        } else {
            content_disposition(&name)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> RangeRequest {
        parse_range(&HeaderValue::from_str(v).expect("header"), len)
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(range("bytes=0-9", 100), Part { start: 0, end: 9 });
        assert_eq!(range("bytes=90-", 100), Part { start: 90, end: 99 });
        assert_eq!(range("bytes=90-200", 100), Part { start: 90, end: 99 });
        assert_eq!(range("bytes=-10", 100), Part { start: 90, end: 99 });
        assert_eq!(range("bytes=-500", 100), Part { start: 0, end: 99 });
        assert_eq!(range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(range("bytes=9-1", 100), Whole);
        assert_eq!(range("items=0-1", 100), Whole);
        assert_eq!(range("bytes=x-1", 100), Whole);
    }

    #[test]
    fn etags_match_weakly_and_in_lists() {
        let ours = HeaderValue::from_static("\"abc\"");
        let m = |v: &str| etag_matches(Some(&HeaderValue::from_str(v).expect("header")), &ours);
        assert!(m("\"abc\""));
        assert!(m("W/\"abc\""));
        assert!(m("\"x\", \"abc\""));
        assert!(m("*"));
        assert!(!m("\"abd\""));
        assert!(!etag_matches(None, &ours));
    }
}
