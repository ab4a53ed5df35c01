//! The per-call judgement on MCP server routes: inspect the body, check the routing headers,
//! evaluate the route's policy for every message, and say what to answer. Pure: the filter
//! gathers the inputs and carries out the verdict.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::config::{DenyStyle, Route};
use crate::content_type;
use crate::jsonrpc::{inspect_with, Body, InspectError};
use crate::mcp_headers::{self, RoutingHeaders, HEADER_MISMATCH};
use crate::names::{fold, is_folded};
use crate::policy::{Decision, McpCall, Names, PolicyInput};
pub use crate::reply::jsonrpc_error;
use crate::reply::LocalReply;
use crate::short_text::ShortText;
use crate::token::TeClaims;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
/// Server-defined error: the gateway's policy refused the call.
pub const FORBIDDEN: i64 = -32003;

/// What the filter read of the request besides the body.
#[derive(Debug, Default, Clone)]
pub struct CallHead {
    pub method: ShortText,
    pub content_type: Option<ShortText>,
    pub content_encoding: Option<ShortText>,
    pub routing: RoutingHeaders,
    pub request_id: ShortText,
    /// A header the judgement reads that came more than once (its lower-case name): the
    /// filter would read one copy and a server perhaps another, so it is never judged.
    pub repeated: Option<&'static str>,
}

impl CallHead {
    /// Keeps a header the judgement reads (`content-type`, `content-encoding`,
    /// `mcp-protocol-version`, `mcp-method`, `mcp-name`; lower case, as Envoy gives names),
    /// or marks it repeated when it came before. Other names are ignored.
    pub fn record_header(&mut self, name: &[u8], value: ShortText) {
        let (slot, name) = match name {
            b"content-type" => (&mut self.content_type, "content-type"),
            b"content-encoding" => (&mut self.content_encoding, "content-encoding"),
            b"mcp-protocol-version" => (&mut self.routing.protocol_version, "mcp-protocol-version"),
            b"mcp-method" => (&mut self.routing.method, "mcp-method"),
            b"mcp-name" => (&mut self.routing.name, "mcp-name"),
            _ => return,
        };
        if slot.is_some() && self.repeated.is_none() {
            self.repeated = Some(name);
        }
        *slot = Some(value);
    }
}

/// The verdict on one HTTP request.
#[derive(Debug)]
pub struct Verdict {
    /// `None`: forward. `Some`: answer with this instead.
    pub reply: Option<LocalReply>,
    pub log: AuthorizeLog,
    /// The JSON-RPC id of a lone `tools/list` request whose result should be filtered.
    pub tools_list_id: Option<Value>,
}

/// What one decision adds to the authorize log line. The caller's identity and the request id
/// are the filter's already; they are joined in only when the line is rendered (`render`), so a
/// record nobody reads costs no copies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthorizeLog {
    pub mcp_method: Option<ShortText>,
    pub mcp_tool: Option<ShortText>,
    pub mcp_tool_parameters: Option<Value>,
    pub batch_size: usize,
    pub allow: bool,
    pub allow_why_true: Vec<&'static str>,
    pub allow_why_false: Vec<&'static str>,
    pub deny: bool,
    pub deny_why_true: Vec<&'static str>,
    pub deny_why_false: Vec<&'static str>,
    /// Why the request was refused before the policy could judge it (parse error, ...).
    pub error: Option<&'static str>,
}

/// Who and what a rendered line is about, besides the decision.
pub struct LogSubject<'a> {
    pub request_id: &'a str,
    pub route: &'a str,
    pub claims: &'a TeClaims,
}

impl AuthorizeLog {
    /// The line as compact JSON.
    pub fn render(&self, subject: &LogSubject<'_>, duration_micros: u64) -> String {
        self.render_after("", subject, duration_micros)
    }

    /// `prefix` followed by the record: compact JSON, empty fields left out (`allow` and
    /// `deny` always shown), in one buffer sized for a typical line (about 550 bytes), so a
    /// log line needs no second copy. Written by hand, not by serde: every request renders it
    /// while the record is read (Envoy's log at info, or `authorize_filter_state`), and
    /// serde's escaping pass over every key and value cost twice as much. The tests hold it to
    /// serde's output for the same fields.
    pub fn render_after(
        &self,
        prefix: &str,
        subject: &LogSubject<'_>,
        duration_micros: u64,
    ) -> String {
        let claims = subject.claims;
        let mut out = String::with_capacity(prefix.len() + LINE_CAPACITY);
        out.push_str(prefix);
        out.push_str("{\"request-id\":");
        json_string(&mut out, subject.request_id);
        out.push_str(",\"route\":");
        json_string(&mut out, subject.route);
        out.push_str(",\"user\":");
        json_string(&mut out, &claims.sub);
        if !claims.email.is_empty() {
            out.push_str(",\"email\":");
            json_string(&mut out, &claims.email);
        }
        json_list(
            &mut out,
            ",\"groups\":",
            claims.groups.iter().map(String::as_str),
        );
        if !claims.client_id.is_empty() {
            out.push_str(",\"client-id\":");
            json_string(&mut out, &claims.client_id);
        }
        // The caller is a client acting for itself (client_credentials), not a user.
        if claims.is_service_client() {
            out.push_str(",\"service-client\":true");
        }
        if let Some(method) = &self.mcp_method {
            out.push_str(",\"mcp-method\":");
            json_string(&mut out, method);
        }
        if let Some(tool) = &self.mcp_tool {
            out.push_str(",\"mcp-tool\":");
            json_string(&mut out, tool);
        }
        if let Some(parameters) = &self.mcp_tool_parameters {
            // Any JSON: serde's compact form (`Display`), as the rest of the line.
            out.push_str(",\"mcp-tool-parameters\":");
            let _ = write!(out, "{parameters}");
        }
        if self.batch_size != 0 {
            out.push_str(",\"batch-size\":");
            push_decimal(&mut out, self.batch_size as u64);
        }
        decision_fields(
            &mut out,
            "allow",
            self.allow,
            &self.allow_why_true,
            &self.allow_why_false,
        );
        decision_fields(
            &mut out,
            "deny",
            self.deny,
            &self.deny_why_true,
            &self.deny_why_false,
        );
        if let Some(error) = self.error {
            out.push_str(",\"error\":");
            json_string(&mut out, error);
        }
        // Microseconds shown as `"1.500ms"`.
        out.push_str(",\"duration\":\"");
        push_decimal(&mut out, duration_micros / 1000);
        out.push('.');
        let fraction = duration_micros % 1000;
        for digit in [fraction / 100, fraction / 10 % 10, fraction % 10] {
            out.push(char::from(b'0' + digit as u8));
        }
        out.push_str("ms\"}");
        out
    }

    /// Whether the request went through.
    pub fn permitted(&self) -> bool {
        self.error.is_none() && self.allow && !self.deny
    }
}

/// Room for an authorize record without growing: most are 500 to 650 bytes.
const LINE_CAPACITY: usize = 768;

/// `text` as a JSON string. Printable ASCII without `"` or `\\` (the usual: ids, names,
/// reasons), which JSON never escapes, is copied as it is, found eight bytes at a time; the
/// rest is escaped by serde_json, as `Value`s are.
fn json_string(out: &mut String, text: &str) {
    if crate::jsonrpc::plain_run(text.as_bytes()) == text.len() {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else if let Ok(quoted) = serde_json::to_string(text) {
        out.push_str(&quoted);
    }
}

/// `key` and the items as a JSON array, unless there are none (the field is left out).
fn json_list<'t>(out: &mut String, key: &str, items: impl Iterator<Item = &'t str>) {
    let mut first = true;
    for item in items {
        out.push_str(if first { key } else { "," });
        if first {
            out.push('[');
            first = false;
        }
        json_string(out, item);
    }
    if !first {
        out.push(']');
    }
}

/// `"<name>":<bool>`, then its `-why-true` and `-why-false` reasons when there are any.
fn decision_fields(
    out: &mut String,
    name: &str,
    value: bool,
    why_true: &[&str],
    why_false: &[&str],
) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str(if value { "\":true" } else { "\":false" });
    for (suffix, why) in [("-why-true", why_true), ("-why-false", why_false)] {
        if !why.is_empty() {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str(suffix);
            json_list(out, "\":", why.iter().copied());
        }
    }
}

/// `n` in decimal, without `fmt`'s machinery.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    for d in digits.iter().skip(at) {
        out.push(char::from(*d));
    }
}

fn error_reply(status: u32, reason: &'static str, body: Value) -> LocalReply {
    LocalReply::json(status, reason, body.to_string())
}

/// Refusal before the body could be judged (oversize, parse error, ...).
pub fn refuse(
    head: &CallHead,
    status: u32,
    code: i64,
    reason: &'static str,
    message: &str,
) -> Verdict {
    let log = AuthorizeLog {
        error: Some(reason),
        ..AuthorizeLog::default()
    };
    Verdict {
        reply: Some(error_reply(
            status,
            reason,
            jsonrpc_error(None, code, message, &head.request_id),
        )),
        log,
        tools_list_id: None,
    }
}

/// A judged header sent twice: a reader that takes the first copy and one that takes the
/// last would see two requests. (Envoy joins a repeated `Content-Type` into one value with a
/// comma, which `content_type::judge` refuses.)
fn refuse_repeated(head: &CallHead, name: &str) -> Verdict {
    let (status, code, reason) = match name {
        "content-type" | "content-encoding" => (415, INVALID_REQUEST, "mcp-content-type"),
        _ => (400, HEADER_MISMATCH, "mcp-header-repeated"),
    };
    refuse(
        head,
        status,
        code,
        reason,
        &format!("the {name} header may be sent only once"),
    )
}

/// A GET or DELETE whose body turned up after the headers: refused, never forwarded.
pub fn refuse_unexpected_body(head: &CallHead) -> Verdict {
    refuse(
        head,
        400,
        INVALID_REQUEST,
        "mcp-body-not-allowed",
        &format!("{} requests on an MCP endpoint carry no body", head.method),
    )
}

/// Judges a request without a body to read (handshake-era GET stream, DELETE): the policy
/// sees no method, so only identity criteria can allow it.
pub fn judge_bodiless(route: &Route, claims: &TeClaims, head: &CallHead) -> Verdict {
    if let Some(name) = head.repeated {
        return refuse_repeated(head, name);
    }
    if head.routing.method.is_some() || head.routing.name.is_some() {
        // No body names a method here: a server that routes by the header would run what the
        // header says, unjudged.
        return refuse(
            head,
            400,
            HEADER_MISMATCH,
            "mcp-header-mismatch",
            &format!(
                "Mcp-Method / Mcp-Name on a {} request, which has no body to agree with",
                head.method
            ),
        );
    }
    let call = McpCall::default();
    let decision = route.policy.evaluate(&PolicyInput {
        claims,
        call: &call,
    });
    let permitted = decision.permitted();
    let mut log = AuthorizeLog::default();
    record(&mut log, decision, true);
    let reply = (!permitted).then(|| {
        error_reply(
            403,
            "policy-denied",
            jsonrpc_error(
                None,
                FORBIDDEN,
                "mcp-warden policy denies this request",
                &head.request_id,
            ),
        )
    });
    Verdict {
        reply,
        log,
        tools_list_id: None,
    }
}

/// Judges a complete POST body.
pub fn judge_body(route: &Route, claims: &TeClaims, head: &CallHead, body: &[u8]) -> Verdict {
    judge_body_with(route, claims, head, body, true)
}

/// `judge_body`; `reasons`: collect each criterion's reason for the authorize record (without,
/// the record has the outcome, the call and no reasons, and costs less to make).
pub fn judge_body_with(
    route: &Route,
    claims: &TeClaims,
    head: &CallHead,
    body: &[u8],
    reasons: bool,
) -> Verdict {
    let refuse_with =
        |status, code, reason, message: &str| refuse(head, status, code, reason, message);
    if let Some(name) = head.repeated {
        return refuse_repeated(head, name);
    }
    if let Some(encoding) = head
        .content_encoding
        .as_deref()
        .filter(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return refuse_with(
            415,
            INVALID_REQUEST,
            "mcp-content-encoding",
            &format!("request bodies with Content-Encoding {encoding:?} cannot be inspected; send them uncompressed"),
        );
    }
    let content_types: &[&str] = match head.content_type.as_deref() {
        Some(ct) => &[ct],
        None => &[],
    };
    match content_type::judge(content_types) {
        Ok(()) => {}
        Err(p @ content_type::Problem::NotJson) => {
            return refuse_with(400, PARSE_ERROR, "mcp-content-type", &p.message())
        }
        Err(p) => return refuse_with(415, INVALID_REQUEST, "mcp-content-type", &p.message()),
    }
    // Tool arguments are built only for a reader: an `mcp_argument` criterion or the log.
    let with_arguments = !route.policy.argument_paths.is_empty() || route.log_tool_parameters;
    let mut parsed: Body = match inspect_with(body, with_arguments) {
        Ok(b) => b,
        Err(e @ InspectError::Parse(_)) => {
            return refuse_with(
                400,
                PARSE_ERROR,
                e.reason(),
                &format!("parse error: {}", e.message()),
            )
        }
        Err(e @ InspectError::Invalid(_)) => {
            return refuse_with(
                400,
                INVALID_REQUEST,
                e.reason(),
                &format!("invalid request: {}", e.message()),
            )
        }
    };
    if !parsed.batch {
        if let Err(why) = mcp_headers::check(&head.routing, &parsed.messages[0]) {
            let mut v = refuse_with(400, HEADER_MISMATCH, "mcp-header-mismatch", &why);
            if let Some(reply) = v.reply.as_mut() {
                let id = parsed.messages[0].id.as_ref();
                reply.body = jsonrpc_error(id, HEADER_MISMATCH, &why, &head.request_id).to_string();
            }
            return v;
        }
    } else if head.routing.method.is_some() || head.routing.name.is_some() {
        // Batches exist only before the routing headers did: headers naming one call of many
        // would describe the batch wrongly.
        return refuse_with(
            400,
            HEADER_MISMATCH,
            "mcp-header-mismatch",
            "Mcp-Method / Mcp-Name cannot describe a batch",
        );
    }

    let mut log = AuthorizeLog {
        batch_size: if parsed.batch {
            parsed.messages.len()
        } else {
            0
        },
        ..AuthorizeLog::default()
    };
    // The message the log describes: the first denied one of a batch, so the log says why.
    let mut shown: Option<usize> = None;
    for (index, message) in parsed.messages.iter().enumerate() {
        let input = PolicyInput {
            claims,
            call: &message.call,
        };
        let decision = if reasons {
            route.policy.evaluate(&input)
        } else {
            route.policy.evaluate_quiet(&input, Names::Exact)
        };
        if let Some(why) = ambiguity(route, &input, &decision) {
            let mut v = refuse_with(400, INVALID_REQUEST, "mcp-ambiguous-name", &why);
            v.log.mcp_method = message.call.method.clone();
            v.log.mcp_tool = message.call.tool.clone();
            return v;
        }
        if !decision.permitted() && shown.is_none() {
            shown = Some(index);
        }
        record(&mut log, decision, index == 0);
    }
    let all_permitted = shown.is_none();
    let tools_list_id = match &mut parsed.messages[..] {
        [m] if all_permitted && !parsed.batch && m.call.method.as_deref() == Some("tools/list") => {
            m.id.take()
        }
        _ => None,
    };
    // The log takes the described call's names: the messages are not needed after this.
    if let Some(m) = parsed.messages.get_mut(shown.unwrap_or(0)) {
        if route.log_tool_parameters {
            log.mcp_tool_parameters = m
                .call
                .arguments
                .as_ref()
                .map(|a| redact(a, &route.redact_parameters));
        }
        log.mcp_method = m.call.method.take();
        log.mcp_tool = m.call.tool.take();
    }
    // One verdict for the whole request: a batch with any denied element is denied whole
    // (`record` made `allow` true only if every element was allowed).

    if all_permitted {
        return Verdict {
            reply: None,
            log,
            tools_list_id,
        };
    }
    let message = match (&log.mcp_method, &log.mcp_tool) {
        (Some(m), Some(t)) if m == "tools/call" => format!("mcp-warden policy denies tool {t:?}"),
        (Some(m), _) => format!("mcp-warden policy denies {m}"),
        _ => "mcp-warden policy denies this request".to_string(),
    };
    let (status, code) = match route.deny_style {
        DenyStyle::Forbidden => (403, FORBIDDEN),
        DenyStyle::JsonRpc200 => (200, INVALID_PARAMS),
    };
    let body = if parsed.batch {
        Value::Array(
            parsed
                .messages
                .iter()
                .filter(|m| m.id.is_some())
                .map(|m| jsonrpc_error(m.id.as_ref(), code, &message, &head.request_id))
                .collect(),
        )
    } else {
        jsonrpc_error(
            parsed.messages[0].id.as_ref(),
            code,
            &message,
            &head.request_id,
        )
    };
    Verdict {
        reply: Some(error_reply(status, "policy-denied", body)),
        log,
        tools_list_id: None,
    }
}

/// Why a call the policy permits could still mean something it denies to a lenient server:
/// an argument key the policy inspects, spelled differently (case, whitespace, invisible
/// characters), or a method or tool name that only an exact comparison lets through.
fn ambiguity(route: &Route, input: &PolicyInput<'_>, decision: &Decision) -> Option<String> {
    if !decision.permitted() {
        // Refused anyway; the denial is the clearer answer.
        return None;
    }
    let call = input.call;
    if let Some(arguments) = &call.arguments {
        for path in &route.policy.argument_paths {
            if let Some(key) = look_alike_key(arguments, path) {
                return Some(format!(
                    "argument key {key:?} differs from a key this route's policy inspects only by case, whitespace or invisible characters"
                ));
            }
        }
    }
    let has_upper = |s: &Option<ShortText>| {
        s.as_deref()
            .is_some_and(|s| s.bytes().any(|b| b.is_ascii_uppercase()))
    };
    if (has_upper(&call.method) || has_upper(&call.tool) || route.policy.upper_case_names)
        && !route
            .policy
            .evaluate_quiet(input, Names::CaseInsensitive)
            .permitted()
    {
        return Some(format!(
            "{} differs from a name this route's policy denies only by case",
            call.tool
                .as_deref()
                .map(|t| format!("tool name {t:?}"))
                .unwrap_or_else(|| format!("method {:?}", call.method.as_deref().unwrap_or("")))
        ));
    }
    None
}

/// A key along `path` (pointer segments) that folds to the segment without being it.
fn look_alike_key<'a>(arguments: &'a Value, path: &[String]) -> Option<&'a str> {
    let mut node = arguments;
    for segment in path {
        let Value::Object(map) = node else {
            return None;
        };
        let folded = fold(segment);
        // Keys that are their own fold need no folding to compare.
        let alike = |k: &String| {
            k != segment
                && if is_folded(k) {
                    *k == folded
                } else {
                    fold(k) == folded
                }
        };
        if let Some(key) = map.keys().find(|k| alike(k)) {
            return Some(key);
        }
        node = map.get(segment)?;
    }
    None
}

/// Whether the caller could call `tool` (for `tools/list` filtering). Arguments are unknown at
/// listing time, and a name the inspector would refuse is never callable.
pub fn may_call_tool(route: &Route, claims: &TeClaims, tool: &str) -> bool {
    let call = McpCall {
        method: Some("tools/call".into()),
        tool: Some(tool.into()),
        arguments: None,
    };
    crate::names::is_valid_tool_name(tool)
        && route
            .policy
            .evaluate_quiet(
                &PolicyInput {
                    claims,
                    call: &call,
                },
                Names::Exact,
            )
            .permitted()
}

/// Merges one message's decision into the request's log line (`first`: the request's first
/// message, whose decision starts the line).
fn record(log: &mut AuthorizeLog, d: Decision, first: bool) {
    if first {
        log.allow = d.allow;
        log.deny = d.deny;
        log.allow_why_true = d.allow_why_true;
        log.allow_why_false = d.allow_why_false;
        log.deny_why_true = d.deny_why_true;
        log.deny_why_false = d.deny_why_false;
        return;
    }
    log.allow &= d.allow;
    log.deny |= d.deny;
    for (into, from) in [
        (&mut log.allow_why_true, &d.allow_why_true),
        (&mut log.allow_why_false, &d.allow_why_false),
        (&mut log.deny_why_true, &d.deny_why_true),
        (&mut log.deny_why_false, &d.deny_why_false),
    ] {
        for r in from {
            if !into.contains(r) {
                into.push(r);
            }
        }
    }
}

/// Replaces the values of configured keys (at any depth) with `"[redacted]"`.
pub fn redact(value: &Value, keys: &[String]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if keys.iter().any(|r| r == k) {
                        Value::String("[redacted]".into())
                    } else {
                        redact(v, keys)
                    };
                    (k.clone(), v)
                })
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| redact(v, keys)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CompiledConfig;
    use crate::token::Audience;
    use serde_json::json;

    // The line as serde wrote it before `render_after` was written by hand: the oracle the
    // hand-written one is held to, byte for byte.
    use serde::Serialize;
    #[derive(Serialize)]
    struct Line<'a> {
        #[serde(rename = "request-id")]
        request_id: &'a str,
        route: &'a str,
        user: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        email: &'a str,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        groups: &'a [String],
        #[serde(rename = "client-id", skip_serializing_if = "str::is_empty")]
        client_id: &'a str,
        /// The caller is a client acting for itself (client_credentials), not a user.
        #[serde(rename = "service-client", skip_serializing_if = "is_false")]
        service_client: bool,
        #[serde(rename = "mcp-method", skip_serializing_if = "Option::is_none")]
        mcp_method: Option<&'a str>,
        #[serde(rename = "mcp-tool", skip_serializing_if = "Option::is_none")]
        mcp_tool: Option<&'a str>,
        #[serde(
            rename = "mcp-tool-parameters",
            skip_serializing_if = "Option::is_none"
        )]
        mcp_tool_parameters: Option<&'a Value>,
        #[serde(rename = "batch-size", skip_serializing_if = "is_zero")]
        batch_size: usize,
        allow: bool,
        #[serde(rename = "allow-why-true", skip_serializing_if = "<[_]>::is_empty")]
        allow_why_true: &'a [&'static str],
        #[serde(rename = "allow-why-false", skip_serializing_if = "<[_]>::is_empty")]
        allow_why_false: &'a [&'static str],
        deny: bool,
        #[serde(rename = "deny-why-true", skip_serializing_if = "<[_]>::is_empty")]
        deny_why_true: &'a [&'static str],
        #[serde(rename = "deny-why-false", skip_serializing_if = "<[_]>::is_empty")]
        deny_why_false: &'a [&'static str],
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'static str>,
        duration: Millis,
    }

    fn is_zero(n: &usize) -> bool {
        *n == 0
    }

    fn is_false(b: &bool) -> bool {
        !*b
    }

    /// Microseconds shown as `"1.500ms"`.
    struct Millis(u64);

    impl Serialize for Millis {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&format_args!("{}.{:03}ms", self.0 / 1000, self.0 % 1000))
        }
    }

    fn rendered_by_serde(log: &AuthorizeLog, subject: &LogSubject<'_>, micros: u64) -> String {
        let c = subject.claims;
        serde_json::to_string(&Line {
            request_id: subject.request_id,
            route: subject.route,
            user: &c.sub,
            email: &c.email,
            groups: &c.groups,
            client_id: &c.client_id,
            service_client: c.is_service_client(),
            mcp_method: log.mcp_method.as_deref(),
            mcp_tool: log.mcp_tool.as_deref(),
            mcp_tool_parameters: log.mcp_tool_parameters.as_ref(),
            batch_size: log.batch_size,
            allow: log.allow,
            allow_why_true: &log.allow_why_true,
            allow_why_false: &log.allow_why_false,
            deny: log.deny,
            deny_why_true: &log.deny_why_true,
            deny_why_false: &log.deny_why_false,
            error: log.error,
            duration: Millis(micros),
        })
        .unwrap()
    }

    #[test]
    fn the_line_is_what_serde_would_write() {
        const TEXTS: [&str; 9] = [
            "",
            "plain-id_1.2",
            "with \"quotes\"",
            "back\\slash",
            "ctl\u{1}\n\t\u{1f}",
            "ünïcödé ✓ 𝄞",
            "del\u{7f} </script>",
            "a",
            "x y",
        ];
        const REASONS: [&str; 4] = ["user-ok", "mcp-tool-ok", "odd \"reason\"", "ok"];
        let durations = [0, 1, 999, 1000, 1500, 12_345_678, u64::MAX];
        let mut seen = 0;
        for i in 0..(TEXTS.len() * 7) {
            let text = |k: usize| TEXTS[(i + k) % TEXTS.len()];
            let reasons = |k: usize| -> Vec<&'static str> {
                REASONS[..(i + k) % (REASONS.len() + 1)].to_vec()
            };
            let mut c = claims();
            c.sub = text(0).into();
            c.email = text(1).into();
            c.client_id = text(2).into();
            c.groups = (0..i % 3).map(|g| text(3 + g).to_string()).collect();
            if i % 4 == 1 {
                c.sub_kind = crate::token::SubjectKind::Client;
            }
            let log = AuthorizeLog {
                mcp_method: (i % 5 != 0).then(|| text(4).into()),
                mcp_tool: (i % 3 != 0).then(|| text(5).into()),
                mcp_tool_parameters: (i % 2 == 0)
                    .then(|| json!({"q": text(6), "n": i, "nested": {"k": [text(7), null, 1.5]}})),
                batch_size: [0, 1, 3, 100][i % 4],
                allow: i % 2 == 1,
                allow_why_true: reasons(0),
                allow_why_false: reasons(1),
                deny: i % 3 == 2,
                deny_why_true: reasons(2),
                deny_why_false: reasons(3),
                error: (i % 6 == 5).then_some("parse_error"),
            };
            let subject = LogSubject {
                request_id: text(8),
                route: text(2),
                claims: &c,
            };
            let micros = durations[i % durations.len()];
            let want = rendered_by_serde(&log, &subject, micros);
            assert_eq!(log.render(&subject, micros), want);
            assert_eq!(
                log.render_after("mcp-warden: authorize ", &subject, micros),
                format!("mcp-warden: authorize {want}")
            );
            seen += 1;
        }
        assert_eq!(seen, 63);
    }

    fn route(extra: Value) -> Route {
        let mut r = json!({
            "name": "db",
            "resource": "http://h/mcp",
            "policy": [
                {"allow": {"and": [{"domain": "company.com"}]}},
                {"deny": {"or": [{"mcp_tool": {"starts_with": "delete_"}}]}}
            ],
            "log_tool_parameters": true,
            "redact_parameters": ["password"]
        });
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        let c = json!({"version": 1, "issuer": "http://i", "jwks_static": {"keys": [{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}, "routes": [r]});
        CompiledConfig::from_json(c.to_string().as_bytes())
            .unwrap()
            .routes
            .remove(0)
    }

    fn claims() -> TeClaims {
        TeClaims {
            iss: "http://i".into(),
            sub: "ann@company.com".into(),
            aud: Audience::One("http://h/mcp".into()),
            jti: String::new(),
            client_id: "cli".into(),
            scope: String::new(),
            sid: String::new(),
            gid: String::new(),
            email: "ann@company.com".into(),
            name: String::new(),
            groups: vec!["eng".into()],
            sub_kind: Default::default(),
        }
    }

    fn head() -> CallHead {
        CallHead {
            method: "POST".into(),
            content_type: Some("application/json; charset=utf-8".into()),
            request_id: "req-1".into(),
            ..CallHead::default()
        }
    }

    fn call(tool: &str, id: i64) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"q":"x","password":"hunter2"}}}}}}"#
        )
    }

    #[test]
    fn allowed_call_passes_and_logs() {
        let v = judge_body(
            &route(json!({})),
            &claims(),
            &head(),
            call("read_db", 4).as_bytes(),
        );
        assert!(v.reply.is_none());
        assert!(v.log.permitted());
        assert_eq!(v.log.mcp_tool.as_deref(), Some("read_db"));
        assert_eq!(v.log.allow_why_true, vec!["domain-ok"]);
        assert_eq!(
            v.log.mcp_tool_parameters,
            Some(json!({"q": "x", "password": "[redacted]"}))
        );
        let c = claims();
        let subject = LogSubject {
            request_id: "req-1",
            route: "db",
            claims: &c,
        };
        let line: Value = serde_json::from_str(&v.log.render(&subject, 1500)).unwrap();
        assert_eq!(line["request-id"], "req-1");
        assert_eq!(line["route"], "db");
        assert_eq!(line["duration"], "1.500ms");
        assert_eq!(line["allow"], true);
        assert_eq!(line["deny"], false);
        assert_eq!(line["mcp-tool"], "read_db");
        // Empty fields are left out: the line stays short.
        assert!(line.get("error").is_none() && line.get("deny-why-true").is_none());
        assert!(line.get("batch-size").is_none());
    }

    #[test]
    fn the_log_names_a_service_client() {
        let route = route(json!({"policy": {"allow": {"and": [{"authenticated_user": true}]}}}));
        let mut c = claims();
        c.sub = "client:nightly-report".into();
        c.client_id = "nightly-report".into();
        c.sub_kind = crate::token::SubjectKind::Client;
        let v = judge_body(&route, &c, &head(), call("read_db", 4).as_bytes());
        assert!(!v.log.permitted());
        assert_eq!(v.log.allow_why_false, vec!["user-service-client"]);
        let subject = LogSubject {
            request_id: "req-1",
            route: "db",
            claims: &c,
        };
        let line: Value = serde_json::from_str(&v.log.render(&subject, 1500)).unwrap();
        assert_eq!(line["user"], "client:nightly-report");
        assert_eq!(line["client-id"], "nightly-report");
        assert_eq!(line["service-client"], true);
        // A user's line does not carry the field.
        let line: Value = serde_json::from_str(&v.log.render(
            &LogSubject {
                request_id: "req-1",
                route: "db",
                claims: &claims(),
            },
            1500,
        ))
        .unwrap();
        assert!(line.get("service-client").is_none());
    }

    #[test]
    fn denied_call_gets_403_with_id_and_request_id() {
        let v = judge_body(
            &route(json!({})),
            &claims(),
            &head(),
            call("delete_db", 9).as_bytes(),
        );
        let reply = v.reply.unwrap();
        assert_eq!(reply.status, 403);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["id"], 9);
        assert_eq!(body["error"]["code"], FORBIDDEN);
        assert_eq!(body["error"]["data"]["request-id"], "req-1");
        assert!(v.log.deny && v.log.deny_why_true.contains(&"mcp-tool-match"));
        // Pomerium-compatible shape.
        let v = judge_body(
            &route(json!({"deny_response": "jsonrpc_200"})),
            &claims(),
            &head(),
            call("delete_db", 9).as_bytes(),
        );
        let reply = v.reply.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&reply.body).unwrap()["error"]["code"],
            INVALID_PARAMS
        );
    }

    #[test]
    fn the_record_of_a_batch_is_the_same_with_or_without_reasons() {
        // The middle call is not allowed (and not denied): the record must say so whatever
        // comes after it.
        let body = format!(
            "[{},{},{}]",
            call("read_db", 1),
            call("write_db", 2),
            call("read_db", 3)
        );
        let r = route(json!({"policy": {"allow": {"and": [{"mcp_tool": {"is": "read_db"}}]}}}));
        let full = judge_body_with(&r, &claims(), &head(), body.as_bytes(), true);
        let quiet = judge_body_with(&r, &claims(), &head(), body.as_bytes(), false);
        assert_eq!(
            (full.log.allow, full.log.deny),
            (quiet.log.allow, quiet.log.deny)
        );
        assert!(!quiet.log.permitted() && !full.log.permitted());
        assert!(quiet.log.allow_why_true.is_empty());
    }

    #[test]
    fn batch_hiding_a_denied_call_is_denied_whole() {
        let body = format!("[{},{}]", call("read_db", 1), call("delete_db", 2));
        let v = judge_body(&route(json!({})), &claims(), &head(), body.as_bytes());
        let reply = v.reply.unwrap();
        assert_eq!(reply.status, 403);
        let errors: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(errors.as_array().unwrap().len(), 2);
        assert_eq!(
            v.log.mcp_tool.as_deref(),
            Some("delete_db"),
            "the log names the denied call"
        );
        assert_eq!(v.log.batch_size, 2);
    }

    #[test]
    fn unreadable_requests_are_refused() {
        let r = route(json!({}));
        let status = |h: CallHead, body: &str| {
            judge_body(&r, &claims(), &h, body.as_bytes())
                .reply
                .map(|x| x.status)
        };
        assert_eq!(
            status(
                head(),
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_db","name":"delete_db"}}"#
            ),
            Some(400)
        );
        assert_eq!(
            status(
                CallHead {
                    content_type: Some("text/plain".into()),
                    ..head()
                },
                &call("read_db", 1)
            ),
            Some(400)
        );
        assert_eq!(
            status(
                CallHead {
                    content_type: None,
                    ..head()
                },
                &call("read_db", 1)
            ),
            Some(400)
        );
        assert_eq!(
            status(
                CallHead {
                    content_encoding: Some("gzip".into()),
                    ..head()
                },
                &call("read_db", 1)
            ),
            Some(415)
        );
        let mismatch = CallHead {
            routing: RoutingHeaders {
                protocol_version: Some("2026-07-28".into()),
                method: Some("tools/call".into()),
                name: Some("read_db".into()),
            },
            ..head()
        };
        let v = judge_body(&r, &claims(), &mismatch, call("delete_db", 3).as_bytes());
        let reply = v.reply.unwrap();
        assert_eq!(reply.status, 400);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            (body["id"].clone(), body["error"]["code"].clone()),
            (json!(3), json!(HEADER_MISMATCH))
        );
        let v = judge_body(&r, &claims(), &head(), b"{");
        assert_eq!(
            serde_json::from_str::<Value>(&v.reply.unwrap().body).unwrap()["error"]["code"],
            PARSE_ERROR
        );
    }

    #[test]
    fn names_a_lenient_server_reads_alike_are_refused() {
        let r = route(json!({}));
        let status = |body: &str| {
            let v = judge_body(&r, &claims(), &head(), body.as_bytes());
            v.reply.map(|x| {
                let code = serde_json::from_str::<Value>(&x.body).unwrap()["error"]["code"].clone();
                (x.status, code)
            })
        };
        let refused = Some((400, json!(INVALID_REQUEST)));
        // Method and tool look-alikes (inspector), and case variants of a denied prefix (policy).
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call ","params":{"name":"delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\tdelete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"Delete_db"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"DELETE_DB"}}"#,
        ] {
            assert_eq!(status(body), refused, "{body}");
        }
        // A lower-case call against a policy that names the tool in upper case.
        let camel = route(json!({"policy": [
            {"allow": {"and": [{"domain": "company.com"}]}},
            {"deny": {"or": [{"mcp_tool": {"is": "DeleteDB"}}]}}
        ]}));
        let v = judge_body(&camel, &claims(), &head(), call("deletedb", 1).as_bytes());
        assert_eq!(v.reply.map(|r| r.status), Some(400));
        let v = judge_body(&camel, &claims(), &head(), call("DeleteDB", 1).as_bytes());
        assert_eq!(v.reply.map(|r| r.status), Some(403));
        // Exact names are judged as before.
        assert_eq!(status(&call("delete_db", 1)).map(|s| s.0), Some(403));
        assert_eq!(status(&call("Read_DB", 1)), None);

        // Argument keys the policy inspects, spelled another way.
        let guarded = route(json!({"policy": [
            {"allow": {"and": [{"domain": "company.com"}]}},
            {"deny": {"or": [{"mcp_argument": {"pointer": "/query/sql", "starts_with": "DROP"}}]}}
        ]}));
        let judge = |args: Value| {
            let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"db","arguments": args}});
            judge_body(&guarded, &claims(), &head(), body.to_string().as_bytes())
                .reply
                .map(|x| x.status)
        };
        assert_eq!(judge(json!({"query": {"sql": "DROP TABLE x"}})), Some(403));
        assert_eq!(judge(json!({"query": {"sql": "SELECT 1"}})), None);
        for sneaky in [
            json!({"Query": {"sql": "DROP TABLE x"}}),
            json!({"query": {"SQL": "DROP TABLE x"}}),
            json!({"query": {"sql ": "DROP TABLE x"}}),
            json!({"query": {"s\u{200b}ql": "DROP TABLE x"}}),
            json!({"query": {"sql": "SELECT 1", "Sql": "DROP TABLE x"}}),
        ] {
            assert_eq!(judge(sneaky.clone()), Some(400), "{sneaky}");
        }
        // Keys the policy does not inspect are the server's business, unless two of them
        // collide for a lenient reader.
        assert_eq!(
            judge(json!({"query": {"sql": "SELECT 1"}, "Other": 1})),
            None
        );
        assert_eq!(
            judge(json!({"query": {"sql": "SELECT 1"}, "Other": 1, "other": 2})),
            Some(400)
        );
    }

    #[test]
    fn listing_shows_only_callable_well_formed_tools() {
        let r = route(json!({}));
        assert!(may_call_tool(&r, &claims(), "read_db"));
        assert!(!may_call_tool(&r, &claims(), "delete_db"));
        assert!(!may_call_tool(&r, &claims(), "read db"));
        assert!(!may_call_tool(&r, &claims(), ""));
    }

    #[test]
    fn tools_list_is_marked_for_filtering_and_bodiless_requests_use_identity_only() {
        let r = route(json!({}));
        let v = judge_body(
            &r,
            &claims(),
            &head(),
            br#"{"jsonrpc":"2.0","id":"L","method":"tools/list"}"#,
        );
        assert!(v.reply.is_none());
        assert_eq!(v.tools_list_id, Some(json!("L")));
        assert!(judge_bodiless(&r, &claims(), &head()).reply.is_none());
        let mut outsider = claims();
        outsider.email = "x@other.com".into();
        assert_eq!(
            judge_bodiless(&r, &outsider, &head()).reply.unwrap().status,
            403
        );
    }
}
