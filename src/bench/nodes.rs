//! chatd processes that a scenario starts itself (the stored-history one:
//! it restarts a node, and starts empty ones to catch up): each in a data
//! directory of its own, on loopback ports the node picks, found in its
//! log. The bench talks to them only as anyone would: over the client
//! port, and over the admin socket in the data directory (`chatctl`'s
//! line protocol).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

type Res<T> = Result<T, String>;

/// Node id (as the admin socket writes it) -> sequence number.
pub type Positions = std::collections::BTreeMap<String, u64>;

/// What a benchmark node runs with besides what it is given: hashing cheap
/// enough for the bench's own registrations, limits lifted for one host's
/// many clients.
const BENCH_FLAGS: &[&str] = &[
    "--argon2-memory-kib",
    "64",
    "--argon2-iterations",
    "1",
    "--rate-limit",
    "1000000",
    "--rate-burst",
    "1000000",
    "--max-connections-per-address",
    "30000",
    "--max-unauthenticated-per-address",
    "30000",
    "--register-address-burst",
    "1000000",
    "--listen",
    "127.0.0.1:0",
    "--web-listen",
    "",
];

pub struct Node {
    child: Child,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub mesh: Option<SocketAddr>,
    /// From the process's start until it said it was listening.
    pub started_in: Duration,
}

fn addr_in(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("addr=")? + 5..];
    rest[..rest.find(' ').unwrap_or(rest.len())].parse().ok()
}

impl Node {
    /// Start `chatd` on `dir` with `extra` flags; wait until it listens.
    pub fn start(chatd: &Path, dir: &Path, extra: &[String]) -> Res<Node> {
        let started = Instant::now();
        let mut child = Command::new(chatd)
            .arg("--data-dir")
            .arg(dir)
            .args(BENCH_FLAGS)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", chatd.display()))?;
        let err = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(err).lines();
        let mut mesh = None;
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                return Err(format!(
                    "chatd on {} exited before listening",
                    dir.display()
                ));
            };
            if line.contains("mesh listening") {
                mesh = addr_in(&line);
            }
            if line.contains("chatd listening") {
                break addr_in(&line).ok_or("no address in chatd's log")?;
            }
        };
        let started_in = started.elapsed();
        // Keep reading its log, so that it never waits on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Ok(Node {
            child,
            dir: dir.to_path_buf(),
            addr,
            mesh,
            started_in,
        })
    }

    /// One admin request (a JSON line), its reply.
    pub async fn admin(&self, cmd: &str) -> Res<serde_json::Value> {
        let sock = self.dir.join("chatd.sock");
        let mut s = tokio::net::UnixStream::connect(&sock)
            .await
            .map_err(|e| format!("{}: {e}", sock.display()))?;
        let line = format!("{{\"cmd\":\"{cmd}\"}}\n");
        s.write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        tokio::io::BufReader::new(s)
            .read_line(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&reply).map_err(|e| format!("admin reply {reply:?}: {e}"))
    }

    /// How far the node has applied each origin's log, and where its log
    /// begins (its status).
    pub async fn log(&self) -> Res<(Positions, Positions)> {
        let s = self.admin("status").await?;
        let map = |k: &str| -> Positions {
            s[k].as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok((map("log"), map("log_start")))
    }

    /// Stop it as systemd would (SIGTERM), and wait (it writes its tables
    /// out first: after a big catch-up that takes a while).
    pub fn stop(mut self) -> Res<()> {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        Err("chatd did not stop within ten minutes".into())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes on disk under `dir` (allocated blocks, as `du` counts them).
pub fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += disk_use(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}
