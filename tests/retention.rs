//! Retention on real chatd processes: history older than the cluster keeps
//! disappears on every node alike (over real QUIC), and the setting is
//! taken again on SIGHUP.

mod common;

use common::cluster::*;
use common::*;
use serde_json::{json, Value};

fn texts(reply: &Value) -> Vec<String> {
    reply["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["text"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_history_goes_alike_on_three_nodes() {
    // One node asks for a short history; the whole cluster keeps that.
    let c = Cluster::start_with(3, |i, s| {
        if i == 1 {
            s.history_max_age_secs = 3;
        }
    })
    .await;
    let mut a = c.nodes[0].client().await;
    a.register("alice", "pw").await;
    let b_id = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    for i in 0..5 {
        a.send_text(b_id, &format!("old {i}")).await;
    }
    let mut b = c.nodes[2].client().await;
    eventually!("bob's history reaches node 3", {
        let r = b
            .call(json!({"type": "login", "name": "bob", "password": "pw"}))
            .await;
        r["type"] == "logged_in"
    });
    let h = b.ok(json!({"type": "history", "with": 1})).await;
    assert_eq!(texts(&h).len(), 5, "{h}");
    eventually!("the old messages are gone on node 3", {
        let h = b.ok(json!({"type": "history", "with": 1})).await;
        texts(&h).is_empty()
    });
    a.send_text(b_id, "new").await;
    c.wait_converged().await;
    for node in &c.nodes {
        let mut x = node.client().await;
        x.login("bob", "pw").await;
        let h = x.ok(json!({"type": "history", "with": 1})).await;
        assert_eq!(texts(&h), vec!["new"], "{h}");
    }
}

#[tokio::test]
async fn retention_is_taken_again_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chatd.toml");
    std::fs::write(&file, "history_max_age_secs = 0\n").unwrap();
    let p = spawn_chatd(
        &dir.path().join("data"),
        &["--config", file.to_str().unwrap()],
    );
    let mut a = Client::connect(p.addr).await;
    a.register("alice", "pw").await;
    let b_id = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    a.send_text(b_id, "kept while history is kept").await;
    let mut b = Client::connect(p.addr).await;
    b.login("bob", "pw").await;
    let h = b.ok(json!({"type": "history", "with": 1})).await;
    assert_eq!(texts(&h).len(), 1, "{h}");
    std::fs::write(&file, "history_max_age_secs = 1\nqueue_max_age_secs = 1\n").unwrap();
    p.signal(libc::SIGHUP);
    eventually!("history older than a second goes", {
        let h = b.ok(json!({"type": "history", "with": 1})).await;
        texts(&h).is_empty()
    });
    // Bob never acknowledged it, yet a new session gets nothing pending.
    let mut b2 = Client::connect(p.addr).await;
    b2.login("bob", "pw").await;
    b2.quiet().await;
    // Newer messages are there as usual.
    a.send_text(b_id, "fresh").await;
    let h = b.ok(json!({"type": "history", "with": 1})).await;
    assert_eq!(texts(&h), vec!["fresh"], "{h}");
}
