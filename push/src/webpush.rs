//! Web Push: browsers and UnifiedPush distributors. The payload is encrypted for the
//! subscription (RFC 8291, `aes128gcm`) and the request signed with the server's VAPID
//! key (RFC 8292), both with ring. The endpoint is a URL the *device* chose, so it is
//! checked against server-side request forgery at registration and again, address by
//! address, each time it is resolved (a name may resolve somewhere else later).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use reqwest::StatusCode;
use ring::rand::SystemRandom;
use ring::{aead, agreement, hkdf, signature};
use serde_json::Value;
use tidings_store::PushTarget;

use crate::notification::Notification;
use crate::provider::{by_status, send, Outcome, Provider};

/// Bytes of one `aes128gcm` record: the whole message is one record. Push services
/// accept at least 4096 bytes of body.
const RECORD_SIZE: u32 = 4096;
/// Largest plaintext that fits: the record less the header (86), the GCM tag (16) and
/// the padding delimiter (1).
pub const MAX_PLAINTEXT: usize = 4096 - 86 - 16 - 1;
/// How long a VAPID token is valid (RFC 8292: at most 24 hours).
const VAPID_TTL_SECS: u64 = 12 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum WebPushError {
    #[error("push.vapid_public_key / push.vapid_private_key: {0}")]
    Key(String),
    #[error("building the Web Push HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The server's VAPID identity.
pub struct Vapid {
    pair: signature::EcdsaKeyPair,
    /// The uncompressed public key, base64url: the `k=` of every request and the
    /// `applicationServerKey` apps subscribe with.
    public_b64: String,
    subject: Option<String>,
}

impl Vapid {
    /// From base64url keys as `web-push generate-vapid-keys` prints them: the 65-byte
    /// uncompressed public key and the 32-byte private scalar.
    pub fn new(
        public: &str,
        private: &str,
        subject: Option<String>,
    ) -> Result<Vapid, WebPushError> {
        let q = B64
            .decode(public.trim())
            .map_err(|e| WebPushError::Key(format!("public key is not base64url: {e}")))?;
        let d = B64
            .decode(private.trim())
            .map_err(|e| WebPushError::Key(format!("private key is not base64url: {e}")))?;
        let pair = signature::EcdsaKeyPair::from_private_key_and_public_key(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &d,
            &q,
            &SystemRandom::new(),
        )
        .map_err(|e| WebPushError::Key(format!("not a matching P-256 key pair: {e}")))?;
        Ok(Vapid {
            pair,
            public_b64: B64.encode(&q),
            subject,
        })
    }

    /// `vapid t=<ES256 JWT>, k=<public key>` for the endpoint's origin.
    fn authorization(&self, endpoint: &reqwest::Url) -> Result<String, String> {
        let aud = endpoint.origin().ascii_serialization();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs()
            + VAPID_TTL_SECS;
        let header = B64.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let mut claims = serde_json::json!({ "aud": aud, "exp": exp });
        if let (Some(sub), Some(obj)) = (&self.subject, claims.as_object_mut()) {
            obj.insert("sub".into(), Value::String(sub.clone()));
        }
        let claims = B64.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| format!("signing the VAPID token: {e}"))?;
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            B64.encode(sig.as_ref()),
            self.public_b64
        ))
    }
}

/// A subscription's keys, from the target's `data`.
struct Keys {
    p256dh: Vec<u8>,
    auth: Vec<u8>,
}

fn keys(data: &Value) -> Result<Keys, String> {
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let s = data
            .get("keys")
            .and_then(|k| k.get(name))
            .or_else(|| data.get(name))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("data.keys.{name} is missing"))?;
        B64.decode(s.trim_end_matches('='))
            .map_err(|_| format!("data.keys.{name} is not base64url"))
    };
    let p256dh = field("p256dh")?;
    let auth = field("auth")?;
    if p256dh.len() != 65 || p256dh[0] != 4 {
        return Err("data.keys.p256dh must be an uncompressed P-256 point (65 bytes)".into());
    }
    if auth.len() != 16 {
        return Err("data.keys.auth must be 16 bytes".into());
    }
    Ok(Keys { p256dh, auth })
}

/// A length for ring's HKDF output.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(
    prk: &hkdf::Prk,
    info: &[&[u8]],
    len: usize,
) -> Result<Vec<u8>, ring::error::Unspecified> {
    let mut out = vec![0u8; len];
    prk.expand(info, Len(len))?.fill(&mut out)?;
    Ok(out)
}

/// RFC 8291 §3-4: one `aes128gcm` record encrypted for the subscription, with a fresh
/// ephemeral key and salt each time.
fn encrypt(keys: &Keys, plaintext: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let ephemeral = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)?;
    let as_public = ephemeral.compute_public_key()?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &keys.p256dh);
    let ecdh = agreement::agree_ephemeral(ephemeral, &peer, |s| s.to_vec())?;
    // IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" || 0 || ua_public || as_public)
    let prk_key = hkdf::Salt::new(hkdf::HKDF_SHA256, &keys.auth).extract(&ecdh);
    let ikm = expand(
        &prk_key,
        &[b"WebPush: info\0", &keys.p256dh, as_public.as_ref()],
        32,
    )?;
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&rng, &mut salt)?;
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&ikm);
    let cek = expand(&prk, &[b"Content-Encoding: aes128gcm\0"], 16)?;
    let nonce = expand(&prk, &[b"Content-Encoding: nonce\0"], 12)?;
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &cek)?);
    let mut record = Vec::with_capacity(plaintext.len() + 17);
    record.extend_from_slice(plaintext);
    record.push(2); // the last (only) record's padding delimiter
    key.seal_in_place_append_tag(
        aead::Nonce::try_assume_unique_for_key(&nonce)?,
        aead::Aad::empty(),
        &mut record,
    )?;
    let mut body = Vec::with_capacity(86 + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_ref());
    body.extend_from_slice(&record);
    Ok(body)
}

/// Whether the server may call `ip`: public unicast only, unless the operator allowed
/// private and loopback endpoints (a UnifiedPush distributor on the LAN, or tests).
pub fn address_allowed(ip: IpAddr, allow_private: bool) -> bool {
    if allow_private {
        return !ip.is_unspecified() && !ip.is_multicast();
    }
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24, IETF protocol
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_allowed(IpAddr::V4(v4), false);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 can reach private IPv4
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// Checks an endpoint URL before it is stored: https (http only with private endpoints
/// allowed), a host, no credentials, and no forbidden IP literal.
pub fn check_endpoint(endpoint: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("token must be the subscription's endpoint URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        s => return Err(format!("endpoint scheme must be https, not {s}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("endpoint must not carry credentials".into());
    }
    match url.host() {
        None => return Err("endpoint has no host".into()),
        Some(url::Host::Ipv4(ip)) if !address_allowed(IpAddr::V4(ip), allow_private) => {
            return Err("endpoint is a private, loopback or reserved address".into())
        }
        Some(url::Host::Ipv6(ip)) if !address_allowed(IpAddr::V6(ip), allow_private) => {
            return Err("endpoint is a private, loopback or reserved address".into())
        }
        Some(url::Host::Domain(d))
            if !allow_private && (d == "localhost" || d.ends_with(".localhost")) =>
        {
            return Err("endpoint is a loopback name".into())
        }
        _ => {}
    }
    Ok(url)
}

/// Resolves names for the Web Push client and keeps only addresses the server may
/// call, so a name that resolves (or later re-resolves) to a private address is
/// refused at connect time, not only at registration.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| address_allowed(a.ip(), allow_private))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address the server may call").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

pub struct WebPush {
    client: reqwest::Client,
    vapid: Vapid,
    ttl_secs: u64,
    allow_private: bool,
}

impl WebPush {
    pub fn new(
        vapid: Vapid,
        timeout: Duration,
        ttl_secs: u64,
        allow_private: bool,
    ) -> Result<WebPush, WebPushError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // A redirect would be a second, unchecked request to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .build()?;
        Ok(WebPush {
            client,
            vapid,
            ttl_secs,
            allow_private,
        })
    }

    /// The payload: the notification as JSON, falling back to ids only when the text
    /// would not fit one record.
    fn payload(n: &Notification) -> Result<Vec<u8>, serde_json::Error> {
        let full = serde_json::to_vec(n)?;
        if full.len() <= MAX_PLAINTEXT {
            return Ok(full);
        }
        let mut ids = n.clone();
        ids.body = None;
        ids.sender = None;
        serde_json::to_vec(&ids)
    }
}

#[async_trait]
impl Provider for WebPush {
    fn name(&self) -> &'static str {
        "webpush"
    }

    fn check(&self, token: &str, data: &Value) -> Result<(), String> {
        check_endpoint(token, self.allow_private)?;
        keys(data).map(|_| ())
    }

    async fn send(&self, target: &PushTarget, n: &Notification) -> Outcome {
        // The reason is a metric label: a fixed word; the detail goes to the log.
        let failed = |label: &str, detail: String| {
            tracing::warn!(%detail, "Web Push not sendable: {label}");
            Outcome::Failed {
                reason: label.to_owned(),
            }
        };
        let url = match check_endpoint(&target.token, self.allow_private) {
            Ok(u) => u,
            Err(e) => return failed("bad_endpoint", e),
        };
        let data: Value = serde_json::from_str(&target.data).unwrap_or(Value::Null);
        let keys = match keys(&data) {
            Ok(k) => k,
            Err(e) => return failed("bad_keys", e),
        };
        let body = match Self::payload(n)
            .map_err(|e| e.to_string())
            .and_then(|p| encrypt(&keys, &p).map_err(|_| "ECDH or AES-GCM failed".to_owned()))
        {
            Ok(b) => b,
            Err(e) => return failed("encryption", e),
        };
        let authorization = match self.vapid.authorization(&url) {
            Ok(a) => a,
            Err(e) => return failed("vapid", e),
        };
        let request = self
            .client
            .post(url)
            .header("authorization", authorization)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", self.ttl_secs.to_string())
            .header("urgency", if n.is_badge() { "low" } else { "high" })
            // Replaces an undelivered push for the same conversation, or the previous
            // badge update (RFC 8030 §5.4).
            .header(
                "topic",
                if n.is_badge() {
                    "badge".to_owned()
                } else {
                    topic(&n.conversation)
                },
            )
            .body(body);
        let response = match send(request, self.name()).await {
            Ok(r) => r,
            Err(retry) => return retry,
        };
        let status = response.status();
        if status.is_success() {
            Outcome::Sent
        } else if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            Outcome::Gone {
                reason: format!("http_{}", status.as_u16()),
            }
        } else {
            by_status(status, response.headers())
        }
    }
}

/// RFC 8030 topics are at most 32 base64url characters: ULID conversation ids (26)
/// fit; anything else is hashed down.
fn topic(conversation: &str) -> String {
    let ok = conversation.len() <= 32
        && conversation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        conversation.to_owned()
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, conversation.as_bytes());
        B64.encode(&digest.as_ref()[..24])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_are_refused_unless_allowed() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!address_allowed(ip, false), "{ip} allowed");
        }
        for ip in ["8.8.8.8", "2a00:1450::1"] {
            assert!(
                address_allowed(ip.parse().expect("ip"), false),
                "{ip} refused"
            );
        }
        assert!(address_allowed("127.0.0.1".parse().expect("ip"), true));
    }

    #[test]
    fn endpoints_are_checked_before_they_are_stored() {
        assert!(check_endpoint("https://push.example.com/abc", false).is_ok());
        for bad in [
            "http://push.example.com/abc",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://localhost/x",
            "https://user:pw@push.example.com/x",
            "ftp://push.example.com/x",
            "not a url",
        ] {
            assert!(check_endpoint(bad, false).is_err(), "{bad} accepted");
        }
        assert!(check_endpoint("http://localhost:8090/notify/x", true).is_ok());
    }

    #[test]
    fn long_topics_are_hashed_to_32_characters() {
        assert_eq!(
            topic("01JABCDEFGHJKMNPQRSTVWXYZ0"),
            "01JABCDEFGHJKMNPQRSTVWXYZ0"
        );
        assert_eq!(topic(&"x".repeat(40)).len(), 32);
    }
}
