//! A real browser for tests: the system's Chromium, driven headless over
//! the W3C WebDriver protocol by its chromedriver (both from Debian's
//! `chromium` and `chromium-driver`; nothing is downloaded). Each `Browser`
//! is its own chromedriver and profile: two of them are two people.
//!
//! The WebDriver client is the few commands these tests need, over plain
//! HTTP/1.1 on loopback.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(15);

/// Where chromium and chromedriver are, if installed.
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.exists());
    let chrome = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])?;
    let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])?;
    Some((chrome, driver))
}

/// The browser tests run where a browser is installed, and must run in CI
/// (`.ci/run` installs one and sets CI): elsewhere they say why they skip.
pub fn available() -> bool {
    if installed().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but chromium and chromium-driver are not installed"
    );
    eprintln!("skipping: install chromium and chromium-driver to run the browser tests");
    false
}

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// A headless browser with a window of `width` × `height`.
    pub fn start(width: u32, height: u32) -> Browser {
        Browser::launch(width, height, false)
    }

    /// A phone's screen: 390 × 844 CSS pixels (a desktop window cannot be
    /// that narrow), touch, twice the pixels.
    pub fn phone() -> Browser {
        Browser::launch(390, 844, true)
    }

    fn launch(width: u32, height: u32, phone: bool) -> Browser {
        let (chrome, driver_bin) = installed().expect("chromium is installed");
        let mut driver = Command::new(driver_bin)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let out = driver.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("chromedriver exited")
                .expect("read chromedriver");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().parse().expect("a port");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let args = json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-extensions",
            "--disable-features=Translate,OptimizationHints,MediaRouter",
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", b._profile.path().display()),
        ]);
        let mut options = json!({"binary": chrome, "args": args});
        if phone {
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0, "touch": true}
            });
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .expect("a browser session");
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        // chromedriver may keep the connection open: read what Content-Length says.
        let mut r = BufReader::new(s);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err("chromedriver closed the connection".into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().map_err(|_| "bad Content-Length")?;
                }
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        match v["value"].get("error") {
            Some(e) => Err(format!("{e}: {}", v["value"]["message"])),
            None => Ok(v["value"].clone()),
        }
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({"url": url})))
            .expect("navigate");
    }

    pub fn refresh(&self) {
        self.call("POST", &self.s("/refresh"), Some(json!({})))
            .expect("refresh");
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Wait until `script` returns something truthy; that value.
    pub fn wait(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let v = self.js(script, args.clone());
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let shown = self.js("return document.body.innerText", json!([]));
                panic!("timed out waiting for {what}; the page shows:\n{shown}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for an element matching `css` that is shown.
    pub fn wait_for(&self, css: &str) {
        self.wait(
            css,
            "const e = document.querySelector(arguments[0]); return !!e && e.offsetParent !== null",
            json!([css]),
        );
    }

    fn element(&self, css: &str) -> String {
        self.wait_for(css);
        let v = self
            .call(
                "POST",
                &self.s("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element id")
            .to_string()
    }

    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/click")),
            Some(json!({})),
        )
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clear a field and type into it, as a user would (key events).
    pub fn fill(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/clear")),
            Some(json!({})),
        )
        .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        self.call(
            "POST",
            &self.s(&format!("/element/{id}/value")),
            Some(json!({"text": text})),
        )
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Press keys on the focused element (`\u{E007}` is Enter, `\u{E004}` Tab).
    pub fn keys(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                [
                    json!({"type": "keyDown", "value": c.to_string()}),
                    json!({"type": "keyUp", "value": c.to_string()}),
                ]
            })
            .collect();
        self.call(
            "POST",
            &self.s("/actions"),
            Some(json!({"actions": [{"type": "key", "id": "kb", "actions": actions}]})),
        )
        .expect("keys");
    }

    /// The text of the first element matching `css` ("" if none).
    pub fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''",
            json!([css]),
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Wait until the text of `css` contains `want`.
    pub fn wait_text(&self, css: &str, want: &str) {
        self.wait(
            &format!("{css} to show {want:?}"),
            "const e = document.querySelector(arguments[0]); return !!e && e.innerText.includes(arguments[1])",
            json!([css, want]),
        );
    }

    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let v = self
            .call("GET", &self.s("/screenshot"), None)
            .expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// What the page logged at error level (and uncaught exceptions).
    pub fn console_errors(&self) -> Vec<String> {
        let v = self
            .call("POST", &self.s("/se/log"), Some(json!({"type": "browser"})))
            .expect("the browser log");
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect()
    }
}
