//! Issue 12, support for the dashboard's tests: `spoolflow serve` as a
//! real process on a free loopback port (it prints the address it
//! listens on), a raw HTTP/1.1 client over a `TcpStream` (no client
//! normalizes the paths sent), and the root with a task in every state.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};

use serde_json::Value;

use crate::common::*;

/// A running `spoolflow serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    /// The action token it printed (with `--allow-actions`).
    pub action_token: Option<String>,
    _out: BufReader<std::process::ChildStdout>,
}

impl Server {
    /// Sends SIGINT (Ctrl-C) and waits for the exit; its status code.
    pub fn interrupt(&mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let mut status = None;
        wait_for("serve to exit on Ctrl-C", DEADLINE, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status.and_then(|s| s.code())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `spoolflow serve --listen 127.0.0.1:0 ARGS` and reads the
/// address (and the action token) it prints.
pub fn serve(t: &TestRoot, args: &[&str]) -> Server {
    let mut child = t
        .cmd()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("SPOOLFLOW_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn spoolflow serve");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut addr = None;
    let mut action_token = None;
    let mut line = String::new();
    while addr.is_none() || (args.contains(&"--allow-actions") && action_token.is_none()) {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("serve exited before printing its address");
        }
        if let Some(rest) = line
            .trim()
            .strip_prefix("spoolflow serve: listening on http://")
        {
            addr = Some(rest.trim_end_matches('/').to_string());
        }
        if let Some(tok) = line.trim().strip_prefix("actions allowed; action token: ") {
            action_token = Some(tok.to_string());
        }
    }
    Server {
        child,
        addr: addr.unwrap(),
        action_token,
        _out: out,
    }
}

/// An answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one request, raw (the path as given, byte for byte).
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
    out
}

pub fn get(srv: &Server, path: &str) -> Resp {
    request(&srv.addr, "GET", path, &[], "")
}

/// Runs the binary; its stdout as JSON.
pub fn cli_json(t: &TestRoot, args: &[&str]) -> Value {
    let out = t.cmd().args(args).output().expect("run spoolflow");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A root with every state: `ok-1`, `ok-2` completed (payloads holding a
/// `<script>`), `bad-1` failed (its reason too), `cancelled-1` aborted,
/// `flow-1` a completed flow of two tasks, `broken.json` rejected; then
/// an engine with one worker runs `held` (its tasker waits for a gate)
/// and `later-1` waits behind it, queued.
pub fn fixture() -> (TestRoot, EngineProcess) {
    let t = TestRoot::new();
    t.tasker("org.example", "ok", "#!/bin/sh\ncat\n");
    t.tasker(
        "org.example",
        "bad",
        "#!/bin/sh\ncat >/dev/null\necho 'oops <script>alert(2)</script>' >&2\nexit 3\n",
    );
    t.tasker(
        "org.example",
        "gated",
        // Bounded (wait_file): the fixture's engine is dropped with this
        // tasker still waiting, and the root goes with it.
        &format!("#!/bin/sh\ncat\n{}\n", wait_file("gate")),
    );
    t.taskmaster("org.example", "payload.who");
    let script = r#""<script>alert(1)</script>""#;
    t.drop_task(
        "ok-1.json",
        &format!(
            r#"{{"domain":"org.example","priority":3,"payload":{{"who":"ok","note":{script}}}}}"#
        ),
    );
    t.drop_task(
        "ok-2.json",
        r#"{"domain":"org.example.sales","payload":{"who":"ok"}}"#,
    );
    t.drop_task(
        "bad-1.json",
        r#"{"domain":"org.example","payload":{"who":"bad"}}"#,
    );
    t.drop_task(
        "cancelled-1.json",
        r#"{"domain":"org.example","payload":{"who":"ok"}}"#,
    );
    std::fs::write(t.join("var/spool/cancel/cancelled-1"), "").unwrap();
    t.drop_task(
        "flow-1.json",
        r#"{"domain":"org.example","flow":{"sequence":[{"task":"ok"},{"task":"ok"}]},"payload":{"who":"ok"}}"#,
    );
    t.drop_bytes("", "broken.json", b"{not json");
    t.run_drain(2);
    assert_eq!(t.must_record("cancelled-1")["state"], "aborted");
    assert_eq!(t.must_record("flow-1")["state"], "completed");
    let engine = t.spawn_engine(&["--workers", "1"]);
    t.drop_task(
        "held.json",
        r#"{"domain":"org.example","payload":{"who":"gated"}}"#,
    );
    wait_for("held to start", DEADLINE, || {
        t.point_names("held").iter().any(|p| p == "started")
    });
    t.drop_task(
        "later-1.json",
        r#"{"domain":"org.example","priority":7,"payload":{"who":"ok"}}"#,
    );
    wait_for("later-1 to be queued in run/", DEADLINE, || {
        t.join("var/spool/run/later-1.json").exists()
    });
    (t, engine)
}
