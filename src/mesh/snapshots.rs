//! Snapshots over the mesh: asking a peer for one when `catchup.rs` says
//! so, and sending one when asked. Each goes on a QUIC stream of its own,
//! opened by the node that needs it on its link to the peer, so the
//! operations that keep flowing on the links are never stuck behind it.
//!
//! The sender reads its tables off the async workers (a snapshot is read
//! from disk, batch by batch) and keeps the log after the snapshot's point
//! for a while after the end, so the receiver can go on from there.

use super::*;
use crate::snapshot::{Part, Reading};
use crate::store::Point;

/// How often a node looks at whether it needs a snapshot.
const CATCHUP_TICK: Duration = Duration::from_millis(500);
/// The longest wait for the next frame of a snapshot.
const FRAME_WAIT: Duration = Duration::from_secs(60);
/// How long a sent snapshot's point stays pinned in the log: the receiver
/// gets the operations after it from there.
const PIN_GRACE: Duration = Duration::from_secs(120);

/// Ask for a snapshot whenever this node lacks what no log holds.
pub(super) async fn catchup_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(CATCHUP_TICK);
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mine = inner.hub.applied().borrow().clone();
        let views = lock(&inner.members).views();
        let ask = lock(&inner.catchup).tick(Instant::now(), &mine, &views);
        let Some(peer) = ask else { continue };
        let conn = lock(&inner.conns).get(&peer).cloned();
        let inner = inner.clone();
        tokio::spawn(async move {
            tracing::info!(
                peer,
                "asking for a snapshot: no peer's log holds what this node lacks"
            );
            let result = match conn {
                Some(conn) => fetch(&inner, peer, conn).await,
                None => Err("no link to it".into()),
            };
            if let Err(e) = &result {
                tracing::warn!(peer, error = %e, "snapshot failed");
            }
            lock(&inner.catchup).done(Instant::now(), result.is_ok());
        });
    }
}

/// Ask `peer` for a snapshot and hand it to the hub as it comes.
async fn fetch(inner: &Arc<Inner>, peer: NodeId, conn: quinn::Connection) -> Result<(), String> {
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    wire::write(&mut send, &Frame::SnapshotRequest {})
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let mut frames = 0u64;
    // At most two parts wait in the hub's queue: a part holds thousands of
    // operations, and QUIC's flow control holds the sender back.
    let room = Arc::new(tokio::sync::Semaphore::new(2));
    loop {
        let frame = tokio::time::timeout(FRAME_WAIT, wire::read(&mut recv))
            .await
            .map_err(|_| "the peer stopped sending".to_string())?
            .map_err(|e| e.to_string())?;
        let (part, last) = match frame {
            Some(Frame::SnapshotBegin { position, stamps }) if frames == 0 => {
                let point = Point {
                    position: position.into_iter().collect(),
                    stamps: stamps.into_iter().collect(),
                };
                (Part::Begin(point), false)
            }
            Some(Frame::SnapshotOps { ops }) if frames > 0 => (Part::Ops(ops), false),
            Some(Frame::SnapshotEnd { ops, hash }) if frames > 0 => {
                (Part::End(crate::snapshot::Check { ops, hash }), true)
            }
            Some(Frame::Refused { reason }) => return Err(format!("refused: {reason}")),
            Some(other) => return Err(format!("unexpected frame {other:?}")),
            None => return Err("the stream ended before the snapshot did".into()),
        };
        frames += 1;
        let permit = room
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let input = Input::Snapshot { from: peer, part };
        if !inner.hub.send(HubMsg::Paced { input, permit }).await {
            return Err("the hub stopped".into());
        }
        if last {
            tracing::info!(peer, frames, elapsed = ?started.elapsed(), "snapshot received");
            return Ok(());
        }
    }
}

/// Answer the snapshot requests a peer makes on its link to us.
pub(super) async fn serve_streams(inner: Arc<Inner>, conn: quinn::Connection, node: NodeId) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(&inner, node, send, recv).await {
                tracing::info!(node, error = %e, "snapshot not sent");
            }
        });
    }
}

async fn serve(
    inner: &Arc<Inner>,
    node: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), String> {
    match read_timeout(&mut recv).await? {
        Frame::SnapshotRequest {} => {}
        other => return Err(format!("unexpected frame {other:?}")),
    }
    let _permit = inner.serving.acquire().await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let write = |frame: Frame| wire::encode(&frame);
    let reader = inner.hub.snapshots().clone();
    let mut reading = tokio::task::spawn_blocking(move || Reading::start(reader))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let point = reading.point().clone();
    let begin = Frame::SnapshotBegin {
        position: applied_vec(&point.position),
        stamps: point.stamps.iter().map(|(o, s)| (*o, *s)).collect(),
    };
    send.write_all(&write(begin))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let (r, batch) = tokio::task::spawn_blocking(move || {
            let batch = reading.next_batch();
            (reading, batch)
        })
        .await
        .map_err(|e| e.to_string())?;
        reading = r;
        match batch.map_err(|e| e.to_string())? {
            Some(ops) => {
                let frame = write(Frame::SnapshotOps { ops });
                send.write_all(&frame).await.map_err(|e| e.to_string())?;
            }
            None => break,
        }
    }
    let check = reading.check();
    let end = Frame::SnapshotEnd {
        ops: check.ops,
        hash: check.hash,
    };
    send.write_all(&write(end))
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    metrics::counter!("chatd_snapshots_sent_total").increment(1);
    tracing::info!(node, ops = check.ops, elapsed = ?started.elapsed(), "snapshot sent");
    let pin = reading.into_pin();
    tokio::spawn(async move {
        tokio::time::sleep(PIN_GRACE).await;
        drop(pin);
    });
    Ok(())
}
