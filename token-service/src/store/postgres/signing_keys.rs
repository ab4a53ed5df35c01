//! SigningKeys on PostgreSQL.

use super::PostgresStore;
use crate::store::error::Result;
use crate::store::records::SigningKeyRecord;
use crate::store::signing_keys::SigningKeys;

impl SigningKeys for PostgresStore {
    fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT kid, seq, alg, sealed_key, created_at, signs_from, retire_at
                 FROM signing_keys ORDER BY seq",
                &[],
            )?
            .iter()
            .map(|r| SigningKeyRecord {
                kid: r.get(0),
                seq: r.get(1),
                alg: r.get(2),
                sealed_key: r.get(3),
                created_at: r.get(4),
                signs_from: r.get(5),
                retire_at: r.get(6),
            })
            .collect())
        })
    }

    fn add_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire_others_at: Option<i64>,
    ) -> Result<bool> {
        self.tx(|tx| {
            // `seq` and `kid` are unique: of two writers adding "the next key", one wins.
            let added = tx.execute(
                "INSERT INTO signing_keys
                     (kid, seq, alg, sealed_key, created_at, signs_from, retire_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[
                    &key.kid,
                    &key.seq,
                    &key.alg,
                    &key.sealed_key,
                    &key.created_at,
                    &key.signs_from,
                    &key.retire_at,
                ],
            )?;
            if added == 0 {
                return Ok(false);
            }
            if let Some(at) = retire_others_at {
                tx.execute(
                    "UPDATE signing_keys SET retire_at = $1 WHERE retire_at IS NULL AND kid <> $2",
                    &[&at, &key.kid],
                )?;
            }
            Ok(true)
        })
    }

    fn reseal_signing_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE signing_keys SET sealed_key = $3 WHERE kid = $1 AND sealed_key = $2",
                &[&kid, &old, &new],
            )? == 1)
        })
    }
}
