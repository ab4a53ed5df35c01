//! PPL-compatible policy: compiled once from JSON at configure time, evaluated per request.
//!
//! A document is one rule or a list of rules; a rule has `allow` and/or `deny` bodies (a body
//! without either key is an `allow`). Bodies combine criteria with `and` (all), `or` (any),
//! `not` (not all) and `nor` (none); several operators in one body must all hold. Access is
//! granted when some allow body matches and no deny body does.

use serde_json::Value;

use crate::short_text::ShortText;
use crate::token::TeClaims;

/// The MCP call being judged, as the inspector extracted it. `None` for requests without a
/// JSON-RPC method (handshake-era GET/DELETE, client responses).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpCall {
    pub method: Option<ShortText>,
    /// `params.name` of a `tools/call`.
    pub tool: Option<ShortText>,
    /// `params.arguments` of a `tools/call`.
    pub arguments: Option<Value>,
}

pub struct PolicyInput<'a> {
    pub claims: &'a TeClaims,
    pub call: &'a McpCall,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Whether any criterion looks at the tool (for `tools/list` filtering).
    pub has_tool_rules: bool,
    /// The keys each `mcp_argument` pointer walks through (decoded segments), so the
    /// inspector can refuse arguments that spell one of them in a way a server may read alike.
    pub argument_paths: Vec<Vec<String>>,
    /// Some `mcp_method` / `mcp_tool` operand has upper-case letters, so even a lower-case call
    /// may be read by a case-insensitive server as a name the policy governs.
    pub upper_case_names: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    allow: Option<Expr>,
    deny: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Vec<Expr>),
    Nor(Vec<Expr>),
    Leaf(Criterion),
}

#[derive(Debug, Clone, PartialEq)]
enum Criterion {
    Accept(bool),
    Reject(bool),
    AuthenticatedUser(bool),
    User(StringMatcher),
    Email(StringMatcher),
    Domain(StringMatcher),
    Groups(ListMatcher),
    Claim(String, ValueMatcher),
    ClientId(StringMatcher),
    McpMethod(StringMatcher),
    McpTool(StringMatcher),
    McpArgument {
        pointer: String,
        matcher: ValueMatcher,
    },
}

/// Several operators in one matcher object must all hold.
#[derive(Debug, Clone, PartialEq)]
pub struct StringMatcher(Vec<StrOp>);

#[derive(Debug, Clone, PartialEq)]
enum StrOp {
    Is(String),
    Not(String),
    Contains(String),
    StartsWith(String),
    EndsWith(String),
    In(NameSet),
    NotIn(NameSet),
}

/// The strings of an `in` / `not_in` list, as written (for the names the policy lists) and
/// ordered by length, then bytes: a look-up is a binary search whose comparisons are nearly
/// all one length check, however long the list.
#[derive(Debug, Clone, PartialEq)]
struct NameSet {
    listed: Vec<String>,
    sorted: Vec<String>,
}

impl NameSet {
    fn new(listed: Vec<String>) -> Self {
        let mut sorted = listed.clone();
        sorted.sort_by(|a, b| (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes())));
        sorted.dedup();
        NameSet { listed, sorted }
    }

    fn contains(&self, s: &str) -> bool {
        self.sorted
            .binary_search_by(|v| (v.len(), v.as_bytes()).cmp(&(s.len(), s.as_bytes())))
            .is_ok()
    }

    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.listed.iter()
    }
}

/// `groups`: `has` (exact member) or string operators that some member must satisfy.
#[derive(Debug, Clone, PartialEq)]
struct ListMatcher {
    has: Vec<String>,
    any: Option<StringMatcher>,
}

/// Claim and argument values: strings use the string matcher; other JSON values compare equal.
#[derive(Debug, Clone, PartialEq)]
enum ValueMatcher {
    Strings(StringMatcher),
    Equals(Value),
}

/// A policy error with the path of the offending field, relative to the policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

fn perr(path: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.to_string(),
        message: message.into(),
    }
}

impl Policy {
    /// Every tool name an `mcp_tool` criterion names exactly (`is`, `in`), in rule order,
    /// duplicates included: the tools the metrics count under their own name.
    pub fn exact_tool_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for rule in &self.rules {
            for body in [&rule.allow, &rule.deny].into_iter().flatten() {
                body.exact_tool_names(&mut names);
            }
        }
        names
    }

    /// Compiles a PPL document. `path` is where the document sits (e.g. `routes[0].policy`).
    pub fn compile(doc: &Value, path: &str) -> Result<Self, PolicyError> {
        let rules = match doc {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| compile_rule(item, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            Value::Object(_) => vec![compile_rule(doc, path)?],
            _ => return Err(perr(path, "a policy is a rule object or a list of rules")),
        };
        let has_tool_rules = rules.iter().any(|r| {
            r.allow.as_ref().is_some_and(Expr::mentions_tool)
                || r.deny.as_ref().is_some_and(Expr::mentions_tool)
        });
        let mut argument_paths = Vec::new();
        for expr in rules
            .iter()
            .flat_map(|r| r.allow.iter().chain(r.deny.iter()))
        {
            expr.argument_paths(&mut argument_paths);
        }
        argument_paths.sort();
        argument_paths.dedup();
        let upper_case_names = rules.iter().any(|r| {
            r.allow.as_ref().is_some_and(Expr::names_upper_case)
                || r.deny.as_ref().is_some_and(Expr::names_upper_case)
        });
        Ok(Self {
            rules,
            has_tool_rules,
            argument_paths,
            upper_case_names,
        })
    }

    pub fn evaluate(&self, input: &PolicyInput<'_>) -> Decision {
        self.evaluate_as(input, Names::Exact)
    }

    /// The outcome without the reasons (for when no authorize record is read): the same
    /// criteria, evaluated the same way, without collecting what each said.
    pub fn evaluate_quiet(&self, input: &PolicyInput<'_>, names: Names) -> Decision {
        self.run(input, names, false)
    }

    /// Evaluates with `mcp_method` and `mcp_tool` compared as a case-insensitive server would
    /// read them; a call this denies but `evaluate` permits is ambiguous.
    pub fn evaluate_as(&self, input: &PolicyInput<'_>, names: Names) -> Decision {
        self.run(input, names, true)
    }

    fn run(&self, input: &PolicyInput<'_>, names: Names, reasons: bool) -> Decision {
        let mut d = Decision::default();
        let ctx = Eval {
            input,
            names,
            reasons,
        };
        for rule in &self.rules {
            if let Some(allow) = &rule.allow {
                let hit = allow.eval(&ctx, &mut d.allow_why_true, &mut d.allow_why_false);
                d.allow |= hit;
            }
            if let Some(deny) = &rule.deny {
                let hit = deny.eval(&ctx, &mut d.deny_why_true, &mut d.deny_why_false);
                d.deny |= hit;
            }
        }
        for list in [
            &mut d.allow_why_true,
            &mut d.allow_why_false,
            &mut d.deny_why_true,
            &mut d.deny_why_false,
        ] {
            list.sort_unstable();
            list.dedup();
        }
        d
    }
}

/// How `mcp_method` and `mcp_tool` compare names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// Byte for byte, as the MCP specification says names compare.
    Exact,
    /// ASCII case-insensitively, as a lenient server might look them up.
    CaseInsensitive,
}

struct Eval<'a, 'b> {
    input: &'a PolicyInput<'b>,
    names: Names,
    /// Collect each criterion's reason (for the authorize record).
    reasons: bool,
}

/// The outcome with the reasons each side reported (for the authorize log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub deny: bool,
    pub allow_why_true: Vec<&'static str>,
    pub allow_why_false: Vec<&'static str>,
    pub deny_why_true: Vec<&'static str>,
    pub deny_why_false: Vec<&'static str>,
}

impl Decision {
    /// Deny wins; no matching allow means deny.
    pub fn permitted(&self) -> bool {
        self.allow && !self.deny
    }
}

fn compile_rule(v: &Value, path: &str) -> Result<Rule, PolicyError> {
    let Value::Object(map) = v else {
        return Err(perr(path, "a rule is an object with `allow` and/or `deny`"));
    };
    if !map.contains_key("allow") && !map.contains_key("deny") {
        // Shorthand used throughout Pomerium's MCP docs: a bare body is an allow rule.
        return Ok(Rule {
            allow: Some(compile_body(v, path)?),
            deny: None,
        });
    }
    let mut rule = Rule {
        allow: None,
        deny: None,
    };
    for (key, body) in map {
        let at = format!("{path}.{key}");
        match key.as_str() {
            "allow" => rule.allow = Some(compile_body(body, &at)?),
            "deny" => rule.deny = Some(compile_body(body, &at)?),
            other => {
                return Err(perr(
                    &at,
                    format!("unknown action {other:?}: use allow or deny"),
                ))
            }
        }
    }
    Ok(rule)
}

fn compile_body(v: &Value, path: &str) -> Result<Expr, PolicyError> {
    let Value::Object(map) = v else {
        return Err(perr(path, "expected an object with and/or/not/nor"));
    };
    if map.is_empty() {
        return Err(perr(path, "empty rule body: use and/or/not/nor"));
    }
    let mut parts = Vec::new();
    for (op, list) in map {
        let at = format!("{path}.{op}");
        let Value::Array(items) = list else {
            return Err(perr(&at, "expected a list of criteria"));
        };
        let children = items
            .iter()
            .enumerate()
            .map(|(i, item)| compile_criterion_or_group(item, &format!("{at}[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        parts.push(match op.as_str() {
            "and" => Expr::And(children),
            "or" => Expr::Or(children),
            "not" => Expr::Not(children),
            "nor" => Expr::Nor(children),
            other => {
                return Err(perr(
                    &at,
                    format!("unknown operator {other:?}: use and, or, not or nor"),
                ))
            }
        });
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Expr::And(parts)
    })
}

fn compile_criterion_or_group(v: &Value, path: &str) -> Result<Expr, PolicyError> {
    let Value::Object(map) = v else {
        return Err(perr(path, "a criterion is an object with one key"));
    };
    if map.len() != 1 {
        return Err(perr(path, "a criterion has exactly one key"));
    }
    let Some((name, value)) = map.iter().next() else {
        return Err(perr(path, "empty criterion"));
    };
    let at = format!("{path}.{name}");
    if matches!(name.as_str(), "and" | "or" | "not" | "nor") {
        // Nested logical operators.
        return compile_body(v, path);
    }
    let c = match name.as_str() {
        "accept" => Criterion::Accept(bool_value(value, &at)?),
        "reject" => Criterion::Reject(bool_value(value, &at)?),
        "authenticated_user" => Criterion::AuthenticatedUser(bool_value(value, &at)?),
        "user" => Criterion::User(StringMatcher::compile(value, &at)?),
        "email" => Criterion::Email(StringMatcher::compile(value, &at)?),
        "domain" => Criterion::Domain(StringMatcher::compile(value, &at)?),
        "groups" => Criterion::Groups(ListMatcher::compile(value, &at)?),
        "client_id" => Criterion::ClientId(StringMatcher::compile(value, &at)?),
        "mcp_method" => Criterion::McpMethod(StringMatcher::compile(value, &at)?),
        "mcp_tool" => Criterion::McpTool(StringMatcher::compile(value, &at)?),
        "mcp_argument" => compile_argument(value, &at)?,
        other => match other.strip_prefix("claim/") {
            Some(claim) if !claim.is_empty() => {
                Criterion::Claim(claim.to_string(), ValueMatcher::compile(value, &at)?)
            }
            _ => return Err(perr(&at, format!("unknown criterion {other:?}"))),
        },
    };
    Ok(Expr::Leaf(c))
}

fn compile_argument(v: &Value, path: &str) -> Result<Criterion, PolicyError> {
    let Value::Object(map) = v else {
        return Err(perr(
            path,
            "expected {pointer: \"/json/pointer\", <matcher>}",
        ));
    };
    let pointer = match map.get("pointer") {
        Some(Value::String(p)) if p.is_empty() || p.starts_with('/') => p.clone(),
        _ => {
            return Err(perr(
                &format!("{path}.pointer"),
                "a JSON pointer such as \"/table\" is required",
            ))
        }
    };
    let mut rest = map.clone();
    rest.remove("pointer");
    Ok(Criterion::McpArgument {
        pointer,
        matcher: ValueMatcher::compile(&Value::Object(rest), path)?,
    })
}

fn bool_value(v: &Value, path: &str) -> Result<bool, PolicyError> {
    v.as_bool()
        .ok_or_else(|| perr(path, "expected true or false"))
}

fn string_list(v: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| perr(&format!("{path}[{i}]"), "expected a string"))
            })
            .collect(),
        _ => Err(perr(path, "expected a list of strings")),
    }
}

impl StringMatcher {
    fn compile(v: &Value, path: &str) -> Result<Self, PolicyError> {
        match v {
            // A bare scalar means `is`.
            Value::String(s) => Ok(Self(vec![StrOp::Is(s.clone())])),
            Value::Object(map) if !map.is_empty() => {
                let mut ops = Vec::new();
                for (op, arg) in map {
                    let at = format!("{path}.{op}");
                    let s = || {
                        arg.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| perr(&at, "expected a string"))
                    };
                    ops.push(match op.as_str() {
                        "is" => StrOp::Is(s()?),
                        "not" => StrOp::Not(s()?),
                        "contains" => StrOp::Contains(s()?),
                        "starts_with" => StrOp::StartsWith(s()?),
                        "ends_with" => StrOp::EndsWith(s()?),
                        "in" => StrOp::In(NameSet::new(string_list(arg, &at)?)),
                        "not_in" => StrOp::NotIn(NameSet::new(string_list(arg, &at)?)),
                        other => {
                            return Err(perr(
                                &at,
                                format!("unknown string operator {other:?}: use is, not, contains, starts_with, ends_with, in, not_in"),
                            ))
                        }
                    });
                }
                Ok(Self(ops))
            }
            _ => Err(perr(path, "expected a string or a string matcher object")),
        }
    }

    fn matches_names(&self, s: &str, names: Names) -> bool {
        match names {
            Names::Exact => self.matches(s),
            Names::CaseInsensitive => self.lowercased().matches(&s.to_ascii_lowercase()),
        }
    }

    fn has_upper_case(&self) -> bool {
        let upper = |v: &String| v.bytes().any(|b| b.is_ascii_uppercase());
        self.0.iter().any(|op| match op {
            StrOp::Is(v)
            | StrOp::Not(v)
            | StrOp::Contains(v)
            | StrOp::StartsWith(v)
            | StrOp::EndsWith(v) => upper(v),
            StrOp::In(vs) | StrOp::NotIn(vs) => vs.iter().any(upper),
        })
    }

    fn lowercased(&self) -> Self {
        let lower = |v: &String| v.to_ascii_lowercase();
        Self(
            self.0
                .iter()
                .map(|op| match op {
                    StrOp::Is(v) => StrOp::Is(lower(v)),
                    StrOp::Not(v) => StrOp::Not(lower(v)),
                    StrOp::Contains(v) => StrOp::Contains(lower(v)),
                    StrOp::StartsWith(v) => StrOp::StartsWith(lower(v)),
                    StrOp::EndsWith(v) => StrOp::EndsWith(lower(v)),
                    StrOp::In(vs) => StrOp::In(NameSet::new(vs.iter().map(lower).collect())),
                    StrOp::NotIn(vs) => StrOp::NotIn(NameSet::new(vs.iter().map(lower).collect())),
                })
                .collect(),
        )
    }

    pub fn matches(&self, s: &str) -> bool {
        self.0.iter().all(|op| match op {
            StrOp::Is(v) => s == v,
            StrOp::Not(v) => s != v,
            StrOp::Contains(v) => s.contains(v.as_str()),
            StrOp::StartsWith(v) => s.starts_with(v.as_str()),
            StrOp::EndsWith(v) => s.ends_with(v.as_str()),
            StrOp::In(vs) => vs.contains(s),
            StrOp::NotIn(vs) => !vs.contains(s),
        })
    }
}

impl ListMatcher {
    fn compile(v: &Value, path: &str) -> Result<Self, PolicyError> {
        let Value::Object(map) = v else {
            return Err(perr(path, "expected {has: <group>} or a string matcher"));
        };
        let mut has = Vec::new();
        let mut rest = serde_json::Map::new();
        for (k, arg) in map {
            if k == "has" {
                match arg {
                    Value::String(s) => has.push(s.clone()),
                    _ => return Err(perr(&format!("{path}.has"), "expected a string")),
                }
            } else {
                rest.insert(k.clone(), arg.clone());
            }
        }
        let any = if rest.is_empty() {
            None
        } else {
            Some(StringMatcher::compile(&Value::Object(rest), path)?)
        };
        Ok(Self { has, any })
    }

    fn matches(&self, groups: &[String]) -> bool {
        self.has.iter().all(|g| groups.contains(g))
            && self
                .any
                .as_ref()
                .is_none_or(|m| groups.iter().any(|g| m.matches(g)))
    }
}

impl ValueMatcher {
    fn compile(v: &Value, path: &str) -> Result<Self, PolicyError> {
        match v {
            // `{is: 10}` / `{is: true}`: JSON equality for non-string values.
            Value::Object(map)
                if map.len() == 1
                    && map
                        .get("is")
                        .is_some_and(|x| !x.is_string() && !x.is_array() && !x.is_object()) =>
            {
                Ok(Self::Equals(map.get("is").cloned().unwrap_or_default()))
            }
            Value::Object(_) | Value::String(_) => {
                Ok(Self::Strings(StringMatcher::compile(v, path)?))
            }
            Value::Bool(_) | Value::Number(_) | Value::Null => Ok(Self::Equals(v.clone())),
            Value::Array(_) => Err(perr(path, "expected a scalar or a string matcher object")),
        }
    }

    /// Arrays match when any element does (a claim such as `groups` or `amr` is a list).
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (_, Value::Array(items)) => items
                .iter()
                .any(|item| !item.is_array() && self.matches(item)),
            (Self::Strings(m), Value::String(s)) => m.matches(s),
            (Self::Equals(want), got) => want == got,
            _ => false,
        }
    }
}

impl Expr {
    fn mentions_tool(&self) -> bool {
        match self {
            Expr::And(c) | Expr::Or(c) | Expr::Not(c) | Expr::Nor(c) => {
                c.iter().any(Expr::mentions_tool)
            }
            Expr::Leaf(c) => matches!(c, Criterion::McpTool(_) | Criterion::McpArgument { .. }),
        }
    }

    fn names_upper_case(&self) -> bool {
        match self {
            Expr::And(c) | Expr::Or(c) | Expr::Not(c) | Expr::Nor(c) => {
                c.iter().any(Expr::names_upper_case)
            }
            Expr::Leaf(Criterion::McpMethod(m) | Criterion::McpTool(m)) => m.has_upper_case(),
            Expr::Leaf(_) => false,
        }
    }

    /// The tool names an `mcp_tool` criterion names exactly (`is`, `in`), into `into`.
    fn exact_tool_names(&self, into: &mut Vec<String>) {
        match self {
            Expr::And(c) | Expr::Or(c) | Expr::Not(c) | Expr::Nor(c) => {
                for e in c {
                    e.exact_tool_names(into);
                }
            }
            Expr::Leaf(Criterion::McpTool(m)) => {
                for op in &m.0 {
                    match op {
                        StrOp::Is(v) => into.push(v.clone()),
                        StrOp::In(vs) => into.extend(vs.iter().cloned()),
                        _ => {}
                    }
                }
            }
            Expr::Leaf(_) => {}
        }
    }

    fn argument_paths(&self, into: &mut Vec<Vec<String>>) {
        match self {
            Expr::And(c) | Expr::Or(c) | Expr::Not(c) | Expr::Nor(c) => {
                c.iter().for_each(|e| e.argument_paths(into))
            }
            Expr::Leaf(Criterion::McpArgument { pointer, .. }) => {
                // RFC 6901: segments after each '/', with `~1` → '/' and `~0` → '~'.
                let segments = pointer
                    .split('/')
                    .skip(1)
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect();
                into.push(segments);
            }
            Expr::Leaf(_) => {}
        }
    }

    fn eval(
        &self,
        input: &Eval<'_, '_>,
        why_true: &mut Vec<&'static str>,
        why_false: &mut Vec<&'static str>,
    ) -> bool {
        // Every child is evaluated (no short circuit) so the log shows every reason: count
        // the hits rather than collect them.
        let mut hits = |children: &[Expr]| -> (usize, usize) {
            let hit = children
                .iter()
                .filter(|c| c.eval(input, why_true, why_false))
                .count();
            (hit, children.len())
        };
        match self {
            Expr::And(c) => {
                let (hit, n) = hits(c);
                hit == n
            }
            Expr::Or(c) => hits(c).0 > 0,
            Expr::Not(c) => {
                let (hit, n) = hits(c);
                hit != n
            }
            Expr::Nor(c) => hits(c).0 == 0,
            Expr::Leaf(criterion) => {
                let (hit, reason) = criterion.eval(input);
                if input.reasons {
                    if hit {
                        why_true.push(reason)
                    } else {
                        why_false.push(reason)
                    }
                }
                hit
            }
        }
    }
}

impl Criterion {
    fn eval(&self, ctx: &Eval<'_, '_>) -> (bool, &'static str) {
        let claims = ctx.input.claims;
        let call = ctx.input.call;
        let ok = |hit: bool, yes: &'static str, no: &'static str| (hit, if hit { yes } else { no });
        match self {
            Criterion::Accept(b) => ok(*b, "accept", "reject"),
            // `reject: true` never matches, so an allow body containing it grants nothing.
            Criterion::Reject(b) => ok(!*b, "accept", "reject"),
            // A service client (client_credentials) holds a valid token but is no user: a
            // policy that lets users in lets no service client through.
            Criterion::AuthenticatedUser(_) if claims.is_service_client() => {
                (false, "user-service-client")
            }
            Criterion::AuthenticatedUser(b) => ok(
                *b && !claims.sub.is_empty(),
                "user-ok",
                "user-unauthenticated",
            ),
            Criterion::User(m) => ok(m.matches(&claims.sub), "user-ok", "user-unauthorized"),
            Criterion::Email(m) => ok(m.matches(&claims.email), "email-ok", "email-unauthorized"),
            Criterion::Domain(m) => {
                let domain = claims
                    .email
                    .rsplit_once('@')
                    .map(|(_, d)| d)
                    .unwrap_or_default();
                ok(
                    !domain.is_empty() && m.matches(domain),
                    "domain-ok",
                    "domain-unauthorized",
                )
            }
            Criterion::Groups(m) => ok(
                m.matches(&claims.groups),
                "groups-ok",
                "groups-unauthorized",
            ),
            Criterion::Claim(name, m) => {
                let value = claim_value(claims, name);
                ok(
                    value.as_ref().is_some_and(|v| m.matches(v)),
                    "claim-ok",
                    "claim-unauthorized",
                )
            }
            Criterion::ClientId(m) => ok(
                m.matches(&claims.client_id),
                "client-id-ok",
                "client-id-unauthorized",
            ),
            Criterion::McpMethod(m) => match &call.method {
                Some(method) => ok(
                    m.matches_names(method, ctx.names),
                    "mcp-method-match",
                    "mcp-method-no-match",
                ),
                None => (false, "mcp-no-method"),
            },
            Criterion::McpTool(m) => match (&call.method, &call.tool) {
                (Some(method), Some(tool)) if method == "tools/call" => ok(
                    m.matches_names(tool, ctx.names),
                    "mcp-tool-match",
                    "mcp-tool-no-match",
                ),
                _ => (false, "mcp-not-a-tool-call"),
            },
            Criterion::McpArgument { pointer, matcher } => match (&call.method, &call.arguments) {
                (Some(method), args) if method == "tools/call" => {
                    let value = args.as_ref().and_then(|a| a.pointer(pointer));
                    ok(
                        value.is_some_and(|v| matcher.matches(v)),
                        "mcp-argument-match",
                        "mcp-argument-no-match",
                    )
                }
                _ => (false, "mcp-not-a-tool-call"),
            },
        }
    }
}

/// Claims the TE carries, by name. Unknown names have no value (and never match).
fn claim_value(claims: &TeClaims, name: &str) -> Option<Value> {
    Some(match name {
        "sub" => claims.sub.clone().into(),
        "email" => claims.email.clone().into(),
        "name" => claims.name.clone().into(),
        "groups" => claims.groups.clone().into(),
        "client_id" => claims.client_id.clone().into(),
        "scope" => claims
            .scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .into(),
        "iss" => claims.iss.clone().into(),
        "sid" => claims.sid.clone().into(),
        "sub_kind" => claims.sub_kind.as_str().into(),
        _ => return None,
    })
}
