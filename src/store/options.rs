//! How a store is opened (`StoreOptions`), and the in-memory resend filter
//! (`RecentCids`).

use super::*;

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
    /// Fault injection: pause at each step of a compaction (tests only).
    pub compact_delay: Duration,
    /// Fault injection: pause as each layer's write begins (tests only).
    pub write_delay: Duration,
    /// Write layers in `SCHED_IDLE` where the thread can be lifted back
    /// (`idler.rs`).
    pub idle_writes: bool,
    /// Unsafe: count a commit as durable without flushing it.
    pub no_flush: bool,
}

impl StoreOptions {
    pub fn at(path: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            path: Some(path.into()),
            cache_bytes: 16 << 20,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_bytes: 16 << 20,
            commit_delay: Duration::ZERO,
            compact_delay: Duration::ZERO,
            write_delay: Duration::ZERO,
            idle_writes: true,
            no_flush: false,
        }
    }

    /// A throwaway database, for tests of the rules.
    pub fn temporary() -> StoreOptions {
        StoreOptions {
            path: None,
            cache_bytes: 16 << 20,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_bytes: 16 << 20,
            commit_delay: Duration::ZERO,
            compact_delay: Duration::ZERO,
            write_delay: Duration::ZERO,
            idle_writes: true,
            no_flush: false,
        }
    }
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
