//! The durable data model: records kept in the tables, and the operations
//! that change them. Plain data, no behaviour beyond small helpers; the
//! merge rules live in `apply.rs`, the permission rules in `rules/`.

use crate::ids::{Gid, MsgId, NodeId, Stamp, Uid};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Uid,
    /// The name shown to others. Normally the registered name; a registration
    /// that lost a cluster-wide name collision shows `name#id` instead.
    pub name: String,
    /// argon2id PHC string.
    pub hash: String,
    /// Stamp of the registration; the earlier registration keeps a contested name.
    pub created: Stamp,
    /// Stamp of the last password change (last writer wins).
    pub pw_stamp: Stamp,
    /// Banned users cannot log in (last writer wins on `ban_stamp`).
    pub banned: bool,
    pub ban_stamp: Stamp,
    /// Deleted by the operator: final. The name stays reserved.
    pub deleted: bool,
}

/// A session token as stored (see `tokens`): keyed by user and the stamp
/// that issued it. A revocation that arrives before its token leaves a
/// record with no hash yet, which the token then fills in, still revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRec {
    pub hash: [u8; 32],
    pub expires_ms: u64,
    pub revoked: bool,
}

/// The state of the friendship between two users; the same value is kept
/// under both (a, b) and (b, a).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Link {
    None,
    Pending { from: Uid },
    Friends,
}

/// One user's view of another: the shared link plus private data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub link: Link,
    pub stamp: Stamp,
    /// Text attached to a pending request.
    pub note: String,
    /// Private alias the owner gave the other user.
    pub remark: String,
    pub remark_stamp: Stamp,
}

impl Edge {
    pub fn empty() -> Edge {
        Edge {
            link: Link::None,
            stamp: Stamp::ZERO,
            note: String::new(),
            remark: String::new(),
            remark_stamp: Stamp::ZERO,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    Member,
    Admin,
    Creator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Creator => "creator",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: Gid,
    pub creator: Uid,
    pub name: String,
    pub desc: String,
    pub created: Stamp,
    pub name_stamp: Stamp,
    pub desc_stamp: Stamp,
    /// Dissolution is final: no later operation revives a group.
    pub dissolved: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `None` once the user left or was removed (kept as a tombstone so an
    /// older "join" arriving late cannot resurrect the membership).
    pub role: Option<Role>,
    pub stamp: Stamp,
    /// When the current membership began; members receive group messages
    /// stamped after it.
    pub since: Stamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    User(Uid),
    Group(Gid),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MsgId,
    pub from: Uid,
    pub to: Target,
    pub text: String,
    /// The sender's own id for this message, used to drop resends.
    pub cid: Option<String>,
    /// Display time sent by a classic client ("YYYY-MM-DD HH:MM:SS").
    pub time: Option<String>,
}

impl Message {
    pub fn origin(&self) -> NodeId {
        self.id.node()
    }
}

/// One durable change. Operations are made by the node a client is connected
/// to, applied there by `apply::apply`, written to the log, and (in a cluster)
/// replicated to every other node, which applies them with the same function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub origin: NodeId,
    /// Position in the origin's log: 1, 2, 3, ... without gaps.
    pub seq: u64,
    pub stamp: Stamp,
    pub body: OpBody,
}

/// Marks per `Delivered` op at most, so that every op stays small (the
/// store keeps each record well under what it can write inline).
pub const MARKS_PER_OP: usize = 256;

/// `Delivered` ops for these marks: only the newest id per user and origin
/// node counts (a cursor covers everything before it), in ops of at most
/// [`MARKS_PER_OP`].
pub fn delivered_ops(marks: impl IntoIterator<Item = (Uid, MsgId)>) -> Vec<OpBody> {
    let mut newest: std::collections::BTreeMap<(Uid, NodeId), MsgId> = Default::default();
    for (u, id) in marks {
        let e = newest.entry((u, id.node())).or_insert(id);
        *e = (*e).max(id);
    }
    let all: Vec<(Uid, MsgId)> = newest.into_iter().map(|((u, _), id)| (u, id)).collect();
    all.chunks(MARKS_PER_OP)
        .map(|c| OpBody::Delivered { marks: c.to_vec() })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpBody {
    Register {
        user: Uid,
        name: String,
        hash: String,
    },
    SetPassword {
        user: Uid,
        hash: String,
    },
    /// Set the friendship between `actor` and `other`.
    Link {
        actor: Uid,
        other: Uid,
        link: Link,
        note: String,
    },
    Remark {
        owner: Uid,
        friend: Uid,
        remark: String,
    },
    CreateGroup {
        group: Gid,
        creator: Uid,
        name: String,
        desc: String,
    },
    UpdateGroup {
        group: Gid,
        actor: Uid,
        name: Option<String>,
        desc: Option<String>,
    },
    DissolveGroup {
        group: Gid,
        actor: Uid,
    },
    /// Join, leave, invite, kick, promote and demote are all this one change.
    /// `since` is when the membership began (this op's stamp for a join), so
    /// the record is the same whatever order the ops arrive in.
    SetRole {
        group: Gid,
        user: Uid,
        role: Option<Role>,
        actor: Uid,
        since: Stamp,
    },
    Send {
        from: Uid,
        to: Target,
        text: String,
        cid: Option<String>,
        time: Option<String>,
    },
    /// Users acknowledged these messages; each moves that user's delivery
    /// cursor for the message's origin forward.
    Delivered {
        marks: Vec<(Uid, MsgId)>,
    },
    SetBanned {
        user: Uid,
        banned: bool,
    },
    /// The operator deleted the account (final).
    DeleteUser {
        user: Uid,
    },
    /// An operator's notice to everyone online, on every node.
    Notice {
        text: String,
    },
    /// A guest (an id from the guest block of the node that made it) and
    /// the name it gave. The guest's display name is `name (guest)`.
    Guest {
        user: Uid,
        name: String,
    },
    /// A session token for `user`, issued at this operation's stamp (its
    /// key). Only the SHA-256 of its secret is kept.
    Token {
        user: Uid,
        hash: [u8; 32],
        expires_ms: u64,
    },
    /// The token issued at `issued` no longer works.
    RevokeToken {
        user: Uid,
        issued: Stamp,
    },
    /// No token of `user` issued before this operation works any more.
    RevokeTokens {
        user: Uid,
    },
    /// Retention: messages stamped before `history` are gone, and those
    /// before `queue` are no longer delivered as pending. Each value only
    /// raises the cluster's watermark (`Stamp::ZERO` leaves it), so the
    /// outcome does not depend on the order these arrive in, and a message
    /// that arrives below the watermark is dropped everywhere alike.
    Expire {
        history: Stamp,
        queue: Stamp,
    },
}

impl Op {
    /// The message an `OpBody::Send` creates; its id is the op's stamp.
    pub fn message(&self) -> Option<Message> {
        match &self.body {
            OpBody::Send {
                from,
                to,
                text,
                cid,
                time,
            } => Some(Message {
                id: self.stamp,
                from: *from,
                to: *to,
                text: text.clone(),
                cid: cid.clone(),
                time: time.clone(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_ops_keep_the_newest_id_per_user_and_origin_in_small_ops() {
        let id = |ms: u64, node: u16| Stamp::new(ms, node);
        let marks = vec![
            (Uid(1), id(10, 1)),
            (Uid(1), id(30, 1)),
            (Uid(1), id(20, 1)),
            (Uid(1), id(5, 2)),
            (Uid(2), id(7, 1)),
        ];
        let ops = delivered_ops(marks);
        assert_eq!(
            ops,
            vec![OpBody::Delivered {
                marks: vec![(Uid(1), id(30, 1)), (Uid(1), id(5, 2)), (Uid(2), id(7, 1))]
            }]
        );
        let many = (0..1000u32).map(|u| (Uid(u + 1), id(1, 1)));
        let ops = delivered_ops(many);
        assert_eq!(ops.len(), 1000usize.div_ceil(MARKS_PER_OP));
        let total: usize = ops
            .iter()
            .map(|o| match o {
                OpBody::Delivered { marks } => {
                    assert!(marks.len() <= MARKS_PER_OP);
                    marks.len()
                }
                _ => panic!("not a Delivered op"),
            })
            .sum();
        assert_eq!(total, 1000);
    }
}
