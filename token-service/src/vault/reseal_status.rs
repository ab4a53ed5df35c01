//! The re-seal's counters and the status they add up to: a leaf, so the vault can hold them
//! and the re-seal (which works on the vault) can count, without the two importing each other.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The re-seal's counters, for the internal `VAULT_STATUS_PATH` (and metrics later). The
/// gauges mean something once `passes` > 0.
#[derive(Debug, Default)]
pub struct ResealCounters {
    /// Keys in `storage.previous_encryption_key_files`.
    pub previous_keys: AtomicU64,
    /// Passes completed since start.
    pub passes: AtomicU64,
    /// Gauge: upstream-token rows with a value only a previous key opens.
    pub rows_under_previous_keys: AtomicU64,
    /// Gauge: consents and sign-ins in progress whose verifier is not sealed with the
    /// current key.
    pub flows_under_previous_keys: AtomicU64,
    /// Gauge: rows no configured key opens (sealed with a key no longer listed): their users
    /// connect their accounts again.
    pub unreadable_rows: AtomicU64,
    /// Counter: rows moved to the current key since start.
    pub resealed_total: AtomicU64,
}

/// What the status endpoint answers; gauges are `null` until the first pass ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResealStatus {
    pub previous_keys: u64,
    pub passes: u64,
    pub rows_under_previous_keys: Option<u64>,
    pub flows_under_previous_keys: Option<u64>,
    pub unreadable_rows: Option<u64>,
    pub resealed_total: u64,
    /// False once a pass found nothing that needs a previous key: they can be removed.
    pub previous_keys_needed: bool,
}

impl ResealCounters {
    pub fn snapshot(&self) -> ResealStatus {
        let passes = self.passes.load(Ordering::SeqCst);
        let gauge = |g: &AtomicU64| (passes > 0).then(|| g.load(Ordering::SeqCst));
        let rows = gauge(&self.rows_under_previous_keys);
        let flows = gauge(&self.flows_under_previous_keys);
        ResealStatus {
            previous_keys: self.previous_keys.load(Ordering::SeqCst),
            passes,
            rows_under_previous_keys: rows,
            flows_under_previous_keys: flows,
            unreadable_rows: gauge(&self.unreadable_rows),
            resealed_total: self.resealed_total.load(Ordering::SeqCst),
            previous_keys_needed: rows.zip(flows).is_none_or(|(r, f)| r + f > 0),
        }
    }
}
