//! The chatd daemon: parse settings, serve until SIGINT or SIGTERM.

use chatd::config::Settings;
use chatd::server::Server;
use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "chatd", version, about = Settings::ABOUT, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create the cluster credentials (a CA certificate and key) in FILE.
    /// Give FILE to each node's first start with --cluster-key.
    InitCluster { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::InitCluster { file }) = cli.command {
        return match chatd::mesh::tls::init_cluster(&file) {
            Ok(()) => {
                println!("cluster credentials written to {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chatd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = cli.settings;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    chatd::os::raise_fd_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let server = match Server::start(settings).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        chatd::os::shutdown_signal().await;
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
