//! When to ask for a snapshot, decided without I/O.
//!
//! A node catches up from its peers' logs (`plan.rs`: own operations and
//! relays). Once every peer that has an origin's operations this node lacks
//! has compacted them away (their logs begin after this node's position),
//! no log can serve them: the node asks one of those peers for a snapshot
//! (`crate::snapshot`), installs it, and the logs serve the rest.
//!
//! [`CatchUp`] is given the time, this node's position and each peer's
//! (how far it has applied, where its log begins, whether our link to it is
//! up), and answers which peer to ask, if any. It waits a little before
//! asking (links coming up may still relay what is missing), asks one peer
//! at a time, and backs off after a failure.

use crate::ids::NodeId;
use crate::store::Position;
use std::time::{Duration, Instant};

/// How long a node must have lacked what no log holds before it asks.
pub const HOLD: Duration = Duration::from_secs(2);
/// After a snapshot that failed (or did not help), the first wait; it
/// doubles up to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A snapshot that has not ended after this long counts as failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// What this node knows of a peer.
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    pub node: NodeId,
    /// Our link to it is up (we ask over it).
    pub up: bool,
    /// How far it says it has applied each origin's log.
    pub applied: Position,
    /// Where its log begins (what it compacted away).
    pub start: Position,
}

fn at(p: &Position, origin: NodeId) -> u64 {
    p.get(&origin).copied().unwrap_or(0)
}

/// The origins this node lacks operations of that no peer's log holds,
/// and the peers that could send them as a snapshot (those ahead), best
/// first: ahead in the most of those origins, then by how far, then by id.
pub fn stranded(mine: &Position, peers: &[PeerView]) -> (Vec<NodeId>, Vec<NodeId>) {
    let mut origins: Vec<NodeId> = peers
        .iter()
        .filter(|p| p.up)
        .flat_map(|p| p.applied.keys().copied())
        .collect();
    origins.sort_unstable();
    origins.dedup();
    let lacking: Vec<NodeId> = origins
        .into_iter()
        .filter(|&o| {
            let ahead = peers
                .iter()
                .filter(|p| p.up && at(&p.applied, o) > at(mine, o));
            let mut ahead = ahead.peekable();
            ahead.peek().is_some() && ahead.all(|p| at(&p.start, o) > at(mine, o))
        })
        .collect();
    let mut sources: Vec<(usize, u64, NodeId)> = peers
        .iter()
        .filter(|p| p.up)
        .map(|p| {
            let ahead_in = lacking
                .iter()
                .filter(|&&o| at(&p.applied, o) > at(mine, o))
                .count();
            let far: u64 = lacking.iter().map(|&o| at(&p.applied, o)).sum();
            (ahead_in, far, p.node)
        })
        .filter(|(n, _, _)| *n > 0)
        .collect();
    sources.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    (lacking, sources.into_iter().map(|(_, _, n)| n).collect())
}

#[derive(Debug, Default)]
pub struct CatchUp {
    /// Since when this node has lacked what no log holds.
    since: Option<Instant>,
    /// The peer asked, and when.
    asked: Option<(NodeId, Instant)>,
    /// Not before this time again, and the wait after the next failure.
    not_before: Option<Instant>,
    backoff: Option<Duration>,
}

impl CatchUp {
    /// A tick: the peer to ask for a snapshot now, if any.
    pub fn tick(&mut self, now: Instant, mine: &Position, peers: &[PeerView]) -> Option<NodeId> {
        if let Some((_, at)) = self.asked {
            if now.saturating_duration_since(at) < FETCH_TIMEOUT {
                return None;
            }
            self.failed(now);
        }
        let (lacking, sources) = stranded(mine, peers);
        if lacking.is_empty() {
            self.since = None;
            self.backoff = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        if now.saturating_duration_since(since) < HOLD || self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        let peer = *sources.first()?;
        self.asked = Some((peer, now));
        Some(peer)
    }

    /// The snapshot asked for ended (`ok`: whole, handed to the hub). If
    /// the node still lacks something afterwards, the next ask waits.
    pub fn done(&mut self, now: Instant, ok: bool) {
        if ok {
            self.asked = None;
            self.not_before = Some(now + RETRY);
        } else {
            self.failed(now);
        }
    }

    fn failed(&mut self, now: Instant) {
        self.asked = None;
        let wait = self.backoff.map_or(RETRY, |w| (w * 2).min(RETRY_MAX));
        self.backoff = Some(wait);
        self.not_before = Some(now + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(v: &[(NodeId, u64)]) -> Position {
        v.iter().copied().collect()
    }

    fn peer(node: NodeId, applied: &[(NodeId, u64)], start: &[(NodeId, u64)]) -> PeerView {
        PeerView {
            node,
            up: true,
            applied: pos(applied),
            start: pos(start),
        }
    }

    #[test]
    fn a_node_asks_only_when_no_log_holds_what_it_lacks() {
        let mine = pos(&[(1, 10), (2, 5)]);
        // Peer 2's log still holds its operations after 5: no snapshot.
        let peers = [peer(2, &[(1, 10), (2, 50)], &[(2, 3)])];
        assert_eq!(stranded(&mine, &peers).0, Vec::<NodeId>::new());
        // Peer 2 compacted its own log past 5, but peer 3 relays it.
        let peers = [
            peer(2, &[(1, 10), (2, 50)], &[(2, 40)]),
            peer(3, &[(1, 10), (2, 50)], &[(2, 0)]),
        ];
        assert!(stranded(&mine, &peers).0.is_empty());
        // Both compacted: stranded, and the one ahead in more origins is asked.
        let peers = [
            peer(2, &[(1, 10), (2, 50)], &[(2, 40)]),
            peer(3, &[(1, 30), (2, 50)], &[(1, 20), (2, 45)]),
        ];
        assert_eq!(stranded(&mine, &peers), (vec![1, 2], vec![3, 2]));
        // A peer whose link is down cannot be asked, nor counted on.
        let mut down = peers.clone();
        down[1].up = false;
        assert_eq!(stranded(&mine, &down), (vec![2], vec![2]));
        // A new node (nothing at all) behind a compacted log.
        let peers = [peer(1, &[(1, 9)], &[(1, 9)])];
        assert_eq!(stranded(&Position::new(), &peers), (vec![1], vec![1]));
    }

    #[test]
    fn it_waits_asks_one_peer_at_a_time_and_backs_off() {
        let t = Instant::now();
        let s = |d: u64| t + Duration::from_millis(d);
        let mine = Position::new();
        let peers = [peer(1, &[(1, 9)], &[(1, 9)])];
        let mut c = CatchUp::default();
        assert_eq!(c.tick(s(0), &mine, &peers), None, "holds first");
        assert_eq!(c.tick(s(1999), &mine, &peers), None);
        assert_eq!(c.tick(s(2000), &mine, &peers), Some(1));
        assert_eq!(c.asked.map(|(n, _)| n), Some(1));
        assert_eq!(c.tick(s(3000), &mine, &peers), None, "one at a time");
        c.done(s(3000), false);
        assert_eq!(c.tick(s(3500), &mine, &peers), None, "backs off");
        assert_eq!(c.tick(s(4000), &mine, &peers), Some(1));
        c.done(s(4000), false);
        assert_eq!(c.tick(s(5500), &mine, &peers), None, "twice as long");
        assert_eq!(c.tick(s(6000), &mine, &peers), Some(1));
        // A snapshot that never ends is given up on.
        let late = s(6000) + FETCH_TIMEOUT;
        assert_eq!(c.tick(late, &mine, &peers), None);
        // Caught up: nothing more, and the backoff is forgotten.
        let caught = pos(&[(1, 9)]);
        c.done(late, true);
        assert_eq!(c.tick(late + RETRY_MAX, &caught, &peers), None);
        assert_eq!(c.backoff, None);
    }
}
