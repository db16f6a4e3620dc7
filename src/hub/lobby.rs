//! The lobby: who is in it, its rate per sender, and making it at start.

use super::*;

impl Hub {
    /// Whether a member of `g` other than `me` is online (for the lobby,
    /// guests count too).
    pub(super) fn anyone_else_in(&mut self, g: Gid, me: Uid) -> bool {
        if g == LOBBY {
            return self.lobby_online.iter().any(|u| *u != me);
        }
        let members = self.group_members(g);
        members.iter().any(|u| *u != me && self.online(*u))
    }

    /// Everyone online in the lobby, members and guests (at most a page).
    pub(super) fn room_online(&self) -> Vec<Uid> {
        let mut out: Vec<Uid> = self.lobby_online.iter().copied().collect();
        out.sort_unstable();
        out.truncate(ROOM_LIST_MAX);
        out
    }

    pub(super) fn in_lobby(&self, user: Uid) -> bool {
        user.is_guest() || matches!(self.store.member(LOBBY, user), Ok(Some(m)) if m.role.is_some())
    }

    /// Take one message from a sender's lobby allowance, or say how fast
    /// they may write.
    pub(super) fn lobby_allowance(&mut self, me: Uid) -> Result<(), ChatError> {
        let (rate, burst) = (self.batch_limits.lobby_rate, self.batch_limits.lobby_burst);
        let now = self.now.at;
        if self.lobby_rate.len() >= 10_000 {
            self.lobby_rate.retain(|_, (left, at)| {
                *left + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (left, at) = self.lobby_rate.get(&me).copied().unwrap_or((burst, now));
        let left = (left + now.duration_since(at).as_secs_f64() * rate).min(burst);
        if left < 1.0 {
            return Err(ChatError::new(
                ErrorCode::RateLimited,
                format!("at most {rate} messages a second into the lobby"),
            ));
        }
        self.lobby_rate.insert(me, (left - 1.0, now));
        Ok(())
    }

    /// Make sure the lobby exists (and has its configured name).
    pub(super) fn ensure_lobby(&mut self) {
        if self.storage_full {
            return;
        }
        let Some(name) = self.lobby.clone() else {
            return;
        };
        match self.with_rules(|store, cx| rules::ensure_lobby(store, cx, &name)) {
            Ok(Some((stamp, body))) => self.commit(stamp, body),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot set up the lobby"),
        }
    }
}
