//! Reading and writing the tables through the in-memory layers: the
//! newest layer first, then the frozen one, then sled.

use super::*;

impl Store {
    // ---- reads -----------------------------------------------------------

    pub(super) fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.active).chain(self.frozen.as_deref())
    }

    pub fn get(&self, t: Table, key: &[u8]) -> Result<Option<Val>> {
        for layer in self.layers() {
            if let Some(v) = layer.maps[t as usize].get(key) {
                return Ok(v.clone().map(Val::Mem));
            }
        }
        Ok(self.trees[t as usize].get(key)?.map(Val::Disk))
    }

    /// Key-ordered entries of a plain table within bounds.
    pub fn scan(
        &self,
        t: Table,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        descending: bool,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Val)>> + '_ {
        debug_assert!(t.chunk_prefix_len().is_none());
        let mut sources: Vec<Source<'_, Vec<u8>, Option<Val>, StoreError>> = Vec::new();
        for layer in self.layers() {
            let r = layer.maps[t as usize].range::<[u8], _>((as_ref(&lo), as_ref(&hi)));
            let it = r.map(|(k, v)| Ok((k.to_vec(), v.clone().map(Val::Mem))));
            if descending {
                sources.push(Box::new(it.rev()));
            } else {
                sources.push(Box::new(it));
            }
        }
        let r = self.trees[t as usize].range((lo, hi));
        let it = r.map(|r| {
            r.map(|(k, v)| (k.to_vec(), Some(Val::Disk(v))))
                .map_err(StoreError::from)
        });
        if descending {
            sources.push(Box::new(it.rev()));
        } else {
            sources.push(Box::new(it));
        }
        Merge::new(sources, descending).filter_map(|r| match r {
            Ok((k, Some(v))) => Some(Ok((k, v))),
            Ok((_, None)) => None,
            Err(e) => Some(Err(e)),
        })
    }

    pub fn scan_prefix(
        &self,
        t: Table,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Val)>> + '_ {
        self.scan(
            t,
            Bound::Included(prefix.to_vec()),
            prefix_end(prefix),
            false,
        )
    }

    /// Messages of a message table under `prefix`, by id: ascending from just
    /// after `from` (exclusive), or descending from just before it.
    pub fn messages(
        &self,
        t: Table,
        prefix: &[u8],
        from: Option<Stamp>,
        descending: bool,
    ) -> impl Iterator<Item = Result<Message>> + '_ {
        let plen = t.chunk_prefix_len().unwrap_or(0);
        debug_assert_eq!(plen, prefix.len());
        let ids = match (descending, from) {
            (false, Some(a)) => (Bound::Excluded(a.0), Bound::Unbounded),
            (true, Some(b)) => (Bound::Unbounded, Bound::Excluded(b.0)),
            (_, None) => (Bound::Unbounded, Bound::Unbounded),
        };
        let mut sources: Vec<Source<'_, Stamp, Message, StoreError>> = Vec::new();
        for layer in self.layers() {
            let Some(stored) = layer.messages[t as usize].get(prefix) else {
                continue;
            };
            let it = stored.range(ids).map(|(_, v)| {
                let m: Message = decode(v)?;
                Ok((m.id, m))
            });
            if descending {
                sources.push(Box::new(it.rev()));
            } else {
                sources.push(Box::new(it));
            }
        }
        sources.push(Box::new(flush::ChunkIter::new(
            &self.trees[t as usize],
            self.bodies.clone(),
            prefix,
            from,
            descending,
        )));
        Merge::new(sources, descending).map(|r| r.map(|(_, m)| m))
    }

    // ---- writes (into the active layer) ------------------------------------

    pub fn put(&mut self, t: Table, key: Vec<u8>, val: Vec<u8>) {
        self.active.bytes += key.len() + val.len() + 64;
        self.active.maps[t as usize].insert(key.into(), Some(val.into()));
    }

    pub fn del(&mut self, t: Table, key: Vec<u8>) {
        self.active.bytes += key.len() + 64;
        self.active.maps[t as usize].insert(key.into(), None);
    }

    /// Add one message (already encoded) to a message table.
    pub fn put_message(&mut self, t: Table, prefix: &[u8], id: Stamp, encoded: Arc<[u8]>) {
        // A message is shared by its history and inbox entries: count it once.
        let shared = if t == Table::History {
            encoded.len()
        } else {
            0
        };
        self.active.bytes += prefix.len() + 8 + shared + 96;
        self.active.messages[t as usize]
            .entry(super::key::Key::new(prefix))
            .or_default()
            .insert(id.0, encoded);
    }

    // ---- checkpoints -------------------------------------------------------
}
