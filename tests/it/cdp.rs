//! A headless Chromium driven over the DevTools protocol (a WebSocket of
//! JSON commands), for the dashboard tests that must act in the page as a
//! user does: type into a field, read what it holds afterwards.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{stream::MaybeTlsStream, Message, WebSocket};

/// Headless Chromium with its own profile (in `profile`), as the tests
/// run it (as root, in a container: no sandbox, no GPU, no `/dev/shm`).
pub fn headless(bin: &Path, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// A Chromium showing one page; killed when dropped.
pub struct Browser {
    child: Child,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `bin` headless on `url` and connects to its page.
    pub fn open(bin: &Path, url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = headless(bin, profile.path())
            .args(["--remote-debugging-port=0", "--remote-allow-origins=*"])
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chromium");
        let port = devtools_port(&mut child);
        let page = page_socket(&format!("127.0.0.1:{port}"));
        Browser {
            child,
            page,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends one command and returns its result (events are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(Message::text(msg.to_string()))
            .expect("send to chromium");
        loop {
            let Message::Text(text) = self.page.read().expect("read from chromium") else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Types `text` where the focus is, as a keyboard would.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// Waits until `expr` is true in the page.
    pub fn wait_until(&mut self, what: &str, expr: &str, deadline: Duration) {
        let end = Instant::now() + deadline;
        while self.eval(expr) != Value::Bool(true) {
            assert!(Instant::now() < end, "{what}: not within {deadline:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port Chromium prints on stderr (`DevTools listening on ws://…`).
fn devtools_port(child: &mut Child) -> u16 {
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                let port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                let _ = tx.send(port);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .expect("chromium printed its DevTools port")
}

/// The WebSocket of the browser's page.
fn page_socket(addr: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let end = Instant::now() + Duration::from_secs(60);
    let url = loop {
        let list = json_list(addr);
        let pages: Value = serde_json::from_str(&list).unwrap_or(Value::Null);
        let found = pages.as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p["type"] == "page")
                .and_then(|p| p["webSocketDebuggerUrl"].as_str().map(String::from))
        });
        if let Some(url) = found {
            break url;
        }
        assert!(Instant::now() < end, "no page in chromium: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (socket, _) = tungstenite::connect(url.as_str()).expect("connect to the page");
    // A browser that hangs fails the test instead of holding it.
    if let MaybeTlsStream::Plain(s) = socket.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    socket
}

/// `GET /json/list` of the DevTools HTTP server, which keeps its
/// connections open: its body, read to its `Content-Length`.
fn json_list(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to chromium");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /json/list HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("read DevTools headers");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("read DevTools body");
    String::from_utf8_lossy(&body).into_owned()
}
