//! Metrics (Prometheus text) and health, over a small HTTP listener
//! (`--metrics-listen`).
//!
//! The rest of chatd records through the `metrics` facade (a no-op unless
//! this listener is on). Names:
//!
//! | metric | kind | what |
//! |--------|------|------|
//! | `chatd_connections` | gauge | open client connections |
//! | `chatd_sessions{dialect}` | gauge | logged-in sessions, by dialect |
//! | `chatd_messages_in_total` | counter | messages accepted from this node's clients |
//! | `chatd_messages_out_total` | counter | messages written to this node's clients |
//! | `chatd_delivery_latency_seconds` | histogram | from a message's stamp to its write to a recipient |
//! | `chatd_hub_queue_depth` | gauge | requests waiting for the hub |
//! | `chatd_session_queue_depth` | histogram | items waiting in a session's queue, seen at each write |
//! | `chatd_commit_flush_seconds` | histogram | one group-commit flush |
//! | `chatd_mesh_peers{state}` | gauge | cluster members by link state |
//! | `chatd_mesh_lag_ops{node}` | gauge | operations a member has not confirmed |
//! | `chatd_storage_full` | gauge | 1 while the disk is too full for changes |
//! | `chatd_log_compacted_total` | counter | logged operations compacted away (the tables hold them) |
//! | `chatd_snapshots_sent_total` | counter | snapshots sent to peers |
//! | `chatd_snapshots_installed_total` | counter | snapshots installed from peers |
//! | `chatd_login_failures_total` | counter | wrong passwords (each also logged with the address) |
//! | `chatd_login_throttled_total` | counter | login attempts refused as too many |
//! | `chatd_resident_bytes` | gauge | the process's resident memory, read at each scrape |
//! | `chatd_heap_allocated_bytes` | gauge | memory the allocator has handed out and not had back (the rest of resident is the allocator's, the program's code and stacks) |
//!
//! `/health` answers 200 unless the hub does not answer within a second,
//! the disk is too full to take changes, or the node is in a cluster with
//! other members and can reach none of them (503).

use crate::hub::HubHandle;
use crate::mesh::Mesh;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static HEAP_PROBE: OnceLock<fn() -> Option<u64>> = OnceLock::new();

/// How the program reads its allocator's live bytes (the allocator is the
/// binary's choice, not the library's); reported as
/// `chatd_heap_allocated_bytes`.
pub fn set_heap_probe(probe: fn() -> Option<u64>) {
    let _ = HEAP_PROBE.set(probe);
}

fn memory_gauges() {
    if let Some(rss) = crate::os::resident_bytes() {
        metrics::gauge!("chatd_resident_bytes").set(rss as f64);
    }
    if let Some(heap) = HEAP_PROBE.get().and_then(|probe| probe()) {
        metrics::gauge!("chatd_heap_allocated_bytes").set(heap as f64);
    }
}

/// Install the Prometheus recorder (once per process).
fn recorder() -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let depth = [0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("chatd_delivery_latency_seconds".into()),
                    &latency,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("chatd_commit_flush_seconds".into()),
                        &latency,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("chatd_session_queue_depth".into()),
                        &depth,
                    )
                })
                .and_then(|b| b.install_recorder())
                .map_err(|e| tracing::error!(error = %e, "cannot install the metrics recorder"))
                .ok()
        })
        .clone()
}

/// Serve `/metrics` and `/health` on `addr` until `stop`.
pub async fn serve(
    addr: SocketAddr,
    hub: HubHandle,
    mesh: Option<Mesh>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let handle = recorder();
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    if let Some(h) = handle.clone() {
        // Histograms need their buffers drained now and then.
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => h.run_upkeep(),
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (hub, mesh, handle) = (hub.clone(), mesh.clone(), handle.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    respond(stream, &hub, mesh.as_ref(), handle.as_ref()),
                )
                .await;
            });
        }
    });
    tracing::info!(addr = %bound, "metrics listening");
    Ok(bound)
}

async fn respond(
    mut stream: TcpStream,
    hub: &HubHandle,
    mesh: Option<&Mesh>,
    handle: Option<&PrometheusHandle>,
) -> std::io::Result<()> {
    // Read the request head (bounded); only the request line matters.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => {
            if let Some(m) = mesh {
                mesh_gauges(m);
            }
            memory_gauges();
            let text = handle.map(PrometheusHandle::render).unwrap_or_default();
            ("200 OK", "text/plain; version=0.0.4", text)
        }
        ("GET", "/health") => {
            let (ok, reason) = health(hub, mesh).await;
            let body = serde_json::json!({
                "status": if ok { "ok" } else { "unhealthy" },
                "reason": reason,
            })
            .to_string();
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", body)
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

fn mesh_gauges(mesh: &Mesh) {
    let status = mesh.status();
    for state in ["up", "partial", "down"] {
        let n = status.members.iter().filter(|m| m.state == state).count();
        metrics::gauge!("chatd_mesh_peers", "state" => state).set(n as f64);
    }
    for m in status.members.iter().filter(|m| m.state != "self") {
        metrics::gauge!("chatd_mesh_lag_ops", "node" => m.node.to_string()).set(m.lag_ops as f64);
    }
}

/// Healthy: the hub answers, and (in a cluster with other members) at least
/// one of them is reachable.
async fn health(hub: &HubHandle, mesh: Option<&Mesh>) -> (bool, Option<String>) {
    if !hub.ping(Duration::from_secs(1)).await {
        return (false, Some("the hub does not answer".into()));
    }
    if hub.storage_full() {
        return (
            false,
            Some("the disk is nearly full: serving reads only".into()),
        );
    }
    if let Some(m) = mesh {
        let status = m.status();
        let peers: Vec<_> = status
            .members
            .iter()
            .filter(|p| p.state != "self")
            .collect();
        if !peers.is_empty() && peers.iter().all(|p| p.state == "down") {
            return (false, Some("no cluster member is reachable".into()));
        }
    }
    (true, None)
}
