//! The client's IP address, as seen through trusted reverse proxies.
//!
//! Per-client limits (nonce requests) key on the client's address. Behind nginx every request
//! comes from the proxy, so the TCP peer alone would put all clients in one bucket. The
//! `X-Forwarded-For` header is believed only when the TCP peer is a configured trusted proxy
//! (`server.trusted_proxies`); it is read from the right, skipping trusted proxies, so a client
//! cannot forge its address by sending its own header.

use std::net::IpAddr;

/// The address to key per-client limits on.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else { return peer };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.contains(&ip) {
                    return ip;
                }
            }
            // A malformed entry: everything left of it is unverifiable.
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let trusted = [ip("127.0.0.1")];
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), None, &trusted), ip("127.0.0.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), Some("198.51.100.7"), &[]), ip("127.0.0.1"));
    }

    #[test]
    fn a_forged_left_entry_is_ignored() {
        let trusted = [ip("127.0.0.1"), ip("10.0.0.2")];
        // The client sent "X-Forwarded-For: 6.6.6.6"; nginx appended the real address, and an
        // inner trusted proxy appended nginx's.
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("6.6.6.6, 198.51.100.7, 10.0.0.2"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("garbage, 198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("10.0.0.2, garbage"), &trusted),
            ip("127.0.0.1")
        );
    }
}
