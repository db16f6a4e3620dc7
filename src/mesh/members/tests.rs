//! The member table in memory: gossip, conflicts, offers, link states.

use super::*;

fn info(node: NodeId, uuid: &str, addr: &str) -> MemberInfo {
    MemberInfo {
        node,
        uuid: uuid.into(),
        addr: addr.into(),
    }
}

fn table() -> Members {
    Members::new(info(1, "u1", "10.0.0.1:7000"))
}

fn state(m: &Members, node: NodeId) -> String {
    let all = m.status(&Position::new());
    all.into_iter().find(|s| s.node == node).unwrap().state
}

#[test]
fn gossip_adds_a_member_once_and_follows_it_when_it_moves() {
    let mut m = table();
    assert_eq!(m.learn(info(2, "u2", "10.0.0.2:7000")), Learned::New);
    assert_eq!(m.learn(info(2, "u2", "10.0.0.2:7000")), Learned::Known);
    assert_eq!(m.learn(info(2, "u2", "10.0.0.9:7000")), Learned::Moved);
    assert_eq!(m.info(2).unwrap().addr, "10.0.0.9:7000");
    assert_eq!(m.learn(info(1, "u1", "10.0.0.1:7000")), Learned::Known);
    let mut nodes: Vec<NodeId> = m.list().iter().map(|i| i.node).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, vec![1, 2]);
    assert_eq!(m.others().len(), 1);
}

#[test]
fn a_second_node_with_a_taken_id_is_refused() {
    let mut m = table();
    m.learn(info(2, "u2", "10.0.0.2:7000"));
    assert_eq!(
        m.learn(info(2, "other", "10.0.0.3:7000")),
        Learned::Conflict
    );
    assert_eq!(m.info(2).unwrap().uuid, "u2", "the first keeps the id");
    assert_eq!(
        m.learn(info(1, "impostor", "10.0.0.4:7000")),
        Learned::Conflict
    );
    assert_eq!(m.learn(info(0, "zero", "10.0.0.5:7000")), Learned::Conflict);
    assert_eq!(m.learn(info(MAX_NODE + 1, "big", "x:1")), Learned::Conflict);
}

#[test]
fn an_offered_id_is_held_for_its_joiner_for_a_minute() {
    let mut m = table();
    m.learn(info(2, "u2", "10.0.0.2:7000"));
    let t = Instant::now();
    assert_eq!(m.offer_id("a", t), Some(3));
    // Another joiner meanwhile gets another id; the first gets its own again.
    assert_eq!(m.offer_id("b", t + Duration::from_secs(1)), Some(4));
    assert_eq!(m.offer_id("a", t + Duration::from_secs(2)), Some(3));
    // After the hold, the id is free again.
    assert_eq!(
        m.offer_id("c", t + OFFER_HOLD + Duration::from_secs(2)),
        Some(3)
    );
}

#[test]
fn a_member_is_up_partial_or_down_by_its_two_links() {
    let mut m = table();
    m.learn(info(2, "u2", "10.0.0.2:7000"));
    assert_eq!(state(&m, 1), "self");
    assert_eq!(state(&m, 2), "down");
    m.out_up(2, Position::new(), 1_000);
    assert_eq!(state(&m, 2), "partial");
    let gen = m.in_up(2, 2_000);
    assert_eq!(state(&m, 2), "up");
    assert!(m.out_down(2));
    assert!(!m.out_down(2), "it was down already");
    assert_eq!(state(&m, 2), "partial");
    assert!(
        m.in_down(2, gen),
        "the current link ended: its users are offline"
    );
    assert_eq!(state(&m, 2), "down");
    let last = m.status(&Position::new())[1].last_contact_ms;
    assert_eq!(last, Some(2_000));
}

#[test]
fn an_old_inbound_link_ending_leaves_the_new_one_up() {
    let mut m = table();
    m.learn(info(2, "u2", "10.0.0.2:7000"));
    let old = m.in_up(2, 1_000);
    let new = m.in_up(2, 2_000);
    assert!(!m.in_down(2, old), "a replaced link changes nothing");
    assert_eq!(state(&m, 2), "partial");
    assert!(m.in_down(2, new));
}

#[test]
fn lag_counts_what_we_have_that_the_member_has_not_applied() {
    let mut m = table();
    m.learn(info(2, "u2", "10.0.0.2:7000"));
    let ours: Position = [(1, 100), (2, 50), (3, 30)].into_iter().collect();
    m.acked(2, [(1, 60), (3, 30)].into_iter().collect(), 5_000);
    let s = m.status(&ours);
    // Its own log does not count: 40 of ours, none of node 3's.
    assert_eq!((s[1].lag_ops, s[1].last_contact_ms), (40, Some(5_000)));
}
