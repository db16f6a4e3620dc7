//! Friends: requests, answers, removal and remarks.

use super::*;

/// The commands of this domain (`decide` sends only those here).
pub(super) fn friend_command(
    s: &Store,
    cx: &mut Ctx,
    who: Option<Uid>,
    cmd: Command,
) -> Res<Decision> {
    match cmd {
        Command::FriendRequest { user, text } => {
            let me = logged_in(who)?;
            let other = other_user(s, me, user)?;
            check_text_field(
                &text,
                "text",
                cx.limits.max_note_chars,
                ErrorCode::BadRequest,
                true,
            )?;
            match s.edge(me, other.id)?.link {
                Link::Friends => fail(ErrorCode::AlreadyFriends, "you are already friends"),
                // They asked first: asking back accepts.
                Link::Pending { from } if from == other.id => link(cx, me, other.id, Link::Friends),
                Link::Pending { .. } => Decision::reply(Reply::Ok),
                Link::None => {
                    room_for_both(s, cx, me, other.id)?;
                    Decision::op(
                        cx,
                        OpBody::Link {
                            actor: me,
                            other: other.id,
                            link: Link::Pending { from: me },
                            note: text,
                        },
                        Reply::Ok,
                    )
                }
            }
        }
        Command::FriendAccept { user } => {
            let me = logged_in(who)?;
            match s.edge(me, user)?.link {
                Link::Pending { from } if from == user => link(cx, me, user, Link::Friends),
                _ => fail(
                    ErrorCode::NoRequest,
                    format!("no friend request from {user}"),
                ),
            }
        }
        Command::FriendDecline { user } => {
            let me = logged_in(who)?;
            match s.edge(me, user)?.link {
                Link::Pending { from } if from == user => link(cx, me, user, Link::None),
                _ => fail(
                    ErrorCode::NoRequest,
                    format!("no friend request from {user}"),
                ),
            }
        }
        Command::FriendRemove { user } => {
            let me = logged_in(who)?;
            match s.edge(me, user)?.link {
                Link::Friends => link(cx, me, user, Link::None),
                // Withdraw our own request.
                Link::Pending { from } if from == me => link(cx, me, user, Link::None),
                _ => fail(ErrorCode::NotFriends, format!("{user} is not your friend")),
            }
        }
        Command::FriendRemark { user, remark } => {
            let me = logged_in(who)?;
            if s.edge(me, user)?.link != Link::Friends {
                return fail(ErrorCode::NotFriends, format!("{user} is not your friend"));
            }
            check_text_field(
                &remark,
                "remark",
                cx.limits.max_name_chars,
                ErrorCode::BadRequest,
                true,
            )?;
            Decision::op(
                cx,
                OpBody::Remark {
                    owner: me,
                    friend: user,
                    remark,
                },
                Reply::Ok,
            )
        }
        Command::FriendAdd { user } => {
            let me = logged_in(who)?;
            let other = other_user(s, me, user)?;
            let them = Reply::Befriended(UserRef {
                id: other.id,
                name: other.name.clone(),
            });
            match s.edge(me, other.id)?.link {
                Link::Friends => return Decision::reply(them),
                // A request either way already counts for both.
                Link::Pending { .. } => {}
                Link::None => room_for_both(s, cx, me, other.id)?,
            }
            let mut d = link(cx, me, other.id, Link::Friends)?;
            d.reply = them;
            Ok(d)
        }
        other => fail(
            ErrorCode::Internal,
            format!("{other:?} is not a friend command"),
        ),
    }
}

pub(super) fn other_user(s: &Store, me: Uid, user: Uid) -> Res<User> {
    if user == me {
        return fail(ErrorCode::SelfTarget, "you cannot befriend yourself");
    }
    registered(s, user)
}

pub(super) fn link(cx: &mut Ctx, me: Uid, other: Uid, link: Link) -> Res<Decision> {
    Decision::op(
        cx,
        OpBody::Link {
            actor: me,
            other,
            link,
            note: String::new(),
        },
        Reply::Ok,
    )
}

/// A new request or friendship counts for both users: each must have
/// room, or one user's friends and requests could grow without bound
/// through requests sent to them.
fn room_for_both(s: &Store, cx: &Ctx, me: Uid, other: Uid) -> Res<()> {
    let max = cx.limits.max_friends;
    if edges_in_use(s, me)? >= max {
        return fail(
            ErrorCode::LimitReached,
            format!("at most {max} friends and requests"),
        );
    }
    if edges_in_use(s, other)? >= max {
        return fail(
            ErrorCode::LimitReached,
            format!("{other} has the most friends and requests allowed"),
        );
    }
    Ok(())
}

fn edges_in_use(s: &Store, user: Uid) -> Res<usize> {
    Ok(s.edges(user)?
        .iter()
        .filter(|(_, e)| e.link != Link::None)
        .count())
}
