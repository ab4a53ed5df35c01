//! What the Streamable HTTP transport allows on an MCP server route, by HTTP method: a body
//! reaches the upstream only on POST, where it is inspected. Anything that could carry an
//! uninspected body to a lenient server is refused before it moves.

/// The methods an MCP endpoint serves (the `Allow` header of a `405`).
pub const ALLOWED_METHODS: &str = "GET, POST, DELETE, OPTIONS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodRule {
    /// POST: the JSON-RPC body is buffered and judged.
    InspectBody,
    /// GET (the handshake-era SSE stream) and DELETE (end of session): no body allowed.
    Bodiless,
    /// OPTIONS: a CORS preflight, or a question about the allowed methods; never forwarded.
    Options,
    /// Any other method (methods are case-sensitive: `post` is not `POST`).
    NotAllowed,
}

pub fn method_rule(method: &[u8]) -> MethodRule {
    match method {
        b"POST" => MethodRule::InspectBody,
        b"GET" | b"DELETE" => MethodRule::Bodiless,
        b"OPTIONS" => MethodRule::Options,
        _ => MethodRule::NotAllowed,
    }
}

/// Whether the request headers announce a body: a `Content-Length` other than `0`, or any
/// `Transfer-Encoding`. A body that comes unannounced (HTTP/2 DATA frames) is caught when it
/// arrives.
pub fn announces_body(content_length: Option<&[u8]>, transfer_encoding: bool) -> bool {
    transfer_encoding || content_length.is_some_and(|len| len.trim_ascii() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_post_carries_a_body_upstream() {
        assert_eq!(method_rule(b"POST"), MethodRule::InspectBody);
        assert_eq!(method_rule(b"GET"), MethodRule::Bodiless);
        assert_eq!(method_rule(b"DELETE"), MethodRule::Bodiless);
        assert_eq!(method_rule(b"OPTIONS"), MethodRule::Options);
        for other in [
            b"PUT".as_slice(),
            b"PATCH",
            b"HEAD",
            b"TRACE",
            b"CONNECT",
            b"PROPFIND",
            b"post",
            b"Get",
            b"",
        ] {
            assert_eq!(method_rule(other), MethodRule::NotAllowed, "{other:?}");
        }
    }

    #[test]
    fn announced_bodies() {
        assert!(!announces_body(None, false));
        assert!(!announces_body(Some(b"0"), false));
        assert!(announces_body(Some(b"5"), false));
        assert!(
            announces_body(Some(b"00"), false),
            "odd spellings count as a body"
        );
        assert!(announces_body(Some(b"x"), false));
        assert!(announces_body(None, true));
    }
}
