//! Stored history: what N messages cost on disk, what compacting the log
//! gives back, how long a node with them takes to start, and how long an
//! empty node takes to catch up, from the log and by snapshot.
//!
//! The scenario runs its own nodes (`bench::nodes`), in a work directory:
//!
//! 1. node A (keeping a day of log) stores N messages from one user to
//!    another who stays offline (each is in history and in a queue), and
//!    its data directory is measured from outside, as `du` does;
//! 2. with `--catch-up`, an empty node B joins A, and the time until it
//!    has applied all A has is the catch-up from the log (A's log holds
//!    everything);
//! 3. A is restarted keeping no log: the time until it listens is its
//!    start-up with N messages stored, then `status` is timed, and once
//!    the log is compacted the directory is measured again;
//! 4. with `--catch-up`, an empty node C joins: A's log no longer holds
//!    what C lacks, so C catches up by snapshot.

use super::*;
use crate::bench::nodes::{disk_use, Node, Positions};
use std::path::{Path, PathBuf};

pub struct HistoryOpts {
    /// The chatd binary to run.
    pub chatd: PathBuf,
    pub messages: usize,
    /// Text bytes per message.
    pub size: usize,
    /// Where the nodes' directories go (a new one under the system's temp
    /// directory by default, removed at the end).
    pub work_dir: Option<PathBuf>,
    /// Also time an empty node's catch-up, from the log and by snapshot.
    pub catch_up: bool,
}

/// The log's bytes, the tables' bytes (with their chunks' files), and
/// everything under a data dir.
fn measure(dir: &Path) -> (u64, u64, u64) {
    let db = dir.join("db");
    (
        disk_use(&db.join("oplog")),
        disk_use(&db.join("tables")) + disk_use(&db.join("chunks")),
        disk_use(dir),
    )
}

/// Wait for `node` to have applied every origin's log up to `target`;
/// the time it took from `since`.
async fn caught_up(node: &Node, target: &Positions, since: Instant) -> Res<f64> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        if let Ok((applied, _)) = node.log().await {
            let all = target
                .iter()
                .all(|(o, seq)| applied.get(o).is_some_and(|a| a >= seq));
            if all {
                return Ok(since.elapsed().as_secs_f64());
            }
        }
        if Instant::now() > deadline {
            return Err("the empty node did not catch up within an hour".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn history(o: &HistoryOpts) -> Res<Report> {
    let (work, temporary) = match &o.work_dir {
        Some(w) => (w.clone(), false),
        None => (
            std::env::temp_dir().join(format!("chatbench-{}", run_prefix())),
            true,
        ),
    };
    let result = run(o, &work).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

async fn run(o: &HistoryOpts, work: &Path) -> Res<Report> {
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let key = work.join("cluster.key");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut mesh = Vec::new();
    if o.catch_up {
        let made = std::process::Command::new(&o.chatd)
            .arg("init-cluster")
            .arg(&key)
            .output()
            .map_err(|e| e.to_string())?;
        if !made.status.success() {
            return Err(format!("chatd init-cluster: {made:?}"));
        }
        mesh = s(&["--mesh-listen", "127.0.0.1:0", "--cluster-key"]);
        mesh.push(key.display().to_string());
    }
    let with = |keep: &str, extra: &[String]| {
        let mut v = s(&["--log-keep-secs", keep]);
        v.extend(mesh.iter().cloned());
        v.extend(extra.iter().cloned());
        v
    };
    let a_dir = work.join("a");
    let a = Node::start(&o.chatd, &a_dir, &with("86400", &[]))?;
    let c = Common {
        addrs: vec![a.addr],
        proto: Proto::Native,
        transport: crate::bench::Transport::Tcp,
        pids: Vec::new(),
        size: o.size,
        password: "bench".into(),
        setup_concurrency: 2,
    };
    let prefix = run_prefix();
    let names = vec![format!("{prefix}-writer"), format!("{prefix}-away")];
    let ids = register_all(&c, &names).await?;
    // The tables are written every second or so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let empty = measure(&a_dir);
    let started = Instant::now();
    queue(&c, ids[0], ids[1], o.messages).await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = measure(&a_dir);
    let (end, _) = a.log().await?;

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
    let mut put = |k: &str, v: serde_json::Value| {
        r.extra.insert(k.into(), v);
    };
    put("text_bytes", json!(o.size));
    put("bytes_per_message", json!(per(empty.2, stored.2)));
    put("log_bytes_per_message", json!(per(empty.0, stored.0)));
    put("tables_bytes_per_message", json!(per(empty.1, stored.1)));
    put("disk_bytes", json!(stored.2));

    let join = |node: &Node| -> Vec<String> {
        let seed = node.mesh.map(|m| m.to_string()).unwrap_or_default();
        vec!["--join".into(), seed]
    };
    if o.catch_up {
        let since = Instant::now();
        let b = Node::start(&o.chatd, &work.join("b"), &with("86400", &join(&a)))?;
        put("catch_up_log_s", json!(caught_up(&b, &end, since).await?));
        b.stop()?;
    }

    // Restarted, keeping no log: start-up, status, compaction.
    a.stop()?;
    let a = Node::start(&o.chatd, &a_dir, &with("0", &[]))?;
    put("startup_s", json!(a.started_in.as_secs_f64()));
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        a.admin("status").await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    put("status_ms", json!(times[2]));
    let compacted = Instant::now();
    loop {
        let (end, start) = a.log().await?;
        if end == start {
            break;
        }
        if compacted.elapsed() > Duration::from_secs(600) {
            return Err("the log was not compacted within ten minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = measure(&a_dir);
    put("compacted_s", json!(compacted.elapsed().as_secs_f64()));
    put("disk_bytes_compacted", json!(after.2));
    put("bytes_per_message_compacted", json!(per(empty.2, after.2)));
    put("log_bytes_compacted", json!(after.0));

    if o.catch_up {
        let (end, _) = a.log().await?;
        let since = Instant::now();
        let c3 = Node::start(&o.chatd, &work.join("c"), &with("0", &join(&a)))?;
        put(
            "catch_up_snapshot_s",
            json!(caught_up(&c3, &end, since).await?),
        );
        c3.stop()?;
    }
    a.stop()?;
    Ok(r)
}
