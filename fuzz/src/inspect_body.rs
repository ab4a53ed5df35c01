//! The body inspector (`jsonrpc::inspect`): any bytes in, a verdict out; and whatever it
//! accepts, it reads exactly as a lenient JSON parser would (no duplicate keys, no ambiguity):
//! the method and tool the policy judged are the ones a server will read.

use warden_core::jsonrpc::{inspect, inspect_by_serde, inspect_with};

/// What `run` can decide.
pub const OUTCOMES: &[&str] = &["accepted", "refused"];

pub fn run(data: &[u8]) -> &'static str {
    // Without arguments (the usual warm path) a plain body is read by the scanner, not by
    // serde: the verdict and every member read must be the serde pass's own.
    assert_eq!(
        inspect_with(data, false),
        inspect_by_serde(data, false),
        "the scanner and the serde pass disagree"
    );
    let Ok(body) = inspect(data) else {
        return "refused";
    };
    let lenient: serde_json::Value = match serde_json::from_slice(data) {
        Ok(v) => v,
        Err(e) => panic!("inspector accepted what serde_json refuses: {e}"),
    };
    let messages: Vec<&serde_json::Value> = match &lenient {
        serde_json::Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    assert_eq!(messages.len(), body.messages.len());
    for (raw, judged) in messages.iter().zip(body.messages.iter()) {
        let method = raw.get("method").and_then(|m| m.as_str());
        assert_eq!(method, judged.call.method.as_deref());
        if method == Some("tools/call") {
            let tool = raw.pointer("/params/name").and_then(|n| n.as_str());
            assert_eq!(tool, judged.call.tool.as_deref());
        }
    }
    "accepted"
}

/// Requests and batches as MCP clients send them, and the ambiguities the inspector refuses.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#,
        r#"[{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}},{"jsonrpc":"2.0","id":5,"method":"ping"}]"#,
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","name":"delete_all"}}"#,
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"d\u0065lete_all"}}"#,
        r#"{"jsonrpc":"2.0","id":8,"result":{"ok":true}}"#,
        "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"}",
        // Arguments the scanner drops with their escapes and text, and ones it leaves to serde.
        r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"run","arguments":{"code":"let s = \"h\u00e9llo\";\n// caf\u00c9 \ud83d\ude00 ok\t\/","lines":["\b\f\r","wörld"]}}}"#,
        r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"run","arguments":{"code":"\ud800 lone","more":"\udc00\ud800"}}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
