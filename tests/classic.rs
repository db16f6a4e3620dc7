//! The classic msgid dialect, with requests byte for byte as the seed's
//! ChatClient sends them: nlohmann's `dump()` (keys sorted) plus one NUL.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::AsyncReadExt;

fn reg(msgid: u32, name: &str, pw: &str) -> Vec<u8> {
    format!("{{\"msgid\":{msgid},\"name\":\"{name}\",\"password\":\"{pw}\"}}\0").into_bytes()
}

fn login(msgid: u32, id: u32, pw: &str) -> Vec<u8> {
    format!("{{\"id\":{id},\"msgid\":{msgid},\"password\":\"{pw}\"}}\0").into_bytes()
}

fn chat(msgid: u32, id: u32, name: &str, toid: u32, msg: &str) -> Vec<u8> {
    format!(
        "{{\"id\":{id},\"msg\":\"{msg}\",\"msgid\":{msgid},\"name\":\"{name}\",\"time\":\"2024-05-01 12:00:00\",\"toid\":{toid}}}\0"
    )
    .into_bytes()
}

fn group_chat(msgid: u32, id: u32, name: &str, gid: u32, msg: &str) -> Vec<u8> {
    format!(
        "{{\"groupid\":{gid},\"id\":{id},\"msg\":\"{msg}\",\"msgid\":{msgid},\"name\":\"{name}\",\"time\":\"2024-05-01 12:00:01\"}}\0"
    )
    .into_bytes()
}

/// Parse the strings-of-JSON the classic login reply uses for its lists.
fn inner(list: &Value) -> Vec<Value> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|s| serde_json::from_str(s.as_str().expect("list elements are strings")).unwrap())
        .collect()
}

#[tokio::test]
async fn register_and_login_in_the_course_numbering() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.send_raw(&reg(4, "alice", "123456")).await;
    let r = c.next().await;
    assert_eq!(r, json!({"msgid": 5, "errno": 0, "id": 1}));
    c.send_raw(&reg(4, "alice", "x")).await;
    let r = c.next().await;
    assert_eq!(
        (r["msgid"].clone(), r["errno"].clone()),
        (json!(5), json!(1))
    );
    c.send_raw(&login(1, 1, "123456")).await;
    let r = c.next().await;
    // Empty lists are left out entirely.
    assert_eq!(r, json!({"msgid": 2, "errno": 0, "id": 1, "name": "alice"}));
}

#[tokio::test]
async fn register_and_login_in_the_thousand_numbering() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.send_raw(&reg(1003, "bob", "pw")).await;
    assert_eq!(c.next().await, json!({"msgid": 1004, "errno": 0, "id": 1}));
    c.send_raw(&login(1000, 1, "pw")).await;
    assert_eq!(
        c.next().await,
        json!({"msgid": 1001, "errno": 0, "id": 1, "name": "bob"})
    );
    c.send_raw(&login(1000, 1, "wrong")).await;
    assert_eq!(
        c.next().await,
        json!({"msgid": 1001, "errno": 1, "errmsg": "id or password is invalid!"})
    );
}

#[tokio::test]
async fn two_requests_packed_into_one_write() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut both = reg(4, "a", "pw");
    both.extend(reg(4, "b", "pw"));
    c.send_raw(&both).await;
    assert_eq!(c.next().await["id"], 1);
    assert_eq!(c.next().await["id"], 2);
    // A login and a chat in one write.
    let mut both = login(1, 1, "pw");
    both.extend(chat(6, 1, "a", 2, "packed"));
    c.send_raw(&both).await;
    assert_eq!(c.next().await["errno"], 0);
    let (mut b, _) = (srv.client().await, ());
    b.send_raw(&login(1, 2, "pw")).await;
    assert_eq!(b.next().await["msgid"], 2);
    let m = b.next().await;
    assert_eq!(m["msg"], "packed");
}

#[tokio::test]
async fn one_request_split_over_three_writes() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.send_raw(&reg(4, "alice", "pw")).await;
    c.next().await;
    let bytes = login(1, 1, "pw");
    let (a, rest) = bytes.split_at(7);
    let (b, d) = rest.split_at(15);
    for part in [a, b, d] {
        c.send_raw(part).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.next().await["errno"], 0);
}

#[tokio::test]
async fn the_whole_classic_session() {
    let srv = TestServer::start().await;
    let mut a = srv.client().await;
    a.send_raw(&reg(4, "alice", "pw")).await;
    a.next().await;
    a.send_raw(&reg(4, "bob", "pw")).await;
    a.next().await;
    a.send_raw(&login(1, 1, "pw")).await;
    a.next().await;
    // No replies to these, as in the original.
    a.send_raw(b"{\"friendid\":2,\"id\":1,\"msgid\":7}\0").await;
    a.send_raw(b"{\"groupdesc\":\"a test group\",\"groupname\":\"grp\",\"id\":1,\"msgid\":8}\0")
        .await;
    a.send_raw(&chat(6, 1, "alice", 2, "hello bob")).await;
    a.send_raw(&group_chat(10, 1, "alice", 1, "hello group"))
        .await;
    a.send_raw(b"{\"id\":1,\"msgid\":3}\0").await;
    a.quiet().await;

    // Log in again on the same connection: the friend and the group are there.
    a.send_raw(&login(1, 1, "pw")).await;
    let r = a.next().await;
    assert_eq!(r["errno"], 0);
    let friends = inner(&r["friends"]);
    assert_eq!(
        friends,
        vec![json!({"id": 2, "name": "bob", "state": "offline"})]
    );
    let groups = inner(&r["groups"]);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["id"], 1);
    assert_eq!(groups[0]["groupname"], "grp");
    assert_eq!(groups[0]["groupdesc"], "a test group");
    let users = inner(&groups[0]["users"]);
    assert_eq!(
        users,
        vec![json!({"id": 1, "name": "alice", "state": "online", "role": "creator"})]
    );

    // Bob logs in: offline messages come as pushes after the reply.
    let mut b = srv.client().await;
    b.send_raw(&login(1, 2, "pw")).await;
    let r = b.next().await;
    assert_eq!(r["errno"], 0);
    assert!(r.get("offlinemsg").is_none());
    assert_eq!(inner(&r["friends"])[0]["state"], "online");
    let m = b.next().await;
    assert_eq!(
        m,
        json!({"msgid": 6, "id": 1, "name": "alice", "toid": 2, "msg": "hello bob", "time": "2024-05-01 12:00:00"})
    );
    // Bob was not in the group when alice wrote to it.
    b.quiet().await;
    b.send_raw(b"{\"groupid\":1,\"id\":2,\"msgid\":9}\0").await;
    b.send_raw(&group_chat(10, 2, "bob", 1, "bob here")).await;
    let m = a.next().await;
    assert_eq!(
        m,
        json!({"msgid": 10, "id": 2, "name": "bob", "groupid": 1, "msg": "bob here", "time": "2024-05-01 12:00:01"})
    );
    b.send_raw(&chat(6, 2, "bob", 1, "hi alice")).await;
    assert_eq!(a.next().await["msg"], "hi alice");
    // Delivered by writing: bob's queued message does not come again.
    drop(b);
    let mut b = srv.client().await;
    b.send_raw(&login(1, 2, "pw")).await;
    assert_eq!(b.next().await["errno"], 0);
    b.quiet().await;
}

/// LOGINOUT takes the client back to its first menu, where REG is the
/// other choice; and some forks send the password as `pwd`.
#[tokio::test]
async fn after_loginout_the_connection_can_register_and_log_in_as_someone_else() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.send_raw(&reg(4, "alice", "pw")).await;
    assert_eq!(c.next().await["errno"], 0);
    c.send_raw(&login(1, 1, "pw")).await;
    assert_eq!(c.next().await["errno"], 0);
    c.send_raw(b"{\"id\":1,\"msgid\":3}\0").await;
    c.quiet().await;
    c.send_raw(&reg(4, "carol", "pw2")).await;
    assert_eq!(c.next().await, json!({"msgid": 5, "errno": 0, "id": 2}));
    c.send_raw(b"{\"id\":2,\"msgid\":1,\"pwd\":\"pw2\"}\0")
        .await;
    assert_eq!(
        c.next().await,
        json!({"msgid": 2, "errno": 0, "id": 2, "name": "carol"})
    );
    // The connection is carol's now: what it sends comes from her, whatever
    // id it claims.
    let mut a = srv.client().await;
    a.send_raw(&login(1, 1, "pw")).await;
    assert_eq!(a.next().await["errno"], 0);
    c.send_raw(&chat(6, 1, "alice", 1, "from carol")).await;
    let m = a.next().await;
    assert_eq!(
        (m["id"].clone(), m["msg"].clone()),
        (json!(2), json!("from carol"))
    );
}

#[tokio::test]
async fn the_sender_is_the_session_not_the_claimed_id() {
    let srv = TestServer::start().await;
    let (mut native, native_id) = srv.user("victim").await;
    let mut c = srv.client().await;
    c.send_raw(&reg(4, "mallory", "pw")).await;
    let m_id = c.next().await["id"].as_u64().unwrap();
    c.send_raw(&login(1, m_id as u32, "pw")).await;
    c.next().await;
    // Claims to be user 1 named "admin".
    c.send_raw(&chat(6, native_id, "admin", native_id, "trust me"))
        .await;
    let m = native.push_of("message").await;
    assert_eq!(m["from"], m_id);
    assert_eq!(m["from_name"], "mallory");
    assert_eq!(m["text"], "trust me");
}

#[tokio::test]
async fn classic_and_native_users_talk_to_each_other() {
    let srv = TestServer::start().await;
    let (mut n, n_id) = srv.user("nat").await;
    let mut c = srv.client().await;
    c.send_raw(&reg(1003, "cla", "pw")).await;
    let c_id = c.next().await["id"].as_u64().unwrap() as u32;
    c.send_raw(&login(1000, c_id, "pw")).await;
    c.next().await;
    n.send_text(c_id, "native to classic").await;
    let m = c.next().await;
    assert_eq!(m["msgid"], 1005);
    assert_eq!(
        (m["id"].clone(), m["name"].clone(), m["msg"].clone()),
        (json!(n_id), json!("nat"), json!("native to classic"))
    );
    assert!(m["time"].as_str().unwrap().len() == 19, "{m}");
    c.send_raw(&chat(1005, c_id, "cla", n_id, "classic to native"))
        .await;
    let m = n.push_of("message").await;
    assert_eq!(m["text"], "classic to native");
    // The same account works from the native protocol too.
    let mut c2 = srv.client().await;
    let r = c2
        .ok(json!({"type": "login", "id": c_id, "password": "pw"}))
        .await;
    assert_eq!(r["user"]["name"], "cla");
}

#[tokio::test]
async fn refusals_come_as_error_pushes_the_client_ignores() {
    let srv = TestServer::start().await;
    let (mut owner, _) = srv.user("owner").await;
    let g = owner
        .ok(json!({"type": "group_create", "name": "private"}))
        .await;
    let gid = g["group"]["id"].as_u64().unwrap() as u32;
    let mut c = srv.client().await;
    // Chat before login.
    c.send_raw(&chat(6, 1, "x", 1, "hi")).await;
    let e = c.next().await;
    assert_eq!(e["msgid"], 100);
    assert_eq!(e["code"], "not_logged_in");
    assert!(e["errno"].as_i64().unwrap() > 0);
    c.send_raw(&reg(4, "outsider", "pw")).await;
    let id = c.next().await["id"].as_u64().unwrap() as u32;
    c.send_raw(&login(1, id, "pw")).await;
    c.next().await;
    // Group chat by a non-member, in the thousand numbering.
    c.send_raw(&group_chat(1009, id, "outsider", gid, "let me in"))
        .await;
    let e = c.next().await;
    assert_eq!(
        (e["msgid"].clone(), e["code"].clone()),
        (json!(1100), json!("not_member"))
    );
    owner.quiet().await;
    // To an unknown user.
    c.send_raw(&chat(6, id, "outsider", 4242, "anyone?")).await;
    assert_eq!(c.next().await["code"], "unknown_user");
    // An unknown msgid.
    c.send_raw(b"{\"msgid\":77}\0").await;
    assert_eq!(c.next().await["code"], "unknown_type");
    // A login that is not an int id.
    c.send_raw(b"{\"id\":\"abc\",\"msgid\":1,\"password\":\"pw\"}\0")
        .await;
    assert_eq!(
        c.next().await,
        json!({"msgid": 2, "errno": 1, "errmsg": "id or password is invalid!"})
    );
}

#[tokio::test]
async fn too_many_sessions_is_errno_2() {
    let srv = TestServer::start_with(|s| s.max_sessions_per_user = 1).await;
    let mut a = srv.client().await;
    a.send_raw(&reg(4, "solo", "pw")).await;
    a.next().await;
    a.send_raw(&login(1, 1, "pw")).await;
    a.next().await;
    let mut b = srv.client().await;
    b.send_raw(&login(1, 1, "pw")).await;
    assert_eq!(
        b.next().await,
        json!({"msgid": 2, "errno": 2, "errmsg": "this account is using, input another!"})
    );
}

#[tokio::test]
async fn every_write_fits_the_client_buffer() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.send_raw(&reg(4, "popular", "pw")).await;
    let me = c.next().await["id"].as_u64().unwrap() as u32;
    c.send_raw(&login(1, me, "pw")).await;
    c.next().await;
    // Forty friends with long names, all in one group.
    let mut natives = Vec::new();
    for i in 0..40 {
        let (n, _) = srv
            .user(&format!("a-rather-long-friend-name-number-{i:02}"))
            .await;
        natives.push(n);
    }
    let gid = natives[0]
        .ok(json!({"type": "group_create", "name": "big"}))
        .await["group"]["id"]
        .clone();
    for n in natives.iter_mut().skip(1) {
        n.ok(json!({"type": "group_join", "group": gid})).await;
    }
    c.send_raw(format!("{{\"groupid\":{gid},\"id\":1,\"msgid\":9}}\0").as_bytes())
        .await;
    for i in 0..40 {
        c.send_raw(format!("{{\"friendid\":{},\"id\":1,\"msgid\":7}}\0", i + 2).as_bytes())
            .await;
    }
    // Requests on one connection are handled in order: this reply comes after them all.
    c.send_raw(&login(1, me, "pw")).await;
    let r = c.next().await;
    assert!(
        inner(&r["friends"]).len() + 1 < 40,
        "only what fits is listed"
    );
    // A long message from a native friend.
    let long: String = "长消息-long message ".repeat(150);
    natives[0].send_text(me, &long).await;
    let mut c = srv.client().await;
    c.send_raw(&login(1, me, "pw")).await;
    // Read raw bytes until the whole long message is in.
    let mut raw = Vec::new();
    let frames: Vec<Vec<u8>> = loop {
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(WAIT, c.stream_mut().read(&mut buf))
            .await
            .expect("data")
            .expect("read");
        assert!(n > 0, "connection closed");
        raw.extend_from_slice(&buf[..n]);
        let complete = raw.iter().rposition(|b| *b == 0).map_or(0, |p| p + 1);
        let frames: Vec<Vec<u8>> = raw[..complete]
            .split(|b| *b == 0)
            .filter(|f| !f.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let text: String = frames
            .iter()
            .skip(1)
            .map(|f| {
                serde_json::from_slice::<Value>(f).unwrap()["msg"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        if text == long {
            break frames;
        }
    };
    for f in &frames {
        assert!(
            f.len() + 1 < 1024,
            "a {} byte write would overflow the client",
            f.len()
        );
    }
    let ack: Value = serde_json::from_slice(&frames[0]).unwrap();
    assert_eq!(ack["errno"], 0);
    assert!(!inner(&ack["friends"]).is_empty());
    assert!(frames.len() > 3, "the long message came in pieces");
}

#[tokio::test]
async fn pushes_are_spaced_so_each_read_gets_one() {
    let srv = TestServer::start_with(|s| s.classic_push_gap_ms = 150).await;
    let (mut n, _) = srv.user("sender").await;
    let mut c = srv.client().await;
    c.send_raw(&reg(4, "reader", "pw")).await;
    let me = c.next().await["id"].as_u64().unwrap() as u32;
    for i in 0..3 {
        n.send_text(me, &format!("queued {i}")).await;
    }
    let mut c = srv.client().await;
    c.send_raw(&login(1, me, "pw")).await;
    let mut reads = Vec::new();
    while reads.len() < 4 {
        let mut buf = vec![0u8; 4096];
        let k = tokio::time::timeout(WAIT, c.stream_mut().read(&mut buf))
            .await
            .expect("data")
            .expect("read");
        assert!(k > 0);
        reads.push(buf[..k].to_vec());
    }
    for r in &reads {
        assert_eq!(
            r.iter().filter(|b| **b == 0).count(),
            1,
            "one value per read: {:?}",
            String::from_utf8_lossy(r)
        );
        assert_eq!(*r.last().unwrap(), 0);
    }
}
