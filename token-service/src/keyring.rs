//! The TE signing keys every replica shares. They live in the store, each private key sealed
//! with the encryption key; every replica loads them at start and re-reads them every
//! `RELOAD_EVERY`, so all publish the same JWKS and sign with the same key. Signing reads
//! only the loaded set: no store call on the hot path.
//!
//! A key's life: stored (published from then on), signs from `signs_from` until a newer key
//! does, leaves the JWKS at `retire_at`, deleted by the sweep. `rotate` adds a key that
//! starts signing `rotation_publish_seconds` later, so that every filter has fetched it
//! before meeting a token it signed, and retires the keys before it once every token they
//! may have signed has expired.
//!
//! At first start on a store without keys, the key file (`signing_key.file`), when there is
//! one, is imported (same `kid`: tokens already issued still verify); else a key is
//! generated. The file is read only then.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{Config, SigningAlg};
use crate::keys::{SigningKey, ASSERTION_TTL_SECONDS};
use crate::render::FILTER_CLOCK_SKEW_SECONDS;
use crate::store::{SigningKeyRecord, Store};
use crate::vault::seal::{Kind, Opener, Sealer};

/// How often a replica re-reads the keys: a rotation reaches every replica this fast (well
/// inside the publish period, and inside the filter's leeway).
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The "route" a sealed signing key is bound to (its "user" is its `kid`), so a sealed value
/// moved to another row, or into the upstream tokens, does not open.
const BINDING: &str = "@signing-key";

struct Entry {
    key: SigningKey,
    signs_from: i64,
    retire_at: Option<i64>,
}

/// The keys as loaded, oldest first (`seq` ascending, so `signs_from` never decreases).
pub struct KeySet {
    entries: Vec<Entry>,
    /// What it was loaded from: a reload that reads the same skips opening the keys again.
    loaded_from: Vec<(String, i64, Option<i64>)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| (e.key.kid(), e.signs_from, e.retire_at)),
            )
            .finish()
    }
}

impl KeySet {
    fn live(&self, now: i64) -> impl DoubleEndedIterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(move |e| e.retire_at.is_none_or(|t| t > now))
    }

    /// The keys published at `now`: every key not retired yet, those not signing yet too.
    pub fn published(&self, now: i64) -> Vec<&SigningKey> {
        self.live(now).map(|e| &e.key).collect()
    }

    pub fn jwks(&self, now: i64) -> serde_json::Value {
        let keys: Vec<_> = self.live(now).map(|e| e.key.jwk()).collect();
        serde_json::json!({ "keys": keys })
    }

    /// The key that signs at `now`: the newest whose `signs_from` has come. Should none have
    /// (a clock far behind the others'), the oldest live one: published, so still verifiable.
    pub fn signing_key(&self, now: i64) -> Option<&SigningKey> {
        self.live(now)
            .rev()
            .find(|e| e.signs_from <= now)
            .or_else(|| self.live(now).next())
            .map(|e| &e.key)
    }

    /// Signs `claims` as a compact JWS with the key that signs at `now`.
    pub fn sign_jwt(
        &self,
        now: i64,
        typ: &str,
        claims: &serde_json::Value,
    ) -> anyhow::Result<String> {
        self.signing_key(now)
            .ok_or_else(|| anyhow::anyhow!("no signing key is live"))?
            .sign_jwt(typ, claims)
    }
}

fn fingerprint(records: &[SigningKeyRecord]) -> Vec<(String, i64, Option<i64>)> {
    records
        .iter()
        .map(|r| (r.kid.clone(), r.signs_from, r.retire_at))
        .collect()
}

/// `key` sealed as the `seq`th key, signing from `signs_from`.
fn sealed_record(
    sealer: &Sealer,
    key: &SigningKey,
    seq: i64,
    now: i64,
    signs_from: i64,
) -> anyhow::Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: key.kid().to_owned(),
        seq,
        alg: key.alg().as_str().to_owned(),
        sealed_key: sealer.seal(key.kid(), BINDING, Kind::SigningKey, &key.to_sealable())?,
        created_at: now,
        signs_from,
        retire_at: None,
    })
}

/// Opens every key of `records` not retired at `now`. A key sealed with a previous
/// encryption key is re-sealed with the current one on the way, so the previous key file can
/// go as soon as every replica runs with the new one.
fn open_all(
    store: &dyn Store,
    sealer: &Sealer,
    records: &[SigningKeyRecord],
    now: i64,
) -> anyhow::Result<KeySet> {
    let mut entries = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.retire_at.is_none_or(|t| t > now))
    {
        let (plain, opener) = sealer
            .open_noting_key(&r.kid, BINDING, Kind::SigningKey, &r.sealed_key)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "signing key {} does not open with storage.encryption_key_file (nor a \
                     previous_encryption_key_files entry): replicas must share the encryption key",
                    r.kid
                )
            })?;
        let key = SigningKey::from_sealable(&plain)?;
        if key.kid() != r.kid || key.alg().as_str() != r.alg {
            anyhow::bail!(
                "signing key {} does not match its stored kid and alg",
                r.kid
            );
        }
        if opener == Opener::Previous {
            let resealed = sealer
                .seal(&r.kid, BINDING, Kind::SigningKey, &plain)
                .and_then(|new| Ok(store.reseal_signing_key(&r.kid, &r.sealed_key, &new)?));
            if let Err(e) = resealed {
                tracing::warn!(kid = %r.kid, error = %format!("{e:#}"), "re-sealing a signing key failed");
            }
        }
        entries.push(Entry {
            key,
            signs_from: r.signs_from,
            retire_at: r.retire_at,
        });
    }
    if entries.is_empty() {
        anyhow::bail!("the store holds no live signing key");
    }
    Ok(KeySet {
        entries,
        loaded_from: fingerprint(records),
    })
}

/// The shared key set of one process, swapped whole by `reload`.
pub struct Keyring {
    store: Arc<dyn Store>,
    sealer: Sealer,
    current: RwLock<Arc<KeySet>>,
}

impl Keyring {
    /// Loads the keys; on a store without any, first stores the key file's key (imported)
    /// or a new one. Of replicas starting together on an empty store exactly one key is
    /// stored (`seq` 1 is unique); the others load it. Blocking.
    pub fn open(
        config: &Config,
        store: Arc<dyn Store>,
        sealer: Sealer,
        now: i64,
    ) -> anyhow::Result<Self> {
        let mut records = store.signing_keys()?;
        if records.is_empty() {
            let file = config.signing_key_file();
            let (key, source) = match SigningKey::read_file(&file, config.signing_alg())? {
                Some(key) => (key, "imported from the key file"),
                None => (SigningKey::generate(config.signing_alg())?, "generated"),
            };
            // It signs at once (0): no filter has seen a token of any key before it.
            let record = sealed_record(&sealer, &key, 1, now, 0)?;
            if store.add_signing_key(&record, None)? {
                tracing::info!(kid = %key.kid(), alg = key.alg().as_str(), source, "first signing key stored");
            }
            records = store.signing_keys()?;
        }
        let set = open_all(&*store, &sealer, &records, now)?;
        Ok(Self {
            store,
            sealer,
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// The keys as last loaded.
    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads the keys; on failure the loaded set stays. Blocking.
    pub fn reload(&self, now: i64) -> anyhow::Result<()> {
        let records = self.store.signing_keys()?;
        if fingerprint(&records) == self.current().loaded_from {
            return Ok(());
        }
        let set = Arc::new(open_all(&*self.store, &self.sealer, &records, now)?);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = set;
        Ok(())
    }
}

/// What `rotate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub kid: String,
    pub alg: SigningAlg,
    /// Published from now on; signs from then.
    pub signs_from: i64,
    /// When the keys it replaces leave the JWKS.
    pub previous_retire_at: i64,
}

/// Adds a key (`signing_key.alg`, so a rotation may change the algorithm) that is published
/// at once and signs from `now + rotation_publish_seconds`; the keys before it leave the JWKS
/// once every token they may still sign has expired (TEs, and identity assertions when a
/// route passes identity headers), with the filter's leeway. Blocking.
pub fn rotate(
    config: &Config,
    store: &dyn Store,
    sealer: &Sealer,
    now: i64,
) -> anyhow::Result<Rotation> {
    let records = store.signing_keys()?;
    // The replicas' keys must open with this encryption key, or they could not open the
    // new one either.
    open_all(store, sealer, &records, now)?;
    let last = records
        .last()
        .ok_or_else(|| anyhow::anyhow!("the store holds no signing key yet"))?;
    let secs = |v: u64| i64::try_from(v).unwrap_or(i64::MAX / 4);
    let signs_from = now
        .saturating_add(secs(config.rotation_publish_seconds()))
        .max(last.signs_from);
    let mut lifetime = secs(config.authorization_server.access_token_ttl_seconds);
    if config.uses_identity_assertions() {
        lifetime = lifetime.max(ASSERTION_TTL_SECONDS);
    }
    let previous_retire_at = signs_from
        .saturating_add(lifetime)
        .saturating_add(i64::from(FILTER_CLOCK_SKEW_SECONDS));
    let key = SigningKey::generate(config.signing_alg())?;
    let record = sealed_record(sealer, &key, last.seq + 1, now, signs_from)?;
    if !store.add_signing_key(&record, Some(previous_retire_at))? {
        anyhow::bail!("another rotation stored a key at the same moment; nothing was changed");
    }
    Ok(Rotation {
        kid: key.kid().to_owned(),
        alg: key.alg(),
        signs_from,
        previous_retire_at,
    })
}

/// `rotate-signing-key`: [`rotate`] on the store and with the encryption key the config
/// names, both of which must exist already (the service creates them at its first start).
pub fn rotate_configured(config: &Config, now: i64) -> anyhow::Result<Rotation> {
    let must_exist = |path: &Path, what: &str| {
        if path.exists() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{what} {} does not exist: start the token service once first",
                path.display()
            ))
        }
    };
    if let crate::config::StorageBackend::Sqlite(db) = config.storage.backend() {
        must_exist(db, "the database")?;
    }
    let key_file = config.encryption_key_file();
    must_exist(&key_file, "the encryption key file")?;
    let key = crate::secrets::read_existing(&key_file).map_err(|e| anyhow::anyhow!(e))?;
    let previous = config.previous_encryption_keys(Some(&key))?;
    let store = crate::store::open(&config.storage)?;
    rotate(
        config,
        store.as_ref(),
        &Sealer::with_previous(&key, &previous),
        now,
    )
}
