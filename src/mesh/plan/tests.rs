use super::*;
use crate::mesh::BATCH;
use std::collections::VecDeque;

fn pos(pairs: &[(NodeId, u64)]) -> Position {
    pairs.iter().copied().collect()
}

#[test]
fn own_operations_go_as_they_become_durable_and_once() {
    let mut p = Plan::new(1, 2, pos(&[(1, 3)]));
    assert_eq!(
        p.own(3, &Position::new()),
        None,
        "the peer has the first three"
    );
    let s = p.own(7, &Position::new()).unwrap();
    assert_eq!(
        s,
        Stretch {
            origin: 1,
            after: 3,
            upto: 7
        }
    );
    p.sent_own(7);
    assert_eq!(p.own(7, &Position::new()), None);
    assert_eq!(p.own(8, &Position::new()).map(|s| s.after), Some(7));
}

#[test]
fn what_the_peer_lacks_of_others_is_relayed_after_a_second_and_not_again_at_once() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    // We (1) have 10 of node 3's operations; the peer (2) has 4.
    let mut p = Plan::new(1, 2, pos(&[(3, 4)]));
    assert!(p
        .tick(ms(0), pos(&[(3, 10)]), 0, &Position::new())
        .is_empty());
    assert!(
        p.tick(ms(750), pos(&[(3, 10)]), 0, &Position::new())
            .is_empty(),
        "not before a second: node 3 may still reach the peer itself"
    );
    let sent = p.tick(ms(1000), pos(&[(3, 10)]), 0, &Position::new());
    assert_eq!(
        sent,
        vec![Stretch {
            origin: 3,
            after: 4,
            upto: 10
        }],
        "what we had a second ago"
    );
    assert!(p
        .tick(ms(1250), pos(&[(3, 12)]), 0, &Position::new())
        .is_empty());
    p.acked(pos(&[(3, 10)]));
    assert!(
        p.tick(ms(2000), pos(&[(3, 12)]), 0, &Position::new())
            .is_empty(),
        "12 arrived here less than a second ago"
    );
    assert_eq!(
        p.tick(ms(2250), pos(&[(3, 12)]), 0, &Position::new()),
        vec![Stretch {
            origin: 3,
            after: 10,
            upto: 12
        }]
    );
}

#[test]
fn neither_our_own_nor_the_peers_own_log_is_relayed() {
    let t0 = Instant::now();
    let mut p = Plan::new(1, 2, Position::new());
    let applied = pos(&[(1, 5), (2, 5)]);
    p.tick(t0, applied.clone(), 5, &Position::new());
    assert!(p
        .tick(t0 + Duration::from_secs(2), applied, 5, &Position::new())
        .iter()
        .all(|s| s.origin != 1 && s.origin != 2));
}

#[test]
fn a_peer_stuck_behind_our_operations_gets_them_again_later_and_later() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    let mut p = Plan::new(1, 2, pos(&[(1, 2)]));
    p.sent_own(9);
    let mut resent = Vec::new();
    for tick in 0..(4 * 60) {
        let now = t0 + Duration::from_millis(250 * tick);
        p.tick(now, Position::new(), 9, &Position::new());
        if let Some(stretch) = p.own(9, &Position::new()) {
            assert_eq!(stretch.after, 2, "everything the peer lacks");
            resent.push(now.duration_since(t0).as_secs());
            p.sent_own(9);
        }
    }
    // Stuck from the first full second: again after 5 s, then 10, then 20.
    assert_eq!(resent, vec![6, 16, 36]);
    p.acked(pos(&[(1, 9)]));
    p.tick(s(61), Position::new(), 9, &Position::new());
    assert_eq!(p.own(9, &Position::new()), None, "caught up: nothing more");
}

/// Nodes in memory: each one's applied position, and a plan per link it
/// dialled. A stretch is applied like the hub applies a peer's operations:
/// in order per origin, duplicates dropped, a gap refused.
struct Cluster {
    now: Instant,
    applied: Vec<Position>,
    plans: Vec<Vec<Option<Plan>>>,
    up: Vec<Vec<bool>>,
    rng: u64,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let mut c = Cluster {
            now: Instant::now(),
            applied: vec![Position::new(); n],
            plans: (0..n).map(|_| (0..n).map(|_| None).collect()).collect(),
            up: vec![vec![true; n]; n],
            rng: 0x9e37_79b9_7f4a_7c15,
        };
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    c.connect(i, j);
                }
            }
        }
        c
    }

    fn node(i: usize) -> NodeId {
        i as NodeId + 1
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// A link (re)starts with the peer saying how far it has applied.
    fn connect(&mut self, i: usize, j: usize) {
        let plan = Plan::new(Self::node(i), Self::node(j), self.applied[j].clone());
        self.plans[i][j] = Some(plan);
    }

    fn cut(&mut self, i: usize, j: usize) {
        for (a, b) in [(i, j), (j, i)] {
            self.up[a][b] = false;
            self.plans[a][b] = None;
        }
    }

    fn heal(&mut self, i: usize, j: usize) {
        for (a, b) in [(i, j), (j, i)] {
            self.up[a][b] = true;
            self.connect(a, b);
        }
    }

    /// Node `i` restarts: every link to and from it starts over.
    fn restart(&mut self, i: usize) {
        for j in 0..self.applied.len() {
            if i != j && self.up[i][j] {
                self.connect(i, j);
                self.connect(j, i);
            }
        }
    }

    fn write(&mut self, i: usize, ops: u64) {
        *self.applied[i].entry(Self::node(i)).or_default() += ops;
    }

    fn receive(&mut self, j: usize, s: Stretch) {
        let have = self.applied[j].entry(s.origin).or_default();
        if s.after <= *have {
            *have = (*have).max(s.upto);
        }
    }

    /// A quarter of a second: every live link sends what its plan says, in
    /// a shuffled order and now and then twice, and hears the peer's ack.
    fn step(&mut self) {
        self.now += Duration::from_millis(250);
        let n = self.applied.len();
        let mut frames = Vec::new();
        for i in 0..n {
            let me = Self::node(i);
            let applied = self.applied[i].clone();
            let durable_own = applied.get(&me).copied().unwrap_or(0);
            for j in 0..n {
                let Some(plan) = self.plans[i][j].as_mut() else {
                    continue;
                };
                plan.acked(self.applied[j].clone());
                while let Some(s) = plan.own(durable_own, &Position::new()) {
                    let upto = s.upto.min(s.after + BATCH as u64);
                    plan.sent_own(upto);
                    frames.push(((i, j), (j, Stretch { upto, ..s })));
                }
                for s in plan.tick(self.now, applied.clone(), durable_own, &Position::new()) {
                    let upto = s.upto.min(s.after + BATCH as u64);
                    frames.push(((i, j), (j, Stretch { upto, ..s })));
                }
            }
        }
        // Links interleave in any order; each one keeps its own (a QUIC
        // stream), and now and then a stretch comes twice.
        let mut links: Vec<VecDeque<(usize, Stretch)>> = Vec::new();
        let mut last = None;
        for (link, f) in frames {
            if last != Some(link) {
                links.push(VecDeque::new());
                last = Some(link);
            }
            if let Some(q) = links.last_mut() {
                q.push_back(f);
            }
        }
        while !links.is_empty() {
            let k = (self.random() % links.len() as u64) as usize;
            let Some((j, s)) = links[k].pop_front() else {
                links.swap_remove(k);
                continue;
            };
            self.receive(j, s);
            if self.random() % 5 == 0 {
                self.receive(j, s);
            }
        }
    }

    fn converged(&self) -> bool {
        self.applied.windows(2).all(|w| w[0] == w[1])
    }
}

#[test]
fn three_nodes_heal_a_partition_through_the_one_in_the_middle() {
    let mut c = Cluster::new(3);
    // Nodes 0 and 2 cannot reach each other; node 1 reaches both.
    c.cut(0, 2);
    for round in 0..40 {
        c.write(0, 30);
        c.write(2, 7);
        if round % 3 == 0 {
            c.write(1, 1);
        }
        c.step();
    }
    for _ in 0..40 {
        c.step();
    }
    assert!(c.converged(), "{:?}", c.applied);
    assert_eq!(c.applied[2][&1], 40 * 30);
    assert_eq!(c.applied[0][&3], 40 * 7);
}

#[test]
fn a_full_partition_heals_once_links_come_back() {
    let mut c = Cluster::new(3);
    c.cut(0, 1);
    c.cut(0, 2);
    for _ in 0..20 {
        c.write(0, 50);
        c.write(1, 5);
        c.step();
    }
    assert!(!c.converged(), "node 0 was alone");
    assert_eq!(c.applied[1].get(&1), None);
    c.heal(0, 2);
    for _ in 0..40 {
        c.step();
    }
    assert!(c.converged(), "{:?}", c.applied);
}

#[test]
fn a_restarted_node_catches_up_from_where_it_was() {
    let mut c = Cluster::new(3);
    for _ in 0..10 {
        c.write(0, 100);
        c.write(1, 100);
        c.step();
    }
    c.cut(2, 0);
    c.cut(2, 1);
    for _ in 0..10 {
        c.write(0, 1000);
        c.step();
    }
    c.heal(2, 0);
    c.heal(2, 1);
    c.restart(2);
    for _ in 0..60 {
        c.step();
    }
    assert!(c.converged(), "{:?}", c.applied);
    assert_eq!(c.applied[2][&1], 10 * 100 + 10 * 1000);
}

#[test]
fn nothing_is_offered_from_before_the_log_begins() {
    let t0 = Instant::now();
    let start = pos(&[(1, 50), (3, 20)]);
    // The peer has 10 of ours, but our log begins after 50.
    let mut p = Plan::new(1, 2, pos(&[(1, 10), (3, 5)]));
    assert_eq!(p.own(60, &start), None, "the peer needs a snapshot first");
    // Relays of origin 3 too: what it lacks is not in our log.
    p.tick(t0, pos(&[(1, 60), (3, 30)]), 60, &start);
    let later = t0 + Duration::from_secs(2);
    assert!(p
        .tick(later, pos(&[(1, 60), (3, 30)]), 60, &start)
        .is_empty());
    // A snapshot brought the peer to 55 of ours and 25 of origin 3: from
    // there the logs serve it.
    p.acked(pos(&[(1, 55), (3, 25)]));
    let own = p.own(60, &start).unwrap();
    assert_eq!((own.after, own.upto), (55, 60));
    let relays = p.tick(
        later + Duration::from_secs(2),
        pos(&[(1, 60), (3, 30)]),
        60,
        &start,
    );
    assert_eq!(
        relays,
        vec![Stretch {
            origin: 3,
            after: 25,
            upto: 30
        }]
    );
}
