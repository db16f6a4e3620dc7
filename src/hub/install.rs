//! Installing a snapshot a peer sends (`crate::snapshot`): its operations
//! are applied as they come, merging into whatever this node has; once
//! the whole of it has arrived and its check agrees, the store's position
//! moves to the snapshot's point, and the logs serve the rest.
//!
//! Nobody is told of what a snapshot brings (it is not news), and a
//! snapshot cut short leaves only merged state behind, which the next one
//! (or the logs) completes.

use super::*;
use crate::snapshot::{Check, Part};
use crate::store::Point;

pub(super) struct Installing {
    from: NodeId,
    point: Point,
    check: Check,
}

impl Hub {
    pub(super) fn snapshot_part(&mut self, from: NodeId, part: Part) {
        match part {
            Part::Begin(point) => {
                // With the disk full nothing is taken in; it is asked again.
                if self.storage_full {
                    return;
                }
                if let Err(e) = self.store.begin_install(&point) {
                    return self.fail(e);
                }
                tracing::info!(from, position = ?point.position, "installing a snapshot");
                self.installing = Some(Installing {
                    from,
                    point,
                    check: Check::default(),
                });
            }
            Part::Ops(ops) => {
                let Some(inst) = self.installing.as_mut().filter(|i| i.from == from) else {
                    return;
                };
                for op in ops {
                    inst.check.add(&op);
                    if let Err(e) = crate::apply::apply_snapshot_op(&mut self.store, op) {
                        return self.fail(e);
                    }
                }
            }
            Part::End(check) => {
                let Some(inst) = self.installing.take_if(|i| i.from == from) else {
                    return;
                };
                if check != inst.check {
                    tracing::warn!(
                        from,
                        sent = check.ops,
                        got = inst.check.ops,
                        "a snapshot arrived incomplete or changed; not taken"
                    );
                    return;
                }
                if let Err(e) = self.store.finish_install(&inst.point) {
                    return self.fail(e);
                }
                self.installed();
                metrics::counter!("chatd_snapshots_installed_total").increment(1);
                tracing::info!(from, ops = check.ops, "snapshot installed");
            }
        }
    }

    /// What the hub keeps of the tables may be stale after a snapshot.
    fn installed(&mut self) {
        self.clock
            .observe(self.store.last_stamp(), self.now.wall_ms);
        self.names = NameCache::default();
        self.members.clear();
        match IdAlloc::new(&self.store, self.node) {
            Ok(ids) => self.ids = ids,
            Err(e) => self.fail(e),
        }
    }
}
