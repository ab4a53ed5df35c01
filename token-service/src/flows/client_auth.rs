//! `private_key_jwt` (RFC 7523 §2.2, RFC 7521 §4.2): a client authenticates at `/token` (any
//! grant) and `/revoke` with a JWT signed by one of its keys. The route layer has fetched the
//! keys of a client with a `jwks_uri` already (`jwks_cache`); everything here is synchronous.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::RegisteredClient;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::jws::{self, Jwk};
use crate::store::{client_assertions, Store, MAX_JTI_LEN};

/// `client_assertion_type` of a JWT client assertion.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How far ahead an assertion's `exp` may be: a client assertion is made for one request.
pub const MAX_LIFETIME: i64 = 300;
/// Clock skew allowed on `exp`, `nbf` and `iat`.
pub const LEEWAY: i64 = 30;

/// A client assertion as the request carried it, with the keys the route layer found for it.
#[derive(Clone)]
pub struct ClientAssertion {
    pub assertion_type: String,
    pub jwt: String,
    pub keys: AssertionKeys,
}

impl std::fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A credential: it stays out of any debug output.
        f.debug_struct("ClientAssertion")
            .field("assertion_type", &self.assertion_type)
            .field("jwt", &"<redacted>")
            .field("keys", &self.keys)
            .finish()
    }
}

/// Keys fetched before the synchronous flow ran.
#[derive(Debug, Clone, Default)]
pub enum AssertionKeys {
    /// Nothing to fetch (inline keys, or no such client or issuer).
    #[default]
    NotFetched,
    Fetched(Arc<Vec<Jwk>>),
    /// The keys could not be had: why.
    Unavailable(String),
}

/// The client an assertion says it comes from (its `sub`; unverified: for looking the client
/// up when the request names no `client_id`).
pub fn claimed_client(jwt: &str) -> Option<String> {
    jws::peek(jwt, "kid", "sub").1
}

/// The `kid` an assertion names, if any (unverified: for fetching keys).
pub fn claimed_kid(jwt: &str) -> Option<String> {
    jws::peek(jwt, "kid", "sub").0
}

fn refuse(description: impl Into<String>) -> Error {
    Error::invalid_client(description, false)
}

/// Checks `assertion` authenticates `client`: its type, signature by one of the client's keys
/// under an allowed algorithm, `iss` = `sub` = client_id, `aud`, `exp` (required, at most
/// `MAX_LIFETIME` ahead), `nbf`/`iat`, and a `jti` never used before (recorded now).
pub fn verify(
    config: &Config,
    store: &dyn Store,
    now: i64,
    client: &RegisteredClient,
    assertion: &ClientAssertion,
) -> Result<()> {
    if assertion.assertion_type != CLIENT_ASSERTION_TYPE {
        return Err(refuse(format!(
            "client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
        )));
    }
    let token =
        jws::decode(&assertion.jwt).map_err(|m| refuse(format!("client assertion: {m}")))?;
    if !jws::ASSERTION_ALGS.contains(&token.alg.as_str()) {
        return Err(refuse(format!(
            "client assertion: algorithm {} is not accepted (RS256, PS256, ES256, EdDSA)",
            token.alg
        )));
    }
    let keys = match (&client.jwks, &assertion.keys) {
        (Some(inline), _) => Arc::new(
            jws::parse_jwks(inline.to_string().as_bytes())
                .map_err(|m| refuse(format!("the client's jwks: {m}")))?,
        ),
        (None, AssertionKeys::Fetched(k)) => k.clone(),
        (None, AssertionKeys::Unavailable(why)) => {
            return Err(refuse(format!("the client's keys are unavailable: {why}")))
        }
        (None, AssertionKeys::NotFetched) => {
            return Err(refuse("the client has no keys (jwks or jwks_uri)"))
        }
    };
    token
        .verify_among(&keys, "the client")
        .map_err(|m| refuse(format!("client assertion: {m}")))?;
    let claims = &token.claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss") != Some(client.client_id.as_str()) || text("sub") != Some(&client.client_id) {
        return Err(refuse(
            "client assertion: iss and sub must both be the client_id",
        ));
    }
    let issuer = &config.authorization_server.issuer;
    let token_endpoint = format!("{issuer}/token");
    single_audience(
        claims,
        &[issuer, &issuer_with_slash(issuer), &token_endpoint],
    )
    .map_err(|m| refuse(format!("client assertion: {m}")))?;
    let exp = lifetime(claims, now, MAX_LIFETIME, false)
        .map_err(|m| refuse(format!("client assertion: {m}")))?;
    let jti = jti(claims).map_err(|m| refuse(format!("client assertion: {m}")))?;
    let ledger = client_assertions(&client.client_id);
    if !store.use_assertion_id(&ledger, jti, exp.saturating_add(LEEWAY))? {
        tracing::warn!(client_id = %client.client_id, "client assertion replayed");
        return Err(refuse("client assertion: jti was already used (replay)"));
    }
    Ok(())
}

/// The issuer as URL libraries print one without a path (`https://as.example/`): the official
/// Python SDK puts it so in `aud` (pydantic's `AnyHttpUrl`), as do others; it names the same
/// authorization server.
pub fn issuer_with_slash(issuer: &str) -> String {
    format!("{}/", issuer.trim_end_matches('/'))
}

/// Whether `aud` (a string or an array) names one of `accepted`.
pub fn audience_is(claims: &Map<String, Value>, accepted: &[&str]) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => accepted.contains(&a.as_str()),
        Some(Value::Array(all)) => all
            .iter()
            .filter_map(Value::as_str)
            .any(|a| accepted.contains(&a)),
        _ => false,
    }
}

/// A client assertion's `aud`: one value (a string, or an array of exactly one), which must be
/// one of `accepted`. An array naming other audiences beside ours is refused: an assertion
/// made for another server must not be good here too (audience injection, RFC 7523bis).
pub fn single_audience(
    claims: &Map<String, Value>,
    accepted: &[&str],
) -> std::result::Result<(), String> {
    let aud = match claims.get("aud") {
        Some(Value::String(a)) => a.as_str(),
        Some(Value::Array(all)) if all.len() == 1 && all[0].is_string() => {
            all[0].as_str().unwrap_or_default()
        }
        Some(Value::Array(_)) => {
            return Err(
                "aud must be a single value (a string or an array of one), the issuer or the token endpoint"
                    .into(),
            )
        }
        _ => return Err("aud must be the issuer or the token endpoint".into()),
    };
    if accepted.contains(&aud) {
        Ok(())
    } else {
        Err("aud must be the issuer or the token endpoint".into())
    }
}

/// `exp` (required, not past, at most `max_lifetime` ahead), `nbf` and `iat` (not in the
/// future; `iat` required when `iat_required`): the expiry.
pub fn lifetime(
    claims: &Map<String, Value>,
    now: i64,
    max_lifetime: i64,
    iat_required: bool,
) -> std::result::Result<i64, String> {
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or("exp is required")?;
    if exp.saturating_add(LEEWAY) <= now {
        return Err("it has expired".into());
    }
    if exp > now.saturating_add(max_lifetime + LEEWAY) {
        return Err(format!("exp is more than {max_lifetime} seconds ahead"));
    }
    if iat_required && claims.get("iat").is_none() {
        return Err("iat is required".into());
    }
    for name in ["nbf", "iat"] {
        match claims.get(name) {
            None => {}
            Some(v) => match v.as_i64() {
                Some(t) if t <= now.saturating_add(LEEWAY) => {}
                _ => return Err(format!("{name} is in the future or not a number")),
            },
        }
    }
    Ok(exp)
}

/// `jti`: required, a non-empty string the ledger can keep.
pub fn jti(claims: &Map<String, Value>) -> std::result::Result<&str, String> {
    match claims.get("jti").and_then(Value::as_str) {
        Some(j) if !j.is_empty() && j.len() <= MAX_JTI_LEN => Ok(j),
        Some(_) => Err(format!("jti must be 1 to {MAX_JTI_LEN} bytes")),
        None => Err("jti is required".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lifetime_of(c: &Map<String, Value>, now: i64) -> std::result::Result<i64, String> {
        lifetime(c, now, MAX_LIFETIME, false)
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn the_audience_may_be_a_string_or_an_array() {
        let ok = ["https://as.example", "https://as.example/token"];
        assert!(audience_is(
            &claims(json!({"aud": "https://as.example"})),
            &ok
        ));
        assert!(audience_is(
            &claims(json!({"aud": ["x", "https://as.example/token"]})),
            &ok
        ));
        assert!(!audience_is(
            &claims(json!({"aud": "https://as.example/revoke"})),
            &ok
        ));
        assert!(!audience_is(&claims(json!({})), &ok));
    }

    #[test]
    fn a_client_assertions_audience_is_one_value() {
        let ok = ["https://as.example", "https://as.example/token"];
        let aud = |v: Value| single_audience(&claims(json!({ "aud": v })), &ok);
        assert_eq!(aud(json!("https://as.example")), Ok(()));
        assert_eq!(aud(json!("https://as.example/token")), Ok(()));
        assert_eq!(aud(json!(["https://as.example/token"])), Ok(()));
        for bad in [
            json!(["https://other.example", "https://as.example/token"]),
            json!(["https://as.example", "https://as.example/token"]),
            json!([]),
            json!([42]),
            json!("https://as.example/revoke"),
            json!(["https://as.example/revoke"]),
            json!(42),
        ] {
            let e = aud(bad.clone()).expect_err(&bad.to_string());
            assert!(e.contains("aud must be"), "{e}");
        }
        assert!(aud(json!(["https://other.example", "https://as.example"]))
            .unwrap_err()
            .contains("single value"));
        assert!(single_audience(&claims(json!({})), &ok).is_err());
    }

    #[test]
    fn exp_is_required_and_near() {
        let now = 1_000_000;
        assert_eq!(
            lifetime_of(&claims(json!({"exp": now + 60})), now),
            Ok(now + 60)
        );
        assert!(lifetime_of(&claims(json!({})), now).is_err());
        assert!(lifetime_of(&claims(json!({"exp": now - 120})), now).is_err());
        assert!(lifetime_of(&claims(json!({"exp": now + 3600})), now).is_err());
        assert!(lifetime_of(&claims(json!({"exp": now + 60, "iat": now + 600})), now).is_err());
        assert!(lifetime_of(&claims(json!({"exp": now + 60, "nbf": "soon"})), now).is_err());
    }
}
