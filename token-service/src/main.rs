//! `warden-token-service`: serve, hash-password, check-config, render-envoy, render,
//! describe, rotate-signing-key, revoke, migrate.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warden_token_service::config::Config;

#[derive(Parser)]
#[command(
    name = "warden-token-service",
    version,
    about = "mcp-warden token service (OAuth 2.1 authorization server)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (embedded demo config unless --config or WARDEN_CONFIG is given).
    Serve {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Read a password from stdin and print its Argon2id PHC hash.
    HashPassword,
    /// Validate a config file; exits non-zero naming the offending field.
    CheckConfig {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
    },
    /// Print the Envoy bootstrap (listener, routes, clusters, filter + plugin config) for a config.
    RenderEnvoy {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: Option<PathBuf>,
        /// Path of the filter's .wasm as Envoy should load it.
        #[arg(
            long,
            default_value = "target/wasm32-wasip1/release/warden_filter.wasm"
        )]
        wasm: String,
    },
    /// Print the Kubernetes objects (`--target kubernetes`) or those and Istio's
    /// (`--target istio`) for a config with a `kubernetes:` block; `--target envoy` is
    /// `render-envoy`. Reads no secret file: the objects name Secrets, never values.
    Render {
        #[arg(long, value_enum)]
        target: RenderTarget,
        #[arg(long, env = "WARDEN_CONFIG")]
        config: Option<PathBuf>,
        /// The filter image's digest (`sha256:<hex>`; `make images` writes it to
        /// target/images/filter.digest). Required with `--target istio`.
        #[arg(long, value_name = "sha256:HEX")]
        filter_digest: Option<String>,
        /// Pins the token service image by digest (`sha256:<hex>`, target/images/token-service.digest).
        #[arg(long, value_name = "sha256:HEX")]
        token_service_digest: Option<String>,
        /// With `--target envoy`: the path of the filter's .wasm as Envoy should load it.
        #[arg(
            long,
            default_value = "target/wasm32-wasip1/release/warden_filter.wasm"
        )]
        wasm: String,
    },
    /// End a user's access: every grant (refresh-token family, unredeemed code) and, unless
    /// a client or route narrows it, every session. Filters refuse the user's TEs within
    /// seconds (the revocation feed).
    Revoke {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: Option<PathBuf>,
        /// The user: a local user's email, or `{issuer}#{sub}` for the identity provider's.
        #[arg(long)]
        user: String,
        /// Only the grants of this client.
        #[arg(long)]
        client: Option<String>,
        /// Only the grants for this route's MCP server.
        #[arg(long)]
        route: Option<String>,
    },
    /// Copy a SQLite deployment into the PostgreSQL database the config names
    /// (`storage.postgres`): migrates it, refuses unless it is empty, copies every table in
    /// one transaction, and prints the rows copied per table.
    Migrate {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: PathBuf,
        /// The SQLite file to copy (the old `storage.sqlite`).
        #[arg(long, value_name = "FILE")]
        from_sqlite: PathBuf,
    },
    /// Add a new TE signing key to the store: published at once, signing after
    /// `signing_key.rotation_publish_seconds`; the previous key leaves the JWKS once the
    /// tokens it signed have expired. Prints the new kid and when it starts signing.
    RotateSigningKey {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print one value of a config, for scripts (`make run`).
    Describe {
        #[arg(long, env = "WARDEN_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, value_enum)]
        what: Describe,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RenderTarget {
    Kubernetes,
    Istio,
    /// The Envoy bootstrap, as `render-envoy`.
    Envoy,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Describe {
    /// The MCP server URLs clients use, one per line.
    McpUrls,
    Issuer,
    EnvoyAdmin,
    /// The redirect URI to register at upstream OAuth providers (`upstream_oauth2`).
    UpstreamCallback,
    /// The redirect URI to register at the organisation's identity provider (`identity_provider.oidc`).
    LoginCallback,
    /// The file holding the internal credential, whose content goes in Envoy's environment as
    /// `MCP_WARDEN_INTERNAL_CREDENTIAL` (empty when no route needs the internal listener).
    InternalCredentialFile,
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::from_file(p).map_err(|e| format!("{}: {e}", p.display())),
        None => Config::embedded_default().map_err(|e| format!("embedded default config: {e}")),
    }
}

fn render_envoy(config: Option<&PathBuf>, wasm: &str) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let input = warden_token_service::render::EnvoyInput::from_config(&config, wasm);
    match warden_token_service::render::render(&input) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot render the Envoy bootstrap: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    warden_token_service::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            // The PostgreSQL driver logs every statement's parameters at debug (digests,
            // sealed values): never, whatever the level asked for.
            for quiet in ["tokio_postgres=info", "postgres=info"] {
                if let Ok(d) = quiet.parse() {
                    filter = filter.add_directive(d);
                }
            }
            // The config first: it says whether spans go to a collector.
            let loaded = load(config.as_ref());
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let traces = match &loaded {
                Ok(c) => match warden_token_service::telemetry::Traces::build(
                    &c.telemetry,
                    &c.outbound,
                    rt.handle().clone(),
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("invalid configuration: telemetry: {e:#}");
                        return ExitCode::from(2);
                    }
                },
                Err(_) => None,
            };
            {
                use tracing_subscriber::layer::SubscriberExt as _;
                use tracing_subscriber::util::SubscriberInitExt as _;
                use tracing_subscriber::Layer as _;
                // Spans are for the trace exporter: the log lines stay as they were.
                let log = tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stdout)
                    .with_filter(filter);
                tracing_subscriber::registry()
                    .with(log)
                    .with(traces.as_ref().map(|t| t.layer()))
                    .init();
            }
            let config = match loaded {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("invalid configuration: {e}");
                    eprintln!("invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let served = rt.block_on(warden_token_service::serve(config));
            // Serving has stopped (SIGTERM, Ctrl-C): the batched spans go out while the
            // runtime that posts them still runs.
            if let Some(t) = traces {
                t.shutdown();
            }
            // A store call still blocking (a database that stopped answering) must not hold
            // the exit past the shutdown grace.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "token service failed");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::HashPassword => {
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
            // Strip only the line ending, so passwords may contain spaces at either end.
            let password = input
                .strip_suffix('\n')
                .map(|p| p.strip_suffix('\r').unwrap_or(p))
                .unwrap_or(&input);
            if password.is_empty() {
                eprintln!("empty password");
                return ExitCode::FAILURE;
            }
            match warden_token_service::password::hash_password(password) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RenderEnvoy { config, wasm }
        | Command::Render {
            target: RenderTarget::Envoy,
            config,
            wasm,
            ..
        } => render_envoy(config.as_ref(), &wasm),
        Command::Render {
            target,
            config,
            filter_digest,
            token_service_digest,
            wasm: _,
        } => {
            use warden_token_service::render::{manifests, Digests, Target};
            let target = match target {
                RenderTarget::Istio => Target::Istio,
                _ => Target::Kubernetes,
            };
            let text = match &config {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| format!("{}: cannot read it: {e}", p.display())),
                None => Ok(warden_token_service::config::DEFAULT_CONFIG_YAML.to_string()),
            };
            let digests = Digests {
                filter: filter_digest,
                token_service: token_service_digest,
            };
            match text.and_then(|t| {
                manifests(&t, target, &digests).map_err(|e| match &config {
                    Some(p) => format!("{}: {e}", p.display()),
                    None => format!("embedded default config: {e}"),
                })
            }) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot render: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Describe { config, what } => {
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            match what {
                Describe::McpUrls => config
                    .server_routes()
                    .for_each(|r| println!("{}", r.resource())),
                Describe::Issuer => println!("{}", config.authorization_server.issuer),
                Describe::EnvoyAdmin => println!("{}", config.envoy.admin),
                Describe::UpstreamCallback => {
                    println!("{}", warden_token_service::vault::callback_url(&config))
                }
                Describe::LoginCallback => {
                    println!("{}", warden_token_service::oidc::callback_url(&config))
                }
                Describe::InternalCredentialFile => {
                    if config.uses_internal_listener() {
                        println!("{}", config.internal_credential_file().display())
                    } else {
                        println!()
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Revoke {
            config,
            user,
            client,
            route,
        } => {
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let what = warden_token_service::flows::sign_out::Revocation {
                user,
                client_id: client,
                route,
            };
            match warden_token_service::revoke(&config, &what) {
                Ok(ended) => {
                    println!(
                        "revoked {} grant(s), {} unredeemed code(s), {} session(s), {} app session(s) of {}",
                        ended.grant_ids.len(),
                        ended.codes,
                        ended.sessions,
                        ended.app_sessions,
                        what.user
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate {
            config,
            from_sqlite,
        } => {
            let config = match load(Some(&config)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            match warden_token_service::store::copy_sqlite_to_postgres(
                &config.storage,
                &from_sqlite,
            ) {
                Ok(counts) => {
                    for (table, rows) in counts {
                        println!("{table}: {rows}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RotateSigningKey { config } => {
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let now = warden_token_service::now_unix();
            match warden_token_service::keyring::rotate_configured(&config, now) {
                Ok(r) => {
                    println!("kid: {}", r.kid);
                    println!("alg: {}", r.alg.as_str());
                    println!(
                        "signs_from: {} (in {} s; published now)",
                        r.signs_from,
                        r.signs_from - now
                    );
                    println!(
                        "previous_keys_retire_at: {} (in {} s)",
                        r.previous_retire_at,
                        r.previous_retire_at - now
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot rotate the signing key: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match load(Some(&config)) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
    }
}
