//! What the headers-phase decision reads (`RequestHead`, `Context`) and what it tells the
//! adapter to do (`Step`). A leaf: the rooms of the decision (`access` places the request,
//! `server_route` and `app` decide for their kind of route) all speak these types.

use std::rc::Rc;

use crate::app::AppStep;
use crate::cache::TokenCache;
use crate::config::CompiledConfig;
use crate::keys::KeySet;
use crate::reply::LocalReply;
use crate::revocation::Revocations;
use crate::session::SessionKey;
use crate::signature_budget::SignatureBudget;
use crate::token::Identity;
use crate::transport::MethodRule;

/// What the adapter read from the request headers (via the `*_bytes` getters).
#[derive(Debug, Default)]
pub struct RequestHead<'a> {
    pub method: &'a [u8],
    /// Host as sent; normalized here.
    pub authority: &'a [u8],
    pub scheme: &'a [u8],
    /// `:path` including any query string.
    pub path: &'a [u8],
    /// Envoy's route name for the request (`xds.route_name`, or the plugin's `route_header`),
    /// when the host could tell.
    pub envoy_route: Option<&'a [u8]>,
    /// `envoy_route` came from a request header: the route it names must also serve the
    /// request's host, so a header Envoy failed to overwrite cannot move a request to another
    /// host's route.
    pub envoy_route_in_header: bool,
    pub origin: Option<&'a [u8]>,
    /// The `Authorization` header values, in order (the first two: enough to refuse many).
    pub authorization: OnceHeader<'a>,
    pub is_preflight: bool,
    pub content_length: Option<&'a [u8]>,
    /// Any `Transfer-Encoding` header was present.
    pub transfer_encoding: bool,
    /// Every `Mcp-Session-Id` header value, in order.
    pub session_ids: Vec<&'a [u8]>,
    /// A header the filter reads, spelled with `_` (see `names::disguised_header`).
    pub disguised_header: Option<&'static str>,
    /// A method-override header (`names::is_method_override`) came with the request.
    pub method_override: bool,
    /// Every `Cookie` header value, in order (read on client routes only).
    pub cookies: Vec<&'a [u8]>,
}

/// A header that must come once: its first two values tell one from many, without an
/// allocation on every request.
#[derive(Debug, Default, Clone, Copy)]
pub struct OnceHeader<'a> {
    values: [&'a [u8]; 2],
    count: usize,
}

impl<'a> OnceHeader<'a> {
    pub fn push(&mut self, value: &'a [u8]) {
        if let Some(slot) = self.values.get_mut(self.count) {
            *slot = value;
        }
        self.count = self.count.saturating_add(1);
    }

    /// The values kept: none, one, or the first two of many.
    pub fn as_slice(&self) -> &[&'a [u8]] {
        self.values.get(..self.count.min(2)).unwrap_or_default()
    }
}

impl<'a> From<Vec<&'a [u8]>> for OnceHeader<'a> {
    fn from(values: Vec<&'a [u8]>) -> Self {
        let mut once = OnceHeader::default();
        for v in values {
            once.push(v);
        }
        once
    }
}

/// What the adapter must do next.
#[derive(Debug)]
pub enum Step {
    /// Not an MCP route or metadata path: leave the request alone.
    PassThrough,
    /// Answer locally and stop.
    Reply(LocalReply),
    /// The key set lacks the token's `kid` (or is empty): fetch the JWKS, then decide again
    /// with `may_fetch_keys = false`.
    FetchKeys,
    /// Authorized: strip the TE and forward.
    Forward(Grant),
    /// A request on a client route (a web app behind browser sign-in), or its sign-in
    /// callback.
    App(AppStep),
}

#[derive(Debug)]
pub struct Grant {
    pub route: usize,
    pub identity: Rc<Identity>,
    /// Allowed browser origin to reflect in CORS response headers.
    pub cors_origin: Option<String>,
    /// How the request's body is handled (`InspectBody` or `Bodiless`).
    pub method: MethodRule,
    /// The upstream's own session id, unwrapped from the client's `Mcp-Session-Id`.
    pub upstream_session_id: Option<Vec<u8>>,
}

pub struct Context<'a> {
    pub config: &'a CompiledConfig,
    pub keys: Option<&'a KeySet>,
    pub cache: &'a mut TokenCache,
    pub session_key: &'a SessionKey,
    /// The clock, seconds: in the filter, the worker's clock of the last tick unless the
    /// request read a fresh one.
    pub now: i64,
    /// A fresh reading of the clock, for a token not in the cache: its `nbf` may be this very
    /// second, and the check of a new token should not lean on a clock up to a tick old.
    pub fresh_now: fn() -> i64,
    pub may_fetch_keys: bool,
    /// 32 random bytes for a client route's sign-in nonce (`None`: no randomness, refuse).
    pub random: fn() -> Option<[u8; 32]>,
    /// The failed signature checks this worker may still afford.
    pub budget: &'a mut SignatureBudget,
    /// The client's address as Envoy has it (`source.address`), asked only when a signature
    /// check is due (never on the warm path).
    pub client_address: fn() -> Option<Vec<u8>>,
    /// The worker's copy of the revocation feed: every TE, cached or not, is checked with it.
    pub revocations: &'a Revocations,
}
