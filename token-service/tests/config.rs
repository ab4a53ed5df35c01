#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use warden_token_service::config::{Config, SigningAlg};

fn err(yaml: &str) -> String {
    Config::from_yaml(yaml)
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn embedded_default_is_valid_and_has_the_demo_user() {
    let c = Config::embedded_default().unwrap();
    assert_eq!(c.authorization_server.issuer, "http://127.0.0.1:9100");
    assert_eq!(c.authorization_server.listen.to_string(), "127.0.0.1:9100");
    assert_eq!(c.routes[0].name, "demo");
    assert_eq!(c.routes[0].resource(), "http://127.0.0.1:9000/mcp");
    assert_eq!(c.signing_alg(), SigningAlg::ES256);
    let user = warden_token_service::password::authenticate(&c, "demo@example.com", "warden-demo")
        .unwrap();
    assert_eq!(user.groups, vec!["demo"]);
    assert!(warden_token_service::password::authenticate(&c, "demo@example.com", "nope").is_none());
}

#[test]
fn password_hashes_with_out_of_bounds_cost_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = config_yaml(dir.path(), "", "ES256");
    let hash_with = |m: u32, t: u32, p: u32| {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(m, t, p, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        a.hash_password(b"pw", &salt).unwrap().to_string()
    };
    let with_hash = |h: &str| {
        let start = good.find("password_hash: \"").unwrap() + "password_hash: \"".len();
        let end = start + good[start..].find('"').unwrap();
        format!("{}{h}{}", &good[..start], &good[end..])
    };
    // The default cost loads; a memory cost of 128 MiB, 11 passes or 5 lanes do not.
    assert!(Config::from_yaml(&with_hash(&hash_with(19_456, 2, 1))).is_ok());
    for (m, t, p) in [(131_072, 1, 1), (8, 11, 1), (64, 1, 5)] {
        let e = err(&with_hash(&hash_with(m, t, p)));
        assert!(
            e.starts_with("identity_provider.local.users[0].password_hash"),
            "{e}"
        );
        assert!(e.contains("cost too high"), "{e}");
    }
    let argon2i = hash_with(8, 1, 1).replace("$argon2id$", "$argon2i$");
    assert!(err(&with_hash(&argon2i)).contains("argon2id"));
}

#[test]
fn default_key_file_sits_next_to_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(dir.path(), "", "ES256");
    let c = Config::from_yaml(&yaml).unwrap();
    assert_eq!(c.signing_key_file(), dir.path().join("signing-key.json"));
}

#[test]
fn errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = config_yaml(dir.path(), "", "ES256");
    assert!(Config::from_yaml(&good).is_ok());

    let e = err(&good.replace(
        "issuer: http://127.0.0.1:9100",
        "issuer: http://example.com",
    ));
    assert!(e.starts_with("authorization_server.issuer:"), "{e}");
    let e = err(&good.replace(
        "issuer: http://127.0.0.1:9100",
        "issuer: http://127.0.0.1:9100/",
    ));
    assert!(e.starts_with("authorization_server.issuer:"), "{e}");
    let e = err(&good.replace(
        "access_token_ttl_seconds: 300",
        "access_token_ttl_seconds: -1",
    ));
    assert!(
        e.starts_with("authorization_server.access_token_ttl_seconds"),
        "{e}"
    );
    let e = err(&good.replace("alg: ES256", "alg: RS256"));
    assert!(e.starts_with("authorization_server.signing_key.alg"), "{e}");
    let e = err(&good.replace("listen: 127.0.0.1:0", "listen: nowhere"));
    assert!(e.starts_with("authorization_server.listen"), "{e}");
    let e = err(&good.replace(
        "access_token_ttl_seconds: 300",
        "acces_token_ttl_seconds: 300",
    ));
    assert!(e.contains("acces_token_ttl_seconds"), "{e}");
    let e = err(&good.replace(
        "token_endpoint_auth_method: client_secret_post",
        "token_endpoint_auth_method: magic",
    ));
    assert!(
        e.starts_with("clients[1].token_endpoint_auth_method"),
        "{e}"
    );
    let e = err(&good.replace(
        "redirect_uris: [https://app.example.com/cb]",
        "redirect_uris: [http://app.example.com/cb]",
    ));
    assert!(e.starts_with("clients[1].redirect_uris[0]"), "{e}");
    let e = err(&good.replace("    client_secret: post-secret\n", ""));
    assert!(e.starts_with("clients[1].client_secret"), "{e}");
    let e = err(&good.replace("password_hash: \"", "password_hash: \"x"));
    assert!(
        e.starts_with("identity_provider.local.users[0].password_hash"),
        "{e}"
    );
    let e = err(&good.replace(
        "from: http://127.0.0.1:9000",
        "from: http://127.0.0.1:9000/",
    ));
    assert!(e.starts_with("routes[0].from"), "{e}");
    let e = err(&good.replace("prefix: /mcp", "prefix: mcp"));
    assert!(e.starts_with("routes[0].prefix"), "{e}");
    let e = err(&good.replace("scopes: [tools.read, tools.call]", "scopes: [\"a b\"]"));
    assert!(e.starts_with("routes[0].scopes[0]"), "{e}");
    let e = err("storage: {sqlite: x.db}\n");
    assert!(e.contains("authorization_server"), "{e}");
    for bad in ["0", "65537"] {
        let e = err(&good.replace(
            "envoy:\n  listen: 127.0.0.1:9000\n",
            &format!("envoy:\n  listen: 127.0.0.1:9000\n  duration_sample_every: {bad}\n"),
        ));
        assert!(e.starts_with("envoy.duration_sample_every:"), "{bad}: {e}");
    }
}

#[test]
fn cli_check_config_and_hash_password() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_warden-token-service");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, config_yaml(dir.path(), "", "ES256")).unwrap();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        config_yaml(dir.path(), "", "ES256").replace("prefix: /mcp", "prefix: mcp"),
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].prefix"));

    let mut child = Command::new(bin)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(warden_token_service::password::verify_password(
        "s3cret",
        hash.trim()
    ));
}

#[test]
fn cli_serve_reads_warden_config_and_logs_json() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_warden-token-service");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.yaml");
    std::fs::write(&path, config_yaml(dir.path(), "", "ES256")).unwrap();
    let mut child = Command::new(bin)
        .arg("serve")
        .env("WARDEN_CONFIG", &path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(20)) {
        let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        if let Some(m) = v["fields"]["message"].as_str() {
            if let Some(a) = m.strip_prefix("listening on http://") {
                addr = Some(a.to_owned());
                break;
            }
        }
    }
    let addr = addr.expect("listening line");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(dir.path().join("warden.db").exists());
    // The signing key is in the store; the encryption key it is sealed with beside it.
    assert!(!dir.path().join("signing-key.json").exists());
    assert!(dir.path().join("encryption-key").exists());
}

/// The test config with `authorization_server.listen` and the `envoy` section replaced.
fn with_listeners(dir: &std::path::Path, token_service: &str, envoy: &str) -> String {
    config_yaml(dir, "", "ES256")
        .replace("listen: 127.0.0.1:0", &format!("listen: {token_service}"))
        .replace(
            "envoy:\n  listen: 127.0.0.1:9000\n",
            &format!("envoy: {envoy}\n"),
        )
}

#[test]
fn listeners_that_cannot_all_bind_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // The token service on Envoy's port: Envoy cannot bind, and MCP URLs get its 404.
        (
            "127.0.0.1:9000",
            "{listen: 127.0.0.1:9000}",
            "authorization_server.listen",
        ),
        // A wildcard takes the port on every address, in either order and either family.
        (
            "0.0.0.0:9000",
            "{listen: 127.0.0.1:9000}",
            "authorization_server.listen",
        ),
        (
            "127.0.0.1:9100",
            "{listen: '[::]:9100'}",
            "authorization_server.listen",
        ),
        (
            "'[::ffff:127.0.0.1]:9000'",
            "{listen: 127.0.0.1:9000}",
            "authorization_server.listen",
        ),
        // Envoy's admin interface on its own listener.
        (
            "127.0.0.1:9100",
            "{listen: 127.0.0.1:9000, admin: 0.0.0.0:9000}",
            "envoy.admin",
        ),
        (
            "127.0.0.1:9901",
            "{listen: 127.0.0.1:9000}",
            "authorization_server.listen",
        ),
    ];
    for (ts, envoy, field) in cases {
        let e = err(&with_listeners(dir.path(), ts, envoy));
        assert!(e.starts_with(&format!("{field}:")), "{ts} / {envoy}: {e}");
        assert!(e.contains("collides with"), "{e}");
    }
    // Distinct addresses on one port, and distinct ports on one address, are fine.
    for (ts, envoy) in [
        ("127.0.0.2:9000", "{listen: 127.0.0.1:9000}"),
        ("'[::1]:9000'", "{listen: 127.0.0.1:9000}"),
        (
            "127.0.0.1:9100",
            "{listen: 0.0.0.0:9000, admin: 127.0.0.1:9901}",
        ),
        ("127.0.0.1:0", "{listen: 127.0.0.1:9000}"),
    ] {
        let yaml = with_listeners(dir.path(), ts, envoy);
        assert!(
            Config::from_yaml(&yaml).is_ok(),
            "{ts} / {envoy}: {:?}",
            Config::from_yaml(&yaml).err()
        );
    }
}

#[test]
fn route_names_must_be_unique_and_read_the_same_to_people() {
    let dir = tempfile::tempdir().unwrap();
    let route = |name: &str, prefix: &str| {
        format!(
            "  - name: {name}\n    from: http://127.0.0.1:9000\n    prefix: {prefix}\n    to: http://127.0.0.1:9200/mcp\n    mcp: {{server: {{}}}}\n    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}\n"
        )
    };
    for (name, problem) in [
        ("demo", "duplicate route name"),
        ("Demo", "duplicate route name"),
        ("DEMO", "duplicate route name"),
        ("'demo '", "whitespace"),
        ("' demo'", "whitespace"),
        ("\"demo\\t\"", "whitespace"),
        ("\"de\\u200Bmo\"", "invisible"),
        ("\"de\\u0000mo\"", "control"),
        ("\"demo\\u202E\"", "invisible"),
        ("''", "must not be empty"),
    ] {
        let yaml = config_yaml(dir.path(), &route(name, "/other"), "ES256");
        let e = err(&yaml);
        assert!(e.starts_with("routes[1].name:"), "{name}: {e}");
        assert!(e.contains(problem), "{name}: {e}");
    }
    let long = "x".repeat(129);
    let e = err(&config_yaml(dir.path(), &route(&long, "/other"), "ES256"));
    assert!(e.starts_with("routes[1].name:"), "{e}");
    // Distinct names, spaces inside included, are fine.
    let yaml = config_yaml(dir.path(), &route("'demo two'", "/other"), "ES256");
    assert!(Config::from_yaml(&yaml).is_ok());
}

#[test]
fn check_config_exits_non_zero_for_colliding_listeners_and_route_names() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_warden-token-service");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.yaml");
    let cases = [
        (
            with_listeners(dir.path(), "127.0.0.1:9000", "{listen: 127.0.0.1:9000}"),
            "authorization_server.listen",
        ),
        (
            config_yaml(
                dir.path(),
                "  - name: Demo\n    from: http://127.0.0.1:9000\n    prefix: /b\n    to: http://127.0.0.1:9200/mcp\n    mcp: {server: {}}\n    policy: {allow: {and: [{authenticated_user: true}]}}\n",
                "ES256",
            ),
            "routes[1].name",
        ),
    ];
    for (yaml, field) in cases {
        std::fs::write(&path, yaml).unwrap();
        for command in ["check-config", "render-envoy"] {
            let out = Command::new(bin)
                .args([command, "--config"])
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
            assert!(stderr.contains(field), "{command}: {stderr}");
        }
    }
}

#[test]
fn a_route_whose_upstream_is_one_of_our_own_listeners_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = config_yaml(dir.path(), "", "ES256");
    for (to, field) in [
        ("http://127.0.0.1:9000/mcp", "envoy.listen"),
        ("http://localhost:9901/", "envoy.admin"),
        ("http://127.0.0.1:9901/stats", "envoy.admin"),
    ] {
        let e = err(&good.replace("to: http://127.0.0.1:9200/mcp", &format!("to: {to}")));
        assert!(e.starts_with("routes[0].to:"), "{to}: {e}");
        assert!(e.contains(field), "{to}: {e}");
    }
    // A wildcard listener serves every local address on its port.
    let wildcard = with_listeners(dir.path(), "0.0.0.0:9100", "{listen: 127.0.0.1:9000}");
    let e = err(&wildcard.replace(
        "to: http://127.0.0.1:9200/mcp",
        "to: http://127.0.0.1:9100/mcp",
    ));
    assert!(e.contains("authorization_server.listen"), "{e}");
    // Other hosts and ports are upstreams like any other.
    for to in [
        "http://127.0.0.2:9000/mcp",
        "http://mcp.internal:9000/mcp",
        "http://127.0.0.1:9201/mcp",
    ] {
        let yaml = good.replace("to: http://127.0.0.1:9200/mcp", &format!("to: {to}"));
        assert!(Config::from_yaml(&yaml).is_ok(), "{to}");
    }
}

fn postgres_yaml(dir: &std::path::Path, url: &str) -> String {
    common::pg::on_postgres(&config_yaml(dir, "", "ES256"), dir, url)
}

#[test]
fn storage_is_sqlite_or_postgres_and_the_url_is_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let url = "postgres://warden:s3cret-pw@db.internal:5432/warden?sslmode=verify-full";
    let good = postgres_yaml(dir.path(), url);
    let c = Config::from_yaml(&good).unwrap();
    let pg = c.storage.postgres.as_ref().unwrap();
    assert_eq!(pg.url(), url);
    assert_eq!(pg.max_connections, 4);
    assert!(matches!(
        c.storage.backend(),
        warden_token_service::config::StorageBackend::Postgres(_)
    ));
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cret-pw"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");

    // Both backends: the error names the field.
    let both = good.replace(
        "storage:\n",
        &format!(
            "storage:\n  sqlite: {}\n",
            dir.path().join("x.db").display()
        ),
    );
    let e = err(&both);
    assert!(e.starts_with("storage.postgres"), "{e}");

    // A URL that does not parse names the field, never the password.
    let e = err(&good.replace("sslmode=verify-full", "sslmode=sometimes"));
    assert!(e.starts_with("storage.postgres.url"), "{e}");
    assert!(!e.contains("s3cret-pw"), "{e}");
    let e = err(&good.replace("postgres://", "mysql://"));
    assert!(e.starts_with("storage.postgres.url"), "{e}");

    for n in ["0", "1025"] {
        let e = err(&good.replace("max_connections: 4", &format!("max_connections: {n}")));
        assert!(e.starts_with("storage.postgres.max_connections"), "{e}");
    }

    // url_file: read at load and trimmed; not together with url.
    let file = dir.path().join("pg-url");
    std::fs::write(&file, format!("  {url}\n")).unwrap();
    let from_file = good.replace(
        &format!("url: \"{url}\""),
        &format!("url_file: {}", file.display()),
    );
    let c = Config::from_yaml(&from_file).unwrap();
    assert_eq!(c.storage.postgres.as_ref().unwrap().url(), url);
    let e = err(&from_file.replace(
        "    url_file:",
        &format!("    url: \"{url}\"\n    url_file:"),
    ));
    assert!(e.starts_with("storage.postgres.url_file"), "{e}");
    let e = err(&good.replace(&format!("    url: \"{url}\"\n"), ""));
    assert!(e.starts_with("storage.postgres.url"), "{e}");
}

#[test]
fn with_postgres_the_files_replicas_share_must_be_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = postgres_yaml(dir.path(), "postgres://postgres@127.0.0.1/warden");
    Config::from_yaml(&good).unwrap();
    // The signing key file is only an import source (the keys live in the store): optional.
    let signing = format!(
        "    file: {}\n",
        dir.path().join("signing-key.json").display()
    );
    Config::from_yaml(&good.replace(&signing, "")).unwrap();
    // The encryption key seals the signing keys and the internal credential signs the
    // revocation feed's polls: every deployment needs both, the same on every replica.
    let encryption = format!(
        "  encryption_key_file: {}\n",
        dir.path().join("encryption-key").display()
    );
    let e = err(&good.replace(&encryption, ""));
    assert!(e.starts_with("storage.encryption_key_file"), "{e}");
    let credential = format!(
        "  internal_credential_file: {}\n",
        dir.path().join("internal-credential").display()
    );
    assert!(good.contains(&credential), "{good}");
    let e = err(&good.replace(&credential, ""));
    assert!(
        e.starts_with("authorization_server.internal_credential_file"),
        "{e}"
    );
}

/// A config whose secrets live in files that do not exist here (as in a pod's mounts).
fn with_absent_secret_files(extra: &str) -> String {
    format!(
        r#"
authorization_server:
  issuer: https://auth.example.com
  internal_credential_file: /absent/credential
  registration: {{mode: initial_access_token, initial_access_token_file: /absent/iat}}
storage:
  postgres: {{url_file: /absent/pg-url}}
  encryption_key_file: /absent/key
identity_provider:
  oidc: {{issuer: https://login.example.com, client_id: w, client_secret_file: /absent/oidc}}
routes:
  - name: gh
    from: https://mcp.example.com
    prefix: /gh
    to: http://gh.tools.svc.cluster.local/mcp
    mcp:
      server:
        upstream_oauth2:
          client_id: abc
          client_secret_file: /absent/gh
          endpoint: {{auth_url: "https://github.com/login/oauth/authorize", token_url: "https://github.com/login/oauth/access_token"}}
    policy: {{allow: {{and: [{{authenticated_user: true}}]}}}}
{extra}"#
    )
}

#[test]
fn without_secret_files_everything_else_is_still_checked() {
    let text = with_absent_secret_files("");
    // `serve` reads the files: absent, it names the first.
    let e = err(&text);
    assert!(
        e.starts_with("authorization_server.registration.initial_access_token_file"),
        "{e}"
    );
    // The render's loader leaves them unread, and the secrets unset.
    let c = Config::from_yaml_without_secret_files(&text).unwrap();
    assert!(c.storage.postgres.as_ref().unwrap().url.is_none());
    assert!(c.routes[0]
        .upstream_oauth2()
        .unwrap()
        .client_secret
        .is_none());
    // What does not need the files is refused as before, naming the field.
    for (from, to, field) in [
        (
            "registration: {mode: initial_access_token,",
            "registration: {mode: open,",
            "authorization_server.registration.initial_access_token_file",
        ),
        (
            "postgres: {url_file: /absent/pg-url}",
            "postgres: {url_file: /absent/pg-url, url: 'postgres://db/w'}",
            "storage.postgres.url_file",
        ),
        (
            "postgres: {url_file: /absent/pg-url}",
            "postgres: {url_file: /absent/pg-url, max_connections: 0}",
            "storage.postgres.max_connections",
        ),
        (
            "client_secret_file: /absent/gh",
            "client_secret_file: /absent/gh\n          client_secret: x",
            "routes[0].mcp.server.upstream_oauth2.client_secret_file",
        ),
        (
            "  encryption_key_file: /absent/key\n",
            "",
            "storage.encryption_key_file",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let e = Config::from_yaml_without_secret_files(&text.replacen(from, to, 1))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(field), "{field}: {e}");
    }
}

#[test]
fn the_kubernetes_block_is_validated_naming_the_field() {
    let block = |k: &str| {
        with_absent_secret_files(&format!(
            "kubernetes:\n  namespace: mcp\n  images: {{filter: r.example.com/f, token_service: r.example.com/t:1}}\n  secrets: {{internal_credential: c, session_key: s}}\n{k}"
        ))
    };
    let c = Config::from_yaml_without_secret_files(&block("")).unwrap();
    let k = c.kubernetes.unwrap();
    assert_eq!(k.cluster_domain, "cluster.local");
    assert_eq!(k.token_service.name, "warden-token-service");
    assert_eq!(k.token_service.port, 80);
    assert_eq!(k.gateway.namespace, "istio-system");
    for (edit, field) in [
        (
            "  token_service: {replicas: 0}\n",
            "kubernetes.token_service.replicas",
        ),
        (
            "  token_service: {port: 9101}\n",
            "kubernetes.token_service.port",
        ),
        (
            "  token_service: {name: Warden}\n",
            "kubernetes.token_service.name",
        ),
        (
            "  token_service: {replicas: 2, min_available: 2}\n",
            "kubernetes.token_service.min_available",
        ),
        (
            "  token_service: {resources: {requests: {cpu: lots}}}\n",
            "kubernetes.token_service.resources.requests.cpu",
        ),
        (
            "  token_service: {sqlite_claim: data}\n",
            "kubernetes.token_service.sqlite_claim",
        ),
        ("  gateway: {selector: {}}\n", "kubernetes.gateway.selector"),
        (
            "  cluster_domain: Cluster_Local\n",
            "kubernetes.cluster_domain",
        ),
        ("  colour: blue\n", "kubernetes"),
    ] {
        let e = Config::from_yaml_without_secret_files(&block(edit))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(field), "{field}: {e}");
    }
    let e = Config::from_yaml_without_secret_files(
        &block("").replace("r.example.com/f,", "r.example.com/f:1.0,"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("kubernetes.images.filter"), "{e}");
    let e = Config::from_yaml_without_secret_files(
        &block("").replace("namespace: mcp", "namespace: MCP"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("kubernetes.namespace"), "{e}");
    let e = Config::from_yaml_without_secret_files(
        &block("").replace("session_key: s", "session_key: warden-tmp"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("kubernetes.secrets.session_key"), "{e}");
}

#[test]
fn client_metadata_documents_and_the_outbound_ca_are_checked_at_load_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = config_yaml(dir.path(), "", "ES256");
    let with_documents = |settings: &str| {
        good.replace(
            "  refresh_token_ttl_seconds: 3600\n",
            &format!(
                "  refresh_token_ttl_seconds: 3600\n  client_id_metadata_documents: {settings}\n"
            ),
        )
    };
    let c = Config::from_yaml(&with_documents("{enabled: true}")).unwrap();
    let d = &c.authorization_server.client_id_metadata_documents;
    assert!(d.enabled && !d.allow_private_addresses && d.allowed_hosts.is_empty());
    assert_eq!((d.max_document_bytes, d.cache_seconds), (5120, 3600));
    for (settings, field) in [
        ("{max_document_bytes: 100}", "max_document_bytes"),
        ("{cache_seconds: 100000}", "cache_seconds"),
        ("{allowed_hosts: ['*']}", "allowed_hosts[0]"),
        (
            "{allowed_hosts: [a.example, 'b.example:8443']}",
            "allowed_hosts[1]",
        ),
        ("{max_document_bytes: 1048576}", "max_document_bytes"),
        ("{enabled: true, fetch: always}", "fetch"),
    ] {
        let e = err(&with_documents(settings));
        assert!(
            e.starts_with("authorization_server.client_id_metadata_documents"),
            "{e}"
        );
        assert!(e.contains(field), "{settings}: {e}");
    }
    // The CA file is read at load: missing, or not PEM certificates.
    let missing = dir.path().join("ca.pem");
    let e = err(&format!(
        "{good}outbound:\n  extra_ca_file: {}\n",
        missing.display()
    ));
    assert!(e.starts_with("outbound.extra_ca_file: cannot read"), "{e}");
    std::fs::write(&missing, "not a certificate\n").unwrap();
    let e = err(&format!(
        "{good}outbound:\n  extra_ca_file: {}\n",
        missing.display()
    ));
    assert!(e.starts_with("outbound.extra_ca_file: "), "{e}");
    // The render reads no file: it is checked where the file exists.
    assert!(Config::from_yaml_without_secret_files(&format!(
        "{good}outbound:\n  extra_ca_file: {}\n",
        missing.display()
    ))
    .is_ok());
}
