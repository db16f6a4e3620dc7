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

use crate::admission::Pass;
use crate::api::{ChatError, Command, ErrorCode, Event, Reply};
use crate::auth::{Passwords, Verdict};
use crate::config::{Limits, Live};
use crate::dialect::{self, Decoder, Dialect, Edge, Frames, Incoming, Listen, ReqCtx, Who, Writes};
use crate::framing::{FrameError, Framer};
use crate::hub::{HubHandle, HubMsg, Out, OutItem, SessionId, SessionLink, TrySend, REPLAY_PAGE};
use crate::ids::{NodeId, Stamp, Uid};
use crate::rules::{check_password, check_user_name};
use crate::throttle::{Account, Attempt, LoginThrottle};
use crate::transport::{Read, ReadHalf, Transport, WriteHalf};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
    if !shared.hub.send(HubMsg::Open(link.clone())).await {
        return;
    }
    let writer = spawn_writer(wr, link.clone(), conn.clone(), shared.clone());
    read_loop(rd, &link, &conn, &shared, decoder, edge.listen).await;
    // The hub stops routing to us and closes the outbox after our last
    // request's reply; the writer finishes what is queued, then stops.
    if !shared.hub.send(HubMsg::Close { id }).await {
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
        Incoming::Command(_, cmd) => Ok(HubMsg::Request { id, cmd }),
        Incoming::Invalid(_, e) => Ok(HubMsg::Echo { id, result: Err(e) }),
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

async fn with_password(incoming: Incoming, link: &SessionLink, shared: &Shared) -> Option<HubMsg> {
    let hub = &shared.hub;
    let id = link.id;
    let echo = |e: ChatError| HubMsg::Echo { id, result: Err(e) };
    let msg = match incoming {
        // `dispatch` hands these to `plain` first.
        other @ (Incoming::Command(..) | Incoming::Invalid(..)) => plain(other, id).ok()?,
        Incoming::Register {
            name,
            password,
            id: chosen,
            ..
        } => {
            let limits = shared.limits.get();
            let checked = check_user_name(&name, &limits)
                .and_then(|_| check_password(&password, &limits))
                .and_then(|_| shared.may_register(link.peer));
            match checked {
                Err(e) => echo(e),
                Ok(()) => match shared.passwords.hash(password).await {
                    Ok(hash) => HubMsg::Request {
                        id,
                        cmd: Command::Register {
                            name,
                            hash,
                            id: chosen,
                        },
                    },
                    Err(e) => echo(e),
                },
            }
        }
        Incoming::Login {
            who,
            password,
            tell_unknown,
            ..
        } => {
            // No account has a name this long: nothing to look up or keep.
            let max_name = shared.limits.get().max_name_chars + 12;
            if matches!(&who, Who::Name(n) if n.chars().count() > max_name) {
                return Some(echo(ChatError::new(
                    ErrorCode::InvalidCredentials,
                    "id or password is invalid",
                )));
            }
            let cred = credentials(hub, id, Some(who.clone())).await?;
            // Guesses at accounts that do not exist count against the name.
            let account = match (&cred, who) {
                (Some((u, _)), _) => Account::User(*u),
                (None, Who::Id(u)) => Account::User(u),
                (None, Who::Name(n)) => Account::Name(n.to_lowercase()),
            };
            let attempt = match shared.begin_attempt(account, link.peer) {
                Ok(a) => a,
                Err(e) => return Some(echo(e)),
            };
            let hash = cred.as_ref().map(|(_, h)| h.clone());
            let verdict = if password.len() <= shared.limits.get().max_password_bytes {
                shared.passwords.check(password, hash).await
            } else {
                Verdict::Wrong
            };
            match (shared.end_attempt(attempt, verdict, link.peer), cred) {
                (Ok(()), Some((user, hash))) => HubMsg::Login { id, user, hash },
                (Err(e), _) if e.code == ErrorCode::Busy => echo(e),
                (_, None) if tell_unknown => echo(ChatError::new(
                    ErrorCode::UnknownUser,
                    "no such user; register first",
                )),
                (Err(e), _) => echo(e),
                (Ok(()), None) => echo(ChatError::new(
                    ErrorCode::InvalidCredentials,
                    "id or password is invalid",
                )),
            }
        }
        // The secret is hashed here, off the hub.
        Incoming::Resume { token, .. } => match crate::tokens::parse(&token) {
            Some(token) => HubMsg::Resume { id, token },
            None => echo(ChatError::new(
                ErrorCode::InvalidToken,
                "this is not a session token; log in with the password",
            )),
        },
        Incoming::Passwd { old, new, .. } => {
            let cred = credentials(hub, id, None).await?;
            match cred {
                None => echo(ChatError::new(ErrorCode::NotLoggedIn, "log in first")),
                Some((me, old_hash)) => {
                    let ready = check_password(&new, &shared.limits.get())
                        .and_then(|_| match hub.storage_full() {
                            true => Err(storage_full()),
                            false => Ok(()),
                        })
                        .and_then(|_| shared.begin_attempt(Account::User(me), link.peer));
                    match ready {
                        Err(e) => echo(e),
                        Ok(attempt) => {
                            let v = shared.passwords.check(old, Some(old_hash.clone())).await;
                            match shared.end_attempt(attempt, v, link.peer) {
                                Err(e) if e.code == ErrorCode::InvalidCredentials => {
                                    echo(ChatError::new(
                                        ErrorCode::InvalidCredentials,
                                        "old password is invalid",
                                    ))
                                }
                                Err(e) => echo(e),
                                Ok(()) => match shared.passwords.hash(new).await {
                                    Ok(new_hash) => HubMsg::Request {
                                        id,
                                        cmd: Command::Passwd { old_hash, new_hash },
                                    },
                                    Err(e) => echo(e),
                                },
                            }
                        }
                    }
                }
            }
        }
    };
    Some(msg)
}

/// Ask the hub for a login candidate's id and hash. None: the hub is gone.
async fn credentials(
    hub: &HubHandle,
    id: SessionId,
    who: Option<dialect::Who>,
) -> Option<Option<(crate::ids::Uid, String)>> {
    hub.ask(|reply| HubMsg::Credentials { id, who, reply })
        .await
}

struct Writer {
    wr: WriteHalf,
    link: Arc<SessionLink>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    durable: watch::Receiver<crate::hub::Durable>,
    /// Encoded values not written yet.
    frames: Frames,
    last_write: Option<Instant>,
    /// Newest message id replayed, per origin: live copies of these are
    /// skipped. (A few origins at most: a list is smaller than a map.)
    replayed: Vec<(NodeId, Stamp)>,
    /// Messages written to a client that cannot acknowledge (classic,
    /// sponge, Go); they count as delivered.
    written: Vec<Stamp>,
    /// Who is logged in, as the replies we wrote said; written messages are theirs.
    user: Option<Uid>,
}

/// Why writing stopped.
enum Stop {
    /// Socket gone or session killed.
    Gone,
    /// We said goodbye.
    Bye,
}

async fn write_loop(wr: WriteHalf, link: Arc<SessionLink>, conn: Arc<Conn>, shared: Arc<Shared>) {
    let mut w = Writer {
        wr,
        durable: shared.hub.durable(),
        link,
        conn,
        shared,
        frames: Frames::default(),
        last_write: None,
        replayed: Vec::new(),
        written: Vec::new(),
        user: None,
    };
    // Everything queued is taken at once and goes out in as few writes as
    // the batch allows.
    let mut batch = VecDeque::new();
    'run: loop {
        let more = tokio::select! {
            _ = w.link.kill.cancelled() => break,
            more = w.link.outbox.take_all(&mut batch) => more,
        };
        if !more {
            break;
        }
        w.shared.queue_depth.record(batch.len() as f64);
        while let Some(out) = batch.pop_front() {
            if w.handle(out).await.is_err() {
                break 'run;
            }
        }
        if w.flush().await.is_err() {
            break;
        }
        if !w.written.is_empty() && (w.link.outbox.is_empty() || w.written.len() >= 256) {
            w.report_written().await;
        }
        if w.link.outbox.is_empty() {
            // Most connections are idle most of the time: hold no buffers
            // while waiting. Allocating them again costs far less than the
            // write that needs them.
            batch = VecDeque::new();
            w.frames = Frames::default();
        }
    }
    let _ = w.flush().await;
    w.report_written().await;
    w.wr.shutdown().await;
    w.link.kill.cancel();
}

impl Writer {
    async fn wait_durable(&mut self, ticket: u64) -> Result<(), Stop> {
        if self.durable.borrow().ticket >= ticket {
            return Ok(());
        }
        // What is ready should not wait for what is not.
        self.flush().await?;
        // Boxed, like every wait that is not the common case: the writer's
        // future is paid for by every idle connection.
        Box::pin(async {
            while self.durable.borrow().ticket < ticket {
                tokio::select! {
                    _ = self.link.kill.cancelled() => return Err(Stop::Gone),
                    r = self.durable.changed() => if r.is_err() { return Err(Stop::Gone) },
                }
            }
            Ok(())
        })
        .await
    }

    async fn handle(&mut self, out: Out) -> Result<(), Stop> {
        self.wait_durable(out.ticket).await?;
        match out.item {
            OutItem::Reply(mut reply) => {
                self.link.window.add_permits(1);
                let ctx = self.conn.reply_ctx();
                let switch = match &*reply {
                    Ok(Reply::LoggedIn { user, .. }) => Some(Some(user.id)),
                    Ok(Reply::LoggedOut) => Some(None),
                    _ => None,
                };
                let mut delivered = Vec::new();
                if let Ok(Reply::Pending { messages, .. }) = &mut *reply {
                    // Live copies already written are not repeated.
                    messages.retain(|m| !self.written.contains(&m.msg.id));
                    delivered.extend(messages.iter().map(|m| m.msg.id));
                }
                dialect::encode_reply(&ctx, &reply, &mut self.frames);
                let fatal = reply.is_err() && ctx.fatal_on_error();
                drop(reply);
                if let Some(user) = switch {
                    self.switch_user(user).await;
                }
                self.write_frames().await?;
                if fatal {
                    return Err(Stop::Bye);
                }
                if ctx.dialect().written_is_delivered(false) && !delivered.is_empty() {
                    self.written.extend(delivered);
                    // Before the client can ask again.
                    self.report_written().await;
                }
                Ok(())
            }
            OutItem::Event(ev) => {
                if let Event::Message(v) = &*ev {
                    let origin = v.msg.origin();
                    if self
                        .replayed
                        .iter()
                        .any(|(o, seen)| *o == origin && v.msg.id <= *seen)
                    {
                        return Ok(());
                    }
                }
                self.event(&ev).await
            }
            // Boxed to keep every connection's writer small (see dispatch).
            OutItem::Replay => Box::pin(self.replay()).await,
            OutItem::Bye(code) => {
                self.event(&Event::Bye { reason: code }).await?;
                Err(Stop::Bye)
            }
        }
    }

    async fn event(&mut self, ev: &Event) -> Result<(), Stop> {
        let dialect = self.conn.dialect();
        dialect::encode_event(dialect, ev, &mut self.frames);
        self.write_frames().await?;
        if let Event::Message(v) = ev {
            self.shared.messages_out.increment(1);
            let age = crate::ids::wall_millis().saturating_sub(v.msg.id.millis());
            self.shared.latency.record(age as f64 / 1000.0);
            let direct = matches!(v.msg.to, crate::model::Target::User(_));
            if dialect.written_is_delivered(direct) {
                self.written.push(v.msg.id);
            }
        }
        Ok(())
    }

    /// Deliver everything pending, oldest first, before anything newer.
    async fn replay(&mut self) -> Result<(), Stop> {
        // What this session already wrote must count before the hub looks.
        self.report_written().await;
        let mut after = None;
        loop {
            self.flush().await?;
            let id = self.link.id;
            let asked = self
                .shared
                .hub
                .ask(|reply| HubMsg::Replay { id, after, reply });
            let Some((ticket, page)) = asked.await else {
                return Err(Stop::Gone);
            };
            self.wait_durable(ticket).await?;
            let full = page.len() == REPLAY_PAGE;
            for v in page {
                after = Some(v.msg.id);
                let origin = v.msg.origin();
                match self.replayed.iter_mut().find(|(o, _)| *o == origin) {
                    Some((_, seen)) => *seen = (*seen).max(v.msg.id),
                    None => self.replayed.push((origin, v.msg.id)),
                }
                self.event(&Event::Message(v)).await?;
                if self.written.len() >= 256 {
                    self.report_written().await;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Write what was encoded: for chatd's protocol once enough has
    /// gathered (or at `flush`); for the seed clients now, one value per
    /// write, paced where they need it.
    async fn write_frames(&mut self) -> Result<(), Stop> {
        match self.conn.dialect().writes() {
            Writes::Gathered => {
                if self.frames.bytes() >= WRITE_BATCH {
                    self.flush().await?;
                }
                Ok(())
            }
            Writes::OneEach { paced } => Box::pin(self.write_each(paced)).await,
        }
    }

    /// One value per write, paced if asked.
    async fn write_each(&mut self, paced: bool) -> Result<(), Stop> {
        let frames = std::mem::take(&mut self.frames);
        let mut result = Ok(());
        for frame in frames.iter() {
            // The client reads one value per read: leave it time.
            if let Some(last) = self.last_write.filter(|_| paced) {
                let next = last + self.shared.limits.get().classic_gap;
                if next > Instant::now() {
                    let pause = Box::pin(tokio::time::sleep_until(next.into()));
                    tokio::select! {
                        _ = self.link.kill.cancelled() => { result = Err(Stop::Gone); break; }
                        _ = pause => {}
                    }
                }
            }
            if let Err(e) = self.write(frame, std::iter::once(frame)).await {
                result = Err(e);
                break;
            }
            self.last_write = Some(Instant::now());
        }
        self.frames = frames;
        self.frames.clear();
        result
    }

    /// Write everything encoded and not written yet: in one write on a
    /// byte stream, a message per value over WebSocket.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.frames.is_empty() {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.frames);
        let result = self.write(frames.bytes_all(), frames.iter()).await;
        self.frames = frames;
        self.frames.clear();
        result
    }

    /// Write `bytes`, which are `values` back to back.
    async fn write<'a>(
        &mut self,
        bytes: &'a [u8],
        values: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), Stop> {
        // Usually the socket takes it all at once.
        let done = match self.wr.try_write(bytes) {
            Some(Ok(n)) if n == bytes.len() => return Ok(()),
            Some(Ok(n)) => n,
            Some(Err(_)) => return Err(Stop::Gone),
            None => 0,
        };
        let (wr, kill) = (&mut self.wr, &self.link.kill);
        Box::pin(async move {
            tokio::select! {
                _ = kill.cancelled() => Err(Stop::Gone),
                r = wr.write(&bytes[done..], values) => r.map_err(|_| Stop::Gone),
            }
        })
        .await
    }

    async fn switch_user(&mut self, user: Option<Uid>) {
        self.conn.pass.set_logged_in(user.is_some());
        self.report_written().await;
        self.user = user;
        self.replayed.clear();
    }

    async fn report_written(&mut self) {
        let Some(user) = self.user else {
            self.written.clear();
            return;
        };
        if self.written.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.written);
        if let TrySend::Full(msg) = self.shared.hub.try_send(HubMsg::Delivered { user, ids }) {
            Box::pin(self.shared.hub.send(msg)).await;
        }
    }
}
