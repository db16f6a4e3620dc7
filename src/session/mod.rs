//! One client connection: a reader task and a writer task.
//!
//! The reader splits the byte stream into values (`framing`, as the
//! listener's dialect frames them), decodes each in its dialect
//! (`dialect`), hashes or checks passwords on the blocking pool (`auth`),
//! and sends requests to the hub one at a time, so replies come back in
//! request order. It throttles a session that sends faster than its rate
//! limit by reading more slowly.
//!
//! The writer takes the items the hub queues for the session, waits until
//! each is durable, encodes it in the session's dialect and writes it. For
//! chatd's protocol it gathers everything already queued into one write (a
//! syscall per value is what a loaded server spends its time on); the seed
//! clients read one value per read, so they get one value per write,
//! paced where they need it. On login the writer replays the user's pending
//! messages page by page before anything newer.
//!
//! Every request gets exactly one reply, in order, so the hub never sees how
//! a request was worded: the reader queues each request's context here and
//! the writer takes it back when the reply comes.
//!
//! A session never touches the store; everything goes through the hub.

mod login;
mod writer;

use crate::admission::Pass;
use crate::api::{ChatError, Command, ErrorCode, Event, Reply};
use crate::auth::{Passwords, Verdict};
use crate::config::{Limits, Live};
use crate::dialect::{self, Decoder, Dialect, Edge, Frames, Incoming, Listen, ReqCtx, Who, Writes};
use crate::framing::{FrameError, Framer};
use crate::hub::{
    HubHandle, HubMsg, Input, Out, OutItem, SessionId, SessionLink, TrySend, REPLAY_PAGE,
};
use crate::ids::{NodeId, Stamp, Uid};
use crate::rules::{check_password, check_user_name};
use crate::throttle::{Account, Attempt, LoginThrottle};
use crate::transport::{Read, ReadHalf, Transport, WriteHalf};
use login::*;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use writer::*;

/// Bytes gathered for one write before it is made.
const WRITE_BATCH: usize = 64 * 1024;

/// What every session needs from the server.
pub struct Shared {
    pub hub: HubHandle,
    pub limits: Live<Limits>,
    pub passwords: Passwords,
    /// Failed logins by account and address (never held across an await).
    logins: std::sync::Mutex<LoginThrottle>,
    messages_out: metrics::Counter,
    latency: metrics::Histogram,
    queue_depth: metrics::Histogram,
    login_failures: metrics::Counter,
    login_throttled: metrics::Counter,
}

impl Shared {
    pub fn new(hub: HubHandle, limits: Live<Limits>, passwords: Passwords) -> Shared {
        let throttle = LoginThrottle::new(limits.get().throttle);
        Shared {
            hub,
            limits,
            passwords,
            logins: std::sync::Mutex::new(throttle),
            messages_out: metrics::counter!("chatd_messages_out_total"),
            latency: metrics::histogram!("chatd_delivery_latency_seconds"),
            queue_depth: metrics::histogram!("chatd_session_queue_depth"),
            login_failures: metrics::counter!("chatd_login_failures_total"),
            login_throttled: metrics::counter!("chatd_login_throttled_total"),
        }
    }

    fn logins(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        let mut t = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        // Settings may have been reloaded (SIGHUP).
        t.set_settings(self.limits.get().throttle);
        t
    }

    /// Before checking a password for `account` from `peer`: the attempt,
    /// or the error that says how long to wait (and no hashing).
    fn begin_attempt(&self, account: Account, peer: SocketAddr) -> Result<Attempt, ChatError> {
        let begun = self
            .logins()
            .begin(account.clone(), peer.ip(), Instant::now());
        begun.map_err(|wait| {
            self.login_throttled.increment(1);
            tracing::debug!(peer = %peer.ip().to_canonical(), %account, ?wait, "login throttled");
            too_many(wait, "failed attempts")
        })
    }

    /// After the check: a right password costs the attempt nothing; one
    /// that could not be checked (the hashing queue is full) costs nothing
    /// either, and says so.
    fn end_attempt(
        &self,
        attempt: Attempt,
        verdict: Verdict,
        peer: SocketAddr,
    ) -> Result<(), ChatError> {
        match verdict {
            Verdict::Right => {
                self.logins().succeeded(attempt, Instant::now());
                Ok(())
            }
            Verdict::Busy => Err(ChatError::new(
                ErrorCode::Busy,
                "the server is busy checking passwords; try again in a moment",
            )),
            Verdict::Wrong => {
                // fail2ban and friends can match this line.
                let ip = peer.ip().to_canonical();
                tracing::warn!(peer = %ip, account = %attempt.account(), "login failed");
                self.login_failures.increment(1);
                self.logins().failed(attempt, Instant::now());
                Err(ChatError::new(
                    ErrorCode::InvalidCredentials,
                    "id or password is invalid",
                ))
            }
        }
    }

    /// Before a registration (a hash, and an account) from `peer`.
    fn may_register(&self, peer: SocketAddr) -> Result<(), ChatError> {
        if self.hub.storage_full() {
            return Err(storage_full());
        }
        self.logins()
            .register(peer.ip(), Instant::now())
            .map_err(|wait| too_many(wait, "registrations"))
    }
}

fn too_many(wait: Duration, what: &str) -> ChatError {
    let secs = wait.as_secs_f64().ceil().max(1.0);
    ChatError::new(
        ErrorCode::TooManyAttempts,
        format!("too many {what} from here; try again in {secs} s"),
    )
    .retry_after(wait)
}

fn storage_full() -> ChatError {
    ChatError::new(
        ErrorCode::StorageFull,
        "the server's disk is full; nothing can be changed until there is room (reading works)",
    )
}

/// What a connection's reader tells its writer.
struct Conn {
    /// The connection's place among its address's; the writer says when
    /// the session logs in and out.
    pass: Pass,
    /// The contexts of requests whose replies are not written yet, oldest first.
    ctxs: Mutex<VecDeque<ReqCtx>>,
    /// The dialect pushes are written in (`Dialect::to_u8`).
    dialect: AtomicU8,
}

impl Conn {
    fn dialect(&self) -> Dialect {
        Dialect::from_u8(self.dialect.load(Ordering::Relaxed))
    }

    fn expect_reply(&self, ctx: ReqCtx) {
        self.ctxs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(ctx);
    }

    fn reply_ctx(&self) -> ReqCtx {
        let mut q = self.ctxs.lock().unwrap_or_else(|e| e.into_inner());
        let ctx = q.pop_front();
        if q.is_empty() && q.capacity() > 16 {
            *q = VecDeque::new();
        }
        // A reply always has its request's context; were one missing, the
        // connection's own dialect still reads it.
        ctx.unwrap_or_else(|| dialect::fallback_ctx(self.dialect()))
    }
}

/// Serve one connection until either side closes it.
pub async fn serve(
    stream: Transport,
    peer: SocketAddr,
    id: SessionId,
    shared: Arc<Shared>,
    edge: Arc<Edge>,
    pass: Pass,
) {
    let (rd, wr) = stream.split();
    let limits = shared.limits.get();
    // Half the queue for replies to this session's own requests, half for pushes.
    let link = Arc::new(SessionLink::new(
        id,
        peer,
        (limits.session_queue / 2).max(8),
        limits.session_queue,
    ));
    let decoder = Decoder::new(&edge);
    let d = decoder.dialect();
    link.set_kind(d.traits(), d.name());
    let conn = Arc::new(Conn {
        pass,
        ctxs: Mutex::new(VecDeque::new()),
        dialect: AtomicU8::new(d.to_u8()),
    });
    if !shared
        .hub
        .send(HubMsg::Input(Input::Open(link.clone())))
        .await
    {
        return;
    }
    let writer = spawn_writer(wr, link.clone(), conn.clone(), shared.clone());
    read_loop(rd, &link, &conn, &shared, decoder, edge.listen).await;
    // The hub stops routing to us and closes the outbox after our last
    // request's reply; the writer finishes what is queued, then stops.
    if !shared.hub.send(HubMsg::Input(Input::Close { id })).await {
        link.outbox.close();
    }
    let kill = link.kill.clone();
    drop(link);
    let mut writer = writer;
    tokio::select! {
        _ = &mut writer => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            kill.cancel();
            let _ = writer.await;
        }
    }
}

/// Not async, so the writer's future is never part of the reader's: every
/// byte of a session's futures is paid for by every idle connection.
fn spawn_writer(
    wr: WriteHalf,
    link: Arc<SessionLink>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(write_loop(wr, link, conn, shared))
}

/// Token bucket: `rate` requests a second, bursts up to `burst`.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Take a token, or say how long until one is there.
    fn take(&mut self) -> Option<Duration> {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Queue an item on our own writer, bypassing the hub (stream-level errors,
/// written just before we close).
fn say(link: &SessionLink, event: Event) {
    let _ = link.outbox.push(Out {
        ticket: 0,
        item: OutItem::Event(Arc::new(event)),
    });
}

fn stream_error(link: &SessionLink, code: ErrorCode, message: String) {
    say(link, Event::Error(ChatError::new(code, message)));
}

async fn read_loop(
    mut rd: ReadHalf,
    link: &Arc<SessionLink>,
    conn: &Conn,
    shared: &Shared,
    mut decoder: Decoder,
    listen: Listen,
) {
    let mut limits = shared.limits.get();
    let mut framer = Framer::new(listen.framing(), limits.max_frame);
    let mut bucket = Bucket::new(limits.rate_limit, limits.rate_burst);
    let mut warned_at: Option<Instant> = None;
    let mut incoming = Vec::new();
    if let Some(hello) = decoder.greeting() {
        if !hand_over(hello, link, conn, shared).await {
            return;
        }
    }
    loop {
        // Settings may have been reloaded (SIGHUP).
        limits = shared.limits.get();
        bucket.rate = limits.rate_limit;
        bucket.burst = limits.rate_burst;
        let read = tokio::select! {
            _ = link.kill.cancelled() => return,
            r = rd.read_into(&mut framer) => r,
        };
        match read {
            Ok(Read::Data(_)) => link.heard(),
            Ok(Read::Refused(why)) => {
                stream_error(link, ErrorCode::BadRequest, why.into());
                return;
            }
            Ok(Read::Closed) | Err(_) => return,
        }
        loop {
            let frame = match framer.next_value() {
                Ok(None) => break,
                Ok(Some(v)) => v,
                Err(FrameError::TooLarge) => {
                    stream_error(
                        link,
                        ErrorCode::TooLarge,
                        format!("a request may be at most {} bytes", limits.max_frame),
                    );
                    return;
                }
            };
            // Every value a client sends counts, even one its dialect drops.
            if let Some(wait) = bucket.take() {
                if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warned_at = Some(Instant::now());
                    stream_error(
                        link,
                        ErrorCode::RateLimited,
                        "too many requests; the server is reading more slowly".into(),
                    );
                }
                let throttle = Box::pin(tokio::time::sleep(wait));
                tokio::select! {
                    _ = link.kill.cancelled() => return,
                    _ = throttle => {}
                }
                bucket.take();
            }
            if let Err(e) = decoder.decode(frame, Instant::now(), &mut incoming) {
                say(link, Event::Error(e));
                // In a stream we no longer know where the next value
                // starts; a WebSocket message is one value, the next is whole.
                if listen.framing() == crate::framing::Framing::Messages {
                    continue;
                }
                return;
            }
            for one in incoming.drain(..) {
                if !hand_over(one, link, conn, shared).await {
                    return;
                }
            }
        }
        framer.shrink();
    }
}

/// Hand one decoded request to the hub (its reply's context to the
/// writer). False when the hub is gone.
async fn hand_over(incoming: Incoming, link: &SessionLink, conn: &Conn, shared: &Shared) -> bool {
    let d = incoming.ctx().dialect();
    if d != conn.dialect() {
        // The dialect a login is made in decides what the hub attaches.
        conn.dialect.store(d.to_u8(), Ordering::Relaxed);
        link.set_kind(d.traits(), d.name());
    }
    conn.expect_reply(incoming.ctx().clone());
    match try_dispatch(incoming, link, shared) {
        Dispatch::Done(sent) => sent,
        // Boxed: waiting is rare, and every byte of this loop's
        // future is paid for by every idle connection.
        Dispatch::Wait(incoming) => Box::pin(dispatch(incoming, link, shared)).await,
        Dispatch::Send(msg) => Box::pin(shared.hub.send(msg)).await,
    }
}

/// Hand one decoded value to the hub. False when the hub is gone.
enum Dispatch {
    /// Handed over (or the hub is gone: false).
    Done(bool),
    /// Needs to wait for room in the window, or for password hashing.
    Wait(Incoming),
    /// Has its room; needs to wait for room in the hub's queue.
    Send(HubMsg),
}

/// Hand one decoded value to the hub if that needs no waiting: the common
/// case, with no future to keep.
fn try_dispatch(incoming: Incoming, link: &SessionLink, shared: &Shared) -> Dispatch {
    if !matches!(incoming, Incoming::Command(..) | Incoming::Invalid(..)) {
        return Dispatch::Wait(incoming);
    }
    // Every value gets exactly one reply item; it needs room.
    match link.window.try_acquire() {
        Ok(permit) => permit.forget(),
        Err(tokio::sync::TryAcquireError::Closed) => return Dispatch::Done(false),
        Err(tokio::sync::TryAcquireError::NoPermits) => return Dispatch::Wait(incoming),
    }
    let msg = match plain(incoming, link.id) {
        Ok(msg) => msg,
        Err(_) => return Dispatch::Done(false),
    };
    match shared.hub.try_send(msg) {
        TrySend::Sent => Dispatch::Done(true),
        TrySend::Closed => Dispatch::Done(false),
        TrySend::Full(msg) => Dispatch::Send(msg),
    }
}

/// The hub message for a request that needs no password work.
fn plain(incoming: Incoming, id: SessionId) -> Result<HubMsg, Incoming> {
    match incoming {
        Incoming::Command(_, cmd) => Ok(HubMsg::Input(Input::Request { id, cmd })),
        Incoming::Invalid(_, e) => Ok(HubMsg::Input(Input::Echo { id, result: Err(e) })),
        other => Err(other),
    }
}

/// Hand one decoded value to the hub, waiting for room as needed. False
/// when the hub is gone.
async fn dispatch(incoming: Incoming, link: &SessionLink, shared: &Shared) -> bool {
    match link.window.acquire().await {
        Ok(permit) => permit.forget(),
        Err(_) => return false,
    }
    let msg = match plain(incoming, link.id) {
        Ok(msg) => msg,
        Err(other) => match with_password(other, link, shared).await {
            Some(msg) => msg,
            None => return false,
        },
    };
    shared.hub.send(msg).await
}
