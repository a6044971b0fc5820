//! The load generator's MQTT 3.1.1 clients.
//!
//! Two interchangeable kinds, because the generator shares the machine's two cores
//! with the server and its CPU is taken from the server's: `Raw` is a lean client
//! (one reader and one writer task per connection over a tokio TcpStream, with
//! rumqttc's `mqttbytes` codec and no state machine), `Rumqttc` is the full rumqttc
//! event loop. `tidings-bench clients` measures what each costs per message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, Login, Packet, PubAck, Publish, Subscribe};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const MAX_PACKET: usize = 1 << 20;
pub const KEEP_ALIVE_SECS: u16 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    Raw,
    Rumqttc,
}

/// Called for every PUBLISH a connection receives: (topic, payload).
pub type OnPublish = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

pub struct Spec {
    pub client_id: String,
    pub login: Option<(String, String)>,
    /// Subscribed at QoS 0 before `connect` returns (Tidings delivers at QoS 0; the
    /// Mosquitto peer is asked for the same so both deliver at most once).
    pub subscribe: Option<String>,
}

/// Connections that closed when nobody asked them to (the report counts them).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

enum Out {
    Publish(Publish),
    PubAck(u16),
    Ping,
    Disconnect,
}

enum Inner {
    Raw {
        tx: mpsc::UnboundedSender<Out>,
        next_pkid: std::sync::atomic::AtomicU32,
    },
    Rumqttc {
        client: rumqttc::AsyncClient,
    },
}

pub struct Conn {
    inner: Inner,
    closing: Arc<AtomicBool>,
}

impl Conn {
    /// Queues a publish; false when the connection is gone or its queue is full.
    pub fn publish(&self, topic: &str, payload: Bytes, qos1: bool) -> bool {
        let qos = if qos1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        match &self.inner {
            Inner::Raw { tx, next_pkid } => {
                let mut p = Publish::from_bytes(topic, qos, payload);
                if qos1 {
                    // 1..=65535; PUBACKs are not tracked (the server acks at the
                    // application level, and the receiver measures delivery).
                    let n = next_pkid.fetch_add(1, Ordering::Relaxed);
                    p.pkid = (n % 65535 + 1) as u16;
                }
                tx.send(Out::Publish(p)).is_ok()
            }
            Inner::Rumqttc { client } => client.try_publish(topic, qos, false, payload).is_ok(),
        }
    }

    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        match &self.inner {
            Inner::Raw { tx, .. } => {
                let _ = tx.send(Out::Disconnect);
            }
            Inner::Rumqttc { client } => {
                let _ = client.try_disconnect();
            }
        }
    }
}

/// Opens one connection (CONNECT, CONNACK, SUBSCRIBE, SUBACK) and starts its tasks.
pub async fn connect(
    kind: ClientKind,
    port: u16,
    spec: Spec,
    on_publish: OnPublish,
) -> Result<Conn> {
    let fut = async {
        match kind {
            ClientKind::Raw => connect_raw(port, spec, on_publish).await,
            ClientKind::Rumqttc => connect_rumqttc(port, spec, on_publish).await,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .context("MQTT connect timed out")?
}

async fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Packet> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(e) => bail!("bad packet: {e:?}"),
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed (a refused CONNECT closes without CONNACK)");
        }
    }
}

async fn connect_raw(port: u16, spec: Spec, on_publish: OnPublish) -> Result<Conn> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let mut c = Connect::new(spec.client_id);
    c.keep_alive = KEEP_ALIVE_SECS;
    c.clean_session = true;
    if let Some((u, p)) = spec.login {
        c.login = Some(Login::new(u, p));
    }
    let mut out = BytesMut::with_capacity(512);
    Packet::Connect(c)
        .write(&mut out, MAX_PACKET)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(4096);
    match read_packet(&mut stream, &mut buf).await? {
        Packet::ConnAck(a) if a.code == rumqttc::mqttbytes::v4::ConnectReturnCode::Success => {}
        other => bail!("expected CONNACK success, got {other:?}"),
    }
    if let Some(topic) = spec.subscribe {
        out.clear();
        let mut s = Subscribe::new(topic, QoS::AtMostOnce);
        s.pkid = 1;
        Packet::Subscribe(s)
            .write(&mut out, MAX_PACKET)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        stream.write_all(&out).await?;
        loop {
            match read_packet(&mut stream, &mut buf).await? {
                Packet::SubAck(a) => {
                    if a.return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure))
                    {
                        bail!("subscription refused");
                    }
                    break;
                }
                // Retained presence or an early event may come before the SUBACK.
                Packet::Publish(p) => on_publish(&p.topic, &p.payload),
                _ => {}
            }
        }
    }
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let closing = Arc::new(AtomicBool::new(false));

    // Writer: drains everything queued into one buffer per write, so a burst costs one
    // syscall; pings keep the server's 1.5 x keep-alive timer from closing idle links.
    tokio::spawn(async move {
        let mut out = BytesMut::with_capacity(4096);
        let mut ping = tokio::time::interval(Duration::from_secs(KEEP_ALIVE_SECS as u64 / 2));
        ping.tick().await;
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = ping.tick() => Some(Out::Ping),
            };
            let Some(first) = first else { break };
            out.clear();
            let mut done = false;
            let mut item = Some(first);
            let mut n = 0;
            while let Some(m) = item.take() {
                let packet = match m {
                    Out::Publish(p) => Packet::Publish(p),
                    Out::PubAck(id) => Packet::PubAck(PubAck::new(id)),
                    Out::Ping => Packet::PingReq,
                    Out::Disconnect => {
                        done = true;
                        Packet::Disconnect
                    }
                };
                let _ = packet.write(&mut out, MAX_PACKET);
                n += 1;
                if done || n >= 256 {
                    break;
                }
                item = rx.try_recv().ok();
            }
            if wr.write_all(&out).await.is_err() || done {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });

    // Reader: parses in place; the callback does the measuring.
    let tx2 = tx.clone();
    let closing2 = closing.clone();
    tokio::spawn(async move {
        loop {
            loop {
                match Packet::read(&mut buf, MAX_PACKET) {
                    Ok(Packet::Publish(p)) => {
                        on_publish(&p.topic, &p.payload);
                        if p.qos == QoS::AtLeastOnce {
                            let _ = tx2.send(Out::PubAck(p.pkid));
                        }
                    }
                    Ok(_) => {}
                    Err(CodecError::InsufficientBytes(_)) => break,
                    Err(_) => {
                        if !closing2.load(Ordering::Relaxed) {
                            DROPPED.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => {
                    if !closing2.load(Ordering::Relaxed) {
                        DROPPED.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    });
    Ok(Conn {
        inner: Inner::Raw {
            tx,
            next_pkid: std::sync::atomic::AtomicU32::new(0),
        },
        closing,
    })
}

async fn connect_rumqttc(port: u16, spec: Spec, on_publish: OnPublish) -> Result<Conn> {
    use rumqttc::{Event, Incoming, MqttOptions};
    let mut opts = MqttOptions::new(spec.client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(KEEP_ALIVE_SECS as u64));
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_inflight(1000);
    if let Some((u, p)) = spec.login {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10_000);
    let subscribe = spec.subscribe.clone();
    if let Some(t) = &subscribe {
        client.subscribe(t.clone(), QoS::AtMostOnce).await?;
    }
    // Drive the loop until the link is ready (CONNACK, and SUBACK when subscribing).
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) if subscribe.is_none() => break,
            Ok(Event::Incoming(Incoming::SubAck(a))) => {
                if a.return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure))
                {
                    bail!("subscription refused");
                }
                break;
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => on_publish(&p.topic, &p.payload),
            Ok(_) => {}
            Err(e) => bail!("rumqttc: {e}"),
        }
    }
    let closing = Arc::new(AtomicBool::new(false));
    let closing2 = closing.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => on_publish(&p.topic, &p.payload),
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                // rumqttc would reconnect on the next poll; a benchmark counts the drop.
                Err(_) => {
                    if !closing2.load(Ordering::Relaxed) {
                        DROPPED.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    });
    Ok(Conn {
        inner: Inner::Rumqttc { client },
        closing,
    })
}
