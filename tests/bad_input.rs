//! Bad input gets a clear, typed error; the server keeps serving everyone
//! else; nothing stored is lost.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashSet;

/// A bystander that must keep getting answers whatever others do.
async fn still_serving(bystander: &mut Client) {
    assert_eq!(bystander.ok(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn malformed_json_gets_an_error_then_the_connection_closes() {
    let srv = TestServer::start().await;
    let (mut by, _) = srv.user("bystander").await;
    let mut c = srv.client().await;
    c.send_raw(b"{\"type\":\"ping\", oops}\n{\"type\":\"ping\"}\n")
        .await;
    let e = c.next().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "bad_json");
    assert!(c.closed().await, "the stream position is lost: close");
    still_serving(&mut by).await;
}

#[tokio::test]
async fn a_value_over_the_limit_gets_an_error_then_the_connection_closes() {
    let srv = TestServer::start_with(|s| s.max_frame_bytes = 4096).await;
    let (mut by, _) = srv.user("bystander").await;
    let mut c = srv.client().await;
    let big = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}\n", "x".repeat(10_000));
    c.send_raw(big.as_bytes()).await;
    let e = c.next().await;
    assert_eq!(e["code"], "too_large");
    assert!(c.closed().await);
    // Just under the limit is fine.
    let mut d = srv.client().await;
    let ok = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}\n", "x".repeat(4000));
    d.send_raw(ok.as_bytes()).await;
    assert_eq!(d.next().await["type"], "pong");
    still_serving(&mut by).await;
}

#[tokio::test]
async fn non_objects_unknown_types_and_bad_fields_get_errors_and_the_session_goes_on() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    for v in ["[1,2]", "\"text\"", "42", "null", "true"] {
        c.send_raw(format!("{v}\n").as_bytes()).await;
        let e = c.next().await;
        assert_eq!(e["code"], "not_object", "for {v}: {e}");
    }
    c.err(json!({"type": "teleport"}), "unknown_type").await;
    c.err(json!({"kind": "ping"}), "unknown_type").await;
    c.register("alice", "pw").await;
    c.login("alice", "pw").await;
    let e = c
        .err(json!({"type": "send", "text": "hi"}), "bad_request")
        .await;
    assert!(e["message"].as_str().unwrap().contains("\"to\""), "{e}");
    let e = c
        .err(
            json!({"type": "send", "to": "bob", "text": "hi"}),
            "bad_request",
        )
        .await;
    assert!(e["message"].as_str().unwrap().contains("\"to\""), "{e}");
    let e = c
        .err(json!({"type": "send", "to": 2, "text": 5}), "bad_request")
        .await;
    assert!(e["message"].as_str().unwrap().contains("\"text\""), "{e}");
    c.err(
        json!({"type": "send", "to": -3, "text": "x"}),
        "bad_request",
    )
    .await;
    c.err(
        json!({"type": "send", "to": 1, "group": 1, "text": "x"}),
        "bad_request",
    )
    .await;
    c.err(json!({"type": "ack", "ids": "all"}), "bad_request")
        .await;
    c.send_raw(b"{\"type\":\"ping\",\"req\":[1]}\n").await;
    let e = c.next().await;
    assert_eq!(
        (e["code"].clone(), e.get("req")),
        (json!("bad_request"), None)
    );
    c.err(
        json!({"type": "group_role", "group": 1, "user": 1, "role": "king"}),
        "bad_request",
    )
    .await;
    assert_eq!(c.ok(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn invalid_utf8_gets_an_error_and_the_session_goes_on() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.send_raw(b"{\"type\":\"register\",\"name\":\"\xff\xfe\",\"password\":\"pw\"}\n")
        .await;
    assert_eq!(c.next().await["code"], "bad_utf8");
    c.send_raw(b"{\"msgid\":4,\"name\":\"\xc3\x28\",\"password\":\"pw\"}\0")
        .await;
    assert_eq!(c.next().await["code"], "bad_utf8");
    assert_eq!(c.ok(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn requests_before_login_and_to_unknown_targets() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    for req in [
        json!({"type": "send", "to": 1, "text": "hi"}),
        json!({"type": "friends"}),
        json!({"type": "group_create", "name": "g"}),
        json!({"type": "history", "with": 1}),
        json!({"type": "ack", "ids": [1]}),
        json!({"type": "search", "query": "a"}),
    ] {
        c.err(req, "not_logged_in").await;
    }
    let (mut a, _) = srv.user("alice").await;
    let (mut b, _) = srv.user("bob").await;
    a.err(
        json!({"type": "send", "to": 999, "text": "hi"}),
        "unknown_user",
    )
    .await;
    a.err(
        json!({"type": "send", "group": 999, "text": "hi"}),
        "unknown_group",
    )
    .await;
    let g = b.ok(json!({"type": "group_create", "name": "bobs"})).await;
    a.err(
        json!({"type": "send", "group": g["group"]["id"], "text": "hi"}),
        "not_member",
    )
    .await;
    a.err(
        json!({"type": "group_invite", "group": g["group"]["id"], "user": 1}),
        "not_member",
    )
    .await;
    a.err(
        json!({"type": "register", "name": "bob", "password": "pw"}),
        "name_taken",
    )
    .await;
}

#[tokio::test]
async fn empty_and_oversized_texts_are_refused() {
    let srv = TestServer::start_with(|s| s.max_text_bytes = 100).await;
    let (mut a, _) = srv.user("alice").await;
    let (mut b, b_id) = srv.user("bob").await;
    a.err(
        json!({"type": "send", "to": b_id, "text": ""}),
        "empty_text",
    )
    .await;
    a.err(
        json!({"type": "send", "to": b_id, "text": "   \n"}),
        "empty_text",
    )
    .await;
    a.err(
        json!({"type": "send", "to": b_id, "text": "x".repeat(101)}),
        "text_too_long",
    )
    .await;
    a.send_text(b_id, &"x".repeat(100)).await;
    assert_eq!(
        b.push_of("message").await["text"].as_str().unwrap().len(),
        100
    );
    b.quiet().await;
}

#[tokio::test]
async fn a_flooding_session_is_slowed_and_cannot_starve_others() {
    let srv = TestServer::start_with(|s| {
        s.rate_limit = 50.0;
        s.rate_burst = 20.0;
    })
    .await;
    let (mut by, _) = srv.user("bystander").await;
    let mut flood = srv.client().await;
    let n = 150;
    let burst: Vec<u8> = (0..n)
        .flat_map(|i| format!("{{\"type\":\"ping\",\"req\":{i}}}\n").into_bytes())
        .collect();
    flood.send_raw(&burst).await;
    // The flooder is told, once, that it is being slowed down.
    let first = flood.next().await;
    let mut pongs = usize::from(first["type"] == "pong");
    let mut warned = first["code"] == "rate_limited";
    // While it is still being throttled, the bystander is answered.
    still_serving(&mut by).await;
    while pongs < n {
        let v = flood.next().await;
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(v["code"], "rate_limited");
                warned = true;
            }
            _ => panic!("unexpected {v}"),
        }
        if pongs == 60 {
            // Still mid-flood: the bystander is not stuck behind it.
            still_serving(&mut by).await;
        }
    }
    assert!(warned, "the flooder was told it is rate limited");
    // Nothing was dropped: every ping got its pong.
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_loses_nothing() {
    let srv = TestServer::start_with(|s| {
        s.session_queue = 16;
        s.max_text_bytes = 20 * 1024;
    })
    .await;
    let (mut sender, sender_id) = srv.user("sender").await;
    let (mut stuck, stuck_id) = srv.user("stuck").await;
    // Friends, so the sender sees when the server drops stuck's session.
    sender
        .ok(json!({"type": "friend_request", "user": stuck_id}))
        .await;
    stuck.push_of("friend_request").await;
    stuck
        .ok(json!({"type": "friend_accept", "user": sender_id}))
        .await;
    sender.push_of("friend_added").await;
    // From now on `stuck` reads nothing.
    let text = "y".repeat(16 * 1024);
    let mut sent = Vec::new();
    let mut dropped = false;
    for i in 0..4000 {
        let r = sender
            .ok(json!({"type": "send", "to": stuck_id, "text": format!("{i}:{text}")}))
            .await;
        sent.push(r["id"].as_u64().unwrap());
        if sender.saw_push(|p| {
            p["type"] == "presence" && p["user"]["id"] == stuck_id && p["online"] == false
        }) {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "the server closed the session that stopped reading"
    );
    assert!(stuck.closed().await);
    // At the next login everything comes, nothing twice.
    let mut again = srv.client().await;
    again.login("stuck", "pw").await;
    let mut seen = HashSet::new();
    while seen.len() < sent.len() {
        let m = again.push_of("message").await;
        assert!(
            seen.insert(m["id"].as_u64().unwrap()),
            "delivered twice: {}",
            m["id"]
        );
    }
    let want: HashSet<u64> = sent.into_iter().collect();
    assert_eq!(seen, want);
    again.quiet().await;
    still_serving(&mut sender).await;
}
