//! The provider as an upstream MCP server's authorization server: RFC 8414 metadata, dynamic
//! registration (`--dcr`), client metadata documents (`--cimd`), resource indicators
//! (`--resource`) and HTTPS (`--tls-cert`/`--tls-key`), over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use demo_oauth_provider::ProviderConfig;
use reqwest::{header::LOCATION, StatusCode};
use serde_json::{json, Value};

const RESOURCE: &str = "http://127.0.0.1:9/mcp";

impl Provider {
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.at(path)).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn register(&self, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.at("/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// GET /authorize with `params` (PKCE with [`VERIFIER`] unless `pkce` is false).
    async fn authorize(
        &self,
        client_id: &str,
        redirect: &str,
        extra: &[(&str, &str)],
        pkce: bool,
    ) -> reqwest::Response {
        let challenge = challenge(VERIFIER);
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", redirect),
            ("state", "st-9"),
            ("scope", "read"),
        ];
        if pkce {
            params.push(("code_challenge", &challenge));
            params.push(("code_challenge_method", "S256"));
        }
        params.extend_from_slice(extra);
        self.http
            .get(self.at("/authorize"))
            .query(&params)
            .send()
            .await
            .unwrap()
    }

    /// The consent page approved as alice → the code.
    async fn approve(&self, page: reqwest::Response) -> String {
        assert_eq!(page.status(), StatusCode::OK);
        let request = hidden(&page.text().await.unwrap(), "request");
        let resp = self
            .http
            .post(self.at("/authorize"))
            .form(&[
                ("request", request.as_str()),
                ("username", "alice"),
                ("password", "alice-password"),
                ("decision", "approve"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FOUND);
        let location = resp.headers()[LOCATION].to_str().unwrap().to_owned();
        query_param(&location, "code").unwrap_or_else(|| panic!("no code in {location}"))
    }

    async fn token_form(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.post(self.at("/token")).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn introspect(&self, token: &str) -> Value {
        let resp = self
            .http
            .post(self.at("/introspect"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    }
}

fn location_of(resp: &reqwest::Response) -> String {
    assert_eq!(resp.status(), StatusCode::FOUND, "a redirect");
    resp.headers()[LOCATION].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn authorization_server_metadata_follows_the_flags() {
    let plain = start(ProviderConfig::default()).await;
    let (status, doc) = plain
        .get_json("/.well-known/oauth-authorization-server")
        .await;
    assert_eq!(status, StatusCode::OK);
    let issuer = plain.base.as_str();
    assert_eq!(doc["issuer"], issuer);
    assert_eq!(doc["authorization_endpoint"], format!("{issuer}/authorize"));
    assert_eq!(doc["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(doc["revocation_endpoint"], format!("{issuer}/revoke"));
    assert_eq!(
        doc["introspection_endpoint"],
        format!("{issuer}/introspect")
    );
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(
        doc["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert!(doc.get("registration_endpoint").is_none(), "{doc}");
    assert!(
        doc.get("client_id_metadata_document_supported").is_none(),
        "{doc}"
    );
    // Without --dcr there is no registration endpoint at all.
    let (status, _) = plain.register(json!({"redirect_uris": [REDIRECT]})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The OIDC document is still there.
    let (status, oidc) = plain.get_json("/.well-known/openid-configuration").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(oidc["issuer"], issuer);

    let both = start(ProviderConfig {
        dcr: true,
        cimd: true,
        ..ProviderConfig::default()
    })
    .await;
    let (_, doc) = both
        .get_json("/.well-known/oauth-authorization-server")
        .await;
    assert_eq!(
        doc["registration_endpoint"],
        format!("{}/register", both.base)
    );
    assert_eq!(doc["client_id_metadata_document_supported"], true);
}

#[tokio::test]
async fn a_registered_client_runs_the_code_flow_with_its_own_credentials() {
    let p = start(ProviderConfig {
        dcr: true,
        ..ProviderConfig::default()
    })
    .await;

    // Refusals first: nothing is registered by them.
    let (status, body) = p.register(json!({"client_name": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_redirect_uri", "{body}");
    let (status, body) = p.register(json!({"redirect_uris": ["/relative"]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_redirect_uri", "{body}");
    let (status, body) = p
        .register(
            json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_client_metadata", "{body}");
    assert_eq!(p.get_json("/_test/stats").await.1["registrations"], 0);

    let (status, reg) = p
        .register(json!({
            "redirect_uris": [REDIRECT],
            "client_name": "mcp-warden",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    let id = reg["client_id"].as_str().unwrap().to_owned();
    let secret = reg["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(id, ID);
    assert_eq!(reg["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(reg["client_secret_expires_at"], 0);
    assert!(reg["client_id_issued_at"].as_u64().unwrap() > 0);
    assert_eq!(reg["client_name"], "mcp-warden");
    assert_eq!(reg["redirect_uris"], json!([REDIRECT]));
    assert_eq!(
        reg["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );

    // Its redirect URI only, exactly.
    let resp = p
        .authorize(&id, "http://127.0.0.1:1/other", &[], true)
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let code = p.approve(p.authorize(&id, REDIRECT, &[], true).await).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    // The configured client's secret is not its secret, and it registered for Basic.
    let (status, _) = p.token_form(&form, Some((&id, SECRET))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let code = p.approve(p.authorize(&id, REDIRECT, &[], true).await).await;
    let mut post = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
    ];
    let (status, _) = p.token_form(&post, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "not its method");
    post.truncate(4);
    let code = p.approve(p.authorize(&id, REDIRECT, &[], true).await).await;
    post[1] = ("code", code.as_str());
    let (status, tokens) = p.token_form(&post, Some((&id, &secret))).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(
        p.introspect(tokens["access_token"].as_str().unwrap()).await["client_id"],
        id.as_str()
    );
    // The configured client cannot use its refresh token.
    let (status, _) = p
        .token_form(
            &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
            Some((ID, SECRET)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let stats = p.get_json("/_test/stats").await.1;
    assert_eq!(stats["registrations"], 1);
    assert_eq!(stats["clients"][&id], 1, "{stats}");

    // A public client: no secret, client_id only at /token, and PKCE is a must.
    let (status, public) = p
        .register(json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(public.get("client_secret").is_none(), "{public}");
    let public_id = public["client_id"].as_str().unwrap();
    let location = location_of(&p.authorize(public_id, REDIRECT, &[], false).await);
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_request")
    );
    let code = p
        .approve(p.authorize(public_id, REDIRECT, &[], true).await)
        .await;
    let (status, tokens) = p
        .token_form(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("client_id", public_id),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (status, _) = p
        .token_form(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", public_id),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // client_secret_post: its credentials in the body, at /token and /revoke.
    let (status, post_reg) = p
        .register(json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_post"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let post_id = post_reg["client_id"].as_str().unwrap();
    let post_secret = post_reg["client_secret"].as_str().unwrap();
    let code = p
        .approve(p.authorize(post_id, REDIRECT, &[], true).await)
        .await;
    let (status, _) = p
        .token_form(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
            Some((post_id, post_secret)),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "Basic is not its method");
    let code = p
        .approve(p.authorize(post_id, REDIRECT, &[], true).await)
        .await;
    let (status, tokens) = p
        .token_form(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("client_id", post_id),
                ("client_secret", post_secret),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(p.introspect(access).await["active"], true);
    let resp = p
        .http
        .post(p.at("/revoke"))
        .form(&[
            ("token", access),
            ("client_id", post_id),
            ("client_secret", post_secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(p.introspect(access).await["active"], false);
    assert_eq!(p.get_json("/_test/stats").await.1["registrations"], 3);
}

/// A client metadata document on a port of the test's own; `doc` gets `{url}` replaced by the
/// document's URL.
async fn serve_document(doc: Value) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/client.json", listener.local_addr().unwrap());
    let body = doc.to_string().replace("{url}", &url);
    let router = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (url, task)
}

#[tokio::test]
async fn a_client_metadata_document_is_fetched_once_and_makes_a_public_client() {
    let p = start(ProviderConfig {
        cimd: true,
        ..ProviderConfig::default()
    })
    .await;
    let (url, _doc) = serve_document(json!({
        "client_id": "{url}",
        "client_name": "mcp-warden",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }))
    .await;

    let resp = p
        .authorize(&url, "http://127.0.0.1:1/elsewhere", &[], true)
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "never a redirect");
    let code = p
        .approve(p.authorize(&url, REDIRECT, &[], true).await)
        .await;
    let (status, tokens) = p
        .token_form(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("client_id", &url),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(
        p.introspect(tokens["access_token"].as_str().unwrap()).await["client_id"],
        url.as_str()
    );
    let stats = p.get_json("/_test/stats").await.1;
    assert_eq!(stats["cimd_fetches"], 1, "cached after the first: {stats}");
    assert_eq!(stats["clients"][&url], 1, "{stats}");

    // A document that names another client_id, or asks for a secret, is refused with the why.
    let (other, _o) = serve_document(json!({
        "client_id": "https://elsewhere.example/client.json",
        "redirect_uris": [REDIRECT],
    }))
    .await;
    let resp = p.authorize(&other, REDIRECT, &[], true).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("client_id is not its URL"));
    let (secret, _s) = serve_document(json!({
        "client_id": "{url}",
        "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "client_secret_basic",
    }))
    .await;
    let resp = p.authorize(&secret, REDIRECT, &[], true).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("not none"));
    // Nothing listening: a fetch failure, named.
    let gone = format!("http://127.0.0.1:{}/client.json", free_port());
    let resp = p.authorize(&gone, REDIRECT, &[], true).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("could not be fetched"));

    // Without --cimd a URL is just an unknown client.
    let plain = start(ProviderConfig::default()).await;
    let resp = plain.authorize(&url, REDIRECT, &[], true).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_https_metadata_document_needs_the_extra_ca() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let tls = demo_oauth_provider::server_config(
        &std::fs::read(dir.path().join("server.pem")).unwrap(),
        &std::fs::read(dir.path().join("server.key")).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/client.json",
        listener.local_addr().unwrap().port()
    );
    let body = json!({"client_id": url, "redirect_uris": [REDIRECT]}).to_string();
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let untrusting = start(ProviderConfig {
        cimd: true,
        ..ProviderConfig::default()
    })
    .await;
    let resp = untrusting.authorize(&url, REDIRECT, &[], true).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("could not be fetched"));

    let trusting = start(ProviderConfig {
        cimd: true,
        extra_ca: Some(std::fs::read(dir.path().join("ca.pem")).unwrap()),
        ..ProviderConfig::default()
    })
    .await;
    let code = trusting
        .approve(trusting.authorize(&url, REDIRECT, &[], true).await)
        .await;
    assert!(code.starts_with("dac_"), "{code}");
    server.abort();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn resource_indicators_are_required_and_bound_to_the_grant() {
    let p = start(ProviderConfig {
        resources: vec![RESOURCE.to_owned()],
        ..ProviderConfig::default()
    })
    .await;
    for extra in [&[][..], &[("resource", "http://127.0.0.1:9/other")][..]] {
        let location = location_of(&p.authorize(ID, REDIRECT, extra, true).await);
        assert_eq!(
            query_param(&location, "error").as_deref(),
            Some("invalid_target")
        );
    }
    let exchange = |code: String, resource: Option<&'static str>| {
        let p = &p;
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", REDIRECT.to_owned()),
                ("code_verifier", VERIFIER.to_owned()),
            ];
            if let Some(r) = resource {
                form.push(("resource", r.to_owned()));
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            p.token_form(&form, Some((ID, SECRET))).await
        }
    };
    let authorized = [("resource", RESOURCE)];
    let code = p
        .approve(p.authorize(ID, REDIRECT, &authorized, true).await)
        .await;
    let (status, body) = exchange(code, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_target");
    let stats = p.get_json("/_test/stats").await.1;
    assert_eq!(stats["last_authorize_resource"], RESOURCE);
    assert_eq!(stats["last_token_resource"], Value::Null);

    let code = p
        .approve(p.authorize(ID, REDIRECT, &authorized, true).await)
        .await;
    let (status, tokens) = exchange(code, Some(RESOURCE)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(
        p.introspect(tokens["access_token"].as_str().unwrap()).await["aud"],
        RESOURCE
    );
    assert_eq!(
        p.get_json("/_test/stats").await.1["last_token_resource"],
        RESOURCE
    );
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, body) = p
        .token_form(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("resource", "http://127.0.0.1:9/other"),
            ],
            Some((ID, SECRET)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_target");
    let (status, refreshed) = p
        .token_form(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("resource", RESOURCE),
            ],
            Some((ID, SECRET)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(
        p.introspect(refreshed["access_token"].as_str().unwrap())
            .await["aud"],
        RESOURCE
    );

    // Without --resource, a resource is recorded, not checked.
    let plain = start(ProviderConfig::default()).await;
    let other = [("resource", "http://127.0.0.1:9/anything")];
    let page = plain.authorize(ID, REDIRECT, &other, true).await;
    assert_eq!(page.status(), StatusCode::OK);
    let stats = plain.get_json("/_test/stats").await.1;
    assert_eq!(
        stats["last_authorize_resource"],
        "http://127.0.0.1:9/anything"
    );
}

/// A CA and a certificate for 127.0.0.1 with the openssl command, in `dir`.
fn certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=demo CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "server.ext",
    ]);
}

#[tokio::test]
async fn the_binary_serves_https_with_the_given_certificate() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_demo-oauth-provider"))
        .args(["--listen", "127.0.0.1:0", "--dcr", "--tls-cert"])
        .arg(dir.path().join("server.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("server.key"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("demo-oauth-provider listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");

    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok");
    let doc: Value = http
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], base.as_str(), "the default issuer is https");
    assert_eq!(doc["registration_endpoint"], format!("{base}/register"));

    // A client that does not trust the test CA gets no answer.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .no_proxy()
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    // Plain http on the TLS port is no answer either.
    let plain = base.replacen("https://", "http://", 1);
    let http_plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(http_plain
        .get(format!("{plain}/healthz"))
        .send()
        .await
        .is_err());
    child.kill().await.unwrap();
}
