//! The web listener (`--web-listen`): the web client's files at `/`, and
//! chatd's protocol over WebSocket at `/ws`, over HTTPS and WSS when a
//! certificate is given.
//!
//! HTTP here is the small part of HTTP/1.1 a browser needs for this: GET and
//! HEAD of a few embedded files (with keep-alive and ETags) and the
//! WebSocket upgrade. Request bodies are refused; heads are bounded in size
//! and time. A WebSocket connection becomes a session like any other (same
//! limits, rate limits, backpressure, idle rules and metrics) once its
//! `Origin` is allowed, so another site's page cannot use a visitor's
//! browser to talk to chatd.

mod assets;
mod http;

pub use assets::{Asset, ASSETS};

use crate::config::Live;
use crate::dialect::{Dialect, Edge, Listen};
use crate::server::{accept, handshake, tune, Door, Entry};
use crate::tls::Tls;
use crate::transport::{Boxed, Gather, Transport};
use http::Head;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// How long a client may take to send a request's head...
const HEAD_TIME: Duration = Duration::from_secs(10);
/// ...and how long a kept-alive connection may wait for its next request.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Requests served on one connection before it is closed.
const MAX_REQUESTS: usize = 100;

/// Which pages may open WebSocket sessions: the listener's own (the
/// `Origin`'s host is the `Host` the request was sent to), those listed in
/// `--web-origin`, or any (`*`). Requests without an `Origin` are not from
/// a browser page, and are allowed (like a TCP client).
#[derive(Clone, Debug, Default)]
pub struct Origins {
    any: bool,
    listed: Vec<String>,
}

impl Origins {
    pub fn new(list: &[String]) -> Origins {
        let norm: Vec<String> = list
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        Origins {
            any: norm.iter().any(|o| o == "*"),
            listed: norm,
        }
    }

    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.any || self.listed.contains(&origin) {
            return true;
        }
        // Same host, whatever the scheme: behind a proxy that ends TLS the
        // page is https while this listener is not.
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        match (origin_host, host) {
            (Some(o), Some(h)) => o == h.trim().to_ascii_lowercase(),
            _ => false,
        }
    }
}

/// Accept web connections until told to stop.
pub async fn serve(
    listener: TcpListener,
    door: Arc<Door>,
    tls: Option<Arc<Tls>>,
    origins: Live<Origins>,
    stop: CancellationToken,
) {
    let edge = Edge::new(Listen::Only(Dialect::Web));
    while let Some((stream, peer)) = accept(&listener, &stop).await {
        let entry = door.admit(peer);
        tune(&stream);
        let (door, tls, origins, edge) = (door.clone(), tls.clone(), origins.clone(), edge.clone());
        tokio::spawn(async move {
            // What comes before the session (the TLS handshake, HTTP) runs
            // boxed, so its state is freed once the session starts: an idle
            // session's task holds only the session's own state.
            let session = Box::pin(async {
                let stream: Boxed = match &tls {
                    None => Box::new(stream),
                    Some(tls) => Box::new(handshake(tls, stream).await?),
                };
                let conn = Conn {
                    stream,
                    peer,
                    tls: tls.is_some(),
                };
                conn.run(entry, &door, &origins).await
            })
            .await;
            if let Some((entry, ws)) = session {
                door.serve(entry, ws, peer, edge).await;
            }
        });
    }
}

struct Conn {
    stream: Boxed,
    peer: SocketAddr,
    tls: bool,
}

impl Conn {
    /// Answer HTTP requests until one upgrades to a WebSocket: then the
    /// session to serve.
    async fn run(
        mut self,
        entry: Result<Entry, String>,
        door: &Door,
        origins: &Live<Origins>,
    ) -> Option<(Entry, Transport)> {
        let entry = match entry {
            Ok(e) => e,
            Err(why) => {
                let _ = self.respond(&http::text(503, &why), true, false).await;
                return None;
            }
        };
        let mut buf = Vec::new();
        for n in 0..MAX_REQUESTS {
            let wait = if n == 0 { HEAD_TIME } else { KEEP_ALIVE };
            let head = match tokio::time::timeout(wait, http::read_head(&mut self.stream, &mut buf))
                .await
            {
                Ok(Ok(Some(h))) => h,
                Ok(Ok(None)) | Err(_) => return None,
                Ok(Err(resp)) => {
                    let _ = self.respond(&resp, true, false).await;
                    return None;
                }
            };
            if head.is_websocket() {
                let ws = self.upgrade(head, buf, door, origins).await?;
                return Some((entry, ws));
            }
            let close = head.wants_close() || n + 1 == MAX_REQUESTS;
            let resp = http::route(&head);
            if self
                .respond(&resp, close, head.method == "HEAD")
                .await
                .is_err()
                || close
            {
                return None;
            }
        }
        None
    }

    async fn respond(
        &mut self,
        resp: &http::Response,
        close: bool,
        head_only: bool,
    ) -> std::io::Result<()> {
        let bytes = resp.to_bytes(close, head_only, self.tls);
        tokio::time::timeout(HEAD_TIME, self.stream.write_all(&bytes))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        self.stream.flush().await
    }

    /// Check the upgrade and its origin, and answer it.
    async fn upgrade(
        mut self,
        head: Head,
        rest: Vec<u8>,
        door: &Door,
        origins: &Live<Origins>,
    ) -> Option<Transport> {
        let origin = head.header("origin");
        if !origins.get().allows(origin, head.header("host")) {
            tracing::warn!(peer = %self.peer.ip(), origin = origin.unwrap_or(""), "WebSocket from a page of another site refused");
            let why = "pages of this origin may not open chatd sessions (see --web-origin)";
            let _ = self.respond(&http::text(403, why), true, false).await;
            return None;
        }
        let accept = match head.websocket_accept() {
            Ok(a) => a,
            Err(resp) => {
                let _ = self.respond(&resp, true, false).await;
                return None;
            }
        };
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        if self.stream.write_all(answer.as_bytes()).await.is_err() {
            return None;
        }
        let max = door.shared.limits.get().max_frame;
        // Past our own limit (which gets a clear error) a value is cut off
        // by the WebSocket layer itself.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(max * 2))
            .max_frame_size(Some(max * 2));
        let stream = Gather::new(self.stream);
        let ws =
            WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await;
        Some(Transport::Ws(Box::new(ws)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_pages_may_open_sessions() {
        let same = Origins::new(&[]);
        assert!(same.allows(None, Some("127.0.0.1:6080")), "not a browser");
        assert!(same.allows(Some("http://127.0.0.1:6080"), Some("127.0.0.1:6080")));
        assert!(same.allows(Some("https://Chat.Example"), Some("chat.example")));
        assert!(!same.allows(Some("http://evil.example"), Some("127.0.0.1:6080")));
        assert!(!same.allows(Some("http://127.0.0.1:6081"), Some("127.0.0.1:6080")));
        assert!(!same.allows(Some("null"), Some("127.0.0.1:6080")));
        assert!(!same.allows(Some("http://127.0.0.1:6080"), None));
        let listed = Origins::new(&["https://app.example/".into()]);
        assert!(listed.allows(Some("https://app.example"), Some("chat.example")));
        assert!(!listed.allows(Some("https://other.example"), Some("chat.example")));
        assert!(Origins::new(&["*".into()]).allows(Some("null"), None));
    }
}
