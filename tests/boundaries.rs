//! The module map at the top of `src/lib.rs` says what each module must
//! not do. These tests read the sources and fail when a module breaks its
//! "must not" (by what it imports or calls), and when README or the module
//! map names a file that does not exist.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `src/<rel>` (a file or a directory).
fn files(rel: &str) -> Vec<PathBuf> {
    let p = root().join("src").join(rel);
    let mut out = Vec::new();
    if p.is_dir() {
        walk(&p, &mut out);
    } else {
        let f = p.with_extension("rs");
        assert!(f.exists(), "src/{rel} does not exist");
        out.push(f);
    }
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's code: without its unit tests (test-only files entirely) and
/// without comments, so that prose may name anything.
fn code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails, naming the file and the line, where module `rel` mentions any of
/// `banned` in its code.
fn must_not_name(rel: &str, banned: &[&str], why: &str) {
    let mut broken = Vec::new();
    for f in files(rel) {
        for (n, line) in code(&f).lines().enumerate() {
            for b in banned {
                if line.contains(b) {
                    let shown = f.strip_prefix(root()).unwrap().display().to_string();
                    broken.push(format!("{shown}:{}: `{b}` in `{}`", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "`{rel}` must not {why}, but:\n{}",
        broken.join("\n")
    );
}

#[test]
fn only_the_store_names_sled() {
    for f in files("") {
        let rel = f.strip_prefix(root().join("src")).unwrap();
        if rel.starts_with("store") {
            continue;
        }
        let c = code(&f);
        assert!(
            !c.contains("sled::") && !c.contains("use sled"),
            "src/{} names sled: every sled access belongs in src/store",
            rel.display()
        );
    }
}

#[test]
fn the_pure_modules_do_no_io_and_read_no_clock() {
    let io = [
        "tokio",
        "std::net::Tcp",
        "std::net::Udp",
        "std::fs",
        "std::thread",
        "tracing::",
    ];
    for m in [
        "rules",
        "apply",
        "model",
        "api",
        "ids",
        "tokens",
        "framing",
        "throttle",
        "admission",
    ] {
        must_not_name(m, &io, "do I/O (it is tested without sockets)");
    }
    let clock = [
        "wall_millis",
        "Instant::now",
        "SystemTime",
        "clock.now()",
        "Clock::now",
    ];
    for m in ["rules", "apply", "model", "throttle", "admission"] {
        must_not_name(m, &clock, "read the clock (the time is given to it)");
    }
}

#[test]
fn the_hub_core_is_given_the_time_and_leaves_the_io_to_its_driver() {
    for f in [
        "mod.rs",
        "input.rs",
        "batch.rs",
        "login.rs",
        "routing.rs",
        "replay.rs",
        "lobby.rs",
        "admin.rs",
        "install.rs",
    ] {
        must_not_name(
            &format!("hub/{}", f.trim_end_matches(".rs")),
            &[
                "tokio",
                "mpsc",
                "oneshot",
                "watch::",
                "std::thread",
                "process::exit",
                "Instant::now",
                "SystemTime::now",
                "wall_millis",
                "clock.now()",
                ".outbox.",
                ".kill.",
            ],
            "do I/O, wait, read the clock or exit (the driver does; the core returns what to do)",
        );
    }
}

#[test]
fn each_module_keeps_to_its_side_of_the_map() {
    must_not_name(
        "hub",
        &["crate::dialect", "Dialect::", "crate::session"],
        "name a dialect",
    );
    must_not_name(
        "api",
        &[
            "crate::store",
            "crate::hub",
            "crate::session",
            "crate::mesh",
        ],
        "depend on storage or I/O (it is the shared vocabulary)",
    );
    must_not_name(
        "config",
        &["crate::mesh", "crate::hub", "crate::store"],
        "depend on what it configures",
    );
    must_not_name("session", &["crate::store", "Store"], "touch the store");
    must_not_name(
        "dialect",
        &[
            "crate::hub",
            "crate::store",
            "crate::rules",
            "crate::apply",
            "crate::session",
        ],
        "decide anything (it only translates)",
    );
    must_not_name(
        "framing",
        &["crate::", "serde_json"],
        "parse JSON or know what a value means",
    );
    must_not_name("mesh", &["crate::apply", "apply("], "apply operations");
    for m in ["mesh/plan", "mesh/members", "mesh/catchup"] {
        must_not_name(
            m,
            &[
                "tokio",
                "quinn",
                "Instant::now",
                "SystemTime",
                "wall_millis",
                "crate::hub",
                "tracing::",
            ],
            "do I/O or read the clock (it is given the time)",
        );
    }
    must_not_name("apply", &["crate::rules"], "check permissions");
    must_not_name(
        "snapshot",
        &["crate::apply", "apply(", "crate::hub", "crate::mesh"],
        "apply anything or know who sends it",
    );
    must_not_name(
        "model",
        &["crate::store", "crate::rules", "crate::apply", "crate::hub"],
        "hold behaviour",
    );
    must_not_name(
        "store",
        &[
            "crate::rules",
            "crate::hub",
            "crate::apply",
            "crate::session",
            "crate::dialect",
        ],
        "know chat rules",
    );
    must_not_name(
        "web",
        &["crate::rules", "crate::apply", "crate::store", "crate::hub"],
        "know chat rules",
    );
    must_not_name(
        "rules",
        &["crate::hub", "crate::session", "crate::mesh"],
        "write, or do I/O",
    );
    must_not_name(
        "admin",
        &["json!"],
        "build JSON by hand (admin::proto types the protocol)",
    );
    must_not_name("hub", &["json!"], "build JSON by hand");
    must_not_name(
        "bin/chatctl",
        &["json!", "serde_json::Value"],
        "speak the admin protocol but through admin::proto",
    );
    must_not_name(
        "tokens",
        &["crate::store", "crate::rules"],
        "store or check tokens",
    );
}

#[test]
fn chatbench_speaks_only_the_wire_protocols() {
    for f in files("bench") {
        for line in code(&f).lines() {
            if let Some(i) = line.find("crate::") {
                assert!(
                    line[i..].starts_with("crate::bench"),
                    "{}: chatbench may use only its own modules: {}",
                    f.display(),
                    line.trim()
                );
            }
        }
    }
    let bin = code(&root().join("src/bin/chatbench.rs"));
    for line in bin.lines() {
        if let Some(i) = line.find("chatd::") {
            // `os`: the process's own limits, not chat.
            assert!(
                line[i..].starts_with("chatd::bench") || line[i..].starts_with("chatd::os"),
                "src/bin/chatbench.rs may use only chatd::bench: {}",
                line.trim()
            );
        }
    }
}

/// The names between backticks in `text` that look like files of this
/// repository: `x.rs`, `dir/`, `dir/file.ext`.
fn named_files(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 0 || part.contains(' ') || part.contains('<') || part.contains('*') {
            continue;
        }
        let looks_like_file = part.ends_with(".rs")
            || (part.ends_with('/') && part.len() > 1)
            || part.starts_with("src/")
            || part.starts_with("docs/")
            || part.starts_with("systemd/")
            || part.starts_with("tests/");
        if looks_like_file && !part.starts_with('/') && !part.starts_with("http") {
            out.push(part.trim_end_matches(['.', ',', ')']).to_string());
        }
    }
    out
}

/// Whether `name` is a path from the repository's top, or a file or
/// directory of that name somewhere under `src/` or `tests/`.
fn exists(name: &str) -> bool {
    let r = root();
    if r.join(name).exists() {
        return true;
    }
    let wanted = name.trim_end_matches('/');
    let mut all = Vec::new();
    walk_all(&r.join("src"), &mut all);
    walk_all(&r.join("tests"), &mut all);
    all.iter()
        .any(|p| p.to_string_lossy().ends_with(&format!("/{wanted}")))
}

fn walk_all(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() {
            walk_all(&p, out);
        }
    }
}

#[test]
fn readme_and_the_module_map_name_files_that_exist() {
    let lib = fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let map: String = lib
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let mut missing = Vec::new();
    for (doc, text) in [("src/lib.rs", &map), ("README.md", &readme)] {
        let named = named_files(text);
        if doc == "README.md" {
            assert!(
                named.len() >= 5,
                "README names only {named:?}: is the parser broken?"
            );
        }
        for f in named {
            if !exists(&f) {
                missing.push(format!("{doc} names `{f}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files named that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_module_map_lists_every_module() {
    let lib = fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let mapped: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! | `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    for m in &declared {
        assert!(
            mapped.contains(m),
            "module `{m}` is missing from the module map in src/lib.rs"
        );
    }
    for m in &mapped {
        assert!(
            declared.contains(m),
            "the module map names `{m}`, which src/lib.rs does not declare"
        );
    }
}

/// The checks themselves, on made-up text: a test of a test, so that a
/// check that can never fail is noticed.
#[test]
fn the_checks_can_fail() {
    assert_eq!(
        named_files("see `src/nowhere.rs` and `hub/` but not `a b` or `x`"),
        vec!["src/nowhere.rs", "hub/"]
    );
    assert!(!exists("src/nowhere.rs"));
    assert!(exists("hub/"));
    assert!(exists("src/lib.rs"));
    let broken = std::panic::catch_unwind(|| {
        must_not_name("hub", &["impl"], "contain impl blocks");
    });
    assert!(broken.is_err(), "a banned word that is present must fail");
}
