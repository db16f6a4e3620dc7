//! Queries that change nothing: contacts, friend and group lists,
//! members, search, the login roster, pending messages.

use super::*;

/// The commands of this domain (`decide` sends only those here).
pub(super) fn query_command(
    s: &Store,
    cx: &mut Ctx,
    who: Option<Uid>,
    cmd: Command,
) -> Res<Decision> {
    match cmd {
        Command::Contacts => {
            let me = logged_in(who)?;
            let friends = friend_views(s, cx, me)?;
            let groups = my_groups(s, me)?;
            Decision::reply(Reply::Contacts { friends, groups })
        }
        Command::Friends => {
            let me = logged_in(who)?;
            let mut friends = Vec::new();
            let mut incoming = Vec::new();
            let mut outgoing = Vec::new();
            for (u, e) in s.edges(me)? {
                let name = cx.names.get(s, u)?.to_string();
                match e.link {
                    Link::Friends => friends.push(FriendView {
                        id: u,
                        name,
                        remark: e.remark,
                        online: (cx.online)(u),
                    }),
                    Link::Pending { from } if from == me => outgoing.push(UserRef { id: u, name }),
                    Link::Pending { .. } => incoming.push(RequestView {
                        id: u,
                        name,
                        text: e.note,
                    }),
                    Link::None => {}
                }
            }
            Decision::reply(Reply::Friends {
                friends,
                incoming,
                outgoing,
            })
        }
        Command::Search {
            query,
            users,
            groups,
        } => {
            logged_in(who)?;
            let q = query.trim();
            check_text_field(
                q,
                "query",
                cx.limits.max_name_chars,
                ErrorCode::BadRequest,
                false,
            )?;
            Decision::reply(Reply::Users {
                users: if users {
                    search(s, q, cx.limits)?
                } else {
                    Vec::new()
                },
                groups: if groups {
                    search_groups(s, q, cx.limits)?
                } else {
                    Vec::new()
                },
            })
        }
        Command::Groups => {
            let me = logged_in(who)?;
            Decision::reply(Reply::Groups(my_groups(s, me)?))
        }
        Command::GroupMembers { group } => {
            let me = logged_in(who)?;
            active_group(s, group)?;
            member_role(s, group, me)?;
            let mut members = members(s, cx, group)?;
            if group == LOBBY {
                // Guests are in the lobby while they are connected.
                for u in (cx.guests_online)() {
                    members.push(MemberView {
                        id: u,
                        name: cx.names.get(s, u)?.to_string(),
                        role: Role::Member,
                        online: true,
                    });
                }
            }
            Decision::reply(Reply::Members { group, members })
        }
        other => fail(
            ErrorCode::Internal,
            format!("{other:?} is not a query command"),
        ),
    }
}

pub(super) fn group_view(g: &Group, role: Option<Role>) -> GroupView {
    GroupView {
        id: g.id,
        name: g.name.clone(),
        desc: g.desc.clone(),
        creator: g.creator,
        role,
    }
}

pub fn my_groups(s: &Store, me: Uid) -> Res<Vec<GroupView>> {
    let mut out = Vec::new();
    for g in s.groups_of(me)? {
        if let Ok(group) = active_group(s, g) {
            out.push(group_view(&group, role_of(s, g, me)?));
        }
    }
    Ok(out)
}

pub(super) fn members(s: &Store, cx: &mut Ctx, g: Gid) -> Res<Vec<MemberView>> {
    let mut out = Vec::new();
    for (u, m) in s.members(g)? {
        if let Some(role) = m.role {
            out.push(MemberView {
                id: u,
                name: cx.names.get(s, u)?.to_string(),
                role,
                online: (cx.online)(u),
            });
        }
    }
    Ok(out)
}

/// Users whose id is the query, or whose name contains it (any case).
pub(super) fn search(s: &Store, q: &str, limits: &Limits) -> Res<Vec<UserRef>> {
    let mut out = Vec::new();
    if let Ok(id) = q.parse::<u32>() {
        if let Ok(u) = registered(s, Uid(id)) {
            out.push(UserRef {
                id: u.id,
                name: u.name,
            });
        }
    }
    let needle = q.to_lowercase();
    for r in s.names().take(limits.search_scan) {
        if out.len() >= limits.search_results {
            break;
        }
        let (name, id) = r?;
        if name.to_lowercase().contains(&needle) && !out.iter().any(|u: &UserRef| u.id == id) {
            // The shown name may differ from the index entry after a collision.
            if let Ok(u) = registered(s, id) {
                out.push(UserRef { id, name: u.name });
            }
        }
    }
    Ok(out)
}

/// Active groups whose id is the query, or whose name contains it (any case).
pub(super) fn search_groups(s: &Store, q: &str, limits: &Limits) -> Res<Vec<GroupView>> {
    let mut out: Vec<GroupView> = Vec::new();
    if let Ok(id) = q.parse::<u32>() {
        if let Ok(g) = active_group(s, Gid(id)) {
            out.push(group_view(&g, None));
        }
    }
    let needle = q.to_lowercase();
    for r in s.groups().take(limits.search_scan) {
        if out.len() >= limits.search_results {
            break;
        }
        let g = r?;
        if g.created != Stamp::ZERO
            && !g.dissolved
            && g.name.to_lowercase().contains(&needle)
            && !out.iter().any(|v| v.id == g.id)
        {
            out.push(group_view(&g, None));
        }
    }
    Ok(out)
}

/// Friends and groups (with members) for the classic login reply.
pub fn roster(s: &Store, cx: &mut Ctx, me: Uid) -> Res<Roster> {
    let friends = friend_views(s, cx, me)?;
    let mut groups = Vec::new();
    for g in my_groups(s, me)? {
        let m = members(s, cx, g.id)?;
        groups.push((g, m));
    }
    Ok(Roster { friends, groups })
}

/// The messages `me` has not acknowledged yet, oldest first, after `after`:
/// direct messages from the inbox and group messages from each group's
/// history, each newer than the user's cursor for the node it came from
/// (and, for groups, newer than the user's membership).
///
/// `held`: deliveries not written to the store yet (while the disk is
/// full), which count like the cursors.
pub fn pending(
    s: &Store,
    me: Uid,
    after: Option<Stamp>,
    limit: usize,
    held: &BTreeMap<NodeId, Stamp>,
) -> Res<Vec<Arc<Message>>> {
    let mut cursors = s.cursors(me)?;
    for (origin, id) in held {
        let c = cursors.entry(*origin).or_default();
        *c = (*c).max(*id);
    }
    let floor = |m: &Message| cursors.get(&m.origin()).copied().unwrap_or(Stamp::ZERO);
    // Everything at or below every origin's cursor is delivered.
    let low = s
        .applied()
        .keys()
        .map(|o| cursors.get(o).copied().unwrap_or(Stamp::ZERO))
        .min()
        .unwrap_or(Stamp::ZERO);
    let start = after.max(Some(low)).filter(|s| *s != Stamp::ZERO);
    let mut sources: Vec<crate::store::merge::Source<'_, Stamp, Message, _>> = vec![Box::new(
        s.inbox_after(me, start).map(|r| r.map(|m| (m.id, m))),
    )];
    for g in s.groups_of(me)? {
        if active_group(s, g).is_err() {
            continue;
        }
        let since = s.member(g, me)?.map(|m| m.since).unwrap_or(Stamp::ZERO);
        let from = start.max(Some(since)).filter(|s| *s != Stamp::ZERO);
        let conv = conv_group(g);
        sources.push(Box::new(
            s.conv_after(&conv, from).map(|r| r.map(|m| (m.id, m))),
        ));
    }
    let mut out = Vec::new();
    for r in Merge::new(sources, false) {
        let (_, m) = r?;
        if m.from != me && m.id > floor(&m) {
            out.push(Arc::new(m));
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// A user's friends, as `contacts` and the login roster list them.
fn friend_views(s: &Store, cx: &mut Ctx, me: Uid) -> Res<Vec<FriendView>> {
    let mut friends = Vec::new();
    for (u, e) in s.edges(me)? {
        if e.link == Link::Friends {
            friends.push(FriendView {
                id: u,
                name: cx.names.get(s, u)?.to_string(),
                remark: e.remark,
                online: (cx.online)(u),
            });
        }
    }
    Ok(friends)
}
