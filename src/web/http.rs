//! The HTTP/1.1 this listener speaks: read a request head (bounded), answer
//! with an embedded file or an error, or tell a WebSocket upgrade apart.

use super::assets::{self, Asset};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Most headers one request may have.
const MAX_HEADERS: usize = 64;

/// Every page's security headers: nothing but this server's own files may
/// run, load or be connected to, and no other site may frame the page.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub path: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    /// The value of a header (names are compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub fn wants_close(&self) -> bool {
        self.has_token("connection", "close")
            || (self.http10 && !self.has_token("connection", "keep-alive"))
    }

    fn path_only(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or("")
    }

    /// A request for `/ws` that asks to become a WebSocket.
    pub fn is_websocket(&self) -> bool {
        self.path_only() == "/ws" && self.has_token("upgrade", "websocket")
    }

    /// The `Sec-WebSocket-Accept` for a valid upgrade (RFC 6455, 4.2.1), or
    /// the response that says what is wrong with it.
    pub fn websocket_accept(&self) -> Result<String, Response> {
        if self.method != "GET" || self.http10 || !self.has_token("connection", "upgrade") {
            return Err(text(
                400,
                "a WebSocket upgrade is a GET with Connection: Upgrade",
            ));
        }
        if self.header("sec-websocket-version") != Some("13") {
            let mut r = text(426, "only WebSocket version 13 is spoken here");
            r.extra.push(("Sec-WebSocket-Version", "13".into()));
            return Err(r);
        }
        match self.header("sec-websocket-key") {
            Some(k) if k.trim().len() == 24 => Ok(
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.trim().as_bytes()),
            ),
            _ => Err(text(400, "missing or malformed Sec-WebSocket-Key")),
        }
    }
}

/// Read one request head into `buf` (which keeps what follows it). None:
/// the connection ended before one came. Err: the response that refuses it.
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Head>, Response> {
    loop {
        // A read may bring in more than the head: the bound is on where
        // the head ends, not on what has been read.
        let end = find_end(buf);
        let too_large = match end {
            Some(end) => end > MAX_HEAD,
            None => buf.len() >= MAX_HEAD,
        };
        if too_large {
            return Err(text(431, "request head too large"));
        }
        if let Some(end) = end {
            let head = parse(&buf[..end]);
            buf.drain(..end);
            return head.map(Some);
        }
        let mut chunk = [0u8; 4096];
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse(bytes: &[u8]) -> Result<Head, Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(text(400, "incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(text(431, "too many headers")),
        Err(e) => return Err(text(400, &format!("malformed request: {e}"))),
    }
    let head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        http10: req.version == Some(0),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    let has_body = head.header("transfer-encoding").is_some()
        || head
            .header("content-length")
            .is_some_and(|v| v.trim() != "0");
    if has_body {
        return Err(text(413, "this server takes no request bodies"));
    }
    Ok(head)
}

/// An answer to a request that is not an upgrade.
#[derive(Debug)]
pub struct Response {
    status: u16,
    mime: &'static str,
    body: std::borrow::Cow<'static, [u8]>,
    etag: Option<String>,
    extra: Vec<(&'static str, String)>,
}

/// A plain-text answer.
pub fn text(status: u16, message: &str) -> Response {
    Response {
        status,
        mime: "text/plain; charset=utf-8",
        body: format!("{message}\n").into_bytes().into(),
        etag: None,
        extra: Vec::new(),
    }
}

/// The response a request that is not an upgrade gets.
pub fn route(head: &Head) -> Response {
    if head.method != "GET" && head.method != "HEAD" {
        let mut r = text(405, "only GET and HEAD are served here");
        r.extra.push(("Allow", "GET, HEAD".into()));
        return r;
    }
    let path = head.path_only();
    if path == "/ws" {
        let mut r = text(
            426,
            "this is chatd's WebSocket endpoint: connect with a WebSocket client",
        );
        r.extra.push(("Upgrade", "websocket".into()));
        return r;
    }
    let Some(asset) = assets::find(path) else {
        return text(404, "no such page");
    };
    file(asset, head.header("if-none-match"))
}

fn file(a: &'static Asset, if_none_match: Option<&str>) -> Response {
    let etag = assets::etag(a);
    let fresh = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    Response {
        status: if fresh { 304 } else { 200 },
        mime: a.mime,
        body: if fresh {
            (&[][..]).into()
        } else {
            a.body.into()
        },
        etag: Some(etag.to_string()),
        extra: Vec::new(),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Response {
    pub fn to_bytes(&self, close: bool, head_only: bool, tls: bool) -> Vec<u8> {
        use std::fmt::Write;
        let mut h = String::with_capacity(768);
        let _ = write!(h, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        let _ = write!(h, "Content-Type: {}\r\n", self.mime);
        let _ = write!(h, "Content-Length: {}\r\n", self.body.len());
        if let Some(e) = &self.etag {
            let _ = write!(h, "ETag: {e}\r\nCache-Control: no-cache\r\n");
        } else {
            h.push_str("Cache-Control: no-store\r\n");
        }
        let _ = write!(h, "Content-Security-Policy: {CSP}\r\n");
        h.push_str("X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\nCross-Origin-Opener-Policy: same-origin\r\n");
        if tls {
            h.push_str("Strict-Transport-Security: max-age=31536000\r\n");
        }
        for (k, v) in &self.extra {
            let _ = write!(h, "{k}: {v}\r\n");
        }
        h.push_str(if close {
            "Connection: close\r\n\r\n"
        } else {
            "Connection: keep-alive\r\n\r\n"
        });
        let mut out = h.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Head, Response> {
        parse(raw.as_bytes())
    }

    #[test]
    fn requests_are_told_apart() {
        let h = head("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
        assert!(h.is_websocket());
        // RFC 6455's own example.
        assert_eq!(
            h.websocket_accept().unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let old = head("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
        assert_eq!(old.websocket_accept().unwrap_err().status, 426);
        let page = head("GET /?x=1 HTTP/1.0\r\n\r\n").unwrap();
        assert!(!page.is_websocket() && page.wants_close());
        assert_eq!(route(&page).status, 200);
        let post = head("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").unwrap_err();
        assert_eq!(post.status, 413);
        assert_eq!(head("BREW / HTCPCP/1.0\r\n\r\n").unwrap_err().status, 400);
        let del = head("DELETE / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(route(&del).status, 405);
        let missing = head("GET /nope HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(route(&missing).status, 404);
        let plain_ws = head("GET /ws HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(route(&plain_ws).status, 426);
    }

    #[test]
    fn a_page_carries_its_security_headers_and_revalidates() {
        let page = head("GET / HTTP/1.1\r\n\r\n").unwrap();
        let r = route(&page);
        let text = String::from_utf8_lossy(&r.to_bytes(false, true, true)).into_owned();
        assert!(text.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"));
        assert!(
            text.contains("X-Frame-Options: DENY") && text.contains("Strict-Transport-Security")
        );
        assert!(
            text.ends_with("Connection: keep-alive\r\n\r\n"),
            "HEAD has no body"
        );
        let tag = r.etag.clone().unwrap();
        let again = head(&format!("GET / HTTP/1.1\r\nIf-None-Match: {tag}\r\n\r\n")).unwrap();
        assert_eq!(route(&again).status, 304);
    }

    #[tokio::test]
    async fn heads_are_bounded_and_pipelined_requests_kept() {
        let mut buf = Vec::new();
        let mut two = &b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"[..];
        let a = read_head(&mut two, &mut buf).await.unwrap().unwrap();
        assert_eq!(a.path, "/a");
        let b = read_head(&mut two, &mut buf).await.unwrap().unwrap();
        assert_eq!(b.path, "/b");
        assert!(read_head(&mut two, &mut buf).await.unwrap().is_none());
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(40_000));
        let mut r = huge.as_bytes();
        let mut buf = Vec::new();
        assert!(read_head(&mut r, &mut buf).await.is_err());
        // 16 KiB exactly is a head; a byte more is not, even when the read
        // that brought it in also brought in its end.
        let sized = |n: usize| {
            let pad = n - "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad))
        };
        for (n, ok) in [
            (MAX_HEAD, true),
            (MAX_HEAD + 1, false),
            (MAX_HEAD + 3000, false),
        ] {
            let req = sized(n);
            let mut r = req.as_bytes();
            let mut buf = Vec::new();
            let got = read_head(&mut r, &mut buf).await;
            assert_eq!(got.is_ok(), ok, "a head of {n} bytes");
            if let Err(e) = got {
                assert_eq!(e.status, 431);
            }
        }
    }
}
