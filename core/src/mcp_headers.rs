//! Agreement between the `2026-07-28` routing headers (`Mcp-Method`, `Mcp-Name`,
//! `MCP-Protocol-Version`) and the JSON-RPC body. A proxy that routes or logs by header while the
//! server acts on the body is bypassed the moment the two differ, so any difference is refused
//! (HTTP 400, JSON-RPC `-32020`).

use base64::Engine;

use crate::jsonrpc::Message;
use crate::short_text::ShortText;

/// JSON-RPC error code for a header that disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// First protocol revision with per-request routing headers.
pub const STATELESS_ERA: &str = "2026-07-28";

#[derive(Debug, Default, Clone)]
pub struct RoutingHeaders {
    pub protocol_version: Option<ShortText>,
    pub method: Option<ShortText>,
    pub name: Option<ShortText>,
}

impl RoutingHeaders {
    /// Requests of the stateless era must carry the headers; older ones may omit them.
    pub fn stateless_era(&self) -> bool {
        self.protocol_version
            .as_deref()
            .is_some_and(|v| v >= STATELESS_ERA)
    }
}

/// Checks one (non-batch) message against the headers; `Err` carries the reason.
pub fn check(headers: &RoutingHeaders, message: &Message) -> Result<(), String> {
    let Some(method) = message.call.method.as_deref() else {
        // A response or an error names no method: a header that names one describes a call
        // the body does not make, which a server routing by header would still run.
        if headers.method.is_some() || headers.name.is_some() {
            return Err("Mcp-Method / Mcp-Name on a message without a method".into());
        }
        return Ok(());
    };
    let required = headers.stateless_era();
    match headers.method.as_deref() {
        Some(h) if h != method => {
            return Err(format!(
                "Mcp-Method header {h:?} does not match body method {method:?}"
            ))
        }
        None if required => return Err("missing Mcp-Method header".into()),
        _ => {}
    }
    if let Some(expected) = message.routing_name() {
        match headers.name.as_deref() {
            Some(raw_header) => {
                let decoded =
                    decode_header_value(raw_header).ok_or("Mcp-Name header is not valid Base64")?;
                if decoded != expected {
                    return Err(format!(
                        "Mcp-Name header {decoded:?} does not match body value {expected:?}"
                    ));
                }
            }
            None if required => return Err(format!("missing Mcp-Name header for {method}")),
            None => {}
        }
    } else if headers.name.is_some() {
        // Checked whenever present, in every era: a name the body does not give is a name
        // the policy never saw.
        return Err(format!("unexpected Mcp-Name header for {method}"));
    }
    if let Some(meta_version) = message.meta_protocol_version.as_deref() {
        match headers.protocol_version.as_deref() {
            Some(h) if h != meta_version => {
                return Err(format!(
                    "MCP-Protocol-Version header {h:?} does not match request _meta protocolVersion {meta_version:?}"
                ))
            }
            None => return Err("request _meta protocolVersion requires the MCP-Protocol-Version header".into()),
            _ => {}
        }
    }
    Ok(())
}

/// Header values that are not plain visible ASCII travel as `=?base64?<b64>?=` (SEP-2243).
fn decode_header_value(raw: &str) -> Option<String> {
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::inspect;

    fn run(h: RoutingHeaders, body: &str) -> Result<(), String> {
        let b = inspect(body.as_bytes()).unwrap();
        check(&h, &b.messages[0])
    }

    fn h(pv: Option<&str>, m: Option<&str>, n: Option<&str>) -> RoutingHeaders {
        RoutingHeaders {
            protocol_version: pv.map(Into::into),
            method: m.map(Into::into),
            name: n.map(Into::into),
        }
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_db","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;

    #[test]
    fn agreeing_headers_pass() {
        assert_eq!(
            run(
                h(Some("2026-07-28"), Some("tools/call"), Some("delete_db")),
                CALL
            ),
            Ok(())
        );
        let b64 = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode("delete_db")
        );
        assert_eq!(
            run(h(Some("2026-07-28"), Some("tools/call"), Some(&b64)), CALL),
            Ok(())
        );
        // Handshake era: headers optional.
        assert_eq!(
            run(
                h(Some("2025-06-18"), None, None),
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#
            ),
            Ok(())
        );
    }

    #[test]
    fn disagreement_is_refused() {
        for headers in [
            h(Some("2026-07-28"), Some("tools/list"), Some("delete_db")),
            h(Some("2026-07-28"), Some("tools/call"), Some("read_db")),
            h(Some("2026-07-28"), None, Some("delete_db")),
            h(Some("2026-07-28"), Some("tools/call"), None),
            h(Some("2025-11-25"), Some("tools/call"), Some("delete_db")),
            h(None, Some("tools/call"), Some("delete_db")),
            h(
                Some("2026-07-28"),
                Some("tools/call"),
                Some("=?base64?!!?="),
            ),
        ] {
            assert!(run(headers.clone(), CALL).is_err(), "{headers:?}");
        }
        // Old era, but a header that is present must still agree.
        assert!(run(
            h(Some("2025-06-18"), Some("ping"), None),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#
        )
        .is_err());
    }

    #[test]
    fn headers_present_are_checked_in_every_era() {
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        let response = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        let error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#;
        for era in [
            None,
            Some("2025-03-26"),
            Some("2025-11-25"),
            Some("2026-07-28"),
        ] {
            // A stray Mcp-Name where the body names nothing.
            assert!(
                run(h(era, Some("tools/list"), Some("delete_db")), list).is_err(),
                "{era:?}"
            );
            assert!(
                run(h(era, None, Some("delete_db")), list).is_err(),
                "{era:?}"
            );
            // Headers on a body without a method (a response or an error).
            for body in [response, error] {
                assert!(
                    run(h(era, Some("tools/call"), None), body).is_err(),
                    "{era:?} {body}"
                );
                assert!(
                    run(h(era, None, Some("delete_db")), body).is_err(),
                    "{era:?} {body}"
                );
                assert_eq!(run(h(era, None, None), body), Ok(()), "{era:?} {body}");
            }
        }
    }
}
