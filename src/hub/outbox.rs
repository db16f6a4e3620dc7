//! A session's queue of outgoing items.
//!
//! The hub (and the session's reader, for stream errors) push without ever
//! waiting; the writer takes everything queued in one go. It is a plain
//! mutex-guarded deque rather than a channel because an idle connection
//! should cost next to nothing: an empty deque allocates nothing, where a
//! channel keeps a block of slots per connection.

use super::Out;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

pub struct Outbox {
    inner: Mutex<Inner>,
    ready: Notify,
    cap: usize,
}

struct Inner {
    items: VecDeque<Out>,
    closed: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// `cap` items are waiting already: the session does not keep up.
    Full,
    /// The session is ending.
    Closed,
}

/// A deque that grew past this during a burst is given back when drained.
const KEEP_CAPACITY: usize = 64;

impl Outbox {
    pub fn new(cap: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the
        // queue itself is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, out: Out) -> Result<(), PushError> {
        self.push_unwoken(out)?;
        self.wake();
        Ok(())
    }

    /// Queue an item without waking the writer, which could not write it
    /// before its ticket is durable anyway: [`Outbox::wake`] comes then.
    pub fn push_unwoken(&self, out: Out) -> Result<(), PushError> {
        let mut q = self.lock();
        if q.closed {
            return Err(PushError::Closed);
        }
        if q.items.len() >= self.cap {
            return Err(PushError::Full);
        }
        q.items.push_back(out);
        Ok(())
    }

    /// Have the writer look at what is queued.
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// No more pushes; the writer finishes what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Move everything queued into `into` (which must be empty), waiting
    /// while there is nothing. False once closed and drained.
    pub async fn take_all(&self, into: &mut VecDeque<Out>) -> bool {
        loop {
            {
                let mut q = self.lock();
                if !q.items.is_empty() {
                    std::mem::swap(&mut q.items, into);
                    if q.items.capacity() > KEEP_CAPACITY {
                        q.items = VecDeque::new();
                    }
                    return true;
                }
                if q.closed {
                    return false;
                }
            }
            // A push between the check and this wait leaves a permit, so
            // the wait returns at once.
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::OutItem;

    fn out(ticket: u64) -> Out {
        Out {
            ticket,
            item: OutItem::Replay,
        }
    }

    #[tokio::test]
    async fn bounded_ordered_and_closes_after_draining() {
        let b = Outbox::new(2);
        assert_eq!(b.push(out(1)), Ok(()));
        assert_eq!(b.push(out(2)), Ok(()));
        assert_eq!(b.push(out(3)), Err(PushError::Full));
        b.close();
        assert_eq!(b.push(out(4)), Err(PushError::Closed));
        let mut got = VecDeque::new();
        assert!(b.take_all(&mut got).await);
        let tickets: Vec<u64> = got.iter().map(|o| o.ticket).collect();
        assert_eq!(tickets, vec![1, 2]);
        got.clear();
        assert!(!b.take_all(&mut got).await);
    }

    #[tokio::test]
    async fn an_unwoken_push_waits_for_its_wake() {
        use futures_util::FutureExt;
        let b = Outbox::new(8);
        let mut got = VecDeque::new();
        {
            let mut take = std::pin::pin!(b.take_all(&mut got));
            assert!((&mut take).now_or_never().is_none(), "nothing queued");
            b.push_unwoken(out(3)).expect("room");
            assert!((&mut take).now_or_never().is_none(), "not woken yet");
            b.wake();
            assert_eq!((&mut take).now_or_never(), Some(true));
        }
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_push() {
        let b = std::sync::Arc::new(Outbox::new(8));
        let b2 = b.clone();
        let writer = tokio::spawn(async move {
            let mut got = VecDeque::new();
            let more = b2.take_all(&mut got).await;
            (more, got.len())
        });
        tokio::task::yield_now().await;
        b.push(out(7)).expect("room");
        let (more, n) = writer.await.expect("writer");
        assert!(more);
        assert_eq!(n, 1);
    }
}
