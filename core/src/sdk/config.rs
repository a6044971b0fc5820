//! Client configuration, validated before anything touches rumqttc (several of its
//! option setters panic on bad values: keep-alive under 1 s, zero in-flight...).

use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::ids::is_client_id;
use crate::sdk::error::{Result, SdkError};

/// Where the server is and where this device keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ClientConfig {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:8080`.
    pub http_url: String,
    /// MQTT host name or address.
    pub mqtt_host: String,
    /// MQTT TCP port (1883 by default on the server).
    pub mqtt_port: u16,
    /// A directory the SDK may write to (created if missing): the outbox and cache.
    pub data_path: String,
    /// This device's id: 1-64 characters of `[A-Za-z0-9_-]`, stable per install.
    pub device_id: String,
    /// MQTT keep-alive in seconds (1-3600).
    pub keep_alive_secs: u32,
}

impl ClientConfig {
    /// A config with the usual defaults (keep-alive 30 s).
    pub fn new(
        http_url: impl Into<String>,
        mqtt_host: impl Into<String>,
        mqtt_port: u16,
        data_path: impl Into<String>,
        device_id: impl Into<String>,
    ) -> Self {
        ClientConfig {
            http_url: http_url.into(),
            mqtt_host: mqtt_host.into(),
            mqtt_port,
            data_path: data_path.into(),
            device_id: device_id.into(),
            keep_alive_secs: 30,
        }
    }

    /// Checks every field; the rest of the SDK relies on this having passed.
    pub fn validate(&self) -> Result<()> {
        let url = self.http_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() <= "https://".len()
        {
            return Err(SdkError::config(
                "http_url must start with http:// or https://",
            ));
        }
        if reqwest::Url::parse(url).is_err() {
            return Err(SdkError::config(format!("http_url {url:?} is not a URL")));
        }
        if self.mqtt_host.is_empty() || self.mqtt_host.chars().any(char::is_whitespace) {
            return Err(SdkError::config("mqtt_host must be a host name or address"));
        }
        if self.mqtt_port == 0 {
            return Err(SdkError::config("mqtt_port must not be 0"));
        }
        if !is_client_id(&self.device_id) {
            return Err(SdkError::config(
                "device_id must be 1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        if !(1..=3600).contains(&self.keep_alive_secs) {
            return Err(SdkError::config("keep_alive_secs must be 1-3600"));
        }
        if self.data_path.is_empty() {
            return Err(SdkError::config("data_path must not be empty"));
        }
        Ok(())
    }

    pub(crate) fn base_url(&self) -> &str {
        self.http_url.trim_end_matches('/')
    }

    pub(crate) fn keep_alive(&self) -> Duration {
        Duration::from_secs(u64::from(self.keep_alive_secs.max(1)))
    }

    pub(crate) fn db_file(&self) -> PathBuf {
        PathBuf::from(&self.data_path).join("tidings-sdk.sqlite3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_typed_errors() {
        let ok = ClientConfig::new(
            "http://127.0.0.1:8080",
            "127.0.0.1",
            1883,
            "/tmp/x",
            "phone",
        );
        assert_eq!(ok.validate(), Ok(()));
        for bad in [
            ClientConfig {
                keep_alive_secs: 0,
                ..ok.clone()
            },
            ClientConfig {
                device_id: "a:b".into(),
                ..ok.clone()
            },
            ClientConfig {
                http_url: "ftp://x".into(),
                ..ok.clone()
            },
            ClientConfig {
                mqtt_port: 0,
                ..ok.clone()
            },
        ] {
            assert!(matches!(bad.validate(), Err(SdkError::Config { .. })));
        }
    }
}
