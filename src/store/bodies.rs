//! Message chunks' bodies, in files of their own (`<db>/chunks`), with
//! only a pointer to each in sled.
//!
//! Why: sled keeps the pages it has read or written in memory, each value a
//! block of its own. Every checkpoint writes a chunk of a different size
//! into each active conversation's last leaf, and the blocks that survive
//! pinned slabs of many sizes: after a load, sled's memory held far more
//! than its cache's worth (README, Performance). A pointer is small enough
//! for sled to keep inside the page itself.
//!
//! A file is `<n>.chunks`: bodies back to back, nothing else. Only the
//! newest file is appended to, and a restarted store starts a new one, so
//! a crash can only leave an unnamed tail. A body is on disk before the
//! pointer to it is given to sled ([`Writer::sync`]): sled may write its
//! pages at any moment, and a pointer must never reach the disk ahead of
//! what it points at. A sweep deletes the files no pointer names, once two
//! sweeps a minute apart have found them so (a reader may hold a pointer
//! it read just before the chunk was rewritten).
//!
//! A value's first byte says what it is: a chunk (`FORMAT`, `PACKED`) or a
//! pointer ([`POINTER`]). A store without a directory (tests of the rules)
//! keeps chunks in sled, as do data directories from before these files,
//! and the rare rewrite of a chunk that retention cuts.

use super::{Result, StoreError};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first byte of a pointer: `[POINTER][file u32][offset u64][length
/// u32][crc32 u32]`, all big-endian.
pub(crate) const POINTER: u8 = 3;
const POINTER_LEN: usize = 21;
/// A file is closed for appends once it is this long.
const FILE_MAX: u64 = 64 << 20;
/// Sweeps are this far apart at least, and a file is deleted only when two
/// of them in a row found it unnamed.
const SWEEP_GAP: Duration = Duration::from_secs(60);
/// Bodies are written out (not yet synced) in runs of about this much: a
/// layer's can be megabytes, and a buffer keeps its largest size.
const WRITE_RUN: usize = 256 << 10;
/// Open files kept for readers; more are opened again as needed.
const OPEN_MAX: usize = 64;
/// The largest body a pointer may claim (chunks are a record's worth).
const BODY_MAX: u32 = 2 << 20;
/// Where the files are, under the store's directory.
pub(super) const DIR: &str = "chunks";

/// Reads bodies; shared by every reader of the message tables.
pub(crate) struct Bodies {
    dir: Option<PathBuf>,
    open: Mutex<HashMap<u32, Arc<File>>>,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Io(e)
}

fn file_name(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.chunks"))
}

/// The numbers of the files in `dir`.
fn listed(dir: &Path) -> Result<BTreeSet<u32>> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let name = e.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".chunks").and_then(|n| n.parse().ok()) {
            out.insert(n);
        }
    }
    Ok(out)
}

impl Bodies {
    /// The bodies under `store_dir` (none without one) and the one writer,
    /// which starts a file of its own.
    pub(super) fn open(store_dir: Option<&Path>, no_flush: bool) -> Result<(Arc<Bodies>, Writer)> {
        let dir = store_dir.map(|d| d.join(DIR));
        let mut next = 0;
        let mut old = false;
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).map_err(io)?;
            let files = listed(dir)?;
            old = !files.is_empty();
            next = files.last().map_or(0, |n| n + 1);
        }
        let bodies = Arc::new(Bodies {
            dir,
            open: Mutex::default(),
        });
        let writer = Writer {
            bodies: bodies.clone(),
            current: None,
            next,
            buf: Vec::new(),
            unsynced: false,
            created: false,
            no_flush,
            closed_since_sweep: old,
            unnamed: BTreeSet::new(),
            last_sweep: Instant::now(),
        };
        Ok((bodies, writer))
    }

    /// The body a pointer value points at.
    pub(super) fn read(&self, pointer: &[u8]) -> Result<Vec<u8>> {
        let p = Pointer::parse(pointer)?;
        let file = self.file(p.file)?;
        let mut body = vec![0; p.len as usize];
        file.read_exact_at(&mut body, p.offset).map_err(|e| {
            StoreError::Corrupt(format!(
                "chunk body in file {} at {}: {e}",
                p.file, p.offset
            ))
        })?;
        if crc32fast::hash(&body) != p.crc {
            return Err(StoreError::Corrupt(format!(
                "chunk body in file {} at {} fails its check",
                p.file, p.offset
            )));
        }
        Ok(body)
    }

    fn file(&self, n: u32) -> Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.get(&n) {
            return Ok(f.clone());
        }
        let Some(dir) = &self.dir else {
            return Err(StoreError::Corrupt(
                "a chunk pointer in a store without files".into(),
            ));
        };
        let f = Arc::new(File::open(file_name(dir, n)).map_err(io)?);
        if open.len() >= OPEN_MAX {
            open.clear();
        }
        open.insert(n, f.clone());
        Ok(f)
    }

    fn forget(&self, n: u32) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
    }
}

/// The bytes a stored value stands for: a pointer's body, or itself.
pub(super) fn stored_len(v: &[u8]) -> usize {
    Pointer::parse(v).map_or(v.len(), |p| p.len as usize)
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

/// Appends bodies and sweeps; the checkpoint thread's alone.
pub(crate) struct Writer {
    bodies: Arc<Bodies>,
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
    no_flush: bool,
    /// A file was closed (or found at start) since the last sweep.
    closed_since_sweep: bool,
    /// Files the last sweep found no pointer to.
    unnamed: BTreeSet<u32>,
    last_sweep: Instant,
}

impl Writer {
    pub(super) fn reader(&self) -> &Bodies {
        &self.bodies
    }

    /// The value to store for a chunk: a pointer to it, the chunk queued
    /// for the next [`Writer::sync`]; without files, the chunk itself.
    pub(super) fn put(&mut self, chunk: Vec<u8>) -> Result<Vec<u8>> {
        let Some(dir) = self.bodies.dir.clone() else {
            return Ok(chunk);
        };
        if chunk.len() <= POINTER_LEN || chunk.len() > BODY_MAX as usize {
            return Ok(chunk);
        }
        if self.current.is_none() {
            let n = self.next;
            let f = File::options()
                .create_new(true)
                .append(true)
                .open(file_name(&dir, n))
                .map_err(io)?;
            self.next += 1;
            self.current = Some((n, f, 0));
            self.created = true;
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

    /// Append what is buffered to the current file.
    fn write_run(&mut self) -> Result<()> {
        use std::io::Write;
        let Some((_, f, len)) = &mut self.current else {
            return Err(StoreError::Corrupt("chunk bodies without a file".into()));
        };
        f.write_all(&self.buf).map_err(io)?;
        *len += self.buf.len() as u64;
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
    /// abandoned (its tail may be torn) and those pointers must not be
    /// stored.
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
                if let Some(dir) = &self.bodies.dir {
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
            self.closed_since_sweep = true;
        }
    }

    /// Whether a sweep may find something to delete and is not too soon.
    pub(super) fn sweep_due(&self, now: Instant) -> bool {
        (self.closed_since_sweep || !self.unnamed.is_empty())
            && now.duration_since(self.last_sweep) >= SWEEP_GAP
    }

    /// Delete the files no pointer in `trees` names and the last sweep
    /// found unnamed too; the number deleted.
    pub(super) fn sweep(&mut self, trees: &[&sled::Tree], now: Instant) -> Result<usize> {
        let Some(dir) = self.bodies.dir.clone() else {
            return Ok(0);
        };
        let mut named = BTreeSet::new();
        for tree in trees {
            for r in tree.iter().values() {
                let v = r?;
                if v.first() == Some(&POINTER) {
                    named.insert(Pointer::parse(&v)?.file);
                }
            }
        }
        let current = self.current.as_ref().map(|(n, _, _)| *n);
        let mut deleted = 0;
        let mut unnamed = BTreeSet::new();
        for n in listed(&dir)? {
            if named.contains(&n) || Some(n) == current {
                continue;
            }
            if self.unnamed.contains(&n) {
                self.bodies.forget(n);
                std::fs::remove_file(file_name(&dir, n)).map_err(io)?;
                deleted += 1;
            } else {
                unnamed.insert(n);
            }
        }
        self.unnamed = unnamed;
        self.closed_since_sweep = false;
        self.last_sweep = now;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<u32> {
        listed(&dir.join(DIR)).unwrap().into_iter().collect()
    }

    #[test]
    fn bodies_read_back_and_small_ones_stay_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (bodies, mut w) = Bodies::open(Some(dir.path()), false).unwrap();
        let small = vec![1u8; POINTER_LEN];
        assert_eq!(w.put(small.clone()).unwrap(), small);
        let a: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let b = vec![7u8; 500];
        let (pa, pb) = (w.put(a.clone()).unwrap(), w.put(b.clone()).unwrap());
        assert_eq!((pa.len(), pa[0]), (POINTER_LEN, POINTER));
        w.sync().unwrap();
        assert_eq!(bodies.read(&pa).unwrap(), a);
        assert_eq!(bodies.read(&pb).unwrap(), b);
        // A pointer past the end of its file, or with another check.
        let mut bad = pb.clone();
        bad[12] = bad[12].wrapping_add(1);
        assert!(bodies.read(&bad).is_err());
        let mut bad = pb.clone();
        bad[20] ^= 1;
        assert!(bodies.read(&bad).is_err());
        assert!(bodies.read(&pb[..20]).is_err());
        // Without a directory, chunks stay where they are.
        let (_, mut w) = Bodies::open(None, false).unwrap();
        assert_eq!(w.put(a.clone()).unwrap(), a);
    }

    #[test]
    fn a_reopened_store_starts_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut w) = Bodies::open(Some(dir.path()), false).unwrap();
        let p = w.put(vec![1; 100]).unwrap();
        w.sync().unwrap();
        drop(w);
        let (bodies, mut w) = Bodies::open(Some(dir.path()), false).unwrap();
        let q = w.put(vec![2; 100]).unwrap();
        w.sync().unwrap();
        assert_eq!(files(dir.path()), vec![0, 1]);
        assert_eq!(bodies.read(&p).unwrap(), vec![1; 100]);
        assert_eq!(bodies.read(&q).unwrap(), vec![2; 100]);
    }

    #[test]
    fn a_file_no_pointer_names_goes_at_the_second_sweep_and_no_sooner() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("history").unwrap();
        let (bodies, mut w) = Bodies::open(Some(dir.path()), false).unwrap();
        // Three files: 0 named by the tree, 1 by nothing, 2 the current.
        let kept = w.put(vec![1; 100]).unwrap();
        w.sync().unwrap();
        w.close();
        let _dropped = w.put(vec![2; 100]).unwrap();
        w.sync().unwrap();
        w.close();
        let current = w.put(vec![3; 100]).unwrap();
        w.sync().unwrap();
        tree.insert("a", kept.clone()).unwrap();
        assert_eq!(files(dir.path()), vec![0, 1, 2]);

        let t0 = Instant::now();
        assert!(w.sweep_due(t0 + SWEEP_GAP));
        assert!(!w.sweep_due(t0 + SWEEP_GAP / 2), "too soon");
        assert_eq!(w.sweep(&[&tree], t0 + SWEEP_GAP).unwrap(), 0);
        assert_eq!(files(dir.path()), vec![0, 1, 2]);
        assert!(
            !w.sweep_due(t0 + SWEEP_GAP * 3 / 2),
            "too soon after the last"
        );
        assert!(
            w.sweep_due(t0 + SWEEP_GAP * 2),
            "file 1 awaits its second look"
        );
        assert_eq!(w.sweep(&[&tree], t0 + SWEEP_GAP * 2).unwrap(), 1);
        assert_eq!(files(dir.path()), vec![0, 2]);
        assert_eq!(bodies.read(&kept).unwrap(), vec![1; 100]);
        assert_eq!(bodies.read(&current).unwrap(), vec![3; 100]);
        assert!(
            !w.sweep_due(t0 + SWEEP_GAP * 10),
            "nothing left to look for"
        );

        // Once its last pointer is gone, file 0 goes the same way.
        tree.remove("a").unwrap();
        w.close();
        assert_eq!(w.sweep(&[&tree], t0 + SWEEP_GAP * 3).unwrap(), 0);
        assert_eq!(w.sweep(&[&tree], t0 + SWEEP_GAP * 4).unwrap(), 2);
        assert_eq!(files(dir.path()), Vec::<u32>::new());
        assert!(bodies.read(&kept).is_err());
    }
}
