//! The web listener over real sockets: the web client's files and their
//! headers, chatd's protocol over WebSocket (ids as strings, one value per
//! message, the same limits as TCP), the Origin check, and TLS (HTTPS, WSS,
//! chatd's protocol over TLS, a renewed certificate taken on SIGHUP).

mod common;

use common::web::{self, get};
use common::{spawn_chatd, Client, TestServer, WAIT};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn the_web_client_is_served_with_strict_headers() {
    let srv = TestServer::start().await;
    let (status, head, body) = get(srv.web(), "/").await;
    assert_eq!(status, 200, "{head}");
    let page = String::from_utf8(body).unwrap();
    assert!(
        page.contains("<script type=\"module\" src=\"/app.js\">"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "no inline scripts");
    for h in [
        "Content-Type: text/html; charset=utf-8",
        "Content-Security-Policy: default-src 'none'; script-src 'self'",
        "X-Content-Type-Options: nosniff",
        "X-Frame-Options: DENY",
    ] {
        assert!(head.contains(h), "{h} missing from {head}");
    }
    for (path, mime) in [
        ("/app.js", "text/javascript"),
        ("/conn.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        let (status, head, body) = get(srv.web(), path).await;
        assert_eq!(status, 200, "{path}");
        assert!(head.contains(mime), "{path}: {head}");
        assert!(!body.is_empty(), "{path}");
    }
    let (status, _, _) = get(srv.web(), "/secret").await;
    assert_eq!(status, 404);
    let (status, head, _) = get(srv.web(), "/ws").await;
    assert_eq!(status, 426, "{head}");
    // No bodies, no other methods.
    let s = tokio::net::TcpStream::connect(srv.web()).await.unwrap();
    let (status, _, _) = web::http_exchange(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 413);
    // The chat port is still served while the web listener is busy.
    srv.client().await.ok(json!({"type": "ping"})).await;
}

#[tokio::test]
async fn over_websocket_ids_are_strings_and_tcp_keeps_numbers() {
    let srv = TestServer::start().await;
    let mut alice = Client::connect_ws(srv.web()).await;
    let alice_id = alice.register("alice", "pw").await;
    let login = alice.login("alice", "pw").await;
    assert_eq!(login["user"]["id"], alice_id, "user ids stay numbers");
    let (mut bob, bob_id) = srv.user("bob").await;

    let sent = alice
        .ok(json!({"type": "send", "to": bob_id, "text": "hi bob", "cid": "c1"}))
        .await;
    let id_text = sent["id"].as_str().expect("a string id over WebSocket");
    let id: u64 = id_text.parse().unwrap();
    assert!(id > (1u64 << 53), "ids do not fit a JavaScript number");
    let m = bob.push_of("message").await;
    assert_eq!(m["id"].as_u64(), Some(id), "a number over TCP, the same id");
    assert_eq!(m["from"], alice_id);

    bob.ok(json!({"type": "send", "to": alice_id, "text": "hi alice"}))
        .await;
    let m = alice.push_of("message").await;
    let back = m["id"]
        .as_str()
        .expect("pushes carry string ids")
        .to_string();
    // Requests take either form, over either transport.
    let acked = alice.ok(json!({"type": "ack", "ids": [back]})).await;
    assert_eq!(acked["count"], 1);
    bob.ok(json!({"type": "ack", "ids": [id_text]})).await;
    let h = alice
        .ok(json!({"type": "history", "with": bob_id, "before": back, "limit": 10}))
        .await;
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["id"], id_text);
    assert_eq!(msgs[0]["text"], "hi bob");
    let e = alice
        .err(json!({"type": "ack", "ids": ["12x"]}), "bad_request")
        .await;
    assert!(e["message"].as_str().unwrap().contains("ids"), "{e}");
}

#[tokio::test]
async fn one_value_per_message_and_the_limits_of_tcp() {
    let srv = TestServer::start_with(|s| {
        s.max_frame_bytes = 2048;
        s.idle_timeout_secs = 1;
    })
    .await;
    let mut c = Client::connect_ws(srv.web()).await;
    // Two values in one message is not one value; the session goes on.
    c.send_raw(br#"{"type":"ping"} {"type":"ping"}"#).await;
    assert_eq!(c.next().await["code"], "bad_json");
    c.send_raw(b"not json").await;
    assert_eq!(c.next().await["code"], "bad_json");
    assert_eq!(c.ok(json!({"type": "ping"})).await["type"], "pong");
    // Too large: said, then closed.
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(3000));
    c.send_raw(big.as_bytes()).await;
    assert_eq!(c.next().await["code"], "too_large");
    assert!(c.closed().await);

    // Binary messages are refused with a reason.
    let mut b = Client::connect_ws(srv.web()).await;
    if let common::Wire::Ws(ws) = b.wire_mut() {
        use futures_util::SinkExt;
        ws.send(tokio_tungstenite::tungstenite::Message::binary(
            b"{}".to_vec(),
        ))
        .await
        .unwrap();
    }
    let e = b.next().await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(b.closed().await);

    // The idle rule of TCP sessions holds here too.
    let mut idle = Client::connect_ws(srv.web()).await;
    idle.register("idler", "pw").await;
    idle.login("idler", "pw").await;
    let e = idle.next().await;
    assert_eq!(e["code"], "idle_timeout", "{e}");
    assert!(idle.closed().await);
}

#[tokio::test]
async fn pages_of_other_sites_cannot_open_sessions() {
    let srv = TestServer::start_with(|s| s.web_origin = vec!["https://app.example".into()]).await;
    let web = srv.web();
    let own = format!("http://{web}");
    assert!(web::connect(web, Some(&own)).await.is_ok());
    assert!(web::connect(web, Some("https://app.example")).await.is_ok());
    // No Origin: not a browser page (like a TCP client).
    assert!(web::connect(web, None).await.is_ok());
    for evil in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        match web::connect(web, Some(evil)).await {
            Err(403) => {}
            Err(s) => panic!("{evil}: status {s}"),
            Ok(_) => panic!("{evil} was let in"),
        }
    }
}

async fn resume(c: &mut Client, token: &str) -> Value {
    c.call(json!({"type": "resume", "token": token})).await
}

// chatctl is run synchronously: the server needs threads of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_resumes_a_session_until_it_is_revoked() {
    let srv = TestServer::start().await;
    let web = srv.web();
    let (mut bob, _) = srv.user("bob").await;
    let mut a = Client::connect_ws(web).await;
    let alice = a.register("alice", "pw").await;
    let token = a.login("alice", "pw").await["token"]
        .as_str()
        .expect("a login hands out a token")
        .to_string();
    drop(a);
    // While away, a message waits; resuming delivers it.
    bob.ok(json!({"type": "send", "to": alice, "text": "while you were away"}))
        .await;
    let mut a = Client::connect_ws(web).await;
    let r = resume(&mut a, &token).await;
    assert_eq!(r["type"], "logged_in", "{r}");
    assert_eq!(r["user"]["id"], alice);
    assert!(r.get("token").is_none(), "a young token is kept: {r}");
    assert_eq!(a.push_of("message").await["text"], "while you were away");
    // Over TCP as well.
    let mut t = srv.client().await;
    assert_eq!(resume(&mut t, &token).await["type"], "logged_in");
    // Logging out takes the token with it.
    a.ok(json!({"type": "logout"})).await;
    let mut again = Client::connect_ws(web).await;
    let r = resume(&mut again, &token).await;
    assert_eq!(r["code"], "invalid_token", "{r}");
    for junk in ["", "1.2.3", "abc", &"9".repeat(500)] {
        assert_eq!(resume(&mut again, junk).await["code"], "invalid_token");
    }

    // A password change ends every token of the account.
    let t1 = again.login("alice", "pw").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut other = srv.client().await;
    let t2 = other.login("alice", "pw").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(t1, t2);
    assert_eq!(
        resume(&mut srv.client().await, &t2).await["type"],
        "logged_in"
    );
    other
        .ok(json!({"type": "passwd", "old": "pw", "new": "pw2"}))
        .await;
    for t in [&t1, &t2] {
        assert_eq!(
            resume(&mut srv.client().await, t).await["code"],
            "invalid_token"
        );
    }

    // An operator's kick and ban end them too.
    let t3 = srv.client().await.login("alice", "pw2").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let out = common::chatctl(srv.dir.path(), &["sessions", "kick", "--user", "alice"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        resume(&mut srv.client().await, &t3).await["code"],
        "invalid_token"
    );
    let t4 = srv.client().await.login("alice", "pw2").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let out = common::chatctl(srv.dir.path(), &["users", "ban", "alice"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        resume(&mut srv.client().await, &t4).await["code"],
        "invalid_token"
    );
    // Someone else's token is no key to this account.
    let mut bobs = srv.client().await;
    let tb = bobs.login("bob", "pw").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = format!("{alice}.{}", tb.split_once('.').unwrap().1);
    assert_eq!(
        resume(&mut srv.client().await, &forged).await["code"],
        "invalid_token"
    );
}

#[tokio::test]
async fn a_token_in_its_second_half_of_life_is_replaced_and_then_expires() {
    // A three-second lifetime.
    let srv = TestServer::start_with(|s| s.token_days = 3.0 / 86_400.0).await;
    let mut c = srv.client().await;
    c.register("carol", "pw").await;
    let old = c.login("carol", "pw").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let r = resume(&mut srv.client().await, &old).await;
    assert_eq!(r["type"], "logged_in");
    let new = r["token"]
        .as_str()
        .expect("an old token is replaced")
        .to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        resume(&mut srv.client().await, &old).await["code"],
        "invalid_token"
    );
    assert_eq!(
        resume(&mut srv.client().await, &new).await["type"],
        "logged_in"
    );
}

#[tokio::test]
async fn a_token_works_on_every_node_of_a_cluster() {
    let cluster = common::cluster::Cluster::start(2).await;
    cluster.wait_full_mesh().await;
    let mut a = cluster.nodes[0].client().await;
    a.register("dora", "pw").await;
    let token = a.login("dora", "pw").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut b = cluster.nodes[1].client().await;
        let r = resume(&mut b, &token).await;
        if r["type"] == "logged_in" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never replicated: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A logout on the second node ends it on the first too.
    let mut b = cluster.nodes[1].client().await;
    resume(&mut b, &token).await;
    b.ok(json!({"type": "logout"})).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = resume(&mut cluster.nodes[0].client().await, &token).await;
        if r["code"] == "invalid_token" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never revoked: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tls_serves_https_wss_and_chatd_and_takes_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("tls");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("init-tls")
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    let p = spawn_chatd(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-listen",
            "127.0.0.1:0",
        ],
    );
    let (web, tls) = (p.web.unwrap(), p.tls.unwrap());
    let connector = web::tls_connector(&cert);

    // HTTPS.
    let s = web::tls_stream(web, &connector).await.unwrap();
    let first = web::peer_cert(&s);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        web.port()
    );
    let (status, head, _) = web::http_exchange(s, &req).await;
    assert_eq!(status, 200);
    assert!(head.contains("Strict-Transport-Security"), "{head}");

    // WSS.
    let s = web::tls_stream(web, &connector).await.unwrap();
    let origin = format!("https://localhost:{}", web.port());
    let mut w = web::upgrade(
        Box::new(s),
        &format!("wss://localhost:{}/ws", web.port()),
        Some(&origin),
    )
    .await
    .unwrap();
    w.register("erin", "pw").await;
    assert!(w.login("erin", "pw").await["token"].is_string());

    // chatd's protocol over TLS.
    let s = web::tls_stream(tls, &connector).await.unwrap();
    let mut t = Client::over_bytes(Box::new(s));
    t.register("finn", "pw").await;
    t.login("finn", "pw").await;
    t.ok(json!({"type": "ping"})).await;

    // A renewed certificate is taken on SIGHUP, without a restart; the
    // sessions open meanwhile go on.
    let renewed = dir.path().join("renewed");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
        .arg("init-tls")
        .arg(&renewed)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::copy(renewed.join("cert.pem"), &cert).unwrap();
    std::fs::copy(renewed.join("key.pem"), &key).unwrap();
    p.signal(libc::SIGHUP);
    let connector = web::tls_connector(&cert);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(s) = web::tls_stream(web, &connector).await {
            assert_ne!(web::peer_cert(&s), first);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never used"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The certificate is swapped before the line is logged, and the log is
    // read from chatd's stderr as it comes: the new one can be seen first.
    while !p.logged(&["TLS certificate read again"]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reload was never logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.ok(json!({"type": "ping"})).await;
    w.ok(json!({"type": "ping"})).await;
}
