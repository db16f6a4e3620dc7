//! Client dialects: translations between wire JSON and the `api` types.
//!
//! Each value a client sends is recognised on its own: an object with
//! `"msgid"` is the classic dialect (`classic.rs`, both numberings), one with
//! `"type"` is chatd's own protocol (`native.rs`). Replies go back in the
//! dialect and numbering of the request; pushes go in the dialect of the
//! session's login. Nothing here touches the store or the hub.

pub mod classic;
pub mod fields;
pub mod native;

use crate::api::{ChatError, Command, ErrorCode, Event, Reply};
use crate::ids::Uid;
use serde_json::{Map, Value};

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
    Classic(Numbering),
}

impl Dialect {
    pub fn to_u8(self) -> u8 {
        match self {
            Dialect::Native => 0,
            Dialect::Classic(Numbering::Course) => 1,
            Dialect::Classic(Numbering::Thousand) => 2,
        }
    }

    pub fn from_u8(v: u8) -> Dialect {
        match v {
            1 => Dialect::Classic(Numbering::Course),
            2 => Dialect::Classic(Numbering::Thousand),
            _ => Dialect::Native,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::Classic(_) => "classic",
        }
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
    Classic {
        numbering: Numbering,
        kind: classic::Kind,
    },
}

impl ReqCtx {
    pub fn dialect(&self) -> Dialect {
        match self {
            ReqCtx::Native { .. } => Dialect::Native,
            ReqCtx::Classic { numbering, .. } => Dialect::Classic(*numbering),
        }
    }
}

/// How a login names its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Id(Uid),
    Name(String),
}

/// One decoded client value.
#[derive(Debug)]
pub enum Incoming {
    Command(ReqCtx, Command),
    /// Needs its password hashed before the hub sees it.
    Register {
        ctx: ReqCtx,
        name: String,
        password: String,
    },
    /// Needs its password checked.
    Login {
        ctx: ReqCtx,
        who: Who,
        password: String,
    },
    Passwd {
        ctx: ReqCtx,
        old: String,
        new: String,
    },
    /// A request we cannot serve; answer it and go on.
    Invalid(ReqCtx, ChatError),
}

/// Decode one framed value. `Err` means the stream cannot be trusted any
/// more (malformed JSON): answer with the error and close.
pub fn decode(bytes: &[u8], last: Dialect) -> Result<Incoming, ChatError> {
    let fallback = fallback_ctx(last);
    if std::str::from_utf8(bytes).is_err() {
        return Ok(Incoming::Invalid(
            fallback,
            ChatError::new(ErrorCode::BadUtf8, "request is not valid UTF-8"),
        ));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ChatError::new(ErrorCode::BadJson, format!("malformed JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Ok(Incoming::Invalid(
            fallback,
            ChatError::new(ErrorCode::NotObject, "each request must be a JSON object"),
        ));
    };
    Ok(decode_object(map))
}

fn decode_object(map: Map<String, Value>) -> Incoming {
    if map.contains_key("msgid") {
        classic::decode(map)
    } else {
        native::decode(map)
    }
}

/// Where to send an error for a value we could not attribute to a dialect.
pub fn fallback_ctx(last: Dialect) -> ReqCtx {
    match last {
        Dialect::Native => ReqCtx::Native { req: None },
        Dialect::Classic(numbering) => ReqCtx::Classic {
            numbering,
            kind: classic::Kind::Unknown,
        },
    }
}

/// The writes one reply or push turns into: each frame is written with its
/// own write call, so a client reading one value per read gets one value.
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
        if self.buf.capacity() == 0 {
            // A typical value fits; growing from nothing takes many steps.
            self.buf.reserve(512);
        }
        // Serializing our own types into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, v);
        self.buf.push(terminator);
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

/// Encode a reply for the request it answers (possibly nothing: the classic
/// protocol answers chat requests with silence).
pub fn encode_reply(ctx: &ReqCtx, reply: &Result<Reply, ChatError>, out: &mut Frames) {
    match ctx {
        ReqCtx::Native { req } => native::encode_reply(req.as_ref(), reply, out),
        ReqCtx::Classic { numbering, kind } => classic::encode_reply(*numbering, *kind, reply, out),
    }
}

/// Encode a push for a session speaking `dialect`.
pub fn encode_event(dialect: Dialect, event: &Event, out: &mut Frames) {
    match dialect {
        Dialect::Native => native::encode_event(event, out),
        Dialect::Classic(n) => classic::encode_event(n, event, out),
    }
}
