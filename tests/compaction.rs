//! Log compaction and snapshots on real nodes over real QUIC: a node away
//! past the point where its peers compacted their logs comes back by
//! snapshot and converges.

mod common;

use common::cluster::*;
use common::*;
use serde_json::json;

/// Where a node's log ends and begins for origin 1 (its status).
async fn log_of_node_1(node: &Node) -> (u64, u64) {
    let s = node.admin(json!({"cmd": "status"})).await;
    assert_eq!(s["ok"], true, "{s}");
    let at = |k: &str| s[k]["1"].as_u64().unwrap_or(0);
    (at("log"), at("log_start"))
}

/// How many messages the history with `with` holds, page by page.
async fn history_len(c: &mut Client, with: u64) -> usize {
    let mut n = 0;
    let mut before = serde_json::Value::Null;
    loop {
        let h = c
            .ok(json!({"type": "history", "with": with, "before": before, "limit": 200}))
            .await;
        let page = h["messages"].as_array().unwrap();
        n += page.len();
        if h["more"] != true || page.is_empty() {
            return n;
        }
        before = page[0]["id"].clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_past_the_compaction_point_rejoins_by_snapshot() {
    // Little log is kept beyond what the tables hold: 5 s, so that a node
    // slow to receive what the cluster did while it formed still gets it
    // from a log. A snapshot sent then would pin its point in the sender's
    // log for two minutes (`PIN_GRACE`), past this test's waits.
    let keep_little = |s: &mut chatd::config::Settings| s.log_keep_secs = 5;
    let mut c = Cluster::start_with(3, |_, s| keep_little(s)).await;
    let mut a = c.nodes[0].client().await;
    a.register("alice", "pw").await;
    let bob = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    a.send_text(bob, "before").await;
    c.wait_converged().await;
    let (had, _) = log_of_node_1(&c.nodes[2]).await;

    c.stop(2).await;
    for i in 0..300 {
        a.send_text(bob, &format!("while away {i}")).await;
    }
    let group = a
        .ok(json!({"type": "group_create", "name": "later", "desc": ""}))
        .await["group"]["id"]
        .as_u64()
        .unwrap();
    eventually!("nodes 1 and 2 compacted past what node 3 has", {
        log_of_node_1(&c.nodes[0]).await.1 > had && log_of_node_1(&c.nodes[1]).await.1 > had
    });

    c.restart_with(2, keep_little).await;
    let digest = c.wait_converged().await;
    assert!(!digest.is_empty());
    // Bob, on the node that came back, has everything, and it is still
    // pending for him (he never received it).
    let mut b = c.nodes[2].client().await;
    let r = b.login("bob", "pw").await;
    assert_eq!(r["type"], "logged_in", "{r}");
    assert_eq!(history_len(&mut b, 1).await, 301);
    b.ok(json!({"type": "group_join", "group": group})).await;
    let g = b.ok(json!({"type": "groups"})).await;
    assert_eq!(g["groups"][0]["name"], "later", "{g}");
    // Life goes on from the logs: a new message reaches the node that came
    // back, and one from it reaches the others.
    a.send_text(bob, "after").await;
    b.ok(json!({"type": "send", "to": 1, "text": "back"})).await;
    c.wait_converged().await;
    let h = a.ok(json!({"type": "history", "with": bob})).await;
    let last = h["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["text"], "back", "{h}");
}

/// Operations a stopped-or-running node's log holds, by `chatctl status`.
fn kept_by_status(dir: &std::path::Path) -> u64 {
    let s = chatctl_json(dir, &["status"]);
    let sum = |k: &str| -> u64 {
        s[k].as_object()
            .map_or(0, |o| o.values().map(|v| v.as_u64().unwrap_or(0)).sum())
    };
    sum("log") - sum("log_start")
}

#[tokio::test]
async fn a_compacted_node_is_backed_up_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = spawn_chatd(d, &["--log-keep-secs", "0"]);
    let mut a = Client::connect(p.addr).await;
    a.register("alice", "pw").await;
    let bob = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    let g = a.ok(json!({"type": "group_create", "name": "kept"})).await["group"]["id"].clone();
    for i in 0..200 {
        a.send_text(bob, &format!("m{i}")).await;
    }
    eventually!("the log is compacted", kept_by_status(d) < 10);
    let before = chatctl_json(d, &["digest"]);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("live.bak");
    chatctl_json(d, &["backup", file.to_str().unwrap()]);
    a.send_text(bob, "after the backup").await;

    let restored = out.path().join("restored");
    chatctl_json(&restored, &["restore", file.to_str().unwrap()]);
    let q = spawn_chatd(&restored, &[]);
    let after = chatctl_json(&restored, &["digest"]);
    assert_eq!(after["digest"], before["digest"]);
    assert_eq!(after["messages"], 200);
    let mut b = Client::connect(q.addr).await;
    b.login("bob", "pw").await;
    assert_eq!(history_len(&mut b, 1).await, 200);
    b.ok(json!({"type": "group_join", "group": g})).await;
    b.ok(json!({"type": "send", "group": g, "text": "on the restored node"}))
        .await;
    drop(q);

    // Offline, the stopped original's backup has the last message too.
    assert!(p.terminate().success());
    let off = out.path().join("offline.bak");
    chatctl_json(d, &["backup", "--offline", off.to_str().unwrap()]);
    let again = out.path().join("again");
    chatctl_json(&again, &["restore", off.to_str().unwrap()]);
    let r = spawn_chatd(&again, &[]);
    assert_eq!(chatctl_json(&again, &["status"])["messages"], 201);
    drop(r);
}

/// Every message id in the history with `with`, page by page.
async fn history_ids(c: &mut Client, with: u64) -> std::collections::HashSet<u64> {
    let mut ids = std::collections::HashSet::new();
    let mut before = serde_json::Value::Null;
    loop {
        let h = c
            .ok(json!({"type": "history", "with": with, "before": before, "limit": 200}))
            .await;
        let page = h["messages"].as_array().unwrap();
        for m in page {
            assert!(ids.insert(m["id"].as_u64().unwrap()), "stored twice: {m}");
        }
        if h["more"] != true || page.is_empty() {
            return ids;
        }
        before = page[0]["id"].clone();
    }
}

#[tokio::test]
async fn kill_9_while_the_log_is_compacted_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Each compaction pass pauses at its steps, so that most kills land
    // inside one.
    let args = [
        "--log-keep-secs",
        "0",
        "--fault-compact-delay-ms",
        "200",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut p = spawn_chatd(d, &args);
    let mut a = Client::connect(p.addr).await;
    a.register("alice", "pw").await;
    let bob = a.register("bob", "pw").await;
    drop(a);
    let mut acked = std::collections::HashSet::new();
    let mut compacted_before = 0;
    for run in 0..4 {
        let mut a = Client::connect(p.addr).await;
        a.login("alice", "pw").await;
        // Send for a while (compaction runs every second), and pull the
        // plug at a random moment, mid-burst.
        let until =
            std::time::Instant::now() + std::time::Duration::from_millis(1500 + next() % 2500);
        let mut i = 0;
        'load: loop {
            // A steady trickle: enough for every compaction pass to have
            // segments to drop, few enough to check them all afterwards.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut burst = Vec::new();
            for _ in 0..50 {
                i += 1;
                burst.extend(
                    format!("{{\"type\":\"send\",\"to\":{bob},\"text\":\"r{run} m{i}\"}}\n")
                        .into_bytes(),
                );
            }
            a.send_raw(&burst).await;
            for _ in 0..50 {
                if std::time::Instant::now() >= until {
                    break 'load;
                }
                let r = a.next().await;
                assert_eq!(r["type"], "sent", "{r}");
                acked.insert(r["id"].as_u64().unwrap());
            }
        }
        p.kill9();
        while let Some(r) = a.read_value(std::time::Duration::from_millis(200)).await {
            if r["type"] == "sent" {
                acked.insert(r["id"].as_u64().unwrap());
            }
        }
        // It starts, and has every message it acknowledged.
        p = spawn_chatd(d, &args);
        let mut b = Client::connect(p.addr).await;
        b.login("bob", "pw").await;
        let stored = history_ids(&mut b, 1).await;
        let lost = acked.difference(&stored).count();
        assert_eq!(lost, 0, "run {run}: {lost} acknowledged messages lost");
        let status = chatctl_json(d, &["status"]);
        let digest = chatctl_json(d, &["digest"]);
        assert_eq!(status["messages"], digest["messages"], "{status} {digest}");
        assert_eq!(status["messages"], json!(stored.len()));
        let start: u64 = status["log_start"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert!(start >= compacted_before, "the log's start went back");
        compacted_before = start;
    }
    assert!(compacted_before > 0, "the log was never compacted");
    drop(p);
}
