//! Strict inspection of MCP JSON-RPC request bodies. Anything the filter cannot read exactly as
//! the server will is refused: duplicate keys (servers disagree on which wins), invalid UTF-8,
//! trailing bytes, non-object messages. Escapes are decoded by the parser, so `\u0064elete_x`
//! is matched as `delete_x`, and key names are exact (`Name` is not `name`). Method and tool
//! names a lenient server could read as other names are refused (`crate::names`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::short_text::ShortText;

mod envelope;
mod scan;
pub use envelope::META_PROTOCOL_VERSION;
use envelope::{
    look_alike_member, Arguments, Captured, Envelope, KeysSeen, Params, ParamsValue, Scalar, Top,
    ENVELOPE_KEYS, PARAMS_KEYS,
};
pub(crate) use scan::plain_run;

/// A seed that is its own visitor: it reads whatever value comes.
macro_rules! seed_is_visitor {
    ($seed:ty) => {
        impl<'de> DeserializeSeed<'de> for $seed {
            type Value = <$seed as Visitor<'de>>::Value;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

/// A visitor's answer for every value that is neither an object nor an array (checked and
/// dropped).
macro_rules! forward_scalars {
    ($make:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($make())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($make())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($make())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            StrictVisitor.visit_f64::<E>(v).map(|_| $make())
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($make())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($make())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($make())
        }
    };
}
use crate::policy::McpCall;
use crate::raw::Text;

/// One JSON-RPC message of a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The request `id` (absent for notifications and on responses without one).
    pub id: Option<Value>,
    pub call: McpCall,
    /// What `Mcp-Name` must carry for this method (`params.uri`, `params.taskId`,
    /// `params.name` of a prompt; a tool's name is `call.tool`): read it with `routing_name`.
    name: Option<String>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`, when it is a string.
    pub meta_protocol_version: Option<String>,
}

impl Message {
    /// What `Mcp-Name` must carry for this method (`params.name`, `params.uri`,
    /// `params.taskId`).
    pub fn routing_name(&self) -> Option<&str> {
        self.name.as_deref().or(self.call.tool.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub batch: bool,
    pub messages: Messages,
}

/// The messages of a body, read as a slice: a lone message (nearly every request) is kept
/// without the allocation of a one-element vector.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Messages {
    One([Message; 1]),
    Many(Vec<Message>),
}

impl std::ops::Deref for Messages {
    type Target = [Message];
    fn deref(&self) -> &[Message] {
        match self {
            Messages::One(one) => one,
            Messages::Many(many) => many,
        }
    }
}

impl std::ops::DerefMut for Messages {
    fn deref_mut(&mut self) -> &mut [Message] {
        match self {
            Messages::One(one) => one,
            Messages::Many(many) => many,
        }
    }
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

/// Parses a complete request body, with `params.arguments` of tool calls.
pub fn inspect(body: &[u8]) -> Result<Body, InspectError> {
    inspect_with(body, true)
}

/// Parses a complete request body in one pass that checks the JSON strictly (every object at
/// every depth) and keeps only the members the filter reads, borrowed where it can: no tree
/// is built. `with_arguments`: also build `params.arguments` of tool calls (when the policy or
/// the log reads them); without, they are only checked.
pub fn inspect_with(body: &[u8], with_arguments: bool) -> Result<Body, InspectError> {
    // A plain body is read by the scanner; anything else, and anything it would not accept,
    // the serde way (which then decides, and says why).
    let top = match scan::scan(body, with_arguments) {
        Some(top) => top,
        None => parse_top(body, with_arguments)?,
    };
    body_of(top)
}

/// `inspect_with` without the scanner: the serde pass alone. For the fuzz target that holds
/// the two to one verdict.
#[doc(hidden)]
pub fn inspect_by_serde(body: &[u8], with_arguments: bool) -> Result<Body, InspectError> {
    body_of(parse_top(body, with_arguments)?)
}

/// The serde pass: the whole of JSON, every error with its reason.
fn parse_top(body: &[u8], with_arguments: bool) -> Result<Top<'_>, InspectError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    TopSeed { with_arguments }
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|e| InspectError::Parse(e.to_string()))
}

fn body_of(top: Top<'_>) -> Result<Body, InspectError> {
    match top {
        Top::Batch(items) => {
            if items.is_empty() {
                return Err(InspectError::Invalid("empty batch".into()));
            }
            let messages = items
                .into_iter()
                .map(message)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Body {
                batch: true,
                messages: Messages::Many(messages),
            })
        }
        Top::One(item) => Ok(Body {
            batch: false,
            messages: Messages::One([message(item)?]),
        }),
    }
}

/// Parses JSON refusing duplicate keys, and builds its tree. `serde_json` already refuses
/// invalid UTF-8, lone surrogate escapes, trailing bytes and nesting deeper than 128.
pub fn parse_strict(body: &[u8]) -> Result<Value, InspectError> {
    serde_json::from_slice::<Tree>(body)
        .map(|t| t.0)
        .map_err(|e| InspectError::Parse(e.to_string()))
}

/// Turns what the parse kept of one message into a `Message`, or says why it is not one.
fn message(m: Captured<'_>) -> Result<Message, InspectError> {
    let invalid = |m: &str| Err(InspectError::Invalid(m.to_string()));
    let Captured::Object(obj) = m else {
        return invalid("a JSON-RPC message must be an object");
    };
    if let Some(problem) = obj.look_alike {
        return Err(InspectError::Invalid(problem));
    }
    let params = match &obj.params {
        Some(ParamsValue::Object(p)) => Some(p),
        _ => None,
    };
    if let Some(problem) = params.and_then(|p| p.look_alike.clone()) {
        return Err(InspectError::Invalid(problem));
    }
    if !matches!(&obj.jsonrpc, Some(Scalar::Str(v)) if v == "2.0") {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    let id = match obj.id {
        None => None,
        Some(Scalar::Str(s)) => Some(Value::String(s.into_owned())),
        Some(Scalar::Number(n)) => Some(Value::Number(n)),
        Some(Scalar::Null) => Some(Value::Null),
        Some(_) => return invalid("\"id\" must be a string, a number or null"),
    };
    let method = match obj.method {
        None => {
            // A response (to a server-to-client request): no method to judge.
            if !obj.has_result_or_error {
                return invalid("a message needs \"method\", \"result\" or \"error\"");
            }
            return Ok(Message {
                id,
                call: McpCall::default(),
                name: None,
                meta_protocol_version: None,
            });
        }
        Some(Scalar::Str(m)) => m,
        Some(_) => return invalid("\"method\" must be a string"),
    };
    crate::names::check_method(&method).map_err(InspectError::Invalid)?;
    if !matches!(
        obj.params,
        None | Some(ParamsValue::Object(_)) | Some(ParamsValue::Array)
    ) {
        return invalid("\"params\" must be an object or an array");
    }
    let name_key = match method.as_ref() {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    let name = match name_key {
        None => None,
        Some(k) => match params.and_then(|p| p.named(k)) {
            None => return Err(InspectError::Invalid(format!("{method} needs params.{k}"))),
            Some(Scalar::Str(s)) => Some(s.as_ref()),
            Some(_) => {
                return Err(InspectError::Invalid(format!(
                    "params.{k} must be a string"
                )))
            }
        },
    };
    let meta_protocol_version = params.and_then(|p| p.meta_protocol_version.clone());
    let (tool, name, arguments) = if method == "tools/call" {
        if let Some(name) = name {
            crate::names::check_tool_name(name).map_err(InspectError::Invalid)?;
        }
        let arguments = match params.and_then(|p| p.arguments.as_ref()) {
            None => None,
            Some(Arguments::Object(tree)) => tree.clone(),
            Some(Arguments::Other) => return invalid("params.arguments must be an object"),
        };
        // The tool's name is also what `Mcp-Name` carries (`routing_name`): kept once.
        (name.map(ShortText::new), None, arguments)
    } else {
        (None, name.map(str::to_string), None)
    };
    Ok(Message {
        id,
        call: McpCall {
            method: Some(ShortText::new(&method)),
            tool,
            arguments,
        },
        name,
        meta_protocol_version,
    })
}

// ---------------------------------------------------------------------------------------------
// The one pass. Each visitor checks its objects' keys (`KeysSeen`) and keeps what it is asked
// for; everything else is checked and dropped (`Strict`).

struct TopSeed {
    with_arguments: bool,
}

seed_is_visitor!(TopSeed);

impl<'de> Visitor<'de> for TopSeed {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(MessageSeed {
            with_arguments: self.with_arguments,
        })? {
            items.push(item);
        }
        Ok(Top::Batch(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Top<'de>, A::Error> {
        MessageSeed {
            with_arguments: self.with_arguments,
        }
        .visit_map(map)
        .map(Top::One)
    }
    forward_scalars!(|| Top::One(Captured::Other));
}

struct MessageSeed {
    with_arguments: bool,
}

seed_is_visitor!(MessageSeed);

impl<'de> Visitor<'de> for MessageSeed {
    type Value = Captured<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Captured<'de>, A::Error> {
        StrictVisitor.visit_seq(seq).map(|_| Captured::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Captured<'de>, A::Error> {
        let mut seen = KeysSeen::default();
        let mut env = Envelope::default();
        while let Some(Text(key)) = map.next_key()? {
            match key.as_ref() {
                "jsonrpc" => env.jsonrpc = Some(map.next_value::<Scalar<'de>>()?),
                "id" => env.id = Some(map.next_value::<Scalar<'de>>()?),
                "method" => env.method = Some(map.next_value::<Scalar<'de>>()?),
                "params" => {
                    env.params = Some(map.next_value_seed(ParamsSeed {
                        with_arguments: self.with_arguments,
                    })?)
                }
                "result" | "error" => {
                    map.next_value::<Strict>()?;
                    env.has_result_or_error = true;
                }
                other => {
                    if env.look_alike.is_none() {
                        env.look_alike = look_alike_member(other, ENVELOPE_KEYS);
                    }
                    map.next_value::<Strict>()?;
                }
            }
            seen.add(key).map_err(de::Error::custom)?;
        }
        Ok(Captured::Object(env))
    }
    forward_scalars!(|| Captured::Other);
}

struct ParamsSeed {
    with_arguments: bool,
}

seed_is_visitor!(ParamsSeed);

impl<'de> Visitor<'de> for ParamsSeed {
    type Value = ParamsValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("params")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ParamsValue<'de>, A::Error> {
        StrictVisitor.visit_seq(seq).map(|_| ParamsValue::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParamsValue<'de>, A::Error> {
        let mut seen = KeysSeen::default();
        let mut params = Params::default();
        while let Some(Text(key)) = map.next_key()? {
            match key.as_ref() {
                "name" => params.name = Some(map.next_value::<Scalar<'de>>()?),
                "uri" => params.uri = Some(map.next_value::<Scalar<'de>>()?),
                "taskId" => params.task_id = Some(map.next_value::<Scalar<'de>>()?),
                "arguments" => {
                    params.arguments = Some(map.next_value_seed(ArgumentsSeed {
                        build: self.with_arguments,
                    })?)
                }
                "_meta" => params.meta_protocol_version = map.next_value_seed(MetaSeed)?,
                other => {
                    if params.look_alike.is_none() {
                        params.look_alike = look_alike_member(other, PARAMS_KEYS);
                    }
                    map.next_value::<Strict>()?;
                }
            }
            seen.add(key).map_err(de::Error::custom)?;
        }
        Ok(ParamsValue::Object(params))
    }
    forward_scalars!(|| ParamsValue::Other);
}

struct ArgumentsSeed {
    build: bool,
}

impl<'de> DeserializeSeed<'de> for ArgumentsSeed {
    type Value = Arguments;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Arguments, D::Error> {
        if self.build {
            let Tree(tree) = Tree::deserialize(d)?;
            Ok(match tree {
                Value::Object(_) => Arguments::Object(Some(tree)),
                _ => Arguments::Other,
            })
        } else {
            Ok(match Scalar::deserialize(d)? {
                Scalar::Object => Arguments::Object(None),
                _ => Arguments::Other,
            })
        }
    }
}

/// `params._meta`: its protocol version, when it is an object holding a string there.
struct MetaSeed;

seed_is_visitor!(MetaSeed);

impl<'de> Visitor<'de> for MetaSeed {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("_meta")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<String>, A::Error> {
        StrictVisitor.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        let mut seen = KeysSeen::default();
        let mut version = None;
        while let Some(Text(key)) = map.next_key()? {
            if key == META_PROTOCOL_VERSION {
                if let Scalar::Str(v) = map.next_value::<Scalar<'de>>()? {
                    version = Some(v.into_owned());
                }
            } else {
                map.next_value::<Strict>()?;
            }
            seen.add(key).map_err(de::Error::custom)?;
        }
        Ok(version)
    }
    forward_scalars!(|| None);
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
        serde_json::Number::from_f64(v)
            .map(Scalar::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
        StrictVisitor.visit_seq(seq).map(|_| Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
        StrictVisitor.visit_map(map).map(|_| Scalar::Object)
    }
}

/// A JSON value whose objects are checked like every other (`KeysSeen`), built as a tree.
struct Tree(Value);

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Tree, E> {
        Ok(Tree(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Tree, E> {
        Ok(Tree(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Tree, E> {
        Ok(Tree(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Tree, E> {
        serde_json::Number::from_f64(v)
            .map(|n| Tree(Value::Number(n)))
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Tree, E> {
        Ok(Tree(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Tree, E> {
        Ok(Tree(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Tree, E> {
        Ok(Tree(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(Tree(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Tree(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut seen = KeysSeen::default();
        let mut obj = Map::new();
        while let Some(Text(key)) = map.next_key()? {
            let Tree(v) = map.next_value()?;
            let key = key.into_owned();
            seen.add(Cow::Owned(key.clone()))
                .map_err(de::Error::custom)?;
            obj.insert(key, v);
        }
        Ok(Tree(Value::Object(obj)))
    }
}

/// Strict JSON, checked and dropped: objects may not repeat a key, nor hold two keys a
/// lenient reader takes for one.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        if v.is_finite() {
            Ok(Strict)
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut seen = KeysSeen::default();
        while let Some(Text(key)) = map.next_key()? {
            seen.add(key).map_err(de::Error::custom)?;
            map.next_value::<Strict>()?;
        }
        Ok(Strict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::fold;

    fn tool_of(body: &str) -> Result<Option<String>, InspectError> {
        inspect(body.as_bytes()).map(|b| b.messages[0].call.tool.as_deref().map(str::to_string))
    }

    #[test]
    fn reads_a_tool_call() {
        let b = inspect(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#).unwrap();
        assert!(!b.batch);
        let m = &b.messages[0];
        assert_eq!(m.id, Some(7.into()));
        assert_eq!(m.call.tool.as_deref(), Some("echo"));
        assert_eq!(m.routing_name(), Some("echo"));
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
        // About 2 s unoptimised on a slow, busy machine; a quadratic check (5e9 comparisons)
        // takes minutes.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn duplicates_are_found_in_small_and_large_objects_alike() {
        for n in [1, 7, 8, 9, 15, 16, 17, 40] {
            let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":1")).collect();
            let object = |extra: &str| {
                format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a","arguments":{{{},{extra}}}}}}}"#,
                    keys.join(",")
                )
            };
            assert!(inspect(object(r#""other":1"#).as_bytes()).is_ok(), "{n}");
            for dup in [r#""k0":2"#, r#""K0":2"#, r#""k_0":2"#] {
                assert!(
                    matches!(inspect(object(dup).as_bytes()), Err(InspectError::Parse(_))),
                    "{n} keys, then {dup}"
                );
            }
            // The folded form first, then the plain key.
            let folded_first = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"K_0":1,{}}}}}"#,
                keys.join(",")
            );
            assert!(
                matches!(
                    inspect(folded_first.as_bytes()),
                    Err(InspectError::Parse(_))
                ),
                "{n} keys after a folded one"
            );
        }
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

    /// Bodies for the scanner's differential test: JSON-RPC-shaped messages from a small
    /// grammar (member names the filter reads, look-alikes, every kind of value, escapes,
    /// non-ASCII, numbers of every form, deep nesting, whitespace), and byte-level mutations
    /// of them.
    struct Bodies(u64);

    impl Bodies {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
            of[(self.next() % of.len() as u64) as usize]
        }
        fn ws(&mut self) -> &'static str {
            self.pick(&["", "", "", " ", "\n ", "\t", "\r\n"])
        }
        fn string(&mut self) -> String {
            let parts = [
                "a",
                "delete_db",
                "echo",
                "tools/call",
                "x y",
                "\\u0064",
                "\\\"",
                "\\n",
                "é",
                "\u{200b}",
                "\\ud800",
                "\\ud83d\\ude00",
                "\\uD83D\\uDE00",
                "\\udbff\\udfff",
                "\\udc00",
                "\\ud800\\u0041",
                "\\ud7ff\\ue000",
                "\\u00E9",
                "\\u0000\\u001f",
                "\\/\\b\\f\\r\\t",
                "\u{1}",
                "/",
                "~",
                "K",
                "\u{17f}",
                "\u{7f}",
                "\t",
            ];
            let n = self.next() % 4;
            let text: String = (0..n).map(|_| self.pick(&parts)).collect();
            format!("\"{text}\"")
        }
        fn number(&mut self) -> String {
            self.pick(&[
                "0",
                "-0",
                "7",
                "-7",
                "01",
                "1.5",
                "1e3",
                "-1E-2",
                "123456789012345678",
                "-123456789012345678",
                "-999999999999999999",
                "1234567890123456789",
                "-9223372036854775808",
                "18446744073709551615",
                "99999999999999999999",
                "1e400",
                "-",
                "2.",
                "+1",
                ".5",
                "1E3",
            ])
            .to_string()
        }
        fn key(&mut self) -> String {
            // Every member a visitor reads (one added there and forgotten in the scanner
            // shows here), and look-alikes.
            let mut keys: Vec<&str> = ENVELOPE_KEYS
                .iter()
                .chain(PARAMS_KEYS)
                .map(|(k, _)| *k)
                .collect();
            keys.extend([
                META_PROTOCOL_VERSION,
                "Method",
                "params ",
                "na_me",
                "NAME",
                "param\u{17f}",
                "text",
                "sql",
                "SQL",
                "na\\u006de",
                "",
                "a\u{7f}",
            ]);
            let k = self.pick(&keys);
            format!("\"{k}\"")
        }
        fn value(&mut self, depth: u32) -> String {
            let choice = if depth > 20 {
                self.next() % 4
            } else {
                self.next() % 7
            };
            match choice {
                0 => self.string(),
                1 => self.number(),
                2 => self
                    .pick(&["true", "false", "null", "nul", "tru"])
                    .to_string(),
                3 => self
                    .pick(&[
                        "\"2.0\"",
                        "\"tools/call\"",
                        "\"tools/list\"",
                        "\"Tools/Call\"",
                    ])
                    .to_string(),
                4 | 5 => self.object(depth + 1),
                _ => {
                    let n = self.next() % 4;
                    let items: Vec<String> = (0..n).map(|_| self.value(depth + 1)).collect();
                    format!("[{}]", items.join(","))
                }
            }
        }
        fn object(&mut self, depth: u32) -> String {
            let n = self.next() % 6;
            let members: Vec<String> = (0..n)
                .map(|_| {
                    let (k, w1, w2) = (self.key(), self.ws(), self.ws());
                    let v = self.value(depth);
                    format!("{w1}{k}{w2}:{v}")
                })
                .collect();
            format!("{{{}}}", members.join(","))
        }
        fn message(&mut self) -> String {
            let mut members = vec![r#""jsonrpc":"2.0""#.to_string()];
            if !self.next().is_multiple_of(5) {
                members.push(format!(r#""id":{}"#, self.value(18)));
            }
            let method = self.pick(&[
                "tools/call",
                "tools/list",
                "prompts/get",
                "resources/read",
                "tasks/get",
                "ping",
                "tools/call ",
                "notifications/initialized",
            ]);
            members.push(format!(r#""method":"{method}""#));
            if !self.next().is_multiple_of(4) {
                let name = self.string();
                let extra = if self.next().is_multiple_of(2) {
                    format!(",{}:{}", self.key(), self.value(3))
                } else {
                    String::new()
                };
                let args = if self.next().is_multiple_of(5) {
                    self.value(3)
                } else {
                    self.object(3)
                };
                let meta = match self.next() % 4 {
                    0 => self.value(3),
                    1 => format!(r#"{{"{META_PROTOCOL_VERSION}":{}}}"#, self.value(3)),
                    _ => format!(r#"{{"{META_PROTOCOL_VERSION}":"2025-06-18"}}"#),
                };
                members.push(if self.next().is_multiple_of(6) {
                    format!(r#""params":{}"#, self.value(2))
                } else {
                    format!(r#""params":{{"name":{name},"uri":{name},"taskId":{name},"arguments":{args},"_meta":{meta}{extra}}}"#)
                });
            }
            if self.next().is_multiple_of(6) {
                members.push(format!("{}:{}", self.key(), self.value(2)));
            }
            // Shuffle the members a little.
            let at = (self.next() % members.len() as u64) as usize;
            members.rotate_left(at);
            let (w1, w2) = (self.ws(), self.ws());
            format!("{w1}{{{}}}{w2}", members.join(","))
        }
        fn mutated(&mut self, body: &str) -> Vec<u8> {
            let mut bytes = body.as_bytes().to_vec();
            for _ in 0..=(self.next() % 2) {
                if bytes.is_empty() {
                    break;
                }
                let at = (self.next() % bytes.len() as u64) as usize;
                let set = b"{}[]:,\"\\ 0-.eaxtnfE+\x7f\xff\x80";
                let byte = set[(self.next() % set.len() as u64) as usize];
                match self.next() % 3 {
                    0 => drop(bytes.remove(at)),
                    1 => bytes.insert(at, byte),
                    _ => bytes[at] = byte,
                }
            }
            bytes
        }
    }

    #[test]
    fn the_scanner_reads_what_it_reads_exactly_as_the_serde_pass() {
        let mut bodies = Bodies(0x5eed_1234_abcd_9876);
        let (mut scanned, mut total, mut escaped) = (0, 0, 0);
        for i in 0..30_000 {
            let message = bodies.message();
            let body = if i % 3 == 0 {
                bodies.mutated(&message)
            } else {
                message.into_bytes()
            };
            total += 1;
            let Some(top) = scan::scan(&body, false) else {
                continue;
            };
            scanned += 1;
            escaped += usize::from(body.contains(&b'\\'));
            let serde = parse_top(&body, false).unwrap_or_else(|e| {
                panic!(
                    "the scanner read {:?}, serde refuses it: {e:?}",
                    String::from_utf8_lossy(&body)
                )
            });
            assert_eq!(
                body_of(top),
                body_of(serde),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
        // The grammar is mostly what the scanner leaves to serde (floats, escapes and non-ASCII
        // in keys and in the strings it keeps); thousands of bodies still go the fast path.
        assert!(
            scanned * 10 > total,
            "only {scanned} of {total} bodies were scanned"
        );
        // Escapes in the strings the scanner drops keep a body on the fast path: hundreds of
        // the scanned bodies hold one (none would if the scanner left every escape to serde).
        assert!(
            escaped > 100,
            "only {escaped} of the {scanned} scanned bodies had an escape"
        );
        // And the bench's body, and one with arguments the policy reads, are scanned / not.
        let plain = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}"#;
        assert!(scan::scan(plain, false).is_some());
        assert!(scan::scan(plain, true).is_none());
    }

    fn call_with_argument(text: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}","more":["{text}",{{"k":"{text}"}}]}}}}}}"#
        )
    }

    /// The arguments' values are dropped: any text and escapes in them keep a body on the
    /// fast path (code and prose in tool calls have both). What serde alone decides still
    /// goes to it.
    #[test]
    fn dropped_strings_may_hold_any_text_and_escapes() {
        for text in [
            "line one\\nline two\\t\\\"quoted\\\" \\\\ \\/ \\b\\f\\r",
            "caf\u{e9} \u{1F600} \u{7f} \u{200b}",
            "\\u00e9\\u0041\\uFFFF\\uabcd",
            &"fn main() {\\n    println!(\\\"hi\\\");\\n}\\n".repeat(200),
            // Surrogate pairs, as `json.dumps` writes an emoji; the units around them.
            "\\ud83d\\ude00",
            "\\uD83D\\uDE00",
            "\\udbff\\udfff",
            "\\ud7ff\\ue000\\u0000",
        ] {
            let body = call_with_argument(text);
            let scanned = scan::scan(body.as_bytes(), false).expect(&body);
            let serde = parse_top(body.as_bytes(), false).expect(&body);
            assert_eq!(body_of(scanned), body_of(serde), "{body}");
        }
        for serde_decides in [
            "\\ud800\\u0041",
            "\\ud800\\n",
            "\\ud800x",
            "\\ude00\\ud83d",
            "\\ud800",
            "\\udc00",
            "\\x41",
            "\\u12",
            "\\u12g4",
            "tab\there",
        ] {
            let body = call_with_argument(serde_decides);
            assert!(scan::scan(body.as_bytes(), false).is_none(), "{body}");
        }
        // What the filter keeps (the method, the tool, a key) is still read plainly only.
        for kept in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ech\u006f"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\u00e9cho"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"écho"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"t\u0065xt":"x"}}}"#,
            r#"{"jsonrpc":"2.0","id":"\n","method":"ping"}"#,
        ] {
            assert!(scan::scan(kept.as_bytes(), false).is_none(), "{kept}");
        }
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
