//! `demo-oauth-provider`: the demo OAuth 2.0 provider (see the library docs) on a loopback port.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _};
use demo_oauth_provider::{serve, AuthStyle, ClaimsPlacement, IdTokenAlg, ProviderConfig};

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
  --id-jag-client-id ID    client_id claim of the ID-JAGs it issues (default: --client-id)";

fn parse_args() -> anyhow::Result<Option<(SocketAddr, ProviderConfig)>> {
    let mut config = ProviderConfig::default();
    let mut listen = DEFAULT_LISTEN.to_owned();
    let mut users = Vec::new();
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
    Ok(Some((listen, config)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some((listen, config)) = parse_args()? else {
        return Ok(());
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
    println!("demo-oauth-provider listening on http://{addr}");
    tokio::select! {
        result = serve(config, listener) => result.context("serving")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
