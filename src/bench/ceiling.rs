//! The protocol-aware ceiling: the simplest server that speaks chatd's own
//! protocol and the classic dialect well enough for the 1:1 load, run as its
//! own process like chatd. As on chatd's main port, each request is parsed
//! as a whole JSON value and is classic when it has a `msgid`; register,
//! login, send and ack get the replies chatd writes, with the same fields,
//! and a send is pushed to its recipient as chatd pushes it, in the dialect
//! of the recipient's latest request. No storage, no durability, no threads
//! but tokio's; whatever is queued for a connection goes out in one write.
//! What chatd delivers is measured against what this machine delivers so.

use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Bytes waiting for one connection, and the writer's wake-up.
#[derive(Default)]
struct Outbox {
    buf: Mutex<Vec<u8>>,
    ready: Notify,
    /// The connection's latest request was classic: so are its pushes.
    classic: AtomicBool,
}

impl Outbox {
    fn put(&self, f: impl FnOnce(&mut Vec<u8>)) {
        if let Ok(mut b) = self.buf.lock() {
            f(&mut b);
        }
        self.ready.notify_one();
    }

    /// A reply in the dialect of the latest request.
    fn reply(&self, native: Value, classic: Option<Value>) {
        match self.classic.load(Ordering::Relaxed) {
            false => self.put(|o| json_line(o, &native, b'\n')),
            true => {
                if let Some(c) = classic {
                    self.put(|o| json_line(o, &c, 0))
                }
            }
        }
    }
}

#[derive(Default)]
struct Users {
    /// Name and password of user `i + 1`.
    names: Vec<(String, String)>,
    by_name: HashMap<String, u32>,
    online: HashMap<u32, Arc<Outbox>>,
}

struct Server {
    users: Mutex<Users>,
    next_id: AtomicU64,
}

/// Serve until the process ends; prints `listening ADDR` once bound.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    let server = Arc::new(Server {
        users: Mutex::new(Users::default()),
        // Ids shaped like chatd's (milliseconds in the high bits).
        next_id: AtomicU64::new(crate::bench::wall_ms() << 22),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, server.clone()));
    }
}

async fn connection(stream: TcpStream, server: Arc<Server>) {
    let (mut rd, mut wr) = stream.into_split();
    let outbox = Arc::new(Outbox::default());
    let writer = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                outbox.ready.notified().await;
                if let Ok(mut b) = outbox.buf.lock() {
                    std::mem::swap(&mut *b, &mut out);
                }
                if out.is_empty() {
                    continue;
                }
                if wr.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        })
    };
    let mut me: Option<(u32, String)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    while let Ok(n) = rd.read(&mut buf).await {
        if n == 0 || pending.len() > 1 << 20 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n' || *b == 0) {
            let value = &pending[start..start + end];
            start += end + 1;
            if !value.is_empty() {
                server.request(value, &mut me, &outbox);
            }
        }
        pending.drain(..start);
    }
    if let (Some((id, _)), Ok(mut u)) = (me, server.users.lock()) {
        u.online.remove(&id);
    }
    writer.abort();
}

#[derive(Serialize)]
struct NativePush<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    id: u64,
    from: u32,
    from_name: &'a str,
    to: u32,
    text: &'a str,
    ts: u64,
}

#[derive(Serialize)]
struct NativeSent<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    req: Option<&'a Value>,
    id: u64,
    ts: u64,
    duplicate: bool,
}

#[derive(Serialize)]
struct ClassicPush<'a> {
    msgid: i64,
    id: u32,
    name: &'a str,
    toid: u32,
    msg: &'a str,
    time: &'a str,
}

fn json_line<T: Serialize>(out: &mut Vec<u8>, v: &T, end: u8) {
    let _ = serde_json::to_writer(&mut *out, v);
    out.push(end);
}

fn error(r: Option<&Value>, code: &str) -> Value {
    json!({"type": "error", "req": r, "code": code})
}

impl Server {
    fn request(&self, value: &[u8], me: &mut Option<(u32, String)>, outbox: &Arc<Outbox>) {
        let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(value) else {
            return outbox.reply(error(None, "bad_json"), None);
        };
        let classic = req.contains_key("msgid");
        outbox.classic.store(classic, Ordering::Relaxed);
        let str_of = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or("");
        let kind = match req.get("msgid").and_then(Value::as_i64) {
            Some(1) => "login",
            Some(4) => "register",
            Some(6) => "send",
            Some(_) => "unknown",
            None => str_of("type"),
        };
        let r = req.get("req");
        match kind {
            "register" => {
                let name = str_of("name").to_string();
                let id = self.users.lock().ok().and_then(|mut u| {
                    if u.by_name.contains_key(&name) {
                        return None;
                    }
                    u.names.push((name.clone(), str_of("password").to_string()));
                    let id = u.names.len() as u32;
                    u.by_name.insert(name.clone(), id);
                    Some(id)
                });
                match id {
                    Some(id) => outbox.reply(
                        json!({"type": "registered", "req": r, "user": {"id": id, "name": name}}),
                        Some(json!({"msgid": 5, "errno": 0, "id": id})),
                    ),
                    None => outbox.reply(
                        error(r, "name_taken"),
                        Some(json!({"msgid": 5, "errno": 1, "errmsg": "name taken"})),
                    ),
                }
            }
            "login" => {
                let id = req.get("id").and_then(Value::as_u64).unwrap_or(0) as u32;
                let name = self.users.lock().ok().and_then(|mut u| {
                    let (name, password) = u.names.get((id as usize).checked_sub(1)?)?.clone();
                    (password == str_of("password")).then(|| {
                        u.online.insert(id, outbox.clone());
                        name
                    })
                });
                match &name {
                    Some(n) => outbox.reply(
                        json!({"type": "logged_in", "req": r, "sessions": 1, "user": {"id": id, "name": n}}),
                        Some(json!({"msgid": 2, "errno": 0, "id": id, "name": n, "friends": [], "groups": [], "offlinemsg": []})),
                    ),
                    None => outbox.reply(
                        error(r, "invalid_credentials"),
                        Some(json!({"msgid": 2, "errno": 1, "errmsg": "id or password is invalid!"})),
                    ),
                }
                *me = name.map(|n| (id, n));
            }
            "send" => self.send(&req, classic, me.as_ref(), outbox),
            "ack" => {
                let count = req.get("ids").and_then(Value::as_array).map_or(0, Vec::len);
                outbox.reply(json!({"type": "acked", "req": r, "count": count}), None);
            }
            _ => outbox.reply(
                error(r, "unknown_type"),
                Some(json!({"msgid": 100, "errno": 3, "errmsg": "unknown msgid"})),
            ),
        }
    }

    fn send(
        &self,
        req: &Map<String, Value>,
        classic: bool,
        me: Option<&(u32, String)>,
        outbox: &Arc<Outbox>,
    ) {
        let r = req.get("req");
        let refuse = |code: &str| {
            outbox.reply(
                error(r, code),
                Some(json!({"msgid": 100, "errno": 3, "errmsg": code, "code": code})),
            )
        };
        let Some((from, from_name)) = me else {
            return refuse("not_logged_in");
        };
        let (to, text) = match classic {
            false => (req.get("to"), req.get("text")),
            true => (req.get("toid"), req.get("msg")),
        };
        let (Some(to), Some(text)) = (to.and_then(Value::as_u64), text.and_then(Value::as_str))
        else {
            return refuse("bad_request");
        };
        let to = to as u32;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ts = id >> 22;
        let target = self
            .users
            .lock()
            .ok()
            .and_then(|u| u.online.get(&to).cloned());
        if let Some(t) = target {
            let time = req.get("time").and_then(Value::as_str).unwrap_or("");
            let from = *from;
            match t.classic.load(Ordering::Relaxed) {
                false => t.put(|o| {
                    let push = NativePush {
                        ty: "message",
                        id,
                        from,
                        from_name,
                        to,
                        text,
                        ts,
                    };
                    json_line(o, &push, b'\n')
                }),
                true => t.put(|o| {
                    let push = ClassicPush {
                        msgid: 6,
                        id: from,
                        name: from_name,
                        toid: to,
                        msg: text,
                        time,
                    };
                    json_line(o, &push, 0)
                }),
            }
        }
        if !classic {
            let sent = NativeSent {
                ty: "sent",
                req: r,
                id,
                ts,
                duplicate: false,
            };
            outbox.put(|o| json_line(o, &sent, b'\n'));
        }
    }
}
