//! The filter ↔ token service contract, written once: the internal API's paths, bodies,
//! answers and error codes, the header and cookie names both sides use, and how a call proves
//! it comes from the filter. A leaf: it imports nothing else of the crate, so the filter's
//! call-outs and the token service's routes read from the same place.
//!
//! ## Signing
//! The filter never sends the internal credential itself. Envoy prints the headers of every
//! call-out at debug level, and a credential in the plugin configuration shows in the admin
//! `/config_dump`; with it, anyone could ask for any user's upstream token or identity
//! assertion. Instead, each call carries a MAC keyed with the credential over the call's
//! method, path, body, time and a fresh nonce:
//!
//! `Authorization: WardenMAC t=<unix seconds>, n=<nonce>, mac=<base64url HMAC-SHA256>`
//!
//! The token service accepts a call within `MAX_SKEW_SECONDS` of its own clock and each nonce
//! once, so a logged header is worth nothing: it cannot be replayed, and it says nothing about
//! the credential. The credential reaches the filter through Envoy's environment
//! (`CREDENTIAL_ENV`), never through its configuration.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The environment variable of the Envoy process holding the internal credential (the content
/// of the token service's `internal_credential_file`).
pub const CREDENTIAL_ENV: &str = "MCP_WARDEN_INTERNAL_CREDENTIAL";
/// The `Authorization` scheme of internal calls.
pub const SCHEME: &str = "WardenMAC";
/// How far a call's time may be from the token service's clock.
pub const MAX_SKEW_SECONDS: i64 = 60;
/// Shortest credential accepted (the token service generates 43 characters).
pub const MIN_CREDENTIAL_BYTES: usize = 32;
/// Random bytes in a nonce.
pub const NONCE_BYTES: usize = 16;

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// `UpstreamTokenRequest` → `UpstreamTokenAnswer`; `404 no_token`, `409 upstream_refused`,
/// `503 upstream_unavailable`.
pub const UPSTREAM_TOKEN_PATH: &str = "/internal/v1/upstream-token";
/// `DropRequest` → `DropAnswer`: a TI the MCP server refused.
pub const UPSTREAM_TOKEN_DROP_PATH: &str = "/internal/v1/upstream-token/drop";
/// `UpstreamTokenRequest` → `AssertionAnswer`; `404 unknown_user`, `404 unknown_route`,
/// `400 identity_headers_off`.
pub const IDENTITY_ASSERTION_PATH: &str = "/internal/v1/identity-assertion";
/// `AppSessionRequest` → `AppSessionAnswer`; `400 invalid_code`.
pub const APP_SESSION_PATH: &str = "/internal/v1/app-session";
/// `AppTokenRequest` → `AppTokenAnswer`; `401 session_expired`, `403 access_denied`.
pub const APP_TOKEN_PATH: &str = "/internal/v1/app-token";
/// `AppTokenRequest` → `AppSessionEndAnswer` (the app's sign-out).
pub const APP_SESSION_END_PATH: &str = "/internal/v1/app-session/end";
/// `GET`: the encryption-key re-seal's counters.
pub const VAULT_STATUS_PATH: &str = "/internal/v1/vault/status";
/// `GET ?after=<cursor>` → `RevocationPage`: the revocation feed (`revocations_query`);
/// `400 invalid_request` for a query that is not exactly `after=<i64 ≥ 0>`.
pub const REVOCATIONS_PATH: &str = "/internal/v1/revocations";

/// Where the token service sends a browser back to a client route's host with a one-time
/// code (any client route's host, whatever its path prefix).
pub const APP_CALLBACK_PATH: &str = "/.warden/app/callback";

// ---------------------------------------------------------------------------------------
// Names both sides use
// ---------------------------------------------------------------------------------------

/// The request header that carries the identity assertion by default (lower case, as Envoy
/// keeps names).
pub const ASSERTION_HEADER: &str = "x-warden-jwt-assertion";
/// Pomerium's name for it: servers migrating from the reference trust this one.
pub const POMERIUM_ASSERTION_HEADER: &str = "x-pomerium-jwt-assertion";
/// Every name an assertion may arrive under from a client, each removed from every request:
/// ours and Pomerium's two (whatever a route sends, a server may trust any of them).
pub const CLIENT_ASSERTION_HEADERS: [&str; 3] = [
    ASSERTION_HEADER,
    POMERIUM_ASSERTION_HEADER,
    "x-pomerium-assertion",
];
/// The names a route may send the assertion under (`identity_header_names`).
pub const SENDABLE_ASSERTION_HEADERS: [&str; 2] = [ASSERTION_HEADER, POMERIUM_ASSERTION_HEADER];

/// Whether a request header is an assertion a client sent: one of `CLIENT_ASSERTION_HEADERS`
/// in any spelling a server could read as it (case, and `_` for `-` as CGI/WSGI-style servers
/// read header names).
pub fn is_client_assertion(name: &[u8]) -> bool {
    CLIENT_ASSERTION_HEADERS.iter().any(|h| {
        h.len() == name.len()
            && h.bytes().zip(name).all(|(want, got)| {
                let got = if *got == b'_' { b'-' } else { *got };
                want == got.to_ascii_lowercase()
            })
    })
}

/// The header names a route's `identity_header_names` asks for: a non-empty list of
/// `SENDABLE_ASSERTION_HEADERS` (any case), each once. `Err` names the entry at fault.
pub fn assertion_header_names(
    names: &[String],
) -> Result<Vec<&'static str>, (Option<usize>, String)> {
    if names.is_empty() {
        return Err((None, "at least one header name is required".into()));
    }
    let mut out: Vec<&'static str> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let Some(known) = SENDABLE_ASSERTION_HEADERS
            .iter()
            .find(|h| h.eq_ignore_ascii_case(name))
        else {
            return Err((
                Some(i),
                format!(
                    "{name:?} is not one of {}",
                    SENDABLE_ASSERTION_HEADERS.join(", ")
                ),
            ));
        };
        if out.contains(known) {
            return Err((Some(i), format!("{known} is listed twice")));
        }
        out.push(known);
    }
    Ok(out)
}

/// A client route's session cookie is this plus 8 hex characters of SHA-256(route name).
pub const APP_COOKIE_PREFIX: &str = "warden_app_";
/// In front of the cookie names on an https route: the browser then refuses the cookie from
/// anywhere but this host (RFC 6265bis `__Host-`).
pub const HOST_PREFIX: &str = "__Host-";

/// `warden_app_` + the first 8 hex characters of SHA-256(route name).
pub fn app_cookie_name(route_name: &str) -> String {
    let digest = Sha256::digest(route_name.as_bytes());
    let mut name = String::from(APP_COOKIE_PREFIX);
    for b in digest.iter().take(4) {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

// ---------------------------------------------------------------------------------------
// Bodies and answers
// ---------------------------------------------------------------------------------------

/// Whose upstream token or identity assertion, for which route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTokenRequest {
    pub sub: String,
    pub route: String,
}

/// A TI the MCP server refused, and why (`invalid_token` or `insufficient_scope`, with the
/// scope the server asked for).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropRequest {
    pub sub: String,
    pub route: String,
    pub access_token: String,
    pub reason: String,
    #[serde(default)]
    pub scope: String,
}

impl std::fmt::Debug for DropRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropRequest")
            .field("sub", &self.sub)
            .field("route", &self.route)
            .field("access_token", &"[redacted]")
            .field("reason", &self.reason)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A one-time app code for an app session, with the SHA-256 of the browser's nonce cookie.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSessionRequest {
    pub route: String,
    pub code: String,
    pub nonce: String,
}

impl std::fmt::Debug for AppSessionRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppSessionRequest([redacted])")
    }
}

/// An app session (its secret), for the user's TE or for its end.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppTokenRequest {
    pub route: String,
    pub session: String,
}

impl std::fmt::Debug for AppTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppTokenRequest([redacted])")
    }
}

/// The user's upstream token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTokenAnswer {
    pub access_token: String,
    pub issued_at: i64,
    #[serde(default)]
    pub expires_at: Option<i64>,
    pub granted_at: i64,
    #[serde(default)]
    pub after_refusal: bool,
}

/// Whether a drop removed the token (false: it was already gone or replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropAnswer {
    pub dropped: bool,
}

/// A fresh identity assertion.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionAnswer {
    pub assertion: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// A new app session, for the cookie, and where the browser goes back to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSessionAnswer {
    pub session: String,
    pub max_age: i64,
    pub return_to: String,
}

/// The user's TE for an app session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppTokenAnswer {
    pub access_token: String,
    pub expires_at: i64,
}

/// An app session ended (or there was none), with the ticket that ends the sign-in at the
/// issuer too (`{issuer}/app/signed-out?ticket=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSessionEndAnswer {
    pub ended: bool,
    pub ticket: Option<String>,
}

/// What a revocation covers: TEs with `gid` (a grant: RFC 7009 `/revoke`, a replayed refresh
/// token or code), `sid` (a sign-in session: sign-out, and the app sessions bound to it) or
/// `sub` issued at or before `at` (a user; signing in again afterwards works).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokedKind {
    Grant,
    Session,
    User,
}

impl RevokedKind {
    /// The kind as it is stored and travels.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokedKind::Grant => "grant",
            RevokedKind::Session => "session",
            RevokedKind::User => "user",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        [RevokedKind::Grant, RevokedKind::Session, RevokedKind::User]
            .into_iter()
            .find(|k| k.as_str() == kind)
    }
}

/// One revocation of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationEntry {
    /// The feed's sequence number: increasing, never reused.
    pub seq: i64,
    pub kind: RevokedKind,
    pub id: String,
    /// Unix seconds when it was revoked.
    pub at: i64,
    /// Unix seconds by which every TE it can cover has expired (with the filter's leeway):
    /// the entry is dropped then.
    pub expires_at: i64,
}

/// A page of the feed after a cursor: at most `MAX_REVOCATIONS_PER_PAGE` entries and
/// `MAX_ANSWER_BYTES` of JSON; `more` asks for the next page at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationPage {
    /// The cursor for the next call: the last entry's `seq` (or the one asked with).
    pub cursor: i64,
    pub entries: Vec<RevocationEntry>,
    pub more: bool,
}

/// Entries per page of the feed, at most (about what fits in `MAX_ANSWER_BYTES`).
pub const MAX_REVOCATIONS_PER_PAGE: usize = 500;

impl RevocationPage {
    /// The page after `after` from the entries that follow it in `seq` order (read one more
    /// than `MAX_REVOCATIONS_PER_PAGE` to know whether there are more), cut to fit in
    /// `MAX_ANSWER_BYTES` of JSON: the filter reads nothing larger.
    pub fn of(after: i64, mut entries: Vec<RevocationEntry>) -> Self {
        let mut more = entries.len() > MAX_REVOCATIONS_PER_PAGE;
        entries.truncate(MAX_REVOCATIONS_PER_PAGE);
        // The envelope (`{"cursor":…,"entries":[],"more":false}`) and a comma per entry.
        let mut size = 64;
        let mut keep = 0;
        for e in &entries {
            let n = serde_json::to_string(e).map_or(MAX_ANSWER_BYTES, |j| j.len() + 1);
            if size + n > MAX_ANSWER_BYTES {
                more = true;
                break;
            }
            size += n;
            keep += 1;
        }
        entries.truncate(keep);
        RevocationPage {
            cursor: entries.last().map_or(after, |e| e.seq),
            entries,
            more,
        }
    }
}

/// The query of a feed call: `after=<cursor>`.
pub fn revocations_query(after: i64) -> String {
    format!("after={after}")
}

/// The cursor of a feed call's query: exactly `after=<digits>` (0 = from the start).
pub fn parse_revocations_query(query: &str) -> Option<i64> {
    let digits = query.strip_prefix("after=")?;
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Answers larger than this are not read (a bad answer): the filter holds them whole.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The body of every refusal: `{"error", "error_description"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
    #[serde(default)]
    pub error_description: String,
}

/// The internal API's error codes (`ErrorAnswer::error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `404`: no usable upstream token for the user.
    NoToken,
    /// `409`: the provider refused the grant again right after consent.
    UpstreamRefused,
    /// `503`: the upstream provider cannot be reached.
    UpstreamUnavailable,
    /// `404`: the user no longer exists.
    UnknownUser,
    /// `404`: no such route (with that feature).
    UnknownRoute,
    /// `400`: the route does not pass identity headers.
    IdentityHeadersOff,
    /// `400`: an app code unknown, used, expired, another route's or another browser's.
    InvalidCode,
    /// `401`: the app session has ended.
    SessionExpired,
    /// `403`: the route's policy no longer lets the user in.
    AccessDenied,
    /// `400`: a body that is not the endpoint's.
    InvalidRequest,
    /// `401`: not signed with the internal credential.
    Unauthorized,
    /// `500`: the token service failed.
    ServerError,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::NoToken,
        ErrorCode::UpstreamRefused,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UnknownUser,
        ErrorCode::UnknownRoute,
        ErrorCode::IdentityHeadersOff,
        ErrorCode::InvalidCode,
        ErrorCode::SessionExpired,
        ErrorCode::AccessDenied,
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::ServerError,
    ];

    /// The code as it travels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoToken => "no_token",
            ErrorCode::UpstreamRefused => "upstream_refused",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::UnknownRoute => "unknown_route",
            ErrorCode::IdentityHeadersOff => "identity_headers_off",
            ErrorCode::InvalidCode => "invalid_code",
            ErrorCode::SessionExpired => "session_expired",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ServerError => "server_error",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::NoToken | ErrorCode::UnknownUser | ErrorCode::UnknownRoute => 404,
            ErrorCode::UpstreamRefused => 409,
            ErrorCode::UpstreamUnavailable => 503,
            ErrorCode::IdentityHeadersOff | ErrorCode::InvalidCode | ErrorCode::InvalidRequest => {
                400
            }
            ErrorCode::SessionExpired | ErrorCode::Unauthorized => 401,
            ErrorCode::AccessDenied => 403,
            ErrorCode::ServerError => 500,
        }
    }

    /// The code an answer names, if it is one of ours.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

// ---------------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------------

/// The MAC key, derived from the credential. Never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct InternalKey([u8; 32]);

impl std::fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalKey(..)")
    }
}

/// Why a call was not accepted (the token service answers `401` for every one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `WardenMAC` authorization, or one that does not parse.
    Missing,
    /// The time is too far from ours.
    Stale,
    /// The MAC does not match: another credential, or a changed call.
    BadMac,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "no WardenMAC authorization",
            AuthError::Stale => "the call's time is too far from the token service's clock",
            AuthError::BadMac => "the MAC does not match (wrong credential, or an altered call)",
        }
    }
}

/// A call the MAC vouches for: its nonce must not have been seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub nonce: String,
    pub time: i64,
}

impl InternalKey {
    /// The key for a credential: visible ASCII, at least `MIN_CREDENTIAL_BYTES`. The error
    /// never repeats the value.
    pub fn from_credential(credential: &str) -> Result<Self, String> {
        if credential.len() < MIN_CREDENTIAL_BYTES {
            return Err(format!(
                "must be at least {MIN_CREDENTIAL_BYTES} characters (the token service's internal credential file)"
            ));
        }
        if !credential.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        let mut h = Sha256::new();
        h.update(b"mcp-warden internal api v1\0");
        h.update(credential.as_bytes());
        Ok(Self(h.finalize().into()))
    }

    fn mac(&self, method: &str, path: &str, time: i64, nonce: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        // Length-prefixed: no two calls share an input.
        for field in [
            method.as_bytes(),
            path.as_bytes(),
            time.to_string().as_bytes(),
            nonce.as_bytes(),
            body,
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// The `Authorization` value for one call.
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now: i64,
        nonce: &[u8; NONCE_BYTES],
    ) -> String {
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let tag = self
            .mac(method, path, now, &nonce, body)
            .finalize()
            .into_bytes();
        format!(
            "{SCHEME} t={now}, n={nonce}, mac={}",
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks a call's `Authorization` value; the caller still refuses a nonce it has seen.
    pub fn check(
        &self,
        authorization: &str,
        method: &str,
        path: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Authenticated, AuthError> {
        let parts = parse(authorization).ok_or(AuthError::Missing)?;
        if (now - parts.time).abs() > MAX_SKEW_SECONDS {
            return Err(AuthError::Stale);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(parts.mac)
            .map_err(|_| AuthError::Missing)?;
        // `verify_slice` compares in constant time.
        self.mac(method, path, parts.time, parts.nonce, body)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadMac)?;
        Ok(Authenticated {
            nonce: parts.nonce.to_owned(),
            time: parts.time,
        })
    }
}

struct Parts<'a> {
    time: i64,
    nonce: &'a str,
    mac: &'a str,
}

/// `WardenMAC t=<digits>, n=<base64url>, mac=<base64url>`, exactly these three, in order.
fn parse(value: &str) -> Option<Parts<'_>> {
    let rest = value.strip_prefix(SCHEME)?.strip_prefix(' ')?;
    let mut fields = rest.split(", ");
    let mut field = |name: &str| fields.next()?.strip_prefix(name)?.strip_prefix('=');
    let time = field("t")?;
    let nonce = field("n")?;
    let mac = field("mac")?;
    if fields.next().is_some()
        || time.is_empty()
        || time.len() > 12
        || !time.bytes().all(|b| b.is_ascii_digit())
        || nonce.len() != (NONCE_BYTES * 4).div_ceil(3)
        || !nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(Parts {
        time: time.parse().ok()?,
        nonce,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIAL: &str = "zBeZPpy8Obod9yzT34isNbgKwF6m_JevaZ2UFro94aw";

    fn key() -> InternalKey {
        InternalKey::from_credential(CREDENTIAL).unwrap()
    }

    #[test]
    fn error_codes_travel_as_their_names_and_read_back() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!((400..600).contains(&code.status()));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn bodies_are_exactly_their_fields_and_secrets_stay_out_of_debug() {
        let r: UpstreamTokenRequest = serde_json::from_str(r#"{"sub":"a","route":"b"}"#).unwrap();
        assert_eq!(r.route, "b");
        assert!(
            serde_json::from_str::<UpstreamTokenRequest>(r#"{"sub":"a","route":"b","x":1}"#)
                .is_err()
        );
        let s = AppTokenRequest {
            route: "r".into(),
            session: "secret-value".into(),
        };
        assert!(!format!("{s:?}").contains("secret-value"));
        assert_eq!(
            app_cookie_name("demo-app"),
            format!("{APP_COOKIE_PREFIX}52926082")
        );
    }

    #[test]
    fn the_revocation_feed_travels_as_its_contract_says() {
        let page: RevocationPage = serde_json::from_str(
            r#"{"cursor":7,"entries":[{"seq":7,"kind":"session","id":"s1","at":10,"expires_at":340}],"more":false}"#,
        )
        .unwrap();
        assert_eq!(page.entries[0].kind, RevokedKind::Session);
        assert!(serde_json::from_str::<RevokedKind>(r#""device""#).is_err());
        for kind in [RevokedKind::Grant, RevokedKind::Session, RevokedKind::User] {
            assert_eq!(RevokedKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(parse_revocations_query(&revocations_query(42)), Some(42));
        for bad in [
            "",
            "after=",
            "after=-1",
            "after=1&x=2",
            "before=1",
            "after=99999999999999999999",
        ] {
            assert_eq!(parse_revocations_query(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_feed_page_is_bounded_in_entries_and_bytes() {
        let entry = |seq: i64, id: &str| RevocationEntry {
            seq,
            kind: RevokedKind::Grant,
            id: id.into(),
            at: 1_700_000_000,
            expires_at: 1_700_000_330,
        };
        let empty = RevocationPage::of(9, vec![]);
        assert_eq!((empty.cursor, empty.more), (9, false));
        let many: Vec<_> = (1..=501).map(|i| entry(i, "g")).collect();
        let page = RevocationPage::of(0, many);
        assert_eq!(
            (page.entries.len(), page.cursor, page.more),
            (500, 500, true)
        );
        let all: Vec<_> = (1..=500).map(|i| entry(i, "g")).collect();
        assert!(!RevocationPage::of(0, all).more);
        let big: Vec<_> = (1..=200).map(|i| entry(i, &"x".repeat(1000))).collect();
        let page = RevocationPage::of(0, big);
        assert!(page.more && !page.entries.is_empty());
        assert!(serde_json::to_vec(&page).unwrap().len() <= MAX_ANSWER_BYTES);
        assert_eq!(page.cursor, page.entries.last().unwrap().seq);
    }

    #[test]
    fn a_signed_call_is_accepted_and_never_contains_the_credential() {
        let value = key().authorization("POST", "/internal/v1/app-token", b"{}", 1000, &[7; 16]);
        assert!(value.starts_with("WardenMAC t=1000, n="));
        assert!(!value.contains(CREDENTIAL));
        let ok = key()
            .check(&value, "POST", "/internal/v1/app-token", b"{}", 1030)
            .unwrap();
        assert_eq!(ok.time, 1000);
        assert_eq!(ok.nonce, URL_SAFE_NO_PAD.encode([7u8; 16]));
    }

    #[test]
    fn any_change_to_the_call_or_the_key_fails_the_mac() {
        let value = key().authorization("POST", "/internal/v1/app-token", b"{}", 1000, &[7; 16]);
        let check = |k: &InternalKey, m: &str, p: &str, b: &[u8]| k.check(&value, m, p, b, 1000);
        assert_eq!(
            check(&key(), "GET", "/internal/v1/app-token", b"{}"),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            check(&key(), "POST", "/internal/v1/upstream-token", b"{}"),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            check(&key(), "POST", "/internal/v1/app-token", b"{ }"),
            Err(AuthError::BadMac)
        );
        let other = InternalKey::from_credential(&CREDENTIAL.replace('z', "y")).unwrap();
        assert_eq!(
            check(&other, "POST", "/internal/v1/app-token", b"{}"),
            Err(AuthError::BadMac)
        );
        // A changed time or nonce in the header breaks the MAC too.
        let moved = value.replace("t=1000", "t=1001");
        assert_eq!(
            key().check(&moved, "POST", "/internal/v1/app-token", b"{}", 1000),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn calls_outside_the_clock_window_are_stale() {
        let value = key().authorization("POST", "/p", b"", 1000, &[1; 16]);
        assert!(key().check(&value, "POST", "/p", b"", 1060).is_ok());
        assert!(key().check(&value, "POST", "/p", b"", 940).is_ok());
        assert_eq!(
            key().check(&value, "POST", "/p", b"", 1061),
            Err(AuthError::Stale)
        );
        assert_eq!(
            key().check(&value, "POST", "/p", b"", 939),
            Err(AuthError::Stale)
        );
    }

    #[test]
    fn the_bare_credential_and_malformed_values_are_refused() {
        for bad in [
            "",
            &format!("Bearer {CREDENTIAL}"),
            "WardenMAC",
            "WardenMAC t=1000",
            "WardenMAC t=1000, n=AAAAAAAAAAAAAAAAAAAAAA",
            "WardenMAC t=-5, n=AAAAAAAAAAAAAAAAAAAAAA, mac=AA",
            "WardenMAC t=1000, n=short, mac=AA",
            "WardenMAC t=1000, n=AAAAAAAAAAAAAAAAAAAAAA, mac=AA, x=1",
            "wardenmac t=1000, n=AAAAAAAAAAAAAAAAAAAAAA, mac=AA",
            "WardenMAC t=99999999999999999999, n=AAAAAAAAAAAAAAAAAAAAAA, mac=AA",
        ] {
            assert!(
                key().check(bad, "POST", "/p", b"", 1000).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn short_or_spaced_credentials_are_refused_without_echoing_them() {
        let e = InternalKey::from_credential("short").unwrap_err();
        assert!(!e.contains("short"));
        let spaced = format!("{CREDENTIAL} x");
        let e = InternalKey::from_credential(&spaced).unwrap_err();
        assert!(!e.contains(CREDENTIAL));
        assert!(!format!("{:?}", key()).contains(CREDENTIAL));
    }
}
