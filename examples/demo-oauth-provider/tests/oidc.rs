//! The demo provider as an OpenID Connect provider over real HTTP: discovery, JWKS, signed ID
//! tokens (RS256 and ES256) with nonce and per-user claims, userinfo, key rotation and every
//! deliberately broken ID token of `/_test/id-token`; ID-JAGs by RFC 8693 token exchange.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{hmac, signature};
use base64::Engine as _;
use common::*;
use demo_oauth_provider::{
    oidc_subject, AuthStyle, ClaimsPlacement, IdTokenAlg, ProviderConfig, OTHER_AUDIENCE,
    OTHER_AZP, WRONG_ISSUER,
};
use reqwest::{header::LOCATION, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64url {s:?}: {e}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT split into its parts.
struct Jwt {
    header: Value,
    claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

fn parse_jwt(token: &str) -> Jwt {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    Jwt {
        header: serde_json::from_slice(&b64d(parts[0])).unwrap(),
        claims: serde_json::from_slice(&b64d(parts[1])).unwrap(),
        signing_input: format!("{}.{}", parts[0], parts[1]),
        signature: b64d(parts[2]),
    }
}

/// Verifies `jwt` against the JWKS the way a relying party would (key by `kid`, the key's own
/// algorithm); `Err` says why it fails.
fn verify(jwt: &Jwt, jwks: &Value) -> Result<(), String> {
    let kid = jwt.header["kid"].as_str().ok_or("no kid")?;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or_else(|| format!("kid {kid} not in the JWKS"))?;
    assert_eq!(key["use"], "sig");
    if jwt.header["alg"] != key["alg"] {
        return Err(format!("alg {} is not the key's", jwt.header["alg"]));
    }
    let msg = jwt.signing_input.as_bytes();
    match key["alg"].as_str().unwrap() {
        "RS256" => {
            assert_eq!(key["kty"], "RSA");
            let n = b64d(key["n"].as_str().unwrap());
            let e = b64d(key["e"].as_str().unwrap());
            assert_eq!(n.len(), 256, "RSA-2048 modulus");
            signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, &jwt.signature)
                .map_err(|_| "bad RS256 signature".to_owned())
        }
        "ES256" => {
            assert_eq!(key["kty"], "EC");
            assert_eq!(key["crv"], "P-256");
            let mut point = vec![4u8];
            point.extend(b64d(key["x"].as_str().unwrap()));
            point.extend(b64d(key["y"].as_str().unwrap()));
            assert_eq!(point.len(), 65);
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                .verify(msg, &jwt.signature)
                .map_err(|_| "bad ES256 signature".to_owned())
        }
        other => Err(format!("unexpected key alg {other}")),
    }
}

impl Provider {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn discovery(&self) -> Value {
        let (status, body) = self.get_json("/.well-known/openid-configuration").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn jwks(&self) -> Value {
        let (status, body) = self.get_json("/jwks").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn stats(&self) -> Value {
        self.get_json("/_test/stats").await.1
    }

    async fn hook(&self, path_and_query: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.post(self.url(path_and_query));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    /// Authorize (as alice, approving) with `scope` and an optional nonce → the code.
    async fn code(&self, scope: &str, nonce: Option<&str>) -> String {
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(VERIFIER.as_bytes()));
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", ID),
            ("redirect_uri", REDIRECT),
            ("state", "st-1"),
            ("scope", scope),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        if let Some(nonce) = nonce {
            params.push(("nonce", nonce));
        }
        let resp = self
            .http
            .get(self.url("/authorize"))
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let request = hidden(&resp.text().await.unwrap(), "request");
        let resp = self
            .http
            .post(self.url("/authorize"))
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
        query_param(&location, "code").unwrap()
    }

    async fn token(&self, form: &[(&str, &str)]) -> Value {
        let mut form = form.to_vec();
        form.push(("client_id", ID));
        form.push(("client_secret", SECRET));
        let resp = self
            .http
            .post(self.url("/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// The full code flow → the token response.
    async fn tokens(&self, scope: &str, nonce: Option<&str>) -> Value {
        let code = self.code(scope, nonce).await;
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .await
    }

    /// The ID token of a full `openid email profile` flow with nonce `n-1`.
    async fn id_token(&self) -> Jwt {
        let body = self.tokens("openid email profile", Some("n-1")).await;
        parse_jwt(body["id_token"].as_str().unwrap())
    }

    async fn userinfo(&self, access_token: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(self.url("/userinfo"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }
}

#[tokio::test]
async fn discovery_document_describes_the_provider() {
    let p = start(ProviderConfig::default()).await;
    let d = p.discovery().await;
    let issuer = p.base.clone();
    assert_eq!(d["issuer"], issuer.as_str());
    assert_eq!(d["authorization_endpoint"], format!("{issuer}/authorize"));
    assert_eq!(d["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(d["userinfo_endpoint"], format!("{issuer}/userinfo"));
    assert_eq!(d["jwks_uri"], format!("{issuer}/jwks"));
    assert_eq!(d["revocation_endpoint"], format!("{issuer}/revoke"));
    assert_eq!(d["introspection_endpoint"], format!("{issuer}/introspect"));
    assert_eq!(d["response_types_supported"], json!(["code"]));
    assert_eq!(d["subject_types_supported"], json!(["public"]));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["RS256"]));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(
        d["grant_types_supported"],
        json!([
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    for scope in ["openid", "email", "profile", "groups", "offline_access"] {
        assert!(
            d["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(scope)),
            "{scope}"
        );
    }
    for claim in ["sub", "iss", "aud", "nonce", "email", "name", "groups"] {
        assert!(
            d["claims_supported"]
                .as_array()
                .unwrap()
                .contains(&json!(claim)),
            "{claim}"
        );
    }
    // The jwks_uri works and the OIDC endpoints count their requests.
    p.jwks().await;
    let stats = p.stats().await;
    assert_eq!(stats["discovery_requests"], 1);
    assert_eq!(stats["jwks_requests"], 1);
    assert_eq!(stats["userinfo_requests"], 0);
    assert_eq!(stats["token_requests"], 0, "existing fields stay");

    for (style, methods) in [
        (AuthStyle::Header, json!(["client_secret_basic"])),
        (AuthStyle::Params, json!(["client_secret_post"])),
    ] {
        let p = start(ProviderConfig {
            auth_style: style,
            issuer: Some("https://idp.example/realms/demo".to_owned()),
            id_token_alg: IdTokenAlg::Es256,
            ..ProviderConfig::default()
        })
        .await;
        let d = p.discovery().await;
        assert_eq!(d["token_endpoint_auth_methods_supported"], methods);
        assert_eq!(d["issuer"], "https://idp.example/realms/demo");
        assert_eq!(d["jwks_uri"], "https://idp.example/realms/demo/jwks");
        assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
    }
}

#[tokio::test]
async fn rs256_id_token_verifies_and_carries_the_right_claims() {
    let p = start(ProviderConfig::default()).await;
    let before = now();
    let body = p
        .tokens("openid email profile groups", Some("nonce-123"))
        .await;
    let jwt = parse_jwt(body["id_token"].as_str().unwrap());
    let jwks = p.jwks().await;
    assert_eq!(jwt.header["alg"], "RS256");
    assert_eq!(jwt.header["typ"], "JWT");
    assert_eq!(jwt.header["kid"], jwks["keys"][0]["kid"]);
    verify(&jwt, &jwks).unwrap();

    let c = &jwt.claims;
    assert_eq!(c["iss"], p.base.as_str());
    assert_eq!(c["aud"], ID);
    assert_eq!(c["azp"], ID);
    assert_eq!(c["nonce"], "nonce-123");
    let sub = c["sub"].as_str().unwrap();
    assert_eq!(sub, oidc_subject("alice"));
    assert!(sub.starts_with("u-") && sub.len() == 18, "{sub}");
    assert!(!sub.contains("alice"), "sub must be opaque: {sub}");
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["email_verified"], true);
    assert_eq!(c["name"], "Alice Example");
    assert_eq!(c["groups"], json!(["engineering"]));
    let iat = c["iat"].as_u64().unwrap();
    assert!(iat >= before && iat <= now() + 1);
    assert_eq!(c["exp"].as_u64().unwrap(), iat + 300);
    let auth_time = c["auth_time"].as_u64().unwrap();
    assert!(auth_time >= before && auth_time <= iat);

    // Userinfo answers with the OIDC sub and the claims.
    let (status, info) = p.userinfo(body["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["sub"], sub);
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["groups"], json!(["engineering"]));
    assert_eq!(p.stats().await["userinfo_requests"], 1);

    // A refresh of an openid grant brings a fresh ID token without the nonce.
    let refreshed = p
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", body["refresh_token"].as_str().unwrap()),
        ])
        .await;
    let again = parse_jwt(refreshed["id_token"].as_str().unwrap());
    verify(&again, &jwks).unwrap();
    assert_eq!(again.claims["sub"], sub);
    assert_eq!(again.claims["auth_time"], auth_time);
    assert!(again.claims.get("nonce").is_none(), "{}", again.claims);

    // Without a nonce in the request there is none in the token.
    let jwt = parse_jwt(p.tokens("openid", None).await["id_token"].as_str().unwrap());
    verify(&jwt, &jwks).unwrap();
    assert!(jwt.claims.get("nonce").is_none());
}

#[tokio::test]
async fn non_openid_grants_are_plain_oauth() {
    let p = start(ProviderConfig::default()).await;
    let body = p.tokens("read write", Some("ignored")).await;
    assert!(body.get("id_token").is_none(), "{body}");
    let (status, info) = p.userinfo(body["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info, json!({ "sub": "alice", "scope": "read write" }));
    let refreshed = p
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", body["refresh_token"].as_str().unwrap()),
        ])
        .await;
    assert!(refreshed.get("id_token").is_none(), "{refreshed}");
}

#[tokio::test]
async fn es256_id_token_verifies() {
    let p = start(ProviderConfig {
        id_token_alg: IdTokenAlg::Es256,
        ..ProviderConfig::default()
    })
    .await;
    let jwt = p.id_token().await;
    assert_eq!(jwt.header["alg"], "ES256");
    assert_eq!(jwt.signature.len(), 64, "fixed-size r || s");
    let jwks = p.jwks().await;
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    verify(&jwt, &jwks).unwrap();
    assert_eq!(jwt.claims["nonce"], "n-1");
    assert_eq!(jwt.claims["email"], "alice@example.com");
}

#[tokio::test]
async fn every_id_token_fault_produces_its_defect() {
    for alg in [IdTokenAlg::Rs256, IdTokenAlg::Es256] {
        let p = start(ProviderConfig {
            id_token_alg: alg,
            ..ProviderConfig::default()
        })
        .await;
        let jwks = p.jwks().await;
        let kid = jwks["keys"][0]["kid"].clone();
        let broken = |mode: &'static str| {
            let p = &p;
            async move {
                let (status, _) = p.hook(&format!("/_test/id-token?mode={mode}"), None).await;
                assert_eq!(status, StatusCode::OK, "{mode}");
                p.id_token().await
            }
        };

        let jwt = broken("wrong-aud").await;
        verify(&jwt, &jwks).unwrap();
        assert_eq!(jwt.claims["aud"], OTHER_AUDIENCE);

        let jwt = broken("azp-other").await;
        verify(&jwt, &jwks).unwrap();
        assert_eq!(jwt.claims["aud"], json!([ID, OTHER_AZP]));
        assert_eq!(jwt.claims["azp"], OTHER_AZP);

        let jwt = broken("wrong-iss").await;
        verify(&jwt, &jwks).unwrap();
        assert_eq!(jwt.claims["iss"], WRONG_ISSUER);

        let jwt = broken("wrong-nonce").await;
        verify(&jwt, &jwks).unwrap();
        let nonce = jwt.claims["nonce"].as_str().unwrap();
        assert_ne!(nonce, "n-1");

        let jwt = broken("no-nonce").await;
        verify(&jwt, &jwks).unwrap();
        assert!(jwt.claims.get("nonce").is_none());

        let jwt = broken("expired").await;
        verify(&jwt, &jwks).unwrap();
        let exp = jwt.claims["exp"].as_u64().unwrap();
        assert!(exp + 590 <= now() && exp + 610 >= now(), "exp {exp}");

        let jwt = broken("bad-signature").await;
        assert_eq!(jwt.header["kid"], kid);
        assert!(verify(&jwt, &jwks).unwrap_err().contains("signature"));

        let jwt = broken("unknown-kid").await;
        assert_ne!(jwt.header["kid"], kid);
        assert_eq!(jwt.header["alg"], alg.as_str());
        assert!(verify(&jwt, &jwks).unwrap_err().contains("not in the JWKS"));

        let jwt = broken("alg-none").await;
        assert_eq!(jwt.header["alg"], "none");
        assert!(jwt.signature.is_empty());

        // HS256 keyed with the public JWK's JSON: verifies for a naive verifier that trusts the
        // header's alg, and never as the key's own algorithm.
        let jwt = broken("hs256").await;
        assert_eq!(jwt.header["alg"], "HS256");
        assert_eq!(jwt.header["kid"], kid);
        let secret = serde_json::to_string(&jwks["keys"][0]).unwrap();
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            jwt.signing_input.as_bytes(),
            &jwt.signature,
        )
        .expect("HMAC keyed with the JWK JSON");
        assert!(verify(&jwt, &jwks).is_err());

        // Faults are one-shot by default: the next token is sound.
        let jwt = p.id_token().await;
        verify(&jwt, &jwks).unwrap();
        assert_eq!(jwt.claims["aud"], ID);
        assert_eq!(jwt.claims["nonce"], "n-1");
    }
}

#[tokio::test]
async fn fault_count_and_off() {
    let p = start(ProviderConfig::default()).await;
    let jwks = p.jwks().await;
    p.hook("/_test/id-token?mode=wrong-aud&count=2", None).await;
    assert_eq!(p.id_token().await.claims["aud"], OTHER_AUDIENCE);
    assert_eq!(p.id_token().await.claims["aud"], OTHER_AUDIENCE);
    assert_eq!(p.id_token().await.claims["aud"], ID);
    p.hook("/_test/id-token?mode=expired&count=5", None).await;
    p.hook("/_test/id-token?mode=off", None).await;
    let jwt = p.id_token().await;
    verify(&jwt, &jwks).unwrap();
    assert!(jwt.claims["exp"].as_u64().unwrap() > now());
    let (status, _) = p.hook("/_test/id-token?mode=bogus", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn rotate_key_changes_the_kid() {
    let p = start(ProviderConfig::default()).await;
    let old = p.jwks().await;
    let old_kid = old["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert_eq!(p.id_token().await.header["kid"], old_kid.as_str());

    let (status, rotated) = p.hook("/_test/rotate-key", None).await;
    assert_eq!(status, StatusCode::OK);
    let new = p.jwks().await;
    let keys = new["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{new}");
    let new_kid = keys[0]["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    assert_eq!(rotated["kid"], new_kid.as_str());
    let jwt = p.id_token().await;
    assert_eq!(jwt.header["kid"], new_kid.as_str());
    verify(&jwt, &new).unwrap();
    assert!(verify(&jwt, &old).is_err());

    p.hook("/_test/rotate-key?keep_old=true", None).await;
    let both = p.jwks().await;
    let kids: Vec<&str> = both["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[0], new_kid);
    let jwt = p.id_token().await;
    assert_eq!(jwt.header["kid"], kids[1]);
    verify(&jwt, &both).unwrap();
}

#[tokio::test]
async fn claims_placement_and_nested_claims() {
    let p = start(ProviderConfig::default()).await;
    let (status, _) = p
        .hook(
            "/_test/claims?user=alice&placement=userinfo",
            Some(json!({
                "email": "alice@corp.example",
                "realm_access": { "roles": ["admin", "dev"] },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = p.tokens("openid email", Some("n")).await;
    let jwt = parse_jwt(body["id_token"].as_str().unwrap());
    assert!(jwt.claims.get("email").is_none(), "{}", jwt.claims);
    assert!(jwt.claims.get("realm_access").is_none());
    assert!(
        jwt.claims.get("name").is_none(),
        "the old claims are replaced"
    );
    let (_, info) = p.userinfo(body["access_token"].as_str().unwrap()).await;
    assert_eq!(
        info,
        json!({
            "sub": oidc_subject("alice"),
            "email": "alice@corp.example",
            "realm_access": { "roles": ["admin", "dev"] },
        })
    );

    p.hook(
        "/_test/claims?user=alice&placement=id_token",
        Some(json!({ "realm_access": { "roles": ["admin"] }, "sub": "spoofed" })),
    )
    .await;
    let body = p.tokens("openid", None).await;
    let jwt = parse_jwt(body["id_token"].as_str().unwrap());
    assert_eq!(jwt.claims["realm_access"]["roles"], json!(["admin"]));
    assert_eq!(
        jwt.claims["sub"],
        oidc_subject("alice"),
        "sub is not overridable"
    );
    let (_, info) = p.userinfo(body["access_token"].as_str().unwrap()).await;
    assert_eq!(info, json!({ "sub": oidc_subject("alice") }));

    let (status, _) = p
        .hook("/_test/claims?user=mallory", Some(json!({ "email": "x" })))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = p
        .hook(
            "/_test/claims?user=alice",
            Some(json!(["not", "an object"])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = p
        .hook(
            "/_test/claims?user=alice&placement=nowhere",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn configured_placement_and_users() {
    let p = start(ProviderConfig {
        users: vec![
            ("alice".to_owned(), "alice-password".to_owned()),
            ("bob".to_owned(), "bob-password".to_owned()),
        ],
        claims_placement: ClaimsPlacement::Userinfo,
        ..ProviderConfig::default()
    })
    .await;
    let jwt = p.id_token().await;
    assert!(jwt.claims.get("email").is_none());
    // bob has no claims yet, but is a configured user: the hook may give him some.
    let (status, _) = p
        .hook(
            "/_test/claims?user=bob",
            Some(json!({ "email": "bob@example.com" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(oidc_subject("alice"), oidc_subject("bob"));
}

#[tokio::test]
async fn discovery_and_jwks_can_fail() {
    let p = start(ProviderConfig::default()).await;
    let (status, _) = p
        .hook("/_test/fail-discovery?status=503&count=2", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        let (status, body) = p.get_json("/.well-known/openid-configuration").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "temporarily_unavailable");
    }
    p.discovery().await;

    p.hook("/_test/fail-jwks?status=500", None).await;
    assert_eq!(
        p.get_json("/jwks").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    p.jwks().await;
    p.hook("/_test/fail-jwks?count=3", None).await;
    p.hook("/_test/fail-jwks?count=0", None).await;
    p.jwks().await;
    let (status, _) = p.hook("/_test/fail-jwks?status=200", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let stats = p.stats().await;
    assert_eq!(stats["discovery_requests"], 3);
    assert_eq!(stats["jwks_requests"], 3);
}

/// The token exchange of an ID token for an ID-JAG, with the client's credentials in the body.
async fn exchange(p: &Provider, subject: &str, extra: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:id-jag",
        ),
        ("subject_token", subject),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:id_token",
        ),
        ("audience", "https://as.example.com"),
        ("resource", "https://mcp.example.com/mcp"),
        ("client_id", ID),
        ("client_secret", SECRET),
    ];
    for (k, v) in extra {
        form.retain(|(name, _)| name != k);
        form.push((k, v));
    }
    let resp = p
        .http
        .post(p.url("/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn an_id_token_is_exchanged_for_a_signed_id_jag() {
    for alg in [IdTokenAlg::Rs256, IdTokenAlg::Es256] {
        let p = start(ProviderConfig {
            id_token_alg: alg,
            id_jag_client_id: Some("agent-platform".into()),
            ..ProviderConfig::default()
        })
        .await;
        let body = p.tokens("openid email profile", Some("n-1")).await;
        let id_token = body["id_token"].as_str().unwrap();
        let (status, answer) = exchange(&p, id_token, &[("scope", "tools.read")]).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(
            answer["issued_token_type"],
            "urn:ietf:params:oauth:token-type:id-jag"
        );
        assert_eq!(answer["token_type"], "N_A");
        assert_eq!(answer["expires_in"], 300);
        let jag = parse_jwt(answer["access_token"].as_str().unwrap());
        assert_eq!(jag.header["typ"], "oauth-id-jag+jwt");
        verify(&jag, &p.jwks().await).unwrap();
        let c = &jag.claims;
        assert_eq!(c["iss"], p.base);
        assert_eq!(c["sub"], oidc_subject("alice"));
        assert_eq!(c["aud"], "https://as.example.com");
        assert_eq!(c["client_id"], "agent-platform");
        assert_eq!(c["resource"], "https://mcp.example.com/mcp");
        assert_eq!(c["scope"], "tools.read");
        assert_eq!(c["email"], "alice@example.com");
        assert_eq!(c["name"], "Alice Example");
        assert_eq!(c["groups"], json!(["engineering"]));
        let iat = c["iat"].as_u64().unwrap();
        assert!(iat.abs_diff(now()) < 5);
        assert_eq!(c["exp"].as_u64().unwrap(), iat + 300);
        assert!(c["jti"].as_str().unwrap().len() > 20);
        assert!(
            c.get("email_verified").is_none(),
            "only email, name, groups"
        );
        // Each grant has its own jti.
        let (_, again) = exchange(&p, id_token, &[]).await;
        let again = parse_jwt(again["access_token"].as_str().unwrap());
        assert_ne!(again.claims["jti"], c["jti"]);
        assert!(again.claims.get("scope").is_none());
    }
}

#[tokio::test]
async fn the_exchange_refuses_what_is_not_its_own_live_id_token() {
    let p = start(ProviderConfig::default()).await;
    let (status, answer) = p.hook("/_test/issue-id-token?user=alice", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let id_token = answer["id_token"].as_str().unwrap().to_owned();
    let (status, answer) = exchange(&p, &id_token, &[]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Default client_id claim: the provider's own client.
    let jag = parse_jwt(answer["access_token"].as_str().unwrap());
    assert_eq!(jag.claims["client_id"], ID);

    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case<'_>; 6] = [
        (
            &[("subject_token", "not-a-token")],
            "invalid_grant",
            "not an ID token",
        ),
        (
            &[(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            )],
            "invalid_request",
            "not supported",
        ),
        (
            &[("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")],
            "invalid_request",
            "subject_token_type",
        ),
        (
            &[("audience", "")],
            "invalid_request",
            "audience is required",
        ),
        (
            &[("resource", "")],
            "invalid_request",
            "resource is required",
        ),
        (&[("client_secret", "wrong")], "invalid_client", "failed"),
    ];
    for (extra, error, says) in cases {
        let (status, answer) = exchange(&p, &id_token, extra).await;
        assert_ne!(status, StatusCode::OK, "{extra:?}");
        assert_eq!(answer["error"], error, "{extra:?}: {answer}");
        assert!(
            answer["error_description"].as_str().unwrap().contains(says),
            "{extra:?}: {answer}"
        );
    }
    // An ID token it issued, broken to be expired; and a disabled user's.
    p.hook("/_test/id-token?mode=expired", None).await;
    let (_, answer) = p.hook("/_test/issue-id-token?user=alice", None).await;
    let expired = answer["id_token"].as_str().unwrap().to_owned();
    let (status, answer) = exchange(&p, &expired, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error_description"], "subject_token expired");
    p.hook("/_test/disable-user?user=alice", None).await;
    let (status, answer) = exchange(&p, &id_token, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error_description"], "the user is disabled");
    // The hooks refuse users it does not know.
    let (status, _) = p.hook("/_test/issue-id-token?user=mallory", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_id_jag_hook_issues_one_for_a_named_client() {
    let p = start(ProviderConfig::default()).await;
    let (status, answer) = p
        .hook(
            "/_test/id-jag?user=alice&audience=https://as.example.com&resource=https://mcp.example.com/mcp&client_id=other-agent",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let jag = parse_jwt(answer["id_jag"].as_str().unwrap());
    assert_eq!(jag.header["typ"], "oauth-id-jag+jwt");
    verify(&jag, &p.jwks().await).unwrap();
    assert_eq!(jag.claims["client_id"], "other-agent");
    assert_eq!(jag.claims["aud"], "https://as.example.com");
    let (status, _) = p.hook("/_test/id-jag?user=alice", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
