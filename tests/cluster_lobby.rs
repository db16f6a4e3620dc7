//! The lobby across a cluster: every node serving room-style clients makes
//! sure the lobby exists, at once, and the result is one group; clients of
//! different dialects on different nodes meet in it.

mod common;

use common::cluster::Cluster;
use common::seeds::{go_user, CRoom, Epoll};
use common::*;
use serde_json::json;

fn dialect(c: &Cluster, i: usize, name: &str) -> std::net::SocketAddr {
    c.nodes[i]
        .server
        .as_ref()
        .and_then(|s| s.dialect_addr(name))
        .expect("a dialect listener")
}

#[tokio::test]
async fn clients_of_every_kind_on_every_node_share_one_lobby() {
    let c = Cluster::start_with(3, |_, s| {
        s.listen_dialect = vec![
            "go-chatroom=127.0.0.1:0".into(),
            "c-chatroom=127.0.0.1:0".into(),
            "epoll-chatroom=127.0.0.1:0".into(),
        ];
    })
    .await;
    // Three nodes each made the lobby: one group, the same everywhere.
    c.wait_converged().await;
    for node in &c.nodes {
        let g = node.admin(json!({"cmd": "groups"})).await;
        let groups = g["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 1, "{g}");
        assert_eq!(groups[0]["id"], LOBBY);
        assert_eq!(groups[0]["name"], "lobby");
    }

    // A Go user on node 1, a C guest on node 2, an epoll guest and a native
    // member on node 3.
    let mut tom = go_user(dialect(&c, 0, "go-chatroom"), 100, "tom").await;
    let mut carol = CRoom::join(dialect(&c, 1, "c-chatroom"), "carol").await;
    let (mut ep, chat) = Epoll::join(dialect(&c, 2, "epoll-chatroom")).await;
    let mut alice = c.nodes[2].client().await;
    alice.register("alice", "pw").await;
    alice.login("alice", "pw").await;
    alice.join_lobby().await;
    // The Go user hears the guests arrive on other nodes.
    let mut arrived = 0;
    while arrived < 2 {
        let n = tom.next_of("NotifyUserStatusMes").await;
        if n["status"] == 0 && n["userId"].as_u64().unwrap() > u64::from(LOBBY) {
            arrived += 1;
        }
    }

    tom.say(100, "hi_from_node_1").await;
    assert_eq!(
        carol.next_chat().await,
        ("tom".into(), "hi_from_node_1".into())
    );
    assert_eq!(ep.next().await, "tom say >> hi_from_node_1");
    let m = alice.push_of("message").await;
    assert_eq!(
        (m["from"].clone(), m["text"].clone()),
        (json!(100), json!("hi_from_node_1"))
    );

    carol.say("hi from node 2").await;
    assert_eq!(tom.next_of("SmsMes").await["content"], "hi from node 2");
    assert_eq!(ep.next().await, "carol (guest) say >> hi from node 2");
    let m = alice.push_of("message").await;
    assert_eq!(
        (m["from_name"].clone(), m["guest"].clone()),
        (json!("carol (guest)"), json!(true))
    );

    ep.say("hi from node 3").await;
    assert_eq!(tom.next_of("SmsMes").await["content"], "hi from node 3");
    assert_eq!(
        carol.next_chat().await,
        (format!("Client #{chat} (guest)"), "hi from node 3".into())
    );
    assert_eq!(alice.push_of("message").await["text"], "hi from node 3");

    // Everything said is stored everywhere alike.
    c.wait_converged().await;
}
