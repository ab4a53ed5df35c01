//! Redirect URI rules: https, or http on a loopback host (RFC 8252 §7.3); exact match at
//! `/authorize` except that a loopback redirect may use any port.

use url::{Host, Url};

/// Accepts a redirect URI for registration.
pub fn validate_redirect_uri(uri: &str) -> Result<Url, String> {
    let url = Url::parse(uri).map_err(|e| format!("not an absolute URL: {e}"))?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err("must not contain a fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => {
            Err("http is allowed only for loopback hosts (127.0.0.1, localhost, [::1])".into())
        }
        _ => Err("must be https, or http on a loopback host".into()),
    }
}

pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Finds the registered redirect URI that `requested` matches.
pub fn matches_registered(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|r| r == requested) {
        return true;
    }
    let Ok(req) = Url::parse(requested) else {
        return false;
    };
    if req.scheme() != "http" || !is_loopback_host(&req) || req.fragment().is_some() {
        return false;
    }
    registered.iter().any(|r| match Url::parse(r) {
        Ok(reg) => {
            reg.scheme() == "http"
                && is_loopback_host(&reg)
                && reg.host() == req.host()
                && reg.path() == req.path()
                && reg.query() == req.query()
                && reg.username() == req.username()
                && reg.password() == req.password()
        }
        Err(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_rules() {
        assert!(validate_redirect_uri("https://app.example.com/cb").is_ok());
        assert!(validate_redirect_uri("http://127.0.0.1:8080/cb").is_ok());
        assert!(validate_redirect_uri("http://localhost/cb").is_ok());
        assert!(validate_redirect_uri("http://[::1]:9/cb").is_ok());
        assert!(validate_redirect_uri("http://example.com/cb").is_err());
        assert!(validate_redirect_uri("javascript:alert(1)").is_err());
        assert!(validate_redirect_uri("https://a.example/cb#x").is_err());
        assert!(validate_redirect_uri("/relative").is_err());
    }

    #[test]
    fn loopback_port_may_differ() {
        let reg = vec!["http://127.0.0.1/callback".to_string()];
        assert!(matches_registered(&reg, "http://127.0.0.1:53123/callback"));
        assert!(!matches_registered(&reg, "http://127.0.0.1:53123/other"));
        assert!(!matches_registered(&reg, "http://localhost:53123/callback"));
        let reg = vec!["https://app.example.com/cb".to_string()];
        assert!(matches_registered(&reg, "https://app.example.com/cb"));
        assert!(!matches_registered(&reg, "https://app.example.com:444/cb"));
        assert!(!matches_registered(&reg, "https://app.example.com/cb?x=1"));
    }
}
