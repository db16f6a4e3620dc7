//! Writing frozen layers to sled (checkpoints) and reading message chunks.
//!
//! A chunk is `FORMAT` followed by frames `[id u64 BE][len u32 BE][message]`,
//! or the frames packed (`zip.rs`: `PACKED`, their length, compressed
//! with zstd (when that saves a tenth or more), stored under `prefix ++ id
//! of its last message`; the chunk itself goes to a file and sled holds a
//! pointer to it (`bodies.rs`).
//! Compressed here, once per chunk on the checkpoint
//! thread, not by sled: sled would compress every page it rewrites, and
//! its writers wait for that. Chunks of one prefix never
//! overlap, so reading them in key order yields messages in id order. Most
//! checkpoints only append chunks; a message older than the newest stored
//! chunk (a late arrival from another node) makes the checkpoint merge it into
//! the chunks it overlaps.

use super::bodies::{Bodies, Writer};
use super::idler::Idler;
use super::{
    decode, encode, Durability, Layer, LayerMap, MessageMap, Result, StoreError, Table, FORMAT,
};
use crate::ids::Stamp;
use crate::model::Message;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{mpsc, Arc};

const CHUNK_MAX_MESSAGES: usize = 256;
/// zstd's level, as the log's: a chunk is compressed once, in the
/// background, but on cores the sessions share. Level 3 stored a 1,000-byte
/// text in 2 % fewer bytes for about 3 % of one node's throughput.
const ZSTD_LEVEL: i32 = 1;
/// The largest a chunk's frames may be once decompressed (they pass
/// `bodies::CHUNK_BYTES` by one message at most; anything bigger is
/// corrupt).
const FRAMES_MAX: usize = 1 << 20;
// A full chunk and then one of the longest texts (`config`) still fit.
const _: () = assert!(super::bodies::CHUNK_BYTES + (64 << 10) <= FRAMES_MAX);
/// Freeing layers this big returns their memory to the system; trimming
/// after every small one would only cost time.
const TRIM_AFTER_BYTES: usize = 8 << 20;

/// sled frees the pages it replaces through crossbeam's epochs, which move
/// only when some thread pins one; after a load nothing does, and what the
/// last checkpoints replaced (megabytes) stayed allocated. A few pins from
/// the quiet checkpoint thread let it go.
fn let_sled_reclaim() {
    for _ in 0..64 {
        crossbeam_epoch::pin().flush();
    }
}

/// What the checkpoint thread is asked to do.
enum Job {
    Write(Arc<Layer>),
    /// Free a written layer: a big one takes milliseconds to free, which
    /// the hub should not spend.
    Dispose(Arc<Layer>),
    /// Drop the log's segments the tables have made unnecessary, of
    /// operations stamped up to this time (`compact.rs`).
    Compact {
        cutoff_ms: u64,
    },
}

/// What the checkpoint thread works on besides the tables (the log, for
/// compaction) and how it runs (`idler.rs`, fault injection).
pub(crate) struct LogSide {
    pub(crate) files: Arc<super::logfile::LogFiles>,
    pub(crate) bounds: Arc<std::sync::Mutex<super::log::LogBounds>>,
    /// A compaction is queued or running.
    pub(crate) busy: Arc<std::sync::atomic::AtomicBool>,
    /// Fault injection (`StoreOptions::compact_delay`).
    pub(crate) delay: std::time::Duration,
    /// Fault injection (`StoreOptions::write_delay`).
    pub(crate) write_delay: std::time::Duration,
    /// `StoreOptions::idle_writes`.
    pub(crate) idle_writes: bool,
    /// Where message chunks' bodies go (`bodies.rs`).
    pub(crate) bodies: Writer,
}

pub(crate) struct Checkpointer {
    tx: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Result<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    idler: Arc<Idler>,
}

impl Checkpointer {
    pub(crate) fn start(
        db: sled::Db,
        trees: Arc<Vec<sled::Tree>>,
        meta: sled::Tree,
        log: Arc<Durability>,
        side: LogSide,
    ) -> Result<Checkpointer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let idler = Arc::new(Idler::default());
        let idles = idler.clone();
        let thread = std::thread::Builder::new()
            .name("chatd-checkpoint".into())
            .spawn(move || {
                // Checkpoints are bulk work with a deadline of seconds; the
                // hub and the sessions come first.
                crate::os::background_thread();
                crate::os::busy_thread();
                crate::os::tables_thread();
                if side.idle_writes {
                    idles.start();
                }
                // Bytes of layers freed since memory was last handed back.
                let mut freed = 0;
                let mut quiet = crate::os::Quiet::new(std::time::Instant::now());
                let mut side = side;
                loop {
                    sweep_bodies(&mut side.bodies, &trees);
                    let job = match rx.recv_timeout(crate::os::Quiet::AFTER) {
                        Ok(job) => job,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            // A load has ended: give back what it left.
                            if quiet.poll(std::time::Instant::now()) {
                                freed = 0;
                                let_sled_reclaim();
                                crate::os::thread_quiet();
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    quiet.worked(std::time::Instant::now());
                    let layer = match job {
                        Job::Write(layer) => layer,
                        Job::Compact { cutoff_ms } => {
                            let r = super::compact::compact(
                                &db,
                                &meta,
                                &side.files,
                                &side.bounds,
                                cutoff_ms,
                                side.delay,
                            );
                            side.busy.store(false, std::sync::atomic::Ordering::Release);
                            match r {
                                Ok(0) => {}
                                Ok(n) => {
                                    metrics::counter!("chatd_log_compacted_total").increment(n);
                                    tracing::debug!(ops = n, "log compacted");
                                }
                                // Harmless: the log is only longer.
                                Err(e) => tracing::warn!(error = %e, "log compaction failed"),
                            }
                            continue;
                        }
                        Job::Dispose(layer) => {
                            freed += layer.bytes;
                            drop(layer);
                            if freed >= TRIM_AFTER_BYTES {
                                freed = 0;
                                crate::os::return_free_memory();
                            }
                            continue;
                        }
                    };
                    idles.write_begins();
                    if !side.write_delay.is_zero() {
                        std::thread::sleep(side.write_delay);
                    }
                    let r = write_layer(&trees, &log, &layer, &mut side.bodies).and_then(|()| {
                        db.flush()?;
                        // Recorded only once the tables it vouches for are
                        // on disk. It reaches the disk itself with the next
                        // checkpoint (or at shutdown); until then a crash
                        // replays one more layer's worth of the log.
                        // The counts go in the same write: they are those
                        // of exactly this position.
                        // So does the tally, which the counts follow (see
                        // `retention.rs`).
                        let mut b = sled::Batch::default();
                        b.insert("checkpoint", encode(&layer.upto));
                        b.insert("checkpoint_stamps", encode(&layer.stamps));
                        b.insert("counts", encode(&layer.counts));
                        // A snapshot moved the log's start: recorded with
                        // the tables that hold what it skips.
                        let start = layer.log_start.as_ref().map(|moved| {
                            let mut start = super::log::lock(&side.bounds).start.clone();
                            for (&o, &seq) in &moved.position {
                                let stamp = moved.stamps.get(&o).copied().unwrap_or_default();
                                start.raise(o, seq, stamp);
                            }
                            b.insert("log_start", encode(&start));
                            start
                        });
                        for (k, v) in &layer.maps[Table::Tally as usize] {
                            match v {
                                Some(v) => b.insert(k.as_slice(), &v[..]),
                                None => b.remove(k.as_slice()),
                            }
                        }
                        meta.apply_batch(b)?;
                        if let Some(start) = start {
                            super::log::lock(&side.bounds).start = start;
                        }
                        Ok(())
                    });
                    idles.write_ends();
                    if done_tx.send(r).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            tx: Some(tx),
            done,
            thread: Some(thread),
            idler,
        })
    }

    pub(crate) fn submit(&self, layer: Arc<Layer>) {
        self.idler.handed();
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Write(layer));
        }
    }

    /// Ask for a compaction pass (see `compact.rs`).
    pub(crate) fn compact(&self, cutoff_ms: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Compact { cutoff_ms });
        }
    }

    /// Hand a written layer back to be freed off the caller's thread.
    pub(crate) fn dispose(&self, layer: Arc<Layer>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Dispose(layer));
        }
    }

    /// Stop the thread and wait for it (it holds the database open).
    pub(crate) fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The layer in flight is late or waited for: let it have a core.
    pub(crate) fn hurry(&self) {
        self.idler.lift();
    }

    /// The checkpoint thread's id if it idles between layers, else 0.
    #[cfg(test)]
    pub(crate) fn idle_tid(&self) -> i32 {
        self.idler.tid()
    }

    /// The result of the submitted layer's write, if finished (or, with
    /// `wait`, once finished). Only call with a layer in flight.
    pub(crate) fn poll(&self, wait: bool) -> Option<Result<()>> {
        if wait {
            self.hurry();
            self.done.recv().ok()
        } else {
            self.done.try_recv().ok()
        }
    }
}

/// Reclaim the chunk files' dead space, when it is time to look.
fn sweep_bodies(bodies: &mut Writer, trees: &[sled::Tree]) {
    let now = std::time::Instant::now();
    if !bodies.sweep_due(now) {
        return;
    }
    let tables = [
        &trees[Table::History as usize],
        &trees[Table::Inbox as usize],
    ];
    match bodies.sweep(&tables, now) {
        Ok(s) if s == Default::default() => {}
        Ok(s) => tracing::debug!(moved = s.moved, deleted = s.deleted, "chunk files swept"),
        // The files stay until a later sweep, a minute on.
        Err(e) => tracing::warn!(error = %e, "sweeping chunk files failed"),
    }
}

fn write_layer(
    trees: &[sled::Tree],
    log: &Durability,
    layer: &Layer,
    bodies: &mut Writer,
) -> Result<()> {
    // sled may write table pages out at any time, and the tables must never
    // be on disk ahead of the log they were made from.
    if !log.wait_for(layer.ticket) {
        return Err(StoreError::Corrupt("the log writer stopped".into()));
    }
    let cursors = Cursors::new(&trees[Table::Cursors as usize]);
    for t in Table::ALL {
        let map = &layer.maps[t as usize];
        let cuts: Vec<(&[u8], Stamp)> = layer
            .cuts
            .iter()
            .filter(|((ti, _), _)| *ti == t as usize)
            .map(|((_, p), below)| (p.as_slice(), *below))
            .collect();
        let messages = &layer.messages[t as usize];
        if (map.is_empty() && messages.is_empty() && cuts.is_empty()) || t == Table::Tally {
            continue;
        }
        let tree = &trees[t as usize];
        let mut rewritten = Vec::new();
        for (prefix, below) in &cuts {
            rewritten.extend(cut_chunks(tree, bodies, prefix, *below)?);
        }
        bodies.sync()?;
        for (k, v) in rewritten {
            tree.insert(k, v)?;
        }
        let cut_below = |prefix: &[u8]| {
            cuts.iter()
                .find(|(p, _)| *p == prefix)
                .map_or(Stamp::ZERO, |(_, b)| *b)
        };
        match t.chunk_prefix_len() {
            None => {
                // One key at a time, never a sled batch: see `write_chunks`.
                // Replay after a crash rewrites whatever did not land.
                for (k, v) in map {
                    match v {
                        Some(v) => tree.insert(k.as_slice(), &v[..])?,
                        None => tree.remove(k.as_slice())?,
                    };
                }
            }
            Some(plen) => {
                // Cursors were written above (they come first in Table::ALL),
                // so acknowledged inbox entries can be left out.
                let skip = |prefix: &[u8], id: Stamp| -> Result<bool> {
                    if id < cut_below(prefix) {
                        return Ok(true);
                    }
                    if t != Table::Inbox {
                        return Ok(false);
                    }
                    Ok(id <= cursors.get(prefix, id.node())?)
                };
                write_chunks(tree, bodies, messages, plen, &skip)?;
            }
        }
    }
    prune_inboxes(
        trees,
        bodies,
        &layer.maps[Table::Cursors as usize],
        &cursors,
    )
}

/// Delivery cursors read straight from sled, each once per checkpoint: an
/// inbox holds many entries per user and origin, and a sled read costs
/// microseconds. Valid while the checkpoint writes no cursor, which it
/// does first of all.
struct Cursors<'a> {
    tree: &'a sled::Tree,
    read: std::cell::RefCell<HashMap<([u8; 4], u16), Stamp>>,
}

impl<'a> Cursors<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Cursors {
            tree,
            read: Default::default(),
        }
    }

    /// The cursor of `user` (an inbox prefix, 4 bytes) for messages
    /// stamped by `origin`.
    fn get(&self, user: &[u8], origin: u16) -> Result<Stamp> {
        let user: [u8; 4] = user
            .try_into()
            .map_err(|_| StoreError::Corrupt("bad inbox prefix".into()))?;
        if let Some(c) = self.read.borrow().get(&(user, origin)) {
            return Ok(*c);
        }
        let k = super::schema::cursor_key(user, origin);
        let c = super::schema::cursor_value(self.tree.get(k)?.as_deref());
        self.read.borrow_mut().insert((user, origin), c);
        Ok(c)
    }
}

/// What writing a table's chunks does to sled, once their bodies are on
/// disk.
enum Put {
    Insert(Vec<u8>, Vec<u8>),
    Batch(sled::Batch),
}

/// Two passes: every chunk is made (and its body queued) first, then the
/// bodies are synced, and only then do the pointers enter sled. Each
/// prefix is read and written once, so deferring its writes changes no
/// later read.
fn write_chunks(
    tree: &sled::Tree,
    bodies: &mut Writer,
    map: &MessageMap,
    plen: usize,
    skip: &dyn Fn(&[u8], Stamp) -> Result<bool>,
) -> Result<()> {
    let mut puts = Vec::new();
    for (prefix, stored) in map {
        let prefix = prefix.as_slice();
        // In id order already: the layer keeps them so.
        let mut fresh: Vec<Framed> = Vec::new();
        for (&id, v) in stored {
            if !skip(prefix, Stamp(id))? {
                fresh.push((id, v.clone()));
            }
        }
        let Some(&(first_new, _)) = fresh.first() else {
            continue;
        };
        let newest_stored = tree
            .range(key(prefix, 0)..=key(prefix, u64::MAX))
            .next_back()
            .transpose()?
            .map(|(k, _)| id_suffix(&k, plen))
            .transpose()?;
        if newest_stored.is_none_or(|n| first_new > n) {
            // The usual case: every new chunk sorts after the stored ones,
            // so plain inserts keep the chunks apart at every moment.
            for chunk in split(&fresh, bodies.chunk_bytes()) {
                let last = chunk.last().map(|(id, _)| *id).unwrap_or(0);
                puts.push(Put::Insert(
                    key(prefix, last),
                    bodies.put(encode_chunk(chunk))?,
                ));
            }
            continue;
        }
        // Late arrivals (from another node): rewrite the chunks they fall
        // among, atomically, so readers never see two chunks overlap.
        //
        // This is the only sled batch chatd makes, and it is rare and small:
        // sled applies a batch under one process-wide lock that every insert
        // of both databases then waits for (the log's commits included), so
        // checkpoints of ordinary traffic must never take it.
        let mut batch = sled::Batch::default();
        bodies.replaced();
        let mut all: BTreeMap<u64, Arc<[u8]>> = BTreeMap::new();
        for r in tree.range(key(prefix, first_new)..=key(prefix, u64::MAX)) {
            let (k, v) = r?;
            for (id, bytes) in frames(bodies.reader(), &v)? {
                all.insert(id, bytes.into());
            }
            batch.remove(k);
        }
        all.extend(fresh);
        let all: Vec<Framed> = all.into_iter().collect();
        for chunk in split(&all, bodies.chunk_bytes()) {
            let last = chunk.last().map(|(id, _)| *id).unwrap_or(0);
            batch.insert(key(prefix, last), bodies.put(encode_chunk(chunk))?);
        }
        puts.push(Put::Batch(batch));
    }
    bodies.sync()?;
    for p in puts {
        match p {
            Put::Insert(k, v) => {
                tree.insert(k, v)?;
            }
            Put::Batch(b) => tree.apply_batch(b)?,
        }
    }
    Ok(())
}

/// Remove the messages under `prefix` below `below` (they have expired):
/// the chunks wholly below go, and the one that straddles is written
/// again without them. Readers never see these (they are below the
/// watermark), so no batch is needed. The straddling chunk's new value is
/// returned, to be stored once its body is synced.
fn cut_chunks(
    tree: &sled::Tree,
    bodies: &mut Writer,
    prefix: &[u8],
    below: Stamp,
) -> Result<Option<(sled::IVec, Vec<u8>)>> {
    for r in tree.range(key(prefix, 0)..key(prefix, below.0)) {
        let (k, _) = r?;
        tree.remove(k)?;
        bodies.replaced();
    }
    if let Some(r) = tree
        .range(key(prefix, below.0)..=key(prefix, u64::MAX))
        .next()
    {
        let (k, v) = r?;
        let all = frames(bodies.reader(), &v)?;
        if all.first().is_some_and(|(id, _)| *id < below.0) {
            let keep: Vec<(u64, Arc<[u8]>)> = all
                .into_iter()
                .filter(|(id, _)| *id >= below.0)
                .map(|(id, b)| (id, b.into()))
                .collect();
            bodies.replaced();
            return Ok(Some((k, bodies.put(encode_chunk(&keep))?)));
        }
    }
    Ok(None)
}

/// Drop inbox chunks whose every message has been acknowledged.
fn prune_inboxes(
    trees: &[sled::Tree],
    bodies: &mut Writer,
    cursor_changes: &LayerMap,
    cursors: &Cursors,
) -> Result<()> {
    let inbox = &trees[Table::Inbox as usize];
    let mut users: Vec<[u8; 4]> = cursor_changes
        .keys()
        .filter_map(|k| k.get(..4).and_then(|u| u.try_into().ok()))
        .collect();
    users.dedup();
    for u in users {
        for (n, r) in inbox.scan_prefix(u).enumerate() {
            if n >= 64 {
                break;
            }
            let (k, v) = r?;
            let mut all = true;
            for (id, _) in frames(bodies.reader(), &v)? {
                let id = Stamp(id);
                if id > cursors.get(&u, id.node())? {
                    all = false;
                    break;
                }
            }
            if all {
                inbox.remove(k)?;
                bodies.replaced();
            }
        }
    }
    Ok(())
}

fn key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn id_suffix(k: &[u8], plen: usize) -> Result<u64> {
    k.get(plen..plen + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("bad message key".into()))
}

/// A message's id and its encoding, as a chunk holds them.
type Framed = (u64, Arc<[u8]>);

/// Messages in id order, cut into chunks of at most `CHUNK_MAX_MESSAGES`
/// and (but for a single larger message) `max_bytes`.
fn split(msgs: &[Framed], max_bytes: usize) -> Vec<&[Framed]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, v)) in msgs.iter().enumerate() {
        if i > start && (i - start >= CHUNK_MAX_MESSAGES || bytes + v.len() > max_bytes) {
            out.push(&msgs[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += v.len() + 12;
    }
    if start < msgs.len() {
        out.push(&msgs[start..]);
    }
    out
}

fn encode_chunk(msgs: &[Framed]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + msgs.iter().map(|(_, v)| v.len() + 12).sum::<usize>());
    out.push(FORMAT);
    for (id, v) in msgs {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    super::zip::pack(&out[1..], ZSTD_LEVEL).unwrap_or(out)
}

/// A chunk's frames, read from its file if sled holds a pointer to it,
/// decompressed if they were compressed.
fn chunk_frames<'a>(bodies: &Bodies, chunk: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
    let bad = |why: &str| StoreError::Corrupt(format!("bad message chunk: {why}"));
    if chunk.first() == Some(&super::bodies::POINTER) {
        let body = bodies.read(chunk)?;
        if body.first() == Some(&super::bodies::POINTER) {
            return Err(bad("a pointer to a pointer"));
        }
        return chunk_frames(bodies, &body).map(|f| std::borrow::Cow::Owned(f.into_owned()));
    }
    match chunk.split_first() {
        Some((&FORMAT, rest)) => Ok(std::borrow::Cow::Borrowed(rest)),
        Some((&super::zip::PACKED, rest)) => super::zip::unpack(rest, FRAMES_MAX)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| bad(&e)),
        _ => Err(bad("unknown format")),
    }
}

/// Whether a chunk holds the message `id` (its frames' heads only).
pub(super) fn chunk_holds(bodies: &Bodies, chunk: &[u8], id: u64) -> Result<bool> {
    let bad = || StoreError::Corrupt("bad message chunk".into());
    let frames = chunk_frames(bodies, chunk)?;
    let mut rest = &frames[..];
    while rest.len() >= 12 {
        let at = u64::from_be_bytes(rest[..8].try_into().map_err(|_| bad())?);
        if at == id {
            return Ok(true);
        }
        let len = u32::from_be_bytes(rest[8..12].try_into().map_err(|_| bad())?) as usize;
        rest = rest.get(12 + len..).ok_or_else(bad)?;
    }
    Ok(false)
}

/// The (id, encoded message) frames of a chunk, in id order.
pub(super) fn frames(bodies: &Bodies, chunk: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    let bad = || StoreError::Corrupt("bad message chunk".into());
    let all = chunk_frames(bodies, chunk)?;
    let mut rest = &all[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(bad());
        }
        let id = u64::from_be_bytes(rest[..8].try_into().map_err(|_| bad())?);
        let len = u32::from_be_bytes(rest[8..12].try_into().map_err(|_| bad())?) as usize;
        let body = rest.get(12..12 + len).ok_or_else(bad)?;
        out.push((id, body.to_vec()));
        rest = &rest[12 + len..];
    }
    Ok(out)
}

type ChunkSource = Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>>;

/// Messages of one prefix stored in sled chunks, in id order, starting after
/// (or, descending, before) a given id.
pub(crate) struct ChunkIter {
    chunks: ChunkSource,
    bodies: Arc<Bodies>,
    buf: VecDeque<Vec<u8>>,
    from: Option<Stamp>,
    descending: bool,
}

impl ChunkIter {
    pub(crate) fn new(
        tree: &sled::Tree,
        bodies: Arc<Bodies>,
        prefix: &[u8],
        from: Option<Stamp>,
        descending: bool,
    ) -> ChunkIter {
        let all_hi = key(prefix, u64::MAX);
        let chunks: ChunkSource = match (descending, from) {
            (false, None) => Box::new(tree.range(key(prefix, 0)..=all_hi)),
            (false, Some(a)) => match a.0.checked_add(1) {
                Some(lo) => Box::new(tree.range(key(prefix, lo)..=all_hi)),
                None => Box::new(std::iter::empty()),
            },
            (true, None) => Box::new(tree.range(key(prefix, 0)..=all_hi).rev()),
            (true, Some(b)) => {
                // The chunk ending at or after `b` may still hold smaller ids.
                let straddling = tree.range(key(prefix, b.0)..=all_hi).next();
                let older = tree.range(key(prefix, 0)..key(prefix, b.0)).rev();
                Box::new(straddling.into_iter().chain(older))
            }
        };
        ChunkIter {
            chunks,
            bodies,
            buf: VecDeque::new(),
            from,
            descending,
        }
    }

    fn fill(&mut self) -> Result<bool> {
        while self.buf.is_empty() {
            let Some(r) = self.chunks.next() else {
                return Ok(false);
            };
            let (_, v) = r?;
            let mut fr = frames(&self.bodies, &v)?;
            fr.retain(|(id, _)| match (self.descending, self.from) {
                (false, Some(a)) => *id > a.0,
                (true, Some(b)) => *id < b.0,
                (_, None) => true,
            });
            if self.descending {
                fr.reverse();
            }
            self.buf.extend(fr.into_iter().map(|(_, b)| b));
        }
        Ok(true)
    }
}

impl Iterator for ChunkIter {
    type Item = Result<(Stamp, Message)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.fill() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
        }
        let bytes = self.buf.pop_front()?;
        Some(decode::<Message>(&bytes).map(|m| (m.id, m)))
    }
}
