//! The C chatroom dialect (seed 000) on its own port: 151-byte records
//! `{ char name[50]; char data[100]; char type; }`, as the real client
//! writes and reads them. Its users are guests in the lobby.

mod common;

use common::seeds::{c_record, CRoom, C_RECORD};
use common::*;
use serde_json::json;
use std::time::Duration;

async fn server() -> TestServer {
    TestServer::start_with(|s| s.listen_dialect = vec!["c-chatroom=127.0.0.1:0".into()]).await
}

#[tokio::test]
async fn arrivals_messages_and_departures() {
    let srv = server().await;
    let at = srv.dialect("c-chatroom");
    let mut carol = CRoom::join(at, "carol").await;
    carol.quiet().await;
    let mut dave = CRoom::join(at, "dave").await;
    assert_eq!(
        carol.next().await,
        ("dave (guest)".into(), String::new(), 1)
    );
    carol.say("hi dave").await;
    assert_eq!(
        dave.next_chat().await,
        ("carol (guest)".into(), "hi dave".into())
    );
    carol.quiet().await;
    dave.say("你好, carol").await;
    assert_eq!(
        carol.next().await,
        ("dave (guest)".into(), "你好, carol".into(), 0)
    );
    drop(dave);
    assert_eq!(
        carol.next().await,
        ("dave (guest)".into(), String::new(), 2)
    );
}

#[tokio::test]
async fn a_long_message_comes_as_several_whole_records() {
    let srv = server().await;
    let mut carol = CRoom::join(srv.dialect("c-chatroom"), "carol").await;
    let (mut n, _) = srv.user("alice").await;
    n.join_lobby().await;
    // 3 bytes a character: 99-byte records must cut between characters.
    let text = "汉字abc".repeat(30);
    n.ok(json!({"type": "send", "group": LOBBY, "text": text}))
        .await;
    let mut joined = String::new();
    let mut records = 0;
    while joined.len() < text.len() {
        let (name, data, ty) = carol.next().await;
        assert_eq!((name.as_str(), ty), ("alice", 0));
        assert!(data.len() <= 99);
        joined.push_str(&data);
        records += 1;
    }
    assert_eq!(joined, text);
    assert!(records >= 3);
}

#[tokio::test]
async fn packed_and_split_records() {
    let srv = server().await;
    let at = srv.dialect("c-chatroom");
    let mut carol = CRoom::join(at, "carol").await;
    let mut dave = CRoom::join(at, "dave").await;
    let _ = carol.next().await; // dave came online
    let mut two = c_record("dave", "one", 0);
    two.extend(c_record("dave", "two", 0));
    dave.send_raw(&two).await;
    assert_eq!(carol.next_chat().await.1, "one");
    assert_eq!(carol.next_chat().await.1, "two");
    let r = c_record("dave", "three", 0);
    for part in [&r[..10], &r[10..100], &r[100..]] {
        dave.send_raw(part).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(carol.next_chat().await.1, "three");
}

#[tokio::test]
async fn the_end_of_input_flood_is_one_message_and_slowed() {
    let srv = TestServer::start_with(|s| {
        s.listen_dialect = vec!["c-chatroom=127.0.0.1:0".into()];
        s.rate_limit = 100.0;
        s.rate_burst = 20.0;
    })
    .await;
    let at = srv.dialect("c-chatroom");
    let mut carol = CRoom::join(at, "carol").await;
    let (mut n, _) = srv.user("alice").await;
    n.join_lobby().await;
    // The client's last record, again and again, as fast as it can.
    let r = c_record("carol", "bye", 0);
    let mut flood: Vec<u8> = r.iter().copied().cycle().take(C_RECORD * 200).collect();
    flood.extend(c_record("carol", "after the flood", 0));
    let started = std::time::Instant::now();
    carol.send_raw(&flood).await;
    let m = n.push_of("message").await;
    assert_eq!(
        (m["text"].clone(), m["from_name"].clone()),
        (json!("bye"), json!("carol (guest)"))
    );
    // Others are served meanwhile.
    let (mut bob, bob_id) = srv.user("bob").await;
    n.send_text(bob_id, "hello bob").await;
    assert_eq!(bob.push_of("message").await["text"], "hello bob");
    // The repeats were read at the session's rate, and said once.
    let m = n.push_of("message").await;
    assert_eq!(m["text"], "after the flood");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "200 records at 100 a second take time: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_record_out_of_step_closes_only_its_connection() {
    let srv = server().await;
    let at = srv.dialect("c-chatroom");
    let mut carol = CRoom::join(at, "carol").await;
    let mut evil = CRoom::join(at, "evil").await;
    let _ = carol.next().await; // evil came online
    evil.send_raw(&c_record("evil", "x", 7)).await;
    assert!(evil.closed().await);
    assert_eq!(
        carol.next().await,
        ("evil (guest)".into(), String::new(), 2)
    );
    // Half a record, then the connection ends: nothing is said.
    let mut half = CRoom::join(at, "half").await;
    let _ = carol.next().await;
    half.send_raw(&c_record("half", "never", 0)[..80]).await;
    drop(half);
    assert_eq!(carol.next().await.2, 2, "only the departure");
    let mut dave = CRoom::join(at, "dave").await;
    let _ = carol.next().await;
    dave.say("still here").await;
    assert_eq!(carol.next_chat().await.1, "still here");
}

#[tokio::test]
async fn a_guest_named_like_a_user_is_never_that_user() {
    let srv = server().await;
    let (mut erin, erin_id) = srv.user("erin").await;
    erin.join_lobby().await;
    let mut fake = CRoom::join(srv.dialect("c-chatroom"), "erin").await;
    fake.say("I am erin").await;
    let m = erin.push_of("message").await;
    assert_eq!(m["from_name"], "erin (guest)");
    assert_eq!(m["guest"], true);
    let guest = m["from"].as_u64().unwrap() as u32;
    assert_ne!(guest, erin_id);
    assert!(guest > 2_000_000_000, "guest ids lie above every user id");
    // History shows it the same way.
    let h = erin.ok(json!({"type": "history", "group": LOBBY})).await;
    let last = h["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["from"].clone(), last["from_name"].clone()),
        (json!(guest), json!("erin (guest)"))
    );
    // The members list shows the guest, marked.
    let members = erin
        .ok(json!({"type": "group_members", "group": LOBBY}))
        .await;
    assert!(members["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == guest && m["guest"] == true && m["name"] == "erin (guest)"));
    // A guest id cannot be logged into, befriended or messaged by a user.
    let mut c = srv.client().await;
    c.err(
        json!({"type": "login", "id": guest, "password": ""}),
        "invalid_credentials",
    )
    .await;
    erin.err(
        json!({"type": "friend_request", "user": guest}),
        "unknown_user",
    )
    .await;
    erin.err(
        json!({"type": "send", "to": guest, "text": "hi"}),
        "forbidden",
    )
    .await;
    // A registered name cannot look like a guest's.
    c.err(
        json!({"type": "register", "name": "zed (guest)", "password": "pw"}),
        "invalid_name",
    )
    .await;
}

#[tokio::test]
async fn two_people_with_one_name_are_two_guests() {
    let srv = server().await;
    let at = srv.dialect("c-chatroom");
    let mut a = CRoom::join(at, "sam").await;
    let mut b = CRoom::join(at, "sam").await;
    assert_eq!(a.next().await, ("sam 2 (guest)".into(), String::new(), 1));
    b.say("hello other sam").await;
    assert_eq!(
        a.next_chat().await,
        ("sam 2 (guest)".into(), "hello other sam".into())
    );
    a.say("hi").await;
    assert_eq!(b.next_chat().await, ("sam (guest)".into(), "hi".into()));
    drop(b);
    assert_eq!(a.next().await, ("sam 2 (guest)".into(), String::new(), 2));
    // The one who comes back is the same guest again.
    let (mut n, _) = srv.user("nora").await;
    n.join_lobby().await;
    let mut b = CRoom::join(at, "sam").await;
    let _ = a.next().await;
    b.say("back").await;
    assert_eq!(n.push_of("message").await["from_name"], "sam 2 (guest)");
}

#[tokio::test]
async fn a_guest_that_cannot_be_made_is_disconnected() {
    let srv = server().await;
    let at = srv.dialect("c-chatroom");
    // 99 people may share a name at once; the hundredth is told by a close.
    let mut same = Vec::new();
    for _ in 0..99 {
        same.push(CRoom::join(at, "x").await);
    }
    let mut last = CRoom::join(at, "x").await;
    assert!(last.closed().await);
    let mut other = CRoom::join(at, "y").await;
    other.say("fine").await;
    assert_eq!(
        same[0].next_chat().await,
        ("y (guest)".into(), "fine".into())
    );
}

#[tokio::test]
async fn nobody_may_flood_the_lobby() {
    let srv = server().await;
    let (mut n, _) = srv.user("nora").await;
    n.join_lobby().await;
    let mut carol = CRoom::join(srv.dialect("c-chatroom"), "carol").await;
    for i in 0..60 {
        carol.say(&format!("spam {i}")).await;
    }
    let mut got = 0;
    while let Some(v) = n.read_value(QUIET).await {
        if v["type"] == "message" {
            got += 1;
        }
    }
    // The burst (20), and what the rate (5 a second) allows meanwhile.
    assert!((20..40).contains(&got), "{got}");
    // Users are held to it too, and told.
    let mut refused = false;
    for _ in 0..40 {
        let r = n
            .call(json!({"type": "send", "group": LOBBY, "text": "hi"}))
            .await;
        if r["code"] == "rate_limited" {
            refused = true;
            break;
        }
    }
    assert!(refused);
}
