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
fn what_waits_for_a_ticket_runs_once_it_is_durable_in_ticket_order() {
    let mut s = Store::open(StoreOptions::temporary()).unwrap();
    let durable = s.durable();
    let (tx, rx) = std::sync::mpsc::channel();
    for seq in 1..=50u64 {
        let op = Op {
            origin: 1,
            seq,
            stamp: Stamp::new(seq, 1),
            body: OpBody::Notice { text: "hi".into() },
        };
        s.append_log(1, vec![op]).unwrap();
        let t = s.commit();
        let (d, tx) = (durable.clone(), tx.clone());
        s.when_durable(
            t,
            Box::new(move || {
                let _ = tx.send((t, d.borrow().ticket));
            }),
        );
    }
    let got: Vec<(u64, u64)> = (0..50)
        .map(|_| rx.recv_timeout(Duration::from_secs(20)).expect("run"))
        .collect();
    let tickets: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(tickets, (1..=50).collect::<Vec<u64>>());
    for (t, seen) in got {
        assert!(
            seen >= t,
            "ticket {t} ran when the log was durable to {seen}"
        );
    }
    // A ticket already durable: at once, on this thread.
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = ran.clone();
    s.when_durable(
        50,
        Box::new(move || r.store(true, std::sync::atomic::Ordering::SeqCst)),
    );
    assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn batches_of_one_origin_queued_together_share_their_segments() {
    let op = |origin: NodeId, seq: u64| Op {
        origin,
        seq,
        stamp: Stamp::new(seq, origin),
        body: OpBody::Notice {
            text: format!("notice {seq} of {origin}"),
        },
    };
    let queue = vec![
        (1, vec![op(1, 1)]),
        (1, vec![op(1, 2), op(1, 3)]),
        (2, vec![op(2, 1)]),
        (1, vec![op(1, 4)]),
    ];
    let got: Vec<(NodeId, Vec<Vec<Op>>)> = queued_segments(&queue)
        .map(|(origin, segs)| {
            let ops = segs.iter().map(|s| decode_segment(&s.bytes).unwrap());
            (origin, ops.collect())
        })
        .collect();
    let want = vec![
        (1, vec![vec![op(1, 1), op(1, 2), op(1, 3)]]),
        (2, vec![vec![op(2, 1)]]),
        (1, vec![vec![op(1, 4)]]),
    ];
    assert_eq!(got, want);
    // A run stops before it would pass RUN_MAX_OPS (a batch bigger than
    // that is a run of its own).
    let batch = |first: u64, n: u64| (1, (first..first + n).map(|s| op(1, s)).collect());
    let big = RUN_MAX_OPS as u64;
    let queue = vec![
        batch(1, big - 1),
        batch(big, 1),
        batch(big + 1, 1),
        batch(big + 2, big + 5),
    ];
    let runs: Vec<(u64, u64)> = queued_segments(&queue)
        .map(|(_, segs)| (segs[0].first, segs[segs.len() - 1].last))
        .collect();
    assert_eq!(
        runs,
        vec![(1, big), (big + 1, big + 1), (big + 2, 2 * big + 6)]
    );
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
    let mut compressed = 0;
    for seg in &segments {
        let part: Vec<Op> = decode_segment(&seg.bytes).unwrap();
        assert_eq!(part[0].seq, seg.first);
        let last = part.last().unwrap();
        assert_eq!((seg.last, seg.last_stamp), (last.seq, last.stamp.0));
        assert_eq!(part, ops[next..next + part.len()]);
        compressed += usize::from(seg.bytes[0] != FORMAT);
        assert!(
            part.len() == 1 || seg.bytes.len() <= RECORD_MAX_BYTES,
            "{}",
            seg.bytes.len()
        );
        next += part.len();
    }
    // Texts of one letter repeated: compressed, every one.
    assert_eq!(compressed, segments.len());
    assert_eq!(next, ops.len());
}

/// Messages in the history tree on disk, and how many of them are below `below`.
fn on_disk(s: &Store, below: Stamp) -> (usize, usize) {
    let mut all = (0, 0);
    for r in s.trees[Table::History as usize].iter() {
        let (_, v) = r.unwrap();
        for (id, _) in flush::frames(&s.bodies, &v).unwrap() {
            all.0 += 1;
            all.1 += usize::from(id < below.0);
        }
    }
    all
}

#[test]
fn expired_messages_leave_sled_the_count_follows_and_both_survive_a_reopen() {
    use crate::ids::{Gid, Uid};
    let dir = tempfile::tempdir().unwrap();
    let base = 1_800_000_000_000u64;
    let at = |minute: u64, k: u64| Stamp::new(base + minute * 60_000 + k * 10, 1);
    let msg = |id: Stamp, to: Target| Message {
        id,
        from: Uid(1),
        to,
        text: format!("{}", id.0),
        cid: None,
        time: None,
    };
    let mut s = Store::open(StoreOptions::at(dir.path())).unwrap();
    for minute in 0..10 {
        for k in 0..30 {
            let to = [Target::User(Uid(2)), Target::Group(Gid(9))][k as usize % 2];
            assert!(s.add_message(&msg(at(minute, k), to)).unwrap());
        }
        if minute % 3 == 0 {
            s.checkpoint_now().unwrap();
        }
    }
    s.checkpoint_now().unwrap();
    assert_eq!(s.counts().messages, 300);
    // Halfway through minute 4: minutes 0-3 go, and minute 4's messages
    // below the watermark; reads stop at the watermark itself.
    let mark = at(4, 15);
    s.raise_watermarks(mark, Stamp::ZERO);
    while s.sweep(3).unwrap() {}
    let conv = schema::conv_direct(Uid(1), Uid(2));
    let (page, more) = s.history(&conv, None, 1000).unwrap();
    assert!(!more && page.iter().all(|m| m.id >= mark));
    assert_eq!(page.len(), 15 * 5 + 7);
    assert!(s.inbox_after(Uid(2), None).all(|m| m.unwrap().id >= mark));
    s.checkpoint_now().unwrap();
    let (stored, below) = on_disk(&s, mark);
    assert_eq!((stored, below), (165, 0));
    assert_eq!(s.counts().messages, 165);
    // Too late: a message below the watermark is not stored.
    assert!(!s
        .add_message(&msg(at(1, 99), Target::Group(Gid(9))))
        .unwrap());
    s.close().unwrap();

    let mut s = Store::open(StoreOptions::at(dir.path())).unwrap();
    assert_eq!(s.watermarks().history, mark);
    assert_eq!(s.counts().messages, 165);
    // The rest of minute 4 goes once the watermark has passed it.
    s.raise_watermarks(at(5, 0), Stamp::ZERO);
    while s.sweep(64).unwrap() {}
    s.checkpoint_now().unwrap();
    assert_eq!(on_disk(&s, at(5, 0)), (150, 0));
    assert_eq!(s.counts().messages, 150);
    assert_eq!(s.digest().unwrap().messages, 150);
}

/// The message ids in `user`'s inbox on disk.
fn inbox_on_disk(s: &Store, user: crate::ids::Uid) -> Vec<Stamp> {
    let mut ids = Vec::new();
    for r in s.trees[Table::Inbox as usize].scan_prefix(user.0.to_be_bytes()) {
        let (_, v) = r.unwrap();
        ids.extend(
            flush::frames(&s.bodies, &v)
                .unwrap()
                .into_iter()
                .map(|(id, _)| Stamp(id)),
        );
    }
    ids
}

#[test]
fn a_checkpoint_writes_and_keeps_only_the_inbox_entries_not_yet_acknowledged() {
    use crate::ids::Uid;
    let mut s = Store::open(StoreOptions::temporary()).unwrap();
    // Messages stamped by two nodes, to two users, interleaved in time.
    let mut sent: Vec<(Uid, Stamp)> = Vec::new();
    for k in 0..40u64 {
        let id = Stamp::new(1_800_000_000_000 + k, 1 + (k % 2) as NodeId);
        let to = Uid(2 + (k / 2 % 2) as u32);
        let m = Message {
            id,
            from: Uid(1),
            to: Target::User(to),
            text: format!("{k}"),
            cid: None,
            time: None,
        };
        assert!(s.add_message(&m).unwrap());
        sent.push((to, id));
    }
    let of = |u: Uid, origin: NodeId| -> Vec<Stamp> {
        sent.iter()
            .filter(|(to, id)| *to == u && id.node() == origin)
            .map(|(_, id)| *id)
            .collect()
    };
    // User 2 has read node 1's first four before the checkpoint; user 3
    // nothing.
    s.set_cursor(Uid(2), 1, of(Uid(2), 1)[3]);
    s.checkpoint_now().unwrap();
    let mut want: Vec<Stamp> = of(Uid(2), 1)[4..].to_vec();
    want.extend(of(Uid(2), 2));
    want.sort();
    assert_eq!(inbox_on_disk(&s, Uid(2)), want);
    let mut all3 = of(Uid(3), 1);
    all3.extend(of(Uid(3), 2));
    all3.sort();
    assert_eq!(inbox_on_disk(&s, Uid(3)), all3);
    // Once user 2 has read everything from both nodes, its inbox goes;
    // user 3's stays.
    s.set_cursor(Uid(2), 1, *of(Uid(2), 1).last().unwrap());
    s.checkpoint_now().unwrap();
    assert!(!inbox_on_disk(&s, Uid(2)).is_empty(), "node 2's are unread");
    s.set_cursor(Uid(2), 2, *of(Uid(2), 2).last().unwrap());
    s.checkpoint_now().unwrap();
    assert_eq!(inbox_on_disk(&s, Uid(2)), Vec::<Stamp>::new());
    assert_eq!(inbox_on_disk(&s, Uid(3)), all3);
}

#[test]
fn messages_expired_before_their_first_checkpoint_never_reach_sled() {
    use crate::ids::Uid;
    let mut s = Store::open(StoreOptions::temporary()).unwrap();
    let at = |k: u64| Stamp::new(1_800_000_000_000 + k * 1000, 1);
    for k in 0..20 {
        let m = Message {
            id: at(k),
            from: Uid(1),
            to: Target::User(Uid(2)),
            text: format!("{k}"),
            cid: None,
            time: None,
        };
        assert!(s.add_message(&m).unwrap());
    }
    assert!(s
        .has_message(&schema::conv_direct(Uid(1), Uid(2)), at(3))
        .unwrap());
    s.raise_watermarks(at(12), Stamp::ZERO);
    while s.sweep(64).unwrap() {}
    // Gone from the layer at once, not only from what it writes.
    let conv = schema::conv_direct(Uid(1), Uid(2));
    assert!(!s.has_message(&conv, at(3)).unwrap());
    assert!(s.has_message(&conv, at(12)).unwrap());
    s.checkpoint_now().unwrap();
    assert_eq!(on_disk(&s, at(12)), (8, 0));
    assert_eq!(
        inbox_on_disk(&s, Uid(2)),
        (12..20).map(at).collect::<Vec<_>>()
    );
}

#[test]
fn a_checkpoint_cuts_a_conversation_into_full_chunks_in_id_order() {
    // Without files a chunk stays a sled record; with them, it may be larger.
    // (256 short messages pass a record's bytes: only the files' limit lets
    // the count cut one.)
    let mut s = Store::open(StoreOptions::temporary()).unwrap();
    cut_into_full_chunks(&mut s, RECORD_MAX_BYTES, false);
    s.close().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(StoreOptions::at(dir.path().join("db"))).unwrap();
    cut_into_full_chunks(&mut s, bodies::CHUNK_BYTES, true);
    assert!(s.trees[Table::History as usize]
        .iter()
        .all(|r| r.unwrap().1[0] == bodies::POINTER));
    s.close().unwrap();
}

fn cut_into_full_chunks(s: &mut Store, max_bytes: usize, expect_count_cut: bool) {
    use crate::ids::Uid;
    let at = |k: u64| Stamp::new(1_800_000_000_000 + k, 1);
    // Short texts first, so that the count limits a chunk, then long ones
    // (500 bytes on average), enough for three chunks cut by the bytes.
    let n = 300 + 3 * max_bytes as u64 / 500;
    for k in 0..n {
        let len = if k < 300 { k % 40 } else { 400 + k % 200 };
        let m = Message {
            id: at(k),
            from: Uid(1),
            to: Target::Group(crate::ids::Gid(9)),
            text: "x".repeat(len as usize),
            cid: None,
            time: None,
        };
        assert!(s.add_message(&m).unwrap());
    }
    s.checkpoint_now().unwrap();
    let chunks: Vec<Vec<(u64, Vec<u8>)>> = s.trees[Table::History as usize]
        .iter()
        .map(|r| flush::frames(&s.bodies, &r.unwrap().1).unwrap())
        .collect();
    let ids: Vec<Stamp> = chunks.iter().flatten().map(|(id, _)| Stamp(*id)).collect();
    assert_eq!(ids, (0..n).map(at).collect::<Vec<_>>());
    // Each chunk is as full as the limits allow: the next message would
    // have crossed one of them. (A message is weighed without its frame's
    // 12 bytes, so a chunk's frames may pass the limit by one header.)
    let bytes = |c: &[(u64, Vec<u8>)]| c.iter().map(|(_, v)| v.len() + 12).sum::<usize>();
    let (mut by_count, mut by_bytes) = (0, 0);
    for pair in chunks.windows(2) {
        let (c, next) = (&pair[0], &pair[1][0]);
        assert!(c.len() <= 256 && bytes(c) <= max_bytes + 12);
        if c.len() == 256 {
            by_count += 1;
        } else {
            assert!(bytes(c) + next.1.len() > max_bytes, "{}", bytes(c));
            by_bytes += 1;
        }
    }
    assert!(by_bytes >= 2, "{by_bytes}");
    assert_eq!(by_count >= 1, expect_count_cut, "{by_count}");
}

impl Store {
    /// A compaction pass now, on this thread (tests).
    pub(crate) fn compact_now(&self, cutoff_ms: u64) -> Result<u64> {
        let no_delay = Duration::ZERO;
        compact::compact(
            &self.db,
            &self.meta,
            &self.files,
            &self.bounds,
            cutoff_ms,
            no_delay,
        )
    }
}

#[test]
fn compaction_drops_what_the_tables_hold_and_a_reopened_store_knows_where_its_log_begins() {
    let dir = tempfile::tempdir().unwrap();
    let op = |seq: u64| Op {
        origin: 2,
        seq,
        stamp: Stamp::new(1000 + seq, 2),
        body: OpBody::Notice {
            text: "x".repeat(200),
        },
    };
    let mut s = Store::open(StoreOptions::at(dir.path())).unwrap();
    // Many batches, many segments.
    for first in (1..=300u64).step_by(10) {
        s.append_log(2, (first..first + 10).map(op).collect())
            .unwrap();
    }
    s.checkpoint_now().unwrap();
    s.append_log(2, (301..=320).map(op).collect()).unwrap();
    let t = s.commit();
    s.durability.wait_for(t);
    // Nothing is stamped before the cutoff yet: nothing goes.
    assert_eq!(s.compact_now(1000).unwrap(), 0);
    // Everything old enough goes, but never past the checkpoint (300).
    let dropped = s.compact_now(1000 + 250).unwrap();
    assert!(dropped >= 20, "{dropped}");
    // Whole records go: the start is within one (a 200-byte text each,
    // at most RECORD_MAX_BYTES of them) of the cutoff.
    let start = s.log_start()[&2];
    assert!(
        start <= 250 && 250 - start < (RECORD_MAX_BYTES / 200) as u64,
        "{start}"
    );
    assert!(matches!(
        s.log_reader().read(2, start - 1, 10),
        Err(StoreError::Compacted { origin: 2, .. })
    ));
    assert_eq!(s.log_reader().read(2, start, 1).unwrap()[0].seq, start + 1);
    assert!(s.compact_now(u64::MAX).unwrap() > 0);
    assert_eq!(s.log_start()[&2], 300);
    s.close().unwrap();

    // Reopened: the position and the newest stamp are as before, and the
    // log still begins where it did; closing checkpointed the rest.
    let s = Store::open(StoreOptions::at(dir.path())).unwrap();
    assert_eq!(s.applied()[&2], 320);
    assert_eq!(s.last_stamps()[&2], op(320).stamp);
    assert_eq!(s.log_start()[&2], 300);
    // Closing checkpointed the rest: all of it goes, and so do the files.
    assert_eq!(s.compact_now(u64::MAX).unwrap(), 20);
    assert_eq!(s.log_start()[&2], 320);
    assert_eq!(s.files.bytes(), 0);
    s.close().unwrap();
    let s = Store::open(StoreOptions::at(dir.path())).unwrap();
    assert_eq!(s.applied()[&2], 320);
    assert_eq!(s.last_stamps()[&2], op(320).stamp);
    assert!(s.log_reader().read(2, 320, 10).unwrap().is_empty());
    s.close().unwrap();
}

#[test]
fn a_log_a_snapshot_moved_past_its_end_still_says_where_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(StoreOptions::at(dir.path())).unwrap();
    let point = Point {
        position: [(1, 5)].into_iter().collect(),
        stamps: [(1, Stamp::new(5005, 1))].into_iter().collect(),
    };
    s.begin_install(&point).unwrap();
    s.finish_install(&point).unwrap();
    s.close().unwrap();
    let s = Store::open(StoreOptions::at(dir.path())).unwrap();
    assert_eq!(s.applied()[&1], 5);
    assert_eq!(s.last_stamp(), Stamp::new(5005, 1));
    assert!(s.log_reader().read(1, 5, 10).unwrap().is_empty());
    assert!(s.log_reader().read(1, 4, 10).is_err());
    s.close().unwrap();
}

impl Store {
    /// Every stored entry but the inbox and the tally, as text (tests).
    pub(crate) fn dump(&mut self) -> Vec<String> {
        self.checkpoint_now().unwrap();
        let mut out = Vec::new();
        for t in Table::ALL {
            if t == Table::Inbox || t == Table::Tally {
                continue;
            }
            for r in self.trees[t as usize].iter() {
                let (k, v) = r.unwrap();
                let shown = match t {
                    Table::Users => format!("{:?}", decode::<crate::model::User>(&v).unwrap()),
                    Table::Groups => format!("{:?}", decode::<crate::model::Group>(&v).unwrap()),
                    Table::Friends => format!("{:?}", decode::<crate::model::Edge>(&v).unwrap()),
                    Table::Members => format!("{:?}", decode::<crate::model::Member>(&v).unwrap()),
                    Table::Tokens => format!("{:?}", decode::<crate::model::TokenRec>(&v).unwrap()),
                    _ => format!("{v:?}"),
                };
                out.push(format!("{} {k:?} {shown}", t.tree_name()));
            }
        }
        out
    }
}

#[test]
fn a_log_still_in_sled_moves_to_files_once() {
    let dir = tempfile::tempdir().unwrap();
    let op = |origin: NodeId, seq: u64| Op {
        origin,
        seq,
        stamp: Stamp::new(7000 + seq, origin),
        body: OpBody::Notice {
            text: format!("{origin}/{seq}"),
        },
    };
    // The layout before: the log in a sled database of its own, keyed by
    // (origin, first seq).
    {
        let old = sled::Config::new()
            .path(dir.path().join("log"))
            .open()
            .unwrap();
        let tree = old.open_tree("log").unwrap();
        for (origin, firsts) in [(1u16, vec![1u64, 4, 9]), (2, vec![1])] {
            for (i, &first) in firsts.iter().enumerate() {
                let end = firsts.get(i + 1).copied().unwrap_or(first + 2);
                let ops: Vec<Op> = (first..end).map(|s| op(origin, s)).collect();
                let mut key = origin.to_be_bytes().to_vec();
                key.extend_from_slice(&first.to_be_bytes());
                tree.insert(key, encode(&ops)).unwrap();
            }
        }
        old.insert("horizon", encode(&BTreeMap::from([(2u16, Stamp(5))])))
            .unwrap();
        old.flush().unwrap();
    }
    let s = Store::open(StoreOptions::at(dir.path())).unwrap();
    assert!(!dir.path().join("log").exists());
    assert_eq!(s.applied()[&1], 10);
    assert_eq!(s.applied()[&2], 2);
    assert_eq!(s.last_stamps()[&1], op(1, 10).stamp);
    let seqs: Vec<u64> = s
        .log_reader()
        .read(1, 3, 100)
        .unwrap()
        .iter()
        .map(|o| o.seq)
        .collect();
    assert_eq!(seqs, (4..=10).collect::<Vec<_>>());
    assert_eq!(s.horizon.get(&2), Some(&Stamp(5)));
    s.close().unwrap();
    // Once: opened again, it is just the files.
    let s = Store::open(StoreOptions::at(dir.path())).unwrap();
    assert_eq!(s.applied()[&1], 10);
    s.close().unwrap();
}

/// A store whose layers take 1.5 s to write (`write_delay`), checkpointed
/// every 400 ms, and a probe of its checkpoint thread's scheduling policy;
/// `None` where the thread may not idle.
fn slow_writes() -> Option<(Store, impl Fn() -> i32 + Send + Copy)> {
    let mut opts = StoreOptions::temporary();
    opts.checkpoint_interval = Duration::from_millis(400);
    opts.write_delay = Duration::from_millis(1500);
    let s = Store::open(opts).unwrap();
    let t0 = Instant::now();
    let mut tid = 0;
    while tid == 0 && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
        tid = s.checkpointer.idle_tid();
    }
    if tid == 0 {
        // Without CAP_SYS_NICE or an RLIMIT_NICE that allows nice 10 it
        // stays at nice 10; CI runs as root, where it must not skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "the checkpoint thread may not idle"
        );
        return None;
    }
    // SAFETY: a plain query of a live thread of this process.
    let policy = move || unsafe { libc::sched_getscheduler(tid) };
    Some((s, policy))
}

fn log_a_notice(s: &mut Store) {
    let op = Op {
        origin: 1,
        seq: 1,
        stamp: Stamp::new(10, 1),
        body: OpBody::Notice { text: "hi".into() },
    };
    s.append_log(1, vec![op]).unwrap();
}

/// Hand a layer to the checkpoint thread and wait until it writes it idle.
fn hand_a_layer(s: &mut Store, policy: impl Fn() -> i32) {
    assert_eq!(policy(), libc::SCHED_OTHER, "between layers: nice 10");
    std::thread::sleep(Duration::from_millis(400));
    log_a_notice(s);
    s.maintain(true).unwrap();
    let t0 = Instant::now();
    while policy() != libc::SCHED_IDLE {
        assert!(t0.elapsed() < Duration::from_secs(1), "not written idle");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_layer_is_written_idle_until_half_an_interval_has_passed() {
    let Some((mut s, policy)) = slow_writes() else {
        return;
    };
    hand_a_layer(&mut s, policy);
    s.maintain(true).unwrap();
    assert_eq!(policy(), libc::SCHED_IDLE, "just handed over: not late");
    std::thread::sleep(Duration::from_millis(250));
    s.maintain(true).unwrap();
    assert_eq!(policy(), libc::SCHED_OTHER, "half an interval on: lifted");
    s.checkpoint_now().unwrap();
    assert_eq!(policy(), libc::SCHED_OTHER, "written: nice 10");
    let tid = s.checkpointer.idle_tid();
    // SAFETY: a plain query of a live thread of this process.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    assert_eq!(nice, 10, "and its nice value kept");
}

#[test]
fn waiting_for_a_layer_lifts_its_thread() {
    let Some((mut s, policy)) = slow_writes() else {
        return;
    };
    hand_a_layer(&mut s, policy);
    // Looked at from aside while this thread waits, long before the
    // write's 1.5 s are over.
    let seen = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        policy()
    });
    s.checkpoint_now().unwrap();
    assert_eq!(seen.join().unwrap(), libc::SCHED_OTHER);
}

#[test]
fn a_layer_written_unhurried_leaves_its_thread_at_nice_10() {
    let Some((mut s, policy)) = slow_writes() else {
        return;
    };
    hand_a_layer(&mut s, policy);
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(
        policy(),
        libc::SCHED_OTHER,
        "compaction and the rest at nice 10"
    );
}

#[test]
fn with_idle_writes_off_the_thread_never_idles() {
    let mut opts = StoreOptions::temporary();
    opts.idle_writes = false;
    let mut s = Store::open(opts).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    log_a_notice(&mut s);
    s.checkpoint_now().unwrap();
    assert_eq!(s.checkpointer.idle_tid(), 0);
}

#[test]
fn chunk_bodies_live_in_files_with_pointers_in_sled_and_survive_a_reopen() {
    use crate::ids::Uid;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let at = |k: u64| Stamp::new(1_800_000_000_000 + k, 1);
    let conv = schema::conv_direct(Uid(1), Uid(2));
    let mut s = Store::open(StoreOptions::at(&path)).unwrap();
    for k in 0..600 {
        let m = Message {
            id: at(k),
            from: Uid(1),
            to: Target::User(Uid(2)),
            text: format!("message {k} {}", "x".repeat(k as usize % 50)),
            cid: None,
            time: None,
        };
        assert!(s.add_message(&m).unwrap());
    }
    s.checkpoint_now().unwrap();
    let values: Vec<Vec<u8>> = s.trees[Table::History as usize]
        .iter()
        .map(|r| r.unwrap().1.to_vec())
        .collect();
    assert!(values.len() >= 3, "{}", values.len());
    for v in &values {
        assert_eq!(v[0], bodies::POINTER, "sled holds a pointer, not the chunk");
        assert_eq!(v.len(), 21, "small enough for sled to keep inline");
    }
    // Inbox chunks too.
    let inbox = s.trees[Table::Inbox as usize].iter().collect::<Vec<_>>();
    assert!(!inbox.is_empty());
    assert!(inbox
        .iter()
        .all(|r| r.as_ref().unwrap().1[0] == bodies::POINTER));
    let texts = |s: &Store| -> Vec<String> {
        let (page, more) = s.history(&conv, None, 1000).unwrap();
        assert!(!more);
        page.into_iter().map(|m| m.text).collect()
    };
    let before = texts(&s);
    assert_eq!(before.len(), 600);
    s.close().unwrap();

    let s = Store::open(StoreOptions::at(&path)).unwrap();
    assert_eq!(texts(&s), before);
    assert_eq!(s.counts().messages, 600);
    drop(s);

    // A byte changed in a body is found, not read as some other message.
    let file = std::fs::read_dir(path.join(bodies::DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .expect("a file of bodies");
    let mut bytes = std::fs::read(&file).unwrap();
    for i in (0..bytes.len()).step_by(97) {
        bytes[i] ^= 0x55;
    }
    std::fs::write(&file, bytes).unwrap();
    let s = Store::open(StoreOptions::at(&path)).unwrap();
    let e = s.history(&conv, None, 1000).unwrap_err();
    assert!(e.to_string().contains("fails its check"), "{e}");
}

#[test]
fn chunks_cut_by_retention_keep_their_bodies_in_files() {
    use crate::ids::Uid;
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(StoreOptions::at(dir.path().join("db"))).unwrap();
    let at = |k: u64| Stamp::new(1_800_000_000_000 + k * 1000, 1);
    for k in 0..600 {
        let m = Message {
            id: at(k),
            from: Uid(1),
            to: Target::User(Uid(2)),
            text: format!("message number {k}"),
            cid: None,
            time: None,
        };
        assert!(s.add_message(&m).unwrap());
    }
    s.checkpoint_now().unwrap();
    // Below the middle of a chunk: whole chunks go, one is cut.
    s.raise_watermarks(at(300), Stamp::ZERO);
    while s.sweep(64).unwrap() {}
    s.checkpoint_now().unwrap();
    assert_eq!(on_disk(&s, at(300)), (300, 0));
    for r in s.trees[Table::History as usize].iter() {
        assert_eq!(r.unwrap().1[0], bodies::POINTER);
    }
    let conv = schema::conv_direct(Uid(1), Uid(2));
    let (page, _) = s.history(&conv, None, 1000).unwrap();
    assert_eq!(page.len(), 300);
    assert_eq!(page[0].text, "message number 300");
}
