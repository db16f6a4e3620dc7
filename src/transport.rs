//! What a session runs over: plain TCP, TLS, or WebSocket (over either).
//! A session sees two halves: one that reads into its framer, one that
//! writes its encoded values. Over a byte stream the values go out back to
//! back in one write; over WebSocket each value is a text message of its
//! own (and only text messages come in).
//!
//! Plain TCP keeps its own halves, whose write usually completes without
//! waiting (the common case on a loaded server); the others are boxed.

use crate::framing::Framer;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::io;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A byte stream other than plain TCP (TLS, for now).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

pub type Boxed = Box<dyn ByteStream>;
pub type Ws = WebSocketStream<Gather<Boxed>>;

/// Gathers what is written until a flush, which writes it in one go; then
/// lets go of a large buffer. The WebSocket layer writes each message as it
/// comes (it keeps no buffer of its own then), and the session's writer
/// flushes after each batch: one syscall per batch, and no memory held by
/// an idle connection.
pub struct Gather<S> {
    inner: S,
    buf: Vec<u8>,
    done: usize,
}

/// Past this much gathered, a write waits for the socket first.
const GATHER_MAX: usize = 256 * 1024;

impl<S> Gather<S> {
    pub fn new(inner: S) -> Gather<S> {
        Gather {
            inner,
            buf: Vec::new(),
            done: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Gather<S> {
    fn poll_drain(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        while self.done < self.buf.len() {
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.done = 0;
        if self.buf.capacity() > 16 * 1024 {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gather<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gather<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        if self.buf.len() >= GATHER_MAX {
            std::task::ready!(self.poll_drain(cx))?;
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub enum Transport {
    Tcp(TcpStream),
    Bytes(Boxed),
    Ws(Box<Ws>),
}

pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Bytes(tokio::io::ReadHalf<Boxed>),
    Ws(SplitStream<Ws>),
}

pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Bytes(tokio::io::WriteHalf<Boxed>),
    Ws(SplitSink<Ws, Message>),
}

/// What a read brought.
pub enum Read {
    /// This many bytes went into the framer.
    Data(usize),
    /// The peer closed the connection.
    Closed,
    /// The peer sent something this transport does not carry.
    Refused(&'static str),
}

impl Transport {
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Transport::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Transport::Bytes(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Bytes(r), WriteHalf::Bytes(w))
            }
            Transport::Ws(s) => {
                let (w, r) = (*s).split();
                (ReadHalf::Ws(r), WriteHalf::Ws(w))
            }
        }
    }
}

impl ReadHalf {
    /// Read what has arrived into `framer`.
    pub async fn read_into(&mut self, framer: &mut Framer) -> io::Result<Read> {
        match self {
            ReadHalf::Tcp(r) => read_bytes(r, framer).await,
            ReadHalf::Bytes(r) => read_bytes(r, framer).await,
            ReadHalf::Ws(r) => loop {
                match r.next().await {
                    None => return Ok(Read::Closed),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(Message::Text(t))) => {
                        framer.push(t.as_bytes());
                        return Ok(Read::Data(t.len()));
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return Ok(Read::Refused(
                            "binary WebSocket messages are not used: send each request as JSON in a text message",
                        ))
                    }
                    Some(Ok(Message::Close(_))) => return Ok(Read::Closed),
                    // Pings are answered by the WebSocket layer itself.
                    Some(Ok(_)) => continue,
                }
            },
        }
    }
}

/// The buffer lives on the stack only while a read is made, so a waiting
/// connection holds none; and a short read tells tokio the socket is
/// drained, which saves the read that would only find it empty.
async fn read_bytes<R: AsyncRead + Unpin>(rd: &mut R, framer: &mut Framer) -> io::Result<Read> {
    use tokio::io::ReadBuf;
    std::future::poll_fn(|cx| {
        let mut buf = [0u8; 8192];
        let mut rb = ReadBuf::new(&mut buf);
        match std::pin::Pin::new(&mut *rd).poll_read(cx, &mut rb) {
            std::task::Poll::Ready(Ok(())) => {
                framer.push(rb.filled());
                let n = rb.filled().len();
                std::task::Poll::Ready(Ok(if n == 0 { Read::Closed } else { Read::Data(n) }))
            }
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}

impl WriteHalf {
    /// Bytes written at once without waiting, if this transport can (plain
    /// TCP); `None` when it must go through [`WriteHalf::write`].
    pub fn try_write(&self, bytes: &[u8]) -> Option<io::Result<usize>> {
        match self {
            WriteHalf::Tcp(w) => Some(match w.try_write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                r => r,
            }),
            _ => None,
        }
    }

    /// Write values: `bytes` back to back on a byte stream, `values` each a
    /// message of its own over WebSocket (one JSON value per message).
    pub async fn write<'a>(
        &mut self,
        bytes: &[u8],
        values: impl Iterator<Item = &'a [u8]>,
    ) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(w) => w.write_all(bytes).await,
            WriteHalf::Bytes(w) => {
                w.write_all(bytes).await?;
                w.flush().await
            }
            WriteHalf::Ws(w) => {
                for v in values {
                    let v = v.strip_suffix(b"\n").unwrap_or(v);
                    let text = String::from_utf8(v.to_vec()).map_err(io::Error::other)?;
                    w.feed(Message::text(text))
                        .await
                        .map_err(io::Error::other)?;
                }
                w.flush().await.map_err(io::Error::other)
            }
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = match self {
            WriteHalf::Tcp(w) => w.shutdown().await,
            WriteHalf::Bytes(w) => w.shutdown().await,
            WriteHalf::Ws(w) => w.close().await.map_err(io::Error::other),
        };
    }
}
