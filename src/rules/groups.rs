//! Groups: creating, joining, inviting, leaving, kicking, roles,
//! updating and dissolving; the lobby.

use super::*;

/// The commands of this domain (`decide` sends only those here).
pub(super) fn group_command(
    s: &Store,
    cx: &mut Ctx,
    who: Option<Uid>,
    cmd: Command,
) -> Res<Decision> {
    match cmd {
        Command::GroupCreate { name, desc } => {
            let me = logged_in(who)?;
            check_group_fields(Some(&name), Some(&desc), cx.limits)?;
            group_room(s, cx, me)?;
            let group = cx.ids.group()?;
            let view = GroupView {
                id: group,
                name: name.clone(),
                desc: desc.clone(),
                creator: me,
                role: Some(Role::Creator),
            };
            Decision::op(
                cx,
                OpBody::CreateGroup {
                    group,
                    creator: me,
                    name,
                    desc,
                },
                Reply::Group(view),
            )
        }
        Command::GroupJoin { group } => {
            let me = logged_in(who)?;
            let g = active_group(s, group)?;
            let mut d = add_member(s, cx, group, me, me)?;
            d.reply = Reply::Joined(group_view(&g, Some(Role::Member)));
            Ok(d)
        }
        Command::GroupInvite { group, user } => {
            let me = logged_in(who)?;
            active_group(s, group)?;
            member_role(s, group, me)?;
            registered(s, user)?;
            add_member(s, cx, group, user, me)
        }
        Command::GroupLeave { group } => {
            let me = logged_in(who)?;
            active_group(s, group)?;
            if member_role(s, group, me)? == Role::Creator {
                return fail(
                    ErrorCode::CreatorCannotLeave,
                    "the creator cannot leave; dissolve the group instead",
                );
            }
            set_role(cx, group, me, None, me, Stamp::ZERO)
        }
        Command::GroupKick { group, user } => {
            let me = logged_in(who)?;
            active_group(s, group)?;
            let mine = member_role(s, group, me)?;
            if user == me {
                return fail(ErrorCode::SelfTarget, "use group_leave to leave a group");
            }
            let theirs = role_of(s, group, user)?.ok_or_else(|| {
                ChatError::new(
                    ErrorCode::NotMember,
                    format!("{user} is not in group {group}"),
                )
            })?;
            if mine < Role::Admin || theirs >= mine {
                return fail(
                    ErrorCode::Forbidden,
                    "only the creator or an admin may remove members, and only of lower rank",
                );
            }
            set_role(cx, group, user, None, me, Stamp::ZERO)
        }
        Command::GroupRole { group, user, admin } => {
            let me = logged_in(who)?;
            active_group(s, group)?;
            if member_role(s, group, me)? != Role::Creator {
                return fail(ErrorCode::Forbidden, "only the creator may change roles");
            }
            let m = s
                .member(group, user)?
                .filter(|m| m.role.is_some())
                .ok_or_else(|| {
                    ChatError::new(
                        ErrorCode::NotMember,
                        format!("{user} is not in group {group}"),
                    )
                })?;
            if m.role == Some(Role::Creator) {
                return fail(ErrorCode::Forbidden, "the creator's role cannot change");
            }
            let role = if admin { Role::Admin } else { Role::Member };
            if m.role == Some(role) {
                return Decision::reply(Reply::Ok);
            }
            set_role(cx, group, user, Some(role), me, m.since)
        }
        Command::GroupUpdate { group, name, desc } => {
            let me = logged_in(who)?;
            active_group(s, group)?;
            if member_role(s, group, me)? < Role::Admin {
                return fail(
                    ErrorCode::Forbidden,
                    "only the creator or an admin may change the group",
                );
            }
            if name.is_none() && desc.is_none() {
                return fail(ErrorCode::BadRequest, "give a new name or desc");
            }
            check_group_fields(name.as_deref(), desc.as_deref(), cx.limits)?;
            Decision::op(
                cx,
                OpBody::UpdateGroup {
                    group,
                    actor: me,
                    name,
                    desc,
                },
                Reply::Ok,
            )
        }
        Command::GroupDissolve { group } => {
            let me = logged_in(who)?;
            active_group(s, group)?;
            if member_role(s, group, me)? != Role::Creator {
                return fail(
                    ErrorCode::Forbidden,
                    "only the creator may dissolve the group",
                );
            }
            Decision::op(cx, OpBody::DissolveGroup { group, actor: me }, Reply::Ok)
        }
        other => fail(
            ErrorCode::Internal,
            format!("{other:?} is not a group command"),
        ),
    }
}

pub(super) fn group_room(s: &Store, cx: &Ctx, u: Uid) -> Res<()> {
    if s.groups_of(u)?.len() >= cx.limits.max_groups_per_user {
        return fail(
            ErrorCode::LimitReached,
            format!(
                "a user may be in at most {} groups",
                cx.limits.max_groups_per_user
            ),
        );
    }
    Ok(())
}

pub fn check_group_name(name: &str, limits: &Limits) -> Res<()> {
    check_group_fields(Some(name), None, limits)
}

pub(super) fn check_group_fields(
    name: Option<&str>,
    desc: Option<&str>,
    limits: &Limits,
) -> Res<()> {
    if let Some(n) = name {
        check_text_field(
            n,
            "group name",
            limits.max_name_chars,
            ErrorCode::InvalidName,
            false,
        )?;
    }
    if let Some(d) = desc {
        check_text_field(
            d,
            "group desc",
            limits.max_desc_chars,
            ErrorCode::BadRequest,
            true,
        )?;
    }
    Ok(())
}

pub(super) fn add_member(
    s: &Store,
    cx: &mut Ctx,
    group: Gid,
    user: Uid,
    actor: Uid,
) -> Res<Decision> {
    if role_of(s, group, user)?.is_some() {
        return fail(
            ErrorCode::AlreadyMember,
            format!("{user} is already in group {group}"),
        );
    }
    // The lobby is everyone's: no member limit.
    if group != LOBBY && s.members(group)?.len() >= cx.limits.max_group_members {
        return fail(
            ErrorCode::LimitReached,
            format!(
                "a group may have at most {} members",
                cx.limits.max_group_members
            ),
        );
    }
    group_room(s, cx, user)?;
    let stamp = cx.stamp();
    Ok(Decision {
        ops: vec![(
            stamp,
            OpBody::SetRole {
                group,
                user,
                role: Some(Role::Member),
                actor,
                since: stamp,
            },
        )],
        reply: Reply::Ok,
    })
}

pub(super) fn set_role(
    cx: &mut Ctx,
    group: Gid,
    user: Uid,
    role: Option<Role>,
    actor: Uid,
    since: Stamp,
) -> Res<Decision> {
    Decision::op(
        cx,
        OpBody::SetRole {
            group,
            user,
            role,
            actor,
            since,
        },
        Reply::Ok,
    )
}

/// The operation that makes `user` a lobby member, when the lobby exists
/// and they are not one yet.
pub fn join_lobby(s: &Store, cx: &mut Ctx, user: Uid) -> Res<Option<(Stamp, OpBody)>> {
    if active_group(s, LOBBY).is_err() || role_of(s, LOBBY, user)?.is_some() {
        return Ok(None);
    }
    let stamp = cx.stamp();
    Ok(Some((
        stamp,
        OpBody::SetRole {
            group: LOBBY,
            user,
            role: Some(Role::Member),
            actor: user,
            since: stamp,
        },
    )))
}

/// The operation that creates the lobby, or gives it the configured name.
/// Every node serving room-style clients makes it with the same id; the
/// merge rules keep the earliest creation and the latest name.
pub fn ensure_lobby(s: &Store, cx: &mut Ctx, name: &str) -> Res<Option<(Stamp, OpBody)>> {
    check_group_fields(Some(name), None, cx.limits)?;
    let body = match s.group(LOBBY)? {
        Some(g) if g.created != Stamp::ZERO => {
            if g.dissolved || g.name == name {
                return Ok(None);
            }
            OpBody::UpdateGroup {
                group: LOBBY,
                actor: Uid(0),
                name: Some(name.to_string()),
                desc: None,
            }
        }
        _ => OpBody::CreateGroup {
            group: LOBBY,
            creator: Uid(0),
            name: name.to_string(),
            desc: "everyone, from every kind of client".into(),
        },
    };
    Ok(Some((cx.stamp(), body)))
}
