//! Strict inspection of MCP JSON-RPC request bodies. Anything the filter cannot read exactly as
//! the server will is refused: duplicate keys (servers disagree on which wins), invalid UTF-8,
//! trailing bytes, non-object messages. Escapes are decoded by the parser, so `\u0064elete_x`
//! is matched as `delete_x`, and key names are exact (`Name` is not `name`). Method and tool
//! names a lenient server could read as other names are refused (`crate::names`).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use std::collections::HashSet;

use crate::names::{fold, is_folded};
use crate::policy::McpCall;

/// One JSON-RPC message of a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The request `id` (absent for notifications and on responses without one).
    pub id: Option<Value>,
    pub call: McpCall,
    /// What `Mcp-Name` must carry for this method (`params.name`, `params.uri`, `params.taskId`).
    pub name: Option<String>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`, when it is a string.
    pub meta_protocol_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub batch: bool,
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InspectError {
    /// Not strictly valid JSON (with the parser's reason).
    Parse(String),
    /// Valid JSON that is not a JSON-RPC 2.0 message or batch.
    Invalid(String),
}

impl InspectError {
    pub fn reason(&self) -> &'static str {
        match self {
            InspectError::Parse(_) => "mcp-parse-error",
            InspectError::Invalid(_) => "mcp-invalid-request",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            InspectError::Parse(m) | InspectError::Invalid(m) => m,
        }
    }
}

/// Parses a complete request body.
pub fn inspect(body: &[u8]) -> Result<Body, InspectError> {
    let value = parse_strict(body)?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(InspectError::Invalid("empty batch".into()));
            }
            let messages = items
                .into_iter()
                .map(message)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Body {
                batch: true,
                messages,
            })
        }
        other => Ok(Body {
            batch: false,
            messages: vec![message(other)?],
        }),
    }
}

/// Parses JSON refusing duplicate keys; `serde_json` already refuses invalid UTF-8, lone
/// surrogate escapes, trailing bytes and nesting deeper than 128.
pub fn parse_strict(body: &[u8]) -> Result<Value, InspectError> {
    serde_json::from_slice::<StrictValue>(body)
        .map(|v| v.0)
        .map_err(|e| InspectError::Parse(e.to_string()))
}

/// The members of a message the filter reads, and of its `params`, each with its `fold`.
const ENVELOPE_KEYS: &[(&str, &str)] = &[
    ("jsonrpc", "jsonrpc"),
    ("id", "id"),
    ("method", "method"),
    ("params", "params"),
    ("result", "result"),
    ("error", "error"),
];
const PARAMS_KEYS: &[(&str, &str)] = &[
    ("name", "name"),
    ("arguments", "arguments"),
    ("uri", "uri"),
    ("taskId", "taskid"),
    ("_meta", "meta"),
];

/// A key that is not one the filter reads but that a lenient server would read as one
/// (`Method`, `params `, `na\u200bme`): the server would act on a member the filter never saw.
fn look_alike_member(obj: &Map<String, Value>, known: &[(&str, &str)]) -> Result<(), InspectError> {
    for key in obj.keys() {
        if known.iter().any(|(exact, _)| exact == key) {
            continue;
        }
        let folded = fold(key);
        if let Some((member, _)) = known.iter().find(|(_, f)| *f == folded) {
            return Err(InspectError::Invalid(format!(
                "member {key:?} differs from {member:?} only by case, whitespace or invisible characters"
            )));
        }
    }
    Ok(())
}

/// Reads one message, taking its parts rather than copying them (arguments can be large).
fn message(v: Value) -> Result<Message, InspectError> {
    let invalid = |m: &str| Err(InspectError::Invalid(m.to_string()));
    let Value::Object(mut obj) = v else {
        return invalid("a JSON-RPC message must be an object");
    };
    look_alike_member(&obj, ENVELOPE_KEYS)?;
    if let Some(Value::Object(params)) = obj.get("params") {
        look_alike_member(params, PARAMS_KEYS)?;
    }
    if !matches!(obj.get("jsonrpc"), Some(Value::String(v)) if v == "2.0") {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => return invalid("\"id\" must be a string, a number or null"),
    };
    let method = match obj.remove("method") {
        None => {
            // A response (to a server-to-client request): no method to judge.
            if !obj.contains_key("result") && !obj.contains_key("error") {
                return invalid("a message needs \"method\", \"result\" or \"error\"");
            }
            return Ok(Message {
                id,
                call: McpCall::default(),
                name: None,
                meta_protocol_version: None,
            });
        }
        Some(Value::String(m)) => m,
        Some(_) => return invalid("\"method\" must be a string"),
    };
    crate::names::check_method(&method).map_err(InspectError::Invalid)?;
    let mut params = match obj.remove("params") {
        None => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return invalid("\"params\" must be an object or an array"),
    };
    let meta_protocol_version = params
        .as_ref()
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(META_PROTOCOL_VERSION))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let name_key = match method.as_str() {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    let name = match name_key.map(|k| (k, params.as_ref().and_then(|p| p.get(k)))) {
        None => None,
        Some((_, Some(Value::String(s)))) => Some(s.clone()),
        Some((k, None)) => {
            return Err(InspectError::Invalid(format!("{method} needs params.{k}")));
        }
        Some((k, _)) => {
            return Err(InspectError::Invalid(format!(
                "params.{k} must be a string"
            )))
        }
    };
    let (tool, arguments) = if method == "tools/call" {
        if let Some(name) = &name {
            crate::names::check_tool_name(name).map_err(InspectError::Invalid)?;
        }
        let arguments = match params.as_mut().and_then(|p| p.get_mut("arguments")) {
            None => None,
            Some(a @ Value::Object(_)) => Some(a.take()),
            Some(_) => return invalid("params.arguments must be an object"),
        };
        (name.clone(), arguments)
    } else {
        (None, None)
    };
    Ok(Message {
        id,
        call: McpCall {
            method: Some(method),
            tool,
            arguments,
        },
        name,
        meta_protocol_version,
    })
}

/// Where a request states its protocol version in the body (2026-07-28).
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// A `serde_json::Value` whose objects may not repeat a key.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrictValue, E> {
        serde_json::Number::from_f64(v)
            .map(|n| StrictValue(Value::Number(n)))
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_none<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(StrictValue(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut obj = Map::new();
        // Folded forms of the keys that are not already folded (usually none): a key that
        // folds to another key of the object is a duplicate to a lenient reader (Go's
        // encoding/json matches keys case-insensitively, and the last one wins).
        let mut folded: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let collides = if is_folded(&key) {
                folded.contains(&key)
            } else {
                let f = fold(&key);
                obj.contains_key(&f) || !folded.insert(f)
            };
            if collides {
                return Err(de::Error::custom(format!(
                    "key {key:?} differs from another key of the object only by case, whitespace or invisible characters"
                )));
            }
            let StrictValue(v) = map.next_value()?;
            obj.insert(key, v);
        }
        Ok(StrictValue(Value::Object(obj)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool_of(body: &str) -> Result<Option<String>, InspectError> {
        inspect(body.as_bytes()).map(|b| b.messages[0].call.tool.clone())
    }

    #[test]
    fn reads_a_tool_call() {
        let b = inspect(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#).unwrap();
        assert!(!b.batch);
        let m = &b.messages[0];
        assert_eq!(m.id, Some(7.into()));
        assert_eq!(m.call.tool.as_deref(), Some("echo"));
        assert_eq!(m.name.as_deref(), Some("echo"));
        assert_eq!(m.call.arguments.as_ref().unwrap()["text"], "hi");
    }

    #[test]
    fn decodes_escapes_before_matching() {
        let t = tool_of(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/\u0063all","params":{"\u006eame":"\u0064elete_db"}}"#,
        );
        assert_eq!(t.unwrap().as_deref(), Some("delete_db"));
    }

    #[test]
    fn refuses_what_servers_may_read_differently() {
        let bad = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping","params":{"name":"a"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"} {"x":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}x"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud800"}}"#,
        ];
        for body in bad {
            assert!(
                matches!(inspect(body.as_bytes()), Err(InspectError::Parse(_))),
                "{body}"
            );
        }
        let mut invalid_utf8 =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"de"#.to_vec();
        invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
        invalid_utf8.extend_from_slice(br#""}}"#);
        assert!(matches!(
            inspect(&invalid_utf8),
            Err(InspectError::Parse(_))
        ));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(inspect(deep.as_bytes()).is_err());
    }

    #[test]
    fn key_names_are_exact() {
        // `Name` is not `name`: a tools/call without params.name is refused, never guessed at.
        let e = inspect(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"delete_db"}}"#,
        );
        assert!(matches!(e, Err(InspectError::Invalid(_))));
        assert!(inspect(br#"{"jsonrpc":"2.0","id":1,"Method":"tools/call"}"#).is_err());
    }

    #[test]
    fn keys_a_lenient_reader_takes_for_another_key_are_refused() {
        // Case variants beside the exact key: Go's encoding/json would take the last one.
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_db","Name":"delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"delete_db","name":"read_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_db","arguments":{"sql":"x","SQL":"drop"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_db","name\u200b":"delete_db"}}"#,
        ] {
            assert!(
                matches!(inspect(body.as_bytes()), Err(InspectError::Parse(_))),
                "{body}"
            );
        }
        // A look-alike of a member the filter reads, alone.
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_db","Arguments":{"sql":"drop"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params ":{"name":"delete_db"},"params":{"name":"read_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","PARAMS":{"name":"delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"," method":"tools/call"}"#,
        ] {
            assert!(inspect(body.as_bytes()).is_err(), "{body}");
        }
        // Go folds `ſ` onto `s`: `paramſ` is `params`, and the later one wins there.
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_db"},"param\u017f":{"name":"delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_db","argument\u017f":{"sql":"DROP x"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_db","arguments":{"sql":"SELECT 1","\u017fql":"DROP x"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_db","arguments":{"file_name":"a","filename":"b"}}}"#,
        ] {
            assert!(inspect(body.as_bytes()).is_err(), "{body}");
        }
        // Distinct keys and other members are fine.
        let fine = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"Table":"t","limit":1,"名前":"x"}}}"#;
        assert!(inspect(fine.as_bytes()).is_ok());
    }

    #[test]
    fn the_known_members_are_listed_with_their_folds() {
        for (exact, folded) in ENVELOPE_KEYS.iter().chain(PARAMS_KEYS) {
            assert_eq!(fold(exact), *folded);
        }
    }

    #[test]
    fn many_keys_are_checked_in_linear_time() {
        // 100k upper-case keys in one object: every one is folded and looked up once.
        let mut body = String::from(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"#,
        );
        for i in 0..100_000 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!("\"K{i}\":1"));
        }
        body.push_str("}}}");
        let started = std::time::Instant::now();
        assert!(inspect(body.as_bytes()).is_ok());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn look_alike_methods_and_tool_names_are_invalid() {
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call ","params":{"name":"delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call\u200b","params":{"name":"delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":" delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_db\u0000"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_db\n"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"TOOLS/CALL","params":{"name":"x"}}]"#,
        ] {
            assert!(
                matches!(inspect(bad.as_bytes()), Err(InspectError::Invalid(_))),
                "{bad}"
            );
        }
        // Names outside tools/call are not tool names.
        assert!(inspect(
            br#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"a b"}}"#
        )
        .is_ok());
    }

    #[test]
    fn batches_and_messages_without_method() {
        let b = inspect(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"x"}}]"#).unwrap();
        assert!(b.batch);
        assert_eq!(b.messages.len(), 2);
        assert!(inspect(b"[]").is_err());
        let r = inspect(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
        assert_eq!(r.messages[0].call.method, None);
        for bad in [
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#""just a string""#,
            r#"[1]"#,
        ] {
            assert!(
                matches!(inspect(bad.as_bytes()), Err(InspectError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
