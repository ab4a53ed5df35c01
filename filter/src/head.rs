//! The request head, read once from the host (`headers.rs`) and kept as it came: the fields
//! the access decision and the MCP judgement read, as ranges into one block. A stream keeps it
//! while it waits for the JWKS, so the decision can run again when the keys arrive.

use std::ops::Range;

use proxy_wasm::hostcalls;
use warden_core::access::RequestHead;
use warden_core::internal_api::is_client_assertion;
use warden_core::mcp::CallHead;
use warden_core::names::{disguised_header, is_method_override};
use warden_core::short_text::{lossy, ShortText};
use warden_core::step::OnceHeader;
use warden_core::trace_context::TraceContext;

use crate::headers::HeaderBlock;

/// The request head as the host gave it (one block), with the fields the decision reads as
/// ranges into it; kept while a JWKS fetch is in flight.
pub struct OwnedHead {
    pub block: HeaderBlock,
    method: Range<usize>,
    authority: Range<usize>,
    scheme: Range<usize>,
    pub path: Range<usize>,
    envoy_route: EnvoyRoute,
    /// `envoy_route` came from the plugin's `route_header`.
    route_in_header: bool,
    origin: Option<Range<usize>>,
    authorization: OnceRanges,
    is_preflight: bool,
    content_length: Option<Range<usize>>,
    transfer_encoding: bool,
    session_ids: Vec<Range<usize>>,
    disguised_header: Option<&'static str>,
    method_override: bool,
    /// Identity assertions the client sent (ours or Pomerium's, any spelling), by header
    /// name: removed before anything else happens.
    pub client_assertions: Vec<String>,
    /// Every `Cookie` header (client routes find their session in them).
    pub cookies: Vec<Range<usize>>,
    /// What the MCP judgement reads (kept as text; odd bytes only ever fail a comparison).
    pub call: CallHead,
    /// The client's `traceparent` / `tracestate`, forwarded on the call-outs.
    pub trace: TraceContext,
    pub end_of_stream: bool,
}

impl OwnedHead {
    /// `route_header`: the header Envoy sets to its route's name (plugin `route_header`);
    /// without one, the name is read from the `xds.route_name` property.
    pub fn read(end_of_stream: bool, route_header: Option<&str>) -> Self {
        // One host call for all headers: cheaper than one per header, and the only way to
        // see a repeated header.
        let block = HeaderBlock::request();
        let mut head = OwnedHead {
            block: HeaderBlock::empty(),
            method: 0..0,
            authority: 0..0,
            scheme: 0..0,
            path: 0..0,
            envoy_route: EnvoyRoute::Unknown,
            route_in_header: route_header.is_some(),
            origin: None,
            authorization: OnceRanges::default(),
            is_preflight: false,
            content_length: None,
            transfer_encoding: false,
            session_ids: Vec::new(),
            disguised_header: None,
            method_override: false,
            client_assertions: Vec::new(),
            cookies: Vec::new(),
            call: CallHead::default(),
            trace: TraceContext::default(),
            end_of_stream,
        };
        let route_header = route_header.map(str::as_bytes);
        let mut envoy_routes = 0;
        for (name, value) in block.pairs() {
            let text = || short_text(block.get(&value));
            if Some(name) == route_header {
                envoy_routes += 1;
                head.envoy_route = EnvoyRoute::Header(value);
                continue;
            }
            match name {
                b":method" => head.method = value,
                b":authority" => head.authority = value,
                b":scheme" => head.scheme = value,
                b":path" => head.path = value,
                b"origin" => head.origin = Some(value),
                b"authorization" => head.authorization.push(value),
                b"access-control-request-method" => head.is_preflight = true,
                b"content-length" => head.content_length = Some(value),
                b"transfer-encoding" => head.transfer_encoding = true,
                b"mcp-session-id" => head.session_ids.push(value),
                b"content-type"
                | b"content-encoding"
                | b"mcp-protocol-version"
                | b"mcp-method"
                | b"mcp-name" => head.call.record_header(name, text()),
                b"x-request-id" => head.call.request_id = text(),
                b"cookie" => head.cookies.push(value),
                b"traceparent" | b"tracestate" => head.trace.record_header(name, block.get(&value)),
                other if is_client_assertion(other) => {
                    head.client_assertions.push(lossy(other).into_owned());
                }
                other if is_method_override(other) => head.method_override = true,
                other => {
                    if head.disguised_header.is_none() {
                        head.disguised_header =
                            std::str::from_utf8(other).ok().and_then(disguised_header);
                    }
                }
            }
        }
        if route_header.is_none() {
            // Envoy's routing decision; the hostcall (unlike the trait getter) reports, not
            // panics.
            head.envoy_route = hostcalls::get_property(vec!["xds", "route_name"])
                .ok()
                .flatten()
                .map_or(EnvoyRoute::Unknown, EnvoyRoute::Property);
        } else if envoy_routes > 1 {
            // Envoy sets the header once: two mean the route cannot be known. A name of no
            // route fails closed (403 route-unknown).
            head.envoy_route = EnvoyRoute::Ambiguous;
        }
        head.call.method = short_text(block.get(&head.method));
        head.block = block;
        head
    }

    pub fn view(&self) -> RequestHead<'_> {
        let b = &self.block;
        RequestHead {
            method: b.get(&self.method),
            authority: b.get(&self.authority),
            scheme: b.get(&self.scheme),
            path: b.get(&self.path),
            envoy_route: match &self.envoy_route {
                EnvoyRoute::Unknown => None,
                EnvoyRoute::Header(r) => Some(b.get(r)),
                EnvoyRoute::Property(name) => Some(name),
                EnvoyRoute::Ambiguous => Some(warden_core::config::ENVOY_ROUTE_PREFIX.as_bytes()),
            },
            envoy_route_in_header: self.route_in_header,
            origin: self.origin.as_ref().map(|r| b.get(r)),
            authorization: self.authorization.view(b),
            is_preflight: self.is_preflight,
            content_length: self.content_length.as_ref().map(|r| b.get(r)),
            transfer_encoding: self.transfer_encoding,
            session_ids: self.session_ids.iter().map(|r| b.get(r)).collect(),
            disguised_header: self.disguised_header,
            method_override: self.method_override,
            cookies: self.cookies.iter().map(|r| b.get(r)).collect(),
        }
    }
}

/// Envoy's route for the request, as the head found it.
enum EnvoyRoute {
    Unknown,
    /// The plugin's `route_header`, once.
    Header(Range<usize>),
    /// The `xds.route_name` property.
    Property(Vec<u8>),
    /// The route header came more than once: the name of no route (403 route-unknown).
    Ambiguous,
}

/// The ranges of a header that must come once: the first two tell one from many.
#[derive(Default)]
struct OnceRanges {
    first: [Range<usize>; 2],
    count: usize,
}

impl OnceRanges {
    fn push(&mut self, value: Range<usize>) {
        if let Some(slot) = self.first.get_mut(self.count) {
            *slot = value;
        }
        self.count = self.count.saturating_add(1);
    }

    fn view<'a>(&self, block: &'a HeaderBlock) -> OnceHeader<'a> {
        let mut once = OnceHeader::default();
        for range in self.first.iter().take(self.count) {
            once.push(block.get(range));
        }
        once
    }
}

/// A value the judgement reads, copied without an allocation when short (`ShortText`).
fn short_text(bytes: &[u8]) -> ShortText {
    ShortText::new(&lossy(bytes))
}
