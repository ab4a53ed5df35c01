//! Rotating the encryption key: values sealed with a key listed in
//! `storage.previous_encryption_key_files` still open, and a background re-seal moves every
//! upstream token to the current key, batch by batch, until no row needs a previous key.
//!
//! The re-seal writes a row only over the very values it read, and leaves the row's version
//! alone: a refresh, drop, disconnect or new consent of the same row meanwhile always wins
//! (nothing is overwritten or brought back), and a refresh in flight still stores its result
//! (its rotated refresh token is never lost).
//!
//! PKCE verifiers of consents and sign-ins in progress are not re-sealed: they live ten
//! minutes at most, and opening them with a previous key is enough. They are counted, so
//! "previous keys can be removed" is only said once none of them needs one either.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

pub use super::reseal_status::{ResealCounters, ResealStatus};
use super::seal::{Kind, Opener};
use super::Vault;
use crate::store::{Reseal, UpstreamRecord};

/// Rows read and written per store call.
pub const BATCH: u32 = 100;
/// Full scans per pass while rows keep changing under it (each later scan sees only what
/// changed, and what changed was sealed with the current key by this process).
const ROUNDS: usize = 3;
/// Between passes while something still needs a previous key (a consent in progress, a
/// replica still running with the old key), and once nothing does.
const RECHECK_PENDING: Duration = Duration::from_secs(30);
const RECHECK_IDLE: Duration = Duration::from_secs(300);

/// What one pass found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassOutcome {
    /// Rows this pass moved to the current key.
    pub resealed: u64,
    /// Rows still needing a previous key afterwards (they changed under every round).
    pub rows_under_previous_keys: u64,
    pub flows_under_previous_keys: u64,
    pub unreadable_rows: u64,
}

/// One scan of the table.
#[derive(Debug, Default)]
struct Round {
    resealed: u64,
    /// Rows that needed a previous key but changed before their write (left for the next
    /// round: most were just refreshed with the current key).
    changed_under_previous: u64,
    /// Rows that changed before their write.
    changed: u64,
    unreadable: u64,
}

/// A row's values sealed with the current key, or why not.
enum Moved {
    Unreadable,
    To {
        reseal: Reseal,
        /// Whether a value needed a previous key (not merely the old format).
        needed_previous: bool,
    },
}

impl Vault {
    pub fn reseal_counters(&self) -> &Arc<ResealCounters> {
        &self.reseal_counters
    }

    /// `value` sealed with the current key: `None` when no configured key opens it; the flag
    /// says whether a previous key was needed.
    fn reseal_value(
        &self,
        row: &UpstreamRecord,
        kind: Kind,
        value: Option<&Vec<u8>>,
    ) -> anyhow::Result<Option<(Option<Vec<u8>>, bool)>> {
        let Some(sealed) = value else {
            return Ok(Some((None, false)));
        };
        if self.sealer.is_current(sealed) {
            return Ok(Some((Some(sealed.clone()), false)));
        }
        let Some((plain, opener)) = self
            .sealer
            .open_noting_key(&row.user, &row.route, kind, sealed)
        else {
            return Ok(None);
        };
        let resealed = self.sealer.seal(&row.user, &row.route, kind, &plain)?;
        Ok(Some((Some(resealed), opener == Opener::Previous)))
    }

    fn reseal_row(&self, row: &UpstreamRecord) -> anyhow::Result<Moved> {
        let access = self.reseal_value(row, Kind::Access, row.access_token.as_ref())?;
        let refresh = self.reseal_value(row, Kind::Refresh, row.refresh_token.as_ref())?;
        let (Some((access, a_prev)), Some((refresh, r_prev))) = (access, refresh) else {
            return Ok(Moved::Unreadable);
        };
        Ok(Moved::To {
            reseal: Reseal {
                user: row.user.clone(),
                route: row.route.clone(),
                version: row.version,
                old_access_token: row.access_token.clone(),
                old_refresh_token: row.refresh_token.clone(),
                access_token: access,
                refresh_token: refresh,
            },
            needed_previous: a_prev || r_prev,
        })
    }

    /// One batch after `after`: reads, re-seals, writes. Returns the last row's key (`None`
    /// when the table is done). Blocking (store).
    fn reseal_batch(
        &self,
        after: Option<&(String, String)>,
        round: &mut Round,
    ) -> anyhow::Result<Option<(String, String)>> {
        let prefix = self.sealer.current_prefix();
        let rows = self.store.upstream_tokens_not_sealed_with(
            &prefix,
            after.map(|(u, r)| (u.as_str(), r.as_str())),
            BATCH,
        )?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        let last = (last.user.clone(), last.route.clone());
        let mut moves = Vec::with_capacity(rows.len());
        let mut needed = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.reseal_row(row)? {
                Moved::Unreadable => round.unreadable += 1,
                Moved::To {
                    reseal,
                    needed_previous,
                } => {
                    moves.push(reseal);
                    needed.push(needed_previous);
                }
            }
        }
        let written = self.store.reseal_upstream_tokens(&moves)?;
        for (ok, needed_previous) in written.into_iter().zip(needed) {
            if ok {
                round.resealed += 1;
            } else {
                round.changed += 1;
                round.changed_under_previous += u64::from(needed_previous);
            }
        }
        Ok(Some(last))
    }

    /// Consents and sign-ins in progress whose verifier is not sealed with the current key.
    /// Blocking (store).
    fn flows_under_previous_keys(&self, now: i64) -> anyhow::Result<u64> {
        let verifiers = self.store.live_flow_verifiers(now)?;
        Ok(verifiers
            .iter()
            .filter_map(|v| B64.decode(v.as_bytes()).ok())
            .filter(|sealed| !self.sealer.is_current(sealed))
            .count() as u64)
    }

    /// Moves every row sealed with a previous key (or in the format without key ids) to the
    /// current key, one batch per store call, and updates the counters.
    pub async fn reseal_pass(self: &Arc<Self>, now: i64) -> anyhow::Result<PassOutcome> {
        let mut resealed = 0;
        let mut last_round = Round::default();
        for _ in 0..ROUNDS {
            let mut round = Round::default();
            let mut after = None;
            loop {
                let this = Arc::clone(self);
                let (next, r) = tokio::task::spawn_blocking(move || {
                    let next = this.reseal_batch(after.as_ref(), &mut round);
                    (next, round)
                })
                .await
                .map_err(|e| anyhow::anyhow!("re-seal task failed: {e}"))?;
                round = r;
                match next? {
                    Some(last) => after = Some(last),
                    None => break,
                }
            }
            resealed += round.resealed;
            let settled = round.changed == 0;
            last_round = round;
            if settled {
                break;
            }
        }
        let this = Arc::clone(self);
        let flows = tokio::task::spawn_blocking(move || this.flows_under_previous_keys(now))
            .await
            .map_err(|e| anyhow::anyhow!("re-seal task failed: {e}"))??;
        let outcome = PassOutcome {
            resealed,
            rows_under_previous_keys: last_round.changed_under_previous,
            flows_under_previous_keys: flows,
            unreadable_rows: last_round.unreadable,
        };
        let c = &self.reseal_counters;
        c.resealed_total.fetch_add(resealed, Ordering::SeqCst);
        c.rows_under_previous_keys
            .store(outcome.rows_under_previous_keys, Ordering::SeqCst);
        c.flows_under_previous_keys.store(flows, Ordering::SeqCst);
        c.unreadable_rows
            .store(outcome.unreadable_rows, Ordering::SeqCst);
        c.passes.fetch_add(1, Ordering::SeqCst);
        Ok(outcome)
    }
}

/// The background re-seal (`serve` starts it): a pass at start, then every few minutes
/// (sooner while something still needs a previous key). Logs when a pass moved rows, when
/// previous keys are no longer needed, and when rows open with no configured key.
pub async fn run(vault: Arc<Vault>, clock: crate::clock::Clock) {
    let previous_keys = vault.reseal_counters.previous_keys.load(Ordering::SeqCst);
    let mut needed_before: Option<bool> = None;
    let mut unreadable_before = 0;
    loop {
        let needed = match vault.reseal_pass(clock()).await {
            Ok(o) => {
                if o.resealed > 0 {
                    tracing::info!(
                        resealed = o.resealed,
                        rows_under_previous_keys = o.rows_under_previous_keys,
                        "upstream tokens re-sealed with the current encryption key"
                    );
                }
                let needed = o.rows_under_previous_keys + o.flows_under_previous_keys > 0;
                if needed && needed_before.is_none() {
                    tracing::info!(
                        rows_under_previous_keys = o.rows_under_previous_keys,
                        flows_under_previous_keys = o.flows_under_previous_keys,
                        "sealed values still need a previous encryption key; checking again in {} s",
                        RECHECK_PENDING.as_secs()
                    );
                }
                if !needed && needed_before != Some(false) && previous_keys > 0 {
                    tracing::info!(
                        previous_keys,
                        resealed_total = vault.reseal_counters.resealed_total.load(Ordering::SeqCst),
                        "no sealed value needs a previous encryption key any more; previous keys can be removed"
                    );
                }
                if o.unreadable_rows > 0 && o.unreadable_rows != unreadable_before {
                    tracing::warn!(
                        unreadable_rows = o.unreadable_rows,
                        "upstream tokens that no configured encryption key opens (sealed with a key no longer listed): their users must connect their accounts again"
                    );
                }
                unreadable_before = o.unreadable_rows;
                needed_before = Some(needed);
                needed
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "re-sealing upstream tokens failed; will retry");
                true
            }
        };
        tokio::time::sleep(if needed {
            RECHECK_PENDING
        } else {
            RECHECK_IDLE
        })
        .await;
    }
}
