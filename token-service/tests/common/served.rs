//! The real binary (`serve`) as a child process: its JSON log read line by line, raw HTTP/1.1
//! to its listeners, `/readyz` polled, SIGTERM sent.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often `/readyz` and the process are polled.
const POLL: Duration = Duration::from_millis(50);

pub struct Served {
    child: Child,
    lines: Receiver<String>,
    /// Every log line read so far.
    pub log: Vec<String>,
}

/// `yaml` (from `config_yaml`) with the internal listener on a port of its own and the
/// shutdown grace `grace` seconds.
pub fn with_grace(yaml: &str, grace: u64) -> String {
    let listen = "  listen: 127.0.0.1:0\n";
    assert!(yaml.contains(listen), "a config_yaml config");
    yaml.replacen(
        listen,
        &format!("{listen}  internal_listen: 127.0.0.1:0\n  shutdown_grace_seconds: {grace}\n"),
        1,
    )
}

impl Served {
    /// `warden-token-service serve --config <config>`.
    pub fn spawn(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden-token-service"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env_remove("WARDEN_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Reads the log until a line whose message starts with `prefix`; returns the rest of
    /// that message. Fails with the log after `timeout`, or when the process ends first.
    pub fn wait_message(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let message = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["fields"]["message"].as_str().map(str::to_owned));
                    self.log.push(line);
                    if let Some(rest) = message.as_deref().and_then(|m| m.strip_prefix(prefix)) {
                        return rest.to_owned();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {prefix:?} within {timeout:?}; log:\n{}",
                        self.log_text()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the service ended before {prefix:?}; log:\n{}",
                        self.log_text()
                    )
                }
            }
        }
    }

    /// The address a `"<prefix>http://<addr>"` log line names.
    pub fn wait_addr(&mut self, prefix: &str) -> SocketAddr {
        let rest = self.wait_message(&format!("{prefix}http://"), Duration::from_secs(30));
        rest.parse()
            .unwrap_or_else(|_| panic!("not an address after {prefix:?}: {rest}"))
    }

    /// The log so far, every line read.
    pub fn log_text(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `timeout` for the process to end.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response as raw text (head and body).
pub struct Answer {
    pub raw: String,
}

impl Answer {
    pub fn status(&self) -> u16 {
        self.raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or("");
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub fn body(&self) -> &str {
        self.raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// Reads what the server sends until it closes the connection.
pub async fn read_answer(s: &mut tokio::net::TcpStream) -> Answer {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer within 30 s");
    Answer {
        raw: String::from_utf8_lossy(&out).into_owned(),
    }
}

/// `GET path` on a connection of its own.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    Ok(read_answer(&mut s).await)
}

/// Polls `/readyz` until it answers `status`; fails after `timeout` with the last answer.
pub async fn wait_readyz(
    served: &mut Served,
    addr: SocketAddr,
    status: u16,
    timeout: Duration,
) -> Answer {
    let deadline = Instant::now() + timeout;
    loop {
        let last = get(addr, "/readyz").await;
        match last {
            Ok(a) if a.status() == status => return a,
            _ if Instant::now() > deadline => panic!(
                "/readyz did not answer {status} within {timeout:?}; last: {:?}; log:\n{}",
                last.map(|a| a.raw),
                served.log_text()
            ),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// Polls until connecting to `addr` is refused; fails after `timeout` (a connection
/// accepted, or a connect left hanging by a full accept queue, is not a refusal).
pub async fn wait_refused(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tokio::net::TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "{addr} still accepts connections after {timeout:?}: {other:?}"
                );
                drop(other);
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
