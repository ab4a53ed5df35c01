//! Demo OAuth 2.0 and OpenID Connect provider for mcp-warden.
//!
//! A small authorization server that speaks real HTTP, so the gateway's upstream-OAuth feature
//! (where the gateway is an OAuth *client* of a third-party provider) can be exercised in tests
//! and `make run` against something that behaves like GitHub or Google: an authorization-code
//! flow with PKCE (S256), a consent page, rotating refresh tokens with reuse detection,
//! revocation (RFC 7009), introspection (RFC 7662) and a userinfo endpoint. It also lets the
//! demo MCP server check bearer tokens (`demo-mcp-server --require-bearer-introspect`).
//!
//! It is also a small OpenID Connect provider standing in for Okta, Keycloak or Entra ID, so
//! the token service can be tested as an OIDC relying party ("sign in with the organisation's
//! identity provider"): discovery, a JWKS, ID tokens signed RS256 (RSA-2048) or ES256
//! ([`IdTokenAlg`]), `nonce`, per-user claims ([`ProviderConfig::user_claims`], released per
//! [`ClaimsPlacement`]) and hooks that break ID tokens in every way a relying party must catch.
//!
//! Demo only: one confidential client, users with plain-text passwords from the command line,
//! everything in memory (at most [`MAX_ENTRIES`] pending requests, codes, grants, access tokens
//! and refresh tokens each; the oldest are dropped first), loopback only.
//!
//! # Endpoints
//!
//! * `GET /healthz` → `200 ok`.
//! * `GET /authorize?response_type=code&client_id&redirect_uri&state&scope&code_challenge&code_challenge_method=S256&nonce`:
//!   an unknown `client_id` or a `redirect_uri` that is not registered (or not an absolute URL)
//!   gets a `400` HTML page, never a redirect. Other request errors redirect with `error=…`.
//!   Otherwise an HTML login and consent page titled "Demo OAuth Provider" with one
//!   `<form method="post" action="/authorize">`: hidden `request` (the pending request's id),
//!   `username`, `password`, and the submit buttons `decision=approve` / `decision=deny`.
//! * `POST /authorize` (form): `deny` → `302 redirect_uri?error=access_denied&…&state=…`;
//!   `approve` with a wrong password → the page again with `401`, as a disabled user (see
//!   `/_test/disable-user`) with `403`; with good credentials →
//!   `302 redirect_uri?code=…&state=…`. Codes are single-use, live 60 s and are bound to the
//!   client, the redirect URI, the PKCE challenge, the user, the scope and the `nonce`.
//! * `POST /token` (form; client authentication per [`AuthStyle`]): grant types
//!   `authorization_code` (`code`, `redirect_uri`, `code_verifier`) and `refresh_token`
//!   (`refresh_token`, optional `scope`, a subset of the grant's). Refresh tokens rotate: each
//!   use returns a new one and the old one stops working; presenting a used refresh token
//!   answers `invalid_grant` *and* revokes the whole grant. Access tokens start with `dat_`,
//!   refresh tokens with `drt_` (so tests can grep logs and files for them). Access tokens live
//!   `--access-ttl` seconds; refresh tokens do not expire. A replayed code is `invalid_grant`
//!   (the grant it created is left alone).
//!   When the scope includes `openid`, the `authorization_code` response also carries an
//!   `id_token` (see below), and so does a `refresh_token` response whose scope still includes
//!   `openid` (without `nonce`). Other grants never get one.
//! * `POST /token` with `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693;
//!   client authentication as above): `requested_token_type=urn:ietf:params:oauth:token-type:id-jag`,
//!   `subject_token` an unexpired ID token this provider issued (`subject_token_type=
//!   urn:ietf:params:oauth:token-type:id_token`), `audience` (the issuer of the authorization
//!   server the grant is for), `resource`, optional `scope` → `{"access_token": <ID-JAG>,
//!   "issued_token_type": "urn:ietf:params:oauth:token-type:id-jag", "token_type": "N_A",
//!   "expires_in": 300}`. The ID-JAG (Identity Assertion Authorization Grant, the MCP extension
//!   for enterprise-managed authorization) is a JWT with header `{alg, kid, typ:
//!   "oauth-id-jag+jwt"}` signed by the key `/jwks` publishes, and claims `iss`, `sub` (the
//!   user's OIDC `sub`), `aud` (the audience), `client_id` ([`ProviderConfig::id_jag_client_id`],
//!   by default the provider's client), `resource`, `scope` (when asked), `iat`, `exp` (`iat` +
//!   300), `jti`, and the user's `email`, `name` and `groups` when configured. A disabled
//!   user's or an unknown ID token gets `invalid_grant`.
//! * `POST /revoke` (RFC 7009, client authentication as for `/token`): `token=` an access or
//!   refresh token revokes its whole grant; unknown tokens get `200` too.
//! * `GET|POST /userinfo` with `Authorization: Bearer <access token>` → `{"sub", "scope"}`
//!   (`sub` is the username), or `401` with `WWW-Authenticate: Bearer error="invalid_token"`. For
//!   an access token whose scope includes `openid`: `{"sub": <OIDC sub>, ...the user's claims}`
//!   (the claims only if their placement is `both` or `userinfo`).
//! * `POST /introspect` (RFC 7662, form `token=`, no client authentication) →
//!   `{"active": true, "sub", "scope", "exp", "client_id", "token_type": "access_token"}` for a
//!   live access token, `{"active": false}` for anything else (refresh tokens included).
//!
//! * `GET /.well-known/openid-configuration` → the discovery document: `issuer`, the
//!   `authorization`/`token`/`userinfo`/`revocation`/`introspection` endpoints, `jwks_uri`
//!   (`{issuer}/jwks`), `response_types_supported: ["code"]`, `subject_types_supported:
//!   ["public"]`, `id_token_signing_alg_values_supported` (the configured algorithm),
//!   `scopes_supported` (`openid email profile groups offline_access`),
//!   `token_endpoint_auth_methods_supported` (per [`AuthStyle`]: `client_secret_basic`,
//!   `client_secret_post` or both), `code_challenge_methods_supported: ["S256"]`,
//!   `grant_types_supported` and `claims_supported`.
//! * `GET /.well-known/oauth-authorization-server` (RFC 8414): `issuer`, the authorization,
//!   token, revocation and introspection endpoints, `code_challenge_methods_supported:
//!   ["S256"]`, `response_types_supported`, `grant_types_supported`,
//!   `token_endpoint_auth_methods_supported` (basic, post, none), `registration_endpoint` with
//!   `--dcr`, `client_id_metadata_document_supported: true` with `--cimd`.
//! * `POST /register` (RFC 7591, only with [`ProviderConfig::dcr`]): a JSON body with
//!   `redirect_uris` (required, absolute), `client_name`, `grant_types`, `response_types`,
//!   `token_endpoint_auth_method` (`client_secret_basic` by default, `client_secret_post`,
//!   `none`) → `201` with a random `client_id`, `client_secret` (not for `none`),
//!   `client_id_issued_at`, `client_secret_expires_at: 0` and the metadata; `400`
//!   `invalid_redirect_uri` / `invalid_client_metadata` otherwise. At most [`MAX_CLIENTS`]
//!   (the oldest dropped). A registered client uses its exact redirect URIs and its own
//!   secret with its own method; a `none` client sends only `client_id` and must use PKCE.
//! * With [`ProviderConfig::cimd`], a `client_id` that is an http(s) URL is a Client ID
//!   Metadata Document: fetched at `/authorize` ([`CIMD_TIMEOUT`], at most [`CIMD_MAX_BYTES`],
//!   no redirects, plain http only to loopback; https trusts the system roots and
//!   [`ProviderConfig::extra_ca`]), once per URL. Its `client_id` must be its URL, its
//!   `redirect_uris` hold the request's, its `token_endpoint_auth_method` is `none` or absent;
//!   otherwise a `400` page says which. The client is public.
//! * With [`ProviderConfig::resources`], `/authorize` needs `resource` (RFC 8707) to be one of
//!   them (else a redirect with `error=invalid_target`), the code grant the authorized one,
//!   and a refresh that names one the grant's (else `400 invalid_target`). Introspection of a
//!   grant's tokens answers `"aud": <resource>` whenever the grant has one.
//! * [`serve_tls`] (`--tls-cert`/`--tls-key`) serves all of this over HTTPS; the default issuer
//!   is then `https://{listener address}`.
//! * `GET /jwks` → `{"keys": [...]}`: the public signing key(s) with `kid`, `alg` and
//!   `use: "sig"` (`kty: "RSA"` with `n`, `e`, or `kty: "EC"`, `crv: "P-256"` with `x`, `y`).
//!
//! The issuer ([`ProviderConfig::issuer`]) is exactly the configured string, by default
//! `http://{listener address}`. An ID token is a JWT with header `{alg, kid, typ: "JWT"}` and
//! claims `iss`, `sub` ([`oidc_subject`]: `u-` + 16 hex digits of SHA-256(username), never the
//! username or email), `aud` and `azp` (the client id), `iat`, `exp` (`iat` + 300), `auth_time`,
//! `nonce` (if the authorization request had one) and the user's claims if their placement is
//! `both` or `id_token` (they cannot override the claims above). The default configuration
//! gives alice `{"email": "alice@example.com", "email_verified": true, "name": "Alice Example",
//! "groups": ["engineering"]}`.
//!
//! Token responses carry `Cache-Control: no-store`; errors follow RFC 6749 §5.2
//! (`{"error", "error_description"}`, `400`, or `401` for `invalid_client`).
//!
//! # Test hooks
//!
//! * `GET /_test/stats` → `{"authorization_code": n, "refresh_token": n, "refresh_failures": n,
//!   "revocations": n, "auth_styles": {"header": n, "params": n}, "reuse_detected": n,
//!   "injected_failures": n, "token_requests": n, "discovery_requests": n, "jwks_requests": n,
//!   "userinfo_requests": n}`: `authorization_code`/`refresh_token` count
//!   successful `/token` grants of that type and `auth_styles` how the client authenticated on
//!   those; `refresh_failures` counts `refresh_token` requests answered with an error (injected
//!   failures included); `revocations` counts client-authenticated `/revoke` requests (known
//!   token or not); `reuse_detected` counts grants revoked because a used refresh token came
//!   back; `token_requests` counts every `/token` request, and the last three every request to
//!   discovery, `/jwks` and `/userinfo` (failed and injected-failure ones included). Also
//!   `registrations` (successful `/register`s), `cimd_fetches` (metadata document GETs),
//!   `last_authorize_resource` and `last_token_resource` (the `resource` of the last
//!   `/authorize` and `/token` request, `null` when absent) and `clients` (`{client_id: code
//!   grants}`).
//! * `POST /_test/revoke-user?user=alice` revokes every grant (and unredeemed code) of that
//!   user, standing in for "the user revoked the app at the provider" → `{"revoked": n}`.
//! * `POST /_test/disable-user?user=alice` disables a configured user (`404` for others),
//!   standing in for deprovisioning at the identity provider: every grant and unredeemed code
//!   of theirs is revoked (so their refresh tokens answer `invalid_grant` and their access
//!   tokens `401` at userinfo) and signing in as them is refused (`403` page) →
//!   `{"user", "disabled": true, "revoked": n}`. `POST /_test/enable-user?user=alice` lets
//!   them sign in again (`"disabled": false`); what was revoked stays revoked.
//! * `POST /_test/fail-token?status=503&count=N` makes the next N `/token` requests answer with
//!   that status (`count` defaults to 1; `count=0` turns it off). The body is
//!   `{"error":"temporarily_unavailable"}` for 5xx, `invalid_client` for 401, `invalid_grant`
//!   otherwise, or `error=NAME` from the query.
//! * `POST /_test/delay-token?ms=N` delays every `/token` response by N ms (`0` turns it off),
//!   so concurrent refreshes overlap.
//! * `POST /_test/claims?user=alice&placement=both|id_token|userinfo` with a JSON object body
//!   replaces that user's claims and their placement (default `both`) → `{"user", "placement"}`.
//!   The next ID token (a refreshed one too) and userinfo answer carry them, so a change of
//!   groups at the provider reaches a relying party at its next refresh.
//!   Only configured users (`users` or `user_claims`): `404` otherwise, `400` for a body that is
//!   not an object.
//! * `POST /_test/id-token?mode=MODE&count=N` breaks the next N ID tokens (`count` defaults to
//!   1; `mode=off` or `count=0` turns it off), see [`IdTokenFault`]: `wrong-aud` (`aud`
//!   [`OTHER_AUDIENCE`]), `azp-other` (`aud: [client, "other"]`, `azp: "other"`), `wrong-iss`
//!   (`iss` [`WRONG_ISSUER`]), `wrong-nonce`, `no-nonce`, `expired` (`exp` 10 minutes ago),
//!   `bad-signature` (one bit flipped), `unknown-kid` (signed with a key the JWKS does not
//!   list), `alg-none` (`alg: "none"`, empty signature), `hs256` (`alg: "HS256"`, HMAC-SHA256
//!   keyed with the compact JSON of the current public JWK as `/jwks` lists it).
//! * `POST /_test/rotate-key[?keep_old=true]` makes a new signing key with a new `kid` for the
//!   next ID tokens; `/jwks` lists only it, or it after the previous ones with `keep_old=true`
//!   (at most [`MAX_PUBLISHED_KEYS`]) → `{"kid", "published": [kids]}`.
//! * `POST /_test/issue-id-token?user=alice` → `{"id_token"}`: an ID token for the provider's
//!   client, as a sign-in ends with (no browser; it can be exchanged for an ID-JAG).
//! * `POST /_test/id-jag?user=alice&audience=A&resource=R[&client_id=C][&scope=S]` →
//!   `{"id_jag"}`: an ID-JAG without the exchange.
//! * `POST /_test/fail-discovery?status=503&count=N` and `POST /_test/fail-jwks?status=503&count=N`
//!   make the next N discovery / `/jwks` requests answer with that status (400..=599, default
//!   503; `count` defaults to 1, `count=0` turns it off) and
//!   `{"error": "temporarily_unavailable"}`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use base64::Engine as _;
use rand_core::{OsRng, RngCore as _};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

mod clients;
mod id_jag;
mod oidc;
mod tls;

pub use clients::{CIMD_MAX_BYTES, CIMD_TIMEOUT, MAX_CLIENTS};
pub use tls::{server_config, MAX_CONNECTIONS};

pub use id_jag::{
    ID_JAG_TOKEN_TYPE, ID_JAG_TTL_SECS, ID_JAG_TYP, ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT,
};
pub use oidc::{
    oidc_subject, ClaimsPlacement, IdTokenAlg, IdTokenFault, ID_TOKEN_TTL_SECS, MAX_PUBLISHED_KEYS,
    OTHER_AUDIENCE, OTHER_AZP, WRONG_ISSUER,
};

/// Bound on each in-memory table (pending requests, codes, grants, access and refresh tokens).
pub const MAX_ENTRIES: usize = 10_000;
/// Lifetime of an authorization code.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Lifetime of a pending authorization request (the login page).
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Prefix of access tokens.
pub const ACCESS_PREFIX: &str = "dat_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "drt_";
/// Prefix of authorization codes.
pub const CODE_PREFIX: &str = "dac_";

const PAGE_TITLE: &str = "Demo OAuth Provider";

// =============================================================================================
// Configuration
// =============================================================================================

/// How the token and revocation endpoints accept client authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStyle {
    /// HTTP Basic only (`client_secret_basic`); credentials in the form body are refused.
    Header,
    /// `client_id` + `client_secret` in the form body only (`client_secret_post`); Basic is
    /// refused.
    Params,
    /// Either (but not both in one request).
    Any,
}

impl std::str::FromStr for AuthStyle {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "header" => Ok(AuthStyle::Header),
            "params" => Ok(AuthStyle::Params),
            "any" => Ok(AuthStyle::Any),
            other => anyhow::bail!("auth style must be header, params or any, not {other:?}"),
        }
    }
}

/// The provider's settings (the command-line options of the binary).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Registered redirect URIs (exact match). Empty: any absolute URL is accepted (demo only).
    pub redirect_uris: Vec<String>,
    pub auth_style: AuthStyle,
    /// Lifetime of access tokens.
    pub access_ttl: Duration,
    /// `(username, password)` pairs.
    pub users: Vec<(String, String)>,
    /// The OpenID Connect issuer (`iss` of ID tokens, `issuer` of discovery), without a trailing
    /// slash. `None`: [`serve`] uses `http://{listener address}`, [`app`] `http://localhost`.
    pub issuer: Option<String>,
    /// How ID tokens are signed.
    pub id_token_alg: IdTokenAlg,
    /// Extra claims per username (each a JSON object; nesting allowed, e.g.
    /// `{"realm_access": {"roles": ["admin"]}}`). Claims the provider sets itself (`iss`,
    /// `sub`, `aud`, `azp`, `iat`, `exp`, `auth_time`, `nonce`) are never overridden.
    pub user_claims: HashMap<String, Value>,
    /// Where every user's claims are released at startup (`POST /_test/claims` changes it per
    /// user).
    pub claims_placement: ClaimsPlacement,
    /// The `client_id` claim of the ID-JAGs it issues: the client at the authorization server
    /// they are for. `None`: its own `client_id`.
    pub id_jag_client_id: Option<String>,
    /// `--dcr`: `POST /register` (RFC 7591) and `registration_endpoint` in the metadata.
    pub dcr: bool,
    /// `--cimd`: a URL `client_id` is a Client ID Metadata Document, fetched at `/authorize`.
    pub cimd: bool,
    /// `--extra-ca`: a PEM CA trusted (besides the system's) for metadata documents.
    pub extra_ca: Option<Vec<u8>>,
    /// `--resource`: the resources (RFC 8707) it issues tokens for. Empty: any `resource` is
    /// recorded, none is checked.
    pub resources: Vec<String>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            client_id: "warden-demo".to_owned(),
            client_secret: "warden-demo-secret".to_owned(),
            redirect_uris: Vec::new(),
            auth_style: AuthStyle::Any,
            access_ttl: Duration::from_secs(60),
            users: vec![("alice".to_owned(), "alice-password".to_owned())],
            issuer: None,
            id_token_alg: IdTokenAlg::Rs256,
            user_claims: HashMap::from([(
                "alice".to_owned(),
                json!({
                    "email": "alice@example.com",
                    "email_verified": true,
                    "name": "Alice Example",
                    "groups": ["engineering"],
                }),
            )]),
            claims_placement: ClaimsPlacement::Both,
            id_jag_client_id: None,
            dcr: false,
            cimd: false,
            extra_ca: None,
            resources: Vec::new(),
        }
    }
}

impl ProviderConfig {
    fn redirect_allowed(&self, uri: &str) -> bool {
        let Ok(parsed) = url::Url::parse(uri) else {
            return false;
        };
        if parsed.fragment().is_some() || parsed.cannot_be_a_base() {
            return false;
        }
        self.redirect_uris.is_empty() || self.redirect_uris.iter().any(|r| r == uri)
    }

    fn password_ok(&self, username: &str, password: &str) -> bool {
        self.users
            .iter()
            .any(|(u, p)| u == username && p.as_bytes() == password.as_bytes())
    }
}

// =============================================================================================
// State
// =============================================================================================

/// A map that keeps at most `cap` entries, dropping the oldest insertions first.
struct Bounded<V> {
    cap: usize,
    next: u64,
    map: HashMap<String, (u64, V)>,
    order: BTreeMap<u64, String>,
}

impl<V> Bounded<V> {
    fn new(cap: usize) -> Self {
        Bounded {
            cap,
            next: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn insert(&mut self, key: String, value: V) {
        if let Some((seq, _)) = self.map.remove(&key) {
            self.order.remove(&seq);
        }
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, key.clone());
        self.map.insert(key, (seq, value));
        while self.map.len() > self.cap {
            match self.order.pop_first() {
                Some((_, oldest)) => {
                    self.map.remove(&oldest);
                }
                None => break,
            }
        }
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.map.get_mut(key).map(|(_, v)| v)
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        let (seq, value) = self.map.remove(key)?;
        self.order.remove(&seq);
        Some(value)
    }

    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let order = &mut self.order;
        self.map.retain(|_, (seq, value)| {
            let kept = keep(value);
            if !kept {
                order.remove(seq);
            }
            kept
        });
    }

    fn values(&self) -> impl Iterator<Item = (&String, &V)> {
        self.map.iter().map(|(k, (_, v))| (k, v))
    }
}

struct Pending {
    client_id: String,
    /// The RFC 8707 `resource` asked for.
    resource: Option<String>,
    redirect_uri: String,
    /// The authorization request named the redirect URI (then `/token` must repeat it).
    redirect_explicit: bool,
    state: Option<String>,
    scope: String,
    challenge: Option<String>,
    /// OIDC `nonce` of the authorization request, echoed in the ID token.
    nonce: Option<String>,
    expires: Instant,
}

struct Code {
    client_id: String,
    resource: Option<String>,
    redirect_uri: String,
    redirect_explicit: bool,
    challenge: Option<String>,
    user: String,
    scope: String,
    nonce: Option<String>,
    /// When the user signed in (Unix seconds), for `auth_time`.
    auth_time: u64,
    expires: Instant,
}

struct Grant {
    client_id: String,
    /// The resource its tokens are for (introspection's `aud`).
    resource: Option<String>,
    user: String,
    scope: String,
    auth_time: u64,
}

struct Access {
    grant: String,
    scope: String,
    expires: Instant,
    exp_unix: u64,
}

struct Refresh {
    grant: String,
    used: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
struct AuthStyleCounts {
    header: u64,
    params: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Stats {
    authorization_code: u64,
    refresh_token: u64,
    refresh_failures: u64,
    revocations: u64,
    auth_styles: AuthStyleCounts,
    reuse_detected: u64,
    injected_failures: u64,
    token_requests: u64,
    discovery_requests: u64,
    jwks_requests: u64,
    userinfo_requests: u64,
    /// Successful `POST /register`s.
    registrations: u64,
    /// Client metadata document GETs (failed ones too).
    cimd_fetches: u64,
    last_authorize_resource: Option<String>,
    /// The `resource` of the last `/token` request (`null` when it had none).
    last_token_resource: Option<String>,
    /// Code grants per client_id.
    clients: BTreeMap<String, u64>,
}

struct FailToken {
    status: StatusCode,
    error: String,
    remaining: u64,
}

struct Store {
    pending: Bounded<Pending>,
    codes: Bounded<Code>,
    grants: Bounded<Grant>,
    access: Bounded<Access>,
    refresh: Bounded<Refresh>,
    next_grant: u64,
    stats: Stats,
    fail_token: Option<FailToken>,
    delay_token: Duration,
    keys: oidc::Keys,
    /// Per-user claims; only configured users have an entry, so it stays bounded.
    claims: HashMap<String, oidc::UserClaims>,
    id_token_fault: Option<oidc::FaultCount<IdTokenFault>>,
    fail_discovery: Option<oidc::FaultCount<StatusCode>>,
    fail_jwks: Option<oidc::FaultCount<StatusCode>>,
    /// Users disabled by `/_test/disable-user` (configured users only, so it stays bounded).
    disabled: HashSet<String>,
    /// The ID tokens issued, for the token exchange (`id_jag`).
    id_tokens: Bounded<id_jag::IssuedIdToken>,
    /// `--dcr` clients.
    registered: Bounded<clients::Registered>,
    /// `--cimd` documents, per URL, for the process's life (bounded).
    documents: Bounded<clients::Document>,
}

impl Store {
    fn new(keys: oidc::Keys, claims: HashMap<String, oidc::UserClaims>) -> Self {
        Store {
            pending: Bounded::new(MAX_ENTRIES),
            codes: Bounded::new(MAX_ENTRIES),
            grants: Bounded::new(MAX_ENTRIES),
            access: Bounded::new(MAX_ENTRIES),
            refresh: Bounded::new(MAX_ENTRIES),
            next_grant: 1,
            stats: Stats::default(),
            fail_token: None,
            delay_token: Duration::ZERO,
            keys,
            claims,
            id_token_fault: None,
            fail_discovery: None,
            fail_jwks: None,
            disabled: HashSet::new(),
            id_tokens: Bounded::new(MAX_ENTRIES),
            registered: Bounded::new(MAX_CLIENTS),
            documents: Bounded::new(MAX_CLIENTS),
        }
    }

    /// Revokes every grant (and unredeemed code) of `user`; how many grants that was.
    fn revoke_user(&mut self, user: &str) -> usize {
        let grants: Vec<String> = self
            .grants
            .values()
            .filter(|(_, g)| g.user == user)
            .map(|(id, _)| id.clone())
            .collect();
        for grant in &grants {
            self.revoke_grant(grant);
        }
        self.codes.retain(|c| c.user != user);
        grants.len()
    }

    /// Removes a grant with all its access and refresh tokens. `true` if it existed.
    fn revoke_grant(&mut self, grant: &str) -> bool {
        let existed = self.grants.remove(grant).is_some();
        self.access.retain(|a| a.grant != grant);
        self.refresh.retain(|r| r.grant != grant);
        existed
    }

    /// The grant an access or refresh token belongs to.
    fn grant_of(&self, token: &str) -> Option<String> {
        self.access
            .get(token)
            .map(|a| a.grant.clone())
            .or_else(|| self.refresh.get(token).map(|r| r.grant.clone()))
    }

    /// A live access token: known, unexpired, and its grant still exists.
    fn live_access(&self, token: &str) -> Option<(&Access, &Grant)> {
        let access = self.access.get(token)?;
        if Instant::now() >= access.expires {
            return None;
        }
        let grant = self.grants.get(&access.grant)?;
        Some((access, grant))
    }

    fn new_grant(&mut self, code: &Code) -> String {
        let id = format!("g{}", self.next_grant);
        self.next_grant += 1;
        let (client_id, user, scope, auth_time) =
            (&code.client_id, &code.user, &code.scope, code.auth_time);
        self.grants.insert(
            id.clone(),
            Grant {
                resource: code.resource.clone(),
                client_id: client_id.to_owned(),
                user: user.to_owned(),
                scope: scope.to_owned(),
                auth_time,
            },
        );
        id
    }

    /// A new access token (with `scope`) and refresh token for `grant`.
    fn issue(&mut self, grant: &str, scope: &str, ttl: Duration) -> (String, String) {
        let access = random_token(ACCESS_PREFIX);
        let refresh = random_token(REFRESH_PREFIX);
        let exp_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl)
            .as_secs();
        self.access.insert(
            access.clone(),
            Access {
                grant: grant.to_owned(),
                scope: scope.to_owned(),
                expires: Instant::now() + ttl,
                exp_unix,
            },
        );
        self.refresh.insert(
            refresh.clone(),
            Refresh {
                grant: grant.to_owned(),
                used: false,
            },
        );
        (access, refresh)
    }
}

struct Provider {
    config: ProviderConfig,
    /// `config.issuer` resolved.
    issuer: String,
    /// Fetches client metadata documents (`--cimd`).
    cimd_http: reqwest::Client,
    store: Mutex<Store>,
}

impl Provider {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A poisoned lock only means a handler panicked; the maps are still consistent enough
        // for a demo.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Shared = Arc<Provider>;

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`.
fn valid_pkce_string(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn normalize_scope(scope: &str) -> String {
    scope.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses `application/x-www-form-urlencoded`; `Err(name)` for a repeated parameter.
fn parse_form(input: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(input) {
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(k.into_owned());
        }
    }
    Ok(out)
}

// =============================================================================================
// Router
// =============================================================================================

/// The provider's routes. Fails if a user's claims are not a JSON object or the signing key
/// cannot be generated.
pub fn app(config: ProviderConfig) -> anyhow::Result<Router> {
    let issuer = config
        .issuer
        .clone()
        .unwrap_or_else(|| "http://localhost".to_owned());
    let keys = oidc::Keys::new(config.id_token_alg)?;
    let claims = oidc::initial_claims(&config.user_claims, config.claims_placement)?;
    let cimd_http = clients::cimd_client(config.extra_ca.as_deref())?;
    let dcr = config.dcr;
    let shared: Shared = Arc::new(Provider {
        config,
        issuer,
        cimd_http,
        store: Mutex::new(Store::new(keys, claims)),
    });
    let mut router = Router::new();
    if dcr {
        router = router.route("/register", post(clients::register));
    }
    Ok(router
        .route("/healthz", get(healthz))
        .route(
            "/.well-known/oauth-authorization-server",
            get(clients::metadata),
        )
        .route("/authorize", get(authorize_page).post(authorize_submit))
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .route("/userinfo", get(userinfo).post(userinfo))
        .route("/introspect", post(introspect))
        .route("/_test/stats", get(test_stats))
        .route("/_test/revoke-user", post(test_revoke_user))
        .route("/_test/fail-token", post(test_fail_token))
        .route("/_test/delay-token", post(test_delay_token))
        .route("/_test/disable-user", post(test_disable_user))
        .route("/_test/enable-user", post(test_enable_user))
        .route("/.well-known/openid-configuration", get(oidc::discovery))
        .route("/jwks", get(oidc::jwks))
        .route("/_test/claims", post(oidc::test_claims))
        .route("/_test/id-token", post(oidc::test_id_token))
        .route("/_test/rotate-key", post(oidc::test_rotate_key))
        .route("/_test/fail-discovery", post(oidc::test_fail_discovery))
        .route("/_test/fail-jwks", post(oidc::test_fail_jwks))
        .route("/_test/issue-id-token", post(id_jag::test_issue_id_token))
        .route("/_test/id-jag", post(id_jag::test_id_jag))
        .with_state(shared))
}

/// Serves [`app`] on `listener` until the task is dropped or the server fails.
pub async fn serve(
    config: ProviderConfig,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let mut config = config;
    if config.issuer.is_none() {
        config.issuer = Some(format!("http://{}", listener.local_addr()?));
    }
    // Small answers go out at once (no Nagle delay behind a proxy's delayed ACKs).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(config)?).await?;
    Ok(())
}

/// [`serve`] over HTTPS with `tls` ([`server_config`]); the default issuer is
/// `https://{listener address}`.
pub async fn serve_tls(
    config: ProviderConfig,
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
) -> anyhow::Result<()> {
    let mut config = config;
    if config.issuer.is_none() {
        config.issuer = Some(format!("https://{}", listener.local_addr()?));
    }
    tls::serve_tls(app(config)?, listener, tls).await
}

async fn healthz() -> &'static str {
    "ok"
}

// =============================================================================================
// /authorize
// =============================================================================================

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, Html(body)).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // No `form-action`: browsers apply it to the redirect that follows the approval POST,
    // which goes to the client's redirect URI on another origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    resp
}

fn error_page(status: StatusCode, message: &str) -> Response {
    html_response(
        status,
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{PAGE_TITLE}</title></head>\n\
             <body>\n<h1>{PAGE_TITLE}</h1>\n<p class=\"error\">{}</p>\n</body></html>\n",
            html_escape(message)
        ),
    )
}

fn consent_page(
    status: StatusCode,
    client_id: &str,
    request_id: &str,
    scope: &str,
    message: Option<&str>,
) -> Response {
    let scopes = if scope.is_empty() {
        "<p>No scopes requested.</p>\n".to_owned()
    } else {
        let items: String = scope
            .split(' ')
            .map(|s| format!("<li>{}</li>", html_escape(s)))
            .collect();
        format!("<p>Requested scopes:</p>\n<ul class=\"scopes\">{items}</ul>\n")
    };
    let message = message
        .map(|m| format!("<p class=\"error\">{}</p>\n", html_escape(m)))
        .unwrap_or_default();
    html_response(
        status,
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{PAGE_TITLE}</title></head>\n\
             <body>\n<h1>{PAGE_TITLE}</h1>\n\
             <p>The application <b>{client}</b> asks for access to your account.</p>\n\
             {scopes}{message}\
             <form method=\"post\" action=\"/authorize\">\n\
             <input type=\"hidden\" name=\"request\" value=\"{request}\">\n\
             <p><label>Username <input type=\"text\" name=\"username\" autocomplete=\"username\"></label></p>\n\
             <p><label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\"></label></p>\n\
             <p><button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\n\
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></p>\n\
             </form>\n</body></html>\n",
            client = html_escape(client_id),
            request = html_escape(request_id),
        ),
    )
}

/// `302` to `redirect_uri` with `params` added to its query.
fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is not a valid URL.",
        );
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            query.append_pair(k, v);
        }
    }
    match HeaderValue::from_str(url.as_str()) {
        Ok(location) => {
            let mut resp = StatusCode::FOUND.into_response();
            resp.headers_mut().insert(header::LOCATION, location);
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(_) => error_page(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is not a valid URL.",
        ),
    }
}

fn redirect_error(
    redirect_uri: &str,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Response {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(state) = state {
        params.push(("state", state));
    }
    redirect_with(redirect_uri, &params)
}

async fn authorize_page(State(p): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let params = match parse_form(query.as_deref().unwrap_or("").as_bytes()) {
        Ok(params) => params,
        Err(name) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("Parameter {name} is repeated."),
            )
        }
    };
    let config = &p.config;
    let client_id = params.get("client_id").map(String::as_str).unwrap_or("");
    // A bad client is never redirected to: the page says why.
    let client = match p.authorize_client(client_id).await {
        Ok(client) => client,
        Err(why) => return error_page(StatusCode::BAD_REQUEST, &why),
    };
    let redirect_ok = |uri: &str| match client.method {
        clients::Method::Configured(_) => config.redirect_allowed(uri),
        _ => client.redirect_uris.iter().any(|r| r == uri),
    };
    let (redirect_uri, redirect_explicit) = match params.get("redirect_uri") {
        Some(uri) if redirect_ok(uri) => (uri.clone(), true),
        Some(_) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The redirect_uri is not registered for this client.",
            )
        }
        None => match client.redirect_uris.as_slice() {
            [only] => (only.clone(), false),
            _ => return error_page(StatusCode::BAD_REQUEST, "Missing redirect_uri."),
        },
    };
    let state = params.get("state").map(String::as_str);
    if params.get("response_type").map(String::as_str) != Some("code") {
        return redirect_error(
            &redirect_uri,
            state,
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    let challenge = params.get("code_challenge").cloned();
    match (
        &challenge,
        params.get("code_challenge_method").map(String::as_str),
    ) {
        (Some(c), Some("S256")) if valid_pkce_string(c) => {}
        (Some(_), Some("S256")) => {
            return redirect_error(
                &redirect_uri,
                state,
                "invalid_request",
                "malformed code_challenge",
            )
        }
        (Some(_), _) => {
            return redirect_error(
                &redirect_uri,
                state,
                "invalid_request",
                "code_challenge_method must be S256",
            )
        }
        (None, Some(_)) => {
            return redirect_error(
                &redirect_uri,
                state,
                "invalid_request",
                "code_challenge_method without code_challenge",
            )
        }
        (None, None) if client.method == clients::Method::None => {
            return redirect_error(
                &redirect_uri,
                state,
                "invalid_request",
                "a public client must use PKCE (code_challenge with S256)",
            )
        }
        (None, None) => {}
    }
    let resource = params.get("resource").cloned();
    p.store().stats.last_authorize_resource = resource.clone();
    if !config.resources.is_empty()
        && !resource
            .as_ref()
            .is_some_and(|r| config.resources.contains(r))
    {
        return redirect_error(
            &redirect_uri,
            state,
            "invalid_target",
            "resource must name a resource this server issues tokens for",
        );
    }
    let scope = normalize_scope(params.get("scope").map(String::as_str).unwrap_or(""));
    let nonce = params.get("nonce").cloned();
    let request_id = random_token("req_");
    p.store().pending.insert(
        request_id.clone(),
        Pending {
            client_id: client.id.clone(),
            resource,
            redirect_uri,
            redirect_explicit,
            state: state.map(str::to_owned),
            scope: scope.clone(),
            challenge,
            nonce,
            expires: Instant::now() + PENDING_TTL,
        },
    );
    consent_page(StatusCode::OK, &client.id, &request_id, &scope, None)
}

async fn authorize_submit(State(p): State<Shared>, body: Bytes) -> Response {
    let form = match parse_form(&body) {
        Ok(form) => form,
        Err(name) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("Parameter {name} is repeated."),
            )
        }
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let request_id = field("request");
    let mut store = p.store();
    let (client_id, redirect_uri, state, scope) = match store.pending.get(request_id) {
        Some(pending) if Instant::now() < pending.expires => (
            pending.client_id.clone(),
            pending.redirect_uri.clone(),
            pending.state.clone(),
            pending.scope.clone(),
        ),
        _ => {
            store.pending.remove(request_id);
            return error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in request is unknown or has expired. Start again from the application.",
            );
        }
    };
    match field("decision") {
        "deny" => {
            store.pending.remove(request_id);
            drop(store);
            tracing::info!("authorization denied by the user");
            redirect_error(
                &redirect_uri,
                state.as_deref(),
                "access_denied",
                "The user denied the request",
            )
        }
        "approve" => {
            let username = field("username");
            if !p.config.password_ok(username, field("password")) {
                drop(store);
                tracing::info!(user = username, "wrong username or password");
                return consent_page(
                    StatusCode::UNAUTHORIZED,
                    &client_id,
                    request_id,
                    &scope,
                    Some("Wrong username or password."),
                );
            }
            if store.disabled.contains(username) {
                drop(store);
                tracing::info!(user = username, "sign-in of a disabled user refused");
                return consent_page(
                    StatusCode::FORBIDDEN,
                    &client_id,
                    request_id,
                    &scope,
                    Some("This account is disabled."),
                );
            }
            let Some(pending) = store.pending.remove(request_id) else {
                return error_page(StatusCode::BAD_REQUEST, "This sign-in request is unknown.");
            };
            let code = random_token(CODE_PREFIX);
            store.codes.insert(
                code.clone(),
                Code {
                    client_id,
                    resource: pending.resource,
                    redirect_uri: pending.redirect_uri,
                    redirect_explicit: pending.redirect_explicit,
                    challenge: pending.challenge,
                    user: username.to_owned(),
                    scope: pending.scope,
                    nonce: pending.nonce,
                    auth_time: unix_now(),
                    expires: Instant::now() + CODE_TTL,
                },
            );
            drop(store);
            tracing::info!(user = username, scope = %scope, "authorization approved");
            let mut params = vec![("code", code.as_str())];
            if let Some(state) = state.as_deref() {
                params.push(("state", state));
            }
            redirect_with(&redirect_uri, &params)
        }
        _ => error_page(StatusCode::BAD_REQUEST, "Choose approve or deny."),
    }
}

// =============================================================================================
// Client authentication and token-endpoint errors
// =============================================================================================

/// An RFC 6749 §5.2 error response.
struct OAuthError {
    status: StatusCode,
    error: String,
    description: String,
    /// Add `WWW-Authenticate: Basic` (the client tried HTTP Basic and failed).
    basic_challenge: bool,
}

impl OAuthError {
    fn new(error: &str, description: impl Into<String>) -> Self {
        OAuthError {
            status: if error == "invalid_client" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            },
            error: error.to_owned(),
            description: description.into(),
            basic_challenge: false,
        }
    }

    fn invalid_client(description: &str, basic: bool) -> Self {
        OAuthError {
            basic_challenge: basic,
            ..OAuthError::new("invalid_client", description)
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.basic_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"demo-oauth-provider\""),
            );
        }
        resp
    }
}

fn token_json(value: Value) -> Response {
    let mut resp = Json(value).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthUsed {
    Header,
    Params,
    /// A public client: `client_id` only.
    None,
}

/// Decodes one `application/x-www-form-urlencoded` component of HTTP Basic credentials
/// (RFC 6749 §2.3.1).
fn form_decode(s: &str) -> String {
    let mut input = String::with_capacity(s.len() + 2);
    input.push_str("x=");
    input.push_str(&s.replace('&', "%26").replace('=', "%3D"));
    url::form_urlencoded::parse(input.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Basic credentials from the `Authorization` header: `None` if absent or another scheme,
/// `Some(Err)` if malformed.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
        return Some(Err(()));
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return Some(Err(()));
    };
    let Some((id, secret)) = decoded.split_once(':') else {
        return Some(Err(()));
    };
    Some(Ok((id.to_owned(), secret.to_owned())))
}

/// A registered or metadata-document client (not the configured one) named by `id`.
fn other_client(p: &Provider, id: &str) -> Option<clients::Client> {
    let client = p.client(id).or_else(|| p.client(&form_decode(id)))?;
    (!matches!(client.method, clients::Method::Configured(_))).then_some(client)
}

/// The client authenticating at `/token` or `/revoke`: its id and how it authenticated.
fn authenticate_client(
    p: &Provider,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, AuthUsed), OAuthError> {
    let basic = basic_credentials(headers);
    let body_secret = form.get("client_secret");
    let body_id = form.get("client_id").map(String::as_str);
    // Registered and metadata-document clients first; the configured client keeps its rules.
    let named = match (&basic, body_secret) {
        (Some(Ok((id, _))), None) => other_client(p, id),
        (None, _) => body_id.and_then(|id| other_client(p, id)),
        _ => None,
    };
    if let Some(client) = named {
        let secret_ok = |given: &str| {
            client
                .secret
                .as_deref()
                .is_some_and(|s| s == given || s == form_decode(given))
        };
        return match (basic, body_secret, client.method) {
            (Some(Ok((_, secret))), None, clients::Method::Basic) if secret_ok(&secret) => {
                if body_id.is_some_and(|b| b != client.id) {
                    return Err(OAuthError::invalid_client("client_id does not match", true));
                }
                Ok((client.id, AuthUsed::Header))
            }
            (None, Some(secret), clients::Method::Post) if secret_ok(secret) => {
                Ok((client.id, AuthUsed::Params))
            }
            (None, None, clients::Method::None) => Ok((client.id, AuthUsed::None)),
            (basic, _, _) => Err(OAuthError::invalid_client(
                "client authentication failed (wrong secret or not the registered method)",
                basic.is_some(),
            )),
        };
    }
    let config = &p.config;
    match (basic, body_secret) {
        (Some(_), Some(_)) => Err(OAuthError::new(
            "invalid_request",
            "use one client authentication method, not both",
        )),
        (Some(basic), None) => {
            if config.auth_style == AuthStyle::Params {
                return Err(OAuthError::invalid_client(
                    "this provider expects client_id and client_secret in the request body",
                    false,
                ));
            }
            let Ok((id, secret)) = basic else {
                return Err(OAuthError::invalid_client(
                    "malformed Basic credentials",
                    true,
                ));
            };
            let id_ok = id == config.client_id || form_decode(&id) == config.client_id;
            let secret_ok =
                secret == config.client_secret || form_decode(&secret) == config.client_secret;
            if !id_ok || !secret_ok {
                return Err(OAuthError::invalid_client(
                    "client authentication failed",
                    true,
                ));
            }
            if form
                .get("client_id")
                .is_some_and(|body_id| *body_id != config.client_id)
            {
                return Err(OAuthError::invalid_client("client_id does not match", true));
            }
            Ok((config.client_id.clone(), AuthUsed::Header))
        }
        (None, Some(secret)) => {
            if config.auth_style == AuthStyle::Header {
                return Err(OAuthError::invalid_client(
                    "this provider expects HTTP Basic client authentication",
                    true,
                ));
            }
            if form.get("client_id") != Some(&config.client_id) || *secret != config.client_secret {
                return Err(OAuthError::invalid_client(
                    "client authentication failed",
                    false,
                ));
            }
            Ok((config.client_id.clone(), AuthUsed::Params))
        }
        (None, None) => Err(OAuthError::invalid_client(
            "client authentication required",
            config.auth_style != AuthStyle::Params,
        )),
    }
}

// =============================================================================================
// /token
// =============================================================================================

async fn token(State(p): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (delay, injected) = {
        let mut store = p.store();
        store.stats.token_requests += 1;
        let injected = match store.fail_token.as_mut() {
            Some(fail) if fail.remaining > 0 => {
                fail.remaining -= 1;
                Some((fail.status, fail.error.clone()))
            }
            _ => None,
        };
        (store.delay_token, injected)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let form = parse_form(&body);
    p.store().stats.last_token_resource =
        form.as_ref().ok().and_then(|f| f.get("resource").cloned());
    let is_refresh = form
        .as_ref()
        .is_ok_and(|f| f.get("grant_type").map(String::as_str) == Some("refresh_token"));
    if let Some((status, error)) = injected {
        {
            let mut store = p.store();
            store.stats.injected_failures += 1;
            if is_refresh {
                store.stats.refresh_failures += 1;
            }
        }
        tracing::info!(status = status.as_u16(), "injected /token failure");
        let mut resp = (status, Json(json!({ "error": error }))).into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return resp;
    }
    let result = match form {
        Ok(form) => token_grant(&p, &headers, &form),
        Err(name) => Err(OAuthError::new(
            "invalid_request",
            format!("parameter {name} is repeated"),
        )),
    };
    match result {
        Ok(value) => token_json(value),
        Err(error) => {
            if is_refresh {
                p.store().stats.refresh_failures += 1;
            }
            tracing::info!(error = %error.error, description = %error.description, "/token refused");
            error.into_response()
        }
    }
}

fn token_grant(
    p: &Provider,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    let grant_type = form.get("grant_type").map(String::as_str);
    let (client_id, auth) = authenticate_client(p, headers, form)?;
    let value = match grant_type {
        Some("authorization_code") => code_grant(p, &client_id, form)?,
        Some("refresh_token") => refresh_grant(p, &client_id, form)?,
        // ID-JAGs are for the configured client only.
        Some(id_jag::TOKEN_EXCHANGE_GRANT) if client_id != p.config.client_id => {
            return Err(OAuthError::new(
                "unauthorized_client",
                "only the configured client may exchange tokens",
            ))
        }
        Some(id_jag::TOKEN_EXCHANGE_GRANT) => id_jag::exchange(p, form)?,
        Some(other) => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type {other} is not supported"),
            ))
        }
        None => return Err(OAuthError::new("invalid_request", "missing grant_type")),
    };
    let mut store = p.store();
    match auth {
        AuthUsed::Header => store.stats.auth_styles.header += 1,
        AuthUsed::Params => store.stats.auth_styles.params += 1,
        AuthUsed::None => {}
    }
    Ok(value)
}

fn token_response(p: &Provider, access: &str, refresh: &str, scope: &str) -> Value {
    json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": p.config.access_ttl.as_secs(),
        "refresh_token": refresh,
        "scope": scope,
    })
}

fn code_grant(
    p: &Provider,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    let Some(code) = form.get("code") else {
        return Err(OAuthError::new("invalid_request", "missing code"));
    };
    let mut store = p.store();
    // Single use: the code is gone whatever happens next.
    let Some(entry) = store.codes.remove(code) else {
        return Err(OAuthError::new(
            "invalid_grant",
            "unknown, expired or already used authorization code",
        ));
    };
    if Instant::now() >= entry.expires {
        return Err(OAuthError::new(
            "invalid_grant",
            "authorization code expired",
        ));
    }
    if entry.client_id != client_id {
        return Err(OAuthError::new(
            "invalid_grant",
            "authorization code was issued to another client",
        ));
    }
    if !p.config.resources.is_empty() && form.get("resource") != entry.resource.as_ref() {
        return Err(OAuthError::new(
            "invalid_target",
            "resource must be the one authorized",
        ));
    }
    match form.get("redirect_uri") {
        Some(uri) if *uri == entry.redirect_uri => {}
        None if !entry.redirect_explicit => {}
        _ => {
            return Err(OAuthError::new(
                "invalid_grant",
                "redirect_uri does not match the authorization request",
            ))
        }
    }
    match (&entry.challenge, form.get("code_verifier")) {
        (Some(challenge), Some(verifier)) => {
            if !valid_pkce_string(verifier) || s256(verifier) != *challenge {
                return Err(OAuthError::new("invalid_grant", "PKCE verification failed"));
            }
        }
        (Some(_), None) => {
            return Err(OAuthError::new("invalid_grant", "missing code_verifier"));
        }
        (None, Some(_)) => {
            return Err(OAuthError::new(
                "invalid_grant",
                "code_verifier sent but the authorization request had no code_challenge",
            ));
        }
        (None, None) => {}
    }
    let grant = store.new_grant(&entry);
    let (access, refresh) = store.issue(&grant, &entry.scope, p.config.access_ttl);
    store.stats.authorization_code += 1;
    *store
        .stats
        .clients
        .entry(entry.client_id.clone())
        .or_default() += 1;
    drop(store);
    tracing::info!(user = %entry.user, grant = %grant, "authorization_code grant");
    let mut response = token_response(p, &access, &refresh, &entry.scope);
    if oidc::scope_has_openid(&entry.scope) {
        response["id_token"] =
            json!(p.id_token(&entry.user, entry.nonce.as_deref(), entry.auth_time)?);
    }
    Ok(response)
}

fn refresh_grant(
    p: &Provider,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    let Some(token) = form.get("refresh_token") else {
        return Err(OAuthError::new("invalid_request", "missing refresh_token"));
    };
    let mut store = p.store();
    let Some(entry) = store.refresh.get(token) else {
        return Err(OAuthError::new(
            "invalid_grant",
            "unknown or revoked refresh token",
        ));
    };
    let grant_id = entry.grant.clone();
    if entry.used {
        store.revoke_grant(&grant_id);
        store.stats.reuse_detected += 1;
        drop(store);
        tracing::warn!(grant = %grant_id, "refresh token reuse detected; grant revoked");
        return Err(OAuthError::new(
            "invalid_grant",
            "refresh token was already used; the grant has been revoked",
        ));
    }
    let Some(grant) = store.grants.get(&grant_id) else {
        return Err(OAuthError::new("invalid_grant", "the grant was revoked"));
    };
    if grant.client_id != client_id {
        return Err(OAuthError::new(
            "invalid_grant",
            "refresh token was issued to another client",
        ));
    }
    if !p.config.resources.is_empty()
        && form
            .get("resource")
            .is_some_and(|r| Some(r) != grant.resource.as_ref())
    {
        return Err(OAuthError::new(
            "invalid_target",
            "resource must be the grant's",
        ));
    }
    let grant_scope = grant.scope.clone();
    let user = grant.user.clone();
    let auth_time = grant.auth_time;
    let scope = match form.get("scope") {
        Some(requested) => {
            let requested = normalize_scope(requested);
            let granted: Vec<&str> = grant_scope.split(' ').collect();
            if let Some(extra) = requested.split(' ').find(|s| !granted.contains(s)) {
                return Err(OAuthError::new(
                    "invalid_scope",
                    format!("scope {extra} was not granted"),
                ));
            }
            requested
        }
        None => grant_scope,
    };
    if let Some(entry) = store.refresh.get_mut(token) {
        entry.used = true;
    }
    let (access, refresh) = store.issue(&grant_id, &scope, p.config.access_ttl);
    store.stats.refresh_token += 1;
    drop(store);
    tracing::info!(user = %user, grant = %grant_id, "refresh_token grant");
    let mut response = token_response(p, &access, &refresh, &scope);
    if oidc::scope_has_openid(&scope) {
        // A refreshed ID token has no nonce (OIDC Core §12.2).
        response["id_token"] = json!(p.id_token(&user, None, auth_time)?);
    }
    Ok(response)
}

// =============================================================================================
// /revoke, /userinfo, /introspect
// =============================================================================================

async fn revoke(State(p): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match parse_form(&body) {
        Ok(form) => form,
        Err(name) => {
            return OAuthError::new("invalid_request", format!("parameter {name} is repeated"))
                .into_response()
        }
    };
    if let Err(error) = authenticate_client(&p, &headers, &form) {
        return error.into_response();
    }
    let Some(token) = form.get("token") else {
        return OAuthError::new("invalid_request", "missing token").into_response();
    };
    let mut store = p.store();
    store.stats.revocations += 1;
    if let Some(grant) = store.grant_of(token) {
        store.revoke_grant(&grant);
        drop(store);
        tracing::info!(grant = %grant, "grant revoked via /revoke");
    }
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn userinfo(State(p): State<Shared>, headers: HeaderMap) -> Response {
    let unauthorized = |challenge: &'static str, description: &str| {
        let mut resp = (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_token", "error_description": description })),
        )
            .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        resp
    };
    p.store().stats.userinfo_requests += 1;
    let Some(token) = bearer_token(&headers) else {
        return unauthorized(
            "Bearer realm=\"demo-oauth-provider\"",
            "missing bearer token",
        );
    };
    let store = p.store();
    match store.live_access(token) {
        Some((access, grant)) if oidc::scope_has_openid(&access.scope) => {
            let user = grant.user.clone();
            drop(store);
            token_json(p.oidc_userinfo(&user))
        }
        Some((access, grant)) => {
            let value = json!({ "sub": grant.user, "scope": access.scope });
            drop(store);
            token_json(value)
        }
        None => unauthorized(
            "Bearer error=\"invalid_token\"",
            "unknown, revoked or expired access token",
        ),
    }
}

async fn introspect(State(p): State<Shared>, body: Bytes) -> Response {
    let token = parse_form(&body)
        .ok()
        .and_then(|mut form| form.remove("token"))
        .unwrap_or_default();
    let store = p.store();
    let value = match store.live_access(&token) {
        Some((access, grant)) => {
            let mut value = json!({
                "active": true,
                "sub": grant.user,
                "scope": access.scope,
                "exp": access.exp_unix,
                "client_id": grant.client_id,
                "token_type": "access_token",
            });
            if let Some(resource) = &grant.resource {
                value["aud"] = json!(resource);
            }
            value
        }
        None => json!({ "active": false }),
    };
    drop(store);
    token_json(value)
}

// =============================================================================================
// Test hooks
// =============================================================================================

fn query_params(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn bad_hook(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

async fn test_stats(State(p): State<Shared>) -> Response {
    let stats = p.store().stats.clone();
    Json(stats).into_response()
}

async fn test_revoke_user(State(p): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let params = query_params(query.as_deref());
    let Some(user) = params.get("user") else {
        return bad_hook("missing user");
    };
    let revoked = p.store().revoke_user(user);
    tracing::info!(user = %user, grants = revoked, "revoked every grant of the user");
    Json(json!({ "revoked": revoked })).into_response()
}

async fn test_disable_user(State(p): State<Shared>, RawQuery(query): RawQuery) -> Response {
    set_disabled(&p, query.as_deref(), true)
}

async fn test_enable_user(State(p): State<Shared>, RawQuery(query): RawQuery) -> Response {
    set_disabled(&p, query.as_deref(), false)
}

/// A user disabled at the provider (deprovisioned): every grant revoked, so refresh tokens
/// answer `invalid_grant` and access tokens `401` at userinfo, and no new sign-in.
fn set_disabled(p: &Provider, query: Option<&str>, disabled: bool) -> Response {
    let params = query_params(query);
    let Some(user) = params.get("user") else {
        return bad_hook("missing user");
    };
    if !p.config.users.iter().any(|(u, _)| u == user) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("unknown user {user:?}") })),
        )
            .into_response();
    }
    let mut store = p.store();
    let revoked = if disabled {
        store.disabled.insert(user.clone());
        store.revoke_user(user)
    } else {
        store.disabled.remove(user);
        0
    };
    drop(store);
    tracing::info!(user = %user, disabled, revoked, "user disabled or enabled");
    Json(json!({ "user": user, "disabled": disabled, "revoked": revoked })).into_response()
}

async fn test_fail_token(State(p): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let params = query_params(query.as_deref());
    let status = match params.get("status").map(|s| s.parse::<u16>()) {
        None => StatusCode::SERVICE_UNAVAILABLE,
        Some(Ok(code)) if (400..=599).contains(&code) => match StatusCode::from_u16(code) {
            Ok(status) => status,
            Err(_) => return bad_hook("status must be 400..=599"),
        },
        Some(_) => return bad_hook("status must be 400..=599"),
    };
    let count = match params.get("count").map(|s| s.parse::<u64>()) {
        None => 1,
        Some(Ok(count)) => count,
        Some(Err(_)) => return bad_hook("count must be a number"),
    };
    let error = params.get("error").cloned().unwrap_or_else(|| {
        if status.is_server_error() {
            "temporarily_unavailable".to_owned()
        } else if status == StatusCode::UNAUTHORIZED {
            "invalid_client".to_owned()
        } else {
            "invalid_grant".to_owned()
        }
    });
    p.store().fail_token = Some(FailToken {
        status,
        error,
        remaining: count,
    });
    Json(json!({ "status": status.as_u16(), "count": count })).into_response()
}

async fn test_delay_token(State(p): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let params = query_params(query.as_deref());
    let Some(Ok(ms)) = params.get("ms").map(|s| s.parse::<u64>()) else {
        return bad_hook("ms must be a number");
    };
    p.store().delay_token = Duration::from_millis(ms.min(600_000));
    Json(json!({ "ms": ms })).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn bounded_drops_oldest() {
        let mut m = Bounded::new(2);
        m.insert("a".into(), 1);
        m.insert("b".into(), 2);
        m.insert("c".into(), 3);
        assert!(m.get("a").is_none());
        assert_eq!(m.get("b"), Some(&2));
        m.retain(|v| *v != 2);
        assert!(m.get("b").is_none());
        m.insert("d".into(), 4);
        assert_eq!(m.get("c"), Some(&3));
        assert_eq!(m.get("d"), Some(&4));
        assert_eq!(m.order.len(), 2);
    }

    #[test]
    fn pkce_s256_matches_rfc7636_example() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn basic_components_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(form_decode("x&y=z"), "x&y=z");
    }
}
