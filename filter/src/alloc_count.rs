//! The bench build's allocation counter (cargo feature `alloc-count`, never in the product):
//! the global allocator is `std::alloc::System` behind a count of allocations (`alloc`,
//! `alloc_zeroed` and `realloc` count one each; frees are not counted). The root context's tick
//! adds what was allocated since its last report to the gauge `mcp_warden.bench_allocations`
//! (Envoy: `wasmcustom.mcp_warden.bench_allocations`), so the request path makes no host call
//! for it. Every VM of an Envoy adds to the same gauge: it is the allocations of all of them.
//! `bench/run.py` reads it before and after a measured run (configuration `warden-alloc-count`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

const GAUGE: &str = "mcp_warden.bench_allocations";

/// Allocations made so far in this VM. A VM is single-threaded; the atomic (relaxed) keeps
/// the static sound without `unsafe` and costs a plain add on wasm32.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches no memory the allocator hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

thread_local! {
    /// The gauge's id once defined, and the count this VM has added to it so far.
    static REPORTED: Cell<(Option<u32>, u64)> = const { Cell::new((None, 0)) };
}

/// Allocations made so far in this VM.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Adds the allocations since the last report to the gauge. Called from the root context's
/// tick only, never on the request path.
pub fn report() {
    REPORTED.with(|reported| {
        let (id, mut added) = reported.get();
        let id = id.or_else(|| hostcalls::define_metric(MetricType::Gauge, GAUGE).ok());
        // Read after defining the gauge: its own allocations count in this report.
        let total = allocations();
        if let Some(id) = id {
            let delta = i64::try_from(total.saturating_sub(added)).unwrap_or(i64::MAX);
            if delta > 0 && hostcalls::increment_metric(id, delta).is_ok() {
                added = added.saturating_add(delta.unsigned_abs());
            }
        }
        reported.set((id, added));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_counted() {
        let before = allocations();
        let v: Vec<u8> = Vec::with_capacity(64);
        std::hint::black_box(&v);
        assert!(allocations() > before);
    }
}
