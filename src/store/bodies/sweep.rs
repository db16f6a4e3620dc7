//! The sweep: how much of each file the message tables' pointers name,
//! moving the live bodies out of files mostly dead, deleting files none
//! name.

use super::*;

/// What a sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Bodies moved out of files more than half dead.
    pub moved: usize,
    /// Files deleted.
    pub deleted: usize,
}

impl Writer {
    /// Whether a sweep may find something to do and is not too soon.
    pub(in crate::store) fn sweep_due(&self, now: Instant) -> bool {
        (self.look_again || !self.unnamed.is_empty())
            && now.duration_since(self.last_sweep) >= SWEEP_GAP
    }

    /// Move the live bodies out of files more than half dead, and delete
    /// the files no pointer in `trees` names that the last sweep found
    /// unnamed too.
    pub(in crate::store) fn sweep(&mut self, trees: &[&sled::Tree], now: Instant) -> Result<Swept> {
        // Whatever fails below, the next sweep is a gap away: a failing
        // one must not take the thread at every turn.
        self.last_sweep = now;
        self.look_again = false;
        let Some(dir) = self.own.dir.clone() else {
            return Ok(Swept::default());
        };
        let files = listed(&dir)?;
        let current = self.current.as_ref().map(|(n, _, _)| *n);
        let mut live: BTreeMap<u32, u64> = BTreeMap::new();
        for tree in trees {
            for r in tree.iter().values() {
                let v = r?;
                if v.first() == Some(&POINTER) {
                    let p = Pointer::parse(&v)?;
                    *live.entry(p.file).or_default() += u64::from(p.len);
                }
            }
        }
        let sparse: BTreeSet<u32> = files
            .iter()
            .filter(|(n, size)| Some(**n) != current && live.get(n).is_some_and(|l| l * 2 < **size))
            .map(|(n, _)| *n)
            .collect();
        // A failed move (a full disk) must not stop the deletions, which
        // are what frees room.
        let moved = self.move_out(trees, &sparse);
        let mut swept = Swept {
            moved: moved.as_ref().copied().unwrap_or(0),
            deleted: 0,
        };
        if swept.moved > 0 {
            self.look_again = true;
        }
        let (doomed, fresh): (Vec<u32>, Vec<u32>) = files
            .keys()
            .filter(|n| !live.contains_key(n) && Some(**n) != current)
            .partition(|n| self.unnamed.contains(n));
        let mut unnamed: BTreeSet<u32> = fresh.into_iter().collect();
        if let (Some(first), Some(tree)) = (doomed.first(), trees.first()) {
            // sled holds the last moves and removals in memory until it is
            // flushed (the tables are flushed by checkpoints only): the
            // pointers that were in a file must be gone on disk before it
            // is.
            if let Err(e) = tree.flush() {
                unnamed.extend(doomed.iter().copied());
                self.unnamed = unnamed;
                tracing::debug!(file = first, "chunk files kept: sled did not flush");
                return Err(e.into());
            }
        }
        let mut failed = None;
        for n in doomed {
            let size = files.get(&n).copied().unwrap_or(0);
            self.own.forget(n);
            self.shared.forget(n);
            match std::fs::remove_file(file_name(&dir, n)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    unnamed.insert(n);
                    failed.get_or_insert(e);
                    continue;
                }
            }
            let _ = self
                .shared
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(size))
                });
            swept.deleted += 1;
        }
        self.unnamed = unnamed;
        moved?;
        match failed {
            Some(e) => Err(io(e)),
            None => Ok(swept),
        }
    }

    /// Write the bodies the pointers in `trees` name in files `from`
    /// again, in the current file, a file's worth at most; how many moved.
    /// A body that cannot be read stays where it is (and so does its
    /// file), and the first such error is returned once the rest moved.
    fn move_out(&mut self, trees: &[&sled::Tree], from: &BTreeSet<u32>) -> Result<usize> {
        if from.is_empty() {
            return Ok(0);
        }
        let mut moves = Vec::new();
        let mut bytes = 0;
        let mut unreadable = None;
        'trees: for (t, tree) in trees.iter().enumerate() {
            for r in tree.iter() {
                let (k, v) = r?;
                if v.first() != Some(&POINTER) || !from.contains(&Pointer::parse(&v)?.file) {
                    continue;
                }
                let body = match self.own.read(&v) {
                    Ok(b) => b,
                    Err(e) => {
                        unreadable.get_or_insert(e);
                        continue;
                    }
                };
                bytes += body.len() as u64;
                let moved = self.put(body)?;
                moves.push((t, k, v, moved));
                if bytes >= FILE_MAX {
                    break 'trees;
                }
            }
        }
        self.sync()?;
        for (t, k, old, new) in &moves {
            let tree = trees[*t];
            // Nothing else writes the tree, but a move that raced a
            // rewrite would lose the chunk: the old value must be there.
            let _ = tree.compare_and_swap(k, Some(old), Some(&new[..]))?;
        }
        match unreadable {
            Some(e) => Err(e),
            None => Ok(moves.len()),
        }
    }
}
