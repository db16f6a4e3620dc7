use super::*;
use crate::apply::apply;
use crate::model::Op;
use crate::store::StoreOptions;

/// The rules and the merge function, driven like the hub drives them,
/// without sockets.
struct World {
    store: Store,
    clock: Clock,
    ids: IdAlloc,
    names: NameCache,
    limits: Limits,
    seq: u64,
    /// Who has a session.
    online: std::collections::HashSet<Uid>,
}

impl World {
    fn new() -> World {
        let store = Store::open(StoreOptions::temporary()).unwrap();
        let ids = IdAlloc::new(&store, 1).unwrap();
        World {
            store,
            clock: Clock::new(1),
            ids,
            names: NameCache::default(),
            limits: Limits::default(),
            seq: 0,
            online: Default::default(),
        }
    }

    fn run(&mut self, who: Option<Uid>, cmd: Command) -> Res<Reply> {
        let d = self.with_cx(|s, cx| decide(s, cx, who, cmd))?;
        self.apply_ops(d.ops);
        Ok(d.reply)
    }

    fn user(&mut self, name: &str) -> Uid {
        match self.run(
            None,
            Command::Register {
                name: name.into(),
                hash: "h".into(),
                id: None,
            },
        ) {
            Ok(Reply::Registered(u)) => u.id,
            other => panic!("{other:?}"),
        }
    }

    fn code(&mut self, who: Uid, cmd: Command) -> ErrorCode {
        self.run(Some(who), cmd).expect_err("should fail").code
    }
}

#[test]
fn group_permissions() {
    let mut w = World::new();
    let (creator, admin, member, outsider) = (w.user("c"), w.user("a"), w.user("m"), w.user("o"));
    let g = match w.run(
        Some(creator),
        Command::GroupCreate {
            name: "g".into(),
            desc: String::new(),
        },
    ) {
        Ok(Reply::Group(g)) => g.id,
        other => panic!("{other:?}"),
    };
    for u in [admin, member] {
        w.run(Some(u), Command::GroupJoin { group: g }).unwrap();
    }
    w.run(
        Some(creator),
        Command::GroupRole {
            group: g,
            user: admin,
            admin: true,
        },
    )
    .unwrap();
    let kick = |user| Command::GroupKick { group: g, user };
    assert_eq!(w.code(member, kick(admin)), ErrorCode::Forbidden);
    assert_eq!(w.code(admin, kick(creator)), ErrorCode::Forbidden);
    assert_eq!(w.code(outsider, kick(member)), ErrorCode::NotMember);
    assert_eq!(w.code(admin, kick(admin)), ErrorCode::SelfTarget);
    assert_eq!(
        w.code(admin, Command::GroupDissolve { group: g }),
        ErrorCode::Forbidden
    );
    assert_eq!(
        w.code(creator, Command::GroupLeave { group: g }),
        ErrorCode::CreatorCannotLeave
    );
    let send = Command::Send {
        to: Target::Group(g),
        text: "hi".into(),
        cid: None,
        time: None,
    };
    assert_eq!(w.code(outsider, send.clone()), ErrorCode::NotMember);
    w.run(Some(admin), kick(member)).unwrap();
    assert_eq!(w.code(member, send.clone()), ErrorCode::NotMember);
    w.run(Some(creator), Command::GroupDissolve { group: g })
        .unwrap();
    assert_eq!(w.code(creator, send), ErrorCode::UnknownGroup);
}

#[test]
fn pending_follows_cursors_and_membership() {
    let mut w = World::new();
    let (a, b) = (w.user("a"), w.user("b"));
    let mut ids = Vec::new();
    for i in 0..5 {
        match w.run(
            Some(a),
            Command::Send {
                to: Target::User(b),
                text: format!("m{i}"),
                cid: None,
                time: None,
            },
        ) {
            Ok(Reply::Sent { id, .. }) => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    let texts = |w: &World| -> Vec<String> {
        pending(&w.store, b, None, 100, &BTreeMap::new())
            .unwrap()
            .iter()
            .map(|m| m.text.clone())
            .collect()
    };
    assert_eq!(texts(&w), ["m0", "m1", "m2", "m3", "m4"]);
    w.run(Some(b), Command::Ack { ids: vec![ids[2]] }).unwrap();
    assert_eq!(texts(&w), ["m3", "m4"], "an ack covers earlier messages");
    // Paging.
    let page = pending(&w.store, b, Some(ids[3]), 100, &BTreeMap::new()).unwrap();
    assert_eq!(page.len(), 1);
    // A group joined later: only messages after joining are pending.
    let g = match w.run(
        Some(a),
        Command::GroupCreate {
            name: "g".into(),
            desc: String::new(),
        },
    ) {
        Ok(Reply::Group(g)) => g.id,
        other => panic!("{other:?}"),
    };
    let group_send = |text: &str| Command::Send {
        to: Target::Group(g),
        text: text.into(),
        cid: None,
        time: None,
    };
    w.run(Some(a), group_send("before")).unwrap();
    w.run(Some(b), Command::GroupJoin { group: g }).unwrap();
    w.run(Some(a), group_send("after")).unwrap();
    assert_eq!(texts(&w), ["m3", "m4", "after"]);
    // Own messages are never pending for oneself.
    w.run(Some(b), group_send("mine")).unwrap();
    assert_eq!(texts(&w), ["m3", "m4", "after"]);
}

#[test]
fn acks_from_the_future_are_ignored() {
    let mut w = World::new();
    let b = w.user("b");
    let future = Stamp::new(crate::ids::wall_millis() + 3_600_000, 1);
    match w.run(Some(b), Command::Ack { ids: vec![future] }) {
        Ok(Reply::Acked { count }) => assert_eq!(count, 0),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.store.cursor(b, 1).unwrap(), Stamp::ZERO);
}

impl World {
    fn apply_ops(&mut self, ops: Vec<(Stamp, OpBody)>) {
        for (stamp, body) in ops {
            self.seq += 1;
            let op = Op {
                origin: 1,
                seq: self.seq,
                stamp,
                body,
            };
            apply(&mut self.store, &op).unwrap();
        }
    }

    fn with_cx<R>(&mut self, f: impl FnOnce(&Store, &mut Ctx) -> R) -> R {
        let on = &self.online;
        let online = |u| on.contains(&u);
        let guests = Vec::new;
        let mut cx = Ctx {
            now_ms: crate::ids::wall_millis(),
            clock: &mut self.clock,
            ids: &mut self.ids,
            names: &mut self.names,
            limits: &self.limits,
            online: &online,
            guests_online: &guests,
        };
        f(&self.store, &mut cx)
    }

    fn chosen(&mut self, name: &str, id: u32) -> Res<Reply> {
        self.run(
            None,
            Command::Register {
                name: name.into(),
                hash: "h".into(),
                id: Some(Uid(id)),
            },
        )
    }

    fn guest(&mut self, name: &str) -> Uid {
        let (u, op) = self
            .with_cx(|s, cx| guest_login(s, cx, name, true))
            .unwrap();
        self.apply_ops(op.into_iter().collect());
        u.id
    }
}

#[test]
fn chosen_ids_are_kept_and_skipped() {
    let mut w = World::new();
    assert!(matches!(w.chosen("two", 2), Ok(Reply::Registered(u)) if u.id == Uid(2)));
    assert_eq!(w.user("a"), Uid(1));
    assert_eq!(w.user("b"), Uid(3), "a chosen id is never handed out again");
    assert_eq!(w.chosen("again", 2).unwrap_err().code, ErrorCode::IdTaken);
    assert_eq!(w.chosen("two", 9).unwrap_err().code, ErrorCode::NameTaken);
    let other_node = *id_block(2).start();
    assert_eq!(
        w.chosen("far", other_node).unwrap_err().code,
        ErrorCode::BadRequest
    );
    // The top of the block chosen: after a restart, allocation finds
    // the free ids below it.
    let top = *id_block(1).end();
    assert!(w.chosen("top", top).is_ok());
    w.ids = IdAlloc::new(&w.store, 1).unwrap();
    assert_eq!(w.user("c"), Uid(4));
}

#[test]
fn guests_chat_in_the_lobby_and_nowhere_else() {
    let mut w = World::new();
    let lobby = w.with_cx(|s, cx| ensure_lobby(s, cx, "lobby")).unwrap();
    w.apply_ops(lobby.into_iter().collect());
    assert!(
        w.with_cx(|s, cx| ensure_lobby(s, cx, "lobby"))
            .unwrap()
            .is_none(),
        "made once"
    );
    let carol = w.guest("carol");
    assert!(carol.is_guest());
    assert_eq!(w.guest("carol"), carol, "a name keeps its guest");
    // Someone else under the same name while carol is here: carol 2.
    w.online.insert(carol);
    let carol2 = w.guest("carol");
    assert_ne!(carol2, carol);
    assert_eq!(&*w.names.get(&w.store, carol2).unwrap(), "carol 2 (guest)");
    w.online.insert(carol2);
    assert_ne!(w.guest("carol"), carol2);
    w.online.clear();
    assert_eq!(w.guest("carol"), carol, "and carol again once she left");
    let dave = w.guest("dave");
    assert_ne!(dave, carol);
    let erin = w.user("erin");
    let to_lobby = |text: &str| Command::Send {
        to: Target::Group(LOBBY),
        text: text.into(),
        cid: None,
        time: None,
    };
    assert!(w.run(Some(carol), to_lobby("hi")).is_ok());
    // A user must join first; a guest may not do anything else.
    assert_eq!(w.code(erin, to_lobby("hi")), ErrorCode::NotMember);
    assert_eq!(
        w.code(
            carol,
            Command::FriendRequest {
                user: erin,
                text: String::new()
            }
        ),
        ErrorCode::Forbidden
    );
    assert_eq!(
        w.code(carol, Command::GroupJoin { group: LOBBY }),
        ErrorCode::Forbidden
    );
    let dm = |to: Uid| Command::Send {
        to: Target::User(to),
        text: "psst".into(),
        cid: None,
        time: None,
    };
    assert_eq!(w.code(carol, dm(erin)), ErrorCode::Forbidden);
    assert_eq!(w.code(erin, dm(carol)), ErrorCode::Forbidden);
    assert!(w.run(Some(carol), dm(dave)).is_ok(), "guests may whisper");
    assert_eq!(
        w.code(
            erin,
            Command::FriendRequest {
                user: carol,
                text: String::new()
            }
        ),
        ErrorCode::UnknownUser
    );
    // The shown name marks the guest.
    assert_eq!(&*w.names.get(&w.store, carol).unwrap(), "carol (guest)");
}

#[test]
fn friends_and_requests_are_bounded_for_whoever_is_asked_too() {
    let mut w = World::new();
    w.limits.max_friends = 2;
    let target = w.user("t");
    let (a, b, c) = (w.user("a"), w.user("b"), w.user("c"));
    let ask = |user| Command::FriendRequest {
        user,
        text: String::new(),
    };
    for u in [a, b] {
        w.run(Some(u), ask(target)).unwrap();
    }
    // Two requests wait for the target: a third user is refused, whether
    // asking or adding directly (the classic and sponge clients' way).
    assert_eq!(w.code(c, ask(target)), ErrorCode::LimitReached);
    assert_eq!(
        w.code(c, Command::FriendAdd { user: target }),
        ErrorCode::LimitReached
    );
    // What is already counted needs no more room: accepting, or adding
    // someone whose request waits.
    w.run(Some(target), Command::FriendAccept { user: a })
        .unwrap();
    assert!(matches!(
        w.run(Some(target), Command::FriendAdd { user: b }),
        Ok(Reply::Befriended(_))
    ));
    // The one asking is bounded as before.
    assert_eq!(w.code(target, ask(c)), ErrorCode::LimitReached);
}
