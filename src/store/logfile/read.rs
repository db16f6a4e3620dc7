//! Reading the log's files: a record's parts, a whole file read through
//! at open, and a walk over one origin's records from the nearest entry
//! of the sparse index.

use super::*;

/// What [`record`] found.
enum Rec<'a> {
    /// A whole record: its entry and what its crc covers (the head,
    /// then the operations' bytes); the crc is checked by [`Whole::ops`].
    Whole(Entry, Whole<'a>),
    /// The buffer ends inside it; it takes this many bytes in all.
    Short(usize),
    /// Not a record: a bad length or crc.
    Bad,
}

/// A record's checked part, for its operations' bytes.
struct Whole<'a> {
    body: &'a [u8],
    sum: u32,
}

impl<'a> Whole<'a> {
    /// The operations' bytes, if the crc matches (records a read passes
    /// over are not checked).
    fn ops(&self) -> Option<&'a [u8]> {
        (crc(&[self.body]) == self.sum).then(|| &self.body[HEAD - PREFIX..])
    }
}

/// The record at `at` in `buf`, which begins at `base` in file `no`.
fn record(buf: &[u8], at: usize, no: u64, base: u64) -> Rec<'_> {
    let Some(prefix) = buf.get(at..at + PREFIX) else {
        return Rec::Short(PREFIX);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let sum = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if !(HEAD - PREFIX..=RECORD_MAX).contains(&len) {
        return Rec::Bad;
    }
    let Some(body) = buf.get(at + PREFIX..at + PREFIX + len) else {
        return Rec::Short(PREFIX + len);
    };
    let be =
        |r: std::ops::Range<usize>| body[r].iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    let loc = Loc {
        file: no,
        offset: base + at as u64,
        len: (PREFIX + len) as u32,
        last: be(10..18),
        last_stamp: be(18..26),
    };
    Rec::Whole((be(0..2) as NodeId, be(2..10), loc), Whole { body, sum })
}

/// The records of file `no`, read through, and where the last whole one
/// ends.
pub(super) fn scan(path: &Path, no: u64) -> Result<(Vec<Entry>, u64)> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Rec::Whole(e, w) = record(&data, at, no, 0) {
        if w.ops().is_none() {
            break;
        }
        at += e.2.len as usize;
        out.push(e);
    }
    Ok((out, at as u64))
}

impl LogFiles {
    /// `origin`'s records whose last seq is `from` or after, in order: `f`
    /// is given each one's place and operations' bytes, and says whether
    /// to go on. Each file is scanned from the index entry nearest before.
    fn walk(
        &self,
        origin: NodeId,
        mut from: u64,
        mut f: impl FnMut(u64, u64, Loc, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut at = {
            let s = lock(&self.shared);
            s.index
                .range((origin, 0)..=(origin, from))
                .next_back()
                .or_else(|| s.index.range((origin, from)..=(origin, u64::MAX)).next())
                .map(|(_, loc)| (loc.file, loc.offset))
        };
        let mut buf = Vec::new();
        while let Some((no, offset)) = at {
            let Some((file, len)) = lock(&self.shared)
                .files
                .get(&no)
                .map(|i| (i.file.clone(), i.len))
            else {
                return Ok(());
            };
            let mut pos = offset;
            let mut want = BLOCK;
            while pos < len {
                buf.resize(want.min((len - pos) as usize), 0);
                file.read_exact_at(&mut buf, pos).map_err(io)?;
                let mut used = 0;
                loop {
                    match record(&buf, used, no, pos) {
                        Rec::Whole((o, first, loc), w) => {
                            used += loc.len as usize;
                            if o == origin && loc.last >= from {
                                let Some(ops) = w.ops() else {
                                    return Err(corrupt(
                                        &self.dir.join(format!("{no}.log")),
                                        "bad crc",
                                    ));
                                };
                                if !f(from, first, loc, ops)? {
                                    return Ok(());
                                }
                                from = loc.last.saturating_add(1);
                            }
                        }
                        Rec::Short(_) if used > 0 => {
                            want = BLOCK;
                            break;
                        }
                        // One record longer than what was read: read it whole.
                        Rec::Short(need) if need > buf.len() && pos + need as u64 <= len => {
                            want = need;
                            break;
                        }
                        _ => {
                            return Err(corrupt(&self.dir.join(format!("{no}.log")), "bad record"))
                        }
                    }
                }
                pos += used as u64;
            }
            // Its next record is the first in a later file (which the
            // index always holds).
            at = lock(&self.shared)
                .index
                .range((origin, from)..=(origin, u64::MAX))
                .next()
                .map(|(_, loc)| (loc.file, loc.offset))
                .filter(|(next, _)| *next > no);
        }
        Ok(())
    }

    /// The heads of `origin`'s records that hold `from` and after (first
    /// seq and place), at most `max` of them.
    pub(in crate::store) fn heads_from(
        &self,
        origin: NodeId,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, Loc)>> {
        let mut out = Vec::new();
        self.walk(origin, from, |_, first, loc, _| {
            out.push((first, loc));
            Ok(out.len() < max)
        })?;
        Ok(out)
    }

    /// `origin`'s operations after `after`, oldest first, at most `max`.
    pub(in crate::store) fn read(
        &self,
        origin: NodeId,
        after: u64,
        max: usize,
    ) -> Result<Vec<crate::model::Op>> {
        let mut out = Vec::new();
        self.walk(origin, after.saturating_add(1), |next, _, _, ops| {
            out.extend(
                crate::store::log::decode_segment(ops)?
                    .into_iter()
                    .filter(|o| o.seq >= next),
            );
            Ok(out.len() < max)
        })?;
        out.truncate(max);
        Ok(out)
    }
}
