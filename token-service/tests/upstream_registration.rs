//! The gateway's DCR registration at an upstream authorization server (`register_once`),
//! against a real HTTP server of the test's own with an RFC 7591 endpoint: registered once per
//! server and kept sealed, refusals and oversized answers as clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use warden_token_service::outbound::Outbound;
use warden_token_service::store::Store;
use warden_token_service::upstream_discovery::registration;
use warden_token_service::upstream_discovery::{AuthorizationServer, Registrar};
use warden_token_service::vault::seal::Sealer;

const NOW: i64 = 1_900_000_000;
const CALLBACK: &str = "https://gw.example/upstream/callback";
const SECRET: &str = "the-secret-of-the-gateway";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Register,
    Refuse,
    Oversized,
}

#[derive(Clone)]
struct As {
    mode: Arc<Mutex<Mode>>,
    /// The registration requests received.
    posts: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn register(State(s): State<As>, body: axum::Json<serde_json::Value>) -> Response {
    s.posts.lock().unwrap().push(body.0.clone());
    let mode = *s.mode.lock().unwrap();
    match mode {
        Mode::Register => {
            let n = s.posts.lock().unwrap().len();
            let mut answer = body.0.clone();
            answer["client_id"] = format!("client-{n}").into();
            if body.0["token_endpoint_auth_method"] == "client_secret_basic" {
                answer["client_secret"] = SECRET.into();
            }
            (StatusCode::CREATED, axum::Json(answer)).into_response()
        }
        Mode::Refuse => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({
                "error": "invalid_client_metadata",
                "error_description": "redirect_uris: not allowed here",
            })),
        )
            .into_response(),
        Mode::Oversized => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({
                "client_id": "big",
                "padding": "x".repeat(100 << 10),
            })),
        )
            .into_response(),
    }
}

async fn serve() -> (As, String) {
    let s = As {
        mode: Arc::new(Mutex::new(Mode::Register)),
        posts: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/register", axum::routing::post(register))
        .with_state(s.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (s, base)
}

fn server(base: &str, methods: &[&str]) -> AuthorizationServer {
    AuthorizationServer {
        issuer: base.to_owned(),
        authorization_endpoint: format!("{base}/authorize"),
        token_endpoint: format!("{base}/token"),
        registration_endpoint: Some(format!("{base}/register")),
        revocation_endpoint: None,
        code_challenge_methods_supported: vec!["S256".into()],
        client_id_metadata_document_supported: false,
        scopes_supported: vec![],
        token_endpoint_auth_methods_supported: methods.iter().map(|m| (*m).to_owned()).collect(),
    }
}

fn registrar() -> Registrar {
    Registrar::new(&Outbound::default(), Duration::from_secs(5)).unwrap()
}

fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(warden_token_service::SqliteStore::open(&dir.path().join("w.db")).unwrap())
}

#[tokio::test]
async fn the_gateway_registers_once_per_server_and_keeps_it_sealed() {
    let (up, base) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, sealer, d) = (store(&dir), Sealer::new(&[3u8; 32]), registrar());
    let server = server(&base, &["none", "client_secret_basic"]);

    let r = d
        .register_once(store.clone(), &sealer, &server, CALLBACK, NOW)
        .await
        .unwrap();
    assert_eq!(r.client_id, "client-1");
    assert_eq!(r.client_secret, None);
    assert_eq!(r.redirect_uri, CALLBACK);
    assert_eq!(r.token_endpoint_auth_method, "none");
    let posts = up.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0],
        serde_json::json!({
            "client_name": "mcp-warden",
            "redirect_uris": [CALLBACK],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        })
    );

    // Again (another registrar, as after a restart): the stored one, no second POST.
    let again = registrar()
        .register_once(store.clone(), &sealer, &server, CALLBACK, NOW + 10)
        .await
        .unwrap();
    assert_eq!(again, r);
    assert_eq!(up.posts.lock().unwrap().len(), 1);

    // A callback changed: registered again, with the new redirect URI.
    let moved = d
        .register_once(
            store.clone(),
            &sealer,
            &server,
            "https://gw2.example/upstream/callback",
            NOW + 20,
        )
        .await
        .unwrap();
    assert_eq!(moved.client_id, "client-2");
    assert_eq!(up.posts.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_server_that_only_takes_client_secret_basic_gets_a_confidential_client_whose_secret_stays_sealed(
) {
    let (up, base) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, sealer, d) = (store(&dir), Sealer::new(&[3u8; 32]), registrar());
    let server = server(&base, &["client_secret_basic"]);
    let r = d
        .register_once(store.clone(), &sealer, &server, CALLBACK, NOW)
        .await
        .unwrap();
    assert_eq!(r.client_secret.as_deref(), Some(SECRET));
    assert_eq!(r.token_endpoint_auth_method, "client_secret_basic");
    assert_eq!(
        up.posts.lock().unwrap()[0]["token_endpoint_auth_method"],
        "client_secret_basic"
    );
    // Neither the stored bytes nor Debug show the secret.
    let stored = store.upstream_registration(&base).unwrap().unwrap();
    assert!(!stored
        .sealed
        .windows(SECRET.len())
        .any(|w| w == SECRET.as_bytes()));
    assert!(!format!("{r:?}").contains(SECRET));
    assert!(!format!("{stored:?}").contains(SECRET));
    // Another key does not open it: registered again rather than failing.
    let other = Sealer::new(&[4u8; 32]);
    assert_eq!(registration::open(&other, &base, &stored.sealed), None);
    let again = d
        .register_once(store.clone(), &other, &server, CALLBACK, NOW + 5)
        .await
        .unwrap();
    assert_eq!(again.client_id, "client-2");
}

#[tokio::test]
async fn a_refused_registration_is_a_clear_error_and_nothing_is_stored() {
    let (up, base) = serve().await;
    *up.mode.lock().unwrap() = Mode::Refuse;
    let dir = tempfile::tempdir().unwrap();
    let (store, sealer, d) = (store(&dir), Sealer::new(&[3u8; 32]), registrar());
    let e = d
        .register_once(store.clone(), &sealer, &server(&base, &[]), CALLBACK, NOW)
        .await
        .unwrap_err();
    assert_eq!(e.issuer, base);
    let text = e.to_string();
    assert!(text.contains(&base), "{text}");
    assert!(text.contains("HTTP 400"), "{text}");
    assert!(text.contains("invalid_client_metadata"), "{text}");
    assert!(text.contains("redirect_uris: not allowed here"), "{text}");
    assert_eq!(store.upstream_registration(&base).unwrap(), None);
    // Once the server accepts, it registers.
    *up.mode.lock().unwrap() = Mode::Register;
    d.register_once(store.clone(), &sealer, &server(&base, &[]), CALLBACK, NOW)
        .await
        .unwrap();
    assert!(store.upstream_registration(&base).unwrap().is_some());
}

#[tokio::test]
async fn an_oversized_answer_is_refused() {
    let (up, base) = serve().await;
    *up.mode.lock().unwrap() = Mode::Oversized;
    let dir = tempfile::tempdir().unwrap();
    let (store, sealer, d) = (store(&dir), Sealer::new(&[3u8; 32]), registrar());
    let e = d
        .register_once(store.clone(), &sealer, &server(&base, &[]), CALLBACK, NOW)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("more than 65536 bytes"), "{e}");
    assert!(e.to_string().contains(&base), "{e}");
    assert_eq!(store.upstream_registration(&base).unwrap(), None);
}

#[tokio::test]
async fn an_answer_without_a_client_id_or_a_server_without_an_endpoint_is_refused() {
    let (_up, base) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, sealer, d) = (store(&dir), Sealer::new(&[3u8; 32]), registrar());
    let mut s = server(&base, &[]);
    s.registration_endpoint = None;
    let e = d
        .register_once(store.clone(), &sealer, &s, CALLBACK, NOW)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no registration_endpoint"), "{e}");
    let e =
        registration::parse_registration(201, br#"{"client_secret":"x"}"#, "none", CALLBACK, NOW)
            .unwrap_err();
    assert!(e.contains("no client_id"), "{e}");
    let e = registration::parse_registration(
        201,
        br#"{"client_id":"c"}"#,
        "client_secret_basic",
        CALLBACK,
        NOW,
    )
    .unwrap_err();
    assert!(e.contains("no client_secret"), "{e}");
}
