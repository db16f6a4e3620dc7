//! The mesh: chatd nodes connect over QUIC with mutual TLS and replicate
//! everything durable to each other.
//!
//! * **Members.** Every node knows every member (node id, uuid, address),
//!   keeps the list in its data directory, and dials each one: a full mesh.
//!   A node started with `--join` learns the members from that peer; members
//!   it hears of from any peer are dialled too.
//! * **Two links per pair.** Each node talks to a peer over the connection it
//!   dialled ([`outbound`]) and listens to the peer on the connection the peer
//!   dialled ([`inbound`]), so no pair has to agree which connection to keep.
//! * **Replication.** Over its outbound link a node sends its own operations
//!   as soon as they are durable, its sessions (presence), and members it
//!   knows. Every link starts with the peer saying how far it has applied
//!   each origin's log, and keeps saying so; operations from *other* origins
//!   that the peer has lacked for over a second are relayed, so a partition
//!   heals through whichever nodes can still talk and a new node catches up
//!   completely. Receiving nodes apply each origin's operations in order and
//!   drop duplicates.
//! * **Failure detection.** QUIC keep-alives and the idle timeout
//!   (`--peer-timeout-ms`): when the link a peer dialled dies, its sessions
//!   no longer count as online here.
//!
//! This module moves operations and presence; it does not apply them (the
//! hub does) and never touches the store's tables.
//!
//! Files: this one (the members as seen from here, the cluster's status),
//! `join.rs` (this node's identity in the cluster, discovery), `plan.rs`
//! (what to send a peer: a state machine given the time), `send.rs` (the
//! outbound link, its I/O), `receive.rs` (inbound links), `wire.rs` (frames),
//! `tls.rs` (certificates).

#[cfg(test)]
mod harness;
mod join;
mod plan;
mod receive;
mod send;
pub mod tls;
pub mod wire;

use join::*;
pub use join::{prepare, remembered, Prepared};
use plan::{Plan, Stretch};
use receive::*;
use send::*;

pub use crate::config::MeshSettings;
use crate::hub::{HubHandle, HubMsg, Input};
use crate::ids::{NodeId, MAX_NODE};
use crate::store::{Position, Store};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use wire::{Frame, MemberInfo};

/// Operations per frame when streaming or relaying a log: small enough that
/// the messages one frame brings a user fit their session queue easily.
const BATCH: usize = 256;
/// A peer stuck this long behind our own operations gets them again (and,
/// still stuck, after twice as long each time, up to the maximum).
const OWN_RESEND_DELAY: Duration = Duration::from_secs(5);
const OWN_RESEND_MAX: Duration = Duration::from_secs(300);

/// A peer that has lacked another origin's operations this long gets them from us.
const RELAY_DELAY: Duration = Duration::from_secs(1);
/// How long a handshake step may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a member looks from here.
struct Peer {
    info: MemberInfo,
    out_up: bool,
    in_up: bool,
    /// Which inbound link is current; an older one closing changes nothing.
    in_gen: u64,
    last_contact: Option<SystemTime>,
    /// How far the peer says it has applied each origin's log.
    peer_applied: Position,
}

struct Inner {
    me: MemberInfo,
    endpoint: quinn::Endpoint,
    hub: HubHandle,
    members_file: PathBuf,
    peers: Mutex<BTreeMap<NodeId, Peer>>,
    /// Bumped when the member list changes, so links gossip it.
    members_version: watch::Sender<u64>,
    next_gen: AtomicU64,
    refused: AtomicU64,
    /// Ids offered to joining nodes (by their uuid), held for a minute.
    offers: Mutex<HashMap<NodeId, (String, Instant)>>,
    stop: CancellationToken,
}

/// A running mesh.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub node: NodeId,
    pub uuid: String,
    pub addr: String,
    /// "self", "up", "down", or "partial" (only one direction works).
    pub state: String,
    /// Milliseconds since the Unix epoch of the last frame from it.
    pub last_contact_ms: Option<u64>,
    /// Operations we have that it has not confirmed applying.
    pub lag_ops: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub node: NodeId,
    pub members: Vec<MemberStatus>,
    /// Connections refused (bad or missing certificate, bad hello).
    pub refused: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn applied_vec(p: &Position) -> wire::Applied {
    p.iter().map(|(k, v)| (*k, *v)).collect()
}

impl Mesh {
    pub fn start(p: Prepared, hub: HubHandle) -> Mesh {
        let (members_version, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            me: p.me,
            endpoint: p.endpoint,
            hub,
            members_file: p.members_file,
            peers: Mutex::new(BTreeMap::new()),
            members_version,
            next_gen: AtomicU64::new(1),
            refused: AtomicU64::new(0),
            offers: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        });
        for m in p.known {
            inner.add_member(m);
        }
        tokio::spawn(accept_loop(inner.clone()));
        for seed in p.seeds {
            let inner = inner.clone();
            tokio::spawn(async move { inner.learn_from(&seed).await });
        }
        tracing::info!(node = inner.me.node, addr = %inner.me.addr, "mesh listening");
        Mesh { inner }
    }

    pub fn status(&self) -> ClusterStatus {
        let inner = &self.inner;
        let ours = inner.hub.applied().borrow().clone();
        let mut members = vec![MemberStatus {
            node: inner.me.node,
            uuid: inner.me.uuid.clone(),
            addr: inner.me.addr.clone(),
            state: "self".into(),
            last_contact_ms: None,
            lag_ops: 0,
        }];
        for p in lock(&inner.peers).values() {
            let lag = ours
                .iter()
                .filter(|(o, _)| **o != p.info.node)
                .map(|(o, s)| s.saturating_sub(p.peer_applied.get(o).copied().unwrap_or(0)))
                .sum();
            members.push(MemberStatus {
                node: p.info.node,
                uuid: p.info.uuid.clone(),
                addr: p.info.addr.clone(),
                state: match (p.out_up, p.in_up) {
                    (true, true) => "up",
                    (false, false) => "down",
                    _ => "partial",
                }
                .into(),
                last_contact_ms: p.last_contact.and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_millis() as u64)
                }),
                lag_ops: lag,
            });
        }
        members.sort_by_key(|m| m.node);
        ClusterStatus {
            node: inner.me.node,
            members,
            refused: inner.refused.load(Ordering::Relaxed),
        }
    }

    /// The UDP address the mesh listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint.local_addr().ok()
    }

    /// Close every link.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.endpoint.close(0u32.into(), b"shutting down");
    }
}

impl Inner {
    /// The id a joining node (by uuid) should take: the lowest one no member
    /// has and no other joiner was offered in the last minute.
    fn offer_id(&self, uuid: &str) -> Option<NodeId> {
        let taken: Vec<NodeId> = lock(&self.peers).keys().copied().collect();
        let mut offers = lock(&self.offers);
        offers.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
        if let Some((&n, _)) = offers.iter().find(|(_, (u, _))| u == uuid) {
            return Some(n);
        }
        let n = (1..=MAX_NODE)
            .find(|n| *n != self.me.node && !taken.contains(n) && !offers.contains_key(n))?;
        offers.insert(n, (uuid.to_string(), Instant::now()));
        Some(n)
    }

    fn member_list(&self) -> Vec<MemberInfo> {
        let mut v: Vec<MemberInfo> = lock(&self.peers).values().map(|p| p.info.clone()).collect();
        v.push(self.me.clone());
        v
    }

    /// Add or update a member; dial it if it is new. Returns false when the
    /// member conflicts with one we know (same id, another node).
    fn add_member(self: &Arc<Self>, m: MemberInfo) -> bool {
        if m.node == self.me.node {
            if m.uuid != self.me.uuid {
                tracing::error!(node = m.node, addr = %m.addr, "another node claims this node's id");
                return false;
            }
            return true;
        }
        if m.node == 0 || m.node > MAX_NODE {
            return false;
        }
        let mut peers = lock(&self.peers);
        match peers.get_mut(&m.node) {
            Some(p) if p.info.uuid != m.uuid => {
                tracing::error!(
                    node = m.node,
                    known = %p.info.addr,
                    other = %m.addr,
                    "two nodes claim the same node id; ignoring the newcomer (restart it with an empty data directory or another --node-id)"
                );
                false
            }
            Some(p) => {
                if p.info.addr != m.addr {
                    tracing::info!(node = m.node, addr = %m.addr, "member moved");
                    p.info.addr = m.addr;
                    drop(peers);
                    self.members_changed();
                }
                true
            }
            None => {
                tracing::info!(node = m.node, addr = %m.addr, "member joined");
                peers.insert(
                    m.node,
                    Peer {
                        info: m.clone(),
                        out_up: false,
                        in_up: false,
                        in_gen: 0,
                        last_contact: None,
                        peer_applied: Position::new(),
                    },
                );
                drop(peers);
                self.members_changed();
                let inner = self.clone();
                tokio::spawn(async move { dial_loop(inner, m.node).await });
                true
            }
        }
    }

    fn members_changed(&self) {
        let list: Vec<MemberInfo> = lock(&self.peers).values().map(|p| p.info.clone()).collect();
        save_members(&self.members_file, &list);
        self.members_version.send_modify(|v| *v += 1);
    }

    /// Learn the members from a seed address (given with `--join`).
    async fn learn_from(self: Arc<Self>, seed: &str) {
        let mut delay = Duration::from_millis(250);
        loop {
            match discover(&self.endpoint, seed, &self.me).await {
                Ok((members, _)) => {
                    for m in members {
                        self.add_member(m);
                    }
                    return;
                }
                Err(e) => tracing::debug!(%seed, error = %e, "cannot reach seed yet"),
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    fn touch(&self, node: NodeId) {
        if let Some(p) = lock(&self.peers).get_mut(&node) {
            p.last_contact = Some(SystemTime::now());
        }
    }
}
