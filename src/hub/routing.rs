//! Routing: who an effect concerns, and the pushes each of their sessions
//! gets; presence, here and from peers.

use super::*;

impl Hub {
    /// Apply another node's operations in order: skip what we have, stop at
    /// a gap (the sender will send again from what we report having).
    pub(super) fn peer_ops(&mut self, origin: NodeId, ops: Vec<Op>) {
        // With the disk full nothing is taken in; peers send again later.
        if origin == self.node || self.storage_full {
            return;
        }
        let mut expected = match self.peer_ops.get(&origin).and_then(|v| v.last()) {
            Some(op) => op.seq + 1,
            None => self.store.applied().get(&origin).copied().unwrap_or(0) + 1,
        };
        self.peer_ops.entry(origin).or_default().reserve(ops.len());
        for op in ops {
            if op.origin != origin || op.seq > expected {
                break;
            }
            if op.seq < expected {
                continue;
            }
            self.clock.observe(op.stamp, self.now.wall_ms);
            match apply(&mut self.store, &op) {
                Ok(effects) => self.route(effects),
                Err(e) => return self.fail(e),
            }
            self.peer_ops.entry(origin).or_default().push(op);
            expected += 1;
        }
    }

    /// Update what we know of another node's sessions; tell local friends of
    /// every user whose cluster-wide presence changed.
    pub(super) fn peer_presence(
        &mut self,
        node: NodeId,
        full: bool,
        online: Vec<Uid>,
        offline: Vec<Uid>,
    ) {
        let mut touched: Vec<Uid> = online.iter().chain(&offline).copied().collect();
        if full {
            touched.extend(self.remote.get(&node).into_iter().flatten().copied());
        }
        touched.sort_unstable();
        touched.dedup();
        let before: Vec<bool> = touched.iter().map(|u| self.online(*u)).collect();
        let set = self.remote.entry(node).or_default();
        if full {
            set.clear();
        }
        for u in offline {
            set.remove(&u);
        }
        set.extend(online);
        if set.is_empty() {
            self.remote.remove(&node);
        }
        for (u, was) in touched.into_iter().zip(before) {
            let now = self.online(u);
            if now != was {
                self.presence(u, now);
            }
        }
    }

    /// Tell a user's online friends (and, for a lobby participant, the
    /// sessions watching the lobby) that the user came or went.
    pub(super) fn presence(&mut self, user: Uid, online: bool) {
        self.room_presence(user, online);
        let Ok(edges) = self.store.edges(user) else {
            return;
        };
        // Only local sessions can be told; each node tells its own.
        let friends: Vec<Uid> = edges
            .into_iter()
            .filter(|(f, e)| e.link == Link::Friends && self.by_user.contains_key(f))
            .map(|(f, _)| f)
            .collect();
        if friends.is_empty() {
            return;
        }
        let ev = Arc::new(Event::Presence {
            user: self.user_ref(user),
            online,
        });
        for f in friends {
            self.push(f, &ev);
        }
    }

    pub(super) fn room_presence(&mut self, user: Uid, online: bool) {
        if self.lobby.is_none() || !self.in_lobby(user) {
            return;
        }
        if online {
            self.lobby_online.insert(user);
        } else {
            self.lobby_online.remove(&user);
        }
        if self.room_watchers.is_empty() {
            return;
        }
        let ev = Arc::new(Event::RoomPresence {
            user: self.user_ref(user),
            online,
        });
        for sid in &self.room_watchers {
            if self.sessions.get(sid).and_then(|s| s.user) != Some(user) {
                self.out.push((*sid, OutItem::Event(ev.clone())));
            }
        }
    }

    pub(super) fn user_ref(&mut self, u: Uid) -> UserRef {
        let name = self
            .names
            .get(&self.store, u)
            .map(|n| n.to_string())
            .unwrap_or_default();
        UserRef { id: u, name }
    }

    /// Queue a push to every session of a user on this node.
    pub(super) fn push(&mut self, user: Uid, ev: &Arc<Event>) {
        if let Some(list) = self.by_user.get(&user) {
            for sid in list {
                self.out.push((*sid, OutItem::Event(ev.clone())));
            }
        }
    }

    pub(super) fn group_members(&mut self, g: Gid) -> Arc<Vec<Uid>> {
        if let Some(m) = self.members.get(&g) {
            return m.clone();
        }
        let list: Vec<Uid> = match self.store.members(g) {
            Ok(m) => m.into_iter().map(|(u, _)| u).collect(),
            Err(e) => {
                self.fail(e);
                return Arc::new(Vec::new());
            }
        };
        let list = Arc::new(list);
        if self.members.len() >= 10_000 {
            self.members.clear();
        }
        self.members.insert(g, list.clone());
        list
    }

    /// Turn what an operation changed into pushes to the users concerned.
    pub(super) fn route(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Message(m) => {
                    let view = match self.names.view(&self.store, m.clone()) {
                        Ok(v) => v,
                        Err(_) => continue,
                    };
                    let ev = Arc::new(Event::Message(view));
                    match m.to {
                        Target::User(u) => self.push(u, &ev),
                        Target::Group(g) => {
                            for u in self.group_members(g).iter() {
                                if *u != m.from {
                                    self.push(*u, &ev);
                                }
                            }
                            if g == LOBBY {
                                for sid in &self.room {
                                    let to = self.sessions.get(sid).and_then(|s| s.user);
                                    if to.is_some() && to != Some(m.from) {
                                        self.out.push((*sid, OutItem::Event(ev.clone())));
                                    }
                                }
                            }
                        }
                    }
                }
                Effect::Link {
                    actor,
                    other,
                    before,
                    after,
                    note,
                } => self.route_link(actor, other, before, after, note),
                Effect::Member {
                    group,
                    user,
                    actor,
                    before,
                    after,
                } => {
                    self.members.remove(&group);
                    if group == LOBBY && self.lobby.is_some() {
                        if after.is_some() && self.online(user) {
                            self.lobby_online.insert(user);
                        } else if after.is_none() && !user.is_guest() {
                            self.lobby_online.remove(&user);
                        }
                    }
                    let change = match (before, after) {
                        (None, Some(_)) if actor == user => GroupChange::Joined,
                        (None, Some(_)) => GroupChange::Invited,
                        (Some(_), None) if actor == user => GroupChange::Left,
                        (Some(_), None) => GroupChange::Kicked,
                        (Some(b), Some(a)) if a > b => GroupChange::Promoted,
                        _ => GroupChange::Demoted,
                    };
                    // A group being created is news to nobody but its creator's reply.
                    if after == Some(Role::Creator) {
                        continue;
                    }
                    let ev = Arc::new(Event::Group {
                        group,
                        change,
                        user,
                        by: actor,
                        name: None,
                        desc: None,
                    });
                    let mut audience: Vec<Uid> = self.group_members(group).to_vec();
                    if !audience.contains(&user) {
                        audience.push(user);
                    }
                    for u in audience {
                        self.push(u, &ev);
                    }
                }
                Effect::GroupUpdated {
                    group,
                    actor,
                    name,
                    desc,
                } => {
                    let ev = Arc::new(Event::Group {
                        group,
                        change: GroupChange::Updated,
                        user: actor,
                        by: actor,
                        name,
                        desc,
                    });
                    for u in self.group_members(group).iter() {
                        self.push(*u, &ev);
                    }
                }
                Effect::GroupDissolved {
                    group,
                    actor,
                    members,
                } => {
                    self.members.remove(&group);
                    let ev = Arc::new(Event::Group {
                        group,
                        change: GroupChange::Dissolved,
                        user: actor,
                        by: actor,
                        name: None,
                        desc: None,
                    });
                    for u in members {
                        self.push(u, &ev);
                    }
                }
                Effect::Renamed { user, .. } => self.names.forget(user),
                Effect::PasswordChanged { .. } => {}
                Effect::Banned { user, banned } => {
                    if banned {
                        self.kick_user(user, ErrorCode::Banned);
                    }
                }
                Effect::Deleted { user } => {
                    self.names.forget(user);
                    self.kick_user(user, ErrorCode::AccountDeleted);
                }
                Effect::Notice { text, stamp } => {
                    // A notice that arrives late (a node catching up) is news no more.
                    if stamp.millis() + NOTICE_FRESH_MS >= self.now.wall_ms {
                        let ev = Arc::new(Event::Notice { text });
                        let users: Vec<Uid> = self.by_user.keys().copied().collect();
                        for u in users {
                            self.push(u, &ev);
                        }
                    }
                }
            }
        }
    }

    pub(super) fn route_link(
        &mut self,
        actor: Uid,
        other: Uid,
        before: Link,
        after: Link,
        note: String,
    ) {
        let me = self.user_ref(actor);
        match (before, after) {
            (_, Link::Pending { from }) => {
                let to = if from == actor { other } else { actor };
                let from = self.user_ref(from);
                self.push(to, &Arc::new(Event::FriendRequest { from, text: note }));
            }
            (_, Link::Friends) => {
                let them = self.user_ref(other);
                let to_other = Event::FriendAdded {
                    user: me,
                    by_you: false,
                };
                let to_actor = Event::FriendAdded {
                    user: them,
                    by_you: true,
                };
                self.push(other, &Arc::new(to_other));
                self.push(actor, &Arc::new(to_actor));
            }
            (Link::Pending { from }, Link::None) if from != actor => {
                self.push(from, &Arc::new(Event::FriendDeclined(me)));
            }
            (_, Link::None) => {
                self.push(other, &Arc::new(Event::FriendRemoved(me)));
            }
        }
    }
}
