//! The Go chatroom dialect (seed 003) on its own port: 4-byte big-endian
//! length, then `{"type","data":"<json string>"}`, as the real client
//! writes and reads it.

mod common;

use common::seeds::{go_user, Go, GO_MAX};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::AsyncReadExt;

async fn server() -> TestServer {
    TestServer::start_with(|s| s.listen_dialect = vec!["go-chatroom=127.0.0.1:0".into()]).await
}

#[tokio::test]
async fn register_with_a_chosen_id_then_log_in() {
    let srv = server().await;
    let go = srv.dialect("go-chatroom");
    let mut c = Go::connect(go).await;
    assert_eq!(
        c.register(100, "123456", "tom").await,
        json!({"code": 200, "error": ""})
    );
    // A taken id: the client's "exists" failure.
    let mut c = Go::connect(go).await;
    let r = c.register(100, "x", "another").await;
    assert_eq!(r["code"], 505);
    assert!(!r["error"].as_str().unwrap().is_empty());
    // A taken name, an id outside this node's block, a bad id.
    assert_eq!(c.register(101, "x", "tom").await["code"], 505);
    assert_eq!(c.register(2_100_000_000, "x", "far").await["code"], 400);
    assert_eq!(c.register(0, "x", "zero").await["code"], 400);
    // Login answers: 403 wrong password, 500 unknown user, 200 and the online list.
    let mut c = Go::connect(go).await;
    assert_eq!(c.login(100, "wrong").await["code"], 403);
    assert_eq!(c.login(555, "123456").await["code"], 500);
    let ok = c.login(100, "123456").await;
    assert_eq!(ok["code"], 200);
    assert_eq!(ok["UsersId"], json!([100]));
    assert_eq!(ok["UserIds"], json!([100]));
    assert_eq!(ok["error"], "");
    // A native user gets the next id the node hands out, never 100.
    let mut n = srv.client().await;
    let id = n.register("nat", "pw").await;
    assert_ne!(id, 100);
}

#[tokio::test]
async fn the_room_hears_logins_and_messages() {
    let srv = server().await;
    let go = srv.dialect("go-chatroom");
    let mut tom = go_user(go, 100, "tom").await;
    // Jerry logs in: tom is told, jerry's list shows tom.
    let mut jerry = Go::connect(go).await;
    assert_eq!(jerry.register(200, "pw", "jerry").await["code"], 200);
    let mut jerry = Go::connect(go).await;
    let r = jerry.login(200, "pw").await;
    let mut online: Vec<u64> = r["UsersId"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    online.sort();
    assert_eq!(online, [100, 200]);
    assert_eq!(
        tom.next_of("NotifyUserStatusMes").await,
        json!({"userId": 200, "status": 0})
    );
    // SmsMes: broadcast to the room, from the session's user whatever it claims.
    jerry.say(999, "hello_all").await;
    let sms = tom.next_of("SmsMes").await;
    assert_eq!(sms["content"], "hello_all");
    assert_eq!(sms["userId"], 200);
    jerry.quiet().await;
    // Jerry's client exits: tom is told jerry is offline.
    drop(jerry);
    assert_eq!(
        tom.next_of("NotifyUserStatusMes").await,
        json!({"userId": 200, "status": 1})
    );
}

#[tokio::test]
async fn no_frame_over_8096_bytes_and_each_in_one_write() {
    let srv = server().await;
    let go = srv.dialect("go-chatroom");
    let mut tom = go_user(go, 100, "tom").await;
    // A native lobby member says something long and full of quotes.
    let (mut n, _) = srv.user("alice").await;
    n.join_lobby().await;
    let text = "\"说\"\\".repeat(500); // 4000 bytes, escaping grows it a lot
    n.ok(json!({"type": "send", "group": LOBBY, "text": text}))
        .await;
    let mut joined = String::new();
    while joined.len() < text.len() {
        // One read must bring a whole frame: header and body in one write.
        let mut buf = vec![0u8; 2 * GO_MAX];
        let k = tokio::time::timeout(WAIT, tom.stream.read(&mut buf[..GO_MAX + 4]))
            .await
            .expect("data")
            .expect("read");
        assert!(k >= 4);
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert!(len <= GO_MAX, "a {len}-byte frame");
        assert!(
            k >= 4 + len,
            "header and body in one write ({k} of {})",
            4 + len
        );
        let f: Value = serde_json::from_slice(&buf[4..4 + len]).unwrap();
        let data: Value = serde_json::from_str(f["data"].as_str().unwrap()).unwrap();
        if f["type"] == "SmsMes" {
            joined.push_str(data["content"].as_str().unwrap());
        }
        // What else this read brought is whole frames of the same kind.
        let mut rest = &buf[4 + len..k];
        while rest.len() >= 4 {
            let l = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let f: Value = serde_json::from_slice(&rest[4..4 + l]).unwrap();
            let data: Value = serde_json::from_str(f["data"].as_str().unwrap()).unwrap();
            joined.push_str(data["content"].as_str().unwrap());
            rest = &rest[4 + l..];
        }
    }
    assert_eq!(joined, text);
}

#[tokio::test]
async fn packed_and_split_input() {
    let srv = server().await;
    let go = srv.dialect("go-chatroom");
    let mut tom = go_user(go, 100, "tom").await;
    let mut c = Go::connect(go).await;
    assert_eq!(c.register(200, "pw", "jerry").await["code"], 200);
    let mut jerry = Go::connect(go).await;
    // Login and two messages in one write.
    let mut packed = Go::frame(
        "LoginMes",
        &json!({"userId": 200, "userPwd": "pw", "userName": ""}),
    );
    for t in ["one", "two"] {
        packed.extend(Go::frame("SmsMes", &json!({"content": t, "userId": 200})));
    }
    jerry.send_raw(&packed).await;
    assert_eq!(jerry.next().await.0, "LoginResMes");
    assert_eq!(tom.next_of("SmsMes").await["content"], "one");
    assert_eq!(tom.next_of("SmsMes").await["content"], "two");
    // One frame in three writes.
    let f = Go::frame("SmsMes", &json!({"content": "three", "userId": 200}));
    for part in [&f[..2], &f[2..9], &f[9..]] {
        jerry.send_raw(part).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(tom.next_of("SmsMes").await["content"], "three");
}

#[tokio::test]
async fn bad_input_gets_the_dialects_errors() {
    let srv = server().await;
    let go = srv.dialect("go-chatroom");
    let mut tom = go_user(go, 100, "tom").await;
    let mut c = Go::connect(go).await;
    assert_eq!(c.register(200, "pw", "jerry").await["code"], 200);
    // Data that is not JSON, keys of the wrong type: the answer the login
    // expects, and the connection goes on.
    let mut c = Go::connect(go).await;
    let body = json!({"type": "LoginMes", "data": "not json"}).to_string();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body.as_bytes());
    c.send_raw(&f).await;
    let (ty, d) = c.next().await;
    assert_eq!(
        (ty.as_str(), d["code"].clone()),
        ("LoginResMes", json!(400))
    );
    c.send("LoginMes", json!({"userId": "200", "userPwd": "pw"}))
        .await;
    assert_eq!(c.next_of("LoginResMes").await["code"], 400);
    assert_eq!(c.login(200, "pw").await["code"], 200);
    // An unknown type: a frame the client prints as unknown, harmlessly.
    c.send("WhoAmIMes", json!({})).await;
    let (ty, d) = c.next().await;
    assert_eq!(ty, "ErrorMes");
    assert!(d["error"].as_str().unwrap().contains("WhoAmIMes"));
    // Not an object at all.
    let mut raw = 3u32.to_be_bytes().to_vec();
    raw.extend_from_slice(b"[1]");
    c.send_raw(&raw).await;
    assert_eq!(c.next().await.0, "ErrorMes");
    // A length over the limit: the stream cannot be followed; closed.
    let mut evil = Go::connect(go).await;
    evil.send_raw(&9000u32.to_be_bytes()).await;
    evil.send_raw(&[b'x'; 64]).await;
    assert!(evil.closed().await);
    // Everyone else is still served.
    c.say(200, "still here").await;
    assert_eq!(tom.next_of("SmsMes").await["content"], "still here");
}
