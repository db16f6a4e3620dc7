//! The admin protocol, typed: what `chatctl` sends over `chatd.sock`, and
//! what comes back. The socket, the hub and `chatctl` all use these types,
//! so neither side builds JSON by hand. On the wire a request is an object
//! tagged by `"cmd"`; a reply is `{"ok":true, ...its fields}` or
//! `{"ok":false,"error":"..."}` (proto.md lists them).

use crate::api::Who;
use crate::ids::{Gid, NodeId, Uid};
use crate::store::Position;
use serde::{Deserialize, Serialize};

pub use crate::mesh::{ClusterStatus, MemberStatus};

/// A user, by id or by name (a name of digits is taken as an id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserArg {
    Id(u32),
    Name(String),
}

impl UserArg {
    pub fn parse(s: &str) -> UserArg {
        match s.parse() {
            Ok(n) => UserArg::Id(n),
            Err(_) => UserArg::Name(s.to_string()),
        }
    }

    pub fn who(&self) -> Who {
        match self {
            UserArg::Id(n) => Who::Id(Uid(*n)),
            UserArg::Name(s) => match s.parse::<u32>() {
                Ok(n) => Who::Id(Uid(n)),
                Err(_) => Who::Name(s.clone()),
            },
        }
    }
}

fn page() -> usize {
    100
}

/// Every request `chatd.sock` takes. Those without fields are empty
/// structs, not unit variants: serde refuses unknown fields only in
/// structs, and a typo in a field should never be taken silently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Cluster {},
    Digest {},
    Users {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<String>,
        #[serde(default)]
        offset: usize,
        #[serde(default = "page")]
        limit: usize,
    },
    User {
        user: UserArg,
    },
    UserCreate {
        name: String,
        password: String,
    },
    UserPassword {
        user: UserArg,
        password: String,
    },
    UserBan {
        user: UserArg,
    },
    UserUnban {
        user: UserArg,
    },
    UserDelete {
        user: UserArg,
    },
    Sessions {},
    Kick {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserArg>,
    },
    Groups {
        #[serde(default)]
        offset: usize,
        #[serde(default = "page")]
        limit: usize,
    },
    Group {
        group: u32,
    },
    GroupDissolve {
        group: u32,
    },
    Broadcast {
        text: String,
    },
    /// The reply line is followed by the backup file itself.
    Backup {},
}

/// Every `cmd` there is (a request's tag), for a clear answer to one that
/// is not.
pub const COMMANDS: [&str; 17] = [
    "status",
    "cluster",
    "digest",
    "users",
    "user",
    "user_create",
    "user_password",
    "user_ban",
    "user_unban",
    "user_delete",
    "sessions",
    "kick",
    "groups",
    "group",
    "group_dissolve",
    "broadcast",
    "backup",
];

/// The most users or groups one page lists.
pub const PAGE_MAX: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    pub id: Uid,
    pub name: String,
    pub banned: bool,
    pub deleted: bool,
    pub online: bool,
    pub guest: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUser {
    pub id: Uid,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    pub session: u64,
    pub user: Option<Uid>,
    pub name: Option<String>,
    pub dialect: String,
    pub remote: String,
    pub node: NodeId,
    pub since_ms: u64,
}

/// A user with a session on another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSession {
    pub node: NodeId,
    pub user: Uid,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRow {
    pub id: Gid,
    pub name: String,
    pub desc: String,
    pub creator: Uid,
    pub members: usize,
    pub dissolved: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub id: Gid,
    pub name: String,
    pub desc: String,
    pub creator: Uid,
    pub dissolved: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    pub id: Uid,
    pub name: String,
    pub role: Option<String>,
    pub online: bool,
}

/// A log position read back from JSON, whose object keys are strings
/// (inside an untagged enum serde will not read them as numbers itself).
fn position<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Position, D::Error> {
    let raw = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.parse::<NodeId>()
                .map(|k| (k, v))
                .map_err(|_| serde::de::Error::custom(format!("{k:?} is not a node id")))
        })
        .collect()
}

/// Where a backup stops: the node, and its durable log position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPoint {
    pub node: NodeId,
    pub uuid: Option<String>,
    #[serde(deserialize_with = "position")]
    pub position: Position,
}

/// What the hub knows for `status`; the socket adds the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStatus {
    pub node: NodeId,
    pub connections: usize,
    pub sessions: usize,
    pub online_users: usize,
    pub users: u64,
    pub groups: u64,
    /// None while the disk is full (counting writes the tables out).
    pub messages: Option<u64>,
    pub storage_bytes: u64,
    pub storage_full: bool,
    #[serde(deserialize_with = "position")]
    pub log: Position,
    /// Where the log begins for each origin (compaction dropped what is
    /// before; the tables hold it).
    #[serde(default, deserialize_with = "position")]
    pub log_start: Position,
}

impl HubStatus {
    /// Operations the log holds now.
    pub fn log_kept(&self) -> u64 {
        self.log
            .iter()
            .map(|(o, end)| end.saturating_sub(self.log_start.get(o).copied().unwrap_or(0)))
            .sum()
    }
}

/// Every reply, by the request it answers. On the wire its fields stand
/// beside `"ok"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Status {
        #[serde(flatten)]
        hub: HubStatus,
        version: String,
        uptime_secs: u64,
        cluster_members: usize,
    },
    Cluster {
        #[serde(flatten)]
        status: ClusterStatus,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        standalone: bool,
    },
    Digest {
        digest: String,
        users: u64,
        groups: u64,
        messages: u64,
    },
    Users {
        users: Vec<UserRow>,
    },
    User {
        user: UserRow,
        created_ms: u64,
        sessions_here: usize,
        friends: usize,
        groups: Vec<Gid>,
    },
    Created {
        user: NamedUser,
    },
    /// A user's password was changed, or it was banned, unbanned or deleted.
    UserChanged {
        user: Uid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        banned: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deleted: Option<bool>,
    },
    Sessions {
        sessions: Vec<SessionRow>,
        elsewhere: Vec<RemoteSession>,
    },
    Kicked {
        kicked: usize,
    },
    Groups {
        groups: Vec<GroupRow>,
    },
    Group {
        group: GroupInfo,
        members: Vec<MemberRow>,
    },
    Dissolved {
        group: Gid,
        dissolved: bool,
    },
    Broadcast {
        online_here: usize,
    },
    BackupPoint(BackupPoint),
}

/// A reply as it is written: `ok` beside the reply's fields.
#[derive(Serialize)]
struct Answer<'a> {
    ok: bool,
    #[serde(flatten)]
    reply: &'a Reply,
}

#[derive(Serialize, Deserialize)]
struct Failed {
    ok: bool,
    error: String,
}

/// One reply line (without its newline).
pub fn reply_line(r: &Result<Reply, String>) -> String {
    let line = match r {
        Ok(reply) => serde_json::to_string(&Answer { ok: true, reply }),
        Err(error) => serde_json::to_string(&Failed {
            ok: false,
            error: error.clone(),
        }),
    };
    line.unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"cannot encode the reply: {e}\"}}"))
}

/// Read a reply line as the `T` a request expects, or its error.
pub fn parse_reply<T: serde::de::DeserializeOwned>(line: &str) -> Result<T, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("bad reply from chatd: {e}"))?;
    if v.get("ok") != Some(&serde_json::Value::Bool(true)) {
        let f: Failed =
            serde_json::from_value(v).map_err(|e| format!("bad reply from chatd: {e}"))?;
        return Err(f.error);
    }
    serde_json::from_value(v).map_err(|e| format!("unexpected reply from chatd: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_they_always_did() {
        let r: Request = serde_json::from_str(r#"{"cmd":"user_ban","user":"alice"}"#).unwrap();
        assert_eq!(
            r,
            Request::UserBan {
                user: UserArg::Name("alice".into())
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"users"}"#).unwrap();
        assert_eq!(
            r,
            Request::Users {
                query: None,
                offset: 0,
                limit: 100
            }
        );
        assert_eq!(UserArg::Name("42".into()).who(), Who::Id(Uid(42)));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"kick","sesion":1}"#).is_err());
        // Commands without fields too.
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","verbose":true}"#).is_err());
        let r: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(r, Request::Status {});
        assert_eq!(
            serde_json::to_string(&Request::Backup {}).unwrap(),
            r#"{"cmd":"backup"}"#
        );
    }

    #[test]
    fn positions_read_back_inside_replies() {
        let r = Ok(Reply::BackupPoint(BackupPoint {
            node: 2,
            uuid: None,
            position: [(1, 5), (2, 9)].into_iter().collect(),
        }));
        assert_eq!(Ok(parse_reply::<Reply>(&reply_line(&r)).unwrap()), r);
    }

    #[test]
    fn a_reply_stands_beside_ok_and_reads_back() {
        let r = Ok(Reply::UserChanged {
            user: Uid(7),
            banned: Some(true),
            deleted: None,
        });
        let line = reply_line(&r);
        assert_eq!(line, r#"{"ok":true,"user":7,"banned":true}"#);
        let back: Reply = parse_reply(&line).unwrap();
        assert_eq!(Ok(back), r);
        let e = reply_line(&Err("no user 9".into()));
        assert_eq!(parse_reply::<Reply>(&e), Err("no user 9".to_string()));
    }
}
