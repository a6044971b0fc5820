//! A TLS-terminating proxy in front of the test server, as a deployment would put one
//! (nginx, Caddy, a load balancer): `https` → the HTTP port, `mqtts` → the MQTT port,
//! `wss` → the MQTT-over-WebSocket port. The CA and the server certificate
//! (`localhost` and `127.0.0.1`) are minted per run with rcgen, so the SDK under test
//! trusts the CA only through `pinned_ca_pem`. It runs on its own thread and runtime
//! so it keeps its ports while the server behind it restarts, and so dropping it
//! inside an async test does not drop a runtime there.

use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

/// A CA and a leaf certificate signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl TestPki {
    pub fn mint() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Tidings test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let key = KeyPair::generate().expect("server key");
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).expect("leaf cert");
        TestPki {
            ca_pem: ca_cert.pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

pub struct TlsProxy {
    pub pki: TestPki,
    pub https_port: u16,
    pub mqtts_port: u16,
    pub wss_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TlsProxy {
    /// Listens on three free loopback ports, forwarding to the given plain ones.
    pub fn start(http_port: u16, mqtt_port: u16, ws_port: u16) -> TlsProxy {
        let pki = TestPki::mint();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![pki.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.clone().into()),
            )
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listeners: Vec<std::net::TcpListener> = (0..3)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .collect();
        let port = |i: usize| listeners[i].local_addr().expect("addr").port();
        let (https_port, mqtts_port, wss_port) = (port(0), port(1), port(2));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let targets = [http_port, mqtt_port, ws_port];
        std::thread::Builder::new()
            .name("tls-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    for (listener, target) in listeners.into_iter().zip(targets) {
                        let listener = TcpListener::from_std(listener).expect("tokio listener");
                        tokio::spawn(serve(listener, acceptor.clone(), target));
                    }
                    let _ = stopped.await;
                });
            })
            .expect("proxy thread");
        TlsProxy {
            pki,
            https_port,
            mqtts_port,
            wss_port,
            stop: Some(stop),
        }
    }
}

async fn serve(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, target: u16) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A client that refuses our certificate ends here (that is the point of
            // the negative tests); so does one whose server is down mid-restart.
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let _ = copy_bidirectional(&mut tls, &mut upstream).await;
        });
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
