//! `apply`: the one function that changes durable state.
//!
//! Every operation, made here or received from a peer, is applied by
//! [`apply`]. Applying is a merge, never a check: permissions were decided by
//! the node that made the operation (`rules/`). Each kind of state has a
//! merge rule that gives the same result whatever order operations arrive in
//! and however often (see proto.md, "Merge rules"):
//!
//! * mutable fields are last-writer-wins on the operation stamp;
//! * a record changed before its creating operation arrived gets a
//!   placeholder that the creating operation later fills in;
//! * messages are immutable and keyed by their id;
//! * delivery cursors only move forward; group dissolution is final;
//! * a contested user name goes to the earlier registration, the other
//!   account is shown as `name#id`.
//!
//! `apply` reports what changed as [`Effect`]s so the hub can tell the users
//! concerned. It does no I/O beyond the store.

use crate::ids::{Gid, Stamp, Uid};
use crate::model::{Group, Link, Member, Message, Op, OpBody, Role, TokenRec, User};
use crate::store::{Result, Store};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Message(Arc<Message>),
    Link {
        actor: Uid,
        other: Uid,
        before: Link,
        after: Link,
        note: String,
    },
    Member {
        group: Gid,
        user: Uid,
        actor: Uid,
        before: Option<Role>,
        after: Option<Role>,
    },
    GroupUpdated {
        group: Gid,
        actor: Uid,
        name: Option<String>,
        desc: Option<String>,
    },
    GroupDissolved {
        group: Gid,
        actor: Uid,
        members: Vec<Uid>,
    },
    /// The user's display name changed (lost a name collision, or was
    /// just registered).
    Renamed {
        user: Uid,
        name: String,
    },
    PasswordChanged {
        user: Uid,
    },
    Banned {
        user: Uid,
        banned: bool,
    },
    Deleted {
        user: Uid,
    },
    /// An operator's notice, made at `stamp`.
    Notice {
        text: String,
        stamp: Stamp,
    },
}

fn placeholder_user(id: Uid) -> User {
    User {
        id,
        name: String::new(),
        hash: String::new(),
        created: Stamp::ZERO,
        pw_stamp: Stamp::ZERO,
        banned: false,
        ban_stamp: Stamp::ZERO,
        deleted: false,
    }
}

fn placeholder_group(id: Gid) -> Group {
    Group {
        id,
        creator: Uid(0),
        name: String::new(),
        desc: String::new(),
        created: Stamp::ZERO,
        name_stamp: Stamp::ZERO,
        desc_stamp: Stamp::ZERO,
        dissolved: false,
    }
}

/// No token of `user` issued at or before `floor` works any more (a
/// password change, a ban, a deletion, or an operator's kick). The floor
/// only rises, so the order of these does not matter.
fn revoke_tokens_before(s: &mut Store, user: Uid, floor: Stamp) -> Result<()> {
    if floor <= s.token_floor(user)? {
        return Ok(());
    }
    s.set_token_floor(user, floor);
    for issued in s.token_stamps(user)? {
        if issued <= floor {
            s.del_token(user, issued);
        }
    }
    Ok(())
}

/// Keep a user's newest tokens only: the newest [`KEEP_PER_USER`] keys
/// are the same whatever order their operations came in.
///
/// [`KEEP_PER_USER`]: crate::tokens::KEEP_PER_USER
fn keep_newest_tokens(s: &mut Store, user: Uid) -> Result<()> {
    let stamps = s.token_stamps(user)?;
    let extra = stamps.len().saturating_sub(crate::tokens::KEEP_PER_USER);
    for issued in &stamps[..extra] {
        s.del_token(user, *issued);
    }
    Ok(())
}

/// Whether a user record is a live account: its registration has been
/// applied, the operator has not deleted it, and it is not a guest.
pub fn is_registered(u: &User) -> bool {
    has_name(u) && !u.id.is_guest()
}

/// Whether a user record has a name to show: a live account or a guest.
pub fn has_name(u: &User) -> bool {
    u.created != Stamp::ZERO && !u.deleted
}

/// How a guest is shown everywhere: never mistakable for an account
/// (registered names cannot end in "(guest)").
pub fn guest_display_name(name: &str) -> String {
    format!("{name} (guest)")
}

/// The node whose guest block holds a guest id.
pub fn guest_node(u: Uid) -> crate::ids::NodeId {
    let offset = u.0.saturating_sub(crate::ids::GUEST_BASE + 1);
    (offset / crate::ids::GUEST_BLOCK + 1) as crate::ids::NodeId
}

pub fn apply(s: &mut Store, op: &Op) -> Result<Vec<Effect>> {
    let mut fx = Vec::new();
    let st = op.stamp;
    match &op.body {
        OpBody::Register { user, name, hash } => register(s, st, *user, name, hash, &mut fx)?,
        OpBody::SetPassword { user, hash } => {
            let mut u = s.user(*user)?.unwrap_or_else(|| placeholder_user(*user));
            if st > u.pw_stamp {
                u.hash = hash.clone();
                u.pw_stamp = st;
                s.put_user(&u);
                fx.push(Effect::PasswordChanged { user: *user });
            }
            revoke_tokens_before(s, *user, st)?;
        }
        OpBody::SetBanned { user, banned } => {
            let mut u = s.user(*user)?.unwrap_or_else(|| placeholder_user(*user));
            if *banned {
                revoke_tokens_before(s, *user, st)?;
            }
            if st > u.ban_stamp {
                let changed = u.banned != *banned;
                u.banned = *banned;
                u.ban_stamp = st;
                s.put_user(&u);
                if changed {
                    fx.push(Effect::Banned {
                        user: *user,
                        banned: *banned,
                    });
                }
            }
        }
        OpBody::DeleteUser { user } => {
            revoke_tokens_before(s, *user, st)?;
            let mut u = s.user(*user)?.unwrap_or_else(|| placeholder_user(*user));
            if !u.deleted {
                u.deleted = true;
                s.put_user(&u);
                fx.push(Effect::Deleted { user: *user });
            }
        }
        OpBody::Notice { text } => fx.push(Effect::Notice {
            text: text.clone(),
            stamp: st,
        }),
        OpBody::Guest { user, name } => {
            let mut u = s.user(*user)?.unwrap_or_else(|| placeholder_user(*user));
            // The earliest record of a guest id is the one kept.
            if u.created == Stamp::ZERO || st < u.created {
                u.created = st;
                u.name = guest_display_name(name);
                s.put_user(&u);
                s.set_guest(guest_node(*user), name, *user);
                fx.push(Effect::Renamed {
                    user: *user,
                    name: u.name.clone(),
                });
            }
        }
        OpBody::Token {
            user,
            hash,
            expires_ms,
        } => {
            if st > s.token_floor(*user)? {
                // A revocation may have come first.
                let revoked = s.token(*user, st)?.is_some_and(|t| t.revoked);
                let t = TokenRec {
                    hash: *hash,
                    expires_ms: *expires_ms,
                    revoked,
                };
                s.put_token(*user, st, &t);
                keep_newest_tokens(s, *user)?;
            }
        }
        OpBody::RevokeToken { user, issued } => {
            if *issued > s.token_floor(*user)? {
                let mut t = s.token(*user, *issued)?.unwrap_or(TokenRec {
                    hash: [0; 32],
                    expires_ms: 0,
                    revoked: true,
                });
                t.revoked = true;
                s.put_token(*user, *issued, &t);
                keep_newest_tokens(s, *user)?;
            }
        }
        OpBody::RevokeTokens { user } => revoke_tokens_before(s, *user, st)?,
        OpBody::Link {
            actor,
            other,
            link,
            note,
        } => {
            let mut mine = s.edge(*actor, *other)?;
            if st > mine.stamp {
                let before = mine.link;
                let note = if matches!(link, Link::Pending { .. }) {
                    note.clone()
                } else {
                    String::new()
                };
                let mut theirs = s.edge(*other, *actor)?;
                for e in [&mut mine, &mut theirs] {
                    e.link = *link;
                    e.stamp = st;
                    e.note = note.clone();
                }
                s.put_edge(*actor, *other, &mine);
                s.put_edge(*other, *actor, &theirs);
                if before != *link {
                    fx.push(Effect::Link {
                        actor: *actor,
                        other: *other,
                        before,
                        after: *link,
                        note,
                    });
                }
            }
        }
        OpBody::Remark {
            owner,
            friend,
            remark,
        } => {
            let mut e = s.edge(*owner, *friend)?;
            if st > e.remark_stamp {
                e.remark = remark.clone();
                e.remark_stamp = st;
                s.put_edge(*owner, *friend, &e);
            }
        }
        OpBody::CreateGroup {
            group,
            creator,
            name,
            desc,
        } => {
            let mut g = s
                .group(*group)?
                .unwrap_or_else(|| placeholder_group(*group));
            // The lobby is created by every node that serves it (same id):
            // the earliest creation is the one kept, whatever the order.
            if g.created == Stamp::ZERO || st < g.created {
                g.created = st;
                g.creator = *creator;
            }
            if st > g.name_stamp {
                g.name = name.clone();
                g.name_stamp = st;
            }
            if st > g.desc_stamp {
                g.desc = desc.clone();
                g.desc_stamp = st;
            }
            s.put_group(&g);
            // A group made by the system (the lobby) has no creator member.
            if *creator != Uid(0) {
                set_role(
                    s,
                    st,
                    *group,
                    *creator,
                    Some(Role::Creator),
                    *creator,
                    st,
                    &mut fx,
                )?;
            }
        }
        OpBody::UpdateGroup {
            group,
            actor,
            name,
            desc,
        } => {
            let mut g = s
                .group(*group)?
                .unwrap_or_else(|| placeholder_group(*group));
            let mut changed = (None, None);
            if let Some(n) = name {
                if st > g.name_stamp {
                    g.name = n.clone();
                    g.name_stamp = st;
                    changed.0 = Some(n.clone());
                }
            }
            if let Some(d) = desc {
                if st > g.desc_stamp {
                    g.desc = d.clone();
                    g.desc_stamp = st;
                    changed.1 = Some(d.clone());
                }
            }
            s.put_group(&g);
            if changed != (None, None) && !g.dissolved {
                fx.push(Effect::GroupUpdated {
                    group: *group,
                    actor: *actor,
                    name: changed.0,
                    desc: changed.1,
                });
            }
        }
        OpBody::DissolveGroup { group, actor } => {
            let mut g = s
                .group(*group)?
                .unwrap_or_else(|| placeholder_group(*group));
            if !g.dissolved {
                g.dissolved = true;
                s.put_group(&g);
                let members = s.members(*group)?.into_iter().map(|(u, _)| u).collect();
                fx.push(Effect::GroupDissolved {
                    group: *group,
                    actor: *actor,
                    members,
                });
            }
        }
        OpBody::SetRole {
            group,
            user,
            role,
            actor,
            since,
        } => set_role(s, st, *group, *user, *role, *actor, *since, &mut fx)?,
        OpBody::Send { cid, from, .. } => {
            if let Some(m) = op.message() {
                s.add_message(&m);
                if let Some(cid) = cid {
                    s.recent_cids.insert(from.0, cid, m.id);
                }
                fx.push(Effect::Message(Arc::new(m)));
            }
        }
        OpBody::Delivered { marks } => {
            for (u, id) in marks {
                if *id > s.cursor(*u, id.node())? {
                    s.set_cursor(*u, id.node(), *id);
                }
            }
        }
    }
    Ok(fx)
}

fn register(
    s: &mut Store,
    st: Stamp,
    id: Uid,
    name: &str,
    hash: &str,
    fx: &mut Vec<Effect>,
) -> Result<()> {
    let mut u = s.user(id)?.unwrap_or_else(|| placeholder_user(id));
    if u.created != Stamp::ZERO {
        return Ok(());
    }
    u.created = st;
    u.name = name.to_string();
    if st > u.pw_stamp {
        u.hash = hash.to_string();
        u.pw_stamp = st;
    }
    match s.name_owner(name)? {
        // A deleted account keeps its name reserved (so the outcome does not
        // depend on whether the deletion arrived first).
        Some(holder) if holder != id => match s.user(holder)? {
            Some(mut h) if h.created != Stamp::ZERO => {
                if h.created < st {
                    u.name = collision_name(name, id);
                } else {
                    // We registered first: the holder loses the name.
                    h.name = collision_name(name, holder);
                    s.put_user(&h);
                    s.set_name_owner(name, id);
                    fx.push(Effect::Renamed {
                        user: holder,
                        name: h.name,
                    });
                }
            }
            _ => s.set_name_owner(name, id),
        },
        _ => s.set_name_owner(name, id),
    }
    // Whoever remembered this id as nobody (a placeholder) must look again.
    fx.push(Effect::Renamed {
        user: id,
        name: u.name.clone(),
    });
    s.put_user(&u);
    Ok(())
}

/// The name shown for an account that lost a name collision. `#` cannot
/// appear in registered names, so these never collide.
pub fn collision_name(name: &str, id: Uid) -> String {
    format!("{name}#{id}")
}

#[allow(clippy::too_many_arguments)]
fn set_role(
    s: &mut Store,
    st: Stamp,
    group: Gid,
    user: Uid,
    role: Option<Role>,
    actor: Uid,
    since: Stamp,
    fx: &mut Vec<Effect>,
) -> Result<()> {
    let old = s.member(group, user)?;
    if old.is_some_and(|m| m.stamp >= st) {
        return Ok(());
    }
    let before = old.and_then(|m| m.role);
    s.put_member(
        group,
        user,
        &Member {
            role,
            stamp: st,
            since,
        },
    );
    if before != role {
        fx.push(Effect::Member {
            group,
            user,
            actor,
            before,
            after: role,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
