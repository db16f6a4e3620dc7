//! Sessions without messages: idle ones (memory per session) and a storm
//! of logins (the password hash's cost).

use super::*;

pub struct IdleOpts {
    pub common: Common,
    pub sessions: usize,
    pub hold: Duration,
}

/// Hold `sessions` logged-in, idle sessions; report server memory per session.
pub async fn idle(o: &IdleOpts) -> Res<Report> {
    let c = &o.common;
    let prefix = run_prefix();
    let names: Vec<String> = (0..o.sessions).map(|i| format!("{prefix}-{i}")).collect();
    let ids = register_all(c, &names).await?;
    // Let registration's own allocations settle before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_all(&c.pids);
    let started = Instant::now();
    let conns = login_all(c, &ids).await?;
    let login_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(o.hold).await;
    let after = rss_all(&c.pids);
    let mut r = Report {
        scenario: "idle".into(),
        proto: format!("{:?}", c.proto).to_lowercase(),
        clients: conns.len(),
        seconds: login_secs,
        ..Report::default()
    };
    r.memory(&before, &after);
    let per: Vec<f64> = r
        .memory
        .iter()
        .filter_map(|m| Some((m.after_kib? as f64 - m.before_kib? as f64) / o.sessions as f64))
        .collect();
    if let Some(k) = per.first() {
        r.extra
            .insert("kib_per_session".into(), json!((k * 100.0).round() / 100.0));
    }
    r.extra.insert(
        "logins_per_sec".into(),
        json!(o.sessions as f64 / login_secs),
    );
    drop(conns);
    Ok(r)
}

pub struct LoginOpts {
    pub common: Common,
    pub users: usize,
    pub concurrency: usize,
}

/// Many logins at once: each worker logs its users in and out.
pub async fn logins(o: &LoginOpts) -> Res<Report> {
    let c = &o.common;
    let prefix = run_prefix();
    let names: Vec<String> = (0..o.users).map(|i| format!("{prefix}-{i}")).collect();
    let ids = Arc::new(register_all(c, &names).await?);
    let before = rss_all(&c.pids);
    let next = Arc::new(AtomicU64::new(0));
    let hists = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // The servers' peak memory during the storm.
    let peak = {
        let (pids, next, total) = (c.pids.clone(), next.clone(), ids.len() as u64);
        tokio::spawn(async move {
            let mut peak = 0u64;
            while next.load(Ordering::Relaxed) < total {
                let now: u64 = rss_all(&pids).iter().filter_map(|(_, k)| *k).sum();
                peak = peak.max(now);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    let mut tasks = Vec::new();
    for w in 0..o.concurrency.max(1) {
        let (ids, next, hists, errors, c) = (
            ids.clone(),
            next.clone(),
            hists.clone(),
            errors.clone(),
            c.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut h = new_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= ids.len() {
                    break;
                }
                let t = Instant::now();
                let ok = async {
                    let mut s = Setup::open(addr_for(&c, w + i), c.proto, c.transport).await?;
                    s.login(ids[i], &c.password).await
                }
                .await;
                match ok {
                    Ok(()) => {
                        let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Ok(mut hs) = hists.lock() {
                hs.push(h);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let after = rss_all(&c.pids);
    let peak = peak.await.unwrap_or(0);
    // And a little after it, once the hashing pool has let go.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled: u64 = rss_all(&c.pids).iter().filter_map(|(_, k)| *k).sum();
    let mut all = new_histogram();
    if let Ok(hs) = hists.lock() {
        for h in hs.iter() {
            let _ = all.add(h);
        }
    }
    let mut r = Report {
        scenario: "logins".into(),
        proto: format!("{:?}", c.proto).to_lowercase(),
        clients: o.concurrency,
        seconds: secs,
        delivered: all.len(),
        delivered_per_sec: all.len() as f64 / secs,
        latency: Latency::of(&all),
        errors: errors.load(Ordering::Relaxed),
        ..Report::default()
    };
    r.memory(&before, &after);
    r.extra.insert("logins".into(), json!(all.len()));
    r.extra
        .insert("logins_per_sec".into(), json!(all.len() as f64 / secs));
    if !c.pids.is_empty() {
        r.extra.insert("rss_peak_kib".into(), json!(peak));
        r.extra.insert("rss_3s_after_kib".into(), json!(settled));
    }
    Ok(r)
}
