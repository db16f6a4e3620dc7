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
//! [`FILE_MAX`] bytes: its index (`<n>.idx`: some records' heads and
//! places, then a crc) is written beside it, so that opening reads indexes,
//! not logs. The last file is read through at open, and cut at the first
//! record that is short or fails its crc (a write the crash interrupted,
//! never acknowledged). Compaction decides from the heads alone.
//!
//! The file being written is kept ahead of its records in zeros (as far
//! again as its records reach, from [`STEP_MIN`] to [`STEP`]): a sync of
//! records written over zeros already on disk need not commit the file
//! system's journal (the file's size and blocks are unchanged), which a
//! sync of an append must. At 50,000 msg/s that made a commit's
//! `fdatasync` a quarter quicker and the commit thread sleep less. Zeros are no record (a
//! record's length is never 0), so opening stops at them as at a torn
//! write and cuts them off; a file is cut to its records before it is
//! sealed.
//!
//! The index is sparse: per file and origin, the first record, one record
//! every [`SPARSE`] bytes, and the newest. A record per commit would
//! otherwise cost memory in proportion to the log (about 60 bytes each,
//! as much as a short message takes on disk); a read scans forward from
//! the nearest entry instead, at most [`SPARSE`] bytes further.

use super::{Position, Result, StoreError};
use crate::ids::NodeId;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a file is sealed and the next begun.
pub(super) const FILE_MAX: u64 = 16 << 20;
/// The most the file being written is zero-filled ahead of its records.
const STEP: u64 = 1 << 20;
/// The least, and the unit of filling: a small store's files stay small.
const STEP_MIN: u64 = 64 << 10;
/// `[length][crc]`, then the head the crc covers.
const PREFIX: usize = 8;
const HEAD: usize = PREFIX + 26;
/// How far apart an origin's index entries are in a file.
const SPARSE: u64 = 64 << 10;
/// How much a read takes from a file at a time.
const BLOCK: usize = 256 << 10;
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

/// What an open file is to readers.
struct FileInfo {
    file: Arc<File>,
    /// Where its last whole record ends.
    len: u64,
    /// Each origin's newest record in it: last seq and stamp.
    newest: BTreeMap<NodeId, (u64, u64)>,
}

#[derive(Default)]
struct Shared {
    files: BTreeMap<u64, FileInfo>,
    /// Sparse: see [`FileIndex`].
    index: BTreeMap<(NodeId, u64), Loc>,
    bytes: u64,
}

/// The entries one file's index keeps: per origin, its first record and
/// one every [`SPARSE`] bytes after it, and its newest record.
#[derive(Default)]
struct FileIndex {
    kept: Vec<Entry>,
    kept_at: BTreeMap<NodeId, u64>,
    newest: BTreeMap<NodeId, Entry>,
}

impl FileIndex {
    /// Take note of the next record; whether the index keeps it.
    fn note(&mut self, e: Entry) -> bool {
        let (origin, _, loc) = e;
        self.newest.insert(origin, e);
        let keep = self
            .kept_at
            .get(&origin)
            .is_none_or(|at| loc.offset >= at + SPARSE);
        if keep {
            self.kept_at.insert(origin, loc.offset);
            self.kept.push(e);
        }
        keep
    }

    /// What the file's `.idx` holds, in the file's order.
    fn entries(&self) -> Vec<Entry> {
        let mut out = self.kept.clone();
        for e in self.newest.values() {
            if self.kept_at.get(&e.0) != Some(&e.2.offset) {
                out.push(*e);
            }
        }
        out.sort_unstable_by_key(|e| e.2.offset);
        out
    }
}

/// The file appends go to, owned by whoever holds the lock.
struct Active {
    no: u64,
    file: Option<File>,
    /// Where its records end: the next one is written there.
    len: u64,
    /// How far the file is filled (records, then zeros).
    filled: u64,
    /// Its index, written beside it when it is sealed.
    index: FileIndex,
}

impl Active {
    /// Done with this file (sealed or deleted): the next append begins
    /// the next one, empty. A state without a file is always this one.
    fn next_file(&mut self) {
        self.file = None;
        self.no += 1;
        self.len = 0;
        self.filled = 0;
        self.index = FileIndex::default();
    }
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

/// How far a file whose records end at `end` is filled: as far again as
/// its records reach, from [`STEP_MIN`] to [`STEP`], in whole [`STEP_MIN`]s.
fn ahead(end: u64) -> u64 {
    (end + end.clamp(STEP_MIN, STEP)).next_multiple_of(STEP_MIN)
}

/// Have the disk start writing `from..to` of `f`, without waiting.
fn start_writing(f: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let (Ok(at), Ok(n)) = (i64::try_from(from), i64::try_from(to - from)) else {
            return;
        };
        // SAFETY: a plain system call on an open descriptor; a refusal
        // only means the next sync writes the range itself.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), at, n, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, from, to);
}

/// Fill `f` with zeros from `from` to `to`; returns how far it got. A
/// disk too full for the zeros may still take the record: it is written
/// anyway, and its own write says whether there was room.
fn fill(f: &File, from: u64, to: u64) -> u64 {
    static ZEROS: [u8; STEP_MIN as usize] = [0; STEP_MIN as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        if f.write_all_at(&ZEROS[..n], at).is_err() {
            break;
        }
        at += n as u64;
    }
    at
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
            filled: 0,
            index: FileIndex::default(),
        };
        for (i, &no) in nos.iter().enumerate() {
            let path = dir.join(format!("{no}.log"));
            let last_file = i + 1 == nos.len();
            let idx = dir.join(format!("{no}.idx"));
            let (records, end) = match (last_file, read_idx(&idx)) {
                (false, Some(r)) => {
                    let end = r.iter().map(|(_, _, l)| l.offset + u64::from(l.len)).max();
                    (r, end.unwrap_or(0))
                }
                _ => read::scan(&path, no)?,
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
                // The tail a crash cut short was never acknowledged; or
                // it is the zeros the file was kept ahead in.
                f.set_len(end).map_err(io)?;
            }
            // An index written whole (before the index was sparse) is
            // thinned like any other.
            let mut index = FileIndex::default();
            for e in records {
                if index.note(e) {
                    shared.index.insert((e.0, e.1), e.2);
                }
            }
            let newest = index
                .newest
                .iter()
                .map(|(o, e)| (*o, (e.2.last, e.2.last_stamp)))
                .collect();
            shared.bytes += end;
            shared.files.insert(
                no,
                FileInfo {
                    file: Arc::new(f),
                    len: end,
                    newest,
                },
            );
            if last_file && end < FILE_MAX {
                let writer = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io)?;
                active = Active {
                    no,
                    file: Some(writer),
                    len: end,
                    filled: end,
                    index,
                };
            }
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
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io)?;
            // The file's name must survive a crash with what is in it.
            sync_dir(&self.dir)?;
            let reader = File::open(&path).map_err(io)?;
            let info = FileInfo {
                file: Arc::new(reader),
                len: 0,
                newest: BTreeMap::new(),
            };
            lock(&self.shared).files.insert(a.no, info);
            debug_assert!(a.len == 0 && a.filled == 0, "a new file starts empty");
            a.file = Some(f);
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
        let a = &mut *a;
        let end = a.len + buf.len() as u64;
        if let Some(f) = a.file.as_ref() {
            if end > a.filled {
                // Not topped up in time (see `top_up`): the next sync
                // writes these zeros too.
                a.filled = fill(f, a.filled, ahead(end));
            }
            f.write_all_at(&buf, a.len).map_err(io)?;
        }
        a.len = end;
        a.filled = a.filled.max(end);
        let kept: Vec<Entry> = placed.into_iter().filter(|e| a.index.note(*e)).collect();
        let mut s = lock(&self.shared);
        s.bytes += buf.len() as u64;
        for (origin, first, loc) in kept {
            s.index.insert((origin, first), loc);
        }
        if let Some(info) = s.files.get_mut(&no) {
            info.len = a.len;
            if let Some((_, _, loc)) = a.index.newest.get(&origin) {
                info.newest.insert(origin, (loc.last, loc.last_stamp));
            }
        }
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

    /// If the file's zeros run short, fill it further and have the disk
    /// start on them. Called after a sync: the zeros are then written
    /// between that sync and the next, not by it (which, with a
    /// mebibyte to write, was slow enough to be seen in the tail).
    pub(super) fn top_up(&self) {
        let mut guard = lock(&self.active);
        let a = &mut *guard;
        let Some(f) = a.file.as_ref() else {
            return;
        };
        let to = ahead(a.len);
        if a.filled < to - (to - a.len) / 2 {
            let from = a.filled;
            a.filled = fill(f, from, to);
            if a.filled > from {
                start_writing(f, from, a.filled);
            }
        }
    }

    /// Close the full file (synced, its index beside it); the next append
    /// begins another.
    fn seal(&self, a: &mut Active) -> Result<()> {
        if let Some(f) = a.file.take() {
            // Cut to its records before its index exists: a file with an
            // index is read by it, and must end where its records do.
            f.set_len(a.len).map_err(io)?;
            f.sync_all().map_err(io)?;
            let mut idx = super::encode(&a.index.entries());
            idx.extend_from_slice(&crc(&[&idx]).to_le_bytes());
            let path = self.dir.join(format!("{}.idx", a.no));
            std::fs::write(&path, &idx).map_err(io)?;
            File::open(&path).and_then(|f| f.sync_all()).map_err(io)?;
        }
        a.next_file();
        Ok(())
    }

    /// Each origin the log holds, with its newest record's last sequence
    /// number and stamp.
    pub(super) fn ends(&self) -> BTreeMap<NodeId, (u64, u64)> {
        let s = lock(&self.shared);
        let mut out = BTreeMap::new();
        for info in s.files.values() {
            out.extend(info.newest.iter().map(|(o, n)| (*o, *n)));
        }
        out
    }

    /// Delete the files whose every record is at or behind `start` (the
    /// active file too: the next append begins another). Returns the bytes
    /// of records freed (as [`LogFiles::bytes`] counts them).
    pub(super) fn drop_behind(&self, start: &Position) -> Result<u64> {
        let mut a = lock(&self.active);
        let mut s = lock(&self.shared);
        let behind = |info: &FileInfo| {
            !info.newest.is_empty()
                && info
                    .newest
                    .iter()
                    .all(|(o, (last, _))| *last <= start.get(o).copied().unwrap_or(0))
        };
        let doomed: Vec<u64> = s
            .files
            .iter()
            .filter(|(_, info)| behind(info))
            .map(|(no, _)| *no)
            .collect();
        let mut freed = 0;
        for no in doomed {
            if no == a.no {
                a.next_file();
            }
            if let Some(info) = s.files.remove(&no) {
                freed += info.len;
            }
            s.index.retain(|_, loc| loc.file != no);
            let path = self.dir.join(format!("{no}.log"));
            let _ = std::fs::remove_file(self.dir.join(format!("{no}.idx")));
            std::fs::remove_file(&path).map_err(io)?;
        }
        s.bytes = s.bytes.saturating_sub(freed);
        Ok(freed)
    }

    /// The records' bytes (the file being written is up to [`STEP`] and
    /// [`STEP_MIN`] longer on disk, in zeros).
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

mod read;
#[cfg(test)]
mod tests;
