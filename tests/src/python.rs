//! The official MCP Python SDK as a test client: `tests/python/sdk_client.py` run with the
//! venv's Python (`make python-sdk` installs `tests/python/requirements.txt` there).
//!
//! The script prints `AUTHORIZE <url>` when its provider wants a browser; this side plays the
//! browser ([`crate::browser_authorize_with`]) and answers `CALLBACK <url>` on its stdin. Its
//! last line is `RESULT <json>`: the tools it listed and the tool call's result, or an `error`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::workspace_root;

/// The venv's Python (`PYTHON_SDK_PYTHON` overrides it).
pub fn python() -> PathBuf {
    match std::env::var_os("PYTHON_SDK_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".venv/bin/python3"),
    }
}

/// One run of the SDK client.
pub struct SdkClient {
    job: Value,
    env: Vec<(String, String)>,
    gateway: (String, String),
}

impl SdkClient {
    /// `job` is the script's JSON job (`mode`, `server_url`, `tool`, `arguments`, the mode's
    /// parameters); the browser signs in as the demo user.
    pub fn new(job: Value) -> SdkClient {
        SdkClient {
            job,
            env: Vec::new(),
            gateway: (crate::DEMO_EMAIL.into(), crate::DEMO_PASSWORD.into()),
        }
    }

    /// Extra environment (e.g. `SSL_CERT_FILE` for a test CA).
    pub fn env(mut self, key: &str, value: &str) -> SdkClient {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the client to its end (60 s at most) and returns its `RESULT` JSON.
    pub async fn run(self) -> Value {
        let python = python();
        assert!(
            python.exists(),
            "{} is missing: run `make python-sdk` (the official MCP Python SDK in .venv)",
            python.display()
        );
        let script = workspace_root().join("tests/python/sdk_client.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(self.job.to_string())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", python.display()));
        let mut stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Drained as it comes, so a chatty client never blocks on a full pipe.
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let redirect = self.job["redirect_uri"].as_str().unwrap_or("").to_owned();
        let (email, password) = (&self.gateway.0, &self.gateway.1);

        let conversation = async {
            while let Some(line) = lines.next_line().await.expect("read the SDK client") {
                if let Some(url) = line.strip_prefix("AUTHORIZE ") {
                    let back =
                        crate::browser_authorize_with(url, &redirect, (email, password), None)
                            .await;
                    stdin
                        .write_all(format!("CALLBACK {back}\n").as_bytes())
                        .await
                        .expect("answer the SDK client");
                } else if let Some(json) = line.strip_prefix("RESULT ") {
                    return Some(serde_json::from_str::<Value>(json).expect("RESULT is JSON"));
                }
            }
            None
        };
        let result = tokio::time::timeout(Duration::from_secs(60), conversation).await;
        let mut err = String::new();
        if result.as_ref().map(Option::is_none).unwrap_or(true) {
            let _ = child.start_kill();
            if let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(5), stderr).await {
                err = text;
            }
        }
        match result {
            Ok(Some(v)) => v,
            Ok(None) => panic!("the SDK client ended without a RESULT line; stderr:\n{err}"),
            Err(_) => panic!("the SDK client did not finish within 60 s; stderr:\n{err}"),
        }
    }
}

/// The `result` of a successful run, or a panic naming the SDK client's error.
pub fn expect_result(out: &Value) -> &Value {
    if let Some(e) = out.get("error") {
        panic!("the SDK client failed: {e}");
    }
    &out["result"]
}

/// The text of a tool result's first content block.
pub fn result_text(result: &Value) -> &str {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("tool result without text content: {result}"))
}
