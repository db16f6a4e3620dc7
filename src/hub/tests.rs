//! The hub driven in memory: a temporary store, sessions that are only
//! their links (no sockets), and what lands in each outbox. Every wait is
//! for something the hub must do; nothing sleeps.

use super::*;
use crate::admin::proto::Reply as AdminReply;
use crate::store::StoreOptions;
use std::collections::VecDeque;

/// A wait for the hub, failed rather than hung if it never comes.
async fn bounded<T>(f: impl std::future::Future<Output = T>, what: &str) -> T {
    match tokio::time::timeout(Duration::from_secs(20), f).await {
        Ok(v) => v,
        Err(_) => panic!("the hub did not {what}"),
    }
}

struct Bench {
    hub: HubHandle,
    next: SessionId,
}

/// A session as the hub sees it.
struct S {
    link: Arc<SessionLink>,
    got: VecDeque<Out>,
}

impl Bench {
    fn new() -> Bench {
        let store = Store::open(StoreOptions::temporary()).unwrap();
        let hub = Hub::spawn(store, 1, Live::new(Limits::default()), None).unwrap();
        Bench { hub, next: 1 }
    }

    async fn open(&mut self) -> S {
        let link = Arc::new(SessionLink::new(
            self.next,
            "127.0.0.1:1".parse().unwrap(),
            64,
            1024,
        ));
        self.next += 1;
        link.set_kind(crate::api::SessionTraits::default(), "test");
        assert!(self.hub.send(HubMsg::Open(link.clone())).await);
        S {
            link,
            got: VecDeque::new(),
        }
    }

    async fn ask(&self, s: &mut S, cmd: Command) -> Result<Reply, ChatError> {
        let id = s.link.id;
        assert!(self.hub.send(HubMsg::Request { id, cmd }).await);
        loop {
            match s.next().await.item {
                OutItem::Reply(r) => return *r,
                _ => continue,
            }
        }
    }

    async fn user(&mut self, name: &str) -> (S, Uid) {
        let mut s = self.open().await;
        let reg = Command::Register {
            name: name.into(),
            hash: format!("hash of {name}"),
            id: None,
        };
        let Ok(Reply::Registered(u)) = self.ask(&mut s, reg).await else {
            panic!("register {name}");
        };
        self.login(&mut s, u.id, name).await;
        (s, u.id)
    }

    async fn login(&self, s: &mut S, user: Uid, name: &str) {
        let hash = format!("hash of {name}");
        let id = s.link.id;
        assert!(self.hub.send(HubMsg::Login { id, user, hash }).await);
        match s.reply().await {
            Ok(Reply::LoggedIn { user: u, .. }) => assert_eq!(u.id, user),
            other => panic!("login of {name}: {other:?}"),
        }
    }

    async fn befriend(&self, a: &mut S, b: &mut S, bu: Uid, au: Uid) {
        let req = Command::FriendRequest {
            user: bu,
            text: String::new(),
        };
        assert!(self.ask(a, req).await.is_ok());
        assert!(self
            .ask(b, Command::FriendAccept { user: au })
            .await
            .is_ok());
    }

    /// Waits until the hub's log is durable up to `ticket`.
    async fn durable(&self, ticket: u64) {
        let mut d = self.hub.durable();
        let flushed = async {
            while d.borrow().ticket < ticket {
                d.changed().await.unwrap();
            }
        };
        bounded(flushed, "flush the log").await;
    }
}

impl S {
    async fn next(&mut self) -> Out {
        if self.got.is_empty() {
            let more = bounded(self.link.outbox.take_all(&mut self.got), "push").await;
            assert!(more, "the outbox closed");
        }
        self.got.pop_front().unwrap()
    }

    async fn reply(&mut self) -> Result<Reply, ChatError> {
        loop {
            if let OutItem::Reply(r) = self.next().await.item {
                return *r;
            }
        }
    }

    /// The next message pushed to this session, and its ticket.
    async fn message(&mut self) -> (MsgView, u64) {
        loop {
            let out = self.next().await;
            if let OutItem::Event(e) = &out.item {
                if let Event::Message(m) = &**e {
                    return (m.clone(), out.ticket);
                }
            }
        }
    }

    /// The next presence change pushed to this session.
    async fn presence(&mut self) -> (Uid, bool) {
        loop {
            if let OutItem::Event(e) = self.next().await.item {
                if let Event::Presence { user, online } = &*e {
                    return (user.id, *online);
                }
            }
        }
    }
}

#[tokio::test]
async fn a_message_reaches_every_session_of_its_recipient_after_its_flush() {
    let mut b = Bench::new();
    let (mut alice, a) = b.user("alice").await;
    let (mut bob1, bu) = b.user("bob").await;
    let mut bob2 = b.open().await;
    b.login(&mut bob2, bu, "bob").await;
    let send = Command::Send {
        to: Target::User(bu),
        text: "hi bob".into(),
        cid: Some("c1".into()),
        time: None,
    };
    let Ok(Reply::Sent { id, .. }) = b.ask(&mut alice, send.clone()).await else {
        panic!("send");
    };
    for bob in [&mut bob1, &mut bob2] {
        let (m, ticket) = bob.message().await;
        assert_eq!((m.msg.id, m.msg.from, &*m.msg.text), (id, a, "hi bob"));
        // The writer waits for this ticket: the hub must get it flushed.
        b.durable(ticket).await;
    }
    // The same cid again is the same message, not a second one.
    let Ok(Reply::Sent {
        id: again,
        duplicate,
        ..
    }) = b.ask(&mut alice, send).await
    else {
        panic!("resend");
    };
    assert_eq!((again, duplicate), (id, true));
}

#[tokio::test]
async fn friends_see_presence_only_when_the_last_session_goes() {
    let mut b = Bench::new();
    let (mut alice, a) = b.user("alice").await;
    let (mut bob1, bu) = b.user("bob").await;
    b.befriend(&mut alice, &mut bob1, bu, a).await;
    let mut bob2 = b.open().await;
    b.login(&mut bob2, bu, "bob").await;
    assert!(b.hub.send(HubMsg::Close { id: bob1.link.id }).await);
    // Bob still has a session: nothing about him comes before this pong
    // (the hub queues pushes and replies in the order it makes them).
    let id = alice.link.id;
    assert!(
        b.hub
            .send(HubMsg::Request {
                id,
                cmd: Command::Ping
            })
            .await
    );
    loop {
        match alice.next().await.item {
            OutItem::Reply(r) => {
                assert!(matches!(*r, Ok(Reply::Pong)));
                break;
            }
            OutItem::Event(e) => {
                if let Event::Presence { user, online } = &*e {
                    assert!(user.id != bu || *online, "bob went offline too early");
                }
            }
            _ => {}
        }
    }
    assert!(b.hub.send(HubMsg::Close { id: bob2.link.id }).await);
    assert_eq!(alice.presence().await, (bu, false));
}

#[tokio::test]
async fn an_operator_kick_says_why_and_closes_the_outbox() {
    let mut b = Bench::new();
    let (mut bob, _) = b.user("bob").await;
    let id = bob.link.id;
    let kicked = b
        .hub
        .ask(|reply| HubMsg::Admin {
            req: AdminReq::Kick {
                session: Some(id),
                user: None,
            },
            reply,
        })
        .await
        .unwrap();
    assert_eq!(kicked, Ok(AdminReply::Kicked { kicked: 1 }));
    loop {
        if let OutItem::Bye(code) = bob.next().await.item {
            assert_eq!(code, ErrorCode::Kicked);
            break;
        }
    }
    // The writer says goodbye and closes the connection: the hub has let go.
    let mut rest = VecDeque::new();
    assert!(bob.got.is_empty() && !bob.link.outbox.take_all(&mut rest).await);
    assert!(
        !bob.link.kill.is_cancelled(),
        "the goodbye is written first"
    );
}

#[tokio::test]
async fn a_request_before_login_is_refused_and_the_session_goes_on() {
    let mut b = Bench::new();
    let mut s = b.open().await;
    let send = Command::Send {
        to: Target::User(Uid(1)),
        text: "who am I".into(),
        cid: None,
        time: None,
    };
    let e = b.ask(&mut s, send).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotLoggedIn);
    assert!(matches!(
        b.ask(&mut s, Command::Ping).await,
        Ok(Reply::Pong)
    ));
}
