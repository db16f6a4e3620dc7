//! The C chatroom dialect (seed 000), as seed-dialects.md describes it:
//! `struct send_pack { char name[50]; char data[100]; char type; }`, 151
//! bytes, `type` 0 chat, 1 online, 2 offline.
//!
//! The name in a connection's first record makes it a guest in the lobby;
//! each type-0 record after that is a line said there. What is said in the
//! lobby comes back as type-0 records named after the speaker (a guest is
//! `name (guest)`), split over several records at character boundaries when
//! longer than 99 bytes; lobby arrivals and departures come as type-1 and
//! type-2 records. The client has no error form: what it cannot be told is
//! dropped. A record whose type byte is not 0, 1 or 2 means the stream is
//! out of step, and the connection is closed.

use super::{Frames, Incoming, ReqCtx};
use crate::api::{ChatError, Command, ErrorCode, Event};
use crate::ids::LOBBY;
use crate::model::Target;
use std::time::{Duration, Instant};

pub const RECORD: usize = 151;
const NAME: usize = 50;
const DATA: usize = 100;
const TYPE: usize = 150;

const CHAT: u8 = 0;
const ONLINE: u8 = 1;
const OFFLINE: u8 = 2;

/// At end of input the client re-sends its last record in a tight loop; a
/// record repeated within this time is that loop, not a person typing
/// (the loop is read at the session's rate limit, at least one a second).
const REPEAT: Duration = Duration::from_secs(2);

/// What a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The first record: the connection's guest.
    Join,
    Say,
}

/// What the dialect remembers about a connection.
#[derive(Default)]
pub struct Conn {
    named: bool,
    last: Option<(Vec<u8>, Instant)>,
}

/// The bytes of a NUL-terminated field (all of it when there is no NUL).
fn field(b: &[u8]) -> &[u8] {
    match b.iter().position(|c| *c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

impl Conn {
    pub fn decode(
        &mut self,
        rec: &[u8],
        now: Instant,
        out: &mut Vec<Incoming>,
    ) -> Result<(), ChatError> {
        let ty = rec[TYPE];
        if ty > OFFLINE {
            return Err(ChatError::new(
                ErrorCode::BadRequest,
                "a record's type must be 0, 1 or 2; the stream is out of step",
            ));
        }
        if !self.named {
            self.named = true;
            // `#` marks the names the server gives (the epoll chatroom's).
            let name = String::from_utf8_lossy(field(&rec[..NAME])).replace('#', "");
            out.push(Incoming::Command(
                ReqCtx::CChatroom(Kind::Join),
                Command::GuestLogin { name },
            ));
        }
        if ty != CHAT {
            return Ok(());
        }
        if let Some((prev, at)) = &mut self.last {
            if prev.as_slice() == rec && now.duration_since(*at) < REPEAT {
                *at = now;
                return Ok(());
            }
        }
        self.last = Some((rec.to_vec(), now));
        let text = String::from_utf8_lossy(field(&rec[NAME..NAME + DATA]));
        let text = text.trim_end_matches(['\r', '\n']);
        if text.trim().is_empty() {
            return Ok(());
        }
        out.push(Incoming::Command(
            ReqCtx::CChatroom(Kind::Say),
            Command::Send {
                to: Target::Group(LOBBY),
                text: text.to_string(),
                cid: None,
                time: None,
            },
        ));
        Ok(())
    }
}

/// A name cut to fit `max` bytes, keeping a guest's ` (guest)` mark.
fn fit_name(name: &str, max: usize) -> std::borrow::Cow<'_, str> {
    const MARK: &str = " (guest)";
    match name.strip_suffix(MARK) {
        Some(base) if name.len() > max => {
            format!("{}{MARK}", super::cut_at(base, max - MARK.len())).into()
        }
        _ => super::cut_at(name, max).into(),
    }
}

fn record(out: &mut Frames, name: &str, data: &str, ty: u8) {
    out.push_with(|buf| {
        let start = buf.len();
        buf.resize(start + RECORD, 0);
        let rec = &mut buf[start..];
        let name = fit_name(name, NAME - 1);
        rec[..name.len()].copy_from_slice(name.as_bytes());
        rec[NAME..NAME + data.len()].copy_from_slice(data.as_bytes());
        rec[TYPE] = ty;
    });
}

fn lines(out: &mut Frames, name: &str, text: &str) {
    for piece in super::split_bytes(text, DATA - 1) {
        record(out, name, piece, CHAT);
    }
}

pub fn encode_event(event: &Event, out: &mut Frames) {
    match event {
        Event::Message(v) => lines(out, &v.from_name, &v.msg.text),
        // A name not known yet (its record still on its way) says nothing.
        Event::RoomPresence { user, online } if !user.name.is_empty() => {
            record(out, &user.name, "", if *online { ONLINE } else { OFFLINE })
        }
        Event::Notice { text } => lines(out, "system", text),
        Event::Bye { reason } => lines(out, "system", &format!("goodbye: {}", reason.as_str())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, data: &str, ty: u8) -> Vec<u8> {
        let mut r = vec![0xAAu8; RECORD];
        r[..name.len()].copy_from_slice(name.as_bytes());
        r[name.len()] = 0;
        r[NAME..NAME + data.len()].copy_from_slice(data.as_bytes());
        r[NAME + data.len()] = 0;
        r[TYPE] = ty;
        r
    }

    #[test]
    fn the_first_record_names_the_guest_and_floods_are_dropped() {
        let mut c = Conn::default();
        let mut out = Vec::new();
        let t = Instant::now();
        c.decode(&rec("ca#rol", "garbage", ONLINE), t, &mut out)
            .unwrap();
        c.decode(&rec("carol", "hi", CHAT), t, &mut out).unwrap();
        // The end-of-input loop: the same record again and again, as fast
        // as the session's rate lets it be read.
        for i in 1..100 {
            let at = t + Duration::from_millis(i * 900);
            c.decode(&rec("carol", "hi", CHAT), at, &mut out).unwrap();
        }
        let later = t + Duration::from_secs(200);
        c.decode(&rec("carol", "hi", CHAT), later, &mut out)
            .unwrap();
        let cmds: Vec<&Command> = out
            .iter()
            .map(|i| match i {
                Incoming::Command(_, c) => c,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(matches!(cmds[0], Command::GuestLogin { name } if name == "carol"));
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert!(c.decode(&rec("carol", "x", 7), later, &mut out).is_err());
    }

    #[test]
    fn long_texts_become_several_whole_records() {
        let mut out = Frames::default();
        let text = "汉字".repeat(40); // 240 bytes
        lines(&mut out, "bob (guest)", &text);
        let mut joined = Vec::new();
        for r in out.iter() {
            assert_eq!(r.len(), RECORD);
            assert_eq!(r[TYPE], CHAT);
            assert_eq!(field(&r[..NAME]), b"bob (guest)");
            let d = field(&r[NAME..NAME + DATA]);
            assert!(d.len() <= 99);
            assert!(std::str::from_utf8(d).is_ok(), "cut inside a character");
            joined.extend_from_slice(d);
        }
        assert_eq!(out.len(), 3);
        assert_eq!(joined, text.as_bytes());
        // A long guest name keeps its mark.
        let long = format!("{} (guest)", "名".repeat(30));
        let fitted = fit_name(&long, NAME - 1);
        assert!(
            fitted.len() <= 49 && fitted.ends_with(" (guest)"),
            "{fitted}"
        );
    }
}
