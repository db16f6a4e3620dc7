//! `chatbench fuzz`: mutated requests of every dialect against a running
//! chatd over TCP, while a probe client checks that the server still
//! answers. Reports what was sent, how often the server closed a
//! connection (as it should for a stream it cannot follow), the probe's
//! latency and stalls, whether the server went away, and its memory.
//!
//! Requests start from valid ones of each dialect and are mutated: bytes
//! flipped, inserted, removed, cut, repeated, numbers made huge, and values
//! spliced together.

use super::client::{Res, Setup};
use super::{new_histogram, rss_all, Common, Latency, Proto, Report};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The dialects a fuzz run reaches, and where.
#[derive(Clone, Debug, Default)]
pub struct Ports {
    pub go: Option<SocketAddr>,
    pub c: Option<SocketAddr>,
    pub epoll: Option<SocketAddr>,
}

pub struct FuzzOpts {
    pub common: Common,
    pub ports: Ports,
    /// Fuzzing connections per dialect.
    pub clients: usize,
    pub duration: Duration,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Native,
    Classic,
    Sponge,
    Go,
    C,
    Epoll,
}

fn json_templates(kind: Kind) -> Vec<Vec<u8>> {
    let v = match kind {
        Kind::Native => vec![
            json!({"type": "register", "name": "fz", "password": "pw", "req": 1}),
            json!({"type": "login", "name": "fz", "password": "pw"}),
            json!({"type": "send", "to": 1, "text": "hello", "cid": "c1"}),
            json!({"type": "history", "with": 1, "limit": 50}),
            json!({"type": "group_create", "name": "g", "desc": "d"}),
            json!({"type": "ack", "ids": [1, 2, 3]}),
        ],
        Kind::Classic => vec![
            json!({"msgid": 4, "name": "fzc", "password": "pw"}),
            json!({"msgid": 1, "id": 1, "password": "pw"}),
            json!({"msgid": 6, "id": 1, "name": "x", "toid": 2, "msg": "hi", "time": "2024-05-01 12:00:00"}),
            json!({"msgid": 1009, "id": 1, "groupid": 1, "msg": "hi"}),
        ],
        Kind::Sponge => vec![
            json!({"msgType": 2, "name": "fzs", "password": "abcdef"}),
            json!({"msgType": 1, "USERID": 1, "password": "abcdef"}),
            json!({"msgType": 4, "FROMID": 1, "TOID": 2, "msg": "hi", "sendTime": 1}),
            json!({"msgType": 15, "keyword": "fz"}),
        ],
        Kind::Go => {
            let frame = |ty: &str, data: serde_json::Value| {
                let body = json!({"type": ty, "data": data.to_string()}).to_string();
                let mut f = (body.len() as u32).to_be_bytes().to_vec();
                f.extend_from_slice(body.as_bytes());
                f
            };
            return vec![
                frame("LoginMes", json!({"userId": 100, "userPwd": "pw"})),
                frame(
                    "RegisterMes",
                    json!({"user": {"userId": 100, "userPwd": "pw", "userName": "fzg"}}),
                ),
                frame("SmsMes", json!({"content": "hi", "userId": 100})),
            ];
        }
        Kind::C => {
            let mut r = vec![0u8; 151];
            r[..4].copy_from_slice(b"fzc\0");
            r[50..53].copy_from_slice(b"hi\0");
            r[150] = 0;
            let mut first = r.clone();
            first[150] = 1;
            return vec![first, r];
        }
        Kind::Epoll => {
            let mut r = vec![0u8; 65535];
            r[12..18].copy_from_slice(b"hello\n");
            let mut p = vec![0u8; 65535];
            p[12..21].copy_from_slice(b"\\1 psst\n\0");
            return vec![r, p];
        }
    };
    let term = match kind {
        Kind::Classic => 0u8,
        Kind::Sponge => b' ',
        _ => b'\n',
    };
    v.into_iter()
        .map(|j| {
            let mut b = j.to_string().into_bytes();
            b.push(term);
            b
        })
        .collect()
}

/// One mutation of a template (or of two spliced together).
fn mutate(rng: &mut StdRng, templates: &[Vec<u8>]) -> Vec<u8> {
    let mut b = templates[rng.gen_range(0..templates.len())].clone();
    for _ in 0..rng.gen_range(1..4) {
        if b.is_empty() {
            b.push(rng.gen());
        }
        let at = rng.gen_range(0..b.len());
        match rng.gen_range(0..8) {
            0 => b[at] = rng.gen(),
            1 => b.insert(at, rng.gen()),
            2 => {
                b.remove(at);
            }
            3 => b.truncate(at),
            4 => {
                let end = (at + rng.gen_range(1..16)).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
            5 => {
                b.splice(at..at, b"99999999999999999999".iter().copied());
            }
            6 => {
                let other = &templates[rng.gen_range(0..templates.len())];
                let cut = rng.gen_range(0..=other.len());
                b.truncate(at);
                b.extend_from_slice(&other[cut..]);
            }
            _ => b[at] = [b'"', b'{', b'}', b'\\', 0, b'\n'][rng.gen_range(0..6)],
        }
    }
    b
}

struct Counts {
    sent: AtomicU64,
    closed: AtomicU64,
    refused: AtomicU64,
    stop: AtomicBool,
}

/// One fuzzing connection after another until the run ends.
async fn fuzzer(kind: Kind, addr: SocketAddr, seed: u64, counts: Arc<Counts>) {
    let templates = json_templates(kind);
    let mut rng = StdRng::seed_from_u64(seed);
    while !counts.stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(addr).await else {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut rd, mut wr) = stream.into_split();
        // Replies are read and dropped, so the server never blocks on us.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        for _ in 0..rng.gen_range(1..200) {
            if counts.stop.load(Ordering::Relaxed) {
                break;
            }
            let req = mutate(&mut rng, &templates);
            if wr.write_all(&req).await.is_err() {
                break;
            }
            counts.sent.fetch_add(1, Ordering::Relaxed);
        }
        let _ = wr.shutdown().await;
        if tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .is_ok()
        {
            counts.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A logged-in native client that pings; (latency, stalls, gone).
async fn probe(addr: SocketAddr, c: &Common, stop: &AtomicBool) -> Res<(Latency, u64, bool)> {
    let mut s = Setup::connect(addr, Proto::Native).await?;
    let name = format!("{}-probe", super::run_prefix());
    let id = s.register(&name, &c.password).await?;
    s.login(id, &c.password).await?;
    let mut h = new_histogram();
    let mut stalls = 0;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), s.call(json!({"type": "ping"}))).await {
            Ok(Ok(_)) => {
                let us = t.elapsed().as_micros() as u64;
                let _ = h.record(us.max(1));
                if us > 1_000_000 {
                    stalls += 1;
                }
            }
            _ => return Ok((Latency::of(&h), stalls + 1, true)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((Latency::of(&h), stalls, false))
}

pub async fn fuzz(o: &FuzzOpts) -> Res<Report> {
    let c = &o.common;
    let main = *c.addrs.first().ok_or("give --addr")?;
    let mut targets = vec![
        (Kind::Native, main),
        (Kind::Classic, main),
        (Kind::Sponge, main),
    ];
    targets.extend(o.ports.go.map(|a| (Kind::Go, a)));
    targets.extend(o.ports.c.map(|a| (Kind::C, a)));
    targets.extend(o.ports.epoll.map(|a| (Kind::Epoll, a)));
    let before = rss_all(&c.pids);
    let counts = Arc::new(Counts {
        sent: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    for (i, (kind, addr)) in targets.iter().enumerate() {
        for j in 0..o.clients.max(1) {
            let seed = o.seed ^ ((i as u64) << 32 | j as u64);
            tasks.push(tokio::spawn(fuzzer(*kind, *addr, seed, counts.clone())));
        }
    }
    let started = Instant::now();
    let stopper = {
        let counts = counts.clone();
        let d = o.duration;
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            counts.stop.store(true, Ordering::Relaxed);
        })
    };
    let probed = probe(main, c, &counts.stop).await;
    counts.stop.store(true, Ordering::Relaxed);
    stopper.abort();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let secs = started.elapsed().as_secs_f64();
    // Memory once the load is gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_all(&c.pids);
    let (latency, stalls, gone) = probed?;
    let gone = gone
        || c.pids.iter().any(|p| super::rss_kib(*p).is_none())
        || TcpStream::connect(main).await.is_err();
    let sent = counts.sent.load(Ordering::Relaxed);
    let mut r = Report {
        scenario: "fuzz".into(),
        proto: targets.len().to_string() + " dialects",
        clients: targets.len() * o.clients.max(1),
        seconds: secs,
        sent,
        sent_per_sec: sent as f64 / secs,
        latency,
        errors: u64::from(gone) + stalls,
        ..Report::default()
    };
    r.memory(&before, &after);
    r.extra.insert("server_gone".into(), json!(gone));
    r.extra.insert("probe_stalls".into(), json!(stalls));
    r.extra.insert(
        "connections".into(),
        json!(counts.closed.load(Ordering::Relaxed)),
    );
    r.extra.insert(
        "refused".into(),
        json!(counts.refused.load(Ordering::Relaxed)),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_bounded_and_vary() {
        let mut rng = StdRng::seed_from_u64(7);
        let t = json_templates(Kind::Native);
        let outs: Vec<Vec<u8>> = (0..100).map(|_| mutate(&mut rng, &t)).collect();
        assert!(outs.iter().all(|o| o.len() < 1000));
        let distinct: std::collections::HashSet<_> = outs.iter().collect();
        assert!(distinct.len() > 50);
    }
}
