//! A fresh PostgreSQL database per test: created on the server at `WARDEN_TEST_PG_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) and dropped, other sessions
//! ended, when the guard drops. Without a server, `PgDb::create` says so and returns `None`.

use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct PgDb {
    /// The URL of the test's own database.
    pub url: String,
    admin: String,
    pub name: String,
}

/// Runs `f` on a thread of its own: the synchronous driver blocks on a runtime of its own,
/// which tokio refuses on an async worker.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

impl PgDb {
    pub fn create() -> Option<PgDb> {
        let admin = std::env::var("WARDEN_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let parsed = url::Url::parse(&admin).expect("WARDEN_TEST_PG_URL is a URL");
        let server = format!(
            "{}:{}",
            parsed.host_str().unwrap_or("?"),
            parsed.port().unwrap_or(5432)
        );
        let name = format!(
            "warden_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let (a, n) = (admin.clone(), name.clone());
        let connected = off_runtime(move || -> Result<(), String> {
            let mut c = postgres::Client::connect(&a, postgres::NoTls)
                .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
            // A server that answers but refuses this is a broken setup, not a missing one.
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
                .unwrap();
            c.batch_execute(&format!("CREATE DATABASE {n}")).unwrap();
            Ok(())
        });
        if let Err(e) = connected {
            eprintln!("skipped: no PostgreSQL server at {server} ({e})");
            return None;
        }
        let mut url = parsed;
        url.set_path(&format!("/{name}"));
        Some(PgDb {
            url: url.to_string(),
            admin,
            name,
        })
    }

    /// The test database's URL with its host and port replaced (a forwarder in between).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let mut url = url::Url::parse(&self.url).unwrap();
        url.set_host(Some(&addr.ip().to_string())).unwrap();
        url.set_port(Some(addr.port())).unwrap();
        url.to_string()
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = off_runtime(move || -> Result<(), String> {
            let mut c =
                postgres::Client::connect(&admin, postgres::NoTls).map_err(|e| e.to_string())?;
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = dropped {
            eprintln!("cannot drop test database {}: {e}", self.name);
        }
    }
}

/// `yaml` (from `config_yaml`, whose files live in `dir`) moved to the PostgreSQL database
/// at `url`: the files replicas share (signing key, encryption key, internal credential)
/// named explicitly, at the paths the SQLite deployment had them by default.
pub fn on_postgres(yaml: &str, dir: &std::path::Path, url: &str) -> String {
    let db = format!("  sqlite: {}\n", dir.join("warden.db").display());
    assert!(yaml.contains(&db), "a config_yaml config");
    yaml.replacen(
        &db,
        &format!(
            "  postgres:\n    url: \"{url}\"\n    max_connections: 4\n  encryption_key_file: {}\n",
            dir.join("encryption-key").display()
        ),
        1,
    )
    .replacen(
        "  signing_key:\n",
        &format!(
            "  internal_credential_file: {}\n  signing_key:\n    file: {}\n",
            dir.join("internal-credential").display(),
            dir.join("signing-key.json").display()
        ),
        1,
    )
}
