//! A tiny run of every chatbench scenario against a real chatd process.
//! chatbench exits non-zero when a message it sent was accepted but never
//! delivered, or when the server answered with an error; so does this test.
//! (The figures themselves are for README's "Performance" section, measured
//! on a quiet machine, not asserted here.)

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

fn chatbench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_chatbench"))
        .arg("--json")
        .args(args)
        .output()
        .expect("run chatbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chatbench {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("chatbench printed {stdout:?}: {e}"))
}

/// Nothing lost, no errors, something delivered.
fn delivered_all(r: &Value) -> u64 {
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    let delivered = r["delivered"].as_u64().unwrap_or(0);
    assert!(delivered > 0, "nothing was delivered: {r}");
    delivered
}

#[test]
fn every_scenario_delivers_everything_it_sends() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_chatd(
        dir.path(),
        &[
            "--rate-limit",
            "100000",
            "--rate-burst",
            "100000",
            "--classic-push-gap-ms",
            "0",
        ],
    );
    let addr = p.addr.to_string();
    let pid = p.pid().to_string();
    let short = ["--warmup", "0.2", "--duration", "1"];
    let target = ["--addr", &addr, "--pid", &pid];

    // 1:1, closed loop: the server's memory is read from /proc.
    let r = chatbench(
        &[
            &["pairs", "--pairs", "10", "--window", "2"][..],
            &target,
            &short,
        ]
        .concat(),
    );
    delivered_all(&r);
    assert!(r["memory"][0]["after_kib"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["latency"]["samples"].as_u64().unwrap_or(0) > 0, "{r}");

    // Open loop, at a fixed rate: about that many are sent.
    let r = chatbench(
        &[
            &["pairs", "--pairs", "10", "--rate", "400"][..],
            &target,
            &short,
        ]
        .concat(),
    );
    delivered_all(&r);
    let sent = r["sent"].as_u64().unwrap_or(0);
    assert!((200..=600).contains(&sent), "{r}");

    // The classic dialect.
    let r = chatbench(
        &[
            &[
                "pairs",
                "--pairs",
                "5",
                "--window",
                "2",
                "--dialect",
                "classic",
            ][..],
            &target,
            &short,
        ]
        .concat(),
    );
    delivered_all(&r);

    // Group fan-out: every message reaches every other member.
    let r = chatbench(
        &[
            &["fanout", "--members", "12", "--senders", "2"][..],
            &target,
            &short,
        ]
        .concat(),
    );
    let delivered = delivered_all(&r);
    let sent = r["sent"].as_u64().unwrap_or(0);
    // Each message reaches 11 members (the window's edges cut a few off).
    assert!(delivered >= 10 * sent && delivered <= 12 * sent, "{r}");

    // Offline drain: all of them, after the login.
    let r = chatbench(
        &[
            &["drain", "--messages", "300", "--wait", "0"][..],
            &target[..],
        ]
        .concat(),
    );
    assert_eq!(delivered_all(&r), 300);

    // Stored history, on nodes chatbench runs itself: bytes on disk before
    // and after compaction, start-up, catch-up from the log and by snapshot.
    let r = chatbench(&[
        "history",
        "--messages",
        "3000",
        "--catch-up",
        "--chatd",
        env!("CARGO_BIN_EXE_chatd"),
    ]);
    assert_eq!(r["sent"], 3000, "{r}");
    let x = &r["extra"];
    let num = |k: &str| x[k].as_f64().unwrap_or(-1.0);
    assert!(num("bytes_per_message") > 0.0, "{r}");
    assert!(num("log_bytes_per_message") > 0.0, "{r}");
    assert!(
        num("bytes_per_message") >= num("log_bytes_per_message"),
        "{r}"
    );
    assert!(
        num("log_bytes_compacted") < num("log_bytes_per_message") * 3000.0,
        "{r}"
    );
    for k in [
        "startup_s",
        "status_ms",
        "catch_up_log_s",
        "catch_up_snapshot_s",
    ] {
        assert!(num(k) > 0.0, "{k}: {r}");
    }

    // Idle sessions and a login storm.
    let r = chatbench(
        &[
            &["idle", "--sessions", "40", "--hold", "0.2"][..],
            &target[..],
        ]
        .concat(),
    );
    assert_eq!(r["clients"], 40, "{r}");
    assert!(r["extra"]["kib_per_session"].is_number(), "{r}");
    let r = chatbench(
        &[
            &["logins", "--users", "20", "--concurrency", "4"][..],
            &target[..],
        ]
        .concat(),
    );
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["extra"]["logins"], 20, "{r}");
    assert!(
        r["extra"]["rss_3s_after_kib"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );

    // Fuzzing every dialect: the server neither goes away nor stalls.
    let fuzz_dir = tempfile::tempdir().unwrap();
    let dialects = spawn_chatd(
        fuzz_dir.path(),
        &[
            "--listen-dialect",
            "go-chatroom=127.0.0.1:0,c-chatroom=127.0.0.1:0,epoll-chatroom=127.0.0.1:0",
            // The fuzzers' bad logins must not hold back the probe's good one.
            "--login-address-burst",
            "1000000",
            "--login-account-burst",
            "1000000",
        ],
    );
    let port = |name: &str| {
        dialects
            .dialect_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.to_string())
            .expect("a dialect port")
    };
    let (go, c, epoll) = (
        port("go-chatroom"),
        port("c-chatroom"),
        port("epoll-chatroom"),
    );
    let (addr, pid) = (dialects.addr.to_string(), dialects.pid().to_string());
    let r = chatbench(&[
        "fuzz",
        "--addr",
        &addr,
        "--pid",
        &pid,
        "--go",
        &go,
        "--c-room",
        &c,
        "--epoll",
        &epoll,
        "--duration",
        "3",
    ]);
    assert_eq!(r["extra"]["server_gone"], false, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["sent"].as_u64().unwrap_or(0) > 100, "{r}");

    // The ceilings: the same load against servers that speak each protocol
    // from memory, and against the bare relay.
    for (dialect, proto) in [
        ("native", "native"),
        ("classic", "classic"),
        ("raw", "relay"),
    ] {
        let r = chatbench(&[
            "relay",
            "--dialect",
            dialect,
            "--pairs",
            "10",
            "--window",
            "2",
            "--warmup",
            "0.2",
            "--duration",
            "0.5",
        ]);
        delivered_all(&r);
        assert_eq!(
            (&r["scenario"], &r["proto"]),
            (&"ceiling".into(), &proto.into()),
            "{r}"
        );
    }

    // A run beside its ceiling reports both.
    let r = chatbench(
        &[
            &["pairs", "--pairs", "10", "--window", "2", "--ceiling"][..],
            &["--dialect", "classic"],
            &target,
            &short,
        ]
        .concat(),
    );
    let runs = r.as_array().expect("two reports");
    assert_eq!(runs.len(), 2, "{r}");
    delivered_all(&runs[0]);
    delivered_all(&runs[1]);
    assert_eq!(runs[1]["scenario"], "ceiling", "{r}");
    assert_eq!(runs[1]["proto"], "classic", "{r}");
}
