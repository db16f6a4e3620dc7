//! A TCP relay between a client and chatd that can fail the way networks
//! do: cut every connection, hold new ones without answering (a dead
//! network, not a refusal), or swallow what the server says (a reply lost
//! on the way).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASS: u8 = 0;
const MUTE: u8 = 1;
const HOLD: u8 = 2;

pub struct TcpRelay {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Connections made before this generation are cut.
    generation: Arc<AtomicU64>,
}

impl TcpRelay {
    pub async fn start(target: SocketAddr) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let generation = Arc::new(AtomicU64::new(0));
        let (m, g) = (mode.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (m, g) = (m.clone(), g.clone());
                tokio::spawn(async move {
                    // Held: nothing is answered until the network is back.
                    while m.load(Ordering::SeqCst) == HOLD {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let born = g.load(Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    pipe(client, server, m, g, born).await;
                });
            }
        });
        TcpRelay {
            addr,
            mode,
            generation,
        }
    }

    /// Cut every open connection; new ones wait until `restore`.
    pub fn cut_and_hold(&self) {
        self.mode.store(HOLD, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Let what the server sends vanish (the client's bytes still arrive).
    pub fn mute(&self) {
        self.mode.store(MUTE, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mode: Arc<AtomicU8>,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let alive = {
        let g = generation.clone();
        move || g.load(Ordering::SeqCst) == born
    };
    let alive2 = alive.clone();
    let up = async move {
        let mut buf = vec![0u8; 16384];
        loop {
            let n = tokio::select! {
                r = cr.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                _ = tokio::time::sleep(Duration::from_millis(20)) => { if alive() { continue } else { return } }
            };
            if !alive() || sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16384];
        loop {
            let n = tokio::select! {
                r = sr.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                _ = tokio::time::sleep(Duration::from_millis(20)) => { if alive2() { continue } else { return } }
            };
            if !alive2() {
                return;
            }
            if mode.load(Ordering::SeqCst) == MUTE {
                continue;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends both: dropping the halves closes the sockets.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
