//! A cluster of real chatd processes; one is killed with SIGKILL under load.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_and_delivers_nothing_twice() {
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("cluster.key");
    chatd::mesh::tls::init_cluster(&key).unwrap();
    let key = key.to_str().unwrap().to_string();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let common = [
        "--cluster-key",
        key.as_str(),
        "--peer-timeout-ms",
        "1000",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        common.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let seed_args = with(&["--mesh-listen", "127.0.0.1:0"]);
    let n1 = spawn_chatd(dirs[0].path(), &args(&seed_args));
    let seed = n1.mesh.expect("mesh address").to_string();
    let join_args = with(&["--join", seed.as_str()]);
    let n2 = spawn_chatd(dirs[1].path(), &args(&join_args));
    let n3 = spawn_chatd(dirs[2].path(), &args(&join_args));

    let mut alice = Client::connect(n1.addr).await;
    alice.register("alice", "pw").await;
    let bob_id = alice.register("bob", "pw").await;
    let carol_id = alice.register("carol", "pw").await;
    alice.login("alice", "pw").await;
    let mut carol = Client::connect(n3.addr).await;
    eventually!("carol's account reached node 3", {
        carol
            .call(json!({"type": "login", "name": "carol", "password": "pw"}))
            .await["type"]
            == "logged_in"
    });
    carol
        .ok(json!({"type": "friend_request", "user": bob_id}))
        .await;
    let mut bob = Client::connect(n2.addr).await;
    eventually!("bob's account and carol's request reached node 2", {
        let r = bob
            .call(json!({"type": "login", "name": "bob", "password": "pw"}))
            .await;
        r["type"] == "logged_in"
            && bob
                .call(json!({"type": "friend_accept", "user": carol_id}))
                .await["type"]
                == "ok"
    });
    carol.push_of("friend_added").await;

    // Alice streams messages to bob (on node 2), who acknowledges as he goes.
    let total = 3000;
    let mut burst = Vec::new();
    for i in 0..total {
        burst.extend(
            format!("{{\"type\":\"send\",\"to\":{bob_id},\"text\":\"m{i}\"}}\n").into_bytes(),
        );
    }
    alice.send_raw(&burst).await;
    let mut confirmed: HashSet<u64> = HashSet::new();
    let mut received = 0;
    while received < 600 {
        let p = bob.push().await;
        if p["type"] == "message" {
            received += 1;
            let id = p["id"].as_u64().unwrap();
            let r = bob.ok(json!({"type": "ack", "ids": [id]})).await;
            assert_eq!(r["count"], 1);
            confirmed.insert(id);
        }
    }
    // Pull the plug on bob's node mid-stream.
    n2.kill9();
    drop(bob);

    // Node 1 keeps serving alice; every message gets its "sent".
    let mut sent: HashSet<u64> = HashSet::new();
    while sent.len() < total {
        let r = alice.next().await;
        if r["type"] == "sent" {
            sent.insert(r["id"].as_u64().unwrap());
        }
    }
    // Node 3 shows bob offline.
    loop {
        let p = carol.push().await;
        if p["type"] == "presence" && p["user"]["id"] == bob_id {
            assert_eq!(p["online"], false);
            break;
        }
    }

    // Node 2 comes back by itself (no --join) and catches up.
    let n2 = spawn_chatd(dirs[1].path(), &args(&with(&[])));
    let mut bob = Client::connect(n2.addr).await;
    bob.login("bob", "pw").await;
    let mut got: HashSet<u64> = HashSet::new();
    let missing: HashSet<u64> = sent.difference(&confirmed).copied().collect();
    while got.len() < missing.len() {
        let p = bob.push().await;
        if p["type"] != "message" {
            continue;
        }
        let id = p["id"].as_u64().unwrap();
        assert!(
            !confirmed.contains(&id),
            "an acknowledged message came again"
        );
        assert!(got.insert(id), "a message came twice");
        if got.len() % 100 == 0 {
            let ids: Vec<u64> = got.iter().copied().collect();
            bob.ok(json!({"type": "ack", "ids": ids})).await;
        }
    }
    assert_eq!(
        got, missing,
        "every message alice was told was sent reached bob"
    );
    let ids: Vec<u64> = got.iter().copied().collect();
    bob.ok(json!({"type": "ack", "ids": ids})).await;
    assert!(bob
        .read_value(Duration::from_millis(500))
        .await
        .is_none_or(|v| v["type"] != "message"));
    // Carol sees bob online again.
    loop {
        let p = carol.push().await;
        if p["type"] == "presence" && p["user"]["id"] == bob_id && p["online"] == true {
            break;
        }
    }
    drop((n1, n2, n3));
}
