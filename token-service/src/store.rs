//! Persistence: a `Store` trait (synchronous; callers run it on the blocking pool) and its
//! SQLite implementation. Codes, refresh tokens and session cookies are stored only as
//! SHA-256 digests.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::config::TokenEndpointAuthMethod;
// revocation feed
pub use warden_core::internal_api::{RevocationEntry, RevokedKind};

/// A validated authorization request: everything the code will be bound to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthorizeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    /// Whether the request named `redirect_uri` (then `/token` must repeat it, RFC 6749 §4.1.3).
    pub redirect_uri_explicit: bool,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub scope: String,
}

/// A client registered through DCR (pre-registered clients live in the config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredClient {
    pub client_id: String,
    #[serde(default)]
    pub client_name: Option<String>,
    /// SHA-256 of the secret (base64url); `None` for public clients.
    #[serde(default)]
    pub secret_hash: Option<String>,
    pub token_endpoint_auth_method: TokenEndpointAuthMethod,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    #[serde(default)]
    pub application_type: Option<String>,
    pub created_at: i64,
}

/// An authorization request waiting for the user to sign in, or (with `user` set) for the
/// signed-in user to approve the client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingFlow {
    pub id: String,
    pub csrf: String,
    pub request: AuthorizeGrant,
    pub expires_at: i64,
    /// SHA-256 of the browser-binding cookie (`warden_flow`) of the browser that started
    /// the flow; the forms that continue it must come with that cookie.
    #[serde(default)]
    pub browser: String,
    /// Set once signed in: the flow then waits for consent from this user and session.
    #[serde(default)]
    pub user: Option<FlowUser>,
    /// Not an MCP client's authorization: what to do once the user is signed in. `request`
    /// is then a stand-in that can never become a code (no PKCE challenge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Continuation>,
}

/// What a sign-in continues with when it is not an MCP client's authorization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Continuation {
    /// Browser sign-in on an `mcp: client` route: issue an app code, back to the app.
    AppSignIn {
        route: String,
        return_to: String,
        /// SHA-256 (hex) of the nonce cookie the filter gave the browser that asked.
        #[serde(default)]
        nonce: String,
    },
    /// Connect an upstream account (`/mcp/connect`), then redirect to `redirect_url`.
    Connect { route: String, redirect_url: String },
}

/// A one-time app code: the filter trades it for an app session (stored hashed, 60 s).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppCode {
    /// The `mcp: client` route's name.
    pub route: String,
    pub user: String,
    /// The issuer session the app session is bound to.
    pub sid: String,
    pub return_to: String,
    /// The sign-in's nonce digest: only the browser holding the nonce cookie may redeem it.
    #[serde(default)]
    pub nonce: String,
    /// When the issuer session ends: the app session ends then at the latest.
    pub session_expires_at: i64,
    pub expires_at: i64,
}

/// A browser's session on an `mcp: client` route (the cookie value is stored hashed).
#[derive(Debug, Clone, PartialEq)]
pub struct AppSession {
    pub route: String,
    pub user: String,
    pub sid: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowUser {
    /// The user's key (`identity` module): the email, or `{iss}#{sub}` for the identity provider.
    #[serde(alias = "email")]
    pub user: String,
    pub sid: String,
}

/// A sign-in session. `sid` is public (it goes into tokens); the cookie value is not stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub sid: String,
    /// The user's key (`identity` module).
    pub user: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthCode {
    pub request: AuthorizeGrant,
    #[serde(alias = "email")]
    pub user: String,
    pub sid: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CodeLookup {
    /// Not redeemed yet (redeeming is `Store::redeem_code`).
    Fresh(AuthCode),
    /// Already redeemed; `grant_id` names what it produced so it can be revoked.
    Reused {
        grant_id: Option<String>,
    },
    Missing,
}

/// What became of a code presented for redemption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redemption {
    /// This presentation redeemed it.
    Redeemed,
    /// Another presentation redeemed it first; what that one produced is now revoked.
    Replayed,
    Missing,
}

/// What a redeemed code produced: the root of a refresh-token family.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub id: String,
    pub client_id: String,
    pub user: String,
    pub sid: String,
    pub resource: String,
    pub scope: String,
    pub created_at: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefreshToken {
    pub token_hash: String,
    pub grant_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used: bool,
}

/// A user's token for an upstream provider route, sealed by the vault (the store never sees
/// it in the clear). A row without `access_token` is a dropped one that still remembers the
/// scopes a server asked for and a refusal hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamRecord {
    pub user: String,
    pub route: String,
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    /// When the current access token was obtained (code exchange or refresh).
    pub issued_at: i64,
    pub expires_at: Option<i64>,
    /// When the user last granted access at the provider (code exchange).
    pub granted_at: i64,
    pub scope: String,
    /// Scopes an MCP server asked for (`insufficient_scope`), added to the next consent.
    pub extra_scope: String,
    /// Until then, a lookup answers "refused" rather than "no token" (loop breaker).
    pub refused_until: Option<i64>,
    /// When an MCP server last refused this row's token.
    pub last_refused_at: Option<i64>,
    /// The current grant re-ran consent because a server had refused the previous token.
    pub after_refusal: bool,
    /// Counts the row's token writes: a refresh or drop applies only to the version it read
    /// (read from the store; `put_upstream_token` ignores it).
    pub version: i64,
}

/// One row's sealed values moved to the current key (`Store::reseal_upstream_tokens`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reseal {
    pub user: String,
    pub route: String,
    /// The row's version and values as read.
    pub version: i64,
    pub old_access_token: Option<Vec<u8>>,
    pub old_refresh_token: Option<Vec<u8>>,
    /// The same tokens, sealed with the current key.
    pub access_token: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
}

/// An upstream consent in progress: the provider sends the browser back with `state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamFlow {
    /// The MCP client's authorization request, answered once the upstream step is done.
    pub request: AuthorizeGrant,
    #[serde(alias = "email")]
    pub user: String,
    pub sid: String,
    /// SHA-256 of the browser-binding cookie.
    pub browser: String,
    pub route: String,
    /// The PKCE verifier, sealed by the vault (base64url).
    pub pkce_verifier: String,
    pub expires_at: i64,
    /// A connect from an app (`/mcp/connect`): redirect here afterwards instead of answering
    /// `request` (a stand-in then, never turned into a code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
}

/// A sign-in at the identity provider in progress: the provider sends the browser back with
/// `state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdpLogin {
    /// The pending authorization flow this sign-in continues.
    pub flow_id: String,
    /// SHA-256 of the browser-binding cookie.
    pub browser: String,
    pub nonce: String,
    /// The PKCE verifier, sealed by the vault (base64url).
    pub pkce_verifier: String,
    pub expires_at: i64,
}

/// A user of the identity provider as of their last sign-in: the claims their TEs carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpUserRecord {
    /// `{iss}#{sub}`.
    pub key: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
    pub updated_at: i64,
}

/// The bound on pending records: sign-ins (`pending_flows`), upstream connects
/// (`upstream_flows`) and identity-provider sign-ins (`idp_logins`), counted together. An
/// insert that would pass `max` is refused (expired rows are dropped first to make room), so
/// the tables never hold more than `max` rows between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimit {
    pub max: u64,
    pub now: i64,
}

/// How long records about registered clients are kept (`authorization_server.registration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A client that never obtained a grant is deleted this long after registering.
    pub unused_client_ttl: i64,
    /// A client is deleted once none of its grants has been alive for this long.
    pub idle_client_ttl: i64,
}

pub trait Store: Send + Sync + 'static {
    /// Stores a DCR client unless `max_unused` registered clients are still waiting for
    /// their first grant (then false: nothing stored).
    fn insert_client(&self, client: &StoredClient, max_unused: u64) -> anyhow::Result<bool>;
    fn client(&self, client_id: &str) -> anyhow::Result<Option<StoredClient>>;

    /// Stores a flow unless the pending records are at `limit` (then `false`, nothing stored).
    fn insert_flow(&self, flow: &PendingFlow, limit: PendingLimit) -> anyhow::Result<bool>;
    fn flow(&self, id: &str, now: i64) -> anyhow::Result<Option<PendingFlow>>;
    /// Counts a failed sign-in against the flow and returns the new count.
    fn record_failed_login(&self, id: &str) -> anyhow::Result<u32>;
    /// Returns false when the flow was already gone (it is single use).
    fn delete_flow(&self, id: &str) -> anyhow::Result<bool>;

    fn insert_session(&self, secret_hash: &str, session: &Session) -> anyhow::Result<()>;
    fn session(&self, secret_hash: &str, now: i64) -> anyhow::Result<Option<Session>>;
    /// Whether the session `sid` is unexpired and not revoked.
    fn session_live(&self, sid: &str, now: i64) -> anyhow::Result<bool>;

    /// The scopes `email` approved for this client and resource, if any.
    fn consent(
        &self,
        email: &str,
        client_id: &str,
        resource: &str,
    ) -> anyhow::Result<Option<String>>;
    /// Stores (replaces) the approved scope set for this user, client and resource.
    fn record_consent(
        &self,
        email: &str,
        client_id: &str,
        resource: &str,
        scope: &str,
        now: i64,
    ) -> anyhow::Result<()>;

    /// Reserves a sign-in attempt in `bucket` before its password is checked, unless the
    /// bucket already holds `limit` failures and attempts in flight since `since`; counting
    /// and reserving are one transaction, so parallel attempts cannot all pass. Returns
    /// the reservation's id, or `None` when the bucket is locked.
    fn reserve_login_attempt(
        &self,
        bucket: &str,
        since: i64,
        limit: u32,
        now: i64,
    ) -> anyhow::Result<Option<i64>>;
    /// The reserved attempt failed: it now counts as a failure at `now`.
    fn fail_login_attempt(&self, id: i64, now: i64) -> anyhow::Result<()>;
    /// Drops a reservation (its attempt succeeded, or never reached the check); with
    /// `clear_failures`, the bucket's failures are forgotten too.
    fn end_login_attempt(&self, id: i64, bucket: &str, clear_failures: bool) -> anyhow::Result<()>;

    /// Records a device cookie (by digest) issued to a browser that signed in as `account`.
    fn insert_device(
        &self,
        secret_hash: &str,
        account: &str,
        expires_at: i64,
    ) -> anyhow::Result<()>;
    /// The account a device cookie was issued for, while it is valid.
    fn device_account(&self, secret_hash: &str, now: i64) -> anyhow::Result<Option<String>>;
    fn delete_device(&self, secret_hash: &str) -> anyhow::Result<()>;

    fn insert_code(&self, code_hash: &str, code: &AuthCode) -> anyhow::Result<()>;
    /// The code and whether it was redeemed; changes nothing.
    fn code(&self, code_hash: &str) -> anyhow::Result<CodeLookup>;
    /// Redeems a code in one transaction: marks it used and records what it produced, the
    /// grant and its first refresh token (`None` burns the code after a failed check). A
    /// code already used issues nothing, and the grant it produced is revoked in the same
    /// transaction, so no presentation can slip between "used" and "what it produced".
    /// A grant revoked so goes into the revocation feed (kept until `feed_until`).
    fn redeem_code(
        &self,
        code_hash: &str,
        issued: Option<(&Grant, Option<&RefreshToken>)>,
        now: i64,
        feed_until: i64,
    ) -> anyhow::Result<Redemption>;
    fn grant(&self, id: &str) -> anyhow::Result<Option<Grant>>;
    /// Revokes a grant: every refresh token of its family stops working, and its TEs once
    /// the filter reads the revocation feed entry (kept until `feed_until`).
    fn revoke_grant(&self, id: &str, now: i64, feed_until: i64) -> anyhow::Result<()>;

    fn refresh_token(&self, token_hash: &str) -> anyhow::Result<Option<RefreshToken>>;
    /// Marks `old_hash` used and inserts `new` atomically; false when `old_hash` was
    /// already used (a concurrent or replayed rotation) or its grant was revoked meanwhile.
    fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new: &RefreshToken,
        now: i64,
    ) -> anyhow::Result<bool>;

    fn upstream_token(&self, user: &str, route: &str) -> anyhow::Result<Option<UpstreamRecord>>;
    /// Writes the whole row (tokens, times, scopes), ending any refresh lease on it.
    fn put_upstream_token(&self, record: &UpstreamRecord) -> anyhow::Result<()>;
    /// Takes the row's refresh lease until `until` unless another holder's lease runs past
    /// `now`: one refresh per grant, across every replica sharing the database.
    fn claim_upstream_refresh(
        &self,
        user: &str,
        route: &str,
        now: i64,
        until: i64,
    ) -> anyhow::Result<bool>;
    /// Stores a refresh's tokens (access and refresh token, `issued_at`, `expires_at`,
    /// `scope` of `record`) and ends the lease, if the row is still at `version` (the one
    /// refreshed); false when it was dropped or replaced meanwhile (nothing written). The
    /// row's other fields (scopes asked for, refusals) stay as they are.
    fn put_refreshed_upstream_token(
        &self,
        record: &UpstreamRecord,
        version: i64,
    ) -> anyhow::Result<bool>;
    /// Ends a refresh lease without a new token (the refresh failed transiently).
    fn release_upstream_refresh(&self, user: &str, route: &str) -> anyhow::Result<()>;
    /// Clears the tokens of the row if it is still at `version` (a token refreshed or
    /// granted meanwhile is not dropped by a stale refusal); records `extra_scope`,
    /// `refused_until` and, for a refusal by a server, `refused_at`. Returns whether it
    /// dropped.
    fn drop_upstream_token(
        &self,
        user: &str,
        route: &str,
        version: i64,
        extra_scope: &str,
        refused_until: Option<i64>,
        refused_at: Option<i64>,
    ) -> anyhow::Result<bool>;
    /// Deletes the row (the user disconnected the account).
    fn delete_upstream_token(&self, user: &str, route: &str) -> anyhow::Result<bool>;
    /// Up to `limit` rows after `after` in (user, route) order that hold a sealed value not
    /// starting with `prefix` (how values sealed with the current key start).
    fn upstream_tokens_not_sealed_with(
        &self,
        prefix: &[u8],
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> anyhow::Result<Vec<UpstreamRecord>>;
    /// Writes re-sealed values in one transaction, each only over the very values it was
    /// read with at that version: a refresh, drop or new consent meanwhile stands, and a
    /// deleted row stays deleted. The version is left alone, so a refresh in flight still
    /// stores its result. Returns, per entry, whether it was written.
    fn reseal_upstream_tokens(&self, moves: &[Reseal]) -> anyhow::Result<Vec<bool>>;
    /// The sealed PKCE verifiers of upstream consents and identity-provider sign-ins still
    /// in progress at `now`.
    fn live_flow_verifiers(&self, now: i64) -> anyhow::Result<Vec<String>>;

    /// Stores an upstream flow unless the pending records are at `limit` (then `false`).
    fn insert_upstream_flow(
        &self,
        state_hash: &str,
        flow: &UpstreamFlow,
        limit: PendingLimit,
    ) -> anyhow::Result<bool>;
    /// Takes (deletes and returns) an unexpired upstream flow: the callback is single use.
    fn take_upstream_flow(
        &self,
        state_hash: &str,
        now: i64,
    ) -> anyhow::Result<Option<UpstreamFlow>>;

    /// Stores a sign-in unless the pending records are at `limit` (then `false`).
    fn insert_idp_login(
        &self,
        state_hash: &str,
        login: &IdpLogin,
        limit: PendingLimit,
    ) -> anyhow::Result<bool>;
    /// Takes (deletes and returns) an unexpired sign-in: the callback is single use.
    fn take_idp_login(&self, state_hash: &str, now: i64) -> anyhow::Result<Option<IdpLogin>>;

    /// Records an identity-provider user's claims at sign-in.
    fn put_idp_user(&self, user: &IdpUserRecord) -> anyhow::Result<()>;
    fn idp_user(&self, key: &str) -> anyhow::Result<Option<IdpUserRecord>>;

    /// Deletes expired records, DCR clients included (per `retention`).
    fn sweep(&self, now: i64, retention: &Retention) -> anyhow::Result<()>;

    fn insert_app_code(&self, code_hash: &str, code: &AppCode) -> anyhow::Result<()>;
    /// Takes an unexpired app code (single use: it is gone afterwards either way).
    fn take_app_code(&self, code_hash: &str, now: i64) -> anyhow::Result<Option<AppCode>>;
    fn insert_app_session(&self, secret_hash: &str, session: &AppSession) -> anyhow::Result<()>;
    fn app_session(&self, secret_hash: &str, now: i64) -> anyhow::Result<Option<AppSession>>;
    /// Ends an app session; false when there was none.
    fn delete_app_session(&self, secret_hash: &str) -> anyhow::Result<bool>;
    /// Ends the sign-in session whose cookie hashes to `secret_hash` (sign-out), and every
    /// app session bound to it; returns its `sid` when there was a live one. The session
    /// goes into the revocation feed (kept until `feed_until`).
    fn revoke_session(
        &self,
        secret_hash: &str,
        now: i64,
        feed_until: i64,
    ) -> anyhow::Result<Option<String>>;
    /// Ends the sign-in session `sid` and every app session bound to it; false when it was
    /// not live. The session goes into the revocation feed (kept until `feed_until`).
    fn revoke_sid(&self, sid: &str, now: i64, feed_until: i64) -> anyhow::Result<bool>;

    // revocation feed
    /// Appends an entry to the revocation feed (the revoking operations above append theirs
    /// in their own transaction).
    fn record_revocation(
        &self,
        kind: RevokedKind,
        id: &str,
        at: i64,
        expires_at: i64,
    ) -> anyhow::Result<()>;
    /// At most `limit` feed entries after `after`, by `seq`, those with `expires_at > now`.
    fn revocations_after(
        &self,
        after: i64,
        limit: usize,
        now: i64,
    ) -> anyhow::Result<Vec<RevocationEntry>>;
}

/// Ordered schema migrations; a version is applied once, recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE clients (
        client_id   TEXT PRIMARY KEY,
        metadata    TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE pending_flows (
        id          TEXT PRIMARY KEY,
        data        TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        expires_at  INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        secret_hash TEXT PRIMARY KEY,
        sid         TEXT NOT NULL UNIQUE,
        email       TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        revoked_at  INTEGER
    );
    CREATE TABLE auth_codes (
        code_hash   TEXT PRIMARY KEY,
        data        TEXT NOT NULL,
        expires_at  INTEGER NOT NULL,
        used        INTEGER NOT NULL DEFAULT 0,
        grant_id    TEXT
    );
    CREATE TABLE grants (
        id          TEXT PRIMARY KEY,
        client_id   TEXT NOT NULL,
        email       TEXT NOT NULL,
        sid         TEXT NOT NULL,
        resource    TEXT NOT NULL,
        scope       TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        revoked_at  INTEGER
    );
    CREATE TABLE refresh_tokens (
        token_hash  TEXT PRIMARY KEY,
        grant_id    TEXT NOT NULL REFERENCES grants(id) ON DELETE CASCADE,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        used_at     INTEGER
    );
    CREATE INDEX refresh_tokens_grant ON refresh_tokens(grant_id);
    "#,
    ),
    (
        2,
        r#"
    CREATE TABLE consents (
        email       TEXT NOT NULL,
        client_id   TEXT NOT NULL,
        resource    TEXT NOT NULL,
        scope       TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (email, client_id, resource)
    );
    CREATE TABLE login_failures (
        account     TEXT NOT NULL,
        failed_at   INTEGER NOT NULL
    );
    CREATE INDEX login_failures_account ON login_failures(account, failed_at);
    "#,
    ),
    (
        3,
        r#"
    DROP TABLE login_failures;
    -- One row per sign-in attempt: pending while its password is checked, then a failure
    -- (successes are deleted). `bucket` is the account's untrusted-client bucket or a
    -- device cookie's own.
    CREATE TABLE login_attempts (
        id          INTEGER PRIMARY KEY,
        bucket      TEXT NOT NULL,
        at          INTEGER NOT NULL,
        pending     INTEGER NOT NULL
    );
    CREATE INDEX login_attempts_bucket ON login_attempts(bucket, at);
    CREATE TABLE devices (
        secret_hash TEXT PRIMARY KEY,
        account     TEXT NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    "#,
    ),
    (
        4,
        r#"
    -- When the client first obtained a grant (NULL: never), and since when none of its
    -- grants is alive (NULL: one is, or it never had one). Registrations expire by them.
    ALTER TABLE clients ADD COLUMN granted_at INTEGER;
    ALTER TABLE clients ADD COLUMN idle_since INTEGER;
    UPDATE clients SET granted_at = created_at
        WHERE EXISTS (SELECT 1 FROM grants g WHERE g.client_id = clients.client_id)
           OR EXISTS (SELECT 1 FROM consents c WHERE c.client_id = clients.client_id);
    CREATE INDEX clients_unused ON clients(created_at) WHERE granted_at IS NULL;
    CREATE INDEX grants_client ON grants(client_id);
    "#,
    ),
    (
        5,
        r#"
    -- Upstream provider tokens (TI), sealed by the vault; `refresh_lease` is held by the one
    -- process refreshing the row.
    CREATE TABLE upstream_tokens (
        user          TEXT NOT NULL,
        route         TEXT NOT NULL,
        access_token  BLOB,
        refresh_token BLOB,
        issued_at     INTEGER NOT NULL,
        expires_at    INTEGER,
        granted_at    INTEGER NOT NULL,
        scope         TEXT NOT NULL,
        extra_scope   TEXT NOT NULL DEFAULT '',
        refused_until INTEGER,
        last_refused_at INTEGER,
        after_refusal INTEGER NOT NULL DEFAULT 0,
        refresh_lease INTEGER,
        version       INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (user, route)
    );
    CREATE TABLE upstream_flows (
        state_hash  TEXT PRIMARY KEY,
        data        TEXT NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    "#,
    ),
    (
        6,
        r#"
    -- Sign-ins at the organisation's identity provider, and its users' claims as of their
    -- last sign-in (`key` is `{iss}#{sub}`).
    CREATE TABLE idp_logins (
        state_hash  TEXT PRIMARY KEY,
        data        TEXT NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE TABLE idp_users (
        key         TEXT PRIMARY KEY,
        email       TEXT NOT NULL,
        name        TEXT NOT NULL,
        groups_json TEXT NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    "#,
    ),
    (
        7,
        r#"
    -- Browser sign-in on mcp: client routes: one-time app codes and app sessions (both keyed
    -- by the SHA-256 of their secret).
    CREATE TABLE app_codes (
        code_hash   TEXT PRIMARY KEY,
        data        TEXT NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE TABLE app_sessions (
        secret_hash TEXT PRIMARY KEY,
        route       TEXT NOT NULL,
        user        TEXT NOT NULL,
        sid         TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX app_sessions_expiry ON app_sessions(expires_at);
    "#,
    ),
    // revocation feed
    (
        8,
        r#"
    -- The revocation feed the filter polls: grants, sessions and users whose TEs must be
    -- refused until `expires_at` (when every TE they cover has expired).
    CREATE TABLE revocations (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT NOT NULL,
        id          TEXT NOT NULL,
        at          INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX revocations_expiry ON revocations(expires_at);
    "#,
    ),
];

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create directory {}", dir.display()))?;
            }
        }
        let conn =
            Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Self::from_connection(conn)
    }

    pub fn in_memory() -> anyhow::Result<Self> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> anyhow::Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // WAL is not available for in-memory databases; ignore the answer.
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> anyhow::Result<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| anyhow::anyhow!("store mutex poisoned"))
    }

    /// Clients registered through DCR (for tests and diagnostics).
    pub fn registered_clients(&self) -> anyhow::Result<u64> {
        Ok(self
            .conn()?
            .query_row("SELECT COUNT(*) FROM clients", [], |r| r.get(0))?)
    }

    /// Rows in the pending tables (`PendingLimit`), expired or not (for tests and diagnostics).
    pub fn pending_records(&self) -> anyhow::Result<u64> {
        Ok(count_pending(&*self.conn()?)?)
    }

    /// Runs `insert` in one transaction with the count it must stay within.
    fn insert_pending(
        &self,
        limit: PendingLimit,
        insert: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<usize>,
    ) -> anyhow::Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if count_pending(&tx)? >= limit.max {
            // Expired rows wait for the sweep; make room with them before refusing.
            for table in PENDING_TABLES {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE expires_at <= ?1"),
                    [limit.now],
                )?;
            }
            if count_pending(&tx)? >= limit.max {
                tx.commit()?;
                return Ok(false);
            }
        }
        insert(&tx)?;
        tx.commit()?;
        Ok(true)
    }

    /// Applied schema versions, ascending (for tests and diagnostics).
    pub fn schema_versions(&self) -> anyhow::Result<Vec<i64>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT version FROM schema_migrations ORDER BY version")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<i64>, _>>()?)
    }
}

/// The tables of records a stranger can leave behind by starting a sign-in.
const PENDING_TABLES: [&str; 3] = ["pending_flows", "upstream_flows", "idp_logins"];

fn count_pending(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT (SELECT COUNT(*) FROM pending_flows) + (SELECT COUNT(*) FROM upstream_flows)
              + (SELECT COUNT(*) FROM idp_logins)",
        [],
        |r| r.get(0),
    )
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )?;
    for (version, sql) in MIGRATIONS {
        let tx = conn.transaction()?;
        let done: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(sql)
                .with_context(|| format!("schema migration {version} failed"))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, crate::clock::now_unix()],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// Marks when DCR clients ran out of live grants, and deletes clients unused or idle for
/// longer than `retention` allows, with their consents.
fn sweep_clients(conn: &mut Connection, now: i64, retention: &Retention) -> anyhow::Result<()> {
    // A grant is alive while it is not revoked and its family has a usable refresh token.
    const LIVE_GRANT: &str =
        "EXISTS (SELECT 1 FROM grants g JOIN refresh_tokens t ON t.grant_id = g.id
        WHERE g.client_id = clients.client_id AND g.revoked_at IS NULL
          AND t.used_at IS NULL AND t.expires_at > ?1)";
    const EXPIRED: &str = "(granted_at IS NULL AND created_at <= ?1 - ?2
          AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.client_id = clients.client_id))
        OR (idle_since IS NOT NULL AND idle_since <= ?1 - ?3)";
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        &format!(
            "UPDATE clients SET idle_since = NULL WHERE idle_since IS NOT NULL AND {LIVE_GRANT}"
        ),
        [now],
    )?;
    tx.execute(
        &format!(
            "UPDATE clients SET idle_since = ?1
             WHERE granted_at IS NOT NULL AND idle_since IS NULL AND NOT {LIVE_GRANT}"
        ),
        [now],
    )?;
    let ttls = params![now, retention.unused_client_ttl, retention.idle_client_ttl];
    tx.execute(
        &format!(
            "DELETE FROM consents WHERE client_id IN (SELECT client_id FROM clients WHERE {EXPIRED})"
        ),
        ttls,
    )?;
    let deleted = tx.execute(&format!("DELETE FROM clients WHERE {EXPIRED}"), ttls)?;
    tx.commit()?;
    if deleted > 0 {
        tracing::info!(deleted, "expired client registrations deleted");
    }
    Ok(())
}

fn grant_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: r.get(0)?,
        client_id: r.get(1)?,
        user: r.get(2)?,
        sid: r.get(3)?,
        resource: r.get(4)?,
        scope: r.get(5)?,
        created_at: r.get(6)?,
        revoked: r.get::<_, Option<i64>>(7)?.is_some(),
    })
}

impl Store for SqliteStore {
    fn insert_client(&self, client: &StoredClient, max_unused: u64) -> anyhow::Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let unused: u64 = tx.query_row(
            "SELECT COUNT(*) FROM clients WHERE granted_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        if unused >= max_unused {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO clients (client_id, metadata, created_at) VALUES (?1, ?2, ?3)",
            params![
                client.client_id,
                serde_json::to_string(client)?,
                client.created_at
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn client(&self, client_id: &str) -> anyhow::Result<Option<StoredClient>> {
        let json: Option<String> = self
            .conn()?
            .query_row(
                "SELECT metadata FROM clients WHERE client_id = ?1",
                [client_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match json {
            Some(j) => Some(serde_json::from_str(&j)?),
            None => None,
        })
    }

    fn insert_flow(&self, flow: &PendingFlow, limit: PendingLimit) -> anyhow::Result<bool> {
        let data = serde_json::to_string(flow)?;
        self.insert_pending(limit, |tx| {
            tx.execute(
                "INSERT INTO pending_flows (id, data, expires_at) VALUES (?1, ?2, ?3)",
                params![flow.id, data, flow.expires_at],
            )
        })
    }

    fn flow(&self, id: &str, now: i64) -> anyhow::Result<Option<PendingFlow>> {
        let json: Option<String> = self
            .conn()?
            .query_row(
                "SELECT data FROM pending_flows WHERE id = ?1 AND expires_at > ?2",
                params![id, now],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match json {
            Some(j) => Some(serde_json::from_str(&j)?),
            None => None,
        })
    }

    fn record_failed_login(&self, id: &str) -> anyhow::Result<u32> {
        let n: Option<u32> = self
            .conn()?
            .query_row(
                "UPDATE pending_flows SET attempts = attempts + 1 WHERE id = ?1 RETURNING attempts",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.unwrap_or(u32::MAX))
    }

    fn delete_flow(&self, id: &str) -> anyhow::Result<bool> {
        let n = self
            .conn()?
            .execute("DELETE FROM pending_flows WHERE id = ?1", [id])?;
        Ok(n == 1)
    }

    fn insert_session(&self, secret_hash: &str, s: &Session) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO sessions (secret_hash, sid, email, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![secret_hash, s.sid, s.user, s.created_at, s.expires_at],
        )?;
        Ok(())
    }

    fn session_live(&self, sid: &str, now: i64) -> anyhow::Result<bool> {
        Ok(self.conn()?.query_row(
            "SELECT EXISTS(SELECT 1 FROM sessions
                 WHERE sid = ?1 AND expires_at > ?2 AND revoked_at IS NULL)",
            params![sid, now],
            |r| r.get(0),
        )?)
    }

    fn session(&self, secret_hash: &str, now: i64) -> anyhow::Result<Option<Session>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT sid, email, created_at, expires_at FROM sessions
                 WHERE secret_hash = ?1 AND expires_at > ?2 AND revoked_at IS NULL",
                params![secret_hash, now],
                |r| {
                    Ok(Session {
                        sid: r.get(0)?,
                        user: r.get(1)?,
                        created_at: r.get(2)?,
                        expires_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    fn consent(
        &self,
        email: &str,
        client_id: &str,
        resource: &str,
    ) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT scope FROM consents WHERE email = ?1 AND client_id = ?2 AND resource = ?3",
                params![email, client_id, resource],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn record_consent(
        &self,
        email: &str,
        client_id: &str,
        resource: &str,
        scope: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO consents (email, client_id, resource, scope, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (email, client_id, resource)
             DO UPDATE SET scope = excluded.scope, updated_at = excluded.updated_at",
            params![email, client_id, resource, scope, now],
        )?;
        Ok(())
    }

    fn reserve_login_attempt(
        &self,
        bucket: &str,
        since: i64,
        limit: u32,
        now: i64,
    ) -> anyhow::Result<Option<i64>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let counted: u32 = tx.query_row(
            "SELECT COUNT(*) FROM login_attempts WHERE bucket = ?1 AND at >= ?2",
            params![bucket, since],
            |r| r.get(0),
        )?;
        if counted >= limit {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO login_attempts (bucket, at, pending) VALUES (?1, ?2, 1)",
            params![bucket, now],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Some(id))
    }

    fn fail_login_attempt(&self, id: i64, now: i64) -> anyhow::Result<()> {
        self.conn()?.execute(
            "UPDATE login_attempts SET pending = 0, at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    fn end_login_attempt(&self, id: i64, bucket: &str, clear_failures: bool) -> anyhow::Result<()> {
        let conn = self.conn()?;
        conn.execute("DELETE FROM login_attempts WHERE id = ?1", [id])?;
        if clear_failures {
            // Attempts still in flight stay counted.
            conn.execute(
                "DELETE FROM login_attempts WHERE bucket = ?1 AND pending = 0",
                [bucket],
            )?;
        }
        Ok(())
    }

    fn insert_device(
        &self,
        secret_hash: &str,
        account: &str,
        expires_at: i64,
    ) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO devices (secret_hash, account, expires_at) VALUES (?1, ?2, ?3)",
            params![secret_hash, account, expires_at],
        )?;
        Ok(())
    }

    fn device_account(&self, secret_hash: &str, now: i64) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT account FROM devices WHERE secret_hash = ?1 AND expires_at > ?2",
                params![secret_hash, now],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn delete_device(&self, secret_hash: &str) -> anyhow::Result<()> {
        self.conn()?
            .execute("DELETE FROM devices WHERE secret_hash = ?1", [secret_hash])?;
        Ok(())
    }

    fn insert_code(&self, code_hash: &str, code: &AuthCode) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO auth_codes (code_hash, data, expires_at) VALUES (?1, ?2, ?3)",
            params![code_hash, serde_json::to_string(code)?, code.expires_at],
        )?;
        Ok(())
    }

    fn code(&self, code_hash: &str) -> anyhow::Result<CodeLookup> {
        let row: Option<(String, bool, Option<String>)> = self
            .conn()?
            .query_row(
                "SELECT data, used, grant_id FROM auth_codes WHERE code_hash = ?1",
                [code_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            None => CodeLookup::Missing,
            Some((_, true, grant_id)) => CodeLookup::Reused { grant_id },
            Some((data, false, _)) => CodeLookup::Fresh(serde_json::from_str(&data)?),
        })
    }

    fn redeem_code(
        &self,
        code_hash: &str,
        issued: Option<(&Grant, Option<&RefreshToken>)>,
        now: i64,
        feed_until: i64,
    ) -> anyhow::Result<Redemption> {
        let mut conn = self.conn()?;
        // IMMEDIATE: take the write lock before reading, so two processes sharing the file
        // cannot both read "unused".
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(bool, Option<String>)> = tx
            .query_row(
                "SELECT used, grant_id FROM auth_codes WHERE code_hash = ?1",
                [code_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let out = match row {
            None => Redemption::Missing,
            Some((true, grant_id)) => {
                if let Some(id) = grant_id {
                    let n = tx.execute(
                        "UPDATE grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                        params![id, now],
                    )?;
                    if n == 1 {
                        append_revocation(&tx, RevokedKind::Grant, &id, now, feed_until)?;
                    }
                }
                Redemption::Replayed
            }
            Some((false, _)) => {
                let grant_id = match issued {
                    None => None,
                    Some((g, refresh)) => {
                        tx.execute(
                            "INSERT INTO grants (id, client_id, email, sid, resource, scope, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                            params![g.id, g.client_id, g.user, g.sid, g.resource, g.scope, g.created_at],
                        )?;
                        if let Some(r) = refresh {
                            tx.execute(
                                "INSERT INTO refresh_tokens (token_hash, grant_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                                params![r.token_hash, r.grant_id, r.created_at, r.expires_at],
                            )?;
                        }
                        // A DCR client with a grant is in use: not expired as unused.
                        tx.execute(
                            "UPDATE clients SET granted_at = COALESCE(granted_at, ?2), idle_since = NULL
                             WHERE client_id = ?1",
                            params![g.client_id, now],
                        )?;
                        Some(g.id.as_str())
                    }
                };
                tx.execute(
                    "UPDATE auth_codes SET used = 1, grant_id = ?2 WHERE code_hash = ?1",
                    params![code_hash, grant_id],
                )?;
                Redemption::Redeemed
            }
        };
        tx.commit()?;
        Ok(out)
    }

    fn grant(&self, id: &str) -> anyhow::Result<Option<Grant>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT id, client_id, email, sid, resource, scope, created_at, revoked_at FROM grants WHERE id = ?1",
                [id],
                grant_from_row,
            )
            .optional()?)
    }

    fn revoke_grant(&self, id: &str, now: i64, feed_until: i64) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now],
        )?;
        if n == 1 {
            append_revocation(&tx, RevokedKind::Grant, id, now, feed_until)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn refresh_token(&self, token_hash: &str) -> anyhow::Result<Option<RefreshToken>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT token_hash, grant_id, created_at, expires_at, used_at FROM refresh_tokens WHERE token_hash = ?1",
                [token_hash],
                |r| {
                    Ok(RefreshToken {
                        token_hash: r.get(0)?,
                        grant_id: r.get(1)?,
                        created_at: r.get(2)?,
                        expires_at: r.get(3)?,
                        used: r.get::<_, Option<i64>>(4)?.is_some(),
                    })
                },
            )
            .optional()?)
    }

    fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new: &RefreshToken,
        now: i64,
    ) -> anyhow::Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE refresh_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL
             AND EXISTS (SELECT 1 FROM grants g WHERE g.id = refresh_tokens.grant_id AND g.revoked_at IS NULL)",
            params![old_hash, now],
        )?;
        if n != 1 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO refresh_tokens (token_hash, grant_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![new.token_hash, new.grant_id, new.created_at, new.expires_at],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn upstream_token(&self, user: &str, route: &str) -> anyhow::Result<Option<UpstreamRecord>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT access_token, refresh_token, issued_at, expires_at, granted_at, scope,
                        extra_scope, refused_until, last_refused_at, after_refusal, version
                 FROM upstream_tokens WHERE user = ?1 AND route = ?2",
                params![user, route],
                |r| {
                    Ok(UpstreamRecord {
                        user: user.to_owned(),
                        route: route.to_owned(),
                        access_token: r.get(0)?,
                        refresh_token: r.get(1)?,
                        issued_at: r.get(2)?,
                        expires_at: r.get(3)?,
                        granted_at: r.get(4)?,
                        scope: r.get(5)?,
                        extra_scope: r.get(6)?,
                        refused_until: r.get(7)?,
                        last_refused_at: r.get(8)?,
                        after_refusal: r.get(9)?,
                        version: r.get(10)?,
                    })
                },
            )
            .optional()?)
    }

    fn put_upstream_token(&self, t: &UpstreamRecord) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO upstream_tokens (user, route, access_token, refresh_token, issued_at,
                 expires_at, granted_at, scope, extra_scope, refused_until, last_refused_at,
                 after_refusal, refresh_lease)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL)
             ON CONFLICT (user, route) DO UPDATE SET
                 access_token = excluded.access_token, refresh_token = excluded.refresh_token,
                 issued_at = excluded.issued_at, expires_at = excluded.expires_at,
                 granted_at = excluded.granted_at, scope = excluded.scope,
                 extra_scope = excluded.extra_scope, refused_until = excluded.refused_until,
                 last_refused_at = excluded.last_refused_at,
                 after_refusal = excluded.after_refusal, refresh_lease = NULL,
                 version = upstream_tokens.version + 1",
            params![
                t.user,
                t.route,
                t.access_token,
                t.refresh_token,
                t.issued_at,
                t.expires_at,
                t.granted_at,
                t.scope,
                t.extra_scope,
                t.refused_until,
                t.last_refused_at,
                t.after_refusal
            ],
        )?;
        Ok(())
    }

    fn claim_upstream_refresh(
        &self,
        user: &str,
        route: &str,
        now: i64,
        until: i64,
    ) -> anyhow::Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE upstream_tokens SET refresh_lease = ?4
             WHERE user = ?1 AND route = ?2 AND (refresh_lease IS NULL OR refresh_lease <= ?3)",
            params![user, route, now, until],
        )?;
        Ok(n == 1)
    }

    fn put_refreshed_upstream_token(
        &self,
        t: &UpstreamRecord,
        version: i64,
    ) -> anyhow::Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE upstream_tokens SET access_token = ?4, refresh_token = ?5, issued_at = ?6,
                 expires_at = ?7, scope = ?8, refresh_lease = NULL, version = version + 1
             WHERE user = ?1 AND route = ?2 AND version = ?3 AND access_token IS NOT NULL",
            params![
                t.user,
                t.route,
                version,
                t.access_token,
                t.refresh_token,
                t.issued_at,
                t.expires_at,
                t.scope
            ],
        )?;
        Ok(n == 1)
    }

    fn release_upstream_refresh(&self, user: &str, route: &str) -> anyhow::Result<()> {
        self.conn()?.execute(
            "UPDATE upstream_tokens SET refresh_lease = NULL WHERE user = ?1 AND route = ?2",
            params![user, route],
        )?;
        Ok(())
    }

    fn drop_upstream_token(
        &self,
        user: &str,
        route: &str,
        version: i64,
        extra_scope: &str,
        refused_until: Option<i64>,
        refused_at: Option<i64>,
    ) -> anyhow::Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE upstream_tokens SET access_token = NULL, refresh_token = NULL,
                 extra_scope = ?4, refused_until = ?5,
                 last_refused_at = COALESCE(?6, last_refused_at), refresh_lease = NULL,
                 version = version + 1
             WHERE user = ?1 AND route = ?2 AND version = ?3 AND access_token IS NOT NULL",
            params![user, route, version, extra_scope, refused_until, refused_at],
        )?;
        Ok(n == 1)
    }

    fn delete_upstream_token(&self, user: &str, route: &str) -> anyhow::Result<bool> {
        let n = self.conn()?.execute(
            "DELETE FROM upstream_tokens WHERE user = ?1 AND route = ?2",
            params![user, route],
        )?;
        Ok(n == 1)
    }

    fn upstream_tokens_not_sealed_with(
        &self,
        prefix: &[u8],
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> anyhow::Result<Vec<UpstreamRecord>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT user, route, access_token, refresh_token, issued_at, expires_at, granted_at,
                    scope, extra_scope, refused_until, last_refused_at, after_refusal, version
             FROM upstream_tokens
             WHERE ((access_token IS NOT NULL AND substr(access_token, 1, ?2) IS NOT ?1)
                 OR (refresh_token IS NOT NULL AND substr(refresh_token, 1, ?2) IS NOT ?1))
               AND (?3 IS NULL OR (user, route) > (?3, ?4))
             ORDER BY user, route LIMIT ?5",
        )?;
        let (after_user, after_route) = after.unzip();
        let rows = stmt.query_map(
            params![prefix, prefix.len(), after_user, after_route, limit],
            |r| {
                Ok(UpstreamRecord {
                    user: r.get(0)?,
                    route: r.get(1)?,
                    access_token: r.get(2)?,
                    refresh_token: r.get(3)?,
                    issued_at: r.get(4)?,
                    expires_at: r.get(5)?,
                    granted_at: r.get(6)?,
                    scope: r.get(7)?,
                    extra_scope: r.get(8)?,
                    refused_until: r.get(9)?,
                    last_refused_at: r.get(10)?,
                    after_refusal: r.get(11)?,
                    version: r.get(12)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn reseal_upstream_tokens(&self, moves: &[Reseal]) -> anyhow::Result<Vec<bool>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut written = Vec::with_capacity(moves.len());
        {
            let mut stmt = tx.prepare(
                "UPDATE upstream_tokens SET access_token = ?6, refresh_token = ?7
                 WHERE user = ?1 AND route = ?2 AND version = ?3
                   AND access_token IS ?4 AND refresh_token IS ?5",
            )?;
            for m in moves {
                let n = stmt.execute(params![
                    m.user,
                    m.route,
                    m.version,
                    m.old_access_token,
                    m.old_refresh_token,
                    m.access_token,
                    m.refresh_token
                ])?;
                written.push(n == 1);
            }
        }
        tx.commit()?;
        Ok(written)
    }

    fn live_flow_verifiers(&self, now: i64) -> anyhow::Result<Vec<String>> {
        let conn = self.conn()?;
        let mut verifiers = Vec::new();
        let mut stmt = conn.prepare("SELECT data FROM upstream_flows WHERE expires_at > ?1")?;
        for data in stmt.query_map([now], |r| r.get::<_, String>(0))? {
            let flow: UpstreamFlow =
                serde_json::from_str(&data?).context("stored upstream flow is malformed")?;
            verifiers.push(flow.pkce_verifier);
        }
        let mut stmt = conn.prepare("SELECT data FROM idp_logins WHERE expires_at > ?1")?;
        for data in stmt.query_map([now], |r| r.get::<_, String>(0))? {
            let login: IdpLogin = serde_json::from_str(&data?)
                .context("stored identity-provider sign-in is malformed")?;
            verifiers.push(login.pkce_verifier);
        }
        Ok(verifiers)
    }

    fn insert_upstream_flow(
        &self,
        state_hash: &str,
        flow: &UpstreamFlow,
        limit: PendingLimit,
    ) -> anyhow::Result<bool> {
        let data = serde_json::to_string(flow)?;
        self.insert_pending(limit, |tx| {
            tx.execute(
                "INSERT INTO upstream_flows (state_hash, data, expires_at) VALUES (?1, ?2, ?3)",
                params![state_hash, data, flow.expires_at],
            )
        })
    }

    fn take_upstream_flow(
        &self,
        state_hash: &str,
        now: i64,
    ) -> anyhow::Result<Option<UpstreamFlow>> {
        let data: Option<String> = self
            .conn()?
            .query_row(
                "DELETE FROM upstream_flows WHERE state_hash = ?1 RETURNING data, expires_at",
                [state_hash],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?
            .filter(|(_, expires_at)| *expires_at > now)
            .map(|(data, _)| data);
        data.map(|d| serde_json::from_str(&d).context("stored upstream flow is malformed"))
            .transpose()
    }

    fn insert_idp_login(
        &self,
        state_hash: &str,
        login: &IdpLogin,
        limit: PendingLimit,
    ) -> anyhow::Result<bool> {
        let data = serde_json::to_string(login)?;
        self.insert_pending(limit, |tx| {
            tx.execute(
                "INSERT INTO idp_logins (state_hash, data, expires_at) VALUES (?1, ?2, ?3)",
                params![state_hash, data, login.expires_at],
            )
        })
    }

    fn take_idp_login(&self, state_hash: &str, now: i64) -> anyhow::Result<Option<IdpLogin>> {
        let data: Option<String> = self
            .conn()?
            .query_row(
                "DELETE FROM idp_logins WHERE state_hash = ?1 RETURNING data, expires_at",
                [state_hash],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?
            .filter(|(_, expires_at)| *expires_at > now)
            .map(|(data, _)| data);
        data.map(|d| {
            serde_json::from_str(&d).context("stored identity-provider sign-in is malformed")
        })
        .transpose()
    }

    fn put_idp_user(&self, user: &IdpUserRecord) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO idp_users (key, email, name, groups_json, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key) DO UPDATE SET email = ?2, name = ?3, groups_json = ?4, updated_at = ?5",
            params![
                user.key,
                user.email,
                user.name,
                serde_json::to_string(&user.groups)?,
                user.updated_at
            ],
        )?;
        Ok(())
    }

    fn idp_user(&self, key: &str) -> anyhow::Result<Option<IdpUserRecord>> {
        let row = self
            .conn()?
            .query_row(
                "SELECT email, name, groups_json, updated_at FROM idp_users WHERE key = ?1",
                [key],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(email, name, groups, updated_at)| {
            Ok(IdpUserRecord {
                key: key.to_owned(),
                email,
                name,
                groups: serde_json::from_str(&groups).context("stored groups are malformed")?,
                updated_at,
            })
        })
        .transpose()
    }

    fn sweep(&self, now: i64, retention: &Retention) -> anyhow::Result<()> {
        // Redeemed codes and rotated-out refresh tokens are kept until they expire so that
        // a replay inside their lifetime is still recognised (and revokes the family).
        const DAY: i64 = 86_400;
        let mut conn = self.conn()?;
        sweep_clients(&mut conn, now, retention)?;
        conn.execute("DELETE FROM pending_flows WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM upstream_flows WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM idp_logins WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM app_codes WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM app_sessions WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM auth_codes WHERE expires_at <= ?1", [now - DAY])?;
        conn.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
        // Attempts older than a day are outside every throttle window (pending ones too:
        // a check that never finished, say a crash, stops counting with its window).
        conn.execute("DELETE FROM login_attempts WHERE at <= ?1", [now - DAY])?;
        conn.execute("DELETE FROM devices WHERE expires_at <= ?1", [now])?;
        conn.execute("DELETE FROM refresh_tokens WHERE expires_at <= ?1", [now])?;
        conn.execute(
            "DELETE FROM grants WHERE created_at <= ?1
             AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.grant_id = grants.id)",
            [now - DAY],
        )?;
        // revocation feed: an entry past `expires_at` covers no TE that is still valid.
        conn.execute("DELETE FROM revocations WHERE expires_at <= ?1", [now])?;
        Ok(())
    }

    fn insert_app_code(&self, code_hash: &str, code: &AppCode) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO app_codes (code_hash, data, expires_at) VALUES (?1, ?2, ?3)",
            params![code_hash, serde_json::to_string(code)?, code.expires_at],
        )?;
        Ok(())
    }

    fn take_app_code(&self, code_hash: &str, now: i64) -> anyhow::Result<Option<AppCode>> {
        let data: Option<String> = self
            .conn()?
            .query_row(
                "DELETE FROM app_codes WHERE code_hash = ?1 RETURNING data, expires_at",
                [code_hash],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?
            .filter(|(_, expires_at)| *expires_at > now)
            .map(|(data, _)| data);
        data.map(|d| serde_json::from_str(&d).context("stored app code is malformed"))
            .transpose()
    }

    fn insert_app_session(&self, secret_hash: &str, s: &AppSession) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO app_sessions (secret_hash, route, user, sid, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                secret_hash,
                s.route,
                s.user,
                s.sid,
                s.created_at,
                s.expires_at
            ],
        )?;
        Ok(())
    }

    fn app_session(&self, secret_hash: &str, now: i64) -> anyhow::Result<Option<AppSession>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT route, user, sid, created_at, expires_at FROM app_sessions
                 WHERE secret_hash = ?1 AND expires_at > ?2",
                params![secret_hash, now],
                |r| {
                    Ok(AppSession {
                        route: r.get(0)?,
                        user: r.get(1)?,
                        sid: r.get(2)?,
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    fn delete_app_session(&self, secret_hash: &str) -> anyhow::Result<bool> {
        let n = self.conn()?.execute(
            "DELETE FROM app_sessions WHERE secret_hash = ?1",
            [secret_hash],
        )?;
        Ok(n == 1)
    }

    fn revoke_session(
        &self,
        secret_hash: &str,
        now: i64,
        feed_until: i64,
    ) -> anyhow::Result<Option<String>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let sid: Option<String> = tx
            .query_row(
                "UPDATE sessions SET revoked_at = ?2
                 WHERE secret_hash = ?1 AND revoked_at IS NULL AND expires_at > ?2
                 RETURNING sid",
                params![secret_hash, now],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(sid) = &sid {
            tx.execute("DELETE FROM app_sessions WHERE sid = ?1", [sid])?;
            append_revocation(&tx, RevokedKind::Session, sid, now, feed_until)?;
        }
        tx.commit()?;
        Ok(sid)
    }

    fn revoke_sid(&self, sid: &str, now: i64, feed_until: i64) -> anyhow::Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE sessions SET revoked_at = ?2
             WHERE sid = ?1 AND revoked_at IS NULL AND expires_at > ?2",
            params![sid, now],
        )?;
        let apps = tx.execute("DELETE FROM app_sessions WHERE sid = ?1", [sid])?;
        // App sessions may outlive their sign-in session's record: their TEs go too.
        if n == 1 || apps > 0 {
            append_revocation(&tx, RevokedKind::Session, sid, now, feed_until)?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    // revocation feed
    fn record_revocation(
        &self,
        kind: RevokedKind,
        id: &str,
        at: i64,
        expires_at: i64,
    ) -> anyhow::Result<()> {
        let conn = self.conn()?;
        append_revocation(&conn, kind, id, at, expires_at)?;
        Ok(())
    }

    fn revocations_after(
        &self,
        after: i64,
        limit: usize,
        now: i64,
    ) -> anyhow::Result<Vec<RevocationEntry>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT seq, kind, id, at, expires_at FROM revocations
             WHERE seq > ?1 AND expires_at > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, now, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, id, at, expires_at) = row?;
            let kind = RevokedKind::parse(&kind)
                .with_context(|| format!("stored revocation {seq} has an unknown kind"))?;
            out.push(RevocationEntry {
                seq,
                kind,
                id,
                at,
                expires_at,
            });
        }
        Ok(out)
    }
}

// revocation feed
/// Appends one feed entry inside the caller's transaction (or connection).
fn append_revocation(
    conn: &Connection,
    kind: RevokedKind,
    id: &str,
    at: i64,
    expires_at: i64,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO revocations (kind, id, at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![kind.as_str(), id, at, expires_at],
    )
}
