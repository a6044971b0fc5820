//! Every bound the MQTT front door enforces, with its default. The binary embeds this
//! in its `[mqtt]` config section, so each is a `TIDINGS_MQTT_*` variable too.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the front door listens.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// MQTT over TCP (3.1.1 and 5: the CONNECT says which).
    pub tcp: SocketAddr,
    /// MQTT over WebSocket, if wanted.
    pub ws: Option<SocketAddr>,
    /// A second TCP listener, kept for deployments that gave MQTT 5 its own port.
    pub v5: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttLimits {
    /// Open connections, all listeners together. Past it, a CONNECT is answered with
    /// "server unavailable" (3.1.1) / "server busy" (5).
    pub max_connections: usize,
    /// Open connections per user (devices, bots). Past it: "not authorized" (3.1.1) /
    /// "quota exceeded" (5).
    pub max_connections_per_user: usize,
    /// Time from accept to a complete CONNECT (and the WebSocket upgrade before it).
    pub connect_timeout_secs: u64,
    /// Largest packet a client may send. Larger than the command limit on purpose, so an
    /// oversized command gets a typed `too_large` error rather than a closed socket.
    pub max_packet_bytes: usize,
    /// Packets queued for one connection. A connection that falls this far behind is
    /// closed (it catches up by `iseq` and sync), so a slow reader cannot grow memory.
    pub outbound_queue: usize,
    /// A write that makes no progress for this long closes the connection.
    pub write_timeout_secs: u64,
    /// Keep-alive the server holds a client to when it asks for 0 (none) or more.
    pub max_keep_alive_secs: u16,
    /// Typing publishes per connection: burst, then this many per second.
    pub typing_burst: u32,
    pub typing_per_second: u32,
    /// Commands waiting for the persistence worker. Past it, commands are answered
    /// with an `unavailable` error (retry with the same id), never dropped.
    pub worker_queue: usize,
    /// Connections being refused at once while the broker is full (each must be read
    /// up to its CONNECT to be answered); past it, sockets are closed unanswered.
    pub max_refusing: usize,
}

impl Default for MqttLimits {
    fn default() -> Self {
        MqttLimits {
            max_connections: 10_000,
            max_connections_per_user: 20,
            connect_timeout_secs: 10,
            max_packet_bytes: 256 * 1024,
            outbound_queue: 1024,
            write_timeout_secs: 30,
            max_keep_alive_secs: 1800,
            typing_burst: 10,
            typing_per_second: 4,
            worker_queue: 65_536,
            max_refusing: 256,
        }
    }
}

impl MqttLimits {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }
}
