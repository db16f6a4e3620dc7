//! Merging sorted streams: the newest layer first, sled last. When several
//! sources hold the same key, the earliest source wins and the others'
//! entries are skipped.

pub type Source<'a, K, V, E> = Box<dyn Iterator<Item = Result<(K, V), E>> + 'a>;

pub struct Merge<'a, K: Ord, V, E> {
    sources: Vec<Source<'a, K, V, E>>,
    /// The next item of each source, pulled ahead of time.
    heads: Vec<Option<(K, V)>>,
    descending: bool,
    pending_error: Option<E>,
}

impl<'a, K: Ord, V, E> Merge<'a, K, V, E> {
    /// `sources` must each be sorted in the same direction; index 0 has priority.
    pub fn new(mut sources: Vec<Source<'a, K, V, E>>, descending: bool) -> Self {
        let mut heads = Vec::with_capacity(sources.len());
        let mut pending_error = None;
        for s in sources.iter_mut() {
            match s.next() {
                Some(Ok(kv)) => heads.push(Some(kv)),
                Some(Err(e)) => {
                    pending_error.get_or_insert(e);
                    heads.push(None)
                }
                None => heads.push(None),
            }
        }
        Merge {
            sources,
            heads,
            descending,
            pending_error,
        }
    }

    fn refill(&mut self, i: usize) {
        self.heads[i] = match self.sources[i].next() {
            Some(Ok(kv)) => Some(kv),
            Some(Err(e)) => {
                self.pending_error.get_or_insert(e);
                None
            }
            None => None,
        };
    }
}

impl<K: Ord, V, E> Iterator for Merge<'_, K, V, E> {
    type Item = Result<(K, V), E>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            // Stop at the first error.
            self.heads.iter_mut().for_each(|h| *h = None);
            return Some(Err(e));
        }
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            let Some((k, _)) = head else { continue };
            let better = match best.and_then(|b| self.heads[b].as_ref()) {
                None => true,
                Some((bk, _)) => {
                    if self.descending {
                        k > bk
                    } else {
                        k < bk
                    }
                }
            };
            if better {
                best = Some(i);
            }
        }
        let b = best?;
        let item = self.heads[b].take()?;
        self.refill(b);
        // Drop the same key from lower-priority sources.
        for j in b + 1..self.heads.len() {
            while matches!(&self.heads[j], Some((kj, _)) if *kj == item.0) {
                self.refill(j);
            }
        }
        Some(Ok(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src<'a>(v: Vec<(u32, &'a str)>) -> Source<'a, u32, &'a str, ()> {
        Box::new(v.into_iter().map(Ok))
    }

    #[test]
    fn merges_and_prefers_earlier_sources() {
        let m = Merge::new(
            vec![
                src(vec![(2, "new2"), (5, "new5")]),
                src(vec![(1, "old1"), (2, "old2"), (9, "old9")]),
            ],
            false,
        );
        let got: Vec<_> = m.map(|r| r.unwrap()).collect();
        assert_eq!(
            got,
            vec![(1, "old1"), (2, "new2"), (5, "new5"), (9, "old9")]
        );
    }

    #[test]
    fn merges_descending() {
        let m = Merge::new(
            vec![
                src(vec![(5, "a"), (2, "b")]),
                src(vec![(9, "c"), (5, "d"), (1, "e")]),
            ],
            true,
        );
        let got: Vec<_> = m.map(|r| r.unwrap().0).collect();
        assert_eq!(got, vec![9, 5, 2, 1]);
    }
}
