//! The client's address, for per-address limits.
//!
//! Behind a reverse proxy every connection comes from the proxy, so keying a limit on
//! the TCP peer would put every user in one bucket. When the peer is one of
//! `http.trusted_proxies`, the client is taken from `X-Forwarded-For` instead: the
//! rightmost address that is not itself a trusted proxy. Only that walk is safe: each
//! proxy appends the address it saw, so everything left of the first hop we trust was
//! written by the client and may be forged. From any other peer the header is ignored.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AppState;

/// Addresses and networks of the reverse proxies whose `X-Forwarded-For` is believed.
/// Written as IPs (`10.0.0.5`, `::1`) or CIDRs (`10.0.0.0/8`); configuration reads a
/// list of strings, or one comma-separated string (handy in an environment variable),
/// and refuses anything else at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ProxyList", into = "Vec<String>")]
pub struct TrustedProxies(Vec<IpNet>);

#[derive(Deserialize)]
#[serde(untagged)]
enum ProxyList {
    List(Vec<String>),
    CommaSeparated(String),
}

impl TrustedProxies {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| parse_net(e.as_ref()))
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`, given the request's headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        // Several header lines are one list, in order (RFC 9110 §5.3).
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) if self.contains(ip) => client = ip,
                Some(ip) => return ip,
                // Garbage is not something a proxy we trust wrote; stop at the last
                // address one of them vouched for.
                None => return client,
            }
        }
        client
    }
}

impl TryFrom<ProxyList> for TrustedProxies {
    type Error = String;

    fn try_from(list: ProxyList) -> Result<Self, String> {
        match list {
            ProxyList::List(entries) => TrustedProxies::parse(&entries),
            ProxyList::CommaSeparated(text) => {
                let entries: Vec<&str> = text
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .collect();
                TrustedProxies::parse(&entries)
            }
        }
    }
}

impl From<TrustedProxies> for Vec<String> {
    fn from(proxies: TrustedProxies) -> Self {
        proxies.0.iter().map(ToString::to_string).collect()
    }
}

fn parse_net(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    if entry.contains('/') {
        entry
            .parse::<IpNet>()
            // `10.1.2.3/8` means the network, not one host in it.
            .map(|net| net.trunc())
            .map_err(|_| format!("`{entry}` is not a CIDR network (e.g. 10.0.0.0/8)"))
    } else {
        entry
            .parse::<IpAddr>()
            .map(|ip| IpNet::from(ip.to_canonical()))
            .map_err(|_| format!("`{entry}` is not an IP address or CIDR network"))
    }
}

/// One `X-Forwarded-For` element: an IP, or (as some proxies write it) an IP with a
/// port, `1.2.3.4:5678` or `[::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The client's IP address: the TCP peer, or what a trusted proxy says it forwarded
/// (see the module documentation). Needs the server to provide
/// `ConnectInfo<SocketAddr>`, as `tidings serve` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            tracing::error!("no ConnectInfo<SocketAddr>: the server must provide the peer address");
            return Err(ApiError::internal());
        };
        Ok(ClientAddr(
            state.trusted_proxies.client(peer.ip(), &parts.headers),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).expect("header"));
        }
        headers
    }

    #[test]
    fn parses_addresses_and_networks_and_refuses_the_rest() {
        let p = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"])
            .expect("valid list");
        assert!(p.contains(ip("127.0.0.1")));
        assert!(!p.contains(ip("127.0.0.2")));
        assert!(p.contains(ip("10.200.3.4")));
        assert!(!p.contains(ip("11.0.0.1")));
        assert!(p.contains(ip("::1")));
        assert!(p.contains(ip("fd12::7")));
        assert!(!p.contains(ip("fe80::1")));
        // An IPv4 client seen through a dual-stack socket.
        assert!(p.contains(ip("::ffff:10.1.1.1")));
        // Host bits in a CIDR mean its network.
        let p = TrustedProxies::parse(&["192.168.1.77/24"]).expect("valid");
        assert!(p.contains(ip("192.168.1.1")));
        for bad in ["", "localhost", "10.0.0.0/33", "1.2.3", "10.0.0.0/x"] {
            assert!(TrustedProxies::parse(&[bad]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn round_trips_through_strings() {
        let p = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8"]).expect("valid");
        let back: Vec<String> = p.clone().into();
        assert_eq!(back, ["127.0.0.1/32", "10.0.0.0/8"]);
        assert_eq!(
            TrustedProxies::try_from(ProxyList::List(back)),
            Ok(p.clone())
        );
        let one = ProxyList::CommaSeparated(" 127.0.0.1, 10.0.0.0/8 ,".into());
        assert_eq!(TrustedProxies::try_from(one), Ok(p));
    }

    #[test]
    fn untrusted_peers_are_their_own_address_whatever_the_header_says() {
        let none = TrustedProxies::default();
        let headers = xff(&["203.0.113.7"]);
        assert_eq!(none.client(ip("127.0.0.1"), &headers), ip("127.0.0.1"));
        let some = TrustedProxies::parse(&["10.0.0.1"]).expect("valid");
        assert_eq!(some.client(ip("10.0.0.2"), &headers), ip("10.0.0.2"));
    }

    #[test]
    fn trusted_peers_forward_the_rightmost_untrusted_hop() {
        let p = TrustedProxies::parse(&["10.0.0.0/8"]).expect("valid");
        let peer = ip("10.0.0.1");
        // The client forged the first entry; the proxy appended what it saw.
        assert_eq!(
            p.client(peer, &xff(&["1.1.1.1, 203.0.113.7"])),
            ip("203.0.113.7")
        );
        // A chain of trusted proxies is skipped, also across header lines.
        assert_eq!(
            p.client(peer, &xff(&["198.51.100.2, 10.0.0.9", "10.0.0.3"])),
            ip("198.51.100.2")
        );
        // Ports, and IPv4 written as mapped IPv6.
        assert_eq!(
            p.client(peer, &xff(&["198.51.100.2:4711"])),
            ip("198.51.100.2")
        );
        assert_eq!(
            p.client(peer, &xff(&["[2001:db8::1]:80"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            p.client(peer, &xff(&["::ffff:198.51.100.2"])),
            ip("198.51.100.2")
        );
        // No header: the proxy itself is the client.
        assert_eq!(p.client(peer, &HeaderMap::new()), peer);
        // Only proxies in the list: the farthest one we trust.
        assert_eq!(
            p.client(peer, &xff(&["10.0.0.7, 10.0.0.8"])),
            ip("10.0.0.7")
        );
        // Garbage stops the walk at the last trusted hop rather than skipping past it.
        assert_eq!(
            p.client(peer, &xff(&["1.1.1.1, nonsense, 10.0.0.8"])),
            ip("10.0.0.8")
        );
        assert_eq!(p.client(peer, &xff(&["", "10.0.0.8"])), ip("10.0.0.8"));
    }
}
