//! The sponge dialect (seed 001): the Qt desktop client's `msgType` JSON,
//! as seed-dialects.md describes it.
//!
//! What the client survives shapes the output:
//! * it parses whatever one read returns as one JSON document, so every
//!   reply and push is written alone, paced like classic pushes, with no
//!   terminator;
//! * ids in its contact and search lists are strings, `sendTime` is an
//!   integer of milliseconds, and a success is `{"msgType":200,"errno":200}`;
//! * errors are `{"msgType":E,"errno":E,"errmsg":...}` with E 401 (bad
//!   JSON or fields), 404 (unknown msgType) or 500, which it ignores; a
//!   login fails only with 301 (already logged in) or 302;
//! * it builds JSON by string formatting without escaping backslashes, so
//!   a malformed value is mended where that is safe ([`mend`]);
//! * the sender of everything is the session's user, whatever `FROMID` or
//!   `U1` claim (those fields are ignored).

use super::fields::Fields;
use super::{Frames, Incoming, ReqCtx, Who};
use crate::api::{ChatError, Command, ErrorCode, Event, GroupView, MsgView, Reply, UserRef};
use crate::ids::{Gid, Uid};
use crate::model::Target;
use serde_json::{json, Map, Value};

/// The request kinds, by msgType.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Login = 1,
    Register = 2,
    Logout = 3,
    Chat = 4,
    FriendRequest = 5,
    AddFriend = 6,
    DeleteFriend = 7,
    Contacts = 8,
    GroupChat = 9,
    JoinGroup = 10,
    Groups = 11,
    CreateGroup = 12,
    GroupsByName = 13,
    Offline = 14,
    Search = 15,
    Unknown = 0,
}

impl Kind {
    fn from_msg_type(v: i64) -> Kind {
        match v {
            1 => Kind::Login,
            2 => Kind::Register,
            3 => Kind::Logout,
            4 => Kind::Chat,
            5 => Kind::FriendRequest,
            6 => Kind::AddFriend,
            7 => Kind::DeleteFriend,
            8 => Kind::Contacts,
            9 => Kind::GroupChat,
            10 => Kind::JoinGroup,
            11 => Kind::Groups,
            12 => Kind::CreateGroup,
            13 => Kind::GroupsByName,
            14 => Kind::Offline,
            15 => Kind::Search,
            _ => Kind::Unknown,
        }
    }
}

/// Whether raw bytes that are not valid JSON look like a sponge request.
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.windows(9).any(|w| w == b"\"msgType\"")
}

/// Mend what the client's string formatting gets wrong inside strings: a
/// backslash before a character JSON cannot escape is kept as a backslash
/// (`C:\path`), and `\'` is an apostrophe. None when nothing was mended.
pub fn mend(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let mut in_str = false;
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !in_str {
            in_str = b == b'"';
            out.push(b);
        } else if b == b'\\' {
            match bytes.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u') => {
                    out.extend_from_slice(&bytes[i..i + 2]);
                    i += 1;
                }
                Some(b'\'') => {
                    out.push(b'\'');
                    changed = true;
                    i += 1;
                }
                _ => {
                    out.extend_from_slice(b"\\\\");
                    changed = true;
                }
            }
        } else {
            in_str = b != b'"';
            out.push(b);
        }
        i += 1;
    }
    changed.then_some(out)
}

pub fn decode(map: Map<String, Value>) -> Incoming {
    let kind = match map.get("msgType").and_then(Value::as_i64) {
        Some(t) => Kind::from_msg_type(t),
        None => Kind::Unknown,
    };
    let ctx = ReqCtx::Sponge(kind);
    match decode_body(&Fields(&map), kind, &ctx) {
        Ok(i) => i,
        Err(e) => Incoming::Invalid(ctx, e),
    }
}

fn decode_body(f: &Fields, kind: Kind, ctx: &ReqCtx) -> Result<Incoming, ChatError> {
    let cmd = |c: Command| Ok(Incoming::Command(ctx.clone(), c));
    let text = || f.str("msg").map(str::to_string);
    match kind {
        Kind::Login => Ok(Incoming::Login {
            ctx: ctx.clone(),
            who: Who::Id(Uid(f.id("USERID")?)),
            password: f.str("password")?.to_string(),
            tell_unknown: false,
        }),
        Kind::Register => Ok(Incoming::Register {
            ctx: ctx.clone(),
            name: f.str("name")?.to_string(),
            password: f.str("password")?.to_string(),
            id: None,
        }),
        Kind::Logout => cmd(Command::Logout),
        Kind::Chat => cmd(Command::Send {
            to: Target::User(Uid(f.id("TOID")?)),
            text: text()?,
            cid: None,
            time: None,
        }),
        Kind::FriendRequest => cmd(Command::FriendRequest {
            user: Uid(f.id("TOID")?),
            text: f.opt_str("msg")?.unwrap_or_default().to_string(),
        }),
        Kind::AddFriend => cmd(Command::FriendAdd {
            user: Uid(f.id("U2")?),
        }),
        Kind::DeleteFriend => {
            let other = match f.opt_id("TOID")? {
                Some(u) => u,
                None => f.id("U2")?,
            };
            cmd(Command::FriendRemove { user: Uid(other) })
        }
        Kind::Contacts => cmd(Command::Contacts),
        Kind::GroupChat => cmd(Command::Send {
            to: Target::Group(Gid(f.id("GROUPID")?)),
            text: text()?,
            cid: None,
            time: None,
        }),
        Kind::JoinGroup => cmd(Command::GroupJoin {
            group: Gid(f.id("GROUPID")?),
        }),
        Kind::Groups => cmd(Command::Groups),
        Kind::CreateGroup => cmd(Command::GroupCreate {
            name: f.str("name")?.to_string(),
            desc: f.opt_str("description")?.unwrap_or_default().to_string(),
        }),
        Kind::GroupsByName => {
            let query = match f.opt_str("name")? {
                Some(n) => n,
                None => f.str("keyword")?,
            };
            cmd(Command::Search {
                query: query.to_string(),
                users: false,
                groups: true,
            })
        }
        Kind::Offline => cmd(Command::Pending),
        Kind::Search => cmd(Command::Search {
            query: f.str("keyword")?.to_string(),
            users: true,
            groups: true,
        }),
        Kind::Unknown => Err(ChatError::new(
            ErrorCode::UnknownType,
            "No such method, failed to process your request!",
        )),
    }
}

// ---- encoding -----------------------------------------------------------------

fn put(out: &mut Frames, v: &Value) {
    out.push_with(|buf| {
        let _ = serde_json::to_writer(buf, v);
    });
}

fn ack() -> Value {
    json!({"msgType": 200, "errno": 200})
}

/// The errno (and msgType) of an error: 401 for what the client got wrong
/// in its JSON, 404 for an unknown msgType, 500 for the rest.
fn errno(code: ErrorCode) -> i64 {
    match code {
        ErrorCode::BadJson | ErrorCode::BadRequest | ErrorCode::NotObject | ErrorCode::BadUtf8 => {
            401
        }
        ErrorCode::UnknownType => 404,
        _ => 500,
    }
}

fn error(e: &ChatError) -> Value {
    let n = errno(e.code);
    json!({"msgType": n, "errno": n, "errmsg": e.message, "code": e.code.as_str()})
}

fn group_entry(g: &GroupView) -> Value {
    json!({"id": g.id.to_string(), "name": g.name, "isGroup": "1", "desc": g.desc})
}

fn user_entry(u: &UserRef) -> Value {
    json!({"id": u.id.to_string(), "name": u.name, "isGroup": "0", "desc": ""})
}

pub fn encode_reply(kind: Kind, reply: &Result<Reply, ChatError>, out: &mut Frames) {
    let reply = match (kind, reply) {
        (Kind::Login, Err(e)) => {
            // The client handles only these two codes at login.
            let n = if e.code == ErrorCode::TooManySessions {
                301
            } else {
                302
            };
            return put(
                out,
                &json!({"msgType": 200, "errno": n, "errmsg": e.message}),
            );
        }
        (Kind::Register, Err(e)) => {
            // It reads USERID before looking at errno.
            let mut v = error(e);
            v["USERID"] = json!(-1);
            return put(out, &v);
        }
        (_, Err(e)) => return put(out, &error(e)),
        (_, Ok(r)) => r,
    };
    let v = match reply {
        Reply::Registered(u) => json!({"msgType": 200, "errno": 200, "USERID": u.id}),
        // No reply to the sender of a message.
        Reply::Sent { .. } => return,
        Reply::Befriended(u) => json!({"msgType": 6, "errno": 200, "userId": u.id, "name": u.name}),
        Reply::Contacts { friends, groups } => {
            let mut list: Vec<Value> = friends
                .iter()
                .map(|f| json!({"id": f.id.to_string(), "name": f.name, "isGroup": "0"}))
                .collect();
            list.extend(
                groups
                    .iter()
                    .map(|g| json!({"id": g.id.to_string(), "name": g.name, "isGroup": "1"})),
            );
            json!({"msgType": 8, "errno": 200, "friends": list})
        }
        Reply::Joined(g) => json!({"msgType": 10, "errno": 200, "groupId": g.id, "name": g.name}),
        Reply::Group(g) => json!({"msgType": 12, "errno": 200, "GROUPID": g.id, "name": g.name}),
        Reply::Groups(gs) => {
            let groups: Vec<Value> = gs.iter().map(group_entry).collect();
            json!({"msgType": 200, "errno": 200, "groups": groups})
        }
        Reply::Users { users, groups } if kind == Kind::Search => {
            let mut results: Vec<Value> = users.iter().map(user_entry).collect();
            results.extend(groups.iter().map(group_entry));
            json!({"msgType": 15, "errno": 200, "results": results})
        }
        Reply::Users { groups, .. } => {
            let groups: Vec<Value> = groups.iter().map(group_entry).collect();
            json!({"msgType": 200, "errno": 200, "groups": groups})
        }
        Reply::Pending { messages, .. } => {
            let msgs: Vec<Value> = messages
                .iter()
                .map(|m| Value::String(chat(m).to_string()))
                .collect();
            json!({"msgType": 14, "errno": 200, "msgs": msgs})
        }
        _ => ack(),
    };
    put(out, &v);
}

/// A message in the shape the client sends and expects: msgType 4 (direct)
/// or 9 (group), `sendTime` in milliseconds.
fn chat(v: &MsgView) -> Value {
    let m = &v.msg;
    match m.to {
        Target::User(to) => json!({
            "msgType": 4, "FROMID": m.from, "TOID": to, "msg": m.text, "sendTime": m.id.millis(),
        }),
        Target::Group(g) => json!({
            "msgType": 9, "FROMID": m.from, "GROUPID": g, "msg": m.text, "sendTime": m.id.millis(),
        }),
    }
}

pub fn encode_event(event: &Event, out: &mut Frames) {
    let v = match event {
        Event::Message(m) => chat(m),
        Event::FriendAdded {
            user,
            by_you: false,
        } => json!({
            "msgType": 6, "errno": 200, "userId": user.id, "name": user.name, "new": true,
        }),
        Event::FriendRequest { from, text } => json!({
            "msgType": 5, "FROMID": from.id, "name": from.name, "msg": text,
        }),
        Event::Error(e) => error(e),
        // The client has no way to show the rest.
        _ => return,
    };
    put(out, &v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mending_keeps_what_the_user_typed() {
        let bad = br#"{"msgType":4,"msg":"C:\path \'quoted\' \"ok\" \n"}"#;
        assert!(serde_json::from_slice::<Value>(bad).is_err());
        let mended = mend(bad).unwrap();
        let v: Value = serde_json::from_slice(&mended).unwrap();
        assert_eq!(v["msg"], "C:\\path 'quoted' \"ok\" \n");
        assert_eq!(mend(br#"{"msgType":4,"msg":"fine"}"#), None);
        assert!(looks_like(bad));
    }

    #[test]
    fn login_failures_use_only_the_two_codes() {
        let mut out = Frames::default();
        for (code, want) in [
            (ErrorCode::TooManySessions, 301),
            (ErrorCode::InvalidCredentials, 302),
            (ErrorCode::Banned, 302),
            (ErrorCode::BadRequest, 302),
        ] {
            out.clear();
            encode_reply(Kind::Login, &Err(ChatError::new(code, "x")), &mut out);
            let v: Value = serde_json::from_slice(out.bytes_all()).unwrap();
            assert_eq!(v["errno"], want);
            assert_eq!(v["msgType"], 200);
        }
    }
}
