//! Requests that carry a secret: the password is hashed (or a token
//! taken apart) here, off the hub, before the hub is asked.

use super::*;

pub(super) async fn with_password(
    incoming: Incoming,
    link: &SessionLink,
    shared: &Shared,
) -> Option<HubMsg> {
    let hub = &shared.hub;
    let id = link.id;
    let echo = |e: ChatError| HubMsg::Input(Input::Echo { id, result: Err(e) });
    let msg = match incoming {
        // `dispatch` hands these to `plain` first.
        other @ (Incoming::Command(..) | Incoming::Invalid(..)) => plain(other, id).ok()?,
        Incoming::Register {
            name,
            password,
            id: chosen,
            ..
        } => {
            let limits = shared.limits.get();
            let checked = check_user_name(&name, &limits)
                .and_then(|_| check_password(&password, &limits))
                .and_then(|_| shared.may_register(link.peer));
            match checked {
                Err(e) => echo(e),
                Ok(()) => match shared.passwords.hash(password).await {
                    Ok(hash) => HubMsg::Input(Input::Request {
                        id,
                        cmd: Command::Register {
                            name,
                            hash,
                            id: chosen,
                        },
                    }),
                    Err(e) => echo(e),
                },
            }
        }
        Incoming::Login {
            who,
            password,
            tell_unknown,
            ..
        } => {
            // No account has a name this long: nothing to look up or keep.
            let max_name = shared.limits.get().max_name_chars + 12;
            if matches!(&who, Who::Name(n) if n.chars().count() > max_name) {
                return Some(echo(ChatError::new(
                    ErrorCode::InvalidCredentials,
                    "id or password is invalid",
                )));
            }
            let cred = credentials(hub, id, Some(who.clone())).await?;
            // Guesses at accounts that do not exist count against the name.
            let account = match (&cred, who) {
                (Some((u, _)), _) => Account::User(*u),
                (None, Who::Id(u)) => Account::User(u),
                (None, Who::Name(n)) => Account::Name(n.to_lowercase()),
            };
            let attempt = match shared.begin_attempt(account, link.peer) {
                Ok(a) => a,
                Err(e) => return Some(echo(e)),
            };
            let hash = cred.as_ref().map(|(_, h)| h.clone());
            let verdict = if password.len() <= shared.limits.get().max_password_bytes {
                shared.passwords.check(password, hash).await
            } else {
                Verdict::Wrong
            };
            match (shared.end_attempt(attempt, verdict, link.peer), cred) {
                (Ok(()), Some((user, hash))) => HubMsg::Input(Input::Login { id, user, hash }),
                (Err(e), _) if e.code == ErrorCode::Busy => echo(e),
                (_, None) if tell_unknown => echo(ChatError::new(
                    ErrorCode::UnknownUser,
                    "no such user; register first",
                )),
                (Err(e), _) => echo(e),
                (Ok(()), None) => echo(ChatError::new(
                    ErrorCode::InvalidCredentials,
                    "id or password is invalid",
                )),
            }
        }
        // The secret is hashed here, off the hub.
        Incoming::Resume { token, .. } => match crate::tokens::parse(&token) {
            Some(token) => HubMsg::Input(Input::Resume { id, token }),
            None => echo(ChatError::new(
                ErrorCode::InvalidToken,
                "this is not a session token; log in with the password",
            )),
        },
        Incoming::Passwd { old, new, .. } => {
            let cred = credentials(hub, id, None).await?;
            match cred {
                None => echo(ChatError::new(ErrorCode::NotLoggedIn, "log in first")),
                Some((me, old_hash)) => {
                    let ready = check_password(&new, &shared.limits.get())
                        .and_then(|_| match hub.storage_full() {
                            true => Err(storage_full()),
                            false => Ok(()),
                        })
                        .and_then(|_| shared.begin_attempt(Account::User(me), link.peer));
                    match ready {
                        Err(e) => echo(e),
                        Ok(attempt) => {
                            let v = shared.passwords.check(old, Some(old_hash.clone())).await;
                            match shared.end_attempt(attempt, v, link.peer) {
                                Err(e) if e.code == ErrorCode::InvalidCredentials => {
                                    echo(ChatError::new(
                                        ErrorCode::InvalidCredentials,
                                        "old password is invalid",
                                    ))
                                }
                                Err(e) => echo(e),
                                Ok(()) => match shared.passwords.hash(new).await {
                                    Ok(new_hash) => HubMsg::Input(Input::Request {
                                        id,
                                        cmd: Command::Passwd { old_hash, new_hash },
                                    }),
                                    Err(e) => echo(e),
                                },
                            }
                        }
                    }
                }
            }
        }
    };
    Some(msg)
}

/// Ask the hub for a login candidate's id and hash. None: the hub is gone.
pub(super) async fn credentials(
    hub: &HubHandle,
    id: SessionId,
    who: Option<dialect::Who>,
) -> Option<Option<(crate::ids::Uid, String)>> {
    hub.ask(|reply| HubMsg::Credentials { id, who, reply })
        .await
}
