//! chatctl: manage a running chatd through its admin socket
//! (`<data-dir>/chatd.sock`). chatd holds its database locked, so chatctl
//! never opens it while chatd runs; only `restore` (into an empty directory)
//! and `backup --offline` (of a stopped node) touch a data directory.
//!
//! Exit codes: 0 done, 1 chatd refused or failed the request, 2 bad usage,
//! 3 chatd is not running (or is, for `restore`/`backup --offline`).

use chatd::dialect::classic::format_time;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "chatctl",
    version,
    about = "Manage a running chatd through its admin socket."
)]
struct Cli {
    /// chatd's data directory; its admin socket is DIR/chatd.sock.
    #[arg(
        long,
        env = "CHATD_DATA_DIR",
        default_value = "./chatd-data",
        global = true
    )]
    data_dir: PathBuf,
    /// The admin socket, when it is not in the data directory.
    #[arg(long, env = "CHATCTL_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// Print JSON (one object) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Version, uptime, node, sessions, users, groups, messages, storage.
    Status,
    /// Cluster members: state, address, last contact, replication lag.
    Cluster,
    /// Fingerprint of the replicated state (equal on converged nodes).
    Digest,
    #[command(subcommand)]
    Users(UsersCmd),
    #[command(subcommand)]
    Sessions(SessionsCmd),
    #[command(subcommand)]
    Groups(GroupsCmd),
    /// Send a notice to everyone online, on every node.
    Broadcast { text: String },
    /// Write a consistent backup of the running chatd to FILE.
    Backup {
        file: PathBuf,
        /// Back up a stopped chatd by reading its data directory.
        #[arg(long)]
        offline: bool,
    },
    /// Restore a backup into an empty --data-dir (chatd must not run there).
    Restore { file: PathBuf },
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Users in id order.
    List {
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// One user (by id or name).
    Show {
        user: String,
    },
    /// Users whose name contains QUERY (any case), or whose id it is.
    Search {
        query: String,
    },
    /// Create an account.
    Create {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Set a user's password.
    ResetPassword {
        user: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Close the user's sessions and refuse their logins (cluster-wide).
    Ban {
        user: String,
    },
    Unban {
        user: String,
    },
    /// Delete the account (final; its name stays reserved).
    Delete {
        user: String,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct PasswordArgs {
    /// The password (visible to other local users in the process list).
    #[arg(long)]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    fn get(&self) -> Result<String, Failure> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("cannot read the password: {e}")))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

#[derive(Subcommand)]
enum SessionsCmd {
    /// Sessions on this node, and users online on other nodes.
    List,
    /// Close a session (by id) or every session of a user on this node.
    Kick {
        session: Option<u64>,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum GroupsCmd {
    List {
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// A group and its members.
    Show { group: u32 },
    /// Dissolve a group (final).
    Dissolve { group: u32 },
}

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
                println!("{}", json!({"ok": false, "error": f.message}));
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

/// One request; the reply must say ok.
fn request(cli: &Cli, req: Value) -> Result<Value, Failure> {
    let stream = connect(cli)?;
    let (reply, _) = exchange(stream, &req)?;
    Ok(reply)
}

fn exchange(
    mut stream: UnixStream,
    req: &Value,
) -> Result<(Value, BufReader<UnixStream>), Failure> {
    let mut line = req.to_string();
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| Failure::not_running(format!("chatd closed the admin socket: {e}")))?;
    let mut r = BufReader::new(stream);
    let mut answer = String::new();
    r.read_line(&mut answer)
        .map_err(|e| Failure::not_running(format!("no answer from chatd: {e}")))?;
    let v: Value = serde_json::from_str(&answer)
        .map_err(|_| Failure::not_running("chatd went away (or is shutting down)"))?;
    if v["ok"] != true {
        let msg = v["error"].as_str().unwrap_or("request failed");
        return Err(Failure::refused(msg.to_string()));
    }
    Ok((v, r))
}

fn user_value(u: &str) -> Value {
    match u.parse::<u64>() {
        Ok(n) => json!(n),
        Err(_) => json!(u),
    }
}

/// Prints a reply as JSON (`--json`) or as the given table.
struct Out {
    json: bool,
}

impl Out {
    fn show(&self, v: &Value, table: impl Fn(&Value)) {
        if self.json {
            println!("{v}");
        } else {
            table(v);
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let o = Out { json: cli.json };
    let out = |v: &Value, table: &dyn Fn(&Value)| o.show(v, table);
    match &cli.cmd {
        Cmd::Status => {
            let v = request(cli, json!({"cmd": "status"}))?;
            out(&v, &|v| {
                for (k, label) in [
                    ("version", "version"),
                    ("uptime_secs", "uptime (s)"),
                    ("node", "node"),
                    ("cluster_members", "cluster members"),
                    ("connections", "connections"),
                    ("sessions", "sessions"),
                    ("online_users", "users online"),
                    ("users", "users"),
                    ("groups", "groups"),
                    ("messages", "messages"),
                    ("storage_bytes", "storage (bytes)"),
                    ("storage_full", "disk full"),
                ] {
                    println!("{label:<16} {}", plain(&v[k]));
                }
            });
        }
        Cmd::Cluster => {
            let v = request(cli, json!({"cmd": "cluster"}))?;
            out(&v, &|v| {
                let rows = rows(
                    &v["members"],
                    &["node", "state", "addr", "last_contact_ms", "lag_ops"],
                    |k, x| {
                        if k == "last_contact_ms" {
                            time_of(x)
                        } else {
                            plain(x)
                        }
                    },
                );
                if rows.is_empty() {
                    println!("node {} runs alone (no cluster)", plain(&v["node"]));
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
                if v["refused"].as_u64().unwrap_or(0) > 0 {
                    println!("refused connections: {}", v["refused"]);
                }
            });
        }
        Cmd::Digest => {
            let v = request(cli, json!({"cmd": "digest"}))?;
            out(&v, &|v| {
                println!(
                    "{}  ({} users, {} groups, {} messages)",
                    plain(&v["digest"]),
                    v["users"],
                    v["groups"],
                    v["messages"]
                )
            });
        }
        Cmd::Users(u) => users(cli, u, &o)?,
        Cmd::Sessions(SessionsCmd::List) => {
            let v = request(cli, json!({"cmd": "sessions"}))?;
            out(&v, &|v| {
                let r = rows(
                    &v["sessions"],
                    &[
                        "session", "user", "name", "dialect", "remote", "node", "since_ms",
                    ],
                    |k, x| {
                        if k == "since_ms" {
                            time_of(x)
                        } else {
                            plain(x)
                        }
                    },
                );
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
                    &r,
                );
                let e = rows(&v["elsewhere"], &["node", "user", "name"], |_, x| plain(x));
                if !e.is_empty() {
                    println!();
                    table(&["NODE", "USER", "NAME"], &e);
                }
            });
        }
        Cmd::Sessions(SessionsCmd::Kick { session, user }) => {
            let req = match (session, user) {
                (Some(s), None) => json!({"cmd": "kick", "session": s}),
                (None, Some(u)) => json!({"cmd": "kick", "user": user_value(u)}),
                _ => return Err(Failure::usage("give a session id or --user USER")),
            };
            let v = request(cli, req)?;
            out(&v, &|v| println!("closed {} session(s)", v["kicked"]));
        }
        Cmd::Groups(GroupsCmd::List { offset, limit }) => {
            let v = request(
                cli,
                json!({"cmd": "groups", "offset": offset, "limit": limit}),
            )?;
            out(&v, &|v| {
                let r = rows(
                    &v["groups"],
                    &["id", "name", "members", "creator", "dissolved", "desc"],
                    |_, x| plain(x),
                );
                table(
                    &[
                        "ID",
                        "NAME",
                        "MEMBERS",
                        "CREATOR",
                        "DISSOLVED",
                        "DESCRIPTION",
                    ],
                    &r,
                );
            });
        }
        Cmd::Groups(GroupsCmd::Show { group }) => {
            let v = request(cli, json!({"cmd": "group", "group": group}))?;
            out(&v, &|v| {
                let g = &v["group"];
                println!(
                    "group {} {:?} (creator {}){}",
                    g["id"],
                    plain(&g["name"]),
                    g["creator"],
                    if g["dissolved"] == true {
                        ", dissolved"
                    } else {
                        ""
                    }
                );
                if g["desc"].as_str().is_some_and(|d| !d.is_empty()) {
                    println!("{}", plain(&g["desc"]));
                }
                let r = rows(&v["members"], &["id", "name", "role", "online"], |_, x| {
                    plain(x)
                });
                table(&["ID", "NAME", "ROLE", "ONLINE"], &r);
            });
        }
        Cmd::Groups(GroupsCmd::Dissolve { group }) => {
            let v = request(cli, json!({"cmd": "group_dissolve", "group": group}))?;
            out(&v, &|_| println!("group {group} dissolved"));
        }
        Cmd::Broadcast { text } => {
            let v = request(cli, json!({"cmd": "broadcast", "text": text}))?;
            out(&v, &|v| {
                println!("sent ({} user(s) online on this node)", v["online_here"])
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
            let v =
                json!({"ok": true, "file": file, "segments": summary.segments, "ops": summary.ops});
            out(&v, &|_| {
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
            let v = json!({"ok": true, "node": meta.node, "ops": summary.ops, "data_dir": cli.data_dir});
            out(&v, &|_| {
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

fn users(cli: &Cli, cmd: &UsersCmd, o: &Out) -> Result<(), Failure> {
    let out = |v: &Value, table: &dyn Fn(&Value)| o.show(v, table);
    let list = |v: &Value| {
        let r = rows(
            &v["users"],
            &["id", "name", "online", "banned", "deleted"],
            |_, x| plain(x),
        );
        table(&["ID", "NAME", "ONLINE", "BANNED", "DELETED"], &r);
    };
    match cmd {
        UsersCmd::List { offset, limit } => {
            let v = request(
                cli,
                json!({"cmd": "users", "offset": offset, "limit": limit}),
            )?;
            out(&v, &list);
        }
        UsersCmd::Search { query } => {
            let v = request(cli, json!({"cmd": "users", "query": query}))?;
            out(&v, &list);
        }
        UsersCmd::Show { user } => {
            let v = request(cli, json!({"cmd": "user", "user": user_value(user)}))?;
            out(&v, &|v| {
                let u = &v["user"];
                for (label, val) in [
                    ("id", plain(&u["id"])),
                    ("name", plain(&u["name"])),
                    ("created (UTC)", time_of(&v["created_ms"])),
                    ("online", plain(&u["online"])),
                    ("banned", plain(&u["banned"])),
                    ("deleted", plain(&u["deleted"])),
                    ("sessions here", plain(&v["sessions_here"])),
                    ("friends", plain(&v["friends"])),
                    ("groups", plain(&v["groups"])),
                ] {
                    println!("{label:<14} {val}");
                }
            });
        }
        UsersCmd::Create { name, password } => {
            let v = request(
                cli,
                json!({"cmd": "user_create", "name": name, "password": password.get()?}),
            )?;
            out(&v, &|v| {
                println!(
                    "created user {} ({})",
                    v["user"]["id"],
                    plain(&v["user"]["name"])
                )
            });
        }
        UsersCmd::ResetPassword { user, password } => {
            let v = request(
                cli,
                json!({"cmd": "user_password", "user": user_value(user), "password": password.get()?}),
            )?;
            out(&v, &|v| println!("password of user {} changed", v["user"]));
        }
        UsersCmd::Ban { user } | UsersCmd::Unban { user } => {
            let c = if matches!(cmd, UsersCmd::Ban { .. }) {
                "user_ban"
            } else {
                "user_unban"
            };
            let v = request(cli, json!({"cmd": c, "user": user_value(user)}))?;
            out(&v, &|v| {
                let what = if v["banned"] == true {
                    "banned"
                } else {
                    "unbanned"
                };
                println!("user {} {what}", v["user"]);
            });
        }
        UsersCmd::Delete { user } => {
            let v = request(cli, json!({"cmd": "user_delete", "user": user_value(user)}))?;
            out(&v, &|v| println!("user {} deleted", v["user"]));
        }
    }
    Ok(())
}

/// Ask chatd for a backup and copy the stream after its reply into `file`.
fn live_backup(cli: &Cli, file: &Path) -> Result<chatd::backup::Summary, Failure> {
    let stream = connect(cli)?;
    let (reply, mut rest) = exchange(stream, &json!({"cmd": "backup"}))?;
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
    let ops = reply["position"]
        .as_object()
        .map(|p| p.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    Ok(chatd::backup::Summary { segments: 0, ops })
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn time_of(v: &Value) -> String {
    v.as_u64().map(format_time).unwrap_or_else(|| "-".into())
}

fn rows(list: &Value, keys: &[&str], cell: impl Fn(&str, &Value) -> String) -> Vec<Vec<String>> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|item| keys.iter().map(|k| cell(k, &item[*k])).collect())
                .collect()
        })
        .unwrap_or_default()
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
