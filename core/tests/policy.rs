//! Policy language: every criterion and matcher, the examples from Pomerium's MCP docs, and
//! compile errors that name the field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use warden_core::policy::{McpCall, Names, Policy, PolicyInput};
use warden_core::token::{Audience, SubjectKind, TeClaims};

fn claims(email: &str, groups: &[&str]) -> TeClaims {
    TeClaims {
        iss: "http://issuer".into(),
        sub: email.into(),
        aud: Audience::One("http://h/mcp".into()),
        jti: "j".into(),
        client_id: "inspector".into(),
        scope: "mcp read".into(),
        sid: "s".into(),
        gid: String::new(),
        email: email.into(),
        name: "N".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        sub_kind: Default::default(),
    }
}

fn tool_call(tool: &str, args: Value) -> McpCall {
    McpCall {
        method: Some("tools/call".into()),
        tool: Some(tool.into()),
        arguments: Some(args),
    }
}

fn method(m: &str) -> McpCall {
    McpCall {
        method: Some(m.into()),
        tool: None,
        arguments: None,
    }
}

fn yaml_policy(yaml: &str) -> Policy {
    let doc: Value = serde_yaml::from_str(yaml).unwrap();
    Policy::compile(&doc, "policy").unwrap()
}

/// Every check also holds the quiet evaluation (no reasons, for when no record is read) to
/// the same outcome.
fn permits(p: &Policy, c: &TeClaims, call: &McpCall) -> bool {
    let input = PolicyInput { claims: c, call };
    let full = p.evaluate(&input);
    let quiet = p.evaluate_quiet(&input, Names::Exact);
    assert_eq!((full.allow, full.deny), (quiet.allow, quiet.deny));
    assert!(quiet.allow_why_true.is_empty() && quiet.deny_why_false.is_empty());
    full.permitted()
}

#[test]
fn pomerium_example_domain_and_tool_prefix() {
    // Route example from "Exposing Internal MCP Servers" (bare body = allow).
    let p = yaml_policy(
        "and:\n- domain:\n    is: company.com\n- mcp_tool:\n    starts_with: 'read_'\n",
    );
    let alice = claims("alice@company.com", &[]);
    assert!(permits(&p, &alice, &tool_call("read_file", json!({}))));
    assert!(!permits(&p, &alice, &tool_call("write_file", json!({}))));
    assert!(!permits(
        &p,
        &claims("eve@evil.com", &[]),
        &tool_call("read_file", json!({}))
    ));
    // mcp_tool is false for anything but tools/call, so this allow-list blocks tools/list.
    let d = p.evaluate(&PolicyInput {
        claims: &alice,
        call: &method("tools/list"),
    });
    assert!(!d.permitted());
    assert!(d.allow_why_false.contains(&"mcp-not-a-tool-call"));
}

#[test]
fn pomerium_example_email_and_tool_is() {
    let p = yaml_policy(
        "allow:\n  and:\n    - email:\n        is: analyst@company.com\n    - mcp_tool:\n        is: database_query\n",
    );
    let analyst = claims("analyst@company.com", &[]);
    let d = p.evaluate(&PolicyInput {
        claims: &analyst,
        call: &tool_call("database_query", json!({})),
    });
    assert!(d.permitted());
    assert_eq!(d.allow_why_true, vec!["email-ok", "mcp-tool-match"]);
    let d = p.evaluate(&PolicyInput {
        claims: &analyst,
        call: &tool_call("admin_function", json!({})),
    });
    assert!(!d.permitted());
    assert_eq!(d.allow_why_false, vec!["mcp-tool-no-match"]);
    assert!(!permits(
        &p,
        &claims("intern@company.com", &[]),
        &tool_call("database_query", json!({}))
    ));
}

#[test]
fn pomerium_example_email_suffix_tool_in_groups_has() {
    let p = yaml_policy(
        "allow:\n  and:\n    - email:\n        ends_with: '@company.com'\n    - mcp_tool:\n        in: ['database_query', 'list_tables', 'describe_table']\n    - groups:\n        has: 'data-analysts'\n",
    );
    let ok = claims("bo@company.com", &["data-analysts", "staff"]);
    assert!(permits(&p, &ok, &tool_call("list_tables", json!({}))));
    assert!(!permits(&p, &ok, &tool_call("drop_table", json!({}))));
    assert!(!permits(
        &p,
        &claims("bo@company.com", &["staff"]),
        &tool_call("list_tables", json!({}))
    ));
    assert!(!permits(
        &p,
        &claims("bo@other.com", &["data-analysts"]),
        &tool_call("list_tables", json!({}))
    ));
}

#[test]
fn pomerium_example_domain_only_allows_any_method() {
    let p = yaml_policy("allow:\n  and:\n    - domain:\n        is: trusted-domain.com\n");
    assert!(permits(
        &p,
        &claims("a@trusted-domain.com", &[]),
        &method("tools/list")
    ));
    assert!(!permits(
        &p,
        &claims("a@untrusted.com", &[]),
        &method("tools/list")
    ));
}

#[test]
fn deny_wins_and_no_allow_means_deny() {
    // "Only analysts at company.com may call database_query; nobody may call delete_*".
    let p = Policy::compile(
        &json!([
            {"allow": {"and": [{"domain": "company.com"}, {"groups": {"has": "analysts"}}, {"mcp_tool": "database_query"}]}},
            {"allow": {"or": [{"mcp_method": {"in": ["initialize", "notifications/initialized", "tools/list", "ping"]}}]}},
            {"deny": {"or": [{"mcp_tool": {"starts_with": "delete_"}}]}}
        ]),
        "policy",
    )
    .unwrap();
    let analyst = claims("a@company.com", &["analysts"]);
    assert!(permits(
        &p,
        &analyst,
        &tool_call("database_query", json!({}))
    ));
    assert!(permits(&p, &analyst, &method("tools/list")));
    assert!(!permits(
        &p,
        &analyst,
        &tool_call("delete_table", json!({}))
    ));
    assert!(!permits(&p, &analyst, &tool_call("other", json!({}))));
    assert!(!permits(
        &p,
        &claims("a@company.com", &[]),
        &tool_call("database_query", json!({}))
    ));
    let d = p.evaluate(&PolicyInput {
        claims: &analyst,
        call: &tool_call("delete_table", json!({})),
    });
    assert!(d.deny && d.deny_why_true.contains(&"mcp-tool-match"));
    assert!(p.has_tool_rules);
    let empty = Policy::compile(&json!([]), "policy").unwrap();
    assert!(!permits(&empty, &analyst, &method("tools/list")));
}

#[test]
fn logical_operators() {
    let c = claims("a@x.com", &["g"]);
    let call = method("ping");
    let t = json!({"email": "a@x.com"});
    let f = json!({"email": "b@x.com"});
    let check = |body: Value, want: bool| {
        let p = Policy::compile(&json!({ "allow": body }), "p").unwrap();
        assert_eq!(permits(&p, &c, &call), want, "{body}");
    };
    check(json!({"and": [t, t]}), true);
    check(json!({"and": [t, f]}), false);
    check(json!({"or": [f, t]}), true);
    check(json!({"or": [f, f]}), false);
    check(json!({"not": [t, f]}), true); // not all
    check(json!({"not": [t, t]}), false);
    check(json!({"nor": [f, f]}), true); // none
    check(json!({"nor": [f, t]}), false);
    check(json!({"and": [t], "or": [f]}), false); // operators in one body all apply
    check(json!({"and": [{"or": [f, t]}, {"not": [f]}]}), true); // nesting
}

#[test]
fn criteria_and_matchers() {
    let c = claims("ann@corp.example", &["eng", "oncall-db"]);
    let call = tool_call(
        "query",
        json!({"db": "prod", "limit": 10, "opts": {"tables": ["a", "b"]}}),
    );
    let check = |criterion: Value, want: bool| {
        let p = Policy::compile(&json!({"allow": {"and": [criterion]}}), "p").unwrap();
        assert_eq!(permits(&p, &c, &call), want, "{criterion}");
    };
    check(json!({"authenticated_user": true}), true);
    check(json!({"accept": true}), true);
    check(json!({"reject": true}), false);
    check(json!({"user": "ann@corp.example"}), true);
    check(json!({"email": {"is": "ann@corp.example"}}), true);
    check(json!({"email": {"not": "ann@corp.example"}}), false);
    check(json!({"email": {"contains": "@corp"}}), true);
    check(
        json!({"email": {"starts_with": "ann", "ends_with": ".example"}}),
        true,
    );
    check(
        json!({"email": {"starts_with": "ann", "ends_with": ".com"}}),
        false,
    );
    check(json!({"email": {"in": ["x@y", "ann@corp.example"]}}), true);
    check(json!({"email": {"not_in": ["ann@corp.example"]}}), false);
    check(json!({"domain": {"is": "corp.example"}}), true);
    check(json!({"groups": {"has": "eng"}}), true);
    check(json!({"groups": {"has": "sales"}}), false);
    check(json!({"groups": {"starts_with": "oncall-"}}), true);
    check(json!({"claim/name": "N"}), true);
    check(json!({"claim/scope": "read"}), true);
    check(json!({"claim/groups": {"in": ["eng"]}}), true);
    check(json!({"claim/unknown": "x"}), false);
    check(json!({"client_id": {"is": "inspector"}}), true);
    check(json!({"mcp_method": "tools/call"}), true);
    check(json!({"mcp_tool": "query"}), true);
    check(json!({"mcp_tool": "Query"}), false);
    check(
        json!({"mcp_argument": {"pointer": "/db", "is": "prod"}}),
        true,
    );
    check(
        json!({"mcp_argument": {"pointer": "/db", "not": "prod"}}),
        false,
    );
    check(
        json!({"mcp_argument": {"pointer": "/limit", "is": 10}}),
        true,
    );
    check(
        json!({"mcp_argument": {"pointer": "/limit", "is": 11}}),
        false,
    );
    check(json!({"mcp_argument": {"pointer": "/db", "is": 10}}), false);
    check(
        json!({"mcp_argument": {"pointer": "/opts/tables", "in": ["b"]}}),
        true,
    );
    check(
        json!({"mcp_argument": {"pointer": "/missing", "is": "x"}}),
        false,
    );
}

#[test]
fn invalid_policies_name_the_field() {
    let cases = [
        (
            json!({"allow": {"and": [{"emial": "x"}]}}),
            "p.allow.and[0].emial",
        ),
        (
            json!({"allow": {"and": [{"email": {"equals": "x"}}]}}),
            "p.allow.and[0].email.equals",
        ),
        (
            json!({"allow": {"and": [{"email": 5}]}}),
            "p.allow.and[0].email",
        ),
        (
            json!({"allow": {"and": [{"mcp_tool": {"in": "x"}}]}}),
            "p.allow.and[0].mcp_tool.in",
        ),
        (json!({"allow": {"xor": []}}), "p.allow.xor"),
        (
            json!({"permit": {"and": []}, "deny": {"or": []}}),
            "p.permit",
        ),
        (json!({"allow": {"and": {"email": "x"}}}), "p.allow.and"),
        (
            json!({"allow": {"and": [{"email": "x", "user": "y"}]}}),
            "p.allow.and[0]",
        ),
        (
            json!({"allow": {"and": [{"authenticated_user": "yes"}]}}),
            "p.allow.and[0].authenticated_user",
        ),
        (
            json!({"allow": {"and": [{"mcp_argument": {"is": "x"}}]}}),
            "p.allow.and[0].mcp_argument.pointer",
        ),
        (json!([{"allow": {"and": []}}, 7]), "p[1]"),
        (json!("allow"), "p"),
    ];
    for (doc, path) in cases {
        let e = Policy::compile(&doc, "p").unwrap_err();
        assert_eq!(e.path, path, "{doc}: {}", e.message);
    }
}

/// A client_credentials TE: the service client `nightly-report`, with its configured identity.
fn service_client() -> TeClaims {
    let mut c = claims("nightly-report@svc.example.com", &["reporting"]);
    c.sub = "client:nightly-report".into();
    c.client_id = "nightly-report".into();
    c.sid = String::new();
    c.sub_kind = SubjectKind::Client;
    c
}

#[test]
fn a_policy_that_lets_users_in_lets_no_service_client_through() {
    let svc = service_client();
    let user = claims("ann@corp.example", &["reporting"]);
    let call = tool_call("report", json!({}));
    let users_only = yaml_policy("allow: {and: [{authenticated_user: true}]}");
    assert!(permits(&users_only, &user, &call));
    assert!(!permits(&users_only, &svc, &call));
    let d = users_only.evaluate(&PolicyInput {
        claims: &svc,
        call: &call,
    });
    assert_eq!(d.allow_why_false, vec!["user-service-client"]);
    // `not authenticated_user` is true for it: a deny on it shuts service clients out.
    let no_services = yaml_policy(
        "- allow: {and: [{groups: {has: reporting}}]}\n- deny: {not: [{authenticated_user: true}]}",
    );
    assert!(permits(&no_services, &user, &call));
    assert!(!permits(&no_services, &svc, &call));
}

#[test]
fn identity_criteria_judge_a_service_client_as_they_judge_a_user() {
    let svc = service_client();
    let call = tool_call("report", json!({"db": "sales"}));
    let check = |criterion: Value, want: bool| {
        let p = Policy::compile(&json!({"allow": {"and": [criterion]}}), "p").unwrap();
        assert_eq!(permits(&p, &svc, &call), want, "{criterion}");
    };
    check(json!({"groups": {"has": "reporting"}}), true);
    check(json!({"groups": {"has": "admins"}}), false);
    check(json!({"email": "nightly-report@svc.example.com"}), true);
    check(json!({"domain": "svc.example.com"}), true);
    check(json!({"client_id": "nightly-report"}), true);
    check(json!({"user": "client:nightly-report"}), true);
    check(json!({"mcp_tool": "report"}), true);
    check(
        json!({"mcp_argument": {"pointer": "/db", "is": "sales"}}),
        true,
    );
    check(json!({"claim/sub_kind": "client"}), true);
    check(json!({"accept": true}), true);
    // And a user's `sub_kind` reads `user`.
    let p = Policy::compile(
        &json!({"allow": {"and": [{"claim/sub_kind": "user"}]}}),
        "p",
    )
    .unwrap();
    assert!(permits(&p, &claims("ann@corp.example", &[]), &call));
    assert!(!permits(&p, &svc, &call));
}

#[test]
fn in_and_not_in_lists_match_exactly_whatever_their_order_length_or_duplicates() {
    // Names of equal length, prefixes of each other, multibyte, repeated and out of order:
    // the lists are searched, not scanned, and must answer as a scan would.
    let names = [
        "read",
        "reads",
        "write",
        "erase",
        "é_tool",
        "a",
        "read",
        "list_directory",
        "ab",
        "ba",
    ];
    let p = Policy::compile(
        &json!([{"allow": {"or": [{"mcp_tool": {"in": names}}]}},
                {"deny": {"or": [{"mcp_tool": {"not_in": names}}]}}]),
        "policy",
    )
    .unwrap();
    let c = claims("u@example.com", &[]);
    for name in names {
        assert!(permits(&p, &c, &tool_call(name, json!({}))), "{name}");
    }
    for other in [
        "rea",
        "readx",
        "Read",
        "b",
        "aa",
        "é_too",
        "e_tool",
        "list_directorz",
        "",
    ] {
        assert!(!permits(&p, &c, &tool_call(other, json!({}))), "{other}");
    }
    let many: Vec<String> = (0..500).map(|i| format!("tool_{i}")).collect();
    let p = Policy::compile(
        &json!([{"allow": {"or": [{"mcp_tool": {"in": many}}]}}]),
        "policy",
    )
    .unwrap();
    for i in [0, 7, 99, 250, 499] {
        assert!(permits(&p, &c, &tool_call(&format!("tool_{i}"), json!({}))));
    }
    assert!(!permits(&p, &c, &tool_call("tool_500", json!({}))));
}
