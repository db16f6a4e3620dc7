//! Backups: a snapshot of the tables (`crate::snapshot`: the state as
//! operations) and the log after its point, up to a durable position. That
//! is all a node needs, and it stays small once the log is compacted. The
//! snapshot pins the log after its point while the backup is written, so a
//! backup is consistent while chatd keeps running.
//!
//! File format: `CHATDBAK` and a version byte (2), then records
//! `[kind u8][length u32 big-endian][payload]`: kind 1 is JSON metadata
//! ([`Meta`]: node, uuid, end position, snapshot point), kind 3 a batch of
//! the snapshot's operations (`Vec<(stamp, operation)>`, stored encoding),
//! kind 4 a run of one origin's logged operations after the point (`origin
//! u16`, then `Vec<Op>`), kind 255 the end (JSON [`Summary`], with the
//! snapshot's check). Version 1 files (the whole log as segments, kind 2)
//! are still restored.

use crate::apply::{apply, apply_snapshot_op};
use crate::ids::NodeId;
use crate::model::Op;
use crate::snapshot::{Check, Reading, SnapOp};
use crate::store::{decode, encode, LogReader, Point, Position, SnapshotReader};
use crate::store::{Store, StoreOptions};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;

const MAGIC_V1: &[u8] = b"CHATDBAK\x01";
const MAGIC: &[u8] = b"CHATDBAK\x02";
const META: u8 = 1;
const SEGMENT: u8 = 2;
const SNAPSHOT: u8 = 3;
const TAIL: u8 = 4;
const END: u8 = 255;

/// Logged operations per tail record.
const TAIL_BATCH: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub node: NodeId,
    pub uuid: Option<String>,
    /// The backup holds every operation up to here.
    pub position: Position,
    /// The snapshot's point (absent in version 1 files).
    #[serde(default)]
    pub point: Option<Point>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Records of the log (segments in version 1, runs in version 2).
    pub segments: u64,
    /// Logged operations.
    pub ops: u64,
    /// The snapshot's operations, and their check.
    #[serde(default)]
    pub snapshot: Option<Check>,
}

fn record(w: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&[kind])?;
    w.write_all(&(payload.len() as u32).to_be_bytes())?;
    w.write_all(payload)
}

/// Write a snapshot of the tables and the log after its point, up to
/// `meta.position` (and at least up to the point).
pub fn write(
    w: &mut impl Write,
    snapshots: SnapshotReader,
    logs: &LogReader,
    meta: &Meta,
) -> Result<Summary, String> {
    let io = |e: std::io::Error| format!("write failed: {e}");
    let mut reading = Reading::start(snapshots).map_err(|e| e.to_string())?;
    let point = reading.point().clone();
    let mut meta = meta.clone();
    for (&o, &seq) in &point.position {
        let end = meta.position.entry(o).or_insert(seq);
        *end = (*end).max(seq);
    }
    meta.point = Some(point.clone());
    w.write_all(MAGIC).map_err(io)?;
    let m = serde_json::to_vec(&meta).map_err(|e| e.to_string())?;
    record(w, META, &m).map_err(io)?;
    while let Some(ops) = reading.next_batch().map_err(|e| e.to_string())? {
        record(w, SNAPSHOT, &encode(&ops)).map_err(io)?;
    }
    let mut summary = Summary {
        snapshot: Some(reading.check()),
        ..Summary::default()
    };
    for (&origin, &upto) in &meta.position {
        let mut after = point.position.get(&origin).copied().unwrap_or(0);
        while after < upto {
            let mut ops = logs
                .read(origin, after, TAIL_BATCH)
                .map_err(|e| e.to_string())?;
            ops.retain(|o| o.seq <= upto);
            let Some(last) = ops.last().map(|o| o.seq) else {
                break;
            };
            let mut payload = origin.to_be_bytes().to_vec();
            payload.extend_from_slice(&encode(&ops));
            record(w, TAIL, &payload).map_err(io)?;
            summary.segments += 1;
            summary.ops += ops.len() as u64;
            after = last;
        }
    }
    let end = serde_json::to_vec(&summary).map_err(|e| e.to_string())?;
    record(w, END, &end).map_err(io)?;
    w.flush().map_err(io)?;
    // Only now may the log after the point go.
    drop(reading);
    Ok(summary)
}

fn read_record(r: &mut impl Read) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)
        .map_err(|_| "the backup is truncated".to_string())?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > 64 << 20 {
        return Err("the backup is corrupt (record too large)".into());
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .map_err(|_| "the backup is truncated".to_string())?;
    Ok((head[0], payload))
}

/// Restore a backup into `data_dir`, which must be empty or missing, and
/// build the tables from it.
pub fn restore(file: &Path, data_dir: &Path) -> Result<(Meta, Summary), String> {
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map_err(|e| format!("cannot read {}: {e}", data_dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty: restore only into an empty directory",
            data_dir.display()
        ));
    }
    let f =
        std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let mut r = std::io::BufReader::new(f);
    let mut magic = [0u8; 9];
    r.read_exact(&mut magic)
        .map_err(|_| format!("{} is not a chatd backup", file.display()))?;
    if magic != MAGIC && magic != MAGIC_V1 {
        return Err(format!("{} is not a chatd backup", file.display()));
    }
    let (kind, payload) = read_record(&mut r)?;
    if kind != META {
        return Err("the backup is corrupt (no metadata)".into());
    }
    let meta: Meta = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let mut store =
        Store::open(StoreOptions::at(data_dir.join("db"))).map_err(|e| e.to_string())?;
    store.set_node_id(meta.node)?;
    if let Some(uuid) = &meta.uuid {
        store.set_node_uuid(uuid)?;
    }
    let summary = read_body(&mut r, &mut store, &meta)?;
    // Build the tables now, so the restored node starts at once.
    store.commit();
    let mut failed = None;
    store
        .replay(|s, op| {
            if let Err(e) = apply(s, op) {
                failed.get_or_insert(e.to_string());
            }
        })
        .map_err(|e| e.to_string())?;
    if let Some(e) = failed {
        return Err(e);
    }
    store.close().map_err(|e| e.to_string())?;
    Ok((meta, summary))
}

/// Everything after the metadata: the snapshot (installed as it comes),
/// the log after it (appended), and the end, which must agree with both.
fn read_body(r: &mut impl Read, store: &mut Store, meta: &Meta) -> Result<Summary, String> {
    let corrupt = |what: &str| format!("the backup is corrupt ({what})");
    if let Some(point) = &meta.point {
        store.begin_install(point).map_err(|e| e.to_string())?;
    }
    let mut check = Check::default();
    let mut snapshot_done = meta.point.is_none();
    let mut seen = Summary::default();
    loop {
        let (kind, payload) = read_record(r)?;
        match kind {
            SNAPSHOT if !snapshot_done => {
                let ops: Vec<SnapOp> = decode(&payload).map_err(|e| e.to_string())?;
                for op in ops {
                    check.add(&op);
                    apply_snapshot_op(store, op).map_err(|e| e.to_string())?;
                }
            }
            TAIL | SEGMENT if payload.len() > 2 => {
                if !snapshot_done {
                    snapshot_done = true;
                    finish_snapshot(store, meta)?;
                }
                let origin = u16::from_be_bytes([payload[0], payload[1]]);
                let ops: Vec<Op> = match kind {
                    // Version 1: `first seq u64` before the stored segment.
                    SEGMENT => decode(payload.get(10..).ok_or_else(|| corrupt("segment"))?),
                    _ => decode(&payload[2..]),
                }
                .map_err(|e| e.to_string())?;
                if ops.iter().any(|o| o.origin != origin) {
                    return Err(corrupt("a run of another node's operations"));
                }
                seen.segments += 1;
                seen.ops += ops.len() as u64;
                // The first run may begin before the point.
                let have = store.applied().get(&origin).copied().unwrap_or(0);
                let ops: Vec<Op> = ops.into_iter().filter(|o| o.seq > have).collect();
                store.append_log(origin, ops).map_err(|e| e.to_string())?;
            }
            END => {
                if !snapshot_done {
                    finish_snapshot(store, meta)?;
                }
                let s: Summary = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
                if s.segments != seen.segments {
                    return Err(corrupt("segment count"));
                }
                if meta.point.is_some() && s.snapshot != Some(check) {
                    return Err(corrupt("the snapshot's check"));
                }
                return Ok(s);
            }
            _ => return Err(corrupt("unknown record")),
        }
    }
}

fn finish_snapshot(store: &mut Store, meta: &Meta) -> Result<(), String> {
    match &meta.point {
        Some(point) => store.finish_install(point).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Back up a stopped node's data directory (refused while chatd runs there).
pub fn backup_offline(data_dir: &Path, file: &Path) -> Result<Summary, String> {
    let store = Store::open(StoreOptions::at(data_dir.join("db"))).map_err(|e| e.to_string())?;
    let Some(node) = store.node_id()? else {
        return Err(format!("{} holds no chatd node", data_dir.display()));
    };
    let uuid = store.node_uuid()?;
    let meta = Meta {
        node,
        uuid,
        position: store.applied().clone(),
        point: None,
    };
    let out = create_private(file)?;
    let mut w = std::io::BufWriter::new(out);
    let summary = write(&mut w, store.snapshot_reader(), &store.log_reader(), &meta)?;
    store.close().map_err(|e| e.to_string())?;
    Ok(summary)
}

/// A new file only its owner can read (backups hold password hashes).
pub fn create_private(file: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| format!("cannot create {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Stamp, Uid};
    use crate::model::{OpBody, Target};

    /// A file as version 1 wrote it: the whole log, segment by segment.
    fn write_v1(store: &Store, file: &Path) {
        let mut w = std::fs::File::create(file).unwrap();
        w.write_all(MAGIC_V1).unwrap();
        let meta = serde_json::json!({"node": 1, "uuid": null, "position": {"1": 41}});
        record(&mut w, META, meta.to_string().as_bytes()).unwrap();
        let mut n = 0;
        // Segments of a few operations each, as that version stored them.
        for ops in store.log_reader().read(1, 0, 100).unwrap().chunks(5) {
            let mut payload = 1u16.to_be_bytes().to_vec();
            payload.extend_from_slice(&ops[0].seq.to_be_bytes());
            payload.extend_from_slice(&encode(ops));
            record(&mut w, SEGMENT, &payload).unwrap();
            n += 1;
        }
        let end = serde_json::json!({"segments": n, "ops": 41});
        record(&mut w, END, end.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn a_version_1_backup_still_restores() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(StoreOptions::at(dir.path().join("db"))).unwrap();
        let op = |seq: u64, body: OpBody| Op {
            origin: 1,
            seq,
            stamp: Stamp::new(1000 + seq, 1),
            body,
        };
        let mut ops = vec![op(
            1,
            OpBody::Register {
                user: Uid(1),
                name: "ann".into(),
                hash: "h".into(),
            },
        )];
        for i in 2..=41 {
            ops.push(op(
                i,
                OpBody::Send {
                    from: Uid(1),
                    to: Target::User(Uid(1)),
                    text: format!("m{i}"),
                    cid: None,
                    time: None,
                },
            ));
        }
        // One segment per op: many records.
        for o in ops {
            s.append_log(1, vec![o]).unwrap();
        }
        let file = dir.path().join("v1.bak");
        // The tables wait for the log: once written, the log is on disk.
        s.checkpoint_now().unwrap();
        write_v1(&s, &file);
        s.close().unwrap();
        let target = dir.path().join("restored");
        let (meta, summary) = restore(&file, &target).unwrap();
        assert_eq!((meta.node, summary.ops), (1, 41));
        let mut r = Store::open(StoreOptions::at(target.join("db"))).unwrap();
        assert_eq!(r.digest().unwrap().messages, 40);
        assert_eq!(r.user(Uid(1)).unwrap().unwrap().name, "ann");
        r.close().unwrap();
    }
}
