//! chatd: a self-contained chat server.
//!
//! One process keeps users, friends, groups and messages in an embedded sled
//! database (the bodies of its stored messages in files beside it) and serves clients over TCP: its own JSON protocol (also over
//! TLS, and over WebSocket for the web client it serves itself), and the
//! protocols of the seed systems' clients (the classic msgid ChatClient and
//! the sponge client on the main port; the Go, C and epoll chatrooms on
//! ports of their own), which all meet in one lobby.
//!
//! # How a request travels
//!
//! ```text
//! TCP / TLS bytes, WebSocket messages (web) -> transport -> session (framing, dialect)
//!     -> hub -> rules::decide -> apply -> store (layer)
//!                                             |-> log segment + group commit (flush)
//!                                             '-> routed effects -> sessions' queues -> writer waits
//!                                                 for the flush, encodes, writes one value per write
//! ```
//!
//! Each dialect's port has its listener; behind the session, the hub sees
//! only `api` types and what the session's dialect needs (`SessionTraits`).
//!
//! # Module map
//!
//! `tests/boundaries.rs` reads the sources and fails when a module breaks
//! its "must not" (by what it imports or calls).
//!
//! | module      | job                                                         | must not |
//! |-------------|-------------------------------------------------------------|----------|
//! | `server`    | start up, accept connections (the door every listener shares: slots, per-address caps), TLS handshakes, shut down | know chat rules |
//! | `web`       | the web listener: the embedded web client's files over HTTP(S), the WebSocket upgrade at `/ws` with its Origin check | know chat rules; speak anything but chatd's protocol over WebSocket |
//! | `transport` | what a session runs over (TCP, TLS, WebSocket): reading into a framer, writing encoded values | decode values |
//! | `tls`       | client TLS from PEM files, reloaded on SIGHUP; `init-tls` | serve the mesh (it has its own) |
//! | `session`   | one connection: read, throttle, decode; write, wait for durability, replay pending; match each reply with its request's context | touch the store |
//! | `framing`   | the one place that turns a connection's bytes into values: JSON streams (with the sponge keepalive), length prefixes, fixed records | parse JSON |
//! | `dialect`   | translate each client's wire format to/from `api` types, one file per dialect: `native`, `classic`, `sponge`, `go_chatroom`, `c_chatroom`, `epoll_chatroom`; say what each needs as `SessionTraits` | decide anything |
//! | `api`       | the shared vocabulary: commands, replies, events, error codes, session traits | do I/O |
//! | `hub`       | the one place that owns the store: a core given each input and the time (`mod.rs`: state, requests, commits; `input`, what it is given and returns; `batch`, the end of a batch and housekeeping (retention's `Expire`); `login`, `routing` (pushes, presence), `replay`, `lobby`, `admin`, `install` (a peer's snapshot)) that returns pushes and actions; `driver`, its thread, channel, timers and reply channels; `handle`, the way in; `outbox`, each session's bounded queue | block on a client; name a dialect; in the core: do I/O, read the clock, wait or exit |
//! | `rules`     | chat rules, one file per domain (accounts, friends, groups, messages, queries): permissions, validation, which ops a command makes, queries; the time is given | write, do I/O, or read the clock |
//! | `apply`     | the one function that applies an operation (merge rules)   | check permissions |
//! | `model`     | durable records and the operation type                      | hold behaviour |
//! | `store`     | every sled and log-file access: the log (`logfile`: numbered files of compressed segments, appended and synced by the commit thread, found through a sparse index, deleted whole once compacted behind the tables' checkpoint), the tables (checkpointed from in-memory layers; message chunks' bodies in files of their own, `bodies`, with pointers in sled), group commit, retention's sweep, reading snapshots of the tables, the node's identity (id, uuid), kept counts | know chat rules |
//! | `snapshot`  | a node's state as operations: which operations rebuild each stored record, read batch by batch off the hub's thread, with a check of the whole | apply them (the hub and restore do) |
//! | `mesh`      | the cluster: QUIC + mutual TLS links, replication of the log, snapshots for a node the logs cannot serve, presence and member gossip; `mesh::plan` decides what to send a peer, `mesh::members` keeps the member table (gossip, conflicts, offered ids, which links are up), `mesh::catchup` decides when to ask for a snapshot, all given the time; `mesh::harness` (tests) runs hub cores and plans on an in-memory network | apply operations (the hub does); do I/O or read the clock in `plan`, `members` and `catchup` |
//! | `admin`     | the local admin socket (`chatd.sock`) that `chatctl` talks to; `admin::proto`, its typed requests and replies (used by the socket, the hub and `chatctl`) | hold state; build JSON by hand |
//! | `backup`    | backup files (a snapshot and the log after it) and restore | run while chatd owns the directory |
//! | `telemetry` | Prometheus metrics and `/health` over HTTP                  | sit on a hot path (recording is the `metrics` facade) |
//! | `throttle`  | login throttling per account and per address: a state machine given `now` | do I/O or read the clock |
//! | `admission` | per-address caps on connections and on those not logged in | do I/O |
//! | `auth`      | argon2id hashing on the blocking pool                       | run on async workers |
//! | `tokens`    | session tokens: making them, taking them apart, their hash | store or check them (the rules do) |
//! | `ids`       | user/group/guest id blocks, the lobby's id, stamps and the hybrid logical clock | |
//! | `config`    | settings (flags, `CHATD_*` variables, TOML file) and limits | |
//! | `os`        | file-descriptor limit, signals, thread priority (nice, `SCHED_IDLE`), what the allocator is told about threads (`AllocatorHints`, `Quiet`), returning freed memory | name an allocator (the daemon's binary sets the hints) |
//! | `bench`     | `chatbench`: load clients, scenarios, the ceilings (a server of each protocol in memory, a raw relay) | use chatd's internals: it speaks only the wire protocols |
//!
//! Where is a command handled? A file of `dialect` (`native`, `classic`,
//! `sponge`, ...) decodes it into an `api::Command`; `rules::decide`
//! handles it. Where is it stored?
//! `apply::apply` writes its effect through `store::schema`. How does it reach
//! a user? `hub::Hub::route` (the hub's core) queues a push for each of the
//! user's sessions; the hub's driver puts it on their outboxes. How does it
//! reach another node? `mesh` streams the durable operation to every member,
//! whose hub applies it (`Input::PeerOps`) and routes it too.

pub mod admin;
pub mod admission;
pub mod api;
pub mod apply;
pub mod auth;
pub mod backup;
pub mod bench;
pub mod config;
pub mod dialect;
pub mod framing;
pub mod hub;
pub mod ids;
pub mod mesh;
pub mod model;
pub mod os;
pub mod rules;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod transport;
pub mod web;
