//! The hub core driven in memory: a temporary store, sessions that are only
//! their links (no sockets, no driver, no threads), the time given by the
//! test, and what each batch returns. Nothing waits or sleeps.

use super::*;
use crate::admin::proto::Reply as AdminReply;
use crate::store::StoreOptions;
use std::collections::VecDeque;

/// A hub core, and what a driver would have done with its batches.
pub(crate) struct Bench {
    pub core: Hub,
    pub t: Now,
    next: SessionId,
    /// What reached each session's outbox, in order.
    got: HashMap<SessionId, VecDeque<Out>>,
    cut: HashSet<SessionId>,
    released: HashSet<SessionId>,
    pub presence: Vec<PresenceChange>,
    /// The ticket of the last finished batch.
    pub ticket: u64,
    durable: tokio::sync::watch::Receiver<Durable>,
    /// The limits the core reads each batch (as SIGHUP replaces them).
    pub limits: Live<Limits>,
}

impl Hub {
    /// Write the tables out and compact the log now, keeping nothing
    /// (tests; chatd does this in the background).
    pub(crate) fn compact_now(&mut self) -> u64 {
        self.store.checkpoint_now().unwrap();
        self.store.compact_now(u64::MAX).unwrap()
    }
}

impl Bench {
    pub fn new() -> Bench {
        Self::on(Store::open(Self::options(None)).unwrap(), 1)
    }

    /// A store that counts what its commit thread wrote as durable without
    /// waiting for the disk: the tests wait for the thread, not for fsync.
    pub fn options(path: Option<&std::path::Path>) -> StoreOptions {
        let mut opts = StoreOptions::temporary();
        opts.path = path.map(|p| p.to_path_buf());
        opts.no_flush = true;
        opts
    }

    pub fn on(store: Store, node: NodeId) -> Bench {
        let durable = store.durable();
        let t = Now {
            at: Instant::now(),
            wall_ms: 1_800_000_000_000,
        };
        let limits = Live::new(Limits::default());
        let mut core = Hub::new(store, node, limits.clone(), None, t).unwrap();
        core.start(t);
        let mut b = Bench {
            core,
            t,
            next: 1,
            got: HashMap::new(),
            cut: HashSet::new(),
            released: HashSet::new(),
            presence: Vec::new(),
            ticket: 0,
            durable,
            limits,
        };
        b.finish();
        b
    }

    /// Let time pass (the next batch sees it).
    pub fn advance(&mut self, d: Duration) {
        self.t.at += d;
        self.t.wall_ms += d.as_millis() as u64;
    }

    /// One batch of inputs, carried out as the driver would.
    pub fn batch(&mut self, inputs: Vec<Input>) {
        self.core.begin_batch(self.t);
        for input in inputs {
            self.core.handle(input, self.t);
        }
        self.finish();
    }

    fn finish(&mut self) {
        let b = self.core.finish_batch(self.t);
        assert!(self.core.failed().is_none(), "{:?}", self.core.failed());
        self.ticket = b.ticket;
        for action in b.actions {
            match action {
                Action::Say { link, out, .. } => {
                    self.got.entry(link.id).or_default().push_back(out)
                }
                Action::Cut(link) => drop(self.cut.insert(link.id)),
                Action::Release(link) => drop(self.released.insert(link.id)),
                Action::Presence(p) => self.presence.push(p),
            }
        }
        for (id, item) in b.out {
            if self.core.link(id).is_some() {
                let out = Out {
                    ticket: b.ticket,
                    item,
                };
                self.got.entry(id).or_default().push_back(out);
            }
        }
        self.core.maintain();
        self.wait_durable();
    }

    /// Wait for the commit thread to have written this batch, as a session
    /// waits before it writes anything of it.
    fn wait_durable(&self) {
        let since = Instant::now();
        while self.durable.borrow().ticket < self.ticket {
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "the log was not written"
            );
            std::thread::yield_now();
        }
    }

    /// How far this node's own log is durable (what a link may send).
    pub fn durable_own(&self) -> u64 {
        let node = self.durable.borrow().position.get(&self.core.node).copied();
        node.unwrap_or(0)
    }

    pub fn open(&mut self) -> SessionId {
        let id = self.next;
        self.next += 1;
        let link = Arc::new(SessionLink::new(
            id,
            "127.0.0.1:1".parse().unwrap(),
            64,
            1024,
        ));
        link.set_kind(crate::api::SessionTraits::default(), "test");
        self.batch(vec![Input::Open(link)]);
        id
    }

    /// Everything a session got so far.
    pub fn take(&mut self, id: SessionId) -> Vec<Out> {
        self.got.remove(&id).map(Vec::from).unwrap_or_default()
    }

    pub fn ask(&mut self, id: SessionId, cmd: Command) -> Result<Reply, ChatError> {
        self.batch(vec![Input::Request { id, cmd }]);
        self.reply(id)
    }

    /// The first reply a session got (what came before it is dropped).
    fn reply(&mut self, id: SessionId) -> Result<Reply, ChatError> {
        let q = self.got.entry(id).or_default();
        while let Some(out) = q.pop_front() {
            if let OutItem::Reply(r) = out.item {
                return *r;
            }
        }
        panic!("session {id} got no reply");
    }

    pub fn user(&mut self, name: &str) -> (SessionId, Uid) {
        let s = self.open();
        let reg = Command::Register {
            name: name.into(),
            hash: format!("hash of {name}"),
            id: None,
        };
        let Ok(Reply::Registered(u)) = self.ask(s, reg) else {
            panic!("register {name}");
        };
        self.login(s, u.id, name);
        (s, u.id)
    }

    pub fn login(&mut self, id: SessionId, user: Uid, name: &str) {
        let hash = format!("hash of {name}");
        self.batch(vec![Input::Login { id, user, hash }]);
        match self.reply(id) {
            Ok(Reply::LoggedIn { user: u, .. }) => assert_eq!(u.id, user),
            other => panic!("login of {name}: {other:?}"),
        }
    }

    fn befriend(&mut self, (a, au): (SessionId, Uid), (b, bu): (SessionId, Uid)) {
        let req = Command::FriendRequest {
            user: bu,
            text: String::new(),
        };
        assert!(self.ask(a, req).is_ok());
        assert!(self.ask(b, Command::FriendAccept { user: au }).is_ok());
    }
}

/// The messages pushed to a session, with their tickets.
fn messages(got: &[Out]) -> Vec<(MsgView, u64)> {
    got.iter()
        .filter_map(|o| match &o.item {
            OutItem::Event(e) => match &**e {
                Event::Message(m) => Some((m.clone(), o.ticket)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn presence_of(got: &[Out], who: Uid) -> Vec<bool> {
    got.iter()
        .filter_map(|o| match &o.item {
            OutItem::Event(e) => match &**e {
                Event::Presence { user, online } if user.id == who => Some(*online),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn a_message_reaches_every_session_of_its_recipient_with_its_batch_ticket() {
    let mut b = Bench::new();
    let (alice, a) = b.user("alice");
    let (bob1, bu) = b.user("bob");
    let bob2 = b.open();
    b.login(bob2, bu, "bob");
    let before = b.ticket;
    let send = Command::Send {
        to: Target::User(bu),
        text: "hi bob".into(),
        cid: Some("c1".into()),
        time: None,
    };
    let Ok(Reply::Sent { id, .. }) = b.ask(alice, send.clone()) else {
        panic!("send");
    };
    // The push waits for the flush of the batch that logged the message.
    assert!(b.ticket > before);
    for bob in [bob1, bob2] {
        let got = messages(&b.take(bob));
        assert_eq!(got.len(), 1, "one push per session");
        let (m, ticket) = &got[0];
        assert_eq!((m.msg.id, m.msg.from, &*m.msg.text), (id, a, "hi bob"));
        assert_eq!(*ticket, b.ticket);
    }
    assert_eq!(b.core.applied().get(&1).copied(), Some(b.core.next_seq - 1));
    // The same cid again is the same message, not a second one.
    let Ok(Reply::Sent {
        id: again,
        duplicate,
        ..
    }) = b.ask(alice, send)
    else {
        panic!("resend");
    };
    assert_eq!((again, duplicate), (id, true));
    assert!(messages(&b.take(bob1)).is_empty());
}

#[test]
fn friends_see_presence_only_when_the_last_session_goes() {
    let mut b = Bench::new();
    let alice = b.user("alice");
    let bob1 = b.user("bob");
    let bu = bob1.1;
    b.befriend(alice, bob1);
    let bob2 = b.open();
    b.login(bob2, bu, "bob");
    b.take(alice.0);
    b.batch(vec![Input::Close { id: bob1.0 }]);
    assert!(
        b.released.contains(&bob1.0),
        "the hub lets go of a closed session"
    );
    assert_eq!(presence_of(&b.take(alice.0), bu), Vec::<bool>::new());
    let mesh_heard = b.presence.len();
    b.batch(vec![Input::Close { id: bob2 }]);
    assert_eq!(presence_of(&b.take(alice.0), bu), vec![false]);
    // The mesh hears of it once, too.
    let told: Vec<_> = b.presence[mesh_heard..]
        .iter()
        .map(|p| (p.user, p.online))
        .collect();
    assert_eq!(told, vec![(bu, false)]);
}

#[test]
fn an_operator_kick_says_why_and_lets_go() {
    let mut b = Bench::new();
    let (bob, _) = b.user("bob");
    let kicked = b.core.admin(AdminReq::Kick {
        session: Some(bob),
        user: None,
    });
    assert_eq!(kicked, Ok(AdminReply::Kicked { kicked: 1 }));
    b.batch(vec![]);
    let got = b.take(bob);
    assert!(
        matches!(
            got.last().map(|o| &o.item),
            Some(OutItem::Bye(ErrorCode::Kicked))
        ),
        "the goodbye comes last"
    );
    // The writer says goodbye and closes the connection: it is not cut.
    assert!(b.released.contains(&bob) && !b.cut.contains(&bob));
    assert!(b.core.link(bob).is_none());
}

#[test]
fn a_request_before_login_is_refused_and_the_session_goes_on() {
    let mut b = Bench::new();
    let s = b.open();
    let send = Command::Send {
        to: Target::User(Uid(1)),
        text: "who am I".into(),
        cid: None,
        time: None,
    };
    let e = b.ask(s, send).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotLoggedIn);
    assert!(matches!(b.ask(s, Command::Ping), Ok(Reply::Pong)));
}

#[test]
fn silence_closes_a_session_only_once_the_idle_timeout_has_passed() {
    let mut b = Bench::new();
    let (quiet, _) = b.user("quiet");
    let idle = Limits::default().idle_timeout.unwrap();
    b.take(quiet);
    b.advance(idle - Duration::from_secs(1));
    b.batch(vec![]);
    assert!(b.core.link(quiet).is_some() && b.take(quiet).is_empty());
    b.advance(Duration::from_secs(2));
    b.batch(vec![]);
    let got = b.take(quiet);
    let said = got.iter().any(|o| {
        matches!(&o.item, OutItem::Event(e)
            if matches!(&**e, Event::Error(err) if err.code == ErrorCode::IdleTimeout))
    });
    assert!(said, "the session is told why");
    assert!(b.released.contains(&quiet) && b.core.link(quiet).is_none());
}

#[test]
fn a_session_that_never_logs_in_is_closed_at_the_login_timeout() {
    let mut b = Bench::new();
    let s = b.open();
    let (talker, _) = b.user("talker");
    let deadline = Limits::default().login_timeout.unwrap();
    b.advance(deadline + Duration::from_secs(1));
    b.batch(vec![Input::Request {
        id: talker,
        cmd: Command::Ping,
    }]);
    assert!(b.core.link(s).is_none(), "not logged in in time");
    // The one that logged in is judged by the idle timeout, not this one.
    let idle = Limits::default().idle_timeout.unwrap();
    assert_eq!(
        b.core.link(talker).is_some(),
        deadline + Duration::from_secs(1) <= idle
    );
}

#[test]
fn stamps_follow_the_time_given_not_the_machines_clock() {
    let mut b = Bench::new();
    let (alice, _) = b.user("alice");
    let (_, bu) = b.user("bob");
    // Less than the idle timeout, which would close alice's session.
    b.advance(Duration::from_secs(60));
    let send = Command::Send {
        to: Target::User(bu),
        text: "a minute later".into(),
        cid: None,
        time: None,
    };
    let Ok(Reply::Sent { id, .. }) = b.ask(alice, send) else {
        panic!("send");
    };
    assert_eq!(id.millis(), b.t.wall_ms);
}
