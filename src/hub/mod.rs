//! The hub: the one place that owns the store and every session's routing,
//! as a core without I/O and a thin driver around it.
//!
//! The core ([`Hub`], this file and the files named below) is given each
//! [`Input`] and the time ([`Now`]); it never reads a clock, waits, or
//! touches a socket or a channel. For each request it asks the rules
//! (`rules::decide`), applies the resulting operations (`apply::apply`), and
//! turns their effects into pushes for the users concerned. At the end of a
//! batch ([`Hub::finish_batch`]) it appends the batch's operations to the
//! log, asks for a flush, and returns every reply and push tagged with the
//! batch's durability ticket, plus the [`Action`]s for the driver (close
//! this session, tell the mesh about this presence). A session writes an
//! item only once that ticket is on disk, so nothing is acknowledged or
//! delivered before it is durable, and one flush serves the whole batch
//! (and every batch queued meanwhile). The driver queues the batch's items without waking
//! their writers, and the commit thread wakes them once the ticket is on
//! disk (`Store::when_durable`): one wake-up per writer and batch.
//!
//! The driver (`driver.rs`) owns the thread, the channel, the timers and
//! the reply channels: it reads the clock, hands messages to the core in
//! batches, and carries out what the core returns. Because one thread does
//! all of this, the rules never race: a name is checked and taken in one
//! step, a kick cannot cross a message.
//!
//! The hub must not block on a client: the driver pushes items on the
//! session's bounded outbox, and a session whose outbox is full is closed
//! (its messages stay pending).
//!
//! Files: `handle.rs` (what sessions and the mesh use to reach the hub),
//! `driver.rs` (the thread and the loop), this file (the core's state,
//! requests, commits, batches), `login.rs` (logging in and out, ending
//! sessions), `routing.rs` (effects to pushes, presence), `replay.rs`
//! (pending messages and delivery marks), `lobby.rs`, `admin.rs` (the
//! operator's requests), `outbox.rs` (a session's queue).

mod admin;
mod batch;
mod driver;
mod handle;
mod input;
mod install;
mod lobby;
mod login;
mod outbox;
mod replay;
mod routing;
pub use admin::AdminReq;
pub use handle::{
    HubHandle, HubMsg, Out, OutItem, PageReply, PresenceChange, SessionLink, TrySend,
};
pub use input::{Action, Batch, Input, Now};
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
use std::time::{Duration, Instant};

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
/// How often the retention settings are held against the watermarks.
const RETENTION_CHECK: Duration = Duration::from_secs(1);

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
    /// This batch's classic deliveries, logged as one operation.
    marks: Vec<(Uid, Stamp)>,
    /// Replies and pushes of this batch.
    out: Vec<(SessionId, OutItem)>,
    /// What the driver is to do besides (close sessions, tell peers).
    actions: Vec<Action>,
    shutting_down: bool,
    /// The time the driver gave with the current input.
    now: Now,
    last_idle_sweep: Instant,
    /// The disk is too full for changes: only reads, logins and presence
    /// are served until there is room (`--min-free-mb`).
    storage_full: bool,
    storage_full_flag: Arc<std::sync::atomic::AtomicBool>,
    space_checked: Instant,
    retention_checked: Instant,
    /// The applied position the driver was last given.
    applied: Position,
    /// The first storage failure: the driver stops chatd before anything
    /// of this batch goes out (the log has everything acknowledged).
    failed: Option<StoreError>,
    /// A snapshot being installed (`install.rs`).
    installing: Option<install::Installing>,
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

impl Hub {
    /// Bring the tables up to date with the log: a hub core on `store`.
    /// `lobby`: the lobby's name, when this node serves room-style clients
    /// (`start` makes sure the lobby exists).
    pub fn new(
        mut store: Store,
        node: NodeId,
        limits: Live<Limits>,
        lobby: Option<String>,
        now: Now,
    ) -> Result<Hub, StoreError> {
        let mut clock = Clock::new(node);
        clock.observe(store.last_stamp(), now.wall_ms);
        let mut failed = None;
        let replayed = store.replay(|s, op| {
            if let Err(e) = apply(s, op) {
                failed.get_or_insert(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if replayed > 0 {
            tracing::info!(ops = replayed, "replayed the log tail");
        }
        let ids = IdAlloc::new(&store, node)?;
        let next_seq = store.applied().get(&node).copied().unwrap_or(0) + 1;
        Ok(Hub {
            applied: store.applied().clone(),
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
            marks: Vec::new(),
            out: Vec::new(),
            actions: Vec::new(),
            shutting_down: false,
            now,
            last_idle_sweep: now.at,
            storage_full: false,
            storage_full_flag: Arc::new(Default::default()),
            space_checked: now.at,
            retention_checked: now.at,
            failed: None,
            installing: None,
        })
    }

    /// The first step: look at the disk, make sure the lobby exists.
    pub fn start(&mut self, now: Now) {
        self.now = now;
        self.check_space();
        self.ensure_lobby();
    }

    /// A new batch begins: it uses the limits in force now.
    pub fn begin_batch(&mut self, now: Now) {
        self.now = now;
        self.batch_limits = self.limits.get();
    }

    /// Set when the disk is too full to take changes (for the handle).
    pub fn storage_full_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.storage_full_flag.clone()
    }

    pub fn handle(&mut self, input: Input, now: Now) {
        self.now = now;
        match input {
            Input::Open(link) => {
                if self.shutting_down {
                    self.actions.push(Action::Cut(link));
                } else {
                    let session = Session {
                        link: link.clone(),
                        user: None,
                        traits: SessionTraits::default(),
                        waiting_since: now.at,
                        token: None,
                        replay: None,
                        counted: None,
                    };
                    self.sessions.insert(link.id, session);
                }
            }
            Input::Request { id, cmd } => self.request(id, cmd),
            Input::Echo { id, result } => self.reply(id, result),
            Input::Login { id, user, hash } => self.login(id, user, &hash),
            Input::Resume { id, token } => self.resume(id, &token),
            Input::Delivered { user, ids } => {
                self.marks.extend(ids.into_iter().map(|m| (user, m)));
            }
            Input::Close { id } => self.end_session(id),
            Input::PeerOps { origin, ops } => self.peer_ops(origin, ops),
            Input::PeerPresence {
                node,
                full,
                online,
                offline,
            } => self.peer_presence(node, full, online, offline),
            Input::PeerDown { node } => self.peer_presence(node, true, Vec::new(), Vec::new()),
            Input::Snapshot { from, part } => self.snapshot_part(from, part),
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
            now_ms: self.now.wall_ms,
            clock: &mut self.clock,
            ids: &mut self.ids,
            names: &mut self.names,
            limits: &self.batch_limits,
            online: &online,
            guests_online: &guests,
        };
        f(&self.store, &mut cx)
    }

    /// A fresh stamp of this node's clock, at the time given.
    fn stamp(&mut self) -> Stamp {
        self.clock.now_at(self.now.wall_ms)
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
            Err(e) => self.fail(e),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
