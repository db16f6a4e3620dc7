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

fn tally_key(minute: u32, conv: &Conv) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + CONV_LEN);
    k.push(TALLY);
    k.extend_from_slice(&minute.to_be_bytes());
    k.extend_from_slice(conv);
    k
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
    pub(super) fn tally(&mut self, conv: &Conv, id: Stamp) -> Result<()> {
        let key = tally_key(minute_of(id), conv);
        let map = &self.active.maps[Table::Tally as usize];
        let (n, new) = match map.get(&key) {
            Some(v) => (v.as_deref().map(be_u32).unwrap_or(0), false),
            None => (
                self.get(Table::Tally, &key)?
                    .map(|v| be_u32(&v))
                    .unwrap_or(0),
                true,
            ),
        };
        if new {
            self.active.bytes += key.len() + 64;
        }
        let val: Arc<[u8]> = n.saturating_add(1).to_be_bytes().to_vec().into();
        self.active.maps[Table::Tally as usize].insert(key, Some(val));
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
        // Minutes before the watermark's are wholly below it.
        let end = tally_key(minute_of(self.marks.history), &[0; CONV_LEN]);
        let entries = self
            .scan(
                Table::Tally,
                Bound::Included(vec![TALLY]),
                Bound::Excluded(end),
                false,
            )
            .take(budget.max(1))
            .map(|r| r.map(|(k, v)| (k, be_u32(&v))))
            .collect::<Result<Vec<_>>>()?;
        for (k, n) in &entries {
            let (Some(minute), Some(conv)) = (k.get(1..5), k.get(5..5 + CONV_LEN)) else {
                return Err(StoreError::Corrupt("bad tally key".into()));
            };
            let minute = u64::from(be_u32(minute));
            let below = Stamp::new((minute + 1) * MINUTE_MS, 0);
            self.counts.messages = self.counts.messages.saturating_sub(u64::from(*n));
            self.cut(Table::History, conv, below);
            if conv[0] == 0 {
                // A direct conversation: both users' queues hold its messages.
                self.cut(Table::Inbox, &conv[1..5], below);
                self.cut(Table::Inbox, &conv[5..9], below);
            }
            self.del(Table::Tally, k.clone());
        }
        self.sweeping = entries.len() >= budget.max(1);
        Ok(self.sweeping)
    }

    /// Every message under `prefix` below `below` leaves the tables: from
    /// this layer now, from sled when the layer is written.
    fn cut(&mut self, t: Table, prefix: &[u8], below: Stamp) {
        let mut lo = prefix.to_vec();
        lo.extend_from_slice(&0u64.to_be_bytes());
        let mut hi = prefix.to_vec();
        hi.extend_from_slice(&below.0.to_be_bytes());
        let map = &mut self.active.maps[t as usize];
        let gone: Vec<Vec<u8>> = map.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in gone {
            map.remove(&k);
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
            for (id, _) in flush::frames(&v)? {
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
