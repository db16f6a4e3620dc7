//! A node's state as operations: what a snapshot is.
//!
//! Compaction drops the log behind the tables' checkpoint, so a node that
//! lacks what was dropped (a new node, or one away for longer than the log
//! is kept) is sent the tables instead. Each stored record is sent as the
//! few operations that `apply` rebuilds exactly that record from (a user
//! as its registration, its password change and its ban; a group as its
//! creation and its updates; a message as its `Send`), with the stamps the
//! record keeps. Installing a snapshot is then applying operations, which
//! merges like any others: whatever order, whatever the node had before,
//! and however often, the result is the same. So a node installs one over
//! its own state and loses nothing, and two nodes that each compacted away
//! what the other lacks heal by sending each other one.
//!
//! Both ends keep a [`Check`] (count and FNV-1a hash of the operations) so
//! that a snapshot cut short or changed on the way is not taken as whole.
//!
//! This module reads the store off the hub's thread ([`Reading`]) and says
//! what each record is as operations; it applies nothing (the hub and
//! restore do, with `apply`).

use crate::ids::{Stamp, Uid};
use crate::model::{OpBody, TokenRec, User, MARKS_PER_OP};
use crate::store::{Pin, Point, Record, SnapshotCursor, SnapshotReader, StoreError};
use serde::{Deserialize, Serialize};

/// One operation of a snapshot: what `apply` is given, and its stamp.
pub type SnapOp = (Stamp, OpBody);

/// A snapshot as it reaches whoever installs it, in this order: its point,
/// batches of operations, and the check of all of them.
#[derive(Debug)]
pub enum Part {
    Begin(Point),
    Ops(Vec<SnapOp>),
    End(Check),
}

/// About how much one batch of a reading carries, weighed as its records
/// decode: a mesh frame holds one batch, and a chunk of compressed
/// messages can decode to a hundred times its size. (Weighed as stored,
/// batches were 64 KiB; of short texts that was about this much decoded.)
pub const BATCH_BYTES: usize = 128 << 10;

/// Count and FNV-1a hash of a snapshot's operations, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub ops: u64,
    pub hash: u64,
}

impl Default for Check {
    fn default() -> Check {
        Check {
            ops: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Check {
    pub fn add(&mut self, op: &SnapOp) {
        let bytes = crate::store::encode(op);
        for b in bytes.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.ops += 1;
    }
}

/// The name a user registered with (a loser of a name collision is shown
/// as `name#id`; `#` is never in a registered name).
fn registered_name(u: &User) -> &str {
    u.name
        .strip_suffix(&format!("#{}", u.id))
        .unwrap_or(&u.name)
}

fn user_ops(u: User, out: &mut Vec<SnapOp>) {
    let user = u.id;
    let mut password_given = false;
    if u.created != Stamp::ZERO {
        if u.id.is_guest() {
            let name = u.name.strip_suffix(" (guest)").unwrap_or(&u.name);
            out.push((
                u.created,
                OpBody::Guest {
                    user,
                    name: name.into(),
                },
            ));
        } else {
            let name = registered_name(&u).to_string();
            let hash = u.hash.clone();
            out.push((u.created, OpBody::Register { user, name, hash }));
            password_given = u.pw_stamp == u.created;
        }
    }
    if u.pw_stamp != Stamp::ZERO && !password_given {
        out.push((u.pw_stamp, OpBody::SetPassword { user, hash: u.hash }));
    }
    if u.ban_stamp != Stamp::ZERO {
        let banned = u.banned;
        out.push((u.ban_stamp, OpBody::SetBanned { user, banned }));
    }
    if u.deleted {
        // At no time at all: the user's token floor (sent of its own) is
        // what the deletion's time did.
        out.push((Stamp::ZERO, OpBody::DeleteUser { user }));
    }
}

fn token_ops(user: Uid, issued: Stamp, t: TokenRec, out: &mut Vec<SnapOp>) {
    // A revocation that came before its token leaves no hash.
    let only_revoked = t.revoked && t.hash == [0; 32] && t.expires_ms == 0;
    if !only_revoked {
        let (hash, expires_ms) = (t.hash, t.expires_ms);
        out.push((
            issued,
            OpBody::Token {
                user,
                hash,
                expires_ms,
            },
        ));
    }
    if t.revoked {
        out.push((issued, OpBody::RevokeToken { user, issued }));
    }
}

fn group_ops(g: crate::model::Group, out: &mut Vec<SnapOp>) {
    let group = g.id;
    let none = Uid(0);
    let before = out.len();
    if g.created != Stamp::ZERO {
        out.push((
            g.created,
            OpBody::CreateGroup {
                group,
                creator: g.creator,
                name: g.name.clone(),
                desc: g.desc.clone(),
            },
        ));
    }
    // What changed after the creation (or with no creation seen).
    let later = |stamp: Stamp| stamp != Stamp::ZERO && stamp != g.created;
    let name = later(g.name_stamp).then(|| (g.name_stamp, g.name.clone()));
    let desc = later(g.desc_stamp).then(|| (g.desc_stamp, g.desc.clone()));
    match (name, desc) {
        (Some((a, name)), Some((b, desc))) if a == b => out.push((
            a,
            OpBody::UpdateGroup {
                group,
                actor: none,
                name: Some(name),
                desc: Some(desc),
            },
        )),
        (name, desc) => {
            if let Some((at, name)) = name {
                let name = Some(name);
                out.push((
                    at,
                    OpBody::UpdateGroup {
                        group,
                        actor: none,
                        name,
                        desc: None,
                    },
                ));
            }
            if let Some((at, desc)) = desc {
                let desc = Some(desc);
                out.push((
                    at,
                    OpBody::UpdateGroup {
                        group,
                        actor: none,
                        name: None,
                        desc,
                    },
                ));
            }
        }
    }
    if g.dissolved {
        out.push((Stamp::ZERO, OpBody::DissolveGroup { group, actor: none }));
    }
    if out.len() == before {
        // A record with nothing set yet still exists.
        let empty = OpBody::UpdateGroup {
            group,
            actor: none,
            name: None,
            desc: None,
        };
        out.push((Stamp::ZERO, empty));
    }
}

/// The operations that rebuild these records, in their order (consecutive
/// cursors share `Delivered` operations).
pub fn ops_of(records: Vec<Record>) -> Vec<SnapOp> {
    let mut out: Vec<SnapOp> = Vec::with_capacity(records.len());
    for r in records {
        match r {
            Record::Watermarks(w) => {
                if w.history != Stamp::ZERO || w.queue != Stamp::ZERO {
                    let (history, queue) = (w.history, w.queue);
                    out.push((Stamp::ZERO, OpBody::Expire { history, queue }));
                }
            }
            Record::User(u) => user_ops(u, &mut out),
            Record::TokenFloor(user, floor) => {
                out.push((floor, OpBody::RevokeTokens { user }));
            }
            Record::Token(user, issued, t) => token_ops(user, issued, t, &mut out),
            Record::Edge(a, b, e) => {
                // One link for both users' edges (the lower id's carries it).
                if e.stamp != Stamp::ZERO && a <= b {
                    let body = OpBody::Link {
                        actor: a,
                        other: b,
                        link: e.link,
                        note: e.note.clone(),
                    };
                    out.push((e.stamp, body));
                }
                if e.remark_stamp != Stamp::ZERO {
                    let body = OpBody::Remark {
                        owner: a,
                        friend: b,
                        remark: e.remark,
                    };
                    out.push((e.remark_stamp, body));
                }
            }
            Record::Group(g) => group_ops(g, &mut out),
            Record::Member(group, user, m) => {
                let body = OpBody::SetRole {
                    group,
                    user,
                    role: m.role,
                    actor: user,
                    since: m.since,
                };
                out.push((m.stamp, body));
            }
            Record::Cursor(user, id) => match out.last_mut() {
                Some((_, OpBody::Delivered { marks })) if marks.len() < MARKS_PER_OP => {
                    marks.push((user, id));
                }
                _ => out.push((
                    Stamp::ZERO,
                    OpBody::Delivered {
                        marks: vec![(user, id)],
                    },
                )),
            },
            Record::Message(m) => out.push((
                m.id,
                OpBody::Send {
                    from: m.from,
                    to: m.to,
                    text: m.text,
                    cid: m.cid,
                    time: m.time,
                },
            )),
        }
    }
    out
}

/// A snapshot being read, batch by batch, on any thread. It pins the log
/// after its point until dropped (or until its pin is taken).
pub struct Reading {
    reader: SnapshotReader,
    point: Point,
    cursor: SnapshotCursor,
    pin: Pin,
    check: Check,
}

impl Reading {
    pub fn start(reader: SnapshotReader) -> Result<Reading, StoreError> {
        let (point, pin) = reader.begin()?;
        Ok(Reading {
            reader,
            point,
            cursor: SnapshotCursor::default(),
            pin,
            check: Check::default(),
        })
    }

    pub fn point(&self) -> &Point {
        &self.point
    }

    /// The next operations (about [`BATCH_BYTES`] of them decoded), or
    /// `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<Vec<SnapOp>>, StoreError> {
        while !self.cursor.done() {
            let records = self
                .reader
                .read(&self.point, &mut self.cursor, BATCH_BYTES)?;
            let ops = ops_of(records);
            if ops.is_empty() {
                continue;
            }
            for op in &ops {
                self.check.add(op);
            }
            return Ok(Some(ops));
        }
        Ok(None)
    }

    /// The check of everything read so far.
    pub fn check(&self) -> Check {
        self.check
    }

    /// Done reading: the pin, to hold while the log after the point is
    /// still wanted.
    pub fn into_pin(self) -> Pin {
        self.pin
    }
}

#[cfg(test)]
mod tests;
