//! Retention: the watermarks below which messages are gone (history) or
//! no longer delivered as pending (queue), and the sweep that removes
//! expired messages from the tables.
//!
//! Reads never show a message below the watermarks, whatever the sweep
//! has reached, so every node answers alike (and digests agree) while each
//! sweeps at its own pace.
//!
//! Why a tally: finding old messages must not mean walking the history.
//! Every stored message bumps a counter under (minute, conversation).
//! Once the history watermark has passed a whole minute, that minute's
//! entries say which conversations to cut (their messages below the
//! minute's end leave the tables at the next checkpoint) and how many
//! messages that removes, so the kept count of messages stays exact. The
//! tally lives in the meta tree and is written in the same sled batch as
//! the checkpoint record and the counts: a crash can never leave a tally
//! entry gone while the count still holds its messages, or the reverse.

use super::schema::{Conv, CONV_LEN};
use super::*;

const MINUTE_MS: u64 = 60_000;
/// The first byte of every tally key (the meta tree's other keys are text).
const TALLY: u8 = 0;

/// Messages below `history` are gone; below `queue`, not delivered as
/// pending any more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub history: Stamp,
    pub queue: Stamp,
}

impl Watermarks {
    /// Pending messages below this are not delivered.
    pub fn pending(&self) -> Stamp {
        self.history.max(self.queue)
    }
}

fn minute_of(id: Stamp) -> u32 {
    u32::try_from(id.millis() / MINUTE_MS).unwrap_or(u32::MAX)
}

pub(super) const TALLY_KEY_LEN: usize = 5 + CONV_LEN;

fn tally_key(minute: u32, conv: &Conv) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + CONV_LEN);
    k.push(TALLY);
    k.extend_from_slice(&minute.to_be_bytes());
    k.extend_from_slice(conv);
    k
}

fn parse_tally_key(k: &[u8]) -> Result<(u32, Conv)> {
    match (k.get(1..5), k.get(5..5 + CONV_LEN)) {
        (Some(minute), Some(conv)) => Ok((
            be_u32(minute),
            Conv::try_from(conv).map_err(|_| StoreError::Corrupt("bad tally key".into()))?,
        )),
        _ => Err(StoreError::Corrupt("bad tally key".into())),
    }
}

fn be_u32(v: &[u8]) -> u32 {
    v.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

fn be_stamp(v: &[u8]) -> Stamp {
    Stamp(
        v.get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0),
    )
}

impl Store {
    pub fn watermarks(&self) -> Watermarks {
        self.marks
    }

    pub(super) fn stored_watermarks(&self) -> Result<Watermarks> {
        let read = |k: &[u8]| -> Result<Stamp> {
            Ok(self
                .get(Table::Retention, k)?
                .map(|v| be_stamp(&v))
                .unwrap_or(Stamp::ZERO))
        };
        Ok(Watermarks {
            history: read(b"history")?,
            queue: read(b"queue")?,
        })
    }

    /// Raise the watermarks; a lower value leaves one as it is.
    pub fn raise_watermarks(&mut self, history: Stamp, queue: Stamp) {
        if history > self.marks.history {
            self.marks.history = history;
            self.put(
                Table::Retention,
                b"history".to_vec(),
                history.0.to_be_bytes().to_vec(),
            );
            self.sweeping = true;
        }
        if queue > self.marks.queue {
            self.marks.queue = queue;
            self.put(
                Table::Retention,
                b"queue".to_vec(),
                queue.0.to_be_bytes().to_vec(),
            );
        }
    }

    /// Count a stored message under its minute and conversation.
    /// Counted in memory first (a message's cost stays one map update);
    /// folded into the tally before anything reads it or it is written.
    pub(super) fn tally(&mut self, conv: &Conv, id: Stamp) {
        let mut key = [0u8; TALLY_KEY_LEN];
        key[0] = TALLY;
        key[1..5].copy_from_slice(&minute_of(id).to_be_bytes());
        key[5..].copy_from_slice(conv);
        *self.active.tally_adds.entry(key).or_insert(0) += 1;
    }

    /// Fold the counts added since into the tally's entries.
    pub(super) fn fold_tally(&mut self) -> Result<()> {
        let adds: Vec<_> = self.active.tally_adds.drain().collect();
        for (i, &(key, n)) in adds.iter().enumerate() {
            let old = match self.get(Table::Tally, &key) {
                Ok(v) => v.map(|v| v.to_vec()),
                Err(e) => {
                    // Nothing is lost: what is left waits for the next fold.
                    self.active.tally_adds.extend(adds[i..].iter().copied());
                    return Err(e);
                }
            };
            if old.is_none() {
                self.active.bytes += key.len() + 64;
            }
            // The count, then (once a sweep cut into this minute) how far.
            let old = old.unwrap_or_default();
            let mut val = be_u32(&old).saturating_add(n).to_be_bytes().to_vec();
            val.extend_from_slice(old.get(4..).unwrap_or(&[]));
            self.put(Table::Tally, key.to_vec(), val);
        }
        Ok(())
    }

    /// Whether expired messages may remain to be swept.
    pub fn sweep_pending(&self) -> bool {
        self.sweeping
    }

    /// Remove what the history watermark has passed, at most `budget`
    /// tally entries' worth (each a conversation's minute); returns whether
    /// more remains. The removal reaches sled with the next checkpoint.
    pub fn sweep(&mut self, budget: usize) -> Result<bool> {
        if !self.sweeping {
            return Ok(false);
        }
        self.fold_tally()?;
        let budget = budget.max(1);
        let mark = self.marks.history;
        // Minutes before the watermark's are wholly below it.
        let end = tally_key(minute_of(mark), &[0; CONV_LEN]);
        let whole = self
            .scan(
                Table::Tally,
                Bound::Included(vec![TALLY]),
                Bound::Excluded(end.clone()),
                false,
            )
            .take(budget)
            .collect::<Result<Vec<_>>>()?;
        for (k, v) in &whole {
            let (minute, conv) = parse_tally_key(k)?;
            let below = Stamp::new((u64::from(minute) + 1) * MINUTE_MS, 0);
            self.counts.messages = self.counts.messages.saturating_sub(u64::from(be_u32(v)));
            self.cut_conv(&conv, below);
            self.del(Table::Tally, k.clone());
        }
        if whole.len() >= budget {
            return Ok(true);
        }
        self.sweeping = self.sweep_partial_minute(budget - whole.len())?;
        Ok(self.sweeping)
    }

    /// The watermark's own minute: its messages below the watermark are
    /// counted (from where the last pass stopped) and cut, so that the
    /// count of messages stays exact at every watermark. Each entry keeps
    /// how far it was cut.
    fn sweep_partial_minute(&mut self, budget: usize) -> Result<bool> {
        let mark = self.marks.history;
        let minute = minute_of(mark);
        let minute_start = Stamp::new(u64::from(minute) * MINUTE_MS, 0);
        if mark <= minute_start {
            return Ok(false);
        }
        let from = tally_key(minute, &[0; CONV_LEN]);
        let to = tally_key(minute.saturating_add(1), &[0; CONV_LEN]);
        let entries = self
            .scan(
                Table::Tally,
                Bound::Included(from),
                Bound::Excluded(to),
                false,
            )
            .collect::<Result<Vec<_>>>()?;
        let mut done = 0;
        for (k, v) in entries {
            let cut_to = be_stamp(v.get(4..).unwrap_or(&[]));
            if cut_to >= mark {
                continue;
            }
            if done == budget {
                return Ok(true);
            }
            done += 1;
            let (_, conv) = parse_tally_key(&k)?;
            let after = Stamp(cut_to.max(minute_start).0.saturating_sub(1));
            let mut gone = 0u32;
            for m in self.messages(Table::History, &conv, Some(after), false) {
                if m?.id >= mark {
                    break;
                }
                gone += 1;
            }
            self.counts.messages = self.counts.messages.saturating_sub(u64::from(gone));
            self.cut_conv(&conv, mark);
            let mut val = be_u32(&v).saturating_sub(gone).to_be_bytes().to_vec();
            val.extend_from_slice(&mark.0.to_be_bytes());
            self.put(Table::Tally, k, val);
        }
        Ok(false)
    }

    /// A conversation's messages below `below` leave its history and, for
    /// two users, both of their queues.
    fn cut_conv(&mut self, conv: &Conv, below: Stamp) {
        self.cut(Table::History, conv, below);
        if conv[0] == 0 {
            self.cut(Table::Inbox, &conv[1..5], below);
            self.cut(Table::Inbox, &conv[5..9], below);
        }
    }

    /// Every message under `prefix` below `below` leaves the tables: from
    /// this layer now, from sled when the layer is written.
    fn cut(&mut self, t: Table, prefix: &[u8], below: Stamp) {
        let map = &mut self.active.messages[t as usize];
        if let Some(stored) = map.get_mut(prefix) {
            *stored = stored.split_off(&below.0);
            if stored.is_empty() {
                map.remove(prefix);
            }
        }
        self.active.bytes += prefix.len() + 64;
        let e = self
            .active
            .cuts
            .entry((t as usize, prefix.to_vec()))
            .or_insert(below);
        *e = (*e).max(below);
    }

    /// A data directory from before the tally is counted once, at open.
    pub(super) fn ensure_tally(&self) -> Result<()> {
        if self.meta.get("tally")?.is_some() {
            return Ok(());
        }
        let mut counts: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        for r in self.trees[Table::History as usize].iter() {
            let (k, v) = r?;
            let Some(conv) = k.get(..CONV_LEN).and_then(|c| Conv::try_from(c).ok()) else {
                return Err(StoreError::Corrupt("bad history key".into()));
            };
            for (id, _) in flush::frames(&self.bodies, &v)? {
                *counts
                    .entry(tally_key(minute_of(Stamp(id)), &conv))
                    .or_default() += 1;
            }
        }
        let mut b = sled::Batch::default();
        for (k, n) in counts {
            b.insert(k, n.to_be_bytes().to_vec());
        }
        b.insert("tally", vec![1]);
        self.meta.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }
}

/// An exclusive lower bound that starts a read at `floor` or after `from`.
pub(super) fn at_least(from: Option<Stamp>, floor: Stamp) -> Option<Stamp> {
    if floor == Stamp::ZERO {
        return from;
    }
    let below = Stamp(floor.0 - 1);
    Some(from.map_or(below, |f| f.max(below)))
}
