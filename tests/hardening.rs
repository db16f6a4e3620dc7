//! chatd tried as an attacker would: password guessing, connections that
//! never log in, one address opening many connections.

mod common;

use common::seeds::{CRoom, Go, Sponge};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn classic(v: Value) -> Vec<u8> {
    let mut b = v.to_string().into_bytes();
    b.push(0);
    b
}

#[tokio::test]
async fn a_guesser_is_slowed_while_other_logins_stay_fast() {
    let srv = TestServer::start_with(|s| {
        s.login_account_burst = 5;
        s.login_account_interval_secs = 20.0;
    })
    .await;
    let mut alice = srv.client().await;
    let alice_id = alice.register("alice", "right").await;
    alice.login("alice", "right").await;
    let (_bob, _) = srv.user("bob").await;
    // Five wrong guesses are answered as wrong...
    let mut guesser = srv.client().await;
    let guess = json!({"type": "login", "name": "alice", "password": "guess"});
    for _ in 0..5 {
        guesser.err(guess.clone(), "invalid_credentials").await;
    }
    // ...the next at once, with when to try again, and no hash spent.
    let started = Instant::now();
    let r = guesser.err(guess.clone(), "too_many_attempts").await;
    let wait = r["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(wait > 10_000 && wait <= 20_000, "{wait}");
    // Even with the right password, from a new account's point of view:
    // by id too (the same account).
    guesser
        .err(
            json!({"type": "login", "id": alice_id, "password": "x"}),
            "too_many_attempts",
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    // Another user logs in at once meanwhile.
    let started = Instant::now();
    let mut b = srv.client().await;
    b.login("bob", "pw").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    // Each dialect says it in its own failure form.
    let mut c = srv.client().await;
    c.send_raw(&classic(
        json!({"msgid": 1, "id": alice_id, "password": "guess"}),
    ))
    .await;
    let r = c.next().await;
    assert_eq!(
        (r["msgid"].clone(), r["errno"].clone()),
        (json!(2), json!(3))
    );
    assert!(r["errmsg"].as_str().unwrap().contains("try again"));
    let mut s = Sponge::connect(srv.addr).await;
    s.send(json!({"msgType": 1, "USERID": alice_id, "password": "guess"}))
        .await;
    assert_eq!(s.next().await["errno"], 302);
}

#[tokio::test]
async fn the_real_user_is_not_locked_out_by_a_guesser_elsewhere() {
    let srv = TestServer::start().await;
    let mut alice = srv.client().await;
    alice.register("alice", "right").await;
    // Alice has logged in from 127.0.0.1 before: it is trusted for her.
    alice.login("alice", "right").await;
    // The guesser comes from another address.
    let mut guesser = Client::connect_from(srv.addr, [127, 0, 0, 2]).await;
    let guess = json!({"type": "login", "name": "alice", "password": "guess"});
    for _ in 0..5 {
        guesser.err(guess.clone(), "invalid_credentials").await;
    }
    guesser.err(guess.clone(), "too_many_attempts").await;
    let mut again = srv.client().await;
    again.login("alice", "right").await;
    // A third address, never used by alice, is held back like the guesser.
    let mut new_place = Client::connect_from(srv.addr, [127, 0, 0, 3]).await;
    new_place
        .err(
            json!({"type": "login", "name": "alice", "password": "right"}),
            "too_many_attempts",
        )
        .await;
}

#[tokio::test]
async fn an_address_guessing_many_accounts_is_slowed_and_failures_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(
        dir.path(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--login-address-burst",
            "8",
        ],
    );
    let mut c = Client::connect(p.addr).await;
    for i in 0..8 {
        c.err(
            json!({"type": "login", "name": format!("user{i}"), "password": "x"}),
            "invalid_credentials",
        )
        .await;
    }
    c.err(
        json!({"type": "login", "name": "someone", "password": "x"}),
        "too_many_attempts",
    )
    .await;
    // fail2ban-style tools see the address in the log, and metrics count.
    eventually!(
        "the failures are logged",
        p.logged(&["login failed", "peer=127.0.0.1"])
    );
    let (_, text) = http_get(p.metrics.unwrap(), "/metrics");
    assert_eq!(metric(&text, "chatd_login_failures_total"), 8.0, "{text}");
    assert_eq!(metric(&text, "chatd_login_throttled_total"), 1.0);
}

#[tokio::test]
async fn connections_that_never_log_in_are_closed() {
    let srv = TestServer::start_with(|s| {
        s.login_timeout_secs = 2;
        s.listen_dialect = vec![
            "c-chatroom=127.0.0.1:0".into(),
            "go-chatroom=127.0.0.1:0".into(),
        ];
    })
    .await;
    // Silent from the start.
    let mut silent = srv.client().await;
    // A classic client at its menu: one value, then nothing (classic
    // sessions are never closed for silence once logged in).
    let mut menu = srv.client().await;
    menu.send_raw(&classic(json!({"msgid": 77}))).await;
    let mut c_room = CRoom::join(srv.dialect("c-chatroom"), "carol").await;
    let mut go = Go::connect(srv.dialect("go-chatroom")).await;
    // A logged-in classic user stays.
    let mut cora = srv.client().await;
    cora.send_raw(&classic(
        json!({"msgid": 4, "name": "cora", "password": "pw"}),
    ))
    .await;
    let id = cora.next().await["id"].as_u64().unwrap();
    cora.send_raw(&classic(json!({"msgid": 1, "id": id, "password": "pw"})))
        .await;
    assert_eq!(cora.next().await["errno"], 0);

    let e = silent.next().await;
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        (json!("error"), json!("login_timeout"))
    );
    assert!(silent.closed().await);
    loop {
        let v = menu.next().await;
        if v["code"] == "login_timeout" {
            break;
        }
    }
    assert!(menu.closed().await);
    assert!(go.closed().await);
    // The C guest logged in with its first record: it stays, like cora.
    let mut n = srv.client().await;
    n.register("n", "pw").await;
    n.login("n", "pw").await;
    n.join_lobby().await;
    c_room.say("still here").await;
    assert_eq!(n.push_of("message").await["text"], "still here");
    cora.send_raw(&classic(json!({"msgid": 7, "id": id, "friendid": 424242})))
        .await;
    assert_eq!(cora.next().await["code"], "unknown_user", "still served");
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share() {
    let srv = TestServer::start_with(|s| {
        s.max_connections_per_address = 5;
        s.max_unauthenticated_per_address = 3;
    })
    .await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let mut c = srv.client().await;
        assert_eq!(c.call(json!({"type": "ping"})).await["type"], "pong");
        waiting.push(c);
    }
    // A fourth that has not logged in: told, and closed.
    let mut extra = srv.client().await;
    let e = extra.next().await;
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        (json!("error"), json!("limit_reached"))
    );
    assert!(e["message"].as_str().unwrap().contains("not logged in"));
    assert!(extra.closed().await);
    // Logging in on one makes room for another.
    waiting[0].register("u0", "pw").await;
    waiting[0].login("u0", "pw").await;
    let mut fourth = srv.client().await;
    assert_eq!(fourth.call(json!({"type": "ping"})).await["type"], "pong");
    fourth.register("u1", "pw").await;
    fourth.login("u1", "pw").await;
    let mut fifth = srv.client().await;
    assert_eq!(fifth.call(json!({"type": "ping"})).await["type"], "pong");
    // Five open: the sixth is refused whatever it would do.
    let mut sixth = srv.client().await;
    let e = sixth.next().await;
    assert_eq!(e["code"], "limit_reached");
    assert!(e["message"].as_str().unwrap().contains("open"));
    // Closing one gives its place back.
    drop(fifth);
    eventually!("the place comes back", {
        let mut c = srv.client().await;
        c.send(&json!({"type": "ping"})).await;
        c.read_value(WAIT)
            .await
            .is_some_and(|v| v["type"] == "pong")
    });
}

#[tokio::test]
async fn a_restart_right_after_kill_9_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(dir.path(), &[]);
    let mut c = Client::connect(p.addr).await;
    c.register("alice", "pw").await;
    // The old process still holds the data directory when the new one
    // starts (stopped, then killed a moment later: a process still
    // exiting); the new one waits for it instead of giving up.
    p.signal(libc::SIGSTOP);
    let pid = p.pid() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let again = spawn_chatd(dir.path(), &[]);
    let mut c = Client::connect(again.addr).await;
    c.login("alice", "pw").await;
    assert!(
        again.logged(&["waiting for another process"]),
        "it did wait"
    );
    drop(p);
}

#[tokio::test]
async fn guesses_made_at_once_from_many_addresses_cannot_overtake_their_failures() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let mut alice = Client::connect(p.addr).await;
    alice.register("alice", "right").await;
    // Thirty guessers, each on its own address, all at the same moment.
    let mut guessers = Vec::new();
    for n in 0..30u8 {
        guessers.push(Client::connect_from(p.addr, [127, 0, 1, n + 1]).await);
    }
    for g in &mut guessers {
        g.send(&json!({"type": "login", "name": "alice", "password": "guess", "req": 1}))
            .await;
    }
    let mut wrong = 0;
    let mut refused = 0;
    for g in &mut guessers {
        let r = g.next().await;
        match r["code"].as_str() {
            Some("invalid_credentials") => wrong += 1,
            Some("too_many_attempts") => refused += 1,
            other => panic!("{other:?}: {r}"),
        }
    }
    assert_eq!(
        (wrong, refused),
        (5, 25),
        "only the account's burst was checked"
    );
    let (_, text) = http_get(p.metrics.unwrap(), "/metrics");
    assert_eq!(metric(&text, "chatd_login_failures_total"), 5.0);
}

#[tokio::test]
async fn guessing_the_old_password_is_slowed_too() {
    let srv = TestServer::start().await;
    let (mut alice, _) = srv.user("alice").await;
    let wrong = json!({"type": "passwd", "old": "guess", "new": "x"});
    for _ in 0..5 {
        alice.err(wrong.clone(), "invalid_credentials").await;
    }
    let r = alice.err(wrong.clone(), "too_many_attempts").await;
    assert!(r["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn the_go_client_is_told_in_its_own_form() {
    let srv =
        TestServer::start_with(|s| s.listen_dialect = vec!["go-chatroom=127.0.0.1:0".into()]).await;
    let go = srv.dialect("go-chatroom");
    let mut g = Go::connect(go).await;
    assert_eq!(g.register(100, "pw", "tom").await["code"], 200);
    let mut g = Go::connect(go).await;
    for _ in 0..5 {
        assert_eq!(g.login(100, "guess").await["code"], 403);
    }
    let r = g.login(100, "guess").await;
    assert_eq!(r["code"], 403);
    assert!(r["error"].as_str().unwrap().contains("try again"), "{r}");
}

#[tokio::test]
async fn registrations_from_one_address_are_limited() {
    let srv = TestServer::start_with(|s| s.register_address_burst = 3).await;
    let mut c = srv.client().await;
    for i in 0..3 {
        c.register(&format!("u{i}"), "pw").await;
    }
    let r = c
        .err(
            json!({"type": "register", "name": "u3", "password": "pw"}),
            "too_many_attempts",
        )
        .await;
    assert!(r["retry_after_ms"].as_u64().unwrap() > 0);
    let mut elsewhere = Client::connect_from(srv.addr, [127, 0, 2, 1]).await;
    elsewhere.register("u3", "pw").await;
}
