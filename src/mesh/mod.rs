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

pub mod tls;
pub mod wire;

pub use crate::config::MeshSettings;
use crate::hub::{HubHandle, HubMsg};
use crate::ids::{NodeId, MAX_NODE};
use crate::store::{Position, Store};
use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// Who this node is in the cluster, decided before the hub starts.
pub struct Prepared {
    pub node: NodeId,
    me: MemberInfo,
    endpoint: quinn::Endpoint,
    members_file: PathBuf,
    known: Vec<MemberInfo>,
    seeds: Vec<String>,
}

fn meta_uuid(store: &Store) -> Result<String, String> {
    if let Some(uuid) = store.node_uuid()? {
        return Ok(uuid);
    }
    let uuid = format!("{:032x}", rand::random::<u128>());
    store.set_node_uuid(&uuid)?;
    Ok(uuid)
}

/// The node's uuid, if it has one yet.
/// The mesh settings a cluster member last ran with, remembered in its data
/// directory, so that a restart without flags rejoins instead of running
/// alone (and silently diverging).
pub fn remembered(data_dir: &Path) -> Option<(SocketAddr, Option<String>)> {
    let bytes = std::fs::read(data_dir.join("mesh").join("self.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn remember(data_dir: &Path, listen: SocketAddr, advertise: Option<&str>) {
    let path = data_dir.join("mesh").join("self.json");
    let ok = serde_json::to_vec(&(listen, advertise))
        .ok()
        .and_then(|b| std::fs::write(&path, b).ok());
    if ok.is_none() {
        tracing::warn!(path = %path.display(), "could not save the mesh settings");
    }
}

fn load_members(path: &Path) -> Vec<MemberInfo> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<(NodeId, String, String)>>(&b).ok())
        .map(|v| {
            v.into_iter()
                .map(|(node, uuid, addr)| MemberInfo { node, uuid, addr })
                .collect()
        })
        .unwrap_or_default()
}

fn save_members(path: &Path, members: &[MemberInfo]) {
    let list: Vec<(NodeId, &str, &str)> = members
        .iter()
        .map(|m| (m.node, m.uuid.as_str(), m.addr.as_str()))
        .collect();
    let tmp = path.with_extension("tmp");
    let ok = serde_json::to_vec_pretty(&list)
        .ok()
        .and_then(|b| std::fs::write(&tmp, b).ok())
        .and_then(|_| std::fs::rename(&tmp, path).ok());
    if ok.is_none() {
        tracing::warn!(path = %path.display(), "could not save the member list");
    }
}

/// Set up this node's mesh identity: uuid, credentials, endpoint, and (on a
/// first start with `--join`) a node id no member uses.
pub async fn prepare(
    store: &Store,
    data_dir: &Path,
    settings: MeshSettings,
) -> Result<Prepared, String> {
    let uuid = meta_uuid(store)?;
    let creds = tls::node_credentials(data_dir, &uuid, settings.cluster_key.as_deref())
        .map_err(|e| e.to_string())?;
    let endpoint =
        tls::endpoint(&creds, settings.listen, settings.peer_timeout).map_err(|e| e.to_string())?;
    let bound = endpoint.local_addr().map_err(|e| e.to_string())?;
    let addr = match &settings.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => {
            return Err(format!(
            "--mesh-listen {bound} has no address peers can dial: give --mesh-advertise HOST:PORT"
        ))
        }
        None => bound.to_string(),
    };
    let members_file = data_dir.join("mesh").join("members.json");
    let known = load_members(&members_file);
    let mut me = MemberInfo {
        node: 0,
        uuid,
        addr,
    };
    let node = match (store.node_id()?, settings.node_id) {
        (Some(n), Some(want)) if n != want => {
            return Err(format!(
                "this data directory belongs to node {n}, not --node-id {want}"
            ))
        }
        (Some(n), _) => n,
        (None, Some(want)) => want,
        (None, None) if settings.join.is_empty() && known.is_empty() => 1,
        (None, None) => choose_node_id(&endpoint, &me, &settings.join).await?,
    };
    if node == 0 || node > MAX_NODE {
        return Err(format!("node ids run from 1 to {MAX_NODE}"));
    }
    store.set_node_id(node)?;
    remember(data_dir, settings.listen, settings.advertise.as_deref());
    me.node = node;
    Ok(Prepared {
        node,
        me,
        endpoint,
        members_file,
        known,
        seeds: settings.join,
    })
}

/// Ask the seeds who is in the cluster and take the lowest free node id.
async fn choose_node_id(
    endpoint: &quinn::Endpoint,
    me: &MemberInfo,
    seeds: &[String],
) -> Result<NodeId, String> {
    let mut warned = false;
    loop {
        for seed in seeds {
            match discover(endpoint, seed, me).await {
                Ok((_, Some(offer))) => return Ok(offer),
                Ok((_, None)) => return Err(format!("{seed} offered no node id")),
                Err(e) if !warned => {
                    tracing::warn!(%seed, error = %e, "cannot reach the cluster to join it; retrying");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} has no address"))
}

async fn connect(endpoint: &quinn::Endpoint, addr: &str) -> Result<quinn::Connection, String> {
    let sa = resolve(addr).await?;
    let connecting = endpoint
        .connect(sa, tls::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("{addr}: handshake timed out"))?
        .map_err(|e| format!("{addr}: {e}"))
}

async fn read_timeout(recv: &mut quinn::RecvStream) -> Result<Frame, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read(recv)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Err("closed".into()),
        Ok(Ok(Some(f))) => Ok(f),
    }
}

/// One question to a seed: who are the members (itself included), and (if
/// we have no id yet) which id should we take?
async fn discover(
    endpoint: &quinn::Endpoint,
    seed: &str,
    me: &MemberInfo,
) -> Result<(Vec<MemberInfo>, Option<NodeId>), String> {
    let conn = connect(endpoint, seed).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let hello = Frame::Hello {
        version: wire::VERSION,
        node: me.node,
        uuid: me.uuid.clone(),
        addr: me.addr.clone(),
        members: Vec::new(),
        discovery: true,
    };
    wire::write(&mut send, &hello)
        .await
        .map_err(|e| e.to_string())?;
    let answer = read_timeout(&mut recv).await;
    conn.close(0u32.into(), b"done");
    match answer? {
        Frame::Welcome { members, offer, .. } => Ok((members, offer)),
        Frame::Refused { reason } => Err(format!("refused: {reason}")),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

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

#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberStatus {
    pub node: NodeId,
    pub uuid: String,
    pub addr: String,
    /// "self", "up", "down", or "partial" (only one direction works).
    pub state: &'static str,
    /// Milliseconds since the Unix epoch of the last frame from it.
    pub last_contact_ms: Option<u64>,
    /// Operations we have that it has not confirmed applying.
    pub lag_ops: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
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
            state: "self",
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
                },
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

// ---- outbound: what we tell a peer ---------------------------------------------

async fn dial_loop(inner: Arc<Inner>, node: NodeId) {
    let mut delay = Duration::from_millis(100);
    let mut reported = false;
    loop {
        if inner.stop.is_cancelled() {
            return;
        }
        let info = match lock(&inner.peers).get(&node) {
            Some(p) => p.info.clone(),
            None => return,
        };
        let started = Instant::now();
        let result = outbound(&inner, &info).await;
        let was_up = lock(&inner.peers)
            .get_mut(&node)
            .map(|p| std::mem::replace(&mut p.out_up, false))
            .unwrap_or(false);
        if inner.stop.is_cancelled() {
            return;
        }
        match result {
            Err(e) if was_up => tracing::warn!(node, error = %e, "link to member lost"),
            Err(e) if !reported => {
                tracing::info!(node, addr = %info.addr, error = %e, "cannot reach member");
                reported = true;
            }
            _ => {}
        }
        if was_up || started.elapsed() > Duration::from_secs(10) {
            delay = Duration::from_millis(100);
            reported = false;
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Dial a member and keep telling it everything, until the link fails.
async fn outbound(inner: &Arc<Inner>, info: &MemberInfo) -> Result<(), String> {
    let conn = connect(&inner.endpoint, &info.addr).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    wire::write(
        &mut send,
        &Frame::Hello {
            version: wire::VERSION,
            node: inner.me.node,
            uuid: inner.me.uuid.clone(),
            addr: inner.me.addr.clone(),
            members: inner.member_list(),
            discovery: false,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let (node, uuid, applied, members) = match read_timeout(&mut recv).await? {
        Frame::Welcome {
            node,
            uuid,
            applied,
            members,
            ..
        } => (node, uuid, applied, members),
        Frame::Refused { reason } => return Err(format!("refused: {reason}")),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    // The peer must be who we dialled, and its certificate must say so.
    if node != info.node || uuid != info.uuid {
        return Err(format!(
            "{} is now node {node} ({uuid}), not node {} ({})",
            info.addr, info.node, info.uuid
        ));
    }
    if tls::peer_uuid(&conn).as_deref() != Some(uuid.as_str()) {
        return Err("its certificate names another node".into());
    }
    for m in members {
        inner.add_member(m);
    }
    if let Some(p) = lock(&inner.peers).get_mut(&node) {
        p.out_up = true;
        p.peer_applied = applied.iter().copied().collect();
        p.last_contact = Some(SystemTime::now());
    }
    tracing::info!(node, addr = %info.addr, "link to member up");

    // What the peer tells us back on this link: how far it has applied.
    let (ack_tx, mut acks) = mpsc::channel::<Position>(16);
    let reader = tokio::spawn(async move {
        loop {
            match wire::read(&mut recv).await {
                Ok(Some(Frame::Applied { applied })) => {
                    if ack_tx.send(applied.into_iter().collect()).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    });
    let result = Sender::new(inner.clone(), node, applied.into_iter().collect())
        .run(&mut send, &mut acks)
        .await;
    reader.abort();
    conn.close(0u32.into(), b"bye");
    result
}

/// The state of one outbound link.
struct Sender {
    inner: Arc<Inner>,
    peer: NodeId,
    /// How far the peer says it has applied each origin.
    peer_applied: Position,
    /// Our own operations sent on this link so far.
    sent_own: u64,
    /// Our applied position over the last few seconds, for relaying.
    history: VecDeque<(Instant, Position)>,
    last_relay: HashMap<NodeId, Instant>,
    /// Since when the peer has been stuck at this position of ours, and
    /// how long to wait before sending it all again.
    own_stall: Option<(u64, Instant, Duration)>,
}

impl Sender {
    fn new(inner: Arc<Inner>, peer: NodeId, peer_applied: Position) -> Sender {
        let sent_own = peer_applied.get(&inner.me.node).copied().unwrap_or(0);
        Sender {
            inner,
            peer,
            peer_applied,
            sent_own,
            history: VecDeque::new(),
            last_relay: HashMap::new(),
            own_stall: None,
        }
    }

    async fn run(
        mut self,
        send: &mut quinn::SendStream,
        acks: &mut mpsc::Receiver<Position>,
    ) -> Result<(), String> {
        let me = self.inner.me.node;
        let hub = self.inner.hub.clone();
        let mut durable = hub.durable();
        let mut presence = hub.presence_changes();
        let mut members = self.inner.members_version.subscribe();
        self.send_presence_table(send).await?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let own_ready =
                durable.borrow().position.get(&me).copied().unwrap_or(0) > self.sent_own;
            tokio::select! {
                _ = self.inner.stop.cancelled() => return Ok(()),
                _ = std::future::ready(()), if own_ready => {
                    // Never hold the watch's lock across an await.
                    let d = durable.borrow().clone();
                    self.send_own(send, &d).await?
                }
                r = durable.changed() => r.map_err(|_| "hub stopped".to_string())?,
                change = presence.recv() => match change {
                    Ok(c) => {
                        let (online, offline) = if c.online { (vec![c.user], vec![]) } else { (vec![], vec![c.user]) };
                        self.write(send, &Frame::Presence { full: false, online, offline }).await?;
                    }
                    // We missed changes: send the whole table again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.send_presence_table(send).await?,
                    Err(_) => return Err("hub stopped".into()),
                },
                r = members.changed() => {
                    r.map_err(|_| "mesh stopped".to_string())?;
                    let list = self.inner.member_list();
                    self.write(send, &Frame::Members { members: list }).await?;
                }
                ack = acks.recv() => match ack {
                    Some(p) => {
                        self.peer_applied = p.clone();
                        if let Some(peer) = lock(&self.inner.peers).get_mut(&self.peer) {
                            peer.peer_applied = p;
                            peer.last_contact = Some(SystemTime::now());
                        }
                    }
                    None => return Err("peer closed the link".into()),
                },
                _ = tick.tick() => self.relay(send).await?,
            }
        }
    }

    async fn write(&self, send: &mut quinn::SendStream, frame: &Frame) -> Result<(), String> {
        wire::write(send, frame).await.map_err(|e| e.to_string())
    }

    async fn send_presence_table(&self, send: &mut quinn::SendStream) -> Result<(), String> {
        let hub = &self.inner.hub;
        let online = hub
            .ask(|reply| HubMsg::LocalPresence { reply })
            .await
            .ok_or_else(|| "hub stopped".to_string())?;
        self.write(
            send,
            &Frame::Presence {
                full: true,
                online,
                offline: Vec::new(),
            },
        )
        .await
    }

    async fn send_ops(
        &self,
        send: &mut quinn::SendStream,
        origin: NodeId,
        after: u64,
        upto: u64,
    ) -> Result<u64, String> {
        let ops = self
            .inner
            .hub
            .logs()
            .read(origin, after, BATCH)
            .map_err(|e| e.to_string())?;
        let ops: Vec<_> = ops.into_iter().filter(|o| o.seq <= upto).collect();
        let Some(last) = ops.last().map(|o| o.seq) else {
            return Ok(after);
        };
        for frame in wire::ops_frames(origin, ops) {
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
        }
        Ok(last)
    }

    /// Our own operations, once they are durable here.
    async fn send_own(
        &mut self,
        send: &mut quinn::SendStream,
        durable: &crate::store::Durable,
    ) -> Result<(), String> {
        let me = self.inner.me.node;
        let upto = durable.position.get(&me).copied().unwrap_or(0);
        self.sent_own = self.send_ops(send, me, self.sent_own, upto).await?;
        Ok(())
    }

    /// Other origins' operations the peer has lacked for a while.
    async fn relay(&mut self, send: &mut quinn::SendStream) -> Result<(), String> {
        let now = Instant::now();
        self.history
            .push_back((now, self.inner.hub.applied().borrow().clone()));
        while self
            .history
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= RELAY_DELAY)
        {
            self.history.pop_front();
        }
        let Some((t, old)) = self.history.front() else {
            return Ok(());
        };
        if now.duration_since(*t) < RELAY_DELAY {
            return Ok(());
        }
        let old = old.clone();
        // Our own operations the peer stopped taking (its disk was full,
        // say): once it has not moved for a while, send them again.
        let me = self.inner.me.node;
        let theirs = self.peer_applied.get(&me).copied().unwrap_or(0);
        // Each resend to a peer that stays stuck waits twice as long.
        let ours = self
            .inner
            .hub
            .durable()
            .borrow()
            .position
            .get(&me)
            .copied()
            .unwrap_or(0);
        self.own_stall = match self.own_stall {
            _ if theirs >= ours => None,
            Some((t, since, wait)) if t == theirs => {
                if now.duration_since(since) >= wait {
                    self.sent_own = theirs;
                    Some((t, now, (wait * 2).min(OWN_RESEND_MAX)))
                } else {
                    Some((t, since, wait))
                }
            }
            _ => Some((theirs, now, OWN_RESEND_DELAY)),
        };
        for (&origin, &had) in &old {
            if origin == me || origin == self.peer {
                continue;
            }
            let theirs = self.peer_applied.get(&origin).copied().unwrap_or(0);
            let recently = self
                .last_relay
                .get(&origin)
                .is_some_and(|t| now.duration_since(*t) < RELAY_DELAY);
            if theirs < had && !recently {
                self.last_relay.insert(origin, now);
                self.send_ops(send, origin, theirs, had).await?;
            }
        }
        Ok(())
    }
}

// ---- inbound: what a peer tells us ---------------------------------------------

async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.stop.cancelled() => return,
            i = inner.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = inbound(&inner, conn).await {
                        if !inner.stop.is_cancelled() {
                            tracing::info!(%remote, error = %e, "mesh link closed");
                        }
                    }
                }
                Err(e) => {
                    inner.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, error = %e, "refused a mesh connection (no valid cluster certificate?)");
                }
            }
        });
    }
}

async fn refuse(
    inner: &Inner,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reason: String,
) -> Result<(), String> {
    inner.refused.fetch_add(1, Ordering::Relaxed);
    let _ = wire::write(
        send,
        &Frame::Refused {
            reason: reason.clone(),
        },
    )
    .await;
    let _ = send.finish();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.close(1u32.into(), b"refused");
    Err(format!("refused: {reason}"))
}

async fn inbound(inner: &Arc<Inner>, conn: quinn::Connection) -> Result<(), String> {
    let (mut send, mut recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| "no stream opened".to_string())?
        .map_err(|e| e.to_string())?;
    let (version, node, uuid, addr, members, discovery) = match read_timeout(&mut recv).await? {
        Frame::Hello {
            version,
            node,
            uuid,
            addr,
            members,
            discovery,
        } => (version, node, uuid, addr, members, discovery),
        other => {
            return refuse(
                inner,
                &conn,
                &mut send,
                format!("expected a hello, got {other:?}"),
            )
            .await
        }
    };
    if version != wire::VERSION {
        let reason = format!(
            "mesh protocol version {version}, this node speaks {}",
            wire::VERSION
        );
        return refuse(inner, &conn, &mut send, reason).await;
    }
    if tls::peer_uuid(&conn).as_deref() != Some(uuid.as_str()) {
        let reason = "the certificate does not name the node the hello claims".to_string();
        return refuse(inner, &conn, &mut send, reason).await;
    }
    let me = &inner.me;
    let welcome = |inner: &Arc<Inner>, offer: Option<NodeId>| Frame::Welcome {
        node: me.node,
        uuid: me.uuid.clone(),
        applied: applied_vec(&inner.hub.applied().borrow()),
        members: inner.member_list(),
        offer,
    };
    if discovery && node == 0 {
        // A new node choosing its id: the member list and an id to take.
        let offer = inner.offer_id(&uuid);
        wire::write(&mut send, &welcome(inner, offer))
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.closed()).await;
        return Ok(());
    }
    let info = MemberInfo { node, uuid, addr };
    if node == me.node || !inner.add_member(info.clone()) {
        let reason = format!("node id {node} belongs to another node");
        return refuse(inner, &conn, &mut send, reason).await;
    }
    for m in members {
        inner.add_member(m);
    }
    wire::write(&mut send, &welcome(inner, None))
        .await
        .map_err(|e| e.to_string())?;
    if discovery {
        let _ = send.finish();
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.closed()).await;
        return Ok(());
    }
    let gen = inner.next_gen.fetch_add(1, Ordering::Relaxed);
    if let Some(p) = lock(&inner.peers).get_mut(&node) {
        p.in_up = true;
        p.in_gen = gen;
        p.last_contact = Some(SystemTime::now());
    }
    tracing::info!(node, "link from member up");

    // Tell the peer, as we go, how far we have applied.
    let mut applied = inner.hub.applied();
    let reporter = tokio::spawn(async move {
        loop {
            if applied.changed().await.is_err() {
                return;
            }
            let frame = Frame::Applied {
                applied: applied_vec(&applied.borrow_and_update()),
            };
            if wire::write(&mut send, &frame).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let result = receive(inner, node, &mut recv).await;
    reporter.abort();
    let current = {
        let mut peers = lock(&inner.peers);
        match peers.get_mut(&node) {
            Some(p) if p.in_gen == gen => {
                p.in_up = false;
                true
            }
            _ => false,
        }
    };
    if current {
        tracing::warn!(
            node,
            "link from member down: its sessions no longer count as online"
        );
        inner.hub.send(HubMsg::PeerDown { node }).await;
    }
    if let Err(e) = &result {
        conn.close(2u32.into(), e.as_bytes());
    }
    result
}

/// Hand everything a peer sends to the hub until the link ends.
async fn receive(
    inner: &Arc<Inner>,
    node: NodeId,
    recv: &mut quinn::RecvStream,
) -> Result<(), String> {
    loop {
        let frame = tokio::select! {
            _ = inner.stop.cancelled() => return Ok(()),
            f = wire::read(recv) => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(wire::WireError::Io(e)) => return Err(e.to_string()),
            Err(e) => {
                tracing::warn!(node, error = %e, "closing the link: bad frame from member");
                return Err(e.to_string());
            }
        };
        inner.touch(node);
        let msg = match frame {
            Frame::Ops { origin, ops } => HubMsg::PeerOps { origin, ops },
            Frame::Presence {
                full,
                online,
                offline,
            } => HubMsg::PeerPresence {
                node,
                full,
                online,
                offline,
            },
            Frame::Members { members } => {
                for m in members {
                    inner.add_member(m);
                }
                continue;
            }
            Frame::Unknown => continue,
            other => {
                tracing::warn!(node, "closing the link: unexpected frame {other:?}");
                return Err("unexpected frame".into());
            }
        };
        if !inner.hub.send(msg).await {
            return Ok(());
        }
    }
}
