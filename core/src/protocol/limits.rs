//! Every bound Tidings enforces, in one place, so the server, the REST API, the SDK and
//! the docs agree. A violation always produces a typed error (an `error` event on MQTT,
//! an HTTP status with a code on REST), never a silent drop.

/// Longest client-chosen id (command id, client message id, device id).
pub const MAX_CLIENT_ID_LEN: usize = 64;
/// Largest message body in bytes of UTF-8. Chat text, not documents: files go through
/// uploads and are referenced by id.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest encoded command a device may publish on `u/{me}/out`. Bigger than the body
/// limit so that a long body plus mentions still fits, small enough to bound worker memory.
pub const MAX_COMMAND_BYTES: usize = 32 * 1024;
/// Largest typing payload (`{"typing":true}` is 15 bytes); larger ones close the
/// connection, since typing is relayed to every member without storage or rate limit.
pub const MAX_TYPING_BYTES: usize = 256;
/// Most users one message may mention.
pub const MAX_MENTIONS: usize = 50;
/// Longest reaction (an emoji sequence or a short code) in bytes.
pub const MAX_REACTION_BYTES: usize = 64;
/// Longest conversation name and topic, in bytes.
pub const MAX_CONVERSATION_NAME_BYTES: usize = 128;
pub const MAX_CONVERSATION_TOPIC_BYTES: usize = 1024;
/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1000;

/// Username: 3 to 32 characters of `[a-z0-9_.-]` (lower-cased on register).
pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
/// Passwords: at least 8 bytes; at most 256 so hashing cost stays bounded.
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 256;

/// Largest JSON request body the HTTP API reads.
pub const MAX_HTTP_JSON_BYTES: usize = 64 * 1024;
/// Largest upload.
pub const MAX_UPLOAD_BYTES: u64 = 25 * 1024 * 1024;
/// Default and largest page sizes of listing endpoints.
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 200;

/// Per-user send rate: a token bucket of this many messages, refilled at this rate.
pub const SEND_BURST: u32 = 30;
pub const SEND_PER_SECOND: u32 = 10;
/// Per-client-address auth attempts (register, login, refresh).
pub const AUTH_BURST: u32 = 20;
pub const AUTH_PER_MINUTE: u32 = 30;

/// Lifetime of an access JWT, in seconds. Short, because it cannot be revoked except
/// by the revocation list the broker checks at CONNECT.
pub const ACCESS_TOKEN_TTL_SECS: i64 = 15 * 60;
/// Lifetime of a refresh token, in seconds.
pub const REFRESH_TOKEN_TTL_SECS: i64 = 30 * 24 * 3600;
/// How long after a refresh token was rotated presenting it again returns the same new
/// token instead of ending the session (while that new token is unused): long enough
/// for a client to time out and retry a refresh whose reply was lost, short enough that
/// a stolen token is little use.
pub const REFRESH_GRACE_SECS: u64 = 30;
