//! How the checkpoint thread keeps out of the way of requests. It writes
//! each layer in `SCHED_IDLE`: it gets a core when nothing else wants one
//! (and a tiny share otherwise), so its burst of work once a second does
//! not hold a core that a session, the hub or the commit thread is waiting
//! for. At nice 10 alone it still did, and that showed in the p99 of an
//! open load. When the layer is late, or the hub has to wait for it, the
//! hub lifts the thread back to ordinary scheduling at nice 10, so under a
//! load that keeps the cores busy it still keeps up. Everything else the
//! thread does (compaction, freeing layers) runs at nice 10.
//!
//! Only where the thread can be lifted back (`os::may_leave_idle`): one
//! that could not would be left with that tiny share by anything keeping
//! the cores busy. Elsewhere it stays at nice 10 throughout.
//!
//! The flags are atomics, not a lock: a thread in `SCHED_IDLE` preempted
//! while holding a lock would hold up the hub waiting for it.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};

#[derive(Default)]
pub(super) struct Idler {
    /// The thread's id once it may idle; 0 before, and where it may not.
    tid: AtomicI32,
    /// The layer in hand was lifted.
    lifted: AtomicBool,
    /// A lift failed once: said once.
    warned: AtomicBool,
}

impl Idler {
    /// Called by the thread at its start.
    pub(super) fn start(&self) {
        let tid = crate::os::thread_id();
        if crate::os::may_leave_idle(tid) {
            self.tid.store(tid, SeqCst);
        }
    }

    /// A layer is handed to the thread (by the hub, before it is sent).
    pub(super) fn handed(&self) {
        self.lifted.store(false, SeqCst);
    }

    /// Called by the thread as it begins writing a layer. A lift that
    /// comes first, or at any moment after, leaves it lifted: the flag is
    /// read after the policy is set, and a lift sets the flag before it
    /// sets the policy.
    pub(super) fn write_begins(&self) {
        let tid = self.tid.load(SeqCst);
        if tid != 0 && crate::os::set_idle(tid, true) && self.lifted.load(SeqCst) {
            self.set(tid, false);
        }
    }

    /// Called by the thread once the layer is written.
    pub(super) fn write_ends(&self) {
        let tid = self.tid.load(SeqCst);
        if tid != 0 {
            self.set(tid, false);
        }
    }

    /// The layer in hand is late or waited for: let it have a core.
    pub(super) fn lift(&self) {
        if !self.lifted.swap(true, SeqCst) {
            let tid = self.tid.load(SeqCst);
            if tid != 0 {
                self.set(tid, false);
            }
        }
    }

    fn set(&self, tid: i32, idle: bool) {
        if !crate::os::set_idle(tid, idle) && !self.warned.swap(true, SeqCst) {
            tracing::warn!("cannot change the checkpoint thread's scheduling");
        }
    }

    #[cfg(test)]
    pub(super) fn tid(&self) -> i32 {
        self.tid.load(SeqCst)
    }
}
