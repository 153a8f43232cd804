//! The address of the client behind a request.
//!
//! Per-address rate limits and the scope of a registration's `Idempotency-Key` need to know who
//! sent a request. Without proxies that is the TCP peer. Behind a reverse proxy or a load
//! balancer the peer is the proxy, and the client is what the proxy reports in `Forwarded`
//! (RFC 7239) or `X-Forwarded-For`. Those headers are believed only when the peer is listed in
//! `CHRONICLE_TRUSTED_PROXIES`: from anyone else they are ignored, since any client can write
//! them.
//!
//! Each proxy appends the address of its own peer to the list, so the list is read from the
//! right: trusted proxies are passed over, and the first address that is not one is the client.
//! What lies further left was written by the client or by proxies nobody vouches for. An
//! obfuscated or unknown node (`for=unknown`, `for=_hidden`, an element without `for=`) is never
//! taken as an address, and the walk stops there, since whatever lies to its left came from a
//! node that cannot be identified: the client is then the trusted proxy that reported it. A
//! malformed header from a trusted proxy makes the peer the client (logged at debug), never an
//! error answer.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;

use crate::Problem;

/// The client's address of a request, as [`resolve_client_address`] found it. Handlers take it
/// as an extractor; without the middleware it is the TCP peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<ClientAddress, Problem> {
        if let Some(client) = parts.extensions.get::<ClientAddress>() {
            return Ok(*client);
        }
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| ClientAddress(peer.ip().to_canonical()))
            .ok_or_else(|| Problem::internal(&"the server is served without connect info"))
    }
}

/// The proxies whose forwarding headers are believed (`CHRONICLE_TRUSTED_PROXIES`): IP
/// addresses and CIDR prefixes, IPv4 and IPv6. Empty trusts nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Prefix>);

/// An IP prefix: `addr/len`, `addr` with the bits past `len` cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.len) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.len) == net,
            _ => false,
        }
    }
}

fn mask_v4(ip: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    Ipv4Addr::from(bits & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0))
}

fn mask_v6(ip: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    Ipv6Addr::from(bits & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0))
}

/// A bad entry of `CHRONICLE_TRUSTED_PROXIES`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "CHRONICLE_TRUSTED_PROXIES: `{entry}` is not an IP address or a CIDR prefix \
     (like 10.0.0.0/8 or fd00::/8): {reason}"
)]
pub struct BadTrustedProxy {
    entry: String,
    reason: &'static str,
}

impl FromStr for TrustedProxies {
    type Err = BadTrustedProxy;

    /// A comma-separated list; blanks around entries and empty entries are ignored.
    fn from_str(list: &str) -> Result<TrustedProxies, BadTrustedProxy> {
        let mut prefixes = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |reason| BadTrustedProxy {
                entry: entry.to_owned(),
                reason,
            };
            let (addr, len) = match entry.split_once('/') {
                Some((addr, len)) => (addr, Some(len)),
                None => (entry, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
            let addr = addr.to_canonical();
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(len) => len
                    .parse::<u8>()
                    .ok()
                    .filter(|len| *len <= max)
                    .ok_or_else(|| bad("the prefix length is out of range"))?,
            };
            let masked = match addr {
                IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4, len)),
                IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, len)),
            };
            if masked != addr {
                return Err(bad("bits are set past the prefix length"));
            }
            prefixes.push(Prefix { addr, len });
        }
        Ok(TrustedProxies(prefixes))
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, prefix) in self.0.iter().enumerate() {
            let sep = if n == 0 { "" } else { "," };
            write!(f, "{sep}{}/{}", prefix.addr, prefix.len)?;
        }
        Ok(())
    }
}

impl TrustedProxies {
    /// Whether nobody is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|prefix| prefix.contains(ip))
    }

    /// The client of a request from `peer` carrying `headers`.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let hops = match forwarded_hops(headers) {
            Ok(Some(hops)) => hops,
            Ok(None) => return peer,
            Err(reason) => {
                tracing::debug!(
                    peer = %peer,
                    reason,
                    "a trusted proxy sent a malformed forwarding header; the peer is the client"
                );
                return peer;
            }
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Node::Address(ip) => {
                    client = *ip;
                    if !self.contains(*ip) {
                        break;
                    }
                }
                Node::Unidentified => break,
            }
        }
        client
    }
}

/// One node of a forwarding list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Address(IpAddr),
    /// `unknown`, an obfuscated identifier (`_hidden`), or an element without `for=`.
    Unidentified,
}

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The nodes of `Forwarded`'s `for=` if the request has that header, else those of
/// `X-Forwarded-For`, client first; `None` without either; `Err` for a malformed header.
fn forwarded_hops(headers: &HeaderMap) -> Result<Option<Vec<Node>>, &'static str> {
    if let Some(list) = joined(headers, &FORWARDED)? {
        return parse_forwarded(&list).map(Some);
    }
    if let Some(list) = joined(headers, &X_FORWARDED_FOR)? {
        return list
            .split(',')
            .map(|node| parse_node(node.trim()).ok_or("an X-Forwarded-For node is not an address"))
            .collect::<Result<Vec<_>, _>>()
            .map(Some);
    }
    Ok(None)
}

/// Every value of header `name`, in order, joined by commas (as RFC 9110 combines them).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Result<Option<String>, &'static str> {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let mut list = String::new();
    for value in values {
        let value = value
            .to_str()
            .map_err(|_| "a forwarding header is not ASCII")?;
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(value);
    }
    Ok(Some(list))
}

/// RFC 7239: `forwarded-element *( "," forwarded-element )`, each element
/// `pair *( ";" pair )`, each pair `token "=" ( token / quoted-string )`.
fn parse_forwarded(list: &str) -> Result<Vec<Node>, &'static str> {
    let mut nodes = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        // One element.
        let mut node = Node::Unidentified;
        loop {
            skip_blanks(&mut chars);
            let mut name = String::new();
            while let Some(c) = chars.next_if(|c| is_tchar(*c)) {
                name.push(c);
            }
            skip_blanks(&mut chars);
            if name.is_empty() || chars.next() != Some('=') {
                return Err("a Forwarded pair is not `name=value`");
            }
            skip_blanks(&mut chars);
            let value = if chars.next_if_eq(&'"').is_some() {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err("a Forwarded quoted string is not closed"),
                        Some('"') => break,
                        Some('\\') => value.push(chars.next().ok_or("a Forwarded escape ends")?),
                        Some(c) => value.push(c),
                    }
                }
                value
            } else {
                let mut value = String::new();
                // Leniently, an unquoted `[v6]:port` too.
                while let Some(c) = chars.next_if(|c| is_tchar(*c) || ":[]".contains(*c)) {
                    value.push(c);
                }
                value
            };
            if name.eq_ignore_ascii_case("for") {
                node = parse_node(&value).ok_or("a Forwarded for= is not a node")?;
            }
            skip_blanks(&mut chars);
            match chars.next() {
                Some(';') => continue,
                Some(',') => break,
                None => {
                    nodes.push(node);
                    return Ok(nodes);
                }
                Some(_) => return Err("unexpected text in a Forwarded element"),
            }
        }
        nodes.push(node);
    }
}

fn skip_blanks(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
}

/// RFC 9110's `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A node (RFC 7239 section 6): an IPv4 address, `[IPv6]`, either with `:port`, or `unknown`
/// or `_obfuscated`; a bare IPv6 address too, as `X-Forwarded-For` writes it.
fn parse_node(node: &str) -> Option<Node> {
    if node.eq_ignore_ascii_case("unknown") || node.starts_with('_') {
        return Some(Node::Unidentified);
    }
    let ip = if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_node_port)) {
            return None;
        }
        IpAddr::V6(v6.parse().ok()?)
    } else if let Ok(ip) = node.parse::<IpAddr>() {
        ip
    } else {
        let (v4, port) = node.rsplit_once(':')?;
        if !is_node_port(port) {
            return None;
        }
        IpAddr::V4(v4.parse().ok()?)
    };
    Some(Node::Address(ip.to_canonical()))
}

/// A port: digits, or an obfuscated port (`_abc`).
fn is_node_port(port: &str) -> bool {
    (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
        || (port.len() > 1 && port.starts_with('_'))
}

/// Middleware: puts the request's [`ClientAddress`] into its extensions, for the rate limiter
/// and the handlers. The server must be served with connect info (`crate::http::Server` is).
pub async fn resolve_client_address(
    State(proxies): State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    if let Some(peer) = peer {
        let client = proxies.client_address(peer, request.headers());
        request.extensions_mut().insert(ClientAddress(client));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn proxies(list: &str) -> TrustedProxies {
        list.parse().expect("a list")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a name"),
                HeaderValue::from_str(value).expect("a value"),
            );
        }
        headers
    }

    #[test]
    fn the_list_takes_addresses_and_prefixes_and_names_the_variable_when_bad() {
        let list = proxies(" 10.0.0.0/8, 192.0.2.1 ,, 2001:db8::/32, ::1 ");
        assert!(list.contains(ip("10.200.3.4")));
        assert!(list.contains(ip("::ffff:10.0.0.1")), "v4-mapped is v4");
        assert!(list.contains(ip("192.0.2.1")));
        assert!(!list.contains(ip("192.0.2.2")));
        assert!(list.contains(ip("2001:db8:ffff::1")));
        assert!(!list.contains(ip("2001:db9::1")));
        assert!(list.contains(ip("::1")));
        assert!(proxies("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(proxies("").is_empty());
        assert_eq!(
            list.to_string(),
            "10.0.0.0/8,192.0.2.1/32,2001:db8::/32,::1/128"
        );

        for bad in [
            "10.0.0.0/33",
            "proxy.internal",
            "10.0.0.1/8",
            "::/129",
            "10.0.0.0/x",
        ] {
            let err = bad.parse::<TrustedProxies>().expect_err(bad).to_string();
            assert!(err.starts_with("CHRONICLE_TRUSTED_PROXIES: "), "{err}");
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let spoofed = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=198.51.100.8"),
        ]);
        let peer = ip("203.0.113.1");
        assert_eq!(proxies("").client_address(peer, &spoofed), peer);
        assert_eq!(proxies("10.0.0.0/8").client_address(peer, &spoofed), peer);
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_past_trusted_proxies() {
        let trusted = proxies("10.0.0.0/8");
        let peer = ip("10.0.0.1");
        let chain =
            |list: &str| trusted.client_address(peer, &headers(&[("x-forwarded-for", list)]));
        assert_eq!(chain("198.51.100.7"), ip("198.51.100.7"));
        // The client prepended a spoofed address: the proxy's own entry wins.
        assert_eq!(chain("1.2.3.4, 198.51.100.7"), ip("198.51.100.7"));
        // Two trusted proxies in a row.
        assert_eq!(chain("1.2.3.4, 198.51.100.7, 10.1.1.1"), ip("198.51.100.7"));
        // Everyone is trusted: the farthest one is the client.
        assert_eq!(chain("10.9.9.9, 10.1.1.1"), ip("10.9.9.9"));
        // Ports, brackets, v4-mapped addresses.
        assert_eq!(chain("198.51.100.7:4711"), ip("198.51.100.7"));
        assert_eq!(chain("[2001:db8::7]:4711"), ip("2001:db8::7"));
        assert_eq!(chain("2001:db8::7"), ip("2001:db8::7"));
        assert_eq!(chain("::ffff:198.51.100.7"), ip("198.51.100.7"));
        // Several headers make one list, in order.
        let two = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(trusted.client_address(peer, &two), ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_reads_quoted_ipv6_with_ports() {
        let trusted = proxies("10.0.0.0/8, fd00::/8");
        let peer = ip("10.0.0.1");
        let forwarded = |value: &str| {
            trusted.client_address(
                peer,
                &headers(&[("x-forwarded-for", "192.0.2.99"), ("forwarded", value)]),
            )
        };
        assert_eq!(forwarded("for=198.51.100.7"), ip("198.51.100.7"));
        assert_eq!(
            forwarded(r#"for="[2001:db8:cafe::17]:4711""#),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(forwarded(r#"For="[2001:db8::1]""#), ip("2001:db8::1"));
        assert_eq!(
            forwarded(
                r#"for=1.2.3.4;proto=http, for="198.51.100.7:80";by=10.0.0.1;proto=https, for="[fd00::5]""#
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            forwarded(r#"proto=https;for="198.51.100.7";host="example.com,evil""#),
            ip("198.51.100.7")
        );
        assert_eq!(forwarded("for=198.51.100.7:_port"), ip("198.51.100.7"));
    }

    #[test]
    fn obfuscated_and_unknown_nodes_are_never_the_client_and_end_the_walk() {
        let trusted = proxies("10.0.0.0/8");
        let peer = ip("10.0.0.1");
        let forwarded =
            |value: &str| trusted.client_address(peer, &headers(&[("forwarded", value)]));
        // What lies left of an unidentified node is not believed: the proxy that reported it
        // stands for the client.
        assert_eq!(forwarded("for=198.51.100.7, for=unknown"), peer);
        assert_eq!(forwarded("for=198.51.100.7, for=_hidden"), peer);
        assert_eq!(
            forwarded("for=198.51.100.7, for=_hidden, for=10.2.2.2"),
            ip("10.2.2.2")
        );
        assert_eq!(forwarded("for=198.51.100.7, proto=https"), peer);
        // An unidentified node further left than the client does not matter.
        assert_eq!(
            forwarded("for=_gazonk, for=198.51.100.7"),
            ip("198.51.100.7")
        );
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, unknown")]);
        assert_eq!(trusted.client_address(peer, &xff), peer);
    }

    #[test]
    fn a_malformed_header_from_a_trusted_proxy_means_the_peer() {
        let trusted = proxies("10.0.0.0/8");
        let peer = ip("10.0.0.1");
        for (name, value) in [
            ("x-forwarded-for", "198.51.100.7, not-an-address"),
            ("x-forwarded-for", ""),
            ("x-forwarded-for", "198.51.100.7:99999"),
            ("forwarded", "for=198.51.100.7;"),
            ("forwarded", r#"for="198.51.100.7"#),
            ("forwarded", "for=[2001:db8::1]x"),
            ("forwarded", "for"),
            ("forwarded", "for=example.com"),
            ("forwarded", "for=198.51.100.7 junk"),
        ] {
            let got = trusted.client_address(peer, &headers(&[(name, value)]));
            assert_eq!(got, peer, "{name}: {value}");
        }
        let mut binary = HeaderMap::new();
        binary.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"198.51.100.\xff").expect("a value"),
        );
        assert_eq!(trusted.client_address(peer, &binary), peer);
        // No header at all: the peer.
        assert_eq!(trusted.client_address(peer, &HeaderMap::new()), peer);
    }
}
