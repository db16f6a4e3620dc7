//! One client connection: a reader task and a writer task.
//!
//! The reader splits the byte stream into values (`framing`), decodes each
//! in its dialect (`dialect`), hashes or checks passwords on the blocking
//! pool (`auth`), and sends requests to the hub one at a time, so replies
//! come back in request order. It throttles a session that sends faster than
//! its rate limit by reading more slowly.
//!
//! The writer takes the items the hub queues for the session, waits until
//! each is durable, encodes it in the session's dialect and writes it: one
//! JSON value per write. On login it replays the user's pending messages
//! page by page before anything newer.
//!
//! A session never touches the store; everything goes through the hub.

use crate::api::{ChatError, Command, ErrorCode, Event, Reply};
use crate::auth::Passwords;
use crate::config::{Limits, Live};
use crate::dialect::{self, Dialect, Frames, Incoming, ReqCtx};
use crate::framing::{FrameError, JsonStream};
use crate::hub::{HubHandle, HubMsg, Out, OutItem, SessionId, SessionLink, REPLAY_PAGE};
use crate::ids::{NodeId, Stamp, Uid};
use crate::rules::{check_password, check_user_name};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

/// What every session needs from the server.
pub struct Shared {
    pub hub: HubHandle,
    pub limits: Live<Limits>,
    pub passwords: Passwords,
}

/// Serve one connection until either side closes it.
pub async fn serve(stream: TcpStream, peer: SocketAddr, id: SessionId, shared: Arc<Shared>) {
    let (rd, wr) = stream.into_split();
    let limits = shared.limits.get();
    let (tx, rx) = mpsc::channel(limits.session_queue);
    // Half the queue for replies to this session's own requests, half for pushes.
    let link = Arc::new(SessionLink::new(
        id,
        peer,
        (limits.session_queue / 2).max(8),
    ));
    if !shared
        .hub
        .send(HubMsg::Open(link.clone(), tx.clone()))
        .await
    {
        return;
    }
    let writer = tokio::spawn(write_loop(wr, rx, link.clone(), shared.clone()));
    read_loop(rd, &link, &tx, &shared).await;
    // The hub stops routing to us; the writer finishes what is queued and,
    // once the hub and we have dropped our senders, stops.
    shared.hub.send(HubMsg::Close { id }).await;
    drop(tx);
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
fn say(tx: &mpsc::Sender<Out>, event: Event) {
    let _ = tx.try_send(Out {
        ticket: 0,
        item: OutItem::Event(Arc::new(event)),
    });
}

fn stream_error(tx: &mpsc::Sender<Out>, code: ErrorCode, message: String) {
    say(tx, Event::Error(ChatError::new(code, message)));
}

async fn read_loop(
    rd: OwnedReadHalf,
    link: &Arc<SessionLink>,
    tx: &mpsc::Sender<Out>,
    shared: &Shared,
) {
    let mut limits = shared.limits.get();
    let mut framer = JsonStream::new(limits.max_frame);
    let mut bucket = Bucket::new(limits.rate_limit, limits.rate_burst);
    let mut last = Dialect::Native;
    let mut spoke_classic = false;
    let mut warned_at: Option<Instant> = None;
    loop {
        // Settings may have been reloaded (SIGHUP).
        limits = shared.limits.get();
        bucket.rate = limits.rate_limit;
        bucket.burst = limits.rate_burst;
        // The classic client never pings, so only native sessions time out;
        // TCP keepalive finds dead classic peers.
        let idle = limits.idle_timeout.filter(|_| !spoke_classic);
        let ready = tokio::select! {
            _ = link.kill.cancelled() => return,
            r = readable(&rd, idle) => r,
        };
        match ready {
            Ok(true) => {}
            Ok(false) => {
                stream_error(
                    tx,
                    ErrorCode::IdleTimeout,
                    "nothing received for too long; send \"ping\" to stay connected".into(),
                );
                return;
            }
            Err(_) => return,
        }
        {
            let mut buf = [0u8; 8192];
            match rd.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => framer.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
        loop {
            let incoming = match framer.next_value() {
                Ok(None) => break,
                Ok(Some(v)) => dialect::decode(v, last),
                Err(FrameError::TooLarge) => {
                    stream_error(
                        tx,
                        ErrorCode::TooLarge,
                        format!("a request may be at most {} bytes", limits.max_frame),
                    );
                    return;
                }
            };
            let incoming = match incoming {
                Ok(i) => i,
                Err(e) => {
                    // We no longer know where the next value starts.
                    say(tx, Event::Error(e));
                    return;
                }
            };
            if let Some(wait) = bucket.take() {
                if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warned_at = Some(Instant::now());
                    stream_error(
                        tx,
                        ErrorCode::RateLimited,
                        "too many requests; the server is reading more slowly".into(),
                    );
                }
                tokio::select! {
                    _ = link.kill.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                bucket.take();
            }
            let d = incoming_dialect(&incoming);
            if d != last || matches!(d, Dialect::Classic(_)) {
                last = d;
                spoke_classic |= matches!(d, Dialect::Classic(_));
                if link.dialect() != d {
                    link.set_dialect(d);
                }
            }
            if !dispatch(incoming, link, shared).await {
                return;
            }
        }
        framer.shrink();
    }
}

/// Wait until the socket has data; Ok(false) on idle timeout.
async fn readable(rd: &OwnedReadHalf, idle: Option<Duration>) -> std::io::Result<bool> {
    match idle {
        Some(t) => match tokio::time::timeout(t, rd.readable()).await {
            Ok(r) => r.map(|_| true),
            Err(_) => Ok(false),
        },
        None => rd.readable().await.map(|_| true),
    }
}

fn incoming_dialect(i: &Incoming) -> Dialect {
    match i {
        Incoming::Command(c, _)
        | Incoming::Invalid(c, _)
        | Incoming::Register { ctx: c, .. }
        | Incoming::Login { ctx: c, .. }
        | Incoming::Passwd { ctx: c, .. } => c.dialect(),
    }
}

/// Hand one decoded value to the hub. False when the hub is gone.
async fn dispatch(incoming: Incoming, link: &SessionLink, shared: &Shared) -> bool {
    // Every value gets exactly one reply item; wait for room for it.
    match link.window.acquire().await {
        Ok(permit) => permit.forget(),
        Err(_) => return false,
    }
    let hub = &shared.hub;
    let id = link.id;
    let echo = |ctx: ReqCtx, e: ChatError| HubMsg::Echo {
        id,
        ctx,
        result: Err(e),
    };
    let msg = match incoming {
        Incoming::Command(ctx, cmd) => HubMsg::Request { id, ctx, cmd },
        Incoming::Invalid(ctx, e) => echo(ctx, e),
        Incoming::Register {
            ctx,
            name,
            password,
        } => {
            let limits = shared.limits.get();
            let checked =
                check_user_name(&name, &limits).and_then(|_| check_password(&password, &limits));
            match checked {
                Err(e) => echo(ctx, e),
                Ok(()) => match shared.passwords.hash(password).await {
                    Ok(hash) => HubMsg::Request {
                        id,
                        ctx,
                        cmd: Command::Register { name, hash },
                    },
                    Err(e) => echo(ctx, e),
                },
            }
        }
        Incoming::Login { ctx, who, password } => {
            let Some(cred) = credentials(hub, id, Some(who)).await else {
                return false;
            };
            let hash = cred.as_ref().map(|(_, h)| h.clone());
            let ok = password.len() <= shared.limits.get().max_password_bytes
                && shared.passwords.verify(password, hash).await;
            match cred {
                Some((user, hash)) if ok => HubMsg::Login {
                    id,
                    ctx,
                    user,
                    hash,
                },
                _ => echo(
                    ctx,
                    ChatError::new(ErrorCode::InvalidCredentials, "id or password is invalid"),
                ),
            }
        }
        Incoming::Passwd { ctx, old, new } => {
            let Some(cred) = credentials(hub, id, None).await else {
                return false;
            };
            match cred {
                None => echo(ctx, ChatError::new(ErrorCode::NotLoggedIn, "log in first")),
                Some((_, old_hash)) => {
                    if let Err(e) = check_password(&new, &shared.limits.get()) {
                        echo(ctx, e)
                    } else if !shared.passwords.verify(old, Some(old_hash.clone())).await {
                        echo(
                            ctx,
                            ChatError::new(
                                ErrorCode::InvalidCredentials,
                                "old password is invalid",
                            ),
                        )
                    } else {
                        match shared.passwords.hash(new).await {
                            Ok(new_hash) => HubMsg::Request {
                                id,
                                ctx,
                                cmd: Command::Passwd { old_hash, new_hash },
                            },
                            Err(e) => echo(ctx, e),
                        }
                    }
                }
            }
        }
    };
    hub.send(msg).await
}

/// Ask the hub for a login candidate's id and hash. None: the hub is gone.
async fn credentials(
    hub: &HubHandle,
    id: SessionId,
    who: Option<dialect::Who>,
) -> Option<Option<(crate::ids::Uid, String)>> {
    let (tx, rx) = oneshot::channel();
    if !hub.send(HubMsg::Credentials { id, who, reply: tx }).await {
        return None;
    }
    rx.await.ok()
}

struct Writer {
    wr: OwnedWriteHalf,
    link: Arc<SessionLink>,
    shared: Arc<Shared>,
    durable: watch::Receiver<crate::store::Durable>,
    frames: Frames,
    last_write: Option<Instant>,
    /// Newest message id replayed, per origin: live copies of these are skipped.
    replayed: HashMap<NodeId, Stamp>,
    /// Messages written to a classic client; they count as delivered.
    written: Vec<Stamp>,
    /// Who is logged in, as the replies we wrote said; written messages are theirs.
    user: Option<Uid>,
    messages_out: metrics::Counter,
    latency: metrics::Histogram,
}

/// Why writing stopped.
enum Stop {
    /// Socket gone or session killed.
    Gone,
    /// We said goodbye.
    Bye,
}

async fn write_loop(
    wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Out>,
    link: Arc<SessionLink>,
    shared: Arc<Shared>,
) {
    let mut w = Writer {
        wr,
        durable: shared.hub.durable(),
        link,
        shared,
        frames: Frames::default(),
        last_write: None,
        replayed: HashMap::new(),
        written: Vec::new(),
        user: None,
        messages_out: metrics::counter!("chatd_messages_out_total"),
        latency: metrics::histogram!("chatd_delivery_latency_seconds"),
    };
    let queue_depth = metrics::histogram!("chatd_session_queue_depth");
    loop {
        let out = tokio::select! {
            _ = w.link.kill.cancelled() => break,
            o = rx.recv() => match o {
                Some(o) => o,
                None => break,
            },
        };
        queue_depth.record(rx.len() as f64);
        if w.handle(out).await.is_err() {
            break;
        }
        if !w.written.is_empty() && (rx.is_empty() || w.written.len() >= 256) {
            w.report_written().await;
        }
    }
    w.report_written().await;
    let _ = w.wr.shutdown().await;
    w.link.kill.cancel();
}

impl Writer {
    async fn wait_durable(&mut self, ticket: u64) -> Result<(), Stop> {
        while self.durable.borrow().ticket < ticket {
            tokio::select! {
                _ = self.link.kill.cancelled() => return Err(Stop::Gone),
                r = self.durable.changed() => if r.is_err() { return Err(Stop::Gone) },
            }
        }
        Ok(())
    }

    async fn handle(&mut self, out: Out) -> Result<(), Stop> {
        self.wait_durable(out.ticket).await?;
        match out.item {
            OutItem::Reply(b) => {
                self.link.window.add_permits(1);
                let (ctx, result) = *b;
                match &result {
                    Ok(Reply::LoggedIn { user, .. }) => self.switch_user(Some(user.id)).await,
                    Ok(Reply::LoggedOut) => self.switch_user(None).await,
                    _ => {}
                }
                self.frames.clear();
                dialect::encode_reply(&ctx, &result, &mut self.frames);
                self.write_frames().await
            }
            OutItem::Event(ev) => {
                if let Event::Message(v) = &*ev {
                    if self
                        .replayed
                        .get(&v.msg.origin())
                        .is_some_and(|seen| v.msg.id <= *seen)
                    {
                        return Ok(());
                    }
                }
                self.event(&ev).await
            }
            OutItem::Replay => self.replay().await,
            OutItem::Bye(code) => {
                self.event(&Event::Bye { reason: code }).await?;
                Err(Stop::Bye)
            }
        }
    }

    async fn event(&mut self, ev: &Event) -> Result<(), Stop> {
        let dialect = self.link.dialect();
        self.frames.clear();
        dialect::encode_event(dialect, ev, &mut self.frames);
        self.write_frames().await?;
        if let Event::Message(v) = ev {
            self.messages_out.increment(1);
            let age = crate::ids::wall_millis().saturating_sub(v.msg.id.millis());
            self.latency.record(age as f64 / 1000.0);
            if matches!(dialect, Dialect::Classic(_)) {
                self.written.push(v.msg.id);
            }
        }
        Ok(())
    }

    /// Deliver everything pending, oldest first, before anything newer.
    async fn replay(&mut self) -> Result<(), Stop> {
        let mut after = None;
        loop {
            let (tx, rx) = oneshot::channel();
            let asked = self
                .shared
                .hub
                .send(HubMsg::Replay {
                    id: self.link.id,
                    after,
                    reply: tx,
                })
                .await;
            if !asked {
                return Err(Stop::Gone);
            }
            let Ok((ticket, page)) = rx.await else {
                return Err(Stop::Gone);
            };
            self.wait_durable(ticket).await?;
            let full = page.len() == REPLAY_PAGE;
            for v in page {
                after = Some(v.msg.id);
                let seen = self.replayed.entry(v.msg.origin()).or_default();
                *seen = (*seen).max(v.msg.id);
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

    async fn write_frames(&mut self) -> Result<(), Stop> {
        let classic = matches!(self.link.dialect(), Dialect::Classic(_));
        let frames = std::mem::take(&mut self.frames);
        let mut result = Ok(());
        for frame in frames.iter() {
            if classic {
                // The classic client reads one value per read: leave it time.
                if let Some(last) = self.last_write {
                    let next = last + self.shared.limits.get().classic_gap;
                    if next > Instant::now() {
                        tokio::select! {
                            _ = self.link.kill.cancelled() => { result = Err(Stop::Gone); break; }
                            _ = tokio::time::sleep_until(next.into()) => {}
                        }
                    }
                }
            }
            let written = tokio::select! {
                _ = self.link.kill.cancelled() => Err(()),
                r = self.wr.write_all(frame) => r.map_err(|_| ()),
            };
            if written.is_err() {
                result = Err(Stop::Gone);
                break;
            }
            self.last_write = Some(Instant::now());
        }
        self.frames = frames;
        self.frames.shrink();
        result
    }

    async fn switch_user(&mut self, user: Option<Uid>) {
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
        self.shared.hub.send(HubMsg::Delivered { user, ids }).await;
    }
}
