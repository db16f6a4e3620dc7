//! The epoll chatroom dialect (seed 002), as seed-dialects.md describes it:
//! every record, both ways, is the first 65535 bytes of `struct Msg { int
//! type; int fromID; int toID; char content[65535]; }`, the text at offset
//! 12, NUL-padded.
//!
//! Each connection is a guest in the lobby numbered at connect with the
//! lowest free chat id (so the first ten fit the client's one-digit private
//! addressing), named `Client #N`. A line is said in the lobby; a line
//! `\N text` goes privately to chat id N on this node. Lines back are the
//! original server's: `Client N say >> text`, `... say to you privately >>
//! ...`, `Client N is not in the chat room yet~`, and `CAUTION You are the
//! only one in the chat room!` when nobody else was there to hear it.

use super::{Frames, Incoming, ReqCtx};
use crate::api::{ChatError, Command, ErrorCode, Event, Reply};
use crate::ids::LOBBY;
use crate::model::Target;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

pub const RECORD: usize = 65535;
const CONTENT: usize = 12;

/// What a request asked for, and what its answer needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The connection's guest login; the chat id it was given.
    Welcome(u32),
    Public,
    Private(u32),
}

/// Chat ids in use on one listener.
#[derive(Default)]
pub struct ChatIds(Mutex<BTreeSet<u32>>);

impl ChatIds {
    fn take(&self) -> u32 {
        let mut used = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let id = (1..).find(|i| !used.contains(i)).unwrap_or(0);
        used.insert(id);
        id
    }

    fn give_back(&self, id: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// A connection's chat id, given back when the connection ends.
pub struct Conn {
    chat: u32,
    ids: Arc<ChatIds>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.ids.give_back(self.chat);
    }
}

/// The guest name of a chat id.
fn guest_name(chat: u32) -> String {
    format!("Client #{chat}")
}

impl Conn {
    pub fn new(ids: Arc<ChatIds>) -> Conn {
        Conn {
            chat: ids.take(),
            ids,
        }
    }

    pub fn greeting(&self) -> Incoming {
        Incoming::Command(
            ReqCtx::EpollChatroom(Kind::Welcome(self.chat)),
            Command::GuestLogin {
                name: guest_name(self.chat),
            },
        )
    }

    pub fn decode(&self, rec: &[u8], out: &mut Vec<Incoming>) -> Result<(), ChatError> {
        let content = &rec[CONTENT..];
        let end = content
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(content.len());
        // The client zeroes the content before each line: bytes after the
        // text mean the stream is out of step.
        if content[end..].iter().any(|b| *b != 0) {
            return Err(ChatError::new(
                ErrorCode::BadRequest,
                "a record must be NUL-padded after its text; the stream is out of step",
            ));
        }
        let line = String::from_utf8_lossy(&content[..end]);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return Ok(());
        }
        let mut chars = line.chars();
        let private = match (chars.next(), chars.next()) {
            (Some('\\'), Some(d)) if d.is_ascii_digit() => Some(d as u32 - '0' as u32),
            _ => None,
        };
        out.push(match private {
            Some(to) => Incoming::Command(
                ReqCtx::EpollChatroom(Kind::Private(to)),
                Command::SendToGuest {
                    name: guest_name(to),
                    // The rest of the line after the digit, as the original.
                    text: line[2..].to_string(),
                },
            ),
            None => Incoming::Command(
                ReqCtx::EpollChatroom(Kind::Public),
                Command::Send {
                    to: Target::Group(LOBBY),
                    text: line.to_string(),
                    cid: None,
                    time: None,
                },
            ),
        });
        Ok(())
    }
}

fn line(out: &mut Frames, text: &str) {
    out.push_with(|buf| {
        let start = buf.len();
        buf.resize(start + RECORD, 0);
        let text = super::cut_at(text, RECORD - CONTENT - 1);
        buf[start + CONTENT..start + CONTENT + text.len()].copy_from_slice(text.as_bytes());
    });
}

pub fn encode_reply(kind: Kind, reply: &Result<Reply, ChatError>, out: &mut Frames) {
    match (kind, reply) {
        (Kind::Welcome(chat), Ok(_)) => line(
            out,
            &format!("Welcome you join to the chat room! Your chat ID is: Client #{chat}"),
        ),
        (Kind::Public, Ok(Reply::Sent { alone: true, .. })) => {
            line(out, "CAUTION You are the only one in the chat room!")
        }
        (Kind::Private(to), Err(e)) if e.code == ErrorCode::UnknownUser => {
            line(out, &format!("Client {to} is not in the chat room yet~"))
        }
        (_, Ok(_)) => {}
        (_, Err(e)) => line(out, &format!("chatd: {}", e.message)),
    }
}

/// How a speaker is named: `Client N` for one of this chatroom's guests,
/// the display name for anyone else.
fn speaker(name: &str) -> String {
    name.strip_prefix("Client #")
        .and_then(|r| r.strip_suffix(" (guest)"))
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .map(|n| format!("Client {n}"))
        .unwrap_or_else(|| name.to_string())
}

pub fn encode_event(event: &Event, out: &mut Frames) {
    match event {
        Event::Message(v) => {
            let who = speaker(&v.from_name);
            let text = match v.msg.to {
                Target::User(_) => format!("{who} say to you privately >> {}", v.msg.text),
                Target::Group(_) => format!("{who} say >> {}", v.msg.text),
            };
            line(out, &text);
        }
        Event::Notice { text } => line(out, &format!("chatd: {text}")),
        Event::Bye { reason } => line(out, &format!("chatd: goodbye ({})", reason.as_str())),
        Event::Error(e) => line(out, &format!("chatd: {}", e.message)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(text: &str) -> Vec<u8> {
        let mut r = vec![0u8; RECORD];
        r[..12].copy_from_slice(&[7; 12]); // the client never sets the ints
        r[CONTENT..CONTENT + text.len()].copy_from_slice(text.as_bytes());
        r
    }

    #[test]
    fn chat_ids_are_the_lowest_free_and_come_back() {
        let ids = Arc::new(ChatIds::default());
        let a = Conn::new(ids.clone());
        let b = Conn::new(ids.clone());
        assert_eq!((a.chat, b.chat), (1, 2));
        drop(a);
        let c = Conn::new(ids.clone());
        assert_eq!(c.chat, 1);
    }

    #[test]
    fn lines_public_and_private() {
        let c = Conn::new(Arc::default());
        let mut out = Vec::new();
        c.decode(&rec("hello all\n"), &mut out).unwrap();
        c.decode(&rec("\\3 psst\n"), &mut out).unwrap();
        c.decode(&rec("\n"), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0], Incoming::Command(_, Command::Send { text, .. }) if text == "hello all")
        );
        assert!(matches!(&out[1],
            Incoming::Command(ReqCtx::EpollChatroom(Kind::Private(3)), Command::SendToGuest { name, text })
            if name == "Client #3" && text == " psst"));
        let mut bad = rec("x");
        bad[RECORD - 1] = 1;
        assert!(c.decode(&bad, &mut out).is_err());
        assert_eq!(speaker("Client #4 (guest)"), "Client 4");
        assert_eq!(speaker("alice"), "alice");
    }
}
