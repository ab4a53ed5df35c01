//! The per-address limits over real sockets (issue 16): starting sign-ins is limited per client
//! address and the pending records are capped in total, and behind a trusted proxy the client
//! address comes from `X-Forwarded-For`, from nowhere else. Linux routes all of 127.0.0.0/8 to
//! the loopback interface, so each client binds a source address of its own (127.0.0.2, …).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;

use axum::http::StatusCode;
use common::*;
use demo_oauth_provider::ProviderConfig;
use warden_token_service::{serve_on, SqliteStore};

/// What a filter would send as the digest of the browser's nonce cookie.
const NONCE: &str = "6e6f6e63656e6f6e63656e6f6e63656e6f6e63656e6f6e63656e6f6e63656e6f";
const APP: &str = "http://chat.example.com";
const FLOOD: usize = 100;
/// `pending_flows.rate_limit_per_minute` by default.
const FLOWS_PER_MINUTE: usize = 30;

/// The token service on a real socket, over `env`'s state and clock.
struct Served {
    env: TestEnv,
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Served {
    async fn start(env: TestEnv) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_on(listener, env.state.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            env,
            base,
            _stop: stop,
        }
    }

    /// Rows in the tables a started sign-in leaves behind.
    fn pending_records(&self) -> u64 {
        SqliteStore::open(&self.env.dir.path().join("warden.db"))
            .unwrap()
            .pending_records()
            .unwrap()
    }
}

/// A client connecting from `source`, sending `forwarded_for` (when given) as
/// `X-Forwarded-For` on every request. It follows no redirects and keeps no cookies.
struct Client {
    http: reqwest::Client,
    base: String,
    forwarded_for: Option<String>,
}

impl Client {
    fn new(served: &Served, source: &str) -> Self {
        let source: IpAddr = source.parse().unwrap();
        Self {
            http: reqwest::Client::builder()
                .local_address(source)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: served.base.clone(),
            forwarded_for: None,
        }
    }

    fn forwarding_for(mut self, header: &str) -> Self {
        self.forwarded_for = Some(header.to_owned());
        self
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let req = match &self.forwarded_for {
            Some(xff) => req.header("x-forwarded-for", xff),
            None => req,
        };
        let r = req.send().await.unwrap();
        Resp {
            status: r.status(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        self.send(req).await
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)], cookie: Option<&str>) -> Resp {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        self.send(req).await
    }

    async fn register(&self) -> Resp {
        self.send(self.http.post(format!("{}/register", self.base)).json(
            &serde_json::json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}),
        ))
        .await
    }

    /// A fresh browser's `/authorize` for the trusted app (the sign-in page, or a refusal).
    async fn authorize(&self) -> Resp {
        self.get(&TestEnv::authorize_uri("trusted-app", REDIRECT, &[]), None)
            .await
    }

    /// Signs in on the page `form` opened (password; the trusted app needs no consent),
    /// then redeems the code: the whole sign-in a user goes through after `/authorize`.
    async fn finish_sign_in(&self, form: &Resp) {
        let cookie = form.cookie("warden_flow").expect("flow cookie");
        let r = self
            .post_form(
                "/login",
                &[
                    ("flow", &form.hidden("flow")),
                    ("csrf", &form.hidden("csrf")),
                    ("email", EMAIL),
                    ("password", PASSWORD),
                ],
                Some(&cookie),
            )
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let code = r.location_query()["code"].clone();
        let t = self
            .post_form(
                "/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", "trusted-app"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", VERIFIER),
                ],
                None,
            )
            .await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.body);
        assert!(t.json()["access_token"].is_string());
    }
}

/// The common config plus an app route (for `/app/sign-in` and `/mcp/connect`), the demo
/// provider as identity provider (for `/login/idp`), and `settings` under
/// `authorization_server`.
fn yaml(dir: &std::path::Path, provider: &str, settings: &str) -> String {
    let app = format!(
        "  - name: chat\n    from: {APP}\n    to: http://127.0.0.1:3000\n    mcp: {{client: {{}}}}\n    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}\n"
    );
    config_yaml(dir, &app, "ES256")
        .replace(
            "  refresh_token_ttl_seconds: 3600\n",
            &format!("  refresh_token_ttl_seconds: 3600\n{settings}"),
        )
        .replace(
            "identity_provider:\n",
            &format!("identity_provider:\n  oidc:\n    issuer: {provider}\n    client_id: warden-sso\n    client_secret: warden-sso-secret\n"),
        )
}

async fn start(settings: &str) -> (Served, Provider) {
    let provider = Provider::serve(ProviderConfig {
        client_id: "warden-sso".into(),
        client_secret: "warden-sso-secret".into(),
        redirect_uris: vec![format!("{ISSUER}/login/callback")],
        ..ProviderConfig::default()
    })
    .await;
    let env = TestEnv::with(|d| yaml(d, &provider.url, settings));
    (Served::start(env).await, provider)
}

fn app_sign_in_path() -> String {
    format!("/app/sign-in?route=chat&return_to={APP}/&nonce={NONCE}")
}

fn connect_path() -> String {
    format!("/mcp/connect?route=demo&redirect_url={APP}/")
}

/// Sends `FLOOD` requests; returns how many were answered (sign-in page or redirect) and
/// checks every refusal is a `429` page with `Retry-After`.
async fn flood(label: &str, mut request: impl AsyncFnMut() -> Resp) -> usize {
    let mut answered = 0;
    for i in 0..FLOOD {
        let r = request().await;
        match r.status {
            StatusCode::OK | StatusCode::FOUND => answered += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let wait: u64 = r.header("retry-after").parse().unwrap();
                assert!((1..=60).contains(&wait), "{label} #{i}: Retry-After {wait}");
                assert!(
                    r.header("content-type").starts_with("text/html"),
                    "{label} #{i}: a page, as the endpoint's other errors"
                );
            }
            other => panic!("{label} #{i}: unexpected {other}: {}", r.body),
        }
    }
    answered
}

#[tokio::test]
async fn a_flood_of_each_sign_in_start_is_cut_per_address_while_a_real_sign_in_works() {
    let (served, _provider) = start("").await;

    let authorize = Client::new(&served, "127.0.0.2");
    let kept = authorize.authorize().await;
    assert_eq!(kept.status, StatusCode::OK, "{}", kept.body);
    let answered = flood("/authorize", async || authorize.authorize().await).await;
    assert_eq!(answered, FLOWS_PER_MINUTE - 1);

    let app = Client::new(&served, "127.0.0.3");
    let answered = flood("/app/sign-in", async || {
        app.get(&app_sign_in_path(), None).await
    })
    .await;
    assert_eq!(answered, FLOWS_PER_MINUTE);

    let connect = Client::new(&served, "127.0.0.4");
    let answered = flood("/mcp/connect", async || {
        connect.get(&connect_path(), None).await
    })
    .await;
    assert_eq!(answered, FLOWS_PER_MINUTE);

    // One flow, then its identity-provider sign-in started over and over: each start stores
    // a record of its own, so it draws on the same budget.
    let idp = Client::new(&served, "127.0.0.5");
    let form = idp.authorize().await;
    let start = format!("/login/idp?flow={}", form.hidden("flow"));
    let cookie = form.cookie("warden_flow").unwrap();
    let answered = flood("/login/idp", async || idp.get(&start, Some(&cookie)).await).await;
    assert_eq!(answered, FLOWS_PER_MINUTE - 1);

    // The store holds what the budgets allowed, no more.
    assert_eq!(served.pending_records(), 4 * FLOWS_PER_MINUTE as u64);

    // Meanwhile a real user elsewhere signs in from start to finish.
    let user = Client::new(&served, "127.0.0.9");
    let form = user.authorize().await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    user.finish_sign_in(&form).await;

    // Only starting is limited: the flooding address is still refused a new flow, yet the
    // flow it already holds continues to a signed-in code.
    assert_eq!(
        authorize.authorize().await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    authorize.finish_sign_in(&kept).await;

    // The budget refills over the minute.
    served.env.advance(60);
    assert_eq!(authorize.authorize().await.status, StatusCode::OK);
}

/// Issue 18: one address starting sign-ins on two replicas gets the deployment's budget once,
/// not once per replica.
#[tokio::test]
async fn the_sign_in_budget_of_an_address_holds_across_replicas() {
    let (served, _provider) = start("").await;
    let other = Served::start(served.env.replica()).await;
    let here = Client::new(&served, "127.0.0.2");
    let there = Client::new(&other, "127.0.0.2");
    let mut turn = 0;
    let answered = flood("/authorize on two replicas", async || {
        turn += 1;
        if turn % 2 == 0 {
            here.authorize().await
        } else {
            there.authorize().await
        }
    })
    .await;
    assert_eq!(answered, FLOWS_PER_MINUTE);
    assert_eq!(served.pending_records(), FLOWS_PER_MINUTE as u64);
}

#[tokio::test]
async fn pending_records_are_capped_in_total_across_addresses() {
    let (served, _provider) = start("  pending_flows: {max_pending: 8}\n").await;
    // Four addresses, each a flow and its identity-provider sign-in: 8 records.
    let mut held = Vec::new();
    for i in 0..4 {
        let c = Client::new(&served, &format!("127.0.1.{i}"));
        let form = c.authorize().await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let start = format!("/login/idp?flow={}", form.hidden("flow"));
        let r = c
            .get(&start, Some(&form.cookie("warden_flow").unwrap()))
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        held.push((c, form));
    }
    assert_eq!(served.pending_records(), 8);
    // Anyone else, by any endpoint, is refused until some end or expire.
    for i in 0..20 {
        let c = Client::new(&served, &format!("127.0.2.{i}"));
        let r = match i % 3 {
            0 => c.authorize().await,
            1 => c.get(&app_sign_in_path(), None).await,
            _ => c.get(&connect_path(), None).await,
        };
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert_eq!(r.header("retry-after"), "60");
        assert!(
            r.body.contains("Too many sign-ins are in progress"),
            "{}",
            r.body
        );
    }
    let (c, form) = &held[0];
    let start = format!("/login/idp?flow={}", form.hidden("flow"));
    let r = c
        .get(&start, Some(&form.cookie("warden_flow").unwrap()))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(served.pending_records(), 8);

    // A user in the middle of signing in still finishes, and that makes room.
    let (c, form) = &held[1];
    c.finish_sign_in(form).await;
    let next = Client::new(&served, "127.0.3.1");
    assert_eq!(next.authorize().await.status, StatusCode::OK);
    assert_eq!(next.authorize().await.status, StatusCode::TOO_MANY_REQUESTS);
    // Expired records make room too, before the sweep gets to them.
    served.env.advance(601);
    for i in 0..8 {
        let c = Client::new(&served, &format!("127.0.4.{i}"));
        assert_eq!(c.authorize().await.status, StatusCode::OK, "#{i}");
    }
    assert_eq!(served.pending_records(), 8);
}

const BEHIND_PROXY: &str = "  trusted_proxies: [127.0.0.1]\n  registration: {rate_limit_per_minute: 3}\n  pending_flows: {rate_limit_per_minute: 3}\n";

#[tokio::test]
async fn two_clients_behind_one_trusted_proxy_are_limited_separately() {
    let (served, _provider) = start(BEHIND_PROXY).await;
    // The proxy (127.0.0.1) appends the address of the client it forwards for.
    let a = Client::new(&served, "127.0.0.1").forwarding_for("198.51.100.1");
    let b = Client::new(&served, "127.0.0.1").forwarding_for("198.51.100.2");
    for _ in 0..3 {
        assert_eq!(a.register().await.status, StatusCode::CREATED);
        assert_eq!(a.authorize().await.status, StatusCode::OK);
    }
    assert_eq!(a.register().await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.authorize().await.status, StatusCode::TOO_MANY_REQUESTS);
    // B has a budget of its own.
    for _ in 0..3 {
        assert_eq!(b.register().await.status, StatusCode::CREATED);
        assert_eq!(b.authorize().await.status, StatusCode::OK);
    }
    assert_eq!(b.register().await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b.authorize().await.status, StatusCode::TOO_MANY_REQUESTS);
    // A forging entries in front of the one the proxy appended is still A.
    let forging = Client::new(&served, "127.0.0.1").forwarding_for("203.0.113.77, 198.51.100.1");
    assert_eq!(
        forging.register().await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        forging.authorize().await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_client_forging_x_forwarded_for_from_an_untrusted_peer_gains_nothing() {
    let (served, _provider) = start(BEHIND_PROXY).await;
    // 127.0.0.2 is not a trusted proxy: its header is ignored, whatever it says.
    let forged =
        |i: usize| Client::new(&served, "127.0.0.2").forwarding_for(&format!("198.51.100.{i}"));
    let (mut registered, mut started) = (0, 0);
    for i in 0..10 {
        if forged(i).register().await.status == StatusCode::CREATED {
            registered += 1;
        }
        if forged(i).authorize().await.status == StatusCode::OK {
            started += 1;
        }
    }
    assert_eq!((registered, started), (3, 3));
    // Not even by naming the trusted proxy, or a client behind it that has budget left.
    let proxy = Client::new(&served, "127.0.0.2").forwarding_for("198.51.100.200, 127.0.0.1");
    assert_eq!(
        proxy.authorize().await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The addresses it named are untouched: through the proxy they still have their budget.
    let named = Client::new(&served, "127.0.0.1").forwarding_for("198.51.100.1");
    assert_eq!(named.register().await.status, StatusCode::CREATED);
    assert_eq!(named.authorize().await.status, StatusCode::OK);
}

#[test]
fn client_address_and_flow_limit_settings_are_checked_at_load_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |settings: &str| {
        config_yaml(dir.path(), "", "ES256").replace(
            "  refresh_token_ttl_seconds: 3600\n",
            &format!("  refresh_token_ttl_seconds: 3600\n{settings}\n"),
        )
    };
    let proxies = "authorization_server.trusted_proxies";
    let flows = "authorization_server.pending_flows";
    for (settings, field, says) in [
        (
            "  trusted_proxies: [10.0.0.0/8, proxy.local]",
            format!("{proxies}[1]"),
            "not an IP address",
        ),
        (
            "  trusted_proxies: [10.0.0.0/8, '::1', 10.0.0.0/33]",
            format!("{proxies}[2]"),
            "prefix length",
        ),
        (
            "  trusted_proxies: [10.1.0.0/8]",
            format!("{proxies}[0]"),
            "did you mean 10.0.0.0/8",
        ),
        (
            "  trusted_proxies: [0.0.0.0/0]",
            format!("{proxies}[0]"),
            "trusts every address",
        ),
        (
            "  trusted_proxies: ['::/0']",
            format!("{proxies}[0]"),
            "trusts every address",
        ),
        (
            "  trusted_proxies: 10.0.0.0/8",
            proxies.to_owned(),
            "sequence",
        ),
        (
            "  pending_flows: {rate_limit_per_minute: 0}",
            format!("{flows}.rate_limit_per_minute"),
            "between 1 and 10000",
        ),
        (
            "  pending_flows: {max_pending: 0}",
            format!("{flows}.max_pending"),
            "between 1 and 1000000",
        ),
        (
            "  pending_flows: {max_pending: 1000001}",
            format!("{flows}.max_pending"),
            "between 1 and 1000000",
        ),
        ("  pending_flows: {ttl: 5}", flows.to_owned(), "ttl"),
    ] {
        let e = warden_token_service::Config::from_yaml(&yaml(settings))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&field), "{settings}: {e}");
        assert!(e.contains(says), "{settings}: {e}");
    }
    let envoy = config_yaml(dir.path(), "", "ES256")
        .replace("envoy:\n", "envoy:\n  xff_num_trusted_hops: 11\n");
    let e = warden_token_service::Config::from_yaml(&envoy)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("envoy.xff_num_trusted_hops: must be between 0 and 10"),
        "{e}"
    );

    // Defaults: nobody trusted, 30 starts per minute per address, 10,000 pending records.
    let c = warden_token_service::Config::from_yaml(&yaml("")).unwrap();
    let a = &c.authorization_server;
    assert!(a.trusted_proxies.is_empty());
    assert_eq!(
        (
            a.pending_flows.rate_limit_per_minute,
            a.pending_flows.max_pending
        ),
        (30, 10_000)
    );
    assert_eq!(c.envoy.xff_num_trusted_hops, 0);
    let c = warden_token_service::Config::from_yaml(&yaml(
        "  trusted_proxies: [10.0.0.0/8, 192.0.2.7, '2001:db8::/32', '::ffff:172.16.0.0/108']",
    ))
    .unwrap();
    let shown: Vec<String> = c
        .authorization_server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "2001:db8::/32",
            "172.16.0.0/12"
        ]
    );
}
