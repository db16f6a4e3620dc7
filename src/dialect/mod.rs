//! Client dialects: translations between what each kind of client sends and
//! the `api` types. One file per dialect:
//!
//! | file | client | framing |
//! |------|--------|---------|
//! | `native.rs` | chatd's own protocol (`"type"`); over WebSocket, `Web` | JSON stream; one value per WebSocket message |
//! | `classic.rs` | the muduo course project's ChatClient (`"msgid"`, both numberings) | JSON stream |
//! | `sponge.rs` | the sponge Qt client (`"msgType"`) | JSON stream |
//! | `go_chatroom.rs` | the Go chatroom (`LoginMes`, `SmsMes`) | length-prefixed JSON |
//! | `c_chatroom.rs` | the C chatroom (151-byte records) | fixed records |
//! | `epoll_chatroom.rs` | the epoll chatroom (65535-byte records) | fixed records |
//!
//! On the main port each JSON value is recognised on its own: `"msgid"` is
//! classic, `"msgType"` is sponge, anything else is chatd's protocol.
//! Replies go back in the dialect and numbering of their request; pushes go
//! in the dialect of the session's latest request. What a dialect needs from
//! the hub is data ([`SessionTraits`]); nothing here touches the store or the
//! hub, and nothing behind this module names a dialect.

pub mod c_chatroom;
pub mod classic;
pub mod epoll_chatroom;
pub mod fields;
pub mod go_chatroom;
pub mod native;
pub mod sponge;

pub use crate::api::Who;
use crate::api::{ChatError, Command, ErrorCode, Event, Reply, SessionTraits};
use crate::framing::Framing;
use crate::ids::Uid;
use native::Ids;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numbering {
    /// LOGIN_MSG = 1 ... GROUP_CHAT_MSG = 10.
    Course,
    /// LOGIN_MSG = 1000 ... GROUP_CHAT_MSG = 1009.
    Thousand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Native,
    /// chatd's protocol over WebSocket: message ids go out as strings.
    Web,
    Classic(Numbering),
    Sponge,
    GoChatroom,
    CChatroom,
    EpollChatroom,
}

/// How a dialect's replies and pushes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// Everything queued in one write: the client splits the stream itself.
    Gathered,
    /// One value per write; `paced`: with a pause between two writes, for
    /// clients that take whatever one read returns as one value.
    OneEach { paced: bool },
}

impl Dialect {
    pub fn to_u8(self) -> u8 {
        match self {
            Dialect::Native => 0,
            Dialect::Classic(Numbering::Course) => 1,
            Dialect::Classic(Numbering::Thousand) => 2,
            Dialect::Sponge => 3,
            Dialect::GoChatroom => 4,
            Dialect::CChatroom => 5,
            Dialect::EpollChatroom => 6,
            Dialect::Web => 7,
        }
    }

    pub fn from_u8(v: u8) -> Dialect {
        match v {
            1 => Dialect::Classic(Numbering::Course),
            2 => Dialect::Classic(Numbering::Thousand),
            3 => Dialect::Sponge,
            4 => Dialect::GoChatroom,
            5 => Dialect::CChatroom,
            6 => Dialect::EpollChatroom,
            7 => Dialect::Web,
            _ => Dialect::Native,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::Web => "web",
            Dialect::Classic(_) => "classic",
            Dialect::Sponge => "sponge",
            Dialect::GoChatroom => "go-chatroom",
            Dialect::CChatroom => "c-chatroom",
            Dialect::EpollChatroom => "epoll-chatroom",
        }
    }

    /// What sessions of this dialect need from the hub.
    pub fn traits(self) -> SessionTraits {
        let seed = SessionTraits {
            replay_at_login: true,
            idle_exempt: true,
            ..SessionTraits::default()
        };
        match self {
            Dialect::Native | Dialect::Web => SessionTraits {
                replay_at_login: true,
                tokens: true,
                ..SessionTraits::default()
            },
            Dialect::Classic(_) => SessionTraits {
                roster_in_login: true,
                ..seed
            },
            // The sponge client asks for its waiting messages itself.
            Dialect::Sponge => SessionTraits {
                replay_at_login: false,
                ..seed
            },
            Dialect::GoChatroom => SessionTraits {
                room_in_login: true,
                joins_lobby: true,
                room_presence: true,
                ..seed
            },
            // Guests live in the room while connected: nothing waits for them.
            Dialect::CChatroom => SessionTraits {
                replay_at_login: false,
                room: true,
                room_presence: true,
                ..seed
            },
            Dialect::EpollChatroom => SessionTraits {
                replay_at_login: false,
                room: true,
                report_alone: true,
                ..seed
            },
        }
    }

    /// `paced`: the operator leaves a gap between two writes to the clients
    /// that need one (`--classic-push-gap-ms` above 0).
    pub fn writes(self, paced: bool) -> Writes {
        match self {
            // Over WebSocket each value still becomes a message of its own.
            Dialect::Native | Dialect::Web => Writes::Gathered,
            // Without pacing, a classic client is one that splits the
            // stream at each value's NUL: as many as are ready go in one
            // write. (Sponge values have no terminator to split at.)
            Dialect::Classic(_) if !paced => Writes::Gathered,
            Dialect::Classic(_) | Dialect::Sponge | Dialect::EpollChatroom => {
                Writes::OneEach { paced }
            }
            // These read exactly one value's bytes at a time.
            Dialect::GoChatroom | Dialect::CChatroom => Writes::OneEach { paced: false },
        }
    }

    /// Whether a message counts as delivered once written to the socket
    /// (the client has no way to acknowledge). For guests only their
    /// private messages are counted: what they hear in the lobby was never
    /// waiting for them.
    pub fn written_is_delivered(self, direct: bool) -> bool {
        match self {
            Dialect::Classic(_) | Dialect::Sponge | Dialect::GoChatroom => true,
            Dialect::CChatroom | Dialect::EpollChatroom => direct,
            Dialect::Native | Dialect::Web => false,
        }
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// The main port: chatd's protocol, classic and sponge, told apart per value.
    Auto,
    Only(Dialect),
}

impl Listen {
    /// A dialect listener's name (`--listen-dialect NAME=ADDR`).
    pub fn from_name(name: &str) -> Option<Listen> {
        let d = match name {
            "native" => Dialect::Native,
            "classic" => Dialect::Classic(Numbering::Course),
            "sponge" => Dialect::Sponge,
            "go-chatroom" => Dialect::GoChatroom,
            "c-chatroom" => Dialect::CChatroom,
            "epoll-chatroom" => Dialect::EpollChatroom,
            _ => return None,
        };
        Some(Listen::Only(d))
    }

    pub const NAMES: &'static str =
        "native, classic, sponge, go-chatroom, c-chatroom, epoll-chatroom";

    pub fn framing(self) -> Framing {
        match self {
            Listen::Only(Dialect::Web) => Framing::Messages,
            Listen::Auto => Framing::JsonStream { keepalive: true },
            Listen::Only(Dialect::Sponge) => Framing::JsonStream { keepalive: true },
            Listen::Only(Dialect::Native | Dialect::Classic(_)) => {
                Framing::JsonStream { keepalive: false }
            }
            Listen::Only(Dialect::GoChatroom) => Framing::LengthPrefixed {
                max: go_chatroom::MAX_FRAME,
            },
            Listen::Only(Dialect::CChatroom) => Framing::Records {
                size: c_chatroom::RECORD,
            },
            Listen::Only(Dialect::EpollChatroom) => Framing::Records {
                size: epoll_chatroom::RECORD,
            },
        }
    }

    /// Whether clients of this listener chat in the lobby (so it must exist).
    pub fn is_room(self) -> bool {
        matches!(
            self,
            Listen::Only(Dialect::GoChatroom | Dialect::CChatroom | Dialect::EpollChatroom)
        )
    }
}

/// What the connections of one listener share.
pub struct Edge {
    pub listen: Listen,
    /// The epoll chatroom's chat ids: one numbering per node, so that `\N`
    /// names one connection whatever listener it came in on.
    chat_ids: Arc<epoll_chatroom::ChatIds>,
}

impl Edge {
    pub fn new(listen: Listen) -> Arc<Edge> {
        Edge::sharing(listen, Arc::default())
    }

    /// A listener that numbers epoll chatroom connections with `chat_ids`.
    pub fn sharing(listen: Listen, chat_ids: Arc<epoll_chatroom::ChatIds>) -> Arc<Edge> {
        Arc::new(Edge { listen, chat_ids })
    }
}

/// A native request's correlation id, echoed in its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReqId {
    Num(i64),
    Str(Box<str>),
}

/// What encoding a reply needs to know about its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReqCtx {
    Native {
        req: Option<ReqId>,
    },
    Web {
        req: Option<ReqId>,
    },
    Classic {
        numbering: Numbering,
        kind: classic::Kind,
    },
    Sponge(sponge::Kind),
    GoChatroom(go_chatroom::Kind),
    CChatroom(c_chatroom::Kind),
    EpollChatroom(epoll_chatroom::Kind),
}

impl ReqCtx {
    pub fn dialect(&self) -> Dialect {
        match self {
            ReqCtx::Native { .. } => Dialect::Native,
            ReqCtx::Web { .. } => Dialect::Web,
            ReqCtx::Classic { numbering, .. } => Dialect::Classic(*numbering),
            ReqCtx::Sponge(_) => Dialect::Sponge,
            ReqCtx::GoChatroom(_) => Dialect::GoChatroom,
            ReqCtx::CChatroom(_) => Dialect::CChatroom,
            ReqCtx::EpollChatroom(_) => Dialect::EpollChatroom,
        }
    }

    /// Whether failing this request leaves the connection useless: a room
    /// client whose guest could not be made has nothing to say, and
    /// (having no error form) is better disconnected than ignored.
    pub fn fatal_on_error(&self) -> bool {
        matches!(
            self,
            ReqCtx::CChatroom(c_chatroom::Kind::Join)
                | ReqCtx::EpollChatroom(epoll_chatroom::Kind::Welcome(_))
        )
    }
}

/// One decoded client value.
#[derive(Debug)]
pub enum Incoming {
    Command(ReqCtx, Command),
    /// Needs its password hashed before the hub sees it; `id` is one the
    /// client chose.
    Register {
        ctx: ReqCtx,
        name: String,
        password: String,
        id: Option<Uid>,
    },
    /// Needs its password checked. `tell_unknown`: the dialect answers an
    /// unknown account differently from a wrong password (the Go chatroom,
    /// whose register tells which ids are taken anyway).
    Login {
        ctx: ReqCtx,
        who: Who,
        password: String,
        tell_unknown: bool,
    },
    Passwd {
        ctx: ReqCtx,
        old: String,
        new: String,
    },
    /// Log in again with a session token.
    Resume {
        ctx: ReqCtx,
        token: String,
    },
    /// A request we cannot serve; answer it and go on.
    Invalid(ReqCtx, ChatError),
}

impl Incoming {
    pub fn ctx(&self) -> &ReqCtx {
        match self {
            Incoming::Command(c, _)
            | Incoming::Invalid(c, _)
            | Incoming::Register { ctx: c, .. }
            | Incoming::Login { ctx: c, .. }
            | Incoming::Passwd { ctx: c, .. }
            | Incoming::Resume { ctx: c, .. } => c,
        }
    }
}

/// One connection's decoding: its listener's dialect(s) and whatever a
/// dialect remembers about the connection.
pub struct Decoder {
    listen: Listen,
    /// The dialect of the latest value (fixed on a dialect's own port).
    last: Dialect,
    c: c_chatroom::Conn,
    epoll: Option<epoll_chatroom::Conn>,
}

impl Decoder {
    pub fn new(edge: &Edge) -> Decoder {
        let last = match edge.listen {
            Listen::Auto => Dialect::Native,
            Listen::Only(d) => d,
        };
        let epoll = (last == Dialect::EpollChatroom)
            .then(|| epoll_chatroom::Conn::new(edge.chat_ids.clone()));
        Decoder {
            listen: edge.listen,
            last,
            c: c_chatroom::Conn::default(),
            epoll,
        }
    }

    /// The dialect pushes to this connection are written in.
    pub fn dialect(&self) -> Dialect {
        self.last
    }

    /// What the connection asks for before the client says anything (the
    /// epoll chatroom's guest, numbered at connect).
    pub fn greeting(&self) -> Option<Incoming> {
        self.epoll.as_ref().map(epoll_chatroom::Conn::greeting)
    }

    /// Decode one framed value into zero or more requests. `Err` means the
    /// stream cannot be trusted any more: answer with the error and close.
    pub fn decode(
        &mut self,
        frame: &[u8],
        now: Instant,
        out: &mut Vec<Incoming>,
    ) -> Result<(), ChatError> {
        match self.listen {
            Listen::Auto => {
                let i = decode_json(frame, self.last, None)?;
                self.last = i.ctx().dialect();
                out.push(i);
            }
            Listen::Only(
                d @ (Dialect::Native | Dialect::Web | Dialect::Classic(_) | Dialect::Sponge),
            ) => {
                let i = decode_json(frame, d, Some(d))?;
                if let Dialect::Classic(_) = i.ctx().dialect() {
                    // Pushes follow the numbering of the latest request.
                    self.last = i.ctx().dialect();
                }
                out.push(i);
            }
            Listen::Only(Dialect::GoChatroom) => out.push(go_chatroom::decode(frame)),
            Listen::Only(Dialect::CChatroom) => self.c.decode(frame, now, out)?,
            Listen::Only(Dialect::EpollChatroom) => {
                if let Some(e) = &self.epoll {
                    e.decode(frame, out)?;
                }
            }
        }
        Ok(())
    }
}

/// Decode one JSON value. `last`: the connection's latest dialect, for
/// errors we cannot attribute; `only`: the one dialect of a dedicated port.
fn decode_json(bytes: &[u8], last: Dialect, only: Option<Dialect>) -> Result<Incoming, ChatError> {
    // The two native requests every message makes skip the JSON map; a
    // value they do not take goes the map's way. (Classic chat requests
    // read the same way were no cheaper: one request per message, where
    // native makes two.)
    let fast = match only {
        None | Some(Dialect::Native) => native::decode_fast(bytes, false),
        Some(Dialect::Web) => native::decode_fast(bytes, true),
        Some(_) => None,
    };
    match fast {
        Some(i) => Ok(i),
        None => decode_map(bytes, last, only),
    }
}

/// [`decode_json`] through a JSON map: every request.
fn decode_map(bytes: &[u8], last: Dialect, only: Option<Dialect>) -> Result<Incoming, ChatError> {
    let fallback = fallback_ctx(last);
    if std::str::from_utf8(bytes).is_err() {
        return Ok(Incoming::Invalid(
            fallback,
            ChatError::new(ErrorCode::BadUtf8, "request is not valid UTF-8"),
        ));
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            let sponge = only == Some(Dialect::Sponge)
                || (only.is_none() && (last == Dialect::Sponge || sponge::looks_like(bytes)));
            if !sponge {
                return Err(ChatError::new(
                    ErrorCode::BadJson,
                    format!("malformed JSON: {e}"),
                ));
            }
            // The sponge client writes JSON by string formatting; mend
            // what it gets wrong, and keep the connection either way (the
            // value's end was found, so the stream position is known).
            match sponge::mend(bytes).and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(v) => v,
                None => {
                    return Ok(Incoming::Invalid(
                        ReqCtx::Sponge(sponge::Kind::Unknown),
                        ChatError::new(ErrorCode::BadJson, format!("malformed JSON: {e}")),
                    ))
                }
            }
        }
    };
    let Value::Object(map) = value else {
        return Ok(Incoming::Invalid(
            fallback,
            ChatError::new(ErrorCode::NotObject, "each request must be a JSON object"),
        ));
    };
    Ok(match only {
        Some(Dialect::Classic(_)) => classic::decode(map),
        Some(Dialect::Sponge) => sponge::decode(map),
        Some(Dialect::Web) => native::decode(map, true),
        Some(_) => native::decode(map, false),
        None => decode_object(map),
    })
}

fn decode_object(map: Map<String, Value>) -> Incoming {
    if map.contains_key("msgid") {
        classic::decode(map)
    } else if map.contains_key("msgType") {
        sponge::decode(map)
    } else {
        native::decode(map, false)
    }
}

/// Where to send an error for a value we could not attribute to a request.
pub fn fallback_ctx(last: Dialect) -> ReqCtx {
    match last {
        Dialect::Native => ReqCtx::Native { req: None },
        Dialect::Web => ReqCtx::Web { req: None },
        Dialect::Classic(numbering) => ReqCtx::Classic {
            numbering,
            kind: classic::Kind::Unknown,
        },
        Dialect::Sponge => ReqCtx::Sponge(sponge::Kind::Unknown),
        Dialect::GoChatroom => ReqCtx::GoChatroom(go_chatroom::Kind::Unknown),
        Dialect::CChatroom => ReqCtx::CChatroom(c_chatroom::Kind::Say),
        Dialect::EpollChatroom => ReqCtx::EpollChatroom(epoll_chatroom::Kind::Public),
    }
}

/// The writes one reply or push turns into: each frame is written with its
/// own write call when the dialect needs that.
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Frames {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// Append one JSON value and its terminator as a frame.
    pub fn push_json<T: serde::Serialize + ?Sized>(&mut self, v: &T, terminator: u8) {
        self.push_with(|buf| {
            // Serializing our own types into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buf, v);
            buf.push(terminator);
        });
    }

    /// Take the last frame back off.
    pub fn pop(&mut self) {
        if self.ends.pop().is_some() {
            self.buf.truncate(self.ends.last().copied().unwrap_or(0));
        }
    }

    /// The last frame's bytes, its terminator included.
    pub fn last_len(&self) -> usize {
        match self.ends.as_slice() {
            [.., before, last] => last - before,
            [last] => *last,
            [] => 0,
        }
    }

    /// Append one frame built by `f` (which only appends to the buffer).
    pub fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.buf.capacity() == 0 {
            // A typical value fits; growing from nothing takes many steps.
            self.buf.reserve(512);
        }
        f(&mut self.buf);
        self.ends.push(self.buf.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of all frames together.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// All frames, back to back.
    pub fn bytes_all(&self) -> &[u8] {
        &self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let f = &self.buf[start..end];
            start = end;
            f
        })
    }
}

/// Encode a reply for the request it answers (possibly nothing: several
/// dialects answer chat requests with silence).
pub fn encode_reply(ctx: &ReqCtx, reply: &Result<Reply, ChatError>, out: &mut Frames) {
    match ctx {
        ReqCtx::Native { req } => native::encode_reply(req.as_ref(), reply, Ids::Numbers, out),
        ReqCtx::Web { req } => native::encode_reply(req.as_ref(), reply, Ids::Strings, out),
        ReqCtx::Classic { numbering, kind } => classic::encode_reply(*numbering, *kind, reply, out),
        ReqCtx::Sponge(kind) => sponge::encode_reply(*kind, reply, out),
        ReqCtx::GoChatroom(kind) => go_chatroom::encode_reply(*kind, reply, out),
        ReqCtx::CChatroom(_) => {}
        ReqCtx::EpollChatroom(kind) => epoll_chatroom::encode_reply(*kind, reply, out),
    }
}

/// Encode a push for a session speaking `dialect`.
pub fn encode_event(dialect: Dialect, event: &Event, out: &mut Frames) {
    match dialect {
        Dialect::Native => native::encode_event(event, Ids::Numbers, out),
        Dialect::Web => native::encode_event(event, Ids::Strings, out),
        Dialect::Classic(n) => classic::encode_event(n, event, out),
        Dialect::Sponge => sponge::encode_event(event, out),
        Dialect::GoChatroom => go_chatroom::encode_event(event, out),
        Dialect::CChatroom => c_chatroom::encode_event(event, out),
        Dialect::EpollChatroom => epoll_chatroom::encode_event(event, out),
    }
}

/// The longest prefix of `s` that fits `max` bytes, cut on a character
/// boundary.
pub fn cut_at(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Split a text into pieces of at most `max` bytes, on character boundaries.
pub fn split_bytes(text: &str, max: usize) -> Vec<&str> {
    split_by(text, max.max(4), char::len_utf8)
}

/// Split a text into pieces whose characters cost at most `budget` in
/// all (a character's cost: its bytes once encoded, escapes included), on
/// character boundaries. Never empty: an empty text is one empty piece.
pub fn split_by(text: &str, budget: usize, cost: impl Fn(char) -> usize) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, c) in text.char_indices() {
        let l = cost(c);
        if used + l > budget && i > start {
            out.push(&text[start..i]);
            start = i;
            used = 0;
        }
        used += l;
    }
    if start < text.len() || out.is_empty() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests;
