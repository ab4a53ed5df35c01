#![no_main]
// A fuzz target reports findings by panicking.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use libfuzzer_sys::fuzz_target;
use warden_core::toolslist::SseToolsFilter;

/// Runs the filter over `stream` delivered in the given chunks.
fn run(chunks: &[&[u8]]) -> Option<(Vec<u8>, usize)> {
    let hide = |name: &str| !name.starts_with("delete_");
    let mut filter = SseToolsFilter::new(serde_json::json!(1), 1 << 20);
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        out.extend(filter.push(chunk, i + 1 == chunks.len(), &hide).ok()?);
    }
    Some((out, filter.removed))
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick split points; the rest is the stream.
    let [a, b, stream @ ..] = data else {
        return;
    };
    let (x, y) = {
        let (x, y) = (
            usize::from(*a).min(stream.len()),
            usize::from(*b).min(stream.len()),
        );
        (x.min(y), x.max(y))
    };
    // Where the network splits a stream (mid-event, mid-line, mid-UTF-8) never changes what
    // the client receives or what is removed.
    let whole = run(&[stream]);
    let split = run(&[&stream[..x], &stream[x..y], &stream[y..]]);
    assert_eq!(whole, split, "split at {x}/{y}");
});
