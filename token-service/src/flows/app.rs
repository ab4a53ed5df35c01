//! `mcp: client` routes (MCP-enabled web apps): who may use an app and which servers, the
//! one-time app codes and app sessions behind the filter's cookie, and the TEs the filter
//! injects for the app (audience: every server the user may use).
//!
//! Secrets (app codes, session secrets) are stored only as SHA-256 digests.

use url::Url;
use warden_core::policy::{McpCall, Names, Policy, PolicyInput};
use warden_core::token::{Audience, SubjectKind, TeClaims};

use crate::config::{Config, RouteConfig};
use crate::flows::{hash_secret, random_id, random_token};
use crate::identity::{self, Identity};
use crate::keyring::KeySet;
use crate::store::{AppCode, AppSession, AuthorizeGrant, Store};

/// An app code must be traded for a session within this long.
pub const APP_CODE_TTL: i64 = 60;
/// The `client_id` of the TEs minted for an app: `warden-app:<route name>`.
pub const APP_CLIENT_PREFIX: &str = "warden-app:";
/// Where the filter receives the app code, on the app's origin.
pub const APP_CALLBACK_PATH: &str = "/.warden/app/callback";

pub fn app_client_id(route: &str) -> String {
    format!("{APP_CLIENT_PREFIX}{route}")
}

/// The claims a policy sees for `user` (as in the user's TEs).
pub fn policy_claims(
    config: &Config,
    user: &Identity,
    aud: &str,
    client_id: &str,
    sid: &str,
) -> TeClaims {
    TeClaims {
        iss: config.authorization_server.issuer.clone(),
        sub: user.sub.clone(),
        aud: Audience::One(aud.to_owned()),
        jti: String::new(),
        client_id: client_id.to_owned(),
        scope: String::new(),
        sid: sid.to_owned(),
        gid: String::new(),
        email: user.email.clone(),
        name: user.name.clone(),
        groups: user.groups.clone(),
        sub_kind: if user.is_service_client() {
            SubjectKind::Client
        } else {
            SubjectKind::User
        },
    }
}

/// Whether `route`'s policy lets `claims` make a call with `method` (`None`: a request
/// without an MCP method, the app's own pages). A policy that does not compile denies.
pub fn route_allows(route: &RouteConfig, claims: &TeClaims, method: Option<&str>) -> bool {
    let Some(doc) = &route.policy else {
        return false;
    };
    let Ok(policy) = Policy::compile(doc, "policy") else {
        return false;
    };
    let mut claims = claims.clone();
    claims.aud = Audience::One(route.resource());
    let call = McpCall {
        method: method.map(Into::into),
        tool: None,
        arguments: None,
    };
    policy
        .evaluate_quiet(
            &PolicyInput {
                claims: &claims,
                call: &call,
            },
            Names::Exact,
        )
        .permitted()
}

/// The MCP server routes whose policy lets `claims` `initialize`: what the user may use.
pub fn usable_servers<'c>(config: &'c Config, claims: &TeClaims) -> Vec<&'c RouteConfig> {
    config
        .server_routes()
        .filter(|r| route_allows(r, claims, Some("initialize")))
        .collect()
}

/// Whether the client route's policy lets `user` use the app.
pub fn app_allows(config: &Config, route: &RouteConfig, user: &Identity, sid: &str) -> bool {
    let claims = policy_claims(
        config,
        user,
        &route.resource(),
        &app_client_id(&route.name),
        sid,
    );
    route_allows(route, &claims, None)
}

/// `return_to` must lie under the client route's `from` + `prefix` (same origin, the
/// prefix at a segment boundary).
pub fn valid_return_to(route: &RouteConfig, return_to: &str) -> bool {
    let (Ok(url), Ok(from)) = (Url::parse(return_to), Url::parse(&route.from)) else {
        return false;
    };
    if url.origin() != from.origin()
        || !url.username().is_empty()
        || url.password().is_some()
        || return_to.len() > 4096
    {
        return false;
    }
    let path = url.path();
    route.prefix.is_empty()
        || path == route.prefix
        || path
            .strip_prefix(route.prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/') || route.prefix.ends_with('/'))
}

/// The client route whose `from` origin a connect's `redirect_url` lies on: it must be an
/// absolute http(s) URL without credentials on the origin of some client route (else `None`:
/// the connect is refused, never redirected).
pub fn connect_redirect_route<'c>(
    config: &'c Config,
    redirect_url: &str,
) -> Option<&'c RouteConfig> {
    let url = Url::parse(redirect_url).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
        || redirect_url.len() > 4096
    {
        return None;
    }
    config.client_routes().find(|r| {
        Url::parse(&r.from)
            .map(|f| f.origin() == url.origin())
            .unwrap_or(false)
    })
}

/// A stand-in authorization request for a sign-in that continues elsewhere (app sign-in,
/// connect): it names the app and the page, and can never become a code (no PKCE challenge).
pub fn stand_in_grant(route: &RouteConfig, url: &str) -> AuthorizeGrant {
    AuthorizeGrant {
        client_id: app_client_id(&route.name),
        redirect_uri: url.to_owned(),
        redirect_uri_explicit: true,
        state: None,
        code_challenge: String::new(),
        resource: route.resource(),
        scope: String::new(),
    }
}

/// A sign-in nonce digest as the filter sends it: SHA-256, 64 lower-case hex digits.
pub fn valid_nonce(nonce: &str) -> bool {
    nonce.len() == 64
        && nonce
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Issues a one-time app code for the issuer `session`, redeemable only with the sign-in's
/// `nonce` digest; returns the URL of the filter's callback on the app's origin, carrying it.
pub fn issue_code(
    store: &dyn Store,
    route: &RouteConfig,
    session: &crate::store::Session,
    return_to: &str,
    nonce: &str,
    now: i64,
) -> anyhow::Result<String> {
    let code = random_token();
    store.insert_app_code(
        &hash_secret(&code),
        &AppCode {
            route: route.name.clone(),
            user: session.user.clone(),
            sid: session.sid.clone(),
            return_to: return_to.to_owned(),
            nonce: nonce.to_owned(),
            session_expires_at: session.expires_at,
            expires_at: now + APP_CODE_TTL,
        },
    )?;
    let mut url = Url::parse(&route.from)?;
    url.set_path(APP_CALLBACK_PATH);
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &route.name);
    Ok(url.to_string())
}

/// An app session just opened: the cookie value (never stored), its lifetime, and the page
/// the browser asked for.
pub struct OpenedSession {
    pub secret: String,
    pub max_age: i64,
    pub return_to: String,
}

impl std::fmt::Debug for OpenedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedSession")
            .field("max_age", &self.max_age)
            .field("return_to", &self.return_to)
            .finish_non_exhaustive()
    }
}

/// Trades an app code (single use, for this route) for an app session that ends with the
/// issuer session at the latest. `None`: unknown, used, expired, another route's code, or
/// the sign-in no longer stands.
pub fn open_session(
    config: &Config,
    store: &dyn Store,
    route: &str,
    code: &str,
    nonce: &str,
    now: i64,
) -> anyhow::Result<Option<OpenedSession>> {
    let Some(c) = store.take_app_code(&hash_secret(code), now)? else {
        return Ok(None);
    };
    if c.route != route || config.client_route(route).is_none() {
        return Ok(None);
    }
    // Login CSRF: a code is redeemed only in the browser that started its sign-in.
    if !valid_nonce(nonce) || !crate::flows::constant_time_eq(nonce.as_bytes(), c.nonce.as_bytes())
    {
        tracing::info!(route = %route, "app code presented without its browser's nonce");
        return Ok(None);
    }
    if !store.session_live(&c.sid, now)? || identity::resolve(config, store, &c.user)?.is_none() {
        return Ok(None);
    }
    let max_age = c.session_expires_at - now;
    if max_age <= 0 {
        return Ok(None);
    }
    let secret = random_token();
    store.insert_app_session(
        &hash_secret(&secret),
        &AppSession {
            route: c.route,
            user: c.user.clone(),
            sid: c.sid,
            created_at: now,
            expires_at: c.session_expires_at,
        },
    )?;
    tracing::info!(route = %route, sub = %c.user, "app session opened");
    Ok(Some(OpenedSession {
        secret,
        max_age,
        return_to: c.return_to,
    }))
}

/// Why an app session gets no TE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppTokenError {
    /// No such session (ended, expired, another route's), the issuer session is gone, or the
    /// user no longer exists: sign in again.
    SessionExpired,
    /// The client route's policy no longer lets the user use the app.
    AccessDenied,
}

/// A TE for an app session: `aud` = the resources of every server route the user may
/// `initialize` (possibly none: `[]`), `client_id` = `warden-app:<route>`, `sid` = the issuer
/// session's. Returns the token and its expiry.
pub fn app_token(
    config: &Config,
    keys: &KeySet,
    store: &dyn Store,
    route: &str,
    secret: &str,
    now: i64,
) -> anyhow::Result<Result<(String, i64), AppTokenError>> {
    let Some(session) = store
        .app_session(&hash_secret(secret), now)?
        .filter(|s| s.route == route)
    else {
        return Ok(Err(AppTokenError::SessionExpired));
    };
    let Some(app) = config.client_route(route) else {
        return Ok(Err(AppTokenError::SessionExpired));
    };
    let user = match identity::resolve(config, store, &session.user)? {
        Some(u) if store.session_live(&session.sid, now)? => u,
        _ => {
            store.delete_app_session(&hash_secret(secret))?;
            return Ok(Err(AppTokenError::SessionExpired));
        }
    };
    if !app_allows(config, app, &user, &session.sid) {
        tracing::info!(route = %route, sub = %user.sub, "app token refused: the route's policy denies the user");
        return Ok(Err(AppTokenError::AccessDenied));
    }
    let client_id = app_client_id(route);
    let claims = policy_claims(config, &user, "", &client_id, &session.sid);
    let aud: Vec<String> = usable_servers(config, &claims)
        .into_iter()
        .map(RouteConfig::resource)
        .collect();
    let ttl =
        i64::try_from(config.authorization_server.access_token_ttl_seconds).unwrap_or(i64::MAX / 2);
    let exp = (now + ttl).min(session.expires_at);
    let claims = serde_json::json!({
        "iss": config.authorization_server.issuer,
        "sub": user.sub,
        "aud": aud,
        "exp": exp,
        "iat": now,
        "nbf": now,
        "jti": random_id(),
        "client_id": client_id,
        "scope": "",
        "sid": session.sid,
        "email": user.email,
        "name": user.name,
        "groups": user.groups,
    });
    let token = keys.sign_jwt(now, "at+jwt", &claims)?;
    Ok(Ok((token, exp)))
}

/// Ends an app session of `route`; the sign-in session (`sid`) it belonged to, or `None`
/// when there was none.
pub fn end_session(
    store: &dyn Store,
    route: &str,
    secret: &str,
    now: i64,
) -> anyhow::Result<Option<String>> {
    let hash = hash_secret(secret);
    match store.app_session(&hash, now)? {
        Some(s) if s.route == route => {
            let ended = store.delete_app_session(&hash)?;
            if ended {
                tracing::info!(route = %route, sub = %s.user, "app session ended");
            }
            Ok(ended.then_some(s.sid))
        }
        _ => Ok(None),
    }
}

/// How long a sign-out ticket may be used: the browser follows the redirect at once.
pub const SIGN_OUT_TICKET_TTL: i64 = 120;

/// Keys the sign-out ticket and the sign-out page's CSRF token, derived from the internal
/// credential (the same on every replica).
#[derive(Clone)]
pub struct SignOutKey([u8; 32]);

impl std::fmt::Debug for SignOutKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignOutKey(..)")
    }
}

impl SignOutKey {
    pub fn derive(credential: &str) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"mcp-warden sign-out v1\0");
        h.update(credential.as_bytes());
        Self(h.finalize().into())
    }

    fn mac(&self, parts: &[&[u8]]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new(&block.into());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// What the filter sends the browser to the issuer with after ending an app session:
    /// proof that the sign-out was asked for on the app's own page (a same-origin `POST`),
    /// so the issuer may end the sign-in session `sid` without asking again.
    pub fn ticket(&self, sid: &str, now: i64) -> String {
        use base64::Engine as _;
        use hmac::Mac;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let exp = (now + SIGN_OUT_TICKET_TTL).to_string();
        let tag = self
            .mac(&[b"ticket", exp.as_bytes(), sid.as_bytes()])
            .finalize()
            .into_bytes();
        format!("{exp}.{}.{}", b64.encode(sid), b64.encode(tag))
    }

    /// The sign-in session a ticket ends, when it is ours and not expired. (Used twice, it
    /// ends a session already ended: harmless.)
    pub fn ticket_sid(&self, ticket: &str, now: i64) -> Option<String> {
        use base64::Engine as _;
        use hmac::Mac;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = ticket.splitn(3, '.');
        let (exp, sid, tag) = (parts.next()?, parts.next()?, parts.next()?);
        let sid = String::from_utf8(b64.decode(sid).ok()?).ok()?;
        let tag = b64.decode(tag).ok()?;
        self.mac(&[b"ticket", exp.as_bytes(), sid.as_bytes()])
            .verify_slice(&tag)
            .ok()?;
        (exp.parse::<i64>().ok()? >= now).then_some(sid)
    }

    /// The CSRF token of the issuer's sign-out form, bound to the browser's session secret
    /// (an HttpOnly cookie no other site can read).
    pub fn csrf(&self, session_secret: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac;
        let tag = self
            .mac(&[b"csrf", session_secret.as_bytes()])
            .finalize()
            .into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag)
    }
}

/// Verifies a bearer TE of ours (signature, `iss`, `exp`/`nbf`, `typ: at+jwt`; any audience).
pub fn verify_te(
    config: &Config,
    keys: &KeySet,
    token: &str,
    now: i64,
) -> Option<warden_core::token::Identity> {
    let jwks = serde_json::to_vec(&keys.jwks(now)).ok()?;
    let set = warden_core::keys::KeySet::from_jwks(&jwks).ok()?;
    let rules = warden_core::token::TokenRules {
        issuer: config.authorization_server.issuer.clone(),
        leeway_seconds: i64::from(crate::render::FILTER_CLOCK_SKEW_SECONDS),
    };
    warden_core::token::verify(token, &set, &rules, now).ok()
}

#[cfg(test)]
mod sign_out_tests {
    use super::*;

    #[test]
    fn a_ticket_names_its_session_until_it_expires_and_cannot_be_forged() {
        let key = SignOutKey::derive("credential-of-at-least-thirty-two-chars");
        let t = key.ticket("sid-1", 1000);
        assert_eq!(key.ticket_sid(&t, 1000).as_deref(), Some("sid-1"));
        assert_eq!(
            key.ticket_sid(&t, 1000 + SIGN_OUT_TICKET_TTL).as_deref(),
            Some("sid-1")
        );
        assert_eq!(key.ticket_sid(&t, 1001 + SIGN_OUT_TICKET_TTL), None);
        let other = SignOutKey::derive("another-credential-of-thirty-two-chars");
        assert_eq!(other.ticket_sid(&t, 1000), None);
        // Another session, or a later expiry, under the same MAC: refused.
        let (exp, rest) = t.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(
            key.ticket_sid(&format!("{exp}.{}.{tag}", b64.encode("sid-2")), 1000),
            None
        );
        let later = (exp.parse::<i64>().unwrap() + 9999).to_string();
        assert_eq!(key.ticket_sid(&t.replacen(exp, &later, 1), 1000), None);
        for junk in ["", "a.b", "1.2.3", "..", &format!("{t}x")] {
            assert_eq!(key.ticket_sid(junk, 1000), None, "{junk}");
        }
        assert_ne!(key.csrf("s1"), key.csrf("s2"));
        assert!(!format!("{key:?}").contains("credential"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config() -> Config {
        Config::from_yaml(
            r#"
authorization_server: {issuer: "http://127.0.0.1:9100"}
routes:
  - name: app
    from: https://app.example.com
    prefix: /ui
    to: http://127.0.0.1:3000
    mcp: {client: {}}
    policy: {allow: {and: [{authenticated_user: true}]}}
  - name: srv
    from: https://mcp.example.com
    to: http://127.0.0.1:3001
    mcp: {server: {}}
    policy: {allow: {and: [{mcp_method: initialize}]}}
"#,
        )
        .unwrap()
    }

    #[test]
    fn return_to_stays_under_the_route() {
        let c = config();
        let app = c.client_route("app").unwrap();
        for ok in [
            "https://app.example.com/ui",
            "https://app.example.com/ui/",
            "https://app.example.com:443/ui/a?b#c",
            "HTTPS://APP.example.com/ui/x",
        ] {
            assert!(valid_return_to(app, ok), "{ok}");
        }
        for bad in [
            "https://app.example.com/uix",
            "https://app.example.com/",
            "http://app.example.com/ui",
            "https://app.example.com:8443/ui",
            "https://evil@app.example.com/ui",
            "https://app.example.com.evil/ui",
            "/ui",
            "",
        ] {
            assert!(!valid_return_to(app, bad), "{bad}");
        }
    }

    #[test]
    fn connect_redirects_only_to_app_origins() {
        let c = config();
        assert_eq!(
            connect_redirect_route(&c, "https://app.example.com/anything?x")
                .map(|r| r.name.as_str()),
            Some("app")
        );
        for bad in [
            "https://mcp.example.com/",
            "http://app.example.com/",
            "https://app.example.com:444/",
            "javascript://app.example.com/%0aalert(1)",
            "https://u:p@app.example.com/",
            "app.example.com",
        ] {
            assert!(connect_redirect_route(&c, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn servers_are_judged_as_an_initialize() {
        let c = config();
        let user = Identity {
            sub: "a@example.com".into(),
            email: "a@example.com".into(),
            name: String::new(),
            groups: vec![],
        };
        let claims = policy_claims(&c, &user, "", "warden-app:app", "sid");
        let names: Vec<_> = usable_servers(&c, &claims)
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, vec!["srv".to_string()]);
        // The app itself is judged without an MCP method.
        assert!(app_allows(&c, c.client_route("app").unwrap(), &user, "sid"));
        assert!(!route_allows(
            c.route_by_name("srv").unwrap(),
            &claims,
            None
        ));
    }
}
