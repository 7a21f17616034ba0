//! Headless Chromium (Debian's package) driven over the DevTools protocol, for tests of the pages
//! kartflow serves: load a URL, evaluate JavaScript in it, take a screenshot.
//!
//! `make test` installs Chromium (`hack/chromium.sh`); `CHROMIUM` names another binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless browser with one page; the process and its profile go when it is dropped.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    page: WebSocket<MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium headless on a blank page.
    ///
    /// # Panics
    /// When Chromium is missing or does not open its DevTools port, saying what to do.
    #[track_caller]
    pub fn start() -> Self {
        let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = std::env::temp_dir().join(crate::stack::unique_name("kartflow-chromium"));
        std::fs::create_dir_all(&profile).expect("a profile directory");
        let child = Command::new(&bin)
            .args([
                "--headless=new",
                // Root in CI: Chromium's sandbox needs an unprivileged user.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {bin} ({e}): the browser test needs Chromium. `make test` \
                     installs it (hack/chromium.sh); or set CHROMIUM to a Chromium binary"
                )
            });
        // Chromium writes the port it picked (and the browser's path) into the profile.
        let port_file = profile.join("DevToolsActivePort");
        let started = Instant::now();
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())
            {
                break p;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "{bin} did not open its DevTools port within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let page_ws = loop {
            let listed = get_json(addr, "/json/list");
            let url = listed.and_then(|l| {
                l.as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")?
                    .get("webSocketDebuggerUrl")?
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(u) = url {
                break u;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "{bin} listed no page target within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let (page, _) = tungstenite::connect(page_ws.as_str())
            .unwrap_or_else(|e| panic!("cannot attach to the page at {page_ws}: {e}"));
        if let MaybeTlsStream::Plain(s) = page.get_ref() {
            let _ = s.set_read_timeout(Some(COMMAND_TIMEOUT));
        }
        Self {
            child,
            profile,
            page,
            next_id: 0,
        }
    }

    /// Sends a DevTools command and returns its `result`, skipping the events in between.
    ///
    /// # Panics
    /// When the browser answers with an error or not at all.
    pub fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.page
            .send(Message::text(msg))
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
        let started = Instant::now();
        loop {
            let m = self
                .page
                .read()
                .unwrap_or_else(|e| panic!("DevTools {method}: no answer: {e}"));
            let Ok(text) = m.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if v["id"] == id {
                assert!(
                    v.get("error").is_none(),
                    "DevTools {method}: {}",
                    v["error"]
                );
                return v["result"].clone();
            }
            assert!(
                started.elapsed() < COMMAND_TIMEOUT,
                "DevTools {method}: no answer within {COMMAND_TIMEOUT:?}"
            );
        }
    }

    /// Opens `url` in the page.
    pub fn navigate(&mut self, url: &str) {
        self.command("Page.navigate", json!({"url": url}));
    }

    /// The value of a JavaScript expression in the page (`null` when it throws).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.command(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if r.get("exceptionDetails").is_some() {
            return Value::Null;
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until `done` accepts its value; returns the value and how long it
    /// took.
    ///
    /// # Panics
    /// After `timeout`, with the last value seen.
    #[track_caller]
    pub fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let v = self.eval(expression);
            if done(&v) {
                return (v, started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "the page did not show {what} within {timeout:?}; last value: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the page as it is shown.
    pub fn screenshot_png(&mut self) -> Vec<u8> {
        let r = self.command("Page.captureScreenshot", json!({"format": "png"}));
        base64_decode(r["data"].as_str().unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `GET path` as JSON. DevTools' HTTP server refuses HTTP/1.0, which [`crate::http`] speaks,
/// and keeps the connection open: the body is read by its `Content-Length`.
fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&data);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })?;
        if body.len() >= length {
            return serde_json::from_str(body.get(..length)?).ok();
        }
    }
}

/// Standard base64 (what DevTools sends screenshots in); invalid characters are skipped.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("aGVsbG8="), b"hello");
        assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
        assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
        assert_eq!(base64_decode(""), b"");
    }
}
