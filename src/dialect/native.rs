//! chatd's own protocol: newline-terminated JSON objects with a `"type"`
//! over TCP, one JSON object per text frame over WebSocket (`Dialect::Web`).
//! proto.md documents every request, reply and push.
//!
//! Message ids are 64-bit. Over WebSocket they are sent as decimal strings,
//! which a browser's `JSON.parse` keeps exact (it rounds numbers past
//! 2^53); over TCP they stay numbers, as existing clients expect. Requests
//! accept either form everywhere.

use super::fields::Fields;
use super::{Frames, Incoming, ReqCtx, ReqId, Who};
use crate::api::MAX_ACK_IDS;
use crate::api::{
    ChatError, Command, ErrorCode, Event, FriendView, GroupView, MemberView, MsgView, Reply,
    RequestView, UserRef,
};
use crate::ids::{Gid, Stamp, Uid};
use crate::model::Target;
use serde::Serialize;
use serde_json::{Map, Value};

fn req_id(map: &Map<String, Value>) -> Result<Option<ReqId>, ChatError> {
    match map.get("req") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64().map(ReqId::Num)),
        Some(Value::String(s)) if s.len() <= 64 => Ok(Some(ReqId::Str(s.as_str().into()))),
        Some(_) => Err(ChatError::new(
            ErrorCode::BadRequest,
            "field \"req\" must be an integer or a string of at most 64 bytes",
        )),
    }
}

/// How message ids are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ids {
    Numbers,
    /// Decimal strings, for JavaScript clients.
    Strings,
}

/// The two requests every message makes, `send` and the recipient's `ack`,
/// read straight into their fields. Only these fields are taken, each in
/// the one form the general path reads the same way; whatever else a value
/// holds makes it go the general way.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Fast<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    req: Option<i64>,
    to: Option<u32>,
    group: Option<u32>,
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    cid: Option<std::borrow::Cow<'a, str>>,
    ids: Option<Vec<u64>>,
}

/// [`decode`] of a `send` or an `ack`, without building a JSON map; `None`
/// for anything else or anything unusual, which [`decode`] then reads. The
/// result is the same (a test compares them).
pub fn decode_fast(bytes: &[u8], web: bool) -> Option<Incoming> {
    // serde reads a struct from an array too; a request is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let f: Fast = serde_json::from_slice(bytes).ok()?;
    let req = f.req.map(ReqId::Num);
    let ctx = match web {
        true => ReqCtx::Web { req },
        false => ReqCtx::Native { req },
    };
    let id = |n: u32| super::fields::is_id(n.into());
    let command = match &*f.ty {
        "send" => Command::Send {
            to: match (f.to, f.group) {
                (Some(u), None) if id(u) => Target::User(Uid(u)),
                (None, Some(g)) if id(g) => Target::Group(Gid(g)),
                _ => return None,
            },
            text: f.text?.into_owned(),
            cid: f.cid.map(|c| c.into_owned()),
            time: None,
        },
        "ack" => {
            let ids = f.ids?;
            if ids.len() > MAX_ACK_IDS {
                return None;
            }
            Command::Ack {
                ids: ids.into_iter().map(Stamp).collect(),
            }
        }
        _ => return None,
    };
    Some(Incoming::Command(ctx, command))
}

/// `web`: the request came over WebSocket (its replies carry ids as strings).
pub fn decode(map: Map<String, Value>, web: bool) -> Incoming {
    let ctx_of = |req| match web {
        true => ReqCtx::Web { req },
        false => ReqCtx::Native { req },
    };
    let req = match req_id(&map) {
        Ok(r) => r,
        Err(e) => return Incoming::Invalid(ctx_of(None), e),
    };
    let ctx = ctx_of(req);
    match decode_body(&Fields(&map), ctx.clone()) {
        Ok(i) => i,
        Err(e) => Incoming::Invalid(ctx, e),
    }
}

/// `"to"`/`"with"` (a user) or `"group"`: exactly one of them.
fn target(f: &Fields, user_key: &str) -> Result<Target, ChatError> {
    match (f.opt_id(user_key)?, f.opt_id("group")?) {
        (Some(u), None) => Ok(Target::User(Uid(u))),
        (None, Some(g)) => Ok(Target::Group(Gid(g))),
        _ => Err(ChatError::new(
            ErrorCode::BadRequest,
            format!("give either \"{user_key}\" (a user id) or \"group\" (a group id)"),
        )),
    }
}

fn decode_body(f: &Fields, ctx: ReqCtx) -> Result<Incoming, ChatError> {
    let ty = match f.0.get("type") {
        Some(Value::String(t)) => t.as_str(),
        _ => {
            return Err(ChatError::new(
                ErrorCode::UnknownType,
                "a request needs a \"type\" string (or a classic \"msgid\")",
            ))
        }
    };
    let cmd = |c: Command| Ok(Incoming::Command(ctx.clone(), c));
    let user = || f.id("user").map(Uid);
    let group = || f.id("group").map(Gid);
    match ty {
        "register" => Ok(Incoming::Register {
            ctx: ctx.clone(),
            name: f.str("name")?.to_string(),
            password: f.str("password")?.to_string(),
            id: None,
        }),
        "login" => {
            let who = match (f.opt_id("id")?, f.opt_str("name")?) {
                (Some(id), None) => Who::Id(Uid(id)),
                (None, Some(n)) => Who::Name(n.to_string()),
                _ => {
                    return Err(ChatError::new(
                        ErrorCode::BadRequest,
                        "give either \"id\" or \"name\"",
                    ))
                }
            };
            Ok(Incoming::Login {
                ctx: ctx.clone(),
                who,
                password: f.str("password")?.to_string(),
                tell_unknown: false,
            })
        }
        "resume" => Ok(Incoming::Resume {
            ctx: ctx.clone(),
            token: f.str("token")?.to_string(),
        }),
        "passwd" => Ok(Incoming::Passwd {
            ctx: ctx.clone(),
            old: f.str("old")?.to_string(),
            new: f.str("new")?.to_string(),
        }),
        "logout" => cmd(Command::Logout),
        "ping" => cmd(Command::Ping),
        // `send` and `ack` are also read by `decode_fast`: what is checked
        // here is checked there.
        "send" => cmd(Command::Send {
            to: target(f, "to")?,
            text: f.str("text")?.to_string(),
            cid: f.opt_str("cid")?.map(str::to_string),
            time: None,
        }),
        "ack" => cmd(Command::Ack {
            ids: f
                .u64_list("ids", MAX_ACK_IDS)?
                .into_iter()
                .map(Stamp)
                .collect(),
        }),
        "history" => cmd(Command::History {
            with: target(f, "with")?,
            before: f.opt_u64("before")?.map(Stamp),
            limit: f
                .opt_u64("limit")?
                .map(|l| l.min(u64::from(u32::MAX)) as u32),
        }),
        "friend_request" => cmd(Command::FriendRequest {
            user: user()?,
            text: f.opt_str("text")?.unwrap_or_default().to_string(),
        }),
        "friend_accept" => cmd(Command::FriendAccept { user: user()? }),
        "friend_decline" => cmd(Command::FriendDecline { user: user()? }),
        "friend_remove" => cmd(Command::FriendRemove { user: user()? }),
        "friend_remark" => cmd(Command::FriendRemark {
            user: user()?,
            remark: f.str("remark")?.to_string(),
        }),
        "friends" => cmd(Command::Friends),
        "search" => cmd(Command::Search {
            query: f.str("query")?.to_string(),
            users: true,
            groups: false,
        }),
        "group_create" => cmd(Command::GroupCreate {
            name: f.str("name")?.to_string(),
            desc: f.opt_str("desc")?.unwrap_or_default().to_string(),
        }),
        "group_join" => cmd(Command::GroupJoin { group: group()? }),
        "group_leave" => cmd(Command::GroupLeave { group: group()? }),
        "group_invite" => cmd(Command::GroupInvite {
            group: group()?,
            user: user()?,
        }),
        "group_kick" => cmd(Command::GroupKick {
            group: group()?,
            user: user()?,
        }),
        "group_role" => {
            let admin = match f.str("role")? {
                "admin" => true,
                "member" => false,
                _ => {
                    return Err(ChatError::new(
                        ErrorCode::BadRequest,
                        "field \"role\" must be \"admin\" or \"member\"",
                    ))
                }
            };
            cmd(Command::GroupRole {
                group: group()?,
                user: user()?,
                admin,
            })
        }
        "group_update" => cmd(Command::GroupUpdate {
            group: group()?,
            name: f.opt_str("name")?.map(str::to_string),
            desc: f.opt_str("desc")?.map(str::to_string),
        }),
        "group_dissolve" => cmd(Command::GroupDissolve { group: group()? }),
        "groups" => cmd(Command::Groups),
        "group_members" => cmd(Command::GroupMembers { group: group()? }),
        other => Err(ChatError::new(
            ErrorCode::UnknownType,
            format!("unknown request type {other:?}"),
        )),
    }
}

// ---- encoding -----------------------------------------------------------------

#[derive(Serialize)]
#[serde(untagged)]
enum ReqOut<'a> {
    Num(i64),
    Str(&'a str),
}

fn req_out(req: Option<&ReqId>) -> Option<ReqOut<'_>> {
    req.map(|r| match r {
        ReqId::Num(n) => ReqOut::Num(*n),
        ReqId::Str(s) => ReqOut::Str(s),
    })
}

#[derive(Serialize)]
struct UserJson<'a> {
    id: Uid,
    name: &'a str,
}

fn user(u: &UserRef) -> UserJson<'_> {
    UserJson {
        id: u.id,
        name: &u.name,
    }
}

/// A message id, as a number or as a string.
struct IdOut(Stamp, Ids);

impl Serialize for IdOut {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.1 {
            Ids::Numbers => s.serialize_u64(self.0 .0),
            Ids::Strings => s.collect_str(&self.0 .0),
        }
    }
}

/// A message as every native client sees it (push and history).
#[derive(Serialize)]
pub struct MessageJson<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    ty: Option<&'static str>,
    id: IdOut,
    from: Uid,
    from_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<Uid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Gid>,
    text: &'a str,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<&'a str>,
    /// The sender is a guest (from a room-style client, with no account).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    guest: bool,
}

impl<'a> MessageJson<'a> {
    fn new(v: &'a MsgView, ty: Option<&'static str>, ids: Ids) -> MessageJson<'a> {
        let (to, group) = match v.msg.to {
            Target::User(u) => (Some(u), None),
            Target::Group(g) => (None, Some(g)),
        };
        MessageJson {
            ty,
            id: IdOut(v.msg.id, ids),
            from: v.msg.from,
            from_name: &v.from_name,
            to,
            group,
            text: &v.msg.text,
            ts: v.msg.id.millis(),
            cid: v.msg.cid.as_deref(),
            guest: v.msg.from.is_guest(),
        }
    }
}

#[derive(Serialize)]
struct FriendJson<'a> {
    id: Uid,
    name: &'a str,
    remark: &'a str,
    online: bool,
}

#[derive(Serialize)]
struct RequestJson<'a> {
    id: Uid,
    name: &'a str,
    text: &'a str,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    id: Gid,
    name: &'a str,
    desc: &'a str,
    creator: Uid,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
}

fn group(g: &GroupView) -> GroupJson<'_> {
    GroupJson {
        id: g.id,
        name: &g.name,
        desc: &g.desc,
        creator: g.creator,
        role: g.role.map(|r| r.as_str()),
    }
}

#[derive(Serialize)]
struct MemberJson<'a> {
    id: Uid,
    name: &'a str,
    role: &'static str,
    online: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    guest: bool,
}

fn member(m: &MemberView) -> MemberJson<'_> {
    MemberJson {
        id: m.id,
        name: &m.name,
        role: m.role.as_str(),
        online: m.online,
        guest: m.id.is_guest(),
    }
}

fn friend(f: &FriendView) -> FriendJson<'_> {
    FriendJson {
        id: f.id,
        name: &f.name,
        remark: &f.remark,
        online: f.online,
    }
}

fn request(r: &RequestView) -> RequestJson<'_> {
    RequestJson {
        id: r.id,
        name: &r.name,
        text: &r.text,
    }
}

/// `{"type": ..., "req": ..., <body fields>}`.
#[derive(Serialize)]
struct Envelope<'a, B: Serialize> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    req: Option<ReqOut<'a>>,
    #[serde(flatten)]
    body: B,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct ErrorJson<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

fn error_json(e: &ChatError) -> ErrorJson<'_> {
    ErrorJson {
        code: e.code.as_str(),
        message: &e.message,
        retry_after_ms: e.retry_after.map(|d| d.as_millis() as u64),
    }
}

fn put<B: Serialize>(out: &mut Frames, ty: &'static str, req: Option<&ReqId>, body: B) {
    out.push_json(
        &Envelope {
            ty,
            req: req_out(req),
            body,
        },
        b'\n',
    );
}

pub fn encode_reply(
    req: Option<&ReqId>,
    reply: &Result<Reply, ChatError>,
    ids: Ids,
    out: &mut Frames,
) {
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return put(out, "error", req, error_json(e)),
    };
    match reply {
        Reply::Registered(u) => put(
            out,
            "registered",
            req,
            serde_json::json!({ "user": user(u) }),
        ),
        Reply::LoggedIn {
            user: u,
            sessions,
            token,
            ..
        } => {
            #[derive(Serialize)]
            struct LoggedIn<'a> {
                user: UserJson<'a>,
                sessions: usize,
                #[serde(skip_serializing_if = "Option::is_none")]
                token: Option<&'a str>,
            }
            put(
                out,
                "logged_in",
                req,
                LoggedIn {
                    user: user(u),
                    sessions: *sessions,
                    token: token.as_deref(),
                },
            )
        }
        Reply::LoggedOut => put(out, "logged_out", req, Empty {}),
        // What other dialects say on joining or befriending, chatd's
        // protocol says with pushes.
        Reply::Ok | Reply::Joined(_) | Reply::Befriended(_) => put(out, "ok", req, Empty {}),
        Reply::Pong => put(out, "pong", req, Empty {}),
        Reply::Sent {
            id, cid, duplicate, ..
        } => {
            #[derive(Serialize)]
            struct Sent<'a> {
                id: IdOut,
                ts: u64,
                #[serde(skip_serializing_if = "Option::is_none")]
                cid: Option<&'a str>,
                duplicate: bool,
            }
            put(
                out,
                "sent",
                req,
                Sent {
                    id: IdOut(*id, ids),
                    ts: id.millis(),
                    cid: cid.as_deref(),
                    duplicate: *duplicate,
                },
            )
        }
        Reply::Acked { count } => put(out, "acked", req, serde_json::json!({ "count": count })),
        Reply::History { messages, more } => {
            let messages: Vec<_> = messages
                .iter()
                .map(|m| MessageJson::new(m, None, ids))
                .collect();
            put(
                out,
                "history",
                req,
                serde_json::json!({ "messages": messages, "more": more }),
            )
        }
        Reply::Friends {
            friends,
            incoming,
            outgoing,
        } => {
            let friends: Vec<_> = friends.iter().map(friend).collect();
            let incoming: Vec<_> = incoming.iter().map(request).collect();
            let outgoing: Vec<_> = outgoing.iter().map(user).collect();
            put(
                out,
                "friends",
                req,
                serde_json::json!({ "friends": friends, "incoming": incoming, "outgoing": outgoing }),
            )
        }
        Reply::Users { users, groups } => {
            let users: Vec<_> = users.iter().map(user).collect();
            if groups.is_empty() {
                put(out, "users", req, serde_json::json!({ "users": users }))
            } else {
                let groups: Vec<_> = groups.iter().map(group).collect();
                put(
                    out,
                    "users",
                    req,
                    serde_json::json!({ "users": users, "groups": groups }),
                )
            }
        }
        Reply::Contacts { friends, groups } => {
            let friends: Vec<_> = friends.iter().map(friend).collect();
            let groups: Vec<_> = groups.iter().map(group).collect();
            put(
                out,
                "contacts",
                req,
                serde_json::json!({ "friends": friends, "groups": groups }),
            )
        }
        Reply::Pending { messages, more } => {
            let messages: Vec<_> = messages
                .iter()
                .map(|m| MessageJson::new(m, None, ids))
                .collect();
            put(
                out,
                "pending",
                req,
                serde_json::json!({ "messages": messages, "more": more }),
            )
        }
        Reply::Group(g) => put(out, "group", req, serde_json::json!({ "group": group(g) })),
        Reply::Groups(gs) => {
            let groups: Vec<_> = gs.iter().map(group).collect();
            put(out, "groups", req, serde_json::json!({ "groups": groups }))
        }
        Reply::Members { group: g, members } => {
            let members: Vec<_> = members.iter().map(member).collect();
            put(
                out,
                "members",
                req,
                serde_json::json!({ "group": g, "members": members }),
            )
        }
    }
}

pub fn encode_event(event: &Event, ids: Ids, out: &mut Frames) {
    match event {
        Event::Message(v) => out.push_json(&MessageJson::new(v, Some("message"), ids), b'\n'),
        Event::Presence { user: u, online } => put(
            out,
            "presence",
            None,
            serde_json::json!({ "user": user(u), "online": online }),
        ),
        Event::FriendRequest { from, text } => put(
            out,
            "friend_request",
            None,
            serde_json::json!({ "from": user(from), "text": text }),
        ),
        Event::FriendAdded { user: u, .. } => put(
            out,
            "friend_added",
            None,
            serde_json::json!({ "user": user(u) }),
        ),
        // Lobby presence is for the room-style clients.
        Event::RoomPresence { .. } => {}
        Event::FriendRemoved(u) => put(
            out,
            "friend_removed",
            None,
            serde_json::json!({ "user": user(u) }),
        ),
        Event::FriendDeclined(u) => put(
            out,
            "friend_declined",
            None,
            serde_json::json!({ "user": user(u) }),
        ),
        Event::Group {
            group: g,
            change,
            user: u,
            by,
            name,
            desc,
        } => {
            #[derive(Serialize)]
            struct GroupEvent<'a> {
                group: Gid,
                event: &'static str,
                user: Uid,
                by: Uid,
                #[serde(skip_serializing_if = "Option::is_none")]
                name: Option<&'a str>,
                #[serde(skip_serializing_if = "Option::is_none")]
                desc: Option<&'a str>,
            }
            put(
                out,
                "group_event",
                None,
                GroupEvent {
                    group: *g,
                    event: change.as_str(),
                    user: *u,
                    by: *by,
                    name: name.as_deref(),
                    desc: desc.as_deref(),
                },
            )
        }
        Event::Notice { text } => put(out, "notice", None, serde_json::json!({ "text": text })),
        Event::Bye { reason } => put(
            out,
            "bye",
            None,
            serde_json::json!({ "reason": reason.as_str() }),
        ),
        Event::Error(e) => put(out, "error", None, error_json(e)),
    }
}
