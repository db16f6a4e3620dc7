//! The chat rules: who may do what, and which operations a command makes.
//!
//! [`decide`] reads the store, checks the command and returns the operations
//! to apply and the reply; it writes nothing and does no I/O, so every rule
//! can be tested with a temporary store and no sockets. The hub applies the
//! operations (through `apply::apply`), logs them and routes the effects.
//! Queries (friend lists, history, pending messages) live here too.
//!
//! One file per domain: `accounts`, `friends`, `groups`, `messages`,
//! `queries`. [`decide`] sends each command to its domain (the match is
//! exhaustive, so a new command must be given one). The time comes in as
//! [`Ctx::now_ms`]: the rules read no clock, so a test gives any time it
//! likes.

mod accounts;
mod friends;
mod groups;
mod messages;
mod queries;
mod state;
#[cfg(test)]
mod tests;

pub use accounts::*;
pub use groups::*;
pub use queries::*;
pub use state::{IdAlloc, NameCache};

use crate::api::MAX_ACK_IDS;
use crate::api::{
    fail, ChatError, Command, ErrorCode, FriendView, GroupView, MemberView, MsgView, Reply,
    RequestView, Roster, UserRef,
};
use crate::apply::{guest_display_name, has_name, is_registered};
use crate::config::Limits;
use crate::ids::{guest_block, id_block, Clock, Gid, NodeId, Stamp, Uid, LOBBY};
use crate::model::{delivered_ops, Group, Link, Message, OpBody, Role, Target, User};
use crate::store::schema::{conv_direct, conv_group};
use crate::store::{merge::Merge, Store};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type Res<T> = Result<T, ChatError>;

/// What `decide` needs besides the store.
pub struct Ctx<'a> {
    /// The wall clock's time, read once by the caller: the rules read no
    /// clock of their own.
    pub now_ms: u64,
    pub clock: &'a mut Clock,
    pub ids: &'a mut IdAlloc,
    pub names: &'a mut NameCache,
    pub limits: &'a Limits,
    /// Whether a user has a session anywhere.
    pub online: &'a dyn Fn(Uid) -> bool,
    /// Guests online anywhere (they are in the lobby while connected).
    pub guests_online: &'a dyn Fn() -> Vec<Uid>,
}

impl Ctx<'_> {
    /// The stamp for a new operation, at `now_ms`.
    fn stamp(&mut self) -> Stamp {
        self.clock.now_at(self.now_ms)
    }
}

/// The operations a command makes (each with its stamp) and the reply.
#[derive(Debug)]
pub struct Decision {
    pub ops: Vec<(Stamp, OpBody)>,
    pub reply: Reply,
}

impl Decision {
    fn reply(reply: Reply) -> Res<Decision> {
        Ok(Decision {
            ops: Vec::new(),
            reply,
        })
    }

    fn op(cx: &mut Ctx, body: OpBody, reply: Reply) -> Res<Decision> {
        let stamp = cx.stamp();
        Ok(Decision {
            ops: vec![(stamp, body)],
            reply,
        })
    }
}

fn logged_in(who: Option<Uid>) -> Res<Uid> {
    who.ok_or_else(|| ChatError::new(ErrorCode::NotLoggedIn, "log in first"))
}

/// A registered user, or `unknown_user`.
pub fn registered(s: &Store, u: Uid) -> Res<User> {
    match s.user(u)? {
        Some(user) if is_registered(&user) => Ok(user),
        _ => fail(ErrorCode::UnknownUser, format!("no user with id {u}")),
    }
}

/// A group that exists and is not dissolved, or `unknown_group`.
fn active_group(s: &Store, g: Gid) -> Res<Group> {
    match s.group(g)? {
        Some(group) if group.created != Stamp::ZERO && !group.dissolved => Ok(group),
        _ => fail(ErrorCode::UnknownGroup, format!("no group with id {g}")),
    }
}

fn role_of(s: &Store, g: Gid, u: Uid) -> Res<Option<Role>> {
    Ok(s.member(g, u)?.and_then(|m| m.role))
}

fn member_role(s: &Store, g: Gid, u: Uid) -> Res<Role> {
    role_of(s, g, u)?
        .ok_or_else(|| ChatError::new(ErrorCode::NotMember, format!("you are not in group {g}")))
}

/// A name or label: trimmed, not empty, no control characters, not too long.
fn check_text_field(
    value: &str,
    what: &str,
    max_chars: usize,
    code: ErrorCode,
    allow_empty: bool,
) -> Res<()> {
    if !allow_empty && value.trim().is_empty() {
        return fail(code, format!("{what} must not be empty"));
    }
    if value.chars().count() > max_chars {
        return fail(
            code,
            format!("{what} is longer than {max_chars} characters"),
        );
    }
    if value.chars().any(char::is_control) {
        return fail(code, format!("{what} must not contain control characters"));
    }
    Ok(())
}

/// What a guest may ask for: to chat, and nothing else.
fn guest_may(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Ping | Command::Logout | Command::Send { .. } | Command::SendToGuest { .. }
    )
}

pub fn decide(s: &Store, cx: &mut Ctx, who: Option<Uid>, cmd: Command) -> Res<Decision> {
    if who.is_some_and(Uid::is_guest) && !guest_may(&cmd) {
        return fail(
            ErrorCode::Forbidden,
            "guests may only chat in the lobby; register an account for the rest",
        );
    }
    match cmd {
        c @ (Command::Register { .. }
        | Command::GuestLogin { .. }
        | Command::Pending
        | Command::Passwd { .. }
        | Command::Ping
        | Command::Logout) => accounts::account_command(s, cx, who, c),
        c @ (Command::SendToGuest { .. }
        | Command::Send { .. }
        | Command::Ack { .. }
        | Command::History { .. }) => messages::message_command(s, cx, who, c),
        c @ (Command::FriendRequest { .. }
        | Command::FriendAccept { .. }
        | Command::FriendDecline { .. }
        | Command::FriendRemove { .. }
        | Command::FriendRemark { .. }
        | Command::FriendAdd { .. }) => friends::friend_command(s, cx, who, c),
        c @ (Command::GroupCreate { .. }
        | Command::GroupJoin { .. }
        | Command::GroupInvite { .. }
        | Command::GroupLeave { .. }
        | Command::GroupKick { .. }
        | Command::GroupRole { .. }
        | Command::GroupUpdate { .. }
        | Command::GroupDissolve { .. }) => groups::group_command(s, cx, who, c),
        c @ (Command::Contacts
        | Command::Friends
        | Command::Search { .. }
        | Command::Groups
        | Command::GroupMembers { .. }) => queries::query_command(s, cx, who, c),
    }
}
