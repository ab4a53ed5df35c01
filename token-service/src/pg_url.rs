//! A PostgreSQL URL as the token service reads it: the connection settings, and whether and
//! how the connection is encrypted (`sslmode`, `sslrootcert`), which the driver's own parser
//! does not cover. A leaf: imports nothing of the crate. Messages never quote the URL (it may
//! hold a password).

use std::path::PathBuf;
use std::str::FromStr;

/// How the connection to the server is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// `sslmode=disable` or `prefer` (or none given): plain TCP.
    Off,
    /// `sslmode=require`, `verify-ca` or `verify-full`: TLS, with the server's certificate
    /// verified for the host named in the URL against `sslrootcert` (a PEM file) when given,
    /// else the system's roots. `require` verifies too: an unverified TLS connection protects
    /// nothing against whoever can intercept it.
    Verify { root_cert: Option<PathBuf> },
}

pub struct PgTarget {
    pub config: postgres::Config,
    pub tls: PgTls,
}

/// Parses `postgres://user:password@host:port/database?sslmode=…`.
pub fn parse(url: &str) -> Result<PgTarget, String> {
    // The parsers' messages could quote the URL, password and all: name the problem only.
    let mut parsed = url::Url::parse(url)
        .map_err(|_| "not a URL (postgres://user:password@host:port/database)".to_owned())?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err("must start with postgres:// or postgresql://".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    let mut sslmode = None;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "sslmode" => sslmode = Some(v.into_owned()),
            "sslrootcert" => root_cert = Some(PathBuf::from(&*v)),
            "host" | "hostaddr" => {
                return Err(format!(
                    "{k} in the query is not supported: name the server in the URL's host"
                ))
            }
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    let tls = match sslmode.as_deref() {
        None | Some("disable" | "prefer") => {
            if root_cert.is_some() {
                return Err("sslrootcert needs sslmode=verify-full (or require)".into());
            }
            PgTls::Off
        }
        Some("require" | "verify-ca" | "verify-full") => PgTls::Verify { root_cert },
        Some(_) => {
            return Err("sslmode must be disable, prefer, require, verify-ca or verify-full".into())
        }
    };
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    let mut config = postgres::Config::from_str(parsed.as_str())
        .map_err(|_| "not a PostgreSQL connection URL the driver accepts".to_owned())?;
    config.ssl_mode(match tls {
        PgTls::Off => postgres::config::SslMode::Disable,
        PgTls::Verify { .. } => postgres::config::SslMode::Require,
    });
    Ok(PgTarget { config, tls })
}

/// `message` with the URL's password blanked out, for errors that may echo connection
/// settings.
pub fn redact(message: &str, config: &postgres::Config) -> String {
    match config
        .get_password()
        .and_then(|p| std::str::from_utf8(p).ok())
        .filter(|p| !p.is_empty())
    {
        Some(password) => message.replace(password, "<redacted>"),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sslmodes() {
        let t = parse("postgres://u:pw@127.0.0.1:5432/db").unwrap();
        assert_eq!(t.tls, PgTls::Off);
        assert_eq!(t.config.get_dbname(), Some("db"));
        let t = parse("postgres://u@db.example/x?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            t.tls,
            PgTls::Verify {
                root_cert: Some("/ca.pem".into())
            }
        );
        assert!(parse("postgres://u@h/x?sslmode=allow").is_err());
        assert!(parse("mysql://u@h/x").is_err());
        let e = parse("postgres://u:hunter2@h/x?sslmode=bogus")
            .err()
            .unwrap();
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn redacts_the_password() {
        let t = parse("postgres://u:hunter2@127.0.0.1/db").unwrap();
        assert_eq!(
            redact("password hunter2 refused", &t.config),
            "password <redacted> refused"
        );
    }
}
