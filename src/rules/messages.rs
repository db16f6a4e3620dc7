//! Messages: sending (to a user, a group, a guest), acknowledgements,
//! history.

use super::*;

/// The commands of this domain (`decide` sends only those here).
pub(super) fn message_command(
    s: &Store,
    cx: &mut Ctx,
    who: Option<Uid>,
    cmd: Command,
) -> Res<Decision> {
    match cmd {
        Command::SendToGuest { name, text } => {
            let me = logged_in(who)?;
            let absent = || {
                ChatError::new(
                    ErrorCode::UnknownUser,
                    format!("{name} is not in the chat room"),
                )
            };
            let to = s.guest_uid(cx.ids.node(), &name)?.ok_or_else(absent)?;
            if !(cx.online)(to) {
                return Err(absent());
            }
            // The epoll chatroom lets one whisper to oneself, as the original.
            let to = if to == me {
                Whom::Myself
            } else {
                Whom::Other(Target::User(to))
            };
            send(s, cx, me, to, text, None, None)
        }
        Command::Send {
            to,
            text,
            cid,
            time,
        } => send(s, cx, logged_in(who)?, Whom::Other(to), text, cid, time),
        Command::Ack { ids } => {
            let me = logged_in(who)?;
            if ids.len() > MAX_ACK_IDS {
                return fail(
                    ErrorCode::BadRequest,
                    format!("at most {MAX_ACK_IDS} ids per ack"),
                );
            }
            // An id from the future cannot be a message we delivered.
            let horizon = cx.clock.high_water();
            let marks: Vec<_> = ids
                .into_iter()
                .filter(|id| *id <= horizon && id.0 != 0)
                .map(|id| (me, id))
                .collect();
            let count = marks.len();
            let ops = delivered_ops(marks)
                .into_iter()
                .map(|body| (cx.stamp(), body))
                .collect();
            Ok(Decision {
                ops,
                reply: Reply::Acked { count },
            })
        }
        Command::History {
            with,
            before,
            limit,
        } => {
            let me = logged_in(who)?;
            let conv = match with {
                Target::User(u) => {
                    registered(s, u)?;
                    conv_direct(me, u)
                }
                Target::Group(g) => {
                    active_group(s, g)?;
                    member_role(s, g, me)?;
                    conv_group(g)
                }
            };
            let limit = limit
                .map(|l| l as usize)
                .unwrap_or(cx.limits.history_page)
                .clamp(1, cx.limits.history_page_max);
            let (msgs, more) = s.history(&conv, before, limit)?;
            let messages = msgs
                .into_iter()
                .map(|m| cx.names.view(s, Arc::new(m)))
                .collect::<Res<Vec<_>>>()?;
            Decision::reply(Reply::History { messages, more })
        }
        other => fail(
            ErrorCode::Internal,
            format!("{other:?} is not a message command"),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
/// Whom a message goes to.
pub(super) enum Whom {
    Other(Target),
    /// The sender's own sessions (only the epoll chatroom asks for this).
    Myself,
}

pub(super) fn send(
    s: &Store,
    cx: &mut Ctx,
    me: Uid,
    to: Whom,
    text: String,
    cid: Option<String>,
    time: Option<String>,
) -> Res<Decision> {
    let to = match to {
        Whom::Myself => Target::User(me),
        Whom::Other(Target::User(u)) if u == me => {
            return fail(ErrorCode::SelfTarget, "you cannot message yourself")
        }
        Whom::Other(t) => t,
    };
    if text.trim().is_empty() {
        return fail(ErrorCode::EmptyText, "message text is empty");
    }
    if text.len() > cx.limits.max_text {
        return fail(
            ErrorCode::TextTooLong,
            format!("message text is longer than {} bytes", cx.limits.max_text),
        );
    }
    if let Some(c) = &cid {
        if c.is_empty() || c.len() > cx.limits.max_cid_bytes {
            return fail(
                ErrorCode::BadRequest,
                format!("cid must be 1 to {} bytes", cx.limits.max_cid_bytes),
            );
        }
    }
    // A display time is only kept when it looks like one.
    let time = time.filter(|t| t.len() <= 32 && !t.chars().any(char::is_control));
    match to {
        Target::User(u) => {
            // The name cache knows (an empty name: no such user) without
            // decoding the recipient's record for every message.
            if cx.names.get(s, u)?.is_empty() {
                return fail(ErrorCode::UnknownUser, format!("no user with id {u}"));
            }
            // Guests and accounts meet only in the lobby.
            if u.is_guest() != me.is_guest() {
                return fail(
                    ErrorCode::Forbidden,
                    "guests and registered users can talk only in the lobby",
                );
            }
        }
        Target::Group(g) => {
            active_group(s, g)?;
            // A guest is in the lobby while connected, and in nothing else.
            if !(me.is_guest() && g == LOBBY) {
                member_role(s, g, me)?;
            }
        }
    }
    if let Some(c) = &cid {
        if let Some(id) = s.recent_cids.get(me.0, c) {
            return Decision::reply(Reply::Sent {
                id,
                cid,
                duplicate: true,
                alone: false,
            });
        }
    }
    let stamp = cx.stamp();
    Ok(Decision {
        reply: Reply::Sent {
            id: stamp,
            cid: cid.clone(),
            duplicate: false,
            alone: false,
        },
        ops: vec![(
            stamp,
            OpBody::Send {
                from: me,
                to,
                text,
                cid,
                time,
            },
        )],
    })
}
