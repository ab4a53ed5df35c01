#![no_main]
// A fuzz target reports findings by panicking.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use libfuzzer_sys::fuzz_target;
use warden_core::jsonrpc::inspect;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = inspect(data) {
        // Accepted bodies parse the same with serde_json's own (lenient) Value: the tool the
        // policy judged is the tool a server will read.
        let lenient: serde_json::Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(e) => panic!("inspector accepted what serde_json refuses: {e}"),
        };
        let messages: Vec<&serde_json::Value> = match &lenient {
            serde_json::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        assert_eq!(messages.len(), body.messages.len());
        for (raw, judged) in messages.iter().zip(&body.messages) {
            let method = raw.get("method").and_then(|m| m.as_str());
            assert_eq!(method, judged.call.method.as_deref());
            if method == Some("tools/call") {
                let tool = raw.pointer("/params/name").and_then(|n| n.as_str());
                assert_eq!(tool, judged.call.tool.as_deref());
            }
        }
    }
});
