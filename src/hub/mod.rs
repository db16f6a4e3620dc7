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
//!
//! Files: `handle.rs` (what sessions and the mesh use to reach the hub),
//! this file (the loop, batches, requests, commits), `login.rs` (logging in
//! and out, ending sessions), `routing.rs` (effects to pushes, presence),
//! `replay.rs` (pending messages and delivery marks), `lobby.rs`,
//! `admin.rs` (the operator's requests), `outbox.rs` (a session's queue).

mod admin;
mod handle;
mod lobby;
mod login;
mod outbox;
mod replay;
mod routing;
pub use admin::AdminReq;
pub use handle::{
    HubHandle, HubMsg, Out, OutItem, PageReply, PresenceChange, SessionLink, TrySend,
};
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
}

#[cfg(test)]
mod tests;
