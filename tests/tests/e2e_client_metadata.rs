//! Client ID Metadata Documents end to end: the official Python SDK's `OAuthClientProvider`
//! with `client_metadata_url` signs in through the real token service, Envoy and filter, its
//! document served over HTTPS by this test with a CA made here and given to the token service
//! as `outbound.extra_ca_file`, and calls a tool; the real token service refuses a host outside
//! `allowed_hosts` and a name resolving to a private address. Every refusal (size, `client_id`
//! mismatch, redirect URIs, redirects, the cache) is in the token service's own tests
//! (`token-service/tests/client_metadata.rs`), with real HTTPS too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use warden_e2e::python::{expect_result, result_text, SdkClient};
use warden_e2e::{redirect_uri, Stack, StackOptions};

/// An HTTPS server answering one path with one JSON document; counts its requests.
struct DocumentServer {
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl DocumentServer {
    async fn start(path: &'static str, document: impl Fn(&str) -> Value) -> DocumentServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let made = warden_e2e::tls::test_certificate(dir.path(), "documents", &["IP:127.0.0.1"]);
        let certs: Vec<_> = rustls::pki_types::pem::PemObject::pem_file_iter(&made.cert)
            .expect("the server certificate")
            .collect::<Result<_, _>>()
            .expect("certificates");
        let key: rustls::pki_types::PrivateKeyDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_file(&made.key).expect("the server key");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let url = format!("https://127.0.0.1:{}{path}", addr.port());
        let body = document(&url).to_string();
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, body, counter) = (acceptor.clone(), body.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let found = req.uri().path() == path;
                        let body = body.clone();
                        async move {
                            let (status, body) = if found {
                                (200, body)
                            } else {
                                (404, "not found".to_owned())
                            };
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        DocumentServer {
            addr,
            fetches,
            ca: made.ca,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }
}

#[tokio::test]
async fn the_python_sdk_signs_in_with_a_client_metadata_document_and_calls_a_tool() {
    let redirect = redirect_uri();
    let documents = {
        let redirect = redirect.clone();
        DocumentServer::start("/oauth/client.json", move |url| {
            json!({
                "client_id": url,
                "client_name": "Python SDK by document",
                "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            })
        })
        .await
    };
    let client_metadata_url = documents.url("/oauth/client.json");
    let ca = documents.ca.clone();
    let stack = Stack::start_with(StackOptions {
        config_hook: Some(Box::new(move |config: &mut Value| {
            // The document server is on 127.0.0.1, a private address: a lab setting.
            config["authorization_server"]["client_id_metadata_documents"] =
                json!({"enabled": true, "allow_private_addresses": true});
            config["outbound"] = json!({"extra_ca_file": ca});
        })),
        ..StackOptions::default()
    })
    .await;

    let out = SdkClient::new(json!({
        "mode": "cimd",
        "server_url": stack.mcp_url(),
        "redirect_uri": redirect,
        "client_metadata_url": client_metadata_url,
        "tool": "echo",
        "arguments": {"text": "from a metadata document"},
    }))
    .run()
    .await;
    let result = expect_result(&out);
    assert!(
        result_text(result).contains("from a metadata document"),
        "echo through the gateway: {result}"
    );
    // The SDK chose CIMD (the server advertised it): its client_id is the document's URL,
    // which the token service fetched, and no registration was made.
    assert_eq!(out["client_id"], json!(client_metadata_url), "{out}");
    assert!(out["token"]["refresh_token"].is_string(), "{out}");
    assert!(documents.fetches.load(Ordering::SeqCst) >= 1);
}

/// The real token service refuses, before any fetch or after name resolution, documents it may
/// not fetch; a client probing for JSON (as mcp-remote does) reads why.
#[tokio::test]
async fn the_token_service_refuses_documents_it_may_not_fetch_and_says_why() {
    let redirect = redirect_uri();
    let documents = {
        let redirect = redirect.clone();
        DocumentServer::start(
            "/oauth/client.json",
            move |url| json!({"client_id": url, "redirect_uris": [redirect]}),
        )
        .await
    };
    let ca = documents.ca.clone();
    let stack = Stack::start_with(StackOptions {
        config_hook: Some(Box::new(move |config: &mut Value| {
            // Production settings: only one host, no private addresses.
            config["authorization_server"]["client_id_metadata_documents"] =
                json!({"enabled": true, "allowed_hosts": ["localhost"]});
            config["outbound"] = json!({"extra_ca_file": ca});
        })),
        envoy: false,
        ..StackOptions::default()
    })
    .await;
    let port = documents.addr.port();
    let probe = |client_id: String| {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/authorize", stack.issuer()),
            &[
                ("response_type", "code"),
                ("client_id", client_id.as_str()),
                ("redirect_uri", redirect.as_str()),
                (
                    "code_challenge",
                    "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                ),
                ("code_challenge_method", "S256"),
                ("state", "s"),
            ],
        )
        .unwrap();
        async move {
            let r = warden_e2e::http_client()
                .get(url)
                .header("accept", "application/json")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
            assert!(r.headers().get("location").is_none());
            r.json::<Value>().await.unwrap()
        }
    };
    // A host outside allowed_hosts: refused before anything is fetched.
    let e = probe(format!("https://127.0.0.1:{port}/oauth/client.json")).await;
    assert_eq!(e["error"], "invalid_client", "{e}");
    assert!(
        e["error_description"].as_str().unwrap().contains("allowed"),
        "{e}"
    );
    // An allowed host whose name resolves to loopback: refused by the resolver, unconnected.
    let e = probe(format!("https://localhost:{port}/oauth/client.json")).await;
    assert_eq!(e["error"], "invalid_client", "{e}");
    assert!(
        e["error_description"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{e}"
    );
    assert_eq!(documents.fetches.load(Ordering::SeqCst), 0);
}
