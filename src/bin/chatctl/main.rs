//! chatctl: manage a running chatd through its admin socket
//! (`<data-dir>/chatd.sock`). chatd holds its database locked, so chatctl
//! never opens it while chatd runs; only `restore` (into an empty directory)
//! and `backup --offline` (of a stopped node) touch a data directory.
//!
//! Exit codes: 0 done, 1 chatd refused or failed the request, 2 bad usage,
//! 3 chatd is not running (or is, for `restore`/`backup --offline`).

mod cli;
mod users;

use chatd::admin::proto::{self, Reply, Request, UserArg, UserRow};
use chatd::dialect::classic::format_time;
use clap::{Parser, Subcommand};
use cli::*;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use users::*;

struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn refused(m: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: m.into(),
        }
    }
    fn usage(m: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: m.into(),
        }
    }
    fn not_running(m: impl Into<String>) -> Failure {
        Failure {
            code: 3,
            message: m.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if cli.json {
                println!("{}", proto::reply_line(&Err(f.message)));
            } else {
                eprintln!("chatctl: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn socket_path(cli: &Cli) -> PathBuf {
    cli.socket
        .clone()
        .unwrap_or_else(|| chatd::admin::socket_path(&cli.data_dir))
}

fn connect(cli: &Cli) -> Result<UnixStream, Failure> {
    let path = socket_path(cli);
    UnixStream::connect(&path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "chatd is not running".to_string()
            }
            std::io::ErrorKind::PermissionDenied => {
                "permission denied: run chatctl as the user chatd runs as (or root)".to_string()
            }
            _ => e.to_string(),
        };
        Failure::not_running(format!("{why} (admin socket {})", path.display()))
    })
}

/// One request: chatd's reply, and the line it came in (`--json` prints it).
fn request(cli: &Cli, req: Request) -> Result<(Reply, String), Failure> {
    let stream = connect(cli)?;
    let (reply, line, _) = exchange(stream, &req)?;
    Ok((reply, line))
}

fn exchange(
    mut stream: UnixStream,
    req: &Request,
) -> Result<(Reply, String, BufReader<UnixStream>), Failure> {
    let mut line = serde_json::to_string(req).map_err(|e| Failure::usage(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| Failure::not_running(format!("chatd closed the admin socket: {e}")))?;
    let mut r = BufReader::new(stream);
    let mut answer = String::new();
    r.read_line(&mut answer)
        .map_err(|e| Failure::not_running(format!("no answer from chatd: {e}")))?;
    if answer.trim().is_empty() {
        return Err(Failure::not_running(
            "chatd went away (or is shutting down)",
        ));
    }
    let reply = proto::parse_reply::<Reply>(&answer).map_err(Failure::refused)?;
    Ok((reply, answer.trim_end().to_string(), r))
}

fn unexpected(r: &Reply) -> Failure {
    Failure::refused(format!("unexpected reply from chatd: {r:?}"))
}

/// Prints a reply as JSON (`--json`, the line as chatd sent it) or as a table.
struct Out {
    json: bool,
}

impl Out {
    fn show(&self, line: &str, table: impl FnOnce()) {
        if self.json {
            println!("{line}");
        } else {
            table();
        }
    }
}

fn or_dash<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let o = Out { json: cli.json };
    match &cli.cmd {
        Cmd::Status => {
            let (r, line) = request(cli, Request::Status {})?;
            let Reply::Status {
                hub,
                version,
                uptime_secs,
                cluster_members,
            } = &r
            else {
                return Err(unexpected(&r));
            };
            o.show(&line, || {
                for (label, v) in [
                    ("version", version.clone()),
                    ("uptime (s)", uptime_secs.to_string()),
                    ("node", hub.node.to_string()),
                    ("cluster members", cluster_members.to_string()),
                    ("connections", hub.connections.to_string()),
                    ("sessions", hub.sessions.to_string()),
                    ("users online", hub.online_users.to_string()),
                    ("users", hub.users.to_string()),
                    ("groups", hub.groups.to_string()),
                    ("messages", or_dash(&hub.messages)),
                    ("storage (bytes)", hub.storage_bytes.to_string()),
                    ("log kept (ops)", hub.log_kept().to_string()),
                    ("disk full", hub.storage_full.to_string()),
                ] {
                    println!("{label:<16} {v}");
                }
            });
        }
        Cmd::Cluster => {
            let (r, line) = request(cli, Request::Cluster {})?;
            let Reply::Cluster { status, .. } = &r else {
                return Err(unexpected(&r));
            };
            o.show(&line, || {
                let rows: Vec<Vec<String>> = status
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.node.to_string(),
                            m.state.clone(),
                            m.addr.clone(),
                            m.last_contact_ms.map_or("-".into(), format_time),
                            m.lag_ops.to_string(),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    println!("node {} runs alone (no cluster)", status.node);
                } else {
                    table(
                        &[
                            "NODE",
                            "STATE",
                            "ADDRESS",
                            "LAST CONTACT (UTC)",
                            "LAG (OPS)",
                        ],
                        &rows,
                    );
                }
                if status.refused > 0 {
                    println!("refused connections: {}", status.refused);
                }
            });
        }
        Cmd::Digest => {
            let (r, line) = request(cli, Request::Digest {})?;
            let Reply::Digest {
                digest,
                users,
                groups,
                messages,
            } = &r
            else {
                return Err(unexpected(&r));
            };
            o.show(&line, || {
                println!("{digest}  ({users} users, {groups} groups, {messages} messages)")
            });
        }
        Cmd::Users(u) => users(cli, u, &o)?,
        Cmd::Sessions(SessionsCmd::List) => {
            let (r, line) = request(cli, Request::Sessions {})?;
            let Reply::Sessions {
                sessions,
                elsewhere,
            } = &r
            else {
                return Err(unexpected(&r));
            };
            o.show(&line, || {
                let rows: Vec<Vec<String>> = sessions
                    .iter()
                    .map(|s| {
                        vec![
                            s.session.to_string(),
                            or_dash(&s.user.map(|u| u.0)),
                            or_dash(&s.name),
                            s.dialect.clone(),
                            s.remote.clone(),
                            s.node.to_string(),
                            format_time(s.since_ms),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "SESSION",
                        "USER",
                        "NAME",
                        "DIALECT",
                        "REMOTE",
                        "NODE",
                        "SINCE (UTC)",
                    ],
                    &rows,
                );
                let e: Vec<Vec<String>> = elsewhere
                    .iter()
                    .map(|x| vec![x.node.to_string(), x.user.to_string(), or_dash(&x.name)])
                    .collect();
                if !e.is_empty() {
                    println!();
                    table(&["NODE", "USER", "NAME"], &e);
                }
            });
        }
        Cmd::Sessions(SessionsCmd::Kick { session, user }) => {
            let req = match (session, user) {
                (Some(s), None) => Request::Kick {
                    session: Some(*s),
                    user: None,
                },
                (None, Some(u)) => Request::Kick {
                    session: None,
                    user: Some(UserArg::parse(u)),
                },
                _ => return Err(Failure::usage("give a session id or --user USER")),
            };
            let (r, line) = request(cli, req)?;
            let Reply::Kicked { kicked } = &r else {
                return Err(unexpected(&r));
            };
            o.show(&line, || println!("closed {kicked} session(s)"));
        }
        Cmd::Groups(GroupsCmd::List { offset, limit }) => {
            let (r, line) = request(
                cli,
                Request::Groups {
                    offset: *offset as usize,
                    limit: *limit as usize,
                },
            )?;
            let Reply::Groups { groups } = &r else {
                return Err(unexpected(&r));
            };
            o.show(&line, || {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.id.0.to_string(),
                            g.name.clone(),
                            g.members.to_string(),
                            g.creator.to_string(),
                            g.dissolved.to_string(),
                            g.desc.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "NAME",
                        "MEMBERS",
                        "CREATOR",
                        "DISSOLVED",
                        "DESCRIPTION",
                    ],
                    &rows,
                );
            });
        }
        Cmd::Groups(GroupsCmd::Show { group }) => {
            let (r, line) = request(cli, Request::Group { group: *group })?;
            let Reply::Group { group: g, members } = &r else {
                return Err(unexpected(&r));
            };
            o.show(&line, || {
                println!(
                    "group {} {:?} (creator {}){}",
                    g.id.0,
                    g.name,
                    g.creator,
                    if g.dissolved { ", dissolved" } else { "" }
                );
                if !g.desc.is_empty() {
                    println!("{}", g.desc);
                }
                let rows: Vec<Vec<String>> = members
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.name.clone(),
                            or_dash(&m.role),
                            m.online.to_string(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "ROLE", "ONLINE"], &rows);
            });
        }
        Cmd::Groups(GroupsCmd::Dissolve { group }) => {
            let (_, line) = request(cli, Request::GroupDissolve { group: *group })?;
            o.show(&line, || println!("group {group} dissolved"));
        }
        Cmd::Broadcast { text } => {
            let (r, line) = request(cli, Request::Broadcast { text: text.clone() })?;
            let Reply::Broadcast { online_here } = &r else {
                return Err(unexpected(&r));
            };
            o.show(&line, || {
                println!("sent ({online_here} user(s) online on this node)")
            });
        }
        Cmd::Backup { file, offline } => {
            let summary = if *offline {
                if connect(cli).is_ok() {
                    return Err(Failure::not_running(format!(
                        "chatd is running in {}: back it up live, without --offline",
                        cli.data_dir.display()
                    )));
                }
                chatd::backup::backup_offline(&cli.data_dir, file).map_err(Failure::refused)?
            } else {
                live_backup(cli, file)?
            };
            let done = BackupDone {
                ok: true,
                file,
                segments: summary.segments,
                ops: summary.ops,
            };
            o.show(&serde_json::to_string(&done).unwrap_or_default(), || {
                println!(
                    "backup written to {} ({} operations)",
                    file.display(),
                    summary.ops
                )
            });
        }
        Cmd::Restore { file } => {
            if UnixStream::connect(chatd::admin::socket_path(&cli.data_dir)).is_ok() {
                return Err(Failure::not_running(format!(
                    "chatd is running in {}: stop it first (restore goes into an empty directory)",
                    cli.data_dir.display()
                )));
            }
            let (meta, summary) =
                chatd::backup::restore(file, &cli.data_dir).map_err(Failure::refused)?;
            let done = RestoreDone {
                ok: true,
                node: meta.node,
                ops: summary.ops,
                data_dir: &cli.data_dir,
            };
            o.show(&serde_json::to_string(&done).unwrap_or_default(), || {
                println!(
                    "restored node {} ({} operations) into {}",
                    meta.node,
                    summary.ops,
                    cli.data_dir.display()
                )
            });
        }
    }
    Ok(())
}

/// What `backup` prints with `--json`.
#[derive(Serialize)]
struct BackupDone<'a> {
    ok: bool,
    file: &'a Path,
    segments: u64,
    ops: u64,
}

/// What `restore` prints with `--json`.
#[derive(Serialize)]
struct RestoreDone<'a> {
    ok: bool,
    node: u16,
    ops: u64,
    data_dir: &'a Path,
}

/// Ask chatd for a backup and copy the stream after its reply into `file`.
fn live_backup(cli: &Cli, file: &Path) -> Result<chatd::backup::Summary, Failure> {
    let stream = connect(cli)?;
    let (reply, _, mut rest) = exchange(stream, &Request::Backup {})?;
    let Reply::BackupPoint(point) = reply else {
        return Err(unexpected(&reply));
    };
    let tmp = file.with_extension("partial");
    let f = chatd::backup::create_private(&tmp).map_err(Failure::refused)?;
    let mut w = std::io::BufWriter::new(f);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = rest
            .read(&mut buf)
            .map_err(|e| Failure::refused(format!("backup interrupted: {e}")))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        w.write_all(&buf[..n])
            .map_err(|e| Failure::refused(format!("cannot write {}: {e}", tmp.display())))?;
    }
    w.flush()
        .map_err(|e| Failure::refused(format!("cannot write {}: {e}", tmp.display())))?;
    if total == 0 {
        let _ = std::fs::remove_file(&tmp);
        return Err(Failure::refused("chatd sent no backup data"));
    }
    std::fs::rename(&tmp, file)
        .map_err(|e| Failure::refused(format!("cannot create {}: {e}", file.display())))?;
    let ops = point.position.values().sum();
    Ok(chatd::backup::Summary {
        ops,
        ..Default::default()
    })
}

fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}
