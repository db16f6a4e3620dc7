//! The log's side of the store: group commit (the `Durability` thread that
//! writes the queued batches' segments, syncs, and says how far the log is
//! on disk), log segments, and reading the log (`LogReader`). The files the
//! log lives in are `logfile.rs`'s.

use super::logfile::{LogFiles, Segment};
use super::*;

/// What is known to be on disk: every log write up to `ticket`, which
/// brought each origin's log up to `position`.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub ticket: u64,
    pub position: Arc<Position>,
}

/// Group commit, and the only writer of the log. The hub hands over each
/// batch's operations and asks for everything up to a ticket to be made
/// durable; one thread appends them to the log's file as segments, syncs it,
/// and publishes the highest ticket whose writes are on disk. Each sync
/// covers every write made before it started, so many batches share one
/// fsync, and the hub never waits on the disk.
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
    /// What to run once a ticket is done, in ticket order.
    pub(super) then: Vec<(u64, Then)>,
}

/// Something to run once a ticket is durable, on the commit thread right
/// after `flushed` says so, so that whatever it wakes sees the ticket done.
pub type Then = Box<dyn FnOnce() + Send>;

impl Durability {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn run(self: Arc<Self>, files: Arc<LogFiles>) {
        // Without a sync per commit (unsafe), still one every second.
        let mut synced = std::time::Instant::now();
        let mut quiet = crate::os::Quiet::new(synced);
        let nothing_asked = |st: &CommitState| st.queue.is_empty() && st.target.ticket <= st.done;
        let idle = |st: &CommitState| nothing_asked(st) && !st.stop;
        loop {
            let (segments, target) = {
                let mut st = self.lock();
                while idle(&st) {
                    st = match self.wake.wait_timeout(st, crate::os::Quiet::AFTER) {
                        Ok((st, _)) => st,
                        Err(e) => e.into_inner().0,
                    };
                    if idle(&st) && quiet.poll(std::time::Instant::now()) {
                        drop(st);
                        crate::os::thread_quiet();
                        st = self.lock();
                    }
                }
                if nothing_asked(&st) && st.stop {
                    let left = std::mem::take(&mut st.then);
                    drop(st);
                    if let Err(e) = files.sync() {
                        tracing::error!(error = %e, "cannot sync the log at shutdown");
                    }
                    // Whoever waits finds out for themselves that we stopped.
                    left.into_iter().for_each(|(_, f)| f());
                    return;
                }
                // Every segment of a ticket is queued before the ticket is
                // asked for, so taking both together never claims too much.
                (std::mem::take(&mut st.queue), st.target.clone())
            };
            quiet.worked(std::time::Instant::now());
            let mut written = queued_segments(&segments)
                .try_for_each(|(origin, segs)| files.append(origin, &segs));
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            let sync_due = !self.no_flush || synced.elapsed() >= Duration::from_secs(1);
            if written.is_ok() && sync_due {
                let started = std::time::Instant::now();
                written = files.sync();
                synced = started;
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
            let due = st.then.partition_point(|(t, _)| *t <= st.done);
            let due: Vec<(u64, Then)> = st.then.drain(..due).collect();
            drop(st);
            due.into_iter().for_each(|(_, f)| f());
            // After the wake-ups (filling is not what they wait for), and
            // only after a sync: the zeros are to reach the disk before
            // the next one, and without a sync (unsafe) nothing is waited on.
            if sync_due {
                files.top_up();
            }
        }
    }

    /// Run `f` once everything up to `ticket` is durable: now if it is (or
    /// the commit thread is stopping), else right after the commit that
    /// makes it so. Asked in ticket order.
    pub(super) fn then(&self, ticket: u64, f: Then) {
        let mut st = self.lock();
        if st.done >= ticket || st.stop {
            drop(st);
            f();
            return;
        }
        debug_assert!(st.then.last().is_none_or(|(t, _)| *t <= ticket));
        st.then.push((ticket, f));
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

/// Most operations in a run (see [`queued_segments`]): a run's segments
/// are made and written at once, so this bounds the commit thread's
/// buffers to about a full batch of the hub's.
pub(super) const RUN_MAX_OPS: usize = 512;

/// The segments for what the commit thread found queued, per origin, in
/// the queue's order. The batches of one origin that follow each other are
/// one run (up to [`RUN_MAX_OPS`]), its segments as full as
/// [`RECORD_MAX_BYTES`] allows: a small segment per batch would each be
/// written, and compressed with zstd's tables built, on its own (at 50,000
/// msg/s the log took a third more bytes). An origin's batches continue
/// its sequence, so a run does too.
pub(super) fn queued_segments(
    queue: &[(NodeId, Vec<Op>)],
) -> impl Iterator<Item = (NodeId, Vec<Segment>)> + '_ {
    let mut rest = queue;
    std::iter::from_fn(move || {
        let origin = rest.first()?.0;
        let (mut batches, mut ops) = (0, 0);
        for (o, batch) in rest {
            if *o != origin || (batches > 0 && ops + batch.len() > RUN_MAX_OPS) {
                break;
            }
            (batches, ops) = (batches + 1, ops + batch.len());
        }
        let (run, after) = rest.split_at(batches);
        rest = after;
        Some((origin, log_segments(run.iter().flat_map(|(_, ops)| ops))))
    })
}

/// Ops cut into segments of at most [`RECORD_MAX_BYTES`] each (a single
/// bigger op makes a segment of its own): the first and last op's seq, the
/// last one's stamp, and the bytes `encode` makes of those ops as a slice.
/// This runs on the commit thread every reply waits for, so each op is
/// encoded once: a slice is its length (a varint) followed by its elements.
pub(super) fn log_segments<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Vec<Segment> {
    let config = bincode::config::standard();
    let finish = |n: u64, body: &[u8]| {
        let mut out = Vec::with_capacity(body.len() + 10);
        out.push(FORMAT);
        let _ = bincode::serde::encode_into_std_write(n, &mut out, config);
        out.extend_from_slice(body);
        compress_segment(out)
    };
    let mut out = Vec::new();
    let (mut first, mut last, mut n, mut body) = (0, (0, 0), 0u64, Vec::new());
    let mut one = Vec::new();
    let segment = |first: u64, (seq, stamp): (u64, u64), n, body: &[u8]| Segment {
        first,
        last: seq,
        last_stamp: stamp,
        bytes: finish(n, body),
    };
    for op in ops {
        one.clear();
        let _ = bincode::serde::encode_into_std_write(op, &mut one, config);
        if n > 0 && body.len() + one.len() > RECORD_MAX_BYTES - 16 {
            out.push(segment(first, last, n, &body));
            (n, body) = (0, Vec::new());
        }
        if n == 0 {
            first = op.seq;
        }
        last = (op.seq, op.stamp.0);
        body.extend_from_slice(&one);
        n += 1;
    }
    if n > 0 {
        out.push(segment(first, last, n, &body));
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

/// zstd's fastest level: this runs on the path every reply waits for.
const SEGMENT_ZSTD_LEVEL: i32 = 1;
/// The largest a segment may be once decompressed (one op alone is bounded
/// by the biggest request a client may send; anything past this is
/// corrupt).
const SEGMENT_MAX: usize = 64 << 20;

/// A segment compressed, when that saves a tenth or more.
fn compress_segment(plain: Vec<u8>) -> Vec<u8> {
    if plain.len() < 128 {
        return plain;
    }
    super::zip::pack(&plain, SEGMENT_ZSTD_LEVEL).unwrap_or(plain)
}

/// The operations of a stored segment, compressed or not.
pub(super) fn decode_segment(bytes: &[u8]) -> Result<Vec<Op>> {
    match bytes.split_first() {
        Some((&super::zip::PACKED, rest)) => {
            let plain = super::zip::unpack(rest, SEGMENT_MAX)
                .map_err(|e| StoreError::Corrupt(format!("log segment: {e}")))?;
            decode(&plain)
        }
        _ => decode(bytes),
    }
}

/// Reads the log; cheap to clone and safe to use from any thread. Closing
/// the store revokes every reader, so none keeps the database open.
#[derive(Clone)]
pub struct LogReader {
    pub(super) files: Arc<Mutex<Option<Arc<LogFiles>>>>,
    pub(super) bounds: Arc<Mutex<LogBounds>>,
}

impl LogReader {
    fn files(&self) -> Result<Arc<LogFiles>> {
        lock(&self.files)
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
        self.files()?.read(origin, after, max)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
