//! Compression of what the store writes (log segments, message chunks),
//! with zstd contexts kept per thread: making one costs more than
//! compressing a segment.

use std::cell::RefCell;

thread_local! {
    static COMPRESSORS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// `data` compressed at `level`, when that saves a tenth or more.
pub(super) fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSORS.with(|c| {
        let mut c = c.borrow_mut();
        let at = match c.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                c.push((level, zstd::bulk::Compressor::new(level).ok()?));
                c.len() - 1
            }
        };
        let small = c[at].1.compress(data).ok()?;
        (small.len() + 5 < data.len() - data.len() / 10).then_some(small)
    })
}

/// Decompress what is `len` bytes once decompressed.
pub(super) fn decompress(data: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        match d.as_mut() {
            Some(d) => d.decompress(data, len),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}
