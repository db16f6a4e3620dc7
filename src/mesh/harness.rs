//! Hub cores and the mesh's plans on a network that lives in memory: each
//! node is a hub core on its own store, each link is the [`Plan`] the real
//! outbound link uses, and the network between them loses, reorders and
//! repeats what it carries, partitions and heals, and restarts nodes. Time
//! is a number the harness moves on; nothing sleeps. The real QUIC tests
//! (tests/cluster*.rs) check the same over sockets.

use super::catchup::{CatchUp, PeerView};
use super::send::read_stretch;
use super::Plan;
use crate::api::{Command, Reply};
use crate::hub::tests::Bench;
use crate::hub::Input;
use crate::ids::{Gid, NodeId, Uid};
use crate::model::{Op, Target};
use crate::snapshot::Part;
use crate::store::{Position, Store};
use std::collections::HashMap;
use std::time::Duration;

/// How often the real links tick.
const TICK: Duration = Duration::from_millis(250);

/// A tiny deterministic generator, so every run is the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Node {
    id: NodeId,
    hub: Option<Bench>,
    dir: tempfile::TempDir,
}

struct Net {
    nodes: Vec<Node>,
    /// One plan per directed link that is up.
    links: HashMap<(NodeId, NodeId), Plan>,
    /// Directed links the network does not carry.
    cut: Vec<(NodeId, NodeId)>,
    rng: Rng,
    /// Percent of frames lost, repeated; and whether delivery is shuffled.
    loss: u64,
    repeat: u64,
    shuffle: bool,
    /// Each node's catching up by snapshot, and the snapshots installed.
    catchups: HashMap<NodeId, CatchUp>,
    snapshots: usize,
}

fn open_store(dir: &std::path::Path) -> Store {
    Store::open(Bench::options(Some(dir))).unwrap()
}

impl Net {
    fn new(n: NodeId, seed: u64) -> Net {
        let nodes = (1..=n)
            .map(|id| {
                let dir = tempfile::tempdir().unwrap();
                let hub = Some(Bench::on(open_store(dir.path()), id));
                Node { id, hub, dir }
            })
            .collect();
        Net {
            nodes,
            links: HashMap::new(),
            cut: Vec::new(),
            rng: Rng(seed | 1),
            loss: 0,
            repeat: 0,
            shuffle: false,
            catchups: HashMap::new(),
            snapshots: 0,
        }
    }

    fn hub(&mut self, n: NodeId) -> &mut Bench {
        self.nodes[n as usize - 1].hub.as_mut().expect("node is up")
    }

    fn applied(&self, n: NodeId) -> Option<Position> {
        let hub = self.nodes[n as usize - 1].hub.as_ref()?;
        Some(hub.core.applied().clone())
    }

    /// Cut both directions between `a` and the others in `others`.
    fn partition(&mut self, a: NodeId, others: &[NodeId]) {
        for &b in others {
            self.cut.push((a, b));
            self.cut.push((b, a));
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Stop a node and start it again from its directory: it comes back
    /// knowing only what its store has, and its links start over.
    fn restart(&mut self, n: NodeId) {
        let node = &mut self.nodes[n as usize - 1];
        let old = node.hub.take().expect("node is up");
        let t = Some(old.t);
        old.core.close().unwrap();
        self.links.retain(|(a, b), _| *a != n && *b != n);
        let mut hub = Bench::on(open_store(node.dir.path()), n);
        if let Some(t) = t {
            hub.t = t;
        }
        node.hub = Some(hub);
    }

    /// One tick of every link: each side's plan says what to send, the
    /// network carries it (or not), the receivers apply it and say how far
    /// they are.
    fn step(&mut self) {
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let mut frames: Vec<(NodeId, NodeId, Vec<Op>)> = Vec::new();
        for &a in &ids {
            for &b in &ids {
                if a == b {
                    continue;
                }
                let (Some(mine), Some(theirs)) = (self.applied(a), self.applied(b)) else {
                    continue;
                };
                if self.cut.contains(&(a, b)) {
                    self.links.remove(&(a, b));
                    continue;
                }
                // A link that comes up starts from what the peer says it has.
                let plan = self
                    .links
                    .entry((a, b))
                    .or_insert_with(|| Plan::new(a, b, theirs.clone()));
                plan.acked(theirs);
                let hub = self.nodes[a as usize - 1].hub.as_ref().unwrap();
                let logs = hub.core.log_reader();
                let start = logs.start();
                let now = hub.t.at;
                let own = hub.durable_own();
                let mut stretches: Vec<_> = plan.own(own, &start).into_iter().collect();
                if let Some(s) = stretches.first() {
                    let sent = read_stretch(&logs, *s).unwrap();
                    if let Some(last) = sent.last() {
                        plan.sent_own(last.seq);
                    }
                    frames.push((a, b, sent));
                    stretches.clear();
                }
                stretches.extend(plan.tick(now, mine, own, &start));
                for s in stretches {
                    frames.push((a, b, read_stretch(&logs, s).unwrap()));
                }
            }
        }
        if self.shuffle {
            for i in (1..frames.len()).rev() {
                let j = (self.rng.next() % (i as u64 + 1)) as usize;
                frames.swap(i, j);
            }
        }
        let mut inputs: HashMap<NodeId, Vec<Input>> = HashMap::new();
        for (_, b, ops) in frames {
            if ops.is_empty() || self.rng.chance(self.loss) {
                continue;
            }
            let origin = ops[0].origin;
            let copies = if self.rng.chance(self.repeat) { 2 } else { 1 };
            for _ in 0..copies {
                let ops = ops.clone();
                inputs
                    .entry(b)
                    .or_default()
                    .push(Input::PeerOps { origin, ops });
            }
        }
        for &n in &ids {
            if let Some(parts) = self.catch_up(n) {
                inputs.entry(n).or_default().extend(parts);
            }
        }
        for n in &mut self.nodes {
            let Some(hub) = n.hub.as_mut() else { continue };
            hub.advance(TICK);
            hub.batch(inputs.remove(&n.id).unwrap_or_default());
        }
    }

    /// What node `n` knows of the others, as its links would tell it.
    fn views(&self, n: NodeId) -> Vec<PeerView> {
        self.nodes
            .iter()
            .filter(|b| b.id != n)
            .filter_map(|b| {
                let hub = b.hub.as_ref()?;
                Some(PeerView {
                    node: b.id,
                    up: !self.cut.contains(&(n, b.id)),
                    applied: hub.core.applied().clone(),
                    start: hub.core.log_reader().start(),
                })
            })
            .collect()
    }

    /// A snapshot for `n`, when its catching up asks for one: read from the
    /// peer's tables and handed over whole (the network does not lose it).
    fn catch_up(&mut self, n: NodeId) -> Option<Vec<Input>> {
        let views = self.views(n);
        let (mine, now) = {
            let hub = self.nodes[n as usize - 1].hub.as_ref()?;
            (hub.core.applied().clone(), hub.t.at)
        };
        let c = self.catchups.entry(n).or_default();
        let from = c.tick(now, &mine, &views)?;
        let reader = self.hub(from).core.snapshot_reader();
        let mut reading = crate::snapshot::Reading::start(reader).unwrap();
        let mut parts = vec![Part::Begin(reading.point().clone())];
        while let Some(ops) = reading.next_batch().unwrap() {
            parts.push(Part::Ops(ops));
        }
        parts.push(Part::End(reading.check()));
        self.catchups.entry(n).or_default().done(now, true);
        self.snapshots += 1;
        Some(
            parts
                .into_iter()
                .map(|part| Input::Snapshot { from, part })
                .collect(),
        )
    }

    /// Tick until every node has applied the same, or give up.
    fn settle(&mut self, max_steps: usize) -> usize {
        let all: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        self.settle_among(&all, max_steps)
    }

    /// Tick until these nodes have applied the same, or give up.
    fn settle_among(&mut self, nodes: &[NodeId], max_steps: usize) -> usize {
        for i in 0..max_steps {
            let first = self.applied(nodes[0]);
            if nodes.iter().all(|&n| self.applied(n) == first) {
                return i;
            }
            self.step();
        }
        panic!(
            "no agreement after {max_steps} ticks: {:?}",
            self.nodes
                .iter()
                .map(|n| self.applied(n.id))
                .collect::<Vec<_>>()
        );
    }

    fn digests(&mut self) -> Vec<crate::store::Digest> {
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        ids.into_iter()
            .map(|n| self.hub(n).core.digest().unwrap())
            .collect()
    }
}

/// A user on node `n`, logged in there.
fn user(net: &mut Net, n: NodeId, name: &str) -> (NodeId, u64, Uid) {
    let (s, u) = net.hub(n).user(name);
    (n, s, u)
}

fn ask(net: &mut Net, (n, s, _): (NodeId, u64, Uid), cmd: Command) -> Result<Reply, String> {
    net.hub(n).ask(s, cmd).map_err(|e| e.message)
}

fn say(net: &mut Net, from: (NodeId, u64, Uid), to: Target, text: &str) {
    let cmd = Command::Send {
        to,
        text: text.into(),
        cid: None,
        time: None,
    };
    assert!(
        matches!(ask(net, from, cmd), Ok(Reply::Sent { .. })),
        "{text}"
    );
}

/// Three nodes with a user each, friends across nodes, one group.
fn three_with_friends(net: &mut Net) -> ([(NodeId, u64, Uid); 3], Gid) {
    let a = user(net, 1, "ann");
    let b = user(net, 2, "ben");
    let c = user(net, 3, "cal");
    net.settle(100);
    for (x, y) in [(a, b), (b, c), (c, a)] {
        assert!(ask(net, x, Command::FriendAdd { user: y.2 }).is_ok());
    }
    let create = Command::GroupCreate {
        name: "all".into(),
        desc: String::new(),
    };
    let Ok(Reply::Group(g)) = ask(net, a, create) else {
        panic!("group");
    };
    net.settle(100);
    for m in [b, c] {
        assert!(ask(net, m, Command::GroupJoin { group: g.id }).is_ok());
    }
    net.settle(100);
    ([a, b, c], g.id)
}

#[test]
fn a_partitioned_node_catches_up_after_the_heal_and_the_digests_agree() {
    let mut net = Net::new(3, 7);
    let ([a, b, c], g) = three_with_friends(&mut net);
    net.partition(3, &[1, 2]);
    for i in 0..40 {
        say(&mut net, a, Target::User(b.2), &format!("a to b {i}"));
        say(&mut net, c, Target::User(a.2), &format!("c to a {i}"));
        say(&mut net, b, Target::Group(g), &format!("b to all {i}"));
        net.step();
    }
    // 1 and 2 agree with each other (after what the last round sent)...
    for _ in 0..10 {
        if net.applied(1) == net.applied(2) {
            break;
        }
        net.step();
    }
    assert_eq!(net.applied(1), net.applied(2));
    // ...but cut off, node 3 has not seen their messages, nor they its own.
    assert_ne!(net.applied(3), net.applied(1));
    net.heal();
    net.settle(200);
    let d = net.digests();
    assert!(d.windows(2).all(|w| w[0] == w[1]), "{d:?}");
}

#[test]
fn loss_reordering_and_repeats_change_nothing_in_the_end() {
    let mut net = Net::new(3, 11);
    net.loss = 20;
    net.repeat = 30;
    net.shuffle = true;
    let ([a, b, c], g) = three_with_friends(&mut net);
    for i in 0..60 {
        let from = [a, b, c][i % 3];
        say(&mut net, from, Target::Group(g), &format!("round {i}"));
        if i % 2 == 0 {
            net.step();
        }
    }
    net.loss = 0;
    net.settle(400);
    let d = net.digests();
    assert!(d.windows(2).all(|w| w[0] == w[1]), "{d:?}");
}

#[test]
fn a_node_restarted_during_a_partition_rejoins_through_a_relay() {
    let mut net = Net::new(3, 23);
    let ([a, b, _], _) = three_with_friends(&mut net);
    // 1 and 3 cannot talk: what 1 writes reaches 3 only through 2.
    net.partition(1, &[3]);
    for i in 0..20 {
        say(&mut net, a, Target::User(b.2), &format!("relayed {i}"));
        net.step();
    }
    net.restart(2);
    for i in 0..20 {
        say(
            &mut net,
            a,
            Target::User(b.2),
            &format!("after restart {i}"),
        );
        net.step();
    }
    net.settle(400);
    let d = net.digests();
    assert!(d.windows(2).all(|w| w[0] == w[1]), "{d:?}");
    // The partition is still there: 3 got 1's messages from 2.
    assert!(net.cut.contains(&(1, 3)));
}

/// The texts a user sees: history with another user, then what is pending.
fn seen(net: &mut Net, who: (NodeId, u64, Uid), with: Target) -> (Vec<String>, Vec<String>) {
    let texts = |v: Vec<crate::api::MsgView>| v.iter().map(|m| m.msg.text.clone()).collect();
    let history = Command::History {
        with,
        before: None,
        limit: Some(100),
    };
    let Ok(Reply::History { messages, .. }) = ask(net, who, history) else {
        panic!("history");
    };
    let Ok(Reply::Pending {
        messages: pending, ..
    }) = ask(net, who, Command::Pending)
    else {
        panic!("pending");
    };
    (texts(messages), texts(pending))
}

#[test]
fn retention_removes_old_messages_alike_on_every_node_even_late_ones() {
    let mut net = Net::new(3, 31);
    let ([a, b, c], g) = three_with_friends(&mut net);
    // Only node 2 keeps history for a day; the cluster follows it. (The
    // sessions must outlive the days that pass.)
    let day = Duration::from_secs(86_400);
    for n in 1..=3 {
        let mut limits = (*net.hub(n).limits.get()).clone();
        limits.idle_timeout = None;
        if n == 2 {
            limits.history_max_age = Some(day);
        }
        net.hub(n).limits.set(limits);
    }
    for i in 0..5 {
        say(&mut net, a, Target::User(b.2), &format!("old {i}"));
        say(&mut net, b, Target::Group(g), &format!("old group {i}"));
    }
    net.settle(100);
    // Into sled with them (a digest writes the tables out).
    net.digests();
    // Cut off, node 3 writes a message the others will only get once it
    // is older than the cluster keeps.
    net.partition(3, &[1, 2]);
    say(&mut net, c, Target::User(a.2), "late");
    for n in 1..=3 {
        net.hub(n).advance(2 * day);
    }
    for i in 0..3 {
        say(&mut net, a, Target::User(b.2), &format!("new {i}"));
        net.step();
    }
    let (history, pending) = seen(&mut net, b, Target::User(a.2));
    assert_eq!(history, vec!["new 0", "new 1", "new 2"]);
    assert_eq!(pending, vec!["new 0", "new 1", "new 2"]);
    // Node 3 has not heard of the expiry yet.
    let (history, _) = seen(&mut net, c, Target::Group(g));
    assert_eq!(history.len(), 5);
    net.heal();
    net.settle(200);
    let d = net.digests();
    assert!(d.windows(2).all(|w| w[0] == w[1]), "{d:?}");
    assert_eq!(d[0].messages, 3, "{d:?}");
    for (who, with) in [(a, Target::User(c.2)), (c, Target::Group(g))] {
        let (history, pending) = seen(&mut net, who, with);
        assert!(history.is_empty(), "{history:?}");
        assert!(!pending.iter().any(|t| t == "late" || t.starts_with("old")));
    }
    // The kept count follows, on every node, exactly.
    for n in 1..=3 {
        assert_eq!(net.hub(n).core.stored_messages(), 3, "node {n}");
    }
    // And it holds through a restart (the tally and the count are written together).
    net.restart(3);
    assert_eq!(net.hub(3).core.stored_messages(), 3);
    assert_eq!(net.hub(3).core.digest().unwrap(), d[0]);
}

#[test]
fn a_node_away_past_the_compaction_point_rejoins_by_snapshot() {
    let mut net = Net::new(3, 41);
    let ([a, b, c], g) = three_with_friends(&mut net);
    net.partition(3, &[1, 2]);
    // Long enough that the logs hold them in several segments (compaction
    // keeps an origin's newest segment).
    let long = "x".repeat(300);
    for i in 0..40 {
        say(
            &mut net,
            a,
            Target::User(b.2),
            &format!("while away {i} {long}"),
        );
        say(
            &mut net,
            b,
            Target::Group(g),
            &format!("to the group {i} {long}"),
        );
    }
    // Node 3 writes too, cut off: nobody else has that yet.
    say(&mut net, c, Target::User(a.2), "from the far side");
    net.settle_among(&[1, 2], 100);
    // Nodes 1 and 2 keep no log: everything the tables hold goes.
    assert!(net.hub(1).core.compact_now() > 0);
    assert!(net.hub(2).core.compact_now() > 0);
    net.heal();
    net.settle(200);
    assert!(net.snapshots >= 1, "node 3 could only catch up by snapshot");
    let d = net.digests();
    assert!(d.windows(2).all(|w| w[0] == w[1]), "{d:?}");
    let (history, _) = seen(&mut net, c, Target::Group(g));
    assert_eq!(history.len(), 40);
    // What node 3 wrote while away reached the others by its own log.
    let (history, pending) = seen(&mut net, a, Target::User(c.2));
    assert_eq!(history, vec!["from the far side"]);
    assert!(pending.contains(&"from the far side".to_string()));
    // The count of messages is exact after the snapshot, and after a restart.
    let count = net.hub(1).core.stored_messages();
    assert_eq!(net.hub(3).core.stored_messages(), count);
    net.restart(3);
    assert_eq!(net.hub(3).core.stored_messages(), count);
    assert_eq!(net.hub(3).core.digest().unwrap(), d[0]);
}

#[test]
fn both_sides_of_a_long_partition_compact_and_heal_by_snapshots() {
    let mut net = Net::new(4, 43);
    let ([a, b, c], g) = three_with_friends(&mut net);
    let d4 = user(&mut net, 4, "dot");
    net.settle(100);
    // {1, 2} and {3, 4} apart, each writing, each compacting what it has.
    net.partition(1, &[3, 4]);
    net.partition(2, &[3, 4]);
    let long = "x".repeat(300);
    for i in 0..20 {
        say(&mut net, a, Target::Group(g), &format!("west {i} {long}"));
        say(&mut net, c, Target::Group(g), &format!("east {i} {long}"));
        say(
            &mut net,
            d4,
            Target::User(c.2),
            &format!("east side {i} {long}"),
        );
    }
    net.settle_among(&[1, 2], 100);
    net.settle_among(&[3, 4], 100);
    for n in 1..=4 {
        net.hub(n).core.compact_now();
    }
    net.heal();
    net.settle(300);
    assert!(net.snapshots >= 2, "{} snapshots", net.snapshots);
    let d = net.digests();
    assert!(d.windows(2).all(|w| w[0] == w[1]), "{d:?}");
    let (history, _) = seen(&mut net, b, Target::Group(g));
    assert_eq!(history.len(), 40, "{history:?}");
}

#[test]
fn the_harness_notices_a_network_that_never_delivers() {
    let mut net = Net::new(2, 5);
    let a = user(&mut net, 1, "ann");
    net.partition(1, &[2]);
    let _ = a;
    let stuck = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| net.settle(20)));
    assert!(stuck.is_err(), "settle must fail when nothing gets through");
}
