//! The vocabulary shared by every client dialect: what a client may ask
//! ([`Command`]), what it is answered ([`Reply`]), what it is told unasked
//! ([`Event`]), and the typed errors ([`ErrorCode`]). Dialects translate their
//! wire format to and from these types; the hub and the rules speak only these.

use crate::ids::{Gid, MsgId, Uid};
use crate::model::{Message, Role, Target};
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `hash` is the argon2id hash of the password, computed off the hub.
    Register {
        name: String,
        hash: String,
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
    Search {
        query: String,
    },
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
        roster: Option<Roster>,
    },
    LoggedOut,
    Ok,
    Pong,
    Sent {
        id: MsgId,
        cid: Option<String>,
        duplicate: bool,
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
    Users(Vec<UserRef>),
    Group(GroupView),
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
    FriendAdded(UserRef),
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
    Banned,
    NameTaken,
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
    IdleTimeout,
    SlowConsumer,
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
            ErrorCode::Banned => "banned",
            ErrorCode::NameTaken => "name_taken",
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
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
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
}

impl ChatError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ChatError {
        ChatError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl From<crate::store::StoreError> for ChatError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "storage failure while handling a request");
        ChatError::new(ErrorCode::Internal, "internal storage error")
    }
}

/// Shorthand for building an `Err(ChatError)`.
pub fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, ChatError> {
    Err(ChatError::new(code, message))
}
