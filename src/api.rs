//! The vocabulary shared by every client dialect: what a client may ask
//! ([`Command`]), what it is answered ([`Reply`]), what it is told unasked
//! ([`Event`]), and the typed errors ([`ErrorCode`]). Dialects translate their
//! wire format to and from these types; the hub and the rules speak only these.

use crate::ids::{Gid, MsgId, Uid};
use crate::model::{Message, Role, Target};
use std::fmt;
use std::sync::Arc;

/// How a login names its user.
/// Most message ids one acknowledgement may carry.
pub const MAX_ACK_IDS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Id(Uid),
    Name(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `hash` is the argon2id hash of the password, computed off the hub.
    /// `id` is an id the client chose (the Go chatroom's register); `None`
    /// lets this node allocate one.
    Register {
        name: String,
        hash: String,
        id: Option<Uid>,
    },
    /// Enter the lobby as a guest (no account, no password) called `name`.
    GuestLogin {
        name: String,
    },
    Logout,
    /// `old_hash` is the hash the old password was checked against.
    Passwd {
        old_hash: String,
        new_hash: String,
    },
    Ping,
    Send {
        to: Target,
        text: String,
        cid: Option<String>,
        time: Option<String>,
    },
    Ack {
        ids: Vec<MsgId>,
    },
    History {
        with: Target,
        before: Option<MsgId>,
        limit: Option<u32>,
    },
    FriendRequest {
        user: Uid,
        text: String,
    },
    FriendAccept {
        user: Uid,
    },
    FriendDecline {
        user: Uid,
    },
    FriendRemove {
        user: Uid,
    },
    FriendRemark {
        user: Uid,
        remark: String,
    },
    /// The classic dialect's ADD_FRIEND: befriend at once (that protocol has
    /// no way to accept a request).
    FriendAdd {
        user: Uid,
    },
    Friends,
    /// Friends and groups together, in one list.
    Contacts,
    /// Users (and, when asked, groups) whose id is the query or whose
    /// name contains it.
    Search {
        query: String,
        users: bool,
        groups: bool,
    },
    /// A private message to the guest called `name` on this node, who must
    /// be here now.
    SendToGuest {
        name: String,
        text: String,
    },
    /// The messages waiting for the user, in a reply (for clients that ask
    /// for them rather than being sent them at login).
    Pending,
    GroupCreate {
        name: String,
        desc: String,
    },
    GroupJoin {
        group: Gid,
    },
    GroupLeave {
        group: Gid,
    },
    GroupInvite {
        group: Gid,
        user: Uid,
    },
    GroupKick {
        group: Gid,
        user: Uid,
    },
    GroupRole {
        group: Gid,
        user: Uid,
        admin: bool,
    },
    GroupUpdate {
        group: Gid,
        name: Option<String>,
        desc: Option<String>,
    },
    GroupDissolve {
        group: Gid,
    },
    Groups,
    GroupMembers {
        group: Gid,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRef {
    pub id: Uid,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FriendView {
    pub id: Uid,
    pub name: String,
    pub remark: String,
    pub online: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestView {
    pub id: Uid,
    pub name: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub id: Gid,
    pub name: String,
    pub desc: String,
    pub creator: Uid,
    /// The asking user's role, if a member.
    pub role: Option<Role>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: Uid,
    pub name: String,
    pub role: Role,
    pub online: bool,
}

/// A message as clients see it: the stored message plus its sender's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsgView {
    pub msg: Arc<Message>,
    pub from_name: Arc<str>,
}

/// What a session needs to be served well, set by its dialect and read by
/// the hub: data, so the hub never needs to know which dialect it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionTraits {
    /// Friends and groups with members belong in the login reply.
    pub roster_in_login: bool,
    /// The lobby's online participants belong in the login reply.
    pub room_in_login: bool,
    /// Pending messages are sent right after login (otherwise the client
    /// asks for them with `Pending`).
    pub replay_at_login: bool,
    /// The user joins the lobby at login if not a member yet.
    pub joins_lobby: bool,
    /// Receives the lobby's messages without being a member (guests).
    pub room: bool,
    /// Told when a lobby participant comes or goes.
    pub room_presence: bool,
    /// Wants to know when a group message reached nobody who is online.
    pub report_alone: bool,
    /// The client never pings: not closed for silence.
    pub idle_exempt: bool,
    /// A login hands out a session token, and `resume` takes one.
    pub tokens: bool,
}

impl SessionTraits {
    pub fn to_bits(self) -> u16 {
        [
            self.roster_in_login,
            self.room_in_login,
            self.replay_at_login,
            self.joins_lobby,
            self.room,
            self.room_presence,
            self.report_alone,
            self.idle_exempt,
            self.tokens,
        ]
        .iter()
        .enumerate()
        .fold(0, |acc, (i, b)| acc | (u16::from(*b) << i))
    }

    pub fn from_bits(v: u16) -> SessionTraits {
        let b = |i: u16| v & (1 << i) != 0;
        SessionTraits {
            roster_in_login: b(0),
            room_in_login: b(1),
            replay_at_login: b(2),
            joins_lobby: b(3),
            room: b(4),
            room_presence: b(5),
            report_alone: b(6),
            idle_exempt: b(7),
            tokens: b(8),
        }
    }
}

/// What the classic login reply lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster {
    pub friends: Vec<FriendView>,
    pub groups: Vec<(GroupView, Vec<MemberView>)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Registered(UserRef),
    LoggedIn {
        user: UserRef,
        sessions: usize,
        /// Boxed: see `a_reply_stays_small`.
        roster: Option<Box<Roster>>,
        /// Users online in the lobby (for `room_in_login` sessions).
        room: Option<Vec<Uid>>,
        /// A new session token (for `tokens` sessions; a resume gets one
        /// only when its token is past half its lifetime).
        token: Option<String>,
    },
    LoggedOut,
    Ok,
    Pong,
    Sent {
        id: MsgId,
        cid: Option<String>,
        duplicate: bool,
        /// Nobody else in the group was online (for `report_alone` sessions).
        alone: bool,
    },
    Acked {
        count: usize,
    },
    History {
        messages: Vec<MsgView>,
        more: bool,
    },
    Friends {
        friends: Vec<FriendView>,
        incoming: Vec<RequestView>,
        outgoing: Vec<UserRef>,
    },
    Users {
        users: Vec<UserRef>,
        groups: Vec<GroupView>,
    },
    /// Friends and the user's groups (`Contacts`).
    Contacts {
        friends: Vec<FriendView>,
        groups: Vec<GroupView>,
    },
    Group(GroupView),
    /// Joined this group.
    Joined(GroupView),
    /// Now friends with this user (the classic and sponge "add friend").
    Befriended(UserRef),
    /// Messages that were waiting (`Pending`), oldest first; `more` when
    /// others follow as pushes.
    Pending {
        messages: Vec<MsgView>,
        more: bool,
    },
    Groups(Vec<GroupView>),
    Members {
        group: Gid,
        members: Vec<MemberView>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupChange {
    Joined,
    Left,
    Invited,
    Kicked,
    Promoted,
    Demoted,
    Updated,
    Dissolved,
}

impl GroupChange {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupChange::Joined => "joined",
            GroupChange::Left => "left",
            GroupChange::Invited => "invited",
            GroupChange::Kicked => "kicked",
            GroupChange::Promoted => "promoted",
            GroupChange::Demoted => "demoted",
            GroupChange::Updated => "updated",
            GroupChange::Dissolved => "dissolved",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Message(MsgView),
    Presence {
        user: UserRef,
        online: bool,
    },
    FriendRequest {
        from: UserRef,
        text: String,
    },
    /// A friendship began with `user`; `by_you` when this user's own
    /// request made it (its reply said so already).
    FriendAdded {
        user: UserRef,
        by_you: bool,
    },
    FriendRemoved(UserRef),
    FriendDeclined(UserRef),
    Group {
        group: Gid,
        change: GroupChange,
        user: Uid,
        by: Uid,
        name: Option<String>,
        desc: Option<String>,
    },
    /// Someone in the lobby came online or went offline.
    RoomPresence {
        user: UserRef,
        online: bool,
    },
    Notice {
        text: String,
    },
    /// The server is about to close the connection.
    Bye {
        reason: ErrorCode,
    },
    /// An error not tied to one request (bad framing, idle timeout, flooding).
    Error(ChatError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadJson,
    TooLarge,
    NotObject,
    BadUtf8,
    UnknownType,
    BadRequest,
    NotLoggedIn,
    InvalidCredentials,
    InvalidToken,
    Banned,
    NameTaken,
    IdTaken,
    InvalidName,
    InvalidPassword,
    UnknownUser,
    UnknownGroup,
    NotMember,
    AlreadyMember,
    Forbidden,
    CreatorCannotLeave,
    EmptyText,
    TextTooLong,
    TooManySessions,
    LimitReached,
    NoRequest,
    AlreadyFriends,
    NotFriends,
    SelfTarget,
    RateLimited,
    TooManyAttempts,
    IdleTimeout,
    LoginTimeout,
    SlowConsumer,
    Busy,
    StorageFull,
    Kicked,
    AccountDeleted,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotObject => "not_object",
            ErrorCode::BadUtf8 => "bad_utf8",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::Banned => "banned",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::IdTaken => "id_taken",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidPassword => "invalid_password",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::UnknownGroup => "unknown_group",
            ErrorCode::NotMember => "not_member",
            ErrorCode::AlreadyMember => "already_member",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::CreatorCannotLeave => "creator_cannot_leave",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::NoRequest => "no_request",
            ErrorCode::AlreadyFriends => "already_friends",
            ErrorCode::NotFriends => "not_friends",
            ErrorCode::SelfTarget => "self_target",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::LoginTimeout => "login_timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::Busy => "busy",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Kicked => "kicked",
            ErrorCode::AccountDeleted => "account_deleted",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A typed error with a message a user can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatError {
    pub code: ErrorCode,
    pub message: String,
    /// When trying again can succeed (`too_many_attempts`).
    pub retry_after: Option<std::time::Duration>,
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ChatError {
        ChatError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, saying when to try again.
    pub fn retry_after(mut self, after: std::time::Duration) -> ChatError {
        self.retry_after = Some(after);
        self
    }
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// Shorthand for building an `Err(ChatError)`.
pub fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, ChatError> {
    Err(ChatError::new(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reply is boxed by the hub's thread and freed by a session's:
    /// glibc frees a block of up to 128 bytes that another thread made
    /// without taking that thread's arena lock, and a larger one with it.
    /// Past 128 bytes, every reply contends for the hub's arena (measured:
    /// twice the futex calls per message, 10-15% fewer messages/s). Box a
    /// large field of a rare variant instead of growing this.
    #[test]
    fn a_reply_stays_small() {
        let size = std::mem::size_of::<Result<Reply, ChatError>>();
        assert!(size <= 128, "Result<Reply, ChatError> is {size} bytes");
    }
}
