//! Splitting a client's byte stream into values: the one place that
//! decides how a connection's bytes become values.
//!
//! * [`JsonStream`]: JSON values back to back, separated by newlines, NULs,
//!   other whitespace or nothing at all (chatd's protocol, the classic and
//!   sponge dialects). It finds where each value ends without parsing it
//!   (counting brackets outside strings), resuming where it stopped when
//!   more bytes arrive, so a value split over many reads costs one scan.
//!   It can skip the sponge client's keepalive text, the one thing on such
//!   a stream that is not JSON.
//! * [`LengthPrefixed`]: a 4-byte big-endian length, then that many bytes
//!   (the Go chatroom).
//! * [`Records`]: fixed-size binary records (the C and epoll chatrooms).
//! * [`Messages`]: values that arrive whole, one per WebSocket message.
//!
//! TCP splits and packs all of them any way it likes; each splitter yields
//! whole values only.

/// How a connection frames its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// JSON values separated by whitespace, NUL or nothing; `keepalive`:
    /// skip the sponge client's `keep this socket alive` text.
    JsonStream { keepalive: bool },
    /// 4-byte big-endian length, then the value; longer than `max` is an error.
    LengthPrefixed { max: usize },
    /// Fixed-size records.
    Records { size: usize },
    /// Each push is one whole value (a WebSocket message).
    Messages,
}

/// What the sponge client writes every five minutes to keep its socket open.
pub const KEEPALIVE: &[u8] = b"keep this socket alive";

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A value grew (or a length prefix announced one) past the limit.
    TooLarge,
}

/// A splitter of one of the framings.
pub enum Framer {
    Json(JsonStream),
    Length(LengthPrefixed),
    Records(Records),
    Messages(Messages),
}

impl Framer {
    /// `max`: the largest value accepted (records are their own size).
    pub fn new(framing: Framing, max: usize) -> Framer {
        match framing {
            Framing::JsonStream { keepalive } => {
                let mut s = JsonStream::new(max);
                s.skip_keepalive = keepalive;
                Framer::Json(s)
            }
            Framing::LengthPrefixed { max: m } => Framer::Length(LengthPrefixed::new(m.min(max))),
            Framing::Records { size } => Framer::Records(Records::new(size)),
            Framing::Messages => Framer::Messages(Messages::new(max)),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        match self {
            Framer::Json(s) => s.push(data),
            Framer::Length(s) => s.buf.push(data),
            Framer::Records(s) => s.buf.push(data),
            Framer::Messages(s) => s.push(data),
        }
    }

    pub fn next_value(&mut self) -> Result<Option<&[u8]>, FrameError> {
        match self {
            Framer::Json(s) => s.next_value(),
            Framer::Length(s) => s.next_value(),
            Framer::Records(s) => Ok(s.next_value()),
            Framer::Messages(s) => s.next_value(),
        }
    }

    /// Bytes received but not yet returned as part of a value.
    pub fn buffered(&self) -> usize {
        match self {
            Framer::Json(s) => s.buffered(),
            Framer::Length(s) => s.buf.len(),
            Framer::Records(s) => s.buf.len(),
            Framer::Messages(s) => s.waiting.iter().map(Vec::len).sum(),
        }
    }

    /// Give back memory an idle connection does not need.
    pub fn shrink(&mut self) {
        match self {
            Framer::Json(s) => s.shrink(),
            Framer::Length(s) => s.buf.shrink(),
            Framer::Records(s) => s.buf.shrink(),
            Framer::Messages(s) => s.shrink(),
        }
    }
}

/// Received bytes not yet handed out, for the framings that know each
/// value's size before they look inside it.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    start: usize,
}

impl Pending {
    fn push(&mut self, data: &[u8]) {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 64 * 1024) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn peek(&self, n: usize) -> Option<&[u8]> {
        self.buf.get(self.start..self.start + n)
    }

    fn take(&mut self, skip: usize, n: usize) -> Option<&[u8]> {
        let from = self.start + skip;
        if self.buf.len() < from + n {
            return None;
        }
        self.start = from + n;
        Some(&self.buf[from..from + n])
    }

    fn shrink(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }
}

/// Values that arrive whole: each push is one value, handed out as it came.
pub struct Messages {
    waiting: std::collections::VecDeque<Vec<u8>>,
    current: Vec<u8>,
    max: usize,
}

impl Messages {
    pub fn new(max: usize) -> Messages {
        Messages {
            waiting: Default::default(),
            current: Vec::new(),
            max,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.waiting.push_back(data.to_vec());
    }

    pub fn next_value(&mut self) -> Result<Option<&[u8]>, FrameError> {
        match self.waiting.pop_front() {
            None => Ok(None),
            Some(v) if v.len() > self.max => Err(FrameError::TooLarge),
            Some(v) => {
                self.current = v;
                Ok(Some(&self.current))
            }
        }
    }

    fn shrink(&mut self) {
        if self.waiting.is_empty() {
            self.current = Vec::new();
            self.waiting = Default::default();
        }
    }
}

/// 4-byte big-endian length, then the value.
pub struct LengthPrefixed {
    buf: Pending,
    max: usize,
}

impl LengthPrefixed {
    pub fn new(max: usize) -> LengthPrefixed {
        LengthPrefixed {
            buf: Pending::default(),
            max,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.push(data);
    }

    pub fn next_value(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let Some(head) = self.buf.peek(4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge);
        }
        Ok(self.buf.take(4, len))
    }
}

/// Fixed-size records.
pub struct Records {
    buf: Pending,
    size: usize,
}

impl Records {
    pub fn new(size: usize) -> Records {
        Records {
            buf: Pending::default(),
            size: size.max(1),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.push(data);
    }

    pub fn next_value(&mut self) -> Option<&[u8]> {
        if self.buf.len() < self.size {
            return None;
        }
        self.buf.take(0, self.size)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// Between values: skipping separators.
    Between,
    /// Inside an object or array.
    Nested { depth: u32, in_str: bool, esc: bool },
    /// Inside a top-level string.
    Str { esc: bool },
    /// Inside a top-level number or literal; it ends at a separator or a
    /// bracket or quote (which belongs to the next value).
    Scalar,
}

fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0)
}

pub struct JsonStream {
    /// Skip [`KEEPALIVE`] where a value could start.
    pub skip_keepalive: bool,
    buf: Vec<u8>,
    /// Start of the value being scanned (or of unscanned bytes).
    start: usize,
    /// Next byte to look at.
    pos: usize,
    scan: Scan,
    max: usize,
}

impl JsonStream {
    pub fn new(max: usize) -> JsonStream {
        JsonStream {
            skip_keepalive: false,
            buf: Vec::new(),
            start: 0,
            pos: 0,
            scan: Scan::Between,
            max,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 16 * 1024) {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as part of a value.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Give back memory an idle connection does not need.
    pub fn shrink(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
            self.pos = 0;
        }
    }

    /// The next complete value, if one is buffered.
    pub fn next_value(&mut self) -> Result<Option<&[u8]>, FrameError> {
        while self.pos < self.buf.len() {
            if let Scan::Nested {
                in_str: true,
                esc: false,
                ..
            }
            | Scan::Str { esc: false } = self.scan
            {
                // In a string only a quote or a backslash matters, and most
                // of a message is its text: jump to the next one.
                let rest = &self.buf[self.pos..];
                self.pos += memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                if self.pos - self.start > self.max {
                    return Err(FrameError::TooLarge);
                }
                if self.pos == self.buf.len() {
                    break;
                }
            }
            let b = self.buf[self.pos];
            let mut done = false;
            match &mut self.scan {
                Scan::Between => {
                    if is_separator(b) {
                        self.start = self.pos + 1;
                    } else if b == KEEPALIVE[0] && self.skip_keepalive {
                        let rest = &self.buf[self.pos..];
                        let n = rest.len().min(KEEPALIVE.len());
                        if rest[..n] == KEEPALIVE[..n] {
                            if n < KEEPALIVE.len() {
                                // Maybe the keepalive, cut short: wait for more.
                                self.start = self.pos;
                                return Ok(None);
                            }
                            self.pos += KEEPALIVE.len();
                            self.start = self.pos;
                            continue;
                        }
                        self.start = self.pos;
                        self.scan = Scan::Scalar;
                    } else {
                        self.start = self.pos;
                        self.scan = match b {
                            b'{' | b'[' => Scan::Nested {
                                depth: 1,
                                in_str: false,
                                esc: false,
                            },
                            b'"' => Scan::Str { esc: false },
                            _ => Scan::Scalar,
                        };
                    }
                }
                Scan::Nested { depth, in_str, esc } => {
                    if *in_str {
                        if *esc {
                            *esc = false;
                        } else if b == b'\\' {
                            *esc = true;
                        } else if b == b'"' {
                            *in_str = false;
                        }
                    } else {
                        match b {
                            b'"' => *in_str = true,
                            b'{' | b'[' => *depth += 1,
                            b'}' | b']' => {
                                *depth -= 1;
                                done = *depth == 0;
                            }
                            _ => {}
                        }
                    }
                }
                Scan::Str { esc } => {
                    if *esc {
                        *esc = false;
                    } else if b == b'\\' {
                        *esc = true;
                    } else if b == b'"' {
                        done = true;
                    }
                }
                Scan::Scalar => {
                    if is_separator(b) || matches!(b, b'{' | b'[' | b'"') {
                        // The value ended just before this byte.
                        self.scan = Scan::Between;
                        let v = self.start..self.pos;
                        self.start = self.pos;
                        return Ok(Some(&self.buf[v]));
                    }
                }
            }
            self.pos += 1;
            if self.scan != Scan::Between && self.pos - self.start > self.max {
                return Err(FrameError::TooLarge);
            }
            if done {
                self.scan = Scan::Between;
                let v = self.start..self.pos;
                self.start = self.pos;
                return Ok(Some(&self.buf[v]));
            }
        }
        if self.scan == Scan::Between {
            self.start = self.pos;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(s: &mut JsonStream) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(v) = s.next_value().unwrap() {
            out.push(String::from_utf8(v.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn splits_on_any_separator_or_none() {
        let mut s = JsonStream::new(1 << 16);
        s.push(
            b"{\"a\":1}\0{\"b\":\"}{\"}\n  {\"c\":[1,{\"d\":2}]}{\"e\":3}\r\n[1]\"x\" 12 true{}",
        );
        assert_eq!(
            all(&mut s),
            vec![
                "{\"a\":1}",
                "{\"b\":\"}{\"}",
                "{\"c\":[1,{\"d\":2}]}",
                "{\"e\":3}",
                "[1]",
                "\"x\"",
                "12",
                "true",
                "{}"
            ]
        );
    }

    #[test]
    fn resumes_across_pushes() {
        let mut s = JsonStream::new(1 << 16);
        s.push(b"{\"msg\":\"a\\\"");
        assert!(s.next_value().unwrap().is_none());
        s.push(b"b}\"");
        assert!(s.next_value().unwrap().is_none());
        s.push(b"}\0");
        assert_eq!(all(&mut s), vec!["{\"msg\":\"a\\\"b}\"}"]);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn rejects_oversized_values_early() {
        let mut s = JsonStream::new(100);
        s.push(b"{\"x\":\"");
        s.push(&[b'a'; 200]);
        assert_eq!(s.next_value(), Err(FrameError::TooLarge));
    }

    #[test]
    fn separators_do_not_accumulate() {
        let mut s = JsonStream::new(100);
        for _ in 0..1000 {
            s.push(b"\n\n\0  ");
            assert!(s.next_value().unwrap().is_none());
        }
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn the_keepalive_text_is_skipped_whole_split_or_packed() {
        let mut s = JsonStream::new(1 << 16);
        s.skip_keepalive = true;
        s.push(b"keep this socket alive{\"a\":1}keep this so");
        assert_eq!(all(&mut s), vec!["{\"a\":1}"]);
        s.push(b"cket alive");
        assert!(s.next_value().unwrap().is_none());
        s.push(b"{\"b\":2}");
        assert_eq!(all(&mut s), vec!["{\"b\":2}"]);
        assert_eq!(s.buffered(), 0);
        // Anything else starting with k is not the keepalive.
        s.push(b"kept ");
        assert_eq!(all(&mut s), vec!["kept"]);
        let mut plain = JsonStream::new(1 << 16);
        plain.push(b"keep this socket alive ");
        assert_eq!(all(&mut plain), vec!["keep", "this", "socket", "alive"]);
    }

    #[test]
    fn length_prefixed_values_however_they_arrive() {
        let mut f = Framer::new(Framing::LengthPrefixed { max: 10 }, 1 << 16);
        let mut bytes = Vec::new();
        for v in [&b"hello"[..], b"", b"0123456789"] {
            bytes.extend_from_slice(&(v.len() as u32).to_be_bytes());
            bytes.extend_from_slice(v);
        }
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            f.push(chunk);
            while let Some(v) = f.next_value().unwrap() {
                got.push(v.to_vec());
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), vec![], b"0123456789".to_vec()]);
        assert_eq!(f.buffered(), 0);
        f.push(&11u32.to_be_bytes());
        assert_eq!(f.next_value(), Err(FrameError::TooLarge));
    }

    #[test]
    fn records_come_out_whole() {
        let mut f = Framer::new(Framing::Records { size: 4 }, 1 << 16);
        f.push(b"abcdefg");
        assert_eq!(f.next_value().unwrap(), Some(&b"abcd"[..]));
        assert_eq!(f.next_value().unwrap(), None);
        f.push(b"hij");
        assert_eq!(f.next_value().unwrap(), Some(&b"efgh"[..]));
        assert_eq!(f.buffered(), 2);
    }

    proptest! {
        /// Arbitrary bytes in any reads: every framing hands out values no
        /// larger than its limit, or says the stream is lost, and never
        /// holds much more than one value's worth.
        #[test]
        fn arbitrary_bytes_stay_within_the_limits(
            which in 0usize..4,
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..400), 0..12),
        ) {
            let max = 256;
            let framing = match which {
                0 => Framing::JsonStream { keepalive: true },
                1 => Framing::JsonStream { keepalive: false },
                2 => Framing::LengthPrefixed { max },
                _ => Framing::Records { size: 151 },
            };
            let mut f = Framer::new(framing, max);
            'feed: for c in chunks {
                f.push(&c);
                loop {
                    match f.next_value() {
                        Ok(Some(v)) => prop_assert!(v.len() <= max.max(151)),
                        Ok(None) => break,
                        Err(FrameError::TooLarge) => break 'feed,
                    }
                }
                prop_assert!(f.buffered() <= max + 1 + 400, "{}", f.buffered());
            }
        }

        /// However the stream is cut into reads, the same values come out.
        #[test]
        fn any_split_yields_the_same_values(
            texts in proptest::collection::vec("[a-z{}\\[\\]\"\\\\ ]{0,20}", 1..8),
            cuts in proptest::collection::vec(0usize..200, 0..10),
            seps in proptest::collection::vec(prop_oneof![Just(""), Just("\0"), Just("\n"), Just(" \r\n")], 8),
        ) {
            let values: Vec<String> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| serde_json::json!({"i": i, "t": t, "n": [1, {"x": t}]}).to_string())
                .collect();
            let mut stream = Vec::new();
            for (i, v) in values.iter().enumerate() {
                stream.extend_from_slice(v.as_bytes());
                stream.extend_from_slice(seps[i % seps.len()].as_bytes());
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort();
            let mut s = JsonStream::new(1 << 16);
            let mut got = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain(std::iter::once(stream.len())) {
                s.push(&stream[prev..c]);
                prev = c;
                got.extend(all(&mut s));
            }
            prop_assert_eq!(got, values);
        }
    }
}
