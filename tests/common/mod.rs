//! Test harness: a real chatd on 127.0.0.1 with an ephemeral port and a
//! temporary data directory, and a client that talks to it over TCP.
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod seeds;
pub mod tcp_relay;
pub mod web;

use chatd::config::Settings;
use chatd::server::Server;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The lobby's group id (the same on every node).
pub const LOBBY: u32 = 2_000_000_000;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test listens to make sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Settings for a test server: ephemeral port, cheap password hashing.
pub fn test_settings(dir: &Path) -> Settings {
    let mut s = Settings::with_data_dir(dir);
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.argon2_memory_kib = 64;
    s.argon2_iterations = 1;
    s.classic_push_gap_ms = 5;
    // Every test client comes from 127.0.0.1.
    s.max_connections_per_address = 100_000;
    s.max_unauthenticated_per_address = 100_000;
    s.register_address_burst = 100_000;
    s.web_listen = "127.0.0.1:0".into();
    s
}

pub struct TestServer {
    server: Option<Server>,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        TestServer::start_in(dir, f).await
    }

    pub async fn start_in(dir: TempDir, f: impl FnOnce(&mut Settings)) -> TestServer {
        let mut s = test_settings(dir.path());
        f(&mut s);
        let server = Server::start(s).await.expect("chatd starts");
        TestServer {
            addr: server.local_addr(),
            server: Some(server),
            dir,
        }
    }

    /// Shut down cleanly and hand back the data directory.
    pub async fn stop(mut self) -> TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.dir
    }

    /// Drop the server without shutting it down (as an embedding program
    /// that ends might) and hand back the data directory.
    pub fn abandon(mut self) -> TempDir {
        drop(self.server.take());
        self.dir
    }

    /// A server with every dialect on a port of its own (and the lobby).
    pub async fn with_all_dialects() -> TestServer {
        TestServer::start_with(|s| s.listen_dialect = seeds::all_dialect_ports()).await
    }

    /// Where metrics and health are served (`metrics_listen` must be set).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .and_then(|s| s.metrics_addr())
            .expect("metrics_listen is set")
    }

    /// The web listener (HTTP and WebSocket).
    pub fn web(&self) -> SocketAddr {
        self.server
            .as_ref()
            .and_then(|s| s.web_addr())
            .expect("the web listener is on")
    }

    /// The port of a dialect given with `--listen-dialect`.
    pub fn dialect(&self, name: &str) -> SocketAddr {
        self.server
            .as_ref()
            .and_then(|s| s.dialect_addr(name))
            .unwrap_or_else(|| panic!("no {name} listener"))
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A connected, registered and logged-in native client.
    pub async fn user(&self, name: &str) -> (Client, u32) {
        let mut c = self.client().await;
        let id = c.register(name, "pw").await;
        c.login(name, "pw").await;
        (c, id)
    }
}

/// What a test client talks over: TCP, or WebSocket (over TCP or TLS).
pub enum Wire {
    Tcp(TcpStream),
    /// Another byte stream (TLS).
    Bytes(Box<dyn web::Io>),
    Ws(Box<web::Ws>),
}

pub struct Client {
    stream: Wire,
    buf: Vec<u8>,
    chunk: Vec<u8>,
    pushes: VecDeque<Value>,
    next_req: i64,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Client::over(Wire::Tcp(stream))
    }

    pub fn over(stream: Wire) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            chunk: vec![0; 65536],
            pushes: VecDeque::new(),
            next_req: 1,
        }
    }

    /// Connect from another loopback address (all of 127.0.0.0/8 is ours).
    pub async fn connect_from(addr: SocketAddr, from: [u8; 4]) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from((from, 0)))
            .expect("bind a loopback source address");
        let stream = socket.connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Client::over(Wire::Tcp(stream))
    }

    /// A WebSocket session at the web listener's `/ws` (same-origin page).
    pub async fn connect_ws(web: SocketAddr) -> Client {
        let origin = format!("http://{web}");
        web::connect(web, Some(&origin))
            .await
            .expect("WebSocket upgrade")
    }

    /// chatd's protocol over another byte stream (TLS).
    pub fn over_bytes(stream: Box<dyn web::Io>) -> Client {
        Client::over(Wire::Bytes(stream))
    }

    /// The socket itself, for tests that look at raw reads.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        match &mut self.stream {
            Wire::Tcp(s) => s,
            _ => panic!("only a TCP client has a raw socket"),
        }
    }

    pub fn wire_mut(&mut self) -> &mut Wire {
        &mut self.stream
    }

    fn bytes_mut(&mut self) -> &mut (dyn tokio::io::AsyncRead + Unpin) {
        match &mut self.stream {
            Wire::Tcp(s) => s,
            Wire::Bytes(s) => s,
            Wire::Ws(_) => unreachable!("WebSocket clients read messages"),
        }
    }

    pub async fn send(&mut self, v: &Value) {
        if let Wire::Ws(ws) = &mut self.stream {
            return web::send_text(ws, v.to_string()).await;
        }
        let mut b = serde_json::to_vec(v).unwrap();
        b.push(b'\n');
        self.send_raw(&b).await;
    }

    /// Raw bytes on TCP; one text message over WebSocket.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.stream {
            Wire::Tcp(s) => s.write_all(bytes).await.expect("write"),
            Wire::Bytes(s) => s.write_all(bytes).await.expect("write"),
            Wire::Ws(ws) => web::send_text(ws, String::from_utf8_lossy(bytes).into_owned()).await,
        }
    }

    /// The next value from the socket (newline or NUL terminated), or None
    /// after `wait` or at end of stream.
    pub async fn read_value(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        if let Wire::Ws(ws) = &mut self.stream {
            return web::read_value(ws, deadline).await;
        }
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n' || *b == 0) {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let text = &line[..line.len() - 1];
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(text).unwrap_or_else(|e| {
                    panic!(
                        "server sent invalid JSON {:?}: {e}",
                        String::from_utf8_lossy(text)
                    )
                }));
            }
            let mut chunk = std::mem::take(&mut self.chunk);
            let read = tokio::time::timeout_at(deadline, self.bytes_mut().read(&mut chunk)).await;
            self.chunk = chunk;
            match read {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&self.chunk[..n]),
            }
        }
    }

    /// The next value, pushes included, in arrival order.
    pub async fn next(&mut self) -> Value {
        if let Some(v) = self.pushes.pop_front() {
            return v;
        }
        self.read_value(WAIT)
            .await
            .expect("a value from the server")
    }

    /// Send a request with a fresh "req" and return its reply; pushes that
    /// arrive meanwhile are kept for `push`.
    pub async fn call(&mut self, mut v: Value) -> Value {
        let req = self.next_req;
        self.next_req += 1;
        v["req"] = json!(req);
        self.send(&v).await;
        loop {
            let got = self
                .read_value(WAIT)
                .await
                .unwrap_or_else(|| panic!("no reply to {v}"));
            if got.get("req") == Some(&json!(req)) {
                return got;
            }
            self.pushes.push_back(got);
        }
    }

    /// Like `call`, asserting success, returning the reply.
    pub async fn ok(&mut self, v: Value) -> Value {
        let r = self.call(v.clone()).await;
        if r["type"] == "error" {
            let mut shown = v.to_string();
            shown.truncate(300);
            panic!("request {shown} failed: {r}");
        }
        r
    }

    /// Like `call`, asserting an error with this code.
    pub async fn err(&mut self, v: Value, code: &str) -> Value {
        let r = self.call(v.clone()).await;
        assert_eq!(
            r["type"], "error",
            "request {v} should fail with {code}: {r}"
        );
        assert_eq!(r["code"], code, "request {v}: {r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
        r
    }

    /// Whether a push matching `pred` has arrived (and is waiting in the queue).
    pub fn saw_push(&self, pred: impl Fn(&Value) -> bool) -> bool {
        self.pushes.iter().any(pred)
    }

    /// The next push (a value not answering one of our requests).
    pub async fn push(&mut self) -> Value {
        if let Some(v) = self.pushes.pop_front() {
            return v;
        }
        self.read_value(WAIT).await.expect("a push from the server")
    }

    /// The next push of a type, failing on anything else first.
    pub async fn push_of(&mut self, ty: &str) -> Value {
        let p = self.push().await;
        assert_eq!(p["type"], ty, "expected a {ty} push, got {p}");
        p
    }

    /// Assert nothing arrives for a little while.
    pub async fn quiet(&mut self) {
        assert!(
            self.pushes.is_empty(),
            "unexpected pushes: {:?}",
            self.pushes
        );
        if let Some(v) = self.read_value(QUIET).await {
            panic!("unexpected value from the server: {v}");
        }
    }

    /// Wait for the server to close the connection; true if it did.
    pub async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        if let Wire::Ws(ws) = &mut self.stream {
            return web::closed(ws, deadline).await;
        }
        loop {
            let mut chunk = std::mem::take(&mut self.chunk);
            let read = tokio::time::timeout_at(deadline, self.bytes_mut().read(&mut chunk)).await;
            self.chunk = chunk;
            match read {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&self.chunk[..n]),
            }
        }
    }

    pub async fn register(&mut self, name: &str, pw: &str) -> u32 {
        let r = self
            .ok(json!({"type": "register", "name": name, "password": pw}))
            .await;
        assert_eq!(r["type"], "registered");
        assert_eq!(r["user"]["name"], name);
        r["user"]["id"].as_u64().unwrap() as u32
    }

    pub async fn login(&mut self, name: &str, pw: &str) -> Value {
        let r = self
            .ok(json!({"type": "login", "name": name, "password": pw}))
            .await;
        assert_eq!(r["type"], "logged_in");
        r
    }

    pub async fn send_text(&mut self, to: u32, text: &str) -> Value {
        let r = self
            .ok(json!({"type": "send", "to": to, "text": text}))
            .await;
        assert_eq!(r["type"], "sent");
        r
    }

    /// Join a group, and take the `joined` event that follows.
    pub async fn join_group(&mut self, group: u32) {
        self.ok(json!({"type": "group_join", "group": group})).await;
        let ev = self.push_of("group_event").await;
        assert_eq!(ev["event"], "joined");
    }

    /// Join the lobby.
    pub async fn join_lobby(&mut self) {
        self.join_group(LOBBY).await;
    }

    /// Receive `n` message pushes, acknowledge them, return them.
    pub async fn take_messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let p = self.push().await;
            if p["type"] == "message" {
                out.push(p);
            }
        }
        let ids: Vec<Value> = out.iter().map(|m| m["id"].clone()).collect();
        let r = self.ok(json!({"type": "ack", "ids": ids})).await;
        assert_eq!(r["type"], "acked");
        out
    }
}

// ---- chatctl ----------------------------------------------------------------------

pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run chatctl against the chatd whose data directory is `dir`.
pub fn chatctl(dir: &Path, args: &[&str]) -> CtlOutput {
    let out = Command::new(env!("CARGO_BIN_EXE_chatctl"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chatctl");
    CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// chatctl --json ...; must succeed.
pub fn chatctl_json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = chatctl(dir, &all);
    assert_eq!(
        out.code, 0,
        "chatctl {args:?} failed: {}{}",
        out.stdout, out.stderr
    );
    serde_json::from_str(out.stdout.trim()).expect("chatctl prints JSON")
}

// ---- HTTP ---------------------------------------------------------------------------

/// GET a path; (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The sum of a metric's samples in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---- chatd as a separate process ------------------------------------------------

/// A chatd process; killed when dropped, so a failing test leaves none behind.
pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
    /// The mesh (UDP) address, when the node is in a cluster.
    pub mesh: Option<SocketAddr>,
    /// The metrics (HTTP) address, when served.
    pub metrics: Option<SocketAddr>,
    /// The log lines written so far (the latest 10,000).
    pub log: std::sync::Arc<std::sync::Mutex<VecDeque<String>>>,
    /// The dialects' own ports (`--listen-dialect`), by name.
    pub dialect_addrs: Vec<(String, SocketAddr)>,
    /// The web listener (HTTP and WebSocket), when on.
    pub web: Option<SocketAddr>,
    /// chatd's protocol over TLS (`--tls-listen`), when on.
    pub tls: Option<SocketAddr>,
}

impl Proc {
    /// Whether a log line contains all of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait for chatd")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_addr(line: &str) -> Option<SocketAddr> {
    let at = line.find("addr=")? + 5;
    let rest = &line[at..];
    let end = rest.find(' ').unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Start the chatd binary; wait for its "listening" log line.
pub fn spawn_chatd(data_dir: &Path, extra: &[&str]) -> Proc {
    spawn_chatd_env(data_dir, extra, &[])
}

/// Like `spawn_chatd`, with extra environment variables.
pub fn spawn_chatd_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--argon2-memory-kib",
            "64",
            "--argon2-iterations",
            "1",
            "--max-connections-per-address",
            "100000",
            "--max-unauthenticated-per-address",
            "100000",
            "--register-address-burst",
            "100000",
        ])
        .args(
            (!extra.contains(&"--web-listen"))
                .then_some(["--web-listen", "127.0.0.1:0"])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn chatd");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut mesh = None;
    let mut metrics = None;
    let mut web = None;
    let mut tls = None;
    let mut dialect_addrs = Vec::new();
    let log = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
    let addr = loop {
        let line = lines
            .next()
            .expect("chatd exited before listening")
            .expect("read chatd log");
        log.lock().unwrap().push_back(line.clone());
        if line.contains("mesh listening") {
            mesh = log_addr(&line);
        }
        if line.contains("metrics listening") {
            metrics = log_addr(&line);
        }
        if line.contains("web listening") {
            web = log_addr(&line);
        }
        if line.contains("TLS listening") {
            tls = log_addr(&line);
        }
        if line.contains("dialect listening") {
            let name = line
                .split("dialect=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string();
            if let Some(a) = log_addr(&line) {
                dialect_addrs.push((name, a));
            }
        }
        if line.contains("chatd listening") {
            break log_addr(&line).expect("listen address");
        }
    };
    // Keep draining the log so chatd never blocks on a full pipe.
    let keep = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut l = keep.lock().unwrap();
            if l.len() >= 10_000 {
                l.pop_front();
            }
            l.push_back(line);
        }
    });
    Proc {
        child,
        addr,
        mesh,
        metrics,
        log,
        dialect_addrs,
        web,
        tls,
    }
}
