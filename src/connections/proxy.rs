//! Who the client is behind a reverse proxy or CDN: `serve --trusted-proxy CIDR` names the peers
//! whose `Forwarded` (RFC 7239) or `X-Forwarded-For` headers are believed, and nobody else's.
//!
//! A proxy appends the address it received the request from to the list, so the list's
//! rightmost entry was written by the proxy we trust, and the ones left of it by whoever came
//! before, who may have written anything. The client is the rightmost address that is not
//! itself a trusted proxy (as nginx's `real_ip_recursive` and Go's `chi` middleware take it).

use std::net::IpAddr;

use axum::http::HeaderMap;

/// The trusted proxies' address ranges.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

/// Parses `ADDR/BITS` (or a bare address: one host) as a range, for `--trusted-proxy`.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (address, bits) = match text.split_once('/') {
        Some((address, bits)) => (address, Some(bits)),
        None => (text, None),
    };
    let address: IpAddr = address
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not an address or CIDR range: {e}"))?;
    let most = if address.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(bits) => bits
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|bits| *bits <= most)
            .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {most}"))?,
        None => most,
    };
    Ok((address, bits))
}

impl TrustedProxies {
    /// The ranges given.
    pub fn new(ranges: Vec<(IpAddr, u8)>) -> Self {
        Self(ranges)
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `address` is in a trusted range.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0
            .iter()
            .any(|&(range, bits)| in_range(address, canonical(range), bits))
    }

    /// The client a request from `peer` speaks for: with a trusted `peer`, the rightmost
    /// untrusted address its `Forwarded` header names (or, without one, its `X-Forwarded-For`);
    /// `peer` itself otherwise, or when the headers name nothing usable.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = if headers.contains_key("forwarded") {
            headers
                .get_all("forwarded")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .filter_map(forwarded_for)
                .collect()
        } else {
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .filter_map(|entry| node_address(entry.trim()))
                .collect()
        };
        let mut client = peer;
        for address in forwarded.into_iter().rev() {
            client = address;
            if !self.contains(address) {
                break;
            }
        }
        client
    }
}

/// The address in one `Forwarded` element's `for=` parameter.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| node_address(value.trim().trim_matches('"')))
            .flatten()
    })
}

/// An address as the headers write it: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711` or a bare IPv6 address. Obfuscated names (`_hidden`, `unknown`) are none.
fn node_address(text: &str) -> Option<IpAddr> {
    if let Ok(address) = text.parse() {
        return Some(address);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    text.rsplit_once(':')?.0.parse().ok()
}

/// IPv4-mapped IPv6 addresses as IPv4, so that a dual-stack listener's peers match IPv4 ranges.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

fn in_range(address: IpAddr, range: IpAddr, bits: u8) -> bool {
    match (address, range) {
        (IpAddr::V4(a), IpAddr::V4(r)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(r) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(r)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(r) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| parse_cidr(r).unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn an_untrusted_peer_is_its_own_client_whatever_it_forwards() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(trusted.client(peer, &h), peer);
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.1.1.1")]);
        assert_eq!(
            trusted.client(peer, &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[(
            "forwarded",
            "for=1.2.3.4, for=\"[2001:db8::9]:4711\";proto=https",
        )]);
        assert_eq!(
            trusted.client(peer, &h),
            "2001:db8::9".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(trusted.client(peer, &h), peer);
    }

    #[test]
    fn ranges_parse_and_match_by_prefix() {
        let trusted = proxies(&["192.168.4.0/22", "::ffff:0:0/96"]);
        assert!(trusted.contains("192.168.7.255".parse().unwrap()));
        assert!(!trusted.contains("192.168.8.0".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
        assert!(proxies(&["0.0.0.0/0"]).contains("8.8.8.8".parse().unwrap()));
    }
}
