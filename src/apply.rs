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

/// Tally entries (a conversation's minute each) swept per call; the hub
/// sweeps the rest between batches.
pub const SWEEP_BUDGET: usize = 512;

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
                if let Some(cid) = cid {
                    s.recent_cids.insert(from.0, cid, m.id);
                }
                // One that expired before it arrived goes nowhere.
                if s.add_message(&m)? {
                    fx.push(Effect::Message(Arc::new(m)));
                }
            }
        }
        OpBody::Expire { history, queue } => {
            s.raise_watermarks(*history, *queue);
            s.sweep(SWEEP_BUDGET)?;
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

/// Apply one operation of a snapshot (`crate::snapshot`): as any other,
/// but it tells nobody (what it brings is not news) and leaves the resend
/// filter alone (its client ids are from long ago).
pub fn apply_snapshot_op(s: &mut Store, (stamp, body): crate::snapshot::SnapOp) -> Result<()> {
    let op = Op {
        origin: stamp.node(),
        seq: 0,
        stamp,
        body,
    };
    match op.message() {
        Some(m) => s.add_message(&m).map(|_| ()),
        None => apply(s, &op).map(|_| ()),
    }
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
mod tests;
