//! Pure decision logic of mcp-warden's filter: no I/O and no proxy-wasm, so everything here is
//! unit-tested natively and the wasm adapter only executes what these functions decide.

pub mod access;
pub mod app;
pub mod assertion;
pub mod cache;
pub mod config;
pub mod content_type;
pub mod internal_api;
pub mod jsonrpc;
pub mod keys;
pub mod mcp;
pub mod mcp_headers;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod raw;
pub mod reply;
pub mod revocation;
pub mod server_route;
pub mod session;
pub mod short_text;
pub mod signature_budget;
pub mod step;
pub mod token;
pub mod toolslist;
pub mod trace_context;
pub mod transport;
pub mod upstream;
pub mod url;
