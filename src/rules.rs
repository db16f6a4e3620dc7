//! The chat rules: who may do what, and which operations a command makes.
//!
//! [`decide`] reads the store, checks the command and returns the operations
//! to apply and the reply; it writes nothing and does no I/O, so every rule
//! can be tested with a temporary store and no sockets. The hub applies the
//! operations (through `apply::apply`), logs them and routes the effects.
//! Queries (friend lists, history, pending messages) live here too.

use crate::api::{
    fail, ChatError, Command, ErrorCode, FriendView, GroupView, MemberView, MsgView, Reply,
    RequestView, Roster, UserRef,
};
use crate::apply::{guest_display_name, has_name, is_registered};
use crate::config::{Limits, MAX_ACK_IDS};
use crate::ids::{guest_block, id_block, Clock, Gid, NodeId, Stamp, Uid, LOBBY};
use crate::model::{delivered_ops, Group, Link, Message, OpBody, Role, Target, User};
use crate::store::schema::{conv_direct, conv_group};
use crate::store::{merge::Merge, Store};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type Res<T> = Result<T, ChatError>;

/// Allocates user, guest and group ids from this node's blocks.
#[derive(Debug)]
pub struct IdAlloc {
    node: NodeId,
    next_user: u32,
    next_group: u32,
    next_guest: u32,
    users: std::ops::RangeInclusive<u32>,
    end: u32,
}

impl IdAlloc {
    pub fn new(s: &Store, node: NodeId) -> crate::store::Result<IdAlloc> {
        let block = id_block(node);
        let start = *block.start();
        let guests = guest_block(node);
        Ok(IdAlloc {
            node,
            next_user: s.max_uid(&block)?.map_or(start, |m| m + 1),
            next_group: s.max_gid(&block)?.map_or(start, |m| m + 1),
            next_guest: s.max_uid(&guests)?.map_or(*guests.start(), |m| m + 1),
            end: *block.end(),
            users: block,
        })
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether `u` is an id this node may give to a new account.
    pub fn owns_user_id(&self, u: Uid) -> bool {
        self.users.contains(&u.0)
    }

    /// The next free user id. Ids clients chose themselves (the Go
    /// chatroom's register) may sit anywhere in the block, so taken ones are
    /// skipped, and once the top is reached the search starts again from
    /// the bottom.
    fn user(&mut self, s: &Store) -> Res<Uid> {
        for _ in 0..2 {
            while self.next_user <= self.end {
                let id = Uid(self.next_user);
                self.next_user += 1;
                if s.user(id)?.is_none() {
                    return Ok(id);
                }
            }
            self.next_user = match s.first_free_uid(&self.users)? {
                Some(free) => free,
                None => break,
            };
        }
        fail(ErrorCode::LimitReached, "this node has no user ids left")
    }

    fn group(&mut self) -> Res<Gid> {
        if self.next_group > self.end {
            return fail(ErrorCode::LimitReached, "this node has no group ids left");
        }
        self.next_group += 1;
        Ok(Gid(self.next_group - 1))
    }

    fn guest(&mut self) -> Res<Uid> {
        if self.next_guest > *guest_block(self.node).end() {
            return fail(ErrorCode::LimitReached, "this node has no guest ids left");
        }
        self.next_guest += 1;
        Ok(Uid(self.next_guest - 1))
    }
}

/// Display names by user id, so routing a message does not decode a user
/// record each time. Forget a user when their name changes.
#[derive(Default)]
pub struct NameCache {
    names: HashMap<Uid, Arc<str>>,
}

impl NameCache {
    pub fn get(&mut self, s: &Store, u: Uid) -> Res<Arc<str>> {
        if let Some(n) = self.names.get(&u) {
            return Ok(n.clone());
        }
        let name: Arc<str> = match s.user(u)? {
            Some(user) if has_name(&user) => user.name.into(),
            _ => Arc::from(""),
        };
        if self.names.len() >= 100_000 {
            self.names.clear();
        }
        self.names.insert(u, name.clone());
        Ok(name)
    }

    pub fn forget(&mut self, u: Uid) {
        self.names.remove(&u);
    }

    pub fn view(&mut self, s: &Store, msg: Arc<Message>) -> Res<MsgView> {
        let from_name = self.get(s, msg.from)?;
        Ok(MsgView { msg, from_name })
    }
}

/// What `decide` needs besides the store.
pub struct Ctx<'a> {
    pub clock: &'a mut Clock,
    pub ids: &'a mut IdAlloc,
    pub names: &'a mut NameCache,
    pub limits: &'a Limits,
    /// Whether a user has a session anywhere.
    pub online: &'a dyn Fn(Uid) -> bool,
    /// Guests online anywhere (they are in the lobby while connected).
    pub guests_online: &'a dyn Fn() -> Vec<Uid>,
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
        let stamp = cx.clock.now();
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
fn looks_like_a_chat_id(name: &str) -> bool {
    let lower = name.to_lowercase();
    lower
        .strip_prefix("client")
        .map(|r| r.trim_start().trim_start_matches('#'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Longest name a guest keeps, in characters.
const GUEST_NAME_CHARS: usize = 32;

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
        Command::Contacts => {
            let me = logged_in(who)?;
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
            let groups = my_groups(s, me)?;
            Decision::reply(Reply::Contacts { friends, groups })
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
                .map(|body| (cx.clock.now(), body))
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
                    friend_room(s, cx, me)?;
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
            if s.edge(me, other.id)?.link == Link::Friends {
                return Decision::reply(them);
            }
            friend_room(s, cx, me)?;
            let mut d = link(cx, me, other.id, Link::Friends)?;
            d.reply = them;
            Ok(d)
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
    }
}

#[allow(clippy::too_many_arguments)]
/// Whom a message goes to.
enum Whom {
    Other(Target),
    /// The sender's own sessions (only the epoll chatroom asks for this).
    Myself,
}

fn send(
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
    let stamp = cx.clock.now();
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

fn other_user(s: &Store, me: Uid, user: Uid) -> Res<User> {
    if user == me {
        return fail(ErrorCode::SelfTarget, "you cannot befriend yourself");
    }
    registered(s, user)
}

fn link(cx: &mut Ctx, me: Uid, other: Uid, link: Link) -> Res<Decision> {
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

fn friend_room(s: &Store, cx: &Ctx, me: Uid) -> Res<()> {
    let n = s
        .edges(me)?
        .iter()
        .filter(|(_, e)| e.link != Link::None)
        .count();
    if n >= cx.limits.max_friends {
        return fail(
            ErrorCode::LimitReached,
            format!("at most {} friends and requests", cx.limits.max_friends),
        );
    }
    Ok(())
}

fn group_room(s: &Store, cx: &Ctx, u: Uid) -> Res<()> {
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

fn check_group_fields(name: Option<&str>, desc: Option<&str>, limits: &Limits) -> Res<()> {
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

fn add_member(s: &Store, cx: &mut Ctx, group: Gid, user: Uid, actor: Uid) -> Res<Decision> {
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
    let stamp = cx.clock.now();
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

fn set_role(
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

fn group_view(g: &Group, role: Option<Role>) -> GroupView {
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

fn members(s: &Store, cx: &mut Ctx, g: Gid) -> Res<Vec<MemberView>> {
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
fn search(s: &Store, q: &str, limits: &Limits) -> Res<Vec<UserRef>> {
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
fn search_groups(s: &Store, q: &str, limits: &Limits) -> Res<Vec<GroupView>> {
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

/// Most people connected under one guest name at once: the second `carol`
/// is `carol 2`, and so on.
const GUEST_NAME_SHARERS: u32 = 99;

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
                let op = (cx.clock.now(), OpBody::Guest { user, name });
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

/// The operation that makes `user` a lobby member, when the lobby exists
/// and they are not one yet.
pub fn join_lobby(s: &Store, cx: &mut Ctx, user: Uid) -> Res<Option<(Stamp, OpBody)>> {
    if active_group(s, LOBBY).is_err() || role_of(s, LOBBY, user)?.is_some() {
        return Ok(None);
    }
    let stamp = cx.clock.now();
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
    Ok(Some((cx.clock.now(), body)))
}

/// Friends and groups (with members) for the classic login reply.
pub fn roster(s: &Store, cx: &mut Ctx, me: Uid) -> Res<Roster> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::model::Op;
    use crate::store::StoreOptions;

    /// The rules and the merge function, driven like the hub drives them,
    /// without sockets.
    struct World {
        store: Store,
        clock: Clock,
        ids: IdAlloc,
        names: NameCache,
        limits: Limits,
        seq: u64,
        /// Who has a session.
        online: std::collections::HashSet<Uid>,
    }

    impl World {
        fn new() -> World {
            let store = Store::open(StoreOptions::temporary()).unwrap();
            let ids = IdAlloc::new(&store, 1).unwrap();
            World {
                store,
                clock: Clock::new(1),
                ids,
                names: NameCache::default(),
                limits: Limits::default(),
                seq: 0,
                online: Default::default(),
            }
        }

        fn run(&mut self, who: Option<Uid>, cmd: Command) -> Res<Reply> {
            let d = self.with_cx(|s, cx| decide(s, cx, who, cmd))?;
            self.apply_ops(d.ops);
            Ok(d.reply)
        }

        fn user(&mut self, name: &str) -> Uid {
            match self.run(
                None,
                Command::Register {
                    name: name.into(),
                    hash: "h".into(),
                    id: None,
                },
            ) {
                Ok(Reply::Registered(u)) => u.id,
                other => panic!("{other:?}"),
            }
        }

        fn code(&mut self, who: Uid, cmd: Command) -> ErrorCode {
            self.run(Some(who), cmd).expect_err("should fail").code
        }
    }

    #[test]
    fn group_permissions() {
        let mut w = World::new();
        let (creator, admin, member, outsider) =
            (w.user("c"), w.user("a"), w.user("m"), w.user("o"));
        let g = match w.run(
            Some(creator),
            Command::GroupCreate {
                name: "g".into(),
                desc: String::new(),
            },
        ) {
            Ok(Reply::Group(g)) => g.id,
            other => panic!("{other:?}"),
        };
        for u in [admin, member] {
            w.run(Some(u), Command::GroupJoin { group: g }).unwrap();
        }
        w.run(
            Some(creator),
            Command::GroupRole {
                group: g,
                user: admin,
                admin: true,
            },
        )
        .unwrap();
        let kick = |user| Command::GroupKick { group: g, user };
        assert_eq!(w.code(member, kick(admin)), ErrorCode::Forbidden);
        assert_eq!(w.code(admin, kick(creator)), ErrorCode::Forbidden);
        assert_eq!(w.code(outsider, kick(member)), ErrorCode::NotMember);
        assert_eq!(w.code(admin, kick(admin)), ErrorCode::SelfTarget);
        assert_eq!(
            w.code(admin, Command::GroupDissolve { group: g }),
            ErrorCode::Forbidden
        );
        assert_eq!(
            w.code(creator, Command::GroupLeave { group: g }),
            ErrorCode::CreatorCannotLeave
        );
        let send = Command::Send {
            to: Target::Group(g),
            text: "hi".into(),
            cid: None,
            time: None,
        };
        assert_eq!(w.code(outsider, send.clone()), ErrorCode::NotMember);
        w.run(Some(admin), kick(member)).unwrap();
        assert_eq!(w.code(member, send.clone()), ErrorCode::NotMember);
        w.run(Some(creator), Command::GroupDissolve { group: g })
            .unwrap();
        assert_eq!(w.code(creator, send), ErrorCode::UnknownGroup);
    }

    #[test]
    fn pending_follows_cursors_and_membership() {
        let mut w = World::new();
        let (a, b) = (w.user("a"), w.user("b"));
        let mut ids = Vec::new();
        for i in 0..5 {
            match w.run(
                Some(a),
                Command::Send {
                    to: Target::User(b),
                    text: format!("m{i}"),
                    cid: None,
                    time: None,
                },
            ) {
                Ok(Reply::Sent { id, .. }) => ids.push(id),
                other => panic!("{other:?}"),
            }
        }
        let texts = |w: &World| -> Vec<String> {
            pending(&w.store, b, None, 100, &BTreeMap::new())
                .unwrap()
                .iter()
                .map(|m| m.text.clone())
                .collect()
        };
        assert_eq!(texts(&w), ["m0", "m1", "m2", "m3", "m4"]);
        w.run(Some(b), Command::Ack { ids: vec![ids[2]] }).unwrap();
        assert_eq!(texts(&w), ["m3", "m4"], "an ack covers earlier messages");
        // Paging.
        let page = pending(&w.store, b, Some(ids[3]), 100, &BTreeMap::new()).unwrap();
        assert_eq!(page.len(), 1);
        // A group joined later: only messages after joining are pending.
        let g = match w.run(
            Some(a),
            Command::GroupCreate {
                name: "g".into(),
                desc: String::new(),
            },
        ) {
            Ok(Reply::Group(g)) => g.id,
            other => panic!("{other:?}"),
        };
        let group_send = |text: &str| Command::Send {
            to: Target::Group(g),
            text: text.into(),
            cid: None,
            time: None,
        };
        w.run(Some(a), group_send("before")).unwrap();
        w.run(Some(b), Command::GroupJoin { group: g }).unwrap();
        w.run(Some(a), group_send("after")).unwrap();
        assert_eq!(texts(&w), ["m3", "m4", "after"]);
        // Own messages are never pending for oneself.
        w.run(Some(b), group_send("mine")).unwrap();
        assert_eq!(texts(&w), ["m3", "m4", "after"]);
    }

    #[test]
    fn acks_from_the_future_are_ignored() {
        let mut w = World::new();
        let b = w.user("b");
        let future = Stamp((crate::ids::wall_millis() + 3_600_000) << 22 | 1);
        match w.run(Some(b), Command::Ack { ids: vec![future] }) {
            Ok(Reply::Acked { count }) => assert_eq!(count, 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.store.cursor(b, 1).unwrap(), Stamp::ZERO);
    }

    impl World {
        fn apply_ops(&mut self, ops: Vec<(Stamp, OpBody)>) {
            for (stamp, body) in ops {
                self.seq += 1;
                let op = Op {
                    origin: 1,
                    seq: self.seq,
                    stamp,
                    body,
                };
                apply(&mut self.store, &op).unwrap();
            }
        }

        fn with_cx<R>(&mut self, f: impl FnOnce(&Store, &mut Ctx) -> R) -> R {
            let on = &self.online;
            let online = |u| on.contains(&u);
            let guests = Vec::new;
            let mut cx = Ctx {
                clock: &mut self.clock,
                ids: &mut self.ids,
                names: &mut self.names,
                limits: &self.limits,
                online: &online,
                guests_online: &guests,
            };
            f(&self.store, &mut cx)
        }

        fn chosen(&mut self, name: &str, id: u32) -> Res<Reply> {
            self.run(
                None,
                Command::Register {
                    name: name.into(),
                    hash: "h".into(),
                    id: Some(Uid(id)),
                },
            )
        }

        fn guest(&mut self, name: &str) -> Uid {
            let (u, op) = self
                .with_cx(|s, cx| guest_login(s, cx, name, true))
                .unwrap();
            self.apply_ops(op.into_iter().collect());
            u.id
        }
    }

    #[test]
    fn chosen_ids_are_kept_and_skipped() {
        let mut w = World::new();
        assert!(matches!(w.chosen("two", 2), Ok(Reply::Registered(u)) if u.id == Uid(2)));
        assert_eq!(w.user("a"), Uid(1));
        assert_eq!(w.user("b"), Uid(3), "a chosen id is never handed out again");
        assert_eq!(w.chosen("again", 2).unwrap_err().code, ErrorCode::IdTaken);
        assert_eq!(w.chosen("two", 9).unwrap_err().code, ErrorCode::NameTaken);
        let other_node = *id_block(2).start();
        assert_eq!(
            w.chosen("far", other_node).unwrap_err().code,
            ErrorCode::BadRequest
        );
        // The top of the block chosen: after a restart, allocation finds
        // the free ids below it.
        let top = *id_block(1).end();
        assert!(w.chosen("top", top).is_ok());
        w.ids = IdAlloc::new(&w.store, 1).unwrap();
        assert_eq!(w.user("c"), Uid(4));
    }

    #[test]
    fn guests_chat_in_the_lobby_and_nowhere_else() {
        let mut w = World::new();
        let lobby = w.with_cx(|s, cx| ensure_lobby(s, cx, "lobby")).unwrap();
        w.apply_ops(lobby.into_iter().collect());
        assert!(
            w.with_cx(|s, cx| ensure_lobby(s, cx, "lobby"))
                .unwrap()
                .is_none(),
            "made once"
        );
        let carol = w.guest("carol");
        assert!(carol.is_guest());
        assert_eq!(w.guest("carol"), carol, "a name keeps its guest");
        // Someone else under the same name while carol is here: carol 2.
        w.online.insert(carol);
        let carol2 = w.guest("carol");
        assert_ne!(carol2, carol);
        assert_eq!(&*w.names.get(&w.store, carol2).unwrap(), "carol 2 (guest)");
        w.online.insert(carol2);
        assert_ne!(w.guest("carol"), carol2);
        w.online.clear();
        assert_eq!(w.guest("carol"), carol, "and carol again once she left");
        let dave = w.guest("dave");
        assert_ne!(dave, carol);
        let erin = w.user("erin");
        let to_lobby = |text: &str| Command::Send {
            to: Target::Group(LOBBY),
            text: text.into(),
            cid: None,
            time: None,
        };
        assert!(w.run(Some(carol), to_lobby("hi")).is_ok());
        // A user must join first; a guest may not do anything else.
        assert_eq!(w.code(erin, to_lobby("hi")), ErrorCode::NotMember);
        assert_eq!(
            w.code(
                carol,
                Command::FriendRequest {
                    user: erin,
                    text: String::new()
                }
            ),
            ErrorCode::Forbidden
        );
        assert_eq!(
            w.code(carol, Command::GroupJoin { group: LOBBY }),
            ErrorCode::Forbidden
        );
        let dm = |to: Uid| Command::Send {
            to: Target::User(to),
            text: "psst".into(),
            cid: None,
            time: None,
        };
        assert_eq!(w.code(carol, dm(erin)), ErrorCode::Forbidden);
        assert_eq!(w.code(erin, dm(carol)), ErrorCode::Forbidden);
        assert!(w.run(Some(carol), dm(dave)).is_ok(), "guests may whisper");
        assert_eq!(
            w.code(
                erin,
                Command::FriendRequest {
                    user: carol,
                    text: String::new()
                }
            ),
            ErrorCode::UnknownUser
        );
        // The shown name marks the guest.
        assert_eq!(&*w.names.get(&w.store, carol).unwrap(), "carol (guest)");
    }
}
