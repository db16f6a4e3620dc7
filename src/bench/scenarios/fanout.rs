//! One group, many members: each message fans out to all of them.

use super::*;

pub struct FanoutOpts {
    pub common: Common,
    pub members: usize,
    pub senders: usize,
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// One group of `members`; `senders` of them send, each keeping `window`
/// messages not yet delivered to every other member.
pub async fn fanout(o: &FanoutOpts) -> Res<Report> {
    let c = &o.common;
    let k = o.members.max(2);
    let prefix = run_prefix();
    let names: Vec<String> = (0..k).map(|i| format!("{prefix}-{i}")).collect();
    let ids = register_all(c, &names).await?;
    // Make the group (native setup connections), everyone in it.
    let mut owner = Setup::open(c.addrs[0], Proto::Native, c.transport).await?;
    owner.login(ids[0], &c.password).await?;
    let g = owner
        .call(json!({"type": "group_create", "name": format!("{prefix}-g")}))
        .await?["group"]["id"]
        .as_u64()
        .ok_or("no group id")? as u32;
    for id in &ids[1..] {
        owner
            .call(json!({"type": "group_invite", "group": g, "user": id}))
            .await?;
    }
    drop(owner);
    if c.addrs.len() > 1 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let conns = login_all(c, &ids).await?;
    let before = rss_all(&c.pids);
    let shared = Shared::new();
    let s = o.senders.clamp(1, k);
    let ring = (o.window * 4).max(4);
    let windows: Vec<Arc<Semaphore>> = (0..s).map(|_| Arc::new(Semaphore::new(o.window))).collect();
    let counts: Arc<Vec<AtomicU32>> = Arc::new((0..s * ring).map(|_| AtomicU32::new(0)).collect());
    let needed = (k - 1) as u32;
    let release: OnMessage = {
        let (windows, counts) = (windows.clone(), counts.clone());
        Arc::new(move |sender, seq| {
            let slot = sender as usize * ring + (seq as usize % ring);
            if let Some(c) = counts.get(slot) {
                if c.fetch_add(1, Ordering::AcqRel) + 1 == needed {
                    c.store(0, Ordering::Release);
                    if let Some(w) = windows.get(sender as usize) {
                        w.add_permits(1);
                    }
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for (i, (rd, wr, pending)) in conns.into_iter().enumerate() {
        let ack_rx = spawn_reader(&mut tasks, rd, pending, c.proto, &shared, &release);
        if i < s {
            let args = WriterArgs {
                me: i as u32,
                to: g,
                group: true,
                proto: c.proto,
                size: c.size,
                pace: Pace::Closed,
                window: windows[i].clone(),
            };
            tasks.push(tokio::spawn(writer(wr, args, shared.clone(), ack_rx)));
        } else {
            // Members that only listen still acknowledge.
            tasks.push(tokio::spawn(ack_only(wr, ack_rx)));
        }
    }
    let s2 = shared.clone();
    let secs = measure(&shared, o.warmup, o.duration, move || {
        s2.sent_total.load(Ordering::Relaxed) * u64::from(needed)
    })
    .await;
    let expected = shared.sent_total.load(Ordering::Relaxed) * u64::from(needed);
    let after = rss_all(&c.pids);
    wind_up(&shared, tasks).await;
    let mut r = finish(&shared, "fanout", c.proto, k, secs, expected);
    r.memory(&before, &after);
    r.extra.insert("members".into(), json!(k));
    r.extra.insert("senders".into(), json!(s));
    r.extra.insert("window".into(), json!(o.window));
    Ok(r)
}

pub(super) async fn ack_only(mut wr: Wr, acks: Option<mpsc::UnboundedReceiver<u64>>) {
    let Some(mut rx) = acks else {
        std::future::pending::<()>().await;
        return;
    };
    let mut ids = Vec::new();
    let mut out = Vec::new();
    while let Some(id) = rx.recv().await {
        ids.push(id);
        while let Ok(id) = rx.try_recv() {
            ids.push(id);
        }
        out.clear();
        for chunk in ids.chunks(1024) {
            encode_ack(&mut out, chunk);
        }
        ids.clear();
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}
