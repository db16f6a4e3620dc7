//! Fuzzing over real sockets: the admin socket and every client dialect get
//! mutated and random requests; chatd answers each as it can and goes on
//! serving. (The decoders' own property tests are unit tests beside them;
//! `chatbench fuzz` is the long-running version of the client part.)

mod common;

use common::cluster::admin;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Every command there is (but `backup`, which streams), and two that are not.
fn commands() -> Vec<&'static str> {
    let mut all: Vec<&str> = chatd::admin::proto::COMMANDS
        .into_iter()
        .filter(|c| *c != "backup")
        .collect();
    all.extend(["nonsense", ""]);
    all
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth > 2 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen::<i64>()),
        3 => json!(rng.gen_range(0..5u32)),
        4 => {
            let n = rng.gen_range(0..12);
            json!((0..n).map(|_| rng.gen_range(' '..'~')).collect::<String>())
        }
        5 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for k in [
                "user", "name", "password", "group", "text", "session", "query",
            ] {
                if rng.gen_bool(0.3) {
                    m.insert(k.into(), random_value(rng, depth + 1));
                }
            }
            Value::Object(m)
        }
    }
}

/// A request line: a command with random fields, or plain garbage.
fn random_line(rng: &mut StdRng) -> Vec<u8> {
    let mut line = match rng.gen_range(0..10) {
        0 => (0..rng.gen_range(0..80))
            .map(|_| rng.gen::<u8>())
            .filter(|b| *b != b'\n')
            .collect(),
        1 => b"{\"cmd\": \"status\"".to_vec(),
        _ => {
            let mut v = random_value(rng, 3);
            if !v.is_object() {
                v = json!({});
            }
            let all = commands();
            v["cmd"] = json!(all[rng.gen_range(0..all.len())]);
            for k in [
                "user", "name", "password", "group", "text", "session", "query",
            ] {
                if rng.gen_bool(0.4) {
                    v[k] = random_value(rng, 1);
                }
            }
            v.to_string().into_bytes()
        }
    };
    line.push(b'\n');
    line
}

// Multi-threaded: the admin socket is served by the same runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_answers_anything_and_goes_on() {
    let srv = TestServer::start().await;
    let (_alice, _) = srv.user("alice").await;
    let mut rng = StdRng::seed_from_u64(42);
    let sock = srv.dir.path().join("chatd.sock");
    let mut answered = 0;
    for _ in 0..30 {
        let s = UnixStream::connect(&sock).await.expect("admin socket");
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::new(rd);
        for _ in 0..20 {
            let line = random_line(&mut rng);
            if wr.write_all(&line).await.is_err() {
                break;
            }
            let mut reply = String::new();
            let n = tokio::time::timeout(WAIT, rd.read_line(&mut reply))
                .await
                .expect("an answer")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            let v: Value = serde_json::from_str(&reply).expect("the answer is JSON");
            assert!(v["ok"].is_boolean(), "{v}");
            if v["ok"] == false {
                assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
            }
            answered += 1;
        }
    }
    assert!(answered > 300, "{answered}");
    let status = admin(srv.dir.path(), json!({"cmd": "status"})).await;
    assert_eq!(status["ok"], true, "{status}");
    // (Alice may have been banned or deleted by now: a new user it is.)
    let mut c = srv.client().await;
    c.register("after-the-fuzz", "pw").await;
    c.login("after-the-fuzz", "pw").await;
}
