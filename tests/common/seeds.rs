//! Clients that speak like the seed systems' real clients, byte for byte as
//! seed-dialects.md describes them: the sponge Qt client, the Go chatroom,
//! the C chatroom and the epoll chatroom.
#![allow(dead_code)]

use super::WAIT;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every dialect on a port of its own, as `--listen-dialect` takes them.
pub fn all_dialect_ports() -> Vec<String> {
    [
        "go-chatroom",
        "c-chatroom",
        "epoll-chatroom",
        "sponge",
        "classic",
        "native",
    ]
    .iter()
    .map(|d| format!("{d}=127.0.0.1:0"))
    .collect()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Read exactly `n` bytes, or None at end of stream or after `wait`.
async fn read_exact(s: &mut TcpStream, n: usize, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

/// Whether the server closed the connection (reading until it does).
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 70_000];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

// ---- sponge ---------------------------------------------------------------------

/// The sponge client: raw JSON objects in, one JSON document per read out.
pub struct Sponge {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Sponge {
    pub async fn connect(addr: SocketAddr) -> Sponge {
        Sponge {
            stream: connect(addr).await,
            buf: Vec::new(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Send a request the way the client formats it (no delimiter).
    pub async fn send(&mut self, v: Value) {
        self.send_raw(v.to_string().as_bytes()).await;
    }

    /// The next JSON value, however the reads cut it.
    pub async fn read(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match it.next() {
                Some(Ok(v)) => {
                    let used = it.byte_offset();
                    self.buf.drain(..used);
                    return Some(v);
                }
                Some(Err(e)) if !e.is_eof() => {
                    panic!(
                        "server sent invalid JSON: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )
                }
                _ => {}
            }
            let mut chunk = vec![0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    pub async fn next(&mut self) -> Value {
        self.read(WAIT).await.expect("a value from the server")
    }

    /// The next value with this msgType, skipping others.
    pub async fn next_of(&mut self, msg_type: i64) -> Value {
        loop {
            let v = self.next().await;
            if v["msgType"] == msg_type {
                return v;
            }
        }
    }

    pub async fn quiet(&mut self) {
        if let Some(v) = self.read(super::QUIET).await {
            panic!("unexpected value from the server: {v}");
        }
    }

    /// Register with a SHA-224-like hex password; returns the new id.
    pub async fn register(&mut self, name: &str) -> u32 {
        self.send(json!({"msgType": 2, "name": name, "password": hexpw(name)}))
            .await;
        let r = self.next().await;
        assert_eq!(
            (r["msgType"].clone(), r["errno"].clone()),
            (json!(200), json!(200)),
            "{r}"
        );
        r["USERID"].as_u64().expect("USERID") as u32
    }

    pub async fn login(&mut self, id: u32, name: &str) {
        self.send(json!({"msgType": 1, "USERID": id, "password": hexpw(name)}))
            .await;
        let r = self.next().await;
        assert_eq!(r, json!({"msgType": 200, "errno": 200}));
    }

    pub async fn closed(&mut self) -> bool {
        closed(&mut self.stream).await
    }
}

/// A stand-in for the hex SHA-224 the client sends (chatd treats it as an
/// opaque password).
pub fn hexpw(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}").repeat(4)[..56].to_string()
}

// ---- the Go chatroom ----------------------------------------------------------------

/// The Go chatroom client: a 4-byte big-endian length, then JSON whose
/// `data` is JSON in a string. It writes the length and the body separately.
pub struct Go {
    pub stream: TcpStream,
}

/// The largest frame the client can read.
pub const GO_MAX: usize = 8096;

impl Go {
    pub async fn connect(addr: SocketAddr) -> Go {
        Go {
            stream: connect(addr).await,
        }
    }

    pub fn frame(ty: &str, data: &Value) -> Vec<u8> {
        let body = json!({"type": ty, "data": data.to_string()}).to_string();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body.as_bytes());
        out
    }

    /// Send as the client does: the 4-byte length, then the body.
    pub async fn send(&mut self, ty: &str, data: Value) {
        let f = Go::frame(ty, &data);
        self.stream.write_all(&f[..4]).await.unwrap();
        self.stream.write_all(&f[4..]).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// One frame, as the client reads it: exactly 4 bytes, then the body.
    /// Returns (type, data parsed from its string).
    pub async fn read(&mut self, wait: Duration) -> Option<(String, Value)> {
        let head = read_exact(&mut self.stream, 4, wait).await?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        assert!(len <= GO_MAX, "a {len}-byte frame would crash the client");
        let body = read_exact(&mut self.stream, len, WAIT)
            .await
            .expect("frame body");
        let v: Value = serde_json::from_slice(&body).expect("frame is JSON");
        let ty = v["type"].as_str().expect("type").to_string();
        let data: Value =
            serde_json::from_str(v["data"].as_str().expect("data is a string")).expect("data");
        Some((ty, data))
    }

    pub async fn next(&mut self) -> (String, Value) {
        self.read(WAIT).await.expect("a frame from the server")
    }

    /// The next frame of a type, skipping others.
    pub async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let (t, d) = self.next().await;
            if t == ty {
                return d;
            }
        }
    }

    pub async fn quiet(&mut self) {
        if let Some(f) = self.read(super::QUIET).await {
            panic!("unexpected frame from the server: {f:?}");
        }
    }

    pub async fn register(&mut self, id: u32, pw: &str, name: &str) -> Value {
        self.send(
            "RegisterMes",
            json!({"user": {"userId": id, "userPwd": pw, "userName": name, "userStatus": 0, "sex": ""}}),
        )
        .await;
        let (ty, data) = self.next().await;
        assert_eq!(ty, "RegisterResMes");
        data
    }

    pub async fn login(&mut self, id: u32, pw: &str) -> Value {
        self.send(
            "LoginMes",
            json!({"userId": id, "userPwd": pw, "userName": ""}),
        )
        .await;
        let (ty, data) = self.next().await;
        assert_eq!(ty, "LoginResMes", "the first frame answers the login");
        data
    }

    pub async fn say(&mut self, id: u32, content: &str) {
        self.send(
            "SmsMes",
            json!({"content": content, "userId": id, "userPwd": "", "userName": "", "userStatus": 0, "sex": ""}),
        )
        .await;
    }

    pub async fn closed(&mut self) -> bool {
        closed(&mut self.stream).await
    }
}

/// A Go user registered and logged in on `addr`.
pub async fn go_user(addr: SocketAddr, id: u32, name: &str) -> Go {
    let mut g = Go::connect(addr).await;
    assert_eq!(g.register(id, "pw", name).await["code"], 200);
    let mut g = Go::connect(addr).await;
    assert_eq!(g.login(id, "pw").await["code"], 200);
    g
}

// ---- the C chatroom -------------------------------------------------------------------

pub const C_RECORD: usize = 151;

/// The C chatroom client: `struct send_pack { char name[50]; char
/// data[100]; char type; }`.
pub struct CRoom {
    pub stream: TcpStream,
    pub name: String,
}

/// A record as the client builds it: what it never set is left as garbage.
pub fn c_record(name: &str, data: &str, ty: u8) -> Vec<u8> {
    let mut r = vec![0x5au8; C_RECORD];
    r[..name.len()].copy_from_slice(name.as_bytes());
    r[name.len()] = 0;
    r[50..50 + data.len()].copy_from_slice(data.as_bytes());
    r[50 + data.len()] = 0;
    r[150] = ty;
    r
}

fn c_field(b: &[u8]) -> String {
    let end = b
        .iter()
        .position(|c| *c == 0)
        .expect("NUL-terminated field");
    String::from_utf8(b[..end].to_vec()).expect("fields are whole UTF-8")
}

impl CRoom {
    /// Connect and announce `name` (the first record, type 1).
    pub async fn join(addr: SocketAddr, name: &str) -> CRoom {
        let mut c = CRoom {
            stream: connect(addr).await,
            name: name.to_string(),
        };
        let mut first = vec![0x33u8; C_RECORD];
        first[..name.len()].copy_from_slice(name.as_bytes());
        first[name.len()] = 0;
        first[150] = 1;
        c.stream.write_all(&first).await.unwrap();
        c
    }

    pub async fn say(&mut self, text: &str) {
        let r = c_record(&self.name, text, 0);
        self.stream.write_all(&r).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// One record: (name, data, type).
    pub async fn read(&mut self, wait: Duration) -> Option<(String, String, u8)> {
        let r = read_exact(&mut self.stream, C_RECORD, wait).await?;
        Some((c_field(&r[..50]), c_field(&r[50..150]), r[150]))
    }

    pub async fn next(&mut self) -> (String, String, u8) {
        self.read(WAIT).await.expect("a record from the server")
    }

    /// The next chat record (type 0), skipping presence records.
    pub async fn next_chat(&mut self) -> (String, String) {
        loop {
            let (n, d, t) = self.next().await;
            if t == 0 {
                return (n, d);
            }
        }
    }

    pub async fn quiet(&mut self) {
        if let Some(r) = self.read(super::QUIET).await {
            panic!("unexpected record from the server: {r:?}");
        }
    }

    pub async fn closed(&mut self) -> bool {
        closed(&mut self.stream).await
    }
}

// ---- the epoll chatroom -----------------------------------------------------------------

pub const EPOLL_RECORD: usize = 65535;

/// The epoll chatroom client: the first 65535 bytes of `struct Msg { int
/// type; int fromID; int toID; char content[65535]; }`.
pub struct Epoll {
    pub stream: TcpStream,
}

/// A record as the client sends a typed line: ints never set, the line
/// with its newline, NUL-padded.
pub fn epoll_record(line: &str) -> Vec<u8> {
    let mut r = vec![0u8; EPOLL_RECORD];
    r[..12].copy_from_slice(&[0xee; 12]);
    r[12..12 + line.len()].copy_from_slice(line.as_bytes());
    r
}

impl Epoll {
    pub async fn connect(addr: SocketAddr) -> Epoll {
        Epoll {
            stream: connect(addr).await,
        }
    }

    /// Connect and read the welcome; returns the client and its chat id.
    pub async fn join(addr: SocketAddr) -> (Epoll, u32) {
        let mut e = Epoll::connect(addr).await;
        let w = e.next().await;
        let id = w
            .strip_prefix("Welcome you join to the chat room! Your chat ID is: Client #")
            .unwrap_or_else(|| panic!("a welcome, got {w:?}"))
            .parse()
            .expect("a chat id");
        (e, id)
    }

    pub async fn say(&mut self, line: &str) {
        let r = epoll_record(&format!("{line}\n"));
        self.stream.write_all(&r).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// One record's content (from offset 12, up to its NUL).
    pub async fn read(&mut self, wait: Duration) -> Option<String> {
        let r = read_exact(&mut self.stream, EPOLL_RECORD, wait).await?;
        let content = &r[12..];
        let end = content.iter().position(|c| *c == 0).expect("NUL-padded");
        assert!(content[end..].iter().all(|c| *c == 0), "padding is NULs");
        Some(String::from_utf8(content[..end].to_vec()).expect("UTF-8"))
    }

    pub async fn next(&mut self) -> String {
        self.read(WAIT).await.expect("a record from the server")
    }

    pub async fn quiet(&mut self) {
        if let Some(r) = self.read(super::QUIET).await {
            panic!("unexpected record from the server: {r:?}");
        }
    }

    pub async fn closed(&mut self) -> bool {
        closed(&mut self.stream).await
    }
}
