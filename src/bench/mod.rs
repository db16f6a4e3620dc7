//! chatbench's load generator (used by the `chatbench` binary, not by
//! chatd). It drives a running chatd, or a cluster, over TCP the way users
//! would, and measures throughput, delivery latency (from the send to the
//! receipt, in one process, so one clock), losses and the server's memory.
//!
//! * `client`: connections in each dialect (and the relay's), setup requests,
//!   encoding sends and decoding receipts cheaply.
//! * `scenarios`: 1:1 pairs (closed or open loop), group fan-out, offline
//!   drain, stored history (bytes per message on disk), idle sessions,
//!   login storm.
//! * `ceiling`: the protocol-aware ceiling: chatd's protocol or the classic
//!   dialect parsed and answered from memory, with no storage.
//! * `relay`: the raw ceiling: a TCP relay with no JSON and no storage.
//! * `fuzz`: mutated requests of every dialect, and a probe that checks the
//!   server keeps answering.
//! * `ws`: connections over WebSocket, seen by the rest as byte streams.

pub mod ceiling;
pub mod client;
pub mod fuzz;
pub mod nodes;
pub mod relay;
pub mod scenarios;
pub mod ws;

use hdrhistogram::Histogram;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Which protocol the load speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// chatd's own protocol.
    Native,
    /// The classic msgid dialect.
    Classic,
    /// The relay's line protocol (ceiling runs only).
    #[value(skip)]
    Relay,
}

/// What the load's connections run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP to the client port.
    Tcp,
    /// WebSocket to the web listener's `/ws` (chatd's protocol only).
    Ws,
}

#[derive(Clone, Debug)]
pub struct Common {
    /// Servers to spread clients over (round robin).
    pub addrs: Vec<SocketAddr>,
    pub proto: Proto,
    pub transport: Transport,
    /// Server processes whose memory to report.
    pub pids: Vec<u32>,
    /// Message text size in bytes.
    pub size: usize,
    pub password: String,
    /// Logins and registrations in flight at once during setup.
    pub setup_concurrency: usize,
}

/// Nanoseconds since the bench started: what send timestamps are made of.
pub fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A unique prefix for this run's user names.
pub fn run_prefix() -> String {
    format!("b{:08x}", rand::random::<u32>())
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn rss_all(pids: &[u32]) -> Vec<(u32, Option<u64>)> {
    pids.iter().map(|p| (*p, rss_kib(*p))).collect()
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct Memory {
    pub pid: u32,
    pub before_kib: Option<u64>,
    pub after_kib: Option<u64>,
}

/// What a scenario measured.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Report {
    pub scenario: String,
    pub proto: String,
    pub clients: usize,
    pub seconds: f64,
    /// Messages the server accepted (native: "sent" replies; classic and
    /// relay, which do not answer: messages written).
    pub sent: u64,
    /// Messages (or group deliveries) received by clients.
    pub delivered: u64,
    pub sent_per_sec: f64,
    pub delivered_per_sec: f64,
    pub latency: Latency,
    pub errors: u64,
    /// Accepted but never received (per expected recipient).
    pub lost: u64,
    pub memory: Vec<Memory>,
    /// Scenario-specific figures.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    pub fn memory(&mut self, before: &[(u32, Option<u64>)], after: &[(u32, Option<u64>)]) {
        self.memory = before
            .iter()
            .zip(after)
            .map(|((pid, b), (_, a))| Memory {
                pid: *pid,
                before_kib: *b,
                after_kib: *a,
            })
            .collect();
    }

    pub fn print(&self) {
        println!("scenario      {} ({})", self.scenario, self.proto);
        println!("clients       {}", self.clients);
        println!("duration      {:.2} s", self.seconds);
        println!("sent          {} ({:.0}/s)", self.sent, self.sent_per_sec);
        println!(
            "delivered     {} ({:.0}/s)",
            self.delivered, self.delivered_per_sec
        );
        let l = &self.latency;
        if l.samples > 0 {
            println!(
                "latency ms    p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  (mean {:.3}, {} samples)",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.mean_ms, l.samples
            );
        }
        println!("errors        {}", self.errors);
        println!("lost          {}", self.lost);
        for m in &self.memory {
            let f = |v: Option<u64>| {
                v.map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
            };
            println!(
                "server {:<7} rss before {}, after {}",
                m.pid,
                f(m.before_kib),
                f(m.after_kib)
            );
        }
        for (k, v) in &self.extra {
            println!("{k:<13} {v}");
        }
    }
}

/// Wait until `check` holds, up to `limit`; true if it held.
pub async fn settle(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
