//! Client configuration, validated before anything touches rumqttc (several of its
//! option setters panic on bad values: keep-alive under 1 s, zero in-flight...).

use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::ids::is_client_id;
use crate::sdk::error::{Result, SdkError};

/// Where the server is and where this device keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ClientConfig {
    /// Base URL of the HTTP API: `https://chat.example.com` (or `http://` for a
    /// plaintext development server).
    pub http_url: String,
    /// The MQTT broker: `mqtts://host[:8883]` (MQTT over TLS), `wss://host[:443]/mqtt`
    /// (MQTT over secure WebSocket), or for a plaintext development server
    /// `mqtt://host[:1883]` / `ws://host[:80]/mqtt`. TLS on one of `http_url` and
    /// `broker_url` but not the other is refused: the access token travels on both.
    pub broker_url: String,
    /// A directory the SDK may write to (created if missing): the outbox and cache.
    pub data_path: String,
    /// This device's id: 1-64 characters of `[A-Za-z0-9_-]`, stable per install.
    pub device_id: String,
    /// MQTT keep-alive in seconds (1-3600).
    pub keep_alive_secs: u32,
    /// PEM certificate(s) of the CA(s) to trust *instead of* the built-in public roots
    /// (pinning: a self-hosted server's private CA, or the public CA the operator
    /// chose). `None` trusts Mozilla's root set (webpki-roots). Only with TLS URLs.
    #[uniffi(default = None)]
    pub pinned_ca_pem: Option<String>,
}

/// How the MQTT connection is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BrokerTransport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

/// A validated `broker_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broker {
    pub transport: BrokerTransport,
    pub host: String,
    pub port: u16,
    /// The whole URL with the port made explicit (WebSocket transports dial it).
    pub url: String,
}

impl Broker {
    pub(crate) fn tls(&self) -> bool {
        matches!(self.transport, BrokerTransport::Tls | BrokerTransport::Wss)
    }
}

fn parse_broker(raw: &str) -> Result<Broker> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| SdkError::config(format!("broker_url {raw:?} is not a URL: {e}")))?;
    let (transport, default_port) = match url.scheme() {
        "mqtt" => (BrokerTransport::Tcp, 1883),
        "mqtts" => (BrokerTransport::Tls, 8883),
        "ws" => (BrokerTransport::Ws, 80),
        "wss" => (BrokerTransport::Wss, 443),
        other => {
            return Err(SdkError::config(format!(
                "broker_url scheme {other:?} is not one of mqtt, mqtts, ws, wss"
            )))
        }
    };
    let host = url.host_str().unwrap_or_default().to_owned();
    if host.is_empty() {
        return Err(SdkError::config("broker_url has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SdkError::config(
            "broker_url must not carry credentials (the SDK sends the session's)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(SdkError::config(
            "broker_url must not have a query or fragment",
        ));
    }
    let port = url.port().unwrap_or(default_port);
    if port == 0 {
        return Err(SdkError::config("broker_url port must not be 0"));
    }
    let ws = matches!(transport, BrokerTransport::Ws | BrokerTransport::Wss);
    if !ws && !matches!(url.path(), "" | "/") {
        return Err(SdkError::config(
            "an mqtt:// or mqtts:// broker_url has no path",
        ));
    }
    let url = if ws {
        format!("{}://{host}:{port}{}", url.scheme(), url.path())
    } else {
        String::new()
    };
    Ok(Broker {
        transport,
        host,
        port,
        url,
    })
}

/// The certificates of a PEM text; an error if it holds none or a broken one.
fn parse_pem(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| SdkError::config(format!("pinned_ca_pem: {e}")))?;
    if certs.is_empty() {
        return Err(SdkError::config("pinned_ca_pem holds no CERTIFICATE block"));
    }
    Ok(certs)
}

impl ClientConfig {
    /// A config with the usual defaults (keep-alive 30 s, public roots).
    pub fn new(
        http_url: impl Into<String>,
        broker_url: impl Into<String>,
        data_path: impl Into<String>,
        device_id: impl Into<String>,
    ) -> Self {
        ClientConfig {
            http_url: http_url.into(),
            broker_url: broker_url.into(),
            data_path: data_path.into(),
            device_id: device_id.into(),
            keep_alive_secs: 30,
            pinned_ca_pem: None,
        }
    }

    /// Checks every field; the rest of the SDK relies on this having passed.
    pub fn validate(&self) -> Result<()> {
        let url = self.http_url.trim_end_matches('/');
        let https = url.starts_with("https://");
        if !(url.starts_with("http://") || https) || url.len() <= "https://".len() {
            return Err(SdkError::config(
                "http_url must start with http:// or https://",
            ));
        }
        match reqwest::Url::parse(url) {
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => {}
            _ => return Err(SdkError::config(format!("http_url {url:?} is not a URL"))),
        }
        let broker = parse_broker(&self.broker_url)?;
        if https != broker.tls() {
            return Err(SdkError::config(format!(
                "http_url and broker_url must both use TLS (https:// with mqtts:// or wss://) \
                 or both not (http:// with mqtt:// or ws://): got {} and {}",
                if https { "https" } else { "http" },
                self.broker_url.split("://").next().unwrap_or("?"),
            )));
        }
        if let Some(pem) = &self.pinned_ca_pem {
            if !https {
                return Err(SdkError::config(
                    "pinned_ca_pem is set but neither URL uses TLS",
                ));
            }
            parse_pem(pem)?;
            // Builds the root store, which parses each certificate: a broken one is a
            // config error now, not a handshake failure later.
            self.tls_config()?;
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

    /// The parsed `broker_url` (validated by [`ClientConfig::validate`]).
    pub(crate) fn broker(&self) -> Result<Broker> {
        parse_broker(&self.broker_url)
    }

    /// The one rustls configuration HTTPS and MQTT share: ring, TLS 1.2 and 1.3, and
    /// either the pinned CA(s) alone or Mozilla's roots. Built for plaintext URLs too
    /// (reqwest wants one), where it is never used.
    pub(crate) fn tls_config(&self) -> Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.pinned_ca_pem {
            Some(pem) => {
                for cert in parse_pem(pem)? {
                    roots
                        .add(cert)
                        .map_err(|e| SdkError::config(format!("pinned_ca_pem: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SdkError::config(format!("tls: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth())
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

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfTCCASOgAwIBAgIUUEbzlK2C7K4cCXRj8p1pEtKP5b4wCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";

    #[test]
    fn bad_values_are_typed_errors() {
        let ok = ClientConfig::new(
            "http://127.0.0.1:8080",
            "mqtt://127.0.0.1:1883",
            "/tmp/x",
            "phone",
        );
        assert_eq!(ok.validate(), Ok(()));
        let tls = ClientConfig {
            http_url: "https://chat.example.com".into(),
            broker_url: "wss://chat.example.com/mqtt".into(),
            ..ok.clone()
        };
        assert_eq!(tls.validate(), Ok(()));
        assert_eq!(
            tls.broker().map(|b| (b.port, b.url)),
            Ok((443, "wss://chat.example.com:443/mqtt".to_owned()))
        );
        let mqtts = ClientConfig {
            broker_url: "mqtts://chat.example.com".into(),
            ..tls.clone()
        };
        assert_eq!(mqtts.validate(), Ok(()));
        assert_eq!(mqtts.broker().map(|b| b.port), Ok(8883));
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
                broker_url: "mqtt://127.0.0.1:0".into(),
                ..ok.clone()
            },
            ClientConfig {
                broker_url: "tcp://127.0.0.1:1883".into(),
                ..ok.clone()
            },
            ClientConfig {
                broker_url: "127.0.0.1".into(),
                ..ok.clone()
            },
            ClientConfig {
                broker_url: "mqtt://u:p@127.0.0.1".into(),
                ..ok.clone()
            },
            ClientConfig {
                broker_url: "mqtts://127.0.0.1/path".into(),
                ..tls.clone()
            },
            // TLS on one side only: the token would cross the other in clear.
            ClientConfig {
                broker_url: "mqtts://127.0.0.1".into(),
                ..ok.clone()
            },
            ClientConfig {
                broker_url: "ws://chat.example.com/mqtt".into(),
                ..tls.clone()
            },
            // A pin that would silently be unused, or that is no certificate.
            ClientConfig {
                pinned_ca_pem: Some(CA.into()),
                ..ok.clone()
            },
            ClientConfig {
                pinned_ca_pem: Some("not a pem".into()),
                ..tls.clone()
            },
            ClientConfig {
                pinned_ca_pem: Some(CA.into()),
                ..tls.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(SdkError::Config { .. })),
                "{bad:?} passed"
            );
        }
    }
}
