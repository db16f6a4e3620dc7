//! The sponge dialect (seed 001), with requests byte for byte as the Qt
//! client formats them, on the main port (recognised by `msgType`).

mod common;

use common::seeds::{hexpw, Sponge};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::AsyncReadExt;

async fn sponge_user(srv: &TestServer, name: &str) -> (Sponge, u32) {
    let mut c = Sponge::connect(srv.addr).await;
    let id = c.register(name).await;
    c.login(id, name).await;
    (c, id)
}

/// The lists the client reads are maps of strings to strings.
fn all_strings(list: &Value) -> Vec<Value> {
    let list = list.as_array().expect("a list").clone();
    for e in &list {
        for (k, v) in e.as_object().expect("entries are objects") {
            assert!(v.is_string(), "{k} must be a string in {e}");
        }
    }
    list
}

#[tokio::test]
async fn register_login_and_chat_exactly_as_the_client_writes_them() {
    let srv = TestServer::start().await;
    let (mut amy, a) = sponge_user(&srv, "amy").await;
    let (mut ben, b) = sponge_user(&srv, "ben").await;
    // The client's own formatting, a lying FROMID included.
    let raw = format!(
        "{{\"msgType\":4,\"FROMID\":999,\"TOID\":{b},\"msg\":\"hello 7号\",\"sendTime\":1702556908737}}"
    );
    amy.send_raw(raw.as_bytes()).await;
    let got = ben.next().await;
    assert_eq!(got["msgType"], 4);
    assert_eq!(got["FROMID"], a, "the sender is the session");
    assert_eq!(got["TOID"], b);
    assert_eq!(got["msg"], "hello 7号");
    assert!(got["sendTime"].is_u64(), "sendTime is integer milliseconds");
    // No reply to the sender.
    amy.quiet().await;
    // Group chat, forwarded to each other member in the same shape.
    amy.send_raw(br#"{"msgType":12,"FROMID":1,"name":"cpp","description":"cpp group."}"#)
        .await;
    let created = amy.next().await;
    assert_eq!(created["msgType"], 12);
    assert_eq!(created["errno"], 200);
    assert_eq!(created["name"], "cpp");
    let g = created["GROUPID"].as_u64().unwrap();
    ben.send(json!({"msgType": 10, "FROMID": b, "GROUPID": g}))
        .await;
    assert_eq!(
        ben.next().await,
        json!({"msgType": 10, "errno": 200, "groupId": g, "name": "cpp"})
    );
    ben.send(json!({"msgType": 9, "FROMID": b, "GROUPID": g, "msg": "你好 8号", "sendTime": 1}))
        .await;
    let got = amy.next_of(9).await;
    assert_eq!(
        (
            got["FROMID"].clone(),
            got["GROUPID"].clone(),
            got["msg"].clone()
        ),
        (json!(b), json!(g), json!("你好 8号"))
    );
    assert!(got["sendTime"].is_u64());
    ben.quiet().await;
    // Logout: the ack.
    ben.send(json!({"msgType": 3, "USERID": b})).await;
    assert_eq!(ben.next().await, json!({"msgType": 200, "errno": 200}));
}

#[tokio::test]
async fn login_failures_are_301_or_302_within_a_second() {
    let srv = TestServer::start_with(|s| s.max_sessions_per_user = 1).await;
    let (_amy, a) = sponge_user(&srv, "amy").await;
    let mut c = Sponge::connect(srv.addr).await;
    let started = std::time::Instant::now();
    c.send(json!({"msgType": 1, "USERID": a, "password": "0000"}))
        .await;
    let r = c.next().await;
    assert_eq!(
        (r["msgType"].clone(), r["errno"].clone()),
        (json!(200), json!(302))
    );
    c.send(json!({"msgType": 1, "USERID": 777, "password": "0000"}))
        .await;
    assert_eq!(c.next().await["errno"], 302, "an unknown id reads the same");
    c.send(json!({"msgType": 1, "USERID": a, "password": hexpw("amy")}))
        .await;
    assert_eq!(c.next().await["errno"], 301, "already logged in");
    assert!(started.elapsed() < Duration::from_secs(1));
    // A failed register still carries USERID, which the client reads first.
    c.send(json!({"msgType": 2, "name": "amy", "password": "0000"}))
        .await;
    let r = c.next().await;
    assert_eq!(
        (r["errno"].clone(), r["code"].clone(), r["USERID"].clone()),
        (json!(500), json!("name_taken"), json!(-1))
    );
}

#[tokio::test]
async fn friends_and_contacts_use_string_ids() {
    let srv = TestServer::start().await;
    let (mut amy, a) = sponge_user(&srv, "amy").await;
    let (mut ben, b) = sponge_user(&srv, "ben").await;
    amy.send_raw(format!("{{\"msgType\":6,\"U1\":{a},\"U2\":{b}}}").as_bytes())
        .await;
    assert_eq!(
        amy.next().await,
        json!({"msgType": 6, "errno": 200, "userId": b, "name": "ben"})
    );
    assert_eq!(
        ben.next().await,
        json!({"msgType": 6, "errno": 200, "userId": a, "name": "amy", "new": true})
    );
    amy.quiet().await;
    amy.send(json!({"msgType": 12, "FROMID": a, "name": "rust", "description": "crabs"}))
        .await;
    let g = amy.next().await["GROUPID"].as_u64().unwrap();
    amy.send(json!({"msgType": 8, "FROMID": a})).await;
    let c = amy.next().await;
    assert_eq!(
        (c["msgType"].clone(), c["errno"].clone()),
        (json!(8), json!(200))
    );
    let list = all_strings(&c["friends"]);
    assert!(list.contains(&json!({"id": b.to_string(), "name": "ben", "isGroup": "0"})));
    assert!(list.contains(&json!({"id": g.to_string(), "name": "rust", "isGroup": "1"})));
    // Delete: the ack, and ben is no longer listed.
    amy.send(json!({"msgType": 7, "FROMID": a, "TOID": b}))
        .await;
    assert_eq!(amy.next().await, json!({"msgType": 200, "errno": 200}));
    amy.send(json!({"msgType": 8, "FROMID": a})).await;
    let list = all_strings(&amy.next().await["friends"]);
    assert_eq!(
        list,
        vec![json!({"id": g.to_string(), "name": "rust", "isGroup": "1"})]
    );
    // A friend request is forwarded.
    amy.send(json!({"msgType": 5, "FROMID": a, "TOID": b}))
        .await;
    assert_eq!(amy.next().await, json!({"msgType": 200, "errno": 200}));
    let fwd = ben.next_of(5).await;
    assert_eq!(fwd["FROMID"], a);
}

#[tokio::test]
async fn search_and_group_queries() {
    let srv = TestServer::start().await;
    let (mut amy, a) = sponge_user(&srv, "amy").await;
    let (_ben, b) = sponge_user(&srv, "benjamin").await;
    amy.send(json!({"msgType": 12, "FROMID": a, "name": "bench", "description": "a group"}))
        .await;
    let g = amy.next().await["GROUPID"].as_u64().unwrap();
    amy.send_raw(br#"{"msgType":15,"keyword":"ben"}"#).await;
    let r = amy.next().await;
    assert_eq!(
        (r["msgType"].clone(), r["errno"].clone()),
        (json!(15), json!(200))
    );
    let results = all_strings(&r["results"]);
    assert!(results
        .contains(&json!({"id": b.to_string(), "name": "benjamin", "isGroup": "0", "desc": ""})));
    assert!(results.contains(
        &json!({"id": g.to_string(), "name": "bench", "isGroup": "1", "desc": "a group"})
    ));
    amy.send(json!({"msgType": 11, "FROMID": a})).await;
    let r = amy.next().await;
    assert_eq!(
        (r["msgType"].clone(), r["errno"].clone()),
        (json!(200), json!(200))
    );
    assert_eq!(r["groups"][0]["id"], g.to_string());
    amy.send(json!({"msgType": 13, "name": "BEN"})).await;
    let r = amy.next().await;
    assert_eq!(r["groups"][0]["name"], "bench");
}

#[tokio::test]
async fn waiting_messages_come_when_asked_and_count_as_delivered() {
    let srv = TestServer::start().await;
    let (mut amy, _a) = sponge_user(&srv, "amy").await;
    let mut ben = Sponge::connect(srv.addr).await;
    let b = ben.register("ben").await;
    drop(ben);
    for i in 0..3 {
        amy.send(
            json!({"msgType": 4, "FROMID": 1, "TOID": b, "msg": format!("m{i}"), "sendTime": 1}),
        )
        .await;
    }
    amy.quiet().await;
    // After a reconnect the client sends login, 14 and 8 close together.
    let mut ben = Sponge::connect(srv.addr).await;
    let packed = format!(
        "{{\"msgType\":1, \"USERID\":{b}, \"password\":\"{}\"}}{{\"msgType\":14,\"FROMID\":{b}}}{{\"msgType\":8,\"FROMID\":{b}}}",
        hexpw("ben")
    );
    ben.send_raw(packed.as_bytes()).await;
    assert_eq!(ben.next().await, json!({"msgType": 200, "errno": 200}));
    let r = ben.next().await;
    assert_eq!(
        (r["msgType"].clone(), r["errno"].clone()),
        (json!(14), json!(200))
    );
    let msgs: Vec<Value> = r["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str(s.as_str().expect("each a JSON string")).unwrap())
        .collect();
    let texts: Vec<&str> = msgs.iter().map(|m| m["msg"].as_str().unwrap()).collect();
    assert_eq!(texts, ["m0", "m1", "m2"]);
    assert!(msgs.iter().all(|m| m["msgType"] == 4 && m["TOID"] == b));
    assert_eq!(ben.next().await["msgType"], 8);
    // Written once, delivered: asking again finds nothing.
    ben.send(json!({"msgType": 14, "FROMID": b})).await;
    assert_eq!(ben.next().await["msgs"], json!([]));
    ben.quiet().await;
}

#[tokio::test]
async fn many_waiting_messages_come_once_each_what_does_not_fit_as_pushes() {
    let srv = TestServer::start().await;
    let (mut amy, _a) = sponge_user(&srv, "amy").await;
    let mut ben = Sponge::connect(srv.addr).await;
    let b = ben.register("ben").await;
    drop(ben);
    let sent: Vec<String> = (0..30)
        .map(|i| format!("{i:03} {}", "x".repeat(120)))
        .collect();
    for t in &sent {
        amy.send(json!({"msgType": 4, "FROMID": 1, "TOID": b, "msg": t, "sendTime": 1}))
            .await;
    }
    amy.quiet().await;
    let mut ben = Sponge::connect(srv.addr).await;
    ben.login(b, "ben").await;
    ben.quiet().await;
    ben.send(json!({"msgType": 14, "FROMID": b})).await;
    let r = ben.next().await;
    assert_eq!(r["msgType"], 14);
    // The reply stays about one packet long.
    assert!(r.to_string().len() < 2000, "{}", r.to_string().len());
    let mut got: Vec<String> = r["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            serde_json::from_str::<Value>(s.as_str().unwrap()).unwrap()["msg"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!got.is_empty() && got.len() < sent.len());
    while got.len() < sent.len() {
        got.push(ben.next_of(4).await["msg"].as_str().unwrap().to_string());
    }
    assert_eq!(got, sent, "all of them, in order, once");
    ben.quiet().await;
    ben.send(json!({"msgType": 14, "FROMID": b})).await;
    assert_eq!(ben.next().await["msgs"], json!([]));
}

#[tokio::test]
async fn the_keepalive_text_is_ignored_however_it_arrives() {
    let srv = TestServer::start().await;
    let (mut amy, a) = sponge_user(&srv, "amy").await;
    amy.send_raw(b"keep this socket alive").await;
    amy.send_raw(
        format!("keep this socket alive{{\"msgType\":8,\"FROMID\":{a}}}keep this socket alive")
            .as_bytes(),
    )
    .await;
    assert_eq!(amy.next().await["msgType"], 8);
    amy.send_raw(b"keep this so").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    amy.send_raw(b"cket alive").await;
    amy.send(json!({"msgType": 11, "FROMID": a})).await;
    assert_eq!(amy.next().await["groups"], json!([]));
    amy.quiet().await;
}

#[tokio::test]
async fn bad_input_gets_the_clients_error_forms_and_the_session_goes_on() {
    let srv = TestServer::start().await;
    let (mut amy, a) = sponge_user(&srv, "amy").await;
    let (mut ben, b) = sponge_user(&srv, "ben").await;
    amy.send_raw(br#"{"msgType":99}"#).await;
    let r = amy.next().await;
    assert_eq!(
        (r["msgType"].clone(), r["errno"].clone()),
        (json!(404), json!(404))
    );
    assert!(r["errmsg"].is_string());
    amy.send_raw(br#"{"msgType":4,"FROMID":1,"TOID":"seven","msg":"x","sendTime":1}"#)
        .await;
    assert_eq!(amy.next().await["errno"], 401);
    // A backslash the client did not escape: mended, not refused.
    amy.send_raw(
        format!(r#"{{"msgType":4,"FROMID":{a},"TOID":{b},"msg":"C:\path","sendTime":1}}"#)
            .as_bytes(),
    )
    .await;
    assert_eq!(ben.next().await["msg"], "C:\\path");
    // Beyond mending: 401, and the stream goes on.
    amy.send_raw(br#"{"msgType":4,"msg":"\u12zz"}"#).await;
    assert_eq!(amy.next().await["errno"], 401);
    amy.send_raw(b"[1]").await;
    assert_eq!(amy.next().await["errno"], 401);
    amy.send(json!({"msgType": 4, "FROMID": a, "TOID": 424242, "msg": "x", "sendTime": 1}))
        .await;
    let r = amy.next().await;
    assert_eq!(r["errno"], 500);
    assert_eq!(r["code"], "unknown_user");
    amy.send(json!({"msgType": 8, "FROMID": a})).await;
    assert_eq!(amy.next().await["msgType"], 8, "still serving");
}

#[tokio::test]
async fn every_push_is_alone_in_its_read() {
    let srv = TestServer::start_with(|s| s.classic_push_gap_ms = 150).await;
    let (mut amy, _) = sponge_user(&srv, "amy").await;
    let (mut ben, b) = sponge_user(&srv, "ben").await;
    let mut packed = Vec::new();
    for i in 0..3 {
        packed.extend_from_slice(
            json!({"msgType": 4, "FROMID": 1, "TOID": b, "msg": format!("m{i}"), "sendTime": 1})
                .to_string()
                .as_bytes(),
        );
    }
    amy.send_raw(&packed).await;
    for _ in 0..3 {
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(WAIT, ben.stream.read(&mut buf))
            .await
            .expect("data")
            .expect("read");
        // The client parses one read as one document.
        let v: Value = serde_json::from_slice(&buf[..n])
            .unwrap_or_else(|e| panic!("one document per read: {e}: {:?}", &buf[..n]));
        assert_eq!(v["msgType"], 4);
    }
}
