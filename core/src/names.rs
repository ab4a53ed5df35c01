//! Names a lenient server could read as another name. The filter judges the exact bytes of a
//! JSON-RPC `method`, a tool name or an argument key; a server that trims, lower-cases or drops
//! invisible characters would run something else than what was judged. Such names are refused.

/// Every JSON-RPC method of the MCP revisions the gateway serves (`2024-11-05` to `2026-07-28`),
/// client-to-server and server-to-client alike.
pub const MCP_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "tasks/update",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/resources/updated",
    "notifications/resources/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/roots/list_changed",
    "notifications/elicitation/complete",
    "notifications/tasks/status",
];

/// Longest tool name the MCP specification allows.
pub const MAX_TOOL_NAME_LEN: usize = 128;

/// Why a method name is refused (`Ok` when it may be judged as it is).
pub fn check_method(method: &str) -> Result<(), String> {
    if method.is_empty() {
        return Err("\"method\" must not be empty".into());
    }
    // MCP methods are visible ASCII; whitespace, control, invisible or other non-ASCII
    // characters only serve to make a server and the gateway read two different names.
    if !method.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "method {method:?} contains whitespace, control, invisible or non-ASCII characters"
        ));
    }
    if MCP_METHODS.contains(&method) {
        return Ok(());
    }
    if let Some(known) = MCP_METHODS
        .iter()
        .find(|known| method.eq_ignore_ascii_case(known) && method != **known)
    {
        return Err(format!(
            "method {method:?} differs from the MCP method {known:?} only by case"
        ));
    }
    Ok(())
}

/// Tool names as the MCP specification gives them: 1 to 128 of `A-Z a-z 0-9 _ - .`.
pub fn is_valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Why a tool name is refused.
pub fn check_tool_name(name: &str) -> Result<(), String> {
    if is_valid_tool_name(name) {
        Ok(())
    } else {
        Err(format!(
            "tool name {name:?} is not 1 to {MAX_TOOL_NAME_LEN} of the characters A-Z a-z 0-9 _ - ."
        ))
    }
}

/// A name as a lenient reader sees it: without whitespace, control and invisible characters,
/// without `_` and `-` (Go's case-insensitive JSON v2 ignores them), and case-folded through
/// upper then lower case, so every member of a Unicode simple-fold orbit meets (`ſ` is `s`,
/// the Kelvin sign is `k`, as Go's `encoding/json` reads keys). Two names with the same fold
/// are the same name to such a reader; the fold errs on the side of calling names alike.
pub fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| !is_invisible(*c) && !matches!(c, '_' | '-'))
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether `fold(name) == name` without computing it: lower-case ASCII letters and digits.
pub fn is_folded(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whitespace, control characters and Unicode's default-ignorable code points (zero-width
/// spaces and joiners, bidi marks, variation selectors, tags, fillers, the BOM, ...).
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
            | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// A request header name that is one the filter reads, spelled with `_` for `-`. Servers
/// behind CGI/WSGI-style adapters read both spellings as one header, so a disguised
/// `Mcp_Session_Id` or `Content_Type` would reach them unjudged.
pub fn disguised_header(name: &str) -> Option<&'static str> {
    const READ: &[&str] = &[
        "authorization",
        "content-type",
        "content-encoding",
        "content-length",
        "transfer-encoding",
        "mcp-session-id",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "last-event-id",
    ];
    if !name.contains('_') {
        return None;
    }
    let dashed: String = name
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    READ.iter().find(|h| **h == dashed).copied()
}

/// A header that asks a lenient server to take the request for another HTTP method
/// (`X-HTTP-Method-Override: DELETE` on a `POST`, as Express's `method-override` and many
/// frameworks honour): the filter judges the method it sees, so such requests are refused.
/// Any case, and `_` for `-`.
pub fn is_method_override(name: &[u8]) -> bool {
    const OVERRIDES: [&str; 3] = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];
    OVERRIDES.iter().any(|h| {
        h.len() == name.len()
            && h.bytes().zip(name).all(|(want, got)| {
                let got = if *got == b'_' { b'-' } else { *got };
                want == got.to_ascii_lowercase()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_that_only_look_like_mcp_methods_are_refused() {
        for ok in [
            "tools/call",
            "logging/setLevel",
            "notifications/initialized",
            "vendor/custom",
        ] {
            assert_eq!(check_method(ok), Ok(()), "{ok}");
        }
        for bad in [
            "tools/call ",
            " tools/call",
            "tools/ call",
            "tools/call\t",
            "tools/call\n",
            "tools/call\u{0}",
            "tools/call\u{7f}",
            "tools/call\u{85}",
            "tools/call\u{a0}",
            "tools/\u{200b}call",
            "\u{feff}tools/call",
            "tools/call\u{2060}",
            "tools/call\u{e0020}",
            "tools/call\u{3000}",
            "Tools/Call",
            "TOOLS/CALL",
            "logging/setlevel",
            "tools/cаll", // Cyrillic а: not ASCII
            "",
        ] {
            assert!(check_method(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tool_names_follow_the_specification_charset() {
        for ok in ["echo", "delete_db", "a.b-c_D9", &"x".repeat(128)] {
            assert!(is_valid_tool_name(ok), "{ok}");
        }
        for bad in [
            "",
            " delete_db",
            "delete_db ",
            "delete_db\n",
            "delete\u{0}_db",
            "delete_db\u{200b}",
            "delete db",
            "delete/db",
            "délete",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_tool_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn folding_drops_what_a_lenient_reader_ignores() {
        assert_eq!(fold(" Com\u{200b}mand\t"), "command");
        assert_eq!(fold("COMMAND"), "command");
        assert_ne!(fold("comand"), "command");
        // Go's encoding/json folds these onto ASCII letters.
        assert_eq!(fold("param\u{17f}"), "params");
        assert_eq!(fold("\u{212a}ey"), "key");
        assert_eq!(fold("task_id"), fold("taskId"));
        assert_eq!(fold("Σ"), fold("ς"));
        for plain in ["params", "sql", "a1"] {
            assert!(is_folded(plain));
            assert_eq!(fold(plain), plain);
        }
        assert!(!is_folded("task_id") && !is_folded("Sql") && !is_folded("ſql"));
    }

    #[test]
    fn method_overrides_are_found_in_every_spelling() {
        for name in [
            "x-http-method-override",
            "X-HTTP-Method",
            "x_method_override",
        ] {
            assert!(is_method_override(name.as_bytes()), "{name}");
        }
        for name in ["x-http-methods", "x-method", "content-type"] {
            assert!(!is_method_override(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn underscore_spellings_of_read_headers_are_found() {
        assert_eq!(disguised_header("mcp_session_id"), Some("mcp-session-id"));
        assert_eq!(disguised_header("content_type"), Some("content-type"));
        assert_eq!(disguised_header("x_custom"), None);
        assert_eq!(disguised_header("mcp-session-id"), None);
    }
}
