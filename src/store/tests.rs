//! The store on a temporary database.

use super::*;
use crate::model::{OpBody, Target};

#[test]
fn last_stamps_follow_the_log() {
    let mut s = Store::open(StoreOptions::temporary()).unwrap();
    let op = |origin: NodeId, seq: u64, millis: u64| Op {
        origin,
        seq,
        stamp: Stamp::new(millis, origin),
        body: OpBody::Notice { text: "hi".into() },
    };
    s.append_log(1, vec![op(1, 1, 10), op(1, 2, 20)]).unwrap();
    s.append_log(2, vec![op(2, 1, 15)]).unwrap();
    assert_eq!(s.last_stamps().get(&1), Some(&op(1, 2, 20).stamp));
    assert_eq!(s.last_stamps().get(&2), Some(&op(2, 1, 15).stamp));
    assert_eq!(s.last_stamp(), op(1, 2, 20).stamp);
}

#[test]
fn log_segments_are_encoded_slices_and_stay_small() {
    let ops: Vec<Op> = (1..=400u64)
        .map(|seq| Op {
            origin: 3,
            seq,
            stamp: Stamp::new(seq, 3),
            body: OpBody::Send {
                from: crate::ids::Uid(1),
                to: Target::User(crate::ids::Uid(2)),
                // Mostly small, now and then a text bigger than a segment.
                text: "x".repeat(if seq % 97 == 0 {
                    9000
                } else {
                    seq as usize % 300
                }),
                cid: None,
                time: None,
            },
        })
        .collect();
    let segments = log_segments(&ops);
    assert!(segments.len() > 10, "{}", segments.len());
    let mut next = 0;
    for (first, bytes) in &segments {
        let part: Vec<Op> = decode(bytes).unwrap();
        assert_eq!(part[0].seq, *first);
        assert_eq!(*bytes, encode(&ops[next..next + part.len()]));
        assert!(
            part.len() == 1 || bytes.len() <= RECORD_MAX_BYTES,
            "{}",
            bytes.len()
        );
        next += part.len();
    }
    assert_eq!(next, ops.len());
}
