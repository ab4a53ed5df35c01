//! The bearer TE: the JWS header and claims `token::verify` reads, and `app::accept_token` on
//! top of it for an app's TE. Tokens are any bytes, or signed here (with a published key or a
//! rogue one under a published `kid`) from fuzzed header and claims bytes, then maybe mutated.
//!
//! A verified token always: has three parts; names a published `kid` whose algorithm its
//! header names, `typ` `at+jwt`, no `crit`; carries a signature a second implementation
//! accepts from that key over exactly its first two parts; has `iss` = the rule's issuer, an
//! `exp` not past (with the leeway) that is the identity's expiry, an `nbf` (if any) reached;
//! and its identity's claims are the payload's. A refusal for an unknown key names a `kid` the
//! set lacks. `accept_token` takes exactly the verified tokens of the app's `client_id` that
//! fit in a header.
//!
//! Input: a mode line, then
//! * `raw`: the token (the rest);
//! * `sign <kid|rogue> [flip <n>]`: a header line and the claims (the rest), signed with that
//!   key, then bit `n` flipped.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Value};
use warden_core::app::accept_token;
use warden_core::token::{verify, TokenError};
use warden_core::upstream::MAX_TOKEN_BYTES;

use crate::fixtures::{self, config, key_set, rules, te_key, te_keys, CHAT, ISSUER, LEEWAY, NOW};
use crate::input::{flip_bit, join, Fields, Words};

/// What `run` can decide.
pub const OUTCOMES: &[&str] = &["verified", "refused"];

pub fn run(data: &[u8]) -> &'static str {
    let mut f = Fields::new(data);
    let mode = f.text();
    let words = Words::new(&mode);
    let token = match words.first() {
        "sign" => {
            let key = match words.after("sign") {
                Some("rogue") => fixtures::rogue_te_key(),
                Some(kid) => te_key(kid).unwrap_or(&te_keys()[0]),
                None => &te_keys()[0],
            };
            let header = f.line();
            let mut token = key.compact(header, f.rest()).into_bytes();
            if let Some(n) = words.number_after("flip") {
                flip_bit(&mut token, n);
            }
            String::from_utf8_lossy(&token).into_owned()
        }
        _ => String::from_utf8_lossy(f.rest()).into_owned(),
    };
    check(&token)
}

/// Verifies `token` as the filter does and checks the verdict against the token itself.
pub fn check(token: &str) -> &'static str {
    let verdict = verify(token, key_set(), &rules(), NOW);
    assert_eq!(
        verdict,
        verify(token, key_set(), &rules(), NOW),
        "one decision per token"
    );
    match &verdict {
        Ok(identity) => {
            let payload = verified_payload(token);
            assert_eq!(identity.claims.iss, ISSUER);
            assert_eq!(payload["iss"], ISSUER);
            assert_eq!(payload["sub"], identity.claims.sub.as_str());
            assert_eq!(
                serde_json::to_value(&identity.claims.aud).unwrap(),
                payload["aud"]
            );
            assert_eq!(timestamp(&payload["exp"]), Some(identity.expires_at));
            assert!(NOW <= identity.expires_at + LEEWAY, "expired");
            if let Some(nbf) = payload.get("nbf") {
                let nbf = timestamp(nbf).expect("an nbf the verifier read");
                assert!(NOW >= nbf - LEEWAY, "not yet valid");
            }
        }
        Err(TokenError::UnknownKey(kid)) => assert!(key_set().get(kid).is_none()),
        Err(_) => {}
    }

    // An app's TE: the filter takes it only for the app it was minted for.
    let route = &config().routes[CHAT];
    let app = accept_token(token, NOW + 100, route, key_set(), &rules(), NOW);
    let fits = !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.bytes().all(|b| b.is_ascii_graphic());
    match (&verdict, &app) {
        (Ok(identity), Ok(t)) => {
            assert!(fits);
            assert_eq!(identity.claims.client_id, "warden-app:chat");
            assert_eq!(*t.identity, *identity);
            assert_eq!(t.authorization(), format!("Bearer {token}"));
            assert!(t.expires_at <= identity.expires_at && t.expires_at >= NOW);
        }
        (Ok(identity), Err(_)) => assert!(!fits || identity.claims.client_id != "warden-app:chat"),
        (Err(_), Ok(_)) => panic!("accept_token took a token verify refuses"),
        (Err(_), Err(_)) => {}
    }
    if verdict.is_ok() {
        "verified"
    } else {
        "refused"
    }
}

/// A JWT timestamp as jwt-compact reads one (an integer, or a number it truncates).
fn timestamp(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// The payload of a token `verify` accepted, after checking its header and signature
/// independently of jwt-compact.
fn verified_payload(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a verified token has three parts");
    let decode = |p: &str| B64.decode(p).expect("verified parts are base64url");
    let header: Value = serde_json::from_slice(&decode(parts[0])).expect("a JSON header");
    let kid = header["kid"]
        .as_str()
        .expect("a verified token names its kid");
    let key = te_key(kid).expect("a verified token's kid is in the key set");
    assert_eq!(header["alg"], key.alg, "the key's algorithm");
    let typ = header["typ"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        typ == "at+jwt" || typ == "application/at+jwt",
        "typ {typ:?}"
    );
    assert!(header.get("crit").is_none(), "a crit header verified");
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    assert!(
        key.verifies(signed.as_bytes(), &decode(parts[2]), true),
        "a token verified without a valid signature from {kid}"
    );
    match serde_json::from_slice(&decode(parts[1])) {
        Ok(payload @ Value::Object(_)) => payload,
        other => panic!("a verified payload that is no JSON object: {other:?}"),
    }
}

/// Real TEs (the token service's claims, both keys, an app's TE), the forgeries of the unit
/// tests (tampered signature or payload, `alg: none`, HS256, unknown and missing `kid`,
/// `crit`, an identity assertion's `typ`), and time edges.
pub fn seeds() -> Vec<Vec<u8>> {
    let [k1, k2] = te_keys();
    let claims = fixtures::te_claims(json!("http://127.0.0.1:9000/mcp"), "c1");
    let header = |kid: &str, alg: &str, typ: &str| json!({"alg": alg, "kid": kid, "typ": typ});
    let sign = |mode: &str, header: Value, claims: &Value| {
        join(&[
            mode.as_bytes(),
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
        ])
    };
    let raw = |token: &str| join(&[b"raw", token.as_bytes()]);
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let good = k1.jwt("at+jwt", &claims);
    let (signed, sig) = good.rsplit_once('.').unwrap();
    let payload = signed.split('.').nth(1).unwrap();
    let b64 = |s: &str| B64.encode(s);
    vec![
        raw(&good),
        raw(&k2.jwt("at+jwt", &claims)),
        raw(&k1.jwt(
            "at+jwt",
            &fixtures::te_claims(json!(["http://127.0.0.1:9000/mcp"]), "warden-app:chat"),
        )),
        raw(&format!("{signed}.{}", &sig[1..])),
        raw(&format!(
            "{}.{payload}.",
            b64(r#"{"alg":"none","kid":"k1"}"#)
        )),
        raw(&format!(
            "{}.{payload}.{}",
            b64(r#"{"alg":"HS256","kid":"k1"}"#),
            b64("0123456789abcdef0123456789abcdef")
        )),
        raw(&format!(
            "{}.{payload}.{sig}",
            b64(r#"{"alg":"ES256","kid":"k9"}"#)
        )),
        raw("garbage"),
        sign("sign k1", header("k1", "ES256", "at+jwt"), &claims),
        sign(
            "sign k2",
            header("k2", "EdDSA", "application/at+jwt"),
            &claims,
        ),
        sign("sign k1 flip 700", header("k1", "ES256", "at+jwt"), &claims),
        sign("sign rogue", header("k1", "ES256", "at+jwt"), &claims),
        sign("sign k1", header("k1", "ES256", "JWT"), &claims),
        sign("sign k1", header("k2", "ES256", "at+jwt"), &claims),
        sign(
            "sign k1",
            json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt", "crit": ["b64"], "b64": false}),
            &claims,
        ),
        sign(
            "sign k1",
            header("k1", "ES256", "at+jwt"),
            &with("iss", json!("http://evil")),
        ),
        sign(
            "sign k1",
            header("k1", "ES256", "at+jwt"),
            &with("exp", json!(NOW - LEEWAY - 1)),
        ),
        sign(
            "sign k1",
            header("k1", "ES256", "at+jwt"),
            &with("exp", json!(8_210_298_412_799_i64)),
        ),
        sign(
            "sign k1",
            header("k1", "ES256", "at+jwt"),
            &with("nbf", json!(NOW + LEEWAY + 1)),
        ),
        sign(
            "sign k1",
            header("k1", "ES256", "at+jwt"),
            &with("exp", json!(1300.5)),
        ),
        sign(
            "sign k1",
            header("k1", "ES256", "at+jwt"),
            &with("aud", json!({"not": "an audience"})),
        ),
    ]
}
