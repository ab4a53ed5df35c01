//! `bench-fixtures --issuer URL --audience URL [--audience URL]...` prints, as one JSON object,
//! what the benchmark needs to pass mcp-warden's token check: a deterministic ES256 key's public
//! JWK, a JWKS holding it, and an access token shaped like the token service's (RFC 9068
//! `typ: at+jwt`, the claims of `warden_core::token::TeClaims`) that expires in ten years.
//!
//! The key is derived from a fixed seed, so runs are reproducible; it protects nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const KID: &str = "bench-es256";
const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;

fn b64_json(value: &Value) -> Result<String> {
    Ok(B64.encode(serde_json::to_vec(value)?))
}

fn main() -> Result<()> {
    let mut issuer = None;
    let mut audiences = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--issuer" => issuer = Some(args.next().context("--issuer needs a value")?),
            "--audience" => audiences.push(args.next().context("--audience needs a value")?),
            other => bail!(
                "unknown argument {other:?}; usage: bench-fixtures --issuer URL --audience URL..."
            ),
        }
    }
    let issuer = issuer.context("--issuer is required")?;
    if audiences.is_empty() {
        bail!("at least one --audience is required");
    }

    let seed = Sha256::digest(b"mcp-warden bench signing key (not a secret)");
    let signing = p256::ecdsa::SigningKey::from_slice(&seed).context("seed is a P-256 scalar")?;
    let point = signing.verifying_key().to_encoded_point(false);
    let (x, y) = (
        point.x().context("uncompressed point has x")?,
        point.y().context("uncompressed point has y")?,
    );
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y),
        "kid": KID, "alg": "ES256", "use": "sig",
    });

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let aud = if audiences.len() == 1 {
        json!(audiences[0])
    } else {
        json!(audiences)
    };
    let header = json!({ "alg": "ES256", "kid": KID, "typ": "at+jwt" });
    let claims = json!({
        "iss": issuer,
        "sub": "demo@example.com",
        "aud": aud,
        "iat": now,
        "nbf": now,
        "exp": now + TEN_YEARS,
        "jti": format!("bench-{now}"),
        "client_id": "warden-bench",
        "scope": "",
        "sid": "bench-session",
        "email": "demo@example.com",
        "name": "Demo User",
        "groups": ["demo"],
    });
    let input = format!("{}.{}", b64_json(&header)?, b64_json(&claims)?);
    let signature: p256::ecdsa::Signature = signing.sign(input.as_bytes());
    let token = format!("{input}.{}", B64.encode(signature.to_bytes()));

    let out = json!({
        "kid": KID,
        "jwk": jwk,
        "jwks": { "keys": [jwk] },
        "token": token,
        "issuer": issuer,
        "audiences": audiences,
        "expires_at": now + TEN_YEARS,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
