#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Tokens this service issues pass the filter's own verifier (warden-core).

mod common;

use common::*;
use warden_core::keys::KeySet;
use warden_core::token::{verify, TokenRules};

#[tokio::test]
async fn filter_accepts_issued_tokens() {
    for alg in ["ES256", "EdDSA"] {
        let env = TestEnv::with(|d| config_yaml(d, "", alg));
        let code = env.code("public-app", REDIRECT).await;
        let t = env
            .exchange_public("public-app", &code, REDIRECT)
            .await
            .json();
        let jwks = env.get("/.well-known/jwks.json").await.body;
        let keys = KeySet::from_jwks(jwks.as_bytes()).unwrap();
        let rules = TokenRules {
            issuer: ISSUER.into(),
            leeway_seconds: 30,
        };
        let id = verify(
            t["access_token"].as_str().unwrap(),
            &keys,
            &rules,
            env.state.now(),
        )
        .unwrap();
        assert!(id.allows_resource(RESOURCE), "{alg}");
        assert!(!id.allows_resource("http://127.0.0.1:9000/other"));
        assert_eq!(id.claims.sub, EMAIL);
        assert_eq!(id.claims.groups, vec!["admins", "demo"]);
        assert_eq!(id.expires_at, env.state.now() + 300);
        // Expired per the filter after ttl + leeway.
        assert!(verify(
            t["access_token"].as_str().unwrap(),
            &keys,
            &rules,
            env.state.now() + 400
        )
        .is_err());
    }
}
