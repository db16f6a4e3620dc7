//! Operating chatd: chatctl against a real chatd over its real admin socket,
//! backup and restore, configuration, metrics and health, SIGHUP, systemd
//! notifications.

mod common;

use common::*;
use serde_json::{json, Value};

use std::time::Duration;

#[tokio::test]
async fn chatctl_reports_and_manages_a_running_chatd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = spawn_chatd(d, &[]);

    // Users.
    let v = chatctl_json(d, &["users", "create", "alice", "--password", "pw"]);
    let alice = v["user"]["id"].as_u64().unwrap();
    chatctl_json(d, &["users", "create", "bob", "--password", "pw"]);
    let dup = chatctl(d, &["users", "create", "bob", "--password", "x"]);
    assert_eq!(dup.code, 1, "a refusal is exit code 1");
    assert!(dup.stderr.contains("taken"), "{}", dup.stderr);
    let list = chatctl_json(d, &["users", "list"]);
    assert_eq!(list["users"].as_array().unwrap().len(), 2);
    let found = chatctl_json(d, &["users", "search", "LIC"]);
    assert_eq!(found["users"][0]["name"], "alice");
    let shown = chatctl_json(d, &["users", "show", "alice"]);
    assert_eq!(shown["user"]["id"], alice);
    let missing = chatctl(d, &["users", "show", "nobody"]);
    assert_eq!(missing.code, 1);

    // A native and a classic session.
    let mut a = Client::connect(p.addr).await;
    a.login("alice", "pw").await;
    let mut b = Client::connect(p.addr).await;
    b.send_raw(b"{\"id\":2,\"msgid\":1,\"password\":\"pw\"}\0")
        .await;
    assert_eq!(b.next().await["errno"], 0);
    let g = a
        .ok(json!({"type": "group_create", "name": "ops", "desc": "d"}))
        .await;
    let gid = g["group"]["id"].as_u64().unwrap();
    a.send_text(2, "hello").await;
    assert_eq!(b.next().await["msg"], "hello");

    // Status and cluster.
    let s = chatctl_json(d, &["status"]);
    assert_eq!(
        (
            s["users"].clone(),
            s["groups"].clone(),
            s["messages"].clone()
        ),
        // "ops", and the lobby the web client offers.
        (json!(2), json!(2), json!(1))
    );
    assert_eq!(s["sessions"], 2);
    assert_eq!(s["node"], 1);
    assert!(s["storage_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    let table = chatctl(d, &["status"]);
    assert!(
        table.stdout.contains("messages") && table.stdout.contains("uptime"),
        "{}",
        table.stdout
    );
    let c = chatctl_json(d, &["cluster"]);
    assert_eq!(c["standalone"], true);

    // Sessions: list, kick.
    let sessions = chatctl_json(d, &["sessions", "list"]);
    let rows = sessions["sessions"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2);
    let dialects: Vec<&str> = rows
        .iter()
        .map(|r| r["dialect"].as_str().unwrap())
        .collect();
    assert!(dialects.contains(&"native") && dialects.contains(&"classic"));
    assert!(rows
        .iter()
        .all(|r| r["remote"].as_str().unwrap().starts_with("127.0.0.1:")));
    let t = chatctl(d, &["sessions", "list"]);
    assert!(t.stdout.starts_with("SESSION"), "{}", t.stdout);
    let bob_session = rows.iter().find(|r| r["user"] == 2).unwrap()["session"]
        .as_u64()
        .unwrap();
    chatctl_json(d, &["sessions", "kick", &bob_session.to_string()]);
    let bye = b.next().await;
    assert_eq!(
        (bye["msgid"].clone(), bye["id"].clone()),
        (json!(6), json!(0)),
        "classic clients are told as a notice"
    );
    assert!(b.closed().await);

    // Broadcast reaches everyone online.
    chatctl_json(d, &["broadcast", "maintenance at noon"]);
    let n = a.push_of("notice").await;
    assert_eq!(n["text"], "maintenance at noon");

    // Groups: list, show, dissolve.
    let gl = chatctl_json(d, &["groups", "list"]);
    assert_eq!(gl["groups"][0]["id"], gid);
    assert_eq!(gl["groups"][0]["members"], 1);
    let gs = chatctl_json(d, &["groups", "show", &gid.to_string()]);
    assert_eq!(gs["members"][0]["role"], "creator");
    chatctl_json(d, &["groups", "dissolve", &gid.to_string()]);
    assert_eq!(a.push_of("group_event").await["event"], "dissolved");
    assert_eq!(chatctl(d, &["groups", "show", "999"]).code, 1);

    // Passwords, bans, deletion.
    chatctl_json(d, &["users", "reset-password", "bob", "--password", "new"]);
    let mut b2 = Client::connect(p.addr).await;
    b2.err(
        json!({"type": "login", "name": "bob", "password": "pw"}),
        "invalid_credentials",
    )
    .await;
    b2.login("bob", "new").await;
    chatctl_json(d, &["users", "ban", "bob"]);
    let bye = b2.push_of("bye").await;
    assert_eq!(bye["reason"], "banned");
    let mut b3 = Client::connect(p.addr).await;
    b3.err(
        json!({"type": "login", "name": "bob", "password": "new"}),
        "banned",
    )
    .await;
    chatctl_json(d, &["users", "unban", "2"]);
    b3.login("bob", "new").await;
    chatctl_json(d, &["users", "delete", "bob"]);
    assert_eq!(b3.push_of("bye").await["reason"], "account_deleted");
    let mut b4 = Client::connect(p.addr).await;
    b4.err(
        json!({"type": "login", "name": "bob", "password": "new"}),
        "invalid_credentials",
    )
    .await;
    a.err(
        json!({"type": "send", "to": 2, "text": "gone?"}),
        "unknown_user",
    )
    .await;
    let deleted = chatctl_json(d, &["users", "show", "2"]);
    assert_eq!(deleted["user"]["deleted"], true);

    let digest = chatctl_json(d, &["digest"]);
    assert_eq!(digest["digest"].as_str().unwrap().len(), 16);

    // With chatd down, chatctl says so and exits 3.
    assert!(p.terminate().success());
    let down = chatctl(d, &["status"]);
    assert_eq!(down.code, 3);
    assert!(down.stderr.contains("not running"), "{}", down.stderr);
    let down = chatctl(d, &["--json", "users", "list"]);
    assert_eq!(down.code, 3);
    let v: Value = serde_json::from_str(down.stdout.trim()).unwrap();
    assert_eq!(v["ok"], false);
}

#[tokio::test]
async fn a_backup_of_a_running_node_restores_into_a_fresh_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = spawn_chatd(d, &[]);
    let mut a = Client::connect(p.addr).await;
    a.register("alice", "pw").await;
    let b_id = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    let g = a.ok(json!({"type": "group_create", "name": "keep"})).await["group"]["id"].clone();
    a.ok(json!({"type": "group_invite", "group": g, "user": b_id}))
        .await;
    a.ok(json!({"type": "friend_request", "user": b_id})).await;
    for i in 0..50 {
        a.send_text(b_id, &format!("m{i}")).await;
        a.ok(json!({"type": "send", "group": g, "text": format!("g{i}")}))
            .await;
    }
    let before = chatctl_json(d, &["digest"]);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("chatd.bak");
    // A backup while chatd is serving.
    let bk = chatctl_json(d, &["backup", file.to_str().unwrap()]);
    assert!(bk["ops"].as_u64().unwrap() >= 100);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Still serving.
    a.send_text(b_id, "after the backup").await;

    // Restore refuses a running chatd's directory, and a non-empty one.
    let refused = chatctl(d, &["restore", file.to_str().unwrap()]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(refused.stderr.contains("running"), "{}", refused.stderr);
    let full = tempfile::tempdir().unwrap();
    std::fs::write(full.path().join("x"), b"x").unwrap();
    let refused = chatctl(full.path(), &["restore", file.to_str().unwrap()]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("not empty"), "{}", refused.stderr);
    // Offline backup of a running node is refused too.
    let off = chatctl(
        d,
        &[
            "backup",
            "--offline",
            out.path().join("x.bak").to_str().unwrap(),
        ],
    );
    assert_eq!(off.code, 3);

    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("restored");
    let r = chatctl(&target, &["restore", file.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let q = spawn_chatd(&target, &[]);
    let after = chatctl_json(&target, &["digest"]);
    assert_eq!(
        after["digest"], before["digest"],
        "the same users, groups and messages"
    );
    assert_eq!(
        (
            after["users"].clone(),
            after["groups"].clone(),
            after["messages"].clone()
        ),
        // A group, and the lobby.
        (json!(2), json!(2), json!(100))
    );
    let mut b = Client::connect(q.addr).await;
    b.login("bob", "pw").await;
    let h = b
        .ok(json!({"type": "history", "with": 1, "limit": 100}))
        .await;
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 50);
    assert_eq!(texts[49], "m49");
    let f = b.ok(json!({"type": "friends"})).await;
    assert_eq!(f["incoming"][0]["id"], 1);
    // New writes continue from where the backup left off.
    b.send_text(1, "on the restored node").await;

    // An offline backup of the stopped original has everything, the last message too.
    assert!(p.terminate().success());
    let off = out.path().join("offline.bak");
    chatctl_json(d, &["backup", "--offline", off.to_str().unwrap()]);
    let again = fresh.path().join("again");
    chatctl_json(&again, &["restore", off.to_str().unwrap()]);
    let r = spawn_chatd(&again, &[]);
    assert_eq!(chatctl_json(&again, &["status"])["messages"], 101);
    drop((q, r));
}

#[test]
fn configuration_precedence_flag_over_variable_over_file_over_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chatd.toml");
    std::fs::write(
        &file,
        "max_text_bytes = 1000\nmax_frame_bytes = 2000\nwelcome = \"from the file\"\njoin = [\"a:1\", \"b:2\"]\n",
    )
    .unwrap();
    let check = |env: &[(&str, &str)], args: &[&str]| -> (bool, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
            .env_clear()
            .envs(env.iter().copied())
            .args(args)
            .arg("--check-config")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let f = file.to_str().unwrap();
    let (ok, out, _) = check(
        &[
            ("CHATD_MAX_FRAME_BYTES", "3000"),
            ("CHATD_WELCOME", "from the variable"),
        ],
        &["--config", f, "--welcome", "from the flag"],
    );
    assert!(ok);
    let v: toml::Table = out.parse().unwrap();
    assert_eq!(
        v["welcome"].as_str(),
        Some("from the flag"),
        "flag beats variable and file"
    );
    assert_eq!(
        v["max_frame_bytes"].as_integer(),
        Some(3000),
        "variable beats file"
    );
    assert_eq!(
        v["max_text_bytes"].as_integer(),
        Some(1000),
        "file beats default"
    );
    assert_eq!(v["max_sessions_per_user"].as_integer(), Some(8), "default");
    assert_eq!(v["join"].as_array().unwrap().len(), 2);
    // The file can be named by a variable too.
    let (ok, out, _) = check(&[("CHATD_CONFIG", f)], &[]);
    assert!(ok);
    assert!(out.contains("max_text_bytes = 1000"));
    // A bad key, a bad value, a missing file: named, and a non-zero exit.
    std::fs::write(&file, "max_text_bytez = 5\n").unwrap();
    let (ok, _, err) = check(&[], &["--config", f]);
    assert!(!ok);
    assert!(
        err.contains("max_text_bytez") && err.contains("no such setting"),
        "{err}"
    );
    std::fs::write(&file, "max_text_bytes = \"big\"\n").unwrap();
    let (ok, _, err) = check(&[], &["--config", f]);
    assert!(!ok);
    assert!(
        err.contains("max_text_bytes") && err.contains("big"),
        "{err}"
    );
    std::fs::write(&file, "listen = [\n").unwrap();
    let (ok, _, err) = check(&[], &["--config", f]);
    assert!(!ok);
    assert!(err.contains("chatd.toml"), "{err}");
    let (ok, _, err) = check(&[], &["--config", "/nonexistent/chatd.toml"]);
    assert!(!ok);
    assert!(err.contains("cannot read config file"), "{err}");
    // Dialect ports: a list in the file, comma-separated in the variable,
    // repeatable on the command line; a bad name is refused.
    std::fs::write(&file, "listen_dialect = [\"go-chatroom=127.0.0.1:8889\"]\n").unwrap();
    let (ok, out, _) = check(&[], &["--config", f]);
    assert!(ok);
    assert!(
        out.contains("listen_dialect = [\"go-chatroom=127.0.0.1:8889\"]"),
        "{out}"
    );
    let (ok, out, _) = check(
        &[(
            "CHATD_LISTEN_DIALECT",
            "c-chatroom=127.0.0.1:1,epoll-chatroom=127.0.0.1:2",
        )],
        &[],
    );
    assert!(ok);
    assert!(
        out.contains("\"c-chatroom=127.0.0.1:1\", \"epoll-chatroom=127.0.0.1:2\""),
        "{out}"
    );
    let (ok, out, _) = check(
        &[],
        &[
            "--listen-dialect",
            "sponge=127.0.0.1:3",
            "--listen-dialect",
            "native=127.0.0.1:4",
        ],
    );
    assert!(ok && out.contains("sponge=127.0.0.1:3") && out.contains("native=127.0.0.1:4"));
    let (ok, _, err) = check(&[], &["--listen-dialect", "telnet=127.0.0.1:5"]);
    assert!(!ok);
    assert!(
        err.contains("unknown dialect") && err.contains("go-chatroom"),
        "{err}"
    );
    // The shipped example is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/chatd.toml");
    let (ok, out, err) = check(&[], &["--config", example]);
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"0.0.0.0:6000\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("cluster.key");
    chatd::mesh::tls::init_cluster(&key).unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let k = key.to_str().unwrap();
    let n1 = spawn_chatd(
        d1.path(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--mesh-listen",
            "127.0.0.1:0",
            "--cluster-key",
            k,
            "--peer-timeout-ms",
            "1000",
        ],
    );
    let m = n1.metrics.expect("metrics address");
    let (code, body) = http_get(m, "/health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ok\""));

    let mut a = Client::connect(n1.addr).await;
    a.register("alice", "pw").await;
    let b_id = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    let mut b = Client::connect(n1.addr).await;
    b.send_raw(format!("{{\"id\":{b_id},\"msgid\":1,\"password\":\"pw\"}}\0").as_bytes())
        .await;
    b.next().await;
    for i in 0..5 {
        a.send_text(b_id, &format!("m{i}")).await;
        b.next().await;
    }
    let (code, text) = http_get(m, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "chatd_messages_in_total"), 5.0, "{text}");
    assert_eq!(metric(&text, "chatd_messages_out_total"), 5.0);
    assert_eq!(metric(&text, "chatd_connections"), 2.0);
    assert_eq!(metric(&text, "chatd_sessions{dialect=\"native\"}"), 1.0);
    assert_eq!(metric(&text, "chatd_sessions{dialect=\"classic\"}"), 1.0);
    assert_eq!(metric(&text, "chatd_delivery_latency_seconds_count"), 5.0);
    assert!(metric(&text, "chatd_commit_flush_seconds_count") >= 5.0);
    assert!(text.contains("chatd_hub_queue_depth"));
    // Memory: the process's resident bytes, as the kernel counts them, and
    // what the allocator has live (which may be more than is resident: sled
    // allocates counters it never touches).
    let rss = metric(&text, "chatd_resident_bytes");
    let status = std::fs::read_to_string(format!("/proc/{}/status", n1.pid())).unwrap();
    let kernel = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap()
        * 1024.0;
    assert!(
        rss > 1e6 && (rss - kernel).abs() < kernel / 2.0,
        "{rss} {kernel}"
    );
    assert!(metric(&text, "chatd_heap_allocated_bytes") > 1e5, "{text}");
    assert!(text.contains("chatd_session_queue_depth_bucket"));
    assert_eq!(http_get(m, "/nowhere").0, 404);

    // A second node joins: peers and lag are reported; when it is gone, and
    // the cluster has nobody else, node 1 turns unhealthy.
    let seed = n1.mesh.unwrap().to_string();
    let n2 = spawn_chatd(
        d2.path(),
        &[
            "--join",
            &seed,
            "--cluster-key",
            k,
            "--peer-timeout-ms",
            "1000",
        ],
    );
    eventually!(
        "node 2 is up",
        metric(&http_get(m, "/metrics").1, "chatd_mesh_peers{state=\"up\"}") == 1.0
    );
    assert!(http_get(m, "/metrics")
        .1
        .contains("chatd_mesh_lag_ops{node=\"2\"}"));
    assert_eq!(http_get(m, "/health").0, 200);
    n2.kill9();
    eventually!("node 1 is unhealthy", http_get(m, "/health").0 == 503);
    let (_, body) = http_get(m, "/health");
    assert!(body.contains("no cluster member is reachable"), "{body}");
}

#[tokio::test]
async fn sighup_reloads_limits_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chatd.toml");
    std::fs::write(&file, "max_text_bytes = 100\nwelcome = \"first\"\n").unwrap();
    let data = dir.path().join("data");
    let p = spawn_chatd(&data, &["--config", file.to_str().unwrap()]);
    let mut a = Client::connect(p.addr).await;
    a.register("alice", "pw").await;
    let b = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    assert_eq!(a.push_of("notice").await["text"], "first");
    let long = "x".repeat(150);
    a.err(
        json!({"type": "send", "to": b, "text": long}),
        "text_too_long",
    )
    .await;
    std::fs::write(&file, "max_text_bytes = 1000\nwelcome = \"second\"\n").unwrap();
    p.signal(libc::SIGHUP);
    // The same connection, after the reload.
    eventually!("the new limit applies", {
        a.call(json!({"type": "send", "to": b, "text": long})).await["type"] == "sent"
    });
    let mut c = Client::connect(p.addr).await;
    c.login("bob", "pw").await;
    assert_eq!(c.push_of("notice").await["text"], "second");
    // A broken file is refused and the old settings stay.
    std::fs::write(&file, "max_text_bytes = \"oops\"\n").unwrap();
    p.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.ok(json!({"type": "send", "to": b, "text": long})).await;
    assert!(p.terminate().success());
}

#[test]
fn systemd_is_told_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // systemd names the watched process in WATCHDOG_PID; `exec` keeps the pid.
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_chatd"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--web-listen", ""])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    let mut recv = |seen: &mut String| {
        let n = sock.recv(&mut buf).expect("a notification");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    };
    while !seen.contains("READY=1") {
        recv(&mut seen);
    }
    while !seen.contains("WATCHDOG=1") {
        recv(&mut seen);
    }
    // SAFETY: kill(2) on our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    while !seen.contains("STOPPING=1") {
        recv(&mut seen);
    }
    assert!(child.wait().unwrap().success());
}
