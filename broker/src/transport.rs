//! The byte streams MQTT runs over: plain TCP, or WebSocket binary messages
//! (tokio-tungstenite) carrying the same bytes. Split into halves so a connection can
//! read and write at the same time.

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Ws(SplitStream<Ws>),
}

pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Ws(SplitSink<Ws, Message>),
}

pub fn tcp(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    // Chat packets are small and latency matters more than packing them.
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
}

/// Runs the WebSocket upgrade with a deadline and size limits, answering the `mqtt`
/// subprotocol that MQTT-over-WebSocket clients ask for (browsers refuse the socket
/// otherwise).
pub async fn websocket(
    stream: TcpStream,
    deadline: tokio::time::Instant,
    max_message: usize,
) -> std::io::Result<(ReadHalf, WriteHalf)> {
    let _ = stream.set_nodelay(true);
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_message);
    config.max_frame_size = Some(max_message);
    let ws = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose_subprotocol, Some(config)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "websocket handshake"))?
    .map_err(std::io::Error::other)?;
    let (sink, stream) = ws.split();
    Ok((ReadHalf::Ws(stream), WriteHalf::Ws(sink)))
}

/// Answers the `mqtt` subprotocol when the client offers it. The signature is
/// tungstenite's handshake `Callback`; its error type is not ours to shrink.
#[allow(clippy::result_large_err)]
fn choose_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| matches!(*p, "mqtt" | "mqttv3.1"))
        .map(str::to_owned);
    if let Some(p) = offered.and_then(|p| HeaderValue::from_str(&p).ok()) {
        resp.headers_mut().insert("sec-websocket-protocol", p);
    }
    Ok(resp)
}

impl ReadHalf {
    /// Appends whatever arrives to `buf`; 0 means the peer closed. Cancel-safe.
    pub async fn read(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            ReadHalf::Tcp(r) => {
                if buf.is_empty() {
                    // Wait without a buffer: an idle connection (most of them, for a
                    // chat server) would otherwise keep its last read's 2 KiB for good.
                    // Costs one allocation per read burst on a busy one.
                    *buf = BytesMut::new();
                    r.readable().await?;
                }
                if buf.capacity() - buf.len() < 512 {
                    buf.reserve(2048);
                }
                r.read_buf(buf).await
            }
            ReadHalf::Ws(s) => loop {
                match s.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Ok(Message::Binary(data))) => {
                        if data.is_empty() {
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    // Pings are answered by tungstenite itself; MQTT is binary only.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Text(_))) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "MQTT over WebSocket must use binary messages",
                        ))
                    }
                    Some(Err(e)) => return Err(std::io::Error::other(e)),
                }
            },
        }
    }
}

impl WriteHalf {
    pub async fn write_all(&mut self, bytes: Bytes) -> std::io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.write_all(&bytes).await,
            WriteHalf::Ws(s) => s
                .send(Message::Binary(bytes))
                .await
                .map_err(std::io::Error::other),
        }
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.shutdown().await,
            WriteHalf::Ws(s) => s.close().await.map_err(std::io::Error::other),
        }
    }
}
