//! Accounts and sessions: registering, names and passwords, logins
//! (password, token, guest), and what a session itself asks.

use super::*;

/// The commands of this domain (`decide` sends only those here).
pub(super) fn account_command(
    s: &Store,
    cx: &mut Ctx,
    who: Option<Uid>,
    cmd: Command,
) -> Res<Decision> {
    match cmd {
        Command::Register { name, hash, id } => {
            check_user_name(&name, cx.limits)?;
            if let Some(u) = id {
                if !cx.ids.owns_user_id(u) {
                    let block = id_block(cx.ids.node());
                    return fail(
                        ErrorCode::BadRequest,
                        format!(
                            "choose an id from {} to {} on this server",
                            block.start(),
                            block.end()
                        ),
                    );
                }
                if s.user(u)?.is_some() {
                    return fail(ErrorCode::IdTaken, format!("the id {u} is taken"));
                }
            }
            if s.name_owner(&name)?.is_some() {
                return fail(ErrorCode::NameTaken, format!("the name {name:?} is taken"));
            }
            let user = match id {
                Some(u) => u,
                None => cx.ids.user(s)?,
            };
            let reply = Reply::Registered(UserRef {
                id: user,
                name: name.clone(),
            });
            Decision::op(cx, OpBody::Register { user, name, hash }, reply)
        }
        // Session state, handled by the hub before it asks the rules.
        Command::GuestLogin { .. } | Command::Pending => {
            fail(ErrorCode::Internal, "this request is not handled here")
        }
        Command::Passwd { old_hash, new_hash } => {
            let me = logged_in(who)?;
            if registered(s, me)?.hash != old_hash {
                return fail(ErrorCode::InvalidCredentials, "old password is invalid");
            }
            Decision::op(
                cx,
                OpBody::SetPassword {
                    user: me,
                    hash: new_hash,
                },
                Reply::Ok,
            )
        }
        Command::Ping => Decision::reply(Reply::Pong),
        // Session state; the hub handles it before asking the rules.
        Command::Logout => Decision::reply(Reply::LoggedOut),
        other => fail(
            ErrorCode::Internal,
            format!("{other:?} is not a account command"),
        ),
    }
}

pub fn check_user_name(name: &str, limits: &Limits) -> Res<()> {
    check_text_field(
        name,
        "name",
        limits.max_name_chars,
        ErrorCode::InvalidName,
        false,
    )?;
    if name.trim() != name {
        return fail(
            ErrorCode::InvalidName,
            "name must not start or end with spaces",
        );
    }
    if name.contains('#') {
        return fail(ErrorCode::InvalidName, "name must not contain '#'");
    }
    if name.to_lowercase().ends_with("(guest)") {
        return fail(
            ErrorCode::InvalidName,
            "names ending in \"(guest)\" are how guests are shown",
        );
    }
    if looks_like_a_chat_id(name) {
        return fail(
            ErrorCode::InvalidName,
            "names like \"Client 3\" are how the epoll chatroom shows its guests",
        );
    }
    Ok(())
}

/// `Client 3` or `Client #3`, in any case.
pub(super) fn looks_like_a_chat_id(name: &str) -> bool {
    let lower = name.to_lowercase();
    lower
        .strip_prefix("client")
        .map(|r| r.trim_start().trim_start_matches('#'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Longest name a guest keeps, in characters.
pub(super) const GUEST_NAME_CHARS: usize = 32;

/// A guest's name as it will be kept: printable, trimmed, short, never
/// empty. (Dialects whose clients choose their names remove `#`, which
/// marks names the server gives, like the epoll chatroom's "Client #3".)
pub fn clean_guest_name(raw: &str) -> String {
    let kept: String = raw
        .chars()
        .filter(|c| !c.is_control())
        .take(GUEST_NAME_CHARS)
        .collect();
    let kept = kept.trim();
    if kept.is_empty() {
        "guest".into()
    } else {
        kept.to_string()
    }
}

pub fn check_password(pw: &str, limits: &Limits) -> Res<()> {
    if pw.is_empty() {
        return fail(ErrorCode::InvalidPassword, "password must not be empty");
    }
    if pw.len() > limits.max_password_bytes {
        return fail(
            ErrorCode::InvalidPassword,
            format!(
                "password is longer than {} bytes",
                limits.max_password_bytes
            ),
        );
    }
    Ok(())
}

/// Check a login: the user exists, the password was verified against the
/// current hash, and the user is not banned.
pub fn check_login(s: &Store, u: Uid, verified_hash: &str) -> Res<User> {
    let bad = || ChatError::new(ErrorCode::InvalidCredentials, "id or password is invalid");
    let user = registered(s, u).map_err(|_| bad())?;
    if user.hash != verified_hash {
        return Err(bad());
    }
    if user.banned {
        return fail(ErrorCode::Banned, "this account is banned");
    }
    Ok(user)
}

/// The user a session token logs in, and the token as stored. Every way a
/// token can be wrong gives the same answer.
pub fn check_token(
    s: &Store,
    t: &crate::tokens::Presented,
    now_ms: u64,
) -> Res<(User, crate::model::TokenRec)> {
    let bad = || {
        ChatError::new(
            ErrorCode::InvalidToken,
            "this session token is not valid (expired, revoked or unknown); log in with the password",
        )
    };
    let rec = s.token(t.user, t.issued)?.ok_or_else(bad)?;
    if rec.revoked
        || rec.hash != t.hash
        || rec.expires_ms <= now_ms
        || t.issued <= s.token_floor(t.user)?
    {
        return Err(bad());
    }
    let user = registered(s, t.user).map_err(|_| bad())?;
    if user.banned {
        return fail(ErrorCode::Banned, "this account is banned");
    }
    Ok((user, rec))
}

/// Most people connected under one guest name at once: the second `carol`
/// is `carol 2`, and so on.
pub(super) const GUEST_NAME_SHARERS: u32 = 99;

/// A guest's session called `raw`: a guest this node keeps for that name
/// and that is not connected now (the first free of `carol`, `carol 2`,
/// `carol 3`, ...), or a new one with the operation that records it. Two
/// people who give one name are two guests; one who comes back is the same.
/// `allow_new`: whether a new guest may be made (not while the disk is full).
pub fn guest_login(
    s: &Store,
    cx: &mut Ctx,
    raw: &str,
    allow_new: bool,
) -> Res<(UserRef, Option<(Stamp, OpBody)>)> {
    let base = clean_guest_name(raw);
    for k in 1..=GUEST_NAME_SHARERS {
        let name = if k == 1 {
            base.clone()
        } else {
            format!("{base} {k}")
        };
        let shown = guest_display_name(&name);
        match s.guest_uid(cx.ids.node(), &name)? {
            Some(id) if (cx.online)(id) => continue,
            Some(id) => return Ok((UserRef { id, name: shown }, None)),
            None if !allow_new => {
                return fail(
                    ErrorCode::StorageFull,
                    "the server's disk is full: no new guests until there is room",
                )
            }
            None => {
                let user = cx.ids.guest()?;
                let op = (cx.stamp(), OpBody::Guest { user, name });
                return Ok((
                    UserRef {
                        id: user,
                        name: shown,
                    },
                    Some(op),
                ));
            }
        }
    }
    fail(
        ErrorCode::LimitReached,
        format!("too many guests called {base:?} are here"),
    )
}
