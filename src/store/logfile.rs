//! The log on disk: numbered files of records, appended to and fsynced by
//! the commit thread, read by position from any thread, and deleted whole
//! once compaction has moved the log's start past everything in them.
//!
//! Why files and not a sled tree: the log is only ever appended to, read
//! by position, and dropped from the front. Files do exactly that with no
//! write amplification, and a compacted file's space goes back to the disk
//! at once (sled keeps freed space inside its own file).
//!
//! A file is `<n>.log`; a record is `[length u32 LE][crc32 u32 LE]`, then
//! what the length counts and the crc covers: `[origin u16][first seq
//! u64][last seq u64][last stamp u64]` (big-endian) and the segment (the
//! encoded operations, as `log.rs` makes them). A file is sealed at
//! [`FILE_MAX`] bytes: its index (`<n>.idx`: every record's head and
//! place, then a crc) is written beside it, so that opening reads indexes,
//! not logs. The last file is read through at open, and cut at the first
//! record that is short or fails its crc (a write the crash interrupted,
//! never acknowledged). Compaction decides from the heads alone.

use super::{Position, Result, StoreError};
use crate::ids::NodeId;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a file is sealed and the next begun.
pub(super) const FILE_MAX: u64 = 16 << 20;
/// `[length][crc]`, then the head the crc covers.
const PREFIX: usize = 8;
const HEAD: usize = PREFIX + 26;
/// The largest record accepted when reading (a segment is a few KiB; one
/// operation alone may be bigger, never this big).
const RECORD_MAX: usize = 64 << 20;

fn io(e: std::io::Error) -> StoreError {
    StoreError::Io(e)
}

fn corrupt(path: &Path, what: &str) -> StoreError {
    StoreError::Corrupt(format!("{}: {what}", path.display()))
}

/// Where a record is, and what it holds.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Loc {
    file: u64,
    offset: u64,
    len: u32,
    pub(super) last: u64,
    pub(super) last_stamp: u64,
}

/// One record's place in a file's index: origin, first seq, and where.
type Entry = (NodeId, u64, Loc);

#[derive(Default)]
struct Shared {
    files: BTreeMap<u64, Arc<File>>,
    /// The highest sequence number of each origin in each file.
    last: BTreeMap<u64, BTreeMap<NodeId, u64>>,
    index: BTreeMap<(NodeId, u64), Loc>,
    bytes: u64,
}

/// The file appends go to, owned by whoever holds the lock.
struct Active {
    no: u64,
    file: Option<File>,
    len: u64,
    /// The index of what is in it, written when it is sealed.
    records: Vec<Entry>,
}

/// What one record holds.
pub(super) struct Segment {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) last_stamp: u64,
    pub(super) bytes: Vec<u8>,
}

pub(super) struct LogFiles {
    dir: PathBuf,
    /// A directory of its own to remove when dropped (a temporary store).
    temporary: bool,
    shared: Mutex<Shared>,
    active: Mutex<Active>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn file_no(p: &Path, ext: &str) -> Option<u64> {
    (p.extension()? == ext).then_some(())?;
    p.file_stem()?.to_str()?.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// The records of file `no`, read through, and where the last whole one
/// ends.
fn scan(path: &Path, no: u64) -> Result<(Vec<Entry>, u64)> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(prefix) = data.get(at..at + PREFIX) {
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let sum = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        if !(HEAD - PREFIX..=RECORD_MAX).contains(&len) {
            break;
        }
        let Some(body) = data.get(at + PREFIX..at + PREFIX + len) else {
            break;
        };
        if crc(&[body]) != sum {
            break;
        }
        let be = |r: std::ops::Range<usize>| {
            body[r].iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b))
        };
        let loc = Loc {
            file: no,
            offset: at as u64,
            len: (PREFIX + len) as u32,
            last: be(10..18),
            last_stamp: be(18..26),
        };
        out.push((be(0..2) as NodeId, be(2..10), loc));
        at += PREFIX + len;
    }
    Ok((out, at as u64))
}

fn read_idx(path: &Path) -> Option<Vec<Entry>> {
    let data = std::fs::read(path).ok()?;
    let (body, sum) = data.split_at(data.len().checked_sub(4)?);
    (crc(&[body]).to_le_bytes() == sum).then_some(())?;
    super::decode(body).ok()
}

impl LogFiles {
    /// Open the log in `dir` (made if missing); `temporary`: the directory
    /// is removed when the log is dropped.
    pub(super) fn open(dir: &Path, temporary: bool) -> Result<LogFiles> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut nos: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().and_then(|e| file_no(&e.path(), "log")))
            .collect();
        nos.sort_unstable();
        let mut shared = Shared::default();
        let mut active = Active {
            no: nos.last().map_or(1, |n| n + 1),
            file: None,
            len: 0,
            records: Vec::new(),
        };
        for (i, &no) in nos.iter().enumerate() {
            let path = dir.join(format!("{no}.log"));
            let last_file = i + 1 == nos.len();
            let idx = dir.join(format!("{no}.idx"));
            let (records, end) = match (last_file, read_idx(&idx)) {
                (false, Some(r)) => {
                    let end = r.last().map_or(0, |(_, _, l)| l.offset + u64::from(l.len));
                    (r, end)
                }
                _ => scan(&path, no)?,
            };
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io)?;
            let size = f.metadata().map_err(io)?.len();
            if size > end {
                if !last_file {
                    return Err(corrupt(&path, "a damaged record before the end of the log"));
                }
                // The tail a crash cut short was never acknowledged.
                f.set_len(end).map_err(io)?;
            }
            for &(origin, first, loc) in &records {
                shared.index.insert((origin, first), loc);
                let last = shared
                    .last
                    .entry(no)
                    .or_default()
                    .entry(origin)
                    .or_insert(0);
                *last = (*last).max(loc.last);
            }
            shared.bytes += end;
            if last_file && end < FILE_MAX {
                let appender = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io)?;
                active = Active {
                    no,
                    file: Some(appender),
                    len: end,
                    records,
                };
            }
            shared.files.insert(no, Arc::new(f));
        }
        Ok(LogFiles {
            dir: dir.to_path_buf(),
            temporary,
            shared: Mutex::new(shared),
            active: Mutex::new(active),
        })
    }

    /// Append records, one per segment: (first seq, last seq, last stamp,
    /// bytes). Not durable until [`LogFiles::sync`].
    pub(super) fn append(&self, origin: NodeId, segments: &[Segment]) -> Result<()> {
        let mut a = lock(&self.active);
        if a.len >= FILE_MAX {
            self.seal(&mut a)?;
        }
        if a.file.is_none() {
            let path = self.dir.join(format!("{}.log", a.no));
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(io)?;
            // The file's name must survive a crash with what is in it.
            sync_dir(&self.dir)?;
            let reader = File::open(&path).map_err(io)?;
            lock(&self.shared).files.insert(a.no, Arc::new(reader));
            a.file = Some(f);
            a.len = 0;
            a.records.clear();
        }
        let no = a.no;
        let mut buf = Vec::with_capacity(segments.iter().map(|s| s.bytes.len() + HEAD).sum());
        let mut placed = Vec::with_capacity(segments.len());
        for seg in segments {
            let mut head = Vec::with_capacity(HEAD - PREFIX);
            head.extend_from_slice(&origin.to_be_bytes());
            head.extend_from_slice(&seg.first.to_be_bytes());
            head.extend_from_slice(&seg.last.to_be_bytes());
            head.extend_from_slice(&seg.last_stamp.to_be_bytes());
            let loc = Loc {
                file: no,
                offset: a.len + buf.len() as u64,
                len: (HEAD + seg.bytes.len()) as u32,
                last: seg.last,
                last_stamp: seg.last_stamp,
            };
            buf.extend_from_slice(&((head.len() + seg.bytes.len()) as u32).to_le_bytes());
            buf.extend_from_slice(&crc(&[&head, &seg.bytes]).to_le_bytes());
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&seg.bytes);
            placed.push((origin, seg.first, loc));
        }
        if let Some(f) = a.file.as_mut() {
            f.write_all(&buf).map_err(io)?;
        }
        a.len += buf.len() as u64;
        let mut s = lock(&self.shared);
        s.bytes += buf.len() as u64;
        for &(origin, first, loc) in &placed {
            s.index.insert((origin, first), loc);
            let last = s.last.entry(no).or_default().entry(origin).or_insert(0);
            *last = (*last).max(loc.last);
        }
        drop(s);
        a.records.extend(placed);
        Ok(())
    }

    /// Make everything appended durable.
    pub(super) fn sync(&self) -> Result<()> {
        let a = lock(&self.active);
        match &a.file {
            Some(f) => f.sync_data().map_err(io),
            None => Ok(()),
        }
    }

    /// Close the full file (synced, its index beside it); the next append
    /// begins another.
    fn seal(&self, a: &mut Active) -> Result<()> {
        if let Some(f) = a.file.take() {
            f.sync_data().map_err(io)?;
            let mut idx = super::encode(&a.records);
            idx.extend_from_slice(&crc(&[&idx]).to_le_bytes());
            let path = self.dir.join(format!("{}.idx", a.no));
            std::fs::write(&path, &idx).map_err(io)?;
            File::open(&path).and_then(|f| f.sync_all()).map_err(io)?;
        }
        a.no += 1;
        a.len = 0;
        a.records.clear();
        Ok(())
    }

    /// The record that begins at `origin`'s `first`, decoded.
    fn segment(&self, origin: NodeId, first: u64) -> Result<Vec<crate::model::Op>> {
        let (file, loc) = {
            let s = lock(&self.shared);
            let Some(loc) = s.index.get(&(origin, first)).copied() else {
                return Ok(Vec::new());
            };
            match s.files.get(&loc.file) {
                Some(f) => (f.clone(), loc),
                None => return Ok(Vec::new()),
            }
        };
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset).map_err(io)?;
        let body = buf
            .get(HEAD..)
            .ok_or_else(|| corrupt(&self.dir, "short record"))?;
        super::log::decode_segment(body)
    }

    /// `origin`'s records that hold `from` and after (first seq and
    /// place), at most `max` of them.
    pub(super) fn records_from(&self, origin: NodeId, from: u64, max: usize) -> Vec<(u64, Loc)> {
        let s = lock(&self.shared);
        let start = s
            .index
            .range((origin, 0)..=(origin, from))
            .next_back()
            .map_or(0, |((_, first), _)| *first);
        s.index
            .range((origin, start)..=(origin, u64::MAX))
            .filter(|(_, loc)| loc.last >= from)
            .take(max)
            .map(|((_, first), loc)| (*first, *loc))
            .collect()
    }

    /// `origin`'s operations after `after`, oldest first, at most `max`.
    pub(super) fn read(
        &self,
        origin: NodeId,
        after: u64,
        max: usize,
    ) -> Result<Vec<crate::model::Op>> {
        let mut out = Vec::new();
        let mut next = after.saturating_add(1);
        loop {
            let records = self.records_from(origin, next, 16);
            if records.is_empty() {
                return Ok(out);
            }
            for (first, loc) in records {
                out.extend(
                    self.segment(origin, first)?
                        .into_iter()
                        .filter(|o| o.seq >= next),
                );
                next = loc.last.saturating_add(1);
                if out.len() >= max {
                    out.truncate(max);
                    return Ok(out);
                }
            }
        }
    }

    /// Each origin the log holds, with its newest record's last sequence
    /// number and stamp.
    pub(super) fn ends(&self) -> BTreeMap<NodeId, (u64, u64)> {
        let s = lock(&self.shared);
        let mut out = BTreeMap::new();
        for (&(origin, _), loc) in &s.index {
            out.insert(origin, (loc.last, loc.last_stamp));
        }
        out
    }

    /// Delete the files whose every record is at or behind `start` (the
    /// active file too: the next append begins another). Returns the bytes
    /// freed.
    pub(super) fn drop_behind(&self, start: &Position) -> Result<u64> {
        let mut a = lock(&self.active);
        let mut s = lock(&self.shared);
        let behind = |lasts: &BTreeMap<NodeId, u64>| {
            lasts
                .iter()
                .all(|(o, last)| *last <= start.get(o).copied().unwrap_or(0))
        };
        let doomed: Vec<u64> = s
            .last
            .iter()
            .filter(|(_, lasts)| behind(lasts))
            .map(|(no, _)| *no)
            .collect();
        let mut freed = 0;
        for no in doomed {
            if no == a.no {
                a.file = None;
                a.no += 1;
                a.len = 0;
                a.records.clear();
            }
            s.last.remove(&no);
            s.files.remove(&no);
            s.index.retain(|_, loc| loc.file != no);
            let path = self.dir.join(format!("{no}.log"));
            freed += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::remove_file(self.dir.join(format!("{no}.idx")));
            std::fs::remove_file(&path).map_err(io)?;
        }
        s.bytes = s.bytes.saturating_sub(freed);
        Ok(freed)
    }

    pub(super) fn bytes(&self) -> u64 {
        lock(&self.shared).bytes
    }
}

impl Drop for LogFiles {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
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
        // A crash in the middle of the next write.
        let path = dir.path().join("1.log");
        let whole = std::fs::metadata(&path).unwrap().len();
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        torn.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(torn);
        let log = LogFiles::open(dir.path(), false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
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
        // Appends go on after the cut, and read back.
        log.append(1, &[segment(1, 5..=6, "d")]).unwrap();
        assert_eq!(seqs(1, 4), vec![5, 6]);
        // A changed byte is a damaged record: cut there too.
        drop(log);
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n - 3] ^= 0xff;
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
}
