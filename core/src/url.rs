//! Just enough URL handling for resource identifiers: `scheme://authority[/path]`.
//! A full URL crate would pull IDNA tables into the filter for no gain: resources are
//! operator-written ASCII URLs, and anything unusual is rejected at load.

/// A resource URL split into the parts the filter matches requests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceUrl {
    pub scheme: String,
    /// Lower-cased host with the port only when it is not the scheme's default.
    pub authority: String,
    /// Path prefix without a trailing slash; empty for a resource at the root.
    pub path: String,
}

impl ResourceUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "must be an absolute http(s) URL".to_string())?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme must be http or https, not {scheme:?}"));
        }
        if rest.contains(['?', '#']) {
            return Err("must not contain a query or fragment".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("must name a host (and no user info)".into());
        }
        if !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(
                "host must be ASCII letters, digits, '-', '.', ':' or an IPv6 literal".into(),
            );
        }
        if !valid_authority(authority) {
            return Err(
                "authority must be host[:port] (a port of digits, an IPv6 host in brackets)".into(),
            );
        }
        if path.contains("//")
            || path.contains("/./")
            || path.contains("/../")
            || path.ends_with("/..")
        {
            return Err("path must be normalized (no empty, '.' or '..' segments)".into());
        }
        if path.ends_with('/') && path != "/" {
            return Err(
                "path must not end with '/' (clients compare resources byte for byte)".into(),
            );
        }
        let path = if path == "/" { "" } else { path };
        Ok(Self {
            scheme: scheme.to_string(),
            authority: normalize_authority(scheme, authority),
            path: path.to_string(),
        })
    }

    /// Origin (`scheme://authority`) used for same-origin checks and metadata URLs.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// Whether a request's `Host` / `:authority` names this resource's authority. The default
    /// port is judged by the resource's scheme, never by the request's `:scheme`, which the
    /// client chooses.
    pub fn matches_host(&self, host: &str) -> bool {
        if host.eq_ignore_ascii_case(&self.authority) {
            return true;
        }
        let default_port = if self.scheme == "https" {
            ":443"
        } else {
            ":80"
        };
        // `get`, not indexing: a host with a multibyte character there must not panic.
        host.len() == self.authority.len() + default_port.len()
            && host
                .get(..self.authority.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.authority))
            && host.ends_with(default_port)
    }

    /// Whether a request path (query already removed) falls under this resource: the prefix
    /// itself or anything below it at a segment boundary (`/mcp` matches `/mcp/x`, not `/mcpx`).
    pub fn covers_path(&self, path: &str) -> bool {
        if self.path.is_empty() {
            return true;
        }
        match path.strip_prefix(self.path.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// `host[:port]`: a host without `:` or brackets, or an IPv6 literal in brackets; a port in
/// its plain decimal form (`:080` would not compare equal to `:80`).
fn valid_authority(authority: &str) -> bool {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let Some((inside, after)) = rest.split_once(']') else {
                return false;
            };
            let ipv6 = inside.contains(':')
                && inside
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !ipv6 {
                return false;
            }
            match after {
                "" => ("[]", None),
                _ => match after.strip_prefix(':') {
                    Some(port) => ("[]", Some(port)),
                    None => return false,
                },
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let host_ok = host == "[]" || (!host.is_empty() && !host.contains(['[', ']']));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n.to_string() == p));
    host_ok && port_ok
}

/// Lower-cases the host and drops the scheme's default port, so `Host: Example.com:443`
/// and `https://example.com` compare equal.
pub fn normalize_authority(scheme: &str, authority: &str) -> String {
    let lower = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    match lower.strip_suffix(default_port) {
        Some(host) if !host.is_empty() => host.to_string(),
        _ => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes() {
        let r = ResourceUrl::parse("https://MCP.example.com:443/mcp").unwrap();
        assert_eq!(r.authority, "mcp.example.com");
        assert_eq!(r.path, "/mcp");
        assert_eq!(r.origin(), "https://mcp.example.com");
        let v6 = ResourceUrl::parse("http://[::1]:80/mcp").unwrap();
        assert_eq!(v6.authority, "[::1]");
        assert_eq!(
            ResourceUrl::parse("https://[fe80::1]:8443")
                .unwrap()
                .authority,
            "[fe80::1]:8443"
        );
        let root = ResourceUrl::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(root.path, "");
        assert_eq!(root.authority, "127.0.0.1:9000");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "ftp://x/y",
            "127.0.0.1:9000/mcp",
            "http:///mcp",
            "http://u@h/mcp",
            "http://h/mcp/",
            "http://h/mcp?x=1",
            "http://h//mcp",
            "http://h/a/../b",
        ] {
            assert!(ResourceUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn an_authority_is_one_host_and_at_most_one_plain_port() {
        // Found by the fuzz target `authority_matching`: `http://a:80:80` parsed to authority
        // `a:80`, which its own origin then parsed to `a`; a request's `Host` never matched it.
        for bad in [
            "http://a:80:80/mcp",
            "http://a:/mcp",
            "http://a:080",
            "http://a:65536",
            "http://a:+80",
            "http://[::1/mcp",
            "http://[::1]x",
            "http://[]",
            "http://[h]:80",
            "http://a]b",
            "http://::1",
        ] {
            assert!(ResourceUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_host_with_multibyte_characters_never_panics() {
        let r = ResourceUrl::parse("http://chat.example").unwrap();
        // 15 bytes, like "chat.example:80", with a character across byte 12.
        let host = "chat.exampl\u{fffd}:";
        assert_eq!(host.len(), "chat.example:80".len());
        assert!(!r.matches_host(host));
    }

    #[test]
    fn host_matching_uses_the_resource_scheme() {
        let https = ResourceUrl::parse("https://x.example/mcp").unwrap();
        assert!(https.matches_host("x.example"));
        assert!(https.matches_host("X.Example:443"));
        assert!(!https.matches_host("x.example:80"));
        let http = ResourceUrl::parse("http://127.0.0.1:9000/mcp").unwrap();
        assert!(http.matches_host("127.0.0.1:9000"));
        assert!(!http.matches_host("127.0.0.1"));
        assert!(!http.matches_host("127.0.0.1:90001"));
    }

    #[test]
    fn prefix_matches_at_segment_boundary() {
        let r = ResourceUrl::parse("http://h/mcp").unwrap();
        assert!(r.covers_path("/mcp"));
        assert!(r.covers_path("/mcp/x"));
        assert!(!r.covers_path("/mcpx"));
        assert!(!r.covers_path("/"));
        assert!(ResourceUrl::parse("http://h")
            .unwrap()
            .covers_path("/anything"));
    }
}
