//! Starting and stopping chatd: open the store, start the hub, accept
//! connections, and on shutdown say goodbye and write everything down.

use crate::admin;
use crate::admission::{Admission, Pass};
use crate::auth::Passwords;
use crate::config::{Limits, Live, Settings};
use crate::dialect::{Edge, Listen};
use crate::hub::{Hub, HubHandle};
use crate::mesh::{self, Mesh};
use crate::session::{self, Shared};
use crate::store::{Store, StoreOptions};
use crate::telemetry;
use crate::tls::Tls;
use crate::transport::Transport;
use crate::web::Origins;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running chatd.
pub struct Server {
    addr: SocketAddr,
    /// The dialects' own ports, as bound.
    dialect_addrs: Vec<(Listen, SocketAddr)>,
    metrics_addr: Option<SocketAddr>,
    web_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    tls: Option<Arc<Tls>>,
    origins: Live<Origins>,
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
        opts.compact_delay = Duration::from_millis(settings.fault_compact_delay_ms);
        opts.no_flush = settings.unsafe_no_flush;
        opts.idle_writes = !settings.checkpoint_never_idle;
        if opts.no_flush {
            tracing::warn!(
                "--unsafe-no-flush: replies and deliveries do not wait for the disk; \
                 a crash loses what was acknowledged in the last second or so"
            );
        }
        let store = Store::open(opts).map_err(err)?;
        let prepared = match settings.mesh(mesh::remembered(&settings.data_dir)) {
            Some(m) => Some(
                mesh::prepare(&store, &settings.data_dir, m)
                    .await
                    .map_err(StartError)?,
            ),
            None => None,
        };
        let node = match &prepared {
            Some(p) => p.node,
            None => match store.node_id().map_err(StartError)? {
                Some(n) => n,
                None => {
                    store.set_node_id(1).map_err(StartError)?;
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
        let origins = Live::new(Origins::new(&settings.web_origin));
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
        let door = Arc::new(Door::new(shared, settings.max_connections));
        let mut acceptors = Vec::new();
        let chat_ids = Arc::default();
        for (listen, listener) in listeners {
            acceptors.push(tokio::spawn(accept_loop(
                listener,
                Edge::sharing(listen, Arc::clone(&chat_ids)),
                door.clone(),
                None,
                stop_accepting.clone(),
            )));
        }
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(c), Some(k)) => Some(Arc::new(Tls::new(c, k).map_err(StartError)?)),
            _ => None,
        };
        let mut tls_addr = None;
        if let (Some(at), Some(tls)) = (settings.tls_listen, &tls) {
            let l = TcpListener::bind(at)
                .await
                .map_err(|e| StartError(format!("cannot listen on {at} for --tls-listen: {e}")))?;
            let bound = l.local_addr().map_err(err)?;
            tracing::info!(addr = %bound, "TLS listening");
            tls_addr = Some(bound);
            acceptors.push(tokio::spawn(accept_loop(
                l,
                Edge::sharing(Listen::Auto, Arc::clone(&chat_ids)),
                door.clone(),
                Some(tls.clone()),
                stop_accepting.clone(),
            )));
        }
        let mut web_addr = None;
        if let Some(at) = settings.web_addr() {
            let l = TcpListener::bind(at).await.map_err(|e| {
                StartError(format!(
                    "cannot listen on {at} for the web client: {e} (--web-listen \"\" turns it off)"
                ))
            })?;
            let bound = l.local_addr().map_err(err)?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(addr = %bound, url = %format!("{scheme}://{bound}/"), "web listening");
            web_addr = Some(bound);
            acceptors.push(tokio::spawn(crate::web::serve(
                l,
                door.clone(),
                tls.clone(),
                origins.clone(),
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
            web_addr,
            tls_addr,
            tls,
            origins,
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

    /// Where the web client and WebSocket are served, if they are.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// Where chatd's protocol is served over TLS, if it is.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Whether the hub answers (for the watchdog).
    pub async fn alive(&self) -> bool {
        self.hub.ping(Duration::from_secs(2)).await
    }

    /// Take new settings where that makes sense without a restart (limits,
    /// the welcome notice, the web origins; the TLS files are read again);
    /// returns the changed settings that need one (`Settings::restart_needed`).
    pub fn reload(&self, new: &Settings) -> Vec<String> {
        self.limits.set(new.limits());
        self.origins.set(Origins::new(&new.web_origin));
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate read again"),
                Err(e) => tracing::error!("TLS certificate not reloaded, the old one stays: {e}"),
            }
        }
        self.settings.restart_needed(new)
    }

    /// Stop accepting, say goodbye to every client, write everything down.
    pub async fn shutdown(mut self) {
        self.stop_accepting.cancel();
        for a in std::mem::take(&mut self.acceptors) {
            let _ = a.await;
        }
        if let Some(m) = &self.mesh {
            m.shutdown();
        }
        self.hub.shutdown().await;
        tracing::info!("chatd stopped");
    }
}

/// A server dropped without [`Server::shutdown`] (an embedding program or a
/// test that ends) stops at once: its threads must not outlive it and go on
/// writing into a data directory that may be removed next.
impl Drop for Server {
    fn drop(&mut self) {
        self.stop_accepting.cancel();
        for a in &self.acceptors {
            a.abort();
        }
        if let Some(m) = &self.mesh {
            m.shutdown();
        }
        self.hub.halt(Duration::from_secs(10));
    }
}

/// What every listener shares: the connection slots, the session
/// numbering, the per-address caps, and what sessions need.
pub struct Door {
    pub shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
    admission: Arc<Admission>,
}

/// A connection let in: it holds a slot and its address's place until dropped.
pub struct Entry {
    _slot: OwnedSemaphorePermit,
    pass: Pass,
}

impl Door {
    fn new(shared: Arc<Shared>, max_connections: usize) -> Door {
        Door {
            shared,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            next_id: AtomicU64::new(1),
            admission: Arc::new(Admission::default()),
        }
    }

    /// Let a connection from `peer` in, or say why not.
    pub fn admit(&self, peer: SocketAddr) -> Result<Entry, String> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            return Err("the server is full; try again later".into());
        };
        let limits = self.shared.limits.get();
        match self.admission.admit(
            peer.ip(),
            limits.max_connections_per_address,
            limits.max_unauthenticated_per_address,
        ) {
            Ok(pass) => Ok(Entry { _slot: slot, pass }),
            Err(r) => {
                tracing::warn!(peer = %peer.ip(), "per-address limit reached; refusing");
                Err(r.message())
            }
        }
    }

    /// Serve a session on a connection that was let in.
    pub async fn serve(&self, entry: Entry, t: Transport, peer: SocketAddr, edge: Arc<Edge>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Entry { _slot, pass } = entry;
        metrics::gauge!("chatd_connections").increment(1.0);
        session::serve(t, peer, id, self.shared.clone(), edge, pass).await;
        metrics::gauge!("chatd_connections").decrement(1.0);
    }
}

/// Accept one listener's connections: plain TCP, or TLS with `tls`.
async fn accept_loop(
    listener: TcpListener,
    edge: Arc<Edge>,
    door: Arc<Door>,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
) {
    while let Some((stream, peer)) = accept(&listener, &stop).await {
        let entry = match door.admit(peer) {
            Ok(e) => e,
            Err(why) if tls.is_none() => {
                tokio::spawn(refuse(stream, edge.clone(), why));
                continue;
            }
            // Before the handshake there is no way to say why.
            Err(_) => continue,
        };
        tune(&stream);
        let (door, edge, tls) = (door.clone(), edge.clone(), tls.clone());
        tokio::spawn(async move {
            let t = match tls {
                None => Transport::Tcp(stream),
                // Boxed: its state is freed when the session starts.
                Some(tls) => match Box::pin(handshake(&tls, stream)).await {
                    Some(s) => Transport::Bytes(Box::new(s)),
                    None => return,
                },
            };
            door.serve(entry, t, peer, edge).await;
        });
    }
}

/// The next connection, or None once told to stop.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return None,
            a = listener.accept() => a,
        };
        match accepted {
            Ok(a) => return Some(a),
            Err(e) => {
                // Out of file descriptors, usually: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A TLS handshake, bounded in time (a client that never finishes it must
/// not hold its slot).
pub async fn handshake(
    tls: &Tls,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIME, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);

pub fn tune(stream: &TcpStream) {
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
