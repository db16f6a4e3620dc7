use super::*;
use crate::ids::LOBBY;
use crate::model::Target;
use crate::store::StoreOptions;

fn op(origin: u16, seq: u64, millis: u64, body: OpBody) -> Op {
    Op {
        origin,
        seq,
        stamp: Stamp::new(millis, origin),
        body,
    }
}

fn reg(origin: u16, seq: u64, millis: u64, user: u32, name: &str) -> Op {
    op(
        origin,
        seq,
        millis,
        OpBody::Register {
            user: Uid(user),
            name: name.into(),
            hash: format!("h{user}"),
        },
    )
}

/// The observable state of the tables this test cares about.
fn state(s: &Store) -> Vec<String> {
    let mut out: Vec<String> = s
        .users()
        .map(|u| {
            let u = u.unwrap();
            format!("user {} {} {}", u.id, u.name, u.hash)
        })
        .collect();
    out.extend(s.names().map(|r| {
        let (n, u) = r.unwrap();
        format!("name {n} {u}")
    }));
    for g in s.groups() {
        let g = g.unwrap();
        out.push(format!(
            "group {} {} {} {} created {} by {}",
            g.id, g.name, g.desc, g.dissolved, g.created, g.creator
        ));
        for (u, m) in s.members(g.id).unwrap() {
            out.push(format!("member {} {} {:?} {}", g.id, u, m.role, m.since));
        }
    }
    for u in [1u32, 2, 3] {
        for (o, e) in s.edges(Uid(u)).unwrap() {
            out.push(format!("edge {u} {o} {:?} {}", e.link, e.remark));
        }
        for t in s.token_stamps(Uid(u)).unwrap() {
            let r = s.token(Uid(u), t).unwrap().unwrap();
            out.push(format!("token {u} {t} {:?}", r));
        }
        out.push(format!("floor {u} {}", s.token_floor(Uid(u)).unwrap()));
    }
    out
}

fn token(origin: u16, seq: u64, millis: u64, user: u32, hash: u8) -> Op {
    op(
        origin,
        seq,
        millis,
        OpBody::Token {
            user: Uid(user),
            hash: [hash; 32],
            expires_ms: millis + 1000,
        },
    )
}

fn apply_all(ops: &[Op]) -> Vec<String> {
    let mut s = Store::open(StoreOptions::temporary()).unwrap();
    for o in ops {
        apply(&mut s, o).unwrap();
    }
    state(&s)
}

fn sample_ops() -> Vec<Op> {
    vec![
        reg(1, 1, 100, 1, "alice"),
        reg(2, 1, 101, 2_000_001, "alice"), // same name, later, other node
        reg(1, 2, 102, 2, "bob"),
        op(
            2,
            2,
            103,
            OpBody::SetPassword {
                user: Uid(2),
                hash: "new".into(),
            },
        ),
        op(
            1,
            3,
            104,
            OpBody::CreateGroup {
                group: Gid(7),
                creator: Uid(1),
                name: "g".into(),
                desc: "d".into(),
            },
        ),
        op(
            2,
            3,
            105,
            OpBody::SetRole {
                group: Gid(7),
                user: Uid(2),
                role: Some(Role::Member),
                actor: Uid(2),
                since: Stamp::new(105, 2),
            },
        ),
        op(
            1,
            4,
            106,
            OpBody::UpdateGroup {
                group: Gid(7),
                actor: Uid(1),
                name: Some("g2".into()),
                desc: None,
            },
        ),
        op(
            2,
            4,
            107,
            OpBody::SetRole {
                group: Gid(7),
                user: Uid(2),
                role: None,
                actor: Uid(2),
                since: Stamp::ZERO,
            },
        ),
        op(
            1,
            5,
            108,
            OpBody::SetRole {
                group: Gid(7),
                user: Uid(2),
                role: Some(Role::Member),
                actor: Uid(1),
                since: Stamp::new(108, 1),
            },
        ),
        op(
            1,
            6,
            109,
            OpBody::Link {
                actor: Uid(1),
                other: Uid(2),
                link: Link::Pending { from: Uid(1) },
                note: "hi".into(),
            },
        ),
        op(
            2,
            5,
            110,
            OpBody::Link {
                actor: Uid(2),
                other: Uid(1),
                link: Link::Friends,
                note: String::new(),
            },
        ),
        op(
            1,
            7,
            111,
            OpBody::Remark {
                owner: Uid(1),
                friend: Uid(2),
                remark: "bobby".into(),
            },
        ),
        // Two nodes make the lobby at once; one renames it later.
        op(
            2,
            6,
            112,
            OpBody::CreateGroup {
                group: LOBBY,
                creator: Uid(0),
                name: "lobby".into(),
                desc: "d".into(),
            },
        ),
        op(
            1,
            8,
            113,
            OpBody::CreateGroup {
                group: LOBBY,
                creator: Uid(0),
                name: "lobby".into(),
                desc: "d".into(),
            },
        ),
        op(
            1,
            9,
            114,
            OpBody::UpdateGroup {
                group: LOBBY,
                actor: Uid(0),
                name: Some("hall".into()),
                desc: None,
            },
        ),
        op(
            2,
            7,
            115,
            OpBody::Guest {
                user: Uid(*crate::ids::guest_block(2).start()),
                name: "carol".into(),
            },
        ),
        // Tokens: one revoked from another node (maybe before it
        // arrives), and all of bob's older ones revoked at once.
        token(1, 50, 120, 1, 0xa1),
        token(2, 50, 121, 1, 0xa2),
        op(
            2,
            51,
            122,
            OpBody::RevokeToken {
                user: Uid(1),
                issued: Stamp::new(120, 1),
            },
        ),
        token(1, 51, 123, 2, 0xb1),
        op(2, 52, 124, OpBody::RevokeTokens { user: Uid(2) }),
        token(1, 52, 125, 2, 0xb2),
    ]
}

#[test]
fn a_user_keeps_the_newest_tokens_whatever_the_order() {
    let n = crate::tokens::KEEP_PER_USER as u64 + 5;
    let ops: Vec<Op> = (0..n)
        .map(|i| token((i % 2 + 1) as u16, i, 1000 + i, 1, i as u8))
        .collect();
    let expected = apply_all(&ops);
    let kept = expected
        .iter()
        .filter(|l| l.starts_with("token 1 "))
        .count();
    assert_eq!(kept, crate::tokens::KEEP_PER_USER);
    assert!(!expected
        .iter()
        .any(|l| l.contains(&format!(" {} ", Stamp::new(1004, 1).0))));
    let mut rev = ops.clone();
    rev.reverse();
    assert_eq!(apply_all(&rev), expected);
    let mut odd_first: Vec<Op> = ops.iter().skip(1).step_by(2).cloned().collect();
    odd_first.extend(ops.iter().step_by(2).cloned());
    assert_eq!(apply_all(&odd_first), expected);
}

#[test]
fn any_order_gives_the_same_state() {
    let ops = sample_ops();
    let expected = apply_all(&ops);
    assert!(
        expected.contains(&"name alice 1".to_string()),
        "{expected:?}"
    );
    assert!(expected
        .iter()
        .any(|l| l == "user 2000001 alice#2000001 h2000001"));
    assert!(expected
        .iter()
        .any(|l| l.starts_with("member 7 2 Some(Member)")
            && l.ends_with(&(Stamp::new(108, 1).0).to_string())));
    assert!(expected.iter().any(|l| l == "edge 1 2 Friends bobby"));
    let revoked = format!("token 1 {} ", Stamp::new(120, 1).0);
    assert!(expected
        .iter()
        .any(|l| l.starts_with(&revoked) && l.contains("revoked: true")));
    let bobs: Vec<_> = expected
        .iter()
        .filter(|l| l.starts_with("token 2 "))
        .collect();
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert!(bobs[0].starts_with(&format!("token 2 {} ", Stamp::new(125, 1).0)));
    let lobby = format!(
        "group {LOBBY} hall d false created {} by 0",
        Stamp::new(112, 2).0
    );
    assert!(expected.contains(&lobby), "{expected:?}");
    assert!(
        !expected
            .iter()
            .any(|l| l.starts_with(&format!("member {LOBBY} "))),
        "the lobby has no creator member"
    );
    let guest = *crate::ids::guest_block(2).start();
    assert!(expected
        .iter()
        .any(|l| l.starts_with(&format!("user {guest} carol (guest) "))));
    assert!(expected.iter().any(|l| l == "user 2 bob new"));
    // Reversed, and a few rotations, and everything applied twice.
    let mut rev = ops.clone();
    rev.reverse();
    assert_eq!(apply_all(&rev), expected);
    for k in 1..ops.len() {
        let mut r = ops.clone();
        r.rotate_left(k);
        assert_eq!(apply_all(&r), expected, "rotation {k}");
    }
    let twice: Vec<Op> = ops.iter().chain(ops.iter()).cloned().collect();
    assert_eq!(apply_all(&twice), expected);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Nodes receive other origins' operations interleaved in any way,
    /// some of them twice (a relay and the origin both send them).
    #[test]
    fn any_interleaving_with_repeats_gives_the_same_state(
        order in proptest::strategy::Strategy::prop_shuffle(proptest::strategy::Just(
            (0..sample_ops().len() * 2).collect::<Vec<usize>>(),
        )),
        repeats in 0usize..=sample_ops().len(),
    ) {
        let ops = sample_ops();
        let n = ops.len();
        // Each op once, plus the first `repeats` of them again, in the
        // shuffled order.
        let picked: Vec<Op> = order
            .into_iter()
            .filter(|&i| i < n || i - n < repeats)
            .map(|i| ops[i % n].clone())
            .collect();
        proptest::prop_assert_eq!(apply_all(&picked), apply_all(&ops));
    }
}

#[test]
fn messages_and_cursors() {
    let mut s = Store::open(StoreOptions::temporary()).unwrap();
    let send = op(
        1,
        1,
        200,
        OpBody::Send {
            from: Uid(1),
            to: Target::User(Uid(2)),
            text: "hi".into(),
            cid: Some("c1".into()),
            time: None,
        },
    );
    let fx = apply(&mut s, &send).unwrap();
    assert!(matches!(&fx[..], [Effect::Message(m)] if m.text == "hi"));
    assert_eq!(s.recent_cids.get(1, "c1"), Some(send.stamp));
    let later = Stamp::new(300, 1);
    apply(
        &mut s,
        &op(
            1,
            2,
            201,
            OpBody::Delivered {
                marks: vec![(Uid(2), later)],
            },
        ),
    )
    .unwrap();
    apply(
        &mut s,
        &op(
            1,
            3,
            202,
            OpBody::Delivered {
                marks: vec![(Uid(2), send.stamp)],
            },
        ),
    )
    .unwrap();
    assert_eq!(
        s.cursor(Uid(2), 1).unwrap(),
        later,
        "cursor never moves back"
    );
}
