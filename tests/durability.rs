//! Crashes and restarts of a real chatd process: what was acknowledged
//! survives `kill -9`, and shutdown on SIGTERM is clean.
//!
//! The crash tests slow every commit flush down (`--fault-commit-delay-ms`):
//! a reply or push sent before its flush would then be lost by the kill,
//! every time, instead of once in a while.

mod common;

use common::cluster::admin;
use common::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const SLOW_COMMIT: [&str; 2] = ["--fault-commit-delay-ms", "30"];

/// Send all requests in one write, then collect their replies in order.
async fn pipeline(c: &mut Client, reqs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut bytes = Vec::new();
    for r in reqs {
        bytes.extend(serde_json::to_vec(r).unwrap());
        bytes.push(b'\n');
    }
    c.send_raw(&bytes).await;
    let mut replies = Vec::new();
    while replies.len() < reqs.len() {
        let r = c.next().await;
        match r["type"].as_str() {
            Some("sent") => replies.push(r),
            Some("error") => panic!("{r}"),
            _ => {} // a push
        }
    }
    replies
}

#[tokio::test]
async fn kill_9_right_after_acknowledgements_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(dir.path(), &SLOW_COMMIT);
    let mut alice = Client::connect(p.addr).await;
    alice.register("alice", "pw").await;
    alice.login("alice", "pw").await;
    let mut bob = Client::connect(p.addr).await;
    let bob_id = bob.register("bob", "pw").await;
    bob.login("bob", "pw").await;
    let gid = alice
        .ok(json!({"type": "group_create", "name": "survivors"}))
        .await["group"]["id"]
        .clone();
    bob.ok(json!({"type": "group_join", "group": gid})).await;

    // 100 messages bob receives and acknowledges (and sees the ack confirmed).
    let early: Vec<_> = (0..100)
        .map(|i| json!({"type": "send", "to": bob_id, "text": format!("early {i}")}))
        .collect();
    pipeline(&mut alice, &early).await;
    let mut acked = HashSet::new();
    for m in bob.take_messages(100).await {
        acked.insert(m["id"].as_u64().unwrap());
    }
    // 200 more that bob receives but does not acknowledge, direct and group.
    let late: Vec<_> = (0..200)
        .map(|i| {
            let text = format!("late {i}");
            if i % 4 == 0 {
                json!({"type": "send", "group": gid, "text": text})
            } else {
                json!({"type": "send", "to": bob_id, "text": text})
            }
        })
        .collect();
    let replies = pipeline(&mut alice, &late).await;
    let expected: HashMap<u64, String> = replies
        .iter()
        .zip(&late)
        .map(|(r, req)| {
            (
                r["id"].as_u64().unwrap(),
                req["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The last "sent" is in: pull the plug at once.
    p.kill9();

    let p = spawn_chatd(dir.path(), &[]);
    let mut bob = Client::connect(p.addr).await;
    bob.login("bob", "pw").await;
    let mut got: HashMap<u64, String> = HashMap::new();
    while got.len() < expected.len() {
        let m = bob.push_of("message").await;
        let id = m["id"].as_u64().unwrap();
        assert!(
            !acked.contains(&id),
            "an acknowledged message came again: {m}"
        );
        assert!(
            got.insert(id, m["text"].as_str().unwrap().to_string())
                .is_none(),
            "delivered twice: {m}"
        );
    }
    assert_eq!(got, expected);
    let ids: Vec<u64> = got.keys().copied().collect();
    bob.ok(json!({"type": "ack", "ids": ids})).await;
    bob.quiet().await;
    // Accounts, the group and its members survived too.
    let members = bob.ok(json!({"type": "group_members", "group": gid})).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 2);
    let mut alice = Client::connect(p.addr).await;
    alice.login("alice", "pw").await;
    let h = alice
        .ok(json!({"type": "history", "with": bob_id, "limit": 200}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 200);

    // And after the acks, another crash: nothing comes again.
    p.kill9();
    let p = spawn_chatd(dir.path(), &[]);
    let mut bob = Client::connect(p.addr).await;
    bob.login("bob", "pw").await;
    bob.quiet().await;
}

#[tokio::test]
async fn kill_9_under_load_keeps_every_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let fast = [
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
        "--fault-commit-delay-ms",
        "30",
    ];
    let p = spawn_chatd(dir.path(), &fast);
    let mut bob = Client::connect(p.addr).await;
    let bob_id = bob.register("bob", "pw").await;
    drop(bob);
    let mut alice = Client::connect(p.addr).await;
    alice.register("alice", "pw").await;
    alice.login("alice", "pw").await;
    // Pipeline sends without waiting; read "sent" replies as they come.
    let mut burst = Vec::new();
    for i in 0..2000 {
        burst.extend(
            format!("{{\"type\":\"send\",\"to\":{bob_id},\"text\":\"m{i}\",\"cid\":\"c{i}\"}}\n")
                .into_bytes(),
        );
    }
    alice.send_raw(&burst).await;
    let mut acked = HashSet::new();
    while acked.len() < 700 {
        let r = alice.next().await;
        assert_eq!(r["type"], "sent", "{r}");
        acked.insert(r["id"].as_u64().unwrap());
    }
    // Mid-stream: kill.
    p.kill9();
    // Replies already on the wire still count as acknowledged.
    while let Some(r) = alice.read_value(Duration::from_millis(200)).await {
        if r["type"] == "sent" {
            acked.insert(r["id"].as_u64().unwrap());
        }
    }
    let p = spawn_chatd(dir.path(), &fast);
    let mut bob = Client::connect(p.addr).await;
    bob.login("bob", "pw").await;
    let mut seen = HashSet::new();
    let mut texts = HashSet::new();
    // Everything acknowledged arrives; possibly a few more that were stored
    // but not yet acknowledged when the process died; nothing twice.
    loop {
        let Some(m) = bob.read_value(Duration::from_secs(2)).await else {
            break;
        };
        if m["type"] != "message" {
            continue;
        }
        assert!(seen.insert(m["id"].as_u64().unwrap()), "twice: {m}");
        assert!(
            texts.insert(m["text"].as_str().unwrap().to_string()),
            "stored twice: {m}"
        );
    }
    let missing: Vec<_> = acked.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost",
        missing.len()
    );
    // The count `status` keeps came through the crash and the replay: it is
    // what is stored (the digest walks the history to count it).
    let status = admin(dir.path(), json!({"cmd": "status"})).await;
    let digest = admin(dir.path(), json!({"cmd": "digest"})).await;
    assert_eq!(status["messages"], digest["messages"], "{status} {digest}");
    assert_eq!(status["messages"], json!(seen.len()), "{status}");
    drop(p);
}

#[tokio::test]
async fn sigterm_says_goodbye_exits_0_and_nobody_is_online_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(dir.path(), &[]);
    let mut alice = Client::connect(p.addr).await;
    let a_id = alice.register("alice", "pw").await;
    alice.login("alice", "pw").await;
    let mut bob = Client::connect(p.addr).await;
    let b_id = bob.register("bob", "pw").await;
    bob.login("bob", "pw").await;
    alice
        .ok(json!({"type": "friend_request", "user": b_id}))
        .await;
    bob.push_of("friend_request").await;
    bob.ok(json!({"type": "friend_accept", "user": a_id})).await;
    alice.push_of("friend_added").await;
    let mut classic = Client::connect(p.addr).await;
    classic
        .send_raw(format!("{{\"id\":{b_id},\"msgid\":1,\"password\":\"pw\"}}\0").as_bytes())
        .await;
    assert_eq!(classic.next().await["errno"], 0);

    let started = Instant::now();
    let stopping = std::thread::spawn(move || p.terminate());
    let bye = alice.push_of("bye").await;
    assert_eq!(bye["reason"], "shutting_down");
    assert!(alice.closed().await);
    // The classic client is told in a way it can show.
    let notice = classic.next().await;
    assert_eq!(notice["msgid"], 6);
    assert_eq!(notice["id"], 0);
    let status = stopping.join().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let p = spawn_chatd(dir.path(), &[]);
    let mut alice = Client::connect(p.addr).await;
    alice.login("alice", "pw").await;
    let f = alice.ok(json!({"type": "friends"})).await;
    assert_eq!(f["friends"][0]["id"], b_id);
    assert_eq!(
        f["friends"][0]["online"], false,
        "nobody is online who is not connected"
    );
    assert!(p.terminate().success());
}

#[tokio::test]
async fn a_second_chatd_on_the_same_data_dir_is_refused_clearly() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(dir.path(), &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--web-listen", ""])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    drop(p);
}

/// sled writes a page too big for its log to a file of its own and never
/// fsyncs that file, so a power cut could lose what such a file held. chatd
/// keeps every record of the tables small enough that no page gets there:
/// big batches of the longest texts must leave no such file behind. (The
/// operation log is chatd's own files, synced for every commit.)
#[tokio::test]
async fn big_batches_of_long_texts_stay_in_the_synced_log() {
    let srv = TestServer::start_with(|s| {
        s.rate_limit = 1e6;
        s.rate_burst = 1e6;
    })
    .await;
    let (mut alice, _) = srv.user("alice").await;
    let mut bob = srv.client().await;
    let bob_id = bob.register("bob", "pw").await;
    let long = "x".repeat(4096);
    let reqs: Vec<_> = (0..1200)
        .map(|i| json!({"type": "send", "to": bob_id, "text": long, "cid": format!("c{i}")}))
        .collect();
    for part in reqs.chunks(400) {
        pipeline(&mut alice, part).await;
    }
    // Acknowledge everything too: acks from many messages make big ops.
    bob.login("bob", "pw").await;
    let got = bob.take_messages(1200).await;
    assert_eq!(got.len(), 1200);
    let ids: Vec<u64> = got.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    bob.ok(json!({"type": "ack", "ids": ids})).await;
    drop(alice);
    drop(bob);
    let dir = srv.stop().await;
    let mut files = Vec::new();
    let db = dir.path().join("db").join("tables");
    assert!(db.join("conf").exists(), "no database at {}", db.display());
    if let Ok(d) = std::fs::read_dir(db.join("blobs")) {
        files.extend(d.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    assert!(files.is_empty(), "unsynced page files: {files:?}");
    let log = dir.path().join("db").join("oplog").join("1.log");
    assert!(log.exists(), "no log at {}", log.display());
}

/// The unsafe setting skips the flush before acknowledging, nothing else:
/// messages flow, and a clean shutdown still keeps everything.
#[tokio::test]
async fn unsafe_no_flush_still_delivers_and_keeps_data_over_a_clean_restart() {
    let srv = TestServer::start_with(|s| s.unsafe_no_flush = true).await;
    let (mut alice, alice_id) = srv.user("alice").await;
    let (mut bob, bob_id) = srv.user("bob").await;
    let reqs: Vec<_> = (0..50)
        .map(|i| json!({"type": "send", "to": bob_id, "text": format!("fast {i}")}))
        .collect();
    pipeline(&mut alice, &reqs).await;
    assert_eq!(bob.take_messages(50).await.len(), 50);
    drop(alice);
    drop(bob);
    let dir = srv.stop().await;
    let srv = TestServer::start_in(dir, |_| {}).await;
    let mut bob = srv.client().await;
    bob.login("bob", "pw").await;
    let h = bob
        .ok(json!({"type": "history", "with": alice_id, "limit": 100}))
        .await;
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(50), "{h}");
}

/// A server dropped without being shut down stops its threads before the
/// drop returns: the directory is free for the next server at once, with
/// everything that was acknowledged, and nothing writes into it afterwards.
#[tokio::test]
async fn a_server_dropped_unstopped_lets_go_of_its_directory() {
    let srv = TestServer::start().await;
    let (mut alice, _) = srv.user("alice").await;
    let (_bob, bob_id) = srv.user("bob").await;
    alice
        .ok(json!({"type": "send", "to": bob_id, "text": "kept"}))
        .await;
    let dir = srv.abandon();
    let srv = TestServer::start_in(dir, |_| {}).await;
    let mut bob = srv.client().await;
    bob.login("bob", "pw").await;
    assert_eq!(bob.take_messages(1).await[0]["text"], "kept");
}

#[tokio::test]
async fn unsafe_no_flush_still_reaches_the_disk_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(dir.path(), &["--unsafe-no-flush"]);
    let mut alice = Client::connect(p.addr).await;
    alice.register("alice", "pw").await;
    alice.login("alice", "pw").await;
    let mut bob = Client::connect(p.addr).await;
    let bob_id = bob.register("bob", "pw").await;
    bob.login("bob", "pw").await;
    let reqs: Vec<_> = (0..20)
        .map(|i| json!({"type": "send", "to": bob_id, "text": format!("soon {i}")}))
        .collect();
    pipeline(&mut alice, &reqs).await;
    assert_eq!(bob.take_messages(20).await.len(), 20);
    // Longer than the promised "about a second", then a crash.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    p.kill9();

    // The log itself kept them (the tables alone would not let peers or a
    // backup see them): two registrations and twenty messages, at least.
    let _p = spawn_chatd(dir.path(), &[]);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("b.bak");
    let bk = chatctl_json(dir.path(), &["backup", file.to_str().unwrap()]);
    assert!(bk["ops"].as_u64().unwrap() >= 22, "{bk}");
}
