//! MCP sessions bound to the user who opened them. The upstream's `Mcp-Session-Id` never
//! reaches the client as it is: the client gets it wrapped with a MAC over the route, the
//! token's subject and the id, and the filter unwraps it on the way in. A session id of another
//! user, of another route, or made up, fails the MAC and never reaches the upstream. Stateless:
//! any worker and any Envoy replica holding the same key unwraps it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Prefix of a wrapped id (format version 1).
const PREFIX: &str = "w1.";
/// Longest upstream id the filter wraps, and longest wrapped id it reads.
pub const MAX_UPSTREAM_ID_BYTES: usize = 1024;
const MAX_WRAPPED_BYTES: usize = PREFIX.len() + (MAX_UPSTREAM_ID_BYTES * 4).div_ceil(3) + 1 + 43;
/// Shortest operator-provided secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// The MAC key. Derived from a secret so operators can give any long random string.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// A key from an operator's secret (at least `MIN_SECRET_BYTES`).
    pub fn from_secret(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "must be at least {MIN_SECRET_BYTES} bytes of random text"
            ));
        }
        Ok(Self::derive(secret))
    }

    /// A key from random bytes the host supplied.
    pub fn from_random(bytes: [u8; 32]) -> Self {
        Self::derive(&bytes)
    }

    fn derive(secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"mcp-warden session binding v1\0");
        h.update(secret);
        Self(h.finalize().into())
    }

    /// The raw key, to share it between workers.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A key previously shared with `to_bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    fn mac(&self, route: &str, subject: &str, upstream_id: &[u8]) -> Hmac<Sha256> {
        // HMAC zero-pads a short key to the block size; padding it here gives the same MAC
        // through the infallible constructor.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        // Length-prefixed fields: no two (route, subject, id) triples share an input.
        for field in [route.as_bytes(), subject.as_bytes(), upstream_id] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// The id the client gets for the upstream's `upstream_id`; `None` for an id longer than
    /// `MAX_UPSTREAM_ID_BYTES`, which `unwrap` would not take back.
    pub fn wrap(&self, route: &str, subject: &str, upstream_id: &[u8]) -> Option<String> {
        if upstream_id.len() > MAX_UPSTREAM_ID_BYTES {
            return None;
        }
        let tag = self
            .mac(route, subject, upstream_id)
            .finalize()
            .into_bytes();
        Some(format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(upstream_id),
            URL_SAFE_NO_PAD.encode(tag)
        ))
    }

    /// The upstream's id inside a wrapped id, if it was made for this route and subject.
    pub fn unwrap(&self, route: &str, subject: &str, presented: &[u8]) -> Option<Vec<u8>> {
        if presented.len() > MAX_WRAPPED_BYTES {
            return None;
        }
        let rest = presented.strip_prefix(PREFIX.as_bytes())?;
        let dot = rest.iter().position(|b| *b == b'.')?;
        let (id, tag) = (&rest[..dot], &rest[dot + 1..]);
        let id = URL_SAFE_NO_PAD.decode(id).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // Constant-time comparison.
        self.mac(route, subject, &id).verify_slice(&tag).ok()?;
        Some(id)
    }
}

/// What to do with a request's `Mcp-Session-Id` header(s).
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// No session id: nothing to rewrite.
    None,
    /// Forward with the upstream's own id.
    Upstream(Vec<u8>),
    /// Foreign, forged or malformed: `404`, as for a session the server does not know.
    Unknown,
    /// More than one header: ambiguous, `400`.
    Repeated,
}

pub fn inbound(key: &SessionKey, route: &str, subject: &str, presented: &[&[u8]]) -> Inbound {
    match presented {
        [] => Inbound::None,
        [one] => match key.unwrap(route, subject, one) {
            Some(id) => Inbound::Upstream(id),
            None => Inbound::Unknown,
        },
        _ => Inbound::Repeated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::from_secret(b"an operator secret of at least 32 bytes!").unwrap()
    }

    #[test]
    fn a_wrapped_id_opens_only_for_its_route_and_subject() {
        let k = key();
        let wrapped = k.wrap("demo", "alice", b"3f2a-upstream").unwrap();
        assert!(wrapped.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(
            k.unwrap("demo", "alice", wrapped.as_bytes()).as_deref(),
            Some(b"3f2a-upstream".as_slice())
        );
        assert_eq!(k.unwrap("demo", "bob", wrapped.as_bytes()), None);
        assert_eq!(k.unwrap("other", "alice", wrapped.as_bytes()), None);
        let other_key = SessionKey::from_random([9; 32]);
        assert_eq!(other_key.unwrap("demo", "alice", wrapped.as_bytes()), None);
    }

    #[test]
    fn forged_and_raw_ids_are_unknown() {
        let k = key();
        let wrapped = k.wrap("demo", "alice", b"id-1").unwrap();
        let mut tampered = wrapped.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        // The raw upstream id, an id swapped into a valid wrapper, and junk.
        let swapped = format!(
            "w1.{}.{}",
            URL_SAFE_NO_PAD.encode(b"id-2"),
            wrapped.rsplit_once('.').unwrap().1
        );
        for bad in [
            tampered.as_slice(),
            b"id-1",
            swapped.as_bytes(),
            b"w1..",
            b"w1.!!!.???",
            b"",
            "w1.x".repeat(2000).as_bytes(),
        ] {
            assert_eq!(
                inbound(&k, "demo", "alice", &[bad]),
                Inbound::Unknown,
                "{bad:?}"
            );
        }
        assert_eq!(inbound(&k, "demo", "alice", &[]), Inbound::None);
        assert_eq!(
            inbound(
                &k,
                "demo",
                "alice",
                &[wrapped.as_bytes(), wrapped.as_bytes()]
            ),
            Inbound::Repeated
        );
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let k = key();
        let a = k.wrap("ab", "c", b"id").unwrap();
        let b = k.wrap("a", "bc", b"id").unwrap();
        assert_ne!(a, b);
        assert_eq!(k.unwrap("a", "bc", a.as_bytes()), None);
    }

    #[test]
    fn the_longest_upstream_id_wrapped_comes_back() {
        let k = key();
        let longest = vec![b'x'; MAX_UPSTREAM_ID_BYTES];
        let wrapped = k.wrap("demo", "alice", &longest).unwrap();
        assert_eq!(k.unwrap("demo", "alice", wrapped.as_bytes()), Some(longest));
        assert_eq!(
            k.wrap("demo", "alice", &[b'x'; MAX_UPSTREAM_ID_BYTES + 1]),
            None
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(SessionKey::from_secret(b"short").is_err());
        assert_eq!(format!("{:?}", key()), "SessionKey(..)");
    }
}
