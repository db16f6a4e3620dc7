//! Logging in and out: credentials, passwords, tokens, guests; attaching
//! a session to its user, and ending sessions (idle, kicked, closed).

use super::*;

impl Hub {
    pub(super) fn credentials(&self, id: SessionId, who: Option<Who>) -> Option<(Uid, String)> {
        let uid = match &who {
            None => self.user_of(id)?,
            Some(Who::Id(u)) => *u,
            Some(Who::Name(n)) => match self.store.name_owner(n).ok()? {
                Some(u) => u,
                // "name#id": an account that lost a name collision.
                None => {
                    let (_, id) = n.rsplit_once('#')?;
                    Uid(id.parse().ok()?)
                }
            },
        };
        let user = self.store.user(uid).ok()??;
        if let Some(Who::Name(n)) = &who {
            if user.name != *n && self.store.name_owner(n).ok()? != Some(uid) {
                return None;
            }
        }
        is_registered(&user).then_some((uid, user.hash))
    }

    pub(super) fn login(&mut self, id: SessionId, user: Uid, hash: &str) {
        if !self.sessions.contains_key(&id) {
            return;
        }
        match rules::check_login(&self.store, user, hash) {
            Ok(u) => self.logged_in(
                id,
                UserRef {
                    id: user,
                    name: u.name,
                },
                None,
            ),
            Err(e) => self.reply(id, Err(e)),
        }
    }

    pub(super) fn resume(&mut self, id: SessionId, token: &crate::tokens::Presented) {
        if !self.sessions.contains_key(&id) {
            return;
        }
        match rules::check_token(&self.store, token, self.now.wall_ms) {
            Ok((u, rec)) => self.logged_in(
                id,
                UserRef {
                    id: u.id,
                    name: u.name,
                },
                Some((token.issued, rec.expires_ms)),
            ),
            Err(e) => self.reply(id, Err(e)),
        }
    }

    /// The token a session that logged in gets: none when its client has
    /// no use for one; for a resume, none while the one it holds is in its
    /// first half of life (a reconnect costs no write then).
    pub(super) fn session_token(
        &mut self,
        id: SessionId,
        user: Uid,
        resumed: Option<(Stamp, u64)>,
    ) -> Option<String> {
        let s = self.sessions.get_mut(&id)?;
        if !s.link.traits().tokens || user.is_guest() {
            s.token = None;
            return None;
        }
        let lifetime = self.batch_limits.token_lifetime.as_millis() as u64;
        let now = self.now.wall_ms;
        if let Some((issued, expires_ms)) = resumed {
            s.token = Some(issued);
            if expires_ms.saturating_sub(now) > lifetime / 2 {
                return None;
            }
        }
        if self.storage_full {
            return None;
        }
        let stamp = self.stamp();
        let fresh = crate::tokens::fresh(user, stamp);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.token = Some(stamp);
        }
        self.commit(
            stamp,
            OpBody::Token {
                user,
                hash: fresh.hash,
                expires_ms: now.saturating_add(lifetime),
            },
        );
        Some(fresh.text)
    }

    /// A session that logs out or is kicked takes its token with it.
    pub(super) fn revoke_session_token(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let (Some(user), Some(issued)) = (s.user, s.token.take()) else {
            return;
        };
        if !self.storage_full {
            let stamp = self.stamp();
            self.commit(stamp, OpBody::RevokeToken { user, issued });
        }
    }

    pub(super) fn guest_login(&mut self, id: SessionId, name: &str) {
        let allow_new = !self.storage_full;
        match self.with_rules(|store, cx| rules::guest_login(store, cx, name, allow_new)) {
            Ok((guest, op)) => {
                if let Some((stamp, body)) = op {
                    self.commit(stamp, body);
                }
                self.logged_in(id, guest, None)
            }
            Err(e) => self.reply(id, Err(e)),
        }
    }

    /// Attach a session whose user was checked, and answer its login with
    /// what its dialect needs.
    pub(super) fn logged_in(
        &mut self,
        id: SessionId,
        user: UserRef,
        resumed: Option<(Stamp, u64)>,
    ) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let uid = user.id;
        let n = self.by_user.get(&uid).map_or(0, Vec::len);
        if session.user != Some(uid) && n >= self.batch_limits.max_sessions_per_user {
            let e = ChatError::new(
                ErrorCode::TooManySessions,
                format!("{n} sessions are open for this account already"),
            );
            return self.reply(id, Err(e));
        }
        let traits = session.link.traits();
        if self.user_of(id).is_some() {
            self.detach(id);
        }
        if traits.joins_lobby && !self.storage_full {
            match self.with_rules(|store, cx| rules::join_lobby(store, cx, uid)) {
                Ok(Some((stamp, body))) => self.commit(stamp, body),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, user = %uid, "cannot join the lobby"),
            }
        }
        self.attach(id, uid);
        let roster = if traits.roster_in_login {
            self.with_rules(|store, cx| rules::roster(store, cx, uid))
                .ok()
                .map(Box::new)
        } else {
            None
        };
        let room = traits.room_in_login.then(|| self.room_online());
        let sessions = self.by_user.get(&uid).map_or(1, Vec::len);
        let token = self.session_token(id, uid, resumed);
        self.reply(
            id,
            Ok(Reply::LoggedIn {
                user,
                sessions,
                roster,
                room,
                token,
            }),
        );
        if let Some(text) = self.batch_limits.welcome.clone() {
            self.out
                .push((id, OutItem::Event(Arc::new(Event::Notice { text }))));
        }
        if traits.replay_at_login {
            self.out.push((id, OutItem::Replay));
        }
    }

    pub(super) fn attach(&mut self, id: SessionId, user: Uid) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.user = Some(user);
            s.traits = s.link.traits();
            let label = s.link.label();
            s.counted = Some(label);
            metrics::gauge!("chatd_sessions", "dialect" => label).increment(1.0);
            if s.traits.room {
                self.room.insert(id);
            }
            if s.traits.room_presence {
                self.room_watchers.insert(id);
            }
        }
        let was_online = self.online(user);
        let list = self.by_user.entry(user).or_default();
        list.push(id);
        if list.len() == 1 {
            self.actions
                .push(Action::Presence(PresenceChange { user, online: true }));
            if !was_online {
                self.presence(user, true);
            }
        }
    }

    pub(super) fn detach(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if let Some(dialect) = s.counted.take() {
            metrics::gauge!("chatd_sessions", "dialect" => dialect).decrement(1.0);
        }
        self.room.remove(&id);
        self.room_watchers.remove(&id);
        let Some(user) = s.user.take() else {
            return;
        };
        s.waiting_since = self.now.at;
        if let Some(list) = self.by_user.get_mut(&user) {
            list.retain(|s| *s != id);
            if list.is_empty() {
                self.by_user.remove(&user);
                self.actions.push(Action::Presence(PresenceChange {
                    user,
                    online: false,
                }));
                if !self.online(user) {
                    self.presence(user, false);
                }
            }
        }
    }

    /// Close every local session of a user, saying why.
    pub(super) fn kick_user(&mut self, user: Uid, why: ErrorCode) -> usize {
        let sessions = self.by_user.get(&user).cloned().unwrap_or_default();
        for s in &sessions {
            self.kill(*s, Some(why));
        }
        sessions.len()
    }

    pub(super) fn end_session(&mut self, id: SessionId) {
        self.detach(id);
        if let Some(s) = self.sessions.remove(&id) {
            self.actions.push(Action::Release(s.link));
        }
    }

    /// Close sessions silent for longer than the idle timeout, and those
    /// that have not logged in within the login timeout, saying why. One
    /// sweep here, rather than a timer in every connection, keeps idle
    /// connections small. Logged-in clients that never ping (the seed
    /// clients) are left to TCP keepalive.
    pub(super) fn close_idle_sessions(&mut self) {
        let now = self.now.at;
        self.last_idle_sweep = now;
        let idle = self.batch_limits.idle_timeout;
        let deadline = self.batch_limits.login_timeout;
        let mut closing: Vec<(SessionId, ChatError)> = Vec::new();
        for s in self.sessions.values() {
            let waited = now.saturating_duration_since(s.waiting_since);
            if s.user.is_none() && deadline.is_some_and(|d| waited > d) {
                let e = ChatError::new(ErrorCode::LoginTimeout, "not logged in in time");
                closing.push((s.link.id, e));
            } else if !s.link.traits().idle_exempt
                && idle.is_some_and(|limit| s.link.silent_at(now) > limit)
            {
                let e = ChatError::new(
                    ErrorCode::IdleTimeout,
                    "nothing received for too long; send \"ping\" to stay connected",
                );
                closing.push((s.link.id, e));
            }
        }
        for (id, error) in closing {
            if let Some(s) = self.sessions.get(&id) {
                let out = Out {
                    ticket: 0,
                    item: OutItem::Event(Arc::new(Event::Error(error))),
                };
                self.actions.push(Action::Say {
                    link: s.link.clone(),
                    out,
                    or_cut: false,
                });
            }
            // The writer writes the error, finds the outbox closed, and
            // closes the connection.
            self.end_session(id);
        }
    }

    /// Close a session now, saying why when there is room to.
    pub(super) fn kill(&mut self, id: SessionId, bye: Option<ErrorCode>) {
        if let Some(s) = self.sessions.get(&id) {
            let link = s.link.clone();
            self.actions.push(match bye {
                Some(code) => {
                    let out = Out {
                        ticket: self.store.ticket(),
                        item: OutItem::Bye(code),
                    };
                    Action::Say {
                        link,
                        out,
                        or_cut: true,
                    }
                }
                None => Action::Cut(link),
            });
        }
        self.end_session(id);
    }
}
