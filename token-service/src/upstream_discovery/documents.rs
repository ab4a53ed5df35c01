//! The pure half of upstream discovery: where the documents are, what they must say, and which
//! client identity the gateway uses at the upstream's authorization server. No I/O.

use serde::Deserialize;
use url::{Host, Url};

/// Where the gateway's own client ID metadata document is served, under the issuer.
pub const CLIENT_DOCUMENT_PATH: &str = "/.well-known/warden-client.json";

/// The name the gateway gives itself at upstream authorization servers.
pub const CLIENT_NAME: &str = "mcp-warden";

/// RFC 9728 §3.1: the well-known segment goes between the host and the resource's path (a
/// terminating slash removed); a query stays.
pub fn resource_metadata_url(to: &str) -> Result<String, String> {
    let url = Url::parse(to).map_err(|e| format!("the upstream URL {to}: {e}"))?;
    let path = url.path().trim_end_matches('/').to_owned();
    let mut well_known = url.clone();
    well_known.set_fragment(None);
    well_known.set_path(&format!("/.well-known/oauth-protected-resource{path}"));
    Ok(well_known.into())
}

/// The `resource_metadata` parameter of a `Bearer` challenge (RFC 9728 §5.1), if any.
pub fn challenge_resource_metadata(www_authenticate: &str) -> Option<String> {
    // Challenges are `scheme param=value, param="value", …`; several may be in one header.
    let mut in_bearer = false;
    for part in split_params(www_authenticate) {
        let part = part.trim();
        let (head, rest) = match part.split_once(char::is_whitespace) {
            Some((h, r)) if !h.contains('=') => (Some(h), r.trim()),
            _ => (None, part),
        };
        if let Some(scheme) = head {
            in_bearer = scheme.eq_ignore_ascii_case("bearer");
        } else if !part.contains('=') {
            in_bearer = part.eq_ignore_ascii_case("bearer");
            continue;
        }
        if !in_bearer {
            continue;
        }
        if let Some((name, value)) = rest.split_once('=') {
            if name.trim().eq_ignore_ascii_case("resource_metadata") {
                let v = value.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                return Some(v.to_owned());
            }
        }
    }
    None
}

/// Splits at commas outside quoted strings.
fn split_params(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Whether two resource identifiers name the same resource, as MCP clients compare them:
/// scheme and host case-insensitively, the default port implied, a trailing slash tolerated.
pub fn same_resource(a: &str, b: &str) -> bool {
    let (Ok(a), Ok(b)) = (Url::parse(a), Url::parse(b)) else {
        return false;
    };
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
        && a.query() == b.query()
        && a.fragment().is_none()
        && b.fragment().is_none()
}

/// An endpoint the gateway sends users or tokens to: https, or http on a loopback host.
pub fn check_endpoint(value: &str) -> Result<(), String> {
    let url = Url::parse(value).map_err(|e| format!("{value} is not a URL: {e}"))?;
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{value} carries a fragment or credentials"));
    }
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err(format!("{value} has no host")),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "{value} is not https (plain http only on a loopback host)"
        )),
    }
}

/// RFC 9728 protected resource metadata, the parts discovery uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProtectedResource {
    pub resource: String,
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
}

/// The document at `to`'s metadata URL, checked: its `resource` is `to`, and it names an
/// authorization server.
pub fn parse_protected_resource(body: &[u8], to: &str) -> Result<ProtectedResource, String> {
    let prm: ProtectedResource = serde_json::from_slice(body)
        .map_err(|e| format!("not protected resource metadata: {e}"))?;
    if !same_resource(&prm.resource, to) {
        return Err(format!(
            "its resource {} is not the route's upstream {to}",
            prm.resource
        ));
    }
    if prm.authorization_servers.is_empty() {
        return Err("it names no authorization_servers".into());
    }
    Ok(prm)
}

/// The first authorization server the resource names that the operator allows (exact issuer).
pub fn choose_authorization_server(
    prm: &ProtectedResource,
    allowed: &[String],
) -> Result<String, String> {
    prm.authorization_servers
        .iter()
        .find(|a| allowed.iter().any(|x| x == *a))
        .cloned()
        .ok_or_else(|| {
            format!(
                "its authorization servers ({}) are not in upstream_discovery.allowed_authorization_servers",
                prm.authorization_servers.join(", ")
            )
        })
}

/// RFC 8414 authorization server metadata, the parts the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AuthorizationServer {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// `issuer`'s metadata, checked: the issuer is `issuer` byte for byte, PKCE S256 is supported,
/// and the endpoints are https (or http on loopback).
pub fn parse_authorization_server(
    body: &[u8],
    issuer: &str,
) -> Result<AuthorizationServer, String> {
    let m: AuthorizationServer = serde_json::from_slice(body)
        .map_err(|e| format!("not authorization server metadata: {e}"))?;
    if m.issuer != issuer {
        return Err(format!("its issuer {} is not {issuer}", m.issuer));
    }
    if !m
        .code_challenge_methods_supported
        .iter()
        .any(|c| c == "S256")
    {
        return Err("it does not list S256 in code_challenge_methods_supported (PKCE)".into());
    }
    for (field, value) in [
        ("authorization_endpoint", Some(&m.authorization_endpoint)),
        ("token_endpoint", Some(&m.token_endpoint)),
        ("registration_endpoint", m.registration_endpoint.as_ref()),
        ("revocation_endpoint", m.revocation_endpoint.as_ref()),
    ] {
        if let Some(v) = value {
            check_endpoint(v).map_err(|e| format!("its {field}: {e}"))?;
        }
    }
    Ok(m)
}

/// The scopes to ask the upstream's server for: the route's `upstream_oauth2.scopes`, else
/// what the protected resource metadata advertises (possibly none).
pub fn requested_scopes(configured: &[String], prm: &ProtectedResource) -> Vec<String> {
    if configured.is_empty() {
        prm.scopes_supported.clone()
    } else {
        configured.to_vec()
    }
}

/// How the gateway is known at an upstream authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdentity {
    /// `upstream_oauth2.client_id`, registered by the operator.
    Configured(String),
    /// The URL of the gateway's client ID metadata document.
    MetadataDocument(String),
    /// To be registered by DCR (RFC 7591) at this endpoint.
    Register(String),
}

/// Configured `client_id` first, then CIMD when the AS supports it, then DCR; else an error
/// that tells the operator to pre-register `redirect_uri`.
pub fn choose_client_identity(
    configured: Option<&str>,
    server: &AuthorizationServer,
    document_url: &str,
    redirect_uri: &str,
) -> Result<ClientIdentity, String> {
    if let Some(id) = configured {
        return Ok(ClientIdentity::Configured(id.to_owned()));
    }
    if server.client_id_metadata_document_supported {
        return Ok(ClientIdentity::MetadataDocument(document_url.to_owned()));
    }
    if let Some(r) = &server.registration_endpoint {
        return Ok(ClientIdentity::Register(r.clone()));
    }
    Err(format!(
        "the authorization server {} supports neither client ID metadata documents nor dynamic client registration: register a client there with the redirect URI {redirect_uri} and set the route's upstream_oauth2.client_id",
        server.issuer
    ))
}

/// The URL of the gateway's client ID metadata document (its `client_id` under CIMD).
pub fn client_document_url(issuer: &str) -> String {
    format!("{}{CLIENT_DOCUMENT_PATH}", issuer.trim_end_matches('/'))
}

/// The gateway's client ID metadata document: a public client redirecting to `redirect_uri`.
pub fn client_document(issuer: &str, redirect_uri: &str) -> serde_json::Value {
    serde_json::json!({
        "client_id": client_document_url(issuer),
        "client_name": CLIENT_NAME,
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_url_puts_the_well_known_segment_before_the_path() {
        assert_eq!(
            resource_metadata_url("https://mcp.example/mcp").unwrap(),
            "https://mcp.example/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            resource_metadata_url("https://mcp.example/").unwrap(),
            "https://mcp.example/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            resource_metadata_url("http://127.0.0.1:9/a/b/?x=1").unwrap(),
            "http://127.0.0.1:9/.well-known/oauth-protected-resource/a/b?x=1"
        );
    }

    #[test]
    fn a_bearer_challenge_names_its_metadata() {
        let url = "https://mcp.example/.well-known/oauth-protected-resource/mcp";
        assert_eq!(
            challenge_resource_metadata(&format!(
                r#"Bearer error="invalid_token", resource_metadata="{url}""#
            )),
            Some(url.into())
        );
        assert_eq!(
            challenge_resource_metadata(&format!(
                r#"Basic realm="a, b", Bearer resource_metadata={url}"#
            )),
            Some(url.into())
        );
        assert_eq!(
            challenge_resource_metadata(&format!(r#"Basic resource_metadata="{url}""#)),
            None
        );
        assert_eq!(challenge_resource_metadata("Bearer"), None);
    }

    #[test]
    fn resources_compare_normalized() {
        assert!(same_resource(
            "https://MCP.example:443/mcp/",
            "https://mcp.example/mcp"
        ));
        assert!(!same_resource(
            "http://mcp.example/mcp",
            "https://mcp.example/mcp"
        ));
        assert!(!same_resource(
            "https://mcp.example/mcp2",
            "https://mcp.example/mcp"
        ));
        assert!(!same_resource(
            "https://mcp.example/mcp#x",
            "https://mcp.example/mcp"
        ));
    }

    fn server() -> AuthorizationServer {
        AuthorizationServer {
            issuer: "https://as.example".into(),
            authorization_endpoint: "https://as.example/authorize".into(),
            token_endpoint: "https://as.example/token".into(),
            registration_endpoint: None,
            revocation_endpoint: None,
            code_challenge_methods_supported: vec!["S256".into()],
            client_id_metadata_document_supported: false,
            scopes_supported: vec![],
            token_endpoint_auth_methods_supported: vec![],
        }
    }

    #[test]
    fn authorization_server_metadata_is_checked() {
        let good = serde_json::json!({
            "issuer": "https://as.example",
            "authorization_endpoint": "https://as.example/authorize",
            "token_endpoint": "https://as.example/token",
            "code_challenge_methods_supported": ["S256"],
        });
        let parse = |v: &serde_json::Value| {
            parse_authorization_server(v.to_string().as_bytes(), "https://as.example")
        };
        assert_eq!(parse(&good).unwrap(), server());
        let mut v = good.clone();
        v["issuer"] = "https://other.example".into();
        assert!(parse(&v).unwrap_err().contains("issuer"));
        let mut v = good.clone();
        v["code_challenge_methods_supported"] = serde_json::json!(["plain"]);
        assert!(parse(&v).unwrap_err().contains("S256"));
        let mut v = good.clone();
        v["token_endpoint"] = "http://as.example/token".into();
        assert!(parse(&v).unwrap_err().contains("token_endpoint"));
        let mut v = good;
        v["authorization_endpoint"] = "http://127.0.0.1:8/authorize".into();
        assert!(parse(&v).is_ok());
    }

    #[test]
    fn protected_resource_metadata_is_checked() {
        let to = "https://mcp.example/mcp";
        let parse = |v: serde_json::Value| parse_protected_resource(v.to_string().as_bytes(), to);
        let prm = parse(serde_json::json!({
            "resource": "https://mcp.example/mcp/",
            "authorization_servers": ["https://as.example"],
        }))
        .unwrap();
        assert_eq!(
            choose_authorization_server(&prm, &["https://as.example".into()]).unwrap(),
            "https://as.example"
        );
        assert!(
            choose_authorization_server(&prm, &["https://as.example/".into()])
                .unwrap_err()
                .contains("allowed_authorization_servers")
        );
        assert!(parse(serde_json::json!({
            "resource": "https://mcp.example/other",
            "authorization_servers": ["https://as.example"],
        }))
        .unwrap_err()
        .contains("resource"));
        assert!(parse(serde_json::json!({"resource": to}))
            .unwrap_err()
            .contains("authorization_servers"));
    }

    #[test]
    fn configured_scopes_win_over_the_advertised_ones() {
        let prm = ProtectedResource {
            resource: "https://mcp.example/mcp".into(),
            authorization_servers: vec!["https://as.example".into()],
            scopes_supported: vec!["read".into(), "write".into()],
        };
        assert_eq!(requested_scopes(&[], &prm), ["read", "write"]);
        assert_eq!(requested_scopes(&["read".into()], &prm), ["read"]);
    }

    #[test]
    fn client_identity_prefers_configured_then_cimd_then_dcr() {
        let doc = "https://gw.example/.well-known/warden-client.json";
        let cb = "https://gw.example/upstream/callback";
        let mut s = server();
        s.client_id_metadata_document_supported = true;
        s.registration_endpoint = Some("https://as.example/register".into());
        assert_eq!(
            choose_client_identity(Some("pre"), &s, doc, cb),
            Ok(ClientIdentity::Configured("pre".into()))
        );
        assert_eq!(
            choose_client_identity(None, &s, doc, cb),
            Ok(ClientIdentity::MetadataDocument(doc.into()))
        );
        s.client_id_metadata_document_supported = false;
        assert_eq!(
            choose_client_identity(None, &s, doc, cb),
            Ok(ClientIdentity::Register(
                "https://as.example/register".into()
            ))
        );
        s.registration_endpoint = None;
        let e = choose_client_identity(None, &s, doc, cb).unwrap_err();
        assert!(
            e.contains(cb) && e.contains("upstream_oauth2.client_id"),
            "{e}"
        );
    }

    #[test]
    fn the_client_document_names_itself() {
        let d = client_document("https://gw.example/", "https://gw.example/cb");
        assert_eq!(
            d["client_id"],
            "https://gw.example/.well-known/warden-client.json"
        );
        assert_eq!(
            d["redirect_uris"],
            serde_json::json!(["https://gw.example/cb"])
        );
        assert_eq!(d["token_endpoint_auth_method"], "none");
    }
}
