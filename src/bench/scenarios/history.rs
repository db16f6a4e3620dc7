//! Stored history: what N messages cost on the server's disk. The bench
//! stores them (one sender, one recipient who stays offline, so each is in
//! the history and the recipient's queue), waits for the server to write its
//! tables, and measures the data directory it is given from the outside,
//! as `du` would: the log and the tables apart.

use super::*;
use std::path::{Path, PathBuf};

pub struct HistoryOpts {
    pub common: Common,
    pub messages: usize,
    /// The server's data directory (measured, never written).
    pub data_dir: PathBuf,
    /// Time after the last message before measuring (the server writes its
    /// tables about every second).
    pub wait: Duration,
}

/// Bytes on disk under `dir` (allocated blocks, as `du` counts them).
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += disk_use(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}

/// The log's bytes, the tables' bytes, and everything under the directory.
fn measure(dir: &Path) -> (u64, u64, u64) {
    let log = disk_use(&dir.join("db").join("log"));
    let tables = disk_use(&dir.join("db").join("tables"));
    (log, tables, disk_use(dir))
}

pub async fn history(o: &HistoryOpts) -> Res<Report> {
    let c = &o.common;
    if !o.data_dir.is_dir() {
        return Err(format!("{} is not a directory", o.data_dir.display()));
    }
    let prefix = run_prefix();
    let names = vec![format!("{prefix}-writer"), format!("{prefix}-away")];
    let ids = register_all(c, &names).await?;
    tokio::time::sleep(o.wait).await;
    let before = measure(&o.data_dir);
    let started = Instant::now();
    queue(c, ids[0], ids[1], o.messages).await?;
    let took = started.elapsed();
    tokio::time::sleep(o.wait).await;
    let after = measure(&o.data_dir);
    let n = o.messages as f64;
    let per = |b: u64, a: u64| a.saturating_sub(b) as f64 / n;
    let mut r = Report {
        scenario: "history".into(),
        proto: "native".into(),
        clients: 1,
        seconds: took.as_secs_f64(),
        sent: o.messages as u64,
        sent_per_sec: n / took.as_secs_f64().max(1e-9),
        ..Report::default()
    };
    r.extra.insert("text_bytes".into(), json!(c.size));
    r.extra
        .insert("bytes_per_message".into(), json!(per(before.2, after.2)));
    r.extra.insert(
        "log_bytes_per_message".into(),
        json!(per(before.0, after.0)),
    );
    r.extra.insert(
        "tables_bytes_per_message".into(),
        json!(per(before.1, after.1)),
    );
    r.extra.insert("disk_bytes_before".into(), json!(before.2));
    r.extra.insert("disk_bytes_after".into(), json!(after.2));
    Ok(r)
}
