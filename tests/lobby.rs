//! Clients of every seed system and of chatd's own protocol meet: in the
//! lobby (Go, C, epoll, sponge, classic and native all hear each other) and
//! 1:1 (sponge, classic and native write to each other).

mod common;

use common::seeds::{go_user, CRoom, Epoll, Sponge};
use common::*;
use serde_json::{json, Value};

fn classic(v: Value) -> Vec<u8> {
    let mut b = v.to_string().into_bytes();
    b.push(0);
    b
}

/// A classic ChatClient user, registered, logged in (course numbering).
async fn classic_user(srv: &TestServer, name: &str) -> (Client, u32) {
    let mut c = srv.client().await;
    c.send_raw(&classic(
        json!({"msgid": 4, "name": name, "password": "pw"}),
    ))
    .await;
    let id = c.next().await["id"].as_u64().unwrap() as u32;
    c.send_raw(&classic(json!({"msgid": 1, "id": id, "password": "pw"})))
        .await;
    assert_eq!(c.next().await["errno"], 0);
    (c, id)
}

/// The next chat a classic client is shown: (msgid, sender name, text).
async fn classic_chat(c: &mut Client) -> (i64, String, String) {
    loop {
        let v = c.next().await;
        let id = v["msgid"].as_i64().unwrap();
        if id == 6 || id == 10 {
            return (
                id,
                v["name"].as_str().unwrap().into(),
                v["msg"].as_str().unwrap().into(),
            );
        }
    }
}

/// The next message a native client gets: (from, from_name, text).
async fn native_chat(c: &mut Client) -> (u64, String, String) {
    loop {
        let v = c.push().await;
        if v["type"] == "message" {
            return (
                v["from"].as_u64().unwrap(),
                v["from_name"].as_str().unwrap().into(),
                v["text"].as_str().unwrap().into(),
            );
        }
    }
}

// Multi-threaded: chatctl runs as a blocking child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_kinds_of_client_chat_in_one_lobby() {
    let srv = TestServer::with_all_dialects().await;
    // chatd's own protocol and the classic client join the lobby by its id.
    let (mut alice, alice_id) = srv.user("alice").await;
    alice.join_lobby().await;
    let (mut cora, cora_id) = classic_user(&srv, "cora").await;
    cora.send_raw(&classic(
        json!({"msgid": 9, "id": cora_id, "groupid": LOBBY}),
    ))
    .await;
    // The sponge client, on the main port.
    let mut sam = Sponge::connect(srv.addr).await;
    let sam_id = sam.register("sam").await;
    sam.login(sam_id, "sam").await;
    sam.send(json!({"msgType": 10, "FROMID": sam_id, "GROUPID": LOBBY}))
        .await;
    assert_eq!(sam.next_of(10).await["groupId"], LOBBY);
    // The room-style clients are in it from the start.
    let mut tom = go_user(srv.dialect("go-chatroom"), 100, "tom").await;
    let mut carol = CRoom::join(srv.dialect("c-chatroom"), "carol").await;
    let (mut ep, chat) = Epoll::join(srv.dialect("epoll-chatroom")).await;

    // Everyone says something; everyone else hears it, in their own form.
    alice
        .ok(json!({"type": "send", "group": LOBBY, "text": "from native"}))
        .await;
    cora.send_raw(&classic(json!({"msgid": 10, "id": 999, "name": "x", "groupid": LOBBY, "msg": "from classic", "time": "2024-05-01 12:00:00"})))
        .await;
    sam.send(json!({"msgType": 9, "FROMID": sam_id, "GROUPID": LOBBY, "msg": "from sponge", "sendTime": 1}))
        .await;
    tom.say(100, "from_go").await;
    carol.say("from c").await;
    ep.say("from epoll").await;

    let said = [
        ("alice", "from native"),
        ("cora", "from classic"),
        ("sam", "from sponge"),
        ("tom", "from_go"),
        ("carol (guest)", "from c"),
        (&*format!("Client #{chat} (guest)"), "from epoll"),
    ]
    .map(|(who, text)| (who.to_string(), text.to_string()));
    let others = |me: &str| -> Vec<(String, String)> {
        said.iter().filter(|(w, _)| w != me).cloned().collect()
    };

    let mut heard = Vec::new();
    for _ in 0..5 {
        let (_, name, text) = native_chat(&mut alice).await;
        heard.push((name, text));
    }
    assert_eq!(sorted(heard), sorted(others("alice")));

    let mut heard = Vec::new();
    for _ in 0..5 {
        let (msgid, name, text) = classic_chat(&mut cora).await;
        assert_eq!(msgid, 10);
        heard.push((name, text));
    }
    assert_eq!(sorted(heard), sorted(others("cora")));

    let mut heard = Vec::new();
    for _ in 0..5 {
        let m = sam.next_of(9).await;
        assert_eq!(m["GROUPID"], LOBBY);
        heard.push(m["msg"].as_str().unwrap().to_string());
    }
    assert_eq!(sorted(heard), sorted(texts(&others("sam"))));

    let mut heard = Vec::new();
    for _ in 0..5 {
        heard.push(
            tom.next_of("SmsMes").await["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(sorted(heard), sorted(texts(&others("tom"))));

    let mut heard = Vec::new();
    for _ in 0..5 {
        heard.push(carol.next_chat().await);
    }
    assert_eq!(sorted(heard), sorted(others("carol (guest)")));

    let mut heard = Vec::new();
    for _ in 0..5 {
        heard.push(ep.next().await);
    }
    let mut want: Vec<String> = others(&format!("Client #{chat} (guest)"))
        .into_iter()
        .map(|(w, t)| format!("{w} say >> {t}"))
        .collect();
    want.sort();
    assert_eq!(sorted(heard), want);

    // The lobby is an ordinary group: its history holds all six, and the
    // operator sees it.
    let h = alice.ok(json!({"type": "history", "group": LOBBY})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 6);
    let groups = chatctl_json(srv.dir.path(), &["groups", "list"]);
    assert!(groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["id"] == LOBBY && g["name"] == "lobby"));
    let _ = alice_id;
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn texts(v: &[(String, String)]) -> Vec<String> {
    v.iter().map(|(_, t)| t.clone()).collect()
}

#[tokio::test]
async fn sponge_classic_and_native_users_write_to_each_other() {
    let srv = TestServer::start().await;
    let (mut alice, alice_id) = srv.user("alice").await;
    let (mut cora, cora_id) = classic_user(&srv, "cora").await;
    let mut sam = Sponge::connect(srv.addr).await;
    let sam_id = sam.register("sam").await;
    sam.login(sam_id, "sam").await;

    alice.send_text(sam_id, "native to sponge").await;
    let m = sam.next_of(4).await;
    assert_eq!(
        (m["FROMID"].clone(), m["TOID"].clone(), m["msg"].clone()),
        (json!(alice_id), json!(sam_id), json!("native to sponge"))
    );
    sam.send(json!({"msgType": 4, "FROMID": 1, "TOID": cora_id, "msg": "sponge to classic", "sendTime": 1}))
        .await;
    assert_eq!(
        classic_chat(&mut cora).await,
        (6, "sam".into(), "sponge to classic".into())
    );
    cora.send_raw(&classic(json!({"msgid": 6, "id": 1, "name": "x", "toid": alice_id, "msg": "classic to native", "time": "2024-05-01 12:00:00"})))
        .await;
    assert_eq!(
        native_chat(&mut alice).await,
        (
            u64::from(cora_id),
            "cora".into(),
            "classic to native".into()
        )
    );
    cora.send_raw(&classic(json!({"msgid": 6, "id": 1, "name": "x", "toid": sam_id, "msg": "classic to sponge", "time": "2024-05-01 12:00:00"})))
        .await;
    assert_eq!(sam.next_of(4).await["msg"], "classic to sponge");
    sam.send(json!({"msgType": 4, "FROMID": 1, "TOID": alice_id, "msg": "sponge to native", "sendTime": 1}))
        .await;
    assert_eq!(native_chat(&mut alice).await.2, "sponge to native");
    alice.send_text(cora_id, "native to classic").await;
    assert_eq!(classic_chat(&mut cora).await.2, "native to classic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lobby_exists_with_a_room_listener_or_the_web_and_cannot_be_dissolved() {
    let srv = TestServer::with_all_dialects().await;
    let (mut alice, _) = srv.user("alice").await;
    // Before anyone spoke in it.
    let g = alice
        .ok(json!({"type": "group_join", "group": LOBBY}))
        .await;
    assert_eq!(g["type"], "ok");
    let out = chatctl(srv.dir.path(), &["groups", "dissolve", &LOBBY.to_string()]);
    assert_ne!(out.code, 0);
    alice
        .err(
            json!({"type": "group_dissolve", "group": LOBBY}),
            "forbidden",
        )
        .await;
    // A server with neither a room-style listener nor the web client (which
    // offers the lobby) has no lobby.
    let plain = TestServer::start_with(|s| s.web_listen = String::new()).await;
    let (mut bob, _) = plain.user("bob").await;
    bob.err(
        json!({"type": "group_join", "group": LOBBY}),
        "unknown_group",
    )
    .await;
}

#[tokio::test]
async fn a_dedicated_port_speaks_only_its_dialect() {
    let srv = TestServer::with_all_dialects().await;
    let mut native = Client::connect(srv.dialect("native")).await;
    let r = native.call(json!({"type": "ping"})).await;
    assert_eq!(r["type"], "pong");
    native
        .send_raw(&classic(json!({"msgid": 4, "name": "x", "password": "pw"})))
        .await;
    let r = native.next().await;
    assert_eq!(
        (r["type"].clone(), r["code"].clone()),
        (json!("error"), json!("unknown_type"))
    );
    let mut old = Client::connect(srv.dialect("classic")).await;
    old.send_raw(&classic(
        json!({"msgid": 1004 - 1, "name": "cora", "password": "pw"}),
    ))
    .await;
    assert_eq!(old.next().await["msgid"], 1004);
    let mut sam = Sponge::connect(srv.dialect("sponge")).await;
    let id = sam.register("sam").await;
    sam.login(id, "sam").await;
    sam.send_raw(b"keep this socket alive").await;
    sam.send(json!({"type": "ping"})).await;
    assert_eq!(
        sam.next().await["errno"],
        404,
        "chatd's protocol is not spoken here"
    );
}

#[tokio::test]
async fn friends_of_any_dialect_see_a_go_user_come_and_go() {
    let srv = TestServer::with_all_dialects().await;
    let go = srv.dialect("go-chatroom");
    let mut g = common::seeds::Go::connect(go).await;
    assert_eq!(g.register(100, "pw", "tom").await["code"], 200);
    // Tom and alice become friends (tom uses chatd's protocol for that).
    let (mut alice, alice_id) = srv.user("alice").await;
    let mut tom_native = srv.client().await;
    tom_native.login("tom", "pw").await;
    alice
        .ok(json!({"type": "friend_request", "user": 100}))
        .await;
    tom_native
        .ok(json!({"type": "friend_accept", "user": alice_id}))
        .await;
    let _ = alice.push_of("friend_added").await;
    tom_native.ok(json!({"type": "logout"})).await;
    let p = alice.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(100), json!(false))
    );
    // Tom's Go client logs in, then exits.
    let mut tom = common::seeds::Go::connect(go).await;
    assert_eq!(tom.login(100, "pw").await["code"], 200);
    let p = alice.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(100), json!(true))
    );
    drop(tom);
    let p = alice.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(100), json!(false))
    );
}
