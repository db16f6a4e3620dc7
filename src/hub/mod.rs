//! The hub: one thread that owns the store and every session's routing.
//!
//! Sessions send it [`HubMsg`]s. It takes them in batches; for each request
//! it asks the rules (`rules::decide`), applies the resulting operations
//! (`apply::apply`), and turns their effects into pushes for the users
//! concerned. At the end of a batch it appends the batch's operations to the
//! log as one segment, asks for a flush, and hands every reply and push to
//! its session tagged with the batch's durability ticket. A session writes an
//! item only once that ticket is on disk, so nothing is acknowledged or
//! delivered before it is durable, and one flush serves the whole batch.
//!
//! Because one thread does all of this, the rules never race: a name is
//! checked and taken in one step, a kick cannot cross a message.
//!
//! The hub must not block on a client: it pushes items on the session's
//! bounded outbox and closes a session whose outbox is full (its messages
//! stay pending).

mod admin;
mod outbox;
pub use admin::AdminReq;
pub use outbox::{Outbox, PushError};

use crate::api::{
    ChatError, Command, ErrorCode, Event, GroupChange, MsgView, Reply, SessionTraits, UserRef, Who,
};
use crate::apply::{apply, is_registered, Effect};
use crate::config::{Limits, Live};
use crate::ids::{Clock, Gid, NodeId, Stamp, Uid, LOBBY};
use crate::model::{delivered_ops, Link, Op, OpBody, Role, Target};
use crate::rules::{self, Ctx, IdAlloc, NameCache};
/// How far the log is on disk (what a session waits for before it writes).
pub use crate::store::Durable;
use crate::store::{LogReader, Position, Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub type SessionId = u64;

/// Messages a session's writer asks for at a time when replaying.
pub const REPLAY_PAGE: usize = 512;

/// Most messages, and about the most bytes, one `Pending` reply carries:
/// the client that asks for its messages parses one read as one reply, so
/// the reply should fit one packet; the rest follow as pushes.
const PENDING_REPLY_MAX: usize = 100;
const PENDING_REPLY_BYTES: usize = 1200;

/// Operator notices older than this when they arrive are not shown.
const NOTICE_FRESH_MS: u64 = 60_000;

/// How often silent sessions are looked for.
const IDLE_SWEEP: Duration = Duration::from_millis(250);

/// Users whose deliveries are held in memory at most while the disk is full.
const HELD_USERS_MAX: usize = 100_000;

/// How often free disk space is looked at.
const SPACE_CHECK: Duration = Duration::from_millis(500);

/// How long shutdown waits for sessions to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What the hub and a session's two tasks share.
pub struct SessionLink {
    pub id: SessionId,
    /// What the writer is to write. The hub closes it when it lets go of
    /// the session, which is after the reader's last request.
    pub outbox: Outbox,
    /// Cancelled to close the connection now.
    pub kill: CancellationToken,
    /// Requests whose replies are not written yet. The reader takes a permit
    /// per request, the writer gives it back with the reply, so a client that
    /// pipelines is slowed down instead of overflowing its own queue.
    pub window: tokio::sync::Semaphore,
    pub peer: SocketAddr,
    pub opened: SystemTime,
    /// When the client was last heard from, in ms after `born`.
    born: Instant,
    heard: AtomicU64,
    /// What the session's dialect needs (`SessionTraits` bits).
    traits: AtomicU16,
    /// The dialect's name, for metrics and the operator.
    label: std::sync::Mutex<&'static str>,
}

impl SessionLink {
    pub fn new(id: SessionId, peer: SocketAddr, window: usize, queue: usize) -> SessionLink {
        SessionLink {
            id,
            outbox: Outbox::new(queue),
            kill: CancellationToken::new(),
            window: tokio::sync::Semaphore::new(window),
            peer,
            opened: SystemTime::now(),
            born: Instant::now(),
            heard: AtomicU64::new(0),
            traits: AtomicU16::new(0),
            label: std::sync::Mutex::new("none"),
        }
    }

    /// The client sent something.
    pub fn heard(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.heard.store(ms, Ordering::Relaxed);
    }

    /// How long the client has been silent.
    pub fn silent_for(&self) -> Duration {
        let heard = Duration::from_millis(self.heard.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(heard)
    }

    pub fn traits(&self) -> SessionTraits {
        SessionTraits::from_bits(self.traits.load(Ordering::Relaxed))
    }

    /// Describe the session's dialect: what it needs, and its name.
    pub fn set_kind(&self, traits: SessionTraits, label: &'static str) {
        self.traits.store(traits.to_bits(), Ordering::Relaxed);
        *self.label.lock().unwrap_or_else(|e| e.into_inner()) = label;
    }

    pub fn label(&self) -> &'static str {
        *self.label.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One item for a session's writer, to be written once `ticket` is durable.
pub struct Out {
    pub ticket: u64,
    pub item: OutItem,
}

/// Replies go out in request order, so the session matches each with the
/// request it answers; the hub never needs to know how a request was worded.
pub enum OutItem {
    Reply(Box<Result<Reply, ChatError>>),
    Event(Arc<Event>),
    /// Deliver the user's pending messages now (the writer pulls them in pages).
    Replay,
    /// Say goodbye and close.
    Bye(ErrorCode),
}

/// Where a replay page goes: the ticket to wait for, and the messages.
pub type PageReply = oneshot::Sender<(u64, Vec<MsgView>)>;

pub enum HubMsg {
    Open(Arc<SessionLink>),
    Request {
        id: SessionId,
        cmd: Command,
    },
    /// Queue a reply the session worked out itself (an invalid request), in
    /// order with the replies the hub makes.
    Echo {
        id: SessionId,
        result: Result<Reply, ChatError>,
    },
    /// The user id and password hash of a login candidate (`None`: the
    /// session's own user).
    Credentials {
        id: SessionId,
        who: Option<Who>,
        reply: oneshot::Sender<Option<(Uid, String)>>,
    },
    /// The password was verified against `hash`: attach the session.
    Login {
        id: SessionId,
        user: Uid,
        hash: String,
    },
    /// A session presents a token to log in again without its password.
    Resume {
        id: SessionId,
        token: crate::tokens::Presented,
    },
    /// A session whose client cannot acknowledge wrote these messages of
    /// `user` to its socket.
    Delivered {
        user: Uid,
        ids: Vec<Stamp>,
    },
    /// The next page of pending messages after `after`, with the ticket to wait for.
    Replay {
        id: SessionId,
        after: Option<Stamp>,
        reply: PageReply,
    },
    Close {
        id: SessionId,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// A run of another node's operations (from any peer that has them).
    PeerOps {
        origin: NodeId,
        ops: Vec<Op>,
    },
    /// Users with sessions on another node: all of them (`full`) or changes.
    PeerPresence {
        node: NodeId,
        full: bool,
        online: Vec<Uid>,
        offline: Vec<Uid>,
    },
    /// A node is unreachable: its users are no longer online through it.
    PeerDown {
        node: NodeId,
    },
    /// The users with a session on this node, for a new peer link.
    LocalPresence {
        reply: oneshot::Sender<Vec<Uid>>,
    },
    /// A fingerprint of the replicated state.
    Digest {
        reply: oneshot::Sender<Result<crate::store::Digest, String>>,
    },
    /// An operator's request from the admin socket.
    Admin {
        req: AdminReq,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
    /// Answered at once: proves the hub is alive (watchdog, health).
    Ping {
        reply: oneshot::Sender<()>,
    },
}

/// A user got their first, or lost their last, session on this node.
#[derive(Clone, Copy, Debug)]
pub struct PresenceChange {
    pub user: Uid,
    pub online: bool,
}

/// The sessions' (and the mesh's) way to reach the hub.
#[derive(Clone)]
pub struct HubHandle {
    tx: mpsc::Sender<HubMsg>,
    durable: watch::Receiver<Durable>,
    applied: watch::Receiver<Position>,
    presence: tokio::sync::broadcast::Sender<PresenceChange>,
    logs: LogReader,
    node: NodeId,
    storage_full: Arc<std::sync::atomic::AtomicBool>,
}

/// What [`HubHandle::try_send`] did.
pub enum TrySend {
    Sent,
    /// No room now: here is the message back.
    Full(HubMsg),
    /// The hub has stopped.
    Closed,
}

impl HubHandle {
    /// Send a message if there is room now.
    pub fn try_send(&self, msg: HubMsg) -> TrySend {
        match self.tx.try_send(msg) {
            Ok(()) => TrySend::Sent,
            Err(mpsc::error::TrySendError::Full(msg)) => TrySend::Full(msg),
            Err(mpsc::error::TrySendError::Closed(_)) => TrySend::Closed,
        }
    }

    /// Send a message; false once the hub has stopped.
    pub async fn send(&self, msg: HubMsg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            // Boxed: waiting is rare, and an inline wait would make the
            // future of every session that calls this bigger.
            Err(mpsc::error::TrySendError::Full(msg)) => Box::pin(self.tx.send(msg)).await.is_ok(),
        }
    }

    /// Send a message that carries a reply channel, and await the reply.
    /// None once the hub has stopped.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> HubMsg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)).await {
            return None;
        }
        rx.await.ok()
    }

    /// Whether the hub answers within `limit`.
    pub async fn ping(&self, limit: Duration) -> bool {
        let reply = self.ask(|reply| HubMsg::Ping { reply });
        matches!(tokio::time::timeout(limit, reply).await, Ok(Some(())))
    }

    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    /// How far each origin's log has been applied here (durable or not).
    pub fn applied(&self) -> watch::Receiver<Position> {
        self.applied.clone()
    }

    /// Local presence changes, for peers.
    pub fn presence_changes(&self) -> tokio::sync::broadcast::Receiver<PresenceChange> {
        self.presence.subscribe()
    }

    pub fn logs(&self) -> &LogReader {
        &self.logs
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether the disk is too full to take changes (reads still work).
    pub fn storage_full(&self) -> bool {
        self.storage_full.load(Ordering::Relaxed)
    }

    /// Say goodbye to every session, write everything down, stop.
    pub async fn shutdown(&self) {
        self.ask(|done| HubMsg::Shutdown { done }).await;
    }
}

struct Session {
    link: Arc<SessionLink>,
    user: Option<Uid>,
    /// What the session's dialect needed when it logged in.
    traits: SessionTraits,
    /// Since when it has not been logged in (it opened, or logged out).
    waiting_since: Instant,
    /// The token this session logged in with or was given (its stamp),
    /// revoked when it logs out or is kicked.
    token: Option<Stamp>,
    replay: Option<ReplayState>,
    /// The dialect this session is counted under in `chatd_sessions`.
    counted: Option<&'static str>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.link.outbox.close();
    }
}

/// A login replay in progress: each origin's newest op when it began, and
/// the origins that had something pending.
struct ReplayState {
    start: BTreeMap<NodeId, Stamp>,
    seen: HashSet<NodeId>,
}

pub struct Hub {
    store: Store,
    clock: Clock,
    ids: IdAlloc,
    names: NameCache,
    /// The current limits (SIGHUP may replace them); `batch_limits` is the
    /// snapshot the current batch uses.
    limits: Live<Limits>,
    batch_limits: Arc<Limits>,
    node: NodeId,
    next_seq: u64,
    sessions: HashMap<SessionId, Session>,
    by_user: HashMap<Uid, Vec<SessionId>>,
    /// Users with sessions on other nodes, by node.
    remote: HashMap<NodeId, HashSet<Uid>>,
    /// The lobby's name, when this node serves room-style clients.
    lobby: Option<String>,
    /// Logged-in sessions that hear the lobby without being members (guests).
    room: HashSet<SessionId>,
    /// Logged-in sessions told when lobby participants come and go.
    room_watchers: HashSet<SessionId>,
    /// Lobby participants (members and guests) online anywhere; kept only
    /// when this node serves room-style clients, who ask about it.
    lobby_online: HashSet<Uid>,
    /// Deliveries made while the disk was full, not logged yet: they count
    /// for what is pending, and are logged once there is room.
    held_marks: HashMap<Uid, BTreeMap<NodeId, Stamp>>,
    /// Each sender's allowance for writing into the lobby, which anyone
    /// (guests too) may do: one person must not flood every room client.
    lobby_rate: HashMap<Uid, (f64, Instant)>,
    /// Members of groups that recently had messages, for fan-out.
    members: HashMap<Gid, Arc<Vec<Uid>>>,
    /// This batch's operations, logged together at its end.
    new_ops: Vec<Op>,
    /// Other nodes' operations applied in this batch, by origin.
    peer_ops: BTreeMap<NodeId, Vec<Op>>,
    applied_tx: watch::Sender<Position>,
    presence_tx: tokio::sync::broadcast::Sender<PresenceChange>,
    /// This batch's classic deliveries, logged as one operation.
    marks: Vec<(Uid, Stamp)>,
    /// Replay pages asked for in this batch, answered after it is logged.
    replays: Vec<(SessionId, Option<Stamp>, PageReply)>,
    /// Replies and pushes of this batch.
    out: Vec<(SessionId, OutItem)>,
    shutting_down: Option<(Instant, oneshot::Sender<()>)>,
    last_idle_sweep: Instant,
    /// The disk is too full for changes: only reads, logins and presence
    /// are served until there is room (`--min-free-mb`).
    storage_full: bool,
    storage_full_flag: Arc<std::sync::atomic::AtomicBool>,
    space_checked: Instant,
}

/// Whether a user has a session here (`by_user`) or on another node.
fn online_in(
    by_user: &HashMap<Uid, Vec<SessionId>>,
    remote: &HashMap<NodeId, HashSet<Uid>>,
    u: Uid,
) -> bool {
    by_user.contains_key(&u) || remote.values().any(|s| s.contains(&u))
}

/// Guests with a session here or on another node (at most a page of them).
fn guests_in(
    by_user: &HashMap<Uid, Vec<SessionId>>,
    remote: &HashMap<NodeId, HashSet<Uid>>,
) -> Vec<Uid> {
    let mut out: Vec<Uid> = by_user
        .keys()
        .chain(remote.values().flatten())
        .copied()
        .filter(|u| u.is_guest())
        .collect();
    out.sort_unstable();
    out.dedup();
    out.truncate(ROOM_LIST_MAX);
    out
}

/// Most lobby participants listed at once: in a login reply, and the
/// guests in the lobby's member list.
const ROOM_LIST_MAX: usize = 300;

/// A storage failure leaves the hub unable to keep its promises; stop and
/// let the supervisor restart chatd from the log.
fn fatal(e: StoreError) -> ! {
    tracing::error!(error = %e, "storage failure; exiting");
    std::process::exit(1);
}

impl Hub {
    /// Bring the tables up to date with the log and start the hub thread.
    /// `lobby`: the lobby's name, when this node serves room-style clients
    /// (it makes sure the lobby exists).
    pub fn spawn(
        mut store: Store,
        node: NodeId,
        limits: Live<Limits>,
        lobby: Option<String>,
    ) -> Result<HubHandle, StoreError> {
        let started = Instant::now();
        let mut clock = Clock::new(node);
        clock.observe(store.last_stamp());
        let replayed = store.replay(|s, op| {
            if let Err(e) = apply(s, op) {
                fatal(e);
            }
        })?;
        if replayed > 0 {
            tracing::info!(ops = replayed, elapsed = ?started.elapsed(), "replayed the log tail");
        }
        let ids = IdAlloc::new(&store, node)?;
        let next_seq = store.applied().get(&node).copied().unwrap_or(0) + 1;
        let durable = store.durable();
        let (applied_tx, applied) = watch::channel(store.applied().clone());
        let (presence_tx, _) = tokio::sync::broadcast::channel(4096);
        let logs = store.log_reader();
        let handle_parts = (applied, presence_tx.clone(), logs);
        let hub = Hub {
            store,
            clock,
            ids,
            names: NameCache::default(),
            batch_limits: limits.get(),
            limits,
            node,
            next_seq,
            sessions: HashMap::new(),
            by_user: HashMap::new(),
            remote: HashMap::new(),
            lobby,
            room: HashSet::new(),
            room_watchers: HashSet::new(),
            lobby_online: HashSet::new(),
            held_marks: HashMap::new(),
            lobby_rate: HashMap::new(),
            members: HashMap::new(),
            new_ops: Vec::new(),
            peer_ops: BTreeMap::new(),
            applied_tx,
            presence_tx,
            marks: Vec::new(),
            last_idle_sweep: Instant::now(),
            replays: Vec::new(),
            out: Vec::new(),
            shutting_down: None,
            storage_full: false,
            storage_full_flag: Arc::new(Default::default()),
            space_checked: Instant::now(),
        };
        let storage_full = hub.storage_full_flag.clone();
        let (tx, rx) = mpsc::channel(8192);
        std::thread::Builder::new()
            .name("chatd-hub".into())
            .spawn(move || {
                // The hub blocks on sled, so it has a thread of its own.
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt.block_on(hub.run(rx)),
                    Err(e) => tracing::error!(error = %e, "cannot start the hub runtime"),
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the hub thread: {e}")))?;
        let (applied, presence, logs) = handle_parts;
        Ok(HubHandle {
            tx,
            durable,
            applied,
            presence,
            logs,
            node,
            storage_full,
        })
    }

    async fn run(mut self, mut rx: mpsc::Receiver<HubMsg>) {
        self.check_space();
        self.ensure_lobby();
        self.finish_batch();
        let mut batch = Vec::with_capacity(512);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, 512) => if n == 0 { break },
                _ = tick.tick() => {}
            }
            self.batch_limits = self.limits.get();
            metrics::gauge!("chatd_hub_queue_depth").set(rx.len() as f64);
            for msg in batch.drain(..) {
                self.handle(msg);
            }
            if self.last_idle_sweep.elapsed() >= IDLE_SWEEP {
                self.close_idle_sessions();
            }
            if self.space_checked.elapsed() >= SPACE_CHECK {
                self.check_space();
            }
            self.finish_batch();
            if let Some((deadline, _)) = &self.shutting_down {
                if self.sessions.is_empty() || Instant::now() >= *deadline {
                    break;
                }
            }
        }
        for s in self.sessions.values() {
            s.link.kill.cancel();
        }
        let done = self.shutting_down.take().map(|(_, d)| d);
        if let Err(e) = self.store.close() {
            tracing::error!(error = %e, "could not write the tables on shutdown (the log has everything)");
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn handle(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Open(link) => {
                if self.shutting_down.is_some() {
                    link.kill.cancel();
                } else {
                    self.sessions.insert(
                        link.id,
                        Session {
                            link,
                            user: None,
                            traits: SessionTraits::default(),
                            waiting_since: Instant::now(),
                            token: None,
                            replay: None,
                            counted: None,
                        },
                    );
                }
            }
            HubMsg::Request { id, cmd } => self.request(id, cmd),
            HubMsg::Echo { id, result } => self.reply(id, result),
            HubMsg::Credentials { id, who, reply } => {
                let _ = reply.send(self.credentials(id, who));
            }
            HubMsg::Login { id, user, hash } => self.login(id, user, &hash),
            HubMsg::Resume { id, token } => self.resume(id, &token),
            HubMsg::Delivered { user, ids } => {
                self.marks.extend(ids.into_iter().map(|m| (user, m)));
            }
            HubMsg::Replay { id, after, reply } => self.replays.push((id, after, reply)),
            HubMsg::Close { id } => self.end_session(id),
            HubMsg::Shutdown { done } => self.begin_shutdown(done),
            HubMsg::PeerOps { origin, ops } => self.peer_ops(origin, ops),
            HubMsg::PeerPresence {
                node,
                full,
                online,
                offline,
            } => self.peer_presence(node, full, online, offline),
            HubMsg::PeerDown { node } => self.peer_presence(node, true, Vec::new(), Vec::new()),
            HubMsg::LocalPresence { reply } => {
                let _ = reply.send(self.by_user.keys().copied().collect());
            }
            HubMsg::Digest { reply } => {
                // A digest writes the tables out first: not on a full disk.
                let d = if self.storage_full {
                    Err(Self::storage_full_error().message)
                } else {
                    self.store.digest().map_err(|e| e.to_string())
                };
                let _ = reply.send(d);
            }
            HubMsg::Admin { req, reply } => {
                let _ = reply.send(self.admin(req));
            }
            HubMsg::Ping { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Whether a user has a session on any node.
    fn online(&self, u: Uid) -> bool {
        online_in(&self.by_user, &self.remote, u)
    }

    /// Run chat rules against the store, with this hub's clock, ids, names,
    /// limits and presence.
    fn with_rules<R>(&mut self, f: impl FnOnce(&Store, &mut Ctx) -> R) -> R {
        let (by_user, remote) = (&self.by_user, &self.remote);
        let online = |u: Uid| online_in(by_user, remote, u);
        let guests = || guests_in(by_user, remote);
        let mut cx = Ctx {
            now_ms: crate::ids::wall_millis(),
            clock: &mut self.clock,
            ids: &mut self.ids,
            names: &mut self.names,
            limits: &self.batch_limits,
            online: &online,
            guests_online: &guests,
        };
        f(&self.store, &mut cx)
    }

    /// Apply another node's operations in order: skip what we have, stop at
    /// a gap (the sender will send again from what we report having).
    fn peer_ops(&mut self, origin: NodeId, ops: Vec<Op>) {
        // With the disk full nothing is taken in; peers send again later.
        if origin == self.node || self.storage_full {
            return;
        }
        let mut expected = match self.peer_ops.get(&origin).and_then(|v| v.last()) {
            Some(op) => op.seq + 1,
            None => self.store.applied().get(&origin).copied().unwrap_or(0) + 1,
        };
        self.peer_ops.entry(origin).or_default().reserve(ops.len());
        for op in ops {
            if op.origin != origin || op.seq > expected {
                break;
            }
            if op.seq < expected {
                continue;
            }
            self.clock.observe(op.stamp);
            match apply(&mut self.store, &op) {
                Ok(effects) => self.route(effects),
                Err(e) => fatal(e),
            }
            self.peer_ops.entry(origin).or_default().push(op);
            expected += 1;
        }
    }

    /// Update what we know of another node's sessions; tell local friends of
    /// every user whose cluster-wide presence changed.
    fn peer_presence(&mut self, node: NodeId, full: bool, online: Vec<Uid>, offline: Vec<Uid>) {
        let mut touched: Vec<Uid> = online.iter().chain(&offline).copied().collect();
        if full {
            touched.extend(self.remote.get(&node).into_iter().flatten().copied());
        }
        touched.sort_unstable();
        touched.dedup();
        let before: Vec<bool> = touched.iter().map(|u| self.online(*u)).collect();
        let set = self.remote.entry(node).or_default();
        if full {
            set.clear();
        }
        for u in offline {
            set.remove(&u);
        }
        set.extend(online);
        if set.is_empty() {
            self.remote.remove(&node);
        }
        for (u, was) in touched.into_iter().zip(before) {
            let now = self.online(u);
            if now != was {
                self.presence(u, now);
            }
        }
    }

    fn user_of(&self, id: SessionId) -> Option<Uid> {
        self.sessions.get(&id).and_then(|s| s.user)
    }

    fn reply(&mut self, id: SessionId, result: Result<Reply, ChatError>) {
        self.out.push((id, OutItem::Reply(Box::new(result))));
    }

    fn request(&mut self, id: SessionId, cmd: Command) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let who = session.user;
        match cmd {
            Command::Logout => {
                self.revoke_session_token(id);
                self.detach(id);
                return self.reply(id, Ok(Reply::LoggedOut));
            }
            Command::GuestLogin { name } => return self.guest_login(id, &name),
            Command::Pending => return self.pending_reply(id),
            _ => {}
        }
        let group = match &cmd {
            Command::Send {
                to: Target::Group(g),
                ..
            } => Some(*g),
            _ => None,
        };
        if let (Some(LOBBY), Some(me)) = (group, who) {
            if let Err(e) = self.lobby_allowance(me) {
                return self.reply(id, Err(e));
            }
        }
        match self.with_rules(|store, cx| rules::decide(store, cx, who, cmd)) {
            Err(e) => self.reply(id, Err(e)),
            Ok(d) if self.storage_full && !d.ops.is_empty() => {
                // Acknowledgements are held until there is room; any other
                // change must wait.
                let acks: Option<Vec<(Uid, Stamp)>> = d
                    .ops
                    .iter()
                    .map(|(_, body)| match body {
                        OpBody::Delivered { marks } => Some(marks.clone()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.concat());
                match acks {
                    Some(marks) => {
                        self.marks.extend(marks);
                        self.reply(id, Ok(d.reply))
                    }
                    None => self.reply(id, Err(Self::storage_full_error())),
                }
            }
            Ok(mut d) => {
                if let (Reply::Sent { alone, .. }, Some(g), Some(me)) = (&mut d.reply, group, who) {
                    if self
                        .sessions
                        .get(&id)
                        .is_some_and(|s| s.traits.report_alone)
                    {
                        *alone = !self.anyone_else_in(g, me);
                    }
                }
                // The reply goes out before the pushes the change causes.
                self.reply(id, Ok(d.reply));
                for (stamp, body) in d.ops {
                    self.commit(stamp, body);
                }
            }
        }
    }

    /// Whether a member of `g` other than `me` is online (for the lobby,
    /// guests count too).
    fn anyone_else_in(&mut self, g: Gid, me: Uid) -> bool {
        if g == LOBBY {
            return self.lobby_online.iter().any(|u| *u != me);
        }
        let members = self.group_members(g);
        members.iter().any(|u| *u != me && self.online(*u))
    }

    /// Everyone online in the lobby, members and guests (at most a page).
    fn room_online(&self) -> Vec<Uid> {
        let mut out: Vec<Uid> = self.lobby_online.iter().copied().collect();
        out.sort_unstable();
        out.truncate(ROOM_LIST_MAX);
        out
    }

    fn in_lobby(&self, user: Uid) -> bool {
        user.is_guest() || matches!(self.store.member(LOBBY, user), Ok(Some(m)) if m.role.is_some())
    }

    /// Take one message from a sender's lobby allowance, or say how fast
    /// they may write.
    fn lobby_allowance(&mut self, me: Uid) -> Result<(), ChatError> {
        let (rate, burst) = (self.batch_limits.lobby_rate, self.batch_limits.lobby_burst);
        let now = Instant::now();
        if self.lobby_rate.len() >= 10_000 {
            self.lobby_rate.retain(|_, (left, at)| {
                *left + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (left, at) = self.lobby_rate.get(&me).copied().unwrap_or((burst, now));
        let left = (left + now.duration_since(at).as_secs_f64() * rate).min(burst);
        if left < 1.0 {
            return Err(ChatError::new(
                ErrorCode::RateLimited,
                format!("at most {rate} messages a second into the lobby"),
            ));
        }
        self.lobby_rate.insert(me, (left - 1.0, now));
        Ok(())
    }

    /// Enter or leave read-only mode as free space crosses the watermark
    /// (leaving it a little above, so it does not flap).
    fn check_space(&mut self) {
        self.space_checked = Instant::now();
        let Some(free) = self.store.free_space() else {
            return;
        };
        let floor = self.batch_limits.min_free_bytes;
        let resume = floor + (floor / 8).max(crate::store::space::RESERVE_BYTES);
        if !self.storage_full && free < floor {
            self.storage_full = true;
            tracing::error!(
                free_mb = free >> 20,
                min_free_mb = floor >> 20,
                "the disk is nearly full: taking no changes until there is room"
            );
        } else if self.storage_full && free >= resume {
            self.storage_full = false;
            tracing::info!(
                free_mb = free >> 20,
                "there is room on the disk again: taking changes"
            );
            self.ensure_lobby();
        }
        if !self.storage_full {
            self.store.ensure_reserve(resume);
        }
        self.storage_full_flag
            .store(self.storage_full, Ordering::Relaxed);
        metrics::gauge!("chatd_storage_full").set(if self.storage_full { 1.0 } else { 0.0 });
    }

    fn storage_full_error() -> ChatError {
        ChatError::new(
            ErrorCode::StorageFull,
            "the server's disk is full; nothing can be changed until there is room (reading works)",
        )
    }

    /// Make sure the lobby exists (and has its configured name).
    fn ensure_lobby(&mut self) {
        if self.storage_full {
            return;
        }
        let Some(name) = self.lobby.clone() else {
            return;
        };
        match self.with_rules(|store, cx| rules::ensure_lobby(store, cx, &name)) {
            Ok(Some((stamp, body))) => self.commit(stamp, body),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot set up the lobby"),
        }
    }

    /// The messages waiting for the session's user, as a reply; what does
    /// not fit follows as a replay.
    fn pending_reply(&mut self, id: SessionId) {
        let Some(user) = self.user_of(id) else {
            return self.reply(
                id,
                Err(ChatError::new(ErrorCode::NotLoggedIn, "log in first")),
            );
        };
        // Deliveries reported earlier in this batch count.
        self.commit_marks();
        let held = self.held_marks.get(&user).cloned().unwrap_or_default();
        let msgs = match rules::pending(&self.store, user, None, PENDING_REPLY_MAX, &held) {
            Ok(m) => m,
            Err(e) => return self.reply(id, Err(e)),
        };
        let mut budget = PENDING_REPLY_BYTES;
        let mut messages = Vec::new();
        let mut more = false;
        for m in msgs {
            // A message is a JSON string inside the reply: escaped twice.
            let cost = 2 * m.text.len() + 100;
            if !messages.is_empty() && cost > budget {
                more = true;
                break;
            }
            budget = budget.saturating_sub(cost);
            match self.names.view(&self.store, m) {
                Ok(v) => messages.push(v),
                Err(e) => return self.reply(id, Err(e)),
            }
        }
        more |= messages.len() == PENDING_REPLY_MAX;
        self.reply(id, Ok(Reply::Pending { messages, more }));
        if more {
            self.out.push((id, OutItem::Replay));
        }
    }

    /// Apply an operation of ours and queue it for the log.
    fn commit(&mut self, stamp: Stamp, body: OpBody) {
        let op = Op {
            origin: self.node,
            seq: self.next_seq,
            stamp,
            body,
        };
        self.next_seq += 1;
        if matches!(op.body, OpBody::Send { .. }) {
            metrics::counter!("chatd_messages_in_total").increment(1);
        }
        match apply(&mut self.store, &op) {
            Ok(effects) => {
                self.new_ops.push(op);
                self.route(effects);
            }
            Err(e) => fatal(e),
        }
    }

    fn credentials(&self, id: SessionId, who: Option<Who>) -> Option<(Uid, String)> {
        let uid = match &who {
            None => self.user_of(id)?,
            Some(Who::Id(u)) => *u,
            Some(Who::Name(n)) => match self.store.name_owner(n).ok()? {
                Some(u) => u,
                // "name#id": an account that lost a name collision.
                None => {
                    let (_, id) = n.rsplit_once('#')?;
                    Uid(id.parse().ok()?)
                }
            },
        };
        let user = self.store.user(uid).ok()??;
        if let Some(Who::Name(n)) = &who {
            if user.name != *n && self.store.name_owner(n).ok()? != Some(uid) {
                return None;
            }
        }
        is_registered(&user).then_some((uid, user.hash))
    }

    fn login(&mut self, id: SessionId, user: Uid, hash: &str) {
        if !self.sessions.contains_key(&id) {
            return;
        }
        match rules::check_login(&self.store, user, hash) {
            Ok(u) => self.logged_in(
                id,
                UserRef {
                    id: user,
                    name: u.name,
                },
                None,
            ),
            Err(e) => self.reply(id, Err(e)),
        }
    }

    fn resume(&mut self, id: SessionId, token: &crate::tokens::Presented) {
        if !self.sessions.contains_key(&id) {
            return;
        }
        match rules::check_token(&self.store, token, crate::ids::wall_millis()) {
            Ok((u, rec)) => self.logged_in(
                id,
                UserRef {
                    id: u.id,
                    name: u.name,
                },
                Some((token.issued, rec.expires_ms)),
            ),
            Err(e) => self.reply(id, Err(e)),
        }
    }

    /// The token a session that logged in gets: none when its client has
    /// no use for one; for a resume, none while the one it holds is in its
    /// first half of life (a reconnect costs no write then).
    fn session_token(
        &mut self,
        id: SessionId,
        user: Uid,
        resumed: Option<(Stamp, u64)>,
    ) -> Option<String> {
        let s = self.sessions.get_mut(&id)?;
        if !s.link.traits().tokens || user.is_guest() {
            s.token = None;
            return None;
        }
        let lifetime = self.batch_limits.token_lifetime.as_millis() as u64;
        let now = crate::ids::wall_millis();
        if let Some((issued, expires_ms)) = resumed {
            s.token = Some(issued);
            if expires_ms.saturating_sub(now) > lifetime / 2 {
                return None;
            }
        }
        if self.storage_full {
            return None;
        }
        let stamp = self.clock.now();
        let fresh = crate::tokens::fresh(user, stamp);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.token = Some(stamp);
        }
        self.commit(
            stamp,
            OpBody::Token {
                user,
                hash: fresh.hash,
                expires_ms: now.saturating_add(lifetime),
            },
        );
        Some(fresh.text)
    }

    /// A session that logs out or is kicked takes its token with it.
    fn revoke_session_token(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let (Some(user), Some(issued)) = (s.user, s.token.take()) else {
            return;
        };
        if !self.storage_full {
            let stamp = self.clock.now();
            self.commit(stamp, OpBody::RevokeToken { user, issued });
        }
    }

    fn guest_login(&mut self, id: SessionId, name: &str) {
        let allow_new = !self.storage_full;
        match self.with_rules(|store, cx| rules::guest_login(store, cx, name, allow_new)) {
            Ok((guest, op)) => {
                if let Some((stamp, body)) = op {
                    self.commit(stamp, body);
                }
                self.logged_in(id, guest, None)
            }
            Err(e) => self.reply(id, Err(e)),
        }
    }

    /// Attach a session whose user was checked, and answer its login with
    /// what its dialect needs.
    fn logged_in(&mut self, id: SessionId, user: UserRef, resumed: Option<(Stamp, u64)>) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let uid = user.id;
        let n = self.by_user.get(&uid).map_or(0, Vec::len);
        if session.user != Some(uid) && n >= self.batch_limits.max_sessions_per_user {
            let e = ChatError::new(
                ErrorCode::TooManySessions,
                format!("{n} sessions are open for this account already"),
            );
            return self.reply(id, Err(e));
        }
        let traits = session.link.traits();
        if self.user_of(id).is_some() {
            self.detach(id);
        }
        if traits.joins_lobby && !self.storage_full {
            match self.with_rules(|store, cx| rules::join_lobby(store, cx, uid)) {
                Ok(Some((stamp, body))) => self.commit(stamp, body),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, user = %uid, "cannot join the lobby"),
            }
        }
        self.attach(id, uid);
        let roster = if traits.roster_in_login {
            self.with_rules(|store, cx| rules::roster(store, cx, uid))
                .ok()
                .map(Box::new)
        } else {
            None
        };
        let room = traits.room_in_login.then(|| self.room_online());
        let sessions = self.by_user.get(&uid).map_or(1, Vec::len);
        let token = self.session_token(id, uid, resumed);
        self.reply(
            id,
            Ok(Reply::LoggedIn {
                user,
                sessions,
                roster,
                room,
                token,
            }),
        );
        if let Some(text) = self.batch_limits.welcome.clone() {
            self.out
                .push((id, OutItem::Event(Arc::new(Event::Notice { text }))));
        }
        if traits.replay_at_login {
            self.out.push((id, OutItem::Replay));
        }
    }

    fn attach(&mut self, id: SessionId, user: Uid) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.user = Some(user);
            s.traits = s.link.traits();
            let label = s.link.label();
            s.counted = Some(label);
            metrics::gauge!("chatd_sessions", "dialect" => label).increment(1.0);
            if s.traits.room {
                self.room.insert(id);
            }
            if s.traits.room_presence {
                self.room_watchers.insert(id);
            }
        }
        let was_online = self.online(user);
        let list = self.by_user.entry(user).or_default();
        list.push(id);
        if list.len() == 1 {
            let _ = self.presence_tx.send(PresenceChange { user, online: true });
            if !was_online {
                self.presence(user, true);
            }
        }
    }

    fn detach(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if let Some(dialect) = s.counted.take() {
            metrics::gauge!("chatd_sessions", "dialect" => dialect).decrement(1.0);
        }
        self.room.remove(&id);
        self.room_watchers.remove(&id);
        let Some(user) = s.user.take() else {
            return;
        };
        s.waiting_since = Instant::now();
        if let Some(list) = self.by_user.get_mut(&user) {
            list.retain(|s| *s != id);
            if list.is_empty() {
                self.by_user.remove(&user);
                let _ = self.presence_tx.send(PresenceChange {
                    user,
                    online: false,
                });
                if !self.online(user) {
                    self.presence(user, false);
                }
            }
        }
    }

    /// Tell a user's online friends (and, for a lobby participant, the
    /// sessions watching the lobby) that the user came or went.
    fn presence(&mut self, user: Uid, online: bool) {
        self.room_presence(user, online);
        let Ok(edges) = self.store.edges(user) else {
            return;
        };
        // Only local sessions can be told; each node tells its own.
        let friends: Vec<Uid> = edges
            .into_iter()
            .filter(|(f, e)| e.link == Link::Friends && self.by_user.contains_key(f))
            .map(|(f, _)| f)
            .collect();
        if friends.is_empty() {
            return;
        }
        let ev = Arc::new(Event::Presence {
            user: self.user_ref(user),
            online,
        });
        for f in friends {
            self.push(f, &ev);
        }
    }

    fn room_presence(&mut self, user: Uid, online: bool) {
        if self.lobby.is_none() || !self.in_lobby(user) {
            return;
        }
        if online {
            self.lobby_online.insert(user);
        } else {
            self.lobby_online.remove(&user);
        }
        if self.room_watchers.is_empty() {
            return;
        }
        let ev = Arc::new(Event::RoomPresence {
            user: self.user_ref(user),
            online,
        });
        for sid in &self.room_watchers {
            if self.sessions.get(sid).and_then(|s| s.user) != Some(user) {
                self.out.push((*sid, OutItem::Event(ev.clone())));
            }
        }
    }

    /// Close every local session of a user, saying why.
    fn kick_user(&mut self, user: Uid, why: ErrorCode) -> usize {
        let sessions = self.by_user.get(&user).cloned().unwrap_or_default();
        for s in &sessions {
            self.kill(*s, Some(why));
        }
        sessions.len()
    }

    fn end_session(&mut self, id: SessionId) {
        self.detach(id);
        self.sessions.remove(&id);
    }

    /// Close sessions silent for longer than the idle timeout, and those
    /// that have not logged in within the login timeout, saying why. One
    /// sweep here, rather than a timer in every connection, keeps idle
    /// connections small. Logged-in clients that never ping (the seed
    /// clients) are left to TCP keepalive.
    fn close_idle_sessions(&mut self) {
        let now = Instant::now();
        self.last_idle_sweep = now;
        let idle = self.batch_limits.idle_timeout;
        let deadline = self.batch_limits.login_timeout;
        let mut closing: Vec<(SessionId, ChatError)> = Vec::new();
        for s in self.sessions.values() {
            let waited = now.saturating_duration_since(s.waiting_since);
            if s.user.is_none() && deadline.is_some_and(|d| waited > d) {
                let e = ChatError::new(ErrorCode::LoginTimeout, "not logged in in time");
                closing.push((s.link.id, e));
            } else if !s.link.traits().idle_exempt
                && idle.is_some_and(|limit| s.link.silent_for() > limit)
            {
                let e = ChatError::new(
                    ErrorCode::IdleTimeout,
                    "nothing received for too long; send \"ping\" to stay connected",
                );
                closing.push((s.link.id, e));
            }
        }
        for (id, error) in closing {
            if let Some(s) = self.sessions.get(&id) {
                let _ = s.link.outbox.push(Out {
                    ticket: 0,
                    item: OutItem::Event(Arc::new(Event::Error(error))),
                });
            }
            // The writer writes the error, finds the outbox closed, and
            // closes the connection.
            self.end_session(id);
        }
    }

    /// Close a session now, saying why when there is room to.
    fn kill(&mut self, id: SessionId, bye: Option<ErrorCode>) {
        if let Some(s) = self.sessions.get(&id) {
            let said = bye.is_some_and(|code| {
                s.link
                    .outbox
                    .push(Out {
                        ticket: self.store.ticket(),
                        item: OutItem::Bye(code),
                    })
                    .is_ok()
            });
            if !said {
                s.link.kill.cancel();
            }
        }
        self.end_session(id);
    }

    fn user_ref(&mut self, u: Uid) -> UserRef {
        let name = self
            .names
            .get(&self.store, u)
            .map(|n| n.to_string())
            .unwrap_or_default();
        UserRef { id: u, name }
    }

    /// Queue a push to every session of a user on this node.
    fn push(&mut self, user: Uid, ev: &Arc<Event>) {
        if let Some(list) = self.by_user.get(&user) {
            for sid in list {
                self.out.push((*sid, OutItem::Event(ev.clone())));
            }
        }
    }

    fn group_members(&mut self, g: Gid) -> Arc<Vec<Uid>> {
        if let Some(m) = self.members.get(&g) {
            return m.clone();
        }
        let list: Vec<Uid> = match self.store.members(g) {
            Ok(m) => m.into_iter().map(|(u, _)| u).collect(),
            Err(e) => fatal(e),
        };
        let list = Arc::new(list);
        if self.members.len() >= 10_000 {
            self.members.clear();
        }
        self.members.insert(g, list.clone());
        list
    }

    /// Turn what an operation changed into pushes to the users concerned.
    fn route(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Message(m) => {
                    let view = match self.names.view(&self.store, m.clone()) {
                        Ok(v) => v,
                        Err(_) => continue,
                    };
                    let ev = Arc::new(Event::Message(view));
                    match m.to {
                        Target::User(u) => self.push(u, &ev),
                        Target::Group(g) => {
                            for u in self.group_members(g).iter() {
                                if *u != m.from {
                                    self.push(*u, &ev);
                                }
                            }
                            if g == LOBBY {
                                for sid in &self.room {
                                    let to = self.sessions.get(sid).and_then(|s| s.user);
                                    if to.is_some() && to != Some(m.from) {
                                        self.out.push((*sid, OutItem::Event(ev.clone())));
                                    }
                                }
                            }
                        }
                    }
                }
                Effect::Link {
                    actor,
                    other,
                    before,
                    after,
                    note,
                } => self.route_link(actor, other, before, after, note),
                Effect::Member {
                    group,
                    user,
                    actor,
                    before,
                    after,
                } => {
                    self.members.remove(&group);
                    if group == LOBBY && self.lobby.is_some() {
                        if after.is_some() && self.online(user) {
                            self.lobby_online.insert(user);
                        } else if after.is_none() && !user.is_guest() {
                            self.lobby_online.remove(&user);
                        }
                    }
                    let change = match (before, after) {
                        (None, Some(_)) if actor == user => GroupChange::Joined,
                        (None, Some(_)) => GroupChange::Invited,
                        (Some(_), None) if actor == user => GroupChange::Left,
                        (Some(_), None) => GroupChange::Kicked,
                        (Some(b), Some(a)) if a > b => GroupChange::Promoted,
                        _ => GroupChange::Demoted,
                    };
                    // A group being created is news to nobody but its creator's reply.
                    if after == Some(Role::Creator) {
                        continue;
                    }
                    let ev = Arc::new(Event::Group {
                        group,
                        change,
                        user,
                        by: actor,
                        name: None,
                        desc: None,
                    });
                    let mut audience: Vec<Uid> = self.group_members(group).to_vec();
                    if !audience.contains(&user) {
                        audience.push(user);
                    }
                    for u in audience {
                        self.push(u, &ev);
                    }
                }
                Effect::GroupUpdated {
                    group,
                    actor,
                    name,
                    desc,
                } => {
                    let ev = Arc::new(Event::Group {
                        group,
                        change: GroupChange::Updated,
                        user: actor,
                        by: actor,
                        name,
                        desc,
                    });
                    for u in self.group_members(group).iter() {
                        self.push(*u, &ev);
                    }
                }
                Effect::GroupDissolved {
                    group,
                    actor,
                    members,
                } => {
                    self.members.remove(&group);
                    let ev = Arc::new(Event::Group {
                        group,
                        change: GroupChange::Dissolved,
                        user: actor,
                        by: actor,
                        name: None,
                        desc: None,
                    });
                    for u in members {
                        self.push(u, &ev);
                    }
                }
                Effect::Renamed { user, .. } => self.names.forget(user),
                Effect::PasswordChanged { .. } => {}
                Effect::Banned { user, banned } => {
                    if banned {
                        self.kick_user(user, ErrorCode::Banned);
                    }
                }
                Effect::Deleted { user } => {
                    self.names.forget(user);
                    self.kick_user(user, ErrorCode::AccountDeleted);
                }
                Effect::Notice { text, stamp } => {
                    // A notice that arrives late (a node catching up) is news no more.
                    if stamp.millis() + NOTICE_FRESH_MS >= crate::ids::wall_millis() {
                        let ev = Arc::new(Event::Notice { text });
                        let users: Vec<Uid> = self.by_user.keys().copied().collect();
                        for u in users {
                            self.push(u, &ev);
                        }
                    }
                }
            }
        }
    }

    fn route_link(&mut self, actor: Uid, other: Uid, before: Link, after: Link, note: String) {
        let me = self.user_ref(actor);
        match (before, after) {
            (_, Link::Pending { from }) => {
                let to = if from == actor { other } else { actor };
                let from = self.user_ref(from);
                self.push(to, &Arc::new(Event::FriendRequest { from, text: note }));
            }
            (_, Link::Friends) => {
                let them = self.user_ref(other);
                let to_other = Event::FriendAdded {
                    user: me,
                    by_you: false,
                };
                let to_actor = Event::FriendAdded {
                    user: them,
                    by_you: true,
                };
                self.push(other, &Arc::new(to_other));
                self.push(actor, &Arc::new(to_actor));
            }
            (Link::Pending { from }, Link::None) if from != actor => {
                self.push(from, &Arc::new(Event::FriendDeclined(me)));
            }
            (_, Link::None) => {
                self.push(other, &Arc::new(Event::FriendRemoved(me)));
            }
        }
    }

    fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        tracing::info!(sessions = self.sessions.len(), "shutting down");
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Some(s) = self.sessions.get(&id) {
                let sent = s
                    .link
                    .outbox
                    .push(Out {
                        ticket: self.store.ticket(),
                        item: OutItem::Bye(ErrorCode::ShuttingDown),
                    })
                    .is_ok();
                if !sent {
                    s.link.kill.cancel();
                }
            }
        }
        self.shutting_down = Some((Instant::now() + SHUTDOWN_GRACE, done));
    }

    /// Log this batch's operations as one segment, ask for a flush, and hand
    /// everything out with the ticket that flush will reach.
    fn finish_batch(&mut self) {
        self.commit_marks();
        if !self.new_ops.is_empty() {
            let next = Vec::with_capacity(self.new_ops.len());
            let ops = std::mem::replace(&mut self.new_ops, next);
            if let Err(e) = self.store.append_log(self.node, ops) {
                fatal(e);
            }
        }
        for (origin, ops) in std::mem::take(&mut self.peer_ops) {
            if let Err(e) = self.store.append_log(origin, ops) {
                fatal(e);
            }
        }
        if *self.applied_tx.borrow() != *self.store.applied() {
            self.applied_tx.send_replace(self.store.applied().clone());
        }
        let ticket = self.store.commit();
        for (id, after, reply) in std::mem::take(&mut self.replays) {
            let page = self.replay_page(id, after);
            let _ = reply.send((ticket, page));
        }
        while !self.out.is_empty() {
            let mut overflow = Vec::new();
            for (id, item) in std::mem::take(&mut self.out) {
                let Some(s) = self.sessions.get(&id) else {
                    continue;
                };
                if s.link.outbox.push(Out { ticket, item }).is_err() {
                    overflow.push(id);
                }
            }
            overflow.sort_unstable();
            overflow.dedup();
            for id in overflow {
                if let Some(s) = self.sessions.get(&id) {
                    tracing::info!(session = id, peer = %s.link.peer, "closing a session that does not keep up");
                }
                // Closing may tell friends the user went offline: another round.
                self.kill(id, None);
            }
        }
        if let Err(e) = self.store.maintain(!self.storage_full) {
            fatal(e);
        }
    }

    /// Log the deliveries sessions reported in this batch. With the disk
    /// full they are held in memory (bounded; past that, those messages
    /// come again later) and logged once there is room.
    fn commit_marks(&mut self) {
        if self.storage_full {
            for (user, id) in std::mem::take(&mut self.marks) {
                if self.held_marks.len() >= HELD_USERS_MAX && !self.held_marks.contains_key(&user) {
                    continue;
                }
                let c = self
                    .held_marks
                    .entry(user)
                    .or_default()
                    .entry(id.node())
                    .or_default();
                *c = (*c).max(id);
            }
            return;
        }
        for (user, cursors) in std::mem::take(&mut self.held_marks) {
            self.marks
                .extend(cursors.into_values().map(|id| (user, id)));
        }
        if !self.marks.is_empty() {
            for body in delivered_ops(std::mem::take(&mut self.marks)) {
                let stamp = self.clock.now();
                self.commit(stamp, body);
            }
        }
    }

    fn replay_page(&mut self, id: SessionId, after: Option<Stamp>) -> Vec<MsgView> {
        let Some(user) = self.user_of(id) else {
            return Vec::new();
        };
        if after.is_none() {
            let start = self.store.last_stamps().clone();
            if let Some(s) = self.sessions.get_mut(&id) {
                s.replay = Some(ReplayState {
                    start,
                    seen: HashSet::new(),
                });
            }
        }
        let held = self.held_marks.get(&user).cloned().unwrap_or_default();
        let msgs = match rules::pending(&self.store, user, after, REPLAY_PAGE, &held) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pending messages");
                return Vec::new();
            }
        };
        let done = msgs.len() < REPLAY_PAGE;
        if let Some(r) = self.sessions.get_mut(&id).and_then(|s| s.replay.as_mut()) {
            r.seen.extend(msgs.iter().map(|m| m.origin()));
        }
        if done {
            self.raise_floors(id, user);
        }
        msgs.into_iter()
            .filter_map(|m| self.names.view(&self.store, m).ok())
            .collect()
    }

    /// After a complete replay: an origin that had nothing pending for the
    /// user has delivered everything it had made when the replay began, so
    /// the user's cursor for it can move up to there. Without this, a node
    /// that never wrote to the user would keep every later login scanning
    /// group histories from the beginning.
    fn raise_floors(&mut self, id: SessionId, user: Uid) {
        let Some(r) = self.sessions.get_mut(&id).and_then(|s| s.replay.take()) else {
            return;
        };
        for (origin, stamp) in r.start {
            if r.seen.contains(&origin) {
                continue;
            }
            match self.store.cursor(user, origin) {
                Ok(c) if c < stamp => self.marks.push((user, stamp)),
                Ok(_) => {}
                Err(e) => fatal(e),
            }
        }
    }
}
