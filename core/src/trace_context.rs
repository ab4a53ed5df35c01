//! Traces: the client's W3C trace context (`traceparent`, `tracestate`), kept from the request
//! head and forwarded on the filter's call-outs so one trace runs from the client through the
//! token service; and the span tags the filter offers Envoy's tracer as filter state.
//!
//! The values are opaque ids, never logged. A `traceparent` that is not the W3C version 00
//! form, or a `tracestate` over [`TRACESTATE_MAX_BYTES`], is dropped, not forwarded.

use crate::mcp::AuthorizeLog;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_BYTES: usize = 55;
/// W3C: 32 list members of at most 256 bytes, but vendors are told to keep it under 512.
pub const TRACESTATE_MAX_BYTES: usize = 512;

/// The client's trace context, as the call-outs forward it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: Option<String>,
    tracestate: Option<String>,
    /// A header came twice: neither copy is trusted.
    repeated: bool,
}

impl TraceContext {
    /// Keeps `traceparent` / `tracestate` (lower-case names, as Envoy gives them) when well
    /// formed and bounded; ignores other names.
    pub fn record_header(&mut self, name: &[u8], value: &[u8]) {
        let (slot, ok) = match name {
            b"traceparent" => (&mut self.traceparent, valid_traceparent(value)),
            b"tracestate" => (&mut self.tracestate, valid_tracestate(value)),
            _ => return,
        };
        if slot.is_some() {
            self.repeated = true;
        }
        *slot = if ok {
            std::str::from_utf8(value).ok().map(str::to_owned)
        } else {
            None
        };
    }

    /// The headers to add to a call-out: none without a valid `traceparent` (a
    /// `tracestate` alone means nothing).
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if self.repeated {
            return out;
        }
        if let Some(p) = &self.traceparent {
            out.push((TRACEPARENT, p.as_str()));
            if let Some(s) = &self.tracestate {
                out.push((TRACESTATE, s.as_str()));
            }
        }
        out
    }
}

fn is_lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// W3C Trace Context level 1, version 00: `00-{trace-id}-{parent-id}-{flags}`, ids not all
/// zeros.
fn valid_traceparent(v: &[u8]) -> bool {
    if v.len() != TRACEPARENT_BYTES || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let (trace_id, span_id, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    is_lower_hex(trace_id)
        && is_lower_hex(span_id)
        && is_lower_hex(flags)
        && trace_id.iter().any(|&c| c != b'0')
        && span_id.iter().any(|&c| c != b'0')
}

/// Printable ASCII, at most [`TRACESTATE_MAX_BYTES`].
fn valid_tracestate(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= TRACESTATE_MAX_BYTES && v.iter().all(|c| (0x20..0x7f).contains(c))
}

/// The span tags the filter offers Envoy's tracer: (tag, filter state key). The filter sets
/// `wasm.<key>` when the plugin's `span_tags` is on; the rendered bootstrap's `custom_tags`
/// read it with `%FILTER_STATE(wasm.<key>:PLAIN)%`. (Envoy's Wasm host cannot write dynamic
/// metadata or tag the span itself.)
pub const SPAN_TAGS: [(&str, &str); 4] = [
    ("mcp.method.name", "mcp_warden.mcp_method"),
    ("gen_ai.tool.name", "mcp_warden.tool"),
    ("mcp_warden.route", "mcp_warden.route"),
    ("mcp_warden.decision", "mcp_warden.decision"),
];

/// Longest tag value: a tool name longer than this is cut.
pub const SPAN_TAG_MAX_BYTES: usize = 128;

/// The values for [`SPAN_TAGS`], in its order, for one judged call: the decision is
/// `allowed`, or the refusal's reason.
pub fn span_tag_values<'a>(
    route: &'a str,
    log: &'a AuthorizeLog,
    refusal: Option<&'a str>,
) -> [&'a str; 4] {
    let bounded = |s: &'a str| {
        let mut end = s.len().min(SPAN_TAG_MAX_BYTES);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    };
    [
        bounded(log.mcp_method.as_deref().unwrap_or("")),
        bounded(log.mcp_tool.as_deref().unwrap_or("")),
        route,
        refusal.unwrap_or("allowed"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn read(headers: &[(&[u8], &[u8])]) -> TraceContext {
        let mut t = TraceContext::default();
        for (n, v) in headers {
            t.record_header(n, v);
        }
        t
    }

    #[test]
    fn a_valid_traceparent_and_tracestate_are_forwarded() {
        let t = read(&[
            (b"traceparent", PARENT),
            (b"tracestate", b"congo=t61rcWkgMzE"),
        ]);
        assert_eq!(
            t.headers(),
            vec![
                (TRACEPARENT, std::str::from_utf8(PARENT).unwrap()),
                (TRACESTATE, "congo=t61rcWkgMzE")
            ]
        );
    }

    #[test]
    fn malformed_or_zero_traceparents_are_dropped() {
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"[..],
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",
        ] {
            assert!(
                read(&[(b"traceparent", bad)]).headers().is_empty(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_tracestate_over_512_bytes_is_dropped_and_alone_means_nothing() {
        let long = vec![b'a'; TRACESTATE_MAX_BYTES + 1];
        let t = read(&[(b"traceparent", PARENT), (b"tracestate", &long)]);
        assert_eq!(t.headers().len(), 1);
        assert!(read(&[(b"tracestate", b"a=b")]).headers().is_empty());
    }

    #[test]
    fn a_repeated_traceparent_is_not_forwarded() {
        let t = read(&[(b"traceparent", PARENT), (b"traceparent", PARENT)]);
        assert!(t.headers().is_empty());
    }

    #[test]
    fn span_tags_name_the_call_and_cut_long_tool_names() {
        let tool = "t".repeat(300);
        let log = AuthorizeLog {
            mcp_method: Some("tools/call".into()),
            mcp_tool: Some(tool.into()),
            mcp_tool_parameters: Some(serde_json::json!({"secret": "x"})),
            ..AuthorizeLog::default()
        };
        let v = span_tag_values("demo", &log, Some("policy-denied"));
        assert_eq!(v[0], "tools/call");
        assert_eq!(v[1].len(), SPAN_TAG_MAX_BYTES);
        assert_eq!(&v[2..], ["demo", "policy-denied"]);
        assert!(v.iter().all(|s| !s.contains("secret")));
    }
}
