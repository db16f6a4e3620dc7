//! Storage: the only module that touches sled.
//!
//! Two kinds of data live in two sled databases (`<data-dir>/db/log` and
//! `<data-dir>/db/tables`), so that flushing the log never waits for a
//! checkpoint of the tables:
//!
//! * **The log** is the durable truth: every operation, in segments keyed
//!   by (origin node, first sequence number). The hub writes one segment per
//!   iteration and acknowledges nothing before the [`Durability`] thread
//!   (here) has flushed it (group commit).
//! * **The tables** (users, names, friends, groups, members, user_groups,
//!   cursors, guests, history, inbox, tokens) are derived from the log by
//!   `apply::apply`, and hold the node's metadata (`identity.rs`).
//!   Changes go to an in-memory layer first; every second or so the layer is
//!   frozen and written to the sled trees by a background thread
//!   (`flush.rs`, the checkpointer), which then
//!   records a checkpoint (the log position the trees now reflect). After a
//!   crash, the log after the checkpoint is applied again; `apply` is
//!   idempotent, so a half-written checkpoint does no harm.
//!
//! Reads see the newest layer first, then the frozen one, then sled.
//!
//! Why: a sled insert costs several microseconds, so one per message per
//! index would cap the server far below its target. The log costs one
//! insert per batch, and the message tables (`history`, `inbox`) are written
//! in chunks of many messages per key, one chunk per conversation per
//! checkpoint. Inbox entries already acknowledged by then are never written.
//!
//! This module must not know chat rules; it stores bytes under typed keys
//! (`schema.rs`) and knows how to merge layers and chunks.

mod flush;
mod identity;
pub(crate) mod merge;
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

/// The largest value worth writing as one record (a log segment, a chunk of
/// history). sled writes a page bigger than a quarter of its 512 KiB log
/// segment to a file of its own that its flush never fsyncs, and a leaf page
/// holds up to about 20 records: keeping every record under this keeps
/// every page inline, where a flush covers it.
pub const RECORD_MAX_BYTES: usize = 6 << 10;

#[derive(Debug)]
pub enum StoreError {
    Sled(sled::Error),
    Corrupt(String),
    /// Another process holds the data directory.
    Locked(PathBuf),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sled(e) => write!(f, "storage error: {e}"),
            StoreError::Corrupt(e) => write!(f, "corrupt stored data: {e}"),
            StoreError::Locked(p) => write!(
                f,
                "data directory {} is in use by another process (is chatd running?)",
                p.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// Whether this is the disk being full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Sled(sled::Error::Io(e)) if space::is_full(e))
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
}

const TABLES: usize = 12;

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

type LayerMap = BTreeMap<Vec<u8>, Option<Arc<[u8]>>>;

/// Changes to the tables not yet written to sled. `None` deletes.
#[derive(Default)]
pub(crate) struct Layer {
    maps: [LayerMap; TABLES],
    bytes: usize,
    /// The log position this layer brings the tables up to...
    upto: Position,
    /// ...which the log holds once this commit ticket is written.
    ticket: u64,
}

impl Layer {
    fn is_empty(&self) -> bool {
        self.maps.iter().all(BTreeMap::is_empty)
    }
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub path: Option<PathBuf>,
    /// sled page cache, bytes.
    pub cache_bytes: u64,
    /// Freeze and write the in-memory layer after this long...
    pub checkpoint_interval: Duration,
    /// ...or once it holds about this many bytes.
    pub checkpoint_bytes: usize,
    /// Fault injection: delay every commit flush (tests only).
    pub commit_delay: Duration,
    /// Unsafe: count a commit as durable without flushing it.
    pub no_flush: bool,
}

impl StoreOptions {
    pub fn at(path: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            path: Some(path.into()),
            cache_bytes: 128 << 20,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_bytes: 32 << 20,
            commit_delay: Duration::ZERO,
            no_flush: false,
        }
    }

    /// A throwaway database, for tests of the rules.
    pub fn temporary() -> StoreOptions {
        StoreOptions {
            path: None,
            cache_bytes: 16 << 20,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_bytes: 32 << 20,
            commit_delay: Duration::ZERO,
            no_flush: false,
        }
    }
}

/// What is known to be on disk: every log write up to `ticket`, which
/// brought each origin's log up to `position`.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub ticket: u64,
    pub position: Arc<Position>,
}

/// Group commit, and the only writer of the log. The hub hands over each
/// batch's log segments and asks for everything up to a ticket to be made
/// durable; one thread writes the segments to sled, flushes, and publishes
/// the highest ticket whose writes are on disk. Each flush covers every
/// write made before it started, so many batches share one fsync, and the
/// hub never waits on sled's writes.
pub struct Durability {
    state: Mutex<CommitState>,
    wake: Condvar,
    /// Signalled whenever `done` moves (for the checkpoint thread).
    progress: Condvar,
    flushed: watch::Sender<Durable>,
    delay: Duration,
    no_flush: bool,
    /// Where the reserve file is, to give it up when the disk fills.
    dir: Option<PathBuf>,
}

#[derive(Default)]
struct CommitState {
    /// Log segments not written yet, oldest first.
    queue: Vec<(NodeId, Vec<Op>)>,
    /// The highest ticket asked for, and the log position it stands for.
    target: Durable,
    /// The highest ticket written (and flushed).
    done: u64,
    stop: bool,
}

impl Durability {
    fn lock(&self) -> std::sync::MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(self: Arc<Self>, db: sled::Db, log: sled::Tree) {
        loop {
            let (segments, target) = {
                let mut st = self.lock();
                while st.queue.is_empty() && st.target.ticket <= st.done && !st.stop {
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.queue.is_empty() && st.target.ticket <= st.done && st.stop {
                    return;
                }
                // Every segment of a ticket is queued before the ticket is
                // asked for, so taking both together never claims too much.
                (std::mem::take(&mut st.queue), st.target.clone())
            };
            let mut written = segments
                .iter()
                .try_for_each(|(origin, ops)| insert_segments(&log, *origin, ops));
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            if written.is_ok() && !self.no_flush {
                let started = std::time::Instant::now();
                written = db.flush().map(|_| ()).map_err(StoreError::from);
                metrics::histogram!("chatd_commit_flush_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            if let Err(e) = written {
                // Nothing more can be acknowledged (and nothing unwritten
                // was); let the supervisor restart us. On a full disk, give
                // up the reserve first, so that the restart can open the
                // database and serve read-only.
                if e.is_disk_full() {
                    if let Some(d) = &self.dir {
                        space::release(d);
                    }
                }
                tracing::error!(error = %e, "cannot write the log; exiting");
                std::process::exit(1);
            }
            let ticket = target.ticket;
            self.flushed.send_replace(target);
            let mut st = self.lock();
            st.done = st.done.max(ticket);
            self.progress.notify_all();
        }
    }

    fn append(&self, origin: NodeId, ops: Vec<Op>) {
        self.lock().queue.push((origin, ops));
    }

    fn request(&self, ticket: u64, position: &Position) {
        let mut st = self.lock();
        if ticket > st.target.ticket {
            st.target = Durable {
                ticket,
                position: Arc::new(position.clone()),
            };
        }
        self.wake.notify_one();
    }

    /// Block until everything up to `ticket` is written (false: stopping).
    pub(crate) fn wait_for(&self, ticket: u64) -> bool {
        let mut st = self.lock();
        while st.done < ticket && !st.stop {
            st = self.progress.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.done >= ticket
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
        self.progress.notify_all();
    }
}

/// Write ops as log segments of at most [`RECORD_MAX_BYTES`] each (a
/// single bigger op makes a segment of its own).
fn insert_segments(log: &sled::Tree, origin: NodeId, ops: &[Op]) -> Result<()> {
    for (first, bytes) in log_segments(ops) {
        log.insert(log_key(origin, first), bytes)?;
    }
    Ok(())
}

/// Ops cut into segments of at most [`RECORD_MAX_BYTES`] each: (seq of the
/// first op, the bytes `encode` makes of those ops as a slice). This runs
/// on the commit thread every reply waits for, so each op is encoded once:
/// a slice is its length (a varint) followed by its elements.
fn log_segments(ops: &[Op]) -> Vec<(u64, Vec<u8>)> {
    let config = bincode::config::standard();
    let finish = |n: u64, body: &[u8]| {
        let mut out = Vec::with_capacity(body.len() + 10);
        out.push(FORMAT);
        let _ = bincode::serde::encode_into_std_write(n, &mut out, config);
        out.extend_from_slice(body);
        out
    };
    let mut out = Vec::new();
    let (mut first, mut n, mut body) = (0, 0u64, Vec::new());
    let mut one = Vec::new();
    for op in ops {
        one.clear();
        let _ = bincode::serde::encode_into_std_write(op, &mut one, config);
        if n > 0 && body.len() + one.len() > RECORD_MAX_BYTES - 16 {
            out.push((first, finish(n, &body)));
            (n, body) = (0, Vec::new());
        }
        if n == 0 {
            first = op.seq;
        }
        body.extend_from_slice(&one);
        n += 1;
    }
    if n > 0 {
        out.push((first, finish(n, &body)));
    }
    out
}

/// The resend filter: each user's last few client message ids. Kept in
/// memory only (rebuilt from the log tail after a restart); a resend comes
/// within seconds of the original, not days.
#[derive(Default)]
pub struct RecentCids {
    by_user: HashMap<u32, VecDeque<(Box<str>, Stamp)>>,
}

const CIDS_PER_USER: usize = 256;
const CID_USERS_MAX: usize = 200_000;

impl RecentCids {
    pub fn get(&self, user: u32, cid: &str) -> Option<Stamp> {
        self.by_user
            .get(&user)?
            .iter()
            .rev()
            .find(|(c, _)| &**c == cid)
            .map(|(_, s)| *s)
    }

    pub fn insert(&mut self, user: u32, cid: &str, id: Stamp) {
        if self.by_user.len() >= CID_USERS_MAX && !self.by_user.contains_key(&user) {
            // Bounded memory: forget everyone's filters rather than grow.
            self.by_user.clear();
        }
        let ring = self.by_user.entry(user).or_default();
        if ring.len() == CIDS_PER_USER {
            ring.pop_front();
        }
        ring.push_back((cid.into(), id));
    }
}

pub struct Store {
    /// The tables (and `meta`).
    db: sled::Db,
    /// The log.
    log_db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    trees: Arc<Vec<sled::Tree>>,
    active: Layer,
    frozen: Option<Arc<Layer>>,
    checkpointer: flush::Checkpointer,
    durability: Arc<Durability>,
    /// The commit thread, joined on close.
    commit_thread: Option<std::thread::JoinHandle<()>>,
    reader: LogReader,
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
}

/// Reads the log; cheap to clone and safe to use from any thread. Closing
/// the store revokes every reader, so none keeps the database open.
#[derive(Clone)]
pub struct LogReader {
    log: Arc<Mutex<Option<sled::Tree>>>,
}

impl LogReader {
    fn tree(&self) -> Result<sled::Tree> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Corrupt("the store is closed".into()))
    }

    /// Ops of `origin` with sequence numbers after `after`, oldest first.
    pub fn read(&self, origin: NodeId, after: u64, max: usize) -> Result<Vec<Op>> {
        let log = self.tree()?;
        let mut out = Vec::new();
        // Start with the segment holding `after + 1`.
        let start = match log
            .range(log_key(origin, 0)..=log_key(origin, after.saturating_add(1)))
            .next_back()
        {
            Some(r) => r?.0.to_vec(),
            None => log_key(origin, 0).to_vec(),
        };
        for r in log.range(start..=log_key(origin, u64::MAX).to_vec()) {
            let (_, v) = r?;
            let ops: Vec<Op> = decode(&v)?;
            out.extend(ops.into_iter().filter(|o| o.seq > after));
            if out.len() >= max {
                out.truncate(max);
                break;
            }
        }
        Ok(out)
    }

    /// Raw log segments of `origin` (key's first sequence number and stored
    /// bytes), starting after segment `after` and holding ops up to `upto`.
    pub fn segments(
        &self,
        origin: NodeId,
        after: Option<u64>,
        upto: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let log = self.tree()?;
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(log_key(origin, a).to_vec()),
            None => std::ops::Bound::Included(log_key(origin, 0).to_vec()),
        };
        let end = std::ops::Bound::Included(log_key(origin, upto).to_vec());
        let mut out = Vec::new();
        for r in log.range((start, end)).take(max) {
            let (k, v) = r?;
            let (_, first) = parse_log_key(&k)?;
            out.push((first, v.to_vec()));
        }
        Ok(out)
    }
}

fn log_key(origin: NodeId, seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&origin.to_be_bytes());
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn parse_log_key(k: &[u8]) -> Result<(NodeId, u64)> {
    if k.len() != 10 {
        return Err(StoreError::Corrupt("bad log key".into()));
    }
    let origin = u16::from_be_bytes([k[0], k[1]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&k[2..]);
    Ok((origin, u64::from_be_bytes(s)))
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

/// The log is written once and read back rarely (a peer catching up, a
/// backup, a restart): it needs little cache.
const LOG_CACHE_BYTES: u64 = 16 << 20;

/// `sync_every_ms`: let sled sync in the background; chatd otherwise syncs
/// each database itself, exactly when its promises need it.
fn open_sled(
    opts: &StoreOptions,
    name: &str,
    cache: u64,
    sync_every_ms: Option<u64>,
) -> Result<sled::Db> {
    let cfg = sled::Config::new()
        .cache_capacity(cache)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(sync_every_ms);
    let cfg = match &opts.path {
        Some(p) => cfg.path(p.join(name)),
        None => cfg.temporary(true),
    };
    match cfg.open() {
        Ok(db) => Ok(db),
        Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
            Err(StoreError::Locked(opts.path.clone().unwrap_or_default()))
        }
        Err(sled::Error::Io(e)) if e.to_string().contains("lock") => {
            Err(StoreError::Locked(opts.path.clone().unwrap_or_default()))
        }
        Err(e) => Err(e.into()),
    }
}

/// How long opening waits for a data directory another process holds: a
/// chatd killed a moment ago may not have finished exiting.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Two databases: the log, written and fsynced for every commit, and the
/// tables, written in bulk by checkpoints. Apart, a checkpoint's megabytes
/// never stand between a commit and its fsync.
fn open_both(opts: &StoreOptions) -> Result<(sled::Db, sled::Db)> {
    let started = Instant::now();
    let mut released = false;
    let mut waited = false;
    loop {
        // Without a sync per commit (unsafe), the log still reaches the
        // disk within about a second.
        let log_sync = opts.no_flush.then_some(1000);
        let opened = open_sled(opts, "tables", opts.cache_bytes, None)
            .and_then(|db| Ok((db, open_sled(opts, "log", LOG_CACHE_BYTES, log_sync)?)));
        match (opened, &opts.path) {
            (Err(StoreError::Locked(_)), _) if started.elapsed() < LOCK_WAIT => {
                if !waited {
                    waited = true;
                    tracing::info!("waiting for another process to let go of the data directory");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (Err(StoreError::Sled(sled::Error::Io(e))), Some(p))
                if space::is_full(&e) && !released =>
            {
                // sled needs room to open: give up the reserve (we will
                // serve read-only until there is room again).
                released = true;
                if !space::release(p) {
                    return Err(StoreError::Sled(sled::Error::Io(e)));
                }
                tracing::warn!("the disk is full: opening with the space held in reserve");
            }
            (opened, _) => return opened,
        }
    }
}

impl Store {
    pub fn open(opts: StoreOptions) -> Result<Store> {
        if let Some(p) = &opts.path {
            if p.join("conf").exists() {
                return Err(StoreError::Corrupt(format!(
                    "{} holds a database in an older layout (one sled database); \
                     restore a backup into a new data directory instead",
                    p.display()
                )));
            }
        }
        let (db, log_db) = open_both(&opts)?;
        let log = log_db.open_tree("log")?;
        let meta = db.open_tree("meta")?;
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.tree_name()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let trees = Arc::new(trees);

        let (flushed_tx, durable_rx) = watch::channel(Durable::default());
        let durability = Arc::new(Durability {
            state: Mutex::new(CommitState::default()),
            wake: Condvar::new(),
            progress: Condvar::new(),
            flushed: flushed_tx,
            delay: opts.commit_delay,
            no_flush: opts.no_flush,
            dir: opts.path.clone(),
        });
        let commit_thread = {
            let d = durability.clone();
            let (log_db, log) = (log_db.clone(), log.clone());
            std::thread::Builder::new()
                .name("chatd-commit".into())
                .spawn(move || d.run(log_db, log))
                .map_err(|e| StoreError::Corrupt(format!("cannot start commit thread: {e}")))?
        };
        let reader = LogReader {
            log: Arc::new(Mutex::new(Some(log.clone()))),
        };
        let checkpointer = flush::Checkpointer::start(
            db.clone(),
            trees.clone(),
            meta.clone(),
            durability.clone(),
        )?;

        let mut store = Store {
            db,
            log_db,
            log,
            meta,
            trees,
            active: Layer::default(),
            frozen: None,
            checkpointer,
            durability,
            commit_thread: Some(commit_thread),
            reader,
            durable_rx,
            ticket: 0,
            applied: Position::new(),
            last_stamps: BTreeMap::new(),
            opts,
            last_rotate: Instant::now(),
            reserving: Arc::default(),
            recent_cids: RecentCids::default(),
        };
        let (applied, last_stamps) = store.log_end()?;
        // Whatever the log held at start is on disk.
        store.durability.flushed.send_replace(Durable {
            ticket: 0,
            position: Arc::new(applied.clone()),
        });
        store.applied = applied;
        store.last_stamps = last_stamps;
        if let Some(p) = &store.opts.path {
            if !space::has_reserve(p) {
                tracing::info!(
                    "no reserve file yet: a disk that fills up completely could keep chatd from \
                     starting until it is made (when there is room)"
                );
            }
        }
        Ok(store)
    }

    /// The last sequence number in the log of every origin, and its stamp.
    fn log_end(&self) -> Result<(Position, BTreeMap<NodeId, Stamp>)> {
        let mut pos = Position::new();
        let mut stamps = BTreeMap::new();
        let mut origin: u32 = 0;
        while origin <= u32::from(u16::MAX) {
            let start = log_key(origin as NodeId, 0);
            let Some(first) = self.log.range(start..).next() else {
                break;
            };
            let (k, _) = first?;
            let (o, _) = parse_log_key(&k)?;
            let end = log_key(o, u64::MAX);
            if let Some(last) = self.log.range(..=end).next_back() {
                let (_, v) = last?;
                let ops: Vec<Op> = decode(&v)?;
                if let Some(op) = ops.last() {
                    pos.insert(o, op.seq);
                    stamps.insert(o, op.stamp);
                }
            }
            origin = u32::from(o) + 1;
        }
        Ok((pos, stamps))
    }

    /// The stamp of the newest op of each origin this node has.
    pub fn last_stamps(&self) -> &BTreeMap<NodeId, Stamp> {
        &self.last_stamps
    }

    /// The highest stamp in the log, so the clock restarts above it.
    pub fn last_stamp(&self) -> Stamp {
        self.last_stamps.values().copied().max().unwrap_or_default()
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

    /// Watch what is known to be on disk.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.durable_rx.clone()
    }

    /// A handle that reads the log from other threads (peer replication).
    pub fn log_reader(&self) -> LogReader {
        self.reader.clone()
    }

    // ---- reads -----------------------------------------------------------

    fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.active).chain(self.frozen.as_deref())
    }

    pub fn get(&self, t: Table, key: &[u8]) -> Result<Option<Val>> {
        for layer in self.layers() {
            if let Some(v) = layer.maps[t as usize].get(key) {
                return Ok(v.clone().map(Val::Mem));
            }
        }
        Ok(self.trees[t as usize].get(key)?.map(Val::Disk))
    }

    /// Key-ordered entries of a plain table within bounds.
    pub fn scan(
        &self,
        t: Table,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        descending: bool,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Val)>> + '_ {
        debug_assert!(t.chunk_prefix_len().is_none());
        let mut sources: Vec<Source<'_, Vec<u8>, Option<Val>, StoreError>> = Vec::new();
        for layer in self.layers() {
            let r = layer.maps[t as usize].range::<[u8], _>((as_ref(&lo), as_ref(&hi)));
            let it = r.map(|(k, v)| Ok((k.clone(), v.clone().map(Val::Mem))));
            if descending {
                sources.push(Box::new(it.rev()));
            } else {
                sources.push(Box::new(it));
            }
        }
        let r = self.trees[t as usize].range((lo, hi));
        let it = r.map(|r| {
            r.map(|(k, v)| (k.to_vec(), Some(Val::Disk(v))))
                .map_err(StoreError::from)
        });
        if descending {
            sources.push(Box::new(it.rev()));
        } else {
            sources.push(Box::new(it));
        }
        Merge::new(sources, descending).filter_map(|r| match r {
            Ok((k, Some(v))) => Some(Ok((k, v))),
            Ok((_, None)) => None,
            Err(e) => Some(Err(e)),
        })
    }

    pub fn scan_prefix(
        &self,
        t: Table,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Val)>> + '_ {
        self.scan(
            t,
            Bound::Included(prefix.to_vec()),
            prefix_end(prefix),
            false,
        )
    }

    /// Messages of a message table under `prefix`, by id: ascending from just
    /// after `from` (exclusive), or descending from just before it.
    pub fn messages(
        &self,
        t: Table,
        prefix: &[u8],
        from: Option<Stamp>,
        descending: bool,
    ) -> impl Iterator<Item = Result<Message>> + '_ {
        let plen = t.chunk_prefix_len().unwrap_or(0);
        debug_assert_eq!(plen, prefix.len());
        let key = |id: u64| {
            let mut k = prefix.to_vec();
            k.extend_from_slice(&id.to_be_bytes());
            k
        };
        let (lo, hi) = match (descending, from) {
            (false, Some(a)) => (Bound::Excluded(key(a.0)), Bound::Included(key(u64::MAX))),
            (true, Some(b)) => (Bound::Included(key(0)), Bound::Excluded(key(b.0))),
            (_, None) => (Bound::Included(key(0)), Bound::Included(key(u64::MAX))),
        };
        let mut sources: Vec<Source<'_, Stamp, Message, StoreError>> = Vec::new();
        for layer in self.layers() {
            let r = layer.maps[t as usize].range::<[u8], _>((as_ref(&lo), as_ref(&hi)));
            let it = r.filter_map(|(_, v)| v.as_ref()).map(|v| {
                let m: Message = decode(v)?;
                Ok((m.id, m))
            });
            if descending {
                sources.push(Box::new(it.rev()));
            } else {
                sources.push(Box::new(it));
            }
        }
        sources.push(Box::new(flush::ChunkIter::new(
            &self.trees[t as usize],
            prefix,
            from,
            descending,
        )));
        Merge::new(sources, descending).map(|r| r.map(|(_, m)| m))
    }

    // ---- writes (into the active layer) ------------------------------------

    pub fn put(&mut self, t: Table, key: Vec<u8>, val: Vec<u8>) {
        self.active.bytes += key.len() + val.len() + 64;
        self.active.maps[t as usize].insert(key, Some(val.into()));
    }

    pub fn del(&mut self, t: Table, key: Vec<u8>) {
        self.active.bytes += key.len() + 64;
        self.active.maps[t as usize].insert(key, None);
    }

    /// Add one message (already encoded) to a message table.
    pub fn put_message(&mut self, t: Table, prefix: &[u8], id: Stamp, encoded: Arc<[u8]>) {
        let mut key = Vec::with_capacity(prefix.len() + 8);
        key.extend_from_slice(prefix);
        key.extend_from_slice(&id.0.to_be_bytes());
        // A message is shared by its history and inbox entries: count it once.
        let shared = if t == Table::History {
            encoded.len()
        } else {
            0
        };
        self.active.bytes += key.len() + shared + 96;
        self.active.maps[t as usize].insert(key, Some(encoded));
    }

    // ---- checkpoints -------------------------------------------------------

    /// Called by the hub between iterations: retire a written layer, and
    /// freeze the active one when it is old or big enough. Waits for the
    /// writer only when memory would otherwise grow without bound. With
    /// `write` false (the disk is full) nothing new is written: the tables
    /// wait in memory, and reads see them there.
    pub fn maintain(&mut self, write: bool) -> Result<()> {
        if self.frozen.is_some() {
            let hard_limit = self.active.bytes > 4 * self.opts.checkpoint_bytes;
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
        let due = self.last_rotate.elapsed() >= self.opts.checkpoint_interval
            || self.active.bytes >= self.opts.checkpoint_bytes;
        if self.frozen.is_none() && due && write {
            self.rotate();
        }
        Ok(())
    }

    fn rotate(&mut self) {
        self.last_rotate = Instant::now();
        if self.active.is_empty() && self.applied == self.checkpoint().unwrap_or_default() {
            return;
        }
        let mut layer = std::mem::take(&mut self.active);
        layer.upto = self.applied.clone();
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
        *self.reader.log.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.log_db.flush()?;
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
        self.db.size_on_disk().unwrap_or(0) + self.log_db.size_on_disk().unwrap_or(0)
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

/// A fingerprint of the replicated state, equal on nodes that hold the same
/// state. Inboxes are left out (they are derived from history and cursors,
/// and where they are chunked depends on timing); history is hashed message
/// by message for the same reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub hash: String,
    pub users: u64,
    pub groups: u64,
    pub messages: u64,
}

/// FNV-1a: stable across builds and machines, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // Length separates adjacent fields.
        for b in (bytes.len() as u64).to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Store {
    pub fn digest(&mut self) -> Result<Digest> {
        self.checkpoint_now()?;
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        let mut d = Digest {
            hash: String::new(),
            users: 0,
            groups: 0,
            messages: 0,
        };
        for t in Table::ALL {
            if t == Table::Inbox {
                continue;
            }
            h.write(t.tree_name().as_bytes());
            for r in self.trees[t as usize].iter() {
                let (k, v) = r?;
                match t {
                    Table::History => {
                        for (id, body) in flush::frames(&v)? {
                            h.write(&k[..schema::CONV_LEN]);
                            h.write(&id.to_be_bytes());
                            h.write(&body);
                            d.messages += 1;
                        }
                    }
                    _ => {
                        h.write(&k);
                        h.write(&v);
                        match t {
                            Table::Users => d.users += 1,
                            Table::Groups => d.groups += 1,
                            _ => {}
                        }
                    }
                }
            }
        }
        d.hash = format!("{:016x}", h.0);
        Ok(d)
    }
}

impl Store {
    /// How many messages are stored (written to sled first, then counted).
    pub fn count_messages(&mut self) -> Result<u64> {
        self.checkpoint_now()?;
        let mut n = 0;
        for r in self.trees[Table::History as usize].iter() {
            let (_, v) = r?;
            n += flush::frames(&v)?.len() as u64;
        }
        Ok(n)
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
mod tests {
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
}
