//! Keys and typed access for each table. Integers are big-endian so that
//! key order is numeric order.
//!
//! | table        | key                               | value                  |
//! |--------------|-----------------------------------|------------------------|
//! | users        | uid                               | `User`                 |
//! | names        | name (UTF-8)                      | uid                    |
//! | friends      | owner uid, other uid              | `Edge`                 |
//! | groups       | gid                               | `Group`                |
//! | members      | gid, uid                          | `Member` (+tombstones) |
//! | user_groups  | uid, gid                          | empty                  |
//! | cursors      | uid, origin node (u16)            | last delivered msg id  |
//! | guests       | node (u16), guest's given name    | uid                    |
//! | history      | conversation (9 bytes), msg id    | message / chunk        |
//! | inbox        | recipient uid, msg id             | message / chunk        |
//! | tokens       | uid, stamp that issued it         | `TokenRec`             |
//! | token_floors | uid                               | stamp: older tokens are revoked |
//! | retention    | `history` or `queue`              | watermark stamp        |
//! | tally (in meta) | 0, minute (u32), conversation  | messages stored (u32)  |

use super::retention::at_least;
use super::snapshot::Point;
use super::{decode, encode, flush, prefix_end, Result, Store, StoreError, Table, Watermarks};
use crate::ids::{Gid, NodeId, Stamp, Uid};
use crate::model::{Edge, Group, Member, Message, Target, TokenRec, User};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// A conversation key: `0, low uid, high uid` for two users, `1, gid, 0` for a group.
pub const CONV_LEN: usize = 9;
pub type Conv = [u8; CONV_LEN];

pub fn conv_direct(a: Uid, b: Uid) -> Conv {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut k = [0u8; CONV_LEN];
    k[1..5].copy_from_slice(&lo.0.to_be_bytes());
    k[5..9].copy_from_slice(&hi.0.to_be_bytes());
    k
}

pub fn conv_group(g: Gid) -> Conv {
    let mut k = [0u8; CONV_LEN];
    k[0] = 1;
    k[1..5].copy_from_slice(&g.0.to_be_bytes());
    k
}

/// The conversation a message belongs to.
pub fn conv_of(m: &Message) -> Conv {
    match m.to {
        Target::User(to) => conv_direct(m.from, to),
        Target::Group(g) => conv_group(g),
    }
}

fn k4(a: u32) -> Vec<u8> {
    a.to_be_bytes().to_vec()
}

fn k8(a: u32, b: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(8);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

fn guest_key(node: NodeId, name: &str) -> Vec<u8> {
    let mut k = node.to_be_bytes().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn token_key(u: Uid, issued: Stamp) -> Vec<u8> {
    let mut k = k4(u.0);
    k.extend_from_slice(&issued.0.to_be_bytes());
    k
}

/// A delivery cursor's key: the user, then the node whose stamps it counts.
pub(super) fn cursor_key(user: [u8; 4], origin: NodeId) -> [u8; 6] {
    let mut k = [0u8; 6];
    k[..4].copy_from_slice(&user);
    k[4..].copy_from_slice(&origin.to_be_bytes());
    k
}

/// A delivery cursor's value: zero when there is none.
pub(super) fn cursor_value(v: Option<&[u8]>) -> Stamp {
    Stamp(v.map_or(0, |v| u64_at(v, 0)))
}

fn u64_at(k: &[u8], at: usize) -> u64 {
    k.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn u32_at(k: &[u8], at: usize) -> u32 {
    k.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

impl Store {
    // ---- users ---------------------------------------------------------------

    pub fn user(&self, u: Uid) -> Result<Option<User>> {
        self.get(Table::Users, &k4(u.0))?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn put_user(&mut self, user: &User) {
        self.put(Table::Users, k4(user.id.0), encode(user));
    }

    pub fn name_owner(&self, name: &str) -> Result<Option<Uid>> {
        Ok(self
            .get(Table::Names, name.as_bytes())?
            .map(|v| Uid(u32_at(&v, 0))))
    }

    pub fn set_name_owner(&mut self, name: &str, u: Uid) {
        self.put(Table::Names, name.as_bytes().to_vec(), k4(u.0));
    }

    /// All (name, uid) pairs in name order, for search.
    pub fn names(&self) -> impl Iterator<Item = Result<(String, Uid)>> + '_ {
        self.scan(Table::Names, Bound::Unbounded, Bound::Unbounded, false)
            .map(|r| r.map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), Uid(u32_at(&v, 0)))))
    }

    /// The highest id in `range` of a users- or groups-like table.
    fn max_id(&self, t: Table, range: &std::ops::RangeInclusive<u32>) -> Result<Option<u32>> {
        let lo = Bound::Included(k4(*range.start()));
        let hi = Bound::Included(k4(*range.end()));
        match self.scan(t, lo, hi, true).next() {
            Some(r) => Ok(Some(u32_at(&r?.0, 0))),
            None => Ok(None),
        }
    }

    /// The lowest user id in `range` with no record (a walk over the taken
    /// ones below it: only needed once the top of a node's block is taken).
    pub fn first_free_uid(&self, range: &std::ops::RangeInclusive<u32>) -> Result<Option<u32>> {
        let lo = Bound::Included(k4(*range.start()));
        let hi = Bound::Included(k4(*range.end()));
        let mut want = *range.start();
        for r in self.scan(Table::Users, lo, hi, false) {
            let id = u32_at(&r?.0, 0);
            if id > want {
                break;
            }
            want = id + 1;
        }
        Ok((want <= *range.end()).then_some(want))
    }

    pub fn max_uid(&self, range: &std::ops::RangeInclusive<u32>) -> Result<Option<u32>> {
        self.max_id(Table::Users, range)
    }

    pub fn max_gid(&self, range: &std::ops::RangeInclusive<u32>) -> Result<Option<u32>> {
        self.max_id(Table::Groups, range)
    }

    /// The guest a node made for a given name, if it made one.
    pub fn guest_uid(&self, node: NodeId, name: &str) -> Result<Option<Uid>> {
        Ok(self
            .get(Table::Guests, &guest_key(node, name))?
            .map(|v| Uid(u32_at(&v, 0))))
    }

    pub fn set_guest(&mut self, node: NodeId, name: &str, u: Uid) {
        self.put(Table::Guests, guest_key(node, name), k4(u.0));
    }

    pub fn users(&self) -> impl Iterator<Item = Result<User>> + '_ {
        self.scan(Table::Users, Bound::Unbounded, Bound::Unbounded, false)
            .map(|r| r.and_then(|(_, v)| decode(&v)))
    }

    // ---- friends -----------------------------------------------------------

    /// `owner`'s view of `other` (an empty edge if they never met).
    pub fn edge(&self, owner: Uid, other: Uid) -> Result<Edge> {
        match self.get(Table::Friends, &k8(owner.0, other.0))? {
            Some(v) => decode(&v),
            None => Ok(Edge::empty()),
        }
    }

    pub fn put_edge(&mut self, owner: Uid, other: Uid, e: &Edge) {
        self.put(Table::Friends, k8(owner.0, other.0), encode(e));
    }

    /// Every edge `owner` has, in order of the other user's id.
    pub fn edges(&self, owner: Uid) -> Result<Vec<(Uid, Edge)>> {
        self.scan_prefix(Table::Friends, &k4(owner.0))
            .map(|r| {
                let (k, v) = r?;
                Ok((Uid(u32_at(&k, 4)), decode(&v)?))
            })
            .collect()
    }

    // ---- groups --------------------------------------------------------------

    pub fn group(&self, g: Gid) -> Result<Option<Group>> {
        self.get(Table::Groups, &k4(g.0))?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn put_group(&mut self, group: &Group) {
        self.put(Table::Groups, k4(group.id.0), encode(group));
    }

    pub fn groups(&self) -> impl Iterator<Item = Result<Group>> + '_ {
        self.scan(Table::Groups, Bound::Unbounded, Bound::Unbounded, false)
            .map(|r| r.and_then(|(_, v)| decode(&v)))
    }

    /// The membership record, tombstones included.
    pub fn member(&self, g: Gid, u: Uid) -> Result<Option<Member>> {
        self.get(Table::Members, &k8(g.0, u.0))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Store a membership record and keep the user's group index in step.
    pub fn put_member(&mut self, g: Gid, u: Uid, m: &Member) {
        self.put(Table::Members, k8(g.0, u.0), encode(m));
        if m.role.is_some() {
            self.put(Table::UserGroups, k8(u.0, g.0), Vec::new());
        } else {
            self.del(Table::UserGroups, k8(u.0, g.0));
        }
    }

    /// Current members (no tombstones), in uid order.
    pub fn members(&self, g: Gid) -> Result<Vec<(Uid, Member)>> {
        let mut out = Vec::new();
        for r in self.scan_prefix(Table::Members, &k4(g.0)) {
            let (k, v) = r?;
            let m: Member = decode(&v)?;
            if m.role.is_some() {
                out.push((Uid(u32_at(&k, 4)), m));
            }
        }
        Ok(out)
    }

    /// Groups the user is a member of, in gid order.
    pub fn groups_of(&self, u: Uid) -> Result<Vec<Gid>> {
        self.scan_prefix(Table::UserGroups, &k4(u.0))
            .map(|r| r.map(|(k, _)| Gid(u32_at(&k, 4))))
            .collect()
    }

    // ---- delivery cursors ----------------------------------------------------

    pub fn cursors(&self, u: Uid) -> Result<BTreeMap<NodeId, Stamp>> {
        let mut out = BTreeMap::new();
        for r in self.scan_prefix(Table::Cursors, &k4(u.0)) {
            let (k, v) = r?;
            let node = k
                .get(4..6)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .unwrap_or(0);
            let id = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            out.insert(node, Stamp(id));
        }
        Ok(out)
    }

    pub fn cursor(&self, u: Uid, origin: NodeId) -> Result<Stamp> {
        let k = cursor_key(u.0.to_be_bytes(), origin);
        Ok(cursor_value(self.get(Table::Cursors, &k)?.as_deref()))
    }

    pub fn set_cursor(&mut self, u: Uid, origin: NodeId, id: Stamp) {
        let k = cursor_key(u.0.to_be_bytes(), origin);
        self.put(Table::Cursors, k.to_vec(), id.0.to_be_bytes().to_vec());
    }

    // ---- session tokens ------------------------------------------------------

    pub fn token(&self, u: Uid, issued: Stamp) -> Result<Option<TokenRec>> {
        self.get(Table::Tokens, &token_key(u, issued))?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn put_token(&mut self, u: Uid, issued: Stamp, t: &TokenRec) {
        self.put(Table::Tokens, token_key(u, issued), encode(t));
    }

    pub fn del_token(&mut self, u: Uid, issued: Stamp) {
        self.del(Table::Tokens, token_key(u, issued));
    }

    /// The stamps of a user's tokens (revoked ones too), oldest first.
    pub fn token_stamps(&self, u: Uid) -> Result<Vec<Stamp>> {
        self.scan_prefix(Table::Tokens, &k4(u.0))
            .map(|r| r.map(|(k, _)| Stamp(u64_at(&k, 4))))
            .collect()
    }

    /// Tokens issued at or before this stamp are revoked.
    pub fn token_floor(&self, u: Uid) -> Result<Stamp> {
        Ok(self
            .get(Table::TokenFloors, &k4(u.0))?
            .map(|v| Stamp(u64_at(&v, 0)))
            .unwrap_or(Stamp::ZERO))
    }

    pub fn set_token_floor(&mut self, u: Uid, floor: Stamp) {
        self.put(Table::TokenFloors, k4(u.0), floor.0.to_be_bytes().to_vec());
    }

    // ---- messages --------------------------------------------------------------

    /// Record a message in its conversation's history and, for a direct
    /// message, in the recipient's inbox. A message below the history
    /// watermark has expired already: it is not stored (false).
    pub fn add_message(&mut self, m: &Message) -> Result<bool> {
        if m.id < self.marks.history {
            return Ok(false);
        }
        let conv = conv_of(m);
        // One that a snapshot may have brought already is not stored (or
        // counted) twice.
        if self.seen_before(&conv, m.id)? {
            return Ok(false);
        }
        self.tally(&conv, m.id);
        // Counted by the operation, which is applied once per position.
        self.counts.messages += 1;
        let bytes: Arc<[u8]> = encode(m).into();
        self.put_message(Table::History, &conv, m.id, bytes.clone());
        if let Target::User(to) = m.to {
            self.put_message(Table::Inbox, &to.0.to_be_bytes(), m.id, bytes);
        }
        Ok(true)
    }

    /// Up to `limit` messages of a conversation before `before`, oldest first,
    /// and whether older ones remain (none below the history watermark).
    pub fn history(
        &self,
        conv: &Conv,
        before: Option<Stamp>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool)> {
        let floor = self.marks.history;
        let mut out = Vec::with_capacity(limit.min(256));
        let mut it = self
            .messages(Table::History, conv, before, true)
            .take_while(|r| r.as_ref().map_or(true, |m| m.id >= floor));
        for r in it.by_ref() {
            out.push(r?);
            if out.len() == limit {
                break;
            }
        }
        let more = out.len() == limit && it.next().is_some();
        out.reverse();
        Ok((out, more))
    }

    /// Direct messages to `u` after `after` that are still pending,
    /// oldest first.
    pub fn inbox_after(
        &self,
        u: Uid,
        after: Option<Stamp>,
    ) -> impl Iterator<Item = Result<Message>> + '_ {
        let prefix = u.0.to_be_bytes();
        let from = at_least(after, self.marks.pending());
        self.messages(Table::Inbox, &prefix, from, false)
    }

    /// Messages of a conversation after `after` that are still pending,
    /// oldest first.
    pub fn conv_after(
        &self,
        conv: &Conv,
        after: Option<Stamp>,
    ) -> impl Iterator<Item = Result<Message>> + '_ {
        let from = at_least(after, self.marks.pending());
        self.messages(Table::History, conv, from, false)
    }

    /// Whether a conversation holds a message.
    pub fn has_message(&self, conv: &Conv, id: Stamp) -> Result<bool> {
        for layer in self.layers() {
            let stored = layer.messages[Table::History as usize].get(&conv[..]);
            if stored.is_some_and(|s| s.contains_key(&id.0)) {
                return Ok(true);
            }
        }
        // The chunk that would hold it is the first ending at or after it.
        let tree = &self.trees[Table::History as usize];
        let mut key = conv.to_vec();
        key.extend_from_slice(&id.0.to_be_bytes());
        let mut end = conv.to_vec();
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        match tree.range(key..=end).next() {
            Some(r) => flush::chunk_holds(&self.bodies, &r?.1, id.0),
            None => Ok(false),
        }
    }

    /// Whether any key in a table starts with `prefix` (tests and digests).
    pub fn has_prefix(&self, t: Table, prefix: &[u8]) -> Result<bool> {
        Ok(self
            .scan(
                t,
                Bound::Included(prefix.to_vec()),
                prefix_end(prefix),
                false,
            )
            .next()
            .transpose()?
            .is_some())
    }
}

/// A stored record, as a snapshot reads it (`snapshot.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Watermarks(Watermarks),
    User(User),
    TokenFloor(Uid, Stamp),
    Token(Uid, Stamp, TokenRec),
    Edge(Uid, Uid, Edge),
    Group(Group),
    Member(Gid, Uid, Member),
    /// A user's delivery cursor (the id of the last message delivered
    /// from the id's node).
    Cursor(Uid, Stamp),
    Message(Message),
}

/// The records of one stored entry of table `t`; of messages, only those
/// the snapshot's point covers. Tables derived from others (names, guests,
/// user_groups, inbox) give none. Returns the bytes of what it decoded: a
/// chunk's messages can take a hundred times its stored bytes (a text of
/// 4,096 `x` compresses to a few), and a reading's batches are weighed by
/// what they carry.
pub(super) fn records(
    bodies: &super::bodies::Bodies,
    t: Table,
    k: &[u8],
    v: &[u8],
    point: &Point,
    out: &mut Vec<Record>,
) -> Result<usize> {
    let short = || StoreError::Corrupt(format!("short key in {}", t.tree_name()));
    if k.len() < 4 {
        return Err(short());
    }
    let a = u32_at(k, 0);
    match t {
        Table::Users => out.push(Record::User(decode(v)?)),
        Table::TokenFloors => out.push(Record::TokenFloor(Uid(a), Stamp(u64_at(v, 0)))),
        Table::Tokens if k.len() >= 12 => {
            out.push(Record::Token(Uid(a), Stamp(u64_at(k, 4)), decode(v)?))
        }
        Table::Friends if k.len() >= 8 => {
            out.push(Record::Edge(Uid(a), Uid(u32_at(k, 4)), decode(v)?))
        }
        Table::Groups => out.push(Record::Group(decode(v)?)),
        Table::Members if k.len() >= 8 => {
            out.push(Record::Member(Gid(a), Uid(u32_at(k, 4)), decode(v)?))
        }
        Table::Cursors => out.push(Record::Cursor(Uid(a), Stamp(u64_at(v, 0)))),
        Table::History => {
            let mut decoded = 0;
            for (id, body) in flush::frames(bodies, v)? {
                if point.covers(Stamp(id)) {
                    out.push(Record::Message(decode(&body)?));
                    decoded += body.len();
                }
            }
            return Ok(decoded);
        }
        Table::Tokens | Table::Friends | Table::Members => return Err(short()),
        _ => {}
    }
    Ok(v.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn msg(id: u64, from: u32, to: Target, text: &str) -> Message {
        Message {
            id: Stamp(id << 10 | 1),
            from: Uid(from),
            to,
            text: text.into(),
            cid: None,
            time: None,
        }
    }

    /// Each test of chunks runs on both kinds of store: chunks kept in
    /// sled (no directory) and chunks' bodies in files (`bodies.rs`).
    fn both_kinds(test: fn(&mut Store)) {
        test(&mut Store::open(StoreOptions::temporary()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(StoreOptions::at(dir.path().join("db"))).unwrap();
        test(&mut s);
        let history = &s.trees[Table::History as usize];
        assert!(
            history
                .iter()
                .all(|r| r.unwrap().1[0] == super::super::bodies::POINTER),
            "the second kind keeps its chunks' bodies in files"
        );
    }

    #[test]
    fn history_pages_across_layers_and_chunks() {
        both_kinds(history_pages_across_layers_and_chunks_in);
    }

    fn history_pages_across_layers_and_chunks_in(s: &mut Store) {
        let conv = conv_direct(Uid(1), Uid(2));
        for i in 1..=600u64 {
            s.add_message(&msg(i, 1, Target::User(Uid(2)), &format!("m{i}")))
                .unwrap();
            if i % 250 == 0 {
                // Push what we have so far to sled, in chunks.
                s.checkpoint_now().unwrap();
            }
        }
        let (page, more) = s.history(&conv, None, 50).unwrap();
        assert!(more);
        assert_eq!(page.len(), 50);
        assert_eq!(page.first().unwrap().text, "m551");
        assert_eq!(page.last().unwrap().text, "m600");
        // Walk all the way back.
        let mut before = page.first().map(|m| m.id);
        let mut seen = 50;
        loop {
            let (page, more) = s.history(&conv, before, 64).unwrap();
            seen += page.len();
            let ids: Vec<_> = page.iter().map(|m| m.id).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, sorted, "pages are oldest first");
            before = page.first().map(|m| m.id);
            if !more {
                break;
            }
        }
        assert_eq!(seen, 600);
        let inbox: Vec<_> = s
            .inbox_after(Uid(2), Some(msg(590, 0, Target::User(Uid(2)), "").id))
            .collect();
        assert_eq!(inbox.len(), 10);
    }

    #[test]
    fn late_arrivals_merge_into_stored_chunks() {
        both_kinds(late_arrivals_merge_into_stored_chunks_in);
    }

    fn late_arrivals_merge_into_stored_chunks_in(s: &mut Store) {
        let g = Gid(5);
        for i in (10..=100u64).step_by(10) {
            s.add_message(&msg(i, 1, Target::Group(g), &format!("{i}")))
                .unwrap();
        }
        s.checkpoint_now().unwrap();
        // Messages that order among the stored ones, as from a partitioned node.
        for i in [15u64, 55, 95, 10] {
            s.add_message(&msg(i, 1, Target::Group(g), &format!("{i}")))
                .unwrap();
        }
        s.checkpoint_now().unwrap();
        let all: Vec<u64> = s
            .conv_after(&conv_group(g), None)
            .map(|m| m.unwrap().id.0 >> 10)
            .collect();
        assert_eq!(
            all,
            vec![10, 15, 20, 30, 40, 50, 55, 60, 70, 80, 90, 95, 100]
        );
    }

    #[test]
    fn acknowledged_inbox_entries_are_not_written() {
        let mut s = Store::open(StoreOptions::temporary()).unwrap();
        for i in 1..=10u64 {
            s.add_message(&msg(i, 1, Target::User(Uid(2)), "x"))
                .unwrap();
        }
        s.set_cursor(Uid(2), 1, msg(7, 0, Target::User(Uid(2)), "").id);
        s.checkpoint_now().unwrap();
        let left: Vec<u64> = s
            .inbox_after(Uid(2), None)
            .map(|m| m.unwrap().id.0 >> 10)
            .collect();
        assert_eq!(left, vec![8, 9, 10]);
    }
}
