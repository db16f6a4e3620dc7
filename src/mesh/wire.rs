//! Frames between nodes: a 4-byte big-endian length, then a MessagePack map
//! with named fields (rmp-serde `to_vec_named`), so that nodes of adjacent
//! versions can read each other's frames. `"t"` names the kind and comes
//! first, `"c"` holds its fields: a reader that knows the kind decodes the
//! fields straight away (a tag among the fields would make it buffer the
//! whole frame first, which costs more than the rest of replication). A
//! kind this node does not know decodes as [`Frame::Unknown`] and is
//! skipped. A frame longer than [`MAX_FRAME`] or that does not decode closes
//! the connection.

use crate::ids::{NodeId, Stamp, Uid};
use crate::model::Op;
use crate::snapshot::SnapOp;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted from a peer.
pub const MAX_FRAME: usize = 16 << 20;
/// Frames we build stay well under that.
pub const TARGET_FRAME: usize = 4 << 20;

/// The mesh protocol version; a peer with another version is refused.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub node: NodeId,
    pub uuid: String,
    /// Where the node accepts mesh connections (UDP, "host:port").
    pub addr: String,
}

/// How far a node has applied each origin's log.
pub type Applied = Vec<(NodeId, u64)>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "c")]
pub enum Frame {
    /// Dialer -> acceptor, first on every connection. `node` is 0 when the
    /// dialer has no node id yet and only wants the member list.
    Hello {
        version: u32,
        node: NodeId,
        uuid: String,
        addr: String,
        members: Vec<MemberInfo>,
        /// Only asking for the member list; not a replication link.
        #[serde(default)]
        discovery: bool,
        /// Where the dialer's log begins for each origin (what it can no
        /// longer send but as a snapshot).
        #[serde(default)]
        start: Applied,
    },
    /// Acceptor -> dialer, in answer to `Hello`: who it is, what it has.
    Welcome {
        node: NodeId,
        uuid: String,
        applied: Applied,
        members: Vec<MemberInfo>,
        /// To a node without an id: the id it should take (reserved for it
        /// for a while, so two nodes joining at once get different ids).
        #[serde(default)]
        offer: Option<NodeId>,
    },
    /// Acceptor -> dialer: why the hello was refused, before closing.
    Refused {
        reason: String,
    },
    /// Dialer -> acceptor: a run of one origin's operations, in order.
    Ops {
        origin: NodeId,
        ops: Vec<Op>,
    },
    /// Dialer -> acceptor: users with sessions on the dialer. `full`
    /// replaces what the acceptor knew; otherwise these are changes.
    Presence {
        full: bool,
        online: Vec<Uid>,
        offline: Vec<Uid>,
    },
    /// Dialer -> acceptor: members the dialer learned of.
    Members {
        members: Vec<MemberInfo>,
    },
    /// Acceptor -> dialer: how far the acceptor has applied each log.
    Applied {
        applied: Applied,
    },
    /// Dialer -> acceptor: its log now begins later (it compacted).
    Start {
        start: Applied,
    },
    /// On a stream of its own, opened by a node that needs one: send me a
    /// snapshot. Answered on that stream by `SnapshotBegin`, any number of
    /// `SnapshotOps`, and `SnapshotEnd`.
    SnapshotRequest {},
    /// The snapshot's point: every operation up to `position` is in it,
    /// the last of each origin stamped `stamps`.
    SnapshotBegin {
        position: Applied,
        stamps: Vec<(NodeId, Stamp)>,
    },
    SnapshotOps {
        ops: Vec<SnapOp>,
    },
    /// How many operations were sent and their hash (`snapshot::Check`).
    SnapshotEnd {
        ops: u64,
        hash: u64,
    },
    /// A frame kind from a newer version: skipped (never sent).
    #[serde(skip)]
    Unknown,
}

/// The kinds this version knows (the `"t"` of every frame above).
const KINDS: [&str; 12] = [
    "Hello",
    "Welcome",
    "Refused",
    "Ops",
    "Presence",
    "Members",
    "Applied",
    "Start",
    "SnapshotRequest",
    "SnapshotBegin",
    "SnapshotOps",
    "SnapshotEnd",
];

#[derive(Debug)]
pub enum WireError {
    Io(std::io::Error),
    TooLarge(usize),
    Malformed(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::TooLarge(n) => write!(f, "frame of {n} bytes is over the limit"),
            WireError::Malformed(e) => write!(f, "malformed frame: {e}"),
        }
    }
}

pub fn encode(frame: &Frame) -> Vec<u8> {
    let body = rmp_serde::to_vec_named(frame).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn decode(body: &[u8]) -> Result<Frame, WireError> {
    #[derive(Deserialize)]
    struct Kind {
        t: String,
    }
    rmp_serde::from_slice(body).or_else(|e| match rmp_serde::from_slice::<Kind>(body) {
        Ok(k) if !KINDS.contains(&k.t.as_str()) => Ok(Frame::Unknown),
        _ => Err(WireError::Malformed(e.to_string())),
    })
}

pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), WireError> {
    w.write_all(&encode(frame)).await.map_err(WireError::Io)
}

/// Read one frame; `Ok(None)` at a clean end of stream.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(WireError::Io(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(WireError::Io)?;
    decode(&body).map(Some)
}

/// Ops frames for a run of ops, each under [`TARGET_FRAME`] bytes.
pub fn ops_frames(origin: NodeId, ops: Vec<Op>) -> Vec<Vec<u8>> {
    let frame = encode(&Frame::Ops { origin, ops });
    if frame.len() <= TARGET_FRAME {
        return vec![frame];
    }
    let Frame::Ops { mut ops, .. } = decode(&frame[4..]).unwrap_or(Frame::Unknown) else {
        return Vec::new();
    };
    if ops.len() <= 1 {
        return vec![frame];
    }
    let second = ops.split_off(ops.len() / 2);
    let mut out = ops_frames(origin, ops);
    out.extend(ops_frames(origin, second));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Stamp;
    use crate::model::{OpBody, Target};

    fn op(seq: u64, text: &str) -> Op {
        Op {
            origin: 3,
            seq,
            stamp: Stamp::new(seq, 3),
            body: OpBody::Send {
                from: Uid(1),
                to: Target::User(Uid(2)),
                text: text.into(),
                cid: None,
                time: None,
            },
        }
    }

    #[tokio::test]
    async fn frames_round_trip_through_a_stream() {
        let member = MemberInfo {
            node: 4,
            uuid: "v".into(),
            addr: "127.0.0.1:2".into(),
        };
        let frames = vec![
            Frame::Hello {
                version: VERSION,
                node: 2,
                uuid: "u".into(),
                addr: "127.0.0.1:1".into(),
                members: vec![],
                discovery: false,
                start: vec![(2, 7)],
            },
            Frame::Ops {
                origin: 3,
                ops: vec![op(1, "a"), op(2, "b")],
            },
            Frame::Presence {
                full: true,
                online: vec![Uid(5)],
                offline: vec![],
            },
            Frame::Welcome {
                node: 1,
                uuid: "w".into(),
                applied: vec![(1, 9)],
                members: vec![member.clone()],
                offer: Some(2),
            },
            Frame::Refused {
                reason: "no".into(),
            },
            Frame::Members {
                members: vec![member],
            },
            Frame::Applied {
                applied: vec![(3, 2)],
            },
            Frame::Start {
                start: vec![(3, 1)],
            },
            Frame::SnapshotRequest {},
            Frame::SnapshotBegin {
                position: vec![(3, 2)],
                stamps: vec![(3, Stamp::new(2, 3))],
            },
            Frame::SnapshotOps {
                ops: vec![(Stamp::new(2, 3), op(2, "b").body)],
            },
            Frame::SnapshotEnd { ops: 1, hash: 9 },
        ];
        // Every kind is listed as known (else it would decode as Unknown).
        assert_eq!(frames.len(), KINDS.len());
        let mut bytes = Vec::new();
        for f in &frames {
            bytes.extend(encode(f));
        }
        let mut r = &bytes[..];
        for f in &frames {
            assert_eq!(read(&mut r).await.unwrap().as_ref(), Some(f));
        }
        assert!(read(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unknown_kinds_are_skipped_and_bad_frames_are_errors() {
        #[derive(Serialize)]
        struct Fields {
            novelty: u32,
            more: Vec<String>,
        }
        #[derive(Serialize)]
        struct Future {
            t: &'static str,
            c: Fields,
        }
        let body = rmp_serde::to_vec_named(&Future {
            t: "Teleport",
            c: Fields {
                novelty: 7,
                more: vec!["x".into()],
            },
        })
        .unwrap();
        assert_eq!(decode(&body).unwrap(), Frame::Unknown);
        assert!(matches!(
            decode(b"\x93\x01\x02"),
            Err(WireError::Malformed(_))
        ));
        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend([0u8; 16]);
        let mut r = &huge[..];
        assert!(matches!(read(&mut r).await, Err(WireError::TooLarge(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Whatever a peer sends, decoding answers (a frame or an error)
        /// and never panics: arbitrary bytes, and real frames with bytes
        /// changed.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            flips in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 0..8),
        ) {
            let _ = decode(&junk);
            let real = encode(&Frame::Ops { origin: 2, ops: vec![op(1, "hello"), op(2, "world")] });
            let mut body = real[4..].to_vec();
            for (at, b) in flips {
                let i = at % body.len();
                body[i] = b;
            }
            let _ = decode(&body);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut stream = &junk[..];
            rt.block_on(async {
                while let Ok(Some(_)) = read(&mut stream).await {}
            });
        }
    }

    #[test]
    fn big_runs_are_split() {
        let big = "x".repeat(64 * 1024);
        let ops: Vec<Op> = (1..=200).map(|s| op(s, &big)).collect();
        let frames = ops_frames(3, ops);
        assert!(frames.len() > 1);
        let mut seqs = Vec::new();
        for f in &frames {
            assert!(f.len() <= TARGET_FRAME);
            if let Frame::Ops { ops, .. } = decode(&f[4..]).unwrap() {
                seqs.extend(ops.iter().map(|o| o.seq));
            }
        }
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    }
}
