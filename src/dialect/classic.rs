//! The classic "msgid" dialect of the muduo course project's `ChatClient`,
//! as described in classic-protocol.md, in both numberings (1..10 and
//! 1000..1009). Replies use the numbering of the request.
//!
//! What the real client survives shapes the output:
//! * every write is one JSON object with an integer `msgid`, then a NUL;
//! * a write must stay under its 1024-byte read buffer, so the login reply
//!   is trimmed to [`FRAME_BUDGET`] and offline messages arrive as separate
//!   pushes after it; a long chat message is split into several pushes;
//! * success of chat, friend, group and logout requests is answered with
//!   silence, as in the original; errors the protocol has no answer for come
//!   as `{"msgid": 100 (or 1100), "errno", "errmsg"}`, which the client ignores;
//! * the sender of a message is the logged-in user, never the `id`/`name`
//!   the request claims (those fields are ignored).

use super::fields::Fields;
use super::{Frames, Incoming, Numbering, ReqCtx, Who};
use crate::api::{ChatError, Command, ErrorCode, Event, MsgView, Reply, Roster, UserRef};
use crate::ids::{Gid, Uid};
use crate::model::{Role, Target};
use serde_json::{json, Map, Value};

/// Largest JSON text we write to a classic client (its buffer is 1024 bytes,
/// and it needs a terminating NUL).
pub const FRAME_BUDGET: usize = 1000;

/// The request kinds, by their course-numbering msgid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Login = 1,
    LoginAck = 2,
    Loginout = 3,
    Reg = 4,
    RegAck = 5,
    OneChat = 6,
    AddFriend = 7,
    CreateGroup = 8,
    AddGroup = 9,
    GroupChat = 10,
    /// Not a request we know; errors go out as an error push.
    Unknown = 100,
}

impl Kind {
    fn from_course(v: i64) -> Kind {
        match v {
            1 => Kind::Login,
            2 => Kind::LoginAck,
            3 => Kind::Loginout,
            4 => Kind::Reg,
            5 => Kind::RegAck,
            6 => Kind::OneChat,
            7 => Kind::AddFriend,
            8 => Kind::CreateGroup,
            9 => Kind::AddGroup,
            10 => Kind::GroupChat,
            _ => Kind::Unknown,
        }
    }

    /// The msgid of this kind in a numbering.
    pub fn msgid(self, n: Numbering) -> i64 {
        let course = self as i64;
        match n {
            Numbering::Course => course,
            Numbering::Thousand => course + 999 + if self == Kind::Unknown { 1 } else { 0 },
        }
    }
}

fn numbering_of(msgid: i64) -> Option<(Numbering, i64)> {
    match msgid {
        1..=10 => Some((Numbering::Course, msgid)),
        1000..=1009 => Some((Numbering::Thousand, msgid - 999)),
        _ => None,
    }
}

pub fn decode(map: Map<String, Value>) -> Incoming {
    let raw = map.get("msgid").and_then(Value::as_i64);
    let Some((numbering, course)) = raw.and_then(numbering_of) else {
        let numbering = if raw.unwrap_or(0) >= 1000 {
            Numbering::Thousand
        } else {
            Numbering::Course
        };
        let what = match map.get("msgid") {
            Some(v) => v.to_string(),
            None => "null".into(),
        };
        return Incoming::Invalid(
            ReqCtx::Classic {
                numbering,
                kind: Kind::Unknown,
            },
            ChatError::new(ErrorCode::UnknownType, format!("unknown msgid {what}")),
        );
    };
    let kind = Kind::from_course(course);
    let ctx = ReqCtx::Classic { numbering, kind };
    match decode_body(&Fields(&map), kind, ctx.clone()) {
        Ok(i) => i,
        Err(e) => Incoming::Invalid(ctx, e),
    }
}

fn password<'a>(f: &Fields<'a>) -> Result<&'a str, ChatError> {
    // A few forks spell it "pwd".
    match f.opt_str("password")? {
        Some(p) => Ok(p),
        None => f.str("pwd"),
    }
}

fn decode_body(f: &Fields, kind: Kind, ctx: ReqCtx) -> Result<Incoming, ChatError> {
    let cmd = |c: Command| Ok(Incoming::Command(ctx.clone(), c));
    match kind {
        Kind::Login => {
            // The client sends atoi() of whatever was typed; 0 is a bad id, not a bad request.
            let id = f.opt_id("id").ok().flatten().ok_or_else(|| {
                ChatError::new(ErrorCode::InvalidCredentials, "id or password is invalid!")
            })?;
            Ok(Incoming::Login {
                ctx: ctx.clone(),
                who: Who::Id(Uid(id)),
                password: password(f)?.to_string(),
                tell_unknown: false,
            })
        }
        Kind::Reg => Ok(Incoming::Register {
            ctx: ctx.clone(),
            name: f.str("name")?.to_string(),
            password: password(f)?.to_string(),
            id: None,
        }),
        Kind::Loginout => cmd(Command::Logout),
        Kind::OneChat => cmd(Command::Send {
            to: Target::User(Uid(f.id("toid")?)),
            text: f.str("msg")?.to_string(),
            cid: None,
            time: f.opt_str("time").ok().flatten().map(str::to_string),
        }),
        Kind::AddFriend => cmd(Command::FriendAdd {
            user: Uid(f.id("friendid")?),
        }),
        Kind::CreateGroup => cmd(Command::GroupCreate {
            name: f.str("groupname")?.to_string(),
            desc: f.opt_str("groupdesc")?.unwrap_or_default().to_string(),
        }),
        Kind::AddGroup => cmd(Command::GroupJoin {
            group: Gid(f.id("groupid")?),
        }),
        Kind::GroupChat => cmd(Command::Send {
            to: Target::Group(Gid(f.id("groupid")?)),
            text: f.str("msg")?.to_string(),
            cid: None,
            time: f.opt_str("time").ok().flatten().map(str::to_string),
        }),
        Kind::LoginAck | Kind::RegAck | Kind::Unknown => Err(ChatError::new(
            ErrorCode::UnknownType,
            "that msgid is not a request",
        )),
    }
}

// ---- encoding -----------------------------------------------------------------

fn push(out: &mut Frames, v: &Value) {
    out.push_json(v, 0);
}

/// The classic `errno` for an error: 1 for bad credentials (and a taken name,
/// on REG), 2 for "this account is using", 3 for anything else.
fn errno(code: ErrorCode) -> i64 {
    match code {
        ErrorCode::InvalidCredentials | ErrorCode::NameTaken => 1,
        ErrorCode::TooManySessions => 2,
        _ => 3,
    }
}

fn error_push(n: Numbering, e: &ChatError, out: &mut Frames) {
    push(
        out,
        &json!({
            "msgid": Kind::Unknown.msgid(n),
            "errno": errno(e.code),
            "errmsg": e.message,
            "code": e.code.as_str(),
        }),
    );
}

pub fn encode_reply(n: Numbering, kind: Kind, reply: &Result<Reply, ChatError>, out: &mut Frames) {
    match (kind, reply) {
        (Kind::Login, Ok(Reply::LoggedIn { user, roster, .. })) => {
            let empty = Roster::default();
            push(
                out,
                &login_ack(n, user, roster.as_deref().unwrap_or(&empty)),
            );
        }
        (Kind::Login, Err(e)) => {
            let errmsg = match e.code {
                // The original server's exact words.
                ErrorCode::InvalidCredentials => "id or password is invalid!",
                ErrorCode::TooManySessions => "this account is using, input another!",
                _ => e.message.as_str(),
            };
            push(
                out,
                &json!({
                    "msgid": Kind::LoginAck.msgid(n),
                    "errno": errno(e.code),
                    "errmsg": errmsg,
                }),
            );
        }
        (Kind::Reg, Ok(Reply::Registered(u))) => push(
            out,
            &json!({ "msgid": Kind::RegAck.msgid(n), "errno": 0, "id": u.id }),
        ),
        (Kind::Reg, Err(e)) => push(
            out,
            &json!({
                "msgid": Kind::RegAck.msgid(n),
                "errno": 1,
                "errmsg": e.message,
            }),
        ),
        // The original answers everything else with silence.
        (_, Ok(_)) => {}
        (_, Err(e)) => error_push(n, e, out),
    }
}

fn state(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

fn size(v: &Value) -> usize {
    serde_json::to_string(v)
        .map(|s| s.len())
        .unwrap_or(usize::MAX)
}

/// The login reply: friends and groups (with members) as strings of JSON,
/// as many as fit in [`FRAME_BUDGET`]; empty lists are left out.
fn login_ack(n: Numbering, user: &UserRef, roster: &Roster) -> Value {
    let mut reply = json!({
        "msgid": Kind::LoginAck.msgid(n),
        "errno": 0,
        "id": user.id,
        "name": user.name,
    });
    let mut friends: Vec<Value> = Vec::new();
    for f in &roster.friends {
        let s = json!({ "id": f.id, "name": f.name, "state": state(f.online) }).to_string();
        friends.push(Value::String(s));
        reply["friends"] = Value::Array(friends.clone());
        if size(&reply) > FRAME_BUDGET {
            friends.pop();
            break;
        }
    }
    set_list(&mut reply, "friends", friends);
    let mut groups: Vec<Value> = Vec::new();
    'groups: for (g, members) in &roster.groups {
        let mut users: Vec<Value> = members
            .iter()
            .map(|m| {
                let role = if m.role == Role::Creator {
                    "creator"
                } else {
                    "normal"
                };
                Value::String(
                    json!({ "id": m.id, "name": m.name, "state": state(m.online), "role": role })
                        .to_string(),
                )
            })
            .collect();
        loop {
            let s = json!({
                "id": g.id,
                "groupname": g.name,
                "groupdesc": g.desc,
                "users": users,
            })
            .to_string();
            groups.push(Value::String(s));
            reply["groups"] = Value::Array(groups.clone());
            if size(&reply) <= FRAME_BUDGET {
                continue 'groups;
            }
            groups.pop();
            if users.pop().is_none() {
                break 'groups;
            }
        }
    }
    set_list(&mut reply, "groups", groups);
    reply
}

fn set_list(reply: &mut Value, key: &str, list: Vec<Value>) {
    if let Some(obj) = reply.as_object_mut() {
        if list.is_empty() {
            obj.remove(key);
        } else {
            obj.insert(key.to_string(), Value::Array(list));
        }
    }
}

/// Length of a character inside a JSON string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Split a text into pieces that each fit `budget` bytes once escaped.
fn split_text(text: &str, budget: usize) -> Vec<&str> {
    super::split_by(text, budget.max(8), escaped_len)
}

/// "YYYY-MM-DD HH:MM:SS" in UTC, the classic client's time format.
pub fn format_time(millis: u64) -> String {
    let secs = millis / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}")
}

/// A chat push as the client reads it. Its fields are in the order a
/// `serde_json::Value` writes them (by name), as the other frames are.
#[derive(serde::Serialize)]
struct ChatPush<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    groupid: Option<Gid>,
    id: Uid,
    msg: &'a str,
    msgid: i64,
    name: &'a str,
    time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    toid: Option<Uid>,
}

fn chat_pushes(n: Numbering, v: &MsgView, out: &mut Frames) {
    let time = match &v.msg.time {
        Some(t) => std::borrow::Cow::Borrowed(t.as_str()),
        None => std::borrow::Cow::Owned(format_time(v.msg.id.millis())),
    };
    let (msgid, groupid, toid) = match v.msg.to {
        Target::User(to) => (Kind::OneChat.msgid(n), None, Some(to)),
        Target::Group(g) => (Kind::GroupChat.msgid(n), Some(g), None),
    };
    let frame = |msg| ChatPush {
        groupid,
        id: v.msg.from,
        msg,
        msgid,
        name: &v.from_name,
        time: &time,
        toid,
    };
    // Nearly every message fits one frame: it is written once, and split
    // only when it turned out too long (a push per message is the classic
    // load's hot path).
    out.push_json(&frame(&v.msg.text), 0);
    if out.last_len() <= FRAME_BUDGET + 1 {
        return;
    }
    out.pop();
    let overhead = serde_json::to_vec(&frame("")).map_or(FRAME_BUDGET, |f| f.len());
    for piece in split_text(&v.msg.text, FRAME_BUDGET.saturating_sub(overhead)) {
        out.push_json(&frame(piece), 0);
    }
}

/// A server notice, shown by the classic client as a chat line from user 0.
fn notice(n: Numbering, text: &str, out: &mut Frames) {
    let v = MsgView {
        msg: std::sync::Arc::new(crate::model::Message {
            id: crate::ids::Stamp::new(crate::ids::wall_millis(), 0),
            from: Uid(0),
            to: Target::User(Uid(0)),
            text: text.to_string(),
            cid: None,
            time: None,
        }),
        from_name: "system".into(),
    };
    chat_pushes(n, &v, out);
}

pub fn encode_event(n: Numbering, event: &Event, out: &mut Frames) {
    match event {
        Event::Message(v) => chat_pushes(n, v, out),
        Event::Notice { text } => notice(n, text, out),
        Event::Bye { reason } => {
            let text = match reason {
                ErrorCode::ShuttingDown => "the server is shutting down",
                ErrorCode::Kicked => "you were disconnected by the operator",
                ErrorCode::Banned => "this account is banned",
                ErrorCode::AccountDeleted => "this account was deleted",
                _ => "disconnected",
            };
            notice(n, text, out)
        }
        Event::Error(e) => error_push(n, e, out),
        // The classic client has no way to show these.
        Event::Presence { .. }
        | Event::RoomPresence { .. }
        | Event::FriendRequest { .. }
        | Event::FriendAdded { .. }
        | Event::FriendRemoved(_)
        | Event::FriendDeclined(_)
        | Event::Group { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FriendView, GroupView, MemberView};

    #[test]
    fn numberings_map_both_ways() {
        assert_eq!(Kind::Login.msgid(Numbering::Course), 1);
        assert_eq!(Kind::Login.msgid(Numbering::Thousand), 1000);
        assert_eq!(Kind::GroupChat.msgid(Numbering::Thousand), 1009);
        assert_eq!(Kind::Unknown.msgid(Numbering::Thousand), 1100);
        assert_eq!(numbering_of(1005), Some((Numbering::Thousand, 6)));
        assert_eq!(numbering_of(11), None);
    }

    #[test]
    fn time_format_matches_the_client() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn a_chat_push_is_written_as_a_json_value_would_be() {
        let view = |to: Target, text: &str| MsgView {
            msg: std::sync::Arc::new(crate::model::Message {
                id: crate::ids::Stamp::new(1_700_000_000_000, 1),
                from: Uid(7),
                to,
                text: text.to_string(),
                cid: None,
                time: None,
            }),
            from_name: "al\"ice".into(),
        };
        let value = |to: Target, text: &str| {
            let mut v = json!({
                "msgid": 1005, "id": 7, "name": "al\"ice", "msg": text,
                "time": "2023-11-14 22:13:20",
            });
            match to {
                Target::User(u) => v["toid"] = json!(u),
                Target::Group(g) => {
                    v["msgid"] = json!(1009);
                    v["groupid"] = json!(g);
                }
            }
            let mut bytes = serde_json::to_vec(&v).unwrap();
            bytes.push(0);
            bytes
        };
        for to in [Target::User(Uid(8)), Target::Group(Gid(3))] {
            let mut out = Frames::default();
            chat_pushes(Numbering::Thousand, &view(to, "hi\n☃"), &mut out);
            assert_eq!(out.iter().collect::<Vec<_>>(), vec![value(to, "hi\n☃")]);
            // Too long for one frame: pieces, each as a value would be.
            let long = "汉字\"x".repeat(200);
            let mut out = Frames::default();
            chat_pushes(Numbering::Thousand, &view(to, &long), &mut out);
            assert!(out.len() > 1);
            let mut text = String::new();
            for f in out.iter() {
                assert!(f.len() <= FRAME_BUDGET + 1, "{}", f.len());
                let v: Value = serde_json::from_slice(&f[..f.len() - 1]).unwrap();
                let piece = v["msg"].as_str().unwrap();
                assert_eq!(f, value(to, piece).as_slice());
                text.push_str(piece);
            }
            assert_eq!(text, long);
            // A frame of exactly the budget is one push; a byte more, two.
            let empty = value(to, "").len() - 1;
            for (extra, pushes) in [(0, 1), (1, 2)] {
                let text = "a".repeat(FRAME_BUDGET - empty + extra);
                let mut out = Frames::default();
                chat_pushes(Numbering::Thousand, &view(to, &text), &mut out);
                assert_eq!(out.len(), pushes);
            }
        }
        // The client's own time is kept, in either numbering.
        let mut v = view(Target::User(Uid(8)), "hi");
        std::sync::Arc::make_mut(&mut v.msg).time = Some("2024-01-01 00:00:00".into());
        let mut out = Frames::default();
        chat_pushes(Numbering::Course, &v, &mut out);
        let want = json!({
            "msgid": 6, "id": 7, "name": "al\"ice", "toid": 8, "msg": "hi",
            "time": "2024-01-01 00:00:00",
        });
        let mut want = serde_json::to_vec(&want).unwrap();
        want.push(0);
        assert_eq!(out.iter().collect::<Vec<_>>(), vec![want.as_slice()]);
    }

    #[test]
    fn long_texts_split_on_char_boundaries() {
        let text = "汉字\"x".repeat(200);
        let parts = split_text(&text, 100);
        assert!(parts.len() > 5);
        assert_eq!(parts.concat(), text);
        for p in &parts {
            assert!(p.chars().map(escaped_len).sum::<usize>() <= 100);
        }
    }

    #[test]
    fn login_reply_stays_under_the_client_buffer() {
        let friends = (1..200)
            .map(|i| FriendView {
                id: Uid(i),
                name: format!("friend-with-a-long-name-{i}"),
                remark: String::new(),
                online: i % 2 == 0,
            })
            .collect();
        let groups = (1..20)
            .map(|g| {
                (
                    GroupView {
                        id: Gid(g),
                        name: format!("group{g}"),
                        desc: "d".repeat(150),
                        creator: Uid(1),
                        role: Some(Role::Member),
                    },
                    (1..50)
                        .map(|u| MemberView {
                            id: Uid(u),
                            name: format!("m{u}"),
                            role: Role::Member,
                            online: false,
                        })
                        .collect(),
                )
            })
            .collect();
        let roster = Roster { friends, groups };
        let v = login_ack(
            Numbering::Course,
            &UserRef {
                id: Uid(1),
                name: "me".into(),
            },
            &roster,
        );
        assert!(size(&v) <= FRAME_BUDGET);
        // Elements are strings of JSON that parse again.
        for f in v["friends"].as_array().unwrap() {
            let inner: Value = serde_json::from_str(f.as_str().unwrap()).unwrap();
            assert!(inner["id"].is_i64());
        }
    }
}
