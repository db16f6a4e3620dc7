//! Starting and stopping chatd: open the store, start the hub, accept
//! connections, and on shutdown say goodbye and write everything down.

use crate::admin;
use crate::admission::Admission;
use crate::auth::Passwords;
use crate::config::{Limits, Live, Settings};
use crate::dialect::{Edge, Listen};
use crate::hub::{Hub, HubHandle};
use crate::mesh::{self, Mesh};
use crate::session::{self, Shared};
use crate::store::{Store, StoreOptions};
use crate::telemetry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running chatd.
pub struct Server {
    addr: SocketAddr,
    /// The dialects' own ports, as bound.
    dialect_addrs: Vec<(Listen, SocketAddr)>,
    metrics_addr: Option<SocketAddr>,
    hub: HubHandle,
    mesh: Option<Mesh>,
    limits: Live<Limits>,
    settings: Settings,
    stop_accepting: CancellationToken,
    acceptors: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn err(e: impl std::fmt::Display) -> StartError {
    StartError(e.to_string())
}

impl Server {
    pub async fn start(settings: Settings) -> Result<Server, StartError> {
        let started = Instant::now();
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
            StartError(format!(
                "cannot create data directory {}: {e}",
                settings.data_dir.display()
            ))
        })?;
        let mut opts = StoreOptions::at(settings.data_dir.join("db"));
        opts.cache_bytes = settings.cache_mb.max(8) << 20;
        opts.commit_delay = Duration::from_millis(settings.fault_commit_delay_ms);
        opts.no_flush = settings.unsafe_no_flush;
        if opts.no_flush {
            tracing::warn!(
                "--unsafe-no-flush: replies and deliveries do not wait for the disk; \
                 a crash loses what was acknowledged in the last second or so"
            );
        }
        let store = Store::open(opts).map_err(err)?;
        let prepared = match settings.mesh() {
            Some(m) => Some(
                mesh::prepare(&store, &settings.data_dir, m)
                    .await
                    .map_err(StartError)?,
            ),
            None => None,
        };
        let node = match &prepared {
            Some(p) => p.node,
            None => match mesh::stored_node(&store).map_err(StartError)? {
                Some(n) => n,
                None => {
                    mesh::store_node(&store, 1).map_err(StartError)?;
                    1
                }
            },
        };
        let limits = Live::new(settings.limits());
        let passwords = Passwords::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.hash_threads,
        )
        .map_err(StartError)?;
        let lobby = settings.lobby_needed();
        if let Some(name) = &lobby {
            crate::rules::check_group_name(name, &settings.limits())
                .map_err(|e| StartError(format!("--lobby: {}", e.message)))?;
        }
        let hub = Hub::spawn(store, node, limits.clone(), lobby).map_err(err)?;
        let mesh = prepared.map(|p| Mesh::start(p, hub.clone()));
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| StartError(format!("cannot listen on {}: {e}", settings.listen)))?;
        let addr = listener.local_addr().map_err(err)?;
        let mut listeners = vec![(Listen::Auto, listener)];
        let mut dialect_addrs = Vec::new();
        for (listen, at) in settings.dialect_listeners() {
            let l = TcpListener::bind(at).await.map_err(|e| {
                StartError(format!("cannot listen on {at} for --listen-dialect: {e}"))
            })?;
            dialect_addrs.push((listen, l.local_addr().map_err(err)?));
            listeners.push((listen, l));
        }
        let stop_accepting = CancellationToken::new();
        admin::serve(
            &settings.data_dir,
            hub.clone(),
            mesh.clone(),
            passwords.clone(),
            limits.clone(),
            stop_accepting.clone(),
        )
        .map_err(|e| {
            StartError(format!(
                "cannot open the admin socket {}: {e}",
                admin::socket_path(&settings.data_dir).display()
            ))
        })?;
        let metrics_addr = match settings.metrics_listen {
            Some(a) => Some(
                telemetry::serve(a, hub.clone(), mesh.clone(), stop_accepting.clone())
                    .await
                    .map_err(|e| StartError(format!("cannot serve metrics on {a}: {e}")))?,
            ),
            None => None,
        };
        // After the metrics recorder is in place: sessions' metric handles
        // are made here, once.
        let shared = Arc::new(Shared::new(hub.clone(), limits.clone(), passwords));
        let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
        let next_id = Arc::new(AtomicU64::new(1));
        let mut acceptors = Vec::new();
        let chat_ids = Arc::default();
        let admission = Arc::new(Admission::default());
        for (listen, listener) in listeners {
            acceptors.push(tokio::spawn(accept_loop(
                listener,
                Edge::sharing(listen, Arc::clone(&chat_ids)),
                shared.clone(),
                slots.clone(),
                next_id.clone(),
                admission.clone(),
                stop_accepting.clone(),
            )));
        }
        for (listen, at) in &dialect_addrs {
            if let Listen::Only(d) = listen {
                tracing::info!(dialect = d.name(), addr = %at, "dialect listening");
            }
        }
        tracing::info!(
            %addr,
            node,
            data_dir = %settings.data_dir.display(),
            elapsed = ?started.elapsed(),
            "chatd listening"
        );
        Ok(Server {
            addr,
            dialect_addrs,
            metrics_addr,
            hub,
            mesh,
            limits,
            settings,
            stop_accepting,
            acceptors,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where a dialect's own port is (`--listen-dialect`), by dialect name.
    pub fn dialect_addr(&self, name: &str) -> Option<SocketAddr> {
        let want = Listen::from_name(name)?;
        self.dialect_addrs
            .iter()
            .find(|(l, _)| *l == want)
            .map(|(_, a)| *a)
    }

    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// Where metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Whether the hub answers (for the watchdog).
    pub async fn alive(&self) -> bool {
        self.hub.ping(Duration::from_secs(2)).await
    }

    /// Take new settings where that makes sense without a restart (limits,
    /// the welcome notice); returns the changed settings that need one.
    pub fn reload(&self, new: &Settings) -> Vec<&'static str> {
        self.limits.set(new.limits());
        self.settings.restart_needed(new)
    }

    /// Stop accepting, say goodbye to every client, write everything down.
    pub async fn shutdown(self) {
        self.stop_accepting.cancel();
        for a in self.acceptors {
            let _ = a.await;
        }
        if let Some(m) = &self.mesh {
            m.shutdown();
        }
        self.hub.shutdown().await;
        tracing::info!("chatd stopped");
    }
}

/// Accept one listener's connections. Every listener shares the server's
/// connection slots and session numbering.
async fn accept_loop(
    listener: TcpListener,
    edge: Arc<Edge>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
    admission: Arc<Admission>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, usually: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            let why = "the server is full; try again later".to_string();
            tokio::spawn(refuse(stream, edge.clone(), why));
            continue;
        };
        let limits = shared.limits.get();
        let pass = match admission.admit(
            peer.ip(),
            limits.max_connections_per_address,
            limits.max_unauthenticated_per_address,
        ) {
            Ok(p) => p,
            Err(r) => {
                tracing::warn!(peer = %peer.ip(), "per-address limit reached; refusing");
                tokio::spawn(refuse(stream, edge.clone(), r.message()));
                continue;
            }
        };
        tune(&stream);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let edge = edge.clone();
        tokio::spawn(async move {
            metrics::gauge!("chatd_connections").increment(1.0);
            session::serve(stream, peer, id, shared, edge, pass).await;
            metrics::gauge!("chatd_connections").decrement(1.0);
            drop(slot);
        });
    }
}

fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Say why, in the listener's dialect (as far as it has a way to), and close.
async fn refuse(mut stream: TcpStream, edge: Arc<Edge>, why: String) {
    use tokio::io::AsyncWriteExt;
    let dialect = match edge.listen {
        Listen::Auto => crate::dialect::Dialect::Native,
        Listen::Only(d) => d,
    };
    let error = crate::api::Event::Error(crate::api::ChatError::new(
        crate::api::ErrorCode::LimitReached,
        why,
    ));
    let mut frames = crate::dialect::Frames::default();
    crate::dialect::encode_event(dialect, &error, &mut frames);
    let _ =
        tokio::time::timeout(Duration::from_secs(2), stream.write_all(frames.bytes_all())).await;
    let _ = stream.shutdown().await;
}
