//! chatctl's command line.

use super::*;

#[derive(Parser)]
#[command(
    name = "chatctl",
    version,
    about = "Manage a running chatd through its admin socket."
)]
pub(super) struct Cli {
    /// chatd's data directory; its admin socket is DIR/chatd.sock.
    #[arg(
        long,
        env = "CHATD_DATA_DIR",
        default_value = "./chatd-data",
        global = true
    )]
    pub(super) data_dir: PathBuf,
    /// The admin socket, when it is not in the data directory.
    #[arg(long, env = "CHATCTL_SOCKET", global = true)]
    pub(super) socket: Option<PathBuf>,
    /// Print JSON (one object) instead of tables.
    #[arg(long, global = true)]
    pub(super) json: bool,
    #[command(subcommand)]
    pub(super) cmd: Cmd,
}

#[derive(Subcommand)]
pub(super) enum Cmd {
    /// Version, uptime, node, sessions, users, groups, messages, storage.
    Status,
    /// Cluster members: state, address, last contact, replication lag.
    Cluster,
    /// Fingerprint of the replicated state (equal on converged nodes).
    Digest,
    #[command(subcommand)]
    Users(UsersCmd),
    #[command(subcommand)]
    Sessions(SessionsCmd),
    #[command(subcommand)]
    Groups(GroupsCmd),
    /// Send a notice to everyone online, on every node.
    Broadcast { text: String },
    /// Write a consistent backup of the running chatd to FILE.
    Backup {
        file: PathBuf,
        /// Back up a stopped chatd by reading its data directory.
        #[arg(long)]
        offline: bool,
    },
    /// Restore a backup into an empty --data-dir (chatd must not run there).
    Restore { file: PathBuf },
}

#[derive(Subcommand)]
pub(super) enum UsersCmd {
    /// Users in id order.
    List {
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// One user (by id or name).
    Show {
        user: String,
    },
    /// Users whose name contains QUERY (any case), or whose id it is.
    Search {
        query: String,
    },
    /// Create an account.
    Create {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Set a user's password.
    ResetPassword {
        user: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Close the user's sessions and refuse their logins (cluster-wide).
    Ban {
        user: String,
    },
    Unban {
        user: String,
    },
    /// Delete the account (final; its name stays reserved).
    Delete {
        user: String,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub(super) struct PasswordArgs {
    /// The password (visible to other local users in the process list).
    #[arg(long)]
    pub(super) password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub(super) password_stdin: bool,
}

impl PasswordArgs {
    pub(super) fn get(&self) -> Result<String, Failure> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("cannot read the password: {e}")))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

#[derive(Subcommand)]
pub(super) enum SessionsCmd {
    /// Sessions on this node, and users online on other nodes.
    List,
    /// Close a session (by id) or every session of a user on this node.
    Kick {
        session: Option<u64>,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
pub(super) enum GroupsCmd {
    List {
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// A group and its members.
    Show { group: u32 },
    /// Dissolve a group (final).
    Dissolve { group: u32 },
}
