//! Accounts the load runs as, all prepared before any timed part.
//!
//! Two ways in, both through the server's own code:
//! - `register`: `POST /v1/auth/register`, as real clients do (argon2id on the server,
//!   so slow). The server limits auth attempts per client address (20 at once, then
//!   30 a minute), so each HTTP client is bound to its own loopback source address
//!   (127.1.x.y — all of 127.0.0.0/8 is loopback on Linux) and used for at most
//!   `PER_ADDRESS` attempts: many clients from many addresses, as in production.
//! - `seed`: users and sessions written with `tidings-store` (the server's own store
//!   code, same migrations) into the database before the server starts, and HS256
//!   access tokens signed with the server's configured secret by `tidings-auth`.
//!   Used where argon2 would dominate the run (10,000 idle devices): the server
//!   accepts these tokens exactly as it accepts its own, because a token is only a
//!   signature over (user, live session).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use tidings_auth::TokenKeys;
use tidings_store::{NewRefreshToken, NewUser, Session, Store};

/// Attempts per source address, under the server's burst of 20.
const PER_ADDRESS: u32 = 15;

#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub username: String,
    pub password: String,
    pub access: String,
}

/// Hands out HTTP clients bound to fresh loopback source addresses.
pub struct AddressPool {
    next: AtomicU32,
}

impl AddressPool {
    pub fn new() -> Self {
        AddressPool {
            next: AtomicU32::new(1),
        }
    }

    /// A client on a source address nobody has used in this run.
    pub fn client(&self) -> Result<reqwest::Client> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n >= 1 << 16 {
            bail!("out of loopback source addresses");
        }
        let ip = Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8);
        Ok(reqwest::Client::builder()
            .local_address(IpAddr::V4(ip))
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(1)
            .build()?)
    }
}

impl Default for AddressPool {
    fn default() -> Self {
        Self::new()
    }
}

fn account_from(body: &Value, password: &str) -> Result<Account> {
    let s = |v: &Value| v.as_str().map(str::to_owned).context("missing field");
    Ok(Account {
        id: s(&body["user"]["id"])?,
        username: s(&body["user"]["username"])?,
        password: password.to_owned(),
        access: s(&body["access_token"])?,
    })
}

/// Registers `names` with at most `concurrency` registrations in flight.
pub async fn register_all(
    http: &str,
    pool: &Arc<AddressPool>,
    names: Vec<String>,
    concurrency: usize,
) -> Result<Vec<Account>> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(names.len());
    // Consecutive names share a client (and so a source address) in groups.
    for chunk in names.chunks(PER_ADDRESS as usize) {
        let client = pool.client()?;
        for name in chunk {
            let (client, sem, http, name) =
                (client.clone(), sem.clone(), http.to_owned(), name.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let password = format!("pw-{name}-bench");
                let res = client
                    .post(format!("{http}/v1/auth/register"))
                    .json(&json!({"username": name, "password": password, "device_id": "bench"}))
                    .send()
                    .await?;
                let status = res.status();
                let body: Value = res.json().await.unwrap_or(Value::Null);
                if status.as_u16() != 201 {
                    bail!("register {name}: {status} {body}");
                }
                account_from(&body, &password)
            }));
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Logs `account` in from `client`; Ok(false) for a non-200 answer.
pub async fn login(client: &reqwest::Client, http: &str, account: &Account) -> Result<bool> {
    let res = client
        .post(format!("{http}/v1/auth/login"))
        .json(&json!({"username": account.username, "password": account.password, "device_id": "login"}))
        .send()
        .await?;
    let ok = res.status().as_u16() == 200;
    let _ = res.bytes().await;
    Ok(ok)
}

/// `POST /v1/conversations` as `owner`; returns the conversation id.
pub async fn create_conversation(
    client: &reqwest::Client,
    http: &str,
    owner: &Account,
    kind: &str,
    members: &[&str],
) -> Result<String> {
    let res = client
        .post(format!("{http}/v1/conversations"))
        .bearer_auth(&owner.access)
        .json(&json!({"kind": kind, "name": "bench", "members": members}))
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("create {kind} conversation: {status} {body}");
    }
    body["id"]
        .as_str()
        .map(str::to_owned)
        .context("conversation without id")
}

/// Direct conversations for consecutive pairs (`accounts[2i]` → `accounts[2i+1]`).
pub async fn create_directs(
    http: &str,
    accounts: &[Account],
    concurrency: usize,
) -> Result<Vec<String>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::new();
    for pair in accounts.chunks_exact(2) {
        let (client, sem, http) = (client.clone(), sem.clone(), http.to_owned());
        let (a, b) = (pair[0].clone(), pair[1].clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            create_conversation(&client, &http, &a, "direct", &[b.id.as_str()]).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// A seeded user: id and a minted access token.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub id: String,
    pub access: String,
}

/// Writes `n` users, each with one live session, through `tidings-store` before the
/// server starts, and signs an access token per session with the server's secret.
pub async fn seed_users(
    database_url: &str,
    jwt_secret: &str,
    prefix: &str,
    n: usize,
) -> Result<Vec<Seeded>> {
    let store: Arc<dyn Store> = tidings_store::connect(database_url)
        .await
        .with_context(|| format!("open {database_url}"))?;
    let keys =
        TokenKeys::new(jwt_secret.as_bytes(), 7200, 7200).map_err(|e| anyhow::anyhow!("{e}"))?;
    // One real argon2id hash shared by every seeded user, so the rows are what
    // registration would write (and these users could log in with "seeded-password").
    let hash = tidings_auth::password::hash("seeded-password")
        .map_err(|e| anyhow::anyhow!("hash: {e}"))?;
    let now = tidings_store::now_ms();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = ulid::Ulid::new().to_string();
        store
            .create_user(NewUser {
                id: id.clone(),
                username: format!("{prefix}{i}"),
                display_name: None,
                password_hash: hash.clone(),
                created_at: now,
            })
            .await?;
        let sid = ulid::Ulid::new().to_string();
        store
            .create_session(
                &Session {
                    id: sid.clone(),
                    user_id: id.clone(),
                    device_id: Some("idle".into()),
                    created_at: now,
                    revoked_at: None,
                },
                &NewRefreshToken {
                    token_hash: tidings_auth::tokens::refresh_token_hash(&sid),
                    created_at: now,
                    expires_at: now + 7_200_000,
                },
            )
            .await?;
        let access = keys
            .issue_access(&id, &sid, now / 1000)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(Seeded { id, access });
    }
    Ok(out)
}
