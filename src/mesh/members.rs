//! The member table, decided without I/O: who the members are (learned
//! from hellos and gossip, with conflicts refused), which of our links to
//! each is up, which inbound link is current, when we last heard from each,
//! the ids offered to joining nodes, and how a member looks to the
//! operator. The links (`send.rs`, `receive.rs`) tell it what happened and
//! do what it answers; the time is given.

use super::catchup::PeerView;
use super::wire::MemberInfo;
use super::MemberStatus;
use crate::ids::{NodeId, MAX_NODE};
use crate::store::Position;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long an id offered to a joining node stays held for it.
const OFFER_HOLD: Duration = Duration::from_secs(60);

/// What learning of a member changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Learned {
    /// We knew it as it is (or it is us).
    Known,
    /// It has a new address: gossip and save the list.
    Moved,
    /// A new member: gossip, save the list, and dial it.
    New,
    /// It claims an id that another node has (or ours, or none): ignored.
    Conflict,
}

#[derive(Debug)]
struct Peer {
    info: MemberInfo,
    out_up: bool,
    in_up: bool,
    /// Which inbound link is current; an older one closing changes nothing.
    in_gen: u64,
    /// Milliseconds since the Unix epoch of the last frame from it.
    last_contact_ms: Option<u64>,
    /// How far the peer says it has applied each origin's log.
    applied: Position,
    /// Where the peer says its log begins.
    start: Position,
}

#[derive(Debug)]
pub struct Members {
    me: MemberInfo,
    peers: BTreeMap<NodeId, Peer>,
    /// Ids offered to joining nodes (by their uuid), and since when.
    offers: HashMap<NodeId, (String, Instant)>,
    next_gen: u64,
}

impl Members {
    pub fn new(me: MemberInfo) -> Members {
        Members {
            me,
            peers: BTreeMap::new(),
            offers: HashMap::new(),
            next_gen: 1,
        }
    }

    /// Take in a member we were told about.
    pub fn learn(&mut self, m: MemberInfo) -> Learned {
        if m.node == self.me.node {
            return if m.uuid == self.me.uuid {
                Learned::Known
            } else {
                Learned::Conflict
            };
        }
        if m.node == 0 || m.node > MAX_NODE {
            return Learned::Conflict;
        }
        match self.peers.get_mut(&m.node) {
            Some(p) if p.info.uuid != m.uuid => Learned::Conflict,
            Some(p) if p.info.addr != m.addr => {
                p.info.addr = m.addr;
                Learned::Moved
            }
            Some(_) => Learned::Known,
            None => {
                let peer = Peer {
                    info: m,
                    out_up: false,
                    in_up: false,
                    in_gen: 0,
                    last_contact_ms: None,
                    applied: Position::new(),
                    start: Position::new(),
                };
                self.peers.insert(peer.info.node, peer);
                Learned::New
            }
        }
    }

    /// The member known by this id (for the address to dial, the uuid it
    /// must present).
    pub fn info(&self, node: NodeId) -> Option<&MemberInfo> {
        self.peers.get(&node).map(|p| &p.info)
    }

    /// Every member, us included (what we gossip).
    pub fn list(&self) -> Vec<MemberInfo> {
        let mut v: Vec<MemberInfo> = self.others();
        v.push(self.me.clone());
        v
    }

    /// The other members (what we save).
    pub fn others(&self) -> Vec<MemberInfo> {
        self.peers.values().map(|p| p.info.clone()).collect()
    }

    /// The id a joining node (by uuid) should take: the lowest one no member
    /// has and no other joiner was offered in the last minute; the same one
    /// again when the same node asks again.
    pub fn offer_id(&mut self, uuid: &str, now: Instant) -> Option<NodeId> {
        self.offers
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < OFFER_HOLD);
        if let Some((&n, _)) = self.offers.iter().find(|(_, (u, _))| u == uuid) {
            return Some(n);
        }
        let free = |n: &NodeId| {
            *n != self.me.node && !self.peers.contains_key(n) && !self.offers.contains_key(n)
        };
        let n = (1..=MAX_NODE).find(free)?;
        self.offers.insert(n, (uuid.to_string(), now));
        Some(n)
    }

    /// Our link to `node` is up; it says how far it has applied.
    pub fn out_up(&mut self, node: NodeId, applied: Position, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.out_up = true;
            p.applied = applied;
            p.last_contact_ms = Some(now_ms);
        }
    }

    /// Our link to `node` ended; returns whether it had been up.
    pub fn out_down(&mut self, node: NodeId) -> bool {
        self.peers
            .get_mut(&node)
            .is_some_and(|p| std::mem::replace(&mut p.out_up, false))
    }

    /// A link from `node` is up: returns its generation, which it gives
    /// back when it ends.
    pub fn in_up(&mut self, node: NodeId, now_ms: u64) -> u64 {
        let gen = self.next_gen;
        self.next_gen += 1;
        if let Some(p) = self.peers.get_mut(&node) {
            p.in_up = true;
            p.in_gen = gen;
            p.last_contact_ms = Some(now_ms);
        }
        gen
    }

    /// A link from `node` ended. Returns whether it was the current one: its
    /// users then no longer count as online through it (a newer link that
    /// replaced it keeps them).
    pub fn in_down(&mut self, node: NodeId, gen: u64) -> bool {
        match self.peers.get_mut(&node) {
            Some(p) if p.in_gen == gen => {
                p.in_up = false;
                true
            }
            _ => false,
        }
    }

    /// A frame came from `node`.
    pub fn heard(&mut self, node: NodeId, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.last_contact_ms = Some(now_ms);
        }
    }

    /// `node` says how far it has applied.
    pub fn acked(&mut self, node: NodeId, applied: Position, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.applied = applied;
            p.last_contact_ms = Some(now_ms);
        }
    }

    /// `node` says where its log begins.
    pub fn log_start(&mut self, node: NodeId, start: Position) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.start = start;
        }
    }

    /// What catching up needs to know of each peer (`catchup.rs`).
    pub fn views(&self) -> Vec<PeerView> {
        self.peers
            .values()
            .map(|p| PeerView {
                node: p.info.node,
                up: p.out_up,
                applied: p.applied.clone(),
                start: p.start.clone(),
            })
            .collect()
    }

    /// How every member looks from here, given how far we have applied.
    pub fn status(&self, ours: &Position) -> Vec<MemberStatus> {
        let mut members = vec![MemberStatus {
            node: self.me.node,
            uuid: self.me.uuid.clone(),
            addr: self.me.addr.clone(),
            state: "self".into(),
            last_contact_ms: None,
            lag_ops: 0,
        }];
        for p in self.peers.values() {
            let lag = ours
                .iter()
                .filter(|(o, _)| **o != p.info.node)
                .map(|(o, s)| s.saturating_sub(p.applied.get(o).copied().unwrap_or(0)))
                .sum();
            let state = match (p.out_up, p.in_up) {
                (true, true) => "up",
                (false, false) => "down",
                _ => "partial",
            };
            members.push(MemberStatus {
                node: p.info.node,
                uuid: p.info.uuid.clone(),
                addr: p.info.addr.clone(),
                state: state.into(),
                last_contact_ms: p.last_contact_ms,
                lag_ops: lag,
            });
        }
        members.sort_by_key(|m| m.node);
        members
    }
}

#[cfg(test)]
mod tests;
