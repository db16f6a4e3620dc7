//! The end of a batch and the core's housekeeping: logging the batch's
//! operations and returning what goes out; sessions that do not keep up;
//! checkpoints, free disk space, shutdown, a storage failure; and what the
//! driver may ask of the core.

use super::*;

impl Hub {
    /// Enter or leave read-only mode as free space crosses the watermark
    /// (leaving it a little above, so it does not flap).
    pub(super) fn check_space(&mut self) {
        self.space_checked = self.now.at;
        let Some(free) = self.store.free_space() else {
            return;
        };
        let floor = self.batch_limits.min_free_bytes;
        let resume = floor + (floor / 8).max(crate::store::space::RESERVE_BYTES);
        if !self.storage_full && free < floor {
            self.storage_full = true;
            tracing::error!(
                free_mb = free >> 20,
                min_free_mb = floor >> 20,
                "the disk is nearly full: taking no changes until there is room"
            );
        } else if self.storage_full && free >= resume {
            self.storage_full = false;
            tracing::info!(
                free_mb = free >> 20,
                "there is room on the disk again: taking changes"
            );
            self.ensure_lobby();
        }
        if !self.storage_full {
            self.store.ensure_reserve(resume);
        }
        self.storage_full_flag
            .store(self.storage_full, Ordering::Relaxed);
        metrics::gauge!("chatd_storage_full").set(if self.storage_full { 1.0 } else { 0.0 });
    }

    /// Retention: when this node's settings want the watermarks higher
    /// (by a thousandth of the age, at least a second), it says so to the
    /// whole cluster with an `Expire` operation.
    pub(super) fn expire(&mut self) {
        self.retention_checked = self.now.at;
        if self.storage_full {
            return;
        }
        let now = self.now.wall_ms;
        let due = |age: Option<Duration>, have: Stamp| match age {
            Some(age) => {
                let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                let want = now.saturating_sub(age);
                let step = (age / 1000).max(1000);
                (want >= have.millis().saturating_add(step)).then(|| Stamp::new(want, 0))
            }
            None => None,
        };
        let have = self.store.watermarks();
        let history = due(self.batch_limits.history_max_age, have.history);
        let queue = due(self.batch_limits.queue_max_age, have.queue);
        if history.is_some() || queue.is_some() {
            let stamp = self.stamp();
            self.commit(
                stamp,
                OpBody::Expire {
                    history: history.unwrap_or(Stamp::ZERO),
                    queue: queue.unwrap_or(Stamp::ZERO),
                },
            );
        }
    }

    pub(super) fn storage_full_error() -> ChatError {
        ChatError::new(
            ErrorCode::StorageFull,
            "the server's disk is full; nothing can be changed until there is room (reading works)",
        )
    }

    /// Say goodbye to every session; new ones are turned away. The driver
    /// stops once none are left or its grace runs out.
    pub fn begin_shutdown(&mut self) {
        tracing::info!(sessions = self.sessions.len(), "shutting down");
        self.shutting_down = true;
        let ticket = self.store.ticket();
        for s in self.sessions.values() {
            let out = Out {
                ticket,
                item: OutItem::Bye(ErrorCode::ShuttingDown),
            };
            self.actions.push(Action::Say {
                link: s.link.clone(),
                out,
                or_cut: true,
            });
        }
    }

    /// Queue this batch's operations for the log, ask for a flush, and hand
    /// everything out with the ticket that flush will reach. The timers that
    /// are due run first.
    pub fn finish_batch(&mut self, now: Now) -> Batch {
        self.now = now;
        if now.at.saturating_duration_since(self.last_idle_sweep) >= IDLE_SWEEP {
            self.close_idle_sessions();
        }
        if now.at.saturating_duration_since(self.space_checked) >= SPACE_CHECK {
            self.check_space();
        }
        if now.at.saturating_duration_since(self.retention_checked) >= RETENTION_CHECK {
            self.expire();
        }
        if self.store.sweep_pending() {
            if let Err(e) = self.store.sweep(crate::apply::SWEEP_BUDGET) {
                self.fail(e);
            }
        }
        self.commit_marks();
        if !self.new_ops.is_empty() {
            let next = Vec::with_capacity(self.new_ops.len());
            let ops = std::mem::replace(&mut self.new_ops, next);
            if let Err(e) = self.store.append_log(self.node, ops) {
                self.fail(e);
            }
        }
        for (origin, ops) in std::mem::take(&mut self.peer_ops) {
            if let Err(e) = self.store.append_log(origin, ops) {
                self.fail(e);
            }
        }
        let applied = (self.applied != *self.store.applied()).then(|| {
            self.applied = self.store.applied().clone();
            self.applied.clone()
        });
        let ticket = self.store.commit();
        Batch {
            ticket,
            out: std::mem::take(&mut self.out),
            actions: std::mem::take(&mut self.actions),
            applied,
        }
    }

    /// Sessions whose outboxes had no room: close them. Closing may tell
    /// friends that the user went offline, which is another round of pushes
    /// (with the same ticket).
    pub fn overflowed(&mut self, ids: &[SessionId]) -> Batch {
        for &id in ids {
            if let Some(s) = self.sessions.get(&id) {
                tracing::info!(session = id, peer = %s.link.peer, "closing a session that does not keep up");
            }
            self.kill(id, None);
        }
        Batch {
            ticket: self.store.ticket(),
            out: std::mem::take(&mut self.out),
            actions: std::mem::take(&mut self.actions),
            applied: None,
        }
    }

    /// Checkpoint the tables when it is time (after the batch went out).
    pub fn maintain(&mut self) {
        let compact = (self.now.wall_ms, self.batch_limits.log_keep);
        if let Err(e) = self.store.maintain_at(!self.storage_full, Some(compact)) {
            self.fail(e);
        }
    }

    /// Write the tables out; the log already has everything.
    pub fn close(self) -> Result<(), StoreError> {
        self.store.close()
    }

    /// A storage failure leaves the hub unable to keep its promises: it
    /// keeps the first, and the driver stops chatd before anything goes out.
    pub(super) fn fail(&mut self, e: StoreError) {
        self.failed.get_or_insert(e);
    }

    pub fn failed(&self) -> Option<&StoreError> {
        self.failed.as_ref()
    }

    /// Messages in history (expired ones leave it as the sweep goes).
    pub fn stored_messages(&self) -> u64 {
        self.store.counts().messages
    }

    /// The link of a session the hub holds.
    pub fn link(&self, id: SessionId) -> Option<&Arc<SessionLink>> {
        self.sessions.get(&id).map(|s| &s.link)
    }

    pub fn links(&self) -> impl Iterator<Item = &Arc<SessionLink>> {
        self.sessions.values().map(|s| &s.link)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The users with a session on this node, for a new peer link.
    pub fn local_users(&self) -> Vec<Uid> {
        self.by_user.keys().copied().collect()
    }

    /// A fingerprint of the replicated state. It writes the tables out
    /// first: not on a full disk.
    pub fn digest(&mut self) -> Result<crate::store::Digest, String> {
        if self.storage_full {
            return Err(Self::storage_full_error().message);
        }
        self.store.digest().map_err(|e| e.to_string())
    }

    /// A reader of snapshots of this node's tables.
    pub fn snapshot_reader(&self) -> crate::store::SnapshotReader {
        self.store.snapshot_reader()
    }

    /// A reader of this node's log (for the mesh's links).
    pub fn log_reader(&self) -> LogReader {
        self.store.log_reader()
    }

    /// How far each origin's log is applied here.
    pub fn applied(&self) -> &Position {
        self.store.applied()
    }
}
