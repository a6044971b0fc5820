//! `tidings serve`: opens the store, loads the signing key, starts the realtime plane
//! (MQTT broker and worker) and the HTTP API, and shuts down cleanly on SIGINT or SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use std::collections::HashMap;
use tidings_auth::TokenKeys;
use tidings_store::ratelimit::Budget;
use tidings_store::Backend;

use tidings_store::{PushPlatform, Store};
use tokio::net::TcpListener;

use crate::config::{Config, SharedLimits};

pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let url = config.database_url();
    let store = tidings_store::connect(&url)
        .await
        .with_context(|| format!("opening database {}", redact(&url)))?;
    tracing::info!(backend = ?store.backend(), "database ready");
    Ok(store)
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The configured secret, or the one generated into the data directory on first start.
fn load_keys(config: &Config) -> anyhow::Result<TokenKeys> {
    let secret = match &config.auth.jwt_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => load_or_create_secret(&config.data_dir.join("jwt.secret"))?,
    };
    TokenKeys::new(
        &secret,
        config.auth.access_ttl_secs,
        config.auth.refresh_ttl_secs,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.exists() {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return hex::decode(text.trim()).with_context(|| format!("{} is not hex", path.display()));
    }
    let secret = TokenKeys::generate_secret();
    write_private(path, hex::encode(secret).as_bytes())?;
    tracing::info!(path = %path.display(), "generated a JWT signing secret");
    Ok(secret.to_vec())
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}

/// The MQTT front door as a readiness probe for `/readyz`.
struct MqttProbe(Arc<tidings_broker::Realtime>);

#[async_trait::async_trait]
impl tidings_rest::ReadinessProbe for MqttProbe {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.probe().await
    }
}

/// The broker's hub as the push worker's view of live sessions.
struct HubLiveness(Arc<tidings_broker::hub::Hub>);

impl tidings_push::Liveness for HubLiveness {
    fn session_connected(&self, user: &str, session: &str) -> bool {
        self.0.session_connected(user, session)
    }
}

/// The providers `push.*` configures, by platform.
fn push_providers(
    config: &tidings_push::PushConfig,
    store: &Arc<dyn Store>,
) -> anyhow::Result<HashMap<PushPlatform, Arc<dyn tidings_push::Provider>>> {
    let timeout = std::time::Duration::from_secs(config.request_timeout_secs.max(1));
    let mut providers: HashMap<PushPlatform, Arc<dyn tidings_push::Provider>> = HashMap::new();
    if let Some(url) = &config.gateway_url {
        let gateway = tidings_push::gateway::Gateway::new(url.clone(), timeout)
            .context("building the push gateway client")?;
        providers.insert(PushPlatform::Gateway, Arc::new(gateway));
    }
    if let (Some(public), Some(private)) = (&config.vapid_public_key, &config.vapid_private_key) {
        let vapid =
            tidings_push::webpush::Vapid::new(public, private, config.vapid_subject.clone())?;
        let webpush = tidings_push::webpush::WebPush::new(
            vapid,
            timeout,
            config.webpush_ttl_secs,
            config.allow_private_endpoints,
        )?;
        providers.insert(PushPlatform::Webpush, Arc::new(webpush));
    }
    if let (Some(key_file), Some(key_id), Some(team_id)) = (
        &config.apns_key_file,
        &config.apns_key_id,
        &config.apns_team_id,
    ) {
        let apns = tidings_push::apns::Apns::new(
            &tidings_push::apns::ApnsSettings {
                url: &config.apns_url,
                key_file,
                key_id,
                team_id,
                ca_file: config.apns_ca_file.as_deref(),
                token_refresh: std::time::Duration::from_secs(config.apns_token_refresh_secs),
                expiration_secs: config.apns_expiration_secs,
                timeout,
            },
            store.clone(),
        )?;
        providers.insert(PushPlatform::Apns, Arc::new(apns));
    }
    if let Some(account) = &config.fcm_service_account_file {
        let fcm = tidings_push::fcm::Fcm::new(account, &config.fcm_url, timeout)?;
        providers.insert(PushPlatform::Fcm, Arc::new(fcm));
    }
    Ok(providers)
}

/// Whether the rate limits live in the database for every node (`limits.shared`).
fn shared_limits(config: &Config, backend: Backend) -> anyhow::Result<bool> {
    Ok(match config.limits.shared {
        SharedLimits::Local => false,
        SharedLimits::Database if backend != Backend::Postgres => {
            anyhow::bail!("limits.shared = \"database\" needs PostgreSQL")
        }
        SharedLimits::Database => true,
        SharedLimits::Auto => {
            backend == Backend::Postgres
                && config.broker.mode == tidings_broker::BrokerMode::External
        }
    })
}

/// Upper bounds (seconds) of the latency histograms' buckets: 50 µs to 5 s, finest
/// around the issue 9 targets (p99 < 10 ms for 1:1, < 50 ms for fan-out).
const LATENCY_BUCKETS: [f64; 22] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
    0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The hot path's latencies as Prometheus histograms (buckets), not the exporter's
/// default summaries: a summary's quantiles roll over a 60 s window and cannot be
/// added up, while bucket counts can be read before and after any interval (a bench
/// step, a scrape period) and aggregated over nodes.
fn latency_buckets(
    builder: metrics_exporter_prometheus::PrometheusBuilder,
) -> anyhow::Result<metrics_exporter_prometheus::PrometheusBuilder> {
    use metrics_exporter_prometheus::Matcher;
    [
        "tidings_command_seconds",
        "tidings_command_queue_seconds",
        "tidings_store_batch_seconds",
        "tidings_store_writer_checkpoint_seconds",
        "tidings_search_index_chunk_seconds",
    ]
    .into_iter()
    .try_fold(builder, |builder, name| {
        builder
            .set_buckets_for_metric(Matcher::Full(name.into()), &LATENCY_BUCKETS)
            .context("latency histogram buckets")
    })
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = latency_buckets(metrics_exporter_prometheus::PrometheusBuilder::new())?
        .install_recorder()
        .context("installing the metrics recorder")?;
    // The push settings are checked before the database is opened: a bad key or URL
    // stops the start with its own message, not half-way.
    config.push.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = open_store(&config).await?;
    let providers = push_providers(&config.push, &store)?;
    let keys = Arc::new(load_keys(&config)?);
    // One send budget per user, whether they send over MQTT or HTTP; with several
    // nodes, whichever node the command or request reaches.
    let shared_limits = shared_limits(&config, store.backend())?;
    let send_per_minute = config.limits.send_per_second.saturating_mul(60);
    let sends = Arc::new(if shared_limits {
        Budget::shared(
            store.clone(),
            "send",
            config.limits.send_burst,
            send_per_minute,
        )
    } else {
        Budget::local("send", config.limits.send_burst, send_per_minute)
    });
    tracing::info!(shared = shared_limits, "rate limits");

    let realtime = Arc::new(match config.broker.mode {
        tidings_broker::BrokerMode::Embedded => tidings_broker::start(
            tidings_broker::Listeners {
                tcp: config.mqtt.listen,
                ws: config.mqtt.ws_enabled.then_some(config.mqtt.ws_listen),
                v5: config.mqtt.v5_listen,
            },
            config.mqtt.limits.clone(),
            store.clone(),
            keys.clone(),
            sends.clone(),
        )
        .await
        .context("starting the MQTT broker")?,
        tidings_broker::BrokerMode::External => tidings_broker::start_external(
            config.broker.clone(),
            config.mqtt.limits.clone(),
            store.clone(),
            sends.clone(),
        )
        .await
        .context("starting the external-broker worker")?,
    });
    tokio::spawn(watch_revocations(
        store.clone(),
        std::time::Duration::from_millis(config.auth.revocation_poll_ms.max(50)),
    ));
    let push = tidings_rest::PushRegistration {
        platforms: providers.keys().copied().collect(),
        max_token_len: config.push.max_token_len,
        max_data_bytes: config.push.max_data_bytes,
        max_app_id_len: config.push.max_app_id_len,
        check: Some({
            let providers = providers.clone();
            Arc::new(move |platform, token: &str, data: &serde_json::Value| {
                providers
                    .get(&platform)
                    .map_or(Ok(()), |p| p.check(token, data))
            })
        }),
    };
    // The worker runs even with no provider configured: it drains rows queued before
    // a provider was removed from the config, so the queue cannot grow forever.
    tidings_push::start(
        store.clone(),
        config.push.clone(),
        providers,
        Arc::new(HubLiveness(realtime.hub.clone())),
    );
    let blobs = tidings_rest::uploads::open(&config.uploads, &config.data_dir)
        .await
        .context("opening upload storage")?;
    tokio::spawn(tidings_rest::uploads::run_sweeper(
        store.clone(),
        blobs.clone(),
        config.uploads.clone(),
    ));
    let state = tidings_rest::AppState::new(
        store,
        keys,
        realtime.fanout.clone(),
        blobs,
        config.uploads.clone(),
    )
    .with_send_limiter(sends)
    .with_api_limits(config.limits.group, shared_limits)
    .with_refresh_grace(config.auth.refresh_grace_secs)
    .with_probe(Arc::new(MqttProbe(realtime.clone())))
    .with_trusted_proxies(config.http.trusted_proxies.clone())
    .with_hooks(config.hooks.clone())
    .with_push(push);
    if shared_limits {
        tokio::spawn(tidings_store::ratelimit::sweep(
            state.store.clone(),
            state.limits.longest_refill_ms(),
            std::time::Duration::from_secs(config.limits.sweep_secs.max(1)),
        ));
    }
    if config.limits.memory_trim_secs > 0 {
        tokio::spawn(trim_memory(std::time::Duration::from_secs(
            config.limits.memory_trim_secs,
        )));
    }
    // Presence from an external broker's events is kept in PostgreSQL alone.
    if config.hooks.enabled && state.store.backend() == Backend::Postgres {
        tokio::spawn(tidings_rest::routes::hooks::run_presence_sweeper(
            state.clone(),
        ));
    }
    let hooks_router = tidings_rest::hooks_router(state.clone());
    if config.hooks.enabled && config.hooks.listen.is_none() {
        tracing::warn!(
            "broker hooks are served on the public HTTP listener; set hooks.listen to an \
             address only the broker reaches (they answer membership questions about anyone)"
        );
    }

    // Bound before the main listener, so the hooks are up once "http listening" is logged.
    let hooks_listener = match config.hooks.listen.filter(|_| config.hooks.enabled) {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the broker hooks on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "broker hooks listening");
            Some(listener)
        }
        None => None,
    };
    let listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "http listening");

    let router = tidings_rest::router(state).route(
        "/metrics",
        axum::routing::get(move || std::future::ready(metrics.render())),
    );
    // One signal stops both planes at once, each within its own deadline; HTTP ending
    // on its own (a bad setting, say) stops MQTT too, so the process never hangs.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = on_signal.send(true);
    });
    let mut http_stop = stop_rx.clone();
    let http = async {
        let served = crate::http_server::serve(listener, router, &config.http, async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        })
        .await;
        let _ = stop_tx.send(true);
        served
    };
    // The hooks' own listener, when configured: stopped by the same signal, and its
    // failure stops the process like the main listener's.
    let mut hooks_stop = stop_rx.clone();
    let hooks = async {
        let Some((router, listener)) = hooks_router.zip(hooks_listener) else {
            return Ok(());
        };
        let served = crate::http_server::serve(listener, router, &config.http, async move {
            let _ = hooks_stop.wait_for(|stop| *stop).await;
        })
        .await;
        let _ = stop_tx.send(true);
        served
    };
    let mut mqtt_stop = stop_rx;
    let mqtt = async {
        let _ = mqtt_stop.wait_for(|stop| *stop).await;
        realtime
            .shutdown(std::time::Duration::from_secs(
                config.http.shutdown_grace_secs.max(1),
            ))
            .await;
    };
    let (served, hooks_served, ()) = tokio::join!(http, hooks, mqtt);
    served.context("serving HTTP")?;
    hooks_served.context("serving the broker hooks")?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// How far back each poll looks, beyond the previous one: the revoking process's
/// clock may lag ours a little, and a revocation committed just after a poll read
/// may carry a time just before it. Announcing one twice is harmless.
const REVOCATION_OVERLAP_MS: i64 = 5_000;

/// Hears of sessions another process revoked (the admin CLI disabling an account,
/// another node's logout) and announces them through the membership index, so the
/// broker closes their live connections as it does for revocations made here.
///
/// On SQLite, which has no notification channel between processes, this poll is how
/// the admin CLI's revocations arrive. On PostgreSQL they arrive at once (the store
/// LISTENs for the NOTIFY each revocation sends from its transaction); the poll stays
/// as the backstop for notifications lost while that listening connection was down.
/// The cost is one indexed query per interval; the latency is at most the interval
/// (HTTP requests and MQTT CONNECTs check the session in the database on each call
/// regardless).
async fn watch_revocations(store: Arc<dyn Store>, every: std::time::Duration) {
    let index = store.membership();
    let mut since = tidings_store::now_ms();
    let mut announced: std::collections::HashMap<String, i64> = Default::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let from = since - REVOCATION_OVERLAP_MS;
        let revoked = match store.sessions_revoked_since(from).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot poll for revoked sessions");
                continue;
            }
        };
        for (session, at) in revoked {
            since = since.max(at);
            if announced.insert(session.clone(), at).is_none() {
                index.session_ended(&session);
            }
        }
        announced.retain(|_, at| *at >= from);
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Hands the heap memory freed since the last call back to the OS, every `every`.
/// glibc keeps what each thread's arena freed for reuse and only trims the top of the
/// main heap, so after a backlog of queued deliveries or a login storm the RSS stayed at
/// the burst's peak (issue 9). A no-op off glibc.
async fn trim_memory(every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // It walks every arena under its lock: a few milliseconds, off the runtime.
        let _ = tokio::task::spawn_blocking(release_free_heap).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    // SAFETY: malloc_trim takes no pointers; it only returns glibc's free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}
