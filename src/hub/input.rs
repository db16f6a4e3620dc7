//! What passes between the hub's core and its driver: the time the driver
//! read ([`Now`]), the inputs it hands the core ([`Input`]), and what the
//! core returns for it to do ([`Action`], [`Batch`]).

use super::*;

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
    /// Part of a snapshot a peer is sending (`install.rs`).
    Snapshot {
        from: NodeId,
        part: crate::snapshot::Part,
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
