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

/// Whether the query names a session (`sessionId`, `session_id`, any spelling a lenient server
/// would read alike, percent-encoded or not). The HTTP+SSE transport of `2024-11-05` carries its
/// session there; such ids cannot be bound to their user the way `Mcp-Session-Id` is, so a
/// request carrying one is refused.
pub fn names_session_in_query(path: &[u8]) -> bool {
    let Some(q) = path.iter().position(|b| *b == b'?') else {
        return false;
    };
    path[q + 1..]
        .split(|b| *b == b'&' || *b == b';')
        .map(|pair| pair.split(|b| *b == b'=').next().unwrap_or_default())
        .any(|key| crate::names::fold(&percent_decode(key)) == "sessionid")
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn session_ids_in_the_query_are_found_however_spelled() {
        for path in [
            b"/mcp/messages?sessionId=abc".as_slice(),
            b"/mcp?x=1&session_id=abc",
            b"/mcp?SESSIONID=abc",
            b"/mcp?session%49d=abc",
            b"/mcp?session%5Fid=abc",
            b"/mcp?a=b;sessionid",
            b"/mcp?%20sessionId=1",
        ] {
            assert!(names_session_in_query(path), "{path:?}");
        }
        for path in [
            b"/mcp".as_slice(),
            b"/mcp?session=1",
            b"/mcp?x=sessionId",
            b"/mcp?sessionIds=1",
            b"/mcp/sessionId",
        ] {
            assert!(!names_session_in_query(path), "{path:?}");
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
