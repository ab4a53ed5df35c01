//! The store's contract: what every backend must do, run against each (SQLite and PostgreSQL;
//! another backend adds one line at the bottom). Single use (codes, flows, app codes), refresh
//! replay, the upstream refresh lease, version-conditioned writes, the limits, the sweep, the
//! signing keys, the identity provider's users due for a check and their lease, the ledger of
//! assertion ids (`jti`), and all of it under concurrency from two handles on one database (two
//! replicas).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Barrier};

use warden_token_service::flows::authorize::AuthorizeGrant;
use warden_token_service::store::{
    AppCode, AppSession, AuthCode, CodeLookup, Grant, GrantFilter, IdpLogin, IdpUserRecord,
    PendingFlow, PendingLimit, Redemption, RefreshToken, Retention, Session, SigningKeyRecord,
    Store, StoreError, StoredClient, UpstreamFlow, UpstreamRecord, UpstreamRegistrationRecord,
};
use warden_token_service::upstream_discovery::registration::{self, Registration};
use warden_token_service::vault::seal::Sealer;

/// A database under test: every `handle` is another connection to the same data, as another
/// replica would have.
pub trait Backend {
    fn handle(&self) -> Arc<dyn Store>;
}

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Option<Self> {
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
        })
    }
}

impl Backend for Sqlite {
    fn handle(&self) -> Arc<dyn Store> {
        Arc::new(warden_token_service::SqliteStore::open(&self.dir.path().join("w.db")).unwrap())
    }
}

/// A fresh PostgreSQL database (`common::pg`); each handle is a store of its own on it, with
/// a pool of its own, as another replica's.
struct Postgres {
    db: common::pg::PgDb,
}

impl Postgres {
    fn new() -> Option<Self> {
        common::pg::PgDb::create().map(|db| Self { db })
    }
}

impl Backend for Postgres {
    fn handle(&self) -> Arc<dyn Store> {
        Arc::new(warden_token_service::store::PostgresStore::connect(&self.db.url, 8).unwrap())
    }
}

const NOW: i64 = 1_000_000;
/// How long revocation feed entries are kept, in these checks.
const FEED: i64 = NOW + 3_600;
const RETENTION: Retention = Retention {
    unused_client_ttl: 86_400,
    idle_client_ttl: 30 * 86_400,
};

fn request() -> AuthorizeGrant {
    AuthorizeGrant {
        client_id: "c".into(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        redirect_uri_explicit: true,
        state: None,
        code_challenge: "x".repeat(43),
        resource: "http://127.0.0.1/mcp".into(),
        scope: String::new(),
    }
}

fn code(expires_at: i64) -> AuthCode {
    AuthCode {
        request: request(),
        user: "alice@example.com".into(),
        sid: "sid".into(),
        expires_at,
    }
}

fn grant(id: &str) -> Grant {
    Grant {
        id: id.into(),
        client_id: "c".into(),
        user: "alice@example.com".into(),
        sid: "sid".into(),
        resource: "http://127.0.0.1/mcp".into(),
        scope: String::new(),
        created_at: NOW,
        revoked: false,
    }
}

fn refresh(hash: &str, grant: &str, expires_at: i64) -> RefreshToken {
    RefreshToken {
        token_hash: hash.into(),
        grant_id: grant.into(),
        created_at: NOW,
        expires_at,
        used: false,
    }
}

fn flow(id: &str, expires_at: i64) -> PendingFlow {
    PendingFlow {
        id: id.into(),
        csrf: "csrf".into(),
        request: request(),
        expires_at,
        browser: String::new(),
        user: None,
        next: None,
    }
}

fn upstream(user: &str) -> UpstreamRecord {
    UpstreamRecord {
        user: user.into(),
        route: "gh".into(),
        access_token: Some(b"sealed-access".to_vec()),
        refresh_token: Some(b"sealed-refresh".to_vec()),
        issued_at: NOW,
        expires_at: Some(NOW + 60),
        granted_at: NOW,
        scope: "repo".into(),
        ..UpstreamRecord::default()
    }
}

fn client(id: &str) -> StoredClient {
    StoredClient {
        client_id: id.into(),
        client_name: None,
        secret_hash: None,
        token_endpoint_auth_method: warden_token_service::config::TokenEndpointAuthMethod::None,
        redirect_uris: vec!["http://127.0.0.1/cb".into()],
        grant_types: vec!["authorization_code".into()],
        response_types: vec!["code".into()],
        application_type: None,
        created_at: NOW,
        jwks: None,
        jwks_uri: None,
    }
}

/// Runs `f` on `n` threads, half on each of two handles, all released at once; returns what
/// each returned.
fn race<T: Send + 'static>(
    b: &dyn Backend,
    n: usize,
    f: impl Fn(&dyn Store, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let handles = [b.handle(), b.handle()];
    let f = Arc::new(f);
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (store, f, start) = (handles[i % 2].clone(), f.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                f(store.as_ref(), i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

pub fn a_code_redeems_once_and_a_replay_revokes_what_it_produced(b: &dyn Backend) {
    let s = b.handle();
    s.insert_code("h", &code(NOW + 60)).unwrap();
    assert!(matches!(s.code("h").unwrap(), CodeLookup::Fresh(_)));
    let (g1, r1) = (grant("g1"), refresh("r1", "g1", NOW + 3600));
    assert_eq!(
        s.redeem_code("h", Some((&g1, Some(&r1))), NOW, FEED)
            .unwrap(),
        Redemption::Redeemed
    );
    let (g2, r2) = (grant("g2"), refresh("r2", "g2", NOW + 3600));
    assert_eq!(
        s.redeem_code("h", Some((&g2, Some(&r2))), NOW + 1, FEED)
            .unwrap(),
        Redemption::Replayed
    );
    assert!(
        s.grant("g1").unwrap().unwrap().revoked,
        "the replay revokes"
    );
    assert!(
        s.grant("g2").unwrap().is_none(),
        "the replay issues nothing"
    );
    assert!(s.refresh_token("r2").unwrap().is_none());
    assert_eq!(
        s.code("h").unwrap(),
        CodeLookup::Reused {
            grant_id: Some("g1".into())
        }
    );
    assert_eq!(s.code("nope").unwrap(), CodeLookup::Missing);
    assert_eq!(
        s.redeem_code("nope", None, NOW, FEED).unwrap(),
        Redemption::Missing
    );
    // A code burnt after a failed check produced nothing; presenting it again is a replay.
    s.insert_code("burn", &code(NOW + 60)).unwrap();
    assert_eq!(
        s.redeem_code("burn", None, NOW, FEED).unwrap(),
        Redemption::Redeemed
    );
    assert_eq!(
        s.code("burn").unwrap(),
        CodeLookup::Reused { grant_id: None }
    );
}

pub fn a_refresh_token_rotates_once_and_not_after_its_grant_is_revoked(b: &dyn Backend) {
    let s = b.handle();
    s.insert_code("h", &code(NOW + 60)).unwrap();
    let (g, r) = (grant("g"), refresh("r0", "g", NOW + 3600));
    s.redeem_code("h", Some((&g, Some(&r))), NOW, FEED).unwrap();
    assert!(s
        .rotate_refresh_token("r0", &refresh("r1", "g", NOW + 3600), NOW)
        .unwrap());
    assert!(s.refresh_token("r0").unwrap().unwrap().used);
    // The replay of a rotated-out token rotates nothing.
    assert!(!s
        .rotate_refresh_token("r0", &refresh("r1b", "g", NOW + 3600), NOW)
        .unwrap());
    assert!(s.refresh_token("r1b").unwrap().is_none());
    s.revoke_grant("g", NOW + 1, FEED).unwrap();
    assert!(!s
        .rotate_refresh_token("r1", &refresh("r2", "g", NOW + 3600), NOW + 2)
        .unwrap());
    assert!(s.grant("g").unwrap().unwrap().revoked);
}

pub fn a_token_keeps_the_authorization_server_that_issued_it(b: &dyn Backend) {
    let s = b.handle();
    let mut granted = upstream("u");
    granted.authorization_server = "https://as1.example".into();
    s.put_upstream_token(&granted).unwrap();
    let read = s.upstream_token("u", "gh").unwrap().unwrap();
    assert_eq!(read.authorization_server, "https://as1.example");
    // A refresh is at the same server: the row keeps it, whatever the record says.
    let mut refreshed = upstream("u");
    refreshed.issued_at = NOW + 1;
    assert!(s
        .put_refreshed_upstream_token(&refreshed, read.version)
        .unwrap());
    let read = s.upstream_token("u", "gh").unwrap().unwrap();
    assert_eq!(read.authorization_server, "https://as1.example");
    assert!(s
        .drop_upstream_token("u", "gh", read.version, "", None, None)
        .unwrap());
    // A new consent at another server binds the row to that one.
    granted.authorization_server = "https://as2.example".into();
    s.put_upstream_token(&granted).unwrap();
    let read = s.upstream_token("u", "gh").unwrap().unwrap();
    assert_eq!(read.authorization_server, "https://as2.example");
    // A configured provider's rows name none.
    s.put_upstream_token(&upstream("v")).unwrap();
    assert_eq!(
        s.upstream_token("v", "gh")
            .unwrap()
            .unwrap()
            .authorization_server,
        ""
    );
}

pub fn the_upstream_refresh_lease_has_one_holder_and_follows_the_row_version(b: &dyn Backend) {
    let s = b.handle();
    s.put_upstream_token(&upstream("u")).unwrap();
    let read = s.upstream_token("u", "gh").unwrap().unwrap();
    assert!(s
        .claim_upstream_refresh("u", "gh", read.version, NOW, NOW + 30)
        .unwrap());
    assert!(
        !s.claim_upstream_refresh("u", "gh", read.version, NOW + 29, NOW + 59)
            .unwrap(),
        "held until it runs out"
    );
    // The holder stores its refresh: the version moves on and the lease ends.
    let mut refreshed = upstream("u");
    refreshed.access_token = Some(b"sealed-access-2".to_vec());
    refreshed.issued_at = NOW + 1;
    assert!(s
        .put_refreshed_upstream_token(&refreshed, read.version)
        .unwrap());
    // A replica that read the row before that refresh cannot claim with what it read (its
    // refresh token was rotated out); with the row as it is now it can.
    assert!(!s
        .claim_upstream_refresh("u", "gh", read.version, NOW + 2, NOW + 32)
        .unwrap());
    let now_row = s.upstream_token("u", "gh").unwrap().unwrap();
    assert_eq!(
        now_row.access_token.as_deref(),
        Some(&b"sealed-access-2"[..])
    );
    assert!(s
        .claim_upstream_refresh("u", "gh", now_row.version, NOW + 2, NOW + 32)
        .unwrap());
    // A lease whose holder died runs out.
    assert!(s
        .claim_upstream_refresh("u", "gh", now_row.version, NOW + 32, NOW + 62)
        .unwrap());
    s.release_upstream_refresh("u", "gh").unwrap();
    assert!(s
        .claim_upstream_refresh("u", "gh", now_row.version, NOW + 33, NOW + 63)
        .unwrap());
    // A refresh stored over a row dropped meanwhile is discarded.
    assert!(s
        .drop_upstream_token("u", "gh", now_row.version, "", None, Some(NOW + 34))
        .unwrap());
    assert!(!s
        .put_refreshed_upstream_token(&refreshed, now_row.version)
        .unwrap());
    assert!(s
        .upstream_token("u", "gh")
        .unwrap()
        .unwrap()
        .access_token
        .is_none());
    // A stale drop does not undo a new grant.
    s.put_upstream_token(&upstream("u")).unwrap();
    assert!(!s
        .drop_upstream_token("u", "gh", now_row.version, "", None, None)
        .unwrap());
    assert!(s.delete_upstream_token("u", "gh").unwrap());
    assert!(s.upstream_token("u", "gh").unwrap().is_none());
}

pub fn takes_are_single_use_and_expired_ones_give_nothing(b: &dyn Backend) {
    let s = b.handle();
    let limit = PendingLimit { max: 100, now: NOW };
    let up = UpstreamFlow {
        request: request(),
        user: "alice@example.com".into(),
        sid: "sid".into(),
        browser: String::new(),
        route: "gh".into(),
        pkce_verifier: "v".into(),
        expires_at: NOW + 60,
        redirect_url: None,
        authorization_server: "https://as.example".into(),
    };
    assert!(s.insert_upstream_flow("st", &up, limit).unwrap());
    assert_eq!(s.live_flow_verifiers(NOW).unwrap(), vec!["v".to_owned()]);
    assert_eq!(s.take_upstream_flow("st", NOW).unwrap(), Some(up.clone()));
    assert_eq!(s.take_upstream_flow("st", NOW).unwrap(), None);
    assert!(s.insert_upstream_flow("old", &up, limit).unwrap());
    assert_eq!(s.take_upstream_flow("old", NOW + 60).unwrap(), None);
    assert_eq!(s.take_upstream_flow("old", NOW).unwrap(), None, "gone");

    let login = IdpLogin {
        flow_id: "f".into(),
        browser: String::new(),
        nonce: "n".into(),
        pkce_verifier: "v".into(),
        expires_at: NOW + 60,
    };
    assert!(s.insert_idp_login("st", &login, limit).unwrap());
    assert_eq!(s.take_idp_login("st", NOW).unwrap(), Some(login));
    assert_eq!(s.take_idp_login("st", NOW).unwrap(), None);

    let app = AppCode {
        route: "app".into(),
        user: "alice@example.com".into(),
        sid: "sid".into(),
        return_to: "/".into(),
        nonce: String::new(),
        session_expires_at: NOW + 3600,
        expires_at: NOW + 60,
    };
    s.insert_app_code("c", &app).unwrap();
    assert_eq!(s.take_app_code("c", NOW).unwrap(), Some(app));
    assert_eq!(s.take_app_code("c", NOW).unwrap(), None);

    assert!(s.insert_flow(&flow("f", NOW + 60), limit).unwrap());
    assert_eq!(s.record_failed_login("f").unwrap(), 1);
    assert_eq!(s.record_failed_login("f").unwrap(), 2);
    assert!(s.flow("f", NOW).unwrap().is_some());
    assert!(s.flow("f", NOW + 60).unwrap().is_none(), "expired");
    assert!(s.delete_flow("f").unwrap());
    assert!(!s.delete_flow("f").unwrap());
}

pub fn sessions_end_with_their_app_sessions(b: &dyn Backend) {
    let s = b.handle();
    let session = Session {
        sid: "sid1".into(),
        user: "alice@example.com".into(),
        created_at: NOW,
        expires_at: NOW + 3600,
    };
    s.insert_session("cookie1", &session).unwrap();
    // A second session under the same cookie digest is a conflict, typed as such.
    let dup = s.insert_session("cookie1", &session);
    assert!(
        matches!(dup, Err(StoreError::Conflict(_))),
        "a duplicate key is a conflict: {dup:?}"
    );
    assert_eq!(s.session("cookie1", NOW).unwrap(), Some(session.clone()));
    assert!(s.session_live("sid1", NOW).unwrap());
    let app = AppSession {
        route: "app".into(),
        user: "alice@example.com".into(),
        sid: "sid1".into(),
        created_at: NOW,
        expires_at: NOW + 600,
    };
    s.insert_app_session("app1", &app).unwrap();
    assert_eq!(s.app_session("app1", NOW).unwrap(), Some(app));
    assert_eq!(
        s.revoke_session("cookie1", NOW + 1, FEED).unwrap(),
        Some("sid1".into())
    );
    assert!(!s.session_live("sid1", NOW + 1).unwrap());
    assert_eq!(s.session("cookie1", NOW + 1).unwrap(), None);
    assert_eq!(s.app_session("app1", NOW + 1).unwrap(), None);
    assert_eq!(s.revoke_session("cookie1", NOW + 2, FEED).unwrap(), None);
}

pub fn the_sweep_deletes_what_can_no_longer_matter_and_keeps_the_rest(b: &dyn Backend) {
    let s = b.handle();
    let limit = PendingLimit { max: 100, now: NOW };
    // Expired by `later`: a flow, a code past the replay day, a session, an app session, a
    // refresh token, a device. Alive: their twins.
    let later = NOW + 2 * 86_400;
    assert!(s.insert_flow(&flow("dead", NOW + 60), limit).unwrap());
    assert!(s.insert_flow(&flow("live", later + 60), limit).unwrap());
    s.insert_code("dead", &code(NOW + 60)).unwrap();
    s.insert_code("live", &code(later + 60)).unwrap();
    s.redeem_code(
        "live",
        Some((&grant("g"), Some(&refresh("r", "g", later + 3600)))),
        NOW,
        FEED,
    )
    .unwrap();
    s.insert_code("h2", &code(later + 60)).unwrap();
    s.redeem_code(
        "h2",
        Some((&grant("g-old"), Some(&refresh("r-old", "g-old", NOW + 60)))),
        NOW,
        FEED,
    )
    .unwrap();
    let session = |sid: &str, expires_at| Session {
        sid: sid.into(),
        user: "alice@example.com".into(),
        created_at: NOW,
        expires_at,
    };
    s.insert_session("s-dead", &session("sd", NOW + 60))
        .unwrap();
    s.insert_session("s-live", &session("sl", later + 60))
        .unwrap();
    s.insert_device("d-dead", "alice", NOW + 60).unwrap();
    s.insert_device("d-live", "alice", later + 60).unwrap();
    s.sweep(
        later,
        &Retention {
            unused_client_ttl: 86_400,
            idle_client_ttl: 30 * 86_400,
        },
    )
    .unwrap();
    // Asked at NOW, what was deleted is missing and what lives is still there.
    assert!(s.flow("dead", NOW).unwrap().is_none());
    assert!(s.flow("live", NOW).unwrap().is_some());
    assert_eq!(s.code("dead").unwrap(), CodeLookup::Missing);
    assert!(matches!(s.code("live").unwrap(), CodeLookup::Reused { .. }));
    assert!(s.session("s-dead", NOW).unwrap().is_none());
    assert!(s.session("s-live", NOW).unwrap().is_some());
    assert!(s.device_account("d-dead", NOW).unwrap().is_none());
    assert!(s.device_account("d-live", NOW).unwrap().is_some());
    // An account remembers its newest 20 devices.
    for i in 0..25 {
        s.insert_device(&format!("many-{i}"), "bob", later + 1000 + i)
            .unwrap();
    }
    assert!(s.device_account("many-4", NOW).unwrap().is_none());
    assert!(s.device_account("many-5", NOW).unwrap().is_some());
    assert!(
        s.device_account("d-live", NOW).unwrap().is_some(),
        "per account"
    );
    assert!(s.refresh_token("r").unwrap().is_some());
    assert!(s.refresh_token("r-old").unwrap().is_none());
    assert!(s.grant("g").unwrap().is_some());
    assert!(
        s.grant("g-old").unwrap().is_none(),
        "a grant whose family is gone, past the day"
    );

    // A revoked family goes a day after its revocation, though its tokens would live on; a
    // revoked session goes at once.
    s.insert_code("h3", &code(later + 60)).unwrap();
    s.redeem_code(
        "h3",
        Some((
            &grant("g-rev"),
            Some(&refresh("r-rev", "g-rev", later + 30 * 86_400)),
        )),
        NOW,
        FEED,
    )
    .unwrap();
    s.insert_code("h4", &code(later + 60)).unwrap();
    s.redeem_code(
        "h4",
        Some((
            &grant("g-keep"),
            Some(&refresh("r-keep", "g-keep", later + 30 * 86_400)),
        )),
        NOW,
        FEED,
    )
    .unwrap();
    s.revoke_grant("g-rev", later, FEED).unwrap();
    assert_eq!(
        s.revoke_session("s-live", later, FEED).unwrap(),
        Some("sl".into())
    );
    let retention = Retention {
        unused_client_ttl: 86_400,
        idle_client_ttl: 30 * 86_400,
    };
    s.sweep(later + 86_399, &retention).unwrap();
    assert!(
        s.refresh_token("r-rev").unwrap().is_some(),
        "inside the day"
    );
    assert!(!s.session_live("sl", later).unwrap());
    s.sweep(later + 86_400, &retention).unwrap();
    assert!(s.refresh_token("r-rev").unwrap().is_none());
    assert!(s.grant("g-rev").unwrap().is_none());
    assert!(
        s.refresh_token("r-keep").unwrap().is_some(),
        "a live family stays"
    );
    assert!(s.grant("g-keep").unwrap().is_some());
}

pub fn one_replica_holds_a_lease_at_a_time(b: &dyn Backend) {
    let won = race(b, 8, |s, i| {
        s.try_lease("sweep", &format!("replica-{i}"), NOW, NOW + 240)
            .unwrap()
    });
    let winners: Vec<usize> = (0..8).filter(|i| won[*i]).collect();
    assert_eq!(winners.len(), 1, "one holder: {won:?}");
    let holder = format!("replica-{}", winners[0]);
    let s = b.handle();
    assert!(!s
        .try_lease("sweep", "someone-else", NOW + 239, NOW + 479)
        .unwrap());
    assert!(
        s.try_lease("sweep", &holder, NOW + 10, NOW + 250).unwrap(),
        "extended"
    );
    assert!(!s
        .try_lease("sweep", "someone-else", NOW + 249, NOW + 489)
        .unwrap());
    assert!(
        s.try_lease("sweep", "someone-else", NOW + 250, NOW + 490)
            .unwrap(),
        "ran out"
    );
    assert!(
        s.try_lease("other-work", &holder, NOW, NOW + 10).unwrap(),
        "leases are named"
    );
}

pub fn registrations_expire_unused(b: &dyn Backend) {
    let s = b.handle();
    assert!(s.insert_client(&client("a"), 10).unwrap());
    assert_eq!(s.client("a").unwrap().unwrap().client_id, "a");
    s.sweep(
        NOW + 86_401,
        &Retention {
            unused_client_ttl: 86_400,
            idle_client_ttl: 30 * 86_400,
        },
    )
    .unwrap();
    assert!(s.client("a").unwrap().is_none());
}

pub fn one_redemption_one_rotation_one_lease_one_take_across_replicas(b: &dyn Backend) {
    let s = b.handle();
    s.insert_code("h", &code(NOW + 60)).unwrap();
    let won = race(b, 8, |s, i| {
        let (g, r) = (
            grant(&format!("g{i}")),
            refresh(&format!("r{i}"), &format!("g{i}"), NOW + 3600),
        );
        s.redeem_code("h", Some((&g, Some(&r))), NOW, FEED).unwrap() == Redemption::Redeemed
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "one redemption");

    let CodeLookup::Reused { grant_id: Some(g) } = s.code("h").unwrap() else {
        panic!("redeemed");
    };
    // The winner's grant was revoked by the losers' replays; start a clean family.
    let _ = g;
    s.insert_code("h2", &code(NOW + 60)).unwrap();
    s.redeem_code(
        "h2",
        Some((&grant("fam"), Some(&refresh("fam0", "fam", NOW + 3600)))),
        NOW,
        FEED,
    )
    .unwrap();
    let won = race(b, 8, |s, i| {
        s.rotate_refresh_token(
            "fam0",
            &refresh(&format!("fam1-{i}"), "fam", NOW + 3600),
            NOW,
        )
        .unwrap()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "one rotation");

    s.put_upstream_token(&upstream("u")).unwrap();
    let version = s.upstream_token("u", "gh").unwrap().unwrap().version;
    let won = race(b, 8, move |s, _| {
        s.claim_upstream_refresh("u", "gh", version, NOW, NOW + 30)
            .unwrap()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "one lease holder");

    let app = AppCode {
        route: "app".into(),
        user: "alice@example.com".into(),
        sid: "sid".into(),
        return_to: "/".into(),
        nonce: String::new(),
        session_expires_at: NOW + 3600,
        expires_at: NOW + 60,
    };
    s.insert_app_code("ac", &app).unwrap();
    let won = race(b, 8, |s, _| s.take_app_code("ac", NOW).unwrap().is_some());
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "one take");
}

pub fn limits_hold_across_replicas(b: &dyn Backend) {
    let reserved = race(b, 16, |s, _| {
        s.reserve_login_attempt("bucket", NOW - 900, 5, NOW)
            .unwrap()
    });
    assert_eq!(
        reserved.iter().filter(|r| r.is_some()).count(),
        5,
        "the login throttle counts across replicas"
    );

    let registered = race(b, 12, |s, i| {
        s.insert_client(&client(&format!("c{i}")), 3).unwrap()
    });
    assert_eq!(
        registered.iter().filter(|r| **r).count(),
        3,
        "the unused-registration limit counts across replicas"
    );

    let started = race(b, 12, |s, i| {
        s.insert_flow(
            &flow(&format!("f{i}"), NOW + 600),
            PendingLimit { max: 4, now: NOW },
        )
        .unwrap()
    });
    assert_eq!(
        started.iter().filter(|r| **r).count(),
        4,
        "the pending-records limit counts across replicas"
    );

    let taken = race(b, 12, |s, _| {
        s.take_rate_token("registrations", "v4:192.0.2.1", 5, NOW)
            .unwrap()
    });
    assert_eq!(
        taken.iter().filter(|t| t.is_ok()).count(),
        5,
        "a rate limit counts across replicas: {taken:?}"
    );
    assert!(taken.contains(&Err(12)), "one back every 12 s: {taken:?}");
    let s = b.handle();
    // Another address and another limiter have buckets of their own; the bucket refills.
    assert_eq!(
        s.take_rate_token("registrations", "v4:192.0.2.2", 5, NOW)
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        s.take_rate_token("new_flows", "v4:192.0.2.1", 5, NOW)
            .unwrap(),
        Ok(())
    );
    assert!(s
        .take_rate_token("registrations", "v4:192.0.2.1", 5, NOW + 11)
        .unwrap()
        .is_err());
    assert_eq!(
        s.take_rate_token("registrations", "v4:192.0.2.1", 5, NOW + 12)
            .unwrap(),
        Ok(())
    );
}

fn signing_key(kid: &str, seq: i64, signs_from: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        seq,
        alg: "ES256".into(),
        sealed_key: kid.as_bytes().to_vec(),
        created_at: NOW,
        signs_from,
        retire_at: None,
    }
}

pub fn signing_keys_have_one_first_key_and_retire_in_order(b: &dyn Backend) {
    // Replicas starting together on an empty store: exactly one first key.
    let won = race(b, 8, |s, i| {
        s.add_signing_key(&signing_key(&format!("k{i}"), 1, 0), None)
            .unwrap()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "one first key");
    let s = b.handle();
    let keys = s.signing_keys().unwrap();
    assert_eq!(keys.len(), 1);
    let first = keys[0].kid.clone();

    // A rotation retires every key not retired yet, and only those; the same seq twice loses.
    assert!(s
        .add_signing_key(&signing_key("k-b", 2, NOW + 600), Some(NOW + 930))
        .unwrap());
    assert!(!s
        .add_signing_key(&signing_key("k-x", 2, NOW + 600), Some(NOW + 1))
        .unwrap());
    assert!(s
        .add_signing_key(&signing_key("k-c", 3, NOW + 700), Some(NOW + 1030))
        .unwrap());
    let keys = s.signing_keys().unwrap();
    let got: Vec<_> = keys
        .iter()
        .map(|k| (k.kid.as_str(), k.seq, k.retire_at))
        .collect();
    assert_eq!(
        got,
        vec![
            (first.as_str(), 1, Some(NOW + 930)),
            ("k-b", 2, Some(NOW + 1030)),
            ("k-c", 3, None)
        ]
    );
    assert_eq!(keys[2], signing_key("k-c", 3, NOW + 700));

    // A re-seal writes only over what it read.
    assert!(s.reseal_signing_key("k-c", b"k-c", b"new").unwrap());
    assert!(!s.reseal_signing_key("k-c", b"k-c", b"newer").unwrap());
    assert_eq!(s.signing_keys().unwrap()[2].sealed_key, b"new");

    // The sweep deletes retired keys once retired, never the others.
    let retention = Retention {
        unused_client_ttl: 3600,
        idle_client_ttl: 3600,
    };
    s.sweep(NOW + 929, &retention).unwrap();
    assert_eq!(s.signing_keys().unwrap().len(), 3);
    s.sweep(NOW + 930, &retention).unwrap();
    let kids: Vec<_> = s
        .signing_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, vec!["k-b", "k-c"]);
}

fn idp_user(key: &str, refresh: Option<&[u8]>) -> IdpUserRecord {
    IdpUserRecord {
        key: key.into(),
        email: format!("{key}@example.com"),
        name: key.into(),
        groups: vec!["g".into()],
        updated_at: NOW,
        refresh_token: refresh.map(<[u8]>::to_vec),
        access_token: Some(b"sealed-access".to_vec()),
        checked_at: NOW,
    }
}

fn session_of(user: &str, sid: &str) -> Session {
    Session {
        sid: sid.into(),
        user: user.into(),
        created_at: NOW,
        expires_at: NOW + 3600,
    }
}

pub fn idp_users_are_checked_by_one_replica_at_a_time_and_only_while_they_hold_something(
    b: &dyn Backend,
) {
    let s = b.handle();
    s.put_idp_user(&idp_user("a", Some(b"rt-a"))).unwrap();
    s.put_idp_user(&idp_user("idle", Some(b"rt-idle"))).unwrap();
    s.insert_session("cookie-a", &session_of("a", "sid-a"))
        .unwrap();
    let later = NOW + 100;
    // Not due yet (checked at NOW), then due; the user without anything live never is.
    assert_eq!(
        s.lease_idp_check("r1", NOW - 1, later, later + 60).unwrap(),
        None
    );
    let leased = s
        .lease_idp_check("r1", NOW, later, later + 60)
        .unwrap()
        .unwrap();
    assert_eq!(leased, idp_user("a", Some(b"rt-a")));
    assert_eq!(
        s.lease_idp_check("r2", NOW, later, later + 60).unwrap(),
        None
    );
    // A sign-in meanwhile without a refresh token keeps the stored one.
    s.put_idp_user(&IdpUserRecord {
        checked_at: NOW + 1,
        ..idp_user("a", None)
    })
    .unwrap();
    assert_eq!(
        s.idp_user("a").unwrap().unwrap().refresh_token.as_deref(),
        Some(&b"rt-a"[..])
    );
    // Only the holder writes the result back; that lets the lease go.
    let checked = IdpUserRecord {
        groups: vec!["new".into()],
        refresh_token: Some(b"rt-a2".to_vec()),
        access_token: None,
        checked_at: later,
        ..idp_user("a", None)
    };
    assert!(!s.finish_idp_check("r2", &checked).unwrap());
    assert!(s.finish_idp_check("r1", &checked).unwrap());
    assert_eq!(s.idp_user("a").unwrap().unwrap(), checked);
    assert_eq!(
        s.lease_idp_check("r2", later - 1, later, later + 60)
            .unwrap(),
        None
    );
    // Due again: r2 takes it, defers it (no answer); nobody takes it before the retry time.
    let leased = s
        .lease_idp_check("r2", later, later, later + 60)
        .unwrap()
        .unwrap();
    assert_eq!(leased, checked);
    let rotated = IdpUserRecord {
        refresh_token: Some(b"rt-a3".to_vec()),
        ..leased.clone()
    };
    s.defer_idp_check("r1", &rotated, later + 30).unwrap();
    assert_eq!(s.idp_user("a").unwrap().unwrap(), checked, "not the holder");
    s.defer_idp_check("r2", &rotated, later + 30).unwrap();
    assert_eq!(
        s.idp_user("a").unwrap().unwrap(),
        rotated,
        "the tokens stored, the claims and checked_at as they were"
    );
    assert_eq!(
        s.lease_idp_check("r1", later, later + 29, later + 90)
            .unwrap(),
        None
    );
    assert!(s
        .lease_idp_check("r1", later, later + 30, later + 90)
        .unwrap()
        .is_some());
    // A lease that ran out is anyone's.
    assert!(s
        .lease_idp_check("r2", later, later + 90, later + 150)
        .unwrap()
        .is_some());
    // Nothing live any more: never due.
    s.revoke_user("a", &GrantFilter::default(), later + 200, FEED + 200)
        .unwrap();
    assert_eq!(
        s.lease_idp_check("r1", later + 200, later + 200, later + 260)
            .unwrap(),
        None
    );

    // Many replicas at once: one lease.
    s.insert_session("cookie-idle", &session_of("idle", "sid-idle"))
        .unwrap();
    let won = race(b, 8, |st, i| {
        st.lease_idp_check(&format!("r{i}"), NOW, NOW + 10, NOW + 70)
            .unwrap()
            .is_some()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
}

pub fn users_with_live_grants_are_those_holding_a_grant_or_a_session(b: &dyn Backend) {
    let s = b.handle();
    s.insert_code("h", &code(NOW + 60)).unwrap();
    let g = Grant {
        user: "granted@example.com".into(),
        ..grant("g1")
    };
    s.redeem_code(
        "h",
        Some((&g, Some(&refresh("r1", "g1", NOW + 3600)))),
        NOW,
        FEED,
    )
    .unwrap();
    s.insert_session("c1", &session_of("signed-in@example.com", "sid1"))
        .unwrap();
    s.insert_session("c2", &session_of("revoked@example.com", "sid2"))
        .unwrap();
    s.revoke_sid("sid2", NOW, FEED).unwrap();
    s.insert_app_session(
        "app1",
        &AppSession {
            route: "app".into(),
            user: "app-user@example.com".into(),
            sid: "sid9".into(),
            created_at: NOW,
            expires_at: NOW + 600,
        },
    )
    .unwrap();
    let mut users = s.users_with_live_grants(NOW + 1).unwrap();
    users.sort();
    assert_eq!(
        users,
        vec![
            "app-user@example.com",
            "granted@example.com",
            "signed-in@example.com"
        ]
    );
    s.revoke_grant("g1", NOW + 2, FEED).unwrap();
    assert!(!s
        .users_with_live_grants(NOW + 2)
        .unwrap()
        .contains(&"granted@example.com".to_owned()));
}

pub fn an_assertion_id_is_used_once_across_replicas_and_swept_after_expiry(b: &dyn Backend) {
    let (a, other) = (b.handle(), b.handle());
    assert!(a.use_assertion_id("client-1", "j1", NOW + 60).unwrap());
    assert!(!other.use_assertion_id("client-1", "j1", NOW + 60).unwrap());
    assert!(!a.use_assertion_id("client-1", "j1", NOW + 60).unwrap());
    // Ids are per issuer (a client, an identity provider).
    assert!(other
        .use_assertion_id("https://idp.example", "j1", NOW + 60)
        .unwrap());
    // Replicas recording one id at once: exactly one gets it.
    let won = race(b, 8, |s, _| {
        s.use_assertion_id("client-2", "race", NOW + 60).unwrap()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1);
    // The sweep keeps an id while its assertion is valid, and forgets it after.
    a.sweep(NOW + 30, &RETENTION).unwrap();
    assert!(!other.use_assertion_id("client-1", "j1", NOW + 60).unwrap());
    a.sweep(NOW + 60, &RETENTION).unwrap();
    assert!(other.use_assertion_id("client-1", "j1", NOW + 200).unwrap());
}

pub fn a_client_keeps_its_keys(b: &dyn Backend) {
    let s = b.handle();
    let mut c = client("signed");
    c.token_endpoint_auth_method =
        warden_token_service::config::TokenEndpointAuthMethod::PrivateKeyJwt;
    c.jwks = Some(serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}));
    assert!(s.insert_client(&c, 10).unwrap());
    let mut d = client("by-url");
    d.jwks_uri = Some("https://client.example.com/jwks".into());
    assert!(s.insert_client(&d, 10).unwrap());
    assert_eq!(b.handle().client("signed").unwrap().unwrap(), c);
    assert_eq!(b.handle().client("by-url").unwrap().unwrap(), d);
}

pub fn an_upstream_registration_is_kept_once_per_server_sealed(b: &dyn Backend) {
    const ISSUER: &str = "https://as.example";
    let sealer = Sealer::new(&[7u8; 32]);
    let r = Registration {
        client_id: "gw-client".into(),
        client_secret: Some("s3cr3t-never-in-clear".into()),
        registered_at: NOW,
        redirect_uri: "https://gw.example/upstream/callback".into(),
        token_endpoint_auth_method: "client_secret_basic".into(),
    };
    let record = UpstreamRegistrationRecord {
        issuer: ISSUER.into(),
        sealed: registration::seal(&sealer, ISSUER, &r).unwrap(),
        registered_at: NOW,
    };
    let (a, other) = (b.handle(), b.handle());
    assert_eq!(a.upstream_registration(ISSUER).unwrap(), None);
    assert!(a.insert_upstream_registration(&record).unwrap());
    // Another replica reads it, and opens it with the same key; its bytes hold no secret.
    let got = other.upstream_registration(ISSUER).unwrap().unwrap();
    assert_eq!(got, record);
    let secret = b"s3cr3t-never-in-clear";
    assert!(!got.sealed.windows(secret.len()).any(|w| w == secret));
    assert!(!got.sealed.windows(9).any(|w| w == b"gw-client"));
    assert_eq!(
        registration::open(&sealer, ISSUER, &got.sealed),
        Some(r.clone())
    );
    // Bound to its issuer: another server's row does not open it.
    assert_eq!(
        registration::open(&sealer, "https://other.example", &got.sealed),
        None
    );
    // A second insert keeps the first.
    let mut second = record.clone();
    second.sealed = b"second".to_vec();
    assert!(!other.insert_upstream_registration(&second).unwrap());
    assert_eq!(a.upstream_registration(ISSUER).unwrap().unwrap(), record);
    // Registrations are per server; the sweep leaves them alone.
    let mut elsewhere = record.clone();
    elsewhere.issuer = "https://as2.example".into();
    assert!(other.insert_upstream_registration(&elsewhere).unwrap());
    a.sweep(NOW + 100 * 86_400, &RETENTION).unwrap();
    assert!(a.upstream_registration(ISSUER).unwrap().is_some());
    // Deleted (the server forgot the client): gone, once.
    assert!(a.delete_upstream_registration(ISSUER).unwrap());
    assert!(!other.delete_upstream_registration(ISSUER).unwrap());
    assert_eq!(other.upstream_registration(ISSUER).unwrap(), None);
    assert!(a
        .upstream_registration("https://as2.example")
        .unwrap()
        .is_some());
    // Replicas registering at once: exactly one is kept, and every one reads that one.
    let won = race(b, 8, |s, i| {
        let mine = UpstreamRegistrationRecord {
            issuer: "https://race.example".into(),
            sealed: format!("replica-{i}").into_bytes(),
            registered_at: NOW,
        };
        let inserted = s.insert_upstream_registration(&mine).unwrap();
        (
            inserted,
            mine.sealed,
            s.upstream_registration("https://race.example")
                .unwrap()
                .unwrap()
                .sealed,
        )
    });
    assert_eq!(won.iter().filter(|w| w.0).count(), 1);
    let kept = won.iter().find(|w| w.0).unwrap().1.clone();
    assert!(won.iter().all(|w| w.2 == kept));
}

/// One `#[test]` per contract check and backend.
macro_rules! backend {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;

            fn run(check: fn(&dyn Backend)) {
                let Some(backend) = $open else {
                    return;
                };
                check(&backend);
            }

            #[test]
            fn code_reuse() {
                run(a_code_redeems_once_and_a_replay_revokes_what_it_produced);
            }
            #[test]
            fn refresh_replay() {
                run(a_refresh_token_rotates_once_and_not_after_its_grant_is_revoked);
            }
            #[test]
            fn leases() {
                run(the_upstream_refresh_lease_has_one_holder_and_follows_the_row_version);
            }
            #[test]
            fn token_servers() {
                run(a_token_keeps_the_authorization_server_that_issued_it);
            }
            #[test]
            fn single_use() {
                run(takes_are_single_use_and_expired_ones_give_nothing);
            }
            #[test]
            fn sessions() {
                run(sessions_end_with_their_app_sessions);
            }
            #[test]
            fn sweeps() {
                run(the_sweep_deletes_what_can_no_longer_matter_and_keeps_the_rest);
            }
            #[test]
            fn registrations() {
                run(registrations_expire_unused);
            }
            #[test]
            fn concurrency() {
                run(one_redemption_one_rotation_one_lease_one_take_across_replicas);
            }
            #[test]
            fn lease() {
                run(one_replica_holds_a_lease_at_a_time);
            }
            #[test]
            fn limits() {
                run(limits_hold_across_replicas);
            }
            #[test]
            fn signing_keys() {
                run(signing_keys_have_one_first_key_and_retire_in_order);
            }
            #[test]
            fn idp_checks() {
                run(idp_users_are_checked_by_one_replica_at_a_time_and_only_while_they_hold_something);
            }
            #[test]
            fn assertion_ids() {
                run(an_assertion_id_is_used_once_across_replicas_and_swept_after_expiry);
            }
            #[test]
            fn client_keys() {
                run(a_client_keeps_its_keys);
            }
            #[test]
            fn upstream_registrations() {
                run(an_upstream_registration_is_kept_once_per_server_sealed);
            }
            #[test]
            fn live_users() {
                run(users_with_live_grants_are_those_holding_a_grant_or_a_session);
            }
        }
    };
}

backend!(sqlite, Sqlite::new());
backend!(postgres, Postgres::new());
