//! The hub's driver: the thread, the channel, the timers and the reply
//! channels around the core. It reads the clock, hands the core its inputs
//! in batches, and carries out what the core returns: pushes onto outboxes,
//! closed connections, presence for the mesh, the applied position. It
//! decides nothing about chat.

use super::*;
use crate::ids::wall_millis;
use tokio::sync::{mpsc, oneshot, watch};

/// How long shutdown waits for sessions to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Most messages taken from the channel for one batch.
const BATCH_MAX: usize = 512;

fn now() -> Now {
    Now {
        at: Instant::now(),
        wall_ms: wall_millis(),
    }
}

/// A storage failure leaves the hub unable to keep its promises; stop and
/// let the supervisor restart chatd from the log.
fn fatal(e: &StoreError) -> ! {
    tracing::error!(error = %e, "storage failure; exiting");
    std::process::exit(1);
}

struct Driver {
    core: Hub,
    applied_tx: watch::Sender<Position>,
    presence_tx: tokio::sync::broadcast::Sender<PresenceChange>,
    /// Replay pages asked for in this batch, answered after it is logged.
    replays: Vec<(SessionId, Option<Stamp>, PageReply)>,
    shutting_down: Option<(Instant, oneshot::Sender<()>)>,
    halted: Option<std::sync::mpsc::SyncSender<()>>,
}

impl Hub {
    /// Bring the tables up to date with the log and start the hub thread.
    /// `lobby`: the lobby's name, when this node serves room-style clients
    /// (it makes sure the lobby exists).
    pub fn spawn(
        store: Store,
        node: NodeId,
        limits: Live<Limits>,
        lobby: Option<String>,
    ) -> Result<HubHandle, StoreError> {
        let started = Instant::now();
        let durable = store.durable();
        let logs = store.log_reader();
        let snapshots = store.snapshot_reader();
        let core = Hub::new(store, node, limits, lobby, now())?;
        tracing::debug!(elapsed = ?started.elapsed(), "the hub is up to date with the log");
        let (applied_tx, applied) = watch::channel(core.applied().clone());
        let (presence_tx, _) = tokio::sync::broadcast::channel(4096);
        let storage_full = core.storage_full_flag();
        let driver = Driver {
            core,
            applied_tx,
            presence_tx: presence_tx.clone(),
            replays: Vec::new(),
            shutting_down: None,
            halted: None,
        };
        let (tx, rx) = mpsc::channel(8192);
        std::thread::Builder::new()
            .name("chatd-hub".into())
            .spawn(move || {
                // The hub blocks on sled, so it has a thread of its own.
                crate::os::busy_thread();
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt.block_on(driver.run(rx)),
                    Err(e) => tracing::error!(error = %e, "cannot start the hub runtime"),
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the hub thread: {e}")))?;
        Ok(HubHandle {
            tx,
            durable,
            applied,
            presence: presence_tx,
            logs,
            snapshots,
            node,
            storage_full,
        })
    }
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<HubMsg>) {
        self.core.start(now());
        self.finish();
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut quiet = crate::os::Quiet::new(Instant::now());
        loop {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, BATCH_MAX) => if n == 0 { break },
                _ = tick.tick() => {}
            }
            metrics::gauge!("chatd_hub_queue_depth").set(rx.len() as f64);
            let t = now();
            if !batch.is_empty() {
                quiet.worked(t.at);
            } else if quiet.poll(t.at) {
                crate::os::thread_quiet();
            }
            self.core.begin_batch(t);
            for msg in batch.drain(..) {
                self.dispatch(msg, t);
                if let Some(e) = self.core.failed() {
                    fatal(e);
                }
            }
            self.finish();
            if self.halted.is_some() {
                break;
            }
            if let Some((deadline, _)) = &self.shutting_down {
                if self.core.session_count() == 0 || Instant::now() >= *deadline {
                    break;
                }
            }
        }
        for link in self.core.links() {
            link.kill.cancel();
        }
        let done = self.shutting_down.take().map(|(_, d)| d);
        if let Err(e) = self.core.close() {
            tracing::error!(error = %e, "could not write the tables on shutdown (the log has everything)");
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
        if let Some(done) = self.halted.take() {
            let _ = done.send(());
        }
    }

    fn dispatch(&mut self, msg: HubMsg, t: Now) {
        let core = &mut self.core;
        match msg {
            HubMsg::Input(input) => core.handle(input, t),
            HubMsg::Paced { input, permit } => {
                core.handle(input, t);
                drop(permit);
            }
            HubMsg::Credentials { id, who, reply } => {
                let _ = reply.send(core.credentials(id, who));
            }
            HubMsg::Replay { id, after, reply } => self.replays.push((id, after, reply)),
            HubMsg::Shutdown { done } => {
                core.begin_shutdown();
                self.shutting_down = Some((t.at + SHUTDOWN_GRACE, done));
            }
            HubMsg::Halt { done } => self.halted = Some(done),
            HubMsg::LocalPresence { reply } => {
                let _ = reply.send(core.local_users());
            }
            HubMsg::Digest { reply } => {
                let _ = reply.send(core.digest());
            }
            HubMsg::Admin { req, reply } => {
                let _ = reply.send(core.admin(req));
            }
            HubMsg::Ping { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// End the core's batch and carry out what it returns: the replay pages
    /// (with the batch's ticket), then its actions and pushes, round after
    /// round while closing slow sessions makes more.
    fn finish(&mut self) {
        let mut batch = self.core.finish_batch(now());
        if let Some(e) = self.core.failed() {
            fatal(e);
        }
        if let Some(applied) = batch.applied.take() {
            self.applied_tx.send_replace(applied);
        }
        for (id, after, reply) in std::mem::take(&mut self.replays) {
            let page = self.core.replay_page(id, after);
            if let Some(e) = self.core.failed() {
                fatal(e);
            }
            let _ = reply.send((batch.ticket, page));
        }
        // Writers are woken once their items are durable, not before: woken
        // now, each would find its items not durable yet and wait again for
        // the commit, two wake-ups and two polls where one does.
        let mut wake = Vec::new();
        loop {
            self.carry_out(std::mem::take(&mut batch.actions));
            let mut overflow = Vec::new();
            for (id, item) in batch.out.drain(..) {
                let Some(link) = self.core.link(id) else {
                    continue;
                };
                let out = Out {
                    ticket: batch.ticket,
                    item,
                };
                match link.outbox.push_unwoken(out) {
                    Ok(()) => wake.push(link.clone()),
                    Err(_) => overflow.push(id),
                }
            }
            if overflow.is_empty() {
                break;
            }
            overflow.sort_unstable();
            overflow.dedup();
            batch = self.core.overflowed(&overflow);
        }
        if !wake.is_empty() {
            wake.sort_unstable_by_key(Arc::as_ptr);
            wake.dedup_by(|a, b| Arc::ptr_eq(a, b));
            let woken = move || wake.iter().for_each(|l| l.outbox.wake());
            self.core.store.when_durable(batch.ticket, Box::new(woken));
        }
        self.core.maintain();
        if let Some(e) = self.core.failed() {
            fatal(e);
        }
    }

    fn carry_out(&self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Say { link, out, or_cut } => {
                    if link.outbox.push(out).is_err() && or_cut {
                        link.kill.cancel();
                    }
                }
                Action::Cut(link) => link.kill.cancel(),
                Action::Release(link) => link.outbox.close(),
                Action::Presence(change) => {
                    let _ = self.presence_tx.send(change);
                }
            }
        }
    }
}
