//! A session's writer: takes the hub's items in order, waits until each is
//! durable, encodes it in the session's dialect and writes it, gathering
//! what it can into one write; replays what the session missed.

use super::*;

pub(super) struct Writer {
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
pub(super) enum Stop {
    /// Socket gone or session killed.
    Gone,
    /// We said goodbye.
    Bye,
}

pub(super) async fn write_loop(
    wr: WriteHalf,
    link: Arc<SessionLink>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
) {
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

    /// Write what was encoded: for chatd's protocol (and unpaced classic
    /// sessions) once enough has gathered (or at `flush`); for the other
    /// seed clients now, one value per write, paced where they need it.
    async fn write_frames(&mut self) -> Result<(), Stop> {
        let paced = !self.shared.limits.get().classic_gap.is_zero();
        match self.conn.dialect().writes(paced) {
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
        if let TrySend::Full(msg) = self
            .shared
            .hub
            .try_send(HubMsg::Input(Input::Delivered { user, ids }))
        {
            Box::pin(self.shared.hub.send(msg)).await;
        }
    }
}
