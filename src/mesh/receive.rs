//! The inbound links: accepting peers (refusing those without the
//! cluster's certificate), joining nodes' questions, and what a peer sends:
//! operations for the hub, presence, members, how far it has applied.

use super::*;

pub(super) async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.stop.cancelled() => return,
            i = inner.endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = inbound(&inner, conn).await {
                        if !inner.stop.is_cancelled() {
                            tracing::info!(%remote, error = %e, "mesh link closed");
                        }
                    }
                }
                Err(e) => {
                    inner.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, error = %e, "refused a mesh connection (no valid cluster certificate?)");
                }
            }
        });
    }
}

pub(super) async fn refuse(
    inner: &Inner,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reason: String,
) -> Result<(), String> {
    inner.refused.fetch_add(1, Ordering::Relaxed);
    let _ = wire::write(
        send,
        &Frame::Refused {
            reason: reason.clone(),
        },
    )
    .await;
    let _ = send.finish();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.close(1u32.into(), b"refused");
    Err(format!("refused: {reason}"))
}

pub(super) async fn inbound(inner: &Arc<Inner>, conn: quinn::Connection) -> Result<(), String> {
    let (mut send, mut recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| "no stream opened".to_string())?
        .map_err(|e| e.to_string())?;
    let (version, node, uuid, addr, members, discovery, start) =
        match read_timeout(&mut recv).await? {
            Frame::Hello {
                version,
                node,
                uuid,
                addr,
                members,
                discovery,
                start,
            } => (version, node, uuid, addr, members, discovery, start),
            other => {
                return refuse(
                    inner,
                    &conn,
                    &mut send,
                    format!("expected a hello, got {other:?}"),
                )
                .await
            }
        };
    if version != wire::VERSION {
        let reason = format!(
            "mesh protocol version {version}, this node speaks {}",
            wire::VERSION
        );
        return refuse(inner, &conn, &mut send, reason).await;
    }
    if tls::peer_uuid(&conn).as_deref() != Some(uuid.as_str()) {
        let reason = "the certificate does not name the node the hello claims".to_string();
        return refuse(inner, &conn, &mut send, reason).await;
    }
    let me = &inner.me;
    let welcome = |inner: &Arc<Inner>, offer: Option<NodeId>| Frame::Welcome {
        node: me.node,
        uuid: me.uuid.clone(),
        applied: applied_vec(&inner.hub.applied().borrow()),
        members: inner.member_list(),
        offer,
    };
    if discovery && node == 0 {
        // A new node choosing its id: the member list and an id to take.
        let offer = inner.offer_id(&uuid);
        wire::write(&mut send, &welcome(inner, offer))
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.closed()).await;
        return Ok(());
    }
    let info = MemberInfo { node, uuid, addr };
    if node == me.node || !inner.add_member(info.clone()) {
        let reason = format!("node id {node} belongs to another node");
        return refuse(inner, &conn, &mut send, reason).await;
    }
    for m in members {
        inner.add_member(m);
    }
    wire::write(&mut send, &welcome(inner, None))
        .await
        .map_err(|e| e.to_string())?;
    if discovery {
        let _ = send.finish();
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.closed()).await;
        return Ok(());
    }
    let gen = {
        let mut members = lock(&inner.members);
        members.log_start(node, start.into_iter().collect());
        members.in_up(node, crate::ids::wall_millis())
    };
    tracing::info!(node, "link from member up");
    // The peer may ask for snapshots on streams of their own.
    let streams = tokio::spawn(super::snapshots::serve_streams(
        inner.clone(),
        conn.clone(),
        node,
    ));

    // Tell the peer, as we go, how far we have applied.
    let mut applied = inner.hub.applied();
    let reporter = tokio::spawn(async move {
        loop {
            if applied.changed().await.is_err() {
                return;
            }
            let frame = Frame::Applied {
                applied: applied_vec(&applied.borrow_and_update()),
            };
            if wire::write(&mut send, &frame).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let result = receive(inner, node, &mut recv).await;
    reporter.abort();
    streams.abort();
    let current = lock(&inner.members).in_down(node, gen);
    if current {
        tracing::warn!(
            node,
            "link from member down: its sessions no longer count as online"
        );
        inner
            .hub
            .send(HubMsg::Input(Input::PeerDown { node }))
            .await;
    }
    if let Err(e) = &result {
        conn.close(2u32.into(), e.as_bytes());
    }
    result
}

/// How many frames of operations one link may have waiting in the hub's
/// queue (each up to [`BATCH`] operations).
const OPS_FRAMES_QUEUED: usize = 16;

/// Hand everything a peer sends to the hub until the link ends.
pub(super) async fn receive(
    inner: &Arc<Inner>,
    node: NodeId,
    recv: &mut quinn::RecvStream,
) -> Result<(), String> {
    let room = Arc::new(tokio::sync::Semaphore::new(OPS_FRAMES_QUEUED));
    loop {
        let frame = tokio::select! {
            _ = inner.stop.cancelled() => return Ok(()),
            f = wire::read(recv) => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(wire::WireError::Io(e)) => return Err(e.to_string()),
            Err(e) => {
                tracing::warn!(node, error = %e, "closing the link: bad frame from member");
                return Err(e.to_string());
            }
        };
        inner.touch(node);
        let msg = match frame {
            Frame::Ops { origin, ops } => {
                let permit = tokio::select! {
                    _ = inner.stop.cancelled() => return Ok(()),
                    p = room.clone().acquire_owned() => p.map_err(|e| e.to_string())?,
                };
                let input = Input::PeerOps { origin, ops };
                HubMsg::Paced { input, permit }
            }
            Frame::Presence {
                full,
                online,
                offline,
            } => HubMsg::Input(Input::PeerPresence {
                node,
                full,
                online,
                offline,
            }),
            Frame::Members { members } => {
                for m in members {
                    inner.add_member(m);
                }
                continue;
            }
            Frame::Start { start } => {
                lock(&inner.members).log_start(node, start.into_iter().collect());
                continue;
            }
            Frame::Unknown => continue,
            other => {
                tracing::warn!(node, "closing the link: unexpected frame {other:?}");
                return Err("unexpected frame".into());
            }
        };
        if !inner.hub.send(msg).await {
            return Ok(());
        }
    }
}
