//! The local admin channel: a Unix socket in the data directory, readable
//! and writable only by the user chatd runs as (mode 0600). One JSON request
//! per line, one JSON reply per line:
//!
//! ```text
//! {"cmd":"cluster"}
//! {"ok":true,"node":1,"members":[...],"refused":0}
//! ```
//!
//! This module translates admin requests into hub and mesh questions; it
//! holds no state of its own.

use crate::hub::{HubHandle, HubMsg};
use crate::mesh::Mesh;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The socket's file name inside the data directory.
pub const SOCKET: &str = "chatd.sock";

/// Longest admin request line.
const MAX_LINE: usize = 64 * 1024;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

#[derive(Clone)]
struct Ctx {
    hub: HubHandle,
    mesh: Option<Mesh>,
    started: Instant,
}

/// Listen on `<data_dir>/chatd.sock` until `stop`.
pub fn serve(
    data_dir: &Path,
    hub: HubHandle,
    mesh: Option<Mesh>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let path = socket_path(data_dir);
    // A socket left by a crashed chatd: the data dir lock proves it is stale.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let ctx = Ctx {
        hub,
        mesh,
        started: Instant::now(),
    };
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            tokio::spawn(connection(stream, ctx.clone()));
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn connection(stream: UnixStream, ctx: Ctx) {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd);
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = line.len() > MAX_LINE;
        let reply = if too_long {
            fail("request too long")
        } else {
            match serde_json::from_slice::<Value>(&line) {
                Ok(req) => handle(&ctx, &req).await,
                Err(e) => fail(format!("malformed JSON: {e}")),
            }
        };
        let mut out = reply.to_string();
        out.push('\n');
        if wr.write_all(out.as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

fn fail(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}

async fn ask<T>(hub: &HubHandle, make: impl FnOnce(oneshot::Sender<T>) -> HubMsg) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    if !hub.send(make(tx)).await {
        return None;
    }
    rx.await.ok()
}

async fn handle(ctx: &Ctx, req: &Value) -> Value {
    let cmd = req.get("cmd").and_then(Value::as_str).unwrap_or("");
    match cmd {
        "status" => json!({
            "ok": true,
            "version": env!("CARGO_PKG_VERSION"),
            "node": ctx.hub.node(),
            "uptime_secs": ctx.started.elapsed().as_secs(),
        }),
        "cluster" => match &ctx.mesh {
            Some(mesh) => {
                let status = mesh.status();
                let mut v = serde_json::to_value(&status).unwrap_or_default();
                v["ok"] = json!(true);
                v
            }
            None => {
                json!({"ok": true, "node": ctx.hub.node(), "members": [], "refused": 0, "standalone": true})
            }
        },
        "digest" => match ask(&ctx.hub, |reply| HubMsg::Digest { reply }).await {
            Some(Ok(d)) => json!({
                "ok": true,
                "digest": d.hash,
                "users": d.users,
                "groups": d.groups,
                "messages": d.messages,
            }),
            Some(Err(e)) => fail(e),
            None => fail("chatd is shutting down"),
        },
        "" => fail("a request needs a \"cmd\""),
        other => fail(format!("unknown command {other:?}")),
    }
}
