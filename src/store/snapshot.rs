//! Snapshots, the store's side: reading the tables as they stand (for a
//! peer that needs what compaction dropped, or for a backup), and what
//! installing one needs of the store. What the records mean as operations
//! is `crate::snapshot`'s to say; applying them is the hub's.
//!
//! A snapshot's [`Point`] is the tables' checkpoint when reading began: the
//! tables hold every operation up to it. They may hold some later ones too
//! (checkpoints go on while a snapshot is read, off the hub's thread), which
//! does no harm: whoever installs it applies the log after the point as
//! well, and applying is idempotent. Messages are the exception, because
//! each is counted once: only those up to the point are read. Reading
//! pins the log after the point, so compaction keeps that tail until the
//! reader is done with it.
//!
//! Installing merges: a node keeps whatever it had and gains what the
//! snapshot holds, so two nodes that each lack what the other compacted
//! away can send each other one. A message a snapshot brought may come
//! again as an operation (from a second, lower snapshot point), so
//! messages at or below the highest stamps any snapshot brought (the
//! horizon, made durable before the first of them is applied) are looked
//! for before they are stored.

use super::log::{lock, LogBounds};
use super::schema::Record;
use super::*;

/// Where a snapshot stands: every operation up to `position` is in it, the
/// last of each origin stamped `stamps`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Point {
    pub position: Position,
    pub stamps: BTreeMap<NodeId, Stamp>,
}

impl Point {
    /// Whether a message belongs in a snapshot at this point.
    pub fn covers(&self, id: Stamp) -> bool {
        self.stamps.get(&id.node()).is_some_and(|last| id <= *last)
    }
}

/// The tables in the order a snapshot gives them: watermarks first (so
/// that nothing expired is stored), cursors before history (so that
/// delivered messages never enter a queue).
const ORDER: [Table; 9] = [
    Table::Retention,
    Table::Users,
    Table::TokenFloors,
    Table::Tokens,
    Table::Friends,
    Table::Groups,
    Table::Members,
    Table::Cursors,
    Table::History,
];

/// How far a reading has got: a table of [`ORDER`] and its last key read.
#[derive(Clone, Debug, Default)]
pub struct SnapshotCursor {
    table: usize,
    after: Option<Vec<u8>>,
}

impl SnapshotCursor {
    pub fn done(&self) -> bool {
        self.table >= ORDER.len()
    }
}

/// Reads snapshots; cheap to clone, used from any thread.
#[derive(Clone)]
pub struct SnapshotReader {
    tables: SnapshotTables,
    bounds: Arc<Mutex<LogBounds>>,
}

/// The tables and their metadata, for snapshot readers; emptied when the
/// store closes, so that a reader still held elsewhere (a session's handle)
/// does not keep the database open after it.
pub(super) type SnapshotTables =
    Arc<Mutex<Option<(Arc<Vec<sled::Tree>>, sled::Tree, Arc<bodies::Bodies>)>>>;

/// Keeps the log after a snapshot's point from compaction while held.
pub struct Pin {
    bounds: Arc<Mutex<LogBounds>>,
    id: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        lock(&self.bounds).pins.remove(&self.id);
    }
}

impl SnapshotReader {
    fn tables(&self) -> Result<(Arc<Vec<sled::Tree>>, sled::Tree, Arc<bodies::Bodies>)> {
        lock(&self.tables)
            .clone()
            .ok_or_else(|| StoreError::Corrupt("the store is closed".into()))
    }

    /// Start reading: the point the tables are at, with the log after it
    /// pinned.
    pub fn begin(&self) -> Result<(Point, Pin)> {
        // Under the lock compaction decides with: it cannot drop what this
        // pins, and it never passes the checkpoint read here.
        let (_, meta, _) = self.tables()?;
        let mut b = lock(&self.bounds);
        // No checkpoint yet: the tables are empty, and so is the point.
        let read = |k: &str| meta.get(k).map(|v| v.map(|v| v.to_vec()));
        let point = match (read("checkpoint")?, read("checkpoint_stamps")?) {
            (Some(p), Some(s)) => Point {
                position: decode(&p)?,
                stamps: decode(&s)?,
            },
            _ => Point::default(),
        };
        b.next_pin += 1;
        let id = b.next_pin;
        b.pins.insert(id, point.position.clone());
        let pin = Pin {
            bounds: self.bounds.clone(),
            id,
        };
        Ok((point, pin))
    }

    /// The next records after `cursor`, about `max_bytes` of stored data
    /// at most (at least one record or chunk), moving it on; empty at the
    /// end.
    pub fn read(
        &self,
        point: &Point,
        cursor: &mut SnapshotCursor,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let (trees, _, bodies) = self.tables()?;
        let mut out = Vec::new();
        let mut bytes = 0;
        while bytes < max_bytes && !cursor.done() {
            let t = ORDER[cursor.table];
            if t == Table::Retention {
                // One record, whatever the table's keys.
                out.push(Record::Watermarks(watermarks(&trees)?));
                cursor.table += 1;
                continue;
            }
            let tree = &trees[t as usize];
            let range = match &cursor.after {
                Some(k) => {
                    tree.range::<&[u8], _>((Bound::Excluded(k.as_slice()), Bound::Unbounded))
                }
                None => tree.range::<&[u8], _>(..),
            };
            let mut exhausted = true;
            for r in range {
                let (k, v) = r?;
                bytes += k.len() + schema::records(&bodies, t, &k, &v, point, &mut out)?;
                cursor.after = Some(k.to_vec());
                if bytes >= max_bytes {
                    exhausted = false;
                    break;
                }
            }
            if exhausted {
                cursor.table += 1;
                cursor.after = None;
            }
        }
        Ok(out)
    }
}

fn watermarks(trees: &[sled::Tree]) -> Result<Watermarks> {
    let tree = &trees[Table::Retention as usize];
    let read = |k: &str| -> Result<Stamp> {
        Ok(tree
            .get(k)?
            .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()))
            .map(|b| Stamp(u64::from_be_bytes(b)))
            .unwrap_or(Stamp::ZERO))
    };
    Ok(Watermarks {
        history: read("history")?,
        queue: read("queue")?,
    })
}

/// The key, in the tables' metadata, of the horizon.
const HORIZON: &str = "horizon";

impl Store {
    /// A reader of snapshots of this store's tables.
    pub fn snapshot_reader(&self) -> SnapshotReader {
        SnapshotReader {
            tables: self.snapshot_tables.clone(),
            bounds: self.bounds.clone(),
        }
    }

    pub(super) fn stored_horizon(&self) -> Result<BTreeMap<NodeId, Stamp>> {
        match self.meta.get(HORIZON)? {
            Some(v) => decode(&v),
            None => Ok(BTreeMap::new()),
        }
    }

    /// A snapshot at `point` is about to be applied: messages up to its
    /// stamps may arrive twice from now on (kept on disk first).
    pub fn begin_install(&mut self, point: &Point) -> Result<()> {
        let mut raised = false;
        for (&o, &s) in &point.stamps {
            let e = self.horizon.entry(o).or_insert(Stamp::ZERO);
            if s > *e {
                *e = s;
                raised = true;
            }
        }
        if raised {
            self.meta_put(HORIZON, &encode(&self.horizon))?;
        }
        Ok(())
    }

    /// Every record of a snapshot at `point` has been applied: the log
    /// now continues after the point wherever this store was behind it,
    /// and the tables are written out with that position.
    pub fn finish_install(&mut self, point: &Point) -> Result<()> {
        let mut moved = LogStart::default();
        for (&o, &seq) in &point.position {
            if seq > self.applied.get(&o).copied().unwrap_or(0) {
                let stamp = point.stamps.get(&o).copied().unwrap_or_default();
                self.applied.insert(o, seq);
                self.last_stamps.insert(o, stamp);
                moved.raise(o, seq, stamp);
            }
        }
        if !moved.position.is_empty() {
            self.active.log_start = Some(moved);
        }
        self.checkpoint_now()?;
        self.db.flush()?;
        Ok(())
    }

    /// Whether a message that may have come before (at or below the
    /// horizon) is stored already.
    pub(super) fn seen_before(&self, conv: &schema::Conv, id: Stamp) -> Result<bool> {
        let below = self.horizon.get(&id.node()).is_some_and(|h| id <= *h);
        if !below {
            return Ok(false);
        }
        self.has_message(conv, id)
    }
}
