//! Configuration: built-in defaults, then an optional TOML file, then `TIDINGS_*`
//! environment variables (figment merges them in that order).
//!
//! Environment names are the keys with the section joined by `_`:
//! `data_dir` = TIDINGS_DATA_DIR, `http.listen` = TIDINGS_HTTP_LISTEN,
//! `mqtt.listen` = TIDINGS_MQTT_LISTEN, `auth.jwt_secret` = TIDINGS_AUTH_JWT_SECRET, …

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Sections whose keys the environment spells `SECTION_KEY`.
const SECTIONS: [&str; 9] = [
    "http", "mqtt", "auth", "log", "uploads", "limits", "hooks", "broker", "push",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Where the SQLite database, uploads and the generated signing key live.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: SQLite at `{data_dir}/tidings.db`.
    pub database_url: Option<String>,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub uploads: tidings_rest::uploads::UploadsConfig,
    pub limits: LimitsConfig,
    /// Auth/ACL hooks for an external MQTT broker (multi-node mode; off by default).
    pub hooks: tidings_rest::routes::hooks::HooksConfig,
    /// The embedded MQTT front door (default), or an external clustered broker.
    pub broker: tidings_broker::BrokerConfig,
    /// Push notifications: the queue worker's pace and retries, registration limits,
    /// and the providers (`push.gateway_url`, …).
    #[serde(default)]
    pub push: tidings_push::PushConfig,
}

/// Limits that span both planes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitsConfig {
    /// Per-user send budget, MQTT and HTTP together: a burst, refilled at a rate.
    pub send_burst: u32,
    pub send_per_second: u32,
    /// Password/token attempts per client address, conversations created per user,
    /// renames/topic changes per conversation, calls adding members per user: each a
    /// burst refilled per minute.
    #[serde(flatten)]
    pub group: tidings_rest::ApiLimits,
    /// Where the buckets live: `auto` (the default) keeps them in PostgreSQL when the
    /// database is PostgreSQL and `broker.mode = "external"` (several nodes share one
    /// budget per user and per address) and in this node's memory otherwise; `local`
    /// and `database` force one. `database` needs PostgreSQL.
    pub shared: SharedLimits,
    /// Seconds between sweeps of full shared buckets (their rows carry no state).
    pub sweep_secs: u64,
    /// Seconds between handing freed heap memory back to the OS (0: never). glibc keeps
    /// what its per-thread arenas freed, so after a burst the RSS stayed at the burst's
    /// peak: 374 MiB of heap after the pairs bench's overload, 44 MiB after one trim.
    pub memory_trim_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedLimits {
    Auto,
    Local,
    Database,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Seconds a connection may take to send a request's headers, counted from when
    /// the server starts waiting for them; also how long an idle keep-alive connection
    /// stays open.
    pub header_timeout_secs: u64,
    /// Seconds a request body may go without a byte arriving (an idle timeout, so a
    /// large upload on a slow link is fine as long as it keeps moving).
    pub body_timeout_secs: u64,
    /// Connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT before their
    /// connections are closed.
    pub shutdown_grace_secs: u64,
    /// Reverse proxies (IPs or CIDRs) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: tidings_rest::client_addr::TrustedProxies,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MqttConfig {
    /// MQTT 3.1.1 over TCP.
    pub listen: SocketAddr,
    /// MQTT 3.1.1 over WebSocket (any path), for browsers and proxies.
    pub ws_listen: SocketAddr,
    pub ws_enabled: bool,
    /// A second MQTT listener (both listeners speak 3.1.1 and 5); off unless set.
    pub v5_listen: Option<SocketAddr>,
    /// Connection caps, timeouts, queue sizes: see tidings_broker::MqttLimits.
    #[serde(flatten)]
    pub limits: tidings_broker::MqttLimits,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthConfig {
    /// HS256 secret for access tokens (at least 32 bytes). Every node of a deployment
    /// needs the same one; when unset, one is generated into `{data_dir}/jwt.secret`.
    pub jwt_secret: Option<String>,
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
    /// How often (milliseconds) the server looks for sessions another process revoked
    /// (the admin CLI, another node), to close their live MQTT connections.
    pub revocation_poll_ms: u64,
    /// Seconds after a refresh token was rotated during which presenting it again (a
    /// client retrying a refresh whose reply was lost) returns the same new refresh
    /// token instead of ending the session; 0 ends it on any second use.
    pub refresh_grace_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogConfig {
    /// An env-filter directive; RUST_LOG overrides it.
    pub filter: String,
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            database_url: None,
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                header_timeout_secs: 30,
                body_timeout_secs: 30,
                max_connections: 1024,
                shutdown_grace_secs: 10,
                trusted_proxies: Default::default(),
            },
            mqtt: MqttConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
                ws_listen: SocketAddr::from(([0, 0, 0, 0], 8083)),
                ws_enabled: true,
                v5_listen: None,
                limits: tidings_broker::MqttLimits::default(),
            },
            auth: AuthConfig {
                jwt_secret: None,
                access_ttl_secs: tidings_core::protocol::limits::ACCESS_TOKEN_TTL_SECS,
                refresh_ttl_secs: tidings_core::protocol::limits::REFRESH_TOKEN_TTL_SECS,
                revocation_poll_ms: 1000,
                refresh_grace_secs: tidings_core::protocol::limits::REFRESH_GRACE_SECS,
            },
            uploads: tidings_rest::uploads::UploadsConfig::default(),
            limits: LimitsConfig {
                send_burst: tidings_core::protocol::limits::SEND_BURST,
                send_per_second: tidings_core::protocol::limits::SEND_PER_SECOND,
                group: tidings_rest::ApiLimits::default(),
                shared: SharedLimits::Auto,
                sweep_secs: 60,
                memory_trim_secs: 10,
            },
            log: LogConfig {
                filter: "info".into(),
                format: LogFormat::Text,
            },
            hooks: Default::default(),
            broker: Default::default(),
            push: tidings_push::PushConfig::default(),
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(
                path.exists(),
                "config file {} does not exist",
                path.display()
            );
            figment = figment.merge(Toml::file(path));
        }
        let env = Env::prefixed("TIDINGS_").map(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS
                .iter()
                .find(|s| key.starts_with(&format!("{s}_")))
                .map_or_else(|| key.clone(), |_| key.replacen('_', ".", 1))
                .into()
        });
        let config: Config = figment
            .merge(env)
            .extract()
            .context("reading the configuration")?;
        config
            .hooks
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        config
            .broker
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(config)
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("tidings.db").display()))
    }
}

#[cfg(test)]
// figment's Jail returns its own (large) error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    /// Loading the configuration fails with an error that names `what` (a key or value).
    fn assert_refused(what: &str, accepted: &str) {
        let err = Config::load(None).map(|_| ()).expect_err(accepted);
        assert!(format!("{err:#}").contains(what), "{err:#}");
    }

    #[test]
    fn env_overrides_file_and_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tidings.toml",
                "data_dir = \"/srv/tidings\"\n[http]\nlisten = \"0.0.0.0:9000\"\n[mqtt]\nlisten = \"127.0.0.1:1884\"\n",
            )?;
            jail.set_env("TIDINGS_HTTP_LISTEN", "127.0.0.1:9100");
            jail.set_env("TIDINGS_DATABASE_URL", "postgres://db/tidings");
            let c = Config::load(Some(Path::new("tidings.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.data_dir, PathBuf::from("/srv/tidings"));
            assert_eq!(c.http.listen.to_string(), "127.0.0.1:9100");
            assert_eq!(c.mqtt.listen.to_string(), "127.0.0.1:1884");
            assert_eq!(c.database_url(), "postgres://db/tidings");
            jail.set_env("TIDINGS_AUTH_REFRESH_GRACE_SECS", "0");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.auth.refresh_grace_secs, 0);
            jail.set_env("TIDINGS_DATA_DIR", "/var/lib/tidings");
            jail.set_env("TIDINGS_MQTT_LISTEN", "0.0.0.0:2883");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.data_dir, PathBuf::from("/var/lib/tidings"));
            assert_eq!(c.mqtt.listen.to_string(), "0.0.0.0:2883");
            Ok(())
        });
    }

    #[test]
    fn where_rate_limits_live_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.limits.shared, SharedLimits::Auto);
            assert_eq!(c.limits.sweep_secs, 60);
            assert_eq!(c.limits.memory_trim_secs, 10);
            jail.set_env("TIDINGS_LIMITS_SHARED", "database");
            jail.set_env("TIDINGS_LIMITS_SWEEP_SECS", "5");
            jail.set_env("TIDINGS_LIMITS_MEMORY_TRIM_SECS", "0");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.limits.shared, SharedLimits::Database);
            assert_eq!(c.limits.sweep_secs, 5);
            assert_eq!(c.limits.memory_trim_secs, 0);
            // A typo stops the start rather than falling back to per-node limits.
            jail.set_env("TIDINGS_LIMITS_SHARED", "postgres");
            assert!(
                Config::load(None).is_err(),
                "unknown limits.shared accepted"
            );
            Ok(())
        });
    }

    #[test]
    fn http_limits_and_trusted_proxies_from_the_environment() {
        use std::net::IpAddr;
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.http.header_timeout_secs, 30);
            assert_eq!(c.http.body_timeout_secs, 30);
            assert_eq!(c.http.max_connections, 1024);
            assert_eq!(c.http.shutdown_grace_secs, 10);
            assert!(c.http.trusted_proxies.is_empty());

            jail.set_env("TIDINGS_HTTP_HEADER_TIMEOUT_SECS", "2");
            jail.set_env("TIDINGS_HTTP_BODY_TIMEOUT_SECS", "3");
            jail.set_env("TIDINGS_HTTP_MAX_CONNECTIONS", "7");
            jail.set_env("TIDINGS_HTTP_SHUTDOWN_GRACE_SECS", "4");
            jail.set_env(
                "TIDINGS_HTTP_TRUSTED_PROXIES",
                r#"["127.0.0.1", "10.0.0.0/8"]"#,
            );
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.http.header_timeout_secs, 2);
            assert_eq!(c.http.body_timeout_secs, 3);
            assert_eq!(c.http.max_connections, 7);
            assert_eq!(c.http.shutdown_grace_secs, 4);
            let p = &c.http.trusted_proxies;
            assert!(p.contains(ip("127.0.0.1")) && p.contains(ip("10.9.8.7")));
            assert!(!p.contains(ip("127.0.0.2")));

            // One address, or several separated by commas, without TOML brackets.
            jail.set_env("TIDINGS_HTTP_TRUSTED_PROXIES", "::1");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(c.http.trusted_proxies.contains(ip("::1")));
            jail.set_env("TIDINGS_HTTP_TRUSTED_PROXIES", "192.168.0.0/16,127.0.0.1");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(c.http.trusted_proxies.contains(ip("192.168.4.4")));
            assert!(c.http.trusted_proxies.contains(ip("127.0.0.1")));

            // A typo stops the start instead of silently trusting nobody (or everybody).
            jail.set_env("TIDINGS_HTTP_TRUSTED_PROXIES", r#"["10.0.0.0/33"]"#);
            assert_refused("10.0.0.0/33", "bad CIDR accepted");
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_from_a_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tidings.toml",
                "[http]\ntrusted_proxies = [\"10.1.0.0/16\", \"fd00::1\"]\n",
            )?;
            let c = Config::load(Some(Path::new("tidings.toml"))).map_err(|e| e.to_string())?;
            let p = &c.http.trusted_proxies;
            assert!(p.contains("10.1.200.3".parse().expect("ip")));
            assert!(p.contains("fd00::1".parse().expect("ip")));
            assert!(!p.contains("10.2.0.1".parse().expect("ip")));
            Ok(())
        });
    }

    #[test]
    fn hooks_from_the_environment_and_a_weak_node_secret_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TIDINGS_HOOKS_ENABLED", "true");
            jail.set_env("TIDINGS_HOOKS_LISTEN", "127.0.0.1:9181");
            jail.set_env("TIDINGS_HOOKS_NODE_USERNAME", "worker");
            jail.set_env("TIDINGS_HOOKS_NODE_SECRET", "s".repeat(40));
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(c.hooks.enabled);
            assert_eq!(
                c.hooks.listen.map(|a| a.to_string()).as_deref(),
                Some("127.0.0.1:9181")
            );
            assert_eq!(c.hooks.node_username, "worker");
            jail.set_env("TIDINGS_HOOKS_NODE_SECRET", "short");
            assert_refused("node_secret", "weak secret accepted");
            Ok(())
        });
    }

    #[test]
    fn presence_grace_has_a_default_a_setting_and_a_ceiling() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.hooks.presence_offline_grace_ms, 2_000);
            assert_eq!(c.hooks.presence_sweep_secs, 30);
            jail.set_env("TIDINGS_HOOKS_PRESENCE_OFFLINE_GRACE_MS", "500");
            jail.set_env("TIDINGS_HOOKS_PRESENCE_SWEEP_SECS", "5");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.hooks.presence_offline_grace_ms, 500);
            assert_eq!(c.hooks.presence_sweep_secs, 5);
            jail.set_env("TIDINGS_HOOKS_PRESENCE_OFFLINE_GRACE_MS", "600001");
            assert_refused("presence_offline_grace_ms", "an hour-long grace accepted");
            jail.set_env("TIDINGS_HOOKS_PRESENCE_OFFLINE_GRACE_MS", "500");
            jail.set_env("TIDINGS_HOOKS_PRESENCE_SWEEP_SECS", "0");
            assert_refused("presence_sweep_secs", "a sweep every 0 s accepted");
            Ok(())
        });
    }

    #[test]
    fn external_broker_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TIDINGS_BROKER_MODE", "external");
            assert_refused("broker.addrs", "no addresses accepted");
            jail.set_env(
                "TIDINGS_BROKER_ADDRS",
                r#"["10.0.0.1:1883", "10.0.0.2:1883"]"#,
            );
            jail.set_env("TIDINGS_BROKER_SHARE_GROUP", "workers");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.broker.mode, tidings_broker::BrokerMode::External);
            assert_eq!(c.broker.addrs.len(), 2);
            assert_eq!(c.broker.share_group, "workers");
            jail.set_env("TIDINGS_BROKER_ADDRS", "10.0.0.1:1883, 10.0.0.3:1883");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.broker.addrs, ["10.0.0.1:1883", "10.0.0.3:1883"]);
            Ok(())
        });
    }

    #[test]
    fn push_settings_from_the_environment_and_their_checks() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(c.push.gateway_url.is_none() && !c.push.allow_private_endpoints);
            assert!(c.push.validate().is_ok());

            jail.set_env(
                "TIDINGS_PUSH_GATEWAY_URL",
                "https://push.example.com/_matrix/push/v1/notify",
            );
            jail.set_env("TIDINGS_PUSH_ALLOW_PRIVATE_ENDPOINTS", "true");
            jail.set_env("TIDINGS_PUSH_BADGE_MIN_INTERVAL_SECS", "5");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                c.push.gateway_url.as_deref(),
                Some("https://push.example.com/_matrix/push/v1/notify")
            );
            assert!(c.push.allow_private_endpoints);
            assert_eq!(c.push.badge_min_interval_secs, 5);
            assert!(c.push.validate().is_ok());

            // Settings that cannot work stop the start with a message naming them.
            jail.set_env("TIDINGS_PUSH_APNS_KEY_ID", "ABC123");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let err = c.push.validate().expect_err("half an APNs setup accepted");
            assert!(err.contains("push.apns_key_file"), "{err}");
            jail.set_env("TIDINGS_PUSH_LEASE_SECS", "5");
            let mut c = Config::load(None).map_err(|e| e.to_string())?;
            c.push.apns_key_id = None; // the APNs half-setup above is not this case
            let err = c
                .push
                .validate()
                .expect_err("lease shorter than a request accepted");
            assert!(err.contains("push.lease_secs"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn defaults_are_the_embedded_setup() {
        figment::Jail::expect_with(|_| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.database_url(), "sqlite://./data/tidings.db");
            assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(c.mqtt.listen.to_string(), "0.0.0.0:1883");
            assert_eq!(c.auth.refresh_grace_secs, 30);
            assert!(!c.hooks.enabled, "no broker hooks unless asked for");
            assert_eq!(c.broker.mode, tidings_broker::BrokerMode::Embedded);
            Ok(())
        });
    }
}
