//! The hub: the one place that owns the store and every session's routing,
//! as a core without I/O and a thin driver around it.
//!
//! The core ([`Hub`], this file and the files named below) is given each
//! [`Input`] and the time ([`Now`]); it never reads a clock, waits, or
//! touches a socket or a channel. For each request it asks the rules
//! (`rules::decide`), applies the resulting operations (`apply::apply`), and
//! turns their effects into pushes for the users concerned. At the end of a
//! batch ([`Hub::finish_batch`]) it appends the batch's operations to the
//! log as one segment, asks for a flush, and returns every reply and push
//! tagged with the batch's durability ticket, plus the [`Action`]s for the
//! driver (close this session, tell the mesh about this presence). A
//! session writes an item only once that ticket is on disk, so nothing is
//! acknowledged or delivered before it is durable, and one flush serves
//! the whole batch.
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
mod driver;
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
    /// The applied position the driver was last given.
    applied: Position,
    /// The first storage failure: the driver stops chatd before anything
    /// of this batch goes out (the log has everything acknowledged).
    failed: Option<StoreError>,
}

/// The time, as the driver read it for the current step.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub at: Instant,
    pub wall_ms: u64,
}

/// What the hub core is given (besides the questions the driver asks it
/// directly: credentials, replay pages, the digest, the operator's requests).
pub enum Input {
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
    Close {
        id: SessionId,
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
}

/// What the driver does for the core, in order, before the batch's pushes.
pub enum Action {
    /// Put this on the session's outbox now; when `or_cut` and there is no
    /// room, cut the connection instead.
    Say {
        link: Arc<SessionLink>,
        out: Out,
        or_cut: bool,
    },
    /// Close the connection now.
    Cut(Arc<SessionLink>),
    /// The hub let go of the session: close its outbox (the writer writes
    /// what is in it and ends).
    Release(Arc<SessionLink>),
    /// A user got their first, or lost their last, session here.
    Presence(PresenceChange),
}

/// A finished batch: the ticket its writes reach, what to push, what to do,
/// and the new applied position when it moved.
pub struct Batch {
    pub ticket: u64,
    pub out: Vec<(SessionId, OutItem)>,
    pub actions: Vec<Action>,
    pub applied: Option<Position>,
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
            failed: None,
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

    /// Enter or leave read-only mode as free space crosses the watermark
    /// (leaving it a little above, so it does not flap).
    fn check_space(&mut self) {
        self.space_checked = self.now.at;
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
            Err(e) => self.fail(e),
        }
    }

    /// Say goodbye to every session; new ones are turned away. The driver
    /// stops once none are left or its grace runs out.
    pub fn begin_shutdown(&mut self) {
        tracing::info!(sessions = self.sessions.len(), "shutting down");
        self.shutting_down = true;
        let ticket = self.store.ticket();
        for s in self.sessions.values() {
            let out = Out {
                ticket,
                item: OutItem::Bye(ErrorCode::ShuttingDown),
            };
            self.actions.push(Action::Say {
                link: s.link.clone(),
                out,
                or_cut: true,
            });
        }
    }

    /// Log this batch's operations as one segment, ask for a flush, and hand
    /// everything out with the ticket that flush will reach. The timers that
    /// are due run first.
    pub fn finish_batch(&mut self, now: Now) -> Batch {
        self.now = now;
        if now.at.saturating_duration_since(self.last_idle_sweep) >= IDLE_SWEEP {
            self.close_idle_sessions();
        }
        if now.at.saturating_duration_since(self.space_checked) >= SPACE_CHECK {
            self.check_space();
        }
        self.commit_marks();
        if !self.new_ops.is_empty() {
            let next = Vec::with_capacity(self.new_ops.len());
            let ops = std::mem::replace(&mut self.new_ops, next);
            if let Err(e) = self.store.append_log(self.node, ops) {
                self.fail(e);
            }
        }
        for (origin, ops) in std::mem::take(&mut self.peer_ops) {
            if let Err(e) = self.store.append_log(origin, ops) {
                self.fail(e);
            }
        }
        let applied = (self.applied != *self.store.applied()).then(|| {
            self.applied = self.store.applied().clone();
            self.applied.clone()
        });
        let ticket = self.store.commit();
        Batch {
            ticket,
            out: std::mem::take(&mut self.out),
            actions: std::mem::take(&mut self.actions),
            applied,
        }
    }

    /// Sessions whose outboxes had no room: close them. Closing may tell
    /// friends that the user went offline, which is another round of pushes
    /// (with the same ticket).
    pub fn overflowed(&mut self, ids: &[SessionId]) -> Batch {
        for &id in ids {
            if let Some(s) = self.sessions.get(&id) {
                tracing::info!(session = id, peer = %s.link.peer, "closing a session that does not keep up");
            }
            self.kill(id, None);
        }
        Batch {
            ticket: self.store.ticket(),
            out: std::mem::take(&mut self.out),
            actions: std::mem::take(&mut self.actions),
            applied: None,
        }
    }

    /// Checkpoint the tables when it is time (after the batch went out).
    pub fn maintain(&mut self) {
        if let Err(e) = self.store.maintain(!self.storage_full) {
            self.fail(e);
        }
    }

    /// Write the tables out; the log already has everything.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.sessions.clear();
        self.store.close()
    }

    /// A storage failure leaves the hub unable to keep its promises: it
    /// keeps the first, and the driver stops chatd before anything goes out.
    fn fail(&mut self, e: StoreError) {
        self.failed.get_or_insert(e);
    }

    pub fn failed(&self) -> Option<&StoreError> {
        self.failed.as_ref()
    }

    /// The link of a session the hub holds.
    pub fn link(&self, id: SessionId) -> Option<&Arc<SessionLink>> {
        self.sessions.get(&id).map(|s| &s.link)
    }

    pub fn links(&self) -> impl Iterator<Item = &Arc<SessionLink>> {
        self.sessions.values().map(|s| &s.link)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The users with a session on this node, for a new peer link.
    pub fn local_users(&self) -> Vec<Uid> {
        self.by_user.keys().copied().collect()
    }

    /// A fingerprint of the replicated state. It writes the tables out
    /// first: not on a full disk.
    pub fn digest(&mut self) -> Result<crate::store::Digest, String> {
        if self.storage_full {
            return Err(Self::storage_full_error().message);
        }
        self.store.digest().map_err(|e| e.to_string())
    }

    /// A reader of this node's log (for the mesh's links).
    pub fn log_reader(&self) -> LogReader {
        self.store.log_reader()
    }

    /// How far each origin's log is applied here.
    pub fn applied(&self) -> &Position {
        self.store.applied()
    }
}

#[cfg(test)]
pub(crate) mod tests;
