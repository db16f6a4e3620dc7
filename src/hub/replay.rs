//! What a session missed: pending messages at login and on request, the
//! delivery marks of what it received, and the floors that keep replays
//! from repeating.

use super::*;

impl Hub {
    /// The messages waiting for the session's user, as a reply; what does
    /// not fit follows as a replay.
    pub(super) fn pending_reply(&mut self, id: SessionId) {
        let Some(user) = self.user_of(id) else {
            return self.reply(
                id,
                Err(ChatError::new(ErrorCode::NotLoggedIn, "log in first")),
            );
        };
        // Deliveries reported earlier in this batch count.
        self.commit_marks();
        let held = self.held_marks.get(&user).cloned().unwrap_or_default();
        let msgs = match rules::pending(&self.store, user, None, PENDING_REPLY_MAX, &held) {
            Ok(m) => m,
            Err(e) => return self.reply(id, Err(e)),
        };
        let mut budget = PENDING_REPLY_BYTES;
        let mut messages = Vec::new();
        let mut more = false;
        for m in msgs {
            // A message is a JSON string inside the reply: escaped twice.
            let cost = 2 * m.text.len() + 100;
            if !messages.is_empty() && cost > budget {
                more = true;
                break;
            }
            budget = budget.saturating_sub(cost);
            match self.names.view(&self.store, m) {
                Ok(v) => messages.push(v),
                Err(e) => return self.reply(id, Err(e)),
            }
        }
        more |= messages.len() == PENDING_REPLY_MAX;
        self.reply(id, Ok(Reply::Pending { messages, more }));
        if more {
            self.out.push((id, OutItem::Replay));
        }
    }

    /// Log the deliveries sessions reported in this batch. With the disk
    /// full they are held in memory (bounded; past that, those messages
    /// come again later) and logged once there is room.
    pub(super) fn commit_marks(&mut self) {
        if self.storage_full {
            for (user, id) in std::mem::take(&mut self.marks) {
                if self.held_marks.len() >= HELD_USERS_MAX && !self.held_marks.contains_key(&user) {
                    continue;
                }
                let c = self
                    .held_marks
                    .entry(user)
                    .or_default()
                    .entry(id.node())
                    .or_default();
                *c = (*c).max(id);
            }
            return;
        }
        for (user, cursors) in std::mem::take(&mut self.held_marks) {
            self.marks
                .extend(cursors.into_values().map(|id| (user, id)));
        }
        if !self.marks.is_empty() {
            for body in delivered_ops(std::mem::take(&mut self.marks)) {
                let stamp = self.stamp();
                self.commit(stamp, body);
            }
        }
    }

    pub(super) fn replay_page(&mut self, id: SessionId, after: Option<Stamp>) -> Vec<MsgView> {
        let Some(user) = self.user_of(id) else {
            return Vec::new();
        };
        if after.is_none() {
            let start = self.store.last_stamps().clone();
            if let Some(s) = self.sessions.get_mut(&id) {
                s.replay = Some(ReplayState {
                    start,
                    seen: HashSet::new(),
                });
            }
        }
        let held = self.held_marks.get(&user).cloned().unwrap_or_default();
        let msgs = match rules::pending(&self.store, user, after, REPLAY_PAGE, &held) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pending messages");
                return Vec::new();
            }
        };
        let done = msgs.len() < REPLAY_PAGE;
        if let Some(r) = self.sessions.get_mut(&id).and_then(|s| s.replay.as_mut()) {
            r.seen.extend(msgs.iter().map(|m| m.origin()));
        }
        if done {
            self.raise_floors(id, user);
        }
        msgs.into_iter()
            .filter_map(|m| self.names.view(&self.store, m).ok())
            .collect()
    }

    /// After a complete replay: an origin that had nothing pending for the
    /// user has delivered everything it had made when the replay began, so
    /// the user's cursor for it can move up to there. Without this, a node
    /// that never wrote to the user would keep every later login scanning
    /// group histories from the beginning.
    pub(super) fn raise_floors(&mut self, id: SessionId, user: Uid) {
        let Some(r) = self.sessions.get_mut(&id).and_then(|s| s.replay.take()) else {
            return;
        };
        for (origin, stamp) in r.start {
            if r.seen.contains(&origin) {
                continue;
            }
            match self.store.cursor(user, origin) {
                Ok(c) if c < stamp => self.marks.push((user, stamp)),
                Ok(_) => {}
                Err(e) => return self.fail(e),
            }
        }
    }
}
