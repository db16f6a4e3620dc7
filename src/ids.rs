//! Identifiers and the hybrid logical clock.
//!
//! User and group ids must fit a signed 32-bit int (the classic client parses
//! them as `int`) and must be unique cluster-wide without coordination, so
//! each node allocates from its own block of [`ID_BLOCK`] ids.
//!
//! Every operation carries a [`Stamp`]: a hybrid-logical-clock time with the
//! origin node in its low bits. Stamps are unique, totally ordered, and
//! respect causality across nodes; a message's id *is* its stamp.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A node's index in the cluster (1..=[`MAX_NODE`]). It picks the node's
/// id block and sits in the low bits of every stamp the node makes.
pub type NodeId = u16;

/// Highest node index; keeps every id block below `i32::MAX`.
pub const MAX_NODE: NodeId = 1000;

/// Ids per node: node `n` hands out `(n-1)*ID_BLOCK + 1 ..= n*ID_BLOCK - 1`.
pub const ID_BLOCK: u32 = 2_000_000;

/// The ids node `node` may allocate, for users and (separately) for groups.
pub fn id_block(node: NodeId) -> std::ops::RangeInclusive<u32> {
    let base = (u32::from(node) - 1) * ID_BLOCK;
    base + 1..=base + ID_BLOCK - 1
}

/// Guests (lobby visitors without an account) have ids above every node's
/// user block, so a guest's id is never a registered user's. Node `n` hands
/// out `GUEST_BASE + (n-1)*GUEST_BLOCK + 1 ..= GUEST_BASE + n*GUEST_BLOCK`;
/// with 1000 nodes that still fits an `int`.
pub const GUEST_BASE: u32 = 2_000_000_000;
pub const GUEST_BLOCK: u32 = 147_483;

/// The guest ids node `node` may allocate.
pub fn guest_block(node: NodeId) -> std::ops::RangeInclusive<u32> {
    let base = GUEST_BASE + (u32::from(node) - 1) * GUEST_BLOCK;
    base + 1..=base + GUEST_BLOCK
}

/// The lobby: one group per cluster with the same id on every node, where
/// the room-style dialects chat. Its id lies outside every node's group
/// block, so no node allocates it for anything else.
pub const LOBBY: Gid = Gid(2_000_000_000);

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Uid(pub u32);

impl Uid {
    /// Whether this is a guest's id.
    pub fn is_guest(self) -> bool {
        self.0 > GUEST_BASE
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Gid(pub u32);

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

const NODE_BITS: u32 = 10;
const LOGICAL_BITS: u32 = 12;

/// `millis << 22 | logical << 10 | node`. 42 bits of milliseconds last until
/// the year 2109; 12 logical bits allow 4096 stamps per millisecond per node
/// before the clock runs ahead of the wall clock.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Stamp(pub u64);

/// Message ids are the stamps of the operations that created the messages.
pub type MsgId = Stamp;

impl Stamp {
    pub const ZERO: Stamp = Stamp(0);

    /// The first stamp `node` can make in the millisecond `ms`.
    pub const fn new(ms: u64, node: NodeId) -> Stamp {
        Stamp(ms << (LOGICAL_BITS + NODE_BITS) | node as u64)
    }

    pub fn node(self) -> NodeId {
        (self.0 & ((1 << NODE_BITS) - 1)) as NodeId
    }

    /// Wall-clock milliseconds since the Unix epoch at which it was made.
    pub fn millis(self) -> u64 {
        self.0 >> (NODE_BITS + LOGICAL_BITS)
    }

    fn hlc(self) -> u64 {
        self.0 >> NODE_BITS
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

pub fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How far ahead of our wall clock a peer's stamp may be before we stop
/// following it: a peer with a broken clock must not drag ours into the future.
const MAX_FORWARD_DRIFT_MS: u64 = 60_000;

/// Hybrid logical clock (Kulkarni et al.): never goes backwards, follows the
/// wall clock when it can, and moves past every stamp it has seen.
#[derive(Debug)]
pub struct Clock {
    node: NodeId,
    last: u64,
}

impl Clock {
    pub fn new(node: NodeId) -> Clock {
        Clock { node, last: 0 }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn now_at(&mut self, wall_ms: u64) -> Stamp {
        let wall = wall_ms << LOGICAL_BITS;
        self.last = (self.last + 1).max(wall);
        Stamp(self.last << NODE_BITS | u64::from(self.node))
    }

    /// Take notice of a stamp made elsewhere (or before a restart), so every
    /// later stamp of ours orders after it. Returns false, and ignores it,
    /// when it lies implausibly far in the future.
    pub fn observe(&mut self, seen: Stamp, now_ms: u64) -> bool {
        if seen.millis() > now_ms + MAX_FORWARD_DRIFT_MS {
            return false;
        }
        self.last = self.last.max(seen.hlc());
        true
    }

    /// The latest stamp this clock has issued or observed; nothing made in the
    /// future by this node will be at or below it.
    pub fn high_water(&self) -> Stamp {
        Stamp(self.last << NODE_BITS | u64::from(self.node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_blocks_fit_i32_and_do_not_overlap() {
        let first = id_block(1);
        assert_eq!(*first.start(), 1);
        let last = id_block(MAX_NODE);
        assert!(*last.end() < i32::MAX as u32);
        assert!(id_block(1).end() < id_block(2).start());
        assert!(*id_block(MAX_NODE).end() < GUEST_BASE);
        assert!(*guest_block(MAX_NODE).end() <= i32::MAX as u32);
        assert!(guest_block(1).end() < guest_block(2).start());
        assert!(Uid(*guest_block(1).start()).is_guest());
        assert!(!Uid(*id_block(MAX_NODE).end()).is_guest());
        assert!(LOBBY.0 > *id_block(MAX_NODE).end() && LOBBY.0 <= i32::MAX as u32);
    }

    #[test]
    fn stamps_are_monotonic_and_carry_node() {
        let mut c = Clock::new(7);
        let a = c.now_at(1_000);
        let b = c.now_at(1_000);
        let d = c.now_at(999); // wall clock went backwards
        assert!(a < b && b < d);
        assert_eq!(a.node(), 7);
        assert_eq!(a.millis(), 1_000);
    }

    #[test]
    fn observe_moves_past_remote_stamps() {
        let mut a = Clock::new(1);
        let mut b = Clock::new(2);
        let now = wall_millis();
        let sb = b.now_at(now + 5_000);
        assert!(a.observe(sb, now));
        let sa = a.now_at(now);
        assert!(sa > sb, "causally later stamp must order after");
    }

    #[test]
    fn observe_ignores_far_future() {
        let mut a = Clock::new(1);
        let now = 1_000_000;
        let far = Stamp::new(now + 10 * MAX_FORWARD_DRIFT_MS, 2);
        assert!(!a.observe(far, now));
        assert!(a.now_at(now) < far);
    }
}
