//! The outbound link to one peer: our own operations as they become
//! durable, presence, members, and relaying what the peer lacks of other
//! origins.

use super::*;

pub(super) async fn dial_loop(inner: Arc<Inner>, node: NodeId) {
    let mut delay = Duration::from_millis(100);
    let mut reported = false;
    loop {
        if inner.stop.is_cancelled() {
            return;
        }
        let info = match lock(&inner.members).info(node) {
            Some(info) => info.clone(),
            None => return,
        };
        let started = Instant::now();
        let result = outbound(&inner, &info).await;
        let was_up = lock(&inner.members).out_down(node);
        if inner.stop.is_cancelled() {
            return;
        }
        match result {
            Err(e) if was_up => tracing::warn!(node, error = %e, "link to member lost"),
            Err(e) if !reported => {
                tracing::info!(node, addr = %info.addr, error = %e, "cannot reach member");
                reported = true;
            }
            _ => {}
        }
        if was_up || started.elapsed() > Duration::from_secs(10) {
            delay = Duration::from_millis(100);
            reported = false;
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Dial a member and keep telling it everything, until the link fails.
pub(super) async fn outbound(inner: &Arc<Inner>, info: &MemberInfo) -> Result<(), String> {
    let conn = connect(&inner.endpoint, &info.addr).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    wire::write(
        &mut send,
        &Frame::Hello {
            version: wire::VERSION,
            node: inner.me.node,
            uuid: inner.me.uuid.clone(),
            addr: inner.me.addr.clone(),
            members: inner.member_list(),
            discovery: false,
            start: applied_vec(&inner.hub.logs().start()),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let (node, uuid, applied, members) = match read_timeout(&mut recv).await? {
        Frame::Welcome {
            node,
            uuid,
            applied,
            members,
            ..
        } => (node, uuid, applied, members),
        Frame::Refused { reason } => return Err(format!("refused: {reason}")),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    // The peer must be who we dialled, and its certificate must say so.
    if node != info.node || uuid != info.uuid {
        return Err(format!(
            "{} is now node {node} ({uuid}), not node {} ({})",
            info.addr, info.node, info.uuid
        ));
    }
    if tls::peer_uuid(&conn).as_deref() != Some(uuid.as_str()) {
        return Err("its certificate names another node".into());
    }
    for m in members {
        inner.add_member(m);
    }
    let position: Position = applied.iter().copied().collect();
    lock(&inner.members).out_up(node, position, crate::ids::wall_millis());
    lock(&inner.conns).insert(node, conn.clone());
    tracing::info!(node, addr = %info.addr, "link to member up");

    // What the peer tells us back on this link: how far it has applied.
    let (ack_tx, mut acks) = mpsc::channel::<Position>(16);
    let reader = tokio::spawn(async move {
        loop {
            match wire::read(&mut recv).await {
                Ok(Some(Frame::Applied { applied })) => {
                    if ack_tx.send(applied.into_iter().collect()).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    });
    let result = Sender::new(inner.clone(), node, applied.into_iter().collect())
        .run(&mut send, &mut acks)
        .await;
    reader.abort();
    {
        let mut conns = lock(&inner.conns);
        if conns
            .get(&node)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(&node);
        }
    }
    conn.close(0u32.into(), b"bye");
    result
}

/// The operations of a stretch a plan asked for, at most [`BATCH`] of them
/// (the rest go in later rounds).
pub(super) fn read_stretch(
    logs: &crate::store::LogReader,
    s: Stretch,
) -> Result<Vec<crate::model::Op>, crate::store::StoreError> {
    let mut ops = logs.read(s.origin, s.after, BATCH)?;
    ops.retain(|o| o.seq <= s.upto);
    Ok(ops)
}

/// The state of one outbound link: what to send is its [`Plan`]'s to say.
pub(super) struct Sender {
    inner: Arc<Inner>,
    peer: NodeId,
    plan: Plan,
    /// Where our log began when we last told the peer.
    told_start: Position,
}

impl Sender {
    fn new(inner: Arc<Inner>, peer: NodeId, peer_applied: Position) -> Sender {
        let plan = Plan::new(inner.me.node, peer, peer_applied);
        let told_start = inner.hub.logs().start();
        Sender {
            inner,
            peer,
            plan,
            told_start,
        }
    }

    async fn run(
        mut self,
        send: &mut quinn::SendStream,
        acks: &mut mpsc::Receiver<Position>,
    ) -> Result<(), String> {
        let me = self.inner.me.node;
        let hub = self.inner.hub.clone();
        let mut durable = hub.durable();
        let mut presence = hub.presence_changes();
        let mut members = self.inner.members_version.subscribe();
        self.send_presence_table(send).await?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let own_ready = self
                .plan
                .own(
                    durable.borrow().position.get(&me).copied().unwrap_or(0),
                    &self.told_start,
                )
                .is_some();
            tokio::select! {
                _ = self.inner.stop.cancelled() => return Ok(()),
                _ = std::future::ready(()), if own_ready => {
                    // Never hold the watch's lock across an await.
                    let d = durable.borrow().clone();
                    self.send_own(send, &d).await?
                }
                r = durable.changed() => r.map_err(|_| "hub stopped".to_string())?,
                change = presence.recv() => match change {
                    Ok(c) => {
                        let (online, offline) = if c.online { (vec![c.user], vec![]) } else { (vec![], vec![c.user]) };
                        self.write(send, &Frame::Presence { full: false, online, offline }).await?;
                    }
                    // We missed changes: send the whole table again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.send_presence_table(send).await?,
                    Err(_) => return Err("hub stopped".into()),
                },
                r = members.changed() => {
                    r.map_err(|_| "mesh stopped".to_string())?;
                    let list = self.inner.member_list();
                    self.write(send, &Frame::Members { members: list }).await?;
                }
                ack = acks.recv() => match ack {
                    Some(p) => {
                        self.plan.acked(p.clone());
                        lock(&self.inner.members).acked(self.peer, p, crate::ids::wall_millis());
                    }
                    None => return Err("peer closed the link".into()),
                },
                _ = tick.tick() => self.relay(send).await?,
            }
        }
    }

    async fn write(&self, send: &mut quinn::SendStream, frame: &Frame) -> Result<(), String> {
        wire::write(send, frame).await.map_err(|e| e.to_string())
    }

    async fn send_presence_table(&self, send: &mut quinn::SendStream) -> Result<(), String> {
        let hub = &self.inner.hub;
        let online = hub
            .ask(|reply| HubMsg::LocalPresence { reply })
            .await
            .ok_or_else(|| "hub stopped".to_string())?;
        self.write(
            send,
            &Frame::Presence {
                full: true,
                online,
                offline: Vec::new(),
            },
        )
        .await
    }

    async fn send_ops(
        &self,
        send: &mut quinn::SendStream,
        origin: NodeId,
        after: u64,
        upto: u64,
    ) -> Result<u64, String> {
        let stretch = Stretch {
            origin,
            after,
            upto,
        };
        let ops = match read_stretch(self.inner.hub.logs(), stretch) {
            Ok(ops) => ops,
            // Compacted since the plan was made: the peer will ask for a
            // snapshot.
            Err(crate::store::StoreError::Compacted { .. }) => return Ok(after),
            Err(e) => return Err(e.to_string()),
        };
        let Some(last) = ops.last().map(|o| o.seq) else {
            return Ok(after);
        };
        for frame in wire::ops_frames(origin, ops) {
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
        }
        Ok(last)
    }

    /// Our own operations, once they are durable here.
    async fn send_own(
        &mut self,
        send: &mut quinn::SendStream,
        durable: &crate::store::Durable,
    ) -> Result<(), String> {
        let me = self.inner.me.node;
        let upto = durable.position.get(&me).copied().unwrap_or(0);
        if let Some(s) = self.plan.own(upto, &self.told_start) {
            let last = self.send_ops(send, me, s.after, s.upto).await?;
            self.plan.sent_own(last);
        }
        Ok(())
    }

    /// What the plan says the peer has lacked for a while.
    async fn relay(&mut self, send: &mut quinn::SendStream) -> Result<(), String> {
        let me = self.inner.me.node;
        let hub = &self.inner.hub;
        let applied = hub.applied().borrow().clone();
        let ours = hub
            .durable()
            .borrow()
            .position
            .get(&me)
            .copied()
            .unwrap_or(0);
        // Tell the peer first when our log now begins later.
        let start = hub.logs().start();
        if start != self.told_start {
            self.told_start = start;
            let start = applied_vec(&self.told_start);
            self.write(send, &Frame::Start { start }).await?;
        }
        for s in self
            .plan
            .tick(Instant::now(), applied, ours, &self.told_start)
        {
            self.send_ops(send, s.origin, s.after, s.upto).await?;
        }
        Ok(())
    }
}
