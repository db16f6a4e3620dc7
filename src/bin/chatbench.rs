//! chatbench: measure a running chatd (or cluster) as users would.
//!
//! ```text
//! chatbench pairs  --addr 127.0.0.1:6000 --pairs 500 --window 4 --pid $(pidof chatd) [--ceiling]
//! chatbench pairs  --addr ... --rate 50000            # open loop
//! chatbench fanout --addr ... --members 500 --senders 2
//! chatbench drain  --addr ... --messages 10000
//! chatbench history --messages 1000000 --size 20 --catch-up  # runs its own nodes
//! chatbench idle   --addr ... --sessions 10000 --pid ...
//! chatbench logins --addr ... --users 1000 --concurrency 64
//! chatbench relay  --dialect classic --window 4      # the ceiling, same protocol
//! chatbench fuzz   --addr ... --go ... --c-room ... --epoll ... --duration 30
//! ```
//!
//! Every scenario registers its own users (with a random name prefix), so a
//! chatd meant for benchmarks runs with cheap password hashing and a high rate
//! limit; README's "Performance" section has the exact commands.

use chatd::bench::fuzz::{self, FuzzOpts, Ports};
use chatd::bench::scenarios::{
    self, DrainOpts, FanoutOpts, HistoryOpts, IdleOpts, LoginOpts, PairsOpts,
};
use chatd::bench::{ceiling, relay, Common, Proto, Report, Transport};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "chatbench",
    version,
    about = "Load and measure a chatd (or a cluster) over TCP."
)]
struct Cli {
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Threads for the load (default: one per core). Fewer threads leave
    /// more of a small machine to the server under test.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// chatd's client address; repeat (or comma-separate) to spread clients
    /// over a cluster's nodes.
    #[arg(long = "addr", value_delimiter = ',', default_value = "127.0.0.1:6000")]
    addrs: Vec<SocketAddr>,
    /// Which protocol the clients speak.
    #[arg(long, value_enum, default_value_t = Proto::Native)]
    dialect: Proto,
    /// What the clients connect over: TCP to chatd's client port, or
    /// WebSocket (chatd's protocol only; --addr is then the web listener's).
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
    /// chatd process ids, to report their memory (from /proc).
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Message text size, bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Password of the users the bench registers.
    #[arg(long, default_value = "bench-pw")]
    password: String,
    /// Registrations and logins in flight at once while setting up.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
}

impl Target {
    fn common(&self) -> Common {
        Common {
            addrs: self.addrs.clone(),
            proto: self.dialect,
            transport: self.transport,
            pids: self.pids.clone(),
            size: self.size.max(24),
            password: self.password.clone(),
            setup_concurrency: self.setup_concurrency.max(1),
        }
    }
}

#[derive(Args, Clone)]
struct Timing {
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

#[derive(Args, Clone)]
struct PairsArgs {
    /// Pairs of users; each user sends to its partner (2 clients per pair).
    #[arg(long, default_value_t = 500)]
    pairs: usize,
    /// Messages each user keeps in flight (sent, not yet received).
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Open loop: send this many messages per second in all, on schedule.
    #[arg(long)]
    rate: Option<f64>,
    #[command(flatten)]
    timing: Timing,
}

#[derive(Subcommand)]
enum Cmd {
    /// 1:1 chat between pairs of users.
    Pairs {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: PairsArgs,
        /// Then run the same load against the ceiling that speaks the same
        /// protocol (`relay --dialect`) and compare.
        #[arg(long)]
        ceiling: bool,
    },
    /// One group; some members send, every other member receives.
    Fanout {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 500)]
        members: usize,
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Messages each sender keeps not yet delivered to every member.
        #[arg(long, default_value_t = 8)]
        window: usize,
        #[command(flatten)]
        timing: Timing,
    },
    /// Queue messages for an offline user, then time its login.
    Drain {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Seconds between queueing and the login (the server checkpoints
        /// its memory to its database every second).
        #[arg(long, default_value_t = 2.0)]
        wait: f64,
    },
    /// Run a node of its own that stores messages; report what each costs
    /// on disk (log, tables, all; before and after the log is compacted),
    /// its start-up with them and its status, and (--catch-up) how long an
    /// empty node takes to catch up, from the log and by snapshot.
    History {
        /// The chatd binary (default: the one beside chatbench).
        #[arg(long)]
        chatd: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Message text size, bytes (at least 24).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Where the nodes' data directories go (default: a new directory,
        /// removed afterwards).
        #[arg(long)]
        work_dir: Option<std::path::PathBuf>,
        /// Also start empty nodes and time their catch-up.
        #[arg(long)]
        catch_up: bool,
    },
    /// Hold logged-in idle sessions; report server memory per session.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Seconds to hold them before measuring.
        #[arg(long, default_value_t = 3.0)]
        hold: f64,
    },
    /// Many logins at once (each one checks an argon2id hash).
    Logins {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Mutated requests of every dialect while a probe checks the server
    /// still answers; reports stalls, whether it went away, its memory.
    Fuzz {
        #[command(flatten)]
        target: Target,
        /// The Go chatroom port, if chatd has one.
        #[arg(long)]
        go: Option<SocketAddr>,
        /// The C chatroom port.
        #[arg(long)]
        c_room: Option<SocketAddr>,
        /// The epoll chatroom port.
        #[arg(long)]
        epoll: Option<SocketAddr>,
        /// Fuzzing connections per dialect.
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// Seconds.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The ceiling: the pairs load against a minimal in-memory server that
    /// parses and answers the same protocol (`native`, `classic`) without
    /// storage, or (`raw`) a relay of tab-separated lines with no JSON.
    Relay {
        #[command(flatten)]
        load: PairsArgs,
        /// Message text size, bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, value_enum, default_value_t = RelayDialect::Native)]
        dialect: RelayDialect,
    },
    /// Run a ceiling server (used by `relay` and `--ceiling`).
    #[command(hide = true)]
    RelayServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value_t = RelayDialect::Native)]
        dialect: RelayDialect,
    },
}

/// What a ceiling speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RelayDialect {
    /// chatd's protocol, parsed and answered like chatd.
    Native,
    /// The classic dialect, parsed and answered like chatd.
    Classic,
    /// Tab-separated lines, no JSON: what the machine forwards at all.
    Raw,
}

impl RelayDialect {
    fn of(proto: Proto) -> RelayDialect {
        match proto {
            Proto::Classic => RelayDialect::Classic,
            Proto::Relay => RelayDialect::Raw,
            Proto::Native => RelayDialect::Native,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RelayDialect::Native => "native",
            RelayDialect::Classic => "classic",
            RelayDialect::Raw => "raw",
        }
    }
}

fn timing(t: &Timing) -> (Duration, Duration) {
    (
        Duration::from_secs_f64(t.warmup.max(0.0)),
        Duration::from_secs_f64(t.duration.max(0.1)),
    )
}

fn pairs_opts(common: Common, a: &PairsArgs) -> PairsOpts {
    let (warmup, duration) = timing(&a.timing);
    PairsOpts {
        common,
        pairs: a.pairs.max(1),
        window: a.window.max(1),
        rate: a.rate,
        warmup,
        duration,
    }
}

/// Start a ceiling server process and run the pairs load against it.
async fn ceiling(a: &PairsArgs, size: usize, dialect: RelayDialect) -> Result<Report, String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["relay-server", "--dialect", dialect.name()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    let pid = child.id();
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let addr: Option<SocketAddr> = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|s| s.parse().ok());
    let result = match addr {
        Some(addr) => {
            let common = Common {
                addrs: vec![addr],
                proto: match dialect {
                    RelayDialect::Native => Proto::Native,
                    RelayDialect::Classic => Proto::Classic,
                    RelayDialect::Raw => Proto::Relay,
                },
                transport: Transport::Tcp,
                pids: vec![pid],
                size: size.max(24),
                password: "bench-pw".into(),
                setup_concurrency: 32,
            };
            scenarios::pairs(&pairs_opts(common, a)).await
        }
        None => Err("the relay did not start".to_string()),
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut r = result?;
    r.scenario = "ceiling".into();
    Ok(r)
}

fn show(json: bool, reports: &[Report]) {
    if json {
        let v = if reports.len() == 1 {
            serde_json::to_value(&reports[0])
        } else {
            serde_json::to_value(reports)
        };
        println!("{}", v.unwrap_or_default());
    } else {
        for (i, r) in reports.iter().enumerate() {
            if i > 0 {
                println!();
            }
            r.print();
        }
        if let [chatd, relay] = reports {
            if relay.delivered_per_sec > 0.0 {
                println!(
                    "\nchatd delivers {:.2}x what the ceiling delivers on this machine",
                    chatd.delivered_per_sec / relay.delivered_per_sec
                );
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    chatd::os::raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<Vec<Report>, String> = rt.block_on(async {
        match &cli.cmd {
            Cmd::Pairs {
                target,
                load,
                ceiling: with_ceiling,
            } => {
                let mut first = scenarios::pairs(&pairs_opts(target.common(), load)).await?;
                if target.transport == Transport::Ws {
                    first.proto.push_str(" over WebSocket");
                }
                let mut out = vec![first];
                if *with_ceiling {
                    out.push(ceiling(load, target.size, RelayDialect::of(target.dialect)).await?);
                }
                Ok(out)
            }
            Cmd::Fanout {
                target,
                members,
                senders,
                window,
                timing: t,
            } => {
                let (warmup, duration) = timing(t);
                let o = FanoutOpts {
                    common: target.common(),
                    members: *members,
                    senders: *senders,
                    window: (*window).max(1),
                    warmup,
                    duration,
                };
                Ok(vec![scenarios::fanout(&o).await?])
            }
            Cmd::Drain {
                target,
                messages,
                wait,
            } => {
                let o = DrainOpts {
                    common: target.common(),
                    messages: (*messages).max(1),
                    wait: Duration::from_secs_f64(wait.max(0.0)),
                };
                Ok(vec![scenarios::drain(&o).await?])
            }
            Cmd::History {
                chatd,
                messages,
                size,
                work_dir,
                catch_up,
            } => {
                let chatd = match chatd {
                    Some(p) => p.clone(),
                    None => std::env::current_exe()
                        .map_err(|e| e.to_string())?
                        .with_file_name("chatd"),
                };
                let o = HistoryOpts {
                    chatd,
                    messages: (*messages).max(1),
                    size: (*size).max(24),
                    work_dir: work_dir.clone(),
                    catch_up: *catch_up,
                };
                Ok(vec![scenarios::history(&o).await?])
            }
            Cmd::Idle {
                target,
                sessions,
                hold,
            } => {
                let o = IdleOpts {
                    common: target.common(),
                    sessions: (*sessions).max(1),
                    hold: Duration::from_secs_f64(hold.max(0.0)),
                };
                Ok(vec![scenarios::idle(&o).await?])
            }
            Cmd::Logins {
                target,
                users,
                concurrency,
            } => {
                let o = LoginOpts {
                    common: target.common(),
                    users: (*users).max(1),
                    concurrency: (*concurrency).max(1),
                };
                Ok(vec![scenarios::logins(&o).await?])
            }
            Cmd::Fuzz {
                target,
                go,
                c_room,
                epoll,
                clients,
                duration,
                seed,
            } => {
                let o = FuzzOpts {
                    common: target.common(),
                    ports: Ports {
                        go: *go,
                        c: *c_room,
                        epoll: *epoll,
                    },
                    clients: *clients,
                    duration: Duration::from_secs_f64(duration.max(0.1)),
                    seed: *seed,
                };
                Ok(vec![fuzz::fuzz(&o).await?])
            }
            Cmd::Relay {
                load,
                size,
                dialect,
            } => Ok(vec![ceiling(load, *size, *dialect).await?]),
            Cmd::RelayServer { listen, dialect } => {
                let served = match dialect {
                    RelayDialect::Raw => relay::serve(*listen).await,
                    RelayDialect::Native | RelayDialect::Classic => ceiling::serve(*listen).await,
                };
                served.map_err(|e| e.to_string())?;
                Ok(Vec::new())
            }
        }
    });
    match result {
        Ok(reports) => {
            show(cli.json, &reports);
            // A run that lost messages or saw errors is a failed run.
            if reports.iter().any(|r| r.lost > 0 || r.errors > 0) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("chatbench: {e}");
            ExitCode::FAILURE
        }
    }
}
