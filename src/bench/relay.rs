//! The ceiling: a minimal TCP relay, run as its own process like chatd.
//! A client says `hello ID` once; each line `TO<tab>TEXT` it sends then goes
//! to client TO as `FROM<tab>TEXT`. No JSON, no storage, no acknowledgement;
//! whatever is queued for a client goes out in one write. Whatever chatd
//! forwards is measured against what this machine forwards this way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Peers = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>>>;

/// Serve until the process ends; prints `listening ADDR` once bound.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    let peers: Peers = Arc::new(Mutex::new(HashMap::new()));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(client(stream, peers.clone()));
    }
}

async fn client(stream: TcpStream, peers: Peers) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut hello = String::new();
    if rd.read_line(&mut hello).await.is_err() {
        return;
    }
    let Some(me) = hello
        .trim()
        .strip_prefix("hello ")
        .and_then(|s| s.parse::<u32>().ok())
    else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    if let Ok(mut p) = peers.lock() {
        p.insert(me, tx);
    }
    tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(line) = rx.recv().await {
            out.clear();
            out.extend_from_slice(&line);
            while let Ok(more) = rx.try_recv() {
                out.extend_from_slice(&more);
            }
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let me_text = me.to_string();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + end];
            start += end + 1;
            let Some(tab) = line.iter().position(|b| *b == b'\t') else {
                continue;
            };
            let to: Option<u32> = std::str::from_utf8(&line[..tab])
                .ok()
                .and_then(|s| s.parse().ok());
            let Some(to) = to else { continue };
            let mut fwd = Vec::with_capacity(line.len() + 8);
            fwd.extend_from_slice(me_text.as_bytes());
            fwd.extend_from_slice(&line[tab..]);
            fwd.push(b'\n');
            let target = peers.lock().ok().and_then(|p| p.get(&to).cloned());
            if let Some(t) = target {
                let _ = t.send(fwd);
            }
        }
        pending.drain(..start);
    }
    if let Ok(mut p) = peers.lock() {
        p.remove(&me);
    }
}
