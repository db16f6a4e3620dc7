//! Real chatd nodes meshed over real QUIC on 127.0.0.1: cross-node delivery,
//! replication, presence, partitions, name collisions, credentials.

mod common;

use common::cluster::*;
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;

/// Log in at `node` once the account has reached it.
async fn login_when_replicated(node: &Node, name: &str) -> Client {
    let mut c = node.client().await;
    eventually!(&format!("{name} can log in at another node"), {
        let r = c
            .call(json!({"type": "login", "name": name, "password": "pw"}))
            .await;
        r["type"] == "logged_in"
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_group_messages_cross_nodes_in_both_dialects() {
    let c = Cluster::start(3).await;
    let mut a = c.nodes[0].client().await;
    let a_id = a.register("alice", "pw").await;
    a.login("alice", "pw").await;
    let mut reg = c.nodes[0].client().await;
    let b_id = reg.register("bob", "pw").await;
    let k_id = reg.register("klassik", "pw").await;
    let mut b = login_when_replicated(&c.nodes[1], "bob").await;

    // 1:1, node 0 -> node 1 and back.
    a.send_text(b_id, "across the mesh").await;
    let m = b.push_of("message").await;
    assert_eq!(
        (m["from"].clone(), m["text"].clone()),
        (json!(a_id), json!("across the mesh"))
    );
    b.send_text(a_id, "and back").await;
    assert_eq!(a.push_of("message").await["text"], "and back");

    // A classic ChatClient on node 2.
    let mut k = c.nodes[2].client().await;
    eventually!("the classic account reached node 2", {
        k.send_raw(format!("{{\"id\":{k_id},\"msgid\":1,\"password\":\"pw\"}}\0").as_bytes())
            .await;
        k.next().await["errno"] == 0
    });
    k.send_raw(format!("{{\"id\":{k_id},\"msg\":\"classic on node 2\",\"msgid\":6,\"name\":\"x\",\"time\":\"2024-05-01 12:00:00\",\"toid\":{a_id}}}\0").as_bytes()).await;
    let m = a.push_of("message").await;
    assert_eq!(
        (m["from"].clone(), m["text"].clone()),
        (json!(k_id), json!("classic on node 2"))
    );
    a.send_text(k_id, "native on node 0").await;
    let m = k.next().await;
    assert_eq!(
        (m["msgid"].clone(), m["id"].clone(), m["msg"].clone()),
        (json!(6), json!(a_id), json!("native on node 0"))
    );

    // A group with a member on every node.
    let gid = a.ok(json!({"type": "group_create", "name": "mesh"})).await["group"]["id"].clone();
    let g = gid.as_u64().unwrap();
    eventually!("the group reached node 1", {
        b.call(json!({"type": "group_join", "group": g})).await["type"] == "ok"
    });
    k.send_raw(format!("{{\"groupid\":{g},\"id\":{k_id},\"msgid\":9}}\0").as_bytes())
        .await;
    eventually!("both joins reached node 0", {
        let m = a.call(json!({"type": "group_members", "group": g})).await;
        m["members"].as_array().map_or(0, Vec::len) == 3
    });
    a.ok(json!({"type": "send", "group": gid, "text": "to everyone"}))
        .await;
    loop {
        let p = b.push().await;
        if p["type"] == "message" {
            assert_eq!(
                (p["group"].clone(), p["text"].clone()),
                (gid.clone(), json!("to everyone"))
            );
            break;
        }
    }
    let m = k.next().await;
    assert_eq!(
        (m["msgid"].clone(), m["groupid"].clone(), m["msg"].clone()),
        (json!(10), gid.clone(), json!("to everyone"))
    );
    // Classic group chat from node 2 reaches node 0 and node 1.
    k.send_raw(format!("{{\"groupid\":{g},\"id\":{k_id},\"msg\":\"classic to group\",\"msgid\":10,\"name\":\"x\",\"time\":\"t\"}}\0").as_bytes()).await;
    for x in [&mut a, &mut b] {
        loop {
            let p = x.push().await;
            if p["type"] == "message" {
                assert_eq!(p["text"], "classic to group");
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_elsewhere_shows_friends_groups_and_queued_messages() {
    let c = Cluster::start(3).await;
    let mut a = c.nodes[0].client().await;
    let a_id = a.register("alice", "pw").await;
    let b_id = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    let gid = a
        .ok(json!({"type": "group_create", "name": "g", "desc": "d"}))
        .await["group"]["id"]
        .clone();
    a.ok(json!({"type": "group_invite", "group": gid, "user": b_id}))
        .await;
    a.ok(json!({"type": "friend_request", "user": b_id, "text": "hi"}))
        .await;
    for i in 0..20 {
        a.send_text(b_id, &format!("queued {i}")).await;
    }
    a.ok(json!({"type": "send", "group": gid, "text": "group queued"}))
        .await;
    // Bob logs in at node 2: everything is there.
    let mut b = login_when_replicated(&c.nodes[2], "bob").await;
    let mut texts = Vec::new();
    while texts.len() < 21 {
        let p = b.push().await;
        if p["type"] == "message" {
            texts.push(p["text"].as_str().unwrap().to_string());
            b.ok(json!({"type": "ack", "ids": [p["id"]]})).await;
        }
    }
    let expected: Vec<String> = (0..20)
        .map(|i| format!("queued {i}"))
        .chain(["group queued".to_string()])
        .collect();
    assert_eq!(texts, expected, "in order");
    let f = b.ok(json!({"type": "friends"})).await;
    assert_eq!(f["incoming"][0]["id"], a_id);
    b.ok(json!({"type": "friend_accept", "user": a_id})).await;
    let groups = b.ok(json!({"type": "groups"})).await;
    assert_eq!(groups["groups"][0]["id"], gid);
    // The acknowledgements travel too: at node 1 nothing comes again.
    drop(b);
    let mut b = c.nodes[1].client().await;
    eventually!("the acks reached node 1", {
        b.login("bob", "pw").await;
        let quiet = b
            .read_value(std::time::Duration::from_millis(300))
            .await
            .is_none();
        b.call(json!({"type": "logout"})).await;
        quiet
    });
    // And the friendship accepted at node 2 shows at node 0.
    eventually!("the friendship reached node 0", {
        let f = a.call(json!({"type": "friends"})).await;
        f["friends"].as_array().is_some_and(|v| v.len() == 1)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_and_a_cut_off_node_shows_offline() {
    let c = Cluster::start(3).await;
    let mut a = c.nodes[0].client().await;
    let a_id = a.register("alice", "pw").await;
    let b_id = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    a.ok(json!({"type": "friend_request", "user": b_id})).await;
    let mut b = login_when_replicated(&c.nodes[1], "bob").await;
    eventually!("the request reached node 1", {
        b.call(json!({"type": "friend_accept", "user": a_id})).await["type"] == "ok"
    });
    assert_eq!(a.push_of("friend_added").await["user"]["id"], b_id);
    // Bob goes and comes, on node 1; alice hears it on node 0.
    b.ok(json!({"type": "logout"})).await;
    let p = a.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(b_id), json!(false))
    );
    b.login("bob", "pw").await;
    let p = a.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(b_id), json!(true))
    );

    // Cut node 1 off: within the failure-detection time bob shows offline.
    let started = std::time::Instant::now();
    c.partition(&[1], &[0, 2]);
    let p = a.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(b_id), json!(false))
    );
    let detected = started.elapsed();
    assert_eq!(
        a.ok(json!({"type": "friends"})).await["friends"][0]["online"],
        false
    );
    // Both directions time out: node 1 is then down, not just partial.
    eventually!("node 0 sees node 1 down", {
        let status = c.nodes[0].cluster().await;
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["node"] == 2 && m["state"] == "down")
    });
    eprintln!("failure detected after {detected:?} (peer timeout 1 s)");

    // Heal: bob is online again, and what was said meanwhile arrives.
    c.heal();
    let p = a.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(b_id), json!(true))
    );
    c.wait_full_mesh().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_into_identical_state() {
    let c = Cluster::start(3).await;
    let mut a = c.nodes[0].client().await;
    let a_id = a.register("alice", "pw").await;
    let b_id = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    let gid = a.ok(json!({"type": "group_create", "name": "g"})).await["group"]["id"].clone();
    let mut b = login_when_replicated(&c.nodes[2], "bob").await;
    let g = gid.as_u64().unwrap();
    eventually!("the group reached node 2", {
        b.call(json!({"type": "group_join", "group": g})).await["type"] == "ok"
    });
    c.wait_converged().await;

    // Node 0 alone on one side, nodes 1 and 2 on the other. Both sides write.
    c.partition(&[0], &[1, 2]);
    let mut sent_by_a = Vec::new();
    for i in 0..25 {
        sent_by_a.push(a.send_text(b_id, &format!("from the small side {i}")).await["id"].clone());
    }
    a.ok(json!({"type": "group_update", "group": gid, "desc": "set by alice"}))
        .await;
    a.register("only-on-node-0", "pw").await;
    let mut sent_by_b = Vec::new();
    for i in 0..25 {
        sent_by_b.push(b.send_text(a_id, &format!("from the big side {i}")).await["id"].clone());
        b.ok(json!({"type": "send", "group": gid, "text": format!("group {i}")}))
            .await;
    }
    let mut n1 = c.nodes[1].client().await;
    n1.register("only-on-node-1", "pw").await;
    b.ok(json!({"type": "friend_request", "user": a_id})).await;

    // The sides differ now.
    let d0 = c.nodes[0].digest().await;
    let d1 = c.nodes[1].digest().await;
    assert_ne!(d0, d1);

    c.heal();
    let digest = c.wait_converged().await;
    eprintln!("converged to {digest}");
    // Everything written on either side is delivered across.
    let mut got = HashSet::new();
    while got.len() < 25 {
        let p = b.push().await;
        if p["type"] == "message" && p["to"] == b_id {
            got.insert(p["id"].clone());
        }
    }
    assert_eq!(got, sent_by_a.into_iter().collect());
    let mut got = HashSet::new();
    while got.len() < 50 {
        let p = a.push().await;
        if p["type"] == "message" {
            got.insert(p["id"].clone());
        }
    }
    for id in &sent_by_b {
        assert!(got.contains(id));
    }
    // Both new accounts exist everywhere.
    for node in &c.nodes {
        let mut x = node.client().await;
        x.login("only-on-node-0", "pw").await;
        x.login("only-on-node-1", "pw").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_registered_on_both_sides_of_a_partition() {
    let c = Cluster::start(2).await;
    c.partition(&[0], &[1]);
    let mut x = c.nodes[0].client().await;
    let first = x.register("alice", "first").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut y = c.nodes[1].client().await;
    let second = y.register("alice", "second").await;
    assert_ne!(first, second, "ids are unique without coordination");
    c.heal();
    c.wait_converged().await;
    // The earlier registration keeps the name; the other is alice#<id>.
    for node in &c.nodes {
        let mut z = node.client().await;
        let r = z.login("alice", "first").await;
        assert_eq!(r["user"]["id"], first);
        let mut w = node.client().await;
        let r = w
            .ok(json!({"type": "login", "id": second, "password": "second"}))
            .await;
        assert_eq!(r["user"]["name"], format!("alice#{second}"));
        let mut v = node.client().await;
        v.login(&format!("alice#{second}"), "second").await;
        v.err(
            json!({"type": "login", "name": "alice", "password": "second"}),
            "invalid_credentials",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_empty_node_catches_up_and_a_restarted_node_rejoins_by_itself() {
    let mut c = Cluster::start(2).await;
    let mut a = c.nodes[0].client().await;
    a.register("alice", "pw").await;
    let b_id = a.register("bob", "pw").await;
    a.login("alice", "pw").await;
    for i in 0..300 {
        a.send_text(b_id, &format!("m{i}")).await;
    }
    let mut b = login_when_replicated(&c.nodes[1], "bob").await;
    b.take_messages(300).await;
    c.wait_converged().await;
    // A third node, empty, joins and gets everything.
    c.add(|_| {}).await;
    c.wait_full_mesh().await;
    c.wait_converged().await;
    let mut b3 = c.nodes[2].client().await;
    b3.login("bob", "pw").await;
    let h = b3
        .ok(json!({"type": "history", "with": 1, "limit": 200}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 200);
    b3.quiet().await; // bob acknowledged everything, on node 1

    // Node 1 stops; the others keep serving; it comes back without --join.
    c.stop(1).await;
    a.send_text(b_id, "while node 1 was away").await;
    c.restart(1).await;
    c.wait_full_mesh().await;
    c.wait_converged().await;
    let mut b = c.nodes[1].client().await;
    b.login("bob", "pw").await;
    assert_eq!(b.push_of("message").await["text"], "while node 1 was away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_cluster_credentials_is_refused() {
    let c = Cluster::start(2).await;
    let mut a = c.nodes[0].client().await;
    a.register("secret-user", "pw").await;
    // Another cluster's CA: a valid certificate, but not ours.
    let other = tempfile::tempdir().unwrap();
    chatd::mesh::tls::init_cluster(&other.path().join("cluster.key")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(dir.path());
    s.mesh_listen = Some("127.0.0.1:0".parse().unwrap());
    s.join = vec![c.nodes[0].relay.addr.to_string()];
    s.cluster_key = Some(other.path().join("cluster.key"));
    s.node_id = Some(7);
    s.peer_timeout_ms = 1000;
    let intruder = chatd::server::Server::start(s)
        .await
        .expect("starts, alone");
    eventually!("node 0 refused the intruder", {
        c.nodes[0].cluster().await["refused"].as_u64().unwrap() > 0
    });
    let members: Vec<Value> = c.nodes[0].cluster().await["members"]
        .as_array()
        .unwrap()
        .clone();
    assert!(members.iter().all(|m| m["node"] != 7), "{members:?}");
    // It learned nothing.
    let mut x = Client::connect(intruder.local_addr()).await;
    x.err(
        json!({"type": "login", "name": "secret-user", "password": "pw"}),
        "invalid_credentials",
    )
    .await;
    intruder.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_and_a_broadcast_reach_every_node() {
    let c = Cluster::start(2).await;
    let mut a = c.nodes[0].client().await;
    a.register("alice", "pw").await;
    a.login("alice", "pw").await;
    let mut b = login_when_replicated(&c.nodes[1], "alice").await;
    // A notice from node 0's operator reaches the session on node 1.
    let r = c.nodes[0]
        .admin(json!({"cmd": "broadcast", "text": "to the whole cluster"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(a.push_of("notice").await["text"], "to the whole cluster");
    assert_eq!(b.push_of("notice").await["text"], "to the whole cluster");
    // A ban on node 0 closes the session on node 1 and refuses logins there.
    let r = c.nodes[0]
        .admin(json!({"cmd": "user_ban", "user": "alice"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(b.push_of("bye").await["reason"], "banned");
    assert!(b.closed().await);
    let mut again = c.nodes[1].client().await;
    again
        .err(
            json!({"type": "login", "name": "alice", "password": "pw"}),
            "banned",
        )
        .await;
}
