//! The fuzz targets of mcp-warden: one per parser of untrusted bytes. Each module's `run` takes
//! any bytes, feeds them to the real parser (no copy of it), and asserts the parser's own
//! invariants: a decision that is one of the defined outcomes, consistent with what the input
//! says, never a partial pass. A broken invariant panics, which is how libFuzzer (and the smoke
//! test) learn of it.
//!
//! `fuzz_targets/<name>.rs` hands libFuzzer's bytes to `<name>::run`; `tests/smoke.rs` runs
//! every target over its seed corpus (`corpus/<name>/`, written from each module's `seeds()`)
//! and over mutations of it, so `cargo test` checks the same invariants on every build.
//!
//! Inputs with several fields are lines (`input::Fields`): readable seeds, and mutations that
//! keep most of a seed's shape.

// A fuzz target reports findings by panicking.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod fixtures;
pub mod input;

pub mod app_cookies_and_callback;
pub mod authority_matching;
pub mod bearer_token;
pub mod id_token_and_userinfo;
pub mod inspect_body;
pub mod internal_api_bodies;
pub mod plugin_config;
pub mod return_to_and_redirect_url;
pub mod session_id;
pub mod sse_tools_filter;
pub mod upstream_metadata;

/// A fuzz target: its name (= binary, module and corpus folder), its entry point (which
/// names the outcome it reached), the outcomes it can reach, and its seeds.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> &'static str,
    pub outcomes: &'static [&'static str],
    pub seeds: fn() -> Vec<Vec<u8>>,
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        /// Every target, in the order `make fuzz` runs them.
        pub const TARGETS: &[Target] = &[$(Target {
            name: stringify!($name),
            run: $name::run,
            outcomes: $name::OUTCOMES,
            seeds: $name::seeds,
        }),*];
    };
}

targets!(
    inspect_body,
    sse_tools_filter,
    bearer_token,
    session_id,
    app_cookies_and_callback,
    return_to_and_redirect_url,
    authority_matching,
    id_token_and_userinfo,
    internal_api_bodies,
    plugin_config,
    upstream_metadata,
);

/// Panics unless every header value of a local reply could go on the wire as it is: visible
/// ASCII and spaces only (no CR/LF that would split a header, no NUL).
pub fn assert_sane_headers(reply: &warden_core::reply::LocalReply) {
    for (name, value) in &reply.headers {
        assert!(
            value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
            "header {name} carries a control or non-ASCII byte: {value:?}"
        );
    }
}
