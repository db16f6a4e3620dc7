//! The web client's files (the top-level `web/` directory), built into the
//! binary so that chatd serves them with no files to install and nothing
//! fetched from anywhere else.

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub mime: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $mime:literal) => {
        Asset {
            path: $path,
            mime: $mime,
            body: include_bytes!(concat!("../../web/", $file)),
        }
    };
}

pub static ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("/conn.js", "conn.js", "text/javascript; charset=utf-8"),
    asset!("/view.js", "view.js", "text/javascript; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/icon.svg", "icon.svg", "image/svg+xml"),
];

pub fn find(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// A strong validator for a file: a hash of its bytes, computed once.
pub fn etag(a: &'static Asset) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let d = ring::digest::digest(&ring::digest::SHA256, a.body);
                let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    });
    let i = ASSETS.iter().position(|x| std::ptr::eq(x, a)).unwrap_or(0);
    &tags[i]
}
