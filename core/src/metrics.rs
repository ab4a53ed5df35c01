//! The labelled metrics' pure half: the decision a refusal counts as, the closed list of MCP
//! method labels, label sanitizing, each route's bounded set of tool labels, the counts a
//! worker holds until its once-a-second flush, and how labels travel in a metric's name.
//!
//! proxy-wasm metrics have no tags: the labels are written into the name
//! (`mcp_warden_requests;route=demo;mcp_method_name=tools/call;decision=allowed`) and Envoy
//! takes them out again with the `stats_config.stats_tags` regexes of [`STATS_TAGS`]. A
//! sanitized value never holds `;` or `=`, so a value cannot end its tag early or forge another.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: the tool name look-up of every `tools/call` hashes a short string, and needs no
/// defence against chosen collisions (a table of at most a few hundred names, fixed by the
/// operator and the server).
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The counter of requests, by `route`, `mcp_method_name` and `decision`.
pub const REQUESTS: &str = "mcp_warden_requests";
/// The counter of `tools/call` requests, by `route`, `gen_ai_tool_name` and `decision`.
pub const TOOL_CALLS: &str = "mcp_warden_tool_calls";
/// The histogram of microseconds from the request headers to the decision, by `route` and
/// `decision`.
pub const REQUEST_DURATION: &str = "mcp_warden_request_duration";

/// Envoy's tag extraction for the labelled metrics: `(tag name, regex)`. The first capture
/// group is cut from the name, the second is the value. The tag names are the OpenTelemetry
/// attribute names; Prometheus output turns their dots into `_`.
pub const STATS_TAGS: [(&str, &str); 4] = [
    ("route", "(;route=([^;]*))"),
    ("mcp.method.name", "(;mcp_method_name=([^;]*))"),
    ("gen_ai.tool.name", "(;gen_ai_tool_name=([^;]*))"),
    ("decision", "(;decision=([^;]*))"),
];

/// Bucket boundaries of [`REQUEST_DURATION`], in microseconds.
pub const DURATION_BUCKETS_US: [u64; 13] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000,
];

/// The label for anything outside a closed set, and for values that fail [`sanitize`].
pub const OTHER: &str = "other";

/// A label value longer than this counts as [`OTHER`].
pub const MAX_LABEL_BYTES: usize = 64;

/// How often a route that does not filter `tools/list` has an answer read to learn names.
pub const LEARN_EVERY_SECONDS: i64 = 60;

/// Tool names a route's server listed that one worker counts under their own label, first
/// come (the policy's own names come on top).
pub const MAX_LISTED_TOOLS: usize = 128;

/// How the filter ended a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Decision {
    Allowed,
    DeniedPolicy,
    /// No TE, or a bad, expired or revoked one.
    Unauthenticated,
    /// Malformed JSON-RPC, oversize, headers disagreeing with the body, a body that cannot
    /// be inspected, a method or header the transport refuses.
    Invalid,
    /// No upstream token for the user: none yet, refused, or the provider unavailable.
    UpstreamTokenMissing,
    /// Everything else: the token service or the keys unavailable, a stale revocation feed.
    Error,
}

impl Decision {
    pub const ALL: [Decision; 6] = [
        Decision::Allowed,
        Decision::DeniedPolicy,
        Decision::Unauthenticated,
        Decision::Invalid,
        Decision::UpstreamTokenMissing,
        Decision::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::DeniedPolicy => "denied_policy",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Invalid => "invalid",
            Decision::UpstreamTokenMissing => "upstream_token_missing",
            Decision::Error => "error",
        }
    }

    /// The decision a refusal counts as, by the reason of its reply (`LocalReply::reason`).
    pub fn of_refusal(reason: &str) -> Decision {
        match reason {
            "policy-denied" => Decision::DeniedPolicy,
            "token-missing"
            | "token-revoked"
            | "token-check-budget-spent"
            | "authorization-malformed"
            | "authorization-repeated"
            | "identity-unknown-user" => Decision::Unauthenticated,
            "upstream-token-missing"
            | "upstream-provider-unavailable"
            | "upstream-token-refused"
            | "upstream-token-refused-after-grant" => Decision::UpstreamTokenMissing,
            "method-not-allowed"
            | "method-override"
            | "header-disguised"
            | "origin-not-allowed"
            | "cors-preflight-without-origin" => Decision::Invalid,
            // The token service, the keys, the revocation feed, a route Envoy named that the
            // filter does not know.
            "revocation-feed-stale" | "jwks-unavailable" | "route-unknown" => Decision::Error,
            r if r.starts_with("token-service-") => Decision::Error,
            // Every TE check that failed (`TokenError::reason`).
            r if r.starts_with("token-") => Decision::Unauthenticated,
            // The body and the MCP transport: parse errors, oversize, content type and
            // encoding, header mismatch, session ids, bodies where none belong.
            r if r.starts_with("mcp-") => Decision::Invalid,
            _ => Decision::Error,
        }
    }
}

/// The MCP methods counted under their own `mcp_method_name` (client to server requests and
/// notifications, and the responses a client sends to a server's requests have no method).
pub const MCP_METHODS: [&str; 30] = [
    "initialize",
    "ping",
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
    "server/discover",
    "tasks/get",
    "tasks/result",
    "tasks/list",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/roots/list_changed",
    "notifications/resources/list_changed",
    "notifications/resources/updated",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/elicitation/complete",
    "notifications/tasks/status",
    "sampling/createMessage",
];

/// How many `mcp_method_name` labels there are: the list, `other`, `none`, `unknown`.
pub const METHOD_LABELS: usize = MCP_METHODS.len() + 3;

/// An `mcp_method_name` label: an index into [`MCP_METHODS`], or one of three more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodLabel(u8);

impl MethodLabel {
    /// A method outside the closed list.
    pub const OTHER: MethodLabel = MethodLabel(MCP_METHODS.len() as u8);
    /// A request without a body (GET, DELETE).
    pub const NONE: MethodLabel = MethodLabel(MCP_METHODS.len() as u8 + 1);
    /// A body not read: refused before it (the token check), or not JSON-RPC enough to name
    /// a method.
    pub const UNKNOWN: MethodLabel = MethodLabel(MCP_METHODS.len() as u8 + 2);

    /// The label of a body's JSON-RPC method (`None`: the body named none it could read).
    pub fn of_method(method: Option<&str>) -> MethodLabel {
        let Some(method) = method else {
            return MethodLabel::UNKNOWN;
        };
        MCP_METHODS
            .iter()
            .position(|m| *m == method)
            .map_or(MethodLabel::OTHER, |i| MethodLabel(i as u8))
    }

    /// The label of a request refused before its body was read, by its HTTP method.
    pub fn before_body(http_method: &[u8]) -> MethodLabel {
        match http_method {
            b"GET" | b"DELETE" => MethodLabel::NONE,
            _ => MethodLabel::UNKNOWN,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodLabel::NONE => "none",
            MethodLabel::UNKNOWN => "unknown",
            MethodLabel(i) => MCP_METHODS.get(usize::from(i)).copied().unwrap_or(OTHER),
        }
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub fn is_tools_call(self) -> bool {
        self.as_str() == "tools/call"
    }
}

/// A label value as it may go into a metric name: only `[A-Za-z0-9_./-]`, at most
/// [`MAX_LABEL_BYTES`], not empty; anything else is [`OTHER`].
pub fn sanitize(value: &str) -> &str {
    let fits = !value.is_empty()
        && value.len() <= MAX_LABEL_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'));
    if fits {
        value
    } else {
        OTHER
    }
}

/// One route's tool labels on one worker: the names its policy names exactly, and the first
/// [`MAX_LISTED_TOOLS`] names its server listed in a `tools/list` answer. Index 0 is
/// [`OTHER`].
#[derive(Clone)]
pub struct ToolLabels {
    names: Vec<String>,
    index: HashMap<String, u16, BuildHasherDefault<Fnv>>,
    listed: usize,
    /// Until then no `tools/list` answer is read only to learn names: a route that does not
    /// filter pays for reading one answer a minute at most, not every answer.
    next_learning: i64,
    /// The counts per name index and decision.
    slots: Vec<[Slot; Decision::ALL.len()]>,
}

impl ToolLabels {
    pub fn new(policy_names: &[String]) -> Self {
        let mut labels = ToolLabels {
            names: vec![OTHER.to_string()],
            index: HashMap::default(),
            listed: 0,
            next_learning: i64::MIN,
            slots: vec![[Slot::default(); Decision::ALL.len()]],
        };
        for name in policy_names {
            labels.insert(name);
        }
        labels
    }

    /// Adds a name; `false` when it was known already or cannot be a label.
    fn insert(&mut self, name: &str) -> bool {
        if sanitize(name) == OTHER || self.index.contains_key(name) {
            return false;
        }
        let Ok(i) = u16::try_from(self.names.len()) else {
            return false;
        };
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        self.slots.push([Slot::default(); Decision::ALL.len()]);
        true
    }

    /// A name a `tools/list` answer of the route's server listed.
    pub fn learn(&mut self, name: &str) {
        if self.listed < MAX_LISTED_TOOLS && self.insert(name) {
            self.listed += 1;
        }
    }

    /// Whether a `tools/list` answer could still teach this table a name.
    pub fn may_learn(&self) -> bool {
        self.listed < MAX_LISTED_TOOLS
    }

    /// Whether to read the `tools/list` answer of a route that does not filter, only to learn
    /// its names: while the table takes names, once per [`LEARN_EVERY_SECONDS`].
    pub fn take_learning_turn(&mut self, now: i64) -> bool {
        if !self.may_learn() || now < self.next_learning {
            return false;
        }
        self.next_learning = now.saturating_add(LEARN_EVERY_SECONDS);
        true
    }

    /// The label index of a called tool (0, [`OTHER`], for a name not in the table).
    pub fn of(&self, tool: Option<&str>) -> u16 {
        tool.and_then(|t| self.index.get(t).copied()).unwrap_or(0)
    }

    pub fn name(&self, index: u16) -> &str {
        self.names
            .get(usize::from(index))
            .map_or(OTHER, String::as_str)
    }
}

/// A labelled counter's name: the metric, then `;label=value` for each label (values
/// sanitized).
pub fn labelled_name(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut name = String::from(metric);
    for (label, value) in labels {
        name.push(';');
        name.push_str(label);
        name.push('=');
        name.push_str(sanitize(value));
    }
    name
}

/// A counter of one label set: the counts not yet added to Envoy's, and the metric's id once
/// defined.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub pending: u64,
    pub id: Option<u32>,
}

/// What one worker counted since its last flush, per label set, in tables sized by the config:
/// routes × method labels × decisions, and per route its tool labels × decisions.
#[derive(Default)]
pub struct Tallies {
    /// Index `(route × METHOD_LABELS + method) × decisions + decision`.
    requests: Vec<Slot>,
    /// Per route index (built from the config's routes).
    tools: Vec<ToolLabels>,
}

fn request_index(route: usize, method: MethodLabel, decision: Decision) -> usize {
    (route * METHOD_LABELS + method.index()) * Decision::ALL.len() + decision as usize
}

impl Tallies {
    /// The tables of every route, its tool labels seeded with the names its policy names
    /// exactly.
    pub fn new(route_policies: impl ExactSizeIterator<Item = Vec<String>>) -> Self {
        let routes = route_policies.len();
        Tallies {
            requests: vec![Slot::default(); routes * METHOD_LABELS * Decision::ALL.len()],
            tools: route_policies
                .map(|names| ToolLabels::new(&names))
                .collect(),
        }
    }

    /// Counts one decided request on route `route`; a `tools/call` counts its tool too.
    pub fn count(
        &mut self,
        route: usize,
        method: MethodLabel,
        tool: Option<&str>,
        decision: Decision,
    ) {
        if let Some(slot) = self
            .requests
            .get_mut(request_index(route, method, decision))
        {
            slot.pending += 1;
        }
        if method.is_tools_call() {
            if let Some(t) = self.tools.get_mut(route) {
                let i = usize::from(t.of(tool));
                if let Some(slots) = t.slots.get_mut(i) {
                    slots[decision as usize].pending += 1;
                }
            }
        }
    }

    pub fn learn_tool(&mut self, route: usize, name: &str) {
        if let Some(t) = self.tools.get_mut(route) {
            t.learn(name);
        }
    }

    /// [`ToolLabels::take_learning_turn`] of the route.
    pub fn take_learning_turn(&mut self, route: usize, now: i64) -> bool {
        self.tools
            .get_mut(route)
            .is_some_and(|t| t.take_learning_turn(now))
    }

    /// Hands every label set with counts pending to `add` (its metric name, the count, and
    /// the id slot to fill when the metric is first defined), and clears the counts.
    /// `route_name` names a route index.
    pub fn drain<'a>(
        &mut self,
        route_name: impl Fn(usize) -> &'a str,
        mut add: impl FnMut(&dyn Fn() -> String, u64, &mut Option<u32>),
    ) {
        let per_route = METHOD_LABELS * Decision::ALL.len();
        for (i, slot) in self.requests.iter_mut().enumerate() {
            if slot.pending == 0 {
                continue;
            }
            let (route, rest) = (i / per_route, i % per_route);
            let method = MethodLabel((rest / Decision::ALL.len()) as u8);
            let decision = Decision::ALL[rest % Decision::ALL.len()];
            let name = || {
                labelled_name(
                    REQUESTS,
                    &[
                        ("route", route_name(route)),
                        ("mcp_method_name", method.as_str()),
                        ("decision", decision.as_str()),
                    ],
                )
            };
            add(&name, std::mem::take(&mut slot.pending), &mut slot.id);
        }
        for (route, tools) in self.tools.iter_mut().enumerate() {
            let names = &tools.names;
            for (tool, slots) in tools.slots.iter_mut().enumerate() {
                for (decision, slot) in Decision::ALL.iter().zip(slots.iter_mut()) {
                    if slot.pending == 0 {
                        continue;
                    }
                    let tool_name = names.get(tool).map_or(OTHER, String::as_str);
                    let name = || {
                        labelled_name(
                            TOOL_CALLS,
                            &[
                                ("route", route_name(route)),
                                ("gen_ai_tool_name", tool_name),
                                ("decision", decision.as_str()),
                            ],
                        )
                    };
                    add(&name, std::mem::take(&mut slot.pending), &mut slot.id);
                }
            }
        }
    }

    /// Every label set's slot (for tests).
    #[cfg(test)]
    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.requests
            .iter()
            .chain(self.tools.iter().flat_map(|t| t.slots.iter().flatten()))
    }
}

/// The histogram's name for a route and a decision.
pub fn duration_name(route: &str, decision: Decision) -> String {
    labelled_name(
        REQUEST_DURATION,
        &[("route", route), ("decision", decision.as_str())],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use serde_json::json;

    #[test]
    fn every_refusal_reason_maps_to_the_decision_an_operator_expects() {
        let cases = [
            ("policy-denied", Decision::DeniedPolicy),
            ("token-missing", Decision::Unauthenticated),
            ("token-bad-signature", Decision::Unauthenticated),
            ("token-expired", Decision::Unauthenticated),
            ("token-malformed", Decision::Unauthenticated),
            ("token-unknown-key", Decision::Unauthenticated),
            ("token-wrong-audience", Decision::Unauthenticated),
            ("token-revoked", Decision::Unauthenticated),
            ("token-check-budget-spent", Decision::Unauthenticated),
            ("authorization-malformed", Decision::Unauthenticated),
            ("authorization-repeated", Decision::Unauthenticated),
            ("identity-unknown-user", Decision::Unauthenticated),
            ("mcp-parse-error", Decision::Invalid),
            ("mcp-invalid-request", Decision::Invalid),
            ("mcp-oversize", Decision::Invalid),
            ("mcp-header-mismatch", Decision::Invalid),
            ("mcp-header-repeated", Decision::Invalid),
            ("mcp-content-type", Decision::Invalid),
            ("mcp-content-encoding", Decision::Invalid),
            ("mcp-body-not-allowed", Decision::Invalid),
            ("mcp-ambiguous-name", Decision::Invalid),
            ("mcp-session-unknown", Decision::Invalid),
            ("mcp-session-repeated", Decision::Invalid),
            ("mcp-session-in-query", Decision::Invalid),
            ("method-not-allowed", Decision::Invalid),
            ("method-override", Decision::Invalid),
            ("header-disguised", Decision::Invalid),
            ("origin-not-allowed", Decision::Invalid),
            ("cors-preflight-without-origin", Decision::Invalid),
            ("upstream-token-missing", Decision::UpstreamTokenMissing),
            (
                "upstream-provider-unavailable",
                Decision::UpstreamTokenMissing,
            ),
            ("upstream-token-refused", Decision::UpstreamTokenMissing),
            (
                "upstream-token-refused-after-grant",
                Decision::UpstreamTokenMissing,
            ),
            ("token-service-unavailable", Decision::Error),
            ("token-service-busy", Decision::Error),
            ("token-service-unconfigured", Decision::Error),
            ("token-service-bad-answer", Decision::Error),
            ("jwks-unavailable", Decision::Error),
            ("revocation-feed-stale", Decision::Error),
            ("route-unknown", Decision::Error),
            ("something-new", Decision::Error),
        ];
        for (reason, decision) in cases {
            assert_eq!(Decision::of_refusal(reason), decision, "{reason}");
        }
    }

    #[test]
    fn decisions_have_the_documented_label_values() {
        let values: Vec<&str> = Decision::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(
            values,
            [
                "allowed",
                "denied_policy",
                "unauthenticated",
                "invalid",
                "upstream_token_missing",
                "error"
            ]
        );
    }

    #[test]
    fn known_methods_count_under_their_name_and_others_under_one_label() {
        assert_eq!(
            MethodLabel::of_method(Some("tools/call")).as_str(),
            "tools/call"
        );
        assert_eq!(
            MethodLabel::of_method(Some("notifications/initialized")).as_str(),
            "notifications/initialized"
        );
        assert_eq!(
            MethodLabel::of_method(Some("initialize")).as_str(),
            "initialize"
        );
        assert_eq!(
            MethodLabel::of_method(Some("tools/explode")).as_str(),
            "other"
        );
        assert_eq!(MethodLabel::of_method(Some("Tools/Call")).as_str(), "other");
        assert_eq!(MethodLabel::of_method(None).as_str(), "unknown");
        assert_eq!(MethodLabel::before_body(b"GET").as_str(), "none");
        assert_eq!(MethodLabel::before_body(b"DELETE").as_str(), "none");
        assert_eq!(MethodLabel::before_body(b"POST").as_str(), "unknown");
        assert!(MethodLabel::of_method(Some("tools/call")).is_tools_call());
        assert!(!MethodLabel::OTHER.is_tools_call());
        // Every listed method is its own label, and a valid one.
        for m in MCP_METHODS {
            assert_eq!(MethodLabel::of_method(Some(m)).as_str(), m);
            assert_eq!(sanitize(m), m);
        }
    }

    #[test]
    fn label_values_outside_the_safe_alphabet_or_too_long_are_other() {
        assert_eq!(sanitize("get_weather"), "get_weather");
        assert_eq!(sanitize("ns.tool/v1-x"), "ns.tool/v1-x");
        assert_eq!(sanitize(&"a".repeat(64)), "a".repeat(64));
        assert_eq!(sanitize(&"a".repeat(65)), "other");
        assert_eq!(sanitize(""), "other");
        assert_eq!(sanitize("a;decision=allowed"), "other");
        assert_eq!(sanitize("a=b"), "other");
        assert_eq!(sanitize("has space"), "other");
        assert_eq!(sanitize("ünïcode"), "other");
        assert_eq!(sanitize("quote\""), "other");
    }

    #[test]
    fn names_carry_each_label_and_a_hostile_value_cannot_forge_one() {
        assert_eq!(
            labelled_name(
                REQUESTS,
                &[
                    ("route", "demo"),
                    ("mcp_method_name", "tools/call"),
                    ("decision", "allowed")
                ]
            ),
            "mcp_warden_requests;route=demo;mcp_method_name=tools/call;decision=allowed"
        );
        assert_eq!(
            labelled_name(TOOL_CALLS, &[("gen_ai_tool_name", "x;decision=allowed")]),
            "mcp_warden_tool_calls;gen_ai_tool_name=other"
        );
        assert_eq!(
            duration_name("demo", Decision::Unauthenticated),
            "mcp_warden_request_duration;route=demo;decision=unauthenticated"
        );
    }

    #[test]
    fn tool_labels_are_the_policy_names_and_the_first_listed_ones() {
        let policy = Policy::compile(
            &json!([
                {"allow": {"and": [{"mcp_tool": {"in": ["echo", "add"]}}]}},
                {"deny": {"or": [{"mcp_tool": "delete_all"}, {"mcp_tool": {"starts_with": "admin_"}}]}}
            ]),
            "policy",
        )
        .unwrap();
        assert_eq!(policy.exact_tool_names(), ["echo", "add", "delete_all"]);
        let mut t = ToolLabels::new(&policy.exact_tool_names());
        assert_eq!(t.name(t.of(Some("echo"))), "echo");
        assert_eq!(t.name(t.of(Some("delete_all"))), "delete_all");
        assert_eq!(t.of(Some("admin_x")), 0);
        assert_eq!(t.name(t.of(Some("admin_x"))), "other");
        assert_eq!(t.of(None), 0);
        t.learn("listed");
        t.learn("bad name");
        assert_eq!(t.name(t.of(Some("listed"))), "listed");
        assert_eq!(t.of(Some("bad name")), 0);
        // The policy's names do not use up the listed ones; a repeat is not counted twice.
        t.learn("echo");
        t.learn("listed");
        for i in 0..200 {
            t.learn(&format!("tool{i}"));
        }
        assert!(!t.may_learn());
        assert_eq!(t.name(t.of(Some("tool126"))), "tool126");
        assert_eq!(t.of(Some("tool127")), 0);
        assert_eq!(t.name(t.of(Some("echo"))), "echo");
    }

    #[test]
    fn a_route_that_does_not_filter_has_an_answer_read_once_a_minute_while_it_learns() {
        let mut t = ToolLabels::new(&[]);
        assert!(t.take_learning_turn(1_000));
        assert!(!t.take_learning_turn(1_000), "not every answer");
        assert!(!t.take_learning_turn(1_000 + LEARN_EVERY_SECONDS - 1));
        assert!(t.take_learning_turn(1_000 + LEARN_EVERY_SECONDS));
        for i in 0..MAX_LISTED_TOOLS {
            t.learn(&format!("tool_{i}"));
        }
        assert!(
            !t.take_learning_turn(i64::MAX),
            "a full table reads no answer"
        );
    }

    #[test]
    fn tallies_count_per_label_set_and_drain_once_with_names() {
        let mut t = Tallies::new([vec!["echo".to_string()]].into_iter());
        let call = MethodLabel::of_method(Some("tools/call"));
        t.count(0, call, Some("echo"), Decision::Allowed);
        t.count(0, call, Some("echo"), Decision::Allowed);
        t.count(0, call, Some("secret"), Decision::DeniedPolicy);
        t.count(0, MethodLabel::UNKNOWN, None, Decision::Unauthenticated);
        t.learn_tool(0, "listed");
        t.count(0, call, Some("listed"), Decision::Allowed);
        let mut seen = Vec::new();
        t.drain(
            |_| "demo",
            |name, n, id| {
                seen.push((name(), n));
                *id = Some(7);
            },
        );
        seen.sort();
        assert_eq!(
            seen,
            [
                ("mcp_warden_requests;route=demo;mcp_method_name=tools/call;decision=allowed".to_string(), 3),
                ("mcp_warden_requests;route=demo;mcp_method_name=tools/call;decision=denied_policy".to_string(), 1),
                ("mcp_warden_requests;route=demo;mcp_method_name=unknown;decision=unauthenticated".to_string(), 1),
                ("mcp_warden_tool_calls;route=demo;gen_ai_tool_name=echo;decision=allowed".to_string(), 2),
                ("mcp_warden_tool_calls;route=demo;gen_ai_tool_name=listed;decision=allowed".to_string(), 1),
                ("mcp_warden_tool_calls;route=demo;gen_ai_tool_name=other;decision=denied_policy".to_string(), 1),
            ]
        );
        // Drained: nothing is handed on again until counted again, and the ids stay.
        let mut again = 0;
        t.drain(|_| "demo", |_, _, _| again += 1);
        assert_eq!(again, 0);
        assert!(t.slots().all(|s| s.pending == 0));
        assert_eq!(t.slots().filter(|s| s.id == Some(7)).count(), 6);
    }
}
