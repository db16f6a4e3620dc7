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
//! for less than that catches up from the log, not by snapshot). The start
//! moves by whole records (a segment each); the disk is given back by
//! whole files (`logfile.rs`), once all they hold is behind it.
//!
//! Crash safety, in this order: the new start of the log is recorded and
//! flushed, which makes the checkpoint it relies on durable too; only then
//! are files removed. A crash at any step leaves either files the start
//! already excludes (removed by the next pass) or nothing done. Runs on
//! the checkpoint thread, so no checkpoint moves meanwhile.

use super::log::{lock, LogBounds};
use super::logfile::LogFiles;
use super::*;

/// Operations passed per pass at most: a long backlog goes over several
/// seconds, and the thread stays free for checkpoints.
const OPS_PER_PASS: u64 = 1 << 20;

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

/// One pass: move the log's start past what may go (operations stamped up
/// to `cutoff_ms`), then delete the files wholly behind it. Returns how
/// many operations the start moved past.
pub(super) fn compact(
    db: &sled::Db,
    meta: &sled::Tree,
    files: &LogFiles,
    bounds: &Mutex<LogBounds>,
    cutoff_ms: u64,
    delay: Duration,
) -> Result<u64> {
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
    let (allowed, old) = {
        let b = lock(bounds);
        (limit(&checkpoint, b.pins.values()), b.start.clone())
    };
    let mut start = old.clone();
    let mut passed = 0;
    for (&origin, &upto) in &allowed {
        // Whole records, from their heads: each goes once its last
        // operation is behind the limit and stamped by the cutoff.
        let mut from = start.position.get(&origin).copied().unwrap_or(0) + 1;
        'records: while from <= upto && passed < OPS_PER_PASS {
            let records = files.heads_from(origin, from, 256)?;
            if records.is_empty() {
                break;
            }
            for (_, loc) in records {
                if loc.last > upto || crate::ids::Stamp(loc.last_stamp).millis() > cutoff_ms {
                    break 'records;
                }
                let was = start.position.get(&origin).copied().unwrap_or(0);
                start.raise(origin, loc.last, crate::ids::Stamp(loc.last_stamp));
                passed += loc.last.saturating_sub(was);
                from = loc.last + 1;
            }
        }
    }
    if start != old {
        // The checkpoint record (written after its tables were flushed)
        // is only durable with the next flush: this one, with the start.
        meta.insert("log_start", encode(&start))?;
        db.flush()?;
        pause();
        let mut b = lock(bounds);
        for (&origin, &seq) in &start.position {
            if let Some(&stamp) = start.stamps.get(&origin) {
                b.start.raise(origin, seq, stamp);
            }
        }
    }
    // Also what an earlier pass recorded but a crash kept from going.
    let freed = files.drop_behind(&start.position)?;
    if freed > 0 {
        pause();
    }
    Ok(passed)
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
