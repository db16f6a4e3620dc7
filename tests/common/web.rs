//! Test clients for the web listener: WebSocket sessions (plain or over
//! TLS), HTTP requests, and a TLS client that trusts one certificate.

use super::{Client, Wire};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Upgrade `stream` to a WebSocket at `/ws`, sending `origin` if given.
/// Err: the HTTP status the server refused with.
pub async fn upgrade(stream: Box<dyn Io>, url: &str, origin: Option<&str>) -> Result<Client, u16> {
    let mut req = url.into_client_request().expect("request");
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(Client::over(Wire::Ws(Box::new(ws)))),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

pub async fn connect(web: SocketAddr, origin: Option<&str>) -> Result<Client, u16> {
    let tcp = TcpStream::connect(web).await.expect("connect");
    upgrade(Box::new(tcp), &format!("ws://{web}/ws"), origin).await
}

/// A TLS client that trusts exactly the certificate in `cert_pem`.
pub fn tls_connector(cert_pem: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` for the name `localhost`.
pub async fn tls_stream(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// The server's certificate (DER) as a TLS client sees it.
pub fn peer_cert(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

pub async fn send_text(ws: &mut Ws, text: String) {
    ws.send(Message::text(text)).await.expect("WebSocket send");
}

/// The next message, which must hold exactly one JSON value.
pub async fn read_value(ws: &mut Ws, deadline: tokio::time::Instant) -> Option<Value> {
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                    panic!("a message is not one JSON value ({e}): {:?}", t.as_str())
                }))
            }
            Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Binary(b)))) => panic!("the server sent a binary message: {b:?}"),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

pub async fn closed(ws: &mut Ws, deadline: tokio::time::Instant) -> bool {
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// One HTTP/1.1 exchange on a stream: status, head and body (the server
/// closes the connection, as asked).
pub async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> (u16, String, Vec<u8>) {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(super::WAIT, s.read_to_end(&mut all)).await;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, all[split + 4..].to_vec())
}

/// GET `path` with `Connection: close`.
pub async fn get(web: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let s = TcpStream::connect(web).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n");
    http_exchange(s, &req).await
}
