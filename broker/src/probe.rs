//! The readiness probe: a real MQTT CONNECT to our own listener on loopback. Any
//! CONNACK proves the whole front door is alive (accepting, framing, authenticating
//! and answering); the probe carries no credentials, so the answer is a quiet refusal.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::session::PROBE_CLIENT_ID;

pub async fn connack(listen: SocketAddr) -> Result<(), String> {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut buf = BytesMut::new();
        v4::Connect::new(PROBE_CLIENT_ID)
            .write(&mut buf)
            .map_err(|e| format!("encode: {e}"))?;
        stream
            .write_all(&buf)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = [0u8; 4];
        stream
            .read_exact(&mut reply)
            .await
            .map_err(|e| format!("no CONNACK: {e}"))?;
        if reply[0] == 0x20 && reply[1] == 2 {
            Ok(())
        } else {
            Err(format!("not a CONNACK: {reply:02x?}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .map_err(|_| "no CONNACK within 3 s".to_owned())?
}
