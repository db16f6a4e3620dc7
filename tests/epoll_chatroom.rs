//! The epoll chatroom dialect (seed 002) on its own port: 65535-byte
//! records, the text at offset 12, as the real client writes and reads them.
//! Its users are guests in the lobby, numbered at connect.

mod common;

use common::seeds::{epoll_record, Epoll};
use common::*;
use std::time::Duration;

async fn server() -> TestServer {
    TestServer::start_with(|s| s.listen_dialect = vec!["epoll-chatroom=127.0.0.1:0".into()]).await
}

#[tokio::test]
async fn welcome_alone_public_private_and_absent() {
    let srv = server().await;
    let at = srv.dialect("epoll-chatroom");
    let (mut one, a) = Epoll::join(at).await;
    assert_eq!(a, 1);
    one.say("anyone?").await;
    assert_eq!(
        one.next().await,
        "CAUTION You are the only one in the chat room!"
    );
    let (mut two, b) = Epoll::join(at).await;
    assert_eq!(b, 2);
    two.say("hello room").await;
    assert_eq!(one.next().await, "Client 2 say >> hello room");
    two.quiet().await;
    // The text is the rest of the line after the digit.
    one.say(&format!("\\{b}just for you")).await;
    assert_eq!(
        two.next().await,
        "Client 1 say to you privately >> just for you"
    );
    one.say(&format!("\\{b} with a space")).await;
    assert_eq!(
        two.next().await,
        "Client 1 say to you privately >>  with a space"
    );
    one.quiet().await;
    one.say("\\7 are you there").await;
    assert_eq!(one.next().await, "Client 7 is not in the chat room yet~");
    two.quiet().await;
}

#[tokio::test]
async fn chat_ids_fit_one_digit_and_are_reused() {
    let srv = server().await;
    let at = srv.dialect("epoll-chatroom");
    let mut clients = Vec::new();
    for want in 1..=9 {
        let (c, id) = Epoll::join(at).await;
        assert_eq!(id, want);
        clients.push(c);
    }
    // Client 4 leaves; the next one to come gets 4.
    drop(clients.remove(3));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut c, id) = Epoll::join(at).await;
    assert_eq!(id, 4);
    // And can be reached privately.
    clients[0].say("\\4hi four").await;
    assert_eq!(c.next().await, "Client 1 say to you privately >> hi four");
}

#[tokio::test]
async fn packed_and_split_records() {
    let srv = server().await;
    let at = srv.dialect("epoll-chatroom");
    let (mut one, _) = Epoll::join(at).await;
    let (mut two, _) = Epoll::join(at).await;
    let mut two_lines = epoll_record("first\n");
    two_lines.extend(epoll_record("second\n"));
    two.send_raw(&two_lines).await;
    assert_eq!(one.next().await, "Client 2 say >> first");
    assert_eq!(one.next().await, "Client 2 say >> second");
    let r = epoll_record("third\n");
    for part in [&r[..5], &r[5..40_000], &r[40_000..]] {
        two.send_raw(part).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(one.next().await, "Client 2 say >> third");
}

#[tokio::test]
async fn a_record_out_of_step_closes_only_its_connection() {
    let srv = server().await;
    let at = srv.dialect("epoll-chatroom");
    let (mut one, _) = Epoll::join(at).await;
    let (mut two, _) = Epoll::join(at).await;
    // 100 bytes short, then a whole record: the server reads garbage
    // after the first text, and gives up on the stream.
    let r = epoll_record("short\n");
    two.send_raw(&r[..r.len() - 100]).await;
    two.send_raw(&epoll_record("next\n")).await;
    assert!(two.closed().await);
    one.say("still here?").await;
    assert_eq!(
        one.next().await,
        "CAUTION You are the only one in the chat room!"
    );
    let (mut three, _) = Epoll::join(at).await;
    three.say("yes").await;
    assert_eq!(
        one.next().await,
        "Client 2 say >> yes",
        "chat id 2 came back"
    );
}

#[tokio::test]
async fn one_may_whisper_to_oneself() {
    let srv = server().await;
    let (mut one, a) = Epoll::join(srv.dialect("epoll-chatroom")).await;
    one.say(&format!("\\{a}note to self")).await;
    assert_eq!(
        one.next().await,
        format!("Client {a} say to you privately >> note to self")
    );
}
