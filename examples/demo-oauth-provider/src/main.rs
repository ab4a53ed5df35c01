//! `demo-oauth-provider`: the demo OAuth 2.0 provider (see the library docs) on a loopback port.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _};
use demo_oauth_provider::{
    serve, serve_tls, server_config, AuthStyle, ClaimsPlacement, IdTokenAlg, ProviderConfig,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:9300";

const USAGE: &str = "usage: demo-oauth-provider [options]\n\
  --listen ADDR            loopback address to bind (default 127.0.0.1:9300; port 0: any free port)\n\
  --client-id ID           the one client's id (default warden-demo)\n\
  --client-secret S        its secret (default warden-demo-secret)\n\
  --redirect-uri URL       registered redirect URI, repeatable (none: any URL is accepted)\n\
  --auth-style STYLE       client authentication at /token and /revoke: header|params|any (default any)\n\
  --access-ttl SECONDS     access token lifetime (default 60)\n\
  --user NAME:PASSWORD     a user, repeatable (default alice:alice-password)\n\
  --issuer URL             OpenID Connect issuer, no trailing slash (default http://ADDR of --listen)\n\
  --id-token-alg ALG       ID token signature: RS256|ES256 (default RS256)\n\
  --claims USER=JSON       a user's claims (JSON object), repeatable; replaces that user's defaults\n\
  --claims-placement P     where users' claims go: both|id_token|userinfo (default both)\n\
  --id-jag-client-id ID    client_id claim of the ID-JAGs it issues (default: --client-id)\n\
  --tls-cert FILE          serve HTTPS with this PEM certificate chain (with --tls-key; issuer https://ADDR)\n\
  --tls-key FILE           ... and this PEM private key (PKCS#8 or EC)\n\
  --dcr                    dynamic client registration (RFC 7591) at POST /register\n\
  --cimd                   a URL client_id is a Client ID Metadata Document, fetched at /authorize\n\
  --extra-ca FILE          a PEM CA trusted besides the system's for those documents\n\
  --resource URL           a resource (RFC 8707) it issues tokens for, repeatable; then required";

/// What `main` serves: the listener address, the provider, and its TLS files if any.
struct Args {
    listen: SocketAddr,
    config: ProviderConfig,
    tls: Option<(String, String)>,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut config = ProviderConfig::default();
    let mut listen = DEFAULT_LISTEN.to_owned();
    let mut users = Vec::new();
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            return Ok(None);
        }
        match flag.as_str() {
            "--dcr" => {
                config.dcr = true;
                continue;
            }
            "--cimd" => {
                config.cimd = true;
                continue;
            }
            _ => {}
        }
        let known = [
            "--listen",
            "--client-id",
            "--client-secret",
            "--redirect-uri",
            "--auth-style",
            "--access-ttl",
            "--user",
            "--issuer",
            "--id-token-alg",
            "--claims",
            "--claims-placement",
            "--id-jag-client-id",
            "--tls-cert",
            "--tls-key",
            "--extra-ca",
            "--resource",
        ];
        if !known.contains(&flag.as_str()) {
            bail!("unknown argument {flag:?}\n{USAGE}");
        }
        let Some(value) = inline.or_else(|| args.next()) else {
            bail!("{flag} needs a value\n{USAGE}");
        };
        match flag.as_str() {
            "--listen" => listen = value,
            "--client-id" => config.client_id = value,
            "--client-secret" => config.client_secret = value,
            "--redirect-uri" => {
                url::Url::parse(&value)
                    .with_context(|| format!("--redirect-uri {value:?} is not an absolute URL"))?;
                config.redirect_uris.push(value);
            }
            "--auth-style" => config.auth_style = value.parse::<AuthStyle>()?,
            "--issuer" => {
                let parsed = url::Url::parse(&value)
                    .with_context(|| format!("--issuer {value:?} is not an absolute URL"))?;
                if value.ends_with('/') || parsed.query().is_some() || parsed.fragment().is_some() {
                    bail!("--issuer {value:?} must have no trailing slash, query or fragment");
                }
                config.issuer = Some(value);
            }
            "--id-token-alg" => config.id_token_alg = value.parse::<IdTokenAlg>()?,
            "--claims" => {
                let Some((name, json)) = value.split_once('=') else {
                    bail!("--claims needs USER=JSON, got {value:?}");
                };
                let claims: serde_json::Value = serde_json::from_str(json)
                    .with_context(|| format!("--claims for {name:?} is not JSON"))?;
                if !claims.is_object() {
                    bail!("--claims for {name:?} must be a JSON object");
                }
                config.user_claims.insert(name.to_owned(), claims);
            }
            "--id-jag-client-id" => config.id_jag_client_id = Some(value),
            "--tls-cert" => tls_cert = Some(value),
            "--tls-key" => tls_key = Some(value),
            "--extra-ca" => {
                let pem =
                    std::fs::read(&value).with_context(|| format!("reading --extra-ca {value}"))?;
                config.extra_ca = Some(pem);
            }
            "--resource" => {
                url::Url::parse(&value)
                    .with_context(|| format!("--resource {value:?} is not an absolute URL"))?;
                config.resources.push(value);
            }
            "--claims-placement" => {
                config.claims_placement = value.parse::<ClaimsPlacement>()?;
            }
            "--access-ttl" => {
                let seconds: u64 = value.parse().with_context(|| {
                    format!("--access-ttl {value:?} is not a number of seconds")
                })?;
                config.access_ttl = Duration::from_secs(seconds);
            }
            "--user" => {
                let Some((name, password)) = value.split_once(':') else {
                    bail!("--user needs NAME:PASSWORD, got {value:?}");
                };
                if name.is_empty() {
                    bail!("--user needs a non-empty NAME");
                }
                users.push((name.to_owned(), password.to_owned()));
            }
            _ => bail!("unknown argument {flag:?}\n{USAGE}"),
        }
    }
    if !users.is_empty() {
        config.users = users;
    }
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not an IP:port address"))?;
    if !listen.ip().is_loopback() {
        bail!("--listen must be a loopback address (the demo provider is for local use), got {listen}");
    }
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together\n{USAGE}"),
    };
    Ok(Some(Args {
        listen,
        config,
        tls,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(Args {
        listen,
        config,
        tls,
    }) = parse_args()?
    else {
        return Ok(());
    };
    let tls = match tls {
        Some((cert, key)) => {
            let cert =
                std::fs::read(&cert).with_context(|| format!("reading --tls-cert {cert}"))?;
            let key = std::fs::read(&key).with_context(|| format!("reading --tls-key {key}"))?;
            Some(server_config(&cert, &key)?)
        }
        None => None,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("demo-oauth-provider listening on {scheme}://{addr}");
    let server = async move {
        match tls {
            Some(tls) => serve_tls(config, listener, tls).await,
            None => serve(config, listener).await,
        }
    };
    tokio::select! {
        result = server => result.context("serving")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
