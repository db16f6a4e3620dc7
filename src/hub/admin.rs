//! The operator's requests (from the admin socket), answered by the hub.
//! Changes go through operations like everything else, so a ban, a deletion
//! or a broadcast reaches every node of a cluster.

use super::{Hub, SessionId};
use crate::admin::proto::{
    GroupInfo, GroupRow, HubStatus, MemberRow, NamedUser, RemoteSession, Reply as AdminReply,
    SessionRow, UserRow,
};
use crate::api::{Command, ErrorCode, Reply, Who};
use crate::apply::is_registered;
use crate::ids::{Gid, Uid};
use crate::model::{OpBody, User};
use crate::rules;

pub enum AdminReq {
    Status,
    /// Users in id order, or those matching `query`.
    Users {
        query: Option<String>,
        offset: usize,
        limit: usize,
    },
    User {
        who: Who,
    },
    CreateUser {
        name: String,
        hash: String,
    },
    SetPassword {
        who: Who,
        hash: String,
    },
    Ban {
        who: Who,
        banned: bool,
    },
    DeleteUser {
        who: Who,
    },
    Sessions,
    Kick {
        session: Option<SessionId>,
        user: Option<Who>,
    },
    Groups {
        offset: usize,
        limit: usize,
    },
    Group {
        group: Gid,
    },
    Dissolve {
        group: Gid,
    },
    Broadcast {
        text: String,
    },
    /// Where a backup should stop: the durable log position.
    BackupPoint,
}

type Res = Result<AdminReply, String>;

/// The operator acts as user 0.
const OPERATOR: Uid = Uid(0);

impl Hub {
    pub(super) fn admin(&mut self, req: AdminReq) -> Res {
        let changes = matches!(
            req,
            AdminReq::CreateUser { .. }
                | AdminReq::SetPassword { .. }
                | AdminReq::Ban { .. }
                | AdminReq::DeleteUser { .. }
                | AdminReq::Dissolve { .. }
                | AdminReq::Broadcast { .. }
        );
        if changes && self.storage_full {
            return Err(Self::storage_full_error().message);
        }
        match req {
            AdminReq::Status => self.admin_status().map(|hub| AdminReply::Status {
                hub,
                version: env!("CARGO_PKG_VERSION").to_string(),
                // The socket knows these.
                uptime_secs: 0,
                cluster_members: 1,
            }),
            AdminReq::Users {
                query,
                offset,
                limit,
            } => self.admin_users(query, offset, limit),
            AdminReq::User { who } => {
                let u = self.admin_user(&who)?;
                let groups = self.store.groups_of(u.id).map_err(|e| e.to_string())?;
                let friends = self
                    .store
                    .edges(u.id)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|(_, e)| e.link == crate::model::Link::Friends)
                    .count();
                Ok(AdminReply::User {
                    user: self.user_row(&u),
                    created_ms: u.created.millis(),
                    sessions_here: self.by_user.get(&u.id).map_or(0, Vec::len),
                    friends,
                    groups,
                })
            }
            AdminReq::CreateUser { name, hash } => {
                match self.admin_decide(Command::Register {
                    name,
                    hash,
                    id: None,
                })? {
                    Reply::Registered(u) => Ok(AdminReply::Created {
                        user: NamedUser {
                            id: u.id,
                            name: u.name,
                        },
                    }),
                    other => Err(format!("unexpected reply {other:?}")),
                }
            }
            AdminReq::SetPassword { who, hash } => {
                let u = self.admin_user(&who)?;
                self.admin_op(OpBody::SetPassword { user: u.id, hash });
                Ok(AdminReply::UserChanged {
                    user: u.id,
                    banned: None,
                    deleted: None,
                })
            }
            AdminReq::Ban { who, banned } => {
                let u = self.admin_user(&who)?;
                self.admin_op(OpBody::SetBanned { user: u.id, banned });
                Ok(AdminReply::UserChanged {
                    user: u.id,
                    banned: Some(banned),
                    deleted: None,
                })
            }
            AdminReq::DeleteUser { who } => {
                let u = self.admin_user(&who)?;
                if u.deleted {
                    return Err(format!("user {} is already deleted", u.id));
                }
                self.admin_op(OpBody::DeleteUser { user: u.id });
                Ok(AdminReply::UserChanged {
                    user: u.id,
                    banned: None,
                    deleted: Some(true),
                })
            }
            AdminReq::Sessions => Ok(self.admin_sessions()),
            AdminReq::Kick { session, user } => {
                let kicked = match (session, user) {
                    (Some(id), None) => {
                        if !self.sessions.contains_key(&id) {
                            return Err(format!("no session {id} on this node"));
                        }
                        // A kicked session does not come back with its token.
                        self.revoke_session_token(id);
                        self.kill(id, Some(ErrorCode::Kicked));
                        1
                    }
                    (None, Some(who)) => {
                        let u = self.admin_user(&who)?;
                        if !self.storage_full {
                            self.admin_op(OpBody::RevokeTokens { user: u.id });
                        }
                        self.kick_user(u.id, ErrorCode::Kicked)
                    }
                    _ => return Err("give a session id or a user".into()),
                };
                Ok(AdminReply::Kicked { kicked })
            }
            AdminReq::Groups { offset, limit } => {
                let mut groups = Vec::new();
                for g in self.store.groups().skip(offset).take(limit) {
                    let g = g.map_err(|e| e.to_string())?;
                    if g.created == crate::ids::Stamp::ZERO {
                        continue;
                    }
                    let members = self.store.members(g.id).map_err(|e| e.to_string())?.len();
                    groups.push(GroupRow {
                        id: g.id,
                        name: g.name,
                        desc: g.desc,
                        creator: g.creator,
                        members,
                        dissolved: g.dissolved,
                    });
                }
                Ok(AdminReply::Groups { groups })
            }
            AdminReq::Group { group } => {
                let g = self
                    .store
                    .group(group)
                    .map_err(|e| e.to_string())?
                    .filter(|g| g.created != crate::ids::Stamp::ZERO)
                    .ok_or_else(|| format!("no group {group}"))?;
                let mut members = Vec::new();
                for (u, m) in self.store.members(group).map_err(|e| e.to_string())? {
                    let name = self.names.get(&self.store, u).map_err(|e| e.message)?;
                    members.push(MemberRow {
                        id: u,
                        name: name.to_string(),
                        role: m.role.map(|r| r.as_str().to_string()),
                        online: self.online(u),
                    });
                }
                Ok(AdminReply::Group {
                    group: GroupInfo {
                        id: g.id,
                        name: g.name,
                        desc: g.desc,
                        creator: g.creator,
                        dissolved: g.dissolved,
                    },
                    members,
                })
            }
            AdminReq::Dissolve { group } => {
                let g = self
                    .store
                    .group(group)
                    .map_err(|e| e.to_string())?
                    .filter(|g| g.created != crate::ids::Stamp::ZERO && !g.dissolved)
                    .ok_or_else(|| format!("no group {group}"))?;
                if g.id == crate::ids::LOBBY {
                    return Err(
                        "the lobby cannot be dissolved (it is where the room-style clients chat)"
                            .into(),
                    );
                }
                self.admin_op(OpBody::DissolveGroup {
                    group: g.id,
                    actor: OPERATOR,
                });
                Ok(AdminReply::Dissolved {
                    group: g.id,
                    dissolved: true,
                })
            }
            AdminReq::Broadcast { text } => {
                if text.trim().is_empty() {
                    return Err("the notice is empty".into());
                }
                let online = self.by_user.len();
                self.admin_op(OpBody::Notice { text });
                Ok(AdminReply::Broadcast {
                    online_here: online,
                })
            }
            AdminReq::BackupPoint => {
                let uuid = self.store.node_uuid()?;
                // What is durable: every segment up to it is in the log.
                let position = self.store.durable().borrow().position.clone();
                Ok(AdminReply::BackupPoint(crate::admin::proto::BackupPoint {
                    node: self.node,
                    uuid,
                    position: (*position).clone(),
                }))
            }
        }
    }

    fn admin_op(&mut self, body: OpBody) {
        let stamp = self.stamp();
        self.commit(stamp, body);
    }

    /// Run a command through the rules as the operator (no session).
    fn admin_decide(&mut self, cmd: Command) -> Result<Reply, String> {
        let d = self
            .with_rules(|store, cx| rules::decide(store, cx, None, cmd))
            .map_err(|e| e.message)?;
        for (stamp, body) in d.ops {
            self.commit(stamp, body);
        }
        Ok(d.reply)
    }

    /// A user by id or name, deleted ones included.
    fn admin_user(&self, who: &Who) -> Result<User, String> {
        let id = match who {
            Who::Id(u) => *u,
            Who::Name(n) => self
                .store
                .name_owner(n)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no user named {n:?}"))?,
        };
        self.store
            .user(id)
            .map_err(|e| e.to_string())?
            .filter(|u| u.created != crate::ids::Stamp::ZERO)
            .ok_or_else(|| format!("no user {id}"))
    }

    fn user_row(&self, u: &User) -> UserRow {
        UserRow {
            id: u.id,
            name: u.name.clone(),
            banned: u.banned,
            deleted: u.deleted,
            online: self.online(u.id),
            guest: u.id.is_guest(),
        }
    }

    fn admin_users(&mut self, query: Option<String>, offset: usize, limit: usize) -> Res {
        let mut users = Vec::new();
        match query {
            Some(q) => {
                let needle = q.to_lowercase();
                let by_id = q.parse::<u32>().ok();
                for r in self.store.users() {
                    let u = r.map_err(|e| e.to_string())?;
                    if u.created == crate::ids::Stamp::ZERO {
                        continue;
                    }
                    if Some(u.id.0) == by_id || u.name.to_lowercase().contains(&needle) {
                        users.push(self.user_row(&u));
                        if users.len() >= limit {
                            break;
                        }
                    }
                }
            }
            None => {
                for r in self.store.users().skip(offset) {
                    let u = r.map_err(|e| e.to_string())?;
                    if u.created != crate::ids::Stamp::ZERO {
                        users.push(self.user_row(&u));
                    }
                    if users.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(AdminReply::Users { users })
    }

    fn admin_sessions(&mut self) -> AdminReply {
        let mut rows = Vec::new();
        let mut ids: Vec<&SessionId> = self.sessions.keys().collect();
        ids.sort();
        for id in ids {
            let s = &self.sessions[id];
            let name = s
                .user
                .and_then(|u| self.names.get(&self.store, u).ok())
                .map(|n| n.to_string());
            let since = s
                .link
                .opened
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            rows.push(SessionRow {
                session: *id,
                user: s.user,
                name,
                dialect: s.link.label().to_string(),
                remote: s.link.peer.to_string(),
                node: self.node,
                since_ms: since,
            });
        }
        let mut elsewhere = Vec::new();
        for (node, users) in &self.remote {
            let mut users: Vec<&Uid> = users.iter().collect();
            users.sort();
            for u in users {
                let name = self.names.get(&self.store, *u).ok().map(|n| n.to_string());
                elsewhere.push(RemoteSession {
                    node: *node,
                    user: *u,
                    name,
                });
            }
        }
        AdminReply::Sessions {
            sessions: rows,
            elsewhere,
        }
    }

    /// What the hub knows for `status`.
    pub(super) fn admin_status(&mut self) -> Result<HubStatus, String> {
        let err = |e: crate::store::StoreError| e.to_string();
        let mut users = 0u64;
        for u in self.store.users() {
            if is_registered(&u.map_err(err)?) {
                users += 1;
            }
        }
        let mut groups = 0u64;
        for g in self.store.groups() {
            let g = g.map_err(err)?;
            if g.created != crate::ids::Stamp::ZERO && !g.dissolved {
                groups += 1;
            }
        }
        let messages = Some(self.store.counts().messages);
        let sessions = self.sessions.values().filter(|s| s.user.is_some()).count();
        let online: std::collections::HashSet<Uid> = self
            .by_user
            .keys()
            .chain(self.remote.values().flatten())
            .copied()
            .collect();
        Ok(HubStatus {
            node: self.node,
            connections: self.sessions.len(),
            sessions,
            online_users: online.len(),
            users,
            groups,
            messages,
            storage_bytes: self.store.size_on_disk(),
            storage_full: self.storage_full,
            log: self.store.applied().clone(),
            log_start: self.store.log_start(),
        })
    }
}
