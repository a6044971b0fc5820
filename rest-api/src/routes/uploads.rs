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
use crate::uploads::filename::{content_disposition, sanitize};
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
#[utoipa::path(get, path = "/v1/attachments/{id}", tag = "uploads", params(("id" = String, Path)),
    responses((status = 200, description = "the file", content_type = "application/octet-stream"),
        (status = 302, description = "redirect to a presigned URL (S3)"), (status = 404, description = "unknown, or not yours")),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
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
        Fetched::File { file, len } => {
            let value = |s: &str| {
                HeaderValue::from_str(s).map_err(|_| {
                    tracing::error!(id = %attachment.id, "an attachment header is not a valid header value");
                    ApiError::internal()
                })
            };
            let mut response = Response::new(Body::from_stream(ReaderStream::new(file)));
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, value(&serve.content_type)?);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            h.insert(
                header::CONTENT_DISPOSITION,
                value(&serve.content_disposition)?,
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            // The content under an id never changes; only members may hold a copy.
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=86400"),
            );
            h.insert(header::ETAG, value(&format!("\"{}\"", attachment.sha256))?);
            Ok(response)
        }
    }
}

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
        content_disposition: content_disposition(&name),
    }
}
