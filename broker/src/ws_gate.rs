//! A timeout in front of rumqttd's WebSocket listener.
//!
//! rumqttd runs the WebSocket handshake inside its accept loop with no timeout, so one
//! client that opens a socket and says nothing would block every new WebSocket client.
//! The gate accepts public connections itself, waits (with a deadline) for the complete
//! HTTP upgrade request, and only then opens a loopback connection to rumqttd's private
//! WebSocket listener and splices the two; rumqttd then finds the whole request waiting
//! and finishes the handshake at once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
const MAX_REQUEST_BYTES: usize = 8 * 1024;

pub async fn run(listener: TcpListener, backend: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                tokio::spawn(async move {
                    if let Err(e) = relay(client, backend).await {
                        tracing::debug!(%peer, error = %e, "websocket connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "websocket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn relay(mut client: TcpStream, backend: SocketAddr) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let complete = tokio::time::timeout(HANDSHAKE_DEADLINE, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            request.extend_from_slice(&chunk[..n]);
            if request.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if request.len() > MAX_REQUEST_BYTES {
                return Ok(false);
            }
        }
    })
    .await;
    if !matches!(complete, Ok(Ok(true))) {
        return Ok(());
    }
    let mut upstream = TcpStream::connect(backend).await?;
    upstream.write_all(&request).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
