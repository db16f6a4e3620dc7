//! Storage: the only module that touches sled, and the log's files.
//!
//! Two kinds of data live apart (`<data-dir>/db/oplog`, files, and
//! `<data-dir>/db/tables`, a sled database, with its message chunks'
//! bodies in `<data-dir>/db/chunks`), so that syncing the log never
//! waits for a checkpoint of the tables:
//!
//! * **The log** is the durable truth: every operation, in segments of
//!   one origin's consecutive operations, appended to numbered files
//!   (`logfile.rs`). The hub hands over each batch's operations, and the
//!   [`Durability`] thread (here) writes what it finds queued, an origin's
//!   batches together, and syncs it before anything is acknowledged
//!   (group commit). Once the tables hold what a stretch of it holds, and
//!   it is older than `--log-keep-secs`, it is compacted away
//!   (`compact.rs`): the tables are then the snapshot a peer that needs it
//!   is sent (`snapshot.rs`).
//! * **The tables** (users, names, friends, groups, members, user_groups,
//!   cursors, guests, history, inbox, tokens, retention) are derived from
//!   the log by `apply::apply`, and hold the node's metadata
//!   (`identity.rs`). Changes go to an in-memory layer first; every second
//!   or so the layer is frozen and written to the sled trees by a
//!   background thread (`flush.rs`, the checkpointer), which then records
//!   a checkpoint (the log position the trees now reflect). After a crash,
//!   the log after the checkpoint is applied again; `apply` is idempotent,
//!   so a half-written checkpoint does no harm. Message chunks' bodies are
//!   appended to files of their own and sled holds a pointer to each
//!   (`bodies.rs`): kept in sled's pages, they held its memory long after
//!   a load.
//!
//! Reads see the newest layer first, then the frozen one, then sled.
//!
//! Why: a sled insert costs several microseconds, so one per message per
//! index would cap the server far below its target. The log costs one
//! write per run of batches queued meanwhile (a few per commit), and the
//! message tables (`history`, `inbox`) are written in chunks of many
//! messages per key, one chunk per conversation per checkpoint,
//! compressed. Inbox entries already acknowledged by then are
//! never written.
//!
//! Files: this one (the types, the log's position, checkpoints), `open.rs`,
//! `log.rs` (group commit, log segments, reading the log), `logfile.rs`
//! (the log's files), `compact.rs` (dropping the log behind the tables),
//! `snapshot.rs` (reading the tables as a snapshot, installing one),
//! `layers.rs` (reads and writes through the layers), `key.rs` (the
//! layers' keys, kept inline), `flush.rs` (the checkpointer, message
//! chunks), `bodies.rs` (message chunks' bodies in files, and their
//! sweep), `idler.rs` (the checkpointer's scheduling), `schema.rs` (the
//! typed key table), `retention.rs` (watermarks, the per-minute tally and the sweep that
//! removes expired messages), `merge.rs`, `digest.rs`, `identity.rs` (the
//! node's id and uuid), `space.rs` (free disk space).
//!
//! This module must not know chat rules; it stores bytes under typed keys
//! (`schema.rs`) and knows how to merge layers and chunks.

mod bodies;
mod compact;
mod digest;
mod flush;
mod identity;
mod idler;
mod key;
pub use digest::Digest;
mod layers;
mod log;
mod logfile;
mod open;
mod options;
mod retention;
mod snapshot;
mod zip;
use log::*;
pub use log::{Durability, Durable, LogReader, LogStart, Then};
pub use retention::Watermarks;
pub use schema::Record;
pub use snapshot::{Pin, Point, SnapshotCursor, SnapshotReader};
pub(crate) mod merge;
pub use options::{RecentCids, StoreOptions};
pub mod schema;
pub mod space;

use crate::ids::{NodeId, Stamp};
use crate::model::{Message, Op};
use merge::{Merge, Source};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::{Bound, Deref};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Version byte in front of every stored value, so the format can evolve.
pub const FORMAT: u8 = 1;

/// The largest value worth writing as one record (a log segment; a chunk of
/// messages when kept in sled, by stores without a directory). sled writes
/// a page bigger than a quarter of its 512 KiB log segment to a file of its
/// own that its flush never fsyncs, and a leaf page holds up to about 20
/// records: keeping every record under this keeps every page inline, where
/// a flush covers it.
pub const RECORD_MAX_BYTES: usize = 6 << 10;

/// How often the log is looked at for segments to drop.
const COMPACT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub enum StoreError {
    Sled(sled::Error),
    Corrupt(String),
    /// Another process holds the data directory.
    Locked(PathBuf),
    /// Reading or writing the log's files.
    Io(std::io::Error),
    /// The log no longer holds `origin`'s operations up to `start` (they
    /// were compacted into the tables): a reader needs a snapshot.
    Compacted {
        origin: NodeId,
        start: u64,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sled(e) => write!(f, "storage error: {e}"),
            StoreError::Io(e) => write!(f, "storage error: {e}"),
            StoreError::Corrupt(e) => write!(f, "corrupt stored data: {e}"),
            StoreError::Locked(p) => write!(
                f,
                "data directory {} is in use by another process (is chatd running?)",
                p.display()
            ),
            StoreError::Compacted { origin, start } => write!(
                f,
                "the log of node {origin} begins after operation {start} (compacted)"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// Whether this is the disk being full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sled(sled::Error::Io(e)) | StoreError::Io(e) => space::is_full(e),
            _ => false,
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub fn encode<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT);
    // Writing into a Vec cannot fail, and our types always serialize.
    let _ = bincode::serde::encode_into_std_write(v, &mut out, bincode::config::standard());
    out
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    match b.split_first() {
        Some((&FORMAT, rest)) => {
            bincode::serde::decode_from_slice(rest, bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        Some((v, _)) => Err(StoreError::Corrupt(format!("unknown format version {v}"))),
        None => Err(StoreError::Corrupt("empty value".into())),
    }
}

/// The derived tables. Each is its own sled tree.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Table {
    Users,
    Names,
    Friends,
    Groups,
    Members,
    UserGroups,
    Cursors,
    Guests,
    History,
    Inbox,
    Tokens,
    TokenFloors,
    Retention,
    Tally,
}

const TABLES: usize = 14;

impl Table {
    pub const ALL: [Table; TABLES] = [
        Table::Users,
        Table::Names,
        Table::Friends,
        Table::Groups,
        Table::Members,
        Table::UserGroups,
        Table::Cursors,
        Table::Guests,
        Table::History,
        Table::Inbox,
        Table::Tokens,
        Table::TokenFloors,
        Table::Retention,
        Table::Tally,
    ];

    pub fn tree_name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Names => "names",
            Table::Friends => "friends",
            Table::Groups => "groups",
            Table::Members => "members",
            Table::UserGroups => "user_groups",
            Table::Cursors => "cursors",
            Table::Guests => "guests",
            Table::History => "history",
            Table::Inbox => "inbox",
            Table::Tokens => "tokens",
            Table::TokenFloors => "token_floors",
            Table::Retention => "retention",
            // Kept beside the checkpoint record, so that one sled batch
            // writes both (see `retention.rs`); its keys start with 0.
            Table::Tally => "meta",
        }
    }

    /// Message tables hold single messages (key `prefix ++ id`) in memory and
    /// chunks of messages (key `prefix ++ id of the chunk's last message`) in
    /// sled. The prefix names the conversation or the user.
    fn chunk_prefix_len(self) -> Option<usize> {
        match self {
            Table::History => Some(schema::CONV_LEN),
            Table::Inbox => Some(4),
            _ => None,
        }
    }
}

/// A stored value, from memory or from sled.
#[derive(Clone, Debug)]
pub enum Val {
    Mem(Arc<[u8]>),
    Disk(sled::IVec),
}

impl Deref for Val {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Val::Mem(a) => a,
            Val::Disk(v) => v,
        }
    }
}

/// How far each origin's log has been applied: origin -> last sequence number.
pub type Position = BTreeMap<NodeId, u64>;

type LayerMap = BTreeMap<key::Key, Option<Arc<[u8]>>>;

/// A message table's entries in a layer, by prefix (a conversation or a
/// user) and then id. Not one map of prefix ++ id: the hub adds two
/// entries per message, and a map of a second's messages is searched from
/// memory far from the cache, while this one's first level (a few
/// thousand conversations) stays in it and each second level is appended
/// at its end.
type MessageMap = BTreeMap<key::Key, BTreeMap<u64, Arc<[u8]>>>;

/// What is kept counted, so that `status` walks nothing: exact, because
/// it is recorded with each checkpoint (in one write with its position)
/// and counted again from the operations replayed after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    /// Messages in history.
    pub messages: u64,
}

/// Changes to the tables not yet written to sled. `None` deletes.
#[derive(Default)]
pub(crate) struct Layer {
    maps: [LayerMap; TABLES],
    /// The message tables' entries (`Table::chunk_prefix_len`); theirs in
    /// `maps` stay empty, as do the other tables' here.
    messages: [MessageMap; TABLES],
    bytes: usize,
    /// The counts once this layer is written.
    counts: Counts,
    /// Expired messages to remove from a message table: (table, prefix)
    /// -> every message below this id (`retention.rs`).
    cuts: BTreeMap<(usize, Vec<u8>), Stamp>,
    /// Messages counted per tally key, not yet folded into the tally.
    tally_adds: HashMap<[u8; retention::TALLY_KEY_LEN], u32>,
    /// The log position this layer brings the tables up to (and the stamp
    /// of each origin's operation there)...
    upto: Position,
    stamps: BTreeMap<NodeId, Stamp>,
    /// Where the log begins once this layer is written, when a snapshot
    /// moved it (`snapshot.rs`).
    log_start: Option<LogStart>,
    /// ...which the log holds once this commit ticket is written.
    ticket: u64,
}

impl Layer {
    fn is_empty(&self) -> bool {
        self.maps.iter().all(BTreeMap::is_empty)
            && self.messages.iter().all(BTreeMap::is_empty)
            && self.cuts.is_empty()
            && self.tally_adds.is_empty()
    }
}

pub struct Store {
    /// The tables (and `meta`).
    db: sled::Db,
    /// The log's files.
    files: Arc<logfile::LogFiles>,
    meta: sled::Tree,
    trees: Arc<Vec<sled::Tree>>,
    /// Message chunks' bodies (`bodies.rs`).
    bodies: Arc<bodies::Bodies>,
    active: Layer,
    frozen: Option<Arc<Layer>>,
    checkpointer: flush::Checkpointer,
    durability: Arc<Durability>,
    /// The commit thread, joined on close.
    commit_thread: Option<std::thread::JoinHandle<()>>,
    reader: LogReader,
    snapshot_tables: snapshot::SnapshotTables,
    durable_rx: watch::Receiver<Durable>,
    ticket: u64,
    applied: Position,
    /// The stamp of the last op of each origin in the log.
    last_stamps: BTreeMap<NodeId, Stamp>,
    opts: StoreOptions,
    last_rotate: Instant,
    /// A reserve file is being made.
    reserving: Arc<std::sync::atomic::AtomicBool>,
    pub recent_cids: RecentCids,
    counts: Counts,
    /// The retention watermarks, as in the `retention` table.
    marks: Watermarks,
    /// Expired messages may remain to be swept.
    sweeping: bool,
    /// Where the log begins and what snapshots being read pin of it.
    bounds: Arc<Mutex<log::LogBounds>>,
    /// A compaction pass is queued or running; when the last was asked for.
    compacting: Arc<std::sync::atomic::AtomicBool>,
    last_compact: Instant,
    /// The highest stamp of each origin that a snapshot brought
    /// (`snapshot.rs`).
    horizon: BTreeMap<NodeId, Stamp>,
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

impl Store {
    /// The stamp of the newest op of each origin this node has.
    pub fn last_stamps(&self) -> &BTreeMap<NodeId, Stamp> {
        &self.last_stamps
    }

    /// The highest stamp in the log, so the clock restarts above it.
    pub fn last_stamp(&self) -> Stamp {
        self.last_stamps.values().copied().max().unwrap_or_default()
    }

    /// What is kept counted, up to the newest applied operation.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The tables were checkpointed at this log position.
    pub fn checkpoint(&self) -> Result<Position> {
        match self.meta.get("checkpoint")? {
            Some(v) => decode(&v),
            None => Ok(Position::new()),
        }
    }

    /// Apply, through `f`, every logged op the tables may not yet reflect.
    pub fn replay(&mut self, mut f: impl FnMut(&mut Store, &Op)) -> Result<usize> {
        // What was appended must be in sled before it can be read back.
        let ticket = self.commit();
        self.durability.wait_for(ticket);
        let from = self.checkpoint()?;
        let end = self.applied.clone();
        let mut n = 0;
        for (&origin, &last) in &end {
            let mut after = from.get(&origin).copied().unwrap_or(0);
            while after < last {
                let ops = self.read_log(origin, after, 4096)?;
                if ops.is_empty() {
                    break;
                }
                for op in &ops {
                    f(self, op);
                    n += 1;
                }
                after = ops.last().map(|o| o.seq).unwrap_or(last);
            }
        }
        Ok(n)
    }

    pub fn applied(&self) -> &Position {
        &self.applied
    }

    /// Ops of `origin` with sequence numbers after `after`, oldest first.
    pub fn read_log(&self, origin: NodeId, after: u64, max: usize) -> Result<Vec<Op>> {
        self.log_reader().read(origin, after, max)
    }

    /// Append a run of ops of one origin to the log; they must continue the
    /// origin's sequence without a gap. Not durable until [`Store::commit`]'s
    /// ticket has been flushed.
    pub fn append_log(&mut self, origin: NodeId, ops: Vec<Op>) -> Result<()> {
        let Some(first) = ops.first() else {
            return Ok(());
        };
        let expected = self.applied.get(&origin).copied().unwrap_or(0) + 1;
        if first.seq != expected {
            return Err(StoreError::Corrupt(format!(
                "log of node {origin}: got seq {}, expected {expected}",
                first.seq
            )));
        }
        if let Some(last) = ops.last() {
            self.applied.insert(origin, last.seq);
            // An origin stamps its ops in sequence order.
            self.last_stamps.insert(origin, last.stamp);
        }
        self.durability.append(origin, ops);
        self.ticket += 1;
        Ok(())
    }

    /// The ticket of the last log write.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// Ask for everything logged so far to be made durable; returns the ticket
    /// to wait for (see [`Store::durable`]).
    pub fn commit(&mut self) -> u64 {
        self.durability.request(self.ticket, &self.applied);
        self.ticket
    }

    /// Run `f` once this store's log is durable up to `ticket`, on the
    /// commit thread (at once if it already is). Asked in ticket order.
    pub fn when_durable(&self, ticket: u64, f: Then) {
        self.durability.then(ticket, f);
    }

    /// Watch what is known to be on disk.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.durable_rx.clone()
    }

    /// A handle that reads the log from other threads (peer replication).
    pub fn log_reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// Called by the hub between iterations: retire a written layer, and
    /// freeze the active one when it is old or big enough. Waits for the
    /// writer only when memory would otherwise grow without bound. With
    /// `write` false (the disk is full) nothing new is written: the tables
    /// wait in memory, and reads see them there.
    pub fn maintain(&mut self, write: bool) -> Result<()> {
        self.maintain_at(write, None)
    }

    /// [`Store::maintain`], and, given the time and how much log to keep
    /// (`keep`), a compaction pass every second or so (`compact.rs`).
    pub fn maintain_at(&mut self, write: bool, compact: Option<(u64, Duration)>) -> Result<()> {
        // The share of the interval, or of a layer's bytes, gone by.
        let since = self.last_rotate.elapsed();
        let reached = |part: u32| {
            since >= self.opts.checkpoint_interval / part
                || self.active.bytes >= self.opts.checkpoint_bytes / part as usize
        };
        let due = reached(1);
        if self.frozen.is_some() {
            // Half way to the next layer and this one not written yet: the
            // thread is finding no idle core.
            if reached(2) {
                self.checkpointer.hurry();
            }
            // Under a load the checkpoint cannot keep up with, the hub waits
            // rather than let memory grow: two layers' worth at most.
            let hard_limit = self.active.bytes > 2 * self.opts.checkpoint_bytes;
            if let Some(done) = self.checkpointer.poll(hard_limit) {
                if let Err(e) = &done {
                    if let (true, Some(p)) = (e.is_disk_full(), &self.opts.path) {
                        space::release(p);
                    }
                }
                done?;
                if let Some(layer) = self.frozen.take() {
                    self.checkpointer.dispose(layer);
                }
            }
        }
        if self.frozen.is_none() && due && write {
            self.rotate();
        }
        if let (Some((now_ms, keep)), true) = (compact, write) {
            use std::sync::atomic::Ordering;
            if self.last_compact.elapsed() >= COMPACT_EVERY
                && !self.compacting.swap(true, Ordering::AcqRel)
            {
                self.last_compact = Instant::now();
                let keep = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
                self.checkpointer.compact(now_ms.saturating_sub(keep));
            }
        }
        Ok(())
    }

    fn rotate(&mut self) {
        self.last_rotate = Instant::now();
        if let Err(e) = self.fold_tally() {
            // Kept for the next rotation; the tally is only read back here.
            tracing::warn!(error = %e, "cannot count messages into the tally yet");
        }
        if self.active.is_empty() && self.applied == self.checkpoint().unwrap_or_default() {
            return;
        }
        let mut layer = std::mem::take(&mut self.active);
        layer.upto = self.applied.clone();
        layer.stamps = self.last_stamps.clone();
        layer.counts = self.counts;
        layer.ticket = self.commit();
        let layer = Arc::new(layer);
        self.frozen = Some(layer.clone());
        self.checkpointer.submit(layer);
    }

    /// Wait for the frozen layer, if any, to be written.
    fn settle(&mut self) -> Result<()> {
        if self.frozen.is_some() {
            if let Some(done) = self.checkpointer.poll(true) {
                done?;
            }
            if let Some(layer) = self.frozen.take() {
                self.checkpointer.dispose(layer);
            }
        }
        Ok(())
    }

    /// Write every table change to sled and record the checkpoint, now.
    pub fn checkpoint_now(&mut self) -> Result<()> {
        self.settle()?;
        self.rotate();
        self.settle()
    }

    /// Write everything to sled and stop the background threads. When this
    /// returns, nothing holds the database open any more.
    pub fn close(mut self) -> Result<()> {
        self.checkpoint_now()?;
        self.durability.stop();
        if let Some(t) = self.commit_thread.take() {
            let _ = t.join();
        }
        *log::lock(&self.reader.files) = None;
        *log::lock(&self.snapshot_tables) = None;
        self.db.flush()?;
        self.checkpointer.stop();
        Ok(())
    }

    // ---- metadata ------------------------------------------------------------

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    /// Small, rare, durable settings (node id, peers): written and flushed at once.
    pub fn meta_put(&self, key: &str, val: &[u8]) -> Result<()> {
        self.meta.insert(key, val)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.files.bytes() + self.bodies.bytes()
    }

    /// Free bytes on the disk that holds the database (None: in memory or
    /// unknown).
    pub fn free_space(&self) -> Option<u64> {
        self.opts.path.as_deref().and_then(space::free_bytes)
    }

    /// Keep room for opening on a full disk, when there is `spare` room
    /// besides: made on a thread of its own, once at a time.
    pub fn ensure_reserve(&self, spare: u64) {
        let Some(p) = self.opts.path.clone() else {
            return;
        };
        if space::has_reserve(&p)
            || self
                .reserving
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let busy = self.reserving.clone();
        let spawned = std::thread::Builder::new()
            .name("chatd-reserve".into())
            .spawn(move || {
                crate::os::background_thread();
                space::ensure(&p, spare);
                busy.store(false, std::sync::atomic::Ordering::Release);
            });
        if spawned.is_err() {
            self.reserving
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.opts.path.as_deref()
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Store {
    /// Add a log segment from a backup (checked by decoding it). Only for a
    /// fresh store being restored; tables are rebuilt by `replay`.
    pub fn import_segment(&mut self, origin: NodeId, first: u64, raw: &[u8]) -> Result<()> {
        let ops: Vec<Op> = decode(raw)?;
        if ops.first().map(|o| o.seq) != Some(first) || ops.iter().any(|o| o.origin != origin) {
            return Err(StoreError::Corrupt(format!(
                "segment {origin}/{first} does not hold what its key says"
            )));
        }
        self.append_log(origin, ops)
    }
}

/// A request that met a storage failure gets a plain internal error; the
/// failure itself goes to the log.
impl From<StoreError> for crate::api::ChatError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure while handling a request");
        crate::api::ChatError::new(crate::api::ErrorCode::Internal, "internal storage error")
    }
}

#[cfg(test)]
mod tests;
