//! What the rules keep between calls, owned by the hub and lent to them in
//! each `Ctx`: the id allocator of this node's blocks and the name cache.

use super::*;

/// Allocates user, guest and group ids from this node's blocks.
#[derive(Debug)]
pub struct IdAlloc {
    node: NodeId,
    next_user: u32,
    next_group: u32,
    next_guest: u32,
    users: std::ops::RangeInclusive<u32>,
    end: u32,
}

impl IdAlloc {
    pub fn new(s: &Store, node: NodeId) -> crate::store::Result<IdAlloc> {
        let block = id_block(node);
        let start = *block.start();
        let guests = guest_block(node);
        Ok(IdAlloc {
            node,
            next_user: s.max_uid(&block)?.map_or(start, |m| m + 1),
            next_group: s.max_gid(&block)?.map_or(start, |m| m + 1),
            next_guest: s.max_uid(&guests)?.map_or(*guests.start(), |m| m + 1),
            end: *block.end(),
            users: block,
        })
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether `u` is an id this node may give to a new account.
    pub fn owns_user_id(&self, u: Uid) -> bool {
        self.users.contains(&u.0)
    }

    /// The next free user id. Ids clients chose themselves (the Go
    /// chatroom's register) may sit anywhere in the block, so taken ones are
    /// skipped, and once the top is reached the search starts again from
    /// the bottom.
    pub(super) fn user(&mut self, s: &Store) -> Res<Uid> {
        for _ in 0..2 {
            while self.next_user <= self.end {
                let id = Uid(self.next_user);
                self.next_user += 1;
                if s.user(id)?.is_none() {
                    return Ok(id);
                }
            }
            self.next_user = match s.first_free_uid(&self.users)? {
                Some(free) => free,
                None => break,
            };
        }
        fail(ErrorCode::LimitReached, "this node has no user ids left")
    }

    pub(super) fn group(&mut self) -> Res<Gid> {
        if self.next_group > self.end {
            return fail(ErrorCode::LimitReached, "this node has no group ids left");
        }
        self.next_group += 1;
        Ok(Gid(self.next_group - 1))
    }

    pub(super) fn guest(&mut self) -> Res<Uid> {
        if self.next_guest > *guest_block(self.node).end() {
            return fail(ErrorCode::LimitReached, "this node has no guest ids left");
        }
        self.next_guest += 1;
        Ok(Uid(self.next_guest - 1))
    }
}

/// Display names by user id, so routing a message does not decode a user
/// record each time. Forget a user when their name changes.
#[derive(Default)]
pub struct NameCache {
    names: HashMap<Uid, Arc<str>>,
}

impl NameCache {
    pub fn get(&mut self, s: &Store, u: Uid) -> Res<Arc<str>> {
        if let Some(n) = self.names.get(&u) {
            return Ok(n.clone());
        }
        let name: Arc<str> = match s.user(u)? {
            Some(user) if has_name(&user) => user.name.into(),
            _ => Arc::from(""),
        };
        if self.names.len() >= 100_000 {
            self.names.clear();
        }
        self.names.insert(u, name.clone());
        Ok(name)
    }

    pub fn forget(&mut self, u: Uid) {
        self.names.remove(&u);
    }

    pub fn view(&mut self, s: &Store, msg: Arc<Message>) -> Res<MsgView> {
        let from_name = self.get(s, msg.from)?;
        Ok(MsgView { msg, from_name })
    }
}
