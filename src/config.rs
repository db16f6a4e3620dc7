//! Settings of the `chatd` daemon. Every setting is a command-line flag, a
//! `CHATD_<NAME>` environment variable, and a key of the TOML file given with
//! `--config` (the flag's name with `_` for `-`). A flag wins over the
//! variable, the variable over the file, the file over the built-in default.
//! How: the file's values become clap's defaults before the command line is
//! parsed, so clap applies the precedence itself.

use crate::dialect::Listen;
use crate::ids::NodeId;
use crate::throttle::{Rate, ThrottleSettings};
use clap::Parser;
use serde::Serialize;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(name = "chatd", version, about = Settings::ABOUT)]
pub struct Settings {
    /// TOML file with settings (keys are the flag names with `_` for `-`).
    #[arg(long, env = "CHATD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Check the settings, print the effective ones, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,

    /// Log filter (`error`, `warn`, `info`, `debug`, or per module:
    /// `info,chatd::mesh=debug`). RUST_LOG, when set, wins.
    #[arg(long, env = "CHATD_LOG", default_value = "info")]
    pub log: String,

    /// Serve Prometheus metrics (`/metrics`) and health (`/health`) over
    /// HTTP on this address.
    #[arg(long, env = "CHATD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Where the database lives; created if missing.
    #[arg(long, env = "CHATD_DATA_DIR", default_value = "./chatd-data")]
    pub data_dir: PathBuf,

    /// Client TCP address (both dialects share it).
    #[arg(long, env = "CHATD_LISTEN", default_value = "127.0.0.1:6000")]
    pub listen: SocketAddr,

    /// HTTP address of the web client (`/`) and of chatd's protocol over
    /// WebSocket (`/ws`); HTTPS and WSS with --tls-cert and --tls-key.
    /// An empty value turns it off.
    #[arg(long, env = "CHATD_WEB_LISTEN", default_value = "127.0.0.1:6080",
          value_parser = check_optional_addr)]
    pub web_listen: String,

    /// Origins (`https://chat.example.com`) whose pages may open WebSocket
    /// sessions, besides the web listener's own (a page is always allowed
    /// on the host it was served from). Repeatable; comma-separated in
    /// CHATD_WEB_ORIGIN. `*` allows any origin.
    #[arg(long = "web-origin", env = "CHATD_WEB_ORIGIN", value_delimiter = ',')]
    pub web_origin: Vec<String>,

    /// PEM certificate chain for TLS: serves the web listener as HTTPS and
    /// WSS, and allows --tls-listen. Re-read on SIGHUP.
    #[arg(long, env = "CHATD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "CHATD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// TCP address for chatd's protocol over TLS (needs --tls-cert).
    #[arg(long, env = "CHATD_TLS_LISTEN", requires = "tls_cert")]
    pub tls_listen: Option<SocketAddr>,

    /// How long a session token lets a client log in again without its
    /// password, in days; a token in its second half of life is replaced
    /// when used, so a client that comes back within this stays logged in.
    #[arg(long, env = "CHATD_TOKEN_DAYS", default_value_t = 30.0)]
    pub token_days: f64,

    /// A dialect on a port of its own, `NAME=ADDR`, NAME one of go-chatroom,
    /// c-chatroom, epoll-chatroom (the seed chatrooms' clients), native,
    /// classic or sponge. Repeatable; comma-separated in
    /// CHATD_LISTEN_DIALECT. Off unless given.
    #[arg(long = "listen-dialect", env = "CHATD_LISTEN_DIALECT", value_delimiter = ',',
          value_parser = check_dialect_listen)]
    pub listen_dialect: Vec<String>,

    /// Name of the lobby: the one group (per cluster) where the room-style
    /// clients (Go, C and epoll chatrooms) chat, and which anyone may join.
    #[arg(long, env = "CHATD_LOBBY", default_value = "lobby")]
    pub lobby: String,

    /// Messages per second one user (or guest) may write into the lobby,
    /// on average...
    #[arg(long, env = "CHATD_LOBBY_RATE", default_value_t = 5.0)]
    pub lobby_rate: f64,

    /// ...and in a burst. Beyond it a lobby message is refused (rate_limited).
    #[arg(long, env = "CHATD_LOBBY_BURST", default_value_t = 20.0)]
    pub lobby_burst: f64,

    /// Largest JSON value a client may send, in bytes.
    #[arg(long, env = "CHATD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Longest message text, in bytes (UTF-8); at most 4096, which keeps
    /// every stored record small enough to be written and synced inline.
    #[arg(long, env = "CHATD_MAX_TEXT_BYTES", default_value_t = 4096,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub max_text_bytes: usize,

    /// Sessions one user may have open at once (devices).
    #[arg(long, env = "CHATD_MAX_SESSIONS_PER_USER", default_value_t = 8)]
    pub max_sessions_per_user: usize,

    /// Open client connections the server accepts at once.
    #[arg(long, env = "CHATD_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Friends plus pending requests one user may have.
    #[arg(long, env = "CHATD_MAX_FRIENDS", default_value_t = 2000)]
    pub max_friends: usize,

    /// Groups one user may belong to.
    #[arg(long, env = "CHATD_MAX_GROUPS_PER_USER", default_value_t = 500)]
    pub max_groups_per_user: usize,

    /// Members one group may have.
    #[arg(long, env = "CHATD_MAX_GROUP_MEMBERS", default_value_t = 2000)]
    pub max_group_members: usize,

    /// Requests per second one session may send on average...
    #[arg(long, env = "CHATD_RATE_LIMIT", default_value_t = 500.0)]
    pub rate_limit: f64,

    /// ...and in a burst. Beyond that, reading from the session slows down.
    #[arg(long, env = "CHATD_RATE_BURST", default_value_t = 1000.0)]
    pub rate_burst: f64,

    /// Replies and pushes waiting for one session; a session that falls this
    /// far behind is closed (its undelivered messages wait for its next login).
    /// Costs memory only when used.
    #[arg(long, env = "CHATD_SESSION_QUEUE", default_value_t = 4096)]
    pub session_queue: usize,

    /// Failed logins one account may have in a burst; then it gets one more
    /// every --login-account-interval-secs (a few a minute: online guessing
    /// is hopeless). An address that logged into the account before is not
    /// held back by it.
    #[arg(long, env = "CHATD_LOGIN_ACCOUNT_BURST", default_value_t = 5)]
    pub login_account_burst: u32,

    #[arg(
        long,
        env = "CHATD_LOGIN_ACCOUNT_INTERVAL_SECS",
        default_value_t = 20.0
    )]
    pub login_account_interval_secs: f64,

    /// Failed logins one client address may have in a burst (whatever
    /// accounts it tries); then one more every --login-address-interval-secs.
    #[arg(long, env = "CHATD_LOGIN_ADDRESS_BURST", default_value_t = 20)]
    pub login_address_burst: u32,

    #[arg(long, env = "CHATD_LOGIN_ADDRESS_INTERVAL_SECS", default_value_t = 6.0)]
    pub login_address_interval_secs: f64,

    /// Accounts one client address may register in a burst (each costs a
    /// password hash); then one more every --register-address-interval-secs.
    #[arg(long, env = "CHATD_REGISTER_ADDRESS_BURST", default_value_t = 20)]
    pub register_address_burst: u32,

    #[arg(
        long,
        env = "CHATD_REGISTER_ADDRESS_INTERVAL_SECS",
        default_value_t = 30.0
    )]
    pub register_address_interval_secs: f64,

    /// Close a connection that has not logged in for this long (seconds;
    /// time enough to type at a menu). 0 disables.
    #[arg(long, env = "CHATD_LOGIN_TIMEOUT_SECS", default_value_t = 120)]
    pub login_timeout_secs: u64,

    /// Open connections from one client address at once.
    #[arg(long, env = "CHATD_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 128)]
    pub max_connections_per_address: usize,

    /// Connections from one client address that have not logged in, at once.
    #[arg(
        long,
        env = "CHATD_MAX_UNAUTHENTICATED_PER_ADDRESS",
        default_value_t = 16
    )]
    pub max_unauthenticated_per_address: usize,

    /// Remove messages older than this from history (and from every
    /// queue), on every node of the cluster alike: the shortest any node
    /// asks for is what the cluster keeps. Seconds; 0 keeps history for ever.
    #[arg(long, env = "CHATD_HISTORY_MAX_AGE_SECS", default_value_t = 0)]
    pub history_max_age_secs: u64,

    /// Stop delivering a message nobody received within this long (it
    /// stays in history while that keeps it). Seconds; 0: until delivered.
    #[arg(long, env = "CHATD_QUEUE_MAX_AGE_SECS", default_value_t = 0)]
    pub queue_max_age_secs: u64,

    /// Keep this much of the operation log (by age) after the tables hold
    /// it: a node away for less catches up from the log, one away longer
    /// (or new) by snapshot. Older operations are compacted away. Seconds.
    #[arg(long, env = "CHATD_LOG_KEEP_SECS", default_value_t = 86_400)]
    pub log_keep_secs: u64,

    /// Close a native-protocol session that sends nothing for this long
    /// (clients send "ping" to stay connected). Seconds; 0 disables.
    #[arg(long, env = "CHATD_IDLE_TIMEOUT_SECS", default_value_t = 90)]
    pub idle_timeout_secs: u64,

    /// Pause between two writes to a classic client, whose reader cannot
    /// separate two JSON values that arrive in one read. Milliseconds.
    #[arg(long, env = "CHATD_CLASSIC_PUSH_GAP_MS", default_value_t = 20)]
    pub classic_push_gap_ms: u64,

    /// Notice pushed to every session after login (empty: none).
    #[arg(long, env = "CHATD_WELCOME", default_value = "")]
    pub welcome: String,

    /// argon2id memory cost in KiB (OWASP recommends 19456).
    #[arg(long, env = "CHATD_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,

    /// argon2id iterations.
    #[arg(long, env = "CHATD_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Threads that hash passwords (each holds one argon2 memory block
    /// while busy). 0: one per core, at most 4.
    #[arg(long, env = "CHATD_HASH_THREADS", default_value_t = 0)]
    pub hash_threads: usize,

    /// sled page cache in MiB. Recent changes are served from memory
    /// anyway (the layers not yet checkpointed); a bigger cache shortens
    /// checkpoints, and with them the latency tail under load, for
    /// resident memory.
    #[arg(long, env = "CHATD_CACHE_MB", default_value_t = 16)]
    pub cache_mb: u64,

    /// Keep the checkpoint thread at nice 10 throughout, never in
    /// SCHED_IDLE while it writes. For hosts whose cores other programs
    /// keep busy, where a thread that waits for an idle core falls behind
    /// (README, Performance).
    #[arg(long, env = "CHATD_CHECKPOINT_NEVER_IDLE")]
    pub checkpoint_never_idle: bool,

    /// Free disk space (MiB) below which chatd takes no new changes
    /// (`storage_full`) and serves reads, logins and presence only, until
    /// space returns.
    #[arg(long, env = "CHATD_MIN_FREE_MB", default_value_t = 64)]
    pub min_free_mb: u64,

    /// UDP address for the cluster mesh (QUIC). Without it (and without
    /// --join) chatd runs alone. Default with --join: the client address's
    /// IP, any free port.
    #[arg(long, env = "CHATD_MESH_LISTEN")]
    pub mesh_listen: Option<SocketAddr>,

    /// The mesh address other nodes dial, if not --mesh-listen's
    /// (needed when listening on 0.0.0.0).
    #[arg(long, env = "CHATD_MESH_ADVERTISE")]
    pub mesh_advertise: Option<String>,

    /// A cluster member's mesh address (HOST:PORT) to join through;
    /// repeatable, or comma-separated in CHATD_JOIN.
    #[arg(long = "join", env = "CHATD_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,

    /// The cluster CA file made by `chatd init-cluster`. Needed at a node's
    /// first start; the node then keeps its own certificate in its data dir.
    #[arg(long, env = "CHATD_CLUSTER_KEY")]
    pub cluster_key: Option<PathBuf>,

    /// This node's id (1-1000); chosen automatically when not given.
    #[arg(long, env = "CHATD_NODE_ID")]
    pub node_id: Option<u16>,

    /// A peer silent for this long is considered down (its users offline).
    #[arg(long, env = "CHATD_PEER_TIMEOUT_MS", default_value_t = 3000)]
    pub peer_timeout_ms: u64,

    /// UNSAFE: acknowledge and deliver without waiting for the disk. Writes
    /// still reach the disk within about a second (a background sync),
    /// but a crash of chatd or of the machine loses what was acknowledged
    /// since. For measuring what durability costs, and for throwaway data.
    #[arg(long, env = "CHATD_UNSAFE_NO_FLUSH")]
    pub unsafe_no_flush: bool,

    /// Fault injection for tests: wait this long before every commit flush,
    /// so anything that does not wait for durability shows up in a crash test.
    #[arg(
        long,
        env = "CHATD_FAULT_COMMIT_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    #[serde(skip)]
    pub fault_commit_delay_ms: u64,

    /// Fault injection: pause this long at each step of a log compaction
    /// (after the checkpoint is flushed, after the new start is recorded,
    /// and between removals), so that a crash test lands inside one.
    #[arg(
        long,
        env = "CHATD_FAULT_COMPACT_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    #[serde(skip)]
    pub fault_compact_delay_ms: u64,
}

fn split_dialect_listen(v: &str) -> Result<(Listen, SocketAddr), String> {
    let (name, addr) = v
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=ADDR, got {v:?}"))?;
    let listen = Listen::from_name(name.trim()).ok_or_else(|| {
        format!(
            "unknown dialect {:?} (one of: {})",
            name.trim(),
            Listen::NAMES
        )
    })?;
    let addr = addr
        .trim()
        .parse()
        .map_err(|e| format!("bad address {:?}: {e}", addr.trim()))?;
    Ok((listen, addr))
}

/// An address, or empty for "off".
fn check_optional_addr(v: &str) -> Result<String, String> {
    let v = v.trim();
    if !v.is_empty() {
        v.parse::<SocketAddr>()
            .map_err(|e| format!("bad address {v:?}: {e} (an empty value turns it off)"))?;
    }
    Ok(v.to_string())
}

fn check_dialect_listen(v: &str) -> Result<String, String> {
    split_dialect_listen(v).map(|_| v.trim().to_string())
}

/// Settings that must not come from the config file.
const NOT_IN_FILE: &[&str] = &["config", "check_config", "help", "version"];

/// The value of a TOML key as clap default strings.
fn toml_values(v: &toml::Value) -> Option<Vec<String>> {
    match v {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| toml_values(x).and_then(|v| v.into_iter().next()))
            .collect(),
        _ => None,
    }
}

fn as_defaults(values: &[String]) -> Vec<clap::builder::OsStr> {
    values.iter().map(clap::builder::OsStr::from).collect()
}

/// Check a file value with its argument's own parser: parse an empty command
/// line where that value is the default and nothing comes from the
/// environment.
fn check_value(cmd: &clap::Command, key: &str, values: &[String]) -> Result<(), String> {
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    let mut probe = cmd.clone();
    for id in &ids {
        probe = probe.mut_arg(id, |a| a.env(clap::builder::Resettable::Reset));
    }
    probe = probe.mut_arg(key, |a| a.default_values(as_defaults(values)));
    let name = probe.get_name().to_string();
    probe.try_get_matches_from([name]).map(|_| ()).map_err(|e| {
        let msg = e.to_string();
        msg.lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .to_string()
    })
}

/// Make every key of the config file the default of its argument. Errors
/// name the file and the key.
fn apply_file(mut cmd: clap::Command, path: &Path) -> Result<clap::Command, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    for (key, value) in &table {
        let bad = |what: String| format!("config file {}: key `{key}`: {what}", path.display());
        let known = cmd.get_arguments().any(|a| a.get_id() == key.as_str());
        if !known || NOT_IN_FILE.contains(&key.as_str()) {
            return Err(bad("no such setting".into()));
        }
        let values = toml_values(value).ok_or_else(|| bad("unsupported value".into()))?;
        check_value(&cmd, key, &values).map_err(bad)?;
        cmd = cmd.mut_arg(key.as_str(), |a| a.default_values(as_defaults(&values)));
    }
    Ok(cmd)
}

/// Parse a command line made of `C` (which holds the settings), with the
/// config file named in it (or in CHATD_CONFIG) layered under the flags and
/// variables.
pub fn parse<C>(
    args: &[OsString],
    config_of: impl Fn(&C) -> Option<PathBuf>,
) -> Result<C, clap::Error>
where
    C: Parser,
{
    let first = C::try_parse_from(args)?;
    let Some(path) = config_of(&first) else {
        return Ok(first);
    };
    let cmd = apply_file(C::command(), &path)
        .map_err(|e| C::command().error(clap::error::ErrorKind::InvalidValue, e))?;
    let matches = cmd.try_get_matches_from(args)?;
    C::from_arg_matches(&matches)
}

/// A value the whole server reads and SIGHUP may replace.
#[derive(Clone, Debug)]
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Live<T> {
    pub fn new(v: T) -> Live<T> {
        Live(Arc::new(RwLock::new(Arc::new(v))))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, v: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v);
    }
}

#[derive(Clone, Debug)]
pub struct MeshSettings {
    pub listen: SocketAddr,
    /// The address peers dial; defaults to `listen` (with its bound port).
    pub advertise: Option<String>,
    /// Peers to learn the cluster from.
    pub join: Vec<String>,
    /// The cluster CA file (needed until this node has its own certificate).
    pub cluster_key: Option<PathBuf>,
    /// A node silent this long is considered down.
    pub peer_timeout: Duration,
    /// Take this node id rather than choosing one.
    pub node_id: Option<NodeId>,
}

impl Settings {
    pub const ABOUT: &'static str = "A self-contained chat server: users, friends, groups and messages in an embedded database, JSON over TCP, nodes meshed over QUIC.";

    /// The mesh settings, if this node is part of a cluster: it was given
    /// --mesh-listen or --join, or its data directory belongs to a cluster.
    /// `remembered`: the settings it last ran with (`mesh::remembered`).
    pub fn mesh(&self, remembered: Option<(SocketAddr, Option<String>)>) -> Option<MeshSettings> {
        if self.mesh_listen.is_none() && self.join.is_empty() && remembered.is_none() {
            return None;
        }
        let (listen, advertise) = match (self.mesh_listen, &remembered) {
            (Some(l), _) => (l, self.mesh_advertise.clone()),
            (None, Some((l, a))) => (*l, self.mesh_advertise.clone().or(a.clone())),
            (None, None) => (
                SocketAddr::new(self.listen.ip(), 0),
                self.mesh_advertise.clone(),
            ),
        };
        Some(MeshSettings {
            listen,
            advertise,
            join: self.join.clone(),
            cluster_key: self.cluster_key.clone(),
            peer_timeout: Duration::from_millis(self.peer_timeout_ms.max(200)),
            node_id: self.node_id,
        })
    }

    /// The dialects with ports of their own.
    pub fn dialect_listeners(&self) -> Vec<(Listen, SocketAddr)> {
        self.listen_dialect
            .iter()
            .filter_map(|v| split_dialect_listen(v).ok())
            .collect()
    }

    /// Where the web listener is, if it is on.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_listen.parse().ok()
    }

    /// The lobby's name, when some listener serves room-style clients or
    /// the web client (which offers it to everyone).
    pub fn lobby_needed(&self) -> Option<String> {
        let rooms = self.dialect_listeners().iter().any(|(l, _)| l.is_room());
        (rooms || self.web_addr().is_some()).then(|| self.lobby.clone())
    }

    /// The settings as a TOML document (what `--check-config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Settings a running chatd cannot change without a restart, by name,
    /// where they differ: every setting but those a reload applies
    /// ([`RELOADED`]), so that one added later is reported until it is
    /// made reloadable. The TLS files are read again on a reload; a
    /// different path is a restart.
    pub fn restart_needed(&self, new: &Settings) -> Vec<String> {
        let table = |s: &Settings| match toml::Value::try_from(s) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let (old, new) = (table(self), table(new));
        let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        names
            .into_iter()
            .filter(|k| !RELOADED.contains(&k.as_str()) && old.get(*k) != new.get(*k))
            .cloned()
            .collect()
    }

    /// Defaults, with the data directory given: for tests and embedding.
    pub fn with_data_dir(dir: impl Into<PathBuf>) -> Settings {
        let mut s = Settings::parse_from(["chatd"]);
        s.data_dir = dir.into();
        s
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame_bytes.max(1024),
            max_text: self.max_text_bytes.max(1),
            max_sessions_per_user: self.max_sessions_per_user.max(1),
            max_friends: self.max_friends,
            max_groups_per_user: self.max_groups_per_user,
            max_group_members: self.max_group_members.max(2),
            rate_limit: self.rate_limit.max(1.0),
            rate_burst: self.rate_burst.max(1.0),
            session_queue: self.session_queue.max(16),
            idle_timeout: (self.idle_timeout_secs > 0)
                .then(|| Duration::from_secs(self.idle_timeout_secs)),
            classic_gap: Duration::from_millis(self.classic_push_gap_ms),
            lobby_rate: self.lobby_rate.max(0.1),
            lobby_burst: self.lobby_burst.max(1.0),
            throttle: ThrottleSettings {
                account: Rate {
                    burst: self.login_account_burst.max(1),
                    interval: secs(self.login_account_interval_secs),
                },
                address: Rate {
                    burst: self.login_address_burst.max(1),
                    interval: secs(self.login_address_interval_secs),
                },
                register: Rate {
                    burst: self.register_address_burst.max(1),
                    interval: secs(self.register_address_interval_secs),
                },
            },
            login_timeout: (self.login_timeout_secs > 0)
                .then(|| Duration::from_secs(self.login_timeout_secs)),
            max_connections_per_address: self.max_connections_per_address.max(1),
            max_unauthenticated_per_address: self.max_unauthenticated_per_address.max(1),
            min_free_bytes: self.min_free_mb << 20,
            welcome: (!self.welcome.is_empty()).then(|| self.welcome.clone()),
            token_lifetime: Duration::from_secs_f64((self.token_days * 86_400.0).clamp(1.0, 3.2e9)),
            history_max_age: (self.history_max_age_secs > 0)
                .then(|| Duration::from_secs(self.history_max_age_secs.min(1 << 40))),
            queue_max_age: (self.queue_max_age_secs > 0)
                .then(|| Duration::from_secs(self.queue_max_age_secs.min(1 << 40))),
            log_keep: Duration::from_secs(self.log_keep_secs.min(1 << 40)),
            ..Limits::default()
        }
    }
}

/// The settings a reload applies (`Server::reload`): the limits (what
/// [`Settings::limits`] reads), the web client's origins and the log
/// filter. `config` names the file itself.
pub const RELOADED: &[&str] = &[
    "config",
    "log",
    "web_origin",
    "max_frame_bytes",
    "max_text_bytes",
    "max_sessions_per_user",
    "max_friends",
    "max_groups_per_user",
    "max_group_members",
    "rate_limit",
    "rate_burst",
    "session_queue",
    "idle_timeout_secs",
    "classic_push_gap_ms",
    "lobby_rate",
    "lobby_burst",
    "login_account_burst",
    "login_account_interval_secs",
    "login_address_burst",
    "login_address_interval_secs",
    "register_address_burst",
    "register_address_interval_secs",
    "login_timeout_secs",
    "max_connections_per_address",
    "max_unauthenticated_per_address",
    "min_free_mb",
    "welcome",
    "token_days",
    "history_max_age_secs",
    "queue_max_age_secs",
    "log_keep_secs",
];

/// A duration from a setting in seconds (at least a millisecond).
fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.001, 1e9))
}

/// Limits on everything a client can drive, as the rules and sessions use them.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_frame: usize,
    pub max_text: usize,
    pub max_name_chars: usize,
    pub max_password_bytes: usize,
    pub max_desc_chars: usize,
    pub max_note_chars: usize,
    pub max_cid_bytes: usize,
    pub max_sessions_per_user: usize,
    pub max_friends: usize,
    pub max_groups_per_user: usize,
    pub max_group_members: usize,
    pub history_page: usize,
    pub history_page_max: usize,
    pub search_results: usize,
    pub search_scan: usize,
    pub rate_limit: f64,
    pub rate_burst: f64,
    pub session_queue: usize,
    pub idle_timeout: Option<Duration>,
    pub classic_gap: Duration,
    pub lobby_rate: f64,
    pub lobby_burst: f64,
    pub throttle: ThrottleSettings,
    pub login_timeout: Option<Duration>,
    pub max_connections_per_address: usize,
    pub max_unauthenticated_per_address: usize,
    pub min_free_bytes: u64,
    pub welcome: Option<String>,
    pub token_lifetime: Duration,
    /// Retention (`None`: keep).
    pub history_max_age: Option<Duration>,
    pub queue_max_age: Option<Duration>,
    /// How much of the log, by age, compaction leaves.
    pub log_keep: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 64 * 1024,
            max_text: 4096,
            // The classic schema's VARCHAR(50) and VARCHAR(200).
            max_name_chars: 50,
            max_password_bytes: 128,
            max_desc_chars: 200,
            max_note_chars: 200,
            max_cid_bytes: 64,
            max_sessions_per_user: 8,
            max_friends: 2000,
            max_groups_per_user: 500,
            max_group_members: 2000,
            history_page: 50,
            history_page_max: 200,
            search_results: 20,
            search_scan: 200_000,
            rate_limit: 500.0,
            rate_burst: 1000.0,
            session_queue: 4096,
            idle_timeout: Some(Duration::from_secs(90)),
            classic_gap: Duration::from_millis(20),
            lobby_rate: 5.0,
            lobby_burst: 20.0,
            throttle: ThrottleSettings::default(),
            login_timeout: Some(Duration::from_secs(120)),
            max_connections_per_address: 128,
            max_unauthenticated_per_address: 16,
            min_free_bytes: 64 << 20,
            welcome: None,
            token_lifetime: Duration::from_secs(30 * 86_400),
            history_max_age: None,
            queue_max_age: None,
            log_keep: Duration::from_secs(86_400),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Settings {
        let mut all = vec!["chatd", "--data-dir", "/nonexistent/chatd"];
        all.extend_from_slice(args);
        Settings::parse_from(all)
    }

    #[test]
    fn a_reload_names_every_changed_setting_it_does_not_apply() {
        let old = parse(&[]);
        let applied = parse(&[
            "--max-text-bytes",
            "100",
            "--welcome",
            "hi",
            "--log",
            "debug",
            "--web-origin",
            "chat.example",
            "--token-days",
            "2",
        ]);
        assert!(old.restart_needed(&applied).is_empty());
        for (args, name) in [
            (&["--max-connections", "5"][..], "max_connections"),
            (&["--argon2-iterations", "3"], "argon2_iterations"),
            (&["--peer-timeout-ms", "9000"], "peer_timeout_ms"),
            (&["--unsafe-no-flush"], "unsafe_no_flush"),
            (&["--node-id", "7"], "node_id"),
            (&["--tls-cert", "c.pem", "--tls-key", "k.pem"], "tls_cert"),
            (&["--cache-mb", "64"], "cache_mb"),
            (&["--checkpoint-never-idle"], "checkpoint_never_idle"),
            (&["--listen", "127.0.0.1:1"], "listen"),
        ] {
            let needed = old.restart_needed(&parse(args));
            assert!(needed.iter().any(|n| n == name), "{args:?}: {needed:?}");
        }
    }

    #[test]
    fn every_reloaded_name_is_a_setting() {
        let cmd = Settings::command();
        let names: Vec<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).collect();
        for r in RELOADED {
            assert!(names.contains(r), "{r} is not a setting");
        }
    }
}
