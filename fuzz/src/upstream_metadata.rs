//! What discovered upstream OAuth reads from an upstream (`upstream_discovery::documents`): a
//! `WWW-Authenticate` challenge's `resource_metadata`, RFC 9728 protected resource metadata,
//! RFC 8414 authorization server metadata.
//!
//! * A challenge's URL is found only in a `Bearer` challenge that names `resource_metadata`,
//!   and is a piece of the header.
//! * Accepted protected resource metadata names the expected resource (as compared by
//!   `same_resource`, which is symmetric and holds for the resource itself) and at least one
//!   authorization server.
//! * Accepted AS metadata has exactly the expected issuer, lists `S256`, and every endpoint
//!   it gives passes `check_endpoint`.
//!
//! Input: a mode line, then
//! * `challenge`: the header value (the rest);
//! * `prm <to>`: the document (the rest), expected to describe `<to>`;
//! * `as <issuer>`: the document (the rest), expected of `<issuer>`.

use warden_token_service::upstream_discovery::documents::{
    challenge_resource_metadata, check_endpoint, parse_authorization_server,
    parse_protected_resource, same_resource,
};

use crate::input::{join, Fields, Words};

/// What `run` can decide.
pub const OUTCOMES: &[&str] = &[
    "challenge-found",
    "challenge-none",
    "prm-accepted",
    "prm-refused",
    "as-accepted",
    "as-refused",
];

pub fn run(data: &[u8]) -> &'static str {
    let mut f = Fields::new(data);
    let mode = f.text().into_owned();
    let words = Words::new(&mode);
    let arg = mode.split_once(' ').map(|(_, a)| a).unwrap_or("");
    match words.first() {
        "prm" => match parse_protected_resource(f.rest(), arg) {
            Ok(prm) => {
                assert!(same_resource(&prm.resource, arg));
                assert!(same_resource(arg, &prm.resource), "not symmetric");
                assert!(same_resource(&prm.resource, &prm.resource));
                assert!(!prm.authorization_servers.is_empty());
                "prm-accepted"
            }
            Err(_) => "prm-refused",
        },
        "as" => match parse_authorization_server(f.rest(), arg) {
            Ok(m) => {
                assert_eq!(m.issuer, arg);
                assert!(m
                    .code_challenge_methods_supported
                    .iter()
                    .any(|c| c == "S256"));
                for e in [Some(&m.authorization_endpoint), Some(&m.token_endpoint)]
                    .into_iter()
                    .chain([
                        m.registration_endpoint.as_ref(),
                        m.revocation_endpoint.as_ref(),
                    ])
                    .flatten()
                {
                    assert!(check_endpoint(e).is_ok(), "{e}");
                }
                "as-accepted"
            }
            Err(_) => "as-refused",
        },
        _ => {
            let header = String::from_utf8_lossy(f.rest()).into_owned();
            match challenge_resource_metadata(&header) {
                Some(url) => {
                    assert!(header.contains(&url), "{url:?} is not in {header:?}");
                    let lower = header.to_ascii_lowercase();
                    assert!(lower.contains("bearer") && lower.contains("resource_metadata"));
                    "challenge-found"
                }
                None => "challenge-none",
            }
        }
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let to = "https://mcp.example/mcp";
    let prm =
        |v: serde_json::Value| join(&[format!("prm {to}").as_bytes(), v.to_string().as_bytes()]);
    let iss = "https://as.example";
    let asm =
        |v: serde_json::Value| join(&[format!("as {iss}").as_bytes(), v.to_string().as_bytes()]);
    let good_as = serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": "https://as.example/authorize",
        "token_endpoint": "https://as.example/token",
        "registration_endpoint": "https://as.example/register",
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": true,
    });
    let mut plain = good_as.clone();
    plain["code_challenge_methods_supported"] = serde_json::json!(["plain"]);
    let mut http = good_as.clone();
    http["token_endpoint"] = "http://as.example/token".into();
    vec![
        join(&[
            b"challenge",
            br#"Bearer error="invalid_token", resource_metadata="https://mcp.example/.well-known/oauth-protected-resource/mcp""#,
        ]),
        join(&[b"challenge", br#"Basic realm="a, b", Bearer resource_metadata=https://x.example/m"#]),
        join(&[b"challenge", br#"Basic resource_metadata="https://x.example/m""#]),
        join(&[b"challenge", b"Bearer"]),
        prm(serde_json::json!({"resource": to, "authorization_servers": [iss], "scopes_supported": ["read"]})),
        prm(serde_json::json!({"resource": "https://MCP.example:443/mcp/", "authorization_servers": [iss]})),
        prm(serde_json::json!({"resource": "https://other.example/mcp", "authorization_servers": [iss]})),
        prm(serde_json::json!({"resource": to, "authorization_servers": []})),
        asm(good_as),
        asm(plain),
        asm(http),
        asm(serde_json::json!({"issuer": "https://evil.example"})),
    ]
}
