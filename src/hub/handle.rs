//! The hub's side of a session, and the way to the hub: what a session
//! and the hub share (`SessionLink`), what a session's writer gets (`Out`),
//! what the hub is sent (`HubMsg`), and the handle that sends it.

use super::*;
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

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

    /// How long the client has been silent, at `now`.
    pub fn silent_at(&self, now: Instant) -> Duration {
        let heard = Duration::from_millis(self.heard.load(Ordering::Relaxed));
        now.saturating_duration_since(self.born)
            .saturating_sub(heard)
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

/// What the hub is sent: an input for its core, or a question the driver
/// answers on the reply channel that comes with it.
pub enum HubMsg {
    Input(Input),
    /// The user id and password hash of a login candidate (`None`: the
    /// session's own user).
    Credentials {
        id: SessionId,
        who: Option<Who>,
        reply: oneshot::Sender<Option<(Uid, String)>>,
    },
    /// The next page of pending messages after `after`, with the ticket to wait for.
    Replay {
        id: SessionId,
        after: Option<Stamp>,
        reply: PageReply,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// Stop now, without the goodbyes: write everything down and answer
    /// once nothing holds the data directory (a `Server` dropped unstopped).
    Halt {
        done: std::sync::mpsc::SyncSender<()>,
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
        reply: oneshot::Sender<Result<crate::admin::proto::Reply, String>>,
    },
    /// Answered at once: proves the hub is alive (watchdog, health).
    Ping {
        reply: oneshot::Sender<()>,
    },
    /// An input whose sender waits for room: the permit goes back once the
    /// hub has taken it in. A peer's operations come so, a few frames at a
    /// time per link, and a peer's snapshot a part or two at a time, so that
    /// a node catching up holds a few of them in its queue rather than all
    /// that the peer can send (QUIC's flow control then holds the rest at
    /// the peer).
    Paced {
        input: Input,
        permit: tokio::sync::OwnedSemaphorePermit,
    },
}

impl From<Input> for HubMsg {
    fn from(input: Input) -> HubMsg {
        HubMsg::Input(input)
    }
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
    pub(super) tx: mpsc::Sender<HubMsg>,
    pub(super) durable: watch::Receiver<Durable>,
    pub(super) applied: watch::Receiver<Position>,
    pub(super) presence: tokio::sync::broadcast::Sender<PresenceChange>,
    pub(super) logs: LogReader,
    pub(super) snapshots: crate::store::SnapshotReader,
    pub(super) node: NodeId,
    pub(super) storage_full: Arc<std::sync::atomic::AtomicBool>,
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

    /// Reads snapshots of the tables (for peers and backups).
    pub fn snapshots(&self) -> &crate::store::SnapshotReader {
        &self.snapshots
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

    /// Stop at once and wait (blocking, at most `wait`) until the store is
    /// closed, so that the data directory may go. Does nothing when the
    /// hub has already stopped.
    pub fn halt(&self, wait: Duration) {
        let (done, stopped) = std::sync::mpsc::sync_channel(1);
        let mut msg = HubMsg::Halt { done };
        let deadline = std::time::Instant::now() + wait;
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(m)) => {
                    if std::time::Instant::now() >= deadline {
                        return;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let _ = stopped.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}
