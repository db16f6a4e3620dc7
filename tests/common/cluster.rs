//! Cluster harness: real chatd nodes in this process, meshed over real QUIC
//! on 127.0.0.1, each behind a UDP relay that can cut any pair of nodes off
//! from each other (a partition) and heal them again.
#![allow(dead_code)]

use super::{test_settings, Client};
use chatd::config::Settings;
use chatd::server::Server;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UdpSocket, UnixStream};

/// Which node pairs cannot reach each other, and where each node really is.
#[derive(Default)]
pub struct Net {
    cut: Mutex<HashSet<(usize, usize)>>,
    /// Real mesh socket address -> node index.
    nodes: Mutex<HashMap<SocketAddr, usize>>,
}

impl Net {
    fn blocked(&self, a: usize, b: usize) -> bool {
        let cut = self.cut.lock().unwrap();
        cut.contains(&(a, b)) || cut.contains(&(b, a))
    }

    fn node_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.lock().unwrap().get(&addr).copied()
    }
}

/// A UDP relay in front of node `me`: peers send to `addr`, it forwards to
/// the node's real socket, one upstream socket per peer, unless cut.
pub struct Relay {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
}

impl Relay {
    pub async fn start(me: usize, net: Arc<Net>) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let t = target.clone();
        tokio::spawn(async move {
            let mut uppers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, src)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let Some(dst) = *t.lock().unwrap() else {
                    continue;
                };
                let from = net.node_of(src);
                if from.is_some_and(|f| net.blocked(f, me)) {
                    continue;
                }
                let up = match uppers.get(&src) {
                    Some(u) => u.clone(),
                    None => {
                        let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        uppers.insert(src, u.clone());
                        let (front, net, u2) = (front.clone(), net.clone(), u.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            loop {
                                let Ok((n, _)) = u2.recv_from(&mut buf).await else {
                                    return;
                                };
                                let to = net.node_of(src);
                                if to.is_some_and(|f| net.blocked(f, me)) {
                                    continue;
                                }
                                let _ = front.send_to(&buf[..n], src).await;
                            }
                        });
                        u
                    }
                };
                let _ = up.send_to(&buf[..n], dst).await;
            }
        });
        Relay { addr, target }
    }
}

pub struct Node {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub relay: Relay,
}

impl Node {
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    pub async fn admin(&self, req: Value) -> Value {
        admin(self.dir.path(), req).await
    }

    pub async fn digest(&self) -> String {
        let d = self.admin(json!({"cmd": "digest"})).await;
        assert_eq!(d["ok"], true, "{d}");
        d["digest"].as_str().unwrap().to_string()
    }

    pub async fn cluster(&self) -> Value {
        let c = self.admin(json!({"cmd": "cluster"})).await;
        assert_eq!(c["ok"], true, "{c}");
        c
    }
}

pub struct Cluster {
    pub net: Arc<Net>,
    pub key: TempDir,
    pub nodes: Vec<Node>,
}

pub fn key_file(key: &TempDir) -> PathBuf {
    key.path().join("cluster.key")
}

impl Cluster {
    /// `n` nodes, the first seeding, the others joining it.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_, _| {}).await
    }

    pub async fn start_with(n: usize, f: impl Fn(usize, &mut Settings)) -> Cluster {
        let key = tempfile::tempdir().unwrap();
        chatd::mesh::tls::init_cluster(&key_file(&key)).unwrap();
        let mut c = Cluster {
            net: Arc::new(Net::default()),
            key,
            nodes: Vec::new(),
        };
        for i in 0..n {
            c.add(|s| f(i, s)).await;
        }
        c.wait_full_mesh().await;
        c
    }

    /// Start another node that joins through node 0.
    pub async fn add(&mut self, f: impl FnOnce(&mut Settings)) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let i = self.nodes.len();
        let relay = Relay::start(i, self.net.clone()).await;
        let join = self.nodes.first().map(|n| n.relay.addr.to_string());
        let server = self.boot(i, &dir, &relay, join, f).await;
        let addr = server.local_addr();
        self.nodes.push(Node {
            server: Some(server),
            addr,
            dir,
            relay,
        });
        i
    }

    async fn boot(
        &self,
        i: usize,
        dir: &TempDir,
        relay: &Relay,
        join: Option<String>,
        f: impl FnOnce(&mut Settings),
    ) -> Server {
        let mut s = test_settings(dir.path());
        s.mesh_listen = Some("127.0.0.1:0".parse().unwrap());
        s.mesh_advertise = Some(relay.addr.to_string());
        s.join = join.into_iter().collect();
        s.cluster_key = Some(key_file(&self.key));
        s.peer_timeout_ms = 1000;
        f(&mut s);
        let server = Server::start(s).await.expect("node starts");
        let mesh_addr = server.mesh().unwrap().local_addr().unwrap();
        self.net.nodes.lock().unwrap().insert(mesh_addr, i);
        *relay.target.lock().unwrap() = Some(mesh_addr);
        server
    }

    /// Stop node `i` cleanly (its data stays).
    pub async fn stop(&mut self, i: usize) {
        if let Some(s) = self.nodes[i].server.take() {
            s.shutdown().await;
        }
    }

    /// Start node `i` again on its data directory, with no --join: it must
    /// find the cluster from what it remembers.
    pub async fn restart(&mut self, i: usize) {
        self.restart_with(i, |_| {}).await
    }

    /// [`Cluster::restart`] with settings of its own.
    pub async fn restart_with(&mut self, i: usize, f: impl FnOnce(&mut Settings)) {
        let node = &self.nodes[i];
        let server = self.boot(i, &node.dir, &node.relay, None, f).await;
        let addr = server.local_addr();
        let node = &mut self.nodes[i];
        node.addr = addr;
        node.server = Some(server);
    }

    /// Cut `a` and `b` off from each other (both directions).
    pub fn cut(&self, a: usize, b: usize) {
        self.net.cut.lock().unwrap().insert((a, b));
    }

    pub fn heal(&self) {
        self.net.cut.lock().unwrap().clear();
    }

    /// Split the cluster into two sides.
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) {
        for &a in side_a {
            for &b in side_b {
                self.cut(a, b);
            }
        }
    }

    pub async fn wait_full_mesh(&self) {
        let n = self.nodes.len();
        crate::eventually!("every node sees every other node up", {
            let mut all = true;
            for node in self.nodes.iter().filter(|n| n.server.is_some()) {
                let c = node.cluster().await;
                let up = c["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["state"] == "up")
                    .count();
                all &= up + 1 == n;
            }
            all
        });
    }

    /// Wait until every running node has the same state digest.
    pub async fn wait_converged(&self) -> String {
        let mut last: Vec<String> = Vec::new();
        crate::eventually!(format!("the nodes converge (digests now {last:?})"), {
            last.clear();
            for node in self.nodes.iter().filter(|n| n.server.is_some()) {
                last.push(node.digest().await);
            }
            last.windows(2).all(|w| w[0] == w[1])
        });
        last[0].clone()
    }
}

/// One admin request over the node's Unix socket.
pub async fn admin(data_dir: &Path, req: Value) -> Value {
    let mut s = UnixStream::connect(data_dir.join("chatd.sock"))
        .await
        .expect("admin socket");
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).await.unwrap();
    let mut r = BufReader::new(s);
    let mut reply = String::new();
    r.read_line(&mut reply).await.unwrap();
    serde_json::from_str(&reply).expect("admin reply is JSON")
}

/// Wait for something that must happen (checking every 50 ms); fail the
/// test if it does not within the limit. `$check` is an expression that may
/// `.await` and yields a bool.
#[macro_export]
macro_rules! eventually {
    ($what:expr, $check:expr) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if $check {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}
