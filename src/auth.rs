//! Password hashing with argon2id, on a small pool of threads of its own.
//!
//! Hashing is deliberately slow and memory-hungry (19 MiB a hash by
//! default). A few threads (one per core, at most four) take the jobs from
//! a bounded queue, each hashing into one memory block it keeps between
//! jobs, so a login storm queues instead of allocating a block per
//! request, and memory is bounded by the pool, not by the storm. A thread
//! idle for a moment gives its block back, so RSS returns to what the
//! sessions need once the storm is over (the binary sets the allocator to
//! return blocks this large to the system at once: `os::tune_allocator`).

use crate::api::{ChatError, ErrorCode};
use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Jobs waiting at most; beyond, a login is told the server is busy.
const QUEUE: usize = 1024;

#[cfg(test)]
thread_local! {
    /// Tests shrink the queue to see it fill.
    static TEST_QUEUE: std::cell::Cell<usize> = const { std::cell::Cell::new(QUEUE) };
}

fn queue_limit() -> usize {
    #[cfg(test)]
    return TEST_QUEUE.with(|q| q.get());
    #[cfg(not(test))]
    QUEUE
}

/// How long a hashing thread keeps its memory with nothing to do.
const KEEP_MEMORY: Duration = Duration::from_millis(500);

enum Job {
    Hash {
        password: String,
        done: oneshot::Sender<Result<String, ChatError>>,
    },
    Verify {
        password: String,
        hash: String,
        done: oneshot::Sender<bool>,
    },
}

/// What checking a password found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Right,
    Wrong,
    /// Not checked: too many are waiting (say `busy`, count nothing).
    Busy,
}

struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    /// Set when the last handle is gone: the threads finish and stop.
    closed: std::sync::atomic::AtomicBool,
}

/// The pool's owner; its threads stop when the last one is dropped.
struct Pool(Arc<Queue>);

impl Drop for Pool {
    fn drop(&mut self) {
        // Under the lock, so no thread misses the wake-up.
        let _jobs = self.0.jobs.lock().unwrap_or_else(|e| e.into_inner());
        self.0
            .closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.0.ready.notify_all();
    }
}

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    pool: Arc<Pool>,
    /// A hash of nothing, verified against when the user does not exist so
    /// that "no such user" takes as long as "wrong password".
    dummy: Arc<str>,
}

impl Passwords {
    /// `threads`: 0 for one per core, at most four.
    pub fn new(memory_kib: u32, iterations: u32, threads: usize) -> Result<Passwords, String> {
        let params = Params::new(
            memory_kib.max(Params::MIN_M_COST),
            iterations.max(1),
            1,
            None,
        )
        .map_err(|e| format!("invalid argon2 settings: {e}"))?;
        let mut memory = Vec::new();
        let dummy = hash_with(&params, "chatd-dummy-password", &mut memory)
            .map_err(|e| format!("argon2 does not work here: {e}"))?;
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            n => n.min(16),
        };
        let queue = Arc::new(Queue {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            closed: Default::default(),
        });
        for i in 0..threads {
            let (q, p) = (queue.clone(), params.clone());
            std::thread::Builder::new()
                .name(format!("chatd-hash-{i}"))
                .spawn(move || work(&q, &p))
                .map_err(|e| format!("cannot start a hashing thread: {e}"))?;
        }
        Ok(Passwords {
            params,
            pool: Arc::new(Pool(queue)),
            dummy: dummy.into(),
        })
    }

    fn submit(&self, job: Job) -> bool {
        let q = &self.pool.0;
        let mut jobs = q.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.len() >= queue_limit() {
            return false;
        }
        jobs.push_back(job);
        drop(jobs);
        q.ready.notify_one();
        true
    }

    pub async fn hash(&self, password: String) -> Result<String, ChatError> {
        let (done, result) = oneshot::channel();
        if !self.submit(Job::Hash { password, done }) {
            return Err(busy());
        }
        result.await.unwrap_or_else(|_| Err(internal()))
    }

    /// Whether `password` matches `hash`; with no hash, spend the same time
    /// and say no.
    pub async fn check(&self, password: String, hash: Option<String>) -> Verdict {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.to_string());
        let (done, result) = oneshot::channel();
        if !self.submit(Job::Verify {
            password,
            hash,
            done,
        }) {
            return Verdict::Busy;
        }
        match result.await {
            Ok(true) if known => Verdict::Right,
            Ok(_) => Verdict::Wrong,
            Err(_) => Verdict::Busy,
        }
    }

    /// Whether `password` matches `hash` (false when it could not be checked).
    pub async fn verify(&self, password: String, hash: Option<String>) -> bool {
        self.check(password, hash).await == Verdict::Right
    }

    /// The argon2 parameters new hashes get.
    pub fn params(&self) -> &Params {
        &self.params
    }
}

/// One hashing thread: take jobs until the pool is gone; keep one block of
/// memory while busy, give it back when idle.
fn work(q: &Queue, params: &Params) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let mut jobs = q.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let job = loop {
            if let Some(j) = jobs.pop_front() {
                break j;
            }
            if q.closed.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let (guard, timeout) = q
                .ready
                .wait_timeout(jobs, KEEP_MEMORY)
                .unwrap_or_else(|e| e.into_inner());
            jobs = guard;
            if timeout.timed_out() && jobs.is_empty() && !memory.is_empty() {
                memory = Vec::new();
            }
        };
        drop(jobs);
        // A job that panicked answers nothing (its caller sees an error);
        // the thread goes on, with fresh memory.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
            Job::Hash { password, done } => {
                let r = hash_with(params, &password, &mut memory).map_err(|_| internal());
                let _ = done.send(r);
            }
            Job::Verify {
                password,
                hash,
                done,
            } => {
                let _ = done.send(verify_with(&password, &hash, &mut memory));
            }
        }));
        if ran.is_err() {
            memory = Vec::new();
        }
    }
}

fn internal() -> ChatError {
    ChatError::new(ErrorCode::Internal, "could not hash the password")
}

fn busy() -> ChatError {
    ChatError::new(
        ErrorCode::Busy,
        "the server is busy checking passwords; try again in a moment",
    )
}

/// Hash into `memory` (grown to the size the parameters need).
fn compute(
    argon: &Argon2,
    params: &Params,
    password: &str,
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Vec<Block>,
) -> Result<(), argon2::Error> {
    if memory.len() < params.block_count() {
        *memory = vec![Block::default(); params.block_count()];
    }
    argon.hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..])
}

/// A new PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
fn hash_with(params: &Params, password: &str, memory: &mut Vec<Block>) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt_b64 = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    compute(&argon, params, password, &salt, &mut out, memory).map_err(|e| e.to_string())?;
    let hash = Output::new(&out).map_err(|e| e.to_string())?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        salt_b64.as_str(),
        hash
    ))
}

/// Check a password against a PHC string, with that string's own
/// parameters (hashes made with other settings keep working).
fn verify_with(password: &str, phc: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or_default();
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    if compute(&argon, &params, password, salt, &mut out, memory).is_err() {
        return false;
    }
    // Output's comparison takes the same time wherever they differ.
    Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordHasher;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let p = Passwords::new(256, 1, 1).unwrap();
        let h = p.hash("secret".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{h}");
        assert!(!h.contains("secret"));
        assert!(p.verify("secret".into(), Some(h.clone())).await);
        assert!(!p.verify("wrong".into(), Some(h)).await);
        assert!(!p.verify("chatd-dummy-password".into(), None).await);
    }

    #[tokio::test]
    async fn hashes_made_elsewhere_or_with_other_settings_verify() {
        // As the argon2 crate makes them (as stored before this pool).
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let params = Params::new(512, 2, 1, None).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        let p = Passwords::new(256, 1, 2).unwrap();
        assert!(p.verify("pw".into(), Some(theirs.clone())).await);
        assert!(!p.verify("px".into(), Some(theirs)).await);
        // And ours parse as standard PHC strings.
        let ours = p.hash("pw".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2::password_hash::PasswordVerifier::verify_password(
            &Argon2::default(),
            b"pw",
            &parsed
        )
        .is_ok());
        assert!(!p.verify("pw".into(), Some("not a hash".into())).await);
    }

    #[tokio::test]
    async fn a_full_queue_says_busy_not_wrong() {
        TEST_QUEUE.with(|q| q.set(2));
        let p = Passwords::new(2048, 3, 1).unwrap();
        let h = p.hash("pw".into()).await.unwrap();
        let checks: Vec<_> = (0..20)
            .map(|_| {
                let (p, h) = (p.clone(), h.clone());
                async move { p.check("pw".into(), Some(h)).await }
            })
            .collect();
        let verdicts = futures_join(checks).await;
        assert!(verdicts.contains(&Verdict::Busy), "{verdicts:?}");
        assert!(verdicts.contains(&Verdict::Right), "{verdicts:?}");
        assert!(!verdicts.contains(&Verdict::Wrong), "{verdicts:?}");
        TEST_QUEUE.with(|q| q.set(QUEUE));
    }

    /// Poll futures together on this thread (so the test's queue size holds).
    async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
        let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
        let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
                if o.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *o = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        out.into_iter().flatten().collect()
    }

    #[tokio::test]
    async fn many_at_once_queue_on_the_pool() {
        let p = Passwords::new(256, 1, 2).unwrap();
        let jobs: Vec<_> = (0..50)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move { p.hash(format!("pw{i}")).await })
            })
            .collect();
        for j in jobs {
            assert!(j.await.unwrap().is_ok());
        }
    }
}
