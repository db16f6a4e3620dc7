use super::*;
use crate::ids::Stamp;
use crate::model::{Op, OpBody};

fn segment(origin: NodeId, seqs: std::ops::RangeInclusive<u64>, text: &str) -> Segment {
    let ops: Vec<Op> = seqs
        .map(|seq| Op {
            origin,
            seq,
            stamp: Stamp::new(1000 + seq, origin),
            body: OpBody::Notice { text: text.into() },
        })
        .collect();
    let last = ops.last().unwrap();
    Segment {
        first: ops[0].seq,
        last: last.seq,
        last_stamp: last.stamp.0,
        bytes: super::super::encode(&ops),
    }
}

#[test]
fn a_torn_tail_is_cut_and_what_came_before_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFiles::open(dir.path(), false).unwrap();
    log.append(1, &[segment(1, 1..=3, "a"), segment(1, 4..=4, "b")])
        .unwrap();
    log.append(2, &[segment(2, 1..=2, "c")]).unwrap();
    log.sync().unwrap();
    drop(log);
    // The file is kept ahead of its records in zeros; a crash in the
    // middle of the next write leaves part of a record over them.
    let path = dir.path().join("1.log");
    let whole = read::scan(&path, 1).unwrap().1;
    let data = std::fs::read(&path).unwrap();
    assert!(data.len() as u64 >= whole + STEP_MIN, "filled ahead");
    assert!(data[whole as usize..].iter().all(|b| *b == 0));
    let torn = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    torn.write_all_at(&[40, 0, 0, 0, 1, 2, 3], whole).unwrap();
    drop(torn);
    let log = LogFiles::open(dir.path(), false).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        whole,
        "cut to its records"
    );
    let seqs = |o, after| -> Vec<u64> {
        log.read(o, after, 100)
            .unwrap()
            .iter()
            .map(|op| op.seq)
            .collect()
    };
    assert_eq!(seqs(1, 0), vec![1, 2, 3, 4]);
    assert_eq!(seqs(1, 2), vec![3, 4]);
    assert_eq!(seqs(2, 0), vec![1, 2]);
    assert_eq!(log.ends()[&1].0, 4);
    // Appends go on right after the cut, and read back, also once the
    // log is opened again.
    log.append(1, &[segment(1, 5..=6, "d")]).unwrap();
    assert_eq!(seqs(1, 4), vec![5, 6]);
    log.sync().unwrap();
    drop(log);
    let log = LogFiles::open(dir.path(), false).unwrap();
    assert_eq!(log.read(1, 4, 10).unwrap().len(), 2);
    drop(log);
    // A changed byte is a damaged record: cut there too.
    let end = read::scan(&path, 1).unwrap().1 as usize;
    let mut data = std::fs::read(&path).unwrap();
    assert_eq!(data.len(), end, "a reopened file holds its records alone");
    data[end - 3] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let log = LogFiles::open(dir.path(), false).unwrap();
    assert_eq!(log.ends()[&1].0, 4);
}

#[test]
fn full_files_are_sealed_with_an_index_and_deleted_once_behind_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFiles::open(dir.path(), false).unwrap();
    let big = "x".repeat(200 << 10);
    // A few files' worth: 100 records of 200 KiB.
    for seq in 1..=100 {
        log.append(3, &[segment(3, seq..=seq, &big)]).unwrap();
    }
    log.sync().unwrap();
    let logs = || -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| file_no(&e.unwrap().path(), "log"))
            .collect();
        v.sort_unstable();
        v
    };
    let files = logs();
    assert!(files.len() >= 2, "{files:?}");
    assert!(dir.path().join("1.idx").exists());
    // A sealed file ends where its records do; the one being written is
    // ahead in zeros.
    for (i, no) in files.iter().enumerate() {
        let path = dir.path().join(format!("{no}.log"));
        let records = read::scan(&path, *no).unwrap().1;
        let size = std::fs::metadata(&path).unwrap().len();
        if i + 1 < files.len() {
            assert_eq!(size, records, "sealed file {no}");
        } else {
            assert!(size > records, "{size} for {records}");
        }
    }
    drop(log);
    let log = LogFiles::open(dir.path(), false).unwrap();
    assert_eq!(log.read(3, 49, 1).unwrap()[0].seq, 50);
    // Behind a start at 90: the first file (16 MiB: 1 to about 80) goes.
    let before = log.bytes();
    let start: Position = [(3, 90)].into_iter().collect();
    let freed = log.drop_behind(&start).unwrap();
    assert!(freed > 0 && log.bytes() == before - freed);
    assert!(logs().len() < files.len());
    assert_eq!(log.read(3, 90, 1).unwrap()[0].seq, 91);
    // Everything behind: every file goes, the one being written too,
    // and the next append begins another.
    let start: Position = [(3, 100)].into_iter().collect();
    log.drop_behind(&start).unwrap();
    assert!(logs().is_empty(), "{:?}", logs());
    log.append(3, &[segment(3, 101..=101, "after")]).unwrap();
    assert_eq!(log.read(3, 100, 5).unwrap()[0].seq, 101);
}

/// Many small records of three origins, over more than one file: the
/// index keeps a few entries per file, and every read still finds
/// exactly what follows its position, before and after a reopen.
#[test]
fn a_sparse_index_still_finds_every_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFiles::open(dir.path(), false).unwrap();
    let text = "y".repeat(1500);
    let mut next = [1u64; 3];
    let mut records = 0u64;
    // About 20 MiB: two files.
    for i in 0..14_000u64 {
        let o = (i % 3) as usize;
        let n = 1 + i % 3;
        let seqs = next[o]..=next[o] + n - 1;
        next[o] += n;
        log.append(o as NodeId + 1, &[segment(o as NodeId + 1, seqs, &text)])
            .unwrap();
        records += 1;
    }
    log.sync().unwrap();
    let check = |log: &LogFiles| {
        let (kept, files, bytes) = {
            let s = lock(&log.shared);
            (s.index.len() as u64, s.files.len() as u64, s.bytes)
        };
        assert!(files >= 2);
        // Per origin: one per SPARSE bytes and the first of each file.
        let bound = 3 * (bytes / SPARSE + files);
        assert!(
            kept <= bound && kept * 5 < records,
            "{kept} entries for {records} records"
        );
        for o in 0..3u16 {
            let end = next[o as usize] - 1;
            assert_eq!(log.ends()[&(o + 1)].0, end);
            for after in (0..end).step_by(997).chain([end - 1, end]) {
                let got: Vec<u64> = log
                    .read(o + 1, after, 40)
                    .unwrap()
                    .iter()
                    .map(|op| op.seq)
                    .collect();
                let want: Vec<u64> = (after + 1..=end).take(40).collect();
                assert_eq!(got, want, "origin {} after {after}", o + 1);
            }
            let heads = log.heads_from(o + 1, 1, usize::MAX).unwrap();
            assert_eq!(heads[0].0, 1);
            assert_eq!(heads.last().unwrap().1.last, end);
            for w in heads.windows(2) {
                assert_eq!(w[1].0, w[0].1.last + 1, "heads follow each other");
            }
        }
    };
    check(&log);
    drop(log);
    let log = LogFiles::open(dir.path(), false).unwrap();
    check(&log);
    // Appends after the reopen are found too.
    log.append(1, &[segment(1, next[0]..=next[0], "z")])
        .unwrap();
    assert_eq!(log.read(1, next[0] - 1, 5).unwrap()[0].seq, next[0]);
}

/// After each sync the file is topped up with zeros, so that the records
/// of the next commits are written over zeros already there (and the
/// file's size on disk is where the zeros end).
#[test]
fn zeros_are_topped_up_after_a_sync_before_records_need_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFiles::open(dir.path(), false).unwrap();
    let path = dir.path().join("1.log");
    let text = "z".repeat(4000);
    let state = |log: &LogFiles| {
        let a = lock(&log.active);
        (a.len, a.filled)
    };
    let mut fills_on_append = 0;
    // About 1.6 MB: past the largest step.
    for seq in 1..=400 {
        let (_, before) = state(&log);
        log.append(1, &[segment(1, seq..=seq, &text)]).unwrap();
        if state(&log).1 != before {
            fills_on_append += 1;
        }
        log.sync().unwrap();
        log.top_up();
        let (len, filled) = state(&log);
        let want = ahead(len);
        assert!(
            filled - len >= (want - len) / 2 && filled <= want,
            "record {seq}: records end at {len}, zeros at {filled}, {want} wanted"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), filled);
    }
    // Only the first record found no zeros (the file was new).
    assert_eq!(fills_on_append, 1);
    assert!(state(&log).1 - state(&log).0 >= STEP / 2);
}
