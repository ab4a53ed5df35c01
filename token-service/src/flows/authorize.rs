//! `/authorize` request validation and authorization-code issuance.

use std::collections::HashMap;

use url::Url;

use super::{hash_secret, pkce, random_token, redirect, split_scope, RegisteredClient};
use crate::config::Config;
pub use crate::store::AuthorizeGrant;
use crate::store::{AuthCode, Store};

/// Authorization codes live this long (seconds).
pub const CODE_TTL: i64 = 60;

#[derive(Debug, PartialEq)]
pub enum AuthorizeError {
    /// The client or redirect URI cannot be trusted: show a page, never redirect.
    Page(String),
    /// The client is unknown (`invalid_client`): a page too, never a redirect.
    UnknownClient(String),
    /// Report to the client at its redirect URI (with `state` and `iss`).
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

/// Query parameters with duplicates detected (RFC 6749 §3.1: parameters must not repeat).
pub struct Params {
    map: HashMap<String, String>,
    duplicates: Vec<String>,
}

impl Params {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        let mut map = HashMap::new();
        let mut duplicates = Vec::new();
        for (k, v) in pairs {
            match map.entry(k) {
                std::collections::hash_map::Entry::Occupied(e) => duplicates.push(e.key().clone()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(v);
                }
            }
        }
        Self { map, duplicates }
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.map
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn first_duplicate(&self) -> Option<&str> {
        self.duplicates.first().map(String::as_str)
    }

    fn repeated(&self, k: &str) -> bool {
        self.duplicates.iter().any(|d| d == k)
    }
}

/// Validates an authorization request for `client` (looked up from `client_id` by the caller).
pub fn validate(
    config: &Config,
    params: &Params,
    client: Option<&RegisteredClient>,
) -> Result<AuthorizeGrant, AuthorizeError> {
    if params.repeated("client_id") || params.repeated("redirect_uri") {
        return Err(AuthorizeError::Page(
            "client_id or redirect_uri is repeated".into(),
        ));
    }
    let Some(client_id) = params.get("client_id") else {
        return Err(AuthorizeError::Page("the request has no client_id".into()));
    };
    let Some(client) = client.filter(|c| c.client_id == client_id) else {
        return Err(AuthorizeError::UnknownClient("unknown client_id".into()));
    };
    let (redirect_uri, explicit) = match params.get("redirect_uri") {
        Some(r) if redirect::matches_registered(&client.redirect_uris, r) => (r.to_owned(), true),
        Some(_) => {
            return Err(AuthorizeError::Page(
                "redirect_uri is not registered for this client".into(),
            ))
        }
        // Omitting it is allowed only when there is no ambiguity.
        None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
        None => return Err(AuthorizeError::Page("redirect_uri is required".into())),
    };

    let state = params.map.get("state").cloned().filter(|s| !s.is_empty());
    let fail = |error: &'static str, description: &str| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        error,
        description: description.to_owned(),
    };

    if let Some(d) = params.duplicates.first() {
        return Err(fail(
            "invalid_request",
            &format!("parameter {d} is repeated"),
        ));
    }
    match params.get("response_type") {
        Some("code") => {}
        None => return Err(fail("invalid_request", "response_type is required")),
        Some(_) => {
            return Err(fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            ))
        }
    }
    if !client.allows_grant("authorization_code") {
        return Err(fail(
            "unauthorized_client",
            "client is not registered for authorization_code",
        ));
    }
    let Some(code_challenge) = params.get("code_challenge") else {
        return Err(fail("invalid_request", "code_challenge is required (PKCE)"));
    };
    match params.get("code_challenge_method") {
        Some("S256") => {}
        None => {
            return Err(fail(
                "invalid_request",
                "code_challenge_method is required and must be S256",
            ))
        }
        Some(_) => {
            return Err(fail(
                "invalid_request",
                "only code_challenge_method=S256 is supported",
            ))
        }
    }
    if !pkce::valid_challenge(code_challenge) {
        return Err(fail(
            "invalid_request",
            "code_challenge is not a valid S256 challenge",
        ));
    }

    let route = match params.get("resource") {
        Some(r) => config
            .route_by_resource(r)
            .ok_or_else(|| fail("invalid_target", "unknown resource"))?,
        None => {
            let mut servers = config.server_routes();
            match (servers.next(), servers.next()) {
                (Some(only), None) => only,
                _ => return Err(fail("invalid_target", "resource is required")),
            }
        }
    };

    // Grant exactly the requested scopes, each of which the route must offer; with none
    // requested, all of the route's scopes. Unknown scopes are refused, never dropped.
    let requested = split_scope(params.get("scope").unwrap_or(""));
    if let Some(unknown) = requested.iter().find(|s| !route.scopes.contains(s)) {
        return Err(fail(
            "invalid_scope",
            &format!("scope {unknown} is not offered for this resource"),
        ));
    }
    let scopes: Vec<&str> = if requested.is_empty() {
        route.scopes.iter().map(String::as_str).collect()
    } else {
        route
            .scopes
            .iter()
            .filter(|s| requested.contains(s))
            .map(String::as_str)
            .collect()
    };

    Ok(AuthorizeGrant {
        client_id: client.client_id.clone(),
        redirect_uri,
        redirect_uri_explicit: explicit,
        state,
        code_challenge: code_challenge.to_owned(),
        resource: route.resource(),
        scope: scopes.join(" "),
    })
}

/// Creates a single-use code bound to the request, user and session; returns the code.
pub fn issue_code(
    store: &dyn Store,
    grant: &AuthorizeGrant,
    email: &str,
    sid: &str,
    now: i64,
) -> anyhow::Result<String> {
    let code = random_token();
    store.insert_code(
        &hash_secret(&code),
        &AuthCode {
            request: grant.clone(),
            user: email.to_owned(),
            sid: sid.to_owned(),
            expires_at: now + CODE_TTL,
        },
    )?;
    Ok(code)
}

/// The redirect back to the client. `iss` is always present (RFC 9207).
pub fn response_url(
    redirect_uri: &str,
    issuer: &str,
    params: &[(&str, &str)],
    state: Option<&str>,
) -> anyhow::Result<String> {
    let mut url = Url::parse(redirect_uri)?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(s) = state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", issuer);
    }
    Ok(url.into())
}

pub fn success_url(grant: &AuthorizeGrant, issuer: &str, code: &str) -> anyhow::Result<String> {
    response_url(
        &grant.redirect_uri,
        issuer,
        &[("code", code)],
        grant.state.as_deref(),
    )
}

pub fn error_url(err: &AuthorizeError, issuer: &str) -> Option<anyhow::Result<String>> {
    match err {
        AuthorizeError::Page(_) | AuthorizeError::UnknownClient(_) => None,
        AuthorizeError::Redirect {
            redirect_uri,
            state,
            error,
            description,
        } => Some(response_url(
            redirect_uri,
            issuer,
            &[("error", error), ("error_description", description)],
            state.as_deref(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::config::TokenEndpointAuthMethod;
    use crate::flows::ClientSecret;

    const YAML: &str = "authorization_server: {issuer: 'http://127.0.0.1:9100'}
routes:
  - {name: a, from: 'http://127.0.0.1:9000', prefix: /mcp, to: 'http://127.0.0.1:9200/mcp', mcp: {server: {}}, policy: {allow: {and: [{authenticated_user: true}]}}, scopes: [read, write]}
";

    fn client() -> RegisteredClient {
        RegisteredClient {
            client_id: "c".into(),
            client_name: None,
            auth_method: TokenEndpointAuthMethod::None,
            secret: ClientSecret::None,
            redirect_uris: vec!["http://127.0.0.1/cb".into()],
            grant_types: vec!["authorization_code".into()],
            pre_registered: true,
            skip_consent: false,
            jwks: None,
            jwks_uri: None,
            document_host: None,
        }
    }

    fn params(extra: &[(&str, &str)]) -> Params {
        let mut p: Vec<(String, String)> = [
            ("response_type", "code"),
            ("client_id", "c"),
            ("redirect_uri", "http://127.0.0.1:4000/cb"),
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ),
            ("code_challenge_method", "S256"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                p.push((k.to_string(), v.to_string()));
            }
        }
        Params::new(p)
    }

    fn error_of(r: Result<AuthorizeGrant, AuthorizeError>) -> &'static str {
        match r {
            Err(AuthorizeError::Redirect { error, .. }) => error,
            other => panic!("expected a redirect error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_resource_and_scopes_from_the_only_route() {
        let config = Config::from_yaml(YAML).unwrap();
        let g = validate(&config, &params(&[]), Some(&client())).unwrap();
        assert_eq!(g.resource, "http://127.0.0.1:9000/mcp");
        assert_eq!(g.scope, "read write");
        assert_eq!(g.redirect_uri, "http://127.0.0.1:4000/cb");
        assert!(g.redirect_uri_explicit);
        let g = validate(&config, &params(&[("scope", "write")]), Some(&client())).unwrap();
        assert_eq!(g.scope, "write");
        assert_eq!(
            error_of(validate(
                &config,
                &params(&[("scope", "write other")]),
                Some(&client()),
            )),
            "invalid_scope"
        );
        // One registered URI: redirect_uri may be omitted, and /token need not repeat it.
        let g = validate(&config, &params(&[("redirect_uri", "")]), Some(&client())).unwrap();
        assert_eq!(g.redirect_uri, "http://127.0.0.1/cb");
        assert!(!g.redirect_uri_explicit);
    }

    #[test]
    fn rejections() {
        let config = Config::from_yaml(YAML).unwrap();
        let c = Some(client());
        let v = |extra: &[(&str, &str)]| validate(&config, &params(extra), c.as_ref());
        assert_eq!(
            error_of(v(&[("code_challenge_method", "plain")])),
            "invalid_request"
        );
        assert_eq!(
            error_of(v(&[("code_challenge_method", "")])),
            "invalid_request"
        );
        assert_eq!(error_of(v(&[("code_challenge", "")])), "invalid_request");
        assert_eq!(
            error_of(v(&[("response_type", "token")])),
            "unsupported_response_type"
        );
        assert_eq!(
            error_of(v(&[("resource", "http://127.0.0.1:9000/mcp/")])),
            "invalid_target"
        );
        assert!(matches!(
            v(&[("redirect_uri", "https://evil.example/cb")]),
            Err(AuthorizeError::Page(_))
        ));
        assert!(matches!(
            v(&[("client_id", "other")]),
            Err(AuthorizeError::UnknownClient(_))
        ));
        assert!(matches!(
            validate(&config, &params(&[]), None),
            Err(AuthorizeError::UnknownClient(_))
        ));
    }

    #[test]
    fn error_redirect_carries_state_and_iss() {
        let err = AuthorizeError::Redirect {
            redirect_uri: "http://127.0.0.1:4000/cb?keep=1".into(),
            state: Some("s t".into()),
            error: "invalid_target",
            description: "unknown resource".into(),
        };
        let url =
            url::Url::parse(&error_url(&err, "http://127.0.0.1:9100").unwrap().unwrap()).unwrap();
        let q: HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["keep"], "1");
        assert_eq!(q["error"], "invalid_target");
        assert_eq!(q["state"], "s t");
        assert_eq!(q["iss"], "http://127.0.0.1:9100");
    }
}
