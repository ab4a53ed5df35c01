//! Client ID Metadata Documents (CIMD): clients whose `client_id` is the https URL of their
//! metadata, served here by a real HTTPS server with a test CA given as
//! `outbound.extra_ca_file`. Sign-in, the consent page, the cache, and every refusal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use serde_json::{json, Value};

/// What the document server answers for a path: status, extra headers, body.
#[derive(Clone)]
struct Doc {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// Sent in chunks without a Content-Length (its size known only by reading it).
    chunked: bool,
}

impl Doc {
    fn json(v: Value) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body: v.to_string(),
            chunked: false,
        }
    }

    fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// An HTTPS server for client documents, its certificate from a CA made for the test.
struct DocServer {
    addr: SocketAddr,
    docs: Arc<Mutex<HashMap<String, Doc>>>,
    fetches: Arc<AtomicUsize>,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl DocServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let docs: Arc<Mutex<HashMap<String, Doc>>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (docs.clone(), fetches.clone());
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            f.fetch_add(1, Ordering::SeqCst);
            let doc = d.lock().unwrap().get(req.uri().path()).cloned();
            async move {
                let doc = doc.unwrap_or(Doc {
                    status: 404,
                    headers: vec![],
                    body: "not found".into(),
                    chunked: false,
                });
                let mut resp = axum::http::Response::builder().status(doc.status);
                for (k, v) in &doc.headers {
                    resp = resp.header(*k, v);
                }
                let body = if doc.chunked {
                    let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = doc
                        .body
                        .into_bytes()
                        .chunks(64)
                        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
                        .collect();
                    Body::from_stream(futures_util::stream::iter(chunks))
                } else {
                    Body::from(doc.body)
                };
                resp.body(body).unwrap()
            }
        });
        let (addr, ca) = common::tls::serve(router, dir.path()).await;
        Self {
            addr,
            docs,
            fetches,
            ca,
            _dir: dir,
        }
    }

    /// The document URL of `path` on this server, by IP address.
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    fn serve(&self, path: &str, doc: Doc) {
        self.docs.lock().unwrap().insert(path.into(), doc);
    }

    /// A valid document for `path`, redirecting to `redirects`.
    fn serve_client(&self, path: &str, redirects: &[&str]) -> String {
        let url = self.url(path);
        self.serve(
            path,
            Doc::json(json!({
                "client_id": url,
                "client_name": "Document Client",
                "redirect_uris": redirects,
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
            })),
        );
        url
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The test service with metadata documents accepted under `settings` (the block's YAML
/// mapping entries) and the server's CA trusted.
fn env_with(server: &DocServer, settings: &str) -> TestEnv {
    let ca = server.ca.clone();
    let settings = settings.to_owned();
    TestEnv::with(move |d| {
        format!(
            "{}outbound:\n  extra_ca_file: {}\n",
            many_sign_ins(config_yaml(d, "", "ES256")).replace(
                "  refresh_token_ttl_seconds: 3600\n",
                &format!(
                    "  refresh_token_ttl_seconds: 3600\n  client_id_metadata_documents: {{enabled: true{settings}}}\n"
                ),
            ),
            ca.display()
        )
    })
}

/// Lab settings: the document server is on 127.0.0.1.
const PRIVATE_OK: &str = ", allow_private_addresses: true";

async fn get_accepting(env: &TestEnv, uri: &str, accept: &str) -> Resp {
    env.send(
        Request::get(uri)
            .header(header::ACCEPT, accept)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

/// `/authorize` for `client_id`: the answer (a sign-in page when all is well).
async fn authorize(env: &TestEnv, client_id: &str, redirect: &str) -> Resp {
    env.get(&TestEnv::authorize_uri(client_id, redirect, &[]))
        .await
}

/// Asserts a refusal page (400, no redirect) naming `reason`.
fn assert_refused(r: &Resp, reason: &str) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.headers.get(header::LOCATION).is_none());
    assert!(r.body.contains(reason), "expected {reason:?} in {}", r.body);
}

#[tokio::test]
async fn a_client_signs_in_with_its_metadata_document_and_the_consent_page_names_its_host() {
    let server = DocServer::start().await;
    let env = env_with(&server, PRIVATE_OK);
    let meta = env
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(meta["client_id_metadata_document_supported"], true);
    assert_eq!(meta["registration_endpoint"], format!("{ISSUER}/register"));

    let client_id = server.serve_client("/client.json", &[REDIRECT]);
    let form = authorize(&env, &client_id, REDIRECT).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert!(form.body.contains("Document Client"), "{}", form.body);
    let flow_cookie = form.cookie("warden_flow").unwrap();
    let consent = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(consent.body.contains("Document Client"));
    assert!(
        consent.body.contains("(from 127.0.0.1)"),
        "{}",
        consent.body
    );
    assert!(consent.body.contains("id=\"document-host\""));
    // The redirect goes back to the host that serves the document: no warning.
    assert!(
        !consent.body.contains("redirect-elsewhere"),
        "{}",
        consent.body
    );
    let session = consent.cookie("warden_session").unwrap();
    let r = env
        .decide(&consent, &format!("{flow_cookie}; {session}"), "approve")
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let code = r.location_query()["code"].clone();
    let t = env.exchange_public(&client_id, &code, REDIRECT).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let refresh = t.json()["refresh_token"].as_str().unwrap().to_owned();
    let t = env.refresh_public(&client_id, &refresh).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.body);
    let refresh = t.json()["refresh_token"].as_str().unwrap().to_owned();
    let r = env
        .post_form(
            "/revoke",
            &[
                ("client_id", client_id.as_str()),
                ("token", refresh.as_str()),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = env.refresh_public(&client_id, &refresh).await;
    assert_eq!(r.json()["error"], "invalid_grant", "{}", r.body);

    // A document sending the browser back to another host: the page warns.
    let other = server.serve_client("/elsewhere.json", &["http://localhost/callback"]);
    let form = authorize(&env, &other, "http://localhost:4000/callback").await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let consent = env.login(&form, EMAIL, PASSWORD).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    assert!(
        consent.body.contains("id=\"redirect-elsewhere\""),
        "{}",
        consent.body
    );
    assert!(consent.body.contains("<strong>localhost</strong>"));
}

#[tokio::test]
async fn the_metadata_switches_are_independent() {
    let off = TestEnv::with(|d| config_yaml(d, "", "ES256"));
    let meta = off
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(meta["client_id_metadata_document_supported"], false);
    assert!(meta.get("registration_endpoint").is_some());
    let closed = TestEnv::with(|d| {
        config_yaml(d, "", "ES256").replace(
            "  refresh_token_ttl_seconds: 3600\n",
            "  refresh_token_ttl_seconds: 3600\n  registration: closed\n  client_id_metadata_documents: {enabled: true}\n",
        )
    });
    let meta = closed
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(meta["client_id_metadata_document_supported"], true);
    assert!(meta.get("registration_endpoint").is_none(), "{meta}");
}

#[tokio::test]
async fn a_document_url_is_an_unknown_client_when_documents_are_off() {
    let server = DocServer::start().await;
    let client_id = server.serve_client("/client.json", &[REDIRECT]);
    let env = TestEnv::new();
    assert_refused(
        &authorize(&env, &client_id, REDIRECT).await,
        "unknown client_id",
    );
    assert_eq!(server.fetches(), 0);
}

#[tokio::test]
async fn a_host_outside_allowed_hosts_is_refused_before_any_fetch() {
    let server = DocServer::start().await;
    let env = env_with(
        &server,
        ", allow_private_addresses: true, allowed_hosts: ['*.example.com']",
    );
    let client_id = server.serve_client("/client.json", &[REDIRECT]);
    assert_refused(
        &authorize(&env, &client_id, REDIRECT).await,
        "client metadata documents from 127.0.0.1 are not allowed",
    );
    // A program asking for JSON gets the OAuth error.
    let r = get_accepting(
        &env,
        &TestEnv::authorize_uri(&client_id, REDIRECT, &[]),
        "application/json",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_client", "{}", r.body);
    assert_eq!(server.fetches(), 0);
}

#[tokio::test]
async fn private_addresses_are_refused_after_name_resolution() {
    let server = DocServer::start().await;
    let env = env_with(&server, "");
    server.serve_client("/client.json", &[REDIRECT]);
    // A name that resolves to loopback: the resolver refuses it, nothing is connected to.
    let by_name = format!("https://localhost:{}/client.json", server.addr.port());
    assert_refused(
        &authorize(&env, &by_name, REDIRECT).await,
        "the address localhost resolves to is not a public address",
    );
    // The address itself.
    assert_refused(
        &authorize(&env, &server.url("/client.json"), REDIRECT).await,
        "127.0.0.1 is not a public address",
    );
    assert_eq!(server.fetches(), 0);
    // /token says the same, as invalid_client.
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", by_name.as_str()),
                ("code", "x"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_client");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("not a public address"));
}

#[tokio::test]
async fn oversized_documents_are_refused() {
    let server = DocServer::start().await;
    let env = env_with(
        &server,
        ", allow_private_addresses: true, max_document_bytes: 256",
    );
    let url = server.url("/big.json");
    server.serve(
        "/big.json",
        Doc::json(json!({
            "client_id": url,
            "client_name": "x".repeat(300),
            "redirect_uris": [REDIRECT],
        })),
    );
    assert_refused(
        &authorize(&env, &url, REDIRECT).await,
        "larger than 256 bytes",
    );
    // Without a Content-Length the bound holds while reading.
    let url = server.url("/chunked.json");
    server.serve(
        "/chunked.json",
        Doc::json(json!({
            "client_id": url,
            "client_name": "x".repeat(300),
            "redirect_uris": [REDIRECT],
        }))
        .chunked(),
    );
    assert_refused(
        &authorize(&env, &url, REDIRECT).await,
        "larger than 256 bytes",
    );
    // A small chunked document is read whole: the refusal above is the size, not the chunks.
    let url = server.url("/small-chunked.json");
    server.serve(
        "/small-chunked.json",
        Doc::json(json!({"client_id": url, "redirect_uris": [REDIRECT]})).chunked(),
    );
    let r = authorize(&env, &url, REDIRECT).await;
    assert_eq!(r.status, StatusCode::OK, "the sign-in page: {}", r.body);
}

#[tokio::test]
async fn a_document_naming_another_client_id_is_refused() {
    let server = DocServer::start().await;
    let env = env_with(&server, PRIVATE_OK);
    let url = server.url("/client.json");
    server.serve(
        "/client.json",
        Doc::json(json!({
            "client_id": server.url("/other.json"),
            "redirect_uris": [REDIRECT],
        })),
    );
    assert_refused(
        &authorize(&env, &url, REDIRECT).await,
        "its client_id is not the URL it is served from",
    );
    // Other invalid documents, each with its reason.
    for (doc, reason) in [
        (
            json!({"client_id": url, "redirect_uris": [REDIRECT], "client_secret": "s"}),
            "must not hold client_secret",
        ),
        (
            json!({"client_id": url, "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"}),
            "must be none or private_key_jwt",
        ),
        (json!(["not", "an", "object"]), "not a JSON object"),
    ] {
        let path = format!("/doc-{}.json", server.fetches());
        let url = server.url(&path);
        let mut doc = doc;
        if doc.is_object() {
            doc["client_id"] = json!(url);
        }
        server.serve(&path, Doc::json(doc));
        assert_refused(&authorize(&env, &url, REDIRECT).await, reason);
    }
}

#[tokio::test]
async fn a_redirect_uri_not_in_the_document_is_refused_without_redirecting() {
    let server = DocServer::start().await;
    let env = env_with(&server, PRIVATE_OK);
    let client_id = server.serve_client("/client.json", &[REDIRECT]);
    let r = authorize(&env, &client_id, "https://evil.example/callback").await;
    assert_refused(&r, "redirect_uri is not registered for this client");
    // A loopback redirect URI matches on any port, as for registered clients.
    let r = authorize(&env, &client_id, "http://127.0.0.1:40000/callback").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn redirects_are_not_followed_and_failures_name_their_reason() {
    let server = DocServer::start().await;
    let env = env_with(&server, PRIVATE_OK);
    let target = server.serve_client("/target.json", &[REDIRECT]);
    let moved = server.url("/moved.json");
    server.serve(
        "/moved.json",
        Doc {
            status: 302,
            headers: vec![("location", target.clone())],
            body: String::new(),
            chunked: false,
        },
    );
    assert_refused(
        &authorize(&env, &moved, REDIRECT).await,
        "redirect (HTTP 302)",
    );
    assert_eq!(server.fetches(), 1, "the redirect's target was not fetched");
    assert_refused(
        &authorize(&env, &server.url("/missing.json"), REDIRECT).await,
        "answered HTTP 404",
    );
    // Unreachable: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    assert_refused(
        &authorize(&env, &format!("https://127.0.0.1:{port}/c.json"), REDIRECT).await,
        "cannot be fetched",
    );
    // Not a document URL: the request is malformed.
    let r = get_accepting(
        &env,
        &TestEnv::authorize_uri("https://127.0.0.1/", REDIRECT, &[]),
        "application/json",
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_request", "{}", r.body);
}

#[tokio::test]
async fn a_changed_document_takes_effect_when_the_cache_expires() {
    let server = DocServer::start().await;
    let env = env_with(
        &server,
        ", allow_private_addresses: true, cache_seconds: 60",
    );
    let first = "http://127.0.0.1/first";
    let second = "http://127.0.0.1/second";
    let client_id = server.serve_client("/client.json", &[first]);
    assert_eq!(
        authorize(&env, &client_id, first).await.status,
        StatusCode::OK
    );
    server.serve_client("/client.json", &[second]);
    // Cached: the old document still answers, without a fetch.
    assert_refused(&authorize(&env, &client_id, second).await, "not registered");
    assert_eq!(server.fetches(), 1);
    env.advance(60);
    assert_eq!(
        authorize(&env, &client_id, second).await.status,
        StatusCode::OK
    );
    assert_eq!(server.fetches(), 2);

    // Cache-Control below cache_seconds wins; no-store is fetched every time.
    let url = server.url("/short.json");
    let doc = |redirect: &str| {
        Doc::json(json!({"client_id": url, "redirect_uris": [redirect]}))
            .with_header("cache-control", "public, max-age=10")
    };
    server.serve("/short.json", doc(first));
    assert_eq!(authorize(&env, &url, first).await.status, StatusCode::OK);
    server.serve("/short.json", doc(second));
    env.advance(10);
    assert_eq!(authorize(&env, &url, second).await.status, StatusCode::OK);
    let fetched = server.fetches();
    let never = server.url("/never.json");
    server.serve(
        "/never.json",
        Doc::json(json!({"client_id": never, "redirect_uris": [first]}))
            .with_header("cache-control", "no-store"),
    );
    for _ in 0..2 {
        assert_eq!(authorize(&env, &never, first).await.status, StatusCode::OK);
    }
    assert_eq!(server.fetches(), fetched + 2);
}

#[tokio::test]
async fn the_extra_ca_is_what_makes_the_test_server_trusted_by_every_client() {
    use warden_token_service::outbound::{FetchError, Outbound, OutboundConfig};
    let server = DocServer::start().await;
    let url = server.serve_client("/client.json", &[REDIRECT]);
    let with = Outbound::load(&OutboundConfig {
        extra_ca_file: Some(server.ca.clone()),
    })
    .unwrap();
    let timeout = std::time::Duration::from_secs(5);
    // The providers' client (identity provider, upstream providers).
    let r = with
        .client(timeout)
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fetched = with.guarded(true).unwrap().fetch(&url, 5120).await.unwrap();
    assert!(String::from_utf8(fetched.body)
        .unwrap()
        .contains("Document Client"));
    // Without it: the system's roots alone do not know the test CA.
    let without = Outbound::default();
    assert!(without
        .client(timeout)
        .unwrap()
        .get(&url)
        .send()
        .await
        .is_err());
    assert!(matches!(
        without.guarded(true).unwrap().fetch(&url, 5120).await,
        Err(FetchError::Unreachable(_))
    ));
    // A file that cannot be read, or holds no certificate, names the field.
    for bad in [
        server.ca.with_extension("missing"),
        server.ca.with_file_name("server.csr"),
    ] {
        let e = Outbound::load(&OutboundConfig {
            extra_ca_file: Some(bad),
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("outbound.extra_ca_file: "), "{e}");
    }
}

#[tokio::test]
async fn a_failure_is_remembered_briefly_so_requests_do_not_each_fetch() {
    let server = DocServer::start().await;
    let env = env_with(&server, PRIVATE_OK);
    let url = server.url("/late.json");
    for _ in 0..3 {
        assert_refused(&authorize(&env, &url, REDIRECT).await, "answered HTTP 404");
    }
    assert_eq!(server.fetches(), 1);
    server.serve_client("/late.json", &[REDIRECT]);
    env.advance(29);
    assert_refused(&authorize(&env, &url, REDIRECT).await, "answered HTTP 404");
    env.advance(1);
    assert_eq!(authorize(&env, &url, REDIRECT).await.status, StatusCode::OK);
    assert_eq!(server.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_arriving_together_for_one_document_fetch_it_once() {
    let server = DocServer::start().await;
    let env = env_with(&server, PRIVATE_OK);
    let url = server.serve_client("/popular.json", &[REDIRECT]);
    let answers =
        futures_util::future::join_all((0..6).map(|_| authorize(&env, &url, REDIRECT))).await;
    for r in &answers {
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(server.fetches(), 1, "one fetch, the others read its answer");
}

/// An ES256 key for client assertions: its public JWK and a signer of compact JWSs.
fn assertion_key(kid: &str) -> (Value, impl Fn(&Value) -> String) {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref().to_vec();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid,
                     "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])});
    let kid = kid.to_owned();
    let sign = move |claims: &Value| {
        let input = format!(
            "{}.{}",
            B64.encode(json!({"alg": "ES256", "kid": kid}).to_string()),
            B64.encode(claims.to_string())
        );
        let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    };
    (jwk, sign)
}

#[tokio::test]
async fn a_document_client_authenticates_with_private_key_jwt_inline_or_by_its_jwks_uri() {
    let server = DocServer::start().await;
    let env = env_with(&server, PRIVATE_OK);
    let (jwk, sign) = assertion_key("doc-key");
    let assertion = |client_id: &str, jti: &str| {
        let now = env.state.now();
        sign(
            &json!({"iss": client_id, "sub": client_id, "aud": format!("{ISSUER}/token"),
                     "exp": now + 60, "iat": now, "jti": jti}),
        )
    };
    let document = |url: &str, keys: (&str, Value)| {
        let mut d = json!({"client_id": url, "client_name": "Signed Document Client",
            "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt",
            "grant_types": ["authorization_code", "refresh_token"]});
        d[keys.0] = keys.1;
        Doc::json(d)
    };

    // Keys in the document: the code exchange is authenticated by an assertion alone.
    let inline = server.url("/inline.json");
    server.serve(
        "/inline.json",
        document(&inline, ("jwks", json!({"keys": [jwk.clone()]}))),
    );
    let (q, _) = env.sign_in(&inline, REDIRECT, &[]).await;
    let r = env
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion(&inline, "a1")),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Keys at the document's jwks_uri, fetched by the guarded fetcher (https, the test CA).
    let by_uri = server.url("/by-uri.json");
    server.serve(
        "/by-uri.json",
        document(&by_uri, ("jwks_uri", json!(server.url("/keys.json")))),
    );
    server.serve("/keys.json", Doc::json(json!({"keys": [jwk]})));
    let revoke = |jwt: String| {
        let env = &env;
        async move {
            env.post_form(
                "/revoke",
                &[
                    ("token", "nothing"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &jwt),
                ],
                None,
            )
            .await
        }
    };
    let before = server.fetches();
    let r = revoke(assertion(&by_uri, "b1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(server.fetches(), before + 2, "the document, then its keys");
    // The same jti again: a replay.
    let r = revoke(assertion(&by_uri, "b1")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.body.contains("replay"), "{}", r.body);
    // A document with no usable keys gets nothing through.
    let empty = server.url("/empty.json");
    server.serve(
        "/empty.json",
        document(&empty, ("jwks_uri", json!(server.url("/none.json")))),
    );
    let r = revoke(assertion(&empty, "c1")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.body.contains("keys are unavailable"), "{}", r.body);
}
