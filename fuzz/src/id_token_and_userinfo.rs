//! What the token service reads from an identity provider: ID tokens (`jws::decode`, `jws::peek`, the
//! key the token names among the provider's, `oidc::id_token_claims`), userinfo answers
//! (`oidc::userinfo_claims`), the user made of both (`oidc::claims::user`), and JWKS documents
//! (`oidc::jws::parse_jwks`). Tokens are any bytes, or signed here with the provider's keys
//! (RSA, P-256, Ed25519, from fixed material) or a rogue key under a published `kid`, from
//! fuzzed header and claims bytes, then maybe mutated.
//!
//! * An accepted ID token names an accepted algorithm, the one its key signs with; a second
//!   implementation accepts its signature by that published key over exactly its first two
//!   parts; its claims pass OIDC Core §3.1.3.7 as read here (`iss`, `aud`/`azp`, `exp`, `iat`,
//!   `nonce`, `sub`).
//! * An accepted userinfo answer is a JSON object about the ID token's subject.
//! * A user is keyed `{issuer}#{sub}` and has an email with an `@` and a lower-case domain;
//!   a refusal is `Invalid` (the token) or `Claims` (the user), never another kind.
//! * Every key a JWKS yields verifies with at least one accepted algorithm.
//!
//! Input: a mode line, then
//! * `raw`: the ID token (the rest);
//! * `sign <kid|rogue> [flip <n>]`: a header line and the claims (the rest);
//! * `userinfo <sub>`: the userinfo answer (the rest), for a good ID token of `<sub>`;
//! * `jwks`: a JWKS document (the rest).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};
use warden_token_service::oidc::{self, claims, jws, IdpError};

use crate::fixtures::{
    self, id_token_claims, idp_keys, idp_parsed_keys, oidc_config, IDP_CLIENT, IDP_ISSUER,
    IDP_NONCE, IDP_NOW,
};
use crate::input::{flip_bit, join, Fields, Words};

const ACCEPTED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// What `run` can decide.
pub const OUTCOMES: &[&str] = &[
    "id-token-accepted",
    "id-token-refused",
    "userinfo-accepted",
    "userinfo-refused",
    "jwks-read",
    "jwks-refused",
];

pub fn run(data: &[u8]) -> &'static str {
    let mut f = Fields::new(data);
    let mode = f.text();
    let words = Words::new(&mode);
    match words.first() {
        "sign" => {
            let key = match words.after("sign") {
                Some("rogue") => fixtures::rogue_idp_key(),
                Some(kid) => idp_keys()
                    .iter()
                    .find(|k| k.kid == kid)
                    .unwrap_or(&idp_keys()[0]),
                None => &idp_keys()[0],
            };
            let header = f.line();
            let mut token = key.compact(header, f.rest()).into_bytes();
            if let Some(n) = words.number_after("flip") {
                flip_bit(&mut token, n);
            }
            id_token(&String::from_utf8_lossy(&token))
        }
        "userinfo" => userinfo(words.after("userinfo").unwrap_or("alice"), f.rest()),
        "jwks" => jwks(f.rest()),
        _ => id_token(&String::from_utf8_lossy(f.rest())),
    }
}

/// Checks `token` as a sign-in does (keys already fetched), then the verdict against it.
fn id_token(token: &str) -> &'static str {
    // The unchecked read that finds an assertion's keys (`private_key_jwt`, ID-JAG) takes any
    // bytes, and names the `kid` the checked decode names.
    let (peeked_kid, _) = jws::peek(token, "kid", "sub");
    let Ok(decoded) = jws::decode(token) else {
        return "id-token-refused";
    };
    assert_eq!(peeked_kid, decoded.kid);
    assert!(
        ACCEPTED_ALGS.contains(&decoded.alg.as_str()),
        "{}",
        decoded.alg
    );
    let Some(key) = decoded.key_in(idp_parsed_keys()) else {
        return "id-token-refused";
    };
    let kid = key.kid.clone();
    let alg = decoded.alg.clone();
    let checked = oidc::id_token_claims(
        decoded,
        key,
        IDP_ISSUER,
        IDP_CLIENT,
        Some(IDP_NONCE),
        IDP_NOW,
    );
    let claims = match checked {
        Ok(claims) => claims,
        Err(IdpError::Invalid(m)) => {
            assert!(!m.is_empty());
            return "id-token-refused";
        }
        Err(other) => panic!("an ID token refused as {other:?}"),
    };
    // The signature, checked with a second implementation.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let key = idp_keys()
        .iter()
        .find(|k| Some(k.kid) == kid.as_deref())
        .expect("the key of an accepted token is published");
    assert_eq!(
        alg, key.alg,
        "accepted under another algorithm than its key's"
    );
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    let sig = B64
        .decode(parts[2])
        .expect("an accepted signature is base64url");
    assert!(
        key.verifies(signed.as_bytes(), &sig, false),
        "an ID token accepted without a valid signature from {}",
        key.kid
    );
    let payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(Value::Object(claims.clone()), payload);
    oidc_core_checks(&claims);
    user_agrees(&claims, None);
    "id-token-accepted"
}

/// OIDC Core §3.1.3.7 (items 2–4, 9–11), read here from the claims.
fn oidc_core_checks(claims: &Map<String, Value>) {
    let leeway = oidc::LEEWAY;
    assert_eq!(claims["iss"], IDP_ISSUER);
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        other => panic!("aud {other}"),
    };
    assert!(audiences.contains(&IDP_CLIENT));
    if audiences.len() > 1 || claims.contains_key("azp") {
        assert_eq!(claims["azp"], IDP_CLIENT);
    }
    let exp = claims["exp"].as_i64().expect("an exp");
    assert!(IDP_NOW < exp.saturating_add(leeway), "expired");
    let iat = claims["iat"].as_i64().expect("an iat");
    assert!(
        iat <= IDP_NOW.saturating_add(leeway),
        "issued in the future"
    );
    assert_eq!(claims["nonce"], IDP_NONCE);
    let sub = claims["sub"].as_str().expect("a sub");
    assert!(!sub.is_empty() && sub.len() <= 255);
}

fn user_agrees(id_token: &Map<String, Value>, userinfo: Option<&Map<String, Value>>) {
    match claims::user(oidc_config(), IDP_ISSUER, id_token, userinfo) {
        Ok(user) => {
            let sub = claims::string(id_token, "sub").unwrap_or_default();
            assert_eq!(user.key, claims::user_key(IDP_ISSUER, &sub));
            let (_, domain) = user.email.rsplit_once('@').expect("an email with an @");
            assert_eq!(domain, domain.to_ascii_lowercase());
        }
        Err(IdpError::Claims(m)) => assert!(!m.is_empty()),
        Err(other) => panic!("a user refused as {other:?}"),
    }
}

fn userinfo(sub: &str, body: &[u8]) -> &'static str {
    let mut id_claims = id_token_claims();
    id_claims["sub"] = sub.into();
    // Without a profile in the ID token, as when a provider keeps it for userinfo.
    for name in ["email", "email_verified", "name", "realm_access"] {
        id_claims.as_object_mut().unwrap().remove(name);
    }
    let id_claims = id_claims.as_object().unwrap().clone();
    match oidc::userinfo_claims(body, sub) {
        Ok(info) => {
            let lenient: Value = serde_json::from_slice(body).expect("accepted userinfo is JSON");
            assert_eq!(lenient, Value::Object(info.clone()));
            assert_eq!(info["sub"], sub, "userinfo about another user accepted");
            user_agrees(&id_claims, Some(&info));
            "userinfo-accepted"
        }
        Err(IdpError::Invalid(m)) => {
            assert!(!m.is_empty());
            "userinfo-refused"
        }
        Err(other) => panic!("userinfo refused as {other:?}"),
    }
}

fn jwks(body: &[u8]) -> &'static str {
    let Ok(keys) = jws::parse_jwks(body) else {
        return "jwks-refused";
    };
    for key in &keys {
        assert!(
            ACCEPTED_ALGS.iter().any(|alg| key.allows(alg)),
            "a JWKS key that verifies nothing: {key:?}"
        );
    }
    // A token naming one of these keys is judged without a panic.
    let token = idp_keys()[0].jwt("JWT", &id_token_claims());
    if let Ok(decoded) = jws::decode(&token) {
        if let Some(key) = decoded.key_in(&keys) {
            let key = key.clone();
            let _ = oidc::id_token_claims(
                decoded,
                &key,
                IDP_ISSUER,
                IDP_CLIENT,
                Some(IDP_NONCE),
                IDP_NOW,
            );
        }
    }
    "jwks-read"
}

/// ID tokens as the demo provider issues them (RS256, ES256, and EdDSA), with its faults
/// (wrong `aud`, `azp` of another client, wrong `iss`, bad signature, unknown `kid`, HS256,
/// `none`), claims edge cases, userinfo answers and JWKS documents.
pub fn seeds() -> Vec<Vec<u8>> {
    let [r1, e1, d1] = idp_keys();
    let claims = id_token_claims();
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let raw = |token: String| join(&[b"raw", token.as_bytes()]);
    let sign = |mode: &str, header: Value, claims: &Value| {
        join(&[
            mode.as_bytes(),
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
        ])
    };
    let header = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let good = r1.jwt("JWT", &claims);
    let (signed, _) = good.rsplit_once('.').unwrap();
    vec![
        raw(good.clone()),
        raw(e1.jwt("JWT", &claims)),
        raw(d1.jwt("JWT", &claims)),
        raw(format!("{signed}.AAAA")),
        raw(format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","kid":"r1"}"#),
            signed.split('.').nth(1).unwrap()
        )),
        sign("sign r1", header("RS256", "r1"), &claims),
        sign("sign r1 flip 9000", header("RS256", "r1"), &claims),
        sign("sign e1", json!({"alg": "ES256"}), &claims),
        sign("sign d1", header("EdDSA", "d1"), &with("aud", json!([IDP_CLIENT, "other"]))),
        sign("sign rogue", header("ES256", "e1"), &claims),
        sign("sign r1", header("RS512", "r1"), &claims),
        sign("sign r1", header("HS256", "r1"), &claims),
        sign("sign r1", json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]}), &claims),
        sign("sign r1", header("RS256", "r1"), &with("aud", json!("another-app"))),
        sign("sign r1", header("RS256", "r1"), &with("azp", json!("other"))),
        sign("sign r1", header("RS256", "r1"), &with("iss", json!("https://wrong.example"))),
        sign("sign r1", header("RS256", "r1"), &with("exp", json!(IDP_NOW - 61))),
        sign("sign r1", header("RS256", "r1"), &with("exp", json!(i64::MIN))),
        sign("sign r1", header("RS256", "r1"), &with("iat", json!(i64::MAX))),
        sign("sign r1", header("RS256", "r1"), &with("nonce", json!("n-other"))),
        sign("sign r1", header("RS256", "r1"), &with("sub", json!(""))),
        sign("sign r1", header("RS256", "r1"), &with("email", json!(" Alice.Smith@Contoso.COM "))),
        sign("sign r1", header("RS256", "r1"), &with("email_verified", json!("false"))),
        sign("sign r1", header("RS256", "r1"), &with("email", json!("no-at-sign"))),
        join(&[
            b"userinfo alice",
            json!({"sub": "alice", "email": "b@Example.com", "preferred_username": "bee",
                   "realm_access": {"roles": ["x", 3]}})
            .to_string()
            .as_bytes(),
        ]),
        join(&[b"userinfo alice", br#"{"sub": "mallory", "email": "m@example.com"}"#]),
        join(&[b"userinfo alice", br#"{"sub": "alice", "email": null, "name": null}"#]),
        join(&[b"userinfo alice", b"[1, 2]"]),
        join(&[b"jwks", fixtures::idp_jwks().to_string().as_bytes()]),
        join(&[b"jwks", br#"{"keys": {"kty": "RSA"}}"#]),
        join(&[
            b"jwks",
            br#"{"keys":[{"kty":"EC","crv":"P-384","x":"AAAA","y":"AAAA"},{"kty":"RSA","n":"AQAB","e":"AQAB","use":"enc"},{"kty":"OKP","crv":"Ed25519","x":""}]}"#,
        ]),
    ]
}
