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
//! * **Catching up by snapshot.** Each node's log begins where it last
//!   compacted (it says where, in its hello and as it changes). A node that
//!   lacks operations no peer's log still holds asks a peer that has them
//!   for a snapshot (`catchup.rs` decides, `snapshots.rs` asks and
//!   answers, on a QUIC stream of its own), installs it, and the logs
//!   serve the rest.
//! * **Failure detection.** QUIC keep-alives and the idle timeout
//!   (`--peer-timeout-ms`): when the link a peer dialled dies, its sessions
//!   no longer count as online here.
//!
//! This module moves operations and presence; it does not apply them (the
//! hub does) and never touches the store's tables.
//!
//! Files: this one (starting, the cluster's status, what the links share),
//! `members.rs` (the member table and which links are up: a state machine
//! given the time), `catchup.rs` (when to ask for a snapshot, given the
//! time), `snapshots.rs` (asking for one, sending one), `join.rs` (this node's identity in the cluster,
//! discovery), `plan.rs` (what to send a peer: a state machine given the
//! time), `send.rs` (the outbound link, its I/O), `receive.rs` (inbound
//! links), `wire.rs` (frames), `tls.rs` (certificates), `harness.rs` (tests:
//! hub cores and plans on an in-memory network).

mod catchup;
#[cfg(test)]
mod harness;
mod join;
mod members;
mod plan;
mod receive;
mod send;
mod snapshots;
pub mod tls;
pub mod wire;

use join::*;
pub use join::{prepare, remembered, Prepared};
use members::{Learned, Members};
use plan::{Plan, Stretch};
use receive::*;
use send::*;

pub use crate::config::MeshSettings;
use crate::hub::{HubHandle, HubMsg, Input};
use crate::ids::{NodeId, MAX_NODE};
use crate::store::{Position, Store};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
/// Snapshots a node sends at once (each reads the whole of its tables).
const SNAPSHOTS_AT_ONCE: usize = 2;
/// How long a handshake step may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

struct Inner {
    me: MemberInfo,
    endpoint: quinn::Endpoint,
    hub: HubHandle,
    members_file: PathBuf,
    /// The member table (`members.rs`): who, which links are up, offers.
    members: Mutex<Members>,
    /// Bumped when the member list changes, so links gossip it.
    members_version: watch::Sender<u64>,
    refused: AtomicU64,
    stop: CancellationToken,
    /// Our link to each member, to ask it for a snapshot over.
    conns: Mutex<std::collections::HashMap<NodeId, quinn::Connection>>,
    /// When to ask for a snapshot (`catchup.rs`).
    catchup: Mutex<catchup::CatchUp>,
    /// Snapshots sent at once, at most.
    serving: tokio::sync::Semaphore,
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
            members: Mutex::new(Members::new(p.me.clone())),
            me: p.me,
            endpoint: p.endpoint,
            hub,
            members_file: p.members_file,
            members_version,
            refused: AtomicU64::new(0),
            stop: CancellationToken::new(),
            conns: Mutex::default(),
            catchup: Mutex::default(),
            serving: tokio::sync::Semaphore::new(SNAPSHOTS_AT_ONCE),
        });
        for m in p.known {
            inner.add_member(m);
        }
        tokio::spawn(accept_loop(inner.clone()));
        tokio::spawn(snapshots::catchup_loop(inner.clone()));
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
        ClusterStatus {
            node: inner.me.node,
            members: lock(&inner.members).status(&ours),
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
    fn offer_id(&self, uuid: &str) -> Option<NodeId> {
        lock(&self.members).offer_id(uuid, Instant::now())
    }

    fn member_list(&self) -> Vec<MemberInfo> {
        lock(&self.members).list()
    }

    /// Add or update a member; dial it if it is new. Returns false when the
    /// member conflicts with one we know (same id, another node).
    fn add_member(self: &Arc<Self>, m: MemberInfo) -> bool {
        let (node, addr) = (m.node, m.addr.clone());
        let learned = lock(&self.members).learn(m);
        match learned {
            Learned::Known => return true,
            Learned::Conflict => {
                tracing::error!(
                    node,
                    other = %addr,
                    "a node claims an id that another has; ignoring it (restart it with an empty data directory or another --node-id)"
                );
                return false;
            }
            Learned::Moved => tracing::info!(node, %addr, "member moved"),
            Learned::New => tracing::info!(node, %addr, "member joined"),
        }
        self.members_changed();
        if learned == Learned::New {
            let inner = self.clone();
            tokio::spawn(async move { dial_loop(inner, node).await });
        }
        true
    }

    fn members_changed(&self) {
        let list = lock(&self.members).others();
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
        lock(&self.members).heard(node, crate::ids::wall_millis());
    }
}
