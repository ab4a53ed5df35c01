//! The PostgreSQL backend under concurrency across processes: two `PostgresStore`s (two
//! pools, as two replicas would have) on one database, hammered from threads. Each test
//! makes its own database (`common::pg`) and skips, saying so, without a server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Barrier};

use common::pg::PgDb;
use warden_token_service::config::TokenEndpointAuthMethod;
use warden_token_service::store::*;

const NOW: i64 = 1_900_000_000;
const THREADS: usize = 32;

/// Two stores on the database, as two replicas, each with a connection open per thread
/// (so the threads race on the database, not on opening connections).
fn replicas(db: &PgDb) -> [Arc<PostgresStore>; 2] {
    let n = u32::try_from(THREADS / 2).unwrap();
    let stores = [
        Arc::new(PostgresStore::connect(&db.url, n).unwrap()),
        Arc::new(PostgresStore::connect(&db.url, n).unwrap()),
    ];
    // Threads starting together each find no idle connection and open one.
    hammer(&stores, |s, _| s.session_live("warm-up", NOW).unwrap());
    stores
}

/// Runs `f(store, i)` on `THREADS` threads at once, alternating the two stores; returns the
/// results in thread order.
fn hammer<T: Send + 'static>(
    stores: &[Arc<PostgresStore>; 2],
    f: impl Fn(&PostgresStore, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let (f, start, store) = (f.clone(), start.clone(), stores[i % 2].clone());
            std::thread::spawn(move || {
                start.wait();
                f(&store, i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn two_replicas_starting_together_migrate_once() {
    let Some(db) = PgDb::create() else { return };
    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (url, start) = (db.url.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                PostgresStore::connect(&url, 2)
            })
        })
        .collect();
    for t in threads {
        let store = t.join().unwrap().expect("both replicas start");
        assert_eq!(store.schema_versions().unwrap(), vec![1, 2, 3, 4, 5, 6]);
    }
    // Opening again applies nothing.
    let store = PostgresStore::connect(&db.url, 1).unwrap();
    assert_eq!(store.schema_versions().unwrap(), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn the_login_throttle_holds_across_replicas() {
    let Some(db) = PgDb::create() else { return };
    let stores = replicas(&db);
    for bucket in ["alice@example.com", "carol@example.com", "dave@example.com"] {
        let got = hammer(&stores, move |s, _| {
            s.reserve_login_attempt(bucket, NOW - 60, 5, NOW).unwrap()
        });
        assert_eq!(got.iter().flatten().count(), 5, "{bucket}: {got:?}");
    }
    // Another bucket is not held back.
    assert!(stores[0]
        .reserve_login_attempt("bob@example.com", NOW - 60, 5, NOW)
        .unwrap()
        .is_some());
}

fn client(id: String) -> StoredClient {
    StoredClient {
        client_id: id,
        client_name: None,
        secret_hash: None,
        token_endpoint_auth_method: TokenEndpointAuthMethod::None,
        redirect_uris: vec!["http://127.0.0.1/cb".into()],
        grant_types: vec!["authorization_code".into()],
        response_types: vec!["code".into()],
        application_type: None,
        created_at: NOW,
        jwks: None,
        jwks_uri: None,
    }
}

#[test]
fn max_unused_clients_holds_across_replicas() {
    let Some(db) = PgDb::create() else { return };
    let stores = replicas(&db);
    let got = hammer(&stores, |s, i| {
        s.insert_client(&client(format!("c{i}")), 5).unwrap()
    });
    assert_eq!(got.iter().filter(|ok| **ok).count(), 5, "{got:?}");
    assert_eq!(stores[1].registered_clients().unwrap(), 5);
}

fn grant_request() -> AuthorizeGrant {
    AuthorizeGrant {
        client_id: "c".into(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        redirect_uri_explicit: true,
        state: None,
        code_challenge: "x".repeat(43),
        resource: "http://127.0.0.1:9000/mcp".into(),
        scope: "tools.read".into(),
    }
}

#[test]
fn the_pending_limit_holds_across_replicas_and_tables() {
    let Some(db) = PgDb::create() else { return };
    let stores = replicas(&db);
    let limit = PendingLimit { max: 5, now: NOW };
    let got = hammer(&stores, move |s, i| match i % 3 {
        0 => s
            .insert_flow(
                &PendingFlow {
                    id: format!("flow{i}"),
                    csrf: "c".into(),
                    request: grant_request(),
                    expires_at: NOW + 600,
                    browser: String::new(),
                    user: None,
                    next: None,
                },
                limit,
            )
            .unwrap(),
        1 => s
            .insert_upstream_flow(
                &format!("state{i}"),
                &UpstreamFlow {
                    request: grant_request(),
                    user: "alice".into(),
                    sid: "sid".into(),
                    browser: String::new(),
                    route: "demo".into(),
                    pkce_verifier: "v".into(),
                    expires_at: NOW + 600,
                    redirect_url: None,
                    authorization_server: String::new(),
                },
                limit,
            )
            .unwrap(),
        _ => s
            .insert_idp_login(
                &format!("idp{i}"),
                &IdpLogin {
                    flow_id: "f".into(),
                    browser: String::new(),
                    nonce: "n".into(),
                    pkce_verifier: "v".into(),
                    expires_at: NOW + 600,
                },
                limit,
            )
            .unwrap(),
    });
    assert_eq!(got.iter().filter(|ok| **ok).count(), 5, "{got:?}");
    assert_eq!(stores[0].pending_records().unwrap(), 5);
}

fn grant(id: &str) -> Grant {
    Grant {
        id: id.into(),
        client_id: "c".into(),
        user: "alice".into(),
        sid: "sid".into(),
        resource: "http://127.0.0.1:9000/mcp".into(),
        scope: "tools.read".into(),
        created_at: NOW,
        revoked: false,
    }
}

fn refresh(hash: &str, grant_id: &str) -> RefreshToken {
    RefreshToken {
        token_hash: hash.into(),
        grant_id: grant_id.into(),
        created_at: NOW,
        expires_at: NOW + 3600,
        used: false,
    }
}

#[test]
fn one_replica_redeems_a_code_and_the_replay_revokes_its_grant() {
    let Some(db) = PgDb::create() else { return };
    let stores = replicas(&db);
    stores[0]
        .insert_code(
            "code",
            &AuthCode {
                request: grant_request(),
                user: "alice".into(),
                sid: "sid".into(),
                expires_at: NOW + 60,
            },
        )
        .unwrap();
    let got = hammer(&stores, |s, i| {
        let (g, r) = (
            grant(&format!("g{i}")),
            refresh(&format!("r{i}"), &format!("g{i}")),
        );
        s.redeem_code("code", Some((&g, Some(&r))), NOW, NOW + 330)
            .unwrap()
    });
    let winners: Vec<usize> = (0..THREADS)
        .filter(|i| got[*i] == Redemption::Redeemed)
        .collect();
    assert_eq!(winners.len(), 1, "{got:?}");
    assert!(got
        .iter()
        .all(|r| matches!(r, Redemption::Redeemed | Redemption::Replayed)));
    // The losers' presentations are replays: the winner's grant is revoked.
    let g = stores[1]
        .grant(&format!("g{}", winners[0]))
        .unwrap()
        .unwrap();
    assert!(g.revoked);
    assert_eq!(
        stores[1].code("code").unwrap(),
        CodeLookup::Reused {
            grant_id: Some(format!("g{}", winners[0]))
        }
    );
}

#[test]
fn one_replica_rotates_a_refresh_token() {
    let Some(db) = PgDb::create() else { return };
    let stores = replicas(&db);
    stores[0]
        .insert_code(
            "code",
            &AuthCode {
                request: grant_request(),
                user: "alice".into(),
                sid: "sid".into(),
                expires_at: NOW + 60,
            },
        )
        .unwrap();
    let (g, r) = (grant("g"), refresh("r0", "g"));
    assert_eq!(
        stores[0]
            .redeem_code("code", Some((&g, Some(&r))), NOW, NOW + 330)
            .unwrap(),
        Redemption::Redeemed
    );
    let got = hammer(&stores, |s, i| {
        s.rotate_refresh_token("r0", &refresh(&format!("r{}", i + 1), "g"), NOW + 1)
            .unwrap()
    });
    assert_eq!(got.iter().filter(|ok| **ok).count(), 1, "{got:?}");
    assert!(stores[1].refresh_token("r0").unwrap().unwrap().used);
    // A revoked grant rotates no more.
    let new = (1..=THREADS)
        .find(|i| got[i - 1])
        .map(|i| format!("r{i}"))
        .unwrap();
    stores[1].revoke_grant("g", NOW + 2, NOW + 332).unwrap();
    assert!(!stores[0]
        .rotate_refresh_token(&new, &refresh("late", "g"), NOW + 3)
        .unwrap());
}

#[test]
fn one_replica_holds_the_upstream_refresh_lease() {
    let Some(db) = PgDb::create() else { return };
    let stores = replicas(&db);
    stores[0]
        .put_upstream_token(&UpstreamRecord {
            user: "alice".into(),
            route: "demo".into(),
            access_token: Some(b"sealed-a".to_vec()),
            refresh_token: Some(b"sealed-r".to_vec()),
            issued_at: NOW,
            granted_at: NOW,
            scope: "read".into(),
            ..UpstreamRecord::default()
        })
        .unwrap();
    let v = stores[0]
        .upstream_token("alice", "demo")
        .unwrap()
        .unwrap()
        .version;
    let got = hammer(&stores, move |s, _| {
        s.claim_upstream_refresh("alice", "demo", v, NOW, NOW + 30)
            .unwrap()
    });
    assert_eq!(got.iter().filter(|ok| **ok).count(), 1, "{got:?}");
    // The lease ends at `until`: then another replica may take it.
    assert!(!stores[1]
        .claim_upstream_refresh("alice", "demo", v, NOW + 29, NOW + 60)
        .unwrap());
    assert!(stores[1]
        .claim_upstream_refresh("alice", "demo", v, NOW + 30, NOW + 60)
        .unwrap());
}

#[test]
fn an_unreachable_database_is_unavailable_and_the_password_stays_out_of_errors() {
    // Port 1 on loopback: nothing listens there.
    let err = PostgresStore::connect("postgres://warden:s3cret-pw@127.0.0.1:1/db", 1)
        .err()
        .expect("no server");
    let text = format!("{err:#} {err:?}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(
        StoreError::find(&err).is_some_and(StoreError::is_unavailable),
        "{text}"
    );
}

/// The server's TLS certificate file, when it has TLS on and the file is readable here
/// (Debian's server uses its self-signed certificate for `localhost`).
fn server_certificate(db: &PgDb) -> Option<std::path::PathBuf> {
    let mut c = ::postgres::Client::connect(&db.url, ::postgres::NoTls).unwrap();
    let ssl: String = c.query_one("SHOW ssl", &[]).unwrap().get(0);
    let file: String = c.query_one("SHOW ssl_cert_file", &[]).unwrap().get(0);
    let file = std::path::PathBuf::from(file);
    (ssl == "on" && std::fs::read(&file).is_ok()).then_some(file)
}

#[test]
fn tls_verifies_the_servers_certificate_and_name() {
    let Some(db) = PgDb::create() else { return };
    let Some(cert) = server_certificate(&db) else {
        eprintln!("skipped: the PostgreSQL server has no TLS certificate readable here");
        return;
    };
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_host(Some("localhost")).unwrap();
    let with = |url: &url::Url, query: &str| {
        let mut u = url.clone();
        u.set_query(Some(query));
        PostgresStore::connect(u.as_str(), 1)
    };
    let root = format!("sslrootcert={}", cert.display());
    let store = with(&url, &format!("sslmode=verify-full&{root}")).unwrap();
    assert_eq!(store.schema_versions().unwrap(), vec![1, 2, 3, 4, 5, 6]);
    // `require` verifies too: against another CA (a public one of the system's bundle),
    // the server's certificate does not pass.
    if let Ok(bundle) = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt") {
        let end = "-----END CERTIFICATE-----";
        let other = &bundle[..bundle.find(end).unwrap() + end.len()];
        let dir = tempfile::tempdir().unwrap();
        let other_file = dir.path().join("other-ca.pem");
        std::fs::write(&other_file, other).unwrap();
        let other_root = format!("sslrootcert={}", other_file.display());
        for mode in ["require", "verify-full"] {
            assert!(
                with(&url, &format!("sslmode={mode}&{other_root}")).is_err(),
                "{mode}"
            );
        }
    }
    // Another name than the certificate's.
    let mut by_address = url.clone();
    by_address.set_host(Some("127.0.0.1")).unwrap();
    let e = with(&by_address, &format!("sslmode=verify-full&{root}"))
        .err()
        .unwrap();
    assert!(
        StoreError::find(&e).is_some_and(StoreError::is_unavailable),
        "{e:#}"
    );
}
