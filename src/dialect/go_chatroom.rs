//! The Go chatroom dialect (seed 003), as seed-dialects.md describes it:
//! a 4-byte big-endian length, then `{"type": ..., "data": "<JSON as a
//! string>"}`.
//!
//! What the client survives shapes the output:
//! * it reads the 4-byte length, then issues one read for the body, so a
//!   frame goes out in one write, and no frame exceeds [`MAX_FRAME`] (its
//!   buffer): long lists are capped and long messages split;
//! * it reads exactly one frame as the answer to its login, so nothing is
//!   pushed before the `LoginResMes`;
//! * its decoder matches keys in any case (and the course's forks spell
//!   them differently), so request keys are matched case-insensitively, and
//!   the login reply carries the online list as both `UsersId` and `UserIds`.
//!
//! A Go user is an ordinary account whose id the client chose at register
//! (it must be free and in this node's id block) and who joins the lobby at
//! login; `SmsMes` is a message to the lobby. The sender is always the
//! session's user, whatever `userId` a `SmsMes` claims.

use super::{Frames, Incoming, ReqCtx, Who};
use crate::api::{ChatError, Command, ErrorCode, Event, Reply};
use crate::ids::{Uid, LOBBY};
use crate::model::Target;
use serde_json::{json, Map, Value};

/// The client's buffer: no frame may be longer, either way.
pub const MAX_FRAME: usize = 8096;

/// What a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Register,
    Login,
    Sms,
    Unknown,
}

/// A key of `map`, in any case.
fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn bad(what: impl Into<String>) -> ChatError {
    ChatError::new(ErrorCode::BadRequest, what)
}

fn int(map: &Map<String, Value>, key: &str) -> Result<Uid, ChatError> {
    get(map, key)
        .and_then(Value::as_i64)
        .filter(|n| *n >= 1 && *n <= i64::from(i32::MAX))
        .map(|n| Uid(n as u32))
        .ok_or_else(|| bad(format!("\"{key}\" must be a positive integer id")))
}

fn string(map: &Map<String, Value>, key: &str) -> Result<String, ChatError> {
    match get(map, key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(format!("\"{key}\" must be a string"))),
    }
}

pub fn decode(frame: &[u8]) -> Incoming {
    let outer: Map<String, Value> = match serde_json::from_slice(frame) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Incoming::Invalid(
                ReqCtx::GoChatroom(Kind::Unknown),
                ChatError::new(ErrorCode::BadJson, "a frame must hold a JSON object"),
            )
        }
    };
    let kind = match get(&outer, "type").and_then(Value::as_str) {
        Some("RegisterMes") => Kind::Register,
        Some("LoginMes") => Kind::Login,
        Some("SmsMes") => Kind::Sms,
        _ => Kind::Unknown,
    };
    let ctx = ReqCtx::GoChatroom(kind);
    match decode_data(&outer, kind, &ctx) {
        Ok(i) => i,
        Err(e) => Incoming::Invalid(ctx, e),
    }
}

fn decode_data(
    outer: &Map<String, Value>,
    kind: Kind,
    ctx: &ReqCtx,
) -> Result<Incoming, ChatError> {
    if kind == Kind::Unknown {
        let what = get(outer, "type").map(Value::to_string).unwrap_or_default();
        return Err(ChatError::new(
            ErrorCode::UnknownType,
            format!("unknown message type {what}"),
        ));
    }
    let data: Map<String, Value> = match get(outer, "data") {
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(Value::Object(m)) => m,
            _ => return Err(bad("\"data\" must be a string holding a JSON object")),
        },
        // Tolerate the object itself.
        Some(Value::Object(m)) => m.clone(),
        _ => return Err(bad("\"data\" must be a string holding a JSON object")),
    };
    match kind {
        Kind::Register => {
            let user = match get(&data, "user") {
                Some(Value::Object(u)) => u,
                _ => return Err(bad("\"user\" must be an object")),
            };
            let id = int(user, "userId")?;
            let mut name = string(user, "userName")?;
            if name.trim().is_empty() {
                name = format!("user{id}");
            }
            Ok(Incoming::Register {
                ctx: ctx.clone(),
                name,
                password: string(user, "userPwd")?,
                id: Some(id),
            })
        }
        Kind::Login => Ok(Incoming::Login {
            ctx: ctx.clone(),
            who: Who::Id(int(&data, "userId")?),
            password: string(&data, "userPwd")?,
            tell_unknown: true,
        }),
        Kind::Sms => Ok(Incoming::Command(
            ctx.clone(),
            Command::Send {
                to: Target::Group(LOBBY),
                text: string(&data, "content")?,
                cid: None,
                time: None,
            },
        )),
        Kind::Unknown => Err(bad("unknown message type")),
    }
}

// ---- encoding -----------------------------------------------------------------

/// Append one frame: the length, then `{"type": ty, "data": <data as a string>}`.
/// False (and nothing appended) when it would exceed [`MAX_FRAME`].
fn frame(out: &mut Frames, ty: &str, data: &Value) -> bool {
    let body = json!({"type": ty, "data": data.to_string()}).to_string();
    if body.len() > MAX_FRAME {
        return false;
    }
    out.push_with(|buf| {
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(body.as_bytes());
    });
    true
}

fn res_code(kind: Kind, e: &ChatError) -> i64 {
    match (kind, e.code) {
        (_, ErrorCode::BadRequest | ErrorCode::BadJson) => 400,
        (Kind::Register, ErrorCode::IdTaken | ErrorCode::NameTaken) => 505,
        (Kind::Register, ErrorCode::InvalidName | ErrorCode::InvalidPassword) => 400,
        (Kind::Register, _) => 506,
        (Kind::Login, ErrorCode::UnknownUser) => 500,
        (Kind::Login, ErrorCode::InvalidCredentials | ErrorCode::Banned) => 403,
        (Kind::Login, ErrorCode::TooManySessions | ErrorCode::TooManyAttempts) => 403,
        _ => 505,
    }
}

/// At most this many ids in a login reply's online list (twice over, as
/// `UsersId` and `UserIds`, it stays far under [`MAX_FRAME`]).
const ONLINE_LIST_MAX: usize = 300;

pub fn encode_reply(kind: Kind, reply: &Result<Reply, ChatError>, out: &mut Frames) {
    match (kind, reply) {
        (Kind::Register, Ok(_)) => {
            frame(out, "RegisterResMes", &json!({"code": 200, "error": ""}));
        }
        (Kind::Login, Ok(Reply::LoggedIn { room, .. })) => {
            let mut ids: Vec<Uid> = room.clone().unwrap_or_default();
            ids.truncate(ONLINE_LIST_MAX);
            while !frame(
                out,
                "LoginResMes",
                &json!({"code": 200, "UsersId": ids, "UserIds": ids, "error": ""}),
            ) {
                ids.truncate(ids.len() / 2);
            }
        }
        (Kind::Register | Kind::Login, Err(e)) => {
            let ty = if kind == Kind::Register {
                "RegisterResMes"
            } else {
                "LoginResMes"
            };
            let msg: String = super::cut_at(&e.message, 1000).to_string();
            frame(out, ty, &json!({"code": res_code(kind, e), "error": msg}));
        }
        // A message to the room has no answer.
        (_, Ok(_)) => {}
        (_, Err(e)) => error(out, e),
    }
}

/// An error the client has no message for: it prints an "unknown type"
/// line and goes on.
fn error(out: &mut Frames, e: &ChatError) {
    let msg = super::cut_at(&e.message, 1000);
    frame(
        out,
        "ErrorMes",
        &json!({"code": 400, "error": msg, "kind": e.code.as_str()}),
    );
}

/// Length of a character once escaped twice (inside the JSON string that
/// `data` is, inside the frame's JSON).
fn twice_escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' => 4,
        '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 3,
        c if (c as u32) < 0x20 => 7,
        c => c.len_utf8(),
    }
}

fn sms(out: &mut Frames, from: Uid, from_name: &str, text: &str) {
    let data = |content: &str| {
        json!({
            "content": content, "userId": from, "userPwd": "", "userName": from_name,
            "userStatus": 0, "sex": "",
        })
    };
    let overhead = json!({"type": "SmsMes", "data": data("").to_string()})
        .to_string()
        .len();
    let budget = MAX_FRAME.saturating_sub(overhead + 16).max(64);
    for piece in super::split_by(text, budget, twice_escaped_len) {
        frame(out, "SmsMes", &data(piece));
    }
}

pub fn encode_event(event: &Event, out: &mut Frames) {
    match event {
        Event::Message(v) => {
            let m = &v.msg;
            // The client shows everything as said to the room: say where
            // it was said when it was not.
            let text = match m.to {
                Target::Group(g) if g == LOBBY => m.text.clone(),
                Target::Group(g) => format!("(in group {g}) {}", m.text),
                Target::User(_) => format!("(to you) {}", m.text),
            };
            let name = super::cut_at(&v.from_name, 200);
            sms(out, m.from, name, &text);
        }
        Event::RoomPresence { user, online } => {
            let status = if *online { 0 } else { 1 };
            frame(
                out,
                "NotifyUserStatusMes",
                &json!({"userId": user.id, "status": status}),
            );
        }
        Event::Notice { text } => sms(out, Uid(0), "system", text),
        Event::Bye { reason } => sms(
            out,
            Uid(0),
            "system",
            &format!("goodbye: {}", reason.as_str()),
        ),
        Event::Error(e) => error(out, e),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MsgView;
    use crate::ids::Stamp;
    use crate::model::Message;
    use std::sync::Arc;

    fn frames(out: &Frames) -> Vec<Value> {
        out.iter()
            .map(|f| {
                let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
                assert_eq!(len, f.len() - 4);
                assert!(len <= MAX_FRAME);
                serde_json::from_slice(&f[4..]).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_long_quoted_message_is_split_under_the_cap() {
        let text = "\"q\" 汉字\\".repeat(900);
        let v = MsgView {
            msg: Arc::new(Message {
                id: Stamp::new(1, 1),
                from: Uid(7),
                to: Target::Group(LOBBY),
                text: text.clone(),
                cid: None,
                time: None,
            }),
            from_name: "tom".into(),
        };
        let mut out = Frames::default();
        encode_event(&Event::Message(v), &mut out);
        let got = frames(&out);
        assert!(got.len() > 1);
        let mut joined = String::new();
        for f in got {
            assert_eq!(f["type"], "SmsMes");
            let data: Value = serde_json::from_str(f["data"].as_str().unwrap()).unwrap();
            assert_eq!(data["userId"], 7);
            joined.push_str(data["content"].as_str().unwrap());
        }
        assert_eq!(joined, text);
    }

    #[test]
    fn keys_match_in_any_case() {
        let data = json!({"UserID": 100, "USERPWD": "pw"}).to_string();
        let f = json!({"Type": "LoginMes", "Data": data}).to_string();
        match decode(f.as_bytes()) {
            Incoming::Login { who, password, .. } => {
                assert_eq!(who, Who::Id(Uid(100)));
                assert_eq!(password, "pw");
            }
            other => panic!("{other:?}"),
        }
    }
}
