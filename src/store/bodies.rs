//! Message chunks' bodies (history's and inboxes'), in files of their own
//! (`<db>/chunks`), with only a pointer to each in sled.
//!
//! Why: sled keeps the pages it has read or written in memory, each value a
//! block of its own. Every checkpoint writes a chunk of a different size
//! into each active conversation's last leaf, and the blocks that survived
//! pinned slabs of many sizes: after a load, sled's memory held far more
//! than its cache's worth (README, Performance). A pointer is small enough
//! for sled to keep inside the page itself.
//!
//! A file is `<n>.chunks`: bodies back to back, nothing else. Only the
//! newest file is appended to, and a restarted store starts a new one, so
//! a crash can only leave an unnamed tail. A body is on disk before the
//! pointer to it is given to sled ([`Writer::sync`]): sled may write its
//! pages at any moment, and a pointer must never reach the disk ahead of
//! what it points at.
//!
//! A sweep reclaims the space of bodies no pointer names (inbox chunks
//! delivered, chunks merged with late arrivals or cut by retention): it
//! moves the live bodies of a file more than half dead to the newest
//! file, and deletes a file once two sweeps a minute apart have found it unnamed (a reader may hold
//! a pointer it read just before the chunk was rewritten).
//!
//! A value's first byte says what it is: a chunk (`FORMAT`, `PACKED`) or a
//! pointer ([`POINTER`]). A store without a directory (tests of the rules)
//! keeps chunks in sled; so do data directories from before these files,
//! for the chunks they held then (new ones go to the files).

use super::{Result, StoreError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first byte of a pointer: `[POINTER][file u32][offset u64][length
/// u32][crc32 u32]`, all big-endian.
pub(crate) const POINTER: u8 = 3;
const POINTER_LEN: usize = 21;
/// Files are the unit of deletion: big enough that a sweep has few to look
/// at, small enough that one more than half dead is soon moved.
const FILE_MAX: u64 = 64 << 20;
/// A sweep reads every pointer: at most one a minute. A file is deleted
/// only when two sweeps in a row found it unnamed.
const SWEEP_GAP: Duration = Duration::from_secs(60);
/// Bodies are written out (not yet synced) in runs of about this much: a
/// layer's can be megabytes, and a buffer keeps its largest size.
const WRITE_RUN: usize = 256 << 10;
/// Open files kept per reader, so that a scan across many files does not
/// run out of descriptors.
const OPEN_MAX: usize = 64;
/// The largest body a pointer may claim (chunks are at most
/// [`CHUNK_BYTES`], but for a single larger message).
const BODY_MAX: u32 = 2 << 20;
/// The bytes a chunk is cut at once its body goes to a file (it holds 256
/// messages at most, too). Fewer, larger chunks are fewer keys in sled,
/// and what sled held in memory after a load was mostly those keys.
pub(super) const CHUNK_BYTES: usize = 32 << 10;
/// Where the files are, under the store's directory.
pub(super) const DIR: &str = "chunks";

/// Reads bodies. The store's readers share one; the checkpoint thread has
/// its own, so that it never holds a lock the hub waits for (it may write
/// in `SCHED_IDLE`, `idler.rs`).
pub(crate) struct Bodies {
    dir: Option<PathBuf>,
    open: Mutex<HashMap<u32, Arc<File>>>,
    /// The files' bytes (the shared reader's count, kept by the writer).
    bytes: AtomicU64,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Io(e)
}

fn file_name(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.chunks"))
}

/// The files in `dir` and their sizes; names not of this module's making
/// are left alone.
fn listed(dir: &Path) -> Result<BTreeMap<u32, u64>> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(e)),
    };
    for e in entries {
        let e = e.map_err(io)?;
        let name = e.file_name();
        let Some(n) = name.to_str().and_then(|s| s.strip_suffix(".chunks")) else {
            continue;
        };
        match n.parse::<u32>() {
            Ok(k) if format!("{k:08}") == n => {
                out.insert(k, e.metadata().map_err(io)?.len());
            }
            _ => {}
        }
    }
    Ok(out)
}

impl Bodies {
    fn new(dir: Option<PathBuf>) -> Bodies {
        Bodies {
            dir,
            open: Mutex::default(),
            bytes: AtomicU64::new(0),
        }
    }

    /// The bodies in `dir` (none without one) and the one writer, which
    /// starts a file of its own. The directory is made with the first
    /// file: opening must work on a full disk.
    pub(super) fn open(dir: Option<PathBuf>, no_flush: bool) -> Result<(Arc<Bodies>, Writer)> {
        let files = match &dir {
            Some(d) => listed(d)?,
            None => BTreeMap::new(),
        };
        let shared = Arc::new(Bodies::new(dir.clone()));
        shared.bytes.store(files.values().sum(), Ordering::Relaxed);
        let writer = Writer {
            shared: shared.clone(),
            own: Bodies::new(dir),
            current: None,
            next: files.keys().last().map_or(0, |n| n + 1),
            buf: Vec::new(),
            unsynced: false,
            created: false,
            dir_synced: false,
            no_flush,
            look_again: !files.is_empty(),
            unnamed: BTreeSet::new(),
            last_sweep: Instant::now(),
        };
        Ok((shared, writer))
    }

    /// The files' bytes on disk.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The body a pointer value points at.
    pub(super) fn read(&self, pointer: &[u8]) -> Result<Vec<u8>> {
        let p = Pointer::parse(pointer)?;
        let at = || format!("chunk body in file {} at {}", p.file, p.offset);
        let file = self
            .file(p.file)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", at())))?;
        let mut body = vec![0; p.len as usize];
        file.read_exact_at(&mut body, p.offset)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", at())))?;
        if crc32fast::hash(&body) != p.crc {
            return Err(StoreError::Corrupt(format!("{} fails its check", at())));
        }
        Ok(body)
    }

    fn file(&self, n: u32) -> std::io::Result<Arc<File>> {
        let lock = || self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = lock().get(&n) {
            return Ok(f.clone());
        }
        let Some(dir) = &self.dir else {
            return Err(std::io::Error::other("no files in this store"));
        };
        // Opened and closed outside the lock: those are system calls.
        let f = Arc::new(File::open(file_name(dir, n))?);
        let evicted = {
            let mut open = lock();
            let mut evicted = None;
            if open.len() >= OPEN_MAX {
                evicted = open.keys().next().copied().and_then(|k| open.remove(&k));
            }
            open.insert(n, f.clone());
            evicted
        };
        drop(evicted);
        Ok(f)
    }

    fn forget(&self, n: u32) {
        let f = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
        drop(f);
    }
}

struct Pointer {
    file: u32,
    offset: u64,
    len: u32,
    crc: u32,
}

impl Pointer {
    fn parse(v: &[u8]) -> Result<Pointer> {
        let bad = || StoreError::Corrupt("bad chunk pointer".into());
        if v.len() != POINTER_LEN || v[0] != POINTER {
            return Err(bad());
        }
        let u32_at = |i: usize| v[i..i + 4].try_into().map(u32::from_be_bytes);
        let p = Pointer {
            file: u32_at(1).map_err(|_| bad())?,
            offset: v[5..13]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| bad())?,
            len: u32_at(13).map_err(|_| bad())?,
            crc: u32_at(17).map_err(|_| bad())?,
        };
        if p.len > BODY_MAX {
            return Err(bad());
        }
        Ok(p)
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(POINTER_LEN);
        v.push(POINTER);
        v.extend_from_slice(&self.file.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.crc.to_be_bytes());
        v
    }
}

/// Appends bodies and sweeps; the checkpoint thread's alone (the sweep's
/// moves are safe only because nothing else writes the message tables).
pub(crate) struct Writer {
    shared: Arc<Bodies>,
    own: Bodies,
    /// The file appended to: its number, the file, its length on disk.
    current: Option<(u32, File, u64)>,
    /// The number the next file takes.
    next: u32,
    /// Bodies given pointers and not yet written.
    buf: Vec<u8>,
    /// Bodies given pointers and not yet synced.
    unsynced: bool,
    /// The current file is new since the last sync (its directory entry
    /// needs syncing too).
    created: bool,
    /// The directory's own entry is known to be on disk.
    dir_synced: bool,
    no_flush: bool,
    /// Something may have died since the last sweep: a file was closed or
    /// found at start, a chunk was rewritten, or bodies were moved.
    look_again: bool,
    /// Files the last sweep found no pointer to.
    unnamed: BTreeSet<u32>,
    last_sweep: Instant,
}

mod sweep;

impl Writer {
    pub(super) fn reader(&self) -> &Bodies {
        &self.own
    }

    /// The bytes `flush::split` cuts a chunk at: [`CHUNK_BYTES`] with files;
    /// without, the chunk stays a sled value, so `RECORD_MAX_BYTES`.
    pub(super) fn chunk_bytes(&self) -> usize {
        match self.own.dir {
            Some(_) => CHUNK_BYTES,
            None => super::RECORD_MAX_BYTES,
        }
    }

    /// A stored chunk was rewritten or removed: its body may be dead.
    pub(super) fn replaced(&mut self) {
        self.look_again = true;
    }

    /// The value to store for a chunk: a pointer to it, the chunk queued
    /// for the next [`Writer::sync`]; without files, the chunk itself.
    pub(super) fn put(&mut self, chunk: Vec<u8>) -> Result<Vec<u8>> {
        if self.own.dir.is_none() || chunk.len() <= POINTER_LEN || chunk.len() > BODY_MAX as usize {
            return Ok(chunk);
        }
        if self.current.is_none() {
            self.start_file()?;
        }
        let Some((file, _, len)) = &self.current else {
            return Ok(chunk);
        };
        let p = Pointer {
            file: *file,
            offset: len + self.buf.len() as u64,
            len: chunk.len() as u32,
            crc: crc32fast::hash(&chunk),
        };
        self.buf.extend_from_slice(&chunk);
        self.unsynced = true;
        if self.buf.len() >= WRITE_RUN {
            if let Err(e) = self.write_run() {
                self.abandon();
                return Err(e);
            }
        }
        Ok(p.encode())
    }

    fn start_file(&mut self) -> Result<()> {
        let Some(dir) = self.own.dir.clone() else {
            return Err(StoreError::Corrupt("no directory for chunk bodies".into()));
        };
        if !self.dir_synced {
            std::fs::create_dir_all(&dir).map_err(io)?;
            // The store's directory holds the new one's entry (synced once
            // per start: it may have been made by a run that died first).
            if let Some(parent) = dir.parent() {
                if !self.no_flush {
                    File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
                }
            }
            self.dir_synced = true;
        }
        let n = self.next;
        let f = File::options()
            .create_new(true)
            .append(true)
            .open(file_name(&dir, n))
            .map_err(io)?;
        self.next += 1;
        self.current = Some((n, f, 0));
        self.created = true;
        Ok(())
    }

    /// Append what is buffered to the current file.
    fn write_run(&mut self) -> Result<()> {
        use std::io::Write;
        let Some((_, f, len)) = &mut self.current else {
            return Err(StoreError::Corrupt("chunk bodies without a file".into()));
        };
        f.write_all(&self.buf).map_err(io)?;
        *len += self.buf.len() as u64;
        self.shared
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.buf.clear();
        Ok(())
    }

    /// After a failed write: the file's tail may be torn, so no more goes
    /// into it, and no pointer given since the last sync may be stored.
    fn abandon(&mut self) {
        self.buf.clear();
        self.unsynced = false;
        self.close();
    }

    /// Put every body given a pointer on disk. On failure the file is
    /// abandoned and those pointers must not be stored.
    pub(super) fn sync(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        let r = self.write_run().and_then(|()| self.sync_file());
        if r.is_err() {
            self.abandon();
        }
        r
    }

    fn sync_file(&mut self) -> Result<()> {
        let Some((_, f, len)) = &mut self.current else {
            return Err(StoreError::Corrupt("chunk bodies without a file".into()));
        };
        if !self.no_flush {
            f.sync_data().map_err(io)?;
            if self.created {
                if let Some(dir) = &self.own.dir {
                    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                }
            }
        }
        self.created = false;
        self.unsynced = false;
        if *len >= FILE_MAX {
            self.close();
        }
        Ok(())
    }

    fn close(&mut self) {
        if self.current.take().is_some() {
            self.look_again = true;
        }
    }
}

#[cfg(test)]
mod tests;
