//! Property: a call the policy denies stays denied however the same call is encoded
//! (key order, whitespace, `\u` escapes of any character, in keys and values alike).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::json;
use warden_core::jsonrpc::inspect;
use warden_core::policy::{Policy, PolicyInput};
use warden_core::token::{Audience, TeClaims};

/// JSON text of a string, each character escaped as `\uXXXX` when its flag says so.
fn encode_str(s: &str, escapes: &[bool]) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if escapes.get(i).copied().unwrap_or(false) {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

fn ws(n: u8) -> &'static str {
    ["", " ", "\n", "\t ", "\r\n  "][usize::from(n) % 5]
}

/// Encodes `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":T,"arguments":{...}}}`
/// with the given key orders, whitespace and escapes.
fn encode(order: &[usize], porder: bool, w: &[u8], esc: &[bool], tool: &str) -> String {
    let e = |s: &str, k: usize| encode_str(s, &esc[k % esc.len()..]);
    let params = {
        let name = format!("{}:{}{}", e("name", 1), ws(w[0]), e(tool, 2));
        let args = format!(
            "{}:{{{}:{}}}",
            e("arguments", 3),
            e("table", 4),
            e("users", 5)
        );
        if porder {
            format!("{{{name},{}{args}}}", ws(w[1]))
        } else {
            format!("{{{args},{name}{}}}", ws(w[2]))
        }
    };
    let members = [
        format!("{}:{}", e("jsonrpc", 6), e("2.0", 7)),
        format!("{}:{}1", e("id", 8), ws(w[3])),
        format!("{}:{}", e("method", 9), e("tools/call", 10)),
        format!("{}:{}{params}", e("params", 11), ws(w[4])),
    ];
    let body: Vec<&str> = order.iter().map(|&i| members[i].as_str()).collect();
    format!(
        "{}{{{}}}{}",
        ws(w[5]),
        body.join(&format!(",{}", ws(w[6]))),
        ws(w[7])
    )
}

fn claims() -> TeClaims {
    TeClaims {
        iss: "i".into(),
        sub: "a@company.com".into(),
        aud: Audience::One("r".into()),
        jti: String::new(),
        client_id: "c".into(),
        scope: String::new(),
        sid: String::new(),
        gid: String::new(),
        email: "a@company.com".into(),
        name: String::new(),
        groups: vec![],
        sub_kind: Default::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn denied_tool_stays_denied(
        order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        porder in any::<bool>(),
        w in proptest::collection::vec(any::<u8>(), 8),
        esc in proptest::collection::vec(any::<bool>(), 64),
    ) {
        let policy = Policy::compile(
            &json!([{"allow": {"and": [{"domain": "company.com"}]}}, {"deny": {"or": [{"mcp_tool": {"starts_with": "delete_"}}]}}]),
            "policy",
        ).unwrap();
        let text = encode(&order, porder, &w, &esc, "delete_db");
        let body = inspect(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        let call = &body.messages[0].call;
        prop_assert_eq!(call.tool.as_deref(), Some("delete_db"));
        let c = claims();
        let denied = !policy.evaluate(&PolicyInput { claims: &c, call }).permitted();
        prop_assert!(denied, "{}", text);
        // The same encoding of an allowed tool is allowed: the property is not vacuous.
        let text = encode(&order, porder, &w, &esc, "read_db");
        let body = inspect(text.as_bytes()).unwrap();
        let allowed = policy.evaluate(&PolicyInput { claims: &c, call: &body.messages[0].call }).permitted();
        prop_assert!(allowed, "{}", text);
    }
}
