//! Small operating-system chores for the daemon.

/// Raise the open-file limit to the hard limit: every client is a socket.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Make the calling thread yield the CPU to the others (nice 10). For
/// background work that must not add to the latency of requests on a busy
/// machine; lowering one's own priority needs no privilege.
pub fn background_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on the calling thread, no memory passed.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, thread_id() as libc::id_t, 10);
    }
}

/// The calling thread's id, by which other threads may [`set_idle`] it.
pub fn thread_id() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid takes nothing and cannot fail.
    unsafe {
        libc::syscall(libc::SYS_gettid) as i32
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Whether thread `tid` could be taken out of `SCHED_IDLE` again: the
/// kernel allows it to a thread that may lower its nice value to where it
/// is, by `RLIMIT_NICE` (systemd's `LimitNICE=`) or by `CAP_SYS_NICE`. The
/// capability is tried rather than read (lowering the nice value by one
/// and raising it back), since one held in a user namespace does not
/// count. A thread put there without a way back would be left a tiny
/// share of the CPU by anything keeping the cores busy.
pub fn may_leave_idle(tid: i32) -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: getpriority, setpriority and getrlimit on a thread of ours;
    // the struct is ours.
    unsafe {
        let id = tid as libc::id_t;
        let nice = libc::getpriority(libc::PRIO_PROCESS, id);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NICE, &mut lim) == 0 && nice_allowed(nice, lim.rlim_cur) {
            return true;
        }
        if nice <= -20 || libc::setpriority(libc::PRIO_PROCESS, id, nice - 1) != 0 {
            return false;
        }
        // Raising one's nice value needs no privilege.
        libc::setpriority(libc::PRIO_PROCESS, id, nice) == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = tid;
        false
    }
}

/// Whether `RLIMIT_NICE` at `rlim` lets a thread have nice value `nice`
/// (the kernel's test: 20 - nice within the limit; systemd's
/// `LimitNICE=+10` sets 10).
#[cfg(target_os = "linux")]
fn nice_allowed(nice: i32, rlim: u64) -> bool {
    u64::try_from(20 - i64::from(nice)).is_ok_and(|needed| needed <= rlim)
}

/// Put thread `tid` in `SCHED_IDLE` (it runs only on a core nothing else
/// wants), or back to ordinary scheduling at its nice value. Only for a
/// thread [`may_leave_idle`] says can come back. Whether it took.
pub fn set_idle(tid: i32, idle: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        let policy = if idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: the kernel only reads the struct we pass.
        unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tid, idle);
        false
    }
}

/// Give memory the allocator holds but does not use back to the system.
/// After a burst (a written layer freed, say) glibc keeps the pages in its
/// per-thread arenas; this is where a server's memory would otherwise only
/// ever grow. (The daemon allocates with jemalloc, see [`AllocatorHints`];
/// glibc still serves C code and the library's tests.)
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the daemon tells its allocator about chatd's threads. The binary
/// sets them once, for jemalloc; without them (the library's tests) only
/// glibc's trim is done.
#[derive(Clone, Copy)]
pub struct AllocatorHints {
    /// Give the calling thread a cache of free blocks.
    pub cache: fn(),
    /// Serve the calling thread from an arena of its own.
    pub apart: fn(),
    /// The calling thread has gone quiet: empty its cache, and hand the
    /// allocator's free pages back to the system.
    pub quiet: fn(),
}

static HINTS: std::sync::OnceLock<AllocatorHints> = std::sync::OnceLock::new();

pub fn set_allocator_hints(hints: AllocatorHints) {
    let _ = HINTS.set(hints);
}

/// Called by a thread that allocates for every message (the hub, the
/// commit thread, the checkpoint thread, the runtime's workers). Only such
/// threads keep a cache of free blocks: a cache is emptied by its own
/// thread alone, and one kept by a thread chatd does not drive (sled's I/O
/// pool, the password hashers) stayed full after a load, 8 MB of them.
pub fn busy_thread() {
    if let Some(h) = HINTS.get() {
        (h.cache)();
    }
}

/// Called by the thread that writes sled's tables. What it allocates
/// (sled's cached pages, which live long) comes from an arena of its own:
/// mixed with a load's short-lived blocks, each survivor kept a page of
/// them from going back to the system.
pub fn tables_thread() {
    if let Some(h) = HINTS.get() {
        (h.apart)();
    }
}

/// Called once by a thread that has gone [`Quiet`].
pub fn thread_quiet() {
    if let Some(h) = HINTS.get() {
        (h.quiet)();
    }
    return_free_memory();
}

/// When a thread has gone quiet: told of its work and asked on each
/// wake-up, with the time, it says so once per quiet spell.
#[derive(Debug)]
pub struct Quiet {
    last_work: std::time::Instant,
    told: bool,
}

impl Quiet {
    /// This long without work is quiet.
    pub const AFTER: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new(now: std::time::Instant) -> Quiet {
        // Starting (the log's replay) is work too.
        Quiet {
            last_work: now,
            told: false,
        }
    }

    pub fn worked(&mut self, now: std::time::Instant) {
        self.last_work = now;
        self.told = false;
    }

    /// True the first time the thread is found quiet since it last worked.
    pub fn poll(&mut self, now: std::time::Instant) -> bool {
        if self.told || now.saturating_duration_since(self.last_work) < Self::AFTER {
            return false;
        }
        self.told = true;
        true
    }
}

/// Have the allocator hand blocks of a megabyte or more straight to and
/// from the system. glibc otherwise raises that threshold after such a
/// block is freed, and keeps later ones (an argon2 hash's 19 MiB) in its
/// arenas for good: RSS after a login storm would stay at its peak.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's own tunables; called once
    // at start, before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// This process's resident memory, in bytes (Linux: `/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Create a file only its owner may read (keys); an existing one is not
/// overwritten.
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::Quiet;
    use std::time::{Duration, Instant};

    #[test]
    fn leaving_idle_at_nice_10_takes_a_nice_limit_of_10() {
        assert!(!super::nice_allowed(10, 0), "the default limit");
        assert!(!super::nice_allowed(10, 9));
        assert!(super::nice_allowed(10, 10), "LimitNICE=+10");
        assert!(super::nice_allowed(19, 1));
        assert!(!super::nice_allowed(0, 19));
        assert!(super::nice_allowed(-20, 40));
    }

    #[test]
    fn a_thread_goes_idle_and_comes_back_at_its_nice_value() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            super::background_thread();
            let _ = tx.send(super::thread_id());
            let _ = stopped.recv();
        });
        let tid = rx.recv().unwrap();
        // SAFETY: plain queries of a live thread of this process.
        let policy = || unsafe { libc::sched_getscheduler(tid) };
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        let before = nice();
        assert_eq!(policy(), libc::SCHED_OTHER);
        if super::may_leave_idle(tid) {
            assert_eq!(nice(), before, "asking changes nothing");
            assert!(super::set_idle(tid, true));
            assert_eq!(policy(), libc::SCHED_IDLE);
            assert!(super::set_idle(tid, false));
            assert_eq!((policy(), nice()), (libc::SCHED_OTHER, before));
        } else {
            // CI runs as root (CAP_SYS_NICE), where the test must not skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "no way back from SCHED_IDLE in CI"
            );
        }
        stop.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn quiet_is_said_once_per_spell_and_only_after_a_second() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = Quiet::new(t0);
        assert!(!q.poll(ms(999)), "not before a second");
        assert!(q.poll(ms(1000)));
        assert!(!q.poll(ms(5000)), "once per spell");
        q.worked(ms(5000));
        assert!(!q.poll(ms(5500)));
        q.worked(ms(5600));
        assert!(!q.poll(ms(6500)), "work restarts the second");
        assert!(q.poll(ms(6600)));
        // A clock read before the work was noted is not quiet.
        q.worked(ms(7000));
        assert!(!q.poll(ms(6900)));
    }
}
