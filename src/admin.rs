//! The local admin channel: a Unix socket in the data directory, readable
//! and writable only by the user chatd runs as (mode 0600). One JSON request
//! per line, one JSON reply per line (`chatctl` is its client):
//!
//! ```text
//! {"cmd":"cluster"}
//! {"ok":true,"node":1,"members":[...],"refused":0}
//! ```
//!
//! `backup` is the exception: after its reply line the socket carries the
//! backup file itself, until the end of the stream.
//!
//! This module translates admin requests into hub and mesh questions; it
//! holds no state of its own.

use crate::auth::Passwords;
use crate::backup;
use crate::config::{Limits, Live};
use crate::dialect::Who;
use crate::hub::{AdminReq, HubHandle, HubMsg};
use crate::ids::{Gid, Uid};
use crate::mesh::Mesh;
use crate::rules::{check_password, check_user_name};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
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
    passwords: Passwords,
    limits: Live<Limits>,
    started: Instant,
}

/// Listen on `<data_dir>/chatd.sock` until `stop`.
pub fn serve(
    data_dir: &Path,
    hub: HubHandle,
    mesh: Option<Mesh>,
    passwords: Passwords,
    limits: Live<Limits>,
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
        passwords,
        limits,
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
        let req = if too_long {
            Err(fail("request too long"))
        } else {
            serde_json::from_slice::<Value>(&line).map_err(|e| fail(format!("malformed JSON: {e}")))
        };
        let (reply, backup) = match req {
            Err(e) => (e, None),
            Ok(req) if req.get("cmd").and_then(Value::as_str) == Some("backup") => {
                let point = admin(&ctx, AdminReq::BackupPoint).await;
                let ok = point["ok"] == json!(true);
                (point.clone(), ok.then_some(point))
            }
            Ok(req) => (handle(&ctx, &req).await, None),
        };
        let mut out = reply.to_string();
        out.push('\n');
        if wr.write_all(out.as_bytes()).await.is_err() || too_long {
            return;
        }
        if let Some(point) = backup {
            // The rest of the stream is the backup file.
            let Ok(stream) = reader.into_inner().reunite(wr) else {
                return;
            };
            stream_backup(stream, &ctx, point).await;
            return;
        }
    }
}

async fn stream_backup(stream: UnixStream, ctx: &Ctx, point: Value) {
    let meta = match serde_json::from_value::<backup::Meta>(point) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "backup point");
            return;
        }
    };
    let Ok(std_stream) = stream.into_std() else {
        return;
    };
    let logs = ctx.hub.logs().clone();
    let result = tokio::task::spawn_blocking(move || {
        std_stream
            .set_nonblocking(false)
            .map_err(|e| e.to_string())?;
        let mut w = std::io::BufWriter::new(std_stream);
        backup::write(&mut w, &logs, &meta)
    })
    .await;
    match result {
        Ok(Ok(s)) => tracing::info!(segments = s.segments, ops = s.ops, "backup written"),
        Ok(Err(e)) => tracing::warn!(error = %e, "backup failed"),
        Err(e) => tracing::warn!(error = %e, "backup failed"),
    }
}

fn fail(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}

async fn admin(ctx: &Ctx, req: AdminReq) -> Value {
    match ctx.hub.ask(|reply| HubMsg::Admin { req, reply }).await {
        Some(Ok(mut v)) => {
            v["ok"] = json!(true);
            v
        }
        Some(Err(e)) => fail(e),
        None => fail("chatd is shutting down"),
    }
}

/// `"user"`: a user id (number) or name (string).
fn who(req: &Value) -> Result<Who, Value> {
    match req.get("user") {
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n <= u64::from(u32::MAX))
            .map(|n| Who::Id(Uid(n as u32)))
            .ok_or_else(|| fail("\"user\" must be a user id or name")),
        Some(Value::String(s)) => Ok(match s.parse::<u32>() {
            Ok(n) => Who::Id(Uid(n)),
            Err(_) => Who::Name(s.clone()),
        }),
        _ => Err(fail("give \"user\": a user id or name")),
    }
}

fn text<'a>(req: &'a Value, key: &str) -> Result<&'a str, Value> {
    req.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| fail(format!("give \"{key}\"")))
}

fn number(req: &Value, key: &str) -> Result<u64, Value> {
    req.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| fail(format!("give \"{key}\" (a number)")))
}

fn page(req: &Value) -> (usize, usize) {
    let n = |k: &str, d: u64| req.get(k).and_then(Value::as_u64).unwrap_or(d) as usize;
    (n("offset", 0), n("limit", 100).min(10_000))
}

async fn hash(ctx: &Ctx, password: &str) -> Result<String, Value> {
    check_password(password, &ctx.limits.get()).map_err(|e| fail(e.message))?;
    ctx.passwords
        .hash(password.to_string())
        .await
        .map_err(|e| fail(e.message))
}

async fn handle(ctx: &Ctx, req: &Value) -> Value {
    match run(ctx, req).await {
        Ok(v) => v,
        Err(e) => e,
    }
}

async fn run(ctx: &Ctx, req: &Value) -> Result<Value, Value> {
    let cmd = req.get("cmd").and_then(Value::as_str).unwrap_or("");
    Ok(match cmd {
        "status" => {
            let mut v = admin(ctx, AdminReq::Status).await;
            if v["ok"] == true {
                v["version"] = json!(env!("CARGO_PKG_VERSION"));
                v["uptime_secs"] = json!(ctx.started.elapsed().as_secs());
                v["cluster_members"] =
                    json!(ctx.mesh.as_ref().map_or(1, |m| m.status().members.len()));
            }
            v
        }
        "cluster" => match &ctx.mesh {
            Some(mesh) => {
                let mut v = serde_json::to_value(mesh.status()).unwrap_or_default();
                v["ok"] = json!(true);
                v
            }
            None => {
                json!({"ok": true, "node": ctx.hub.node(), "members": [], "refused": 0, "standalone": true})
            }
        },
        "digest" => match ctx.hub.ask(|reply| HubMsg::Digest { reply }).await {
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
        "users" => {
            let (offset, limit) = page(req);
            let query = req.get("query").and_then(Value::as_str).map(str::to_string);
            admin(
                ctx,
                AdminReq::Users {
                    query,
                    offset,
                    limit,
                },
            )
            .await
        }
        "user" => admin(ctx, AdminReq::User { who: who(req)? }).await,
        "user_create" => {
            let name = text(req, "name")?.to_string();
            check_user_name(&name, &ctx.limits.get()).map_err(|e| fail(e.message))?;
            let hash = hash(ctx, text(req, "password")?).await?;
            admin(ctx, AdminReq::CreateUser { name, hash }).await
        }
        "user_password" => {
            let who = who(req)?;
            let hash = hash(ctx, text(req, "password")?).await?;
            admin(ctx, AdminReq::SetPassword { who, hash }).await
        }
        "user_ban" | "user_unban" => {
            let banned = cmd == "user_ban";
            admin(
                ctx,
                AdminReq::Ban {
                    who: who(req)?,
                    banned,
                },
            )
            .await
        }
        "user_delete" => admin(ctx, AdminReq::DeleteUser { who: who(req)? }).await,
        "sessions" => admin(ctx, AdminReq::Sessions).await,
        "kick" => {
            let session = req.get("session").and_then(Value::as_u64);
            let user = if req.get("user").is_some() {
                Some(who(req)?)
            } else {
                None
            };
            admin(ctx, AdminReq::Kick { session, user }).await
        }
        "groups" => {
            let (offset, limit) = page(req);
            admin(ctx, AdminReq::Groups { offset, limit }).await
        }
        "group" => {
            let group = Gid(number(req, "group")? as u32);
            admin(ctx, AdminReq::Group { group }).await
        }
        "group_dissolve" => {
            let group = Gid(number(req, "group")? as u32);
            admin(ctx, AdminReq::Dissolve { group }).await
        }
        "broadcast" => {
            let text = text(req, "text")?.to_string();
            if text.len() > ctx.limits.get().max_text {
                return Err(fail("the notice is longer than the message limit"));
            }
            admin(ctx, AdminReq::Broadcast { text }).await
        }
        "" => fail("a request needs a \"cmd\""),
        other => fail(format!("unknown command {other:?}")),
    })
}
