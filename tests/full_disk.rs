//! A full disk, for real: chatd on a small tmpfs filesystem that the test
//! fills. Mounting needs root (CI runs as root); without it the test says
//! so and passes only outside CI.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A size-limited tmpfs, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mb: u64) -> Option<SmallDisk> {
        // SAFETY: geteuid only reads the process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "the full-disk tests need root in CI (to mount a tmpfs)"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount a {mb} MiB tmpfs");
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        chatd::store::space::free_bytes(self.path()).unwrap()
    }

    /// Fill the disk until only `leave` bytes are free (0: until it is full).
    fn fill(&self, leave: u64) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let chunk = vec![0x55u8; 64 << 10];
        while self.free() > leave {
            let n = ((self.free() - leave) as usize).min(chunk.len());
            if f.write_all(&chunk[..n.max(1)]).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The metrics (one recorder per process) and the mounts: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn settings(s: &mut chatd::config::Settings) {
    s.min_free_mb = 16;
    s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
}

fn health(srv: &TestServer) -> u16 {
    http_get(srv.metrics_addr(), "/health").0
}

/// Send `n` messages to `to`; their ids (every one acknowledged).
async fn send_all(c: &mut Client, to: u32, from: usize, n: usize) -> Vec<Value> {
    let mut ids = Vec::new();
    for i in from..from + n {
        let r = c.send_text(to, &format!("message {i}")).await;
        ids.push(r["id"].clone());
    }
    ids
}

/// Log bob in and take every waiting message: exactly `sent`, once each.
async fn bob_gets_exactly(srv: &TestServer, sent: &[Value]) {
    let mut bob = srv.client().await;
    bob.login("bob", "pw").await;
    let got = bob.take_messages(sent.len()).await;
    let mut ids: Vec<Value> = got.iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, sent, "every acknowledged message, in order");
    ids.dedup();
    assert_eq!(ids.len(), sent.len());
    bob.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_changes_not_the_service() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(disk) = SmallDisk::mount(64) else {
        return;
    };
    let dir = tempfile::tempdir_in(disk.path()).unwrap();
    let srv = TestServer::start_in(dir, settings).await;
    let (mut alice, alice_id) = srv.user("alice").await;
    let mut bob = srv.client().await;
    let bob_id = bob.register("bob", "pw").await;
    drop(bob);
    let (mut carol, carol_id) = srv.user("carol").await;
    carol
        .ok(json!({"type": "friend_request", "user": alice_id}))
        .await;
    alice
        .ok(json!({"type": "friend_accept", "user": carol_id}))
        .await;
    let mut sent = send_all(&mut alice, bob_id, 0, 20).await;
    carol.ok(json!({"type": "logout"})).await;
    // Alice saw the request, the friendship and carol leaving.
    while alice.push().await["type"] != "presence" {}
    assert_eq!(health(&srv), 200);

    let filler = disk.fill(10 << 20);
    eventually!("chatd notices the disk is full", health(&srv) == 503);
    let (_, body) = http_get(srv.metrics_addr(), "/health");
    assert!(body.contains("disk"), "{body}");
    let (_, metrics) = http_get(srv.metrics_addr(), "/metrics");
    assert_eq!(metric(&metrics, "chatd_storage_full"), 1.0);
    // No changes...
    alice
        .err(
            json!({"type": "send", "to": bob_id, "text": "nope"}),
            "storage_full",
        )
        .await;
    let mut newcomer = srv.client().await;
    newcomer
        .err(
            json!({"type": "register", "name": "dave", "password": "pw"}),
            "storage_full",
        )
        .await;
    // ...but logins, reads and presence.
    let mut carol = srv.client().await;
    carol.login("carol", "pw").await;
    let p = alice.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(carol_id), json!(true))
    );
    let h = alice
        .ok(json!({"type": "history", "with": bob_id, "limit": 200}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 20);
    alice.ok(json!({"type": "friends"})).await;

    // Room again: writes resume by themselves.
    std::fs::remove_file(filler).unwrap();
    eventually!("chatd takes changes again", health(&srv) == 200);
    sent.extend(send_all(&mut alice, bob_id, 20, 10).await);
    bob_gets_exactly(&srv, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_on_a_full_disk_comes_up_read_only() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(disk) = SmallDisk::mount(64) else {
        return;
    };
    let dir = tempfile::tempdir_in(disk.path()).unwrap();
    let srv = TestServer::start_in(dir, settings).await;
    let (mut alice, _) = srv.user("alice").await;
    let mut bob = srv.client().await;
    let bob_id = bob.register("bob", "pw").await;
    drop(bob);
    let mut sent = send_all(&mut alice, bob_id, 0, 20).await;
    drop(alice);
    let dir = srv.stop().await;

    // Not a byte left.
    let filler = disk.fill(0);
    assert!(disk.free() < 64 << 10);
    let srv = TestServer::start_in(dir, settings).await;
    assert_eq!(health(&srv), 503);
    let mut alice = srv.client().await;
    alice.login("alice", "pw").await;
    let h = alice
        .ok(json!({"type": "history", "with": bob_id, "limit": 200}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 20);
    alice
        .err(
            json!({"type": "send", "to": bob_id, "text": "nope"}),
            "storage_full",
        )
        .await;

    std::fs::remove_file(filler).unwrap();
    eventually!("chatd takes changes again", health(&srv) == 200);
    sent.extend(send_all(&mut alice, bob_id, 20, 5).await);
    bob_gets_exactly(&srv, &sent).await;
    // The room kept for a full disk is made again.
    eventually!(
        "the reserve is back",
        srv.dir.path().join("db").join("reserve").exists()
    );
    let _ = Duration::ZERO;
}

fn classic(v: Value) -> Vec<u8> {
    let mut b = v.to_string().into_bytes();
    b.push(0);
    b
}

/// A classic client's chat pushes until quiet: their texts.
async fn classic_texts(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(v) = c.read_value(Duration::from_millis(500)).await {
        if v["msgid"] == 6 {
            out.push(v["msg"].as_str().unwrap().to_string());
        }
    }
    out
}

async fn classic_login(srv: &TestServer, id: u64) -> Client {
    let mut c = srv.client().await;
    c.send_raw(&classic(json!({"msgid": 1, "id": id, "password": "pw"})))
        .await;
    assert_eq!(c.next().await["errno"], 0);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_classic_client_got_while_the_disk_was_full_does_not_come_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(disk) = SmallDisk::mount(64) else {
        return;
    };
    let dir = tempfile::tempdir_in(disk.path()).unwrap();
    let srv = TestServer::start_in(dir, settings).await;
    let (mut alice, _) = srv.user("alice").await;
    let mut c = srv.client().await;
    c.send_raw(&classic(
        json!({"msgid": 4, "name": "cora", "password": "pw"}),
    ))
    .await;
    let cora = c.next().await["id"].as_u64().unwrap();
    drop(c);
    send_all(&mut alice, cora as u32, 0, 5).await;
    let filler = disk.fill(10 << 20);
    eventually!("chatd notices the disk is full", health(&srv) == 503);
    // Delivered while full (written to the classic client: that counts).
    let mut c = classic_login(&srv, cora).await;
    assert_eq!(classic_texts(&mut c).await.len(), 5);
    drop(c);
    let mut c = classic_login(&srv, cora).await;
    assert_eq!(
        classic_texts(&mut c).await,
        Vec::<String>::new(),
        "not again"
    );
    drop(c);
    std::fs::remove_file(filler).unwrap();
    eventually!("chatd takes changes again", health(&srv) == 200);
    let mut c = classic_login(&srv, cora).await;
    assert_eq!(
        classic_texts(&mut c).await,
        Vec::<String>::new(),
        "nor after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_ran_out_of_disk_restarts_read_only_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(disk) = SmallDisk::mount(64) else {
        return;
    };
    let dir = tempfile::tempdir_in(disk.path()).unwrap();
    // No watermark: chatd writes until the disk itself says no.
    let p = spawn_chatd(dir.path(), &["--min-free-mb", "0"]);
    let mut alice = Client::connect(p.addr).await;
    alice.register("alice", "pw").await;
    alice.login("alice", "pw").await;
    let mut bob = Client::connect(p.addr).await;
    let bob_id = bob.register("bob", "pw").await;
    drop(bob);
    // Fill most of it, then write until chatd gives up.
    let filler = disk.fill(6 << 20);
    let mut acked = 0;
    // Text that does not compress (chatd compresses what it stores), so
    // that the disk fills within the rate limit.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    loop {
        let big: String = (0..3000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'a' + (seed % 26) as u8)
            })
            .collect();
        alice
            .send(&json!({"type": "send", "to": bob_id, "text": big, "req": acked}))
            .await;
        match alice.read_value(Duration::from_secs(10)).await {
            Some(r) if r["type"] == "sent" => acked += 1,
            _ => break,
        }
    }
    assert!(acked > 0);
    let mut p = p;
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "chatd stopped on the full disk");
    // It comes back up, read-only, with everything it acknowledged.
    let again = spawn_chatd(
        dir.path(),
        &["--min-free-mb", "8", "--metrics-listen", "127.0.0.1:0"],
    );
    assert_eq!(http_get(again.metrics.unwrap(), "/health").0, 503);
    let mut alice = Client::connect(again.addr).await;
    alice.login("alice", "pw").await;
    let mut stored = 0;
    let mut before = Value::Null;
    loop {
        let h = alice
            .ok(json!({"type": "history", "with": bob_id, "limit": 200, "before": before}))
            .await;
        let page = h["messages"].as_array().unwrap();
        stored += page.len();
        if h["more"] != true {
            break;
        }
        before = page[0]["id"].clone();
    }
    assert!(stored >= acked, "{stored} stored, {acked} acknowledged");
    std::fs::remove_file(filler).unwrap();
    eventually!(
        "writes resume",
        http_get(again.metrics.unwrap(), "/health").0 == 200
    );
    alice.send_text(bob_id, "after").await;
}
