//! Log compaction: the log's oldest segments leave once the tables hold
//! what they did. The tables at the durable checkpoint are the snapshot
//! that replaces them (a peer that needs what was dropped is sent that
//! snapshot, see `snapshot.rs`), so every operation that no longer shapes
//! the state (an expired message, a value overwritten since, a delivery
//! mark that a later one covers) is gone from the disk with its segment.
//!
//! What may go, per origin: operations up to the durable checkpoint, up to
//! the lowest pin (a snapshot being read needs the log after its point),
//! and stamped before the cutoff (`--log-keep-secs`: a peer that was away
//! for less than that catches up from the log, not by snapshot). Whole
//! segments go, never an origin's newest (a few KiB at most).
//!
//! Crash safety, in this order: the new start of the log is recorded and
//! flushed, which makes the checkpoint it relies on durable too; only then
//! are the segments removed. A crash at any step leaves either segments
//! the start already excludes (removed by the next pass) or nothing done.
//! Runs on the checkpoint thread, so no checkpoint moves meanwhile.

use super::log::{lock, log_key, parse_log_key, LogBounds};
use super::*;

/// Segments removed per pass at most (about 24 MiB of log): a long
/// backlog goes over several seconds, and the thread stays free for
/// checkpoints.
const SEGMENTS_PER_PASS: usize = 4096;

/// How far each origin's log may be dropped: the checkpoint, held back by
/// every pin.
pub(super) fn limit<'a>(
    checkpoint: &Position,
    pins: impl IntoIterator<Item = &'a Position>,
) -> Position {
    let mut out = checkpoint.clone();
    for pin in pins {
        for (origin, upto) in out.iter_mut() {
            *upto = (*upto).min(pin.get(origin).copied().unwrap_or(0));
        }
    }
    out
}

/// The first operation of a stored segment (`FORMAT`, the count, then
/// the operations), read without the rest.
fn first_op(raw: &[u8]) -> Result<Op> {
    let bad = |e: String| StoreError::Corrupt(format!("log segment: {e}"));
    let config = bincode::config::standard();
    let rest = match raw.split_first() {
        Some((&FORMAT, rest)) => rest,
        _ => return Err(bad("unknown format".into())),
    };
    let (_, at): (u64, usize) =
        bincode::decode_from_slice(rest, config).map_err(|e| bad(e.to_string()))?;
    let body = rest.get(at..).ok_or_else(|| bad("short".into()))?;
    bincode::serde::decode_from_slice(body, config)
        .map(|(op, _)| op)
        .map_err(|e| bad(e.to_string()))
}

/// One pass: drop what may go of segments stamped up to `cutoff_ms`.
/// Returns the number of segments removed.
pub(super) fn compact(
    db: &sled::Db,
    meta: &sled::Tree,
    log: &sled::Tree,
    bounds: &Mutex<LogBounds>,
    cutoff_ms: u64,
    delay: Duration,
) -> Result<usize> {
    let pause = || {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    };
    pause();
    let checkpoint: Position = match meta.get("checkpoint")? {
        Some(v) => decode(&v)?,
        None => return Ok(0),
    };
    let (allowed, mut start) = {
        let b = lock(bounds);
        (limit(&checkpoint, b.pins.values()), b.start.clone())
    };
    let mut doomed = Vec::new();
    for (&origin, &upto) in &allowed {
        let from = start.position.get(&origin).copied().unwrap_or(0);
        if upto <= from {
            continue;
        }
        // A segment may go once the next one begins at or before `upto + 1`
        // and is stamped by the cutoff (its operations are all older):
        // only each segment's first operation is read. The newest segment
        // stays, so the log always says where it ends.
        let mut prev: Option<sled::IVec> = None;
        let mut last_gone = None;
        for r in log.range(log_key(origin, 0)..=log_key(origin, u64::MAX)) {
            if doomed.len() >= SEGMENTS_PER_PASS {
                break;
            }
            let (k, v) = r?;
            let (_, first) = parse_log_key(&k)?;
            let first_stamp = first_op(&v)?.stamp;
            if let Some(p) = prev.take() {
                if first.saturating_sub(1) > upto || first_stamp.millis() > cutoff_ms {
                    break;
                }
                last_gone = Some(p.clone());
                doomed.push(p);
            }
            prev = Some(k);
        }
        // Where the log now begins: the last operation of the last segment
        // that goes.
        if let Some(k) = last_gone {
            if let Some(v) = log.get(&k)? {
                let ops: Vec<Op> = decode(&v)?;
                if let Some(last) = ops.last() {
                    start.raise(origin, last.seq, last.stamp);
                }
            }
        }
    }
    if doomed.is_empty() {
        return Ok(0);
    }
    // The checkpoint record (written after its tables were flushed) is
    // only durable with the next flush: this one, with the new start.
    meta.insert("log_start", encode(&start))?;
    db.flush()?;
    pause();
    {
        let mut b = lock(bounds);
        for (&origin, &seq) in &start.position {
            if let Some(&stamp) = start.stamps.get(&origin) {
                b.start.raise(origin, seq, stamp);
            }
        }
    }
    for (i, k) in doomed.iter().enumerate() {
        log.remove(k)?;
        if i == doomed.len() / 2 {
            pause();
        }
    }
    Ok(doomed.len())
}

impl Store {
    /// The recorded start of the log (what compaction and snapshots left).
    pub(super) fn stored_log_start(&self) -> Result<LogStart> {
        match self.meta.get("log_start")? {
            Some(v) => decode(&v),
            None => Ok(LogStart::default()),
        }
    }

    /// Where each origin's log begins now.
    pub fn log_start(&self) -> Position {
        lock(&self.bounds).start.position.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_checkpoint_held_back_by_every_pin() {
        let p = |v: &[(NodeId, u64)]| v.iter().copied().collect::<Position>();
        let checkpoint = p(&[(1, 100), (2, 50), (3, 7)]);
        assert_eq!(limit(&checkpoint, []), checkpoint);
        let pins = [p(&[(1, 80), (2, 60), (3, 7)]), p(&[(1, 90), (2, 40)])];
        // An origin a pin does not name is pinned at its very beginning.
        assert_eq!(limit(&checkpoint, &pins), p(&[(1, 80), (2, 40), (3, 0)]));
    }
}
