//! Every HTTPS client of the token service is built here: the identity provider's, the
//! upstream providers', and the guarded fetcher of documents whose URL a client chose (client
//! ID metadata documents, a client's `jwks_uri`). They all trust the system's roots plus
//! `outbound.extra_ca_file`.
//!
//! The guarded fetcher is the SSRF boundary: https only, no redirects, no cookies, no proxy,
//! bounded time and bytes, and every address a name resolves to checked by its own DNS
//! resolver, so the address connected to is the address checked.
//!
//! Every call goes through [`send`] (or [`execute`]): a client span `HTTP <method>` with the
//! URL without its query, and the span's W3C `traceparent` added to the request.
//!
//! A leaf: it imports nothing of the crate.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use url::{Host, Url};

/// The top-level `outbound:` block.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// PEM certificates trusted besides the system's roots, for every outbound HTTPS call.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
}

/// Time one guarded fetch may take, connection included.
pub const GUARDED_TIMEOUT: Duration = Duration::from_secs(5);

/// What builds the service's HTTPS clients: the extra roots, read once at start.
#[derive(Clone, Default)]
pub struct Outbound {
    extra_roots: Vec<reqwest::Certificate>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl Outbound {
    /// Reads `outbound.extra_ca_file`; the error names the field.
    pub fn load(config: &OutboundConfig) -> anyhow::Result<Self> {
        let extra_roots = match &config.extra_ca_file {
            Some(path) => read_extra_roots(path)
                .map_err(|m| anyhow::anyhow!("outbound.extra_ca_file: {m}"))?,
            None => Vec::new(),
        };
        Ok(Self { extra_roots })
    }

    /// A client for a server the operator configured (identity provider, upstream provider):
    /// no redirects, bounded time.
    pub fn client(&self, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        Ok(self
            .builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?)
    }

    /// The fetcher of documents at URLs a client chose.
    pub fn guarded(&self, allow_private_addresses: bool) -> anyhow::Result<GuardedFetcher> {
        let http = self
            .builder()
            .https_only(true)
            .no_proxy()
            .timeout(GUARDED_TIMEOUT)
            .connect_timeout(GUARDED_TIMEOUT)
            .dns_resolver(Arc::new(CheckedResolver {
                allow_private_addresses,
            }))
            .build()?;
        Ok(GuardedFetcher {
            http,
            allow_private_addresses,
        })
    }

    fn builder(&self) -> reqwest::ClientBuilder {
        // No cookie store is enabled: reqwest keeps none unless asked.
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(self.extra_roots.iter().cloned())
    }
}

/// The certificates of a PEM file (one at least), or why not.
pub fn read_extra_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not PEM certificates: {e}", path.display()))?;
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(roots)
}

/// Why a guarded fetch failed, in words fit for an error page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The URL is not one we fetch (not https, credentials, no host…).
    Url(String),
    /// The host is, or resolves to, an address that is not public.
    PrivateAddress(String),
    /// No answer: DNS, connection, TLS, timeout.
    Unreachable(String),
    /// An answer other than 200 (a redirect is one: they are not followed).
    Status(u16),
    /// The body is larger than allowed.
    TooLarge(usize),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Url(why) => write!(f, "{why}"),
            FetchError::PrivateAddress(what) => {
                write!(f, "{what} is not a public address")
            }
            FetchError::Unreachable(why) => write!(f, "cannot be fetched: {why}"),
            FetchError::Status(s) if (300..400).contains(s) => {
                write!(
                    f,
                    "answered with a redirect (HTTP {s}), which is not followed"
                )
            }
            FetchError::Status(s) => write!(f, "answered HTTP {s}"),
            FetchError::TooLarge(max) => write!(f, "is larger than {max} bytes"),
        }
    }
}

impl std::error::Error for FetchError {}

/// A document as fetched: its bytes and how long its server lets it be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub body: Vec<u8>,
    /// `Cache-Control: max-age` in seconds; `Some(0)` for `no-store` / `no-cache`.
    pub max_age: Option<u64>,
}

/// Fetches documents at URLs a client chose (see the module's header).
#[derive(Clone)]
pub struct GuardedFetcher {
    http: reqwest::Client,
    allow_private_addresses: bool,
}

impl fmt::Debug for GuardedFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedFetcher")
            .field("allow_private_addresses", &self.allow_private_addresses)
            .finish()
    }
}

impl GuardedFetcher {
    /// `GET url` (Accept: application/json) with at most `max_bytes` of body.
    pub async fn fetch(&self, url: &str, max_bytes: usize) -> Result<Fetched, FetchError> {
        let url = checked_url(url, self.allow_private_addresses)?;
        let mut resp = send(
            self.http
                .get(url)
                .header(reqwest::header::ACCEPT, "application/json"),
        )
        .await
        .map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let max_age = cache_max_age(resp.headers());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
            if body.len() + chunk.len() > max_bytes {
                return Err(FetchError::TooLarge(max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { body, max_age })
    }
}

/// `fetch_guarded(fetcher, url, max_bytes)`: the one entry point for a fetch of a URL a client
/// chose (a client's `jwks_uri`, its metadata document).
pub async fn fetch_guarded(
    fetcher: &GuardedFetcher,
    url: &str,
    max_bytes: usize,
) -> Result<Fetched, FetchError> {
    fetcher.fetch(url, max_bytes).await
}

/// The URL rules before any connection: https, a host, no credentials; an IP literal host
/// is checked here (no resolver sees it).
fn checked_url(url: &str, allow_private_addresses: bool) -> Result<Url, FetchError> {
    let parsed = Url::parse(url).map_err(|e| FetchError::Url(format!("not a URL: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(FetchError::Url("must be https".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(FetchError::Url("must not carry credentials".into()));
    }
    let ip = match parsed.host() {
        None => return Err(FetchError::Url("has no host".into())),
        Some(Host::Domain(_)) => None,
        Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
    };
    if let Some(ip) = ip {
        if !allow_private_addresses && !is_public(ip) {
            return Err(FetchError::PrivateAddress(ip.to_string()));
        }
    }
    Ok(parsed)
}

/// A reqwest failure in words: timed out, or the error with its causes.
pub fn describe(e: &reqwest::Error) -> String {
    match transport_error(e) {
        FetchError::Unreachable(why) => why,
        other => other.to_string(),
    }
}

/// The reason of a reqwest failure, with our resolver's refusal found in its causes.
fn transport_error(e: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<RefusedAddress>() {
            return FetchError::PrivateAddress(refused.to_string());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return FetchError::Unreachable("timed out".into());
    }
    let mut why = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        why = format!("{why}: {s}");
        source = s.source();
    }
    FetchError::Unreachable(why)
}

/// `Cache-Control`'s say on caching: `no-store`/`no-cache` → 0, else `max-age`.
pub fn cache_max_age(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let mut max_age = None;
    for value in headers.get_all(reqwest::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            return Some(0);
        };
        for directive in value.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-store" || lower == "no-cache" {
                return Some(0);
            }
            if let Some(secs) = lower.strip_prefix("max-age=") {
                // An unreadable max-age is the most cautious one.
                let secs = secs.trim_matches('"').parse::<u64>().unwrap_or(0);
                max_age = Some(max_age.map_or(secs, |m: u64| m.min(secs)));
            }
        }
    }
    max_age
}

/// A name that resolved to an address we do not connect to.
#[derive(Debug)]
struct RefusedAddress {
    name: String,
}

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The name only: the address it resolves to is the operator's to see (logged), not
        // something a client may learn about the internal network.
        write!(f, "the address {} resolves to", self.name)
    }
}

impl std::error::Error for RefusedAddress {}

/// The system resolver, then the address check: reqwest connects only to what this returns.
struct CheckedResolver {
    allow_private_addresses: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private_addresses;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow {
                // One private address taints the name: refuse it whole rather than pick.
                if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                    tracing::info!(name = %host, ip = %bad.ip(), "refused to fetch from a name that resolves to a non-public address");
                    return Err(Box::new(RefusedAddress { name: host })
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, unspecified,
/// multicast, CGNAT, unique-local, documentation, reserved, nor an IPv6 form of an IPv4
/// address (mapped, compatible, NAT64), whose check would otherwise be skipped.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    if a == 192 && b == 88 && c == 99 {
        return false; // 6to4 relay anycast 192.88.99.0/24
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0.0/24
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18.0.0/15
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // 6to4 (2002::/16) carries an IPv4 address in its next 32 bits: judged as that address.
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32 (tunnels to an IPv4 address)
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0) // SIIT ::ffff:0:a.b.c.d
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 (and /48 local use)
        || s[..5] == [0, 0, 0, 0, 0]) // IPv4-mapped ::ffff:0:0/96 and IPv4-compatible ::/96
}

/// Sends `request` inside a client span `HTTP <method>` (`url.full` without its query or
/// credentials), with the span's `traceparent`/`tracestate` added to the request.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    let (client, request) = request.build_split();
    execute(&client, request?).await
}

/// [`send`] for a built request.
pub async fn execute(
    client: &reqwest::Client,
    mut request: reqwest::Request,
) -> reqwest::Result<reqwest::Response> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "HTTP client",
        otel.name = %format!("HTTP {method}"),
        otel.kind = "client",
        http.request.method = %method,
        url.full = %url_without_query(request.url()),
        http.response.status_code = tracing::field::Empty,
    );
    opentelemetry_sdk::propagation::TraceContextPropagator::new().inject_context(
        &span.context(),
        &mut opentelemetry_http::HeaderInjector(request.headers_mut()),
    );
    let answered = client.execute(request).instrument(span.clone()).await;
    if let Ok(resp) = &answered {
        span.record("http.response.status_code", resp.status().as_u16());
    }
    answered
}

/// `url` without query, fragment or credentials: what a span may show of it.
pub fn url_without_query(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn a_url_in_a_span_has_no_query_or_credentials() {
        let url = Url::parse("https://u:p@idp.example/token?code=secret#x").unwrap();
        assert_eq!(url_without_query(&url), "https://idp.example/token");
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for ok in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:2800:220:1::1",
            "1.1.1.1",
            "2002:808:808::1",
        ] {
            assert!(public(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "2001:0:4136:e378::1",
            "100::1",
            "::ffff:0:a00:1",
            "192.88.99.1",
        ] {
            assert!(!public(bad), "{bad}");
        }
    }

    #[test]
    fn urls_are_checked_before_any_connection() {
        assert!(checked_url("https://example.com/a", false).is_ok());
        assert_eq!(
            checked_url("http://example.com/a", false),
            Err(FetchError::Url("must be https".into()))
        );
        assert!(matches!(
            checked_url("https://127.0.0.1/a", false),
            Err(FetchError::PrivateAddress(_))
        ));
        assert!(matches!(
            checked_url("https://[::ffff:10.0.0.1]/a", false),
            Err(FetchError::PrivateAddress(_))
        ));
        assert!(checked_url("https://127.0.0.1/a", true).is_ok());
        assert!(matches!(
            checked_url("https://u:p@example.com/a", false),
            Err(FetchError::Url(_))
        ));
    }

    #[test]
    fn cache_control_bounds_the_cache() {
        let h = |v: &str| {
            let mut m = reqwest::header::HeaderMap::new();
            m.insert(reqwest::header::CACHE_CONTROL, v.parse().unwrap());
            cache_max_age(&m)
        };
        assert_eq!(h("public, max-age=600"), Some(600));
        assert_eq!(h("max-age=600, no-store"), Some(0));
        assert_eq!(h("no-cache"), Some(0));
        assert_eq!(h("max-age=x"), Some(0));
        assert_eq!(h("public"), None);
        assert_eq!(cache_max_age(&reqwest::header::HeaderMap::new()), None);
    }
}
