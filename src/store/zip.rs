//! Compression of what the store writes (log segments, message chunks),
//! with zstd contexts kept per thread: making one costs more than
//! compressing a segment. A packed record is [`PACKED`], the plain
//! bytes' length (u32 BE) and the plain bytes compressed with zstd.

use std::cell::RefCell;

thread_local! {
    static COMPRESSORS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// The version byte of a packed record, in both the log and the tables.
pub(super) const PACKED: u8 = 2;

/// `plain` packed, compressed at `level`, when that saves a tenth or more.
pub(super) fn pack(plain: &[u8], level: i32) -> Option<Vec<u8>> {
    let small = compress(plain, level)?;
    let mut out = Vec::with_capacity(small.len() + 5);
    out.push(PACKED);
    out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    out.extend_from_slice(&small);
    Some(out)
}

/// The plain bytes of a packed record, given what follows its version
/// byte; more than `max` of them means the record is corrupt.
pub(super) fn unpack(rest: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let Some((len, z)) = rest.split_first_chunk::<4>() else {
        return Err("truncated".into());
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > max {
        return Err("too large".into());
    }
    let plain = decompress(z, len).map_err(|e| e.to_string())?;
    if plain.len() != len {
        return Err("length".into());
    }
    Ok(plain)
}

fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
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

fn decompress(data: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
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
