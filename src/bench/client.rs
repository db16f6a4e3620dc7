//! Bench clients: setting up users (register, log in, groups) with plain
//! request/reply exchanges, then the hot path: encoding sends and picking
//! receipts out of the byte stream without full JSON parsing.

use super::{Proto, Transport};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub type Res<T> = Result<T, String>;

/// A connection's halves, whatever it runs over.
pub type Rd = Box<dyn AsyncRead + Send + Unpin>;
pub type Wr = Box<dyn AsyncWrite + Send + Unpin>;

const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection during setup: one request, one reply.
pub struct Setup {
    rd: Rd,
    wr: Wr,
    buf: Vec<u8>,
    proto: Proto,
    next_req: u64,
}

impl Setup {
    pub async fn connect(addr: SocketAddr, proto: Proto) -> Res<Setup> {
        Setup::open(addr, proto, Transport::Tcp).await
    }

    /// `addr` is the web listener's for WebSocket.
    pub async fn open(addr: SocketAddr, proto: Proto, transport: Transport) -> Res<Setup> {
        let (rd, wr): (Rd, Wr) = match transport {
            Transport::Tcp => {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Transport::Ws if proto != Proto::Native => {
                return Err(
                    "over WebSocket only chatd's own protocol (--dialect native) is spoken".into(),
                )
            }
            Transport::Ws => {
                let (r, w) = super::ws::connect(addr).await?;
                (Box::new(r), Box::new(w))
            }
        };
        Ok(Setup {
            rd,
            wr,
            buf: Vec::new(),
            proto,
            next_req: 1,
        })
    }

    fn terminator(&self) -> u8 {
        match self.proto {
            Proto::Classic => 0,
            _ => b'\n',
        }
    }

    async fn read_value(&mut self) -> Res<Value> {
        let t = self.terminator();
        loop {
            if let Some(end) = self
                .buf
                .iter()
                .position(|b| *b == t || *b == b'\n' || *b == 0)
            {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let text = &line[..line.len() - 1];
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(text)
                    .map_err(|e| format!("bad JSON from server: {e}"));
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(SETUP_TIMEOUT, self.rd.read(&mut chunk))
                .await
                .map_err(|_| "server did not answer".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A native request and its reply (pushes in between are skipped).
    pub async fn call(&mut self, mut req: Value) -> Res<Value> {
        let id = self.next_req;
        self.next_req += 1;
        req["req"] = json!(id);
        let mut line = req.to_string();
        line.push('\n');
        self.wr
            .write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let v = self.read_value().await?;
            if v["req"] == json!(id) {
                if v["type"] == "error" {
                    return Err(format!("{}: {}", v["code"], v["message"]));
                }
                return Ok(v);
            }
        }
    }

    /// A classic request answered by a msgid (LOGIN_ACK or REG_ACK).
    async fn classic(&mut self, req: Value, ack: i64) -> Res<Value> {
        let mut bytes = req.to_string().into_bytes();
        bytes.push(0);
        self.wr.write_all(&bytes).await.map_err(|e| e.to_string())?;
        loop {
            let v = self.read_value().await?;
            if v["msgid"] == json!(ack) {
                if v["errno"] != 0 {
                    return Err(format!("classic error: {v}"));
                }
                return Ok(v);
            }
        }
    }

    /// Register `name`; its user id.
    pub async fn register(&mut self, name: &str, password: &str) -> Res<u32> {
        let id = match self.proto {
            Proto::Classic => self
                .classic(json!({"msgid": 4, "name": name, "password": password}), 5)
                .await?["id"]
                .as_u64(),
            _ => self
                .call(json!({"type": "register", "name": name, "password": password}))
                .await?["user"]["id"]
                .as_u64(),
        };
        id.map(|i| i as u32)
            .ok_or_else(|| "no id in the answer".into())
    }

    pub async fn login(&mut self, id: u32, password: &str) -> Res<()> {
        match self.proto {
            Proto::Classic => {
                self.classic(json!({"msgid": 1, "id": id, "password": password}), 2)
                    .await?;
            }
            _ => {
                self.call(json!({"type": "login", "id": id, "password": password}))
                    .await?;
            }
        }
        Ok(())
    }

    /// Introduce ourselves to the relay (ceiling runs).
    pub async fn relay_hello(&mut self, id: u32) -> Res<()> {
        self.wr
            .write_all(format!("hello {id}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())
    }

    /// Hand the connection over to the load (anything buffered is pushes).
    pub fn into_parts(self) -> (Rd, Wr, Vec<u8>) {
        (self.rd, self.wr, self.buf)
    }
}

/// Words to pad texts with: something like chat, so that what storage
/// does with it (compression) is measured on text like the real thing,
/// not on one letter repeated.
fn padding(seq: u64, len: usize) -> &'static [u8] {
    static TEXT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "the", "you", "and", "to", "it", "is", "that", "for", "on", "are", "with", "this",
            "be", "at", "have", "was", "but", "not", "we", "can", "what", "so", "all", "if",
            "just", "about", "get", "like", "know", "when", "time", "will", "see", "there", "good",
            "how", "now", "then", "think", "yes", "no", "ok", "maybe", "tomorrow", "today",
            "meeting", "lunch", "where", "sorry", "thanks", "great", "sure", "later", "call", "me",
            "back", "home", "work", "late", "again", "please", "send", "file", "photo", "look",
            "here", "tonight", "weekend", "coffee", "train", "minutes", "soon", "really", "funny",
            "right", "fine", "busy", "free", "after", "before", "morning",
        ];
        let mut out = Vec::with_capacity(128 << 10);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while out.len() < 128 << 10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out
    });
    let len = len.min(text.len() / 2);
    let at = (seq.wrapping_mul(7919) % (text.len() / 2) as u64) as usize;
    &text[at..at + len]
}

/// Append one send to `out`. The text starts with the send time (ns since
/// the bench epoch) and a tag (`sender seq`), padded to `size` bytes.
pub fn encode_send(
    out: &mut Vec<u8>,
    proto: Proto,
    to: u32,
    group: bool,
    t_ns: u64,
    tag: (u32, u64),
    size: usize,
) {
    use std::io::Write;
    let start = out.len();
    let _ = match (proto, group) {
        (Proto::Native, false) => write!(out, "{{\"type\":\"send\",\"to\":{to},\"text\":\""),
        (Proto::Native, true) => write!(out, "{{\"type\":\"send\",\"group\":{to},\"text\":\""),
        (Proto::Classic, false) => write!(out, "{{\"msgid\":6,\"id\":0,\"name\":\"b\",\"toid\":{to},\"time\":\"2024-01-01 00:00:00\",\"msg\":\""),
        (Proto::Classic, true) => write!(out, "{{\"msgid\":10,\"id\":0,\"name\":\"b\",\"groupid\":{to},\"time\":\"2024-01-01 00:00:00\",\"msg\":\""),
        (Proto::Relay, _) => write!(out, "{to}\t"),
    };
    let text_start = out.len();
    let _ = write!(out, "{t_ns} {} {} ", tag.0, tag.1);
    let used = out.len() - text_start;
    let pad = size.saturating_sub(used).max(1);
    out.extend_from_slice(padding(tag.1, pad));
    let _ = start;
    match proto {
        Proto::Native => out.extend_from_slice(b"\"}\n"),
        Proto::Classic => out.extend_from_slice(b"\"}\0"),
        Proto::Relay => out.push(b'\n'),
    }
}

pub fn encode_ack(out: &mut Vec<u8>, ids: &[u64]) {
    use std::io::Write;
    out.extend_from_slice(b"{\"type\":\"ack\",\"ids\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{id}");
    }
    out.extend_from_slice(b"]}\n");
}

/// What one value from the server was, for the load.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A message (or group message): its id (native), send time, and tag.
    Message {
        id: u64,
        t_ns: u64,
        sender: u32,
        seq: u64,
    },
    /// The server accepted one of our sends.
    Sent,
    Error(String),
    Other,
}

#[derive(Deserialize)]
struct NativeIn<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    /// A number over TCP, a string over WebSocket.
    #[serde(default, deserialize_with = "id_either")]
    id: u64,
    #[serde(default, borrow)]
    text: Option<&'a str>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct ClassicIn<'a> {
    msgid: i64,
    #[serde(default, borrow)]
    msg: Option<&'a str>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
}

fn id_either<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<'a> {
        Num(u64),
        Str(&'a str),
    }
    match Either::deserialize(d)? {
        Either::Num(n) => Ok(n),
        Either::Str(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn tag_of(text: &str) -> Option<(u64, u32, u64)> {
    let mut it = text.split(' ');
    let t = it.next()?.parse().ok()?;
    let s = it.next()?.parse().ok()?;
    let q = it.next()?.parse().ok()?;
    Some((t, s, q))
}

/// A received message with server id `id`, if its text is one of ours.
fn seen_message(id: u64, text: Option<&str>) -> Seen {
    match text.and_then(tag_of) {
        Some((t_ns, sender, seq)) => Seen::Message {
            id,
            t_ns,
            sender,
            seq,
        },
        None => Seen::Other,
    }
}

pub fn decode(proto: Proto, value: &[u8]) -> Seen {
    match proto {
        Proto::Native => match serde_json::from_slice::<NativeIn>(value) {
            Ok(v) => match v.ty {
                "message" => seen_message(v.id, v.text),
                "sent" => Seen::Sent,
                "error" => Seen::Error(v.code.unwrap_or("?").to_string()),
                _ => Seen::Other,
            },
            Err(e) => Seen::Error(format!("unparsable: {e}")),
        },
        Proto::Classic => match serde_json::from_slice::<ClassicIn>(value) {
            Ok(v) if v.msgid == 6 || v.msgid == 10 => seen_message(0, v.msg),
            Ok(v) if v.msgid == 100 => Seen::Error(v.code.unwrap_or("?").to_string()),
            Ok(_) => Seen::Other,
            Err(e) => Seen::Error(format!("unparsable: {e}")),
        },
        Proto::Relay => {
            // "from\ttext"
            let text = std::str::from_utf8(value).unwrap_or("");
            seen_message(0, text.split_once('\t').map(|(_, t)| t))
        }
    }
}

/// Splits a received byte stream into values (newline or NUL terminated).
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
    start: usize,
}

impl Lines {
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete value, without its terminator.
    pub fn next_value(&mut self) -> Option<&[u8]> {
        loop {
            let rest = &self.buf[self.start..];
            let end = rest.iter().position(|b| *b == b'\n' || *b == 0)?;
            let v = self.start..self.start + end;
            self.start += end + 1;
            if !v.is_empty() {
                return Some(&self.buf[v]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_round_trip_through_the_decoder() {
        for proto in [Proto::Native, Proto::Classic, Proto::Relay] {
            let mut out = Vec::new();
            encode_send(&mut out, proto, 7, false, 123_456, (3, 99), 64);
            let v = &out[..out.len() - 1];
            // What a server would send on: for the relay, "from\ttext".
            let pushed: Vec<u8> = match proto {
                Proto::Native => {
                    let req: Value = serde_json::from_slice(v).unwrap();
                    serde_json::to_vec(&json!({"type": "message", "id": 5, "text": req["text"]}))
                        .unwrap()
                }
                Proto::Classic => {
                    let req: Value = serde_json::from_slice(v).unwrap();
                    assert_eq!(req["msg"].as_str().unwrap().len(), 64);
                    serde_json::to_vec(&json!({"msgid": 6, "msg": req["msg"]})).unwrap()
                }
                Proto::Relay => {
                    let s = String::from_utf8(v.to_vec()).unwrap();
                    format!("1\t{}", s.split_once('\t').unwrap().1).into_bytes()
                }
            };
            match decode(proto, &pushed) {
                Seen::Message {
                    t_ns, sender, seq, ..
                } => {
                    assert_eq!((t_ns, sender, seq), (123_456, 3, 99), "{proto:?}")
                }
                other => panic!("{proto:?}: {other:?}"),
            }
        }
    }
}
