//! What the browser flows share (`sign_in`, `idp`, `upstream`, `app_sign_in`): their view of
//! the service, the answer they give (an `Outcome` and the cookies to set), why they refuse,
//! and the pending sign-in a browser is bound to. No HTTP here: `routes` words the pages and
//! formats the cookies.

use super::{constant_time_eq, hash_secret, random_token};
use crate::config::Config;
use crate::identity;
use crate::oidc::IdpError;
use crate::store::{AuthorizeGrant, Continuation, PendingFlow, PendingLimit, Store};
use crate::vault::Vault;

/// A pending sign-in (login form, consent form) stays usable this long.
pub const FLOW_TTL: i64 = 600;
/// A sign-in session (cookie) lasts this long.
pub const SESSION_TTL: i64 = 12 * 3600;

/// What a browser flow reads and writes.
pub struct Browser<'a> {
    pub config: &'a Config,
    pub store: &'a dyn Store,
    pub vault: &'a Vault,
    /// Clients identified by their metadata documents (CIMD).
    pub documents: &'a crate::client_documents::ClientDocuments,
    /// An identity provider is configured (`identity_provider.oidc`).
    pub identity_provider: bool,
    pub now: i64,
    /// The bound a new pending record must stay within (`pending_flows.max_pending`).
    pub pending: PendingLimit,
}

/// The cookies the browser presented (values, whatever their names).
#[derive(Debug, Clone, Default)]
pub struct Cookies {
    /// The sign-in session's secret.
    pub session: Option<String>,
    /// The browser-binding secret pending flows are tied to (login CSRF protection).
    pub binding: Option<String>,
    /// Marks a browser that signed in to an account before (`flows::login`).
    pub device: Option<String>,
}

/// A cookie an answer sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetCookie {
    /// The browser-binding secret, for `FLOW_TTL`.
    Binding(String),
    /// A new sign-in session's secret, for `SESSION_TTL`.
    Session(String),
    /// A device cookie for the account just signed in to, for `login::DEVICE_TTL`.
    Device(String),
}

/// What the sign-in page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInPrompt {
    pub flow_id: String,
    pub csrf: String,
    pub client_name: String,
    pub redirect_uri: String,
    /// The email of the attempt that failed, to fill in again.
    pub email: String,
    /// The last attempt's password was wrong (`401` and a message).
    pub wrong_password: bool,
}

impl SignInPrompt {
    pub(super) fn of(flow: &PendingFlow, client_name: String, email: &str, wrong: bool) -> Self {
        Self {
            flow_id: flow.id.clone(),
            csrf: flow.csrf.clone(),
            client_name,
            redirect_uri: flow.request.redirect_uri.clone(),
            email: email.to_owned(),
            wrong_password: wrong,
        }
    }
}

/// What the consent page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentPrompt {
    pub flow_id: String,
    /// Bound to the flow and to the browser's session cookie (`consent::csrf_token`).
    pub csrf: String,
    pub client_name: String,
    pub client_id: String,
    /// The operator registered the client (its name is vouched for).
    pub verified: bool,
    /// The host serving the client's metadata document (CIMD), if it is identified by one.
    pub document_host: Option<String>,
    pub redirect_uri: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub email: String,
    /// The upstream provider whose account the server needs, if any.
    pub upstream: Option<String>,
}

/// Where a browser flow leaves the browser.
#[derive(Debug)]
pub enum Outcome {
    /// The sign-in page for a pending flow.
    SignInPage(SignInPrompt),
    /// To the identity provider: through our start endpoint for this pending flow.
    IdpStart { flow_id: String },
    /// To the identity provider's authorization endpoint (a sign-in there just began).
    IdpAuthorize(String),
    /// The consent page for a pending flow waiting on the user's decision (boxed: the
    /// largest variant by far).
    ConsentPage(Box<ConsentPrompt>),
    /// Back to the MCP client with an authorization code.
    CodeToClient(String),
    /// Back to the MCP client with an error (`error`, `state`, `iss`).
    ErrorToClient(String),
    /// To the upstream provider, to connect the user's account first.
    UpstreamConnect(String),
    /// To an app: the filter's callback with an app code, or the app's page after a connect.
    BackToApp(String),
    /// An error page.
    Refused(Refusal),
    /// The store failed after the sign-in stood: an internal error, its cookies still set.
    Failed(anyhow::Error),
}

/// Why a browser flow stops at an error page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The authorization request cannot be answered at the client's redirect URI.
    BadRequest(String),
    /// The request's client is unknown, or its metadata document cannot be had or is invalid
    /// (`invalid_client`, never answered at a redirect URI).
    InvalidClient(String),
    /// The pending flow is unknown, used, expired, or no longer applies.
    Expired,
    /// The pending flow was started in another browser (or its cookie is missing).
    OtherBrowser,
    /// The pending records are at `pending_flows.max_pending`.
    PendingFull,
    /// The sign-in form's CSRF token is wrong.
    SignInForged,
    /// Too many wrong passwords (per pending flow, or the account's throttle).
    TooManyAttempts,
    /// The consent form's CSRF token or session is wrong.
    ConsentForged,
    /// The consent form came without a decision.
    NoDecision,
    /// The identity provider's callback names no sign-in of ours (state).
    IdpUnknown,
    /// The user declined at the identity provider.
    IdpDeclined { provider: String },
    /// The identity provider answered with an error code (sanitised).
    IdpError { provider: String, code: String },
    /// The identity provider sent no code.
    IdpNoCode { provider: String },
    /// The identity provider could not be reached or its answer failed a check.
    IdpFailed { provider: String, error: IdpError },
    /// `route` names no app.
    UnknownApp,
    /// The page to return to is not under the app.
    ForeignReturnTo,
    /// The app sign-in link has no valid nonce.
    IncompleteLink,
    /// A connect's `redirect_url` is not a page of an app.
    NotAnAppPage,
    /// A pending connect's page to return to is no longer allowed.
    ReturnNotAllowed,
    /// `route` names no MCP server.
    UnknownServer,
    /// The app's policy refuses the user.
    AppDenied { email: String, app: String },
    /// The server's policy refuses the user.
    ServerDenied { email: String, server: String },
    /// The server's upstream OAuth could not be discovered (or the gateway registered) now.
    UpstreamUnavailable { server: String, reason: String },
}

/// An outcome and the cookies that go with it (set in this order).
#[derive(Debug)]
pub struct Answer {
    pub outcome: Outcome,
    pub cookies: Vec<SetCookie>,
}

impl Answer {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            cookies: Vec::new(),
        }
    }

    pub(super) fn set(mut self, cookie: SetCookie) -> Self {
        self.cookies.push(cookie);
        self
    }
}

/// A step that answered already, or hands over work (a password check, a call to a
/// provider) to do before the flow's next step.
#[derive(Debug)]
pub enum Step<T> {
    Answer(Answer),
    Next(T),
}

/// How a flow stops early inside this module family: refused (an answer), or failed.
pub(super) enum Halt {
    Refused(Refusal),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Halt {
    fn from(e: anyhow::Error) -> Self {
        Halt::Failed(e)
    }
}

impl From<crate::store::StoreError> for Halt {
    fn from(e: crate::store::StoreError) -> Self {
        Halt::Failed(e.into())
    }
}

impl From<Refusal> for Halt {
    fn from(r: Refusal) -> Self {
        Halt::Refused(r)
    }
}

/// A refusal becomes the answer (no cookies); a failure stays an error.
pub(super) fn settle(r: Result<Answer, Halt>) -> anyhow::Result<Answer> {
    match r {
        Ok(a) => Ok(a),
        Err(Halt::Refused(r)) => Ok(Answer::new(Outcome::Refused(r))),
        Err(Halt::Failed(e)) => Err(e),
    }
}

/// `settle` for a step.
pub(super) fn settle_step<T>(r: Result<Step<T>, Halt>) -> anyhow::Result<Step<T>> {
    match r {
        Ok(s) => Ok(s),
        Err(Halt::Refused(r)) => Ok(Step::Answer(Answer::new(Outcome::Refused(r)))),
        Err(Halt::Failed(e)) => Err(e),
    }
}

/// The browser's binding secret: the one it already carries (so several tabs can sign in at
/// once), or a fresh one.
pub fn binding(existing: Option<String>) -> String {
    existing
        .filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(random_token)
}

/// A pending flow continues only in the browser that started it: `bound` is the SHA-256 of
/// the binding secret the flow was started with.
pub fn check_binding(bound: &str, cookie: Option<&str>) -> Result<(), Refusal> {
    let ok = match cookie {
        Some(c) if !bound.is_empty() => {
            constant_time_eq(hash_secret(c).as_bytes(), bound.as_bytes())
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        tracing::info!("pending flow presented without its browser cookie");
        Err(Refusal::OtherBrowser)
    }
}

pub(super) fn pending_full() -> Refusal {
    tracing::warn!("sign-in refused: too many sign-ins are pending");
    Refusal::PendingFull
}

/// Stores a pending flow within `pending_flows.max_pending`.
pub(super) fn store_flow(b: &Browser<'_>, flow: &PendingFlow) -> Result<(), Halt> {
    if b.store.insert_flow(flow, b.pending)? {
        Ok(())
    } else {
        Err(pending_full().into())
    }
}

/// Whether the user behind a key (email, or `{iss}#{sub}`) still exists.
pub(super) fn user_exists(b: &Browser<'_>, key: &str) -> anyhow::Result<bool> {
    Ok(identity::resolve(b.config, b.store, key)?.is_some())
}

/// The email a page shows for a user's key.
pub(super) fn shown_email(b: &Browser<'_>, key: &str) -> String {
    identity::resolve(b.config, b.store, key)
        .ok()
        .flatten()
        .map(|i| i.email)
        .unwrap_or_else(|| key.to_owned())
}

/// Not signed in: a pending flow bound to this browser, then the sign-in page, or straight
/// to the identity provider when it is the only way to sign in.
pub(super) fn begin_sign_in(
    b: &Browser<'_>,
    request: AuthorizeGrant,
    next: Option<Continuation>,
    binding: &str,
    client_name: &str,
) -> Result<Outcome, Halt> {
    let flow = PendingFlow {
        id: random_token(),
        csrf: random_token(),
        request,
        expires_at: b.now + FLOW_TTL,
        browser: hash_secret(binding),
        user: None,
        next,
    };
    store_flow(b, &flow)?;
    if b.identity_provider && b.config.identity_provider.local.users.is_empty() {
        return Ok(Outcome::IdpStart { flow_id: flow.id });
    }
    Ok(Outcome::SignInPage(SignInPrompt::of(
        &flow,
        client_name.to_owned(),
        "",
        false,
    )))
}

#[cfg(test)]
pub(super) mod testing {
    //! A service to drive the flows with: a real SQLite store in memory, a vault, a config.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use super::*;
    use crate::flows::authorize::Params;
    use crate::store::{Session, Sessions, SqliteStore};

    pub const ISSUER: &str = "http://127.0.0.1:9100";
    pub const EMAIL: &str = "alice@example.com";
    /// Signs in with a password too, but may not use the app.
    pub const BOB: &str = "bob@example.com";
    pub const NOW: i64 = 1_000_000;

    /// The deployment the flow tests sign in to.
    pub struct Setup {
        /// Alice signs in with a password (else only at the identity provider).
        pub local_users: bool,
        /// An identity provider is configured.
        pub oidc: bool,
        pub max_pending: u64,
    }

    impl Default for Setup {
        fn default() -> Self {
            Self {
                local_users: true,
                oidc: false,
                max_pending: 10_000,
            }
        }
    }

    /// Two local users; an MCP server, one needing an upstream account, one nobody may use;
    /// an app only Alice may use; a pre-registered client (consent asked) and one that skips
    /// consent.
    pub fn yaml(setup: &Setup) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = a.hash_password(b"pw", &salt).unwrap().to_string();
        let users = if setup.local_users {
            format!(
                "\n      - {{email: {EMAIL}, name: Alice, password_hash: \"{hash}\"}}\
                 \n      - {{email: {BOB}, name: Bob, password_hash: \"{hash}\"}}"
            )
        } else {
            " []".to_owned()
        };
        let oidc = if setup.oidc {
            "  oidc: {issuer: \"http://127.0.0.1:9400\", client_id: sso, display_name: Example SSO}\n"
        } else {
            ""
        };
        let max_pending = setup.max_pending;
        format!(
            r#"
authorization_server:
  issuer: "{ISSUER}"
  pending_flows: {{max_pending: {max_pending}}}
identity_provider:
{oidc}  local:
    users:{users}
clients:
  - {{client_id: cli, client_name: CLI, redirect_uris: ["http://127.0.0.1/cb"]}}
  - {{client_id: trusted, redirect_uris: ["http://127.0.0.1/cb"], skip_consent: true}}
routes:
  - name: srv
    from: http://127.0.0.1:9000
    prefix: /mcp
    to: http://127.0.0.1:9200/mcp
    mcp: {{server: {{}}}}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
  - name: gh
    from: http://127.0.0.1:9001
    prefix: /mcp
    to: http://127.0.0.1:9201/mcp
    mcp:
      server:
        upstream_oauth2:
          client_id: up
          client_secret: up-secret
          scopes: [repo]
          endpoint: {{auth_url: "http://127.0.0.1:9301/authorize", token_url: "http://127.0.0.1:9301/token"}}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
  - name: admin
    from: http://127.0.0.1:9002
    prefix: /mcp
    to: http://127.0.0.1:9202/mcp
    mcp: {{server: {{}}}}
    policy: {{allow: {{and: [{{email: {{is: nobody@example.com}}}}]}}}}
  - name: app
    from: https://app.example.com
    prefix: /ui
    to: http://127.0.0.1:3000
    mcp: {{client: {{}}}}
    policy: {{allow: {{and: [{{email: {{is: {EMAIL}}}}}]}}}}
"#
        )
    }

    pub struct Service {
        pub config: Config,
        pub store: Arc<SqliteStore>,
        pub vault: Vault,
        pub documents: crate::client_documents::ClientDocuments,
        pub identity_provider: bool,
    }

    impl Service {
        pub fn new() -> Self {
            Self::with(&Setup::default())
        }

        pub fn with(setup: &Setup) -> Self {
            let config = Config::from_yaml(&yaml(setup)).unwrap();
            let store = Arc::new(SqliteStore::in_memory().unwrap());
            let vault = Vault::new(&config, store.clone(), &[7u8; 32], &[]).unwrap();
            let documents = crate::client_documents::ClientDocuments::new(
                &config.authorization_server.client_id_metadata_documents,
                crate::outbound::Outbound::default().guarded(false).unwrap(),
            );
            Self {
                documents,
                identity_provider: config.identity_provider.oidc.is_some(),
                config,
                store,
                vault,
            }
        }

        pub fn at(&self, now: i64) -> Browser<'_> {
            Browser {
                config: &self.config,
                store: self.store.as_ref(),
                vault: &self.vault,
                documents: &self.documents,
                identity_provider: self.identity_provider,
                now,
                pending: PendingLimit {
                    max: self.config.authorization_server.pending_flows.max_pending,
                    now,
                },
            }
        }

        pub fn browser(&self) -> Browser<'_> {
            self.at(NOW)
        }

        /// A live sign-in session of `user`: its cookie value.
        pub fn session_of(&self, user: &str) -> String {
            let secret = random_token();
            let session = Session {
                sid: super::super::random_id(),
                user: user.to_owned(),
                created_at: NOW,
                expires_at: NOW + SESSION_TTL,
            };
            self.store
                .insert_session(&hash_secret(&secret), &session)
                .unwrap();
            secret
        }
    }

    pub fn params(pairs: &[(&str, &str)]) -> Params {
        Params::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// A browser carrying a binding secret and, optionally, a session.
    pub fn cookies(binding: &str, session: Option<&str>) -> Cookies {
        Cookies {
            session: session.map(str::to_owned),
            binding: Some(binding.to_owned()),
            device: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::testing::*;
    use super::*;
    use crate::store::SignIns;

    fn grant() -> AuthorizeGrant {
        AuthorizeGrant {
            client_id: "cli".into(),
            redirect_uri: "http://127.0.0.1/cb".into(),
            redirect_uri_explicit: true,
            state: None,
            code_challenge: "c".into(),
            resource: "http://127.0.0.1:9000/mcp".into(),
            scope: String::new(),
        }
    }

    #[test]
    fn binding_keeps_a_well_formed_secret_only() {
        let fresh = binding(None);
        assert_eq!(fresh.len(), 43);
        assert_eq!(binding(Some(fresh.clone())), fresh);
        assert_ne!(binding(Some("short".into())), "short");
        let bound = hash_secret(&fresh);
        assert!(check_binding(&bound, Some(&fresh)).is_ok());
        assert_eq!(
            check_binding(&bound, Some("other")),
            Err(Refusal::OtherBrowser)
        );
        assert_eq!(check_binding(&bound, None), Err(Refusal::OtherBrowser));
        assert_eq!(check_binding("", Some(&fresh)), Err(Refusal::OtherBrowser));
    }

    #[test]
    fn a_sign_in_shows_the_page_or_goes_to_the_only_identity_provider() {
        let svc = Service::new();
        let b = svc.browser();
        match begin_sign_in(&b, grant(), None, "secret", "CLI") {
            Ok(Outcome::SignInPage(p)) => {
                assert_eq!(p.client_name, "CLI");
                assert!(!p.wrong_password);
                let flow = svc.store.flow(&p.flow_id, NOW).unwrap().unwrap();
                assert_eq!(flow.browser, hash_secret("secret"));
                assert_eq!(flow.expires_at, NOW + FLOW_TTL);
            }
            other => panic!("expected the sign-in page, got {:?}", other.ok()),
        }
        // With local users, the identity provider is a button on the page.
        let svc = Service::with(&Setup {
            oidc: true,
            ..Setup::default()
        });
        assert!(matches!(
            begin_sign_in(&svc.browser(), grant(), None, "s", "CLI"),
            Ok(Outcome::SignInPage(_))
        ));
        // Without: straight there.
        let svc = Service::with(&Setup {
            oidc: true,
            local_users: false,
            ..Setup::default()
        });
        match begin_sign_in(&svc.browser(), grant(), None, "s", "CLI") {
            Ok(Outcome::IdpStart { flow_id }) => {
                assert!(svc.store.flow(&flow_id, NOW).unwrap().is_some())
            }
            other => panic!("expected the identity provider, got {:?}", other.ok()),
        }
    }

    #[test]
    fn pending_records_are_bounded() {
        let svc = Service::with(&Setup {
            max_pending: 1,
            ..Setup::default()
        });
        let b = svc.browser();
        assert!(begin_sign_in(&b, grant(), None, "s", "CLI").is_ok());
        assert!(matches!(
            begin_sign_in(&b, grant(), None, "s", "CLI"),
            Err(Halt::Refused(Refusal::PendingFull))
        ));
    }
}
