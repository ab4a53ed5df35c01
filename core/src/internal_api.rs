//! The filter ↔ token service internal API: how a call proves it comes from the filter.
//!
//! The filter never sends the internal credential itself. Envoy prints the headers of every
//! call-out at debug level, and a credential in the plugin configuration shows in the admin
//! `/config_dump`; with it, anyone could ask for any user's upstream token or identity
//! assertion. Instead, each call carries a MAC keyed with the credential over the call's
//! method, path, body, time and a fresh nonce:
//!
//! `Authorization: WardenMAC t=<unix seconds>, n=<nonce>, mac=<base64url HMAC-SHA256>`
//!
//! The token service accepts a call within `MAX_SKEW_SECONDS` of its own clock and each nonce
//! once, so a logged header is worth nothing: it cannot be replayed, and it says nothing about
//! the credential. The credential reaches the filter through Envoy's environment
//! (`CREDENTIAL_ENV`), never through its configuration.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The environment variable of the Envoy process holding the internal credential (the content
/// of the token service's `internal_credential_file`).
pub const CREDENTIAL_ENV: &str = "MCP_WARDEN_INTERNAL_CREDENTIAL";
/// The `Authorization` scheme of internal calls.
pub const SCHEME: &str = "WardenMAC";
/// How far a call's time may be from the token service's clock.
pub const MAX_SKEW_SECONDS: i64 = 60;
/// Shortest credential accepted (the token service generates 43 characters).
pub const MIN_CREDENTIAL_BYTES: usize = 32;
/// Random bytes in a nonce.
pub const NONCE_BYTES: usize = 16;

/// The MAC key, derived from the credential. Never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct InternalKey([u8; 32]);

impl std::fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalKey(..)")
    }
}

/// Why a call was not accepted (the token service answers `401` for every one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `WardenMAC` authorization, or one that does not parse.
    Missing,
    /// The time is too far from ours.
    Stale,
    /// The MAC does not match: another credential, or a changed call.
    BadMac,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "no WardenMAC authorization",
            AuthError::Stale => "the call's time is too far from the token service's clock",
            AuthError::BadMac => "the MAC does not match (wrong credential, or an altered call)",
        }
    }
}

/// A call the MAC vouches for: its nonce must not have been seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub nonce: String,
    pub time: i64,
}

impl InternalKey {
    /// The key for a credential: visible ASCII, at least `MIN_CREDENTIAL_BYTES`. The error
    /// never repeats the value.
    pub fn from_credential(credential: &str) -> Result<Self, String> {
        if credential.len() < MIN_CREDENTIAL_BYTES {
            return Err(format!(
                "must be at least {MIN_CREDENTIAL_BYTES} characters (the token service's internal credential file)"
            ));
        }
        if !credential.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        let mut h = Sha256::new();
        h.update(b"mcp-warden internal api v1\0");
        h.update(credential.as_bytes());
        Ok(Self(h.finalize().into()))
    }

    fn mac(&self, method: &str, path: &str, time: i64, nonce: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        // Length-prefixed: no two calls share an input.
        for field in [
            method.as_bytes(),
            path.as_bytes(),
            time.to_string().as_bytes(),
            nonce.as_bytes(),
            body,
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// The `Authorization` value for one call.
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now: i64,
        nonce: &[u8; NONCE_BYTES],
    ) -> String {
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let tag = self
            .mac(method, path, now, &nonce, body)
            .finalize()
            .into_bytes();
        format!(
            "{SCHEME} t={now}, n={nonce}, mac={}",
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks a call's `Authorization` value; the caller still refuses a nonce it has seen.
    pub fn check(
        &self,
        authorization: &str,
        method: &str,
        path: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Authenticated, AuthError> {
        let parts = parse(authorization).ok_or(AuthError::Missing)?;
        if (now - parts.time).abs() > MAX_SKEW_SECONDS {
            return Err(AuthError::Stale);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(parts.mac)
            .map_err(|_| AuthError::Missing)?;
        // `verify_slice` compares in constant time.
        self.mac(method, path, parts.time, parts.nonce, body)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadMac)?;
        Ok(Authenticated {
            nonce: parts.nonce.to_owned(),
            time: parts.time,
        })
    }
}

struct Parts<'a> {
    time: i64,
    nonce: &'a str,
    mac: &'a str,
}

/// `WardenMAC t=<digits>, n=<base64url>, mac=<base64url>`, exactly these three, in order.
fn parse(value: &str) -> Option<Parts<'_>> {
    let rest = value.strip_prefix(SCHEME)?.strip_prefix(' ')?;
    let mut fields = rest.split(", ");
    let mut field = |name: &str| fields.next()?.strip_prefix(name)?.strip_prefix('=');
    let time = field("t")?;
    let nonce = field("n")?;
    let mac = field("mac")?;
    if fields.next().is_some()
        || time.is_empty()
        || time.len() > 12
        || !time.bytes().all(|b| b.is_ascii_digit())
        || nonce.len() != (NONCE_BYTES * 4).div_ceil(3)
        || !nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(Parts {
        time: time.parse().ok()?,
        nonce,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIAL: &str = "zBeZPpy8Obod9yzT34isNbgKwF6m_JevaZ2UFro94aw";

    fn key() -> InternalKey {
        InternalKey::from_credential(CREDENTIAL).unwrap()
    }

    #[test]
    fn a_signed_call_is_accepted_and_never_contains_the_credential() {
        let value = key().authorization("POST", "/internal/v1/app-token", b"{}", 1000, &[7; 16]);
        assert!(value.starts_with("WardenMAC t=1000, n="));
        assert!(!value.contains(CREDENTIAL));
        let ok = key()
            .check(&value, "POST", "/internal/v1/app-token", b"{}", 1030)
            .unwrap();
        assert_eq!(ok.time, 1000);
        assert_eq!(ok.nonce, URL_SAFE_NO_PAD.encode([7u8; 16]));
    }

    #[test]
    fn any_change_to_the_call_or_the_key_fails_the_mac() {
        let value = key().authorization("POST", "/internal/v1/app-token", b"{}", 1000, &[7; 16]);
        let check = |k: &InternalKey, m: &str, p: &str, b: &[u8]| k.check(&value, m, p, b, 1000);
        assert_eq!(
            check(&key(), "GET", "/internal/v1/app-token", b"{}"),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            check(&key(), "POST", "/internal/v1/upstream-token", b"{}"),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            check(&key(), "POST", "/internal/v1/app-token", b"{ }"),
            Err(AuthError::BadMac)
        );
        let other = InternalKey::from_credential(&CREDENTIAL.replace('z', "y")).unwrap();
        assert_eq!(
            check(&other, "POST", "/internal/v1/app-token", b"{}"),
            Err(AuthError::BadMac)
        );
        // A changed time or nonce in the header breaks the MAC too.
        let moved = value.replace("t=1000", "t=1001");
        assert_eq!(
            key().check(&moved, "POST", "/internal/v1/app-token", b"{}", 1000),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn calls_outside_the_clock_window_are_stale() {
        let value = key().authorization("POST", "/p", b"", 1000, &[1; 16]);
        assert!(key().check(&value, "POST", "/p", b"", 1060).is_ok());
        assert!(key().check(&value, "POST", "/p", b"", 940).is_ok());
        assert_eq!(
            key().check(&value, "POST", "/p", b"", 1061),
            Err(AuthError::Stale)
        );
        assert_eq!(
            key().check(&value, "POST", "/p", b"", 939),
            Err(AuthError::Stale)
        );
    }

    #[test]
    fn the_bare_credential_and_malformed_values_are_refused() {
        for bad in [
            "",
            &format!("Bearer {CREDENTIAL}"),
            "WardenMAC",
            "WardenMAC t=1000",
            "WardenMAC t=1000, n=AAAAAAAAAAAAAAAAAAAAAA",
            "WardenMAC t=-5, n=AAAAAAAAAAAAAAAAAAAAAA, mac=AA",
            "WardenMAC t=1000, n=short, mac=AA",
            "WardenMAC t=1000, n=AAAAAAAAAAAAAAAAAAAAAA, mac=AA, x=1",
            "wardenmac t=1000, n=AAAAAAAAAAAAAAAAAAAAAA, mac=AA",
            "WardenMAC t=99999999999999999999, n=AAAAAAAAAAAAAAAAAAAAAA, mac=AA",
        ] {
            assert!(
                key().check(bad, "POST", "/p", b"", 1000).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn short_or_spaced_credentials_are_refused_without_echoing_them() {
        let e = InternalKey::from_credential("short").unwrap_err();
        assert!(!e.contains("short"));
        let spaced = format!("{CREDENTIAL} x");
        let e = InternalKey::from_credential(&spaced).unwrap_err();
        assert!(!e.contains(CREDENTIAL));
        assert!(!format!("{:?}", key()).contains(CREDENTIAL));
    }
}
