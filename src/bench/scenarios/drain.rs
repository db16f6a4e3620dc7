//! Queued messages: how long a user who logs in takes to receive what
//! waited for them.

use super::*;

pub struct DrainOpts {
    pub common: Common,
    pub messages: usize,
    /// Time between queueing and the login (lets the server move the
    /// messages from memory to its database first).
    pub wait: Duration,
}

/// Queue `messages` for an offline user, then time its login until all
/// have arrived.
pub async fn drain(o: &DrainOpts) -> Res<Report> {
    let c = &o.common;
    let prefix = run_prefix();
    let names = vec![format!("{prefix}-sender"), format!("{prefix}-reader")];
    let ids = register_all(c, &names).await?;
    queue(c, ids[0], ids[1], o.messages).await?;
    tokio::time::sleep(o.wait).await;
    let before = rss_all(&c.pids);
    // The reader logs in; time until everything is in.
    let started = Instant::now();
    let mut reader = Setup::open(c.addrs[0], c.proto, c.transport).await?;
    reader.login(ids[1], &c.password).await?;
    let login = started.elapsed();
    let (mut rd, mut wr, pending) = reader.into_parts();
    let mut lines = Lines::default();
    lines.push(&pending);
    let mut got = 0usize;
    let mut acks = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got < o.messages {
        while let Some(v) = lines.next_value() {
            if let Seen::Message { id, .. } = decode(c.proto, v) {
                got += 1;
                acks.push(id);
            }
        }
        if got >= o.messages {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf))
            .await
            .map_err(|_| format!("drain stalled at {got} of {}", o.messages))?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the reader".into());
        }
        lines.push(&buf[..n]);
    }
    let all = started.elapsed();
    if c.proto == Proto::Native {
        let mut out = Vec::new();
        for chunk in acks.chunks(4096) {
            encode_ack(&mut out, chunk);
        }
        let _ = wr.write_all(&out).await;
    }
    let after = rss_all(&c.pids);
    let mut r = Report {
        scenario: "drain".into(),
        proto: format!("{:?}", c.proto).to_lowercase(),
        clients: 2,
        seconds: all.as_secs_f64(),
        sent: o.messages as u64,
        delivered: got as u64,
        sent_per_sec: 0.0,
        delivered_per_sec: got as f64 / (all - login).as_secs_f64().max(1e-9),
        lost: (o.messages - got) as u64,
        ..Report::default()
    };
    r.memory(&before, &after);
    r.extra.insert("queued".into(), json!(o.messages));
    r.extra
        .insert("login_ms".into(), json!(login.as_secs_f64() * 1000.0));
    r.extra.insert(
        "drain_ms".into(),
        json!((all - login).as_secs_f64() * 1000.0),
    );
    r.extra
        .insert("login_to_last_ms".into(), json!(all.as_secs_f64() * 1000.0));
    Ok(r)
}

/// Send `total` messages from `from` to `to` (pipelined, native) and wait
/// until every one is acknowledged as stored.
pub(super) async fn queue(c: &Common, from: u32, to: u32, total: usize) -> Res<()> {
    let mut sender = Setup::open(c.addrs[0], Proto::Native, c.transport).await?;
    sender.login(from, &c.password).await?;
    let (mut rd, mut wr, pending) = sender.into_parts();
    // Queue them, pipelined, and wait for every "sent".
    let epoch = Instant::now();
    let size = c.size;
    let writing = tokio::spawn(async move {
        let mut out = Vec::new();
        for chunk in (0..total).collect::<Vec<_>>().chunks(256) {
            out.clear();
            for i in chunk {
                encode_send(
                    &mut out,
                    Proto::Native,
                    to,
                    false,
                    now_ns(epoch),
                    (0, *i as u64),
                    size,
                );
            }
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        Ok::<Wr, String>(wr)
    });
    let mut lines = Lines::default();
    lines.push(&pending);
    let mut accepted = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while accepted < total {
        while let Some(v) = lines.next_value() {
            match decode(Proto::Native, v) {
                Seen::Sent => accepted += 1,
                Seen::Error(e) => return Err(format!("queueing failed: {e}")),
                _ => {}
            }
        }
        if accepted >= total {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf))
            .await
            .map_err(|_| "queueing stalled")?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the sender".into());
        }
        lines.push(&buf[..n]);
    }
    let _ = writing.await;
    Ok(())
}
