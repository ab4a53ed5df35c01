//! Upstream tokens at rest: XChaCha20-Poly1305 with a random nonce per value, and the
//! (user, route, kind) as associated data, so a sealed value copied to another user's or
//! route's row, or from the refresh column to the access column, does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::secrets::SECRET_BYTES;

/// Format byte, so a later scheme can be told apart from this one.
const VERSION: u8 = 1;
const NONCE_BYTES: usize = 24;

/// Which token of a row a sealed value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Access,
    Refresh,
    /// The PKCE verifier of an upstream consent in progress.
    Verifier,
}

impl Kind {
    fn label(self) -> &'static [u8] {
        match self {
            Kind::Access => b"access",
            Kind::Refresh => b"refresh",
            Kind::Verifier => b"pkce-verifier",
        }
    }
}

pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

/// The associated data: every field length-prefixed, so no two (user, route) pairs share it.
fn binding(user: &str, route: &str, kind: Kind) -> Vec<u8> {
    let mut ad = b"mcp-warden upstream token".to_vec();
    for part in [user.as_bytes(), route.as_bytes(), kind.label()] {
        ad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        ad.extend_from_slice(part);
    }
    ad
}

impl Sealer {
    pub fn new(key: &[u8; SECRET_BYTES]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    pub fn seal(
        &self,
        user: &str,
        route: &str,
        kind: Kind,
        plain: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_BYTES];
        crate::flows::fill_random(&mut nonce);
        let ad = binding(user, route, kind);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: &ad,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing an upstream token failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// `None` when the value was sealed with another key or for another row, or is damaged.
    pub fn open(&self, user: &str, route: &str, kind: Kind, sealed: &[u8]) -> Option<String> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().ok()?;
        let ad = binding(user, route, kind);
        let plain = self
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: &ad,
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn opens_only_for_its_own_user_route_and_kind() {
        let s = Sealer::new(&[7; 32]);
        let sealed = s
            .seal("ann@example.com", "github", Kind::Access, "gho_secret")
            .unwrap();
        assert!(!sealed.windows(10).any(|w| w == b"gho_secret"));
        assert_eq!(
            s.open("ann@example.com", "github", Kind::Access, &sealed)
                .as_deref(),
            Some("gho_secret")
        );
        assert_eq!(
            s.open("bob@example.com", "github", Kind::Access, &sealed),
            None
        );
        assert_eq!(
            s.open("ann@example.com", "notion", Kind::Access, &sealed),
            None
        );
        assert_eq!(
            s.open("ann@example.com", "github", Kind::Refresh, &sealed),
            None
        );
        // Boundaries are length-prefixed: ("a", "bc") is not ("ab", "c").
        let ab = s.seal("a", "bc", Kind::Access, "t").unwrap();
        assert_eq!(s.open("ab", "c", Kind::Access, &ab), None);
        // Another key does not open it; damage does not open it.
        assert_eq!(
            Sealer::new(&[8; 32]).open("ann@example.com", "github", Kind::Access, &sealed),
            None
        );
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            s.open("ann@example.com", "github", Kind::Access, &bad),
            None
        );
        assert_eq!(s.open("ann@example.com", "github", Kind::Access, &[]), None);
    }
}
