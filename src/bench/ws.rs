//! chatbench over WebSocket: the load speaks chatd's protocol in text
//! messages to the web listener's `/ws`. The rest of the bench reads and
//! writes newline-terminated values, so each connection is seen through a
//! byte stream: each message read becomes a line; the lines written become
//! messages (a small task per connection gathers what was written into
//! messages and flushes them together, as a browser's event loop would).

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// The reading side: messages as lines.
pub struct WsRead {
    rx: futures_util::stream::SplitStream<Ws>,
    line: Vec<u8>,
    at: usize,
}

impl AsyncRead for WsRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if self.at < self.line.len() {
                let n = buf.remaining().min(self.line.len() - self.at);
                let at = self.at;
                buf.put_slice(&self.line[at..at + n]);
                self.at += n;
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(self.rx.poll_next_unpin(cx)) {
                Some(Ok(Message::Text(t))) => {
                    self.line.clear();
                    self.line.extend_from_slice(t.as_bytes());
                    self.line.push(b'\n');
                    self.at = 0;
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

/// Open a WebSocket session at `addr`'s `/ws`: a reader, and a writer whose
/// lines become messages.
pub async fn connect(addr: SocketAddr) -> Result<(WsRead, tokio::io::DuplexStream), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .map_err(|e| format!("WebSocket handshake with {addr}: {e}"))?;
    let (mut tx, rx) = ws.split();
    let (ours, mut theirs) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut partial: Vec<u8> = Vec::new();
        loop {
            let n = match theirs.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            partial.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(end) = partial[start..].iter().position(|b| *b == b'\n') {
                let line = &partial[start..start + end];
                start += end + 1;
                let Ok(text) = std::str::from_utf8(line) else {
                    continue;
                };
                if tx.feed(Message::text(text)).await.is_err() {
                    return;
                }
            }
            partial.drain(..start);
            if tx.flush().await.is_err() {
                return;
            }
        }
        let _ = tx.close().await;
    });
    Ok((
        WsRead {
            rx,
            line: Vec::new(),
            at: 0,
        },
        ours,
    ))
}
