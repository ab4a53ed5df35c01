//! The client address every per-address limit keys on (registrations, new sign-in flows).
//!
//! Behind a load balancer, an ingress or Envoy, the TCP peer is the proxy, and keying on it
//! would let one busy client lock out everyone. When the peer is one of
//! `authorization_server.trusted_proxies`, the client is the rightmost `X-Forwarded-For` entry
//! that is not itself a trusted proxy: each trusted proxy appends the address it received the
//! request from, so everything to the right of that entry was written by proxies we trust, and
//! everything to its left is whatever the client sent. From any other peer the header is
//! ignored: a client cannot pick its own bucket by sending one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network in `trusted_proxies`: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProxyNetwork {
    /// Canonical (an IPv4-mapped network is stored as IPv4), host bits zero.
    addr: IpAddr,
    prefix: u8,
}

impl ProxyNetwork {
    /// Whether `ip` (IPv4-mapped or not) lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// The first `prefix` bits of `bits` (0 to 32).
fn mask_v4(bits: u32, prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .map_or(0, |mask| bits & mask)
}

/// The first `prefix` bits of `bits` (0 to 128).
fn mask_v6(bits: u128, prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .map_or(0, |mask| bits & mask)
}

impl FromStr for ProxyNetwork {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{s:?} is not an IP address or CIDR network (10.0.0.0/8, 2001:db8::/32)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => Some(p)
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        if prefix == 0 {
            return Err(format!(
                "{s:?} trusts every address, so any client could name its own address; list the proxies' addresses"
            ));
        }
        // An IPv4-mapped network is the IPv4 network it maps.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        if prefix == 0 {
            return Err(format!("{s:?} trusts every IPv4 address"));
        }
        let network = match addr {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(v4), prefix))),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(v6), prefix))),
        };
        if network != addr {
            return Err(format!(
                "{s:?} has bits set after the prefix; did you mean {network}/{prefix}?"
            ));
        }
        Ok(Self {
            addr: network,
            prefix,
        })
    }
}

impl fmt::Display for ProxyNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for ProxyNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> serde::Deserialize<'de> for ProxyNetwork {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Copy)]
pub struct TrustedProxies<'a>(pub &'a [ProxyNetwork]);

impl TrustedProxies<'_> {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client address of a request from `peer` carrying the `X-Forwarded-For` header
    /// values `forwarded_for` (every such header, in the order received). Canonical: an
    /// IPv4-mapped address comes back as IPv4.
    pub fn client_address<'h>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'h [u8]>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // Several headers are one comma-separated list, in order (RFC 9110 §5.3).
        let mut entries: Vec<Option<IpAddr>> = Vec::new();
        for value in forwarded_for {
            match std::str::from_utf8(value) {
                Ok(list) => entries.extend(list.split(',').map(parse_entry)),
                // Unreadable: one entry we cannot use.
                Err(_) => entries.push(None),
            }
        }
        // Walk from the right, past the proxies we trust. `nearest` is the closest hop we
        // know to be a trusted proxy.
        let mut nearest = peer;
        for entry in entries.iter().rev() {
            match entry {
                Some(ip) if self.trusts(*ip) => nearest = *ip,
                Some(ip) => return *ip,
                // Not an address (garbage, a port, an obfuscated name, an empty entry): the
                // hop that handed it over is the nearest we can vouch for, and whatever lies
                // further left the client may have written. The safest choice is that trusted
                // hop itself: such requests share its bucket, and no client picks one.
                None => return nearest,
            }
        }
        // Every hop is a trusted proxy (or no header: the proxy itself is the client). The
        // leftmost was written by a proxy we trust, so it is the origin.
        nearest
    }
}

/// One `X-Forwarded-For` entry: an IP address, nothing else (surrounding blanks allowed).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .trim_matches([' ', '\t'])
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn nets(list: &[&str]) -> Vec<ProxyNetwork> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn resolve(trusted: &[&str], peer: &str, headers: &[&[u8]]) -> String {
        let nets = nets(trusted);
        TrustedProxies(&nets)
            .client_address(peer.parse().unwrap(), headers.iter().copied())
            .to_string()
    }

    const LB: &[&str] = &["10.0.0.0/8"];

    #[test]
    fn networks_parse_as_cidr_or_one_address_and_refuse_the_rest() {
        for (s, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("::1", "::1/128"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ] {
            assert_eq!(s.parse::<ProxyNetwork>().unwrap().to_string(), shown, "{s}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.1/8",
            "0.0.0.0/0",
            "::/0",
            "::ffff:0.0.0.0/96",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "localhost",
            "10.0.0.0 /8",
            "fe80::1%eth0",
        ] {
            assert!(bad.parse::<ProxyNetwork>().is_err(), "{bad:?}");
        }
        let msg = "10.1.2.3/8".parse::<ProxyNetwork>().unwrap_err();
        assert!(msg.contains("did you mean 10.0.0.0/8"), "{msg}");
    }

    #[test]
    fn networks_contain_their_addresses_mapped_or_not() {
        let n: ProxyNetwork = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::a00:1".parse().unwrap()));
        let n: ProxyNetwork = "2001:db8::/32".parse().unwrap();
        assert!(n.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!n.contains("2001:db9::1".parse().unwrap()));
        let one: ProxyNetwork = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(
            resolve(LB, "203.0.113.9", &[b"198.51.100.1"]),
            "203.0.113.9"
        );
        assert_eq!(resolve(&[], "127.0.0.1", &[b"198.51.100.1"]), "127.0.0.1");
        assert_eq!(resolve(LB, "::ffff:203.0.113.9", &[]), "203.0.113.9");
    }

    #[test]
    fn behind_a_trusted_proxy_the_client_is_the_rightmost_untrusted_entry() {
        assert_eq!(resolve(LB, "10.0.0.2", &[b"198.51.100.1"]), "198.51.100.1");
        // A chain of trusted proxies is walked past.
        assert_eq!(
            resolve(LB, "10.0.0.2", &[b"198.51.100.1, 10.0.0.7,10.9.9.9"]),
            "198.51.100.1"
        );
        // No header: the proxy itself is the client.
        assert_eq!(resolve(LB, "10.0.0.2", &[]), "10.0.0.2");
    }

    #[test]
    fn forged_leftmost_entries_are_never_believed() {
        // The client sent "1.2.3.4, 10.0.0.5" itself; the proxy appended its real address.
        assert_eq!(
            resolve(LB, "10.0.0.2", &[b"1.2.3.4, 10.0.0.5, 203.0.113.50"]),
            "203.0.113.50"
        );
        // Any number of forged entries changes nothing.
        for forged in [
            "",
            "1.1.1.1, ",
            "garbage, 2.2.2.2, ",
            "10.0.0.1, 10.0.0.1, ",
        ] {
            let header = format!("{forged}203.0.113.50");
            assert_eq!(
                resolve(LB, "10.0.0.2", &[header.as_bytes()]),
                "203.0.113.50",
                "{header}"
            );
        }
    }

    #[test]
    fn an_all_trusted_chain_names_its_leftmost_hop() {
        assert_eq!(
            resolve(LB, "10.0.0.2", &[b"10.1.1.1, 10.0.0.3"]),
            "10.1.1.1"
        );
    }

    #[test]
    fn garbage_never_lets_a_client_pick_its_bucket() {
        // A non-address where the client would be: the nearest trusted hop stands in.
        for bad in [
            &b"not-an-ip"[..],
            b"198.51.100.1:4711",
            b"[2001:db8::1]",
            b"unknown",
            b"_hidden",
            b"",
            b"198.51.100.1,",
            b" , ",
            b"198.51.100.1\xff",
            b"fe80::1%eth0",
        ] {
            assert_eq!(
                resolve(LB, "10.0.0.2", &[bad]),
                "10.0.0.2",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Behind the garbage, a trusted hop that handed it over is the stand-in.
        assert_eq!(resolve(LB, "10.0.0.2", &[b"junk, 10.0.0.9"]), "10.0.0.9");
        // Garbage to the left of the client entry does not matter.
        assert_eq!(
            resolve(LB, "10.0.0.2", &[b"junk, 198.51.100.1"]),
            "198.51.100.1"
        );
    }

    #[test]
    fn several_headers_are_one_list_in_order() {
        assert_eq!(
            resolve(LB, "10.0.0.2", &[b"1.2.3.4", b"198.51.100.1, 10.0.0.5"]),
            "198.51.100.1"
        );
        assert_eq!(
            resolve(LB, "10.0.0.2", &[b"198.51.100.1", b"10.0.0.5"]),
            "198.51.100.1"
        );
        // An unreadable header in the client's position is garbage like any other.
        assert_eq!(
            resolve(LB, "10.0.0.2", &[b"198.51.100.1", b"\xc3\x28"]),
            "10.0.0.2"
        );
    }

    #[test]
    fn ipv6_and_ipv4_mapped_entries_are_canonical() {
        let v6 = &["2001:db8:ffff::/48"];
        assert_eq!(
            resolve(
                v6,
                "2001:db8:ffff::1",
                &[b"2001:db8:1::7, 2001:db8:ffff::2"]
            ),
            "2001:db8:1::7"
        );
        // A mapped peer is its IPv4 address, and so is a mapped entry.
        assert_eq!(
            resolve(LB, "::ffff:10.0.0.2", &[b"::ffff:198.51.100.1"]),
            "198.51.100.1"
        );
        // A mapped trusted hop is trusted.
        assert_eq!(
            resolve(LB, "10.0.0.2", &[b"198.51.100.1, ::ffff:10.0.0.3"]),
            "198.51.100.1"
        );
    }
}
