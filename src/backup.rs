//! Backups: the operation log up to a durable position, which is all a node
//! needs (the tables are derived from it). Log segments never change once
//! written, so copying them up to a position is a consistent snapshot while
//! chatd keeps running.
//!
//! File format: `CHATDBAK` and a version byte (1), then records
//! `[kind u8][length u32 big-endian][payload]`: kind 1 is JSON metadata
//! (node, uuid, position), kind 2 a log segment (`origin u16`, `first seq
//! u64`, the stored segment bytes), kind 255 the end (JSON with counts).

use crate::apply::apply;
use crate::ids::NodeId;
use crate::store::{LogReader, Position, Store, StoreOptions};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"CHATDBAK\x01";
const META: u8 = 1;
const SEGMENT: u8 = 2;
const END: u8 = 255;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub node: NodeId,
    pub uuid: Option<String>,
    pub position: Position,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Summary {
    pub segments: u64,
    pub ops: u64,
}

fn record(w: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&[kind])?;
    w.write_all(&(payload.len() as u32).to_be_bytes())?;
    w.write_all(payload)
}

/// Write every log segment up to `meta.position`.
pub fn write(w: &mut impl Write, logs: &LogReader, meta: &Meta) -> Result<Summary, String> {
    let io = |e: std::io::Error| format!("write failed: {e}");
    w.write_all(MAGIC).map_err(io)?;
    let m = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
    record(w, META, &m).map_err(io)?;
    let mut summary = Summary {
        segments: 0,
        ops: 0,
    };
    for (&origin, &upto) in &meta.position {
        let mut after = None;
        loop {
            let segs = logs
                .segments(origin, after, upto, 256)
                .map_err(|e| e.to_string())?;
            if segs.is_empty() {
                break;
            }
            for (first, raw) in &segs {
                let mut payload = Vec::with_capacity(raw.len() + 10);
                payload.extend_from_slice(&origin.to_be_bytes());
                payload.extend_from_slice(&first.to_be_bytes());
                payload.extend_from_slice(raw);
                record(w, SEGMENT, &payload).map_err(io)?;
                summary.segments += 1;
                after = Some(*first);
            }
        }
        summary.ops += upto;
    }
    let end = serde_json::to_vec(&summary).map_err(|e| e.to_string())?;
    record(w, END, &end).map_err(io)?;
    w.flush().map_err(io)?;
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
/// rebuild the tables from it.
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
    if magic != MAGIC {
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
    let mut segments = 0;
    let summary = loop {
        let (kind, payload) = read_record(&mut r)?;
        match kind {
            SEGMENT if payload.len() > 10 => {
                let origin = u16::from_be_bytes([payload[0], payload[1]]);
                let mut first = [0u8; 8];
                first.copy_from_slice(&payload[2..10]);
                store
                    .import_segment(origin, u64::from_be_bytes(first), &payload[10..])
                    .map_err(|e| e.to_string())?;
                segments += 1;
            }
            END => {
                let s: Summary = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
                if s.segments != segments {
                    return Err("the backup is corrupt (segment count)".into());
                }
                break s;
            }
            _ => return Err("the backup is corrupt (unknown record)".into()),
        }
    };
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
    };
    let out = create_private(file)?;
    let mut w = std::io::BufWriter::new(out);
    let summary = write(&mut w, &store.log_reader(), &meta)?;
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
