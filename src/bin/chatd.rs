//! The chatd daemon: read the settings (flags, CHATD_* variables, config
//! file), serve until SIGINT or SIGTERM, reload settings on SIGHUP, and keep
//! systemd informed (READY, watchdog, STOPPING) when it runs under it.

use chatd::config::{self, Settings};
use chatd::server::Server;
use clap::Parser;
use sd_notify::NotifyState;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

/// jemalloc rather than glibc's malloc: the hub allocates what sessions
/// and the checkpoint thread free, and glibc spent a quarter of chatd's
/// time moving such blocks between its arenas, under a lock.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts:
/// - a background thread hands freed pages back to the system within about
///   a second of a burst's end, rather than when the next allocation
///   happens to look;
/// - no thread has a cache of free blocks unless it asks (see
///   `os::busy_thread`).
///
/// Slabs of a page for small blocks (`slab_sizes:1-16384:1|2560-2560:2` in
/// `_RJEM_MALLOC_CONF`) take RSS after a load from about 50 MB to 42–44,
/// for about 5 % more CPU per message and a millisecond or two of p99 at
/// 50,000 msg/s (README); they are left to hosts short of memory.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache:false\0";

/// What chatd's threads tell jemalloc (`os::AllocatorHints`).
mod hints {
    use std::ffi::{c_void, CStr};
    use std::ptr::null_mut;

    /// Set one of jemalloc's values. A refusal leaves jemalloc as it was,
    /// which is only less frugal; the tests check that each is accepted.
    fn set<T>(name: &CStr, mut value: T) {
        // SAFETY: a NUL-terminated name, and a value of the type and size
        // jemalloc documents for it.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                null_mut(),
                null_mut(),
                (&mut value as *mut T).cast::<c_void>(),
                std::mem::size_of::<T>(),
            );
        }
    }

    /// Run one of jemalloc's actions, which take no value (false: it
    /// refused).
    fn act(name: &CStr) -> bool {
        // SAFETY: a NUL-terminated name; no value read or written.
        unsafe {
            tikv_jemalloc_sys::mallctl(name.as_ptr(), null_mut(), null_mut(), null_mut(), 0) == 0
        }
    }

    /// Empties this thread's cache.
    const IDLE: &CStr = c"thread.idle";
    /// Every arena's free pages (4096 is jemalloc's "all arenas").
    const PURGE: &CStr = c"arena.4096.purge";

    pub fn cache() {
        set(c"thread.tcache.enabled", true);
    }

    pub fn apart() {
        // Reading `arenas.create` makes a new arena and says which.
        // SAFETY: jemalloc documents the value as an unsigned.
        if let Ok(arena) = unsafe { tikv_jemalloc_ctl::raw::read::<u32>(b"arenas.create\0") } {
            set(c"thread.arena", arena);
        }
    }

    pub fn quiet() {
        act(IDLE);
        // Now rather than over the next second.
        act(PURGE);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn read<T: Copy>(name: &[u8]) -> T {
            // SAFETY: each name below is read as the type jemalloc gives it.
            unsafe { tikv_jemalloc_ctl::raw::read::<T>(name) }.expect("jemalloc answers")
        }

        #[test]
        fn a_thread_has_no_cache_until_it_asks() {
            std::thread::spawn(|| {
                assert!(!read::<bool>(b"thread.tcache.enabled\0"));
                cache();
                assert!(read::<bool>(b"thread.tcache.enabled\0"));
                let v: Vec<u64> = (0..1000).collect();
                drop(v);
                assert!(act(IDLE), "thread.idle is known");
                assert!(act(PURGE), "purging every arena is known");
            })
            .join()
            .expect("the thread ran");
        }

        #[test]
        fn the_tables_thread_is_served_by_an_arena_of_its_own() {
            let auto: u32 = read(b"opt.narenas\0");
            let arenas = std::thread::spawn(|| {
                let before: u32 = read(b"thread.arena\0");
                apart();
                (before, read::<u32>(b"thread.arena\0"))
            })
            .join()
            .expect("the thread ran");
            assert!(arenas.0 < auto, "threads start in the automatic arenas");
            assert!(arenas.1 >= auto, "then one made for it: {arenas:?}");
        }
    }
}

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
    /// Write a self-signed TLS certificate (DIR/cert.pem, DIR/key.pem) for
    /// trying out HTTPS and --tls-listen; browsers will warn about it.
    InitTls {
        dir: PathBuf,
        /// A DNS name or IP address it is for (repeatable); default
        /// localhost, 127.0.0.1 and ::1.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

fn load(args: &[OsString]) -> Result<Cli, clap::Error> {
    config::parse::<Cli>(args, |c| c.settings.config.clone())
}

/// RUST_LOG wins over the `log` setting.
fn log_filter(settings: &Settings) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG: {e}")),
        _ => EnvFilter::try_new(&settings.log).map_err(|e| format!("log: {e}")),
    }
}

/// jemalloc's count of live bytes (its statistics are refreshed first).
fn heap_allocated() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read()
        .ok()
        .map(|b| b as u64)
}

fn main() -> ExitCode {
    chatd::os::tune_allocator();
    chatd::telemetry::set_heap_probe(heap_allocated);
    chatd::os::set_allocator_hints(chatd::os::AllocatorHints {
        cache: hints::cache,
        apart: hints::apart,
        quiet: hints::quiet,
    });
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match load(&args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Some(Command::InitCluster { file }) = &cli.command {
        let file = file.clone();
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
    if let Some(Command::InitTls { dir, names }) = cli.command {
        return match chatd::tls::init_tls(&dir, &names) {
            Ok((cert, key)) => {
                println!("certificate written to {}", cert.display());
                println!("key written to {}", key.display());
                println!(
                    "serve with: chatd --tls-cert {} --tls-key {}",
                    cert.display(),
                    key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chatd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = cli.settings;
    let filter = match log_filter(&settings) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("chatd: invalid log filter, {e}");
            return ExitCode::FAILURE;
        }
    };
    if settings.check_config {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    let (filter, filter_handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    chatd::os::raise_fd_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(chatd::os::busy_thread)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match Server::start(settings).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let _ = sd_notify::notify(
            false,
            &[NotifyState::Ready, NotifyState::Status("serving")],
        );
        let mut watchdog_usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
            .then(|| Duration::from_micros(watchdog_usec / 2));
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let stop = chatd::os::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = async { hup.as_mut().expect("checked").recv().await }, if hup.is_some() => {
                    let _ = sd_notify::notify(false, &[NotifyState::Reloading]);
                    match load(&args) {
                        Ok(cli) => {
                            let new = cli.settings;
                            let restart = server.reload(&new);
                            if std::env::var("RUST_LOG").is_err() {
                                match EnvFilter::try_new(&new.log) {
                                    Ok(f) => {
                                        let _ = filter_handle.reload(f);
                                    }
                                    Err(e) => tracing::warn!("log: {e}"),
                                }
                            }
                            if restart.is_empty() {
                                tracing::info!("settings reloaded");
                            } else {
                                tracing::warn!(settings = ?restart, "settings reloaded; these change only after a restart");
                            }
                        }
                        Err(e) => tracing::error!("settings not reloaded: {}", e.to_string().trim()),
                    }
                    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
                }
                _ = tokio::time::sleep(watchdog.unwrap_or(Duration::from_secs(3600))), if watchdog.is_some() => {
                    // Only a hub that answers keeps the watchdog quiet.
                    if server.alive().await {
                        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                    } else {
                        tracing::error!("the hub does not answer; not telling the watchdog");
                    }
                }
            }
        }
        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
