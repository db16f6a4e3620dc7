//! What to send to one peer, decided without I/O: given the time, how far
//! the peer says it has applied each origin's log, how far ours is durable
//! and applied, [`Plan`] says which stretches of which log to send. The
//! outbound link (`send.rs`) reads them from the log and writes them; tests
//! drive plans in memory, through partitions and stalls, in milliseconds.

use super::{OWN_RESEND_DELAY, OWN_RESEND_MAX, RELAY_DELAY};
use crate::ids::NodeId;
use crate::store::Position;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Send `origin`'s operations after `after`, up to and including `upto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stretch {
    pub origin: NodeId,
    pub after: u64,
    pub upto: u64,
}

/// The plan for one outbound link.
#[derive(Debug)]
pub struct Plan {
    me: NodeId,
    peer: NodeId,
    /// How far the peer says it has applied each origin.
    peer_applied: Position,
    /// Our own operations sent on this link so far.
    sent_own: u64,
    /// Our applied position over the last second or so, for relaying.
    history: VecDeque<(Instant, Position)>,
    last_relay: HashMap<NodeId, Instant>,
    /// Since when the peer has been stuck at this position of ours, and
    /// how long to wait before sending it all again.
    own_stall: Option<(u64, Instant, Duration)>,
}

fn at(p: &Position, origin: NodeId) -> u64 {
    p.get(&origin).copied().unwrap_or(0)
}

impl Plan {
    /// A link starts with the peer saying how far it has applied.
    pub fn new(me: NodeId, peer: NodeId, peer_applied: Position) -> Plan {
        Plan {
            me,
            peer,
            sent_own: at(&peer_applied, me),
            peer_applied,
            history: VecDeque::new(),
            last_relay: HashMap::new(),
            own_stall: None,
        }
    }

    /// The peer said how far it has applied. What it has of ours (a
    /// snapshot may have brought it) need not be sent.
    pub fn acked(&mut self, applied: Position) {
        self.sent_own = self.sent_own.max(at(&applied, self.me));
        self.peer_applied = applied;
    }

    /// Our own operations to send now that ours are durable up to
    /// `durable_own`: everything after what this link has sent, unless
    /// our log no longer begins that early (`start`): the peer then needs
    /// a snapshot first (`catchup.rs`), and says so by how far it applied.
    pub fn own(&self, durable_own: u64, start: &Position) -> Option<Stretch> {
        (durable_own > self.sent_own && self.sent_own >= at(start, self.me)).then_some(Stretch {
            origin: self.me,
            after: self.sent_own,
            upto: durable_own,
        })
    }

    /// Our own operations were sent up to `last`.
    pub fn sent_own(&mut self, last: u64) {
        self.sent_own = self.sent_own.max(last);
    }

    /// A tick (every 250 ms): `applied` is how far this node has applied
    /// each origin, `durable_own` how far its own log is on disk. Returns
    /// the other origins' operations the peer has lacked for over
    /// [`RELAY_DELAY`]: what we had a second ago and it still has not.
    /// Also notices a peer stuck behind our own operations (its disk was
    /// full, say): after a while `own` offers them again, and each resend to
    /// a peer that stays stuck waits twice as long.
    /// Nothing our log no longer holds (before `start`) is offered.
    pub fn tick(
        &mut self,
        now: Instant,
        applied: Position,
        durable_own: u64,
        start: &Position,
    ) -> Vec<Stretch> {
        self.history.push_back((now, applied));
        while self
            .history
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= RELAY_DELAY)
        {
            self.history.pop_front();
        }
        let Some((t, old)) = self.history.front() else {
            return Vec::new();
        };
        if now.duration_since(*t) < RELAY_DELAY {
            return Vec::new();
        }
        let theirs = at(&self.peer_applied, self.me);
        self.own_stall = match self.own_stall {
            _ if theirs >= durable_own => None,
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
        let mut out = Vec::new();
        for (&origin, &had) in old {
            if origin == self.me || origin == self.peer {
                continue;
            }
            let theirs = at(&self.peer_applied, origin);
            let recently = self
                .last_relay
                .get(&origin)
                .is_some_and(|t| now.duration_since(*t) < RELAY_DELAY);
            if theirs < had && theirs >= at(start, origin) && !recently {
                self.last_relay.insert(origin, now);
                out.push(Stretch {
                    origin,
                    after: theirs,
                    upto: had,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
