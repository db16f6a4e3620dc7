//! Opening the store: the tables' sled database (waiting a while for a
//! lock another process holds), the log's files, and a log from before it
//! moved to files, taken over once.

use super::*;

/// Where the log's files are, under the store's directory.
const LOG_DIR: &str = "oplog";
/// Where the log was when it was a sled database.
const OLD_LOG_DIR: &str = "log";

/// `sync_every_ms`: let sled sync in the background; chatd otherwise syncs
/// each database itself, exactly when its promises need it.
pub(super) fn open_sled(
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
pub(super) const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The tables' database (the log, synced for every commit, is apart: a
/// checkpoint's megabytes never stand between a commit and its fsync).
pub(super) fn open_tables(opts: &StoreOptions) -> Result<sled::Db> {
    let started = Instant::now();
    let mut released = false;
    let mut waited = false;
    loop {
        let opened = open_sled(opts, "tables", opts.cache_bytes, None);
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
        let db = open_tables(&opts)?;
        let meta = db.open_tree("meta")?;
        let files = Arc::new(open_log(&opts, &meta)?);
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
            let files = files.clone();
            std::thread::Builder::new()
                .name("chatd-commit".into())
                .spawn(move || {
                    crate::os::busy_thread();
                    d.run(files)
                })
                .map_err(|e| StoreError::Corrupt(format!("cannot start commit thread: {e}")))?
        };
        let bounds: Arc<Mutex<log::LogBounds>> = Arc::default();
        let reader = LogReader {
            files: Arc::new(Mutex::new(Some(files.clone()))),
            bounds: bounds.clone(),
        };
        let compacting: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (bodies, body_writer) = bodies::Bodies::open(
            opts.path.as_ref().map(|p| p.join(bodies::DIR)),
            opts.no_flush,
        )?;
        let checkpointer = flush::Checkpointer::start(
            db.clone(),
            trees.clone(),
            meta.clone(),
            durability.clone(),
            flush::LogSide {
                files: files.clone(),
                bounds: bounds.clone(),
                busy: compacting.clone(),
                delay: opts.compact_delay,
                write_delay: opts.write_delay,
                idle_writes: opts.idle_writes,
                bodies: body_writer,
            },
        )?;

        let snapshot_tables = Arc::new(Mutex::new(Some((
            trees.clone(),
            meta.clone(),
            bodies.clone(),
        ))));
        let mut store = Store {
            db,
            files,
            meta,
            trees,
            bodies,
            active: Layer::default(),
            frozen: None,
            checkpointer,
            durability,
            commit_thread: Some(commit_thread),
            reader,
            snapshot_tables,
            durable_rx,
            ticket: 0,
            applied: Position::new(),
            last_stamps: BTreeMap::new(),
            opts,
            last_rotate: Instant::now(),
            reserving: Arc::default(),
            recent_cids: RecentCids::default(),
            counts: Counts::default(),
            marks: Watermarks::default(),
            sweeping: true,
            bounds,
            compacting,
            last_compact: Instant::now(),
            horizon: BTreeMap::new(),
        };
        store.horizon = store.stored_horizon()?;
        store.ensure_checkpoint_stamps()?;
        log::lock(&store.bounds).start = store.stored_log_start()?;
        store.counts = store.checkpointed_counts()?;
        store.ensure_tally()?;
        store.marks = store.stored_watermarks()?;
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

    /// The last sequence number in the log of every origin, and its stamp
    /// (where the log begins, for an origin it holds nothing of any more).
    pub(super) fn log_end(&self) -> Result<(Position, BTreeMap<NodeId, Stamp>)> {
        let start = log::lock(&self.bounds).start.clone();
        let (mut pos, mut stamps) = (start.position, start.stamps);
        for (o, (seq, stamp)) in self.files.ends() {
            if seq > pos.get(&o).copied().unwrap_or(0) {
                pos.insert(o, seq);
                stamps.insert(o, Stamp(stamp));
            }
        }
        Ok((pos, stamps))
    }

    /// A data directory from before checkpoints recorded their stamps: read
    /// them from the log once (never compacted there).
    fn ensure_checkpoint_stamps(&self) -> Result<()> {
        if self.meta.get("checkpoint_stamps")?.is_some() {
            return Ok(());
        }
        let Some(v) = self.meta.get("checkpoint")? else {
            return Ok(());
        };
        let position: Position = decode(&v)?;
        let mut stamps = BTreeMap::new();
        for (&o, &seq) in &position {
            if let Some(op) = self.read_log(o, seq.saturating_sub(1), 1)?.first() {
                stamps.insert(o, op.stamp);
            }
        }
        self.meta_put("checkpoint_stamps", &encode(&stamps))
    }

    /// The counts the last checkpoint recorded. A data directory from
    /// before they were kept is counted once, here.
    fn checkpointed_counts(&self) -> Result<Counts> {
        if let Some(v) = self.meta.get("counts")? {
            return decode(&v);
        }
        let mut messages = 0;
        for r in self.trees[Table::History as usize].iter() {
            let (_, v) = r?;
            messages += flush::frames(&self.bodies, &v)?.len() as u64;
        }
        let counts = Counts { messages };
        // Kept at once: a node that changes nothing writes no checkpoint,
        // and would otherwise walk its history at every start. (On a full
        // disk it cannot be; the next checkpoint will.)
        if let Err(e) = self.meta_put("counts", &encode(&counts)) {
            tracing::warn!(error = %e, "cannot keep the message count yet");
        }
        Ok(counts)
    }
}

/// A directory of its own for a temporary store's log.
fn temporary_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!("chatd-log-{}-{n}-{nanos}", std::process::id()))
}

/// The log's files; a log still in a sled database (chatd before the log
/// moved to files) is copied into them first, then removed. A copy cut
/// short by a crash is made again from the start.
fn open_log(opts: &StoreOptions, meta: &sled::Tree) -> Result<logfile::LogFiles> {
    let Some(p) = &opts.path else {
        return logfile::LogFiles::open(&temporary_dir(), true);
    };
    let (dir, old) = (p.join(LOG_DIR), p.join(OLD_LOG_DIR));
    if !old.join("conf").exists() {
        return logfile::LogFiles::open(&dir, false);
    }
    tracing::info!("moving the log from its sled database to files (once)");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(StoreError::Io)?;
    }
    let files = logfile::LogFiles::open(&dir, false)?;
    let old_db = open_sled(opts, OLD_LOG_DIR, 16 << 20, None)?;
    for r in old_db.open_tree("log")?.iter() {
        let (k, v) = r?;
        let origin = k
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| StoreError::Corrupt("bad log key".into()))?;
        let ops: Vec<Op> = decode(&v)?;
        let (Some(first), Some(last)) = (ops.first(), ops.last()) else {
            continue;
        };
        let segment = logfile::Segment {
            first: first.seq,
            last: last.seq,
            last_stamp: last.stamp.0,
            bytes: v.to_vec(),
        };
        files.append(origin, &[segment])?;
    }
    if let Some(h) = old_db.get("horizon")? {
        meta.insert("horizon", h)?;
    }
    files.sync()?;
    drop(old_db);
    std::fs::remove_dir_all(&old).map_err(StoreError::Io)?;
    Ok(files)
}
