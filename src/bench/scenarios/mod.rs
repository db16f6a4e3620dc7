//! The load scenarios. Each sets its users up first (registration and login
//! are not measured, except by the login storm), then measures.

mod drain;
mod fanout;
mod history;
mod sessions;

use super::client::{decode, encode_ack, encode_send, Lines, Res, Seen, Setup};
use super::client::{Rd, Wr};
use super::{new_histogram, now_ns, rss_all, run_prefix, Common, Latency, Proto, Report};
pub use drain::*;
pub use fanout::*;
use hdrhistogram::Histogram;
pub use history::*;
use serde_json::json;
pub use sessions::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

/// How long to wait, after the senders stop, for what is in flight.
const DRAIN: Duration = Duration::from_secs(15);
/// Sends (and acks) written in one write at most.
const MAX_BATCH: usize = 64;

fn addr_for(c: &Common, i: usize) -> SocketAddr {
    c.addrs[i % c.addrs.len()]
}

/// A logged-in load connection: its halves and what was read past the login.
type Conn = (Rd, Wr, Vec<u8>);

/// Register `names` on `addr`s (native, `concurrency` connections at a time).
async fn register_all(c: &Common, names: &[String]) -> Res<Vec<u32>> {
    let ids = Arc::new(Mutex::new(vec![0u32; names.len()]));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..c.setup_concurrency.min(names.len()).max(1) {
        let (ids, next, names, c) = (ids.clone(), next.clone(), names.to_vec(), c.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Setup::open(addr_for(&c, w), Proto::Native, c.transport).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= names.len() {
                    return Ok::<(), String>(());
                }
                // Register where this user will log in (it exists there at once).
                if c.addrs.len() > 1 && addr_for(&c, i) != addr_for(&c, w) {
                    let mut here = Setup::open(addr_for(&c, i), Proto::Native, c.transport).await?;
                    let id = here.register(&names[i], &c.password).await?;
                    ids.lock().map_err(|_| "lock")?[i] = id;
                } else {
                    let id = conn.register(&names[i], &c.password).await?;
                    ids.lock().map_err(|_| "lock")?[i] = id;
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let ids = ids.lock().map_err(|_| "lock")?.clone();
    Ok(ids)
}

/// Open one logged-in load connection per user.
async fn login_all(c: &Common, ids: &[u32]) -> Res<Vec<Conn>> {
    let conns: Arc<Mutex<Vec<Option<Conn>>>> =
        Arc::new(Mutex::new((0..ids.len()).map(|_| None).collect()));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..c.setup_concurrency.min(ids.len()).max(1) {
        let (conns, next, ids, c) = (conns.clone(), next.clone(), ids.to_vec(), c.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= ids.len() {
                    return Ok::<(), String>(());
                }
                let mut s = Setup::open(addr_for(&c, i), c.proto, c.transport).await?;
                if c.proto == Proto::Relay {
                    s.relay_hello(ids[i]).await?;
                } else {
                    s.login(ids[i], &c.password).await?;
                }
                conns.lock().map_err(|_| "lock")?[i] = Some(s.into_parts());
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let mut v = conns.lock().map_err(|_| "lock")?;
    v.iter_mut()
        .map(|c| c.take().ok_or_else(|| "a login failed".to_string()))
        .collect()
}

/// Counters shared by every client of a run.
struct Shared {
    epoch: Instant,
    stop: AtomicBool,
    /// Tells readers to hand in their histograms and end (a token, not a
    /// notification: a reader busy when it is given must still see it).
    done: tokio_util::sync::CancellationToken,
    measuring: AtomicBool,
    sent_total: AtomicU64,
    delivered_total: AtomicU64,
    sent: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    histograms: Mutex<Vec<Histogram<u64>>>,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            done: tokio_util::sync::CancellationToken::new(),
            measuring: AtomicBool::new(false),
            sent_total: AtomicU64::new(0),
            delivered_total: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            histograms: Mutex::new(Vec::new()),
        })
    }

    fn error(&self, e: String) {
        if self.measuring.load(Ordering::Relaxed) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut f) = self.first_error.lock() {
            f.get_or_insert(e);
        }
    }

    fn latency(&self) -> Latency {
        let mut all = new_histogram();
        if let Ok(hs) = self.histograms.lock() {
            for h in hs.iter() {
                let _ = all.add(h);
            }
        }
        Latency::of(&all)
    }
}

/// What a reader does with a received message.
type OnMessage = Arc<dyn Fn(u32, u64) + Send + Sync>;

/// Start a connection's reader; for native clients, also the channel on
/// which it passes the ids to acknowledge to the connection's writer.
fn spawn_reader(
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    rd: Rd,
    pending: Vec<u8>,
    proto: Proto,
    shared: &Arc<Shared>,
    on_message: &OnMessage,
) -> Option<mpsc::UnboundedReceiver<u64>> {
    let (ack_tx, ack_rx) = if proto == Proto::Native {
        let (t, r) = mpsc::unbounded_channel();
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    tasks.push(tokio::spawn(reader(
        rd,
        pending,
        proto,
        shared.clone(),
        ack_tx,
        on_message.clone(),
    )));
    ack_rx
}

/// Read one client's stream: count, time, acknowledge, release windows.
async fn reader(
    mut rd: Rd,
    pending: Vec<u8>,
    proto: Proto,
    shared: Arc<Shared>,
    acks: Option<mpsc::UnboundedSender<u64>>,
    on_message: OnMessage,
) {
    let mut lines = Lines::default();
    lines.push(&pending);
    let mut hist = new_histogram();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(v) = lines.next_value() {
            match decode(proto, v) {
                Seen::Message {
                    id,
                    t_ns,
                    sender,
                    seq,
                } => {
                    let now = now_ns(shared.epoch);
                    shared.delivered_total.fetch_add(1, Ordering::Relaxed);
                    if shared.measuring.load(Ordering::Relaxed) {
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.record((now.saturating_sub(t_ns) / 1000).max(1));
                    }
                    if let Some(a) = &acks {
                        let _ = a.send(id);
                    }
                    on_message(sender, seq);
                }
                Seen::Sent => {
                    shared.sent_total.fetch_add(1, Ordering::Relaxed);
                    if shared.measuring.load(Ordering::Relaxed) {
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Seen::Error(e) => shared.error(e),
                Seen::Other => {}
            }
        }
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = shared.done.cancelled() => break,
        };
        lines.push(&buf[..n]);
    }
    if let Ok(mut hs) = shared.histograms.lock() {
        hs.push(hist);
    }
}

/// End every reader (they hand in their histograms) and writer.
async fn wind_up(shared: &Shared, tasks: Vec<tokio::task::JoinHandle<()>>) {
    shared.done.cancel();
    // Readers notice at once; give them a moment, then stop everything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// How a writer paces its sends.
#[derive(Clone, Copy)]
enum Pace {
    /// Keep the window full (permits come back on delivery).
    Closed,
    /// One send every `interval`, whatever happens.
    Open { interval: Duration },
}

struct WriterArgs {
    me: u32,
    to: u32,
    group: bool,
    proto: Proto,
    size: usize,
    pace: Pace,
    window: Arc<Semaphore>,
}

/// Send to `to` until stopped, writing acks as they come.
async fn writer(
    mut wr: Wr,
    a: WriterArgs,
    shared: Arc<Shared>,
    mut acks: Option<mpsc::UnboundedReceiver<u64>>,
) {
    let mut out = Vec::with_capacity(16 * 1024);
    let mut ack_ids: Vec<u64> = Vec::new();
    let mut seq = 0u64;
    let counts_sends = a.proto != Proto::Native; // native counts server replies
    let mut next_at = Instant::now();
    let mut flush_acks = tokio::time::interval(Duration::from_millis(10));
    loop {
        if shared.stop.load(Ordering::Relaxed) && acks.is_none() {
            // Nothing to acknowledge (classic), but keep the connection
            // open while the rest arrives: a closed one is a user gone
            // offline, and what is in flight to it would wait for the next
            // login. The run ends this task.
            std::future::pending::<()>().await;
        }
        let sending = !shared.stop.load(Ordering::Relaxed);
        let mut n = 0usize;
        let mut stamps: Vec<u64> = Vec::new();
        match a.pace {
            Pace::Closed => {
                tokio::select! {
                    p = a.window.acquire(), if sending => {
                        if let Ok(p) = p { p.forget(); n = 1; }
                        while n < MAX_BATCH {
                            match a.window.try_acquire() {
                                Ok(p) => { p.forget(); n += 1; }
                                Err(_) => break,
                            }
                        }
                    }
                    id = recv_ack(&mut acks) => match id {
                        Some(id) => ack_ids.push(id),
                        None => return,
                    },
                    _ = flush_acks.tick() => {}
                }
            }
            Pace::Open { interval } => {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_at.into()), if sending => {
                        let now = Instant::now();
                        while next_at <= now && n < MAX_BATCH {
                            // Latency counts from when the send was due.
                            stamps.push(next_at.duration_since(shared.epoch).as_nanos() as u64);
                            next_at += interval;
                            n += 1;
                        }
                    }
                    id = recv_ack(&mut acks) => match id {
                        Some(id) => ack_ids.push(id),
                        None => return,
                    },
                    _ = flush_acks.tick() => {}
                }
            }
        }
        if let Some(rx) = acks.as_mut() {
            while let Ok(id) = rx.try_recv() {
                ack_ids.push(id);
            }
        }
        out.clear();
        for k in 0..n {
            let t = stamps
                .get(k)
                .copied()
                .unwrap_or_else(|| now_ns(shared.epoch));
            encode_send(&mut out, a.proto, a.to, a.group, t, (a.me, seq), a.size);
            seq += 1;
        }
        if !ack_ids.is_empty() && (ack_ids.len() >= 256 || n > 0 || !sending) {
            for chunk in ack_ids.chunks(1024) {
                encode_ack(&mut out, chunk);
            }
            ack_ids.clear();
        }
        if out.is_empty() {
            continue;
        }
        if wr.write_all(&out).await.is_err() {
            return;
        }
        if counts_sends && n > 0 {
            shared.sent_total.fetch_add(n as u64, Ordering::Relaxed);
            if shared.measuring.load(Ordering::Relaxed) {
                shared.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

async fn recv_ack(acks: &mut Option<mpsc::UnboundedReceiver<u64>>) -> Option<u64> {
    match acks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Run the measured window, stop the senders, wait for what is in flight.
async fn measure(
    shared: &Arc<Shared>,
    warmup: Duration,
    duration: Duration,
    expected: impl Fn() -> u64,
) -> f64 {
    tokio::time::sleep(warmup).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    super::settle(DRAIN, || {
        shared.delivered_total.load(Ordering::Relaxed) >= expected()
    })
    .await;
    secs
}

fn finish(
    shared: &Shared,
    name: &str,
    proto: Proto,
    clients: usize,
    secs: f64,
    expected: u64,
) -> Report {
    let sent = shared.sent.load(Ordering::Relaxed);
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let mut r = Report {
        scenario: name.into(),
        proto: format!("{proto:?}").to_lowercase(),
        clients,
        seconds: secs,
        sent,
        delivered,
        sent_per_sec: sent as f64 / secs,
        delivered_per_sec: delivered as f64 / secs,
        latency: shared.latency(),
        errors: shared.errors.load(Ordering::Relaxed),
        lost: expected.saturating_sub(shared.delivered_total.load(Ordering::Relaxed)),
        ..Report::default()
    };
    if let Ok(Some(e)) = shared.first_error.lock().map(|e| e.clone()) {
        r.extra.insert("first_error".into(), json!(e));
    }
    r
}

pub struct PairsOpts {
    pub common: Common,
    pub pairs: usize,
    pub window: usize,
    /// Open loop: total sends per second (over all clients).
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
}

/// 1:1 chat: `pairs` pairs, each user sending to its partner. With several
/// addresses the two users of a pair are on different servers.
pub async fn pairs(o: &PairsOpts) -> Res<Report> {
    let c = &o.common;
    let n = o.pairs * 2;
    let ids: Vec<u32> = if c.proto == Proto::Relay {
        (0..n as u32).collect()
    } else {
        let prefix = run_prefix();
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        register_all(c, &names).await?
    };
    // Users 2k and 2k+1 are partners; put them on different servers.
    let placed: Vec<usize> = (0..n).map(|i| i / 2 + (i % 2)).collect();
    let c_placed = Common {
        addrs: (0..n).map(|i| addr_for(c, placed[i])).collect(),
        ..c.clone()
    };
    let conns = login_all(&c_placed, &ids).await?;
    if c.addrs.len() > 1 {
        // Let the accounts reach every node before the first send.
        tokio::time::sleep(Duration::from_secs(1)).await;
    } else if c.proto == Proto::Relay {
        // The relay learns who is who from each client's hello.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = rss_all(&c.pids);
    let shared = Shared::new();
    let windows: Vec<Arc<Semaphore>> = (0..n).map(|_| Arc::new(Semaphore::new(o.window))).collect();
    let pace = match o.rate {
        Some(r) => Pace::Open {
            interval: Duration::from_secs_f64(n as f64 / r.max(1.0)),
        },
        None => Pace::Closed,
    };
    let release: OnMessage = {
        let windows = windows.clone();
        Arc::new(move |sender, _| {
            if let Some(w) = windows.get(sender as usize) {
                w.add_permits(1);
            }
        })
    };
    let mut tasks = Vec::new();
    for (i, (rd, wr, pending)) in conns.into_iter().enumerate() {
        let partner = i ^ 1;
        let ack_rx = spawn_reader(&mut tasks, rd, pending, c.proto, &shared, &release);
        let args = WriterArgs {
            me: i as u32,
            to: ids[partner],
            group: false,
            proto: c.proto,
            size: c.size,
            pace,
            window: windows[i].clone(),
        };
        tasks.push(tokio::spawn(writer(wr, args, shared.clone(), ack_rx)));
    }
    let s2 = shared.clone();
    let secs = measure(&shared, o.warmup, o.duration, move || {
        s2.sent_total.load(Ordering::Relaxed)
    })
    .await;
    let expected = shared.sent_total.load(Ordering::Relaxed);
    let after = rss_all(&c.pids);
    wind_up(&shared, tasks).await;
    let mut r = finish(&shared, "pairs", c.proto, n, secs, expected);
    r.memory(&before, &after);
    r.extra.insert("pairs".into(), json!(o.pairs));
    r.extra.insert("window".into(), json!(o.window));
    if let Some(rate) = o.rate {
        r.extra.insert("target_rate".into(), json!(rate));
    }
    r.extra.insert("servers".into(), json!(c.addrs.len()));
    Ok(r)
}
