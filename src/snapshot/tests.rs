//! A snapshot rebuilds exactly the state it was read from, and installed
//! over another state it gives what applying both sets of operations
//! gives: checked on random operations by the state digest, which covers
//! every replicated table.

use super::*;
use crate::apply::{apply, apply_snapshot_op};
use crate::ids::{guest_block, Gid, NodeId, LOBBY};
use crate::model::{Link, Op, Role, Target};
use crate::store::{Store, StoreOptions};
use proptest::prelude::*;

/// One random operation: (kind, three small numbers, time, origin).
type Raw = (u8, u8, u8, u8, u8, u8);

fn body(r: Raw, at: Stamp) -> OpBody {
    let (kind, a, b, c, _, _) = r;
    let user = Uid(u32::from(a % 4) + 1);
    let other = Uid(u32::from(b % 4) + 1);
    let group = [Gid(7), Gid(8), LOBBY][usize::from(b % 3)];
    let stamp = |x: u8| Stamp::new(u64::from(x) * 64, 1 + u16::from(x % 3));
    match kind % 17 {
        // An id is registered once, by its node; users 1 and 4 contest a name.
        0 => OpBody::Register {
            user,
            name: ["ann", "bob", "cy", "ann"][usize::from(a % 4)].into(),
            hash: format!("h{c}"),
        },
        1 => OpBody::SetPassword {
            user,
            hash: format!("p{c}"),
        },
        2 => OpBody::SetBanned {
            user,
            banned: c % 2 == 0,
        },
        3 => OpBody::DeleteUser { user },
        // A node gives each guest name one id (rules::guest_login).
        4 => OpBody::Guest {
            user: Uid(*guest_block(2).start() + u32::from(a % 2)),
            name: ["gus", "gwen"][usize::from(a % 2)].into(),
        },
        5 => OpBody::Token {
            user,
            hash: [c; 32],
            expires_ms: u64::from(c) * 1000,
        },
        6 => OpBody::RevokeToken {
            user,
            issued: stamp(c),
        },
        7 => OpBody::RevokeTokens { user },
        8 => OpBody::Link {
            actor: user,
            other,
            link: [Link::None, Link::Pending { from: user }, Link::Friends][usize::from(c % 3)],
            note: format!("n{c}"),
        },
        9 => OpBody::Remark {
            owner: user,
            friend: other,
            remark: format!("r{c}"),
        },
        10 => OpBody::CreateGroup {
            group,
            creator: if group == LOBBY { Uid(0) } else { user },
            name: format!("g{c}"),
            desc: format!("d{c}"),
        },
        11 => OpBody::UpdateGroup {
            group,
            actor: user,
            name: (c % 3 != 0).then(|| format!("G{c}")),
            desc: (c % 3 != 1).then(|| format!("D{c}")),
        },
        12 => OpBody::DissolveGroup { group, actor: user },
        13 => OpBody::SetRole {
            group,
            user,
            role: [None, Some(Role::Member), Some(Role::Admin)][usize::from(c % 3)],
            actor: user,
            since: at,
        },
        14 => OpBody::Delivered {
            marks: vec![(user, stamp(c))],
        },
        15 => OpBody::Expire {
            history: if c % 4 == 0 {
                stamp(c / 2)
            } else {
                Stamp::ZERO
            },
            queue: stamp(c),
        },
        _ => OpBody::Send {
            from: user,
            to: if c % 2 == 0 {
                Target::User(other)
            } else {
                Target::Group(group)
            },
            text: format!("t{c}"),
            cid: (c % 5 == 0).then(|| format!("c{c}")),
            time: None,
        },
    }
}

/// Ops with distinct stamps, numbered in each origin's order.
fn ops(raw: &[Raw]) -> Vec<Op> {
    let mut out: Vec<Op> = raw
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let origin: NodeId = 1 + u16::from(r.5 % 3);
            let stamp = Stamp::new(u64::from(r.4) * 64 + i as u64 + 1, origin);
            Op {
                origin,
                seq: 0,
                stamp,
                body: body(*r, stamp),
            }
        })
        .collect();
    // An account is registered once, a guest made once (their nodes see to
    // it): later ones are left out.
    let mut made = std::collections::HashSet::new();
    out.retain(|o| match &o.body {
        OpBody::Register { user, .. } | OpBody::Guest { user, .. } => made.insert(*user),
        _ => true,
    });
    out.sort_by_key(|o| o.stamp);
    let mut next = std::collections::BTreeMap::new();
    for o in &mut out {
        let seq = next.entry(o.origin).or_insert(0u64);
        *seq += 1;
        o.seq = *seq;
    }
    out
}

/// A store that applied and logged `ops` (numbered again in each origin's
/// order), its tables checkpointed.
fn node(ops: &[Op]) -> Store {
    let mut s = Store::open(StoreOptions::temporary()).unwrap();
    for o in ops {
        let mut o = o.clone();
        o.seq = s.applied().get(&o.origin).copied().unwrap_or(0) + 1;
        apply(&mut s, &o).unwrap();
        s.append_log(o.origin, vec![o.clone()]).unwrap();
    }
    s.checkpoint_now().unwrap();
    s
}

/// Send a snapshot of `from` into `to`, as a peer would.
fn install(from: &Store, to: &mut Store) -> Check {
    let mut reading = Reading::start(from.snapshot_reader()).unwrap();
    let point = reading.point().clone();
    to.begin_install(&point).unwrap();
    let mut check = Check::default();
    while let Some(batch) = reading.next_batch().unwrap() {
        for op in batch {
            check.add(&op);
            apply_snapshot_op(to, op).unwrap();
        }
    }
    to.finish_install(&point).unwrap();
    assert_eq!(check, reading.check());
    check
}

/// What a failing case needs to be read: the operations, and the entries
/// one store has that the other lacks.
fn differences(got: &mut Store, want: &mut Store, ops: &[Op]) -> String {
    let (a, b) = (got.dump(), want.dump());
    let mut out: Vec<String> = ops
        .iter()
        .map(|o| format!("op {:?} {:?}", o.stamp, o.body))
        .collect();
    out.extend(
        a.iter()
            .filter(|l| !b.contains(l))
            .map(|l| format!("got  {l}")),
    );
    out.extend(
        b.iter()
            .filter(|l| !a.contains(l))
            .map(|l| format!("want {l}")),
    );
    out.join("\n")
}

fn raw_ops() -> impl Strategy<Value = Vec<Raw>> {
    proptest::collection::vec(any::<Raw>(), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_snapshot_rebuilds_exactly_what_it_was_read_from(raw in raw_ops()) {
        let all = ops(&raw);
        let mut a = node(&all);
        let mut b = Store::open(StoreOptions::temporary()).unwrap();
        install(&a, &mut b);
        let (da, db) = (a.digest().unwrap(), b.digest().unwrap());
        prop_assert_eq!(&da, &db, "{}", differences(&mut b, &mut a, &all));
        prop_assert_eq!(b.counts().messages, db.messages);
        prop_assert_eq!(b.applied(), a.applied());
        a.close().unwrap();
        b.close().unwrap();
    }

    #[test]
    fn installed_over_other_state_it_merges_like_the_operations(
        raw in raw_ops(),
        mine in proptest::collection::vec(any::<bool>(), 60),
        twice in any::<bool>(),
    ) {
        let all = ops(&raw);
        let pick = |side: bool| -> Vec<Op> {
            all.iter()
                .enumerate()
                .filter(|(i, _)| mine[*i] == side)
                .map(|(_, o)| o.clone())
                .collect()
        };
        let (x, y) = (pick(true), pick(false));
        let mut expected = node(&all);
        let mut here = node(&x);
        let there = node(&y);
        install(&there, &mut here);
        if twice {
            // Installed again (a retry): nothing changes, nothing counts twice.
            install(&there, &mut here);
        }
        let (d, e) = (here.digest().unwrap(), expected.digest().unwrap());
        prop_assert_eq!(&d, &e, "{}", differences(&mut here, &mut expected, &all));
        prop_assert_eq!(here.counts().messages, e.messages);
        for s in [here, there, expected] {
            s.close().unwrap();
        }
    }
}

#[test]
fn the_check_tells_a_changed_or_shortened_snapshot() {
    let all = ops(&[(16, 1, 2, 3, 4, 0), (0, 1, 1, 1, 5, 1), (16, 2, 1, 2, 6, 2)]);
    let a = node(&all);
    let mut b = Store::open(StoreOptions::temporary()).unwrap();
    let whole = install(&a, &mut b);
    assert_eq!(whole.ops, 3);
    let mut reading = Reading::start(a.snapshot_reader()).unwrap();
    let mut ops = Vec::new();
    while let Some(batch) = reading.next_batch().unwrap() {
        ops.extend(batch);
    }
    let mut short = Check::default();
    ops[..2].iter().for_each(|o| short.add(o));
    assert_ne!(short, whole);
    let mut changed = Check::default();
    if let OpBody::Send { text, .. } = &mut ops[2].1 {
        text.push('!');
    }
    ops.iter().for_each(|o| changed.add(o));
    assert_eq!(changed.ops, whole.ops);
    assert_ne!(changed, whole);
}

/// A batch is one mesh frame: weighed as it decodes, not as it is stored,
/// or texts that compress a hundredfold (4,096 `x`, a client's longest)
/// make a frame past what a peer takes.
#[test]
fn a_batch_of_compressible_texts_stays_within_a_frame() {
    use crate::mesh::wire::{encode, Frame, TARGET_FRAME};
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(StoreOptions::at(dir.path().join("db"))).unwrap();
    for seq in 1..=2_000u64 {
        let o = Op {
            origin: 1,
            seq,
            stamp: Stamp::new(1_800_000_000_000 + seq, 1),
            body: OpBody::Send {
                from: Uid(1),
                to: Target::User(Uid(2)),
                text: "x".repeat(4096),
                cid: None,
                time: None,
            },
        };
        apply(&mut s, &o).unwrap();
        s.append_log(1, vec![o]).unwrap();
    }
    s.checkpoint_now().unwrap();
    let mut reading = Reading::start(s.snapshot_reader()).unwrap();
    let (mut batches, mut messages) = (0, 0);
    while let Some(ops) = reading.next_batch().unwrap() {
        messages += ops
            .iter()
            .filter(|(_, b)| matches!(b, OpBody::Send { .. }))
            .count();
        let frame = encode(&Frame::SnapshotOps { ops });
        // A batch passes its weight by one chunk at most.
        assert!(frame.len() <= BATCH_BYTES + (64 << 10), "{}", frame.len());
        assert!(frame.len() <= TARGET_FRAME);
        batches += 1;
    }
    assert_eq!(messages, 2_000);
    assert!(batches >= 50, "{batches}");
}
