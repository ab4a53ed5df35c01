//! The token service's Prometheus metrics (README, "Token service metrics"): the registry and
//! its typed families, with one small method per thing the service counts. A leaf: the code
//! that counts calls in, this imports nothing of the crate.
//!
//! Every label value is a closed enum or a bounded string (an axum route template, an HTTP
//! method from a fixed list): never a user, a client id, a token or a URL, so the series stay
//! few and hold no secret. Counters are atomics; a family takes the crate's read lock to
//! find its series.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The path Prometheus scrapes, on the internal listener.
pub const METRICS_PATH: &str = "/metrics";

/// What `/metrics` answers with: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A closed set of label values, each written as its `as_str`.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_values!(
    /// How a user proved who they are.
    SignInMethod {
        Password => "password",
        IdentityProvider => "identity_provider",
        IdJag => "id_jag",
    }
);

label_values!(
    /// Whether a sign-in proved who the user is.
    SignInResult { Success => "success", Failure => "failure" }
);

label_values!(
    /// `/token`'s `grant_type`, those the service knows by name.
    GrantType {
        AuthorizationCode => "authorization_code",
        RefreshToken => "refresh_token",
        ClientCredentials => "client_credentials",
        JwtBearer => "jwt_bearer",
        Other => "other",
    }
);

label_values!(
    /// A `/token` answer: issued, or the OAuth error code it refused with.
    GrantResult {
        Issued => "issued",
        InvalidGrant => "invalid_grant",
        InvalidClient => "invalid_client",
        InvalidRequest => "invalid_request",
        InvalidScope => "invalid_scope",
        InvalidTarget => "invalid_target",
        UnauthorizedClient => "unauthorized_client",
        UnsupportedGrantType => "unsupported_grant_type",
        TemporarilyUnavailable => "temporarily_unavailable",
        ServerError => "server_error",
    }
);

label_values!(
    /// A dynamic client registration's answer.
    RegistrationResult {
        Registered => "registered",
        Refused => "refused",
        RateLimited => "rate_limited",
    }
);

label_values!(
    /// What the internal upstream-token endpoint answered the filter.
    UpstreamLookupResult {
        Hit => "hit",
        Refreshed => "refreshed",
        NoToken => "no_token",
        Refused => "refused",
        Unavailable => "unavailable",
    }
);

label_values!(
    /// What an upstream provider answered a refresh.
    UpstreamRefreshResult {
        Refreshed => "refreshed",
        Refused => "refused",
        Unavailable => "unavailable",
    }
);

label_values!(
    /// Which call to the organisation's identity provider.
    IdentityProviderCall {
        Discovery => "discovery",
        Jwks => "jwks",
        Token => "token",
        Userinfo => "userinfo",
        Recheck => "recheck",
    }
);

label_values!(
    /// What the identity provider answered.
    CallResult { Ok => "ok", Refused => "refused", Unavailable => "unavailable" }
);

label_values!(
    /// Which listener a request came in on.
    Listener { Public => "public", Internal => "internal" }
);

label_values!(
    /// A store error that reached an HTTP answer: the database unreachable (`503`), or
    /// anything else (`500`).
    StoreErrorKind { Unavailable => "unavailable", Other => "other" }
);

label_values!(
    StatusClass {
        Informational => "1xx",
        Success => "2xx",
        Redirection => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
    }
);

impl GrantType {
    /// The `grant_type` parameter's value; anything unknown is `Other`.
    pub fn of_parameter(value: Option<&str>) -> Self {
        match value {
            Some("authorization_code") => GrantType::AuthorizationCode,
            Some("refresh_token") => GrantType::RefreshToken,
            Some("client_credentials") => GrantType::ClientCredentials,
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => GrantType::JwtBearer,
            _ => GrantType::Other,
        }
    }
}

impl GrantResult {
    /// A refusal's OAuth error code; one outside the closed set (none is answered today)
    /// counts as `server_error` rather than growing the label space.
    pub fn refused(code: &str) -> Self {
        GrantResult::ALL
            .iter()
            .copied()
            .find(|r| *r != GrantResult::Issued && r.as_str() == code)
            .unwrap_or(GrantResult::ServerError)
    }
}

impl StatusClass {
    fn of(status: u16) -> Self {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SignInLabels {
    method: SignInMethod,
    result: SignInResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GrantLabels {
    grant_type: GrantType,
    result: GrantResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RegistrationLabels {
    result: RegistrationResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LookupLabels {
    result: UpstreamLookupResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefreshLabels {
    result: UpstreamRefreshResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IdentityProviderLabels {
    call: IdentityProviderCall,
    result: CallResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StoreErrorLabels {
    kind: StoreErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    listener: Listener,
    /// The route template axum matched (`/authorize`, `/.warden/mcp/…`), or `unmatched`.
    route: String,
    method: &'static str,
    status: StatusClass,
}

/// 1 ms … 10 s: a cached answer takes about a millisecond, a password check or a slow
/// provider seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// What the revocation feed holds at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedState {
    /// Entries still covering a valid TE.
    pub entries: i64,
    /// Seconds since the newest of them was appended; 0 when there is none.
    pub newest_age_seconds: i64,
}

/// The service's metrics, shared by every handler (`AppState::metrics`) and by the vault and
/// the identity provider client.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sign_ins: Family<SignInLabels, Counter>,
    token_grants: Family<GrantLabels, Counter>,
    client_registrations: Family<RegistrationLabels, Counter>,
    upstream_token_lookups: Family<LookupLabels, Counter>,
    upstream_refreshes: Family<RefreshLabels, Counter>,
    identity_provider_calls: Family<IdentityProviderLabels, Counter>,
    store_errors: Family<StoreErrorLabels, Counter>,
    revocation_feed_entries: Gauge,
    revocation_feed_newest_age: Gauge,
    http_request_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            sign_ins: Family::default(),
            token_grants: Family::default(),
            client_registrations: Family::default(),
            upstream_token_lookups: Family::default(),
            upstream_refreshes: Family::default(),
            identity_provider_calls: Family::default(),
            store_errors: Family::default(),
            revocation_feed_entries: Gauge::default(),
            revocation_feed_newest_age: Gauge::default(),
            http_request_duration: Family::new_with_constructor(duration_histogram),
        };
        let registry = &mut m.registry;
        // Counters get their `_total` from the encoder.
        registry.register(
            "warden_sign_ins",
            "Sign-ins by method and result",
            m.sign_ins.clone(),
        );
        registry.register(
            "warden_token_grants",
            "Token endpoint answers by grant type and result (issued or the OAuth error code)",
            m.token_grants.clone(),
        );
        registry.register(
            "warden_client_registrations",
            "Dynamic client registrations by result",
            m.client_registrations.clone(),
        );
        registry.register(
            "warden_upstream_token_lookups",
            "The internal upstream-token endpoint's answers by result",
            m.upstream_token_lookups.clone(),
        );
        registry.register(
            "warden_upstream_refreshes",
            "Refresh calls to upstream providers by result",
            m.upstream_refreshes.clone(),
        );
        registry.register(
            "warden_identity_provider_calls",
            "Calls to the organisation's identity provider by call and result",
            m.identity_provider_calls.clone(),
        );
        registry.register(
            "warden_store_errors",
            "Store errors that reached an HTTP answer, by kind",
            m.store_errors.clone(),
        );
        registry.register(
            "warden_revocation_feed_entries",
            "Entries in the revocation feed still covering a valid token, at scrape time",
            m.revocation_feed_entries.clone(),
        );
        registry.register(
            "warden_revocation_feed_newest_age_seconds",
            "Seconds since the newest revocation feed entry was appended (0 when empty), at scrape time",
            m.revocation_feed_newest_age.clone(),
        );
        registry.register(
            "warden_http_request_duration_seconds",
            "HTTP request duration by listener, route template, method and status class",
            m.http_request_duration.clone(),
        );
        m
    }

    pub fn sign_in(&self, method: SignInMethod, succeeded: bool) {
        let result = if succeeded {
            SignInResult::Success
        } else {
            SignInResult::Failure
        };
        self.sign_ins
            .get_or_create(&SignInLabels { method, result })
            .inc();
    }

    pub fn token_grant(&self, grant_type: GrantType, result: GrantResult) {
        self.token_grants
            .get_or_create(&GrantLabels { grant_type, result })
            .inc();
    }

    pub fn client_registration(&self, result: RegistrationResult) {
        self.client_registrations
            .get_or_create(&RegistrationLabels { result })
            .inc();
    }

    pub fn upstream_token_lookup(&self, result: UpstreamLookupResult) {
        self.upstream_token_lookups
            .get_or_create(&LookupLabels { result })
            .inc();
    }

    pub fn upstream_refresh(&self, result: UpstreamRefreshResult) {
        self.upstream_refreshes
            .get_or_create(&RefreshLabels { result })
            .inc();
    }

    pub fn identity_provider_call(&self, call: IdentityProviderCall, result: CallResult) {
        self.identity_provider_calls
            .get_or_create(&IdentityProviderLabels { call, result })
            .inc();
    }

    pub fn store_error(&self, kind: StoreErrorKind) {
        self.store_errors
            .get_or_create(&StoreErrorLabels { kind })
            .inc();
    }

    fn request_done(
        &self,
        listener: Listener,
        route: String,
        method: &str,
        status: u16,
        secs: f64,
    ) {
        let labels = HttpLabels {
            listener,
            route,
            method: bounded_method(method),
            status: StatusClass::of(status),
        };
        self.http_request_duration
            .get_or_create(&labels)
            .observe(secs);
    }

    /// The text Prometheus scrapes, with the revocation feed as `feed` says now.
    pub fn encode(&self, feed: FeedState) -> Result<String, std::fmt::Error> {
        self.revocation_feed_entries.set(feed.entries);
        self.revocation_feed_newest_age
            .set(feed.newest_age_seconds.max(0));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The method as a label: the ones the service routes, else `other` (a client chooses it).
fn bounded_method(method: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

/// A middleware (`axum::middleware::from_fn_with_state`, on both routers): the request's
/// duration under its route template, and the store error its answer reports
/// (`StoreErrorKind` in the response's extensions, set where errors become answers).
pub async fn track(
    State((metrics, listener)): State<(Arc<Metrics>, Listener)>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // The template, never the raw path: ids and tokens in paths stay out of the labels.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let resp = next.run(req).await;
    if let Some(kind) = resp.extensions().get::<StoreErrorKind>() {
        metrics.store_error(*kind);
    }
    metrics.request_done(
        listener,
        route,
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_unknown_error_code_counts_as_server_error() {
        assert_eq!(
            GrantResult::refused("invalid_grant"),
            GrantResult::InvalidGrant
        );
        assert_eq!(GrantResult::refused("issued"), GrantResult::ServerError);
        assert_eq!(GrantResult::refused("made_up"), GrantResult::ServerError);
    }

    #[test]
    fn counters_are_written_with_their_labels() {
        let m = Metrics::new();
        m.sign_in(SignInMethod::Password, false);
        m.token_grant(
            GrantType::of_parameter(Some("refresh_token")),
            GrantResult::Issued,
        );
        let text = m.encode(FeedState::default()).unwrap();
        assert!(
            text.contains("warden_sign_ins_total{method=\"password\",result=\"failure\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "warden_token_grants_total{grant_type=\"refresh_token\",result=\"issued\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("warden_revocation_feed_entries 0\n"),
            "{text}"
        );
    }

    #[test]
    fn a_method_outside_the_list_is_other() {
        assert_eq!(bounded_method("GET"), "GET");
        assert_eq!(bounded_method("BREW"), "other");
    }
}
