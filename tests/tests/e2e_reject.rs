//! What the gateway must refuse, and proof that refused requests never reach the upstream; plus
//! refresh-token rotation and surviving a token service restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use warden_e2e::{
    assert_bearer_challenge, assert_invalid_request_challenge, call_tool_text, connect, jwt,
    mcp_post, parse_www_authenticate, raw_request, refresh_raw, sign_in, whoami, ClientAuth, Era,
    ExtraRoute, RawResponse, Stack, StackOptions,
};

fn two_route_options() -> StackOptions {
    StackOptions {
        extra_routes: vec![ExtraRoute {
            name: "other".into(),
            prefix: "/other".into(),
        }],
        ..StackOptions::default()
    }
}

async fn tools_list_with(stack: &Stack, headers: &[(&str, &str)]) -> RawResponse {
    mcp_post(&stack.mcp_url(), headers, "tools/list", json!({})).await
}

async fn call_with_bearer(stack: &Stack, token: &str) -> RawResponse {
    let auth = format!("Bearer {token}");
    tools_list_with(stack, &[("authorization", auth.as_str())]).await
}

/// Sends `token` and asserts 401 + `error="invalid_token"` and an untouched upstream.
async fn assert_rejected(stack: &Stack, token: &str, what: &str) {
    stack.demo.clear_recorded().await;
    let resp = call_with_bearer(stack, token).await;
    assert_bearer_challenge(&resp, &stack.resource_metadata_url(), true, what);
    stack.demo.assert_nothing_recorded(what).await;
}

/// Sends `token` and asserts it is accepted (positive control for minted tokens).
async fn assert_accepted(stack: &Stack, token: &str, what: &str) {
    let resp = call_with_bearer(stack, token).await;
    assert_eq!(resp.status, 200, "{what}: {} {}", resp.status, resp.body);
    assert!(
        resp.json()["result"]["tools"].is_array(),
        "{what}: {}",
        resp.body
    );
}

#[tokio::test]
async fn no_token_is_challenged_without_error() {
    let stack = Stack::start().await;
    stack.demo.clear_recorded().await;

    let resp = tools_list_with(&stack, &[]).await;
    assert_bearer_challenge(
        &resp,
        &stack.resource_metadata_url(),
        false,
        "POST, no token",
    );

    // The GET stream and DELETE of the handshake era are protected too.
    let resp = raw_request(
        "GET",
        &stack.mcp_url(),
        &[("accept", "text/event-stream"), ("mcp-session-id", "nope")],
        None,
    )
    .await;
    assert_bearer_challenge(
        &resp,
        &stack.resource_metadata_url(),
        false,
        "GET, no token",
    );
    let resp = raw_request(
        "DELETE",
        &stack.mcp_url(),
        &[("mcp-session-id", "nope")],
        None,
    )
    .await;
    assert_bearer_challenge(
        &resp,
        &stack.resource_metadata_url(),
        false,
        "DELETE, no token",
    );

    // A malformed or non-Bearer Authorization header never passes: 401, or 400
    // `invalid_request` (RFC 6750 §3.1), always with the Bearer challenge.
    for value in ["Bearer", "Bearer ", "Basic ZGVtbzpkZW1v", "bearer"] {
        let resp = tools_list_with(&stack, &[("authorization", value)]).await;
        assert!(
            resp.status == 401 || resp.status == 400,
            "Authorization: {value:?}: {} {}",
            resp.status,
            resp.body
        );
        let challenge = resp
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("Authorization: {value:?}: no WWW-Authenticate"));
        let (scheme, params) = parse_www_authenticate(&challenge);
        assert_eq!(scheme, "bearer", "{challenge}");
        assert_eq!(
            params.get("resource_metadata"),
            Some(&stack.resource_metadata_url()),
            "{challenge}"
        );
    }
    stack
        .demo
        .assert_nothing_recorded("unauthenticated requests")
        .await;
}

#[tokio::test]
async fn tampered_signature_is_rejected() {
    let stack = Stack::start().await;
    let signed = stack.sign_in().await;
    assert_accepted(&stack, &signed.access_token, "the real token").await;
    let tampered = jwt::tamper_signature(&signed.access_token);
    assert_ne!(tampered, signed.access_token);
    assert_rejected(&stack, &tampered, "tampered signature").await;

    // Tampered claims with the original signature.
    let mut parts: Vec<String> = signed.access_token.split('.').map(str::to_owned).collect();
    let mut claims = jwt::decode_claims(&signed.access_token);
    claims["email"] = json!("admin@example.com");
    parts[1] = B64.encode(serde_json::to_vec(&claims).unwrap());
    assert_rejected(&stack, &parts.join("."), "tampered claims").await;
}

#[tokio::test]
async fn expired_token_is_rejected() {
    let stack = Stack::start().await;
    let key = stack.signing_key().await;
    let now = jwt::now();

    let valid = key.sign(&jwt::claims(&stack.issuer(), &stack.mcp_url(), now, 300));
    assert_accepted(&stack, &valid, "minted valid token (positive control)").await;

    // Expired an hour ago: far outside any clock-skew leeway.
    let expired = key.sign(&jwt::claims(
        &stack.issuer(),
        &stack.mcp_url(),
        now - 7200,
        3600,
    ));
    assert_rejected(&stack, &expired, "expired token").await;

    // Not valid yet (nbf an hour ahead).
    let future = key.sign(&jwt::claims(
        &stack.issuer(),
        &stack.mcp_url(),
        now + 3600,
        300,
    ));
    assert_rejected(&stack, &future, "token not valid yet").await;

    // Wrong issuer.
    let foreign = key.sign(&jwt::claims(
        "http://127.0.0.1:1",
        &stack.mcp_url(),
        now,
        300,
    ));
    assert_rejected(&stack, &foreign, "wrong issuer").await;
}

#[tokio::test]
async fn token_for_another_route_is_rejected() {
    let stack = Stack::start_with(two_route_options()).await;
    let other = stack.route_url("/other");

    // A real sign-in for the other route: its token carries aud = the other resource.
    let signed_other = sign_in(&other).await;
    assert_eq!(jwt::decode_claims(&signed_other.access_token)["aud"], other);
    assert_rejected(
        &stack,
        &signed_other.access_token,
        "token for /other used on /mcp",
    )
    .await;

    // The same token works where it belongs (positive control).
    let auth = format!("Bearer {}", signed_other.access_token);
    let resp = mcp_post(
        &other,
        &[("authorization", auth.as_str())],
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(resp.status, 200, "token on its own route: {}", resp.body);

    // Minted: aud = other resource; aud as an array naming another resource; aud missing.
    let key = stack.signing_key().await;
    let now = jwt::now();
    let mut claims = jwt::claims(&stack.issuer(), &other, now, 300);
    assert_rejected(&stack, &key.sign(&claims), "minted aud=/other").await;
    claims["aud"] = json!([other]);
    assert_rejected(&stack, &key.sign(&claims), "minted aud=[/other]").await;
    claims["aud"] = json!(format!("{}/", stack.mcp_url()));
    assert_rejected(&stack, &key.sign(&claims), "aud with trailing slash").await;
    claims.as_object_mut().unwrap().remove("aud");
    assert_rejected(&stack, &key.sign(&claims), "no aud").await;
}

#[tokio::test]
async fn unsigned_and_hmac_tokens_are_rejected() {
    let stack = Stack::start().await;
    let jwks = stack.jwks().await;
    let jwk = &jwks["keys"][0];
    let kid = jwk["kid"].as_str().unwrap();
    let claims = jwt::claims(&stack.issuer(), &stack.mcp_url(), jwt::now(), 300);

    assert_rejected(&stack, &jwt::alg_none(&claims, Some(kid)), "alg none").await;
    assert_rejected(&stack, &jwt::alg_none(&claims, None), "alg none, no kid").await;

    // HS256 keyed with public key material an attacker can read from the JWKS.
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("JWK JSON".into(), serde_json::to_vec(jwk).unwrap()),
        ("JWKS document".into(), serde_json::to_vec(&jwks).unwrap()),
    ];
    if let (Some(x), Some(y)) = (jwk["x"].as_str(), jwk["y"].as_str()) {
        let mut point = vec![0x04];
        point.extend(B64.decode(x).unwrap());
        point.extend(B64.decode(y).unwrap());
        secrets.push(("SEC1 point".into(), point));
    }
    for (what, secret) in secrets {
        let token = jwt::hs256(&claims, Some(kid), &secret);
        assert_rejected(&stack, &token, &format!("HS256 keyed with the {what}")).await;
    }

    // The right signature under a header claiming another algorithm.
    let key = stack.signing_key().await;
    let mut header = key.header();
    header["alg"] = json!(if key.alg == "ES256" { "EdDSA" } else { "ES256" });
    let token = key.sign_with_header(&header, &claims);
    assert_rejected(&stack, &token, "alg does not match the key").await;
}

#[tokio::test]
async fn two_authorization_headers_are_rejected() {
    let stack = Stack::start().await;
    let signed = stack.sign_in().await;
    let auth = format!("Bearer {}", signed.access_token);
    stack.demo.clear_recorded().await;

    let resp = tools_list_with(
        &stack,
        &[
            ("authorization", auth.as_str()),
            ("authorization", auth.as_str()),
        ],
    )
    .await;
    // RFC 6750 §3.1: a repeated credential is invalid_request (400) with the challenge.
    assert_invalid_request_challenge(
        &resp,
        &stack.resource_metadata_url(),
        "two Authorization headers",
    );

    let resp = tools_list_with(
        &stack,
        &[
            ("authorization", auth.as_str()),
            ("authorization", "Bearer x.y.z"),
        ],
    )
    .await;
    assert_invalid_request_challenge(
        &resp,
        &stack.resource_metadata_url(),
        "valid + junk Authorization",
    );
    stack
        .demo
        .assert_nothing_recorded("two Authorization headers")
        .await;
}

#[tokio::test]
async fn token_in_query_string_is_ignored() {
    let stack = Stack::start().await;
    let signed = stack.sign_in().await;
    stack.demo.clear_recorded().await;
    // MCP authorization spec: tokens are never taken from the query string.
    let url = format!("{}?access_token={}", stack.mcp_url(), signed.access_token);
    let resp = mcp_post(&url, &[], "tools/list", json!({})).await;
    assert_bearer_challenge(
        &resp,
        &stack.resource_metadata_url(),
        false,
        "token in query",
    );
    stack.demo.assert_nothing_recorded("token in query").await;
}

fn token_pair(resp: &RawResponse, what: &str) -> (String, String) {
    assert_eq!(resp.status, 200, "{what}: {}", resp.body);
    let body: Value = serde_json::from_str(&resp.body).unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no refresh_token: {body}"))
            .to_owned(),
    )
}

fn assert_invalid_grant(resp: &RawResponse, what: &str) {
    assert_eq!(resp.status, 400, "{what}: {}", resp.body);
    let body: Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(body["error"], "invalid_grant", "{what}: {body}");
}

#[tokio::test]
async fn refresh_token_replay_after_rotation_is_invalid_grant() {
    let stack = Stack::start().await;
    let signed = stack.sign_in().await;
    let first_rt = signed.refresh_token.clone().expect("refresh token");

    let resp = refresh_raw(&signed.token_endpoint, &signed.client_id, &first_rt).await;
    let (access, second_rt) = token_pair(&resp, "first refresh");
    assert_ne!(second_rt, first_rt, "refresh tokens rotate");
    assert_eq!(
        jwt::decode_claims(&access)["aud"],
        stack.mcp_url(),
        "a refresh keeps the resource"
    );
    assert_accepted(&stack, &access, "refreshed access token").await;

    let replay = refresh_raw(&signed.token_endpoint, &signed.client_id, &first_rt).await;
    assert_invalid_grant(&replay, "replayed rotated-out refresh token");

    // Replay revokes the whole family: the newer refresh token is dead as well.
    let after = refresh_raw(&signed.token_endpoint, &signed.client_id, &second_rt).await;
    assert_invalid_grant(&after, "refresh token of a revoked family");
}

#[tokio::test]
async fn token_service_restart_keeps_keys_and_grants() {
    let mut stack = Stack::start().await;
    let signed = stack.sign_in().await;
    let rt = signed.refresh_token.clone().expect("refresh token");
    let kid_before = stack.jwks().await["keys"][0]["kid"].clone();

    stack.restart_token_service().await;
    assert_eq!(
        stack.jwks().await["keys"][0]["kid"],
        kid_before,
        "the signing key is persisted"
    );

    // The token issued before the restart still works.
    assert_accepted(&stack, &signed.access_token, "pre-restart access token").await;

    // The grant survived: refresh works, and the new token calls a tool.
    let resp = refresh_raw(&signed.token_endpoint, &signed.client_id, &rt).await;
    let (access, _) = token_pair(&resp, "refresh after restart");
    stack.demo.clear_recorded().await;
    let client = connect(
        &stack.mcp_url(),
        &Era::Stateless,
        ClientAuth::Bearer(access),
    )
    .await;
    assert_eq!(
        call_tool_text(&client, "echo", json!({"text": "after restart"})).await,
        "after restart"
    );
    let me = whoami(&client).await;
    assert!(me["headers"].get("authorization").is_none(), "{me}");
    client.cancel().await.unwrap();
}

/// Sends a raw HTTP/1.1 request (exact `Host` header) and returns the status code.
async fn raw_status(port: u16, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

#[tokio::test]
async fn host_spellings_cannot_skip_the_token_check() {
    let stack = Stack::start().await;
    stack.demo.clear_recorded().await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    for host in [
        "127.0.0.1",
        "127.0.0.1:80",
        "localhost",
        "127.0.0.1:9",
        "127.0.0.1.",
        "evil.example",
    ] {
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let status = raw_status(stack.ports.envoy, &request).await;
        assert!(
            status == 401 || status == 404,
            "Host {host}: status {status}"
        );
    }
    stack
        .demo
        .assert_nothing_recorded("requests with other Host spellings")
        .await;
}
