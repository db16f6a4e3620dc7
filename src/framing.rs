//! Splitting a client's byte stream into values.
//!
//! Clients send JSON values back to back, separated by newlines, NULs, other
//! whitespace or nothing at all, and TCP splits or packs them any way it
//! likes. [`JsonStream`] finds where each value ends without parsing it
//! (counting brackets outside strings), resuming where it stopped when more
//! bytes arrive, so a value split over many reads costs one scan.
//!
//! [`detect`] is the seam for other framings: a length-prefixed dialect (4-byte
//! big-endian length, then JSON) or fixed-size binary records would be
//! recognised from a connection's first bytes and get their own splitter.

/// How a connection frames its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// JSON values separated by whitespace, NUL or nothing.
    JsonStream,
}

/// Which framing a connection uses, from its first bytes (None: need more).
/// Today every connection is a JSON stream.
pub fn detect(first: &[u8]) -> Option<Framing> {
    if first.is_empty() {
        return None;
    }
    Some(Framing::JsonStream)
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A value grew past the limit before it ended.
    TooLarge,
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
            let b = self.buf[self.pos];
            let mut done = false;
            match &mut self.scan {
                Scan::Between => {
                    if is_separator(b) {
                        self.start = self.pos + 1;
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

    proptest! {
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
