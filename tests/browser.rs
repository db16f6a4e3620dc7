//! The web client in a real browser (headless Chromium, see
//! `common::browser`), against a real chatd: people register, befriend,
//! chat 1:1 and in a group and see each other come and go; a reload comes
//! back with the session token; a dropped connection comes back and what
//! was typed meanwhile arrives once; a browser user and a classic
//! ChatClient user talk; a phone-sized screen works; nothing is logged as
//! an error. With `CHATD_SCREENSHOTS=DIR` the main screens are saved there
//! (README's are made so).

mod common;

use common::browser::{available, Browser};
use common::tcp_relay::TcpRelay;
use common::{spawn_chatd, Client, Proc, WAIT};
use serde_json::json;
use std::time::Duration;

const ENTER: &str = "\u{E007}";

fn chatd() -> (tempfile::TempDir, Proc, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(dir.path(), &[]);
    let url = format!("http://{}/", p.web.expect("the web listener"));
    (dir, p, url)
}

fn shot(b: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("CHATD_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        b.screenshot(&dir.join(format!("{name}.png")));
    }
}

fn register(b: &Browser, url: &str, name: &str) -> u32 {
    b.goto(url);
    b.click("#show-register");
    b.fill("#register-name", name);
    b.fill("#register-password", "pw");
    b.fill("#register-password2", "pw");
    b.click("#register-submit");
    b.wait_text("#me-name", name);
    b.text("#me-id").trim_start_matches('#').parse().unwrap()
}

fn no_errors(b: &Browser) {
    let errors = b.console_errors();
    assert!(errors.is_empty(), "the console has errors: {errors:#?}");
}

fn send(b: &Browser, text: &str) {
    b.fill("#composer-text", text);
    b.keys(ENTER);
}

/// The messages shown in the open conversation, oldest first.
fn shown(b: &Browser) -> Vec<String> {
    let v = b.js(
        "return [...document.querySelectorAll('#messages .msg:not(.system) .text')].map(e => e.innerText)",
        json!([]),
    );
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_befriend_chat_alone_and_in_a_group_and_see_presence() {
    if !available() {
        return;
    }
    let (_dir, _p, url) = chatd();
    let alice = Browser::start(1280, 800);
    let bob = Browser::start(1280, 800);
    alice.goto(&url);
    alice.wait_for("#login-form");
    shot(&alice, "login");
    // The first load: every byte of the page, its scripts, style and icon.
    let weight = alice.wait(
        "the page's resources",
        "const all = performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'));\
         return all.length >= 6 ? all.reduce((s, e) => s + e.transferSize, 0) : 0",
        json!([]),
    );
    let weight = weight.as_u64().unwrap();
    eprintln!("page weight on first load: {weight} bytes");
    assert!(weight < 100_000, "the web client weighs {weight} bytes");
    let _a = register(&alice, &url, "alice");
    let b_id = register(&bob, &url, "bob");

    // Alice finds bob and asks; bob accepts.
    alice.click("#tab-friends");
    alice.fill("#search-query", "bob");
    alice.keys(ENTER);
    alice.click("button[aria-label='Add bob as a friend']");
    bob.wait_text("#requests-badge", "1");
    bob.click("#tab-friends");
    bob.click("button[aria-label='Accept alice']");
    alice.wait_text("#friend-list", "bob");
    alice.wait_text("#friend-list", "online");
    shot(&alice, "friends");

    // 1:1.
    alice.click("button[aria-label='Message bob']");
    send(&alice, "hello bob");
    alice.wait_for("#messages .msg.mine .state.sent");
    bob.click("#tab-chats");
    bob.wait_for("#conv-list button[aria-label='alice, 1 unread']");
    bob.click("#conv-list button[aria-label^='alice']");
    bob.wait_text("#messages", "hello bob");
    send(&bob, "hi alice, how are you?");
    alice.wait_text("#messages", "hi alice, how are you?");
    assert_eq!(shown(&alice), ["hello bob", "hi alice, how are you?"]);
    assert_eq!(alice.text("#chat-sub"), "online");
    alice.click("#tab-chats");
    shot(&alice, "chat");

    // A group: alice makes it and adds bob; both speak.
    alice.click("#tab-groups");
    alice.fill("#group-name", "rustaceans");
    alice.fill("#group-desc", "crabs only");
    alice.click("#group-create-form button[type=submit]");
    alice.wait_text("#chat-title", "rustaceans");
    alice.click("#open-members");
    alice.fill("#invite-id", &b_id.to_string());
    alice.keys(ENTER);
    alice.wait_text("#member-list", "bob");
    send(&alice, "welcome to the group");
    bob.click("#tab-chats");
    bob.click("#conv-list button[aria-label^='rustaceans']");
    bob.wait_text("#messages", "welcome to the group");
    send(&bob, "glad to be here");
    alice.wait_text("#messages", "glad to be here");
    alice.wait_text("#member-list", "member");
    shot(&alice, "group");

    // Bob leaves: alice sees him go offline.
    bob.click("#logout");
    bob.wait_for("#login-form");
    alice.click("#tab-friends");
    alice.wait_text("#friend-list", "offline");
    no_errors(&alice);
    no_errors(&bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_comes_back_with_the_token_and_shows_the_history() {
    if !available() {
        return;
    }
    let (_dir, p, url) = chatd();
    let mut nat = Client::connect(p.addr).await;
    let nat_id = nat.register("nat", "pw").await;
    nat.login("nat", "pw").await;
    let b = Browser::start(1024, 768);
    let me = register(&b, &url, "rita");
    for i in 0..60 {
        nat.ok(json!({"type": "send", "to": me, "text": format!("note {i}")}))
            .await;
    }
    b.wait_for("#conv-list button[aria-label='nat, 60 unread']");
    b.click(&format!("#conv-list button[data-conv='u:{nat_id}']"));
    b.wait_text("#messages", "note 59");
    // Received and acknowledged: after the reload they come from history.
    std::thread::sleep(Duration::from_millis(1000));
    b.refresh();
    // Back in without the password: the login form never shows.
    b.wait_text("#me-name", "rita");
    assert!(
        b.js("return document.getElementById('auth').hidden", json!([])) == json!(true),
        "the login form is hidden"
    );
    b.click(&format!("#conv-list button[data-conv='u:{nat_id}']"));
    b.wait_text("#messages", "note 59");
    // The first page is the newest 50; scrolling up pages back.
    assert_eq!(shown(&b).len(), 50);
    b.js(
        "document.getElementById('messages-box').scrollTop = 0",
        json!([]),
    );
    b.wait_text("#messages", "note 0");
    b.wait_text("#history-state", "beginning of the conversation");
    assert_eq!(shown(&b).len(), 60);
    no_errors(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_comes_back_and_what_was_typed_arrives_once() {
    if !available() {
        return;
    }
    let (_dir, p, _) = chatd();
    let relay = TcpRelay::start(p.web.unwrap()).await;
    let url = format!("http://{}/", relay.addr);
    let mut nat = Client::connect(p.addr).await;
    let nat_id = nat.register("nat", "pw").await;
    nat.login("nat", "pw").await;
    let b = Browser::start(1024, 768);
    register(&b, &url, "lou");
    b.click("#tab-friends");
    b.fill("#search-query", "nat");
    b.keys(ENTER);
    b.click("button[aria-label='Message nat']");

    // A reply lost on the way: the message is stored, the page never hears.
    relay.mute();
    send(&b, "first, reply lost");
    assert_eq!(nat.push_of("message").await["text"], "first, reply lost");
    relay.cut_and_hold();
    b.wait_text("#banner", "Connection lost");
    // Typed while the network is down.
    send(&b, "typed while offline");
    b.wait_text("#messages", "waiting for the connection");
    shot(&b, "offline");
    relay.restore();
    assert_eq!(nat.push_of("message").await["text"], "typed while offline");
    b.wait(
        "both messages confirmed",
        "return document.querySelectorAll('#messages .msg.mine .state.sent').length === 2",
        json!([]),
    );
    // Each arrived once: nothing more comes.
    if let Some(v) = nat.read_value(Duration::from_millis(1500)).await {
        assert_ne!(v["type"], "message", "a message came twice: {v}");
    }
    assert_eq!(shown(&b), ["first, reply lost", "typed while offline"]);
    // And the conversation goes on both ways.
    nat.ok(json!({"type": "send", "to": b_id(&b), "text": "got both"}))
        .await;
    b.wait_text("#messages", "got both");
    let _ = nat_id;
    no_errors(&b);
}

fn b_id(b: &Browser) -> u32 {
    b.text("#me-id").trim_start_matches('#').parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_user_talks_with_a_classic_chatclient_user_and_a_lobby_guest() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(dir.path(), &["--listen-dialect", "c-chatroom=127.0.0.1:0"]);
    let url = format!("http://{}/", p.web.unwrap());
    // The classic ChatClient's own requests, NUL-terminated.
    let mut carl = Client::connect(p.addr).await;
    carl.send_raw(b"{\"msgid\":4,\"name\":\"carl\",\"password\":\"pw\"}\0")
        .await;
    let carl_id = carl.next().await["id"].as_u64().unwrap();
    carl.send_raw(format!("{{\"msgid\":1,\"id\":{carl_id},\"password\":\"pw\"}}\0").as_bytes())
        .await;
    assert_eq!(carl.next().await["errno"], 0);
    let b = Browser::start(1024, 768);
    let me = register(&b, &url, "wendy");
    b.click("#tab-friends");
    b.fill("#search-query", "carl");
    b.keys(ENTER);
    b.click("button[aria-label='Message carl']");
    send(&b, "hi carl, from the browser");
    let m = carl.next().await;
    assert_eq!(m["msgid"], 6, "{m}");
    assert_eq!(m["msg"], "hi carl, from the browser");
    assert_eq!(m["name"], "wendy");
    let reply = json!({"msgid": 6, "id": carl_id, "name": "carl", "toid": me, "msg": "hello from ChatClient", "time": "2026-12-01 10:00:00"});
    carl.send_raw(format!("{reply}\0").as_bytes()).await;
    b.wait_text("#messages", "hello from ChatClient");

    // The lobby, where a C chatroom guest speaks: shown as a guest.
    b.click("#tab-groups");
    b.click("#join-lobby");
    b.wait_text("#chat-title", "lobby");
    let room = p
        .dialect_addrs
        .iter()
        .find(|(n, _)| n == "c-chatroom")
        .map(|(_, a)| *a)
        .unwrap();
    let mut gina = common::seeds::CRoom::join(room, "gina").await;
    gina.say("hi from the C room").await;
    b.wait_text("#messages", "hi from the C room");
    b.wait_text("#messages .msg.theirs .badge.guest", "guest");
    b.wait_text("#messages .msg.theirs .from", "gina (guest)");
    shot(&b, "lobby");
    send(&b, "hello gina");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, data, _) = gina.next().await;
        if data.contains("hello gina") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "gina never heard");
    }
    no_errors(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_sized_screen_and_the_keyboard_alone_do() {
    if !available() {
        return;
    }
    let (_dir, p, url) = chatd();
    let mut nat = Client::connect(p.addr).await;
    nat.register("nat", "pw").await;
    nat.login("nat", "pw").await;
    let b = Browser::phone();
    b.goto(&url);
    b.wait_for("#login-form");
    let width = b.js("return window.innerWidth", json!([]));
    assert_eq!(width, json!(390), "a phone's width");
    // Keyboard only: type, Enter submits.
    b.click("#show-register");
    b.fill("#register-name", "pia");
    b.keys("\u{E004}");
    b.keys("pw\u{E004}pw");
    b.keys(ENTER);
    b.wait_text("#me-name", "pia");
    // One column: the list, then the conversation over it, then back.
    b.click("#tab-friends");
    b.fill("#search-query", "nat");
    b.keys(ENTER);
    b.click("button[aria-label='Message nat']");
    b.wait_for("#composer-text");
    let side_hidden = b.js(
        "return getComputedStyle(document.getElementById('side')).display === 'none'",
        json!([]),
    );
    assert_eq!(side_hidden, json!(true), "the list gives way to the chat");
    let wide = b.js(
        "return document.documentElement.scrollWidth <= window.innerWidth",
        json!([]),
    );
    assert_eq!(wide, json!(true), "nothing is wider than the screen");
    send(&b, "from my phone");
    assert_eq!(nat.push_of("message").await["text"], "from my phone");
    shot(&b, "phone");
    b.click("#back");
    b.wait_for("#side");
    // Errors are said in words.
    b.click("#logout");
    b.wait_for("#login-form");
    b.fill("#login-name", "pia");
    b.fill("#login-password", "wrong");
    b.keys(ENTER);
    b.wait_text("#auth-error", "do not match");
    let _ = WAIT;
    no_errors(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_friend_and_group_actions_work_from_the_page() {
    if !available() {
        return;
    }
    let (_dir, _p, url) = chatd();
    let alice = Browser::start(1280, 800);
    let bob = Browser::start(1280, 800);
    register(&alice, &url, "alice");
    register(&bob, &url, "bob");

    // A request declined, asked again, accepted; a private name; removed.
    bob.click("#tab-friends");
    bob.fill("#search-query", "alice");
    bob.keys(ENTER);
    bob.click("button[aria-label='Add alice as a friend']");
    bob.wait_text("#outgoing-list", "alice");
    alice.click("#tab-friends");
    alice.click("button[aria-label='Decline bob']");
    bob.wait_text("#toast", "declined");
    bob.wait(
        "the request gone",
        "return document.getElementById('outgoing-list').children.length === 0",
        json!([]),
    );
    bob.fill("#search-query", "alice");
    bob.keys(ENTER);
    bob.click("button[aria-label='Add alice as a friend']");
    alice.click("button[aria-label='Accept bob']");
    alice.click("button[aria-label='Rename bob']");
    alice.fill("input[aria-label='Private name for bob']", "Bobby");
    alice.keys(ENTER);
    alice.wait_text("#friend-list", "Bobby");
    alice.click("button[aria-label='Remove Bobby']");
    alice.click("button[aria-label='Remove Bobby']");
    alice.wait_for("#friends-empty");
    bob.wait_for("#friends-empty");

    // A group bob joins by its id; alice makes him an admin; he leaves;
    // she dissolves it.
    alice.click("#tab-groups");
    alice.fill("#group-name", "book club");
    alice.keys(ENTER);
    alice.wait_text("#chat-title", "book club");
    let gid = alice.text("#chat-sub");
    let gid = gid
        .split('#')
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap()
        .to_string();
    bob.click("#tab-groups");
    bob.fill("#group-join-id", &gid);
    bob.keys(ENTER);
    bob.wait_text("#chat-title", "book club");
    alice.click("#open-members");
    alice.click("button[aria-label='Make bob an admin']");
    alice.wait_text("#member-list", "admin");
    bob.wait_text("#group-list", "admin");
    bob.click("#open-members");
    bob.click("#leave-group");
    bob.wait(
        "the group gone from bob's list",
        "return !document.getElementById('group-list').innerText.includes('book club')",
        json!([]),
    );
    alice.wait(
        "bob gone from the members",
        "return !document.getElementById('member-list').innerText.includes('bob')",
        json!([]),
    );
    alice.click("#dissolve-group");
    alice.click("#dissolve-group");
    alice.wait(
        "the group dissolved",
        "return !document.getElementById('group-list').innerText.includes('book club')",
        json!([]),
    );
    // An error in words: a group id that does not exist.
    alice.fill("#group-join-id", "999999");
    alice.keys(ENTER);
    alice.wait_text("#chat-error", "no such group");
    no_errors(&alice);
    no_errors(&bob);
}
