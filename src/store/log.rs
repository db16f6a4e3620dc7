//! The log's side of the store: group commit (the `Durability` thread that
//! flushes each batch's segment and says how far the log is on disk), log
//! segments and their keys, and reading the log (`LogReader`).

use super::*;

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
    pub(super) state: Mutex<CommitState>,
    pub(super) wake: Condvar,
    /// Signalled whenever `done` moves (for the checkpoint thread).
    pub(super) progress: Condvar,
    pub(super) flushed: watch::Sender<Durable>,
    pub(super) delay: Duration,
    pub(super) no_flush: bool,
    /// Where the reserve file is, to give it up when the disk fills.
    pub(super) dir: Option<PathBuf>,
}

#[derive(Default)]
pub(super) struct CommitState {
    /// Log segments not written yet, oldest first.
    pub(super) queue: Vec<(NodeId, Vec<Op>)>,
    /// The highest ticket asked for, and the log position it stands for.
    pub(super) target: Durable,
    /// The highest ticket written (and flushed).
    pub(super) done: u64,
    pub(super) stop: bool,
}

impl Durability {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn run(self: Arc<Self>, db: sled::Db, log: sled::Tree) {
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

    pub(super) fn append(&self, origin: NodeId, ops: Vec<Op>) {
        self.lock().queue.push((origin, ops));
    }

    pub(super) fn request(&self, ticket: u64, position: &Position) {
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

    pub(super) fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
        self.progress.notify_all();
    }
}

/// Write ops as log segments of at most [`RECORD_MAX_BYTES`] each (a
/// single bigger op makes a segment of its own).
pub(super) fn insert_segments(log: &sled::Tree, origin: NodeId, ops: &[Op]) -> Result<()> {
    for (first, bytes) in log_segments(ops) {
        log.insert(log_key(origin, first), bytes)?;
    }
    Ok(())
}

/// Ops cut into segments of at most [`RECORD_MAX_BYTES`] each: (seq of the
/// first op, the bytes `encode` makes of those ops as a slice). This runs
/// on the commit thread every reply waits for, so each op is encoded once:
/// a slice is its length (a varint) followed by its elements.
pub(super) fn log_segments(ops: &[Op]) -> Vec<(u64, Vec<u8>)> {
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

/// Where each origin's log begins: its operations up to `position` (the
/// last of them stamped `stamps`) are held by the tables alone, dropped by
/// compaction or brought by a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LogStart {
    pub position: Position,
    pub stamps: BTreeMap<NodeId, Stamp>,
}

impl LogStart {
    /// Move an origin's start forward (never back).
    pub fn raise(&mut self, origin: NodeId, seq: u64, stamp: Stamp) {
        if seq > self.position.get(&origin).copied().unwrap_or(0) {
            self.position.insert(origin, seq);
            self.stamps.insert(origin, stamp);
        }
    }
}

/// What the log's readers and its compaction share: where the log begins,
/// and the positions that snapshots being read need kept (pins), under one
/// lock, so that a compaction never drops what a snapshot just promised.
#[derive(Default)]
pub struct LogBounds {
    pub(super) start: LogStart,
    pub(super) pins: BTreeMap<u64, Position>,
    pub(super) next_pin: u64,
}

/// Reads the log; cheap to clone and safe to use from any thread. Closing
/// the store revokes every reader, so none keeps the database open.
#[derive(Clone)]
pub struct LogReader {
    pub(super) log: Arc<Mutex<Option<sled::Tree>>>,
    pub(super) bounds: Arc<Mutex<LogBounds>>,
}

impl LogReader {
    pub(super) fn tree(&self) -> Result<sled::Tree> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Corrupt("the store is closed".into()))
    }

    /// Where each origin's log begins (what it no longer holds).
    pub fn start(&self) -> Position {
        lock(&self.bounds).start.position.clone()
    }

    /// An error when the log no longer holds `origin`'s operations after
    /// `after` (a reader of those needs a snapshot).
    fn check_held(&self, origin: NodeId, after: u64) -> Result<()> {
        let start = lock(&self.bounds)
            .start
            .position
            .get(&origin)
            .copied()
            .unwrap_or(0);
        if after < start {
            return Err(StoreError::Compacted { origin, start });
        }
        Ok(())
    }

    /// Ops of `origin` with sequence numbers after `after`, oldest first.
    pub fn read(&self, origin: NodeId, after: u64, max: usize) -> Result<Vec<Op>> {
        self.check_held(origin, after)?;
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
        if after.is_none() {
            self.check_held(origin, 0)?;
        }
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn log_key(origin: NodeId, seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&origin.to_be_bytes());
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn parse_log_key(k: &[u8]) -> Result<(NodeId, u64)> {
    if k.len() != 10 {
        return Err(StoreError::Corrupt("bad log key".into()));
    }
    let origin = u16::from_be_bytes([k[0], k[1]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&k[2..]);
    Ok((origin, u64::from_be_bytes(s)))
}
