//! Secrets the service generates on first start and keeps in files: the key upstream tokens
//! are encrypted with, and the credential the filter presents on the internal listener.
//! Each file holds 32 random bytes as base64url text, is created with mode 0600, and is never
//! overwritten.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

pub const SECRET_BYTES: usize = 32;

/// Reads the secret at `path`, or creates it when the file does not exist. `what` names the
/// secret in errors and in the log line (never its value). Of processes creating it at once,
/// one writes it and the others read what it wrote.
pub fn load_or_create(path: &Path, what: &str) -> anyhow::Result<[u8; SECRET_BYTES]> {
    let read = || match std::fs::read_to_string(path) {
        Ok(text) => decode(text.trim_end_matches(['\r', '\n']))
            .map(Some)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{what} file {} is malformed: it must hold {SECRET_BYTES} bytes as base64url",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read {what} file {}: {e}",
            path.display()
        )),
    };
    if let Some(secret) = read()? {
        return Ok(secret);
    }
    let mut secret = [0u8; SECRET_BYTES];
    crate::random::fill_random(&mut secret);
    match create(path, B64.encode(secret).as_bytes()) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated {what}");
            Ok(secret)
        }
        // Another process created it first (whole: see `create`): use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read()?.ok_or_else(|| anyhow::anyhow!("{what} file {} vanished", path.display()))
        }
        Err(e) => Err(anyhow::anyhow!("cannot create {}: {e}", path.display())),
    }
}

/// Reads a secret that must already exist (a key kept for what was sealed with it): never
/// creates one. The error says what is wrong with the file, never what it holds.
pub fn read_existing(path: &Path) -> Result<[u8; SECRET_BYTES], String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode(text.trim_end_matches(['\r', '\n'])).ok_or_else(|| {
        format!(
            "{} is malformed: it must hold {SECRET_BYTES} bytes as base64url",
            path.display()
        )
    })
}

/// The text form of a secret (what the renderer puts in the plugin configuration).
pub fn encode(secret: &[u8; SECRET_BYTES]) -> String {
    B64.encode(secret)
}

fn decode(text: &str) -> Option<[u8; SECRET_BYTES]> {
    B64.decode(text.as_bytes()).ok()?.try_into().ok()
}

/// Creates `path` (and its directory) with owner-only permissions; fails if it exists, so
/// two processes starting at once cannot both write a different secret.
pub fn write_new(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    create(path, body).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))
}

/// [`write_new`], telling `AlreadyExists` apart. The file appears whole: written and synced
/// under a temporary name, then linked to `path` (which fails if `path` exists), so a
/// process that loses the race never reads a half-written secret.
fn create(path: &Path, body: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let mut suffix = [0u8; 8];
    crate::random::fill_random(&mut suffix);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.tmp", B64.encode(suffix)));
    let tmp = path.with_file_name(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(body)?;
        f.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    linked
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn processes_creating_a_secret_at_once_all_get_the_one_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let barrier = std::sync::Barrier::new(8);
        let got: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        load_or_create(&path, "test key").unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(got.iter().all(|k| *k == got[0]));
        assert_eq!(load_or_create(&path, "test key").unwrap(), got[0]);
    }

    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let a = load_or_create(&path, "test key").unwrap();
        let b = load_or_create(&path, "test key").unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "secret file readable by others: {mode:o}");
        }
        // Nothing else left behind (the temporary name is gone).
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::write(&path, "short").unwrap();
        let err = load_or_create(&path, "test key").unwrap_err().to_string();
        assert!(err.contains("malformed"), "{err}");
    }
}
