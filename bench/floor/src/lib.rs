//! The "minimal Wasm floor" of the benchmark (`bench/README.md`): the least a body-inspecting
//! MCP filter can do on Envoy's Wasm host, so mcp-warden's filter can be measured against it.
//!
//! * Always: hold the request head, buffer the whole body, parse it with
//!   `serde_json::from_slice::<Value>`, read `method` (and `params.name` of a `tools/call`), and
//!   continue. A body that is not a JSON object with a string `method` gets `400`.
//! * With `{"es256": true, "jwk": {...}}` as plugin configuration: also check the
//!   `Authorization: Bearer` token's ES256 signature and `exp` against that public key, keep a
//!   per-worker cache of verified tokens (token → `exp`, so a warm token costs one hash lookup),
//!   and remove the `Authorization` header. A missing or bad token gets `401`.
//!
//! It checks nothing else (no issuer, audience or policy): it is a cost floor, not a gateway.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use jwt_compact::alg::Es256;
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt, Claims, Empty, UntrustedToken};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use serde_json::Value;

/// Verified tokens kept per worker; the cache is emptied when it is full.
pub const CACHE_ENTRIES: usize = 10_000;

type Es256Key = <Es256 as jwt_compact::Algorithm>::VerifyingKey;

/// The floor's plugin configuration.
#[derive(Debug, Clone, Default)]
pub struct FloorConfig {
    /// The ES256 public key tokens must be signed with; `None` = parse only.
    pub es256: Option<Es256Key>,
}

impl FloorConfig {
    /// Parses `{}` (or empty bytes) for the parse-only floor, or `{"es256": true, "jwk": {...}}`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("configuration is not JSON: {e}"))?;
        if !value.get("es256").and_then(Value::as_bool).unwrap_or(false) {
            return Ok(Self::default());
        }
        let jwk = value.get("jwk").ok_or("es256 needs \"jwk\"")?;
        let jwk: JsonWebKey<'_> =
            serde_json::from_value(jwk.clone()).map_err(|e| format!("jwk: {e}"))?;
        let key: Es256Key = (&jwk)
            .try_into()
            .map_err(|e| format!("jwk is not a P-256 public key: {e}"))?;
        Ok(Self { es256: Some(key) })
    }
}

/// What the body told us: the JSON-RPC method and, for a `tools/call`, the tool name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub tool: Option<String>,
}

/// Parses a JSON-RPC request body the way the floor does.
pub fn read_call(body: &[u8]) -> Option<Call> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let method = value.get("method")?.as_str()?.to_string();
    let tool = if method == "tools/call" {
        Some(value.get("params")?.get("name")?.as_str()?.to_string())
    } else {
        None
    };
    Some(Call { method, tool })
}

/// Verified tokens of one worker, with their `exp` (Unix seconds).
#[derive(Debug, Default)]
pub struct TokenCache {
    verified: HashMap<String, i64>,
}

impl TokenCache {
    /// Whether `token` is signed by `key` and not expired at `now`; a cached token costs one
    /// lookup, an uncached one a signature check (and is cached when it passes).
    pub fn check(&mut self, key: &Es256Key, token: &str, now: i64) -> bool {
        if let Some(exp) = self.verified.get(token) {
            return *exp > now;
        }
        let Some(exp) = verify(key, token) else {
            return false;
        };
        if self.verified.len() >= CACHE_ENTRIES {
            self.verified.clear();
        }
        self.verified.insert(token.to_string(), exp);
        exp > now
    }
}

/// Checks the ES256 signature; returns `exp` (a token without one is refused).
pub fn verify(key: &Es256Key, token: &str) -> Option<i64> {
    let untrusted = UntrustedToken::new(token).ok()?;
    let token = Es256.validator::<Empty>(key).validate(&untrusted).ok()?;
    let claims: &Claims<Empty> = token.claims();
    claims.expiration.map(|exp| exp.timestamp())
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(FloorRoot { worker: None })
    });
}}

struct Worker {
    config: FloorConfig,
    cache: TokenCache,
}

struct FloorRoot {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match FloorConfig::from_json(&bytes) {
            Ok(config) => {
                self.worker = Some(Rc::new(RefCell::new(Worker {
                    config,
                    cache: TokenCache::default(),
                })));
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("bench floor: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = Rc::clone(self.worker.as_ref()?);
        Some(Box::new(FloorRequest { worker, call: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorRequest {
    worker: Rc<RefCell<Worker>>,
    /// Kept so the parse has an observable result.
    call: Option<Call>,
}

impl Context for FloorRequest {}

fn reply(status: u32, body: &str) -> Action {
    let _ = hostcalls::send_http_response(
        status,
        vec![("content-type", "application/json")],
        Some(body.as_bytes()),
    );
    Action::Pause
}

fn now_seconds() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl FloorRequest {
    fn token_ok(&self) -> bool {
        let mut guard = self.worker.borrow_mut();
        let worker = &mut *guard;
        let Some(key) = worker.config.es256.as_ref() else {
            return true;
        };
        let header = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "authorization")
            .ok()
            .flatten()
            .unwrap_or_default();
        let Some(token) = std::str::from_utf8(&header)
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
        else {
            return false;
        };
        let ok = worker.cache.check(key, token, now_seconds());
        if ok {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "authorization");
        }
        ok
    }
}

impl HttpContext for FloorRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !self.token_ok() {
            return reply(401, r#"{"error":"invalid_token"}"#);
        }
        if end_of_stream {
            Action::Continue
        } else {
            // Hold the head until the body is read (needs `allow_on_headers_stop_iteration`).
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.call = read_call(&body);
        if self.call.is_none() {
            return reply(400, r#"{"error":"not a JSON-RPC request"}"#);
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_method_and_tool() {
        let call = read_call(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
        );
        assert_eq!(
            call,
            Some(Call {
                method: "tools/call".into(),
                tool: Some("echo".into())
            })
        );
        let list = read_call(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        assert_eq!(list.map(|c| c.tool), Some(None));
        assert_eq!(read_call(b"not json"), None);
        assert_eq!(read_call(br#"{"id":1}"#), None);
    }

    #[test]
    fn config_parse_only_or_es256() {
        assert!(FloorConfig::from_json(b"").unwrap().es256.is_none());
        assert!(FloorConfig::from_json(b"{}").unwrap().es256.is_none());
        let jwk = r#"{"es256":true,"jwk":{"kty":"EC","crv":"P-256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}"#;
        assert!(FloorConfig::from_json(jwk.as_bytes())
            .unwrap()
            .es256
            .is_some());
        assert!(FloorConfig::from_json(br#"{"es256":true}"#).is_err());
    }

    /// An ES256 token over `claims`, and the configuration holding its public key.
    fn signed(claims: &str) -> (FloorConfig, String) {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        use p256::ecdsa::signature::Signer as _;
        let key = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        let config = format!(
            r#"{{"es256":true,"jwk":{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}}}"#,
            B64.encode(point.x().unwrap()),
            B64.encode(point.y().unwrap())
        );
        let input = format!(
            "{}.{}",
            B64.encode(br#"{"alg":"ES256","typ":"at+jwt"}"#),
            B64.encode(claims)
        );
        let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
        let token = format!("{input}.{}", B64.encode(signature.to_bytes()));
        (FloorConfig::from_json(config.as_bytes()).unwrap(), token)
    }

    #[test]
    fn good_token_is_verified_once_then_cached() {
        let (config, token) = signed(r#"{"sub":"a","exp":2000000000}"#);
        let key = config.es256.unwrap();
        let mut cache = TokenCache::default();
        assert!(cache.check(&key, &token, 1_900_000_000));
        assert_eq!(cache.verified.get(&token), Some(&2_000_000_000));
        assert!(cache.check(&key, &token, 1_900_000_001));
        // Expired, even though cached.
        assert!(!cache.check(&key, &token, 2_000_000_001));
        // Tampered claims fail the signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"sub":"b","exp":2000000000}"#,
        );
        parts[1] = &other;
        assert!(!cache.check(&key, &parts.join("."), 1_900_000_000));
        // No exp: refused.
        let (config, token) = signed(r#"{"sub":"a"}"#);
        assert!(!TokenCache::default().check(&config.es256.unwrap(), &token, 0));
    }

    #[test]
    fn bad_tokens_are_refused_and_not_cached() {
        let config = FloorConfig::from_json(
            br#"{"es256":true,"jwk":{"kty":"EC","crv":"P-256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}"#,
        )
        .unwrap();
        let key = config.es256.unwrap();
        let mut cache = TokenCache::default();
        assert!(!cache.check(&key, "a.b.c", 0));
        assert!(cache.verified.is_empty());
    }
}
