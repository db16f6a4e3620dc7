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

pub mod proto;

use crate::auth::Passwords;
use crate::backup;
use crate::config::{Limits, Live};
use crate::hub::{AdminReq, HubHandle, HubMsg};
use crate::ids::Gid;
use crate::mesh::{ClusterStatus, Mesh};
use crate::rules::{check_password, check_user_name};
use proto::{Reply, Request, UserArg};
use serde_json::Value;
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
            Err("request too long".to_string())
        } else {
            parse_request(&line)
        };
        let (reply, backup) = match req {
            Err(e) => (Err(e), None),
            Ok(Request::Backup {}) => match hub(&ctx, AdminReq::BackupPoint).await {
                Ok(Reply::BackupPoint(point)) => {
                    (Ok(Reply::BackupPoint(point.clone())), Some(point))
                }
                Ok(_) => (Err("unexpected reply to a backup".to_string()), None),
                Err(e) => (Err(e), None),
            },
            Ok(req) => (run(&ctx, req).await, None),
        };
        let mut out = proto::reply_line(&reply);
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

/// A request line, or what is wrong with it in words.
fn parse_request(line: &[u8]) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("malformed JSON: {e}"))?;
    match v.get("cmd") {
        None => return Err("a request needs a \"cmd\"".into()),
        Some(Value::String(c)) if !proto::COMMANDS.contains(&c.as_str()) => {
            return Err(format!("unknown command {c:?}"))
        }
        _ => {}
    }
    serde_json::from_value(v).map_err(|e| format!("bad request: {e}"))
}

async fn stream_backup(stream: UnixStream, ctx: &Ctx, point: proto::BackupPoint) {
    let meta = backup::Meta {
        node: point.node,
        uuid: point.uuid,
        position: point.position,
        point: None,
    };
    let Ok(std_stream) = stream.into_std() else {
        return;
    };
    let logs = ctx.hub.logs().clone();
    let snapshots = ctx.hub.snapshots().clone();
    let result = tokio::task::spawn_blocking(move || {
        std_stream
            .set_nonblocking(false)
            .map_err(|e| e.to_string())?;
        let mut w = std::io::BufWriter::new(std_stream);
        backup::write(&mut w, snapshots, &logs, &meta)
    })
    .await;
    match result {
        Ok(Ok(s)) => tracing::info!(segments = s.segments, ops = s.ops, "backup written"),
        Ok(Err(e)) => tracing::warn!(error = %e, "backup failed"),
        Err(e) => tracing::warn!(error = %e, "backup failed"),
    }
}

async fn hub(ctx: &Ctx, req: AdminReq) -> Result<Reply, String> {
    match ctx.hub.ask(|reply| HubMsg::Admin { req, reply }).await {
        Some(r) => r,
        None => Err("chatd is shutting down".into()),
    }
}

async fn hash(ctx: &Ctx, password: &str) -> Result<String, String> {
    check_password(password, &ctx.limits.get()).map_err(|e| e.message)?;
    ctx.passwords
        .hash(password.to_string())
        .await
        .map_err(|e| e.message)
}

async fn run(ctx: &Ctx, req: Request) -> Result<Reply, String> {
    let page = |offset: usize, limit: usize| (offset, limit.min(proto::PAGE_MAX));
    match req {
        Request::Status {} => {
            let mut r = hub(ctx, AdminReq::Status).await?;
            if let Reply::Status {
                uptime_secs,
                cluster_members,
                ..
            } = &mut r
            {
                *uptime_secs = ctx.started.elapsed().as_secs();
                *cluster_members = ctx.mesh.as_ref().map_or(1, |m| m.status().members.len());
            }
            Ok(r)
        }
        Request::Cluster {} => Ok(match &ctx.mesh {
            Some(mesh) => Reply::Cluster {
                status: mesh.status(),
                standalone: false,
            },
            None => Reply::Cluster {
                status: ClusterStatus {
                    node: ctx.hub.node(),
                    members: Vec::new(),
                    refused: 0,
                },
                standalone: true,
            },
        }),
        Request::Digest {} => match ctx.hub.ask(|reply| HubMsg::Digest { reply }).await {
            Some(d) => {
                let d = d?;
                Ok(Reply::Digest {
                    digest: d.hash,
                    users: d.users,
                    groups: d.groups,
                    messages: d.messages,
                })
            }
            None => Err("chatd is shutting down".into()),
        },
        Request::Users {
            query,
            offset,
            limit,
        } => {
            let (offset, limit) = page(offset, limit);
            hub(
                ctx,
                AdminReq::Users {
                    query,
                    offset,
                    limit,
                },
            )
            .await
        }
        Request::User { user } => hub(ctx, AdminReq::User { who: user.who() }).await,
        Request::UserCreate { name, password } => {
            check_user_name(&name, &ctx.limits.get()).map_err(|e| e.message)?;
            let hash = hash(ctx, &password).await?;
            hub(ctx, AdminReq::CreateUser { name, hash }).await
        }
        Request::UserPassword { user, password } => {
            let hash = hash(ctx, &password).await?;
            let who = user.who();
            hub(ctx, AdminReq::SetPassword { who, hash }).await
        }
        Request::UserBan { user } => ban(ctx, user, true).await,
        Request::UserUnban { user } => ban(ctx, user, false).await,
        Request::UserDelete { user } => hub(ctx, AdminReq::DeleteUser { who: user.who() }).await,
        Request::Sessions {} => hub(ctx, AdminReq::Sessions).await,
        Request::Kick { session, user } => {
            let user = user.map(|u| u.who());
            hub(ctx, AdminReq::Kick { session, user }).await
        }
        Request::Groups { offset, limit } => {
            let (offset, limit) = page(offset, limit);
            hub(ctx, AdminReq::Groups { offset, limit }).await
        }
        Request::Group { group } => hub(ctx, AdminReq::Group { group: Gid(group) }).await,
        Request::GroupDissolve { group } => {
            hub(ctx, AdminReq::Dissolve { group: Gid(group) }).await
        }
        Request::Broadcast { text } => {
            if text.len() > ctx.limits.get().max_text {
                return Err("the notice is longer than the message limit".into());
            }
            hub(ctx, AdminReq::Broadcast { text }).await
        }
        Request::Backup {} => {
            Err("a backup is streamed; ask for it first on its connection".into())
        }
    }
}

async fn ban(ctx: &Ctx, user: UserArg, banned: bool) -> Result<Reply, String> {
    let who = user.who();
    hub(ctx, AdminReq::Ban { who, banned }).await
}
