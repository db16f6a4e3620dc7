//! chatd's own protocol, feature by feature, over real sockets.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn register_login_logout_and_login_again_on_one_connection() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let id = c.register("alice", "secret").await;
    assert_eq!(id, 1, "the first user of node 1 gets id 1");
    let r = c.login("alice", "secret").await;
    assert_eq!(r["user"]["id"], id);
    assert_eq!(r["sessions"], 1);
    assert_eq!(c.ok(json!({"type": "logout"})).await["type"], "logged_out");
    c.err(json!({"type": "friends"}), "not_logged_in").await;
    // Log in again, this time by id.
    let r = c
        .ok(json!({"type": "login", "id": id, "password": "secret"}))
        .await;
    assert_eq!(r["user"]["name"], "alice");
    assert_eq!(c.ok(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_the_same() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.register("alice", "secret").await;
    let wrong = c
        .err(
            json!({"type": "login", "name": "alice", "password": "nope"}),
            "invalid_credentials",
        )
        .await;
    let unknown = c
        .err(
            json!({"type": "login", "name": "nobody", "password": "nope"}),
            "invalid_credentials",
        )
        .await;
    let unknown_id = c
        .err(
            json!({"type": "login", "id": 99, "password": "nope"}),
            "invalid_credentials",
        )
        .await;
    assert_eq!(wrong["message"], unknown["message"]);
    assert_eq!(wrong["message"], unknown_id["message"]);
}

#[tokio::test]
async fn names_are_unique_and_checked() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.register("alice", "pw").await;
    c.err(
        json!({"type": "register", "name": "alice", "password": "x"}),
        "name_taken",
    )
    .await;
    c.err(
        json!({"type": "register", "name": "", "password": "x"}),
        "invalid_name",
    )
    .await;
    c.err(
        json!({"type": "register", "name": " alice", "password": "x"}),
        "invalid_name",
    )
    .await;
    c.err(
        json!({"type": "register", "name": "a#b", "password": "x"}),
        "invalid_name",
    )
    .await;
    c.err(
        json!({"type": "register", "name": "x".repeat(51), "password": "x"}),
        "invalid_name",
    )
    .await;
    c.err(
        json!({"type": "register", "name": "bob", "password": ""}),
        "invalid_password",
    )
    .await;
    // Names are any Unicode, as long as they are short enough.
    c.register("张三", "pw").await;
}

#[tokio::test]
async fn passwords_are_stored_as_argon2id_hashes() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.register("alice", "hunter2-plaintext").await;
    let dir = srv.stop().await;
    // Nothing in the data directory holds the password itself.
    let mut found_hash = false;
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !contains(&bytes, b"hunter2-plaintext"),
            "plaintext password in {}",
            entry.display()
        );
        found_hash |= contains(&bytes, b"$argon2id$");
    }
    assert!(found_hash, "an argon2id hash is stored");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn change_password() {
    let srv = TestServer::start().await;
    let (mut c, _) = srv.user("alice").await;
    c.err(
        json!({"type": "passwd", "old": "wrong", "new": "new"}),
        "invalid_credentials",
    )
    .await;
    c.err(
        json!({"type": "passwd", "old": "pw", "new": ""}),
        "invalid_password",
    )
    .await;
    assert_eq!(
        c.ok(json!({"type": "passwd", "old": "pw", "new": "n3w"}))
            .await["type"],
        "ok"
    );
    let mut d = srv.client().await;
    d.err(
        json!({"type": "login", "name": "alice", "password": "pw"}),
        "invalid_credentials",
    )
    .await;
    d.login("alice", "n3w").await;
    let mut e = srv.client().await;
    e.err(
        json!({"type": "passwd", "old": "n3w", "new": "x"}),
        "not_logged_in",
    )
    .await;
}

#[tokio::test]
async fn several_sessions_of_one_user_all_get_messages_up_to_the_limit() {
    let srv = TestServer::start_with(|s| s.max_sessions_per_user = 2).await;
    let (mut bob, bob_id) = srv.user("bob").await;
    let mut bob2 = srv.client().await;
    assert_eq!(bob2.login("bob", "pw").await["sessions"], 2);
    let mut bob3 = srv.client().await;
    bob3.err(
        json!({"type": "login", "name": "bob", "password": "pw"}),
        "too_many_sessions",
    )
    .await;
    let (mut alice, _) = srv.user("alice").await;
    alice.send_text(bob_id, "to all my devices").await;
    for c in [&mut bob, &mut bob2] {
        let m = c.push_of("message").await;
        assert_eq!(m["text"], "to all my devices");
        assert_eq!(m["from_name"], "alice");
    }
    bob3.quiet().await;
}

#[tokio::test]
async fn welcome_notice_after_login() {
    let srv = TestServer::start_with(|s| s.welcome = "Welcome to chatd".into()).await;
    let mut c = srv.client().await;
    c.register("alice", "pw").await;
    c.login("alice", "pw").await;
    let n = c.push_of("notice").await;
    assert_eq!(n["text"], "Welcome to chatd");
}

#[tokio::test]
async fn friends_request_accept_decline_remove_remark_and_list() {
    let srv = TestServer::start().await;
    let (mut a, a_id) = srv.user("alice").await;
    let (mut b, b_id) = srv.user("bob").await;
    let (mut c, c_id) = srv.user("carol").await;

    a.ok(json!({"type": "friend_request", "user": b_id, "text": "hi, it's alice"}))
        .await;
    let req = b.push_of("friend_request").await;
    assert_eq!(req["from"]["id"], a_id);
    assert_eq!(req["text"], "hi, it's alice");
    let fb = b.ok(json!({"type": "friends"})).await;
    assert_eq!(fb["incoming"][0]["id"], a_id);
    assert_eq!(fb["incoming"][0]["text"], "hi, it's alice");
    let fa = a.ok(json!({"type": "friends"})).await;
    assert_eq!(fa["outgoing"][0]["id"], b_id);
    assert_eq!(fa["friends"], json!([]));

    b.ok(json!({"type": "friend_accept", "user": a_id})).await;
    assert_eq!(a.push_of("friend_added").await["user"]["id"], b_id);
    assert_eq!(b.push_of("friend_added").await["user"]["id"], a_id);
    let fa = a.ok(json!({"type": "friends"})).await;
    assert_eq!(fa["friends"][0]["id"], b_id);
    assert_eq!(fa["friends"][0]["online"], true);
    b.err(json!({"type": "friend_accept", "user": a_id}), "no_request")
        .await;
    a.err(
        json!({"type": "friend_request", "user": b_id}),
        "already_friends",
    )
    .await;
    a.err(
        json!({"type": "friend_request", "user": a_id}),
        "self_target",
    )
    .await;
    a.err(
        json!({"type": "friend_request", "user": 4242}),
        "unknown_user",
    )
    .await;

    a.ok(json!({"type": "friend_remark", "user": b_id, "remark": "Bobby"}))
        .await;
    let fa = a.ok(json!({"type": "friends"})).await;
    assert_eq!(fa["friends"][0]["remark"], "Bobby");
    // The remark is private.
    let fb = b.ok(json!({"type": "friends"})).await;
    assert_eq!(fb["friends"][0]["remark"], "");
    a.err(
        json!({"type": "friend_remark", "user": c_id, "remark": "x"}),
        "not_friends",
    )
    .await;

    // Carol asks, Alice declines.
    c.ok(json!({"type": "friend_request", "user": a_id})).await;
    a.push_of("friend_request").await;
    a.ok(json!({"type": "friend_decline", "user": c_id})).await;
    assert_eq!(c.push_of("friend_declined").await["user"]["id"], a_id);
    assert_eq!(
        a.ok(json!({"type": "friends"})).await["incoming"],
        json!([])
    );

    // Asking someone who already asked you accepts.
    c.ok(json!({"type": "friend_request", "user": b_id})).await;
    b.push_of("friend_request").await;
    b.ok(json!({"type": "friend_request", "user": c_id})).await;
    assert_eq!(c.push_of("friend_added").await["user"]["id"], b_id);
    assert_eq!(b.push_of("friend_added").await["user"]["id"], c_id);

    a.ok(json!({"type": "friend_remove", "user": b_id})).await;
    assert_eq!(b.push_of("friend_removed").await["user"]["id"], a_id);
    assert_eq!(a.ok(json!({"type": "friends"})).await["friends"], json!([]));
    a.err(
        json!({"type": "friend_remove", "user": b_id}),
        "not_friends",
    )
    .await;
}

#[tokio::test]
async fn search_by_name_fragment_or_id() {
    let srv = TestServer::start().await;
    let (mut a, _) = srv.user("alice").await;
    let (_b, b_id) = srv.user("Bobby Tables").await;
    srv.user("bobcat").await;
    srv.user("carol").await;
    let r = a.ok(json!({"type": "search", "query": "BOB"})).await;
    let names: Vec<&str> = r["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{r}");
    assert!(names.contains(&"Bobby Tables") && names.contains(&"bobcat"));
    let r = a
        .ok(json!({"type": "search", "query": b_id.to_string()}))
        .await;
    assert_eq!(r["users"][0]["id"], b_id);
    a.err(json!({"type": "search", "query": "  "}), "bad_request")
        .await;
}

#[tokio::test]
async fn friends_see_each_other_come_and_go_including_abrupt_disconnects() {
    let srv = TestServer::start().await;
    let (mut a, a_id) = srv.user("alice").await;
    let (mut b, b_id) = srv.user("bob").await;
    a.ok(json!({"type": "friend_request", "user": b_id})).await;
    b.push_of("friend_request").await;
    b.ok(json!({"type": "friend_accept", "user": a_id})).await;
    a.push_of("friend_added").await;
    b.push_of("friend_added").await;

    b.ok(json!({"type": "logout"})).await;
    let p = a.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(b_id), json!(false))
    );
    b.login("bob", "pw").await;
    let p = a.push_of("presence").await;
    assert_eq!(p["online"], true);

    // A second device coming and going changes nothing.
    let mut b2 = srv.client().await;
    b2.login("bob", "pw").await;
    drop(b2);
    a.quiet().await;

    // Pull the plug on the last session: friends are told.
    drop(b);
    let p = a.push_of("presence").await;
    assert_eq!(
        (p["user"]["id"].clone(), p["online"].clone()),
        (json!(b_id), json!(false))
    );
    let f = a.ok(json!({"type": "friends"})).await;
    assert_eq!(f["friends"][0]["online"], false);
}

#[tokio::test]
async fn direct_messages_live_and_queued_in_order() {
    let srv = TestServer::start().await;
    let (mut a, a_id) = srv.user("alice").await;
    let mut b = srv.client().await;
    let b_id = b.register("bob", "pw").await;

    // Bob is offline: the messages wait, in order.
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(a.send_text(b_id, &format!("m{i}")).await["id"].clone());
    }
    let mut ids: Vec<u64> = sent.iter().map(|v| v.as_u64().unwrap()).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_eq!(ids, sorted, "ids are ordered within a conversation");
    ids.dedup();
    assert_eq!(ids.len(), 30, "ids are unique");

    b.login("bob", "pw").await;
    let got = b.take_messages(30).await;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["text"], format!("m{i}"));
        assert_eq!(m["from"], a_id);
        assert_eq!(m["to"], b_id);
        assert_eq!(m["id"], sent[i]);
    }
    // Live now.
    a.send_text(b_id, "live").await;
    assert_eq!(b.push_of("message").await["text"], "live");
    a.err(
        json!({"type": "send", "to": a_id, "text": "me"}),
        "self_target",
    )
    .await;
}

#[tokio::test]
async fn a_resend_with_the_same_cid_is_stored_once() {
    let srv = TestServer::start().await;
    let (mut a, _) = srv.user("alice").await;
    let (mut b, b_id) = srv.user("bob").await;
    let first = a
        .ok(json!({"type": "send", "to": b_id, "text": "once", "cid": "c-1"}))
        .await;
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["cid"], "c-1");
    // The sender reconnects and resends.
    drop(a);
    let mut a = srv.client().await;
    a.login("alice", "pw").await;
    let again = a
        .ok(json!({"type": "send", "to": b_id, "text": "once", "cid": "c-1"}))
        .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);
    let m = b.push_of("message").await;
    assert_eq!(m["cid"], "c-1");
    b.quiet().await;
    let h = b.ok(json!({"type": "history", "with": 1})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unacknowledged_messages_come_again_acknowledged_ones_do_not() {
    let srv = TestServer::start().await;
    let (mut a, _) = srv.user("alice").await;
    let (mut b, b_id) = srv.user("bob").await;
    for i in 0..4 {
        a.send_text(b_id, &format!("m{i}")).await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(b.push_of("message").await);
    }
    // Acknowledge the first two only.
    let r = b
        .ok(json!({"type": "ack", "ids": [got[0]["id"], got[1]["id"]]}))
        .await;
    assert_eq!(r["count"], 2);
    drop(b);
    let mut b = srv.client().await;
    b.login("bob", "pw").await;
    let again = b.take_messages(2).await;
    assert_eq!(again[0]["text"], "m2");
    assert_eq!(again[1]["text"], "m3");
    assert_eq!(again[0]["id"], got[2]["id"], "redelivered with the same id");
    drop(b);
    let mut b = srv.client().await;
    b.login("bob", "pw").await;
    b.quiet().await;
}

#[tokio::test]
async fn groups_roles_and_permissions() {
    let srv = TestServer::start().await;
    let (mut a, a_id) = srv.user("alice").await; // creator
    let (mut b, b_id) = srv.user("bob").await; // will be admin
    let (mut c, c_id) = srv.user("carol").await; // member
    let (mut d, d_id) = srv.user("dave").await; // outsider, then invited

    let g = a
        .ok(json!({"type": "group_create", "name": "rustaceans", "desc": "crabs"}))
        .await;
    assert_eq!(g["group"]["role"], "creator");
    let gid = g["group"]["id"].as_u64().unwrap();
    assert_eq!(gid, 1, "group ids start at 1 on node 1");

    b.ok(json!({"type": "group_join", "group": gid})).await;
    assert_eq!(a.push_of("group_event").await["event"], "joined");
    b.push_of("group_event").await;
    c.ok(json!({"type": "group_join", "group": gid})).await;
    c.err(
        json!({"type": "group_join", "group": gid}),
        "already_member",
    )
    .await;
    c.err(json!({"type": "group_join", "group": 999}), "unknown_group")
        .await;
    for x in [&mut a, &mut b, &mut c] {
        let e = x.push_of("group_event").await;
        assert_eq!(
            (e["event"].clone(), e["user"].clone()),
            (json!("joined"), json!(c_id))
        );
    }

    // Only the creator changes roles.
    b.err(
        json!({"type": "group_role", "group": gid, "user": c_id, "role": "admin"}),
        "forbidden",
    )
    .await;
    a.ok(json!({"type": "group_role", "group": gid, "user": b_id, "role": "admin"}))
        .await;
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(x.push_of("group_event").await["event"], "promoted");
    }
    a.err(
        json!({"type": "group_role", "group": gid, "user": a_id, "role": "member"}),
        "forbidden",
    )
    .await;

    // Members cannot kick; admins kick members but not admins or the creator.
    c.err(
        json!({"type": "group_kick", "group": gid, "user": b_id}),
        "forbidden",
    )
    .await;
    b.err(
        json!({"type": "group_kick", "group": gid, "user": a_id}),
        "forbidden",
    )
    .await;
    b.ok(json!({"type": "group_invite", "group": gid, "user": d_id}))
        .await;
    for x in [&mut a, &mut b, &mut c, &mut d] {
        let e = x.push_of("group_event").await;
        assert_eq!(
            (e["event"].clone(), e["by"].clone()),
            (json!("invited"), json!(b_id))
        );
    }
    d.err(
        json!({"type": "group_invite", "group": gid, "user": c_id}),
        "already_member",
    )
    .await;
    b.ok(json!({"type": "group_kick", "group": gid, "user": d_id}))
        .await;
    for x in [&mut a, &mut b, &mut c, &mut d] {
        assert_eq!(x.push_of("group_event").await["event"], "kicked");
    }
    d.err(
        json!({"type": "send", "group": gid, "text": "let me in"}),
        "not_member",
    )
    .await;
    d.err(json!({"type": "group_members", "group": gid}), "not_member")
        .await;
    d.err(json!({"type": "history", "group": gid}), "not_member")
        .await;

    // Members list with roles; my groups.
    let m = c.ok(json!({"type": "group_members", "group": gid})).await;
    let roles: Vec<(u64, String)> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["id"].as_u64().unwrap(),
                x["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            (a_id as u64, "creator".into()),
            (b_id as u64, "admin".into()),
            (c_id as u64, "member".into())
        ]
    );
    let mine = c.ok(json!({"type": "groups"})).await;
    assert_eq!(mine["groups"][0]["id"], gid);
    assert_eq!(mine["groups"][0]["role"], "member");

    // Rename and describe: creator or admin.
    c.err(
        json!({"type": "group_update", "group": gid, "name": "x"}),
        "forbidden",
    )
    .await;
    b.ok(json!({"type": "group_update", "group": gid, "name": "crustaceans", "desc": "all crabs"}))
        .await;
    for x in [&mut a, &mut b, &mut c] {
        let e = x.push_of("group_event").await;
        assert_eq!(
            (e["event"].clone(), e["name"].clone()),
            (json!("updated"), json!("crustaceans"))
        );
    }
    assert_eq!(
        c.ok(json!({"type": "groups"})).await["groups"][0]["name"],
        "crustaceans"
    );

    // Demote; leave; the creator cannot leave.
    a.ok(json!({"type": "group_role", "group": gid, "user": b_id, "role": "member"}))
        .await;
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(x.push_of("group_event").await["event"], "demoted");
    }
    a.err(
        json!({"type": "group_leave", "group": gid}),
        "creator_cannot_leave",
    )
    .await;
    c.ok(json!({"type": "group_leave", "group": gid})).await;
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(x.push_of("group_event").await["event"], "left");
    }
    assert_eq!(c.ok(json!({"type": "groups"})).await["groups"], json!([]));

    // Only the creator dissolves.
    b.err(json!({"type": "group_dissolve", "group": gid}), "forbidden")
        .await;
    a.ok(json!({"type": "group_dissolve", "group": gid})).await;
    for x in [&mut a, &mut b] {
        assert_eq!(x.push_of("group_event").await["event"], "dissolved");
    }
    b.err(
        json!({"type": "send", "group": gid, "text": "hello?"}),
        "unknown_group",
    )
    .await;
    assert_eq!(a.ok(json!({"type": "groups"})).await["groups"], json!([]));
}

#[tokio::test]
async fn group_messages_reach_every_other_member_live_or_queued() {
    let srv = TestServer::start().await;
    let (mut a, a_id) = srv.user("alice").await;
    let (mut b, _) = srv.user("bob").await;
    let mut c = srv.client().await;
    let c_id = c.register("carol", "pw").await;
    let gid = a.ok(json!({"type": "group_create", "name": "g"})).await["group"]["id"].clone();
    b.ok(json!({"type": "group_join", "group": gid})).await;
    a.ok(json!({"type": "group_invite", "group": gid, "user": c_id}))
        .await;
    a.push_of("group_event").await;
    a.push_of("group_event").await;
    b.push_of("group_event").await;
    b.push_of("group_event").await;

    for i in 0..3 {
        a.ok(json!({"type": "send", "group": gid, "text": format!("g{i}")}))
            .await;
    }
    let live = b.take_messages(3).await;
    assert_eq!(live[2]["text"], "g2");
    assert_eq!(live[0]["group"], gid);
    assert_eq!(live[0]["from"], a_id);
    a.quiet().await; // the sender does not get its own message

    // Carol was invited while offline: she gets them at login.
    c.login("carol", "pw").await;
    let queued = c.take_messages(3).await;
    let texts: Vec<&str> = queued.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["g0", "g1", "g2"]);
}

#[tokio::test]
async fn history_pages_backwards_only_for_participants() {
    let srv = TestServer::start().await;
    let (mut a, a_id) = srv.user("alice").await;
    let (mut b, b_id) = srv.user("bob").await;
    let (mut c, _) = srv.user("carol").await;
    for i in 0..25 {
        if i % 2 == 0 {
            a.send_text(b_id, &format!("h{i}")).await;
        } else {
            b.send_text(a_id, &format!("h{i}")).await;
        }
    }
    let p1 = a
        .ok(json!({"type": "history", "with": b_id, "limit": 10}))
        .await;
    assert_eq!(p1["more"], true);
    let msgs = p1["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 10);
    assert_eq!(msgs[0]["text"], "h15");
    assert_eq!(msgs[9]["text"], "h24");
    let p2 = b
        .ok(json!({"type": "history", "with": a_id, "limit": 10, "before": msgs[0]["id"]}))
        .await;
    assert_eq!(p2["messages"][0]["text"], "h5");
    let p3 = a
        .ok(json!({"type": "history", "with": b_id, "limit": 10, "before": p2["messages"][0]["id"]}))
        .await;
    assert_eq!(p3["more"], false);
    let texts: Vec<&str> = p3["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["h0", "h1", "h2", "h3", "h4"]);
    // Carol is not in that conversation: her history with bob is empty.
    let hc = c.ok(json!({"type": "history", "with": b_id})).await;
    assert_eq!(hc["messages"], json!([]));
    c.err(json!({"type": "history", "with": 777}), "unknown_user")
        .await;
}

#[tokio::test]
async fn ping_keeps_a_session_and_silence_closes_it() {
    let srv = TestServer::start_with(|s| s.idle_timeout_secs = 1).await;
    let (mut a, _) = srv.user("alice").await;
    let (mut b, _) = srv.user("bob").await;
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(a.ok(json!({"type": "ping"})).await["type"], "pong");
    }
    // Bob said nothing for over a second.
    let e = b.push_of("error").await;
    assert_eq!(e["code"], "idle_timeout");
    assert!(b.closed().await);
    assert_eq!(a.ok(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn requests_without_req_are_answered_in_order() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.send_raw(b"{\"type\":\"ping\"}\n{\"type\":\"register\",\"name\":\"zed\",\"password\":\"pw\"}\n{\"type\":\"ping\"}\n")
        .await;
    let types: Vec<Value> = vec![
        c.next().await["type"].clone(),
        c.next().await["type"].clone(),
        c.next().await["type"].clone(),
    ];
    assert_eq!(
        types,
        vec![json!("pong"), json!("registered"), json!("pong")]
    );
}
