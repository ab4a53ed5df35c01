//! The filter's plugin configuration (`CompiledConfig::from_json`): operator input, but it
//! must fail closed and never panic.
//!
//! * A refusal names the field (a non-empty path) and says what is wrong.
//! * A compiled configuration holds what the checks promise: at least one route, unique names
//!   and resources, each resource parsed into the route's URL, cookie names by scheme, a token
//!   service for every route that needs one, one source of keys, a bounded clock skew and
//!   body limit; serialized back and compiled again, it is the same configuration.
//! * The token service credential never changes a `Debug` output or an error: replaced by
//!   another of the same shape, the result reads the same.
//!
//! Input: the configuration document (all of it).

use serde_json::Value;
use warden_core::app::{cookie_name, HOST_PREFIX};
use warden_core::config::{
    CompiledConfig, ConfigError, PluginConfig, RouteKind, MAX_MAX_REQUEST_BYTES,
};
use warden_core::url::ResourceUrl;

use crate::fixtures::plugin_document;

/// What `run` can decide.
pub const OUTCOMES: &[&str] = &["compiled", "refused"];

pub fn run(data: &[u8]) -> &'static str {
    let compiled = CompiledConfig::from_json(data);
    match &compiled {
        Ok(config) => holds(config, data),
        Err(e) => names_the_field(e),
    }
    credential_stays_out(data);
    if compiled.is_ok() {
        "compiled"
    } else {
        "refused"
    }
}

fn names_the_field(e: &ConfigError) {
    assert!(!e.path.is_empty() && e.path != ".", "no field named: {e:?}");
    assert!(!e.message.is_empty(), "no reason given: {e:?}");
    assert!(e.to_string().starts_with("invalid plugin configuration: "));
}

fn holds(config: &CompiledConfig, data: &[u8]) {
    assert!(!config.routes.is_empty());
    assert!(config.rules.leeway_seconds <= 300);
    assert!(
        config.jwks.is_some() != config.static_keys.is_some(),
        "one source of keys"
    );
    assert!(config.static_keys.as_ref().is_none_or(|k| !k.is_empty()));
    for (i, r) in config.routes.iter().enumerate() {
        assert!(!r.name.is_empty());
        assert_eq!(ResourceUrl::parse(&r.resource).as_ref(), Ok(&r.url));
        for other in &config.routes[..i] {
            assert_ne!(other.name, r.name, "duplicate name");
            assert_ne!(other.url, r.url, "duplicate resource");
        }
        let expected_cookie = match r.url.scheme.as_str() {
            "https" => format!("{HOST_PREFIX}{}", cookie_name(&r.name)),
            _ => cookie_name(&r.name),
        };
        assert_eq!(r.cookie_name, expected_cookie);
        assert!((1..=MAX_MAX_REQUEST_BYTES as usize).contains(&r.max_request_bytes));
        if r.kind == RouteKind::Client || r.upstream_oauth || r.pass_identity_headers {
            assert!(
                config.token_service.is_some(),
                "{} needs the token service",
                r.name
            );
        }
        for origin in &r.allowed_origins {
            assert!(origin.contains("://"), "{origin}");
        }
    }
    // Serialized back, the same configuration.
    let raw: PluginConfig = serde_json::from_slice(data).expect("a compiled document parses");
    let again = CompiledConfig::from_json(&serde_json::to_vec(&raw).unwrap())
        .expect("a compiled configuration compiles again");
    assert_eq!(summary(&again), summary(config));
}

/// Everything a compiled configuration holds, as text (the key set by size: its `Debug`
/// follows a hash map's order).
fn summary(c: &CompiledConfig) -> String {
    format!(
        "{:?} {:?} {:?} {} {} {:?} {:?} {:?}",
        c.rules,
        c.jwks,
        c.static_keys.as_ref().map(|k| k.len()),
        c.token_cache_entries,
        c.authorize_filter_state,
        c.route_header,
        c.token_service,
        c.routes
    )
}

/// The document with the token service credential's visible characters replaced: the same
/// shape (empty stays empty, a space stays a space), another secret.
fn credential_stays_out(data: &[u8]) {
    let Ok(mut doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Some(credential) = doc
        .pointer("/token_service/credential")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return;
    };
    let other: String = credential
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() {
                if c == 'Q' {
                    'R'
                } else {
                    'Q'
                }
            } else {
                c
            }
        })
        .collect();
    let render = |doc: &Value| match CompiledConfig::from_json(doc.to_string().as_bytes()) {
        Ok(c) => summary(&c),
        Err(e) => e.to_string(),
    };
    let with_credential = render(&doc);
    doc["token_service"]["credential"] = Value::String(other);
    assert_eq!(
        with_credential,
        render(&doc),
        "the credential shows in the configuration's Debug or errors"
    );
}

/// The unit tests' configurations: the fixture (server and client routes), JWKS fetching,
/// and the refusals they check (version, issuer, both or no key sources, duplicate names and
/// resources, bad scopes and origins, client routes with server fields or without a token
/// service, reserved route headers, a bad credential, unknown fields).
pub fn seeds() -> Vec<Vec<u8>> {
    let good = plugin_document();
    let with = |path: &str, v: Value| {
        let mut d = good.clone();
        let (parent, key) = path.rsplit_once('/').unwrap();
        match d.pointer_mut(parent).unwrap() {
            Value::Array(items) => items[key.parse::<usize>().unwrap()] = v,
            parent => parent[key] = v,
        }
        d
    };
    let fetch = {
        let mut d = good.clone();
        let o = d.as_object_mut().unwrap();
        o.remove("jwks_static");
        o.insert(
            "jwks".into(),
            serde_json::json!({"cluster": "ts", "authority": "ts", "path": "/.well-known/jwks.json",
                               "timeout_ms": 2000, "refresh_seconds": 300}),
        );
        o.insert("route_header".into(), "x-mcp-warden-route".into());
        d
    };
    let mut docs = vec![
        good.clone(),
        fetch.clone(),
        with("/version", 2.into()),
        with("/issuer", "ftp://issuer".into()),
        with("/routes/1/name", "demo".into()),
        with("/routes/1/resource", "http://127.0.0.1:9000/mcp".into()),
        with("/routes/0/scopes", serde_json::json!(["ok", "has\"quote"])),
        with(
            "/routes/1/allowed_origins/0",
            "http://app.example/path".into(),
        ),
        with("/routes/4/scopes", serde_json::json!(["s"])),
        with("/routes/0/max_request_bytes", 0.into()),
        with("/token_service/credential", "has space".into()),
        with("/clock_skew_seconds", 301.into()),
        with(
            "/routes/2/policy",
            serde_json::json!({"allow": {"and": [{"nope": 1}]}}),
        ),
        with("/routes", serde_json::json!([])),
    ];
    let mut no_service = good.clone();
    no_service.as_object_mut().unwrap().remove("token_service");
    docs.push(no_service);
    let mut both = fetch;
    both["jwks_static"] = good["jwks_static"].clone();
    docs.push(both);
    let mut reserved = good.clone();
    reserved["route_header"] = "authorization".into();
    docs.push(reserved);
    let mut unknown = good;
    unknown["routes"][0]["polcy"] = serde_json::json!({});
    docs.push(unknown);
    let mut seeds: Vec<Vec<u8>> = docs.iter().map(|d| d.to_string().into_bytes()).collect();
    seeds.push(b"{\"version\": 1, \"issuer\": ".to_vec());
    seeds.push(b"[]".to_vec());
    seeds
}
