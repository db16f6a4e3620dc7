//! The state digest: a fingerprint of the replicated tables, equal on
//! nodes that hold the same state (how tests and operators compare nodes).

use super::*;

/// A fingerprint of the replicated state, equal on nodes that hold the same
/// state. Inboxes are left out (they are derived from history and cursors,
/// and where they are chunked depends on timing); history is hashed message
/// by message for the same reason, leaving out those below the history
/// watermark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub hash: String,
    pub users: u64,
    pub groups: u64,
    pub messages: u64,
}

/// FNV-1a: stable across builds and machines, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // Length separates adjacent fields.
        for b in (bytes.len() as u64).to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Store {
    pub fn digest(&mut self) -> Result<Digest> {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        let mut d = Digest {
            hash: String::new(),
            users: 0,
            groups: 0,
            messages: 0,
        };
        // Expired messages count as gone wherever the sweep has got to.
        while self.sweep(4096)? {}
        self.checkpoint_now()?;
        let floor = self.marks.history.0;
        for t in Table::ALL {
            // The tally is bookkeeping of where messages are (and lives in
            // the meta tree, with this node's identity).
            if t == Table::Inbox || t == Table::Tally {
                continue;
            }
            h.write(t.tree_name().as_bytes());
            for r in self.trees[t as usize].iter() {
                let (k, v) = r?;
                match t {
                    Table::History => {
                        for (id, body) in flush::frames(&self.bodies, &v)? {
                            if id < floor {
                                continue;
                            }
                            h.write(&k[..schema::CONV_LEN]);
                            h.write(&id.to_be_bytes());
                            h.write(&body);
                            d.messages += 1;
                        }
                    }
                    _ => {
                        h.write(&k);
                        h.write(&v);
                        match t {
                            Table::Users => d.users += 1,
                            Table::Groups => d.groups += 1,
                            _ => {}
                        }
                    }
                }
            }
        }
        d.hash = format!("{:016x}", h.0);
        Ok(d)
    }
}
