//! Upstream tokens (and the TE signing keys) at rest: XChaCha20-Poly1305 with a random nonce per value, and the
//! (user, route, kind) as associated data, so a sealed value copied to another user's or
//! route's row, or from the refresh column to the access column, does not open.
//!
//! A value names the key it was sealed with (`key_id`, a one-way digest of the key), so after
//! a rotation the service knows which values still need a previous key without trying keys.
//! Values sealed before key ids existed (format 1) still open: every key is tried.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::secrets::SECRET_BYTES;

/// Format 1: `[1][nonce][ciphertext]`, the key not named.
const VERSION_UNNAMED: u8 = 1;
/// Format 2: `[2][key id][nonce][ciphertext]`; the first two parts are associated data too.
const VERSION: u8 = 2;
const KEY_ID_BYTES: usize = 8;
const NONCE_BYTES: usize = 24;
const HEADER_BYTES: usize = 1 + KEY_ID_BYTES;

/// Which token of a row a sealed value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Access,
    Refresh,
    /// The PKCE verifier of an upstream consent in progress.
    Verifier,
    /// A TE signing key (the keyring binds it to its `kid`).
    SigningKey,
    /// The gateway's DCR registration at an upstream authorization server (bound to its issuer).
    Registration,
}

impl Kind {
    fn label(self) -> &'static [u8] {
        match self {
            Kind::Access => b"access",
            Kind::Refresh => b"refresh",
            Kind::Verifier => b"pkce-verifier",
            Kind::SigningKey => b"signing-key",
            Kind::Registration => b"upstream-registration",
        }
    }
}

/// Which of the configured keys opened a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    Current,
    /// One of `storage.previous_encryption_key_files`.
    Previous,
}

struct Key {
    id: [u8; KEY_ID_BYTES],
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(key: &[u8; SECRET_BYTES]) -> Self {
        Self {
            id: key_id(key),
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }
}

/// Names a key in sealed values: SHA-256 of it (domain-separated), cut short. It reveals
/// nothing usable about a 256-bit random key.
fn key_id(key: &[u8; SECRET_BYTES]) -> [u8; KEY_ID_BYTES] {
    let digest = Sha256::new()
        .chain_update(b"mcp-warden vault key id\0")
        .chain_update(key)
        .finalize();
    let mut id = [0u8; KEY_ID_BYTES];
    id.copy_from_slice(&digest[..KEY_ID_BYTES]);
    id
}

/// Seals with the current key; opens with the current key or a previous one.
pub struct Sealer {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(<key>, {} previous)", self.previous.len())
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

fn open_with(cipher: &XChaCha20Poly1305, nonce_and_body: &[u8], ad: &[u8]) -> Option<String> {
    if nonce_and_body.len() < NONCE_BYTES {
        return None;
    }
    let (nonce, body) = nonce_and_body.split_at(NONCE_BYTES);
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().ok()?;
    let plain = cipher
        .decrypt(&XNonce::from(nonce), Payload { msg: body, aad: ad })
        .ok()?;
    String::from_utf8(plain).ok()
}

impl Sealer {
    /// A sealer with one key and none before it.
    pub fn new(key: &[u8; SECRET_BYTES]) -> Self {
        Self::with_previous(key, &[])
    }

    /// `current` seals; `previous` (keys it replaced) only open.
    pub fn with_previous(current: &[u8; SECRET_BYTES], previous: &[[u8; SECRET_BYTES]]) -> Self {
        Self {
            current: Key::new(current),
            previous: previous.iter().map(Key::new).collect(),
        }
    }

    /// Whether previous keys are configured.
    pub fn has_previous(&self) -> bool {
        !self.previous.is_empty()
    }

    /// How every value sealed with the current key starts.
    pub fn current_prefix(&self) -> [u8; HEADER_BYTES] {
        let mut p = [0u8; HEADER_BYTES];
        p[0] = VERSION;
        p[1..].copy_from_slice(&self.current.id);
        p
    }

    /// Whether `sealed` names the current key (it needs no re-seal).
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        sealed.starts_with(&self.current_prefix())
    }

    pub fn seal(
        &self,
        user: &str,
        route: &str,
        kind: Kind,
        plain: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_BYTES];
        crate::random::fill_random(&mut nonce);
        let header = self.current_prefix();
        let mut ad = header.to_vec();
        ad.extend_from_slice(&binding(user, route, kind));
        let sealed = self
            .current
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: &ad,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing an upstream token failed"))?;
        let mut out = Vec::with_capacity(HEADER_BYTES + NONCE_BYTES + sealed.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// `None` when no configured key opens the value (sealed with a key no longer listed),
    /// or it was sealed for another row, or is damaged.
    pub fn open(&self, user: &str, route: &str, kind: Kind, sealed: &[u8]) -> Option<String> {
        self.open_noting_key(user, route, kind, sealed)
            .map(|(plain, _)| plain)
    }

    /// [`Sealer::open`], and which key opened the value.
    pub fn open_noting_key(
        &self,
        user: &str,
        route: &str,
        kind: Kind,
        sealed: &[u8],
    ) -> Option<(String, Opener)> {
        let (&version, rest) = sealed.split_first()?;
        let mut keys = std::iter::once((&self.current, Opener::Current))
            .chain(self.previous.iter().map(|k| (k, Opener::Previous)));
        match version {
            VERSION if rest.len() >= KEY_ID_BYTES => {
                let (id, nonce_and_body) = rest.split_at(KEY_ID_BYTES);
                let mut ad = sealed[..HEADER_BYTES].to_vec();
                ad.extend_from_slice(&binding(user, route, kind));
                // Only the keys the value names (ids of distinct keys practically never meet).
                keys.filter(|(k, _)| k.id == id).find_map(|(k, opener)| {
                    open_with(&k.cipher, nonce_and_body, &ad).map(|p| (p, opener))
                })
            }
            VERSION_UNNAMED => {
                let ad = binding(user, route, kind);
                keys.find_map(|(k, opener)| open_with(&k.cipher, rest, &ad).map(|p| (p, opener)))
            }
            _ => None,
        }
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

    /// A value as this service sealed it before key ids (format 1).
    fn seal_unnamed(key: &[u8; 32], user: &str, route: &str, kind: Kind, plain: &str) -> Vec<u8> {
        let nonce = [3u8; NONCE_BYTES];
        let body = XChaCha20Poly1305::new(key.into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: &binding(user, route, kind),
                },
            )
            .unwrap();
        [&[VERSION_UNNAMED][..], &nonce, &body].concat()
    }

    #[test]
    fn a_previous_key_opens_what_it_sealed_and_only_the_current_key_seals() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let old = Sealer::new(&a);
        let sealed_a = old.seal("ann", "gh", Kind::Refresh, "drt_1").unwrap();
        let unnamed_a = seal_unnamed(&a, "ann", "gh", Kind::Refresh, "drt_0");

        // Rotated: B current, A previous. Both formats open, and say which key opened them.
        let ring = Sealer::with_previous(&b, &[a]);
        assert_eq!(
            ring.open_noting_key("ann", "gh", Kind::Refresh, &sealed_a),
            Some(("drt_1".into(), Opener::Previous))
        );
        assert_eq!(
            ring.open_noting_key("ann", "gh", Kind::Refresh, &unnamed_a),
            Some(("drt_0".into(), Opener::Previous))
        );
        assert!(!ring.is_current(&sealed_a) && !ring.is_current(&unnamed_a));
        let sealed_b = ring.seal("ann", "gh", Kind::Refresh, "drt_2").unwrap();
        assert!(ring.is_current(&sealed_b));
        assert_eq!(
            ring.open_noting_key("ann", "gh", Kind::Refresh, &sealed_b),
            Some(("drt_2".into(), Opener::Current))
        );
        // The old key alone does not open what the new one sealed.
        assert_eq!(old.open("ann", "gh", Kind::Refresh, &sealed_b), None);

        // Without A listed, A's values do not open: the bound of a rotation.
        let forgot = Sealer::with_previous(&b, &[c]);
        assert_eq!(forgot.open("ann", "gh", Kind::Refresh, &sealed_a), None);
        assert_eq!(forgot.open("ann", "gh", Kind::Refresh, &unnamed_a), None);

        // The key id is part of the associated data: pointing a value at another key (or
        // changing the format byte) does not open it.
        let mut renamed = sealed_a.clone();
        renamed[1..HEADER_BYTES].copy_from_slice(&ring.current_prefix()[1..]);
        assert_eq!(ring.open("ann", "gh", Kind::Refresh, &renamed), None);
        let mut reformatted = sealed_a.clone();
        reformatted[0] = VERSION_UNNAMED;
        assert_eq!(ring.open("ann", "gh", Kind::Refresh, &reformatted), None);
    }

    #[test]
    fn the_key_id_names_the_key_without_revealing_it() {
        let key = [9u8; 32];
        let sealed = Sealer::new(&key)
            .seal("ann", "gh", Kind::Access, "t")
            .unwrap();
        assert_eq!(sealed[0], VERSION);
        assert_eq!(&sealed[1..HEADER_BYTES], &key_id(&key));
        assert_ne!(&sealed[1..HEADER_BYTES], &key[..KEY_ID_BYTES]);
        assert_ne!(key_id(&key), key_id(&[8u8; 32]));
        let debug = format!("{:?}", Sealer::with_previous(&key, &[[8u8; 32]]));
        assert_eq!(debug, "Sealer(<key>, 1 previous)");
    }
}
